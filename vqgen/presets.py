"""Defaults that depend on the data set, in one place.

Every data set gets the models behind the README's benchmarks, except the built-in `shapes`, whose defaults are
sized so that `make demo` (both stages with no flags) finishes in under five minutes on a 2-core CPU with
recognisable samples: a narrower autoencoder and Transformer, trained with small batches for more steps, the
prior at a higher learning rate (README, "The demo", has the measurements behind each number). A flag given on
the command line always wins.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    codebook_size: int = 512
    ae_hidden: int = 128
    ae_steps: int = 250
    ae_lr: float = 3e-3
    ae_batch_size: int = 128
    transformer_layers: int = 4
    transformer_width: int = 128
    prior_steps: int = 400
    prior_lr: float = 1e-3
    prior_batch_size: int = 32


PRESETS = {
    # Measured on 2 cores (README, "The demo"): at a fixed time, smaller batches and more steps win in a short run,
    # for the autoencoder 22.8 dB (300 steps of 128) → 25.4 (600 of 64) → 27.9 (1200 of 32), each in about 75 s;
    # hidden 64 halves the cost of a step against 128 (0.28 vs 0.59 s at batch 128, one timing run); a 4 × 64
    # Transformer sees 2.5× the codes per second of 4 × 128, and lr 3e-3 suits a run this short. 64 codes are
    # enough for flat fills and their edges.
    "shapes": Preset(
        codebook_size=64,
        ae_hidden=64,
        ae_steps=1200,
        ae_batch_size=32,
        transformer_width=64,
        prior_steps=1200,
        prior_lr=3e-3,
        prior_batch_size=32,
    ),
}


def preset_for(dataset: str | None) -> Preset:
    """The defaults for data set `dataset` (a built-in name, a path, or None)."""
    return PRESETS.get((dataset or "").strip().lower(), Preset())
