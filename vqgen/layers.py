"""vqgen's quantizers as a layer for one's own models, in the style of vector-quantize-pytorch:
`vq = vqgen.VectorQuantize(dim=256, codebook_size=512)`, then `out = vq(x)` on x (B, N, D) or (B, D, H, W) gives
`out.quantized`, `out.indices` and `out.loss` (add it to the model's loss) in the layout x came in.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import torch
import torch.nn as nn

from vqgen.choices import Quantizer as QuantizerKind
from vqgen.errors import VQGenError, renamed_keywords
from vqgen.quantize import Quantizer, QuantizerOutput, build_quantizer


class VectorQuantize(nn.Module):
    """One constructor for every quantizer vqgen has (see vqgen.quantize for what each does).

    `options` are build_quantizer's: beta, commitment, decay, grad ("ste" or "rotation"), restart_dead,
    restart_below, kmeans_init, lookup_dim, cosine. For "fsq", `fsq_levels` sets the codebook (K = their product)
    and `codebook_size` may be left out. In training mode a forward pass updates the codebook as training does
    (EMA statistics, k-means initialisation, dead-code restarts); in eval mode it changes nothing."""

    def __init__(
        self,
        dim: int,
        codebook_size: int | None = None,
        kind: QuantizerKind = "ema",
        *,
        fsq_levels: list[int] | None = None,
        **options: float | int | bool | str,
    ):
        super().__init__()
        _check_settings(dim, codebook_size, kind, fsq_levels, options)
        if kind == "fsq":
            fsq_levels = list(fsq_levels or [8, 8, 8])
            if codebook_size is not None and codebook_size != math.prod(fsq_levels):
                raise VQGenError(
                    f"fsq's codebook is the product of fsq_levels {fsq_levels} = {math.prod(fsq_levels)}, "
                    f"not codebook_size={codebook_size}; leave codebook_size out"
                )
        elif fsq_levels is not None:
            raise VQGenError(f"fsq_levels is for kind='fsq', not {kind!r}")
        size = codebook_size if codebook_size is not None else (math.prod(fsq_levels) if fsq_levels else 512)
        self.quantizer: Quantizer = build_quantizer(kind, size, dim, fsq_levels=fsq_levels, **options)
        self.kind, self.dim, self.codebook_size = kind, dim, self.quantizer.codebook_size

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """x (B, N, D) or (B, D, H, W) → quantized vectors and indices in the same layout ((B, N, D) and (B, N), or
        (B, D, H, W) and (B, H, W)), the auxiliary loss and each code's count in the batch."""
        expected = f"a float tensor (B, N, {self.dim}) or (B, {self.dim}, H, W) with B, N, H, W ≥ 1"
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise VQGenError(
                f"x must be {expected}, not {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}"
            )
        channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
        if x.dim() not in (3, 4) or channels != self.dim or x.numel() == 0:
            raise VQGenError(f"x must be {expected}, not {tuple(x.shape)}")
        if x.dim() == 4:
            return self.quantizer(x)
        out = self.quantizer(x.transpose(1, 2).unsqueeze(-1))  # (B, D, N, 1): a one-column image
        return replace(out, quantized=out.quantized.squeeze(-1).transpose(1, 2), indices=out.indices.squeeze(-1))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise VQGenError("indices must be an integer tensor (B, N) or (B, H, W)")
        if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < self.codebook_size:
            raise VQGenError(f"indices must lie in [0, {self.codebook_size}) for this codebook")
        """indices (B, N) → vectors (B, N, D); indices (B, H, W) → vectors (B, D, H, W)."""
        if indices.dim() == 2:
            return self.quantizer.lookup(indices.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return self.quantizer.lookup(indices)

    def codebook(self) -> torch.Tensor:
        """The effective codebook (K, D), in the space the vectors are compared in."""
        return self.quantizer.codebook()


# build_quantizer's keyword settings, read from its signature so that they are declared once
OPTIONS = tuple(
    name
    for name in inspect.signature(build_quantizer).parameters
    if name not in ("kind", "codebook_size", "dim", "fsq_levels")
)


def _check_settings(dim: object, codebook_size: object, kind: object, fsq_levels: object, options: dict) -> None:
    """The checks the autoencoder's settings get (vqvae.AEConfig), in one VQGenError line naming the keyword."""
    from vqgen.vqvae import AEConfig

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise VQGenError(f"VectorQuantize has no option {unknown[0]!r}; its options are {', '.join(OPTIONS)}")
    settings = dict(options, embed_dim=dim, quantizer=kind)
    if codebook_size is not None:
        settings["codebook_size"] = codebook_size
    if fsq_levels is not None:
        settings["fsq_levels"] = fsq_levels if isinstance(fsq_levels, (list, tuple)) else [fsq_levels]
    with renamed_keywords(embed_dim="dim", quantizer="kind"):
        AEConfig(**settings)
