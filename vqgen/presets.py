"""Defaults that depend on the data set, in one place, resolved once (autoencoder.train_autoencoder,
priors.training.train_prior) before anything is built; a flag given on the command line always wins.

`Preset()` is the recipe for real data up to 32 pixels (MNIST, Fashion-MNIST, folders and array files); larger images
of a folder or array file get `sized_preset`; `shapes` and `cifar10` have their own. The measurements behind each
number are in docs/results.md (tables, with the JSON of each in bench/results/); the comments say why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    # Stage one: at a fixed time, more and smaller steps beat fewer and larger ones.
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
    # Stage two: a 4 × 128 Transformer; the weight average lowers held-out bits; the guidance scale is the one
    # `choose_guidance` (below) picks from a bench/guidance.py sweep (docs/results.md, "What the measures see").
    transformer_layers: int = 4
    transformer_width: int = 128
    prior_steps: int = 3600
    prior_lr: float = 1e-3
    prior_batch_size: int = 64
    prior_ema_weights: float = 0.999
    prior_guidance: float | None = 1.5  # classifier-free guidance recorded for `sample` and `eval` (None: none)


PRESETS = {
    # The demo: `make demo` in a few minutes. Short runs favour small batches, a narrow network (hidden 64 halves a
    # step), a 4 × 64 Transformer at lr 3e-3; 64 codes cover flat fills and their edges; guidance 2 gives the lowest
    # Fréchet distance without the mixed-colour fills of 3 (docs/results.md, "The built-in shapes").
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
    # MNIST: K = 1024 and 9,000 steps with the weight average reach 28.5 dB held-out within ten minutes, where
    # K = 512 plateaus below it (docs/results.md, "MNIST"). Stage two keeps the real-data recipe.
    "mnist": Preset(codebook_size=1024, ae_steps=9000, ae_ema_weights=0.999),
    # CIFAR-10 (the torchvision set, or an array file or folder named cifar10…): K = 2048 with the adversarial term
    # (0.2 after 1,600 steps) and feature matching 0.1 gave the best samples measured; larger codebooks, flat or
    # factorised into sub-tokens, lost at the same prior steps (docs/results.md, "CIFAR-10", "Factorised codes").
    "cifar10": Preset(
        codebook_size=2048,
        ae_steps=5600,
        ae_adversarial=0.2,
        ae_adversarial_start=1600,
        ae_feature_matching=0.1,
        prior_guidance=3.0,
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


# Stage one at 64 pixels: these steps of a 16×16 grid of K = 512 codes take about 15 minutes on 2 cores (a minute or
# two more on the slowest machine measured); other sizes scale them by the pixels (docs/results.md, "Your own images").
LARGE_IMAGE_AE_STEPS = 1200
# Stage two above 32 pixels runs over 8×8 positions of 2×2 patches (`prior_patch`); these steps take about as long
# (docs/results.md, "Your own images").
LARGE_IMAGE_PRIOR_STEPS = 1300


def prior_patch(grid_size: int, codebook_size: int, level: str | None = None) -> int:
    """The prior's patch for m×m grids of K codes: 2 (each position predicts a 2×2 patch of codes) above 8×8, so that
    the Transformer's sequence stays about CIFAR-10's 64 positions and a step costs about what an 8×8 one does
    (docs/results.md, "Your own images"); 1 up to 8×8, for a two-level bottom prior (which reads a context), and
    where four codes do not fit one 64-bit number."""
    fits = (codebook_size - 1).bit_length() * 4 <= 62
    return 2 if grid_size > 8 and grid_size % 2 == 0 and level != "bottom" and fits else 1


def grid_downsample(image_size: int) -> int:
    """The downsampling factor (dividing n where one does) that brings an n×n image closest to an 8×8 grid of codes
    up to 32 pixels and to a 16×16 grid above: at 64 pixels an 8×8 grid keeps colours and layout but not the class
    (docs/results.md, "Your own images"), and the prior reads 16×16 as 8×8 positions of 2×2 patches."""
    target = 8 if image_size <= 32 else 16
    choices = [d for d in (2, 4, 8, 16) if image_size % d == 0] or [2, 4, 8, 16]
    return min(choices, key=lambda d: (abs(image_size / d - target), -d))


def sized_preset(image_size: int) -> Preset:
    """The real-data recipe for n×n images of a folder or array file: up to 32 pixels the plain one (4× downsampling);
    larger images get a grid near 16×16 (`grid_downsample`) of the plain recipe's 512 codes, whose prior reads
    2×2 patches (`prior_patch`), so that stage two costs about what it costs at 32 pixels; no discriminator (with it
    a step at 64 pixels costs about six without it) and fewer steps, so that each stage keeps to about 15 minutes.
    CIFAR-10's guidance 3 serves them too (docs/results.md, "Your own images")."""
    base = Preset()
    if image_size <= 32:
        return base
    steps = max(300, round(LARGE_IMAGE_AE_STEPS * (64 / image_size) ** 2 / 100) * 100)
    return replace(
        base,
        ae_downsample=grid_downsample(image_size),
        ae_steps=steps,
        prior_steps=LARGE_IMAGE_PRIOR_STEPS,
        prior_guidance=PRESETS["cifar10"].prior_guidance,
    )


