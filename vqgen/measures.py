"""Measures of samples that see more than colour and texture statistics: layout, fidelity against diversity, and
whether a fresh network can tell two image sets apart.

- **Structure**: an image with its k×k patches shuffled keeps every pixel and most texture statistics but loses its
  layout. How much of the class (or of the features) a set loses under the shuffle is how much its layout carries.
- **Improved precision and recall** (Kynkäänniemi et al., NeurIPS 2019, k = 3) and **density and coverage** (Naeem
  et al., ICML 2020, k = 5), from k-nearest-neighbour balls in a feature space: precision and density say whether
  samples lie where real images do, recall and coverage whether they reach all of it.
- **Classifier two-sample test** (Lopez-Paz and Oquab, ICLR 2017): a small convnet trained from scratch to tell two
  sets apart, scored on halves it never saw. 50% means it cannot; it needs no pretrained weights and sees whatever
  differs, layout included.

The k-NN maths is written here in torch rather than taken from the `prdc` package: that package brings scikit-learn
and SciPy for one pairwise-distance call, and these forty lines are checked against known answers in the tests.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from vqgen.data import iterate_batches, to_float
from vqgen.errors import VQGenError

PATCH_GRID = 4  # a patch about a quarter of the image side: small enough to break the layout, big enough for texture
PRECISION_RECALL_K = 3  # as Kynkäänniemi et al.
DENSITY_COVERAGE_K = 5  # as Naeem et al.


# ----------------------------------------------------------------------------------------------- structure


def shuffle_patches(images: torch.Tensor, k: int = PATCH_GRID, seed: int = 0) -> torch.Tensor:
    """(N, C, H, W) → the same images with their k×k grid of patches permuted, a fresh seeded permutation per image.

    Patches are ⌊H/k⌋ × ⌊W/k⌋; rows and columns beyond k whole patches stay where they are, so every image keeps its
    multiset of pixels. k = 1 returns the images unchanged."""
    if k < 1:
        raise VQGenError(f"the patch grid must be at least 1×1, not {k}×{k}")
    n, c, h, w = images.shape
    ph, pw = h // k, w // k
    if k == 1 or ph == 0 or pw == 0:
        return images.clone()
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(n, k * k, generator=generator), dim=1)  # (N, k²): a permutation per image
    body = images[:, :, : k * ph, : k * pw]
    patches = body.reshape(n, c, k, ph, k, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, k * k, c, ph, pw)
    patches = patches.gather(1, order[:, :, None, None, None].expand(-1, -1, c, ph, pw))  # (N, k², C, ph, pw)
    body = patches.reshape(n, k, k, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, k * ph, k * pw)
    out = images.clone()
    out[:, :, : k * ph, : k * pw] = body
    return out


# ----------------------------------------------------------------------------------------------- k-NN measures


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (Na, Nb) between feature rows, in float64 so that ties and zeros are exact enough."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N, F) → (N,): each row's distance to its k-th nearest other row (the radius of its k-NN ball)."""
    if len(features) <= k:
        raise VQGenError(f"k-nearest-neighbour measures need more than k = {k} images, not {len(features)}")
    d = _distances(features, features)  # (N, N), zeros on the diagonal
    return d.topk(k + 1, dim=1, largest=False).values[:, k]  # the +1 skips the row itself


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K) -> dict[str, float]:
    """Improved precision (share of fake rows inside some real row's k-NN ball) and recall (share of real rows
    inside some fake row's k-NN ball), features (N, F) and (M, F)."""
    d = _distances(fake, real)  # (M, N)
    precision = (d <= knn_radii(real, k)[None, :]).any(dim=1).double().mean()
    recall = (d.t() <= knn_radii(fake, k)[None, :]).any(dim=1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = DENSITY_COVERAGE_K) -> dict[str, float]:
    """Density (real k-NN balls holding each fake row, over k, averaged: about 1 when fake matches real, above 1
    when samples crowd the dense regions) and coverage (share of real rows whose k-NN ball holds some fake row)."""
    inside = _distances(fake, real) <= knn_radii(real, k)[None, :]  # (M, N)
    density = inside.double().sum() / (k * len(fake))
    coverage = inside.any(dim=0).double().mean()
    return {"density": float(density), "coverage": float(coverage)}


