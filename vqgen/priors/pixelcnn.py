"""Gated PixelCNN prior (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Causality comes from shifts and one-sided padding rather than masked kernels:

- the vertical stack uses a (k//2+1)×k kernel padded only above, so its output at row r sees input rows
  ≤ r (all columns of the window); it reaches the horizontal stack only after a one-row down-shift, so
  the horizontal stack at row r receives information from rows < r;
- the horizontal stack uses a 1×(k//2+1) kernel padded only on the left, so it sees columns ≤ c of its
  own row. In the first layer (mask type A) its input is shifted right by one column so the current code
  is excluded; later layers (type B) may include column c, whose features already exclude the current code.

Together the two stacks cover every earlier position within the receptive field, with no blind spot.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.priors import Prior, PriorConfig
from vqgen.priors.heads import SubtokenHead, code_embedding


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row one step down (row 0 becomes zeros): row r then holds what row r-1 computed."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """Move every column one step right (column 0 becomes zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation tanh(a) ⊙ σ(b) over the two channel halves: (B, 2C, H, W) → (B, C, H, W)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    def __init__(self, channels: int, kernel: int, num_labels: int, first: bool, conditioned: bool = False):
        super().__init__()
        self.first = first  # mask type A: the horizontal stack must not see the current code
        self.half = kernel // 2
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.half + 1, kernel))
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, self.half + 1))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        # Class conditioning: a per-label bias inside each gated unit (the paper's V^T h with one-hot h).
        self.v_label = nn.Embedding(num_labels, 2 * channels) if num_labels > 0 else None
        self.h_label = nn.Embedding(num_labels, 2 * channels) if num_labels > 0 else None
        # Spatial conditioning (the paper's V^T s(h) with s a conditioning stack): a per-position bias from the map.
        self.v_context = nn.Conv2d(channels, 2 * channels, 1) if conditioned else None
        self.h_context = nn.Conv2d(channels, 2 * channels, 1) if conditioned else None

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # v, h: (B, C, H, W); labels: (B,); context: (B, C, H, W), the conditioning stack's map, or None
        v_pre = self.v_conv(F.pad(v, (self.half, self.half, self.half, 0)))  # (B, 2C, H, W), rows ≤ r
        h_in = shift_right(h) if self.first else h
        h_pre = self.h_conv(F.pad(h_in, (self.half, 0, 0, 0)))  # (B, 2C, H, W)
        h_pre = h_pre + self.v_to_h(shift_down(v_pre))  # vertical context from rows < r only
        if self.v_label is not None:
            v_pre = v_pre + self.v_label(labels)[:, :, None, None]
            h_pre = h_pre + self.h_label(labels)[:, :, None, None]
        if self.v_context is not None:
            v_pre = v_pre + self.v_context(context)
            h_pre = h_pre + self.h_context(context)
        v_out = gate(v_pre)  # (B, C, H, W)
        h_out = self.h_out(gate(h_pre))  # (B, C, H, W)
        # No residual in the first layer: h there is the embedding of the current code itself.
        if not self.first:
            h_out = h_out + h
        return v_out, h_out


class PixelCNNPrior(Prior):
    def __init__(self, cfg: PriorConfig):
        super().__init__(cfg)
        channels = cfg.pcnn_channels
        num_labels = cfg.num_classes + 1 if cfg.num_classes > 0 else 0
        self.embed = code_embedding(cfg.token_factors, cfg.codebook_size, channels)
        conditioned = cfg.context_grid > 0
        self.layers = nn.ModuleList(
            GatedLayer(channels, cfg.pcnn_kernel, num_labels, first=(i == 0), conditioned=conditioned)
            for i in range(cfg.pcnn_layers)
        )
        if conditioned:  # the conditioning stack: top codes → a map on the bottom grid
            self.context_embed = code_embedding(cfg.token_factors, cfg.codebook_size, channels)
            self.context_net = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
            )
        # flat codes: the last 1×1 conv gives the K logits; factorised: the sub-token head reads the features
        head = [nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU()]
        if cfg.factorised:
            self.subtokens = SubtokenHead(cfg.token_factors, channels)
        else:
            head.append(nn.Conv2d(channels, cfg.codebook_size, 1))
        self.head = nn.Sequential(*head)

    def _outputs(self, codes: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self._logits(codes, labels, self.context_map(context))

    def context_map(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """Context grids (B, m_c, m_c) → the conditioning stack's map (B, C, m, m), or None without a context."""
        if context is None:
            return None
        m = self.cfg.side
        x = self.context_embed(context).permute(0, 3, 1, 2)  # (B, C, m_c, m_c)
        return self.context_net(F.interpolate(x, size=(m, m), mode="nearest"))  # (B, C, m, m)

    def _logits(self, codes: torch.Tensor, labels: torch.Tensor, context_map: torch.Tensor | None) -> torch.Tensor:
        # Accepts any (B, H, W) grid with H ≤ m, so sampling can crop to the rows that are already known.
        rows = codes.size(1)
        context_map = None if context_map is None else context_map[:, :, :rows]  # (B, C, H, W)
        x = self.embed(codes).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, labels, context_map)
        logits = self.head(h)  # (B, K, H, W), or features (B, C, H, W) for the sub-token head
        return logits.flatten(2).transpose(1, 2)  # (B, H*W, K or C), raster order

    def _generate(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor,
        start: int,
        draw: Callable[[torch.Tensor], torch.Tensor],
        use_cache: bool,
        context: torch.Tensor | None = None,
    ) -> None:
        # No cache for a convolutional net; instead run only rows ≤ the current one, which gives the same
        # logits because nothing looks downward. The context's map is computed once.
        n, m = codes.size(0), self.cfg.side
        grid = codes.view(n, m, m)  # shares storage with codes
        context_map = self.context_map(context)
        for i in range(start, self.cfg.seq_len):
            row = i // m
            logits = self._logits(grid[:, : row + 1], labels, context_map)  # (n, (row+1)*m, K or C)
            codes[:, i] = self.draw_code(logits[:, i], draw)