# ----------------------------------------------------------------------------------------------- described in words

# What `vqgen presets` and the README's table list: the named presets and the size rule's two recipes.
LISTED = {
    "shapes": "shapes (built in)",
    "mnist": "MNIST",
    "plain": "Fashion-MNIST; folders and array files up to 32 px",
    "cifar10": "CIFAR-10",
    "large": "folders and array files above 32 px (64 px shown)",
}


def listed_preset(key: str) -> Preset:
    """The preset of a LISTED key: a named one, the plain recipe, or the size rule's at 64 pixels."""
    return Preset() if key == "plain" else sized_preset(64) if key == "large" else PRESETS[key]


def listed_patch(key: str) -> int:
    """The patch the prior of a LISTED recipe reads: the grid rule's at 64 pixels for "large"; the named presets' and
    the plain recipe's grids are at most 8×8."""
    p = listed_preset(key)
    return prior_patch(64 // p.ae_downsample, p.codebook_size) if key == "large" else 1


def stage_one_text(p: Preset) -> str:
    codes = f"{p.ae_quantizer} {','.join(map(str, p.fsq_levels))}" if p.ae_quantizer == "fsq" else p.ae_quantizer
    factors = f" as {'×'.join(map(str, p.code_factors))}" if p.code_factors else ""
    text = f"{codes}, K = {p.codebook_size:,}{factors}, {p.ae_steps:,} steps of {p.ae_batch_size}"
    return text + (f", weight average {p.ae_ema_weights}" if p.ae_ema_weights else "")


def adversarial_text(p: Preset) -> str:
    if not p.ae_adversarial:
        return "off"
    return f"{p.ae_adversarial} from step {p.ae_adversarial_start:,}, feature matching {p.ae_feature_matching}"


def stage_two_text(p: Preset, patch: int = 1) -> str:
    patches = f" over {patch}×{patch} patches" if patch > 1 else ""
    text = (
        f"Transformer {p.transformer_layers} × {p.transformer_width}{patches}, {p.prior_steps:,} steps of "
        f"{p.prior_batch_size}"
    )
    return text + (f", weight average {p.prior_ema_weights}" if p.prior_ema_weights else "")


def defaults_text(field: str) -> str:
    """The plain recipe's value of a Preset field and the presets that differ from it, for --help texts: e.g.
    '512 (mnist 1024, cifar10 2048, shapes 64)'."""

    def shown(value: object) -> str:
        return (
            ",".join(map(str, value))
            if isinstance(value, tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )

    base = getattr(Preset(), field)
    others = [f"{name} {shown(getattr(p, field))}" for name, p in PRESETS.items() if getattr(p, field) != base]
    if getattr(sized_preset(64), field) != base:
        others.append(f"64 px folders {shown(getattr(sized_preset(64), field))}")
    return shown(base) + (f" ({', '.join(others)})" if others else "")


# The guidance rule. Class accuracy and the classifier-feature distance reward class-typical texture, and guidance
# buys exactly that, so they cannot choose a scale (docs/results.md, "What the measures see"). The rule: among the
# scales whose samples keep at least this share of the sweep's best recall (diversity), the one whose samples carry
# the most layout (the largest structure gap); a gap within STRUCTURE_TIE of the best counts as a tie, which the
# lower two-sample accuracy against reconstructions breaks. Unlabelled data has no gap: the recall alone decides.
GUIDANCE_RECALL_KEPT = 0.9
STRUCTURE_TIE = 0.01


def choose_guidance(rows: list[dict]) -> float:
    """The guidance scale the rule above picks from a sweep: rows of bench/guidance.py, each with `guidance`,
    `recall_samples`, `structure_gap_samples` and `two_sample_samples_vs_reconstructions`."""
    best_recall = max(r["recall_samples"] for r in rows)
    diverse = [r for r in rows if r["recall_samples"] >= GUIDANCE_RECALL_KEPT * best_recall]
    if any(r.get("structure_gap_samples") is None for r in diverse):
        return max(diverse, key=lambda r: (r["recall_samples"], -r["guidance"]))["guidance"]
    most = max(r["structure_gap_samples"] for r in diverse)
    tied = [r for r in diverse if r["structure_gap_samples"] >= most - STRUCTURE_TIE]
    return min(tied, key=lambda r: (r["two_sample_samples_vs_reconstructions"], r["guidance"]))["guidance"]
