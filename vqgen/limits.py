"""The limits on every size that a flag, a config.json or a codes file can ask for, checked before anything is built.

Each setting is bounded on its own where it is read (AEConfig, PriorConfig, load_codes, SamplingOptions), and a
model's parameters are bounded together, so that a damaged file or a typo gets one line that states the limit
rather than an allocation the kernel's out-of-memory killer ends.
"""

from __future__ import annotations

import numbers

from vqgen.errors import VQGenError

MAX_CODEBOOK = 1 << 20  # K: codes per codebook (an fsq codebook: the product of its levels)
MAX_CLASSES = 1 << 16  # labels of a class-conditional prior and of a codes file
MAX_GRID = 256  # the side of a code grid
MAX_PARAMETERS = 1 << 30  # of one model: about 4 GiB of fp32 weights, four times that to train with Adam
MAX_SAMPLES = 1_000_000  # images one call samples: labels, codes and images are held for all of them at once
MAX_STEPS = 10**9  # of a training run: far beyond any, and small enough that the schedule's arithmetic stays exact
MAX_BATCH = 65_536  # grids sampled (or images encoded) at once: a batch holds B × K logits and B × m² codes
MAX_TRAIN_BATCH = 1 << 20  # images or grids in one training step (--batch-size of train-ae and train-prior)
MAX_SEED = 2**32  # seeds are in [0, MAX_SEED)


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_count(n: object, flag: str = "--n", limit: int = MAX_SAMPLES) -> None:
    """n an integer in [1, limit], else one line naming `flag` and the limit."""
    if not is_int(n) or not 1 <= n <= limit:
        shown = n if not is_int(n) or abs(n) < 1 << 64 else f"a {int(n).bit_length()}-bit number"
        raise VQGenError(f"{flag} must be an integer from 1 to {limit:,}, not {shown!r:.40}")


def short(value: object) -> str:
    """repr(value) for an error line, cut to 60 characters (a damaged config can hold a 5,000-digit number)."""
    text = repr(value) if not is_int(value) or abs(value) < 1 << 128 else f"a {int(value).bit_length()}-bit integer"
    return text if len(text) <= 60 else text[:57] + "..."


def check_seed(seed: object) -> None:
    """The one check of a seed, wherever one enters (a flag, a keyword, a config.json)."""
    if not is_int(seed) or not 0 <= seed < MAX_SEED:
        raise VQGenError(f"--seed must be an integer from 0 to {MAX_SEED - 1}, not {short(seed)}")
