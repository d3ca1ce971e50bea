"""Device and precision choice: which device a command runs on, which precision `--precision auto` picks there (by
the hardware's flags, or, for training on a CPU with native bf16, by timing the network and caching the outcome per
CPU model), and the autocast the networks run under. Shared by training, encoding, sampling and evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vqgen.choices import PRECISIONS, Precision
from vqgen.errors import VQGenError


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), as torch reports it. AVX2-only CPUs emulate
    bf16, and there autocast to it is several times slower than fp32."""
    import torch.cpu as tcpu

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(hasattr(tcpu, name) for name in checks):
        return any(getattr(tcpu, name, lambda: False)() for name in checks)
    try:  # an older torch: read the flags the kernel reports
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_precision(device_type: str, network: str, *, cuda_bf16: bool, cpu_bf16: bool) -> str:
    """What `--precision auto` runs `network` ("autoencoder", "pixelcnn", "transformer", "classifier") in, by the
    hardware's flags alone: the rule of the commands that have no network to time (sampling, eval's classifier), and
    of training everywhere but on a CPU with native bf16, where it times the network instead (auto_is_measured).

    A GPU with bf16 runs everything in bf16 (same range as fp32, so no loss scaling); one without gets fp32 (fp16
    stays an explicit choice: it needs a scaler and can overflow). A CPU with native bf16 runs the convolutional
    networks in bf16 and the Transformer in fp32 (at the default width its matrices are too small for bf16 to pay for
    the casts, bench/precision.py). Anything else gets fp32."""
    if device_type == "cuda":
        return "bf16" if cuda_bf16 else "fp32"
    if device_type == "cpu" and cpu_bf16 and network != "transformer":
        return "bf16"
    return "fp32"


