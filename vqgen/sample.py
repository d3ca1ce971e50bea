"""Generation: prior → codebook lookup → decoder, and completion of the lower part of given images."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vqgen import checkpoint as ckpt
from vqgen.data import to_uint8
from vqgen.errors import VQGenError
from vqgen.images import save_grid, save_image


@dataclass
class SamplingOptions:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 64
    seed: int = 0
    use_cache: bool = True
    guidance: float | None = None  # None: the scale recorded in the prior's config.json (else no guidance)

    def validate(self, codebook_size: int) -> None:
        if self.guidance is not None and not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise VQGenError(f"--guidance must be a number >= 0 (1 = plain conditional sampling), not {self.guidance}")
        if not self.temperature > 0:
            raise VQGenError(f"--temperature must be > 0, not {self.temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= codebook_size:
            raise VQGenError(f"--top-k must be between 1 and K={codebook_size}, not {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise VQGenError(f"--top-p must be in (0, 1], not {self.top_p}")
        if self.batch_size < 1:
            raise VQGenError(f"--batch-size must be at least 1, not {self.batch_size}")


@dataclass
class Pipeline:
    prior: torch.nn.Module
    ae: torch.nn.Module
    config: dict  # the prior's config.json
    device: torch.device
    ae_dir: Path
    class_names: list[str] | None = field(default=None)
    precision: str = "fp32"  # autocast for the autoencoder (resolved, never auto); the prior samples in fp32

    @property
    def num_classes(self) -> int:
        return self.prior.cfg.num_classes

    @property
    def default_guidance(self) -> float | None:
        """The guidance scale train-prior recorded for this prior (chosen by bench/guidance.py), if any."""
        return self.config.get("sampling", {}).get("guidance")

    def class_frequencies(self) -> torch.Tensor:
        """(classes,) the training labels' frequencies, recorded by train-prior; uniform for an older prior."""
        counts = self.config.get("codes", {}).get("class_counts")
        if not counts or len(counts) != self.num_classes:
            return torch.full((self.num_classes,), 1.0 / self.num_classes)
        counts = torch.tensor(counts, dtype=torch.float64)
        return counts / counts.sum()


def load_pipeline(
    prior_run: str | Path,
    device: str = "auto",
    ae_run: str | Path | None = None,
    ignore_hash: bool = False,
    precision: str = "auto",
) -> Pipeline:
    """The prior of a run folder and the autoencoder whose codes it learned (found from the prior's config)."""
    from vqgen.autoencoder import load_autoencoder
    from vqgen.priors.training import load_prior
    from vqgen.train import resolve_device, resolve_precision

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev, "autoencoder")
    prior, config = load_prior(prior_run, dev)
    recorded = config.get("ae", {})
    if ae_run is not None:
        ae_dir = Path(ae_run)
    else:
        # beside the prior first (a copied pair of runs stays a pair), then where it was trained
        beside = os.path.normpath(Path(prior_run) / recorded["relative"]) if recorded.get("relative") else None
        candidates = [Path(beside)] if beside else []
        candidates += [Path(recorded["run"])] if recorded.get("run") else []
        ae_dir = next((p for p in candidates if (p / ckpt.WEIGHTS).exists()), Path(recorded.get("run") or "?"))
    if not (ae_dir / ckpt.WEIGHTS).exists():
        raise VQGenError(
            f"the autoencoder of prior '{prior_run}' was '{ae_dir}', which has no {ckpt.WEIGHTS}; pass --ae RUN"
        )
    expected = recorded.get("sha256", "")
    actual = ckpt.sha256(ae_dir / ckpt.WEIGHTS)
    if expected and actual != expected and not ignore_hash:
        raise VQGenError(
            f"'{ae_dir / ckpt.WEIGHTS}' changed since prior '{Path(prior_run) / ckpt.CONFIG}' learned its codes "
            f"(SHA-256 {actual[:12]}… ≠ recorded {expected[:12]}…); retrain the prior, or pass --ignore-hash"
        )
    ae, _ = load_autoencoder(ae_dir, dev)
    if (ae.cfg.codebook_size, ae.cfg.grid_size) != (prior.cfg.codebook_size, prior.cfg.grid_size):
        raise VQGenError(
            f"prior '{prior_run}' models {prior.cfg.grid_size}² codes of K={prior.cfg.codebook_size} but "
            f"autoencoder '{ae_dir}' makes {ae.cfg.grid_size}² codes of K={ae.cfg.codebook_size}"
        )
    names = config.get("codes", {}).get("class_names")
    return Pipeline(prior, ae, config, dev, ae_dir, names if prior.cfg.num_classes else None, precision)


