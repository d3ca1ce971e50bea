"""Factorised codes: a code of K = K₁·K₂·…·K_G written as G sub-tokens, most significant first.

A prior over factorised codes predicts p(c) = p(a₁)·p(a₂ | a₁)·… with G small softmaxes instead of one K-way
softmax (Open-MAGVIT2, arXiv 2409.04410), which is exact: the join below is a bijection. Two ways give codes
that factorise well, and the autoencoder records which (`AEConfig.code_factors`):

- by construction: FSQ's index is already a mixed-radix number of its levels, so groups of levels are sub-tokens
  (levels [8, 8, 8, 6, 5] → the first sub-token the last three levels, 8·6·5 = 240, the second the first two, 64);
- by renumbering a flat codebook after training: balanced k-means puts the K vectors into K₁ clusters of exactly
  K₂ codes, so the first sub-token is a coarse code; inside each cluster, codes are matched to K₂ shared residual
  centroids, so the second sub-token means the same detail in every cluster (a residual quantizer's second stage,
  RQ-VAE, arXiv 2203.01941, recovered from a flat codebook).
"""

from __future__ import annotations

import math

import torch

from vqgen.errors import SettingError

MAX_FACTORS = 4


def check_factors(factors: list[int], codebook_size: int) -> list[int]:
    """`factors` as a list of ints whose product is K (empty: flat codes); else a SettingError saying why."""
    integers = isinstance(factors, (list, tuple)) and all(type(f) is int for f in factors)
    if not integers:
        raise SettingError(f"code factors must be a list of integers, not {factors!r}")
    factors = list(factors)
    if not factors:
        return factors
    if not 2 <= len(factors) <= MAX_FACTORS or any(f < 2 for f in factors):
        raise SettingError(f"code factors must be 2 to {MAX_FACTORS} sub-vocabulary sizes, each ≥ 2, not {factors}")
    if math.prod(factors) != codebook_size:
        raise SettingError(
            f"code factors {'×'.join(map(str, factors))} = {math.prod(factors)} do not multiply to K={codebook_size}"
        )
    return factors


def parse_factors(text: str) -> list[int]:
    """'128x128' or '128,128' → [128, 128]; '' or 'none' → [] (flat)."""
    text = text.strip().lower()
    if text in ("", "none", "flat"):
        return []
    try:
        return [int(part) for part in text.replace("×", "x").replace(",", "x").split("x")]
    except ValueError as e:
        raise SettingError(f"code factors look like 128x128 (sub-vocabulary sizes), not '{text}'") from e


