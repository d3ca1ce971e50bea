"""Input embeddings and output heads for factorised codes (vqgen.factorise): a code of K = K₁·…·K_G is G sub-tokens.

- `SubtokenEmbedding`: a code's input embedding is the sum of its sub-tokens' embeddings (G tables of K_g rows
  rather than one of K).
- `SubtokenHead`: p(c | h) = Π_g p(a_g | h, a_<g), each factor a small softmax. Sub-token 1 reads the position's
  hidden state h; sub-token g > 1 reads h plus the embeddings of the sub-tokens before it, through a residual MLP
  block, so the output layer costs K₁ + … + K_G logits rather than K (the sub-token block of Open-MAGVIT2,
  arXiv 2409.04410). Probabilities and bits stay exact: −log p(c) = Σ_g −log p(a_g | …).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.factorise import join_codes, split_codes


class SubtokenEmbedding(nn.Module):
    """codes (...) in [0, K) → Σ_g E_g(a_g) (..., C)."""

    def __init__(self, factors: list[int], dim: int):
        super().__init__()
        self.factors = list(factors)
        self.tables = nn.ModuleList(nn.Embedding(size, dim) for size in factors)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        digits = split_codes(codes, self.factors)
        out = self.tables[0](digits[0])
        for table, digit in zip(self.tables[1:], digits[1:], strict=True):
            out = out + table(digit)
        return out


def code_embedding(factors: list[int], codebook_size: int, dim: int) -> nn.Module:
    """The input embedding of codes: one K-row table for flat codes (as older run folders hold), else sub-tokens."""
    return SubtokenEmbedding(factors, dim) if len(factors) >= 2 else nn.Embedding(codebook_size, dim)


class SubtokenHead(nn.Module):
    """Hidden states (N, C) → the G sub-tokens' logits, each given the sub-tokens before it."""

    def __init__(self, factors: list[int], dim: int):
        super().__init__()
        self.factors = list(factors)
        self.out = nn.ModuleList(nn.Linear(dim, size) for size in factors)
        # for sub-token g ≥ 1: the embedding of sub-token g−1, then a pre-norm residual MLP over the state
        self.prev = nn.ModuleList(nn.Embedding(size, dim) for size in factors[:-1])
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in factors[1:])
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in factors[1:]
        )

    def _advance(self, state: torch.Tensor, g: int, digit: torch.Tensor) -> torch.Tensor:
        """The state that predicts sub-token g + 1, from the one that predicted g (N, C) and its value (N,)."""
        state = state + self.prev[g](digit)
        return state + self.mlps[g](self.norms[g](state))

    def nll(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden (N, C), codes (N,) → −log p(code) in nats (N,), teacher-forced over the sub-tokens."""
        digits = split_codes(codes, self.factors)
        state, total = hidden, hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
        for g, digit in enumerate(digits):
            total = total + F.cross_entropy(self.out[g](state).float(), digit, reduction="none")
            if g + 1 < len(digits):
                state = self._advance(state, g, digit)
        return total

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, C) → log p(c) for every code c (N, K), by enumerating the sub-token prefixes (for small K)."""
        n = hidden.shape[0]
        states, logp = hidden, hidden.new_zeros(n, 1, dtype=torch.float32)  # (N·P, C), (N, P) over P prefixes
        for g, size in enumerate(self.factors):
            step = self.out[g](states).float().log_softmax(-1).view(n, -1, size)  # (N, P, K_g)
            logp = (logp[:, :, None] + step).reshape(n, -1)  # (N, P·K_g), prefixes in mixed-radix order
            if g + 1 < len(self.factors):
                digit = torch.arange(size, device=hidden.device).repeat(states.shape[0])  # each prefix × each value
                states = self._advance(states.repeat_interleave(size, dim=0), g, digit)
        return logp

    def sample(self, hidden: torch.Tensor, draw: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """hidden (N, C) → codes (N,), one sub-token at a time, each drawn by `draw` from its logits (N, K_g)."""
        state, digits = hidden, []
        for g in range(len(self.factors)):
            digits.append(draw(self.out[g](state)))
            if g + 1 < len(self.factors):
                state = self._advance(state, g, digits[-1])
        return join_codes(digits, self.factors)
