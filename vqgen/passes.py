"""One pass of an autoencoder over a split of images: the one batched loop behind training's held-out figures,
`vqgen eval`'s reconstructions, `vqgen encode` and the codebook plots.

It runs in eval mode without gradients (so it never changes a codebook) and puts the model's mode back after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqgen.data import Split, iterate_batches, pixel_batch, to_float, to_uint8
from vqgen.metrics import codes_used, image_mse, perplexity, psnr_from_mse, ssim
from vqgen.quantize import QuantizerOutput
from vqgen.vqvae import VQVAE

PASS_BATCH = 500  # images per batch at 32 px; pixel_batch scales it down for larger images


@dataclass
class SplitPass:
    counts: torch.Tensor  # (levels, K) int64 on the CPU: how often each code was chosen, top first, own indices
    metrics: dict[str, float]  # mse, psnr, ssim, codes_used, perplexity (+ _top pair); usage only without decoding
    grids: list[torch.Tensor]  # with codes=True: (N, m_l, m_l) int64 per level, top first, numbered as encode does
    recons: torch.Tensor  # (keep, C, n, n) uint8: the reconstructions of the split's first `keep` images


def level_counts(vq: QuantizerOutput) -> torch.Tensor:
    """How often each code of each level was chosen: (levels, K), top first."""
    return torch.stack([vq.top.counts, vq.counts]) if vq.top is not None else vq.counts[None]


def usage_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Codes used and perplexity from (levels, K) counts; a two-level model's top grid gets its own `_top` pair."""
    metrics = {"codes_used": codes_used(counts[-1]), "perplexity": perplexity(counts[-1])}
    if len(counts) == 2:
        metrics |= {"codes_used_top": codes_used(counts[0]), "perplexity_top": perplexity(counts[0])}
    return metrics


@torch.no_grad()
def split_pass(
    model: VQVAE,
    split: Split,
    device: torch.device,
    batch_size: int = PASS_BATCH,
    *,
    decode: bool = True,
    codes: bool = False,
    keep: int = 0,
    progress=None,
    label: str = "reconstruct",
) -> SplitPass:
    """Every image of `split` through the encoder and quantizer (and the decoder unless decode=False, which then
    gives no image metrics and no reconstructions), in batches of `batch_size` at 32 px."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(model.cfg.levels, model.cfg.codebook_size, dtype=torch.long, device=device)
    se_sum, ssim_sum = 0.0, 0.0
    grids: list[list[torch.Tensor]] = [[] for _ in model.cfg.grid_sizes] if codes else []
    kept: list[torch.Tensor] = []
    task = progress.add_task(label, total=len(split), info="") if progress is not None else None
    try:
        for start, stop in iterate_batches(len(split), pixel_batch(batch_size, split.images)):
            x = to_float(split.images[start:stop]).to(device)  # (B, C, n, n) in [-1, 1]
            if decode:
                recon, vq = model(x)  # (B, C, n, n)
                se_sum += float(image_mse(recon, x).sum())
                ssim_sum += float(ssim(recon, x).sum())
                if start < keep:
                    kept.append(to_uint8(recon[: keep - start]).cpu())
            else:
                vq = model.quantize(x)
            counts += level_counts(vq)
            if codes:
                for level, grid in zip(grids, model.code_grids(vq), strict=True):
                    level.append(grid.cpu())  # (B, m_l, m_l)
            if task is not None:
                progress.update(task, completed=stop)
    finally:
        model.train(was_training)
    counts = counts.cpu()
    metrics = usage_metrics(counts)
    if decode:
        mse = se_sum / max(len(split), 1)
        metrics = {"mse": mse, "psnr": psnr_from_mse(mse), "ssim": ssim_sum / max(len(split), 1)} | metrics
    joined = [
        torch.cat(level) if level else torch.zeros(0, m, m, dtype=torch.long)
        for level, m in zip(grids, model.cfg.grid_sizes, strict=False)
    ]
    recons = torch.cat(kept) if kept else split.images[:0]
    return SplitPass(counts, metrics, joined, recons)