def split_codes(codes: torch.Tensor, factors: list[int]) -> list[torch.Tensor]:
    """codes (...) in [0, K) → G sub-token tensors (...), most significant first: c = Σ_g a_g · Π_{j>g} K_j."""
    digits = []
    for g, size in enumerate(factors):
        below = math.prod(factors[g + 1 :])
        digits.append((codes // below) % size)
    return digits


def join_codes(digits: list[torch.Tensor], factors: list[int]) -> torch.Tensor:
    """The inverse of split_codes: G sub-token tensors → codes."""
    codes = torch.zeros_like(digits[0])
    for digit, size in zip(digits, factors, strict=True):
        codes = codes * size + digit
    return codes


def fsq_factor_groups(levels: list[int], factors: list[int]) -> list[list[int]] | None:
    """The groups of FSQ levels that make each sub-token, most significant (the last levels) first; None if the
    factors are not products of contiguous groups of levels (FSQ's index counts level 0 fastest)."""
    groups, end = [], len(levels)
    for size in factors:
        start, prod = end, 1
        while start > 0 and prod < size:
            start -= 1
            prod *= levels[start]
        if prod != size:
            return None
        groups.append(levels[start:end])
        end = start
    return groups if end == 0 else None


def _balanced_assign(cost: torch.Tensor, capacity: int) -> torch.Tensor:
    """cost (B, N, M) with N = M·capacity → a (B, N) assignment of rows to columns in each of B problems, every
    column taking exactly `capacity` rows (the assignment step of balanced k-means). In rounds: each unassigned row
    asks for its cheapest column with room left, and each column takes the cheapest of those that ask, as many as
    it has room for."""
    b, n, m = cost.shape
    assign = torch.full((b, n), -1, dtype=torch.long)
    room = torch.full((b * m,), capacity, dtype=torch.long)
    while True:
        batch, row = (assign < 0).nonzero(as_tuple=True)
        if len(row) == 0:
            return assign
        asked = cost[batch, row].masked_fill((room.view(b, m) == 0)[batch], float("inf"))  # (F, M)
        best = asked.argmin(1)  # (F,)
        best_cost = asked.gather(1, best[:, None]).squeeze(1)
        column = batch * m + best  # (F,) the column's index over all B problems
        by_cost = best_cost.argsort(stable=True)
        by_column = by_cost[column[by_cost].argsort(stable=True)]  # grouped by column, cheapest first
        cols = column[by_column]
        counts = torch.bincount(cols, minlength=b * m)
        rank = torch.arange(len(cols)) - (counts.cumsum(0) - counts)[cols]  # place among the column's askers
        take = by_column[rank < room[cols]]
        assign[batch[take], row[take]] = best[take]
        room -= torch.bincount(column[take], minlength=b * m)


@torch.no_grad()
def balanced_order(codebook: torch.Tensor, factors: list[int], iters: int = 8, seed: int = 0) -> torch.Tensor:
    """A renumbering of a flat codebook (K, D) into two sub-tokens: order (K,) with order[new] = old code.

    new = a·K₂ + b: a is one of K₁ balanced k-means clusters of the code vectors (exactly K₂ codes each), b the
    residual centroid (one of K₂ shared by all clusters) the code is matched to inside its cluster. Deterministic
    for a codebook and seed, and it leaves the global RNG alone (a resumed run must stay bit-identical).
    """
    if len(factors) != 2:
        raise SettingError(
            f"renumbering a codebook makes two sub-tokens, not {len(factors)}: give factors like 128x128"
        )
    k1, k2 = factors
    x = codebook.detach().double().cpu()  # (K, D)
    k = x.shape[0]
    if k1 * k2 != k:
        raise SettingError(f"code factors {k1}x{k2} do not multiply to K={k}")
    generator = torch.Generator().manual_seed(seed)

    def sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (N, M)
        return ((a * a).sum(1)[:, None] - 2 * a @ b.t() + (b * b).sum(1)[None, :]).clamp_min(0)

    centroids = x[torch.randperm(k, generator=generator)[:k1]].clone()  # (K1, D)
    cluster = torch.zeros(k, dtype=torch.long)
    for _ in range(iters):
        cluster = _balanced_assign(sq_dist(x, centroids)[None], k2)[0]  # (K,)
        centroids = torch.zeros_like(centroids).index_add_(0, cluster, x) / k2
    members = cluster.argsort(stable=True).view(k1, k2)  # (K1, K2) the old codes of each cluster
    residual = (x - centroids[cluster])[members]  # (K1, K2, D)
    shared = residual.reshape(k, -1)[torch.randperm(k, generator=generator)[:k2]].clone()  # (K2, D)
    detail = torch.zeros(k1, k2, dtype=torch.long)
    for _ in range(iters):
        # inside every cluster, a one-to-one match of its K2 codes to the K2 shared residuals
        cost = (residual * residual).sum(2)[:, :, None] - 2 * residual @ shared.t() + (shared * shared).sum(1)
        detail = _balanced_assign(cost, 1)  # (K1, K2)
        shared = torch.zeros_like(shared).index_add_(0, detail.flatten(), residual.reshape(k, -1)) / k1
    new = torch.empty(k, dtype=torch.long)
    new[members.flatten()] = (cluster[members] * k2 + detail).flatten()  # the new number of each old code
    order = torch.empty(k, dtype=torch.long)
    order[new] = torch.arange(k)
    return order
