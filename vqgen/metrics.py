"""Metrics on images and codes. Images are compared on the [0, 1] scale (data range 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  # dB reported for identical images, where the true value is infinite


def psnr_from_mse(mse: float) -> float:
    """10·log10(1 / MSE) for images in [0, 1]; identical images give PSNR_CAP rather than infinity."""
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return 10.0 * math.log10(1.0 / mse)


def image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image MSE on the [0, 1] scale of two batches in [-1, 1]: (B,)."""
    diff = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) / 2
    return diff.pow(2).flatten(1).mean(1)


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code usage histogram: K for uniform use of K codes, 1 for a single code."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return float(entropy.exp())


def codes_used(counts: torch.Tensor) -> float:
    """Fraction of the K codes chosen at least once."""
    return float((counts > 0).double().mean())


def entropy_bits(counts: torch.Tensor) -> float:
    """Unigram entropy in bits per code: what a prior that ignores context would pay per code."""
    p = counts.double() / counts.sum().clamp_min(1)
    return float(-(p * p.clamp_min(1e-30).log2()).sum())


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean structural similarity per image (B,), images in [-1, 1], uniform window, data range 1."""
    x, y = (a.float().clamp(-1, 1) + 1) / 2, (b.float().clamp(-1, 1) + 1) / 2
    window = min(window, x.shape[-1], x.shape[-2])
    c1, c2 = 0.01**2, 0.03**2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, window, stride=1)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F):
    ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½), the trace of the root taken from the eigenvalues of Σa Σb."""
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.t()), torch.cov(b.t())
    eig = torch.linalg.eigvals(cov_a @ cov_b).real.clamp_min(0)
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum()
    return float(value.clamp_min(0))


def grid_keys(codes: torch.Tensor) -> list[bytes]:
    """One hashable key per code grid (N, m, m): its int64 bytes, so equal grids give equal keys."""
    flat = codes.detach().reshape(len(codes), -1).to(torch.int64).cpu().numpy()  # (N, m·m)
    return [row.tobytes() for row in flat]


def distinct_fraction(codes: torch.Tensor) -> float:
    """Fraction of distinct grids among N grids (N, m, m): 1 when all differ, 1/N when all are the same."""
    if len(codes) == 0:
        return 0.0
    return len(set(grid_keys(codes))) / len(codes)


def copy_fraction(codes: torch.Tensor, reference: torch.Tensor | set[bytes]) -> float:
    """Fraction of grids (N, m, m) that equal some reference grid exactly (memorisation of the training set).

    `reference` is the training grids (M, m, m), or a set of their `grid_keys` to reuse across calls."""
    if len(codes) == 0:
        return 0.0
    seen = reference if isinstance(reference, set) else set(grid_keys(reference))
    return sum(key in seen for key in grid_keys(codes)) / len(codes)
