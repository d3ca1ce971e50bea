"""The README and docs/ against the code and bench/results/: the preset table is the script's output, every cited
JSON exists and records its command and machine, every JSON's command is a line of `make bench`, every relative link
resolves, every CLI option is documented."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
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


def test_readme_holds_the_beyond_texture_tables_current_output():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- beyond-texture-table")
    start = text.index("\n", start) + 1
    assert text[start : text.index("<!-- /beyond-texture-table -->")] == _preset_table().beyond_texture_table()


def test_a_changed_preset_loses_its_figures(monkeypatch):
    from vqgen import presets

    module = _preset_table()
    monkeypatch.setitem(presets.PRESETS, "cifar10", replace(presets.PRESETS["cifar10"], codebook_size=16384))
    row = next(line for line in module.table().splitlines() if line.startswith("| CIFAR-10 "))
    assert "K = 16,384" in row and "25.40" not in row and row.count("not measured") == 5


def test_a_guidance_scale_shows_the_figures_measured_at_that_scale(monkeypatch):
    from vqgen import presets

    module = _preset_table()
    cifar10 = presets.PRESETS["cifar10"]
    swept = {}
    for scale in (2.0, 2.5):  # 2 was swept on the preset's prior, 2.5 never was
        monkeypatch.setitem(presets.PRESETS, "cifar10", replace(cifar10, prior_guidance=scale))
        swept[scale] = next(line for line in module.table().splitlines() if line.startswith("| CIFAR-10 "))
    fig = json.loads((REPO / "bench" / "results" / "guidance-cifar10-flat.json").read_text())["figures"]
    at_two = next(s for s in fig["scales"] if s["guidance"] == 2.0)
    assert f"{at_two['fid']:.2f}" in swept[2.0] and f"{100 * at_two['class_accuracy']:.1f}%" in swept[2.0]
    assert swept[2.5].count("not measured") == 3 and "dB" in swept[2.5]


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


# JSONs whose recorded command does not rebuild them as it stands, each with the `make bench` line that does; every
# other JSON's own command must be a line of the target. docs/benchmarks.md ("Rebuilding these numbers") lists them.
TIN20 = "../shared/datasets/TinyImageNet20"
GRID8 = "--ae-options '--downsample 8 --codebook-size 2048 --steps 2700 --adversarial 0' --prior-options '--steps 1300'"
REBUILT_BY_ANOTHER_LINE = {
    # ae_quantizers.py's old recorder wrote `--extra --cosine`, which argparse reads as an option; it now writes `=`
    "lookup-cosine.json": "python bench/ae_quantizers.py --steps 3000 --quantizers ema --extra=--cosine"
    " --name lookup-cosine",
    # priors.py recorded neither --archs nor --name, and each of these holds one architecture's run; it now records both
    "priors-transformer.json": "python bench/priors.py --ae runs/bench/ae-ema --minutes 10.0 --archs transformer"
    " --name priors-transformer",
    "priors-pixelcnn.json": "python bench/priors.py --ae runs/bench/ae-ema --minutes 10.0 --archs pixelcnn"
    " --name priors-pixelcnn",
    # renamed copies (their "benchmark" is the file they were written as) of runs on MNIST's previous preset, whose
    # commands now write dataset-mnist.json, guidance-mnist.json and vs_vqtorch-mnist.json (docs/history.md); the
    # scripts took --name (and the settings of that preset) so that a line writes each under its own name
    "dataset-mnist-k512.json": "python bench/datasets.py --data mnist --ae-steps 3000"
    " --ae-extra '--codebook-size 512 --ema-weights 0' --n 5000 --name dataset-mnist-k512",
    "guidance-mnist-4500-steps.json": "python bench/guidance.py --data mnist --prior runs/mnist/prior-a"
    " --scales 1,1.25,1.5,2,3 --n 5000 --name guidance-mnist-4500-steps",
    "vs_vqtorch-mnist-3000.json": "python bench/vs_vqtorch.py --data mnist --steps 3000 --codebook-size 512"
    " --ema-weights 0 --name vs_vqtorch-mnist-3000",
    # the size rule's previous recipe above 32 pixels (an 8×8 grid of K = 2,048), renamed copies or runs made with
    # its flags, which now name those settings (the present recipe writes folder-tinyimagenet20.json and
    # folder-flowers64.json)
    "folder-tinyimagenet20-grid8.json": f"python bench/folders.py --data {TIN20} --n 5000 --reuse"
    f" --root runs/bench/tin20 --name folder-tinyimagenet20-grid8 {GRID8}",
    "folder-flowers64-grid8.json": f"python bench/folders.py --data ../shared/datasets/Flowers64"
    f" --features-from {TIN20} --n 5000 --reuse --root runs/bench/flowers64-grid8"
    f" --name folder-flowers64-grid8 {GRID8}",
    "guidance-tinyimagenet20-grid8.json": f"python bench/guidance.py --data {TIN20} --prior runs/bench/tin20/prior"
    " --scales 3 --n 5000 --name guidance-tinyimagenet20-grid8",
    "guidance-tinyimagenet20-grid8-s2-4.json": f"python bench/guidance.py --data {TIN20} --prior runs/bench/tin20/prior"
    " --scales 2,4 --n 5000 --name guidance-tinyimagenet20-grid8-s2-4",
    "folder-tinyimagenet20-grid16.json": f"python bench/folders.py --data {TIN20} --n 5000"
    " --name folder-tinyimagenet20-grid16 --ae-options '--downsample 4 --codebook-size 2048 --minutes 15'"
    " --prior-options '--patch 1 --minutes 15'",
    "folder-tinyimagenet20-k16384.json": f"python bench/folders.py --data {TIN20} --n 5000"
    " --name folder-tinyimagenet20-k16384 --ae-options '--downsample 8 --codebook-size 16384 --code-factors 128x128"
    " --minutes 15' --prior-options '--steps 1300'",
}
# ...and the one line that is not a benchmark: the hand-trained prior that guidance-mnist-4500-steps.json sweeps
BENCH_INPUTS = [
    "vqgen train-prior --codes runs/bench/mnist-k512/codes.safetensors --steps 4500 --batch-size 64 --lr 1e-3"
    " --ema-weights 0.999 --eval-every 1500 --out runs/mnist/prior-a --force"
]


def _bench_lines() -> list[str]:
    """The recipe of the Makefile's `bench` target, `$(BIN)/` dropped, whitespace normalised, comments left out."""
    text = (REPO / "Makefile").read_text()
    recipe = text[text.index("\nbench:") + 1 :].split("\n")[1:]
    lines = []
    for line in recipe:
        if not line.startswith("\t"):
            break
        line = " ".join(line.replace("$(BIN)/", "").split())
        if not line.startswith("#"):
            lines.append(line)
    return lines


