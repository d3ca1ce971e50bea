"""The one training loop both stages share.

A stage is a `Task`: it owns the model and the data, and says what one step computes, what a log window reports
and what an evaluation measures. `fit` does everything else: devices, precision, the optimizer and its schedule,
the progress bar, metrics.jsonl, periodic and signal-triggered checkpoints, exact resumption, NaN detection and
torch.distributed.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.errors import TrainingInterrupted, VQGenError


@dataclass
class TrainConfig:
    steps: int | None = None  # None: the stage's default
    epochs: float | None = None  # when set, overrides steps
    batch_size: int = 128  # the global batch: split across processes under torchrun
    lr: float | None = None  # None: the stage's default
    weight_decay: float = 0.0  # AdamW decay, on matrices (ndim ≥ 2) only
    warmup: int = 100
    schedule: str = "cosine"  # or "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 500
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------- environment


def resolve_device(name: str = "auto") -> torch.device:
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VQGenError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VQGenError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise VQGenError(f"unknown --device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Autocast for the networks; the quantizer and the sampling softmax opt out and stay in fp32."""
    if precision not in _PRECISIONS:
        raise VQGenError(f"unknown --precision '{precision}'; use fp32, bf16 or fp16")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU); a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


# ----------------------------------------------------------------------------------------------- the task interface