def resolve_precision(precision: Precision, device: torch.device, network: str) -> str:
    """`precision` itself, or what `auto` picks for `network` on `device` by auto_precision's rule (no timing);
    checked against the device. Training a network on a CPU with native bf16 measures instead, see
    measure_cpu_precision."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu_bf16 = device.type == "cpu" and cpu_has_native_bf16()
        precision = auto_precision(device.type, network, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16)
    check_precision(device, precision)
    return precision


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse, with the fix, a --precision the device cannot run (before any run folder is written)."""
    if precision not in _PRECISIONS:
        raise VQGenError(f"unknown --precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type == "cpu" and precision == "fp16":
        # CPU autocast can do fp16, but with no fp16 units it is slower than fp32 and needs loss scaling for nothing
        raise VQGenError("--precision fp16 needs a GPU; on the CPU use --precision bf16 or fp32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise VQGenError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use --precision fp16 or fp32")
    if not torch.amp.is_autocast_available(device.type):
        raise VQGenError(f"--precision {precision} is not supported on {device.type}; use --precision fp32")


def autocast(device: torch.device, precision: str):
    """Autocast for the networks (see check_precision); the quantizer and the sampling softmax opt out, in fp32."""
    if precision not in _PRECISIONS:
        raise VQGenError(f"unknown --precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------ `auto` by measurement, for training on a CPU

CPU_BF16_MARGIN = 1.10  # bf16 must run a training step at least this much faster than fp32 to be picked on a CPU
PROBE_SECONDS = 1.0  # the timed passes of both precisions together, after one untimed warm-up pass of each
_CACHE_FILE = "precision.json"
_CACHE_VERSION = 1


def auto_is_measured(precision: str, device: torch.device) -> bool:
    """Whether a training run's `precision` is decided by timing its network (see measure_cpu_precision): `auto` on
    a CPU with native bf16. Elsewhere auto_precision's rule decides (a GPU: bf16 where it has it; a CPU without
    native bf16: fp32), and an explicit precision is always kept. VQGEN_PRECISION_AUTO=rule turns the timing off
    (the test suite sets it, so that a run's precision does not depend on how busy the machine is)."""
    if os.environ.get("VQGEN_PRECISION_AUTO") == "rule":
        return False
    return precision == "auto" and device.type == "cpu" and cpu_has_native_bf16()


@dataclass(frozen=True)
class PrecisionChoice:
    """What `auto` picked on this CPU by measurement, and the figures it went by."""

    precision: str  # "bf16" or "fp32"
    fp32_seconds: float  # the fastest timed training step in fp32
    bf16_seconds: float  # and under bf16 autocast
    cached: bool = False  # read from the cache rather than measured by this run

    @property
    def speedup(self) -> float:
        """bf16's step rate over fp32's."""
        return self.fp32_seconds / self.bf16_seconds

    def describe(self) -> str:
        source = "from the cache" if self.cached else "measured now"
        return (
            f"auto: bf16 ran {self.speedup:.2f}× as fast as fp32 on this CPU, {CPU_BF16_MARGIN:.2f}× picks bf16; "
            f"{source}"
        )

    def record(self) -> dict:
        """For the train section of config.json."""
        return {
            "by": "measurement",
            "cpu": cpu_model(),
            "bf16_speedup": round(self.speedup, 4),
            "fp32_step_seconds": self.fp32_seconds,
            "bf16_step_seconds": self.bf16_seconds,
            "margin": CPU_BF16_MARGIN,
            "cached": self.cached,
        }


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it (or the platform's name for it)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def precision_cache_path() -> Path:
    """Where the measured choices are kept: $VQGEN_CACHE or ~/.cache/vqgen, precision.json."""
    return Path(os.environ.get("VQGEN_CACHE") or Path.home() / ".cache" / "vqgen") / _CACHE_FILE


def _cache_key(key: str) -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {key}"


def _read_cache(path: Path) -> dict:
    """The cache's entries; a missing, unreadable or damaged file reads as none (the next store rewrites it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def lookup_precision(key: str, path: Path | None = None) -> PrecisionChoice | None:
    """The choice cached for `key` (the network and its batch) on this CPU model and torch version, or None."""
    entry = _read_cache(path or precision_cache_path()).get(_cache_key(key))
    if not isinstance(entry, dict) or entry.get("precision") not in ("fp32", "bf16"):
        return None
    fp32_s, bf16_s = entry.get("fp32_seconds"), entry.get("bf16_seconds")
    if not (_positive(fp32_s) and _positive(bf16_s)):
        return None
    return PrecisionChoice(entry["precision"], float(fp32_s), float(bf16_s), cached=True)


def store_precision(key: str, choice: PrecisionChoice, path: Path | None = None) -> bool:
    """Add `choice` to the cache (written atomically; a damaged file is replaced). False where it cannot be written:
    the choice then holds for this run only."""
    from vqgen import checkpoint as ckpt

    path = path or precision_cache_path()
    entries = _read_cache(path)
    entries[_cache_key(key)] = {
        "precision": choice.precision,
        "fp32_seconds": choice.fp32_seconds,
        "bf16_seconds": choice.bf16_seconds,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        ckpt.write_text(path, json.dumps({"version": _CACHE_VERSION, "entries": entries}, indent=2) + "\n")
    except (OSError, VQGenError):
        return False
    return True


def time_precisions(
    step: Callable[[str], object],
    *,
    seconds: float = PROBE_SECONDS,
    timer: Callable[[], float] = time.perf_counter,
    min_rounds: int = 2,
) -> tuple[float, float]:
    """Seconds per training step of `step("fp32")` and `step("bf16")`: one untimed warm-up pass of each (the first
    pass pays one-time costs), then alternating timed passes until `seconds` are spent, at least `min_rounds` of
    each. The fastest pass of each counts, since a busy machine's interruptions only ever slow one."""
    for precision in ("fp32", "bf16"):
        step(precision)
    best = {"fp32": math.inf, "bf16": math.inf}
    start, rounds = timer(), 0
    while rounds < min_rounds or timer() - start < seconds:
        for precision in ("fp32", "bf16") if rounds % 2 == 0 else ("bf16", "fp32"):
            before = timer()
            step(precision)
            best[precision] = min(best[precision], timer() - before)
        rounds += 1
    return max(best["fp32"], 1e-9), max(best["bf16"], 1e-9)


def precision_from_times(fp32_seconds: float, bf16_seconds: float) -> PrecisionChoice:
    """bf16 where its step is at least CPU_BF16_MARGIN times as fast as fp32's, else fp32."""
    fast = fp32_seconds >= CPU_BF16_MARGIN * bf16_seconds
    return PrecisionChoice("bf16" if fast else "fp32", fp32_seconds, bf16_seconds)


def measure_cpu_precision(
    key: str,
    step: Callable[[str], object],
    *,
    main: bool = True,
    agree: Callable[[object], object] = lambda obj: obj,
    path: Path | None = None,
    timer: Callable[[], float] = time.perf_counter,
    seconds: float = PROBE_SECONDS,
) -> PrecisionChoice:
    """What `auto` trains in on this CPU: the choice cached for `key`, else the one measured by timing `step` (one
    training step of the network about to train, in the precision it is given) and then cached.

    Under torch.distributed every rank calls this: `agree` hands rank 0's (`main`) cache entry and then its
    measurement to all (the network's own collectives need every rank to run the same passes)."""
    choice = agree(lookup_precision(key, path) if main else None)
    if choice is None:
        fp32_seconds, bf16_seconds = time_precisions(step, seconds=seconds, timer=timer)
        choice = agree(precision_from_times(fp32_seconds, bf16_seconds) if main else None)
        if main:
            store_precision(key, choice, path)
    return choice
