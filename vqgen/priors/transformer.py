"""PixelAtt: a decoder-only causal Transformer prior over the raster-ordered code grid.

The input sequence is [start, c_0, ..., c_{T-2}] and output i predicts c_i, so the whole grid of T = m²
codes is modelled with one forward pass. The start token is the class embedding for class-conditional
models (the last entry is the null class) and a single learned vector for unconditional ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.priors import Prior, PriorConfig
from vqgen.priors.heads import SubtokenHead, code_embedding

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, each (B, n_head, P, head_dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C) at positions P..P+T-1, where P is the length of `past` → (y (B, T, C), new cache)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nh, P+T, hd)
            v = torch.cat([past[1], v], dim=2)
        P = k.size(2) - T
        dropout_p = self.dropout if self.training else 0.0
        if P == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # Query t sits at absolute position P+t and may attend to keys 0..P+t; a single new query may
            # attend to everything, so it needs no mask.
            mask = None if T == 1 else torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hd) -> (B, T, C)
        return self.resid_drop(self.proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, present = self.attn(self.ln_1(x), past)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, present


class TransformerPrior(Prior):
    def __init__(self, cfg: PriorConfig):
        super().__init__(cfg)
        # The start token doubles as the class embedding; unconditional models have one entry (null = 0).
        self.start_emb = nn.Embedding(cfg.num_classes + 1, cfg.n_embd)
        factors = cfg.token_factors
        self.tok_emb = code_embedding(factors, cfg.codebook_size, cfg.n_embd)
        self.context_len = cfg.context_grid**2
        # a bottom prior reads the top grid first, with its own code embedding (the top codebook is another one)
        self.context_emb = code_embedding(factors, cfg.codebook_size, cfg.n_embd) if self.context_len else None
        self.pos_emb = nn.Embedding(self.context_len + cfg.seq_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        if cfg.factorised:
            self.subtokens = SubtokenHead(factors, cfg.n_embd)
        else:
            self.head = nn.Linear(cfg.n_embd, cfg.codebook_size)

        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by depth, so its variance
        # does not grow with the number of blocks.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _embed_inputs(
        self, tokens: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens (B, L), labels (B,), context (B, m_c, m_c) or None → input embeddings [context, start, tokens]
        (B, T_c+L+1, C)."""
        start = self.start_emb(labels)[:, None, :]  # (B, 1, C)
        parts = [start, self.tok_emb(tokens)]
        if self.context_emb is not None:
            parts.insert(0, self.context_emb(context.flatten(1)))  # (B, T_c, C)
        return torch.cat(parts, dim=1)

    def _decode(self, x: torch.Tensor, past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Input embeddings x (B, T, C) that follow the P cached positions → logits (B, T, K) (factorised codes:
        the final hidden states (B, T, C) for the sub-token head), new cache."""
        P = 0 if past is None else past[0][0].size(2)
        positions = torch.arange(P, P + x.size(1), device=x.device)
        x = self.drop(x + self.pos_emb(positions))  # (B, T, C)
        presents: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past[i])
            presents.append(kv)
        x = self.ln_f(x)
        return (x if self.cfg.factorised else self.head(x)), presents  # (B, T, K) or (B, T, C)

    def _outputs(self, codes: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        batch = codes.size(0)
        tokens = codes.reshape(batch, -1)  # (B, T)
        # The last code is never an input: nothing comes after it.
        logits, _ = self._decode(self._embed_inputs(tokens[:, :-1], labels, context))  # (B, T_c+T, K)
        return logits[:, self.context_len :]  # (B, T, K): the outputs at the context predict nothing

    def _generate(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor,
        start: int,
        draw: Callable[[torch.Tensor], torch.Tensor],
        use_cache: bool,
        context: torch.Tensor | None = None,
    ) -> None:
        if not use_cache:
            super()._generate(codes, labels, start, draw, use_cache, context)
            return
        seq_len = self.cfg.seq_len
        if start >= seq_len:
            return
        # One pass over [context, start token, prefix] fills the cache and predicts the first free position.
        logits, past = self._decode(self._embed_inputs(codes[:, :start], labels, context))  # (n, T_c+start+1, K)
        for i in range(start, seq_len):
            codes[:, i] = self.draw_code(logits[:, -1], draw)
            if i + 1 < seq_len:
                logits, past = self._decode(self.tok_emb(codes[:, i : i + 1]), past)  # (n, 1, K)
