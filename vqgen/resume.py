"""The training state that --resume continues from: optimizer state, step, RNG states and data order, written
into a run folder's state.safetensors in one file (so it can never mix two steps) and checked before it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.errors import VQGenError
from vqgen.limits import MAX_STEPS
from vqgen.limits import is_int as _is_int
from vqgen.limits import short as _short


class Averaged(Protocol):
    """What the state keeps of a weight average (vqgen.averaging.WeightAverage)."""

    def state_tensors(self) -> dict[str, torch.Tensor]: ...

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], where: Path) -> None: ...


class WithExtraState(Protocol):
    """What the state keeps of a stage's own (vqgen.train.Task's extra_state)."""

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]: ...

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None: ...


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into named tensors (PREFIX.<param>.<key>) plus JSON-able scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups, "tensors": sorted(tensors)}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The inverse of optimizer_tensors, given only the tensors under its prefix."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.rsplit(".", 2)[-2:]
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def state_file(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    order,
    step: int,
    extra: dict,
    average: Averaged | None = None,
    task: WithExtraState | None = None,
) -> ckpt.TensorFile:
    """Everything needed to continue bit-identically, as one file's tensors and metadata (so it never mixes steps)."""
    import json

    opt_tensors, opt_meta = optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    if average is not None:
        tensors.update(average.state_tensors())
    task_tensors, task_meta = task.extra_state() if task is not None else ({}, {})
    tensors.update({f"task.{k}": v for k, v in task_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "order": order.state_dict(), "optimizer": opt_meta, "task": task_meta, **extra}
    return tensors, {"state": json.dumps(meta)}


def load_state(
    run_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    order,
    average: Averaged | None = None,
    task: WithExtraState | None = None,
) -> dict:
    import json

    path = ckpt.run_file(run_dir, ckpt.STATE)
    entries, metadata = ckpt.read_header(path)
    expected = {f"model.{k}": v for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in entries]
    if missing or "state" not in metadata:
        raise VQGenError(f"'{path}' does not belong to this model; start again with --force")
    for name, ref in expected.items():  # from the header, before any tensor is read
        if entries[name][1] != tuple(ref.shape):
            raise VQGenError(f"'{path}': '{name}' has the wrong shape; start again with --force")
    try:
        meta = json.loads(metadata["state"])
    except (ValueError, RecursionError) as e:
        raise VQGenError(f"'{path}' has damaged metadata ({str(e)[:100]}); start again with --force") from e
    _check_state_meta(meta, entries, path)
    tensors = ckpt.load_tensors(path)
    model.load_state_dict({k[len("model.") :]: tensors[k] for k in expected})
    try:
        load_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        order.load_state_dict(meta["order"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise VQGenError(f"'{path}' holds a damaged training state ({str(e)[:100]}); start again with --force") from e
    if average is not None:
        average.load_state_tensors(tensors, path)
    if task is not None:
        task_tensors = {k[len("task.") :]: v for k, v in tensors.items() if k.startswith("task.")}
        task.load_extra_state(task_tensors, meta.get("task", {}))
    return meta


def _check_state_meta(meta: object, entries: dict, path: Path) -> None:
    """What --resume needs from a state file, checked before it is used: a resume from less is not bit-identical."""

    def damaged(what: str) -> VQGenError:
        return VQGenError(f"'{path}' {what}; the saved state is damaged: start again with --force")

    if not isinstance(meta, dict):
        raise damaged("has metadata that is not a JSON object")
    step = meta.get("step")
    if not _is_int(step) or not 0 <= step <= MAX_STEPS:
        raise damaged(f"records no valid step ({_short(step)})")
    for key in ("order", "optimizer"):
        if not isinstance(meta.get(key), dict):
            raise damaged(f"lacks its '{key}' record")
    if not isinstance(meta["optimizer"].get("scalars"), dict) or not isinstance(
        meta["optimizer"].get("param_groups"), list
    ):
        raise damaged("has a damaged optimizer record")
    if "rng.torch" not in entries:
        raise damaged("lacks its random number generator state")
    names = meta["optimizer"].get("tensors")  # absent from state files written before it was recorded
    if step > 0 and not any(name.startswith("optim.") for name in entries):
        raise damaged("holds no optimizer state")
    if isinstance(names, list):
        missing = [n for n in names if n not in entries]
        if missing:
            raise damaged(f"lacks {len(missing)} optimizer tensor(s), e.g. '{missing[0]}'")
