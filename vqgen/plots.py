"""PNG plots of a run folder: training curves, code usage and a PCA of the codebook.

matplotlib is an optional extra (pip install -e '.[plots]'), imported only here and only when a plot is drawn.
Figures go through the Agg canvas directly rather than pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vqgen import checkpoint as ckpt
from vqgen.errors import VQGenError

CURVES = "curves.png"
USAGE = "code_usage.png"
PCA = "codebook_pca.png"

# (metric key, axis label, log scale) of the training-curve panels of each kind of run
AE_PANELS = [
    ("loss", "loss", True),
    ("psnr", "PSNR (dB)", False),
    ("codes_used", "codes used (fraction of K)", False),
    ("perplexity", "perplexity", False),
]
PRIOR_PANELS = [("bits_per_code", "bits per code", False)]


def require_matplotlib():
    """The matplotlib Figure class, or a VQGenError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise VQGenError("matplotlib is needed for plots: pip install -e '.[plots]'") from e
    return Figure


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = require_matplotlib()(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as the figure's canvas: Agg, whatever backend is configured
    return fig


def _save(fig, path: Path) -> Path:
    with ckpt.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_curves(records: list[dict], panels: list[tuple[str, str, bool]], path: Path, title: str) -> Path:
    """One panel per metric: the train log as a line, held-out evaluations as points, both against the step."""
    fig = _new_figure(4.0 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for split, style in (("train", dict(lw=1.2, marker=".", ms=3)), ("test", dict(ls="none", marker="o", ms=5))):
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and _finite(r.get(key))]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=split, **style)
        if log and ax.has_data() and min(v for line in ax.get_lines() for v in line.get_ydata()) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plot_usage(counts: torch.Tensor, path: Path, title: str) -> Path:
    """Code usage sorted by frequency (log scale): a long flat head is a healthy codebook, a cliff is collapse."""
    fig = _new_figure(7.0, 3.5)
    ax = fig.subplots()
    ordered = counts.sort(descending=True).values.double()
    share = (ordered / ordered.sum().clamp_min(1)).numpy()  # (K,)
    ax.bar(range(len(share)), share, width=1.0)
    if share.max() > 0:
        ax.set_yscale("log")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("share of all code positions")
    ax.set_xlim(-0.5, len(share) - 0.5)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_codebook_pca(codebook: torch.Tensor, counts: torch.Tensor, path: Path, title: str) -> Path:
    """The (K, D) codebook projected on its first two principal components, coloured by log usage."""
    x = codebook.detach().double().cpu()
    x = x - x.mean(0)  # (K, D), centred
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    coords = x @ vh[:2].t()  # (K, ≤2)
    if coords.shape[1] < 2:  # a 1-D codebook: put everything on the first axis
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=coords.dtype)], 1)
    explained = (s**2 / (s**2).sum().clamp_min(1e-30))[:2].tolist() + [0.0, 0.0]
    used = counts > 0
    fig = _new_figure(5.5, 4.5)
    ax = fig.subplots()
    if (~used).any():
        dead = coords[~used].numpy()
        ax.scatter(dead[:, 0], dead[:, 1], marker="x", s=14, c="0.4", zorder=3, label=f"unused ({int((~used).sum())})")
    live = coords[used].numpy()
    points = ax.scatter(
        live[:, 0], live[:, 1], c=counts[used].double().log10().numpy(), s=16, cmap="viridis", label="used"
    )
    if used.any():
        fig.colorbar(points, ax=ax, label="log10(uses)")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_run(run: str | Path, n: int = 5000, device: str = "auto", data_root: str | None = None) -> list[Path]:
    """Write the PNGs of a run folder into it: curves.png, and for an autoencoder code_usage.png (on up to n
    held-out images) and codebook_pca.png. Returns the paths written."""
    require_matplotlib()  # fail before any slow work
    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    run = Path(run)
    config = ckpt.read_config(run)
    kind = config.get("kind")
    if kind not in ("vqvae", "prior"):
        raise VQGenError(f"'{run}' is a {kind or 'unknown'} run; plot an autoencoder or a prior run")
    weights = run / ckpt.WEIGHTS
    before = ckpt.sha256(weights) if weights.exists() else None
    records = ckpt.read_metrics(run)
    written = []
    if records:
        panels = AE_PANELS if kind == "vqvae" else PRIOR_PANELS
        written.append(plot_curves(records, panels, run / CURVES, f"{run} ({kind})"))
    elif kind == "prior":
        raise VQGenError(f"'{run}' has no {ckpt.METRICS} yet: nothing to plot")
    if kind == "vqvae":
        written += _plot_codebook(run, n, device, data_root)
    after = ckpt.sha256(weights) if weights.exists() else None
    if after != before:  # a --force run swapped new weights in meanwhile: these plots describe a model that is gone
        for path in written:
            path.unlink(missing_ok=True)
        raise VQGenError(f"'{run}' was replaced while it was plotted; no plot was kept: run vqgen plot again")
    return written


def _plot_codebook(run: Path, n: int, device: str, data_root: str | None) -> list[Path]:
    from vqgen.autoencoder import data_config_of, load_autoencoder
    from vqgen.data import Split
    from vqgen.device import resolve_device
    from vqgen.metrics import perplexity
    from vqgen.passes import split_pass

    dev = resolve_device(device)
    model, config = load_autoencoder(run, dev)
    dc = data_config_of(config)
    if data_root is not None:
        dc.data_root = data_root
    test = dc.load().test
    images = test.images[:n]
    # (K,) the bottom grid's, by the quantizer's own indices: the order of the codebook plotted beside them
    counts = split_pass(model, Split(images, None), dev, decode=False).counts[-1]
    k = model.cfg.codebook_size
    used = int((counts > 0).sum())
    ppl = perplexity(counts)
    with torch.no_grad():
        codebook = model.quantizer.codebook().float().cpu()  # (K, D)
    where = f"{len(images)} held-out images"
    return [
        plot_usage(counts, run / USAGE, f"code usage on {where}: {used}/{k} codes used, perplexity {ppl:.1f}"),
        plot_codebook_pca(codebook, counts, run / PCA, f"codebook PCA (K={k}), usage on {where}"),
    ]