def fidelity_diversity(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    """Precision and recall (k = 3) and density and coverage (k = 5) of `fake` against `real` features."""
    return precision_recall(real, fake) | density_coverage(real, fake)


# ----------------------------------------------------------------------------------------------- two-sample test


TWO_SAMPLE_STEPS = 400  # a fixed budget, whatever the sizes: 51,200 images seen
TWO_SAMPLE_BATCH = 128
TWO_SAMPLE_WIDTH = 32
TWO_SAMPLE_INPUT = 32  # larger images are area-averaged to 32×32 first: layout survives, the cost stays flat


def two_sample_test(
    a: torch.Tensor,
    b: torch.Tensor,
    device: torch.device | str = "cpu",
    seed: int = 0,
    steps: int = TWO_SAMPLE_STEPS,
    progress=None,
    label: str = "two-sample test",
) -> dict:
    """Train a small convnet from scratch to tell uint8 image sets `a` and `b` (N, C, H, W) apart and score it on
    halves it did not train on. Returns its held-out accuracy (0.5: indistinguishable), that figure's standard
    error under the null (a and b alike), the sizes, the steps and the seconds taken. Both sets are cut to the
    smaller one's size."""
    from vqgen.classifier import Classifier, flip_and_shift

    if a.shape[1:] != b.shape[1:]:
        raise VQGenError(f"two-sample test: images of shape {tuple(a.shape[1:])} and {tuple(b.shape[1:])} differ")
    n = min(len(a), len(b))
    if n < 4:
        raise VQGenError(f"two-sample test: each set needs at least 4 images, not {n}")
    device = torch.device(device)
    t0 = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    pick_a = torch.randperm(len(a), generator=generator)[:n]
    pick_b = torch.randperm(len(b), generator=generator)[:n]
    half = n // 2
    train_x = torch.cat([a[pick_a[:half]], b[pick_b[:half]]])  # (2·half, C, H, W) uint8
    train_y = torch.cat([torch.zeros(half, dtype=torch.long), torch.ones(half, dtype=torch.long)])
    test_x = torch.cat([a[pick_a[half:]], b[pick_b[half:]]])
    test_y = torch.cat([torch.zeros(n - half, dtype=torch.long), torch.ones(n - half, dtype=torch.long)])
    batch = min(TWO_SAMPLE_BATCH, len(train_x))
    size = min(a.shape[-2:])
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        model = Classifier(a.shape[1], 2, TWO_SAMPLE_WIDTH, input_size=TWO_SAMPLE_INPUT if size > 32 else None)
        model = model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
        task = progress.add_task(label, total=steps, info=f"{n} + {n} images") if progress is not None else None
        model.train()
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = 2e-3 * min(1.0, (step + 1) / 20) * (1 - step / steps)
            rows = torch.randint(0, len(train_x), (batch,), generator=generator)
            x = to_float(train_x[rows])  # (B, C, H, W)
            x = flip_and_shift(x, generator, pad=max(1, size // 16)) if size >= 16 else x
            loss = F.cross_entropy(model(x.to(device)), train_y[rows].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if task is not None and ((step + 1) % 20 == 0 or step + 1 == steps):
                progress.update(task, completed=step + 1, info=f"loss {loss.item():.3f}")
        model.eval()
        correct = 0
        with torch.no_grad():
            for start, stop in iterate_batches(len(test_x), 500):
                logits = model(to_float(test_x[start:stop]).to(device))  # (B, 2)
                correct += int((logits.argmax(1).cpu() == test_y[start:stop]).sum())
    accuracy = correct / len(test_x)
    return {
        "accuracy": accuracy,
        "null_standard_error": 0.5 / math.sqrt(len(test_x)),  # the spread of the accuracy when a and b are alike
        "n_per_set": n,
        "n_train": len(train_x),
        "n_test": len(test_x),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 2),
    }
