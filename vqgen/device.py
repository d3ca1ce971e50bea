"""Device and precision choice: which device a command runs on, which precision `--precision auto` picks there,
and the autocast the networks run under. Shared by training, encoding, sampling and evaluation.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

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
    """What `--precision auto` runs `network` ("autoencoder", "pixelcnn" or "transformer") in, given the device.

    A GPU with bf16 runs everything in bf16 (same range as fp32, so no loss scaling); one without gets fp32 (fp16
    stays an explicit choice: it needs a scaler and can overflow). A CPU with native bf16 runs the convolutional
    networks in bf16 (1.28× the img/s of fp32 for the default autoencoder, 1.29× the codes/s for the PixelCNN, on 2
    AVX-512 cores, bench/precision.py); the Transformer stays in fp32 there, since at the default width its matrices
    are too small for bf16 to pay for the casts (1.02×, within run-to-run spread). Anything else gets fp32."""
    if device_type == "cuda":
        return "bf16" if cuda_bf16 else "fp32"
    if device_type == "cpu" and cpu_bf16 and network != "transformer":
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device: torch.device, network: str) -> str:
    """`precision` itself, or what `auto` picks for `network` on `device`; checked against the device."""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu_bf16 = device.type == "cpu" and cpu_has_native_bf16()
        precision = auto_precision(device.type, network, cuda_bf16=cuda_bf16, cpu_bf16=cpu_bf16)
    check_precision(device, precision)
    return precision


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse, with the fix, a --precision the device cannot run (before any run folder is written)."""
    if precision not in _PRECISIONS:
        raise VQGenError(f"unknown --precision '{precision}'; use auto, fp32, bf16 or fp16")
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
        raise VQGenError(f"unknown --precision '{precision}'; use auto, fp32, bf16 or fp16")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
