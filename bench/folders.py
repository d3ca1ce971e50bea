"""A folder of photos with no flags: the four commands as a new user runs them, then `vqgen eval`, one JSON per folder.

    python bench/folders.py --data ../shared/datasets/TinyImageNet20
    python bench/folders.py --data ../shared/datasets/Flowers64 --features-from ../shared/datasets/TinyImageNet20

Runs `train-ae --data FOLDER`, `encode`, `train-prior` and `sample` with the defaults the size rule picks
(vqgen.presets.sized_preset), then `vqgen eval --prior RUN --n N` (classes uniform for a labelled folder; an
unlabelled one is scored in the features of `--features-from`'s classifier). Times each stage (config written to
the last metrics line) and `vqgen sample --n 64`, copies the reconstructions and a grid of samples (8 per class
for a labelled folder) into docs/img/<result>-*.png, and writes bench/results/<result>.json (<result>: --name, by
default folder-<folder name>). `--ae-options` and `--prior-options` add flags to the defaults, to measure another
choice beside them (`--ae-options '--downsample 4'`: a 16×16 grid at 64 px). Set VQGEN_BENCH_SRC to a frozen copy
of vqgen/ to keep edits away from a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
from pathlib import Path

from common import REPO, beyond_texture, command_line, frechet, vqgen, write_result


def done(path: Path, after: Path | None = None) -> bool:
    return path.exists() and (after is None or path.stat().st_mtime >= after.stat().st_mtime)


def run_seconds(run: Path) -> float:
    """Training wall time from the run folder: config written to the last metrics line."""
    return round((run / "metrics.jsonl").stat().st_mtime - (run / "config.json").stat().st_mtime, 1)


def median_rate(run: Path, key: str) -> float | None:
    """The median of a run's logged training rates (img_per_s, code_per_s), skipping the first (warm-up) window:
    the stage's time on a quiet machine, where the wall time also counts anything else that ran beside it."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = sorted([r[key] for r in records if r.get("split") == "train" and key in r][1:])
    return rates[len(rates) // 2] if rates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of images (sub-folders = classes)")
    parser.add_argument("--features-from", default=None, help="a labelled set whose classifier scores unlabelled data")
    parser.add_argument("--n", type=int, default=5000, help="samples (and held-out images) for vqgen eval")
    parser.add_argument("--reuse", action="store_true", help="keep each stage whose output is newer than its input")
    parser.add_argument("--root", default=None, help="where the runs go (default: runs/bench/<result name>)")
    parser.add_argument("--name", default=None, help="the results file's name (default: folder-<folder name>)")
    parser.add_argument("--ae-options", default="", help="flags added to train-ae, e.g. '--downsample 4'")
    parser.add_argument("--prior-options", default="", help="flags added to train-prior, e.g. '--minutes 15'")
    args = parser.parse_args()
    command = command_line("folders.py", args)
    data = os.path.relpath(Path(args.data).resolve(), REPO)
    features = os.path.relpath(Path(args.features_from).resolve(), REPO) if args.features_from else None
    name = Path(data).name.lower()
    result = args.name or f"folder-{name}"
    os.chdir(REPO)
    root = Path(args.root) if args.root else Path("runs") / "bench" / result
    ae, codes, prior = root / "ae", root / "codes.safetensors", root / "prior"
    train_ae = ["train-ae", "--data", data, "--out", str(ae), *shlex.split(args.ae_options)]
    encode = ["encode", "--ae", str(ae), "--out", str(codes)]
    train_prior = ["train-prior", "--codes", str(codes), "--out", str(prior), *shlex.split(args.prior_options)]
    evaluate = ["eval", "--prior", str(prior), "--n", str(args.n), *(["--features-from", features] if features else [])]
    if not (args.reuse and done(ae / "model.safetensors")):
        vqgen(*train_ae, "--force")
    if not (args.reuse and done(codes, ae / "model.safetensors")):
        vqgen(*encode)
    if not (args.reuse and done(prior / "model.safetensors", codes)):
        vqgen(*train_prior, "--force")
    if not (args.reuse and done(prior / "eval.json", prior / "model.safetensors")):
        vqgen(*evaluate)
    prior_config = json.loads((prior / "config.json").read_text())
    classes = prior_config["model"]["num_classes"]
    # a grid of 8 per class for a labelled folder, else 64; and the time of 64 samples, the command's whole run
    grid = ["sample", "--prior", str(prior), "--out", str(root / "samples")]
    grid += ["--n", str(8 * classes), "--class", "all"] if classes else ["--n", "64"]
    vqgen(*grid)
    timed = ["sample", "--prior", str(prior), "--n", "64", "--out", str(root / "samples-64")]
    sample_seconds, _ = vqgen(*timed)
    Path("docs/img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "samples" / "grid.png", Path("docs/img") / f"{result}-samples.png")
    shutil.copyfile(ae / "recon.png", Path("docs/img") / f"{result}-recon.png")

    report = json.loads((prior / "eval.json").read_text())
    rec, s, lik = report["reconstruction"], report["samples"], report["likelihood"]
    ae_config = json.loads((ae / "config.json").read_text())
    model, train, adversarial = ae_config["model"], ae_config["train"], ae_config.get("adversarial", {})
    clf = report.get("classifier", {})
    row = {
        "data": data,
        "images": report["data"]["train_size"] + report["data"]["test_size"],
        "held_out": report["data"]["test_size"],
        "classes": report["data"]["num_classes"],
        "chosen": {
            "image_size": model["image_size"],
            "downsample": model["downsample"],
            "grid": model["image_size"] // model["downsample"],
            "quantizer": model["quantizer"],
            "codebook_size": model["codebook_size"],
            "code_factors": model.get("code_factors", []),
            "hidden": model["hidden"],
            "ae_steps": train["steps"],
            "adversarial": adversarial.get("weight", 0.0),
            "prior_steps": prior_config["train"]["steps"],
            "prior_batch_size": prior_config["train"]["batch_size"],
            "prior_class_conditional": classes > 0,
            "guidance": prior_config.get("sampling", {}).get("guidance"),
        },
        "ae_seconds": run_seconds(ae),
        "prior_seconds": run_seconds(prior),
        "ae_img_per_s_median": median_rate(ae, "img_per_s"),
        "prior_codes_per_s_median": median_rate(prior, "code_per_s"),
        "sample_64_seconds": round(sample_seconds, 1),
        "psnr": round(rec["psnr"], 2),
        "codes_used": round(rec["codes_used"], 4),
        "bits_per_code": round(lik["bits_per_code"], 4),
        "features": s.get("features"),
        "classifier": {k: clf.get(k) for k in ("data", "accuracy", "n", "train_steps", "train_seconds", "cached")},
        "fid_recon_vs_test": frechet(s, "recon_vs_test"),
        "fid_samples_vs_test": frechet(s, "samples_vs_test"),
        "fid_train_vs_test": frechet(s, "train_vs_test"),
        "n_test": s.get("n_test"),
        "n_samples": s["n"],
    }
    if row["fid_samples_vs_test"] is not None:
        row["fid_ratio_to_floor"] = round(row["fid_samples_vs_test"] / row["fid_recon_vs_test"], 3)
    if "recon_class_accuracy" in s:
        row["recon_class_accuracy"] = s["recon_class_accuracy"]
        row["class_kept"] = round(s["recon_class_accuracy"] / clf["accuracy"], 4)
    if "class_accuracy" in s:
        row |= {k: s[k] for k in ("class_accuracy", "worst_class_accuracy", "per_class_accuracy")}
        row["asked_class_vs_kept"] = round(s["class_accuracy"] / s["recon_class_accuracy"], 3)
        row["class_names"] = prior_config["codes"].get("class_names")
    row |= beyond_texture(report)
    row["commands"] = ["vqgen " + shlex.join(c) for c in (train_ae, encode, train_prior, evaluate, grid, timed)]
    print(json.dumps(row))
    write_result(result, command, row)


if __name__ == "__main__":
    main()
