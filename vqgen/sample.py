"""Generation: prior → codebook lookup → decoder, and completion of the lower part of given images.

A two-level autoencoder needs two priors: the top prior samples the top grid, then the bottom prior samples the
bottom grid given it, and the decoder reads both. Every function here takes and returns the grids of each level,
top first: [(N, m, m)] for one level, [(N, m/2, m/2), (N, m, m)] for two."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
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
    bottom: torch.nn.Module | None = None  # a two-level autoencoder's bottom prior (`prior` is then its top's)
    bottom_config: dict | None = None
    bottom_run: Path | None = None

    @property
    def num_classes(self) -> int:
        return self.prior.cfg.num_classes

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
    bottom_run: str | Path | None = None,
) -> Pipeline:
    """The prior of a run folder and the autoencoder whose codes it learned (found from the prior's config).

    For a two-level autoencoder `prior_run` is the top prior and `bottom_run` the bottom one (default: the top's
    folder name + '-bottom', where `train-prior --level bottom` writes by default)."""
    from vqgen.autoencoder import load_autoencoder
    from vqgen.priors.training import load_prior
    from vqgen.train import resolve_device, resolve_precision

    dev = resolve_device(device)
    precision = resolve_precision(precision, dev, "autoencoder")
    prior, config = load_prior(prior_run, dev)
    level = config.get("codes", {}).get("level", "single")
    if level == "bottom":
        raise VQGenError(
            f"'{prior_run}' is the bottom prior of a two-level autoencoder: pass the top prior as --prior and this "
            "one as --bottom-prior"
        )
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
    top_grid = ae.cfg.grid_sizes[0]
    if (ae.cfg.codebook_size, top_grid) != (prior.cfg.codebook_size, prior.cfg.grid_size):
        raise VQGenError(
            f"prior '{prior_run}' models {prior.cfg.grid_size}² codes of K={prior.cfg.codebook_size} but "
            f"autoencoder '{ae_dir}' makes {top_grid}² codes of K={ae.cfg.codebook_size}"
            + (" at its top level" if ae.cfg.levels == 2 else "")
        )
    check_factors_match(prior, ae.cfg, prior_run, ae_dir)
    if (level == "top") != (ae.cfg.levels == 2):
        raise VQGenError(f"prior '{prior_run}' models {level} codes but autoencoder '{ae_dir}' has {ae.cfg.levels}")
    names = config.get("codes", {}).get("class_names")
    pipe = Pipeline(prior, ae, config, dev, ae_dir, names if prior.cfg.num_classes else None, precision)
    if ae.cfg.levels == 2:
        pipe.bottom_run = Path(bottom_run) if bottom_run is not None else Path(f"{Path(prior_run)}-bottom")
        pipe.bottom, pipe.bottom_config = _load_bottom(pipe.bottom_run, ae, actual, ignore_hash, dev)
        if pipe.bottom.cfg.num_classes not in (0, prior.cfg.num_classes):
            raise VQGenError(
                f"the top prior has {prior.cfg.num_classes} classes and the bottom prior '{pipe.bottom_run}' "
                f"{pipe.bottom.cfg.num_classes}: train both on the same codes file"
            )
    elif bottom_run is not None:
        raise VQGenError(f"--bottom-prior is for two-level autoencoders, and '{ae_dir}' has one level of codes")
    return pipe


def check_factors_match(prior: torch.nn.Module, ae_cfg, prior_run: str | Path, ae_dir: str | Path) -> None:
    """A prior of sub-tokens must split codes as the autoencoder does (a flat prior serves any codes)."""
    factors = prior.cfg.factors
    if factors and factors != ae_cfg.code_factors:
        made = "×".join(map(str, ae_cfg.code_factors)) if ae_cfg.code_factors else "flat codes"
        raise VQGenError(
            f"prior '{prior_run}' predicts codes as sub-tokens of {'×'.join(map(str, factors))}, but autoencoder "
            f"'{ae_dir}' makes {made}; pass the autoencoder it learned from with --ae"
        )


def _load_bottom(
    run: Path, ae: torch.nn.Module, ae_sha256: str, ignore_hash: bool, dev: torch.device
) -> tuple[torch.nn.Module, dict]:
    """A two-level autoencoder's bottom prior, checked against it."""
    from vqgen.priors.training import load_prior

    if not (run / ckpt.WEIGHTS).exists():
        raise VQGenError(
            f"a two-level autoencoder needs a bottom prior too, and '{run}' has none: train one with "
            f"`vqgen train-prior --level bottom --out {run}`, or pass --bottom-prior RUN"
        )
    bottom, config = load_prior(run, dev)
    cfg, sizes = bottom.cfg, ae.cfg.grid_sizes
    if config.get("codes", {}).get("level") != "bottom" or (cfg.grid_size, cfg.context_grid, cfg.codebook_size) != (
        sizes[1],
        sizes[0],
        ae.cfg.codebook_size,
    ):
        raise VQGenError(
            f"'{run}' is not a bottom prior of {sizes[1]}² codes of K={ae.cfg.codebook_size} given {sizes[0]}² top "
            "codes, as this autoencoder makes"
        )
    check_factors_match(bottom, ae.cfg, run, "the top prior's autoencoder")
    recorded = config.get("ae", {}).get("sha256", "")
    if recorded and recorded != ae_sha256 and not ignore_hash:
        raise VQGenError(
            f"bottom prior '{run}' learned the codes of another autoencoder; retrain it or pass --ignore-hash"
        )
    return bottom, config


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
def sample_levels(
    pipe: Pipeline,
    n: int,
    labels: torch.Tensor | None,
    opts: SamplingOptions,
    prefixes: list[torch.Tensor] | None = None,
    prefix_lens: list[int] | None = None,
) -> list[torch.Tensor]:
    """n images' code grids, one (n, m_l, m_l) per level, top first; the bottom grid is sampled given the top one.
    `prefixes` and `prefix_lens` (one per level) keep the first raster positions of each level's grids."""
    prefixes = prefixes or [None] * pipe.ae.cfg.levels
    prefix_lens = prefix_lens or [0] * pipe.ae.cfg.levels
    top = sample_codes(pipe, n, labels, opts, prefixes[0], prefix_lens[0])
    if pipe.bottom is None:
        return [top]
    can_guide = pipe.bottom.cfg.num_classes > 0 and pipe.bottom.cfg.class_dropout > 0
    bottom_opts = replace(opts, seed=opts.seed + 1, guidance=opts.guidance if can_guide else None)
    bottom = sample_codes(pipe, n, labels, bottom_opts, prefixes[1], prefix_lens[1], level="bottom", context=top)
    return [top, bottom]


@torch.no_grad()
def sample_codes(
    pipe: Pipeline,
    n: int,
    labels: torch.Tensor | None,
    opts: SamplingOptions,
    prefix: torch.Tensor | None = None,
    prefix_len: int = 0,
    level: str = "top",
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """n code grids (n, m, m) of one prior (the top, or only, one; or the bottom one given the top grids
    `context`), in batches, reproducible for a seed. labels None samples the null class."""
    prior = pipe.bottom if level == "bottom" else pipe.prior
    opts.validate(prior.cfg.codebook_size)
    guidance = resolve_guidance(pipe, opts.guidance, labels is not None, level)
    generator = torch.Generator(pipe.device).manual_seed(opts.seed)
    out = []
    for start in range(0, n, opts.batch_size):
        stop = min(n, start + opts.batch_size)
        out.append(
            prior.sample(
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
                context=None if context is None else context[start:stop].to(pipe.device),
            ).cpu()
        )
    return torch.cat(out)


def resolve_guidance(pipe: Pipeline, asked: float | None, labelled: bool, level: str = "top") -> float | None:
    """The guidance scale to sample with (None: none), or a one-line error when this prior cannot be guided.

    Scale 1 is plain conditional sampling, so it runs as such (n sequences, not 2n): torch.lerp makes the two
    give the same codes, and tests hold them to it.
    """
    cfg = (pipe.bottom if level == "bottom" else pipe.prior).cfg
    config = pipe.bottom_config if level == "bottom" else pipe.config
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
    # else the scale train-prior recorded for this prior (chosen by bench/guidance.py), if any
    scale = asked if asked is not None else config.get("sampling", {}).get("guidance")
    if scale is None or not labelled or cfg.num_classes == 0 or cfg.class_dropout <= 0 or scale == 1:
        return None
    return float(scale)


@torch.no_grad()
def decode_codes(pipe: Pipeline, levels: list[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """The code grids of each level, top first ([(N, m, m)] or [(N, m/2, m/2), (N, m, m)]) → uint8 images
    (N, C, n, n)."""
    from vqgen.train import autocast

    with autocast(pipe.device, pipe.precision):
        parts = [
            to_uint8(pipe.ae.decode_levels([g[i : i + batch_size].to(pipe.device) for g in levels])).cpu()
            for i in range(0, len(levels[0]), batch_size)
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
    levels = sample_levels(pipe, n, labels, opts)
    _sync(pipe.device)
    t1 = time.perf_counter()
    images = decode_codes(pipe, levels)
    _sync(pipe.device)
    t2 = time.perf_counter()
    digits = max(3, len(str(n - 1)))
    files = [save_image(img, out / f"{i:0{digits}d}.png") for i, img in enumerate(images)]
    grid = save_grid(images, out / "grid.png", nrow=per_row, scale=2)
    codes_path = None
    if save_codes:
        codes_path = out / "codes.safetensors"
        tensors = {"codes": levels[-1]} | ({"top": levels[0]} if len(levels) == 2 else {})
        if labels is not None:
            tensors["labels"] = labels
        ckpt.save_tensors(
            codes_path, tensors, {"kind": "vqgen-samples", "codebook_size": str(pipe.prior.cfg.codebook_size)}
        )
    guidance = resolve_guidance(pipe, opts.guidance, labels is not None)
    num_codes = sum(g.numel() for g in levels)
    return SampleResult(grid, files, t1 - t0, t2 - t1, num_codes, codes_path, guidance)


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
    then the n completions. With two levels the rows are the top grid's; the bottom keeps the same part of the
    image (twice as many of its rows). The decoder reads the top grid upsampled, so the last kept pixel rows can still
    change a little with the sampled top row below them.
    """
    from vqgen.images import load_image

    cfg = pipe.ae.cfg
    sizes = cfg.grid_sizes
    m = sizes[0]
    if not 1 <= keep_rows < m:
        which = "top code grid" if len(sizes) == 2 else "code grid"
        raise VQGenError(f"--keep-rows must be between 1 and {m - 1} (the {which} has {m} rows), not {keep_rows}")
    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    if not image_paths:
        raise VQGenError("give at least one --image FILE")
    originals = torch.stack([load_image(p, cfg.channels, cfg.image_size) for p in image_paths])  # (I, C, n, n)
    from vqgen.data import to_float
    from vqgen.train import autocast

    with autocast(pipe.device, pipe.precision):  # the quantizer's distances stay in fp32 regardless
        codes = [g.cpu() for g in pipe.ae.encode_levels(to_float(originals).to(pipe.device))]  # (I, m_l, m_l) each
    labels, _ = resolve_classes(pipe, [label] if label is not None else [], len(image_paths) * n, opts.seed)
    prefixes = [g.repeat_interleave(n, dim=0) for g in codes]  # (I·n, m_l, m_l) each
    prefix_lens = [keep_rows * (side // m) * side for side in sizes]  # the same upper part of the image
    completed = sample_levels(pipe, len(prefixes[0]), labels, opts, prefixes, prefix_lens)
    kept = decode_codes(pipe, codes)
    kept[:, :, keep_rows * cfg.image_size // m :, :] = 128
    samples = decode_codes(pipe, completed).view(len(image_paths), n, *originals.shape[1:])
    rows = [torch.cat([originals[i : i + 1], kept[i : i + 1], samples[i]]) for i in range(len(image_paths))]
    return save_grid(torch.cat(rows), Path(out) / "completions.png", nrow=n + 2, scale=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
