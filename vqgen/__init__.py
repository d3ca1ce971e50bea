"""vqgen: a VQ-VAE and an autoregressive prior over its codes, from the command line or from Python.

    import vqgen
    vqgen.train_autoencoder(data="shapes", out="runs/ae", steps=600)  # `vqgen train-ae --steps 600`, from Python
    # ... `vqgen encode`, then vqgen.train_prior(codes="runs/codes.safetensors", out="runs/prior", layers=2)
    ae = vqgen.load("runs/ae")                        # the VQVAE of a `vqgen train-ae` run, eval mode, on the CPU
    codes = ae.encode(images)                         # uint8 [0, 255] or float [-1, 1] (B, C, H, W) → (B, m, m)
    recon = vqgen.to_uint8(ae.decode(codes))          # decode gives float [-1, 1] (unclamped); to_uint8 rounds
    pipe = vqgen.Pipeline.load("runs/prior")          # the prior and the autoencoder `vqgen sample` would use
    images = pipe.generate(16, classes="star", seed=0)  # uint8 (16, C, H, W); writes nothing

One convention throughout: images are uint8 in [0, 255] or float in [-1, 1] going in; models' `decode` gives float
in [-1, 1], and Pipeline methods give uint8. Names are imported on first use, so `import vqgen` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from vqgen.api import train_autoencoder, train_prior
    from vqgen.data import to_float, to_uint8
    from vqgen.errors import VQGenError
    from vqgen.layers import VectorQuantize
    from vqgen.priors import Prior, PriorConfig
    from vqgen.quantize import QuantizerOutput
    from vqgen.sample import Pipeline
    from vqgen.vqvae import VQVAE, AEConfig

# public name → the module that defines it, imported when the name is first used
_LAZY = {
    "AEConfig": "vqgen.vqvae",
    "Pipeline": "vqgen.sample",
    "Prior": "vqgen.priors",
    "PriorConfig": "vqgen.priors",
    "QuantizerOutput": "vqgen.quantize",
    "VQGenError": "vqgen.errors",
    "VQVAE": "vqgen.vqvae",
    "VectorQuantize": "vqgen.layers",
    "to_float": "vqgen.data",
    "to_uint8": "vqgen.data",
    "train_autoencoder": "vqgen.api",
    "train_prior": "vqgen.api",
}

__all__ = [
    "AEConfig",
    "Pipeline",
    "Prior",
    "PriorConfig",
    "QuantizerOutput",
    "VQGenError",
    "VQVAE",
    "VectorQuantize",
    "load",
    "to_float",
    "to_uint8",
    "train_autoencoder",
    "train_prior",
]


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> VQVAE | Prior:
    """The model of a run folder, as its config.json's kind names it: the VQVAE of a `vqgen train-ae` run or the
    Prior of a `vqgen train-prior` run, with its checked weights, in eval mode on `device` ("cpu", "cuda",
    "cuda:N", "mps" or "auto"). For sampling, vqgen.Pipeline.load pairs a prior with its autoencoder."""
    from vqgen import checkpoint as ckpt
    from vqgen.device import resolve_device
    from vqgen.errors import VQGenError

    dev = resolve_device(str(device))
    kind = ckpt.read_config(run_dir).get("kind")
    if kind == "vqvae":
        from vqgen.autoencoder import load_autoencoder

        return load_autoencoder(run_dir, dev)[0]
    if kind == "prior":
        from vqgen.priors.training import load_prior

        return load_prior(run_dir, dev)[0]
    raise VQGenError(f"'{run_dir}' is a {kind or 'unknown'} run; vqgen.load reads autoencoder and prior runs")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'vqgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {"__version__"})