class _Parsed(Exception):
    pass


def _options(command: str, monkeypatch) -> tuple[str, dict]:
    """The script that `python bench/SCRIPT ...` runs and the options its own argparse parser reads from the rest.
    Older JSONs were recorded as `--flag True`, `--flag False` and `--option None`: read as `--flag`, nothing, and
    nothing, which is what those runs were given."""
    words = shlex.split(command)
    assert words[:1] == ["python"] and words[1].startswith("bench/"), command
    args, rest = [], words[2:]
    while rest:
        word = rest.pop(0)
        if rest and rest[0] in ("True", "False", "None") and word.startswith("--"):
            if rest.pop(0) == "True":
                args.append(word)
        else:
            args.append(word)
    script = REPO / words[1]
    name = "bench_docs_" + script.stem
    if name not in sys.modules:
        monkeypatch.syspath_prepend(str(REPO / "bench"))
        spec = importlib.util.spec_from_file_location(name, script)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    parse = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    try:
        sys.modules[name].main()
    except _Parsed as parsed:
        return words[1], vars(parsed.args[0])
    except SystemExit as error:
        raise AssertionError(f"{command!r} does not parse") from error
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{script.name} ran past its argument parsing")


def test_make_bench_runs_the_command_of_every_json(monkeypatch):
    lines = _bench_lines()
    made = [_options(line, monkeypatch) for line in lines if line.startswith("python bench/")]
    for line in BENCH_INPUTS:
        assert line in lines, line
    results = sorted((REPO / "bench" / "results").glob("*.json"))  # folder-*.json may come later: counted if there
    assert len(results) > 40
    for path in results:
        data = json.loads(path.read_text())
        assert data["command"].startswith("python bench/"), path.name
        command = REBUILT_BY_ANOTHER_LINE.get(path.name)
        if command is None:
            assert data["benchmark"] == path.stem, f"{path.name} was renamed: list it in REBUILT_BY_ANOTHER_LINE"
            command = data["command"]
        script, options = _options(command, monkeypatch)
        assert options.get("name") in (None, path.stem), f"{command!r} writes {options['name']}.json"
        assert (script, options) in made, f"make bench has no line running {command!r} (for {path.name})"
