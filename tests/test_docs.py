"""The README and docs/ against the code and bench/results/: the preset table is the script's output, every cited
JSON exists and records its command and machine, every relative link resolves, every CLI option is documented."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _preset_table():
    if "preset_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location("preset_table", REPO / "bench" / "preset_table.py")
        sys.modules["preset_table"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["preset_table"])
    return sys.modules["preset_table"]


def test_readme_holds_the_preset_tables_current_output():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- preset-table")
    start = text.index("\n", start) + 1
    assert text[start : text.index("<!-- /preset-table -->")] == _preset_table().table()


def test_a_changed_preset_loses_its_figures(monkeypatch):
    module = _preset_table()
    monkeypatch.setitem(module.PRESETS, "cifar10", replace(module.PRESETS["cifar10"], codebook_size=16384))
    row = next(line for line in module.table().splitlines() if line.startswith("| CIFAR-10 "))
    assert "K = 16,384" in row and "25.38" not in row and row.count("not measured") == 5


def test_every_cited_json_exists_and_records_its_command_and_machine():
    cited = {name for page in PAGES for name in re.findall(r"bench/results/([\w.-]+\.json)", page.read_text())}
    assert len(cited) > 20
    for name in cited:
        data = json.loads((REPO / "bench" / "results" / name).read_text())
        assert data["command"].startswith("python bench/"), name
        assert data["machine"]["cpu"] and data["machine"]["cores"], name


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    titles = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


def test_every_relative_link_and_anchor_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = page.parent / path if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{page.name}: {target}"


def test_usage_documents_every_option_of_every_command():
    import typer.main

    from vqgen.cli import app

    usage = (REPO / "docs" / "usage.md").read_text()

    def section(title: str) -> str:
        start = usage.index(f"\n## {title}\n")
        end = usage.find("\n## ", start + 1)
        return usage[start : end if end > 0 else None]

    trainers = section("Both trainers")
    for name, command in typer.main.get_command(app).commands.items():
        text = section(f"vqgen {name}") + (trainers if name in ("train-ae", "train-prior") else "")
        for param in command.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in text, f"vqgen {name} {flag} is not in docs/usage.md"
