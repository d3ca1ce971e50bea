"""Generation: prior → codebook lookup → decoder, and completion of the lower part of given images.

A two-level autoencoder needs two priors: the top prior samples the top grid, then the bottom prior samples the
bottom grid given it, and the decoder reads both. Every function here takes and returns the grids of each level,
top first: [(N, m, m)] for one level, [(N, m/2, m/2), (N, m, m)] for two."""

from __future__ import annotations

import math
import numbers
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import torch

from vqgen import checkpoint as ckpt
from vqgen.data import to_uint8
from vqgen.errors import VQGenError, renamed_keywords
from vqgen.images import save_grid, save_image
from vqgen.limits import MAX_BATCH, MAX_SAMPLES, check_count, check_seed
from vqgen.limits import is_int as _is_int


@dataclass
class SamplingOptions:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 64
    seed: int = 0
    use_cache: bool = True
    guidance: float | None = None  # None: the scale recorded in the prior's config.json (else no guidance)

    def check(self) -> None:
        """Every setting that does not depend on the prior, checked before anything is loaded."""
        check_count(self.batch_size, "--batch-size", MAX_BATCH)
        check_seed(self.seed)
        numbers_ = (("--temperature", self.temperature), ("--top-p", self.top_p), ("--guidance", self.guidance))
        for flag, value in numbers_:
            optional = flag != "--temperature"
            if not (value is None and optional) and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
                raise VQGenError(f"{flag} must be a number, not {value!r:.40}")
        if self.top_k is not None and not _is_int(self.top_k):
            raise VQGenError(f"--top-k must be an integer, not {self.top_k!r:.40}")
        if self.guidance is not None and not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise VQGenError(f"--guidance must be a number >= 0 (1 = plain conditional sampling), not {self.guidance}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise VQGenError(f"--temperature must be a finite number > 0, not {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise VQGenError(f"--top-p must be in (0, 1], not {self.top_p}")

    def validate(self, codebook_size: int) -> None:
        self.check()
        if self.top_k is not None and not 1 <= self.top_k <= codebook_size:
            raise VQGenError(f"--top-k must be between 1 and K={codebook_size}, not {self.top_k}")


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

    @classmethod
    def load(
        cls,
        prior_run: str | Path,
        device: str | torch.device = "cpu",
        *,
        ae: str | Path | None = None,
        bottom: str | Path | None = None,
        precision: str = "auto",
        ignore_hash: bool = False,
    ) -> Pipeline:
        """The prior of run folder `prior_run` with the autoencoder whose codes it learned, found as `vqgen sample`
        finds it (beside the prior, then where it was trained; `ae` overrides), in eval mode on `device` ("cpu",
        "cuda", "cuda:N", "mps" or "auto"). A two-level autoencoder's bottom prior is `bottom` (default: the
        prior's folder + "-bottom"). `precision` is the autoencoder's autocast, as `vqgen sample --precision`."""
        return load_pipeline(prior_run, str(device), ae, ignore_hash, precision, bottom)

    def generate(
        self,
        n: int,
        classes: ClassSpec = None,
        *,
        guidance: float | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        batch_size: int = 64,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """n new images, uint8 (n, C, H, W) on the CPU; writes nothing. The same arguments give the same images as
        `vqgen sample` (`--n`, `--class`, ...) writes.

        `classes`: None (a class-conditional prior samples every class, counts differing by at most one), a class
        index or name, a list of them (cycled over), "all", "none" (classes drawn from the training labels'
        frequencies) or "null" (the null class). `guidance` None takes the scale the prior recorded (if any)."""
        return self.decode(
            self.generate_codes(
                n,
                classes,
                guidance=guidance,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed,
                batch_size=batch_size,
                use_cache=use_cache,
            )
        )

    def generate_codes(
        self,
        n: int,
        classes: ClassSpec = None,
        *,
        guidance: float | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        batch_size: int = 64,
        use_cache: bool = True,
    ) -> list[torch.Tensor]:
        """The code grids `generate` decodes, one int64 (n, m_l, m_l) per level, top first."""
        check_count(n, "--n")
        opts = SamplingOptions(temperature, top_k, top_p, batch_size, seed, use_cache, guidance)
        opts.validate(self.prior.cfg.codebook_size)
        labels, _ = resolve_classes(self, class_args(classes), n, seed)
        return sample_levels(self, n, labels, opts)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, C, H, W), uint8 in [0, 255] or float in [-1, 1] → the code grid of each level, top first, on
        the CPU (under the pipeline's precision, as `complete` encodes)."""
        from vqgen.device import autocast

        self.ae.check_images(images)
        with autocast(self.device, self.precision):  # the quantizer's distances stay in fp32 regardless
            return [g.cpu() for g in self.ae.encode_levels(images.to(self.device))]

    def decode(self, levels: list[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
        """The code grid of each level, top first → uint8 images (N, C, H, W) on the CPU."""
        check_count(batch_size, "batch_size", MAX_BATCH)
        return decode_codes(self, levels, batch_size)

    def complete(
        self,
        images: torch.Tensor,
        keep_rows: int,
        n: int = 8,
        *,
        label: int | str | None = None,
        guidance: float | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """Keep the first `keep_rows` rows of each image's codes (the top grid's, two-level) and sample the rest n
        times: images (I, C, H, W), uint8 or float in [-1, 1] → uint8 completions (I, n, C, H, W); writes nothing.
        The same arguments give the completions `vqgen complete` draws."""
        with renamed_keywords(**{"class": "label"}):
            opts = SamplingOptions(temperature, top_k, top_p, seed=seed, guidance=guidance)
            _, completed = complete_levels(self, images, keep_rows, n, opts, None if label is None else str(label))
        return self.decode(completed).view(len(images), n, *images.shape[1:])


ClassSpec = int | str | Sequence[int | str] | None


def class_args(classes: ClassSpec) -> list[str]:
    """A Python `classes` argument → the --class values resolve_classes reads."""
    if classes is None:
        return []
    if isinstance(classes, (int, str)):
        return [str(classes)]
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    return [str(c) for c in classes]


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
    from vqgen.device import resolve_device, resolve_precision
    from vqgen.priors.training import load_prior

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
    check_count(n, "--n")
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
        return balanced_classes(n, pipe.num_classes)
    ids = []
    for c in classes:
        c = str(c)
        if re.fullmatch(r"-?[0-9]+", c):  # ASCII digits only: str.isdigit() takes '²', which int() refuses
            idx = int(c) if len(c) <= 18 else -1
        elif pipe.class_names and c in pipe.class_names:
            idx = pipe.class_names.index(c)
        else:
            names = f" or one of {', '.join(pipe.class_names)}" if pipe.class_names else ""
            raise VQGenError(f"--class '{c[:40]}' is not a class index 0..{pipe.num_classes - 1}{names[:200]}")
        if not 0 <= idx < pipe.num_classes:
            raise VQGenError(f"--class {c[:40]} is out of range: this prior has classes 0..{pipe.num_classes - 1}")
        ids.append(idx)
    counts = (getattr(pipe, "config", None) or {}).get("codes", {}).get("class_counts") or []
    unseen = [i for i in dict.fromkeys(ids) if len(counts) == pipe.num_classes and counts[i] == 0]
    if unseen:
        import sys

        name = pipe.class_names[unseen[0]] if pipe.class_names else str(unseen[0])
        print(
            f"warning: class {name} had no training images (its only images were held out), so the prior never "
            "learned it: its samples are guesses",
            file=sys.stderr,
        )
    return torch.tensor(ids)[torch.arange(n) % len(ids)], None


def row_names(pipe: Pipeline, labels: torch.Tensor | None, per_row: int | None) -> list[str] | None:
    """The class name of each row of a grid whose rows are one class each (class indices where unnamed), else None."""
    if labels is None or not per_row:
        return None
    rows = labels.split(per_row)  # each (per_row,) or fewer, the last row
    if not all(bool((row == row[0]).all()) for row in rows):
        return None
    names = pipe.class_names or [str(c) for c in range(pipe.num_classes)]
    return [names[int(row[0])] for row in rows]


MAX_GRID_ASPECT = 9  # rows/columns (or columns/rows) beyond which whole rows per class give way to a square grid


def balanced_classes(n: int, num_classes: int) -> tuple[torch.Tensor, int]:
    """Labels (n,) in class order whose counts differ by at most one, and the grid's images per row.

    Class-feature Fréchet distances depend on class balance, so balance comes first. When every class gets the
    same count, the row length is the divisor of that count closest to a square grid, so each class fills whole
    rows; otherwise (or when that grid would be too far from square) the grid is square and classes share rows."""
    labels = torch.arange(n) * num_classes // n  # runs of ⌊n/k⌋ or ⌈n/k⌉ of each class, in order
    square = math.ceil(math.sqrt(n))
    if n % num_classes:
        return labels, square
    per_class = n // num_classes

    def aspect(cols: int) -> Fraction:  # exact, so that ties go the same way on every machine
        return max(Fraction(cols * cols, n), Fraction(n, cols * cols))

    cols = min((d for d in range(1, per_class + 1) if per_class % d == 0), key=lambda d: (aspect(d), -d))
    return labels, cols if aspect(cols) <= MAX_GRID_ASPECT else square


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
    from vqgen.device import autocast

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
    check_count(n, "--n")
    opts.validate(pipe.prior.cfg.codebook_size)
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
    images = pipe.decode(levels)
    _sync(pipe.device)
    t2 = time.perf_counter()
    digits = max(3, len(str(n - 1)))
    files = [save_image(img, out / f"{i:0{digits}d}.png") for i, img in enumerate(images)]
    grid = save_grid(images, out / "grid.png", nrow=per_row, scale=2, row_names=row_names(pipe, labels, per_row))
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
    keep_rows: int | None,
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
    if not image_paths:
        raise VQGenError("give at least one --image FILE")
    check_count(n, "--n")
    check_count(len(image_paths) * n, f"{len(image_paths)} images × --n")
    opts.check()
    originals = torch.stack([load_image(p, cfg.channels, cfg.image_size) for p in image_paths])  # (I, C, n, n)
    keep_rows = default_keep_rows(pipe) if keep_rows is None else keep_rows
    codes, completed = complete_levels(pipe, originals, keep_rows, n, opts, label)
    kept = pipe.decode(codes)
    kept[:, :, keep_rows * cfg.image_size // cfg.grid_sizes[0] :, :] = 128
    samples = pipe.decode(completed).view(len(image_paths), n, *originals.shape[1:])
    rows = [torch.cat([originals[i : i + 1], kept[i : i + 1], samples[i]]) for i in range(len(image_paths))]
    return save_grid(torch.cat(rows), Path(out) / "completions.png", nrow=n + 2, scale=2)


def default_keep_rows(pipe: Pipeline) -> int:
    """The rows `complete` keeps unless told: 3, or for a prior of p×p patches half the rows, whole rows of patches."""
    m, patch = pipe.ae.cfg.grid_sizes[0], pipe.prior.cfg.patch
    return 3 if patch == 1 else max(patch, m // 2 // patch * patch)


def complete_levels(
    pipe: Pipeline,
    images: torch.Tensor,
    keep_rows: int | None,
    n: int,
    opts: SamplingOptions,
    label: str | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """images (I, C, H, W), uint8 or float in [-1, 1] → their code grids per level and, per level, the (I·n, m_l,
    m_l) grids of n completions of each that keep the first `keep_rows` rows of the top grid (and the same part of
    the image at the bottom level)."""
    cfg = pipe.ae.cfg
    sizes = cfg.grid_sizes
    m = sizes[0]
    patch = pipe.prior.cfg.patch
    keep_rows = default_keep_rows(pipe) if keep_rows is None else keep_rows
    if not _is_int(keep_rows) or not 1 <= keep_rows < m:
        which = "top code grid" if len(sizes) == 2 else "code grid"
        raise VQGenError(f"--keep-rows must be between 1 and {m - 1} (the {which} has {m} rows), not {keep_rows}")
    if keep_rows % patch:
        raise VQGenError(
            f"--keep-rows must be a multiple of {patch}: this prior predicts {patch}×{patch} patches of codes, so it "
            "keeps whole rows of patches"
        )
    check_count(n, "--n")
    pipe.ae.check_images(images)
    if len(images) * n > MAX_SAMPLES:
        raise VQGenError(
            f"{len(images)} images × --n {n} completions is over the limit of {MAX_SAMPLES:,} samples; ask for fewer"
        )
    opts.validate(pipe.prior.cfg.codebook_size)
    codes = pipe.encode(images)  # (I, m_l, m_l) each
    labels, _ = resolve_classes(pipe, [label] if label is not None else [], len(images) * n, opts.seed)
    prefixes = [g.repeat_interleave(n, dim=0) for g in codes]  # (I·n, m_l, m_l) each
    prefix_lens = [keep_rows * (side // m) * side for side in sizes]  # the same upper part of the image
    return codes, sample_levels(pipe, len(prefixes[0]), labels, opts, prefixes, prefix_lens)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
