"""End to end through the real entry point, on the built-in shapes data, at tiny step counts."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import run_cli

SMALL_AE = ("--hidden", "32", "--embed-dim", "16", "--codebook-size", "32", "--batch-size", "16")


@pytest.fixture
def tiny_defaults(monkeypatch):
    """Shrink only the default step counts, so the commands below run with no flags at all."""
    import dataclasses

    from vqgen.presets import PRESETS

    monkeypatch.setitem(PRESETS, "shapes", dataclasses.replace(PRESETS["shapes"], ae_steps=12, prior_steps=12))


def test_help_does_not_import_torch():
    code = "import sys, vqgen.cli; assert 'torch' not in sys.modules, 'torch imported by --help path'"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "vqgen", "--help"], capture_output=True, text=True, check=True)
    for command in ("train-ae", "encode", "train-prior", "sample", "complete", "reconstruct", "info"):
        assert command in out.stdout


def test_pipeline_with_no_flags(in_tmp, tiny_defaults):
    result = run_cli("train-ae")
    assert result.code == 0, result.err
    run = in_tmp / "runs" / "ae"
    for name in ("config.json", "model.safetensors", "state.safetensors", "metrics.jsonl", "recon.png"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "vqvae" and config["model"]["image_size"] == 32
    # the demo's preset for shapes, not the generic defaults
    assert config["model"]["hidden"] == 64 and config["model"]["codebook_size"] == 64
    assert config["train"]["steps"] == 12 and config["train"]["batch_size"] == 32
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    test = records[-1]
    assert test["split"] == "test" and {"mse", "psnr", "codes_used", "perplexity"} <= set(test)
    assert 0 < test["codes_used"] <= 1 and test["perplexity"] >= 1

    info = run_cli("info", str(run))
    assert info.code == 0 and "codebook_size" in info.out and "psnr" in info.out

    result = run_cli("encode")
    assert result.code == 0, result.err
    from vqgen.codes import load_codes

    codes = load_codes(in_tmp / "runs" / "codes.safetensors")
    assert codes.train_codes.shape == (20_000, 8, 8) and codes.test_codes.shape == (2_000, 8, 8)
    assert codes.num_classes == 4 and codes.train_labels is not None
    assert codes.codebook_size == 64  # the built-in shapes default

    result = run_cli("train-prior")
    assert result.code == 0, result.err
    assert (in_tmp / "runs" / "prior" / "samples.png").exists()
    config = json.loads((in_tmp / "runs" / "prior" / "config.json").read_text())
    assert (config["model"]["n_layer"], config["model"]["n_embd"]) == (4, 64)
    assert config["train"]["batch_size"] == 32 and config["train"]["lr"] == 3e-3

    result = run_cli("sample", "--n", "64")
    assert result.code == 0, result.err
    assert "sampling" in result.out and "decoding" in result.out
    files = sorted((in_tmp / "samples").glob("[0-9][0-9][0-9].png"))
    assert len(files) == 64
    assert all(Image.open(f).size == (32, 32) for f in files[:5])
    assert (in_tmp / "samples" / "grid.png").exists()

    result = run_cli("complete", "--image", str(files[0]), "--image", str(files[1]), "--n", "3", "--keep-rows", "4")
    assert result.code == 0, result.err
    grid = Image.open(in_tmp / "samples" / "completions.png")
    assert grid.size[0] > grid.size[1]  # 2 rows of 5 images

    result = run_cli("sample", "--n", "8", "--classes", "all", "--out", "per_class", "--save-codes")
    assert result.code == 0, result.err
    from safetensors.torch import load_file

    saved = load_file("per_class/codes.safetensors")
    assert saved["labels"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    result = run_cli("sample", "--n", "4", "--class", "star", "--class", "0", "--out", "named", "--save-codes")
    assert result.code == 0, result.err
    assert load_file("named/codes.safetensors")["labels"].tolist() == [3, 0, 3, 0]

    result = run_cli("reconstruct", "--n", "8")
    assert result.code == 0 and (run / "reconstruct.png").exists()


def test_train_ae_loss_falls(in_tmp):
    result = run_cli("train-ae", "--steps", "40", "--log-every", "10", "--batch-size", "32", "--hidden", "64")
    assert result.code == 0, result.err
    train = [json.loads(line) for line in (in_tmp / "runs/ae/metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert len(train) == 4
    assert train[-1]["loss"] < 0.85 * train[0]["loss"]
    assert train[-1]["psnr"] > train[0]["psnr"]


@pytest.mark.parametrize("downsample", [2, 4, 8, 16])
def test_every_downsample_keeps_the_grid_and_the_widths(downsample):
    from vqgen.vqvae import VQVAE, AEConfig, stage_widths

    cfg = AEConfig(image_size=64, hidden=64, downsample=downsample, codebook_size=16)
    # 2, 4 and 8 keep the widths their checkpoints were saved with; 16 adds a half-width stage at 1/8
    assert stage_widths(cfg) == {2: [64], 4: [16, 64], 8: [16, 16, 64], 16: [16, 16, 32, 64]}[downsample]
    model = VQVAE(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    grid = model.encode(x)
    assert grid.shape == (2, 64 // downsample, 64 // downsample)
    assert model.decode(grid).shape == x.shape


def test_downsample_16_end_to_end_at_64_pixels(in_tmp):
    from safetensors.torch import load_file

    rng = torch.Generator().manual_seed(0)
    (in_tmp / "faces").mkdir()
    for i in range(20):
        pixels = torch.randint(0, 256, (64, 64, 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(in_tmp / "faces" / f"{i}.png")
    flags = ("--data", "faces", "--downsample", "16", "--hidden", "32", "--codebook-size", "16")
    assert run_cli("train-ae", *flags, "--steps", "3", "--batch-size", "8").code == 0
    assert run_cli("encode", "--out", "codes.safetensors").code == 0
    codes = load_file("codes.safetensors")
    assert codes["train.codes"].shape[1:] == (4, 4)
    assert len(codes["train.codes"]) + len(codes["test.codes"]) == 20


@pytest.mark.parametrize("arch", ["transformer", "pixelcnn"])
def test_encode_then_train_prior_each_arch(in_tmp, arch):
    assert run_cli("train-ae", "--steps", "5", *SMALL_AE).code == 0
    assert run_cli("encode", "--out", "codes.safetensors").code == 0
    result = run_cli(
        "train-prior",
        "--codes",
        "codes.safetensors",
        "--arch",
        arch,
        "--steps",
        "30",
        "--log-every",
        "10",
        "--batch-size",
        "32",
        "--out",
        f"prior-{arch}",
    )
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (in_tmp / f"prior-{arch}" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    test = records[-1]
    assert test["split"] == "test"
    assert test["bits_per_image"] == pytest.approx(test["bits_per_code"] * 64)
    assert test["bits_per_code"] < 5.0  # K = 32: a uniform guess would pay 5 bits
    config = json.loads((in_tmp / f"prior-{arch}" / "config.json").read_text())
    assert config["model"]["arch"] == arch and config["model"]["num_classes"] == 4
    size = {"transformer": ("n_layer", "n_embd", 4, 64), "pixelcnn": ("pcnn_layers", "pcnn_channels", 10, 64)}[arch]
    assert (config["model"][size[0]], config["model"][size[1]]) == size[2:]
    from vqgen.checkpoint import sha256

    assert config["ae"]["sha256"] == sha256(in_tmp / "runs/ae/model.safetensors")


def test_codes_file_round_trip_and_metadata(in_tmp):
    from vqgen.checkpoint import sha256
    from vqgen.codes import load_codes

    assert run_cli("train-ae", "--steps", "3", *SMALL_AE).code == 0
    assert run_cli("encode").code == 0
    codes = load_codes("runs/codes.safetensors")
    assert codes.codebook_size == 32 and codes.grid_size == 8 and codes.dataset == "shapes"
    assert codes.ae_run == str((in_tmp / "runs/ae").resolve())
    assert codes.ae_sha256 == sha256("runs/ae/model.safetensors")
    assert codes.class_names == ["circle", "square", "triangle", "star"]
    # the codes are the autoencoder's own: re-encoding a few test images gives the same grids
    from vqgen.autoencoder import load_autoencoder
    from vqgen.data import load_data, to_float

    model, _ = load_autoencoder("runs/ae")
    images = load_data("shapes").test.images[:16]
    assert torch.equal(model.encode(to_float(images)), codes.test_codes[:16])


def test_help_texts_survive_rich_markup():
    """Rich reads `[word]` in a help text as a style tag and drops it (‖q − sg[z]‖² printed as ‖q − sg‖²)."""
    import re

    import typer.main

    from vqgen.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            assert not re.search(r"(?<!\\)\[[a-z/]", text), f"{name}: {text!r}"
