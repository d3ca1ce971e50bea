"""vqgen's quantizers as a layer for one's own models, in the style of vector-quantize-pytorch:
`vq = vqgen.VectorQuantize(dim=256, codebook_size=512)`, then `out = vq(x)` on x (B, N, D) or (B, D, H, W) gives
`out.quantized`, `out.indices` and `out.loss` (add it to the model's loss) in the layout x came in.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn

from vqgen.choices import Quantizer as QuantizerKind
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
        if kind == "fsq":
            fsq_levels = list(fsq_levels or [8, 8, 8])
            if codebook_size is not None and codebook_size != math.prod(fsq_levels):
                raise ValueError(
                    f"fsq's codebook is the product of fsq_levels {fsq_levels} = {math.prod(fsq_levels)}, "
                    f"not codebook_size={codebook_size}; leave codebook_size out"
                )
        elif fsq_levels is not None:
            raise ValueError(f"fsq_levels is for kind='fsq', not {kind!r}")
        size = codebook_size if codebook_size is not None else (math.prod(fsq_levels) if fsq_levels else 512)
        self.quantizer: Quantizer = build_quantizer(kind, size, dim, fsq_levels=fsq_levels, **options)
        self.kind, self.dim, self.codebook_size = kind, dim, self.quantizer.codebook_size

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        """x (B, N, D) or (B, D, H, W) → quantized vectors and indices in the same layout ((B, N, D) and (B, N), or
        (B, D, H, W) and (B, H, W)), the auxiliary loss and each code's count in the batch."""
        if x.dim() == 4:
            return self.quantizer(x)
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, N, {self.dim}) or (B, {self.dim}, H, W), not {tuple(x.shape)}")
        out = self.quantizer(x.transpose(1, 2).unsqueeze(-1))  # (B, D, N, 1): a one-column image
        return replace(out, quantized=out.quantized.squeeze(-1).transpose(1, 2), indices=out.indices.squeeze(-1))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, N) → vectors (B, N, D); indices (B, H, W) → vectors (B, D, H, W)."""
        if indices.dim() == 2:
            return self.quantizer.lookup(indices.unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return self.quantizer.lookup(indices)

    def codebook(self) -> torch.Tensor:
        """The effective codebook (K, D), in the space the vectors are compared in."""
        return self.quantizer.codebook()
