"""The one training loop both stages share.

A stage is a `Task`: it owns the model and the data, and says what one step computes, what a log window reports
and what an evaluation measures. `fit` does everything else: the optimizer and its schedule, the progress bar,
metrics.jsonl, periodic and signal-triggered checkpoints, exact resumption, NaN detection and torch.distributed,
with the device and precision choice from vqgen.device (timed for the task by vqgen.probe), the process group and
its collectives from vqgen.distributed, the saved training state from vqgen.resume and the weight average from
vqgen.averaging.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.averaging import WeightAverage, maybe_applied
from vqgen.choices import Precision
from vqgen.device import (
    auto_is_measured,
    autocast,
    resolve_device,
    resolve_precision,
)
from vqgen.distributed import (
    DistInfo,
    agreed_signal,
    any_rank,
    broadcast_object,
    mean_over_ranks,
    setup_distributed,
)
from vqgen.errors import TrainingInterrupted, VQGenError
from vqgen.limits import MAX_STEPS, MAX_TRAIN_BATCH, check_seed
from vqgen.limits import is_int as _is_int
from vqgen.limits import short as _short
from vqgen.probe import measured_precision, record_precision
from vqgen.progress import make_progress
from vqgen.resume import load_state, optimizer_tensors, state_file


@dataclass
class TrainConfig:
    steps: int | None = None  # None: the stage's default
    epochs: float | None = None  # when set, overrides steps
    minutes: float | None = None  # a wall-clock budget: fit measures a step and records the steps that fill it
    ema_weights: float | None = None  # decay of an exponential moving average of the weights (0: none; None: preset)
    batch_size: int | None = None  # global (split across processes under torchrun); None: the stage's default
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
    precision: Precision = "auto"  # resolved before training starts (setup_device, else fit), and so in config.json
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self, source: str | None = None) -> None:
        """Every setting's type and range, before anything is allocated or written. `source` names the config.json
        the settings came from (a damaged file), else they are the command line's flags."""
        try:
            _check_train_config(self)
            if source is not None:  # a saved run has all its settings resolved
                for flag, value in (("--lr", self.lr), ("--batch-size", self.batch_size)):
                    if value is None:
                        raise VQGenError(f"{flag} is missing")
                if self.steps is None and self.epochs is None and self.minutes is None:
                    raise VQGenError("--steps is missing")
        except VQGenError as e:
            if source is None:
                raise
            raise VQGenError(f"'{source}' has an invalid train section ({e}); the run folder is damaged") from None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_train_config(c: TrainConfig) -> None:
    def need(ok: bool, flag: str, what: str, value: object) -> None:
        if not ok:
            raise VQGenError(f"{flag} must be {what}, not {_short(value)}")

    need(
        c.steps is None or (_is_int(c.steps) and 1 <= c.steps <= MAX_STEPS),
        "--steps",
        f"at least 1 and at most {MAX_STEPS}",
        c.steps,
    )
    need(c.epochs is None or (_is_number(c.epochs) and c.epochs > 0), "--epochs", "a number > 0", c.epochs)
    need(c.minutes is None or (_is_number(c.minutes) and c.minutes > 0), "--minutes", "a number > 0", c.minutes)
    need(
        c.batch_size is None or (_is_int(c.batch_size) and 1 <= c.batch_size <= MAX_TRAIN_BATCH),
        "--batch-size",
        f"at least 1 and at most {MAX_TRAIN_BATCH}",
        c.batch_size,
    )
    need(c.lr is None or (_is_number(c.lr) and c.lr > 0), "--lr", "a finite number > 0, e.g. 3e-3", c.lr)
    need(
        c.ema_weights is None or (_is_number(c.ema_weights) and 0 <= c.ema_weights < 1),
        "--ema-weights",
        "a decay in (0, 1), e.g. 0.999, or 0 for none",
        c.ema_weights,
    )
    need(_is_number(c.weight_decay) and c.weight_decay >= 0, "--weight-decay", "a number >= 0", c.weight_decay)
    need(_is_int(c.warmup) and 0 <= c.warmup <= MAX_STEPS, "warmup", "a number of steps >= 0", c.warmup)
    need(c.schedule in ("cosine", "constant"), "schedule", "cosine or constant", c.schedule)
    need(_is_number(c.min_lr_ratio) and 0 <= c.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]", c.min_lr_ratio)
    need(_is_number(c.grad_clip) and c.grad_clip >= 0, "grad_clip", "a number >= 0 (0: off)", c.grad_clip)
    check_seed(c.seed)
    for flag, value in (("--log-every", c.log_every), ("--eval-every", c.eval_every), ("--save-every", c.save_every)):
        need(_is_int(value) and 0 <= value <= MAX_STEPS, flag, "a number of steps >= 0", value)
    need(isinstance(c.device, str), "--device", "a device name", c.device)
    need(isinstance(c.precision, str), "--precision", "auto, fp32, bf16 or fp16", c.precision)
    need(isinstance(c.compile, bool), "--compile", "true or false", c.compile)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def setup_device(cfg: TrainConfig, network: str) -> tuple[torch.device, DistInfo]:
    """The device (this rank's GPU under torchrun) and the process group; `cfg.precision` becomes the one that runs
    (`auto` resolved for `network`, see auto_precision), so that config.json records it and a resume repeats it. On a
    CPU with native bf16 `auto` stays until fit has timed the network (see vqgen.probe.measured_precision)."""
    device = resolve_device(cfg.device)
    if not auto_is_measured(cfg.precision, device):
        cfg.precision = resolve_precision(cfg.precision, device, network)
    return device, setup_distributed(device)


