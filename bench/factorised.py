"""Factorised codes on CIFAR-10: each way of getting them, one stage one + one prior each, measured side by side.

    python bench/factorised.py --arms fsq-240x64,ema16384-128x128 --n 5000

Arms (see ARMS): `fsq-240x64` is FSQ with levels 8,8,8,6,5 (15,360 codes) whose sub-tokens are groups of levels (by
construction); `ema16384-128x128` is the K = 16,384 EMA codebook renumbered by balanced k-means after training;
`flat2048` is the K = 2048 recipe with one 2048-way softmax; `fsq-kmeans-240x64` keeps the `fsq-240x64` arm's
autoencoder and renumbers its 15,360 codes by balanced k-means instead (`vqgen factorise --by kmeans`), so that the
two ways of factorising are compared on the same stage one; `fsq-flat` trains a flat prior (one 15,360-way softmax,
`train-prior --flat`) on the `fsq-240x64` arm's own codes, so bits per code compare exactly. Each arm trains the
autoencoder with fixed steps, encodes, trains the default Transformer prior (class-conditional, factorised where the
codes are) for `--prior-steps`, then runs `vqgen eval --prior RUN --n N` (reconstructions and samples through the eval
classifier, classes uniform) and draws 8 samples per class into docs/img/factorised-<arm>-samples.png.
Writes bench/results/<name>.json, keeping the rows of arms not run this time. Set VQGEN_BENCH_SRC to a frozen copy
of vqgen/ to keep edits away from a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
from pathlib import Path

from common import REPO, SHARED, command_line, frechet, vqgen, write_result

CIFAR = SHARED / "CIFAR10" / "cifar10-train-40k.npz"
ADVERSARIAL = ["--adversarial", "0.2", "--adversarial-start", "1600", "--feature-matching", "0.3"]
ARMS = {
    "fsq-240x64": ["--quantizer", "fsq", "--fsq-levels", "8,8,8,6,5", "--code-factors", "240x64", *ADVERSARIAL],
    # its nearest-code search over 16,384 codes makes a step about 2.3× an fsq step on 2 cores: fewer steps, and the
    # discriminator from step 900, fit the same 15 minutes
    "ema16384-128x128": [
        "--codebook-size",
        "16384",
        "--code-factors",
        "128x128",
        *ADVERSARIAL[:2],
        "--adversarial-start",
        "900",
        *ADVERSARIAL[4:],
    ],
    "flat2048": ["--codebook-size", "2048", "--code-factors", "none", *ADVERSARIAL[:4], "--feature-matching", "0.1"],
}
# arms whose autoencoder is another arm's: (that arm, `vqgen factorise` options or None to keep its codes,
# extra `vqgen train-prior` options)
DERIVED = {
    "fsq-kmeans-240x64": ("fsq-240x64", ["--factors", "240x64", "--by", "kmeans"], []),
    "fsq-flat": ("fsq-240x64", None, ["--flat"]),
}


def done(path: Path, after: Path | None = None) -> bool:
    return path.exists() and (after is None or path.stat().st_mtime >= after.stat().st_mtime)


def run_seconds(run: Path) -> float:
    """Training wall time from the run folder: config written to the last metrics line."""
    return round((run / "metrics.jsonl").stat().st_mtime - (run / "config.json").stat().st_mtime, 1)


def arm_row(arm: str, args) -> dict:
    root = Path("runs") / "bench" / args.name
    ae, codes, prior = root / f"ae-{arm}", root / f"codes-{arm}.safetensors", root / f"prior-{arm}"
    base, refactor, prior_options = DERIVED.get(arm, (arm, None, []))
    steps = args.ae_steps.get(base, args.default_ae_steps)
    base_ae = root / f"ae-{base}"
    if arm != base and refactor is None:  # the base arm's autoencoder and codes, another prior
        ae, codes = base_ae, root / f"codes-{base}.safetensors"
    train_ae = ["train-ae", "--data", os.path.relpath(CIFAR), "--steps", str(steps), "--out", str(base_ae), *ARMS[base]]
    encode = ["encode", "--ae", str(ae), "--out", str(codes)]
    train_prior = [
        "train-prior",
        "--codes",
        str(codes),
        "--out",
        str(prior),
        "--steps",
        str(args.prior_steps),
        *prior_options,
    ]
    evaluate = ["eval", "--prior", str(prior), "--n", str(args.n)]
    sample = ["sample", "--prior", str(prior), "--n", "80", "--class", "all", "--out", str(root / f"samples-{arm}")]
    if not (args.reuse and done(base_ae / "model.safetensors")):
        vqgen(*train_ae, "--force")
    factorise = ["factorise", "--ae", str(base_ae), *refactor, "--out", str(ae)] if refactor else None
    weights = ae / "model.safetensors"
    if factorise and not (args.reuse and done(weights, base_ae / "model.safetensors")):
        vqgen(*factorise, "--force")
    if not (args.reuse and done(codes, weights)):
        vqgen(*encode)
    if not (args.reuse and done(prior / "model.safetensors", codes)):
        vqgen(*train_prior, "--force")
    if not (args.reuse and done(prior / "eval.json", prior / "model.safetensors")):
        vqgen(*evaluate)
    vqgen(*sample)
    Path("docs/img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / f"samples-{arm}" / "grid.png", Path("docs/img") / f"factorised-{arm}-samples.png")
    shutil.copyfile(base_ae / "recon.png", Path("docs/img") / f"factorised-{base}-recon.png")
    report = json.loads((prior / "eval.json").read_text())
    rec, s, lik = report["reconstruction"], report["samples"], report["likelihood"]
    ae_config = json.loads((ae / "config.json").read_text())
    ae_train = json.loads((base_ae / "config.json").read_text())["train"]
    prior_config = json.loads((prior / "config.json").read_text())
    return {
        "codebook_size": ae_config["model"]["codebook_size"],
        "code_factors": ae_config["model"]["code_factors"],
        "factor_by": ae_config["model"].get("factor_by"),
        "ae_steps": ae_train["steps"],
        "ae_seconds": run_seconds(base_ae),
        "psnr": round(rec["psnr"], 2),
        "codes_used": round(rec["codes_used"], 4),
        # eval of a prior reports the reconstruction floor and the class kept beside its samples
        "fid_recon_vs_test": round(frechet(s, "recon_vs_test"), 3),
        "recon_class_accuracy": s["recon_class_accuracy"],
        "class_kept": round(s["recon_class_accuracy"] / report["classifier"]["accuracy"], 4),
        "prior_steps": prior_config["train"]["steps"],
        "prior_seconds": run_seconds(prior),
        "prior_factors": prior_config["model"]["factors"],
        "bits_per_code": round(lik["bits_per_code"], 4),
        "fid_samples_vs_test": round(frechet(s, "samples_vs_test"), 3),
        "fid_ratio_to_floor": round(frechet(s, "samples_vs_test") / frechet(s, "recon_vs_test"), 3),
        "fid_noise": round(frechet(s, "train_vs_test"), 3),
        "class_accuracy": s.get("class_accuracy"),
        "worst_class_accuracy": s.get("worst_class_accuracy"),
        "per_class_accuracy": s.get("per_class_accuracy"),
        "guidance": s.get("guidance"),
        "classifier_accuracy": report["classifier"]["accuracy"],
        "commands": [
            "vqgen " + shlex.join(c) for c in (train_ae, factorise, encode, train_prior, evaluate, sample) if c
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = ", ".join([*ARMS, *DERIVED])
    parser.add_argument("--arms", default="fsq-240x64,ema16384-128x128", help=f"comma-separated, of {every}")
    parser.add_argument("--default-ae-steps", type=int, default=3000, help="train-ae --steps of every arm")
    parser.add_argument("--ae-steps-of", default="", help="per-arm steps, e.g. 'ema16384-128x128=1800'")
    parser.add_argument("--prior-steps", type=int, default=1500, help="train-prior --steps of every arm")
    parser.add_argument("--n", type=int, default=5000, help="samples (and held-out images) for vqgen eval")
    parser.add_argument("--name", default="factorised-cifar10", help="the results file's name")
    parser.add_argument("--reuse", action="store_true", help="keep each stage whose output is newer than its input")
    args = parser.parse_args()
    command = command_line("factorised.py", args)
    args.ae_steps = {k: int(v) for k, v in (p.split("=") for p in args.ae_steps_of.split(",") if p)}
    os.chdir(REPO)
    previous = REPO / "bench" / "results" / f"{args.name}.json"
    rows = json.loads(previous.read_text())["figures"]["arms"] if previous.exists() else {}
    for arm in args.arms.split(","):
        rows[arm] = arm_row(arm, args)
        print(json.dumps({arm: rows[arm]}))
        write_result(args.name, command, {"data": os.path.relpath(CIFAR), "arms": rows})


if __name__ == "__main__":
    main()
