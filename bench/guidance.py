"""Classifier-free guidance sweep: `vqgen eval` of one class-conditional prior at several guidance scales.

    python bench/guidance.py --data mnist --prior runs/bench/mnist/prior
    python bench/guidance.py --data fashion-mnist --prior runs/bench/fashion-mnist/prior --scales 1,1.5,2

Every scale is one `vqgen eval --n N --guidance S` (classes uniform: the labels cycle over the classes), its report
kept as RUN/eval-guidance-S.json. Writes bench/results/<name>.json and docs/img/<name>.png (default name
guidance-<data>): Fréchet distance against class accuracy, one point per scale. (bench/datasets.py evaluates the
samples drawn without naming a class, at the prior's default scale.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

from vqgen.presets import choose_guidance

from common import REPO, SHARED, beyond_texture, frechet, vqgen, write_result


def evaluate(prior: Path, root: list[str], n: int, out: Path, *extra: str) -> tuple[dict, str]:
    flags = ["eval", "--prior", str(prior), *root, "--n", str(n), "--out", str(out), *extra]
    vqgen(*flags)
    return json.loads(out.read_text()), "vqgen " + shlex.join(flags)


def row(report: dict) -> dict:
    s = report["samples"]
    return {
        "guidance": s["guidance"],
        "labels": s["labels"],
        "fid": round(frechet(s, "samples_vs_test"), 3),
        "fid_recon_floor": round(frechet(s, "recon_vs_test"), 3),
        "fid_train_vs_test": round(frechet(s, "train_vs_test"), 3),
        "class_accuracy": s.get("class_accuracy"),
        "worst_class_accuracy": s.get("worst_class_accuracy"),
        "recon_class_accuracy": s["recon_class_accuracy"],
        "distinct_fraction": s["distinct_fraction"],
        "train_copy_fraction": s["train_copy_fraction"],
        **beyond_texture(report),
        "seconds": report["seconds"],
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_two_sample = all("two_sample_samples_vs_reconstructions" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if with_two_sample else 1, figsize=(10 if with_two_sample else 5, 3.6), dpi=120)
    ax = axes[0] if with_two_sample else axes
    acc = [100 * r["class_accuracy"] for r in rows]
    fid = [r["fid"] for r in rows]
    ax.plot(acc, fid, "o-", color="tab:blue")
    for r, x, y in zip(rows, acc, fid, strict=True):
        ax.annotate(f"S={r['guidance']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(rows[0]["fid_train_vs_test"], color="grey", ls=":", lw=1, label="noise: train vs held-out")
    ax.axhline(rows[0]["fid_recon_floor"], color="tab:green", ls="--", lw=1, label="floor: reconstructions")
    ax.set_xlabel("samples of the asked class (%)")
    ax.set_ylabel("Fréchet distance (classifier features)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if with_two_sample:
        # what the class accuracy and the distance cannot see: layout, diversity, and anything a fresh network finds
        ax = axes[1]
        scales = [r["guidance"] for r in rows]
        ax.plot(scales, [r["two_sample_samples_vs_reconstructions"] for r in rows], "o-", label="two-sample acc.")
        ax.plot(scales, [r["recall_samples"] for r in rows], "s-", label="recall (k=3)")
        ax.plot(scales, [r["precision_samples"] for r in rows], "^-", label="precision (k=3)")
        ax.plot(scales, [r["structure_gap_samples"] for r in rows], "d-", label="structure gap")
        ax.axhline(rows[0]["recall_reconstructions"], color="tab:orange", ls="--", lw=1, label="recall: recons")
        ax.axhline(rows[0]["structure_gap_test"], color="tab:red", ls=":", lw=1, label="gap: held-out images")
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("samples against reconstructions / held-out")
        ax.set_title("beyond texture", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the prior's data set, as for vqgen train-ae --data (a path)")
    parser.add_argument("--prior", required=True, help="a finished class-conditional prior run (class dropout > 0)")
    parser.add_argument("--scales", default="1,1.25,1.5,2,3", help="guidance scales to evaluate")
    parser.add_argument("--n", type=int, default=5000, help="samples per scale (and held-out images)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from bench/results/ and stop")
    parser.add_argument("--name", help="the results file's and the plot's name (default: guidance-<data>)")
    args = parser.parse_args()
    name = args.name or f"guidance-{Path(args.data).stem}"
    if args.plot_only:
        figures = json.loads((REPO / "bench" / "results" / f"{name}.json").read_text())["figures"]
        title = f"{Path(args.data).stem}: guidance sweep, n = {figures['n']} per scale"
        plot(figures["scales"], REPO / "docs" / "img" / f"{name}.png", title)
        return
    command = f"python bench/guidance.py --data {args.data} --prior {args.prior} --scales {args.scales} --n {args.n}"
    command += f" --name {args.name}" if args.name else ""
    os.chdir(REPO)
    prior = Path(args.prior)
    # a named set lives in the shared data; a file or folder is the path the autoencoder recorded, and a data root
    # there would move the eval classifier's cache away from the one `vqgen eval` used before
    named = args.data != "shapes" and not Path(args.data).exists()
    root = ["--data-root", os.path.relpath(SHARED)] if named else []
    rows, commands = [], []
    for scale in [float(s) for s in args.scales.split(",")]:
        report, cmd = evaluate(prior, root, args.n, prior / f"eval-guidance-{scale:g}.json", "--guidance", str(scale))
        rows.append(row(report))
        commands.append(cmd)
        print(json.dumps(rows[-1]))
    best = min(rows, key=lambda r: r["fid"])
    docs = Path("docs/img")
    docs.mkdir(parents=True, exist_ok=True)
    plot(rows, docs / f"{name}.png", f"{Path(args.data).stem}: guidance sweep, n = {args.n} per scale")
    figures = {
        "data": args.data,
        "prior": str(prior),
        "n": args.n,
        "scales": rows,
        "best_fid_scale": best["guidance"],
        "chosen_scale": choose_guidance(rows) if all("recall_samples" in r for r in rows) else None,
        "rule": "vqgen.presets.choose_guidance",
        "commands": commands,
    }
    write_result(name, command, figures)


if __name__ == "__main__":
    main()