# ----------------------------------------------------------------------------------------------- the task interface


class Task:
    """One training stage. Subclasses set `model`, `unit` and implement the hooks below."""

    model: nn.Module
    kind: str = "task"
    unit: str = "img"  # what throughput counts
    examples_per_row: int = 1  # units per data row (1 image, or m² codes)
    network: str = "autoencoder"  # what `--precision auto` decides for by flags (see vqgen.device.auto_precision)

    def num_rows(self) -> int:
        """Training rows (images or code grids)."""
        raise NotImplementedError

    def step(self, model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one batch, and tensors to sum over the log window (no .item(): the loop syncs once a window)."""
        raise NotImplementedError

    def window_metrics(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Turn the window sums into the numbers logged to metrics.jsonl.

        Under torchrun the sums are averaged over ranks: a per-rank mean stays a mean of the global batch, and a
        histogram (code counts) keeps its shape, which is all usage and perplexity look at.
        """
        return {}

    def compile_targets(self) -> list[nn.Module]:
        """The networks --compile compiles: the pure tensor code, not the quantizer's collectives and branches."""
        return [self.model]

    def progress_text(self, metrics: dict[str, float]) -> str:
        return ""

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        """Held-out metrics; `final` asks for the whole split."""
        return {}

    def preview(self, model: nn.Module, run_dir: Path, step: int) -> None:
        """Write preview PNGs into the run folder."""

    def after_step(self) -> None:
        """Updates of the task's own after the optimizer step (the adversarial discriminator's)."""

    def before_save(self) -> None:
        """Derived state to refresh before the weights are written (a renumbered codebook's code order)."""

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON-able settings of the task's own that --resume needs (prefixed by the task)."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what extra_state saved."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------- the loop


def refuse_changed(flag: str, asked: object, saved: object) -> None:
    """A resumed run keeps its model: a model setting given now that differs from the run's is refused, not ignored."""
    if asked is not None and asked != saved:
        raise VQGenError(
            f"{flag} {asked} differs from the run's {saved}: a resumed run keeps its model; drop {flag}, "
            "or start a new run (--force, or another --out)"
        )


def resumed_config(saved: dict, given: TrainConfig) -> TrainConfig:
    """A resumed run keeps its saved settings; only a --steps / --epochs given now extends it."""
    if not isinstance(saved, dict):
        raise VQGenError("the run's config.json has no train section; the run folder is damaged")
    try:
        cfg = TrainConfig.from_dict(saved)
    except TypeError as e:
        raise VQGenError(f"the run's config.json has an invalid train section ({e})") from e
    cfg.check("config.json")
    given.check()
    if given.minutes is not None:
        raise VQGenError("--minutes cannot be given with --resume: the run already has its steps; give --steps")
    if given.steps is not None or given.epochs is not None:
        cfg.steps, cfg.epochs, cfg.minutes = given.steps, given.epochs, None
    return cfg


def with_stage_defaults(
    cfg: TrainConfig, steps: int, lr: float, batch_size: int, ema_weights: float | None = None
) -> TrainConfig:
    """Fill what the user left unset with the stage's defaults (vqgen.presets); check every setting."""
    cfg.check()
    if cfg.minutes is not None:
        if cfg.steps is not None or cfg.epochs is not None:
            raise VQGenError("give one of --minutes, --steps and --epochs, not several")
        if not (cfg.minutes > 0 and math.isfinite(cfg.minutes)):
            raise VQGenError(f"--minutes must be a positive number of minutes, not {cfg.minutes}")
    elif cfg.steps is None and cfg.epochs is None:
        cfg.steps = steps
    if ema_weights is not None and cfg.ema_weights is None:
        cfg.ema_weights = ema_weights
    if cfg.ema_weights is None:
        cfg.ema_weights = 0.0
    if cfg.ema_weights != 0 and not 0 < cfg.ema_weights < 1:
        raise VQGenError(f"--ema-weights must be a decay in (0, 1), e.g. 0.999, or 0 for none; not {cfg.ema_weights}")
    if cfg.lr is None:
        cfg.lr = lr
    if cfg.batch_size is None:
        cfg.batch_size = batch_size
    cfg.check()  # checked here, before a run folder is made
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


def fit(
    task: Task,
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    console=None,
    on_saved: Callable[[], Path] | None = None,
) -> dict[str, float]:
    """Train `task.model` for cfg.steps steps; returns the final held-out metrics.

    No checkpoint is ever written from a non-finite loss or weights: both are checked before each write (and each
    evaluation), so the checkpoint on disk is always the last sound one. After each checkpoint `on_saved()` gives
    the run folder to write into from then on (a staged new run moves into place at its first, see RunFolder).
    """
    from vqgen.data import BatchOrder

    device = next(task.model.parameters()).device
    dist_info = setup_distributed(device)
    model = task.model
    opt = torch.optim.AdamW(task.param_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.99))
    order = BatchOrder(task.num_rows(), cfg.batch_size, cfg.seed, dist_info.rank, dist_info.world_size)
    # A --minutes budget first runs `probe` steps, all inside the learning-rate warm-up (whose rates do not depend
    # on the total), times them, then fixes the total: a re-run with --steps TOTAL is the same run.
    budget = cfg.minutes * 60 if cfg.minutes is not None and cfg.steps is None and cfg.epochs is None else None
    probe = min(20, max(cfg.warmup, 1))
    if budget is not None:
        total = probe
    elif cfg.epochs is not None:
        total = max(1, math.ceil(cfg.epochs * order.batches_per_epoch))
    elif cfg.steps is not None:
        total = cfg.steps
    else:
        raise ValueError("TrainConfig needs steps, epochs or minutes")
    if total < 1:
        raise VQGenError(f"--steps must be at least 1, not {total}")
    average = WeightAverage(model, cfg.ema_weights) if cfg.ema_weights else None
    start_step = 0
    if resume:
        meta = load_state(run_dir, model, opt, order, average, task)
        start_step = int(meta["step"])
    measured = None
    if auto_is_measured(cfg.precision, device):  # a resumed run has its precision already: it is not measured again
        measured = measured_precision(task, order, device, dist_info.is_main)
        cfg.precision = measured.precision
        if dist_info.is_main:
            record_precision(run_dir, measured)
    cfg.precision = resolve_precision(cfg.precision, device, task.network)
    if console is not None and dist_info.is_main:
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        how = f" ({measured.describe()})" if measured is not None else ""
        console.print(f"{task.kind}: {device.type}{threads}, precision {cfg.precision}{how}")
    if cfg.compile:
        compile_modules(task.compile_targets(), console if dist_info.is_main else None)
    train_model: nn.Module = model
    if dist_info.world_size > 1:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # DDP averages the gradients; with equal shards that is the gradient of the global batch's mean loss.
        # Buffers (the EMA codebook, usage counters) are kept equal by the quantizer's own collectives, so DDP
        # need not re-broadcast them before every forward (it still does once, at construction). The graph is
        # the same in every step, but may leave a parameter out for good (a conditional PixelCNN's last vertical
        # label bias): static_graph finds those once, where find_unused_parameters would search every step.
        ddp_args = inspect.signature(DistributedDataParallel).parameters
        sync_flag = "forward_sync_buffers" if "forward_sync_buffers" in ddp_args else "broadcast_buffers"  # torch<2.14
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            static_graph=True,
            **{sync_flag: False},
        )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    main = dist_info.is_main
    window = max(1, cfg.log_every)
    losses = torch.zeros(window, device=device)
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    metrics: dict[str, float] = {}

    saved_step = start_step if resume else None  # the step of the checkpoint on disk (None: none yet)

    def diverged(what: str, step: int) -> VQGenError:
        if saved_step is None:
            kept = "no checkpoint had been written, so nothing was saved"
        else:
            kept = f"the last checkpoint in '{run_dir}' (step {saved_step}) is kept"
        return VQGenError(f"{what} at step {step}; training stopped and {kept}. Try a lower --lr or --precision fp32")

    def check_losses(count: int, done: int) -> list[float]:
        """The last `count` step losses, averaged over ranks so that all agree on a NaN; raises on a non-finite one."""
        values = mean_over_ranks(losses[:count], dist_info.world_size).tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise diverged(f"the loss became {values[bad]}", done - count + bad + 1)
        return values

    def check_finite(step: int) -> None:
        """Before anything is written from the model: the losses not yet checked, then every tensor of the state."""
        if window_steps:
            check_losses(window_steps, step)
        tensors = dict(model.state_dict()) | optimizer_tensors(opt)[0] | task.extra_state()[0]
        if average is not None:
            tensors |= average.state_tensors()
        bad = ckpt.first_non_finite(tensors)
        if any_rank(bad is not None, dist_info.world_size):
            raise diverged(f"the weights became non-finite ('{bad or 'on another rank'}')", step)

    def checkpoint(step: int) -> None:
        nonlocal run_dir, saved_step
        check_finite(step)
        with maybe_applied(average):
            task.before_save()  # on every rank, so that all keep the same model
        if main:
            with maybe_applied(average):
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state = state_file(model, opt, order, step, {"total": total}, average, task)  # the raw weights again
            # both or neither: a full disk never leaves weights and state of two different steps
            ckpt.save_tensor_files({run_dir / ckpt.STATE: state, run_dir / ckpt.WEIGHTS: (weights, None)})
        saved_step = step
        if on_saved is not None:
            run_dir = on_saved()

    progress = make_progress(console) if main else contextlib.nullcontext()
    with _SignalCatcher() as signals, progress:
        bar = progress.add_task(task.kind, total=total, completed=start_step, info="") if main else None
        model.train()
        loop_start = probe_start = time.perf_counter()
        probe_from = start_step + min(2, probe - start_step - 1)  # the steps before it pay one-time set-up costs
        step = start_step
        while step < total:
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
            with autocast(device, cfg.precision):
                task.after_step()
            if average is not None:
                average.update(step)
            if budget is not None:
                if step + 1 == probe_from:
                    float(loss.detach())  # a sync, so that the timed steps start now
                    probe_start = time.perf_counter()
                elif step + 1 == probe:
                    timed = probe - max(probe_from, start_step)
                    total = _budget_steps(budget, loss, loop_start, probe_start, timed, probe, run_dir, main)
                    cfg.steps = total
                    if main:
                        progress.update(bar, total=total)

            losses[window_steps] = loss.detach()
            for k, v in stats.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
            window_steps += 1
            done = step + 1
            if window_steps == window or done == total:
                # the one sync per window; the loss is averaged over ranks so that all agree on a NaN
                values = check_losses(window_steps, done)
                sums = {k: mean_over_ranks(v, dist_info.world_size) for k, v in sums.items()}
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
                check_finite(done)  # no preview nor metrics line from a diverged model
                _evaluate(task, model, run_dir, done, final=False, main=main, average=average)
            caught = agreed_signal(signals.caught, dist_info.world_size)
            if caught is not None:
                checkpoint(done)
                name = signal.Signals(caught).name
                raise TrainingInterrupted(f"{name} at step {done}/{total}: state saved in '{run_dir}'")
            if cfg.save_every and done % cfg.save_every == 0 and done != total:
                checkpoint(done)
            step += 1
        checkpoint(total)
        train_seconds = time.perf_counter() - loop_start
    results = _evaluate(task, model, run_dir, total, final=True, main=main, average=average)
    if average is not None:
        average.copy_to_model()  # the model in memory is then the one in model.safetensors
    if budget is not None and main:
        ckpt.append_metrics(
            run_dir, {"step": total, "split": "budget", "minutes": cfg.minutes, "seconds": train_seconds}
        )
    return results


