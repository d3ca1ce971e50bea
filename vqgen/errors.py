"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback.

Messages are written once, naming command-line options (`--top-k`). Raised under the CLI they read so; raised to a
Python caller they name the keyword argument instead (`top_k`: every option of the CLI is the keyword of the same
name, vqgen.api), so that a notebook is not told to pass a flag. Text in backticks (a whole command) is kept.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager

_FLAG_NAMES = contextvars.ContextVar("vqgen_flag_names", default=False)
# (option, keyword) pairs: the keyword of the function that was called, for an option it names otherwise
_RENAMED: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar("vqgen_renamed", default=())
_FLAG = re.compile(r"(?<![\w`'/.-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")  # not inside a path or a quoted value
# options whose Python keyword has another name than the flag's
_KEYWORDS = {"class": "classes", "image": "images", "bottom-prior": "bottom"}


def keyword_names(text: str, renamed: dict[str, str] | None = None) -> str:
    """'--top-k must be ...' → 'top_k must be ...', outside `backticks` only; `renamed` maps an option (without
    its dashes) to the keyword of the function that was called, where that differs from the usual one."""
    names = {**_KEYWORDS, **(renamed or {})}
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside backticks
        parts[i] = _FLAG.sub(lambda m: names.get(m[1], m[1].replace("-", "_")), parts[i])
    return "`".join(parts)


@contextmanager
def renamed_keywords(**names: str) -> Iterator[None]:
    """Errors raised within this block name an option by the keyword given here (`class="label"`: the --class
    of `vqgen complete` is `label` of Pipeline.complete)."""
    token = _RENAMED.set((*_RENAMED.get(), *((k.replace("_", "-"), v) for k, v in names.items())))
    try:
        yield
    finally:
        _RENAMED.reset(token)


@contextmanager
def flag_names() -> Iterator[None]:
    """Within this block (the CLI's entry point) errors name options as flags."""
    token = _FLAG_NAMES.set(True)
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


class VQGenError(ValueError):
    """A problem with the user's input or files; the message says what is wrong and what to do. A ValueError, so
    that a Python caller's `except ValueError` catches a bad argument."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.renamed = dict(_RENAMED.get())  # where it was raised, not where it is printed

    def __str__(self) -> str:
        text = super().__str__()
        return text if _FLAG_NAMES.get() or getattr(self, "keep_flags", False) else keyword_names(text, self.renamed)


class SettingError(VQGenError, ValueError):
    """A setting (an option, a keyword argument, a config field) with a value it cannot take."""


class TrainingInterrupted(Exception):
    """Raised inside the training loop after a SIGINT/SIGTERM, once state has been saved."""


class WrongModelError(VQGenError, AttributeError):
    """A method asked of a model that does not have it (`generate` of an autoencoder): says what to load instead,
    and stays an AttributeError for hasattr."""
