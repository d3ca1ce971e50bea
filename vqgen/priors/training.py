"""Stage two as a library: train a prior on a codes file, and load a prior run with its autoencoder."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.choices import LEVELS
from vqgen.codes import CodesFile, load_codes
from vqgen.data import iterate_batches
from vqgen.distributed import on_main, owns_process_group
from vqgen.errors import VQGenError
from vqgen.presets import Preset, preset_for, prior_patch
from vqgen.priors import Prior, PriorConfig, as_options, build_prior
from vqgen.train import (
    Task,
    TrainConfig,
    fit,
    refuse_changed,
    resumed_config,
    seed_everything,
    setup_device,
    with_stage_defaults,
)

KIND = "prior"
DEFAULT_CODES = "runs/codes.safetensors"
LN2 = math.log(2)


class PriorTask(Task):
    kind = "train-prior"
    unit = "code"

    def __init__(
        self, model: Prior, codes: CodesFile, device: torch.device, ae_run: str | None = None, level: str = "single"
    ):
        self.model, self.codes, self.device, self.level = model, codes, device, level
        self.examples_per_row = codes.grid_size**2
        self.ae_run = ae_run
        self.conditional = model.cfg.num_classes > 0
        self.network = model.cfg.arch

    def num_rows(self) -> int:
        return self.codes.train_codes.shape[0]

    def step(self, model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.codes.train_codes[rows].to(self.device)  # (B, m, m)
        labels = self.codes.train_labels[rows].to(self.device) if self.conditional else None
        context = self.codes.train_top[rows].to(self.device) if self.model.cfg.context_grid else None  # (B, m/2, m/2)
        loss = _loss(model, codes, labels, context)
        return loss, {"nll": loss.detach()}

    def window_metrics(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        bits = float(sums["nll"]) / steps / LN2
        return {"bits_per_code": bits, "bits_per_image": bits * self.examples_per_row}

    def progress_text(self, m: dict[str, float]) -> str:
        return f"{m['bits_per_code']:.3f} bits/code"

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        limit = None if final else 2000
        return evaluate_prior(self.model, self.codes, self.device, limit)

    def preview(self, model: nn.Module, run_dir: Path, step: int) -> None:
        if self.ae_run is None or self.level == "top":  # a top grid alone decodes to nothing
            return
        from vqgen.autoencoder import load_autoencoder
        from vqgen.data import to_uint8
        from vqgen.images import save_grid

        ae, _ = load_autoencoder(self.ae_run, self.device)
        n = 8 * max(1, min(self.model.cfg.num_classes, 8)) if self.conditional else 32
        labels = torch.arange(n, device=self.device) // 8 if self.conditional else None
        generator = torch.Generator(self.device).manual_seed(0)
        if self.model.cfg.context_grid:  # a bottom prior: its samples on the top grids of held-out images
            rows = torch.arange(n) % len(self.codes.test_top)
            top = self.codes.test_top[rows].to(self.device)
            if self.conditional:  # the images' own classes: a label must not contradict its top grid
                labels = self.codes.test_labels[rows].to(self.device)
            grids = [top, self.model.sample(n, labels=labels, generator=generator, context=top)]
        else:
            grids = [self.model.sample(n, labels=labels, generator=generator)]
        save_grid(to_uint8(ae.decode_levels(grids)).cpu(), run_dir / "samples.png", nrow=8, scale=2)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return self.model.param_groups(weight_decay)


def _loss(
    model: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None, context: torch.Tensor | None = None
) -> torch.Tensor:
    # Under DDP only the wrapper's forward synchronises gradients, so call it rather than `Prior.loss`.
    inner = model.module if hasattr(model, "module") else model
    return model(codes, inner.training_labels(labels, codes), context, nll=True)


@torch.no_grad()
def evaluate_prior(
    model: Prior, codes: CodesFile, device: torch.device, limit: int | None = None, batch_size: int = 256
) -> dict[str, float]:
    """Held-out negative log-likelihood in bits per code and per image (true labels when conditional)."""
    was_training = model.training
    model.eval()
    test = codes.test_codes[:limit]
    labels = codes.test_labels[:limit] if (codes.test_labels is not None and model.cfg.num_classes > 0) else None
    context = codes.test_top[:limit] if model.cfg.context_grid else None
    total, count = 0.0, 0
    for start, stop in iterate_batches(len(test), batch_size):
        batch = test[start:stop].to(device)
        lab = labels[start:stop].to(device) if labels is not None else None
        ctx = context[start:stop].to(device) if context is not None else None
        total += float(model.loss(batch, lab, ctx)) * (stop - start)
        count += stop - start
    model.train(was_training)
    bits = total / max(count, 1) / LN2
    return {"bits_per_code": bits, "bits_per_image": bits * codes.grid_size**2}


@owns_process_group
def train_prior(
    prior: PriorConfig,
    train: TrainConfig,
    codes_path: str | Path | None,
    out: str | Path,
    class_conditional: bool | None = None,
    resume: bool = False,
    force: bool = False,
    console=None,
    layers: int | None = None,
    width: int | None = None,
    heads: int | None = None,
    level: str | None = None,
    flat: bool = False,
    patch: int | None = None,
) -> tuple[dict[str, float], Path]:
    """Fit a prior to the train codes of `codes_path` in run folder `out` (under torchrun: rank 0 writes).

    Unset training settings (steps, lr, batch size) and model size take the defaults of the codes' data set
    (vqgen.presets): a size given as `layers`, `width` or `heads`, or set in `prior`, wins (see with_size). Codes
    of a two-level autoencoder need `level` 'top' (a prior over the top grids) or 'bottom' (over the bottom grids,
    conditioned on the top ones). Factorised codes get a prior that predicts their sub-tokens (the codes file says
    how they factorise); `flat` asks for one K-way softmax instead. `patch` p has each position predict a p×p patch
    of codes (unset: vqgen.presets.prior_patch's rule for the grid).
    """
    run_dir = Path(out)
    if resume:
        ckpt.check_resumable(run_dir)
        saved = ckpt.read_config(run_dir, KIND)
        prior = saved_prior(saved, run_dir)
        if "codes" not in saved:
            raise VQGenError(f"'{run_dir / ckpt.CONFIG}' is damaged: its 'codes' section is missing")
        codes_path = codes_path or saved["codes"]["path"]
        train = resumed_config(saved.get("train"), train)
        if patch is not None and patch != prior.patch:
            raise VQGenError(f"'{run_dir}' models {prior.patch}×{prior.patch} patches, not --patch {patch}")
        transformer = prior.arch == "transformer"
        refuse_changed("--layers", layers, prior.n_layer if transformer else prior.pcnn_layers)
        refuse_changed("--width", width, prior.n_embd if transformer else prior.pcnn_channels)
        if level is not None and level != saved["codes"].get("level", "single"):
            raise VQGenError(f"'{run_dir}' models --level {saved['codes'].get('level', 'single')}, not {level}")
        level = saved["codes"].get("level", "single")
    else:
        codes_path = codes_path or DEFAULT_CODES
    if level not in (None, *LEVELS):
        raise VQGenError(f"--level must be one of {', '.join(LEVELS)}, not '{level}'")
    all_levels = load_codes(codes_path)
    level = level or ("single" if all_levels.levels == 1 else None)
    if level is None:
        raise VQGenError(
            f"'{codes_path}' holds the two levels of codes of a two-level autoencoder: train a prior for each, "
            "with --level top and then --level bottom"
        )
    codes = all_levels.level(level)
    if not resume:
        preset = preset_for(codes.dataset, codes.image_size)
        train = with_stage_defaults(
            train, preset.prior_steps, preset.prior_lr, preset.prior_batch_size, preset.prior_ema_weights
        )
        prior = with_size(prior, layers, width, heads, preset)
    device, dist_info = setup_device(train, prior.arch)
    has_labels = codes.train_labels is not None and codes.num_classes > 0
    if class_conditional and not has_labels:
        raise VQGenError(f"--class-conditional needs labels, but '{codes_path}' has none")
    if not resume:
        conditional = has_labels if class_conditional is None else class_conditional
        try:  # replace() checks the sizes again, with the codes' K, grid and classes, before anything is built
            prior = replace(
                prior,
                codebook_size=codes.codebook_size,
                grid_size=codes.grid_size,
                context_grid=codes.grid_size // 2 if level == "bottom" else 0,
                num_classes=codes.num_classes if conditional else 0,
                factors=[] if flat else list(codes.factors or []),
                patch=prior_patch(codes.grid_size, codes.codebook_size, level) if patch is None else patch,
            )
        except ValueError as e:
            raise VQGenError(f"a prior of the codes in '{codes_path}': {as_options(str(e))}") from e
    else:
        check_codes_match(prior, saved, codes, codes_path, run_dir)
    # Locked for this process until it returns; a new run is staged until its first checkpoint (RunFolder).
    with on_main(ckpt.open_run, run_dir, resume=resume, force=force) as folder:
        seed_everything(train.seed)
        model = build_prior(prior).to(device)
        ae_run = codes.ae_run if codes.ae_run and (Path(codes.ae_run) / ckpt.WEIGHTS).exists() else None
        if not resume and dist_info.is_main:
            guided = prior.num_classes > 0 and prior.class_dropout > 0
            class_counts = (
                torch.bincount(codes.train_labels, minlength=codes.num_classes).tolist() if prior.num_classes else None
            )
            unseen = [i for i, count in enumerate(class_counts or []) if count == 0]
            if unseen and console is not None:
                names = codes.class_names or [str(i) for i in range(codes.num_classes)]
                console.print(
                    f"[yellow]warning:[/] {len(unseen)} class(es) have no training grid (e.g. {names[unseen[0]]}: "
                    "its only images are held out); the prior cannot learn them"
                )
            ckpt.write_config(
                folder.path,
                KIND,
                {
                    "model": prior.to_dict(),
                    "train": train.to_dict(),
                    # what `vqgen sample` and `vqgen eval` use unless told otherwise
                    "sampling": {"guidance": preset.prior_guidance if guided else None},
                    "codes": {
                        "path": str(codes_path),
                        "sha256": ckpt.sha256(codes_path),
                        "dataset": codes.dataset,
                        "class_names": codes.class_names,
                        "class_counts": class_counts,  # the label frequencies that `sample --class none` draws from
                        "level": level,  # which grid of the autoencoder's codes this prior models
                    },
                    "ae": {
                        "run": codes.ae_run,
                        "relative": _relative(codes.ae_run, run_dir),
                        "sha256": codes.ae_sha256,
                    },
                    "parameters": sum(p.numel() for p in model.parameters()),
                },
            )
        task = PriorTask(model, codes, device, ae_run, level)
        results = fit(task, train, folder.path, resume=resume, console=console, on_saved=folder.commit)
        return results, folder.final


def with_size(
    prior: PriorConfig, layers: int | None, width: int | None, heads: int | None, preset: Preset
) -> PriorConfig:
    """The Transformer's blocks, width and heads or the PixelCNN's layers and channels: `layers`, `width` and
    `heads` where given; else a size set in `prior` (one other than PriorConfig's default); else the preset's (the
    Transformer's blocks and width) or PriorConfig's. Only a new run is sized: a resumed or loaded one keeps the
    sizes in its config.json. (A size set in `prior` to PriorConfig's own default reads as unset: pass it as an
    argument to insist on it.)"""
    default = PriorConfig(arch=prior.arch)
    try:
        if prior.arch == "transformer":
            return replace(
                prior,
                n_layer=_first(layers, _given(prior.n_layer, default.n_layer), preset.transformer_layers),
                n_embd=_first(width, _given(prior.n_embd, default.n_embd), preset.transformer_width),
                n_head=_first(heads, prior.n_head),
            )
        return replace(
            prior, pcnn_layers=_first(layers, prior.pcnn_layers), pcnn_channels=_first(width, prior.pcnn_channels)
        )
    except ValueError as e:
        raise VQGenError(as_options(str(e))) from e


def _given(value: int, default: int) -> int | None:
    """A size of a given PriorConfig, None where it is PriorConfig's own default (unset: the preset decides)."""
    return None if value == default else value


def _first(*sizes: int | None) -> int:
    return next(size for size in sizes if size is not None)


def saved_prior(config: dict, run_dir: str | Path) -> PriorConfig:
    """The PriorConfig of a run's config.json, or one line naming the file when its model section is damaged."""
    try:
        return PriorConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        path = Path(run_dir) / ckpt.CONFIG
        raise VQGenError(f"'{path}' has a damaged model section ({e}); train the run again") from e


def check_codes_match(
    prior: PriorConfig, prior_config: dict, codes: CodesFile, codes_path: str | Path, run_dir: str | Path
) -> None:
    """A codes file used with an existing prior must have its grid, its K and its autoencoder."""
    if (prior.codebook_size, prior.grid_size) != (codes.codebook_size, codes.grid_size):
        raise VQGenError(
            f"'{codes_path}' holds {codes.grid_size}×{codes.grid_size} grids of K={codes.codebook_size} codes, but the "
            f"prior in '{run_dir}' models {prior.grid_size}×{prior.grid_size} grids of K={prior.codebook_size}"
        )
    factors = prior.factors
    if factors and factors != (codes.factors or []):
        raise VQGenError(
            f"the prior in '{run_dir}' predicts codes as sub-tokens of {'×'.join(map(str, factors))}, but "
            f"'{codes_path}' factorises them as {'×'.join(map(str, codes.factors or [codes.codebook_size]))}; "
            "encode with the prior's autoencoder or train a new prior"
        )
    recorded = prior_config.get("ae", {}).get("sha256")
    if recorded and codes.ae_sha256 != recorded:
        raise VQGenError(
            f"'{codes_path}' was encoded by another autoencoder ({codes.ae_run}) than the prior in '{run_dir}' learned "
            "from; encode with that autoencoder or train a new prior"
        )


def _relative(path: str, start: Path) -> str | None:
    """`path` relative to the run folder, so a moved pair of runs still finds each other."""
    import os

    try:
        return os.path.relpath(path, start.resolve()) if path else None
    except ValueError:  # another drive on Windows
        return None


def load_prior(run: str | Path, device: torch.device | str = "cpu") -> tuple[Prior, dict]:
    """Build the prior of a run folder from its config and load its validated weights."""
    return ckpt.load_model(run, KIND, lambda config: build_prior(saved_prior(config, run)), device)
