"""Collectives the models use under torch.distributed, each a no-op in a single process.

The training loop splits every global batch into equal, contiguous shards in rank order (see `BatchOrder`), so
"row i of the global batch" is row i − rank·n of rank i // n. The helpers below lean on that to make N processes
compute exactly what one process would on the whole batch: random draws are made for the global batch (every
rank holds the same RNG state, so every rank draws the same numbers) and each rank keeps or contributes its share.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum t over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Overwrite t with rank 0's, in place (t must be contiguous; gloo has no bool, so send uint8)."""
    if is_distributed():
        dist.broadcast(t, src=0)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's shard (n, ...) → the global batch (world·n, ...), in rank order."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def global_rows(shard: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` of the global batch, given this rank's shard (n, ...): the batch is never gathered whole.

    Each rank fills in the rows it holds and zeros elsewhere; the sum over ranks is then exact (x + 0 = x).
    """
    if not is_distributed():
        return shard[idx]
    rank, n = dist.get_rank(), shard.shape[0]
    local = idx - rank * n
    mine = (local >= 0) & (local < n)
    out = shard.new_zeros(idx.shape[0], *shard.shape[1:])
    out[mine] = shard[local[mine]]
    return all_reduce_sum(out)


def shard_rand(n: int, device: torch.device | str) -> torch.Tensor:
    """torch.rand(n) for this rank's shard: draw for the whole global batch and keep this rank's slice.

    Every rank then consumes the RNG exactly as a single process on the global batch would, so per-example
    random choices (class dropout) and the RNG state after them match a one-process run.
    """
    rank, world = rank_and_world()
    return torch.rand(n * world, device=device)[rank * n : (rank + 1) * n]
