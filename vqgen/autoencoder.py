"""Stage one as a library: train, load, evaluate and reconstruct with a VQ-VAE run folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from vqgen import checkpoint as ckpt
from vqgen.adversarial import Adversary
from vqgen.data import (
    ImageData,
    Split,
    held_out_record,
    load_data,
    to_float,
    to_uint8,
)
from vqgen.distributed import on_main, owns_process_group
from vqgen.errors import VQGenError
from vqgen.images import save_grid
from vqgen.metrics import psnr_from_mse
from vqgen.passes import split_pass, usage_metrics
from vqgen.presets import Preset, preset_for, prior_patch
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
from vqgen.vqvae import VQVAE, AEConfig, reconstruction_loss

KIND = "vqvae"


@dataclass
class DataConfig:
    data: str = "shapes"
    data_root: str | None = None
    image_size: int | None = None
    channels: int | None = None
    strict: bool = False

    def load(self) -> ImageData:
        return load_data(self.data, self.data_root, self.image_size, self.channels, self.strict)


@dataclass
class AdversarialConfig:
    weight: float | None = 0.0  # weight of the adaptive adversarial term (0: off; None: the preset's)
    start: int | None = 0  # autoencoder steps before the discriminator is used and trained (None: the preset's)
    lr: float | None = None  # the discriminator's learning rate (None: the autoencoder's)
    feature_matching: float | None = 0.0  # weight of the L1 distance in the discriminator's features (0: off)

    def with_preset(self, preset: Preset) -> AdversarialConfig:
        """Fill what is unset from the data set's preset: its start and feature matching only go with its own
        weight, so `--adversarial W` alone means W from step 0 without feature matching, as on any data set."""
        if self.weight is None:
            weight, start, matching = preset.ae_adversarial, preset.ae_adversarial_start, preset.ae_feature_matching
        else:
            weight, start, matching = self.weight, 0, 0.0
        return AdversarialConfig(
            weight,
            start if self.start is None else self.start,
            self.lr,
            matching if self.feature_matching is None else self.feature_matching,
        )

    def validate(self) -> None:
        if not self.weight >= 0:
            raise VQGenError(f"--adversarial must be a weight >= 0 (0: off), not {self.weight}")
        if not self.feature_matching >= 0:
            raise VQGenError(f"--feature-matching must be a weight >= 0 (0: off), not {self.feature_matching}")
        if self.feature_matching > 0 and self.weight == 0:
            raise VQGenError("--feature-matching uses the discriminator: give --adversarial WEIGHT too")
        if self.start < 0:
            raise VQGenError(f"--adversarial-start must be a step >= 0, not {self.start}")
        if self.lr is not None and not self.lr > 0:
            raise VQGenError(f"--adversarial-lr must be > 0, not {self.lr}")


class AutoencoderTask(Task):
    kind = "train-ae"
    unit = "img"

    def __init__(
        self,
        model: VQVAE,
        data: ImageData,
        device: torch.device,
        preview_count: int = 32,
        adversary: Adversary | None = None,
    ):
        self.model, self.data, self.device = model, data, device
        self.codebook_size = model.cfg.codebook_size
        self.preview_images = data.test.images[:preview_count]
        self.adversary = adversary

    def num_rows(self) -> int:
        return len(self.data.train)

    def step(self, model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = to_float(self.data.train.images[rows]).to(self.device, non_blocking=True)  # (B, C, n, n)
        recon, vq = model(x)
        rec = reconstruction_loss(recon, x)
        stats = {"mse": rec.detach() / 4, "counts": vq.counts, "restarted": self._restarted()}
        loss = rec + vq.loss
        if vq.top is not None:
            stats["counts_top"] = vq.top.counts
        if self.adversary is not None:
            term, adv_stats = self.adversary.generator_term(x, recon, rec, self.model.decoder.last_layer())
            loss = loss + term
            stats |= adv_stats
        return loss, stats

    def before_save(self) -> None:
        self.model.renumber_codes()

    def after_step(self) -> None:
        if self.adversary is not None:
            self.adversary.discriminator_step()

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        if self.adversary is None:
            return {}, {}
        from vqgen.resume import optimizer_tensors

        tensors = {f"adv.model.{k}": v for k, v in self.adversary.discriminator.state_dict().items()}
        opt_tensors, opt_meta = optimizer_tensors(self.adversary.optimizer, prefix="adv.optim")
        return tensors | opt_tensors, {"adversary_steps": self.adversary.steps, "adversary_optimizer": opt_meta}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if self.adversary is None:
            return
        from vqgen.resume import load_optimizer

        weights = {k[len("adv.model.") :]: v for k, v in tensors.items() if k.startswith("adv.model.")}
        if not weights or "adversary_optimizer" not in meta:
            raise VQGenError("this run's saved state has no discriminator; resume it without --adversarial")
        self.adversary.discriminator.load_state_dict(weights)
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("adv.optim.")}
        load_optimizer(self.adversary.optimizer, opt_tensors, meta["adversary_optimizer"])
        self.adversary.steps = int(meta["adversary_steps"])

    def compile_targets(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.decoder]

    def _restarted(self) -> torch.Tensor:
        return torch.tensor(float(getattr(self.model.quantizer, "restarted", 0)), device=self.device)

    def window_metrics(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        mse = float(sums["mse"]) / steps  # [0,1]-scale MSE: the loss runs on [-1,1], 4× larger
        counts = torch.stack([sums["counts_top"], sums["counts"]]) if "counts_top" in sums else sums["counts"][None]
        # a two-level model's codes_used and perplexity are its bottom grid's, with a _top pair for the top grid
        metrics = {"mse": mse, "psnr": psnr_from_mse(mse)} | usage_metrics(counts)
        metrics["restarted"] = float(sums["restarted"])
        if "adv_weight" in sums:
            metrics["adv_weight"] = float(sums["adv_weight"]) / steps  # the adaptive λ, 0 before the start
        if "feature_matching" in sums:
            metrics["feature_matching"] = float(sums["feature_matching"]) / steps
        return metrics

    def progress_text(self, m: dict[str, float]) -> str:
        return f"mse {m['mse']:.4f} psnr {m['psnr']:.1f} codes {m['codes_used']:.0%} ppl {m['perplexity']:.0f}"

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        split = self.data.test if final else Split(self.data.test.images[:2000], None)
        return split_pass(self.model, split, self.device).metrics

    def preview(self, model: nn.Module, run_dir: Path, step: int) -> None:
        save_reconstructions(self.model, self.preview_images, run_dir / "recon.png", self.device)


@torch.no_grad()
def reconstruct(model: VQVAE, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (B, C, n, n) → uint8 reconstructions through the codes."""
    was_training = model.training
    model.eval()
    out = to_uint8(model(to_float(images).to(device))[0]).cpu()
    model.train(was_training)
    return out


