"""The values each string setting may take: a Literal type (for type checkers and editors) and the tuple that
run-time checks and error messages read, one definition of each. Imports nothing heavy (vqgen.api uses it)."""

from __future__ import annotations

from typing import Literal, get_args

Quantizer = Literal["vq", "ema", "simvq", "simvq-diag", "fsq"]
Grad = Literal["ste", "rotation"]  # how the gradient passes the quantizer: straight through, or the rotation trick
FactorBy = Literal["levels", "kmeans"]  # fsq's levels in groups, or the codebook renumbered by balanced k-means
Arch = Literal["transformer", "pixelcnn"]
Level = Literal["single", "top", "bottom"]  # which grid a prior models: a one-level model's, or a two-level one's
Precision = Literal["auto", "fp32", "bf16", "fp16"]

QUANTIZERS: tuple[str, ...] = get_args(Quantizer)
GRADS: tuple[str, ...] = get_args(Grad)
FACTOR_BY: tuple[str, ...] = get_args(FactorBy)
ARCHS: tuple[str, ...] = get_args(Arch)
LEVELS: tuple[str, ...] = get_args(Level)
PRECISIONS: tuple[str, ...] = get_args(Precision)
