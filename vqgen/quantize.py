"""Quantizers behind one interface: z (B, D, H, W) → indices (B, H, W), quantized vectors, auxiliary loss.

- `vq`     nearest codebook vector, codebook loss + commitment loss (van den Oord et al. 2017)
- `ema`    codebook as exponential moving averages of the assigned encoder outputs, Laplace-smoothed counts
- `simvq`  codebook = Q W with Q frozen and random, W a learned linear map (Zhu et al. 2024, arXiv 2411.02038)
- `fsq`    finite scalar quantization, an implicit grid codebook (Mentzer et al. 2023, arXiv 2309.15505)

The vector quantizers pass gradients with the straight-through estimator or the rotation trick (Fifty et al.
2024, arXiv 2410.06424), and share k-means initialisation and dead-code restarts. Their nearest-neighbour lookup
can run on l2-normalised vectors (cosine distance) and in a low-dimensional space: a linear map takes the encoder's
D-dimensional vectors to the d-dimensional codes and another brings the chosen code back (the factorised,
l2-normalised codes of ViT-VQGAN, Yu et al. 2021, arXiv 2110.04627). Distances, codebook updates and
restarts always run in fp32, whatever autocast says. Under torch.distributed, statistics are all-reduced, and
k-means and restarts draw from the global batch (gathered from the ranks' shards), so every rank holds the same
codebook, and the same one a single process training on the whole batch would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.choices import GRADS, QUANTIZERS
from vqgen.distributed import all_gather_rows, all_reduce_sum, broadcast_from_rank0, global_rows, rank_and_world
from vqgen.errors import SettingError

USAGE_DECAY = 0.99  # of the moving average of each code's share of the assignments (--restart-below)


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, H, W), differentiable w.r.t. the encoder output
    indices: torch.Tensor  # (B, H, W) int64
    loss: torch.Tensor  # scalar auxiliary loss (codebook + commitment), 0 where there is none
    counts: torch.Tensor  # (K,) how often each code was chosen in this batch (this rank's share)
    top: QuantizerOutput | None = None  # a two-level autoencoder's top grid; the fields above are its bottom's


SCORE_BLOCK = 1 << 21  # floats of (rows × K) scores per block: 8 MiB, so each block stays in cache


@torch.no_grad()
def nearest_code(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ‖z − e_k‖² for each row of z_flat (N, D) against codebook (K, D), as an (N,) index.

    ‖z‖² is the same for every k, so argmax_k z·e_k − ½‖e_k‖² decides. The (N, K) scores are built a block of
    rows at a time, in one reused buffer: at K = 8192 the whole matrix (128 MiB for 4096 rows) made the search
    memory-bound, and blocks of 256 rows cut its time on a 2-core CPU from 91.5 to 36.5 ms (bench/nearest_code.py).
    No (N, K, D) difference tensor and no one-hot matrix is ever built.
    """
    half_sq = 0.5 * (codebook * codebook).sum(1)  # (K,)
    n, k = z_flat.shape[0], codebook.shape[0]
    rows = max(1, min(n, SCORE_BLOCK // max(k, 1)))
    indices = torch.empty(n, dtype=torch.long, device=z_flat.device)
    scores = torch.empty(rows, k, dtype=torch.promote_types(z_flat.dtype, codebook.dtype), device=z_flat.device)
    for start in range(0, n, rows):
        block = z_flat[start : start + rows]
        out = scores[: block.shape[0]]
        torch.mm(block, codebook.t(), out=out)  # (rows, K)
        out.sub_(half_sq)
        indices[start : start + rows] = out.max(1).indices
    return indices


def rotation_trick(z: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Return q in the forward pass; in the backward pass, rotate and rescale the gradient like z → q.

    With u = z/‖z‖, q̂ = q/‖q‖ and w = (u + q̂)/‖u + q̂‖ all treated as constants, the map
    z ↦ (‖q‖/‖z‖)(z − 2(z·w)w + 2(z·u)q̂) sends z to q; its Jacobian is a scaled rotation, so the encoder sees
    the decoder's gradient turned by the angle between z and q rather than copied (z, q: (N, D)).
    """
    z_norm = z.norm(dim=1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=1, keepdim=True).clamp_min(eps)
    u = (z / z_norm).detach()
    q_hat = (q / q_norm).detach()
    w = F.normalize(u + q_hat, dim=1, eps=eps).detach()
    scale = (q_norm / z_norm).detach()
    rotated = z - 2 * (z * w).sum(1, keepdim=True) * w + 2 * (z * u).sum(1, keepdim=True) * q_hat
    return scale * rotated


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means on x (N, D) → (k, D) centroids: k-means++ seeding, then Lloyd steps.

    The D²-weighted seeding spreads the codes over the data; plain random seeding often merges clusters, and a
    code seeded inside a dense cluster's twin stays unused. An empty cluster keeps its previous centroid.
    """
    n = x.shape[0]
    first = torch.randint(0, n, (1,), generator=generator, device=x.device)
    centroids = [x[first]]
    x_sq = (x * x).sum(1)  # (N,)

    def sq_dist(c: torch.Tensor) -> torch.Tensor:  # (N,) ‖x − c‖², as a mat-vec rather than an (N, D) difference
        return (x_sq - 2 * (x @ c.reshape(-1)) + (c * c).sum()).clamp_min_(0)

    closest = sq_dist(x[first])  # (N,) squared distance to the nearest chosen centroid
    uniforms = torch.rand(k, generator=generator, device=x.device)
    for i in range(1, k):
        # inverse-CDF draw ∝ D²: far cheaper than torch.multinomial for one sample
        cdf = closest.cumsum(0)
        pick = torch.searchsorted(cdf, uniforms[i : i + 1] * cdf[-1]).clamp_max(n - 1)
        centroids.append(x[pick])
        closest = torch.minimum(closest, sq_dist(x[pick]))
    centroids = torch.cat(centroids)  # (k, D)
    for _ in range(iters):
        assign = nearest_code(x, centroids)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


class Quantizer(nn.Module):
    """The shared interface. Subclasses set `codebook_size` and `dim` and implement forward / lookup / codebook."""

    codebook_size: int
    dim: int

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) → quantized vectors (B, D, H, W), as the decoder receives them."""
        raise NotImplementedError

    def codebook(self) -> torch.Tensor:
        """The effective (K, D) codebook."""
        raise NotImplementedError


class VectorQuantizer(Quantizer):
    """Nearest-neighbour quantizer with an explicit codebook (`vq`); base of `ema` and `simvq`."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 1.0,
        commitment: float = 0.25,
        grad: str = "ste",
        restart_dead: int = 0,
        kmeans_init: bool = False,
        lookup_dim: int = 0,
        cosine: bool = False,
        restart_below: float = 0.0,
    ):
        super().__init__()
        if grad not in GRADS:
            raise SettingError(f"--grad must be one of {', '.join(GRADS)}, not {grad!r}")
        if lookup_dim < 0:
            raise SettingError(f"--lookup-dim must be >= 0 (0: the full dimension), not {lookup_dim}")
        if not 0 <= restart_below < 1:
            raise SettingError(f"--restart-below must be in [0, 1) (a share of the mean use), not {restart_below}")
        self.codebook_size, self.dim = codebook_size, dim
        self.beta, self.commitment, self.grad = beta, commitment, grad
        self.restart_dead, self.kmeans_init = restart_dead, kmeans_init
        self.cosine = cosine
        # d, the dimension the codes live in; the codebook itself is (K, d)
        self.code_dim = lookup_dim if lookup_dim else dim
        self.projected = lookup_dim > 0
        if self.projected:
            self.project_in = nn.Linear(dim, lookup_dim)
            self.project_out = nn.Linear(lookup_dim, dim)
        self._init_codebook()
        # Bookkeeping lives in buffers so that it is saved with the weights and a resumed run continues exactly.
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.restart_below = restart_below
        if restart_below > 0:
            # Each code's share of the assignments as a moving average, 1 = the mean share. Registered only when
            # used, so that checkpoints written without it still load.
            self.register_buffer("usage", torch.ones(codebook_size))
        self.restarted = 0  # codes restarted in the last training forward, for logging

    # -- codebook parametrisation (overridden by SimVQ and EMA)
    def _init_codebook(self) -> None:
        d = self.code_dim
        self.embedding = nn.Parameter(torch.empty(self.codebook_size, d).uniform_(-1, 1) / self.codebook_size)

    def _vectors(self) -> torch.Tensor:
        """The stored codebook (K, d), before any normalisation."""
        return self.embedding

    def codebook(self) -> torch.Tensor:
        """The (K, d) codes the lookup compares with: unit vectors under cosine distance."""
        vectors = self._vectors()
        return F.normalize(vectors, dim=1) if self.cosine else vectors

    def _to_codes(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Encoder vectors (N, D) → the space of the codes (N, d)."""
        z_flat = self.project_in(z_flat) if self.projected else z_flat
        return F.normalize(z_flat, dim=1) if self.cosine else z_flat

    def _from_codes(self, q_flat: torch.Tensor) -> torch.Tensor:
        """Vectors in the space of the codes (N, d) → what the decoder receives (N, D)."""
        return self.project_out(q_flat) if self.projected else q_flat

    @torch.no_grad()
    def set_codes(self, idx: torch.Tensor, vectors: torch.Tensor) -> None:
        """Make codes `idx` equal to `vectors` (M, D): used by k-means initialisation and dead-code restarts."""
        self.embedding.data[idx] = vectors

    def codebook_loss(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.beta * F.mse_loss(q, z.detach())

    def update(self, z_flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """Non-gradient codebook update after assignment (EMA overrides it)."""

    # -- the shared forward
    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        vectors = self._from_codes(F.embedding(indices, self.codebook()))  # (B, H, W, D)
        return vectors.permute(0, 3, 1, 2).contiguous()  # (B, D, H, W)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        z_flat = self._to_codes(z.permute(0, 2, 3, 1).reshape(b * h * w, -1))  # (B·H·W, D) → (B·H·W, d)
        if self.training and not bool(self.initialized):
            self._kmeans_init(z_flat.detach())
        codebook = self.codebook()
        indices = nearest_code(z_flat.detach(), codebook.detach())  # (B·H·W,)
        q_flat = F.embedding(indices, codebook)  # (B·H·W, D)
        counts = torch.bincount(indices, minlength=self.codebook_size)
        loss = self.commitment * F.mse_loss(z_flat, q_flat.detach()) + self.codebook_loss(z_flat, q_flat)
        if self.grad == "rotation":
            out_flat = rotation_trick(z_flat, q_flat.detach())
        else:
            out_flat = z_flat + (q_flat - z_flat).detach()  # straight-through: forward q, backward identity to z
        if self.training:
            self.update(z_flat.detach(), indices, counts)
            self._restart_dead_codes(z_flat.detach(), counts)
        quantized = self._from_codes(out_flat).view(b, h, w, self.dim).permute(0, 3, 1, 2)  # (B, D, H, W)
        return QuantizerOutput(quantized, indices.view(b, h, w), loss, counts)

    @torch.no_grad()
    def _kmeans_init(self, z_flat: torch.Tensor) -> None:
        # k-means on the whole first global batch, run on every rank so all consume the RNG alike; rank 0's
        # result is then broadcast in case a kernel is not bit-deterministic across processes.
        centroids = kmeans(all_gather_rows(z_flat), self.codebook_size)
        self.set_codes(torch.arange(self.codebook_size, device=z_flat.device), broadcast_from_rank0(centroids))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead_codes(self, z_flat: torch.Tensor, counts: torch.Tensor) -> None:
        self.step += 1
        global_counts = all_reduce_sum(counts.clone())  # (K,)
        used = global_counts > 0
        self.last_used[used] = self.step
        self.restarted = 0
        if self.restart_dead <= 0 and self.restart_below <= 0:
            return
        dead = torch.zeros_like(used)
        if self.restart_dead > 0:
            dead |= (self.step - self.last_used) >= self.restart_dead
        if self.restart_below > 0:
            share = global_counts.float() / global_counts.float().mean().clamp_min(1e-12)  # (K,), 1 = uniform use
            self.usage.mul_(USAGE_DECAY).add_(share, alpha=1 - USAGE_DECAY)
            dead |= self.usage < self.restart_below
        dead = broadcast_from_rank0(dead.to(torch.uint8)).bool()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Indices into the global batch, drawn alike on every rank (same RNG state): one process picks the same.
        pick = torch.randint(0, z_flat.shape[0] * rank_and_world()[1], (n_dead,), device=z_flat.device)
        vectors = global_rows(z_flat, pick)
        self.set_codes(dead.nonzero().squeeze(1), vectors)
        self.last_used[dead] = self.step
        if self.restart_below > 0:
            self.usage[dead] = 1.0  # a restarted code gets the time an average code needs to fall below the bar
        self.restarted = n_dead


class EMAQuantizer(VectorQuantizer):
    """Codebook e_k = s_k / ĉ_k with s, c exponential moving averages of assigned sums and counts (no gradient).

    ĉ_k = (c_k + ε) / (n + Kε) · n is the Laplace-smoothed count. Counts start at 1 and sums at the initial
    codebook, consistently: with counts at 0 and sums at the codebook, an unused code would be divided by ~ε and
    fly off to infinity, and the codebook collapses.
    """

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5, **kwargs):
        self.decay, self.eps = decay, eps
        kwargs["beta"] = 0.0  # the EMA replaces the codebook loss; the commitment loss stays
        super().__init__(codebook_size, dim, **kwargs)

    def _init_codebook(self) -> None:
        init = torch.randn(self.codebook_size, self.code_dim)
        self.register_buffer("embedding", init.clone())
        self.register_buffer("ema_count", torch.ones(self.codebook_size))
        self.register_buffer("ema_sum", init.clone())

    @torch.no_grad()
    def set_codes(self, idx: torch.Tensor, vectors: torch.Tensor) -> None:
        self.embedding[idx] = vectors
        self.ema_count[idx] = 1.0
        self.ema_sum[idx] = vectors

    def codebook_loss(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(())

    @torch.no_grad()
    def update(self, z_flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        batch_counts = all_reduce_sum(counts.to(z_flat.dtype))  # (K,)
        batch_sums = all_reduce_sum(torch.zeros_like(self.ema_sum).index_add_(0, indices, z_flat))  # (K, D)
        self.ema_count.mul_(self.decay).add_(batch_counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(batch_sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embedding.copy_(self.ema_sum / smoothed.unsqueeze(1))


class SimVQ(VectorQuantizer):
    """Codebook C = Q Wᵀ: Q (K, D) frozen random, W (D, D) learned (or diagonal), so every step moves every code."""

    def __init__(self, codebook_size: int, dim: int, diagonal: bool = False, **kwargs):
        self.diagonal = diagonal
        super().__init__(codebook_size, dim, **kwargs)

    def _init_codebook(self) -> None:
        d = self.code_dim
        self.register_buffer("frozen", torch.randn(self.codebook_size, d) * d**-0.5)
        if self.diagonal:
            self.proj_diag = nn.Parameter(torch.ones(d))
        else:
            self.proj = nn.Linear(d, d, bias=False)

    def _map(self) -> torch.Tensor:
        """W as a (D, D) matrix acting on rows: codebook = frozen @ map."""
        return torch.diag(self.proj_diag) if self.diagonal else self.proj.weight.t()

    def _vectors(self) -> torch.Tensor:
        return self.frozen @ self._map()  # (K, d)

    @torch.no_grad()
    def set_codes(self, idx: torch.Tensor, vectors: torch.Tensor) -> None:
        # Restarts move the frozen rows so that (row @ W) lands on the chosen vectors. A new tensor, not an
        # in-place write: this step's codebook = frozen @ W still needs the old rows for W's gradient.
        frozen = self.frozen.clone()
        frozen[idx] = vectors @ torch.linalg.pinv(self._map())
        self.frozen = frozen


class FSQ(Quantizer):
    """Finite scalar quantization: project to len(levels) dims, bound each with tanh, round to its levels.

    The codebook is the implicit grid of prod(levels) points; indices are the mixed-radix numbers of the levels.
    """

    def __init__(self, levels: list[int], dim: int):
        super().__init__()
        if not levels or any(level < 2 for level in levels):
            raise SettingError(f"--fsq-levels must be integers ≥ 2, got {levels}")
        self.levels_list = list(levels)
        self.codebook_size, self.dim = math.prod(levels), dim
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.long), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.project_in = nn.Conv2d(dim, len(levels), 1)
        self.project_out = nn.Conv2d(len(levels), dim, 1)
        self.restarted = 0

    def _bound(self, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        levels = self.levels.view(1, -1, 1, 1).to(z.dtype)
        half_l = (levels - 1) * (1 + eps) / 2
        offset = (self.levels.view(1, -1, 1, 1) % 2 == 0).to(z.dtype) * 0.5
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def _grid_to_indices(self, grid: torch.Tensor) -> torch.Tensor:
        """Integer grid values (B, d, H, W), each in [-L//2, (L-1)//2], → indices (B, H, W)."""
        half = (self.levels // 2).view(1, -1, 1, 1)
        return ((grid.round().long() + half) * self.basis.view(1, -1, 1, 1)).sum(1)

    def _indices_to_normalized(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) → normalized grid codes (B, d, H, W) in [-1, 1]."""
        digits = (indices.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % self.levels.view(1, -1, 1, 1)
        half = (self.levels // 2).view(1, -1, 1, 1)
        return (digits - half).float() / half.float()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            bounded = self._bound(self.project_in(z.float()))  # (B, d, H, W)
            grid = bounded + (bounded.round() - bounded).detach()  # round with a straight-through gradient
            half = (self.levels // 2).view(1, -1, 1, 1).float()
            quantized = self.project_out(grid / half)  # (B, D, H, W)
            indices = self._grid_to_indices(grid.detach())
            counts = torch.bincount(indices.flatten(), minlength=self.codebook_size)
            return QuantizerOutput(quantized, indices, z.new_zeros(()).float(), counts)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.project_out(self._indices_to_normalized(indices))

    def codebook(self) -> torch.Tensor:
        all_codes = torch.arange(self.codebook_size, device=self.basis.device).view(1, -1, 1)
        return self.lookup(all_codes).squeeze(3).squeeze(0).t()  # (K, D)


def build_quantizer(
    kind: str,
    codebook_size: int,
    dim: int,
    beta: float = 1.0,
    commitment: float = 0.25,
    decay: float = 0.99,
    grad: str = "ste",
    restart_dead: int = 0,
    kmeans_init: bool = False,
    fsq_levels: list[int] | None = None,
    lookup_dim: int = 0,
    cosine: bool = False,
    restart_below: float = 0.0,
) -> Quantizer:
    common = dict(
        restart_below=restart_below,
        commitment=commitment,
        grad=grad,
        restart_dead=restart_dead,
        kmeans_init=kmeans_init,
        lookup_dim=lookup_dim,
        cosine=cosine,
    )
    if kind == "vq":
        return VectorQuantizer(codebook_size, dim, beta=beta, **common)
    if kind == "ema":
        return EMAQuantizer(codebook_size, dim, decay=decay, **common)
    if kind in ("simvq", "simvq-diag"):
        return SimVQ(codebook_size, dim, diagonal=kind == "simvq-diag", beta=beta, **common)
    if kind == "fsq":
        if lookup_dim or cosine or restart_below:
            raise SettingError(
                "fsq has no codebook lookup: --lookup-dim, --cosine and --restart-below apply to vq, ema, simvq"
            )
        return FSQ(fsq_levels or [8, 8, 8], dim)
    raise SettingError(f"unknown --quantizer {kind!r}; choose one of {', '.join(QUANTIZERS)}")
