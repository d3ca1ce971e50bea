"""An exponential moving average of a model's weights (`--ema-weights`), kept beside the trained ones."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn

from vqgen.errors import VQGenError


class WeightAverage:
    """An exponential moving average of a model's parameters, for evaluation, previews, sampling and the saved model.

    After the update of step t (0-based) every average moves as avg ← d·avg + (1 − d)·θ with
    d = min(decay, (1 + t) / (10 + t)): the ramp keeps the first steps from pinning the average to the random
    initialisation. Buffers (an EMA codebook, usage counters) are not averaged: the model's own are used.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise VQGenError(f"--ema-weights must be a decay in (0, 1), e.g. 0.999, or 0 for none; not {decay}")
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.averages = [p.detach().clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.averages, [p.detach() for p in self.params], 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def applied(self):
        """Swap the averages into the model's parameters for the duration (and the trained weights back after)."""
        with torch.no_grad():
            for p, a in zip(self.params, self.averages, strict=True):
                p.data, a.data = a.data, p.data
            try:
                yield
            finally:
                for p, a in zip(self.params, self.averages, strict=True):
                    p.data, a.data = a.data, p.data

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for p, a in zip(self.params, self.averages, strict=True):
            p.copy_(a)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{name}": a for name, a in zip(self.names, self.averages, strict=True)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        missing = [n for n in self.names if f"ema.{n}" not in tensors]
        if missing:
            raise VQGenError(f"'{where}' holds no weight average ({missing[0]}); resume without --ema-weights")
        with torch.no_grad():
            for name, a in zip(self.names, self.averages, strict=True):
                a.copy_(tensors[f"ema.{name}"])


def maybe_applied(average: WeightAverage | None):
    return average.applied() if average is not None else contextlib.nullcontext()
