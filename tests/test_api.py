"""The Python API (issue 25): vqgen.load, encode/decode, Pipeline.load/generate/complete, VectorQuantize, the
balanced class layout of `sample`, and a package that imports light and without cycles; and training from Python
with the command line's defaults (train_autoencoder, train_prior)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli

SMALL_AE = ("--steps", "6", "--hidden", "32", "--embed-dim", "16", "--codebook-size", "32", "--batch-size", "16")
SMALL_PRIOR = ("--steps", "8", "--batch-size", "16", "--layers", "1", "--width", "32", "--eval-every", "0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root) -> Path:
    """A folder with runs/ae, runs/codes.safetensors and runs/prior of a tiny class-conditional model on shapes,
    trained once for the module (the CLI's default paths, relative to this folder)."""
    root = tmp_path_factory.mktemp("api")
    ae, codes, prior = root / "runs/ae", root / "runs/codes.safetensors", root / "runs/prior"
    for args in (
        ("train-ae", "--out", ae, *SMALL_AE),
        ("encode", "--ae", ae, "--out", codes),
        ("train-prior", "--codes", codes, "--out", prior, *SMALL_PRIOR),
    ):
        result = run_cli(*args)
        assert result.code == 0, result.err
    return root


def _test_images(n: int) -> torch.Tensor:
    from vqgen.data import load_data

    return load_data("shapes").test.images[:n]


def test_import_is_light_and_shows_only_public_names():
    code = "import sys, vqgen; print(sorted(m for m in ('torch', 'numpy', 'rich', 'typer') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"
    import vqgen

    public = [name for name in dir(vqgen) if not (name.startswith("__") and name.endswith("__"))]
    assert sorted(vqgen.__all__) == public and not [name for name in public if name.startswith("_")]
    for name in vqgen.__all__:
        assert getattr(vqgen, name) is not None
    with pytest.raises(AttributeError):
        vqgen.no_such_name  # noqa: B018
    assert (REPO / "vqgen" / "py.typed").exists()


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The vqgen modules a file imports, anywhere in it (a function-level import closes a cycle too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n in modules} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & modules


def test_no_module_imports_one_that_imports_it_back():
    package = REPO / "vqgen"
    files = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in package.rglob("*.py")}
    files = {name.removesuffix(".__init__"): p for name, p in files.items()}
    modules = set(files)
    # importing a module imports its parent packages anyway, so an edge to one of those is no cycle
    graph = {m: {d for d in _imports(p, modules) if not m.startswith(d + ".") and d != m} for m, p in files.items()}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " → ".join(path[path.index(d) :] + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_load_gives_the_model_the_run_names(runs):
    import vqgen
    from vqgen.errors import VQGenError

    ae = vqgen.load(runs / "runs/ae")
    prior = vqgen.load(str(runs / "runs/prior"), device="cpu")
    assert isinstance(ae, vqgen.VQVAE) and isinstance(prior, vqgen.Prior)
    assert not ae.training and not prior.training
    assert {p.device.type for p in [*ae.parameters(), *prior.parameters()]} == {"cpu"}
    assert prior.cfg.codebook_size == ae.cfg.codebook_size == 32 and prior.cfg.num_classes == 4
    with pytest.raises(VQGenError, match="does not exist"):
        vqgen.load(runs / "runs/nothing")


def test_encode_decode_take_uint8_or_float_and_match_reconstruct(runs):
    import vqgen
    from vqgen.autoencoder import reconstruct

    ae = vqgen.load(runs / "runs/ae")
    images = _test_images(8)
    codes = ae.encode(images)
    assert codes.shape == (8, 8, 8) and codes.dtype == torch.int64 and 0 <= codes.min() <= codes.max() < 32
    assert torch.equal(codes, ae.encode(vqgen.to_float(images)))  # one convention: uint8 ≡ float in [-1, 1]
    decoded = ae.decode(codes)
    assert decoded.shape == images.shape and decoded.dtype == torch.float32
    # encode ∘ decode is what `vqgen reconstruct` shows, up to the rounding of one grey level
    through_cli_path = reconstruct(ae, images, torch.device("cpu"))
    difference = (vqgen.to_uint8(decoded).int() - through_cli_path.int()).abs()
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99


def test_generate_is_reproducible_honours_classes_and_matches_sample(runs, monkeypatch):
    import vqgen
    from vqgen.errors import VQGenError

    monkeypatch.chdir(runs)
    pipe = vqgen.Pipeline.load("runs/prior")
    assert isinstance(pipe, vqgen.Pipeline) and pipe.device.type == "cpu"
    images = pipe.generate(6, classes=["star", 1], seed=3)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8 and images.device.type == "cpu"
    assert torch.equal(images, pipe.generate(6, classes=[3, "square"], seed=3))  # names are the same classes
    assert not torch.equal(images, pipe.generate(6, classes=["star", 1], seed=4))
    codes = pipe.generate_codes(6, classes=["star", 1], seed=3)
    assert not torch.equal(codes[0], pipe.generate_codes(6, classes=0, seed=3)[0])  # the label steers the codes
    assert torch.equal(pipe.decode(codes), images)
    with pytest.raises(VQGenError, match="not a class"):
        pipe.generate(2, classes="hexagon")
    with pytest.raises(VQGenError, match="^top_k must be between 1 and K=32"):  # the argument, not --top-k
        pipe.generate(2, top_k=33)

    # `vqgen sample` with the same arguments writes the same images, and generate writes nothing
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    result = run_cli("sample", "--n", "6", "--class", "star", "--class", "1", "--seed", "3", "--device", "cpu")
    assert result.code == 0, result.err
    written = torch.stack(
        [torch.from_numpy(np.array(Image.open(f"samples/{i:03d}.png"))).permute(2, 0, 1) for i in range(6)]
    )
    assert torch.equal(written, images)
    assert sorted(p.relative_to(runs) for p in runs.rglob("*") if "samples" not in p.parts) == before


def test_complete_keeps_the_upper_codes(runs):
    import vqgen
    from vqgen.sample import SamplingOptions, complete_levels

    pipe = vqgen.Pipeline.load(runs / "runs/prior")
    images = _test_images(2)
    completions = pipe.complete(images, keep_rows=4, n=3, seed=0)
    assert completions.shape == (2, 3, 3, 32, 32) and completions.dtype == torch.uint8
    assert torch.equal(completions, pipe.complete(vqgen.to_float(images), keep_rows=4, n=3, seed=0))
    codes, completed = complete_levels(pipe, images, 4, 3, SamplingOptions(seed=0))
    kept = codes[0].repeat_interleave(3, dim=0)
    assert torch.equal(completed[0][:, :4], kept[:, :4]) and not torch.equal(completed[0], kept)
    assert torch.equal(pipe.decode(completed).view(2, 3, 3, 32, 32), completions)
    # its --class is `label` here, and an error says so; sample's is `classes`
    with pytest.raises(vqgen.VQGenError, match=r"^label 99 is out of range"):
        pipe.complete(images, keep_rows=4, n=1, label=99)
    with pytest.raises(vqgen.VQGenError, match=r"^classes 99 is out of range"):
        pipe.generate(1, classes=99)


def test_readme_example_runs(runs, monkeypatch):
    """The README's Python API example, as written, on the tiny runs (in the folder that holds runs/)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(example.splitlines()) <= 20
    monkeypatch.chdir(runs)
    before = sorted(runs.rglob("*"))
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert sorted(runs.rglob("*")) == before  # nothing written
    assert scope["samples"].shape == (8, 3, 32, 32) and scope["completions"].shape == (4, 3, 3, 32, 32)
    assert scope["balanced"].shape[0] == 12 and scope["out"].quantized.shape == (2, 100, 64)


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq", "simvq-diag", "fsq"])
def test_vector_quantize_takes_sequences_and_images(kind):
    import vqgen

    torch.manual_seed(0)
    vq = vqgen.VectorQuantize(dim=8, codebook_size=None if kind == "fsq" else 16, kind=kind).eval()
    x = torch.randn(2, 5, 8)
    out = vq(x)
    assert isinstance(out, vqgen.QuantizerOutput)
    assert out.quantized.shape == (2, 5, 8) and out.indices.shape == (2, 5) and out.loss.dim() == 0
    as_image = vq(x.transpose(1, 2).unsqueeze(-1))  # the same vectors as a (B, D, N, 1) image
    assert torch.equal(as_image.indices.squeeze(-1), out.indices)
    torch.testing.assert_close(vq.lookup(out.indices), out.quantized)
    assert vq.codebook().shape[0] == vq.codebook_size == (512 if kind == "fsq" else 16)


def test_vector_quantize_says_what_is_wrong():
    import vqgen

    with pytest.raises(ValueError, match="product of fsq_levels"):
        vqgen.VectorQuantize(dim=8, codebook_size=100, kind="fsq", fsq_levels=[8, 5])
    with pytest.raises(ValueError, match="kind must be one of"):
        vqgen.VectorQuantize(dim=8, kind="pq")
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        vqgen.VectorQuantize(dim=8, codebook_size=4)(torch.randn(2, 5, 7))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda vq: vq.VectorQuantize(dim=0), "dim must be an integer"),
        (lambda vq: vq.VectorQuantize(dim=8, decay=2.0), "decay must be in (0, 1)"),
        (lambda vq: vq.VectorQuantize(dim=8, codebook_size=-1), "codebook_size must be an integer"),
        (lambda vq: vq.VectorQuantize(dim=3, kind="fsq", fsq_levels="abc"), "fsq_levels must be"),
        (lambda vq: vq.VectorQuantize(dim=8, colour="red"), "no option 'colour'"),
        (lambda vq: vq.VectorQuantize(dim=8)(torch.randn(2, 4, 3, 3)), "(B, 8, H, W)"),
        (lambda vq: vq.VectorQuantize(dim=8)(torch.randn(0, 5, 8)), "not (0, 5, 8)"),
        (lambda vq: vq.VectorQuantize(dim=8, codebook_size=4).lookup(torch.tensor([[7]])), "[0, 4)"),
    ],
)
def test_vector_quantize_checks_every_argument_where_it_enters(make, needle):
    import vqgen
    from vqgen.errors import VQGenError

    with pytest.raises(VQGenError) as caught:
        make(vqgen)
    assert needle in str(caught.value) and "--" not in str(caught.value)  # the keyword, not a flag


def test_autoencoder_and_pipeline_check_their_inputs(runs):
    import numpy as np

    import vqgen
    from vqgen.errors import VQGenError

    ae = vqgen.load(runs / "runs/ae")
    pipe = vqgen.Pipeline.load(runs / "runs/prior")
    c, n, m, k = ae.cfg.channels, ae.cfg.image_size, ae.cfg.grid_size, ae.cfg.codebook_size
    images = _test_images(2)
    grid = torch.zeros(2, m, m, dtype=torch.long)
    wrong = [
        (lambda: ae.encode(torch.zeros(2, c, n + 8, n + 8, dtype=torch.uint8)), f"(B, {c}, {n}, {n})"),
        (lambda: ae.encode(torch.zeros(2, 1, n, n, dtype=torch.uint8)), f"(B, {c}, {n}, {n})"),
        (lambda: ae.encode(images.int()), "uint8 in [0, 255] or float"),
        (lambda: ae.encode(images.numpy()), "torch.from_numpy"),
        (lambda: ae.encode(images.tolist()), "torch.Tensor"),
        (lambda: ae.decode(grid[:, :5, :5]), f"(B, {m}, {m})"),
        (lambda: ae.decode(grid + k), f"[0, {k})"),
        (lambda: ae.decode(grid - 1), f"[0, {k})"),
        (lambda: ae.decode(grid.float()), "integers"),
        (lambda: ae.decode_levels(grid), "list of 1 tensor"),
        (lambda: ae.generate(4), "Pipeline.load"),
        (lambda: pipe.complete(images.double() / 255, keep_rows=2.0), "keep_rows must be"),
        (lambda: pipe.complete(images.int(), keep_rows=2), "uint8 in [0, 255] or float"),
        (lambda: pipe.complete(np.zeros((2, c, n, n), np.uint8), keep_rows=2), "torch.from_numpy"),
        (lambda: pipe.generate(2, temperature=float("inf")), "temperature must be a finite number"),
    ]
    for call, needle in wrong:
        with pytest.raises(VQGenError) as caught:
            call()
        assert needle in str(caught.value), (needle, str(caught.value))
    assert not hasattr(ae, "generate")  # still an AttributeError for hasattr
    assert pipe.complete(images.double() / 127.5 - 1, keep_rows=2, n=1).shape == (2, 1, c, n, n)  # float64 is fine


@pytest.mark.parametrize(("n", "classes"), [(5000, 10), (64, 10), (64, 4), (8, 4), (7, 3), (3, 10), (100, 7)])
def test_all_classes_are_balanced_in_whole_rows_where_they_can_be(n, classes):
    from types import SimpleNamespace

    from vqgen.sample import MAX_GRID_ASPECT, resolve_classes

    labels, per_row = resolve_classes(SimpleNamespace(num_classes=classes, class_names=None), ["all"], n)
    counts = torch.bincount(labels, minlength=classes)
    assert len(labels) == n and counts.max() - counts.min() <= 1
    assert torch.equal(labels, labels.sort().values)  # class order, so the grid reads class by class
    rows = -(-n // per_row)
    whole_rows = n % per_row == 0 and bool((labels.view(rows, per_row) == labels.view(rows, per_row)[:, :1]).all())
    row_lengths = [d for d in range(1, n // classes + 1) if n % classes == 0 and (n // classes) % d == 0]
    if any(max(d * d / n, n / (d * d)) <= MAX_GRID_ASPECT for d in row_lengths):  # whole rows are possible
        assert whole_rows
    if (n, classes) == (5000, 10):  # the case: 500 each, not 568 and 497, in rows of 100
        assert counts.tolist() == [500] * 10 and per_row == 100


# ---------------------------------------------------- training from Python (vqgen.train_autoencoder, vqgen.train_prior)

TINY_AE = {"steps": 2, "hidden": 16, "embed_dim": 8, "batch_size": 8, "quantizer": "fsq", "fsq_levels": [4, 4]}
TINY_AE_FLAGS = ("--steps", "2", "--hidden", "16", "--embed-dim", "8", "--batch-size", "8", "--quantizer", "fsq")
TINY_PRIOR = {"steps": 2, "batch_size": 8, "layers": 2, "width": 32, "eval_every": 0}
TINY_PRIOR_FLAGS = ("--steps", "2", "--batch-size", "8", "--layers", "2", "--width", "32", "--eval-every", "0")


def _config(run: Path) -> dict:
    import json

    return json.loads((Path(run) / "config.json").read_text())


def test_train_autoencoder_from_python_is_the_cli_run(in_tmp):
    import vqgen

    results, run = vqgen.train_autoencoder(data="shapes", out="py/ae", code_factors=[4, 4], **TINY_AE)
    assert Path(run).resolve() == (in_tmp / "py/ae").resolve() and (run / "model.safetensors").exists()
    assert results and all(isinstance(value, float) for value in results.values())
    lists = ("--fsq-levels", "4,4", "--code-factors", "4x4")
    cli = run_cli("train-ae", "--data", "shapes", "--out", "cli/ae", *TINY_AE_FLAGS, *lists)
    assert cli.code == 0, cli.err
    py, sh = _config(in_tmp / "py/ae"), _config(in_tmp / "cli/ae")
    for section in ("model", "train", "adversarial", "data", "dataset"):
        assert py[section] == sh[section], section
    assert py["model"]["hidden"] == 16 and py["model"]["fsq_levels"] == [4, 4] and py["model"]["code_factors"] == [4, 4]


def test_train_prior_from_python_is_the_cli_run(runs, in_tmp):
    import vqgen

    codes = runs / "runs/codes.safetensors"
    results, run = vqgen.train_prior(codes=codes, out="py/prior", **TINY_PRIOR)
    assert Path(run).resolve() == (in_tmp / "py/prior").resolve() and "bits_per_code" in results
    cli = run_cli("train-prior", "--codes", codes, "--out", "cli/prior", *TINY_PRIOR_FLAGS)
    assert cli.code == 0, cli.err
    py, sh = _config(in_tmp / "py/prior"), _config(in_tmp / "cli/prior")
    for section in ("model", "train", "sampling", "codes", "parameters"):
        assert py[section] == sh[section], section
    assert (py["model"]["n_layer"], py["model"]["n_embd"]) == (2, 32)


def test_a_prior_size_set_in_its_config_wins_over_the_preset(runs, in_tmp):
    from vqgen.priors import PriorConfig
    from vqgen.priors.training import train_prior
    from vqgen.train import TrainConfig

    codes = runs / "runs/codes.safetensors"
    train_prior(PriorConfig(n_layer=2, n_embd=32), TrainConfig(steps=2, batch_size=8), codes, "given")
    model = _config(in_tmp / "given")["model"]
    assert (model["n_layer"], model["n_embd"]) == (2, 32)


def test_a_bad_prior_size_names_the_option_or_the_keyword_not_the_field(runs, in_tmp):
    import vqgen

    codes = runs / "runs/codes.safetensors"
    with pytest.raises(vqgen.VQGenError, match=r"^width \(30\) must be divisible by heads \(4\)"):
        vqgen.train_prior(codes=codes, out="prior", width=30, heads=4)
    result = run_cli("train-prior", "--codes", codes, "--out", "prior", "--width", "30", "--heads", "4")
    assert result.code != 0 and result.err.startswith("error: --width (30) must be divisible by --heads (4)")
    result = run_cli("train-prior", "--codes", codes, "--out", "prior", "--class-dropout", "2")
    assert result.code != 0 and result.err.startswith("error: --class-dropout must be a number in [0, 1]")
    assert not (in_tmp / "prior").exists()


def test_an_unknown_setting_is_an_error_that_names_it(in_tmp):
    import vqgen

    with pytest.raises(vqgen.VQGenError, match=r"train_autoencoder\(\) got an unknown setting 'hiden' .*'hidden'"):
        vqgen.train_autoencoder(out="ae", steps=2, hiden=16)
    hint = r"train_prior\(\) got an unknown setting 'n_layer' \(did you mean 'layers'\?\); known: "
    with pytest.raises(vqgen.VQGenError, match=hint):
        vqgen.train_prior(out="prior", n_layer=2)
    assert not (in_tmp / "ae").exists() and not (in_tmp / "prior").exists()


@pytest.mark.parametrize(("command", "function"), [("train-ae", "train_autoencoder"), ("train-prior", "train_prior")])
def test_a_train_command_passes_what_was_typed_to_the_function_with_its_defaults(command, function, monkeypatch):
    import inspect

    import typer.main

    from vqgen import api
    from vqgen.cli import app

    # every option is a setting of the function, and --help shows the function's default
    parameters = inspect.signature(getattr(api, function)).parameters
    options = typer.main.get_command(app).commands[command].params
    assert {p.name for p in options} == set(parameters) - {"console", "unknown"}
    for option in options:
        shown, default = option.default, parameters[option.name].default
        assert (str(shown) if isinstance(shown, Path) else shown) == default, option.name
    # the command passes only the options typed (lists parsed), so the function decides every default
    calls = []
    monkeypatch.setattr(api, function, lambda **kwargs: calls.append(kwargs) or ({}, Path("run")))
    typed = ("--fsq-levels", "4,4", "--seed", "0") if command == "train-ae" else ("--layers", "2", "--seed", "0")
    assert run_cli(command, *typed).code == 0
    assert [{k: v for k, v in calls[0].items() if k != "console"}] == [
        {"fsq_levels": [4, 4], "seed": 0} if command == "train-ae" else {"layers": 2, "seed": 0}
    ]


def test_errors_name_the_keyword_in_python_and_the_flag_on_the_command_line(in_tmp):
    import vqgen
    from vqgen.errors import keyword_names

    with pytest.raises(vqgen.VQGenError, match=r"^restart_below must be in \[0, 1\)") as raised:
        vqgen.train_autoencoder(out="ae", steps=2, restart_below=2.0)
    assert "--" not in str(raised.value)
    result = run_cli("train-ae", "--out", "ae", "--steps", "2", "--restart-below", "2")
    assert result.code == 2 and result.err.startswith("error: --restart-below must be in [0, 1)")
    assert not (in_tmp / "ae").exists()
    # a whole command in backticks is kept as typed; an option with another keyword takes that keyword
    text = "--class 3 is out of range; run `vqgen train-prior --level bottom` or pass --top-k"
    assert keyword_names(text) == "classes 3 is out of range; run `vqgen train-prior --level bottom` or pass top_k"
    assert keyword_names("cannot read 'runs/--x' nor '--y'") == "cannot read 'runs/--x' nor '--y'"  # paths, values
