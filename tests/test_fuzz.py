"""Damaged files never crash the loaders with anything but the clear VQGenError (seeded byte flips and cuts)."""

import random

import pytest
import torch

from vqgen import checkpoint as ckpt
from vqgen.autoencoder import load_autoencoder
from vqgen.codes import CodesFile, load_codes, save_codes
from vqgen.errors import VQGenError
from vqgen.vqvae import VQVAE, AEConfig

CASES = 300


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cfg = AEConfig(image_size=8, channels=1, hidden=16, res_blocks=1, res_hidden=8, embed_dim=4, codebook_size=8)
    run = root / "ae"
    run.mkdir()
    ckpt.write_config(run, "vqvae", {"model": cfg.to_dict()})
    ckpt.save_tensors(run / ckpt.WEIGHTS, VQVAE(cfg).state_dict())
    codes = torch.randint(0, 8, (6, 2, 2))
    save_codes(
        root / "codes.safetensors",
        CodesFile(codes, codes[:2], torch.arange(6) % 2, torch.arange(2), 8, 2, 2, "toy", str(run), "0" * 64),
    )
    return run, root / "codes.safetensors"


def _damage(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.random()
    if kind < 0.3:
        return bytes(data[: rng.randrange(len(data))])  # truncated
    # bias the flips towards the header, where they change meaning rather than just weight values
    header_end = min(len(data), 8 + int.from_bytes(data[:8], "little"))
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(header_end) if rng.random() < 0.8 else rng.randrange(len(data))
        data[pos] = rng.randrange(256)
    return bytes(data)


def _check(load, path, data, rng):
    path.write_bytes(_damage(data, rng))
    try:
        load(path)
    except VQGenError as e:
        assert "\n" not in str(e)


def test_damaged_checkpoints_fail_cleanly(originals, tmp_path):
    run, _ = originals
    data = (run / ckpt.WEIGHTS).read_bytes()
    damaged = tmp_path / "ae"
    damaged.mkdir()
    (damaged / ckpt.CONFIG).write_bytes((run / ckpt.CONFIG).read_bytes())
    rng = random.Random(0)
    for _ in range(CASES):
        _check(lambda p: load_autoencoder(p.parent), damaged / ckpt.WEIGHTS, data, rng)


def test_damaged_codes_files_fail_cleanly(originals, tmp_path):
    _, codes = originals
    data = codes.read_bytes()
    rng = random.Random(1)
    for _ in range(CASES):
        _check(load_codes, tmp_path / "codes.safetensors", data, rng)


def test_damaged_config_fails_cleanly(originals, tmp_path):
    run, _ = originals
    data = (run / ckpt.CONFIG).read_bytes()
    damaged = tmp_path / "ae"
    damaged.mkdir()
    (damaged / ckpt.WEIGHTS).write_bytes((run / ckpt.WEIGHTS).read_bytes())
    rng = random.Random(2)
    for _ in range(100):
        _check(lambda p: load_autoencoder(p.parent), damaged / ckpt.CONFIG, data, rng)


def test_config_with_absurd_values_fails_cleanly(originals, tmp_path):
    import json
    import shutil

    run, _ = originals
    for key, value in (("hidden", -6), ("codebook_size", 0), ("embed_dim", "wide"), ("downsample", 3)):
        damaged = tmp_path / f"ae-{key}"
        shutil.copytree(run, damaged)
        config = json.loads((damaged / ckpt.CONFIG).read_text())
        config["model"][key] = value
        (damaged / ckpt.CONFIG).write_text(json.dumps(config))
        with pytest.raises(VQGenError, match="invalid model section"):
            load_autoencoder(damaged)