def resolve_classes(
    pipe: Pipeline, classes: list[str], n: int, seed: int = 0
) -> tuple[torch.Tensor | None, int | None]:
    """--class values (indices, names, 'all', 'none' or 'null') → labels (n,) and the grid's images per row.

    A class-conditional prior given no --class samples every class, in rows. 'none' draws each sample's class
    from the training labels' frequencies (then samples that class, with guidance): a sample of
    p(x) = Σ_y p(y)·p(x | y). 'null' is the literal null class, which saw only the class-dropout fraction of the
    batches, so its samples are the weaker ones. Labels None means the null class.
    """
    if classes == ["null"] or (classes == ["none"] and pipe.num_classes == 0):
        return None, None
    if not classes:
        if pipe.num_classes == 0:
            return None, None
        classes = ["all"]
    if pipe.num_classes == 0:
        raise VQGenError("--class was given but this prior is unconditional; train it with --class-conditional")
    if classes == ["none"]:
        generator = torch.Generator().manual_seed(seed)
        return torch.multinomial(pipe.class_frequencies(), n, replacement=True, generator=generator), None
    if classes == ["all"]:
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        if rows >= pipe.num_classes:  # a square grid with whole rows per class
            return (torch.arange(n) // cols) * pipe.num_classes // rows, cols
        per_row = math.ceil(n / pipe.num_classes)  # else one (longer) row per class
        return torch.arange(n) // per_row, per_row
    ids = []
    for c in classes:
        if c.lstrip("-").isdigit():
            idx = int(c)
        elif pipe.class_names and c in pipe.class_names:
            idx = pipe.class_names.index(c)
        else:
            names = f" or one of {', '.join(pipe.class_names)}" if pipe.class_names else ""
            raise VQGenError(f"--class '{c}' is not a class index 0..{pipe.num_classes - 1}{names}")
        if not 0 <= idx < pipe.num_classes:
            raise VQGenError(f"--class {idx} is out of range: this prior has classes 0..{pipe.num_classes - 1}")
        ids.append(idx)
    return torch.tensor(ids)[torch.arange(n) % len(ids)], None


@torch.no_grad()
def sample_codes(
    pipe: Pipeline,
    n: int,
    labels: torch.Tensor | None,
    opts: SamplingOptions,
    prefix: torch.Tensor | None = None,
    prefix_len: int = 0,
) -> torch.Tensor:
    """n code grids (n, m, m), in batches, reproducible for a seed. labels None samples the null class."""
    opts.validate(pipe.prior.cfg.codebook_size)
    guidance = resolve_guidance(pipe, opts.guidance, labels is not None)
    generator = torch.Generator(pipe.device).manual_seed(opts.seed)
    out = []
    for start in range(0, n, opts.batch_size):
        stop = min(n, start + opts.batch_size)
        out.append(
            pipe.prior.sample(
                stop - start,
                labels=None if labels is None else labels[start:stop].to(pipe.device),
                temperature=opts.temperature,
                top_k=opts.top_k,
                top_p=opts.top_p,
                generator=generator,
                prefix=None if prefix is None else prefix[start:stop].to(pipe.device),
                prefix_len=prefix_len,
                use_cache=opts.use_cache,
                guidance=guidance,
            ).cpu()
        )
    return torch.cat(out)


def resolve_guidance(pipe: Pipeline, asked: float | None, labelled: bool) -> float | None:
    """The guidance scale to sample with (None: none), or a one-line error when this prior cannot be guided.

    Scale 1 is plain conditional sampling, so it runs as such (n sequences, not 2n): torch.lerp makes the two
    give the same codes, and tests hold them to it.
    """
    cfg = pipe.prior.cfg
    if asked is not None:
        if cfg.num_classes == 0:
            raise VQGenError(
                "--guidance needs a class-conditional prior, and this one is unconditional; "
                "train one with --class-conditional on labelled codes"
            )
        if cfg.class_dropout <= 0:
            raise VQGenError(
                "--guidance needs the null class, and this prior was trained with --class-dropout 0 so it never "
                "learned one; retrain with --class-dropout 0.1"
            )
        if not labelled:
            raise VQGenError("--guidance steers towards a class, and --class null asks for none; drop one of them")
    scale = asked if asked is not None else pipe.default_guidance
    if scale is None or not labelled or cfg.num_classes == 0 or cfg.class_dropout <= 0 or scale == 1:
        return None
    return float(scale)


@torch.no_grad()
def decode_codes(pipe: Pipeline, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Code grids (N, m, m) → uint8 images (N, C, n, n)."""
    from vqgen.train import autocast

    with autocast(pipe.device, pipe.precision):
        parts = [
            to_uint8(pipe.ae.decode(codes[i : i + batch_size].to(pipe.device))).cpu()
            for i in range(0, len(codes), batch_size)
        ]
    return torch.cat(parts)


@dataclass
class SampleResult:
    grid: Path
    files: list[Path]
    sample_seconds: float
    decode_seconds: float
    num_codes: int
    codes_path: Path | None = None
    guidance: float | None = None  # the scale used (None: none)

    @property
    def codes_per_second(self) -> float:
        return self.num_codes / max(self.sample_seconds, 1e-9)


def sample(
    pipe: Pipeline,
    n: int,
    out: str | Path,
    opts: SamplingOptions,
    classes: list[str] | None = None,
    save_codes: bool = False,
) -> SampleResult:
    """Sample n images into `out`: grid.png plus 000.png, 001.png, ... (and codes.safetensors if asked)."""
    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    labels, per_row = resolve_classes(pipe, classes or [], n, opts.seed)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VQGenError(f"cannot create output folder '{out}' ({e.strerror}); choose another --out") from e
    _sync(pipe.device)
    t0 = time.perf_counter()
    codes = sample_codes(pipe, n, labels, opts)
    _sync(pipe.device)
    t1 = time.perf_counter()
    images = decode_codes(pipe, codes)
    _sync(pipe.device)
    t2 = time.perf_counter()
    digits = max(3, len(str(n - 1)))
    files = [save_image(img, out / f"{i:0{digits}d}.png") for i, img in enumerate(images)]
    grid = save_grid(images, out / "grid.png", nrow=per_row, scale=2)
    codes_path = None
    if save_codes:
        codes_path = out / "codes.safetensors"
        tensors = {"codes": codes}
        if labels is not None:
            tensors["labels"] = labels
        ckpt.save_tensors(
            codes_path, tensors, {"kind": "vqgen-samples", "codebook_size": str(pipe.prior.cfg.codebook_size)}
        )
    guidance = resolve_guidance(pipe, opts.guidance, labels is not None)
    return SampleResult(grid, files, t1 - t0, t2 - t1, codes.numel(), codes_path, guidance)


def complete(
    pipe: Pipeline,
    image_paths: list[str | Path],
    keep_rows: int,
    n: int,
    out: str | Path,
    opts: SamplingOptions,
    label: str | None = None,
) -> Path:
    """Keep the first `keep_rows` rows of each image's codes and sample the rest n times.

    Writes one row per image: the original, the kept part (its reconstruction with the lower part greyed),
    then the n completions.
    """
    from vqgen.images import load_image

    cfg = pipe.ae.cfg
    m = cfg.grid_size
    if not 1 <= keep_rows < m:
        raise VQGenError(f"--keep-rows must be between 1 and {m - 1} (the code grid has {m} rows), not {keep_rows}")
    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    if not image_paths:
        raise VQGenError("give at least one --image FILE")
    originals = torch.stack([load_image(p, cfg.channels, cfg.image_size) for p in image_paths])  # (I, C, n, n)
    from vqgen.data import to_float
    from vqgen.train import autocast

    with autocast(pipe.device, pipe.precision):  # the quantizer's distances stay in fp32 regardless
        codes = pipe.ae.encode(to_float(originals).to(pipe.device)).cpu()  # (I, m, m)
    labels, _ = resolve_classes(pipe, [label] if label is not None else [], len(image_paths) * n, opts.seed)
    prefix = codes.repeat_interleave(n, dim=0)  # (I·n, m, m)
    completed = sample_codes(pipe, len(prefix), labels, opts, prefix=prefix, prefix_len=keep_rows * m)
    kept = decode_codes(pipe, codes)
    kept[:, :, keep_rows * cfg.downsample :, :] = 128
    samples = decode_codes(pipe, completed).view(len(image_paths), n, *originals.shape[1:])
    rows = [torch.cat([originals[i : i + 1], kept[i : i + 1], samples[i]]) for i in range(len(image_paths))]
    return save_grid(torch.cat(rows), Path(out) / "completions.png", nrow=n + 2, scale=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
