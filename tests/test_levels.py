"""Two-level codes (VQ-VAE-2): the shapes of every stage, the bottom prior's causality given the top grid, and the
whole pipeline end to end on the built-in shapes at 32 px."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vqgen.vqvae import VQVAE, AEConfig

from conftest import run_cli
from test_priors import ARCHS, K, M, T, random_codes, tiny_prior

MC = M // 2  # the top grid's side


def two_level(**overrides) -> VQVAE:
    torch.manual_seed(0)
    settings = dict(image_size=32, hidden=32, embed_dim=16, codebook_size=K, levels=2, res_hidden=8)
    return VQVAE(AEConfig(**{**settings, **overrides})).eval()


def test_two_level_autoencoder_shapes_and_round_trip():
    model = two_level()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    recon, vq = model(x)
    assert recon.shape == x.shape
    assert vq.indices.shape == (3, 8, 8) and vq.top is not None and vq.top.indices.shape == (3, 4, 4)
    assert vq.counts.sum() == 3 * 64 and vq.top.counts.sum() == 3 * 16
    assert model.cfg.grid_sizes == [4, 8]
    top, bottom = model.encode_levels(x)
    assert torch.equal(top, vq.top.indices) and torch.equal(bottom, vq.indices)
    # decoding the codes gives exactly what the forward pass reconstructs: the decoder reads both levels
    assert torch.allclose(model.decode_levels([top, bottom]), recon, atol=1e-5)
    other_top = (top + 1) % K
    assert not torch.allclose(model.decode_levels([other_top, bottom]), recon, atol=1e-3)
    with pytest.raises(ValueError, match="two code grids"):
        model.encode(x)
    # the gradient reaches both encoders through both quantizers
    model.train()
    recon, vq = model(x)
    (((recon - x) ** 2).mean() + vq.loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    assert model.top.encoder[0].weight.grad.abs().sum() > 0


def test_one_level_autoencoder_is_unchanged_by_the_option():
    one = VQVAE(AEConfig(image_size=32, hidden=32, embed_dim=16, codebook_size=K))
    assert one.top is None and not any(k.startswith("top.") for k in one.state_dict())
    assert one.decoder.net[0].in_channels == 16 and two_level().decoder.net[0].in_channels == 32
    with pytest.raises(ValueError, match="^levels must"):
        AEConfig(levels=3)


def bottom_prior(arch: str, num_classes: int = 0):
    return tiny_prior(arch, num_classes=num_classes, context_grid=MC)


@pytest.mark.parametrize("arch", ARCHS)
def test_bottom_prior_is_causal_given_the_top_grid(arch: str):
    prior = bottom_prior(arch)
    context = torch.randint(0, K, (1, MC, MC), generator=torch.Generator().manual_seed(2))
    base = random_codes(1).view(1, T)
    batch = base.repeat(T + 1, 1)
    for j in range(T):  # row j + 1 perturbs bottom position j only
        batch[j + 1, j] = (batch[j + 1, j] + 1) % K
    with torch.no_grad():
        logits = prior(batch.view(T + 1, M, M), None, context.expand(T + 1, MC, MC))  # (T+1, T, K)
        changed = (logits[1:] - logits[:1]).abs().amax(dim=-1) > 1e-5
        assert torch.equal(changed.T, torch.ones(T, T, dtype=torch.bool).tril(diagonal=-1))
        # the top grid is given: every bottom position, the first included, may read all of it
        moved = torch.zeros(T, dtype=torch.bool)
        for c in range(MC * MC):
            other = context.clone().view(1, -1)
            other[0, c] = (other[0, c] + 1) % K
            out = prior(base.view(1, M, M), None, other.view(1, MC, MC))
            moved |= (out - logits[:1]).abs().amax(dim=-1)[0] > 1e-5
        assert moved.all()
        with pytest.raises(ValueError, match="conditioned on"):
            prior(base.view(1, M, M))


@pytest.mark.parametrize("arch", ARCHS)
def test_bottom_prior_samples_in_range_and_the_transformer_cache_agrees(arch: str):
    prior = bottom_prior(arch, num_classes=3)
    context = torch.randint(0, K, (5, MC, MC), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 0])

    def run(use_cache: bool, guidance: float | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(7)
        return prior.sample(5, labels=labels, generator=gen, context=context, use_cache=use_cache, guidance=guidance)

    codes = run(True)
    assert codes.shape == (5, M, M) and codes.min() >= 0 and codes.max() < K
    assert torch.equal(codes, run(False))
    assert torch.equal(run(True, 2.0), run(False, 2.0))  # guidance doubles the context with the batch


def test_two_level_pipeline_end_to_end_on_shapes(in_tmp):
    small = ("--hidden", "32", "--embed-dim", "16", "--codebook-size", "32", "--batch-size", "16")
    result = run_cli("train-ae", "--levels", "2", "--steps", "6", *small)
    assert result.code == 0, result.err
    assert "codes_used_top" in result.out
    config = json.loads((in_tmp / "runs/ae/config.json").read_text())
    assert config["model"]["levels"] == 2

    assert run_cli("encode").code == 0
    from vqgen.codes import load_codes

    codes = load_codes(in_tmp / "runs/codes.safetensors")
    assert codes.levels == 2 and codes.train_codes.shape[1:] == (8, 8) and codes.train_top.shape[1:] == (4, 4)
    assert codes.train_top.shape[0] == codes.train_codes.shape[0] and codes.test_top.shape[0] == 2_000

    missing = run_cli("train-prior", "--steps", "2")
    assert missing.code != 0 and "--level top" in missing.err and "Traceback" not in missing.err
    prior_flags = ("--steps", "8", "--batch-size", "16", "--layers", "1", "--width", "32", "--eval-every", "0")
    assert run_cli("train-prior", "--level", "top", *prior_flags).code == 0
    sampled_alone = run_cli("sample", "--n", "4")
    assert sampled_alone.code != 0 and "--level bottom" in sampled_alone.err
    result = run_cli("train-prior", "--level", "bottom", "--arch", "pixelcnn", *prior_flags)
    assert result.code == 0, result.err
    bottom = json.loads((in_tmp / "runs/prior-bottom/config.json").read_text())
    assert bottom["codes"]["level"] == "bottom" and bottom["model"]["context_grid"] == 4
    assert (in_tmp / "runs/prior-bottom/samples.png").exists()

    result = run_cli("sample", "--n", "6", "--save-codes")
    assert result.code == 0, result.err
    from safetensors.torch import load_file

    saved = load_file(in_tmp / "samples/codes.safetensors")
    assert saved["top"].shape == (6, 4, 4) and saved["codes"].shape == (6, 8, 8)
    assert Image.open(in_tmp / "samples/000.png").size == (32, 32)
    wrong = run_cli("sample", "--prior", "runs/prior-bottom")
    assert wrong.code != 0 and "--bottom-prior" in wrong.err

    result = run_cli("complete", "--image", "samples/000.png", "--keep-rows", "2", "--n", "2")
    assert result.code == 0, result.err
    assert run_cli("complete", "--image", "samples/000.png", "--keep-rows", "4").code != 0  # the top grid has 4 rows

    result = run_cli(
        "eval",
        "--prior",
        "runs/prior",
        "--n",
        "40",
        "--train-limit",
        "200",
        "--classifier-steps",
        "5",
        "--two-sample-steps",
        "20",
    )
    assert result.code == 0, result.err
    report = json.loads((in_tmp / "runs/prior/eval.json").read_text())
    assert report["likelihood"]["levels"] == 2 and "bottom_prior" in report["runs"]
    assert report["likelihood"]["bits_per_image"] == pytest.approx(report["likelihood"]["bits_per_code"] * (16 + 64))
    assert "perplexity_top" in report["reconstruction"]

    info = run_cli("info", "runs/prior-bottom")
    assert info.code == 0 and "context_grid" in info.out
