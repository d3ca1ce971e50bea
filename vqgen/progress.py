"""Progress bars, in a module of their own so that data loading can show one without importing the trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def make_progress(console: Console | None = None) -> Progress:
    """A rich progress bar with a description, count, elapsed and remaining time and a free `info` field."""
    from rich.progress import (  # rich only when a bar is shown: `import vqgen` stays light
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
