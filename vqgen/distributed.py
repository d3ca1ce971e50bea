"""Collectives the models use under torch.distributed, each a no-op in a single process.

The training loop splits every global batch into equal, contiguous shards in rank order (see `BatchOrder`), so
"row i of the global batch" is row i − rank·n of rank i // n. The helpers below lean on that to make N processes
compute exactly what one process would on the whole batch: random draws are made for the global batch (every
rank holds the same RNG state, so every rank draws the same numbers) and each rank keeps or contributes its share.

Below them, the process group itself: joining the one torchrun describes (`setup_distributed`, `owns_process_group`)
and the small CPU-side exchanges the stages and the training loop agree through (rank 0's objects, a flag or a
signal raised on any rank), over a gloo control group so that none of them waits on a GPU.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vqgen.errors import VQGenError


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


# ----------------------------------------------------------------------------------------------- process group


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a no-op for a single process.

    Idempotent: the stage entry points call it before touching the run folder, and `fit` again.
    """
    if is_distributed():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    global _CONTROL_GROUP
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl uses the current device
        dist.init_process_group("nccl")
        _CONTROL_GROUP = dist.new_group(backend="gloo")  # small CPU-side messages without a GPU sync
    else:
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


_CONTROL_GROUP = None  # None: the default group (gloo on the CPU)


def owns_process_group(fn):
    """Decorate a stage entry point: a process group it created (under torchrun) is destroyed when it returns."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _CONTROL_GROUP
        existed = is_distributed()
        try:
            return fn(*args, **kwargs)
        finally:
            if not existed and is_distributed():
                dist.destroy_process_group()  # the control group with it
                _CONTROL_GROUP = None

    return wrapper


def broadcast_object(obj):
    """Rank 0's `obj` (anything picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_CONTROL_GROUP)
    return box[0]


def on_main(fn, *args, **kwargs):
    """Run fn on rank 0 only (file-system set-up); every rank returns its result, or raises its error.

    Without sharing the outcome, a refusal on rank 0 (say, the run folder exists) would leave the other ranks
    waiting for it in their first collective.
    """
    result, error = None, None
    if rank_and_world()[0] == 0:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # shared below, then re-raised as it was on rank 0
            error = e
    shared_result, message = broadcast_object((result, None if error is None else str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise VQGenError(message)
    return result if rank_and_world()[0] == 0 else shared_result  # rank 0 keeps its own object (a lock it holds)


def mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    return all_reduce_sum(t.clone()) / world if world > 1 else t


def any_rank(flag: bool, world: int) -> bool:
    """Whether `flag` holds on any rank (through the gloo control group: no GPU sync)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP)
    return bool(t.item())


def agreed_signal(caught: int | None, world: int) -> int | None:
    """The signal any rank caught, agreed on by all in the same step, so that all stop together (or none)."""
    if world == 1:
        return caught
    flag = torch.tensor([caught or 0])  # on the CPU, through the gloo control group: no GPU sync per step
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_CONTROL_GROUP)
    return int(flag) or None