def save_reconstructions(model: VQVAE, images: torch.Tensor, path: Path, device: torch.device) -> Path:
    """A grid of originals (odd rows) over their reconstructions (even rows)."""
    recon = reconstruct(model, images, device)
    per_row = min(8, len(images))
    rows = []
    for start in range(0, len(images), per_row):
        rows += [images[start : start + per_row], recon[start : start + per_row]]
    return save_grid(torch.cat(rows), path, nrow=per_row, scale=2)


# ----------------------------------------------------------------------------------------------- run folders


@owns_process_group
def train_autoencoder(
    ae: AEConfig | dict,
    train: TrainConfig,
    data_cfg: DataConfig,
    out: str | Path,
    resume: bool = False,
    force: bool = False,
    console=None,
    adversarial: AdversarialConfig | None = None,
) -> tuple[dict[str, float], Path]:
    """Train a VQ-VAE into run folder `out`; returns the final held-out metrics and the folder.

    `ae` is a whole AEConfig, or a dict of the AEConfig settings asked for, the rest to come from the data set's
    preset for the size of its images (vqgen.presets), as the CLI does.

    Under torchrun every rank calls this: only rank 0 writes into the folder, all read from it.
    """
    run_dir = Path(out)
    if Path(data_cfg.data).is_dir():  # its images would become training images, its folder a class
        ckpt.refuse_inside(run_dir, data_cfg.data, "the --data folder")
    adversarial = adversarial or AdversarialConfig()
    given = ae if isinstance(ae, dict) else None
    if given is not None:  # validated now, whatever the preset will add, so a bad setting fails before the data loads
        ae = resolve_autoencoder(given, preset_for(data_cfg.data))
    if resume:
        ckpt.check_resumable(run_dir)
        saved = ckpt.read_config(run_dir, KIND)
        missing = [section for section in ("model", "train", "data") if section not in saved]
        if missing:
            raise VQGenError(f"'{run_dir / ckpt.CONFIG}' is damaged: its '{missing[0]}' section is missing")
        if given is not None:
            _refuse_changed_model(given, saved["model"])
        try:
            ae = AEConfig.from_dict(saved["model"])
            data_cfg = DataConfig(**saved["data"])
            adversarial = AdversarialConfig(**saved.get("adversarial", {}))
            adversarial.validate()
        except (TypeError, ValueError, VQGenError) as e:
            raise VQGenError(f"'{run_dir / ckpt.CONFIG}' is damaged ({e!s:.200}); train the run again") from e
        train = resumed_config(saved["train"], train)
    else:
        adversarial.with_preset(preset_for(data_cfg.data)).validate()  # before the data loads
    # the process group first: under torchrun only rank 0 may build a folder's cache while the others wait
    device, dist_info = setup_device(train, "autoencoder")
    data = data_cfg.load()  # everything is checked before the run folder is touched
    channels, height, width = data.image_shape
    if not resume:
        # the one place where a new run's defaults are resolved: its data set's preset, sized for its images
        preset = preset_for(data_cfg.data, height)
        if given is not None:
            ae = resolve_autoencoder(given, preset)
        train = with_stage_defaults(train, preset.ae_steps, preset.ae_lr, preset.ae_batch_size, preset.ae_ema_weights)
        adversarial = adversarial.with_preset(preset)
        adversarial.validate()
    if height != width:
        raise VQGenError(f"images are {height}×{width}; vqgen needs square images: pass --image-size N")
    if console is not None and dist_info.is_main:
        if data.skipped:
            console.print(
                f"[yellow]skipped {data.skipped} unreadable image file(s)[/] in '{data_cfg.data}' "
                "(--strict stops instead)"
            )
        if given is not None:
            console.print(describe_choice(ae, train, adversarial, data_cfg.data, height))
    if height % ae.downsample:
        raise VQGenError(
            f"images are {height}×{width}, not divisible by --downsample {ae.downsample}; "
            f"pass --image-size {((height + ae.downsample - 1) // ae.downsample) * ae.downsample}"
        )
    if ae.levels == 2 and (height // ae.downsample) % 2:
        even = 2 * ae.downsample * math.ceil(height / (2 * ae.downsample))
        raise VQGenError(
            f"--levels 2 halves the {height // ae.downsample}×{height // ae.downsample} code grid for its top level, "
            f"so it must be even: pass --image-size {even} or another --downsample"
        )
    ae.image_size, ae.channels = height, channels
    # Locked for this process until it returns; a new run is staged until its first checkpoint (see RunFolder).
    with on_main(ckpt.open_run, run_dir, resume=resume, force=force) as folder:
        return _train_in(folder, ae, train, data_cfg, data, resume, console, adversarial, device, dist_info)


def _refuse_changed_model(given: dict, saved: dict) -> None:
    """A model setting given with --resume that differs from the run's is refused (see refuse_changed)."""
    for name, value in given.items():
        if name in saved and not (isinstance(value, (list, tuple)) and list(value) == saved[name]):
            refuse_changed("--" + name.replace("_", "-"), value, saved[name])


def _train_in(
    folder: ckpt.RunFolder,
    ae: AEConfig,
    train: TrainConfig,
    data_cfg: DataConfig,
    data: ImageData,
    resume: bool,
    console,
    adversarial: AdversarialConfig,
    device: torch.device,
    dist_info,
) -> tuple[dict[str, float], Path]:
    channels = data.image_shape[0]
    seed_everything(train.seed)
    model = VQVAE(ae).to(device)
    if not resume and dist_info.is_main:
        ckpt.write_config(
            folder.path,
            KIND,
            {
                "model": ae.to_dict(),
                "train": train.to_dict(),
                "data": data_cfg.__dict__,
                "adversarial": adversarial.__dict__,
                "dataset": {
                    "name": data.name,
                    "num_classes": data.num_classes,
                    "class_names": data.class_names,
                    "train_size": len(data.train),
                    "test_size": len(data.test),
                    "skipped": data.skipped,
                    "held_out": held_out_record(data),
                },
            },
        )
    adversary = None
    if adversarial.weight > 0:
        adversary = Adversary(
            channels,
            adversarial.weight,
            adversarial.start,
            adversarial.lr or train.lr,
            device,
            feature_weight=adversarial.feature_matching,
            fp16=train.precision == "fp16",
        )
    task = AutoencoderTask(model, data, device, adversary=adversary)
    results = fit(task, train, folder.path, resume=resume, console=console, on_saved=folder.commit)
    return results, folder.final


PRESET_FIELDS = ("codebook_size", "hidden", "quantizer", "fsq_levels", "code_factors", "downsample")


def resolve_autoencoder(given: dict, preset: Preset) -> AEConfig:
    """The autoencoder of a new run: the settings `given` (AEConfig fields; those absent or None are unset) over the
    preset's. The preset's code factors go with its own codebook only (its quantizer, K and levels)."""
    given = {k: v for k, v in given.items() if v is not None}
    own = all(k not in given for k in ("quantizer", "codebook_size", "fsq_levels")) or (
        given.get("quantizer") == preset.ae_quantizer and "codebook_size" not in given and "fsq_levels" not in given
    )
    settings = {
        "codebook_size": preset.codebook_size,
        "hidden": preset.ae_hidden,
        "quantizer": preset.ae_quantizer,
        "fsq_levels": list(preset.fsq_levels),
        "code_factors": list(preset.code_factors) if own else [],
        "downsample": preset.ae_downsample,
    }
    if "beta" in given and "commitment" not in given:
        given["commitment"] = 0.25 * given["beta"]
    try:
        return AEConfig(**(settings | given))
    except (ValueError, TypeError) as e:
        raise VQGenError(str(e)) from e


def describe_choice(ae: AEConfig, train: TrainConfig, adversarial: AdversarialConfig, data: str, size: int) -> str:
    """One line: what the defaults chose for these images, and why."""
    factors = f" as {'×'.join(map(str, ae.code_factors))} sub-tokens" if ae.code_factors else ""
    codes = f"K={ae.codebook_size}{factors}"
    gan = f", adversarial {adversarial.weight} from step {adversarial.start}" if adversarial.weight else ""
    m = size // ae.downsample
    patch = prior_patch(m, ae.codebook_size) if ae.levels == 1 else 1  # a two-level bottom prior reads a context
    # why: a large grid keeps what a small one loses, and as patches its prior still costs an 8×8 one's
    read = f", read by the prior as {m // patch}×{m // patch} positions of {patch}×{patch} patches" if patch > 1 else ""
    return (
        f"{size}×{size} images → {m}×{m} codes (downsample {ae.downsample}){read}, {ae.quantizer} "
        f"{codes}, width {ae.hidden}, {train.steps or train.minutes} {'steps' if train.steps else 'minutes'}{gan} "
        f"(preset of '{Path(data).name or data}'; flags win)"
    )


def load_autoencoder(run: str | Path, device: torch.device | str = "cpu") -> tuple[VQVAE, dict]:
    """Build the VQ-VAE of a run folder from its config and load its validated weights."""
    return ckpt.load_model(run, KIND, lambda config: VQVAE(AEConfig.from_dict(config["model"])), device)


def factorise_autoencoder(
    run: str | Path, factors: list[int], out: str | Path, force: bool = False, by: str | None = None
) -> Path:
    """Write a copy of autoencoder run `run` into `out` whose codes factorise as `factors` (vqgen.factorise): a
    codebook renumbered by balanced k-means (`by` "kmeans", the default but for fsq), or fsq's levels grouped
    ("levels"). The networks and the images they
    make are the same; only the numbers of the codes change. The copy has no training state (it is not resumable).
    """
    from dataclasses import replace

    ckpt.refuse_inside(out, run, "the autoencoder run it reads (--ae)")
    model, config = load_autoencoder(run)
    try:
        cfg = replace(model.cfg, code_factors=list(factors), factor_by=by)
    except ValueError as e:
        raise VQGenError(f"cannot factorise '{run}': {e}") from e
    factorised = VQVAE(cfg)
    factorised.load_state_dict(model.state_dict(), strict=False)  # all but the new code order
    factorised.renumber_codes()
    with ckpt.open_run(out, resume=False, force=force) as folder:
        source = str(Path(run).resolve())
        ckpt.write_config(folder.path, KIND, config | {"model": cfg.to_dict(), "factorised_from": source})
        ckpt.save_tensors(folder.path / ckpt.WEIGHTS, factorised.state_dict())
        return folder.commit()


def data_config_of(config: dict) -> DataConfig:
    return DataConfig(**config.get("data", {}))


def data_for(model: VQVAE, config: dict, data: str | None = None, data_root: str | None = None) -> ImageData:
    """The data an autoencoder run was trained on, or `data` resized to what the model expects; checked."""
    dc = data_config_of(config)
    if data is not None:
        dc = DataConfig(data, data_root, model.cfg.image_size, model.cfg.channels)
    elif data_root is not None:
        dc.data_root = data_root
    dataset = dc.load()
    recorded, now = config.get("dataset", {}).get("held_out"), held_out_record(dataset)
    if data is None and recorded and now and recorded.get("sha256") != now["sha256"]:
        import sys

        print(
            f"note: '{dc.data}' changed since the autoencoder was trained: {now['count']} files are held out now, "
            f"{recorded.get('count')} were then; files held out then still are (the split goes by file name)",
            file=sys.stderr,
        )
    expected = (model.cfg.channels, model.cfg.image_size, model.cfg.image_size)
    if dataset.image_shape != expected:
        raise VQGenError(f"the data is {dataset.image_shape} but the autoencoder expects {expected}")
    return dataset
