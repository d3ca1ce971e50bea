"""`--precision auto` on a CPU with native bf16, for the task about to train: time its steps in fp32 and bf16 on
copies of its networks (vqgen.device.measure_cpu_precision decides and caches), and record the choice in the run."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.device import PrecisionChoice, autocast, measure_cpu_precision
from vqgen.distributed import broadcast_object


class Task(Protocol):
    """What the probe needs of a vqgen.train.Task (named here so that this module does not import the loop's)."""

    model: nn.Module
    kind: str
    network: str

    def step(self, model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, Any]: ...


def measured_precision(task: Task, order, device: torch.device, main: bool) -> PrecisionChoice:
    """`--precision auto` on a CPU with native bf16: the faster of fp32 and bf16 for this network and batch, cached
    per CPU model (vqgen.device.measure_cpu_precision). The passes run on copies of the task's networks, on this
    rank's share of a batch of the first training rows, with the random state restored after: the run itself is
    the same whichever precision the measurement picks."""
    share = order.batch_size // order.world_size
    rows = torch.arange(order.rank * share, (order.rank + 1) * share)
    probe: Task | None = None

    def step(precision: str) -> None:
        nonlocal probe
        if probe is None:
            probe = _probe_task(task)
            probe.model.train()
        with autocast(device, precision):
            loss, _ = probe.step(probe.model, rows)
        probe.model.zero_grad(set_to_none=True)
        loss.backward()

    with torch.random.fork_rng(devices=[]):
        return measure_cpu_precision(_precision_key(task, share), step, main=main, agree=broadcast_object)


def _holds_network(value: object) -> bool:
    if isinstance(value, nn.Module):
        return True
    inner = getattr(value, "__dict__", None)
    return isinstance(inner, dict) and any(isinstance(v, (nn.Module, torch.optim.Optimizer)) for v in inner.values())


def _probe_task(task: Task) -> Task:
    """A copy of `task` whose networks (its model, and anything else holding one, as a discriminator) are copies of
    their own, so that timing its steps changes nothing of the run's (weights, buffers, counters); data is shared."""
    probe = copy.copy(task)
    memo: dict = {}
    for name, value in vars(task).items():
        if name == "model" or _holds_network(value):
            setattr(probe, name, copy.deepcopy(value, memo))
    return probe


def _precision_key(task: Task, batch: int) -> str:
    """What a measured precision holds for: the task, its network's settings and shapes, the batch, the threads."""
    model = task.model
    settings = model.cfg.to_dict() if hasattr(getattr(model, "cfg", None), "to_dict") else None
    shapes = [(name, list(p.shape)) for name, p in model.named_parameters()]
    others = sorted(name for name, value in vars(task).items() if name != "model" and _holds_network(value))
    blob = json.dumps([type(model).__name__, settings, shapes, others], sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{task.kind} {task.network} {digest}, batch {batch}, {torch.get_num_threads()} threads"


def record_precision(run_dir: Path, choice: PrecisionChoice) -> None:
    """The measured precision and its figures, in the train section of the run's config.json (where there is one)."""
    if not (run_dir / ckpt.CONFIG).exists():
        return
    config = ckpt.read_config(run_dir)
    config["train"] = {**config.get("train", {}), "precision": choice.precision, "precision_auto": choice.record()}
    ckpt.save_json(run_dir / ckpt.CONFIG, config)
