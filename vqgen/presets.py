"""Defaults that depend on the data set, in one place.

`Preset()` is the recipe for real data (MNIST, Fashion-MNIST, CIFAR-10, folders and array files), sized so that each
stage takes about ten minutes or less on a 2-core CPU; the built-in `shapes` has its own, sized so that `make demo`
(both stages with no flags) finishes in under five minutes with recognisable samples. A flag given on the command
line always wins. The README ("Both stages on each data set" and "The demo") has the measurements behind each
number; the comments below say which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    # Stage one. MNIST, 2 cores (AVX-512): 3000 steps of 64 reach 27.07 dB held-out in 3.0 min, where the earlier
    # 1500 steps of 128 (the same images seen) reached 26.39 dB: at a fixed budget, more and smaller steps win.
    codebook_size: int = 512
    ae_quantizer: str = "ema"
    fsq_levels: tuple[int, ...] = (8, 8, 8)  # the levels of the fsq quantizer, K their product
    code_factors: tuple[int, ...] = ()  # sub-vocabulary sizes of a code (vqgen.factorise); (): flat codes
    ae_hidden: int = 128
    ae_downsample: int = 4  # n/m: an n×n image → m×m codes
    ae_steps: int = 3000
    ae_lr: float = 3e-3
    ae_batch_size: int = 64
    ae_ema_weights: float = 0.0  # decay of the weight average (0: none)
    # The adversarial option (0: off); its start and feature matching apply only with this weight.
    ae_adversarial: float = 0.0
    ae_adversarial_start: int = 0
    ae_feature_matching: float = 0.0
    # Stage two: a 4 × 128 Transformer at about 20,000 codes/s on the same machine, so 3600 steps of 64 grids take
    # about ten minutes. The weight average (0.999) lowered held-out bits per code from 2.887 to 2.878 in the
    # same MNIST run. The guidance scale is the one with the lowest Fréchet distance in bench/guidance.py.
    transformer_layers: int = 4
    transformer_width: int = 128
    prior_steps: int = 3600
    prior_lr: float = 1e-3
    prior_batch_size: int = 64
    prior_ema_weights: float = 0.999
    prior_guidance: float | None = 1.5  # classifier-free guidance recorded for `sample` and `eval` (None: none)


PRESETS = {
    # Measured on 2 cores (README, "The demo"): at a fixed time, smaller batches and more steps win in a short run,
    # for the autoencoder 22.8 dB (300 steps of 128) → 25.4 (600 of 64) → 27.9 (1200 of 32), each in about 75 s;
    # hidden 64 halves the cost of a step against 128 (0.28 vs 0.59 s at batch 128, one timing run); a 4 × 64
    # Transformer sees 2.5× the codes per second of 4 × 128, and lr 3e-3 suits a run this short. 64 codes are
    # enough for flat fills and their edges. No weight average (not measured here). Guidance 2: on 5,000 samples of
    # the demo's prior (bench/guidance.py --data shapes) 96.8% of the asked shape and a Fréchet distance of 22.2,
    # against 90.6% and 37.7 unguided (1.5: 95.1%, 26.9; 3: 96.0%, 18.6, but its grid shows mixed-colour fills and
    # stray specks that 2 does not).
    "shapes": Preset(
        codebook_size=64,
        ae_hidden=64,
        ae_steps=1200,
        ae_batch_size=32,
        transformer_width=64,
        prior_steps=1200,
        prior_lr=3e-3,
        prior_batch_size=32,
        prior_ema_weights=0.0,
        prior_guidance=2.0,
    ),
    # MNIST, stage one for issue 13's target of 28.5 dB held-out in at most ten minutes: K = 512 plateaued at
    # 28.37 dB after 13,000 steps (10 min 14 s) with the weight average, where K = 1024 reached 29.03 dB in 12,500
    # steps (9 min 46 s) on the AVX-512 EPYC. 9,000 steps reached 28.58 dB in 6 min 52 s on an Intel Xeon with AMX
    # (bench/results/dataset-mnist.json), leaving room for slower CPUs; the weight average added 0.07 dB there.
    # Samples at the same prior: 98.0% of the asked class (98.6% on the K = 512 codes), Fréchet distance 0.92 (0.89).
    # Stage two keeps the real-data recipe.
    "mnist": Preset(codebook_size=1024, ae_steps=9000, ae_ema_weights=0.999),
    # CIFAR-10 (the torchvision set, or an array file or folder named cifar10…), held-out figures in the eval
    # classifier's features (bench/natural.py, README "Natural images"). K = 512 and the reconstruction loss alone
    # (14 min): reconstructions at a Fréchet distance of 21.7 keeping 0.65 of the originals' class, samples at 33.5
    # and 35.6% of the asked class. K = 2048 with the adversarial term (0.2 after 1600 steps) and feature matching
    # 0.1, 5,600 steps (15 min on the EPYC with tests beside it, 10 min on an Intel Xeon with AMX): 11.6 and 0.76
    # (9.8 and 0.77 on the Xeon), samples at 25.1 and 41.6% on the EPYC, the best samples measured.
    # K = 16384 (3,800 steps, feature matching 0.3) meets every reconstruction target of issue 13 (4.96, 0.87), but
    # its prior's 16384-way output makes a prior step 3.5 times dearer than at K = 2048 (929 against 263 ms; the
    # 3600 steps of stage two in 56 rather than 16 minutes, bench/prior_vocab.py), and its samples are unmeasured,
    # so it is not the default.
    "cifar10": Preset(
        codebook_size=2048,
        ae_steps=5600,
        ae_adversarial=0.2,
        ae_adversarial_start=1600,
        ae_feature_matching=0.1,
    ),
}


# Real-data presets that also serve a file or folder whose name starts with the set's name and then a non-alphanumeric
# character: `cifar10-train-40k.npz` and `cifar10/` take cifar10's, `cifar100.npz` does not. shapes is built in
# and only ever named.
BY_FILE_NAME = ("fashion-mnist", "mnist", "cifar10")


def preset_for(dataset: str | None, image_size: int | None = None) -> Preset:
    """The defaults for data set `dataset` (a built-in name, a path, or None) of n×n images (n = `image_size`,
    where known): a named set's own, else the real-data recipe sized for n (`sized_preset`)."""
    name = (dataset or "").strip().lower()
    if name in PRESETS:
        return PRESETS[name]
    base = Path(name.rstrip("/")).name
    for key in BY_FILE_NAME:
        if key in PRESETS and re.match(re.escape(key) + r"($|[^a-z0-9])", base):
            return PRESETS[key]
    return sized_preset(image_size) if image_size else Preset()