def _budget_steps(
    budget: float,
    loss: torch.Tensor,
    loop_start: float,
    probe_start: float,
    timed: int,
    probe: int,
    run_dir: Path,
    main: bool,
) -> int:
    """The total steps that fill a --minutes budget, from the probe's step time; recorded in config.json."""
    float(loss.detach())  # sync: the probe's steps are done
    now = time.perf_counter()
    step_seconds = (now - probe_start) / max(1, timed)
    # bounded as --steps is: a budget of 1e12 minutes must still give a run that can be resumed
    total = min(MAX_STEPS, probe + max(0, math.floor((budget - (now - loop_start)) / step_seconds)))
    total = int(broadcast_object(total))  # rank 0's estimate, so that every rank runs the same steps
    if main:
        config = ckpt.read_config(run_dir)
        config["train"] = {**config["train"], "steps": total}
        config["budget"] = {"minutes": budget / 60, "step_seconds": step_seconds, "steps": total}
        ckpt.save_json(run_dir / ckpt.CONFIG, config)
    return total


def _evaluate(
    task: Task,
    model: nn.Module,
    run_dir: Path,
    step: int,
    final: bool,
    main: bool,
    average: WeightAverage | None = None,
) -> dict[str, float]:
    """Held-out metrics on rank 0 only, shared with the other ranks. Safe because evaluation and previews run no
    collective (the quantizer syncs only in training mode) and draw nothing from the global RNG, whose state
    must stay the same on every rank.

    With a weight average, the averaged weights are evaluated and previewed; the final evaluation also measures the
    trained weights (keys prefixed `raw_`), so that one run shows what the average gains.
    """
    results: dict[str, float] = {}
    if main:
        model.eval()
        try:
            with maybe_applied(average):
                results = task.evaluate(model, final)
                task.preview(model, run_dir, step)
            if average is not None and final:
                results |= {f"raw_{k}": v for k, v in task.evaluate(model, final).items()}
            ckpt.append_metrics(run_dir, {"step": step, "split": "test", **results})
        finally:
            model.train()
    return broadcast_object(results)


def compile_modules(modules: list[nn.Module], console=None) -> None:
    """torch.compile each module's training forward, in place: the state_dict keys stay as they are.

    torch.compile itself never fails; a missing compiler or an unsupported op only surfaces at the first call.
    So the first call runs inside a try, and a failure puts the eager forward back with a warning. Evaluation,
    previews and sampling (eval mode) stay eager: their shapes differ, and recompiling for one pass costs more
    than it saves.
    """
    for module in modules:
        module.forward = _compiled_forward(module, torch.compile(module.forward), console)


def _compiled_forward(module: nn.Module, compiled, console):
    eager = type(module).forward
    checked = False

    def forward(*args, **kwargs):
        nonlocal checked
        if not module.training:
            return eager(module, *args, **kwargs)
        if checked:
            return compiled(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as e:  # dynamo and inductor raise many kinds of errors on unsupported set-ups
            del module.forward  # back to the class's eager forward, for good
            if console is not None:
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                console.print(
                    f"[yellow]warning:[/] torch.compile failed for {type(module).__name__} ({first_line[:200]}); "
                    "training it without compilation"
                )
            return eager(module, *args, **kwargs)
        checked = True
        return out

    return forward