class Task:
    """One training stage. Subclasses set `model`, `unit` and implement the hooks below."""

    model: nn.Module
    kind: str = "task"
    unit: str = "img"  # what throughput counts
    examples_per_row: int = 1  # units per data row (1 image, or m² codes)

    def num_rows(self) -> int:
        """Training rows (images or code grids)."""
        raise NotImplementedError

    def step(self, model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch, and tensors to sum over the log window (no .item(): the loop syncs once a window)."""
        raise NotImplementedError

    def window_metrics(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Turn the (all-reduced) window sums into the numbers logged to metrics.jsonl."""
        return {}

    def progress_text(self, metrics: dict[str, float]) -> str:
        return ""

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        """Held-out metrics; `final` asks for the whole split."""
        return {}

    def preview(self, model: nn.Module, run_dir: Path, step: int) -> None:
        """Write preview PNGs into the run folder."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------- state


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimizer state_dict into named tensors plus JSON-able scalars."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, order, step: int, extra: dict) -> None:
    """Everything needed to continue bit-identically, in one file (so it can never mix two steps)."""
    import json

    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": step, "order": order.state_dict(), "optimizer": opt_meta, **extra}
    ckpt.save_tensors(run_dir / ckpt.STATE, tensors, {"state": json.dumps(meta)})


def load_state(run_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, order) -> dict:
    import json

    entries, metadata = ckpt.read_header(run_dir / ckpt.STATE)
    expected = {f"model.{k}": v for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in entries]
    if missing or "state" not in metadata:
        raise VQGenError(f"'{run_dir / ckpt.STATE}' does not belong to this model; start again with --force")
    tensors = ckpt.load_tensors(run_dir / ckpt.STATE)
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise VQGenError(f"'{run_dir / ckpt.STATE}': '{name}' has the wrong shape; start again with --force")
    model.load_state_dict({k[len("model.") :]: tensors[k] for k in expected})
    meta = json.loads(metadata["state"])
    _load_optimizer(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    order.load_state_dict(meta["order"])
    return meta


# ----------------------------------------------------------------------------------------------- the loop


def resumed_config(saved: dict, given: TrainConfig) -> TrainConfig:
    """A resumed run keeps its saved settings; only a --steps / --epochs given now extends it."""
    cfg = TrainConfig.from_dict(saved)
    if given.steps is not None or given.epochs is not None:
        cfg.steps, cfg.epochs = given.steps, given.epochs
    return cfg


def with_stage_defaults(cfg: TrainConfig, steps: int, lr: float) -> TrainConfig:
    """Fill what the user left unset with the stage's defaults."""
    if cfg.steps is None and cfg.epochs is None:
        cfg.steps = steps
    if cfg.lr is None:
        cfg.lr = lr
    return cfg


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class _SignalCatcher:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so state is saved cleanly."""

    def __init__(self):
        self.caught: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.caught is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.caught = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_progress(console=None):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


def fit(task: Task, cfg: TrainConfig, run_dir: Path, resume: bool = False, console=None) -> dict[str, float]:
    """Train `task.model` for cfg.steps steps; returns the final held-out metrics."""
    from vqgen.data import BatchOrder

    device = next(task.model.parameters()).device
    dist_info = setup_distributed(device)
    model = task.model
    opt = torch.optim.AdamW(task.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    order = BatchOrder(task.num_rows(), cfg.batch_size, cfg.seed, dist_info.rank, dist_info.world_size)
    if cfg.epochs is not None:
        total = max(1, math.ceil(cfg.epochs * order.batches_per_epoch))
    elif cfg.steps is not None:
        total = cfg.steps
    else:
        raise ValueError("TrainConfig needs steps or epochs")
    if total < 1:
        raise VQGenError(f"--steps must be at least 1, not {total}")
    start_step = 0
    if resume:
        meta = load_state(run_dir, model, opt, order)
        start_step = int(meta["step"])
    train_model: nn.Module = model
    if cfg.compile:
        train_model = compile_model(model, console)
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    main = dist_info.is_main
    window = max(1, cfg.log_every)
    losses = torch.zeros(window, device=device)
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    metrics: dict[str, float] = {}

    def checkpoint(step: int) -> None:
        if main:
            save_state(run_dir, model, opt, order, step, {"total": total})
            ckpt.save_tensors(run_dir / ckpt.WEIGHTS, model.state_dict())

    progress = make_progress(console) if main else contextlib.nullcontext()
    with _SignalCatcher() as signals, progress:
        bar = progress.add_task(task.kind, total=total, completed=start_step, info="") if main else None
        model.train()
        for step in range(start_step, total):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            rows = order.next()
            with autocast(device, cfg.precision):
                loss, stats = task.step(train_model, rows)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()

            losses[window_steps] = loss.detach()
            for k, v in stats.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            window_steps += 1
            done = step + 1
            if window_steps == window or done == total:
                values = losses[:window_steps].tolist()  # the one sync per window
                bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    bad_step = done - window_steps + bad[0] + 1
                    raise VQGenError(
                        f"the loss became {values[bad[0]]} at step {bad_step}; training stopped and the last "
                        f"checkpoint in '{run_dir}' is kept. Try a lower --lr or --precision fp32"
                    )
                for v in sums.values():
                    all_reduce_(v)
                elapsed = time.perf_counter() - window_start
                rate = window_steps * cfg.batch_size * task.examples_per_row / max(elapsed, 1e-9)
                metrics = {"loss": sum(values) / len(values), **task.window_metrics(sums, window_steps)}
                if main:
                    record = {
                        "step": done,
                        "split": "train",
                        **metrics,
                        "lr": opt.param_groups[0]["lr"],
                        f"{task.unit}_per_s": rate,
                    }
                    ckpt.append_metrics(run_dir, record)
                    info = f"loss {metrics['loss']:.4f} {task.progress_text(metrics)} {rate:,.0f} {task.unit}/s"
                    progress.update(bar, completed=done, info=info)
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            elif main and window_steps % 10 == 0:
                progress.update(bar, completed=done)

            if cfg.eval_every and done % cfg.eval_every == 0 and done != total:
                _evaluate(task, model, run_dir, done, final=False, main=main)
            if signals.caught is not None:
                checkpoint(done)
                name = signal.Signals(signals.caught).name
                raise TrainingInterrupted(f"{name} at step {done}/{total}: state saved in '{run_dir}'")
            if cfg.save_every and done % cfg.save_every == 0 and done != total:
                checkpoint(done)
        checkpoint(total)
    return _evaluate(task, model, run_dir, total, final=True, main=main)


def _evaluate(task: Task, model: nn.Module, run_dir: Path, step: int, final: bool, main: bool) -> dict[str, float]:
    model.eval()
    try:
        results = task.evaluate(model, final)
        if main:
            ckpt.append_metrics(run_dir, {"step": step, "split": "test", **results})
            task.preview(model, run_dir, step)
    finally:
        model.train()
    return results


def compile_model(model: nn.Module, console=None) -> nn.Module:
    try:
        return torch.compile(model)
    except Exception as e:  # torch.compile raises many kinds of errors on unsupported set-ups
        if console is not None:
            console.print(f"[yellow]warning:[/] torch.compile unavailable ({e}); training without it")
        return model