# Steps at n pixels = CIFAR-10's × (32/n)² × this ratio: how much cheaper per pixel a step is at 8× downsampling than
# at 4× (the extra outer stage is a narrow one), so that stage one keeps CIFAR-10's time; docs/results.md ("Your own
# images") has the timing behind it.
LARGE_IMAGE_STEP_RATIO = 2.4


def grid_downsample(image_size: int) -> int:
    """The downsampling factor that brings an n×n image closest to an 8×8 grid of codes (dividing n where one does):
    the prior's sequence, and so its cost, stays that of CIFAR-10's grid at any image size."""
    choices = [d for d in (2, 4, 8, 16) if image_size % d == 0] or [2, 4, 8, 16]
    return min(choices, key=lambda d: (abs(image_size / d - 8), -d))


def sized_preset(image_size: int) -> Preset:
    """The real-data recipe for n×n images of a folder or array file: up to 32 pixels the plain one (4× downsampling);
    larger images keep an 8×8 grid (`grid_downsample`), so stage two costs what it costs at 32 pixels, and take
    CIFAR-10's natural-image recipe for stage one with fewer steps, in proportion to the pixels, so that stage one
    keeps to its time."""
    base = Preset()
    if image_size <= 32:
        return base
    natural = PRESETS["cifar10"]
    pixels = (32 / image_size) ** 2
    steps = max(500, round(natural.ae_steps * pixels * LARGE_IMAGE_STEP_RATIO / 100) * 100)
    return replace(
        natural,
        ae_downsample=grid_downsample(image_size),
        ae_steps=steps,
        ae_adversarial_start=round(steps * natural.ae_adversarial_start / natural.ae_steps / 100) * 100,
    )
