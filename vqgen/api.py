"""Training from Python, with the command line's defaults.

    import vqgen
    results, run = vqgen.train_autoencoder(data="shapes", out="runs/ae", steps=600, hidden=32)
    results, run = vqgen.train_prior(codes="runs/codes.safetensors", out="runs/prior", layers=2)

Each keyword is the setting of the command-line option of the same name (`hidden` for `vqgen train-ae --hidden`);
one left out, or given as None, takes what the command takes when the option is not typed: the data set's preset
(vqgen.presets) for the settings that have one, else the default shown here. `vqgen train-ae` and
`vqgen train-prior` call these functions with the options typed, so the same call and the same command give the
same run. Nothing heavy is imported until a function runs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from vqgen.choices import Arch, Grad, Level, Precision, Quantizer

# TrainConfig's settings that are options of both trainers (train-prior adds weight_decay)
_TRAIN = (
    "steps",
    "epochs",
    "minutes",
    "batch_size",
    "lr",
    "ema_weights",
    "seed",
    "device",
    "precision",
    "compile",
    "log_every",
    "eval_every",
    "save_every",
)
# AEConfig's settings that are options of train-ae; None (hidden, codebook_size, ...) leaves one to the preset
_AE_MODEL = (
    "hidden",
    "res_blocks",
    "downsample",
    "embed_dim",
    "codebook_size",
    "quantizer",
    "beta",
    "commitment",
    "decay",
    "grad",
    "restart_dead",
    "restart_below",
    "kmeans_init",
    "fsq_levels",
    "lookup_dim",
    "cosine",
    "levels",
    "code_factors",
)
_NOT_SETTINGS = ("console", "unknown")


def train_autoencoder(
    data: str | Path | None = "shapes",
    out: str | Path | None = "runs/ae",
    *,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    strict: bool | None = False,
    quantizer: Quantizer | None = None,
    codebook_size: int | None = None,
    embed_dim: int | None = 64,
    hidden: int | None = None,
    res_blocks: int | None = 2,
    downsample: int | None = None,
    levels: int | None = 1,
    beta: float | None = 1.0,
    commitment: float | None = None,
    decay: float | None = 0.99,
    grad: Grad | None = "ste",
    restart_dead: int | None = 50,
    restart_below: float | None = 0.0,
    kmeans_init: bool | None = True,
    fsq_levels: Sequence[int] | None = None,
    code_factors: Sequence[int] | None = None,
    lookup_dim: int | None = 0,
    cosine: bool | None = False,
    adversarial: float | None = None,
    adversarial_start: int | None = None,
    adversarial_lr: float | None = None,
    feature_matching: float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    ema_weights: float | None = None,
    seed: int | None = 0,
    device: str | None = "auto",
    precision: Precision | None = "auto",
    compile: bool | None = False,
    log_every: int | None = 50,
    eval_every: int | None = 0,
    save_every: int | None = 500,
    resume: bool | None = False,
    force: bool | None = False,
    console: Console | None = None,
    **unknown: Any,
) -> tuple[dict[str, float], Path]:
    """Train a VQ-VAE into run folder `out`, as `vqgen train-ae` does; returns its held-out metrics and the folder.

    `data` is shapes, mnist, fashion-mnist, cifar10, a folder of images or an .npz/.npy file, as for `--data`.
    The model settings left unset (`hidden`, `codebook_size`, `quantizer`, `fsq_levels`, `code_factors`,
    `downsample`), the training length, learning rate, batch size and weight average (`steps`, `lr`, `batch_size`,
    `ema_weights`) and the adversarial term (`adversarial`, `adversarial_start`, `feature_matching`) come from the
    data set's preset for the size of its images; `adversarial_lr` unset is `lr`, `commitment` unset 0.25·`beta`.
    `fsq_levels` and `code_factors` are lists of integers ([8, 8, 8]; [240, 64], [] for flat codes). Progress goes
    to `console` (a rich Console) when one is given. See `vqgen train-ae --help` for what each setting does.
    """
    values = _settings(train_autoencoder, locals())
    from vqgen.autoencoder import AdversarialConfig, DataConfig
    from vqgen.autoencoder import train_autoencoder as train_in_folder

    # the settings asked for; the library fills the rest from the preset for the data and its image size
    ae = {name: values[name] for name in _AE_MODEL}
    for name in ("fsq_levels", "code_factors"):
        if isinstance(ae[name], (list, tuple)):
            ae[name] = list(ae[name])
    if values["resume"]:  # a resumed run keeps its model: what differs from the defaults here was asked for
        import inspect

        defaults = inspect.signature(train_autoencoder).parameters
        ae = {name: value for name, value in ae.items() if value != defaults[name].default}
    train = _train_config(values)
    data_cfg = DataConfig(
        str(values["data"]), _str(values["data_root"]), values["image_size"], values["channels"], values["strict"]
    )
    gan = AdversarialConfig(
        values["adversarial"], values["adversarial_start"], values["adversarial_lr"], values["feature_matching"]
    )
    return train_in_folder(ae, train, data_cfg, Path(values["out"]), values["resume"], values["force"], console, gan)


def train_prior(
    codes: str | Path | None = None,
    out: str | Path | None = None,
    *,
    arch: Arch | None = "transformer",
    flat: bool | None = False,
    patch: int | None = None,
    level: Level | None = None,
    class_conditional: bool | None = None,
    class_dropout: float | None = 0.1,
    layers: int | None = None,
    width: int | None = None,
    heads: int | None = 4,
    dropout: float | None = 0.0,
    weight_decay: float | None = 0.01,
    steps: int | None = None,
    epochs: float | None = None,
    minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    ema_weights: float | None = None,
    seed: int | None = 0,
    device: str | None = "auto",
    precision: Precision | None = "auto",
    compile: bool | None = False,
    log_every: int | None = 50,
    eval_every: int | None = 500,
    save_every: int | None = 500,
    resume: bool | None = False,
    force: bool | None = False,
    console: Console | None = None,
    **unknown: Any,
) -> tuple[dict[str, float], Path]:
    """Fit an autoregressive prior to a codes file of `vqgen encode`, as `vqgen train-prior` does; returns its
    held-out bits per code and per image, and the run folder.

    `codes` unset is runs/codes.safetensors (with `resume`, the file the run was trained on); `out` unset is
    runs/prior, or runs/prior-bottom with `level="bottom"`. The size left unset (`layers`, `width`) and the
    training length, learning rate, batch size and weight average come from the preset of the codes' data set;
    `class_conditional` unset conditions on the labels when the codes file has them; `patch` unset is the size rule's
    (vqgen.presets.prior_patch: 2×2 patches of codes per position for grids above 8×8). Progress goes to `console`
    (a rich Console) when one is given. See `vqgen train-prior --help` for what each setting does.
    """
    values = _settings(train_prior, locals())
    from vqgen.errors import VQGenError
    from vqgen.priors import PriorConfig, as_options
    from vqgen.priors.training import train_prior as train_in_folder

    try:
        prior = PriorConfig(arch=values["arch"], class_dropout=values["class_dropout"], dropout=values["dropout"])
    except ValueError as e:
        raise VQGenError(as_options(str(e))) from e
    train = _train_config(values, weight_decay=values["weight_decay"])
    level = values["level"]
    out = values["out"] or ("runs/prior-bottom" if level == "bottom" else "runs/prior")
    return train_in_folder(
        prior,
        train,
        values["codes"],
        Path(out),
        values["class_conditional"],
        values["resume"],
        values["force"],
        console,
        # given to the library on their own, so that only what is unset here takes the preset's size
        values["layers"],
        values["width"],
        values["heads"],
        level,
        values["flat"],
        values["patch"],
    )


def _settings(function: Callable[..., Any], given: dict[str, Any]) -> dict[str, Any]:
    """The settings of a call of `function` (its locals on entry): an unknown keyword is an error that names it,
    and None stands for the default in the signature (itself None where the preset decides)."""
    from vqgen.errors import VQGenError

    parameters = inspect.signature(function).parameters
    known = [name for name in parameters if name not in _NOT_SETTINGS]
    for name in given["unknown"]:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise VQGenError(
            f"{function.__name__}() got an unknown setting {name!r}{hint}; known: {', '.join(sorted(known))}"
        )
    return {name: parameters[name].default if given[name] is None else given[name] for name in known}


def _train_config(values: dict[str, Any], **more: Any):
    from vqgen.train import TrainConfig

    return TrainConfig(**(TrainConfig().to_dict() | {name: values[name] for name in _TRAIN} | more))


def _str(path: str | Path | None) -> str | None:
    return None if path is None else str(path)
