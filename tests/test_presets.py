"""Defaults that follow the data: the size rule for folders and array files, named sets' own presets, flags win."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vqgen.autoencoder import resolve_autoencoder
from vqgen.codes import load_codes
from vqgen.errors import VQGenError
from vqgen.presets import PRESETS, grid_downsample, preset_for, prior_patch

from conftest import run_cli


def test_the_grid_follows_the_image_size_and_the_prior_reads_larger_grids_as_patches():
    for size in (28, 32, 64, 128):
        d = grid_downsample(size)
        assert size % d == 0
        target = 8 if size <= 32 else 16  # 7×7 for MNIST's 28 pixels, 8×8 at 32, 16×16 above
        assert abs(size // d - target) <= 1
    assert [prior_patch(m, 512) for m in (7, 8, 16)] == [1, 1, 2]  # the sequence stays at most 8×8 positions
    assert prior_patch(16, 512, level="bottom") == 1  # a bottom prior reads a context grid
    assert prior_patch(16, 1 << 20) == 1  # four codes of 20 bits do not fit one 64-bit number


def test_presets_follow_the_image_size_of_unnamed_data_only():
    small, large = preset_for("photos/", 32), preset_for("photos/", 64)
    assert (32 // small.ae_downsample, 64 // large.ae_downsample) == (8, 16)
    assert large.ae_steps < small.ae_steps  # a 64-pixel step costs more: fewer steps in the same time
    assert large.ae_adversarial == 0  # the discriminator sees full-size images: off where its cost grows
    assert preset_for("mnist", 64) is PRESETS["mnist"]  # a named set keeps its own, whatever the size
    assert preset_for("photos/") == preset_for("photos/", 32)


def test_a_flag_always_wins_over_the_preset():
    preset = preset_for("photos/", 64)
    assert resolve_autoencoder({}, preset).downsample == preset.ae_downsample
    assert resolve_autoencoder({"downsample": 4, "hidden": None}, preset).downsample == 4
    chosen = resolve_autoencoder({"codebook_size": 4096}, preset)
    assert chosen.codebook_size == 4096 and chosen.code_factors == []  # the preset's factors go with its own K only
    with pytest.raises(VQGenError, match="downsample"):
        resolve_autoencoder({"downsample": 3}, preset)


def test_a_64_pixel_folder_gets_a_16x16_grid_read_as_patches_and_says_why(in_tmp):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (in_tmp / "photos" / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(in_tmp / "photos" / label / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(in_tmp / "photos" / "cats" / "grey.png")
    small = ("--hidden", "16", "--embed-dim", "8", "--batch-size", "4", "--steps", "2")
    result = run_cli("train-ae", "--data", "photos", *small)
    assert result.code == 0, result.err
    said = result.out.replace("\n", " ")
    assert "64×64 images → 16×16 codes" in said and "2×2 patches" in said
    config = json.loads((in_tmp / "runs/ae/config.json").read_text())
    assert config["model"]["downsample"] == 4 and config["model"]["channels"] == 3
    result = run_cli("train-ae", "--data", "photos", *small, "--downsample", "8", "--out", "runs/ae8")
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/ae8/config.json").read_text())["model"]["downsample"] == 8
    # the codes remember the image size, so that the prior takes the defaults of the size, not of 32 pixels
    assert run_cli("encode").code == 0
    codes = load_codes("runs/codes.safetensors")
    assert codes.image_size == 64 and preset_for(codes.dataset, codes.image_size) == preset_for("photos/", 64)
    tiny = ("--steps", "2", "--batch-size", "4", "--layers", "1", "--width", "16", "--eval-every", "0")
    result = run_cli("train-prior", *tiny)
    assert result.code == 0, result.err
    assert json.loads((in_tmp / "runs/prior/config.json").read_text())["model"]["patch"] == 2
    result = run_cli("sample", "--n", "2", "--class", "dogs")
    assert result.code == 0, result.err


def test_held_out_files_stay_held_out_when_the_folder_grows(tmp_path):
    from vqgen.data import load_data

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)

    def add(start: int, stop: int) -> None:
        for i in range(start, stop):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")

    add(0, 60)
    before = load_data(str(folder), tmp_path / "root")
    assert 0 < len(before.held_out) < 60 and len(before.test) == len(before.held_out)
    add(60, 120)
    after = load_data(str(folder), tmp_path / "root")
    assert set(before.held_out) <= set(after.held_out)  # what was held out still is
    trained_before = {f"{i:03d}.png" for i in range(60)} - set(before.held_out)
    assert not trained_before & set(after.held_out)  # and no training image became a held-out one


def test_commands_that_read_a_run_say_when_its_folder_changed(in_tmp):
    rng = np.random.default_rng(2)
    (in_tmp / "imgs").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(in_tmp / "imgs" / f"{i:03d}.png")
    small = ("--hidden", "16", "--embed-dim", "8", "--batch-size", "4", "--steps", "2", "--adversarial", "0")
    assert run_cli("train-ae", "--data", "imgs", *small).code == 0
    config = json.loads((in_tmp / "runs/ae/config.json").read_text())
    assert config["dataset"]["held_out"]["count"] == config["dataset"]["test_size"]
    quiet = run_cli("encode")
    assert quiet.code == 0 and "changed since" not in quiet.err
    for i in range(40, 80):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(in_tmp / "imgs" / f"{i:03d}.png")
    noted = run_cli("encode")
    assert noted.code == 0 and "changed since the autoencoder was trained" in noted.err


def test_presets_command_lists_every_preset_and_help_takes_its_numbers_from_them():
    from vqgen.presets import LISTED, defaults_text, listed_preset, stage_one_text

    result = run_cli("presets")
    assert result.code == 0, result.err
    flat = " ".join(result.out.split())
    for key in LISTED:
        assert stage_one_text(listed_preset(key)).split(",")[0] in flat
    help_text = " ".join(run_cli("train-ae", "--help").out.split()).replace("│ ", "").replace(" │", "")
    assert str(PRESETS["mnist"].codebook_size) in defaults_text("codebook_size")
    assert defaults_text("codebook_size").split(" (")[0] in help_text


def test_a_folder_of_odd_files_converts_what_it_can_skips_the_rest_and_keeps_its_class_names(in_tmp):
    rng = np.random.default_rng(2)
    for label in ("cats", "dogs"):
        (in_tmp / "photos" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(in_tmp / f"photos/{label}/{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(in_tmp / "photos/cats/grey.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "CMYK").save(in_tmp / "photos/cats/cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(in_tmp / "photos/dogs/alpha.png")
    whole = (in_tmp / "photos/dogs/0.png").read_bytes()
    (in_tmp / "photos/dogs/truncated.png").write_bytes(whole[: len(whole) // 2])
    (in_tmp / "photos/dogs/notes.jpg").write_text("not an image")
    small = ("--hidden", "16", "--embed-dim", "8", "--batch-size", "4", "--steps", "2", "--codebook-size", "16")
    result = run_cli("train-ae", "--data", "photos", *small)
    assert result.code == 0, result.err
    assert "skipped 2 unreadable" in " ".join(result.out.split())  # the truncated file and the text named .jpg
    config = json.loads((in_tmp / "runs/ae/config.json").read_text())
    data = config["dataset"]
    assert data["train_size"] + data["test_size"] == 19 and config["model"]["channels"] == 3  # 16 + 3 converted
    assert run_cli("encode").code == 0
    tiny_prior = ("--layers", "1", "--width", "16", "--steps", "2", "--batch-size", "4")
    assert run_cli("train-prior", *tiny_prior).code == 0
    result = run_cli("sample", "--n", "4", "--class", "dogs", "--save-codes")
    assert result.code == 0, result.err
    from vqgen import checkpoint as ckpt

    assert ckpt.load_tensors(in_tmp / "samples/codes.safetensors")["labels"].tolist() == [1, 1, 1, 1]
    bad = run_cli("sample", "--n", "4", "--class", "birds")
    assert bad.code != 0 and "cats, dogs" in bad.err and "Traceback" not in bad.err


def test_a_grid_of_one_class_per_row_is_labelled_with_the_class_names():
    from types import SimpleNamespace

    import torch

    from vqgen.sample import row_names

    pipe = SimpleNamespace(class_names=["cats", "dogs"], num_classes=2)
    assert row_names(pipe, torch.tensor([0, 0, 1, 1]), 2) == ["cats", "dogs"]
    assert row_names(pipe, torch.tensor([0, 1, 1, 0]), 2) is None  # mixed rows: no labels
    assert row_names(SimpleNamespace(class_names=None, num_classes=2), torch.tensor([1, 1]), 2) == ["1"]


def test_the_guidance_rule_keeps_diversity_then_takes_the_most_layout():
    from vqgen.presets import choose_guidance

    def row(guidance, recall, gap, two_sample=0.8):
        return {
            "guidance": guidance,
            "recall_samples": recall,
            "structure_gap_samples": gap,
            "two_sample_samples_vs_reconstructions": two_sample,
        }

    # the largest gap loses its diversity (recall under 90% of the best): the next largest gap wins
    assert choose_guidance([row(1, 0.60, 0.10), row(2, 0.58, 0.20), row(4, 0.40, 0.30)]) == 2
    # gaps within the tie margin: the lower two-sample accuracy decides
    assert choose_guidance([row(2, 0.60, 0.200, 0.85), row(3, 0.60, 0.205, 0.80)]) == 3
    assert choose_guidance([row(2, 0.60, 0.200, 0.75), row(3, 0.60, 0.205, 0.80)]) == 2
    # no labels, no gap: the most diverse scale
    assert choose_guidance([row(1, 0.50, None), row(2, 0.55, None)]) == 2
