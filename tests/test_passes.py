"""The one pass over a split (vqgen.passes.split_pass) against a direct, unbatched computation: its figures, its
codes and its counts, and that it leaves a model in training mode exactly as it found it."""

from __future__ import annotations

import pytest
import torch

from vqgen.data import Split, to_float
from vqgen.metrics import image_mse
from vqgen.passes import split_pass
from vqgen.vqvae import VQVAE, AEConfig


def _model(**overrides) -> VQVAE:
    torch.manual_seed(0)
    settings = dict(image_size=16, channels=3, hidden=16, res_hidden=8, embed_dim=8, codebook_size=16)
    return VQVAE(AEConfig(**{**settings, **overrides}))  # training mode, as a fresh model is


def _images(n: int = 70) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


@pytest.mark.parametrize("overrides", [{"quantizer": "ema"}, {"levels": 2}, {"code_factors": [4, 4]}])
def test_split_pass_equals_one_unbatched_pass_and_changes_nothing(overrides: dict):
    model = _model(**overrides)
    images = _images()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = split_pass(model, Split(images, None), torch.device("cpu"), batch_size=16, codes=True, keep=5)

    assert model.training  # the mode it was in, put back
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no k-means, EMA or restart ran

    model.eval()
    with torch.no_grad():
        recon, _ = model(to_float(images))  # all 70 at once
        grids = model.encode_levels(images)
    assert result.metrics["mse"] == pytest.approx(float(image_mse(recon, to_float(images)).mean()), rel=1e-4)
    assert len(result.grids) == model.cfg.levels
    assert all(torch.equal(a, b) for a, b in zip(result.grids, grids, strict=True))
    assert result.recons.shape == (5, 3, 16, 16) and result.recons.dtype == torch.uint8
    # counts are by the quantizer's own index, which a renumbered codebook maps to other numbers
    own = grids if not model.cfg.renumbered else [model.code_order[i][g] for i, g in enumerate(grids)]
    for level, grid in enumerate(own):
        assert torch.equal(result.counts[level], torch.bincount(grid.flatten(), minlength=model.cfg.codebook_size))

    encoded = split_pass(model, Split(images, None), torch.device("cpu"), batch_size=32, decode=False, codes=True)
    assert all(torch.equal(a, b) for a, b in zip(encoded.grids, grids, strict=True))
    assert torch.equal(encoded.counts, result.counts) and "mse" not in encoded.metrics
    assert len(encoded.recons) == 0
