"""Stage one on natural images: CIFAR-10 with the reconstruction loss alone against the adversarial option.

    python bench/natural.py    # defaults: --steps 6000 --codebook-size 512 --adversarial 0.1 --adversarial-start 2000
    python bench/natural.py --variants adversarial --adversarial 0.2 --adversarial-start 1600 --adversarial-steps 5600 \
        --feature-matching 0.1 --codebook-size 2048 --prior --name natural-cifar10-k2048    # the CIFAR-10 preset

Trains one autoencoder per variant of --variants (default mse,adversarial) on
../shared/datasets/CIFAR10/cifar10-train-40k.npz (10% held out by vqgen's array-file split) with the same flags
apart from the variant's own, every setting explicit (the file would otherwise take CIFAR-10's preset): --steps
(default 6000; --minutes instead when given) and --codebook-size (default 512) for every variant, `mse` with
--adversarial 0, `adversarial` with --adversarial (default 0.1) from --adversarial-start (default 2000), with
--feature-matching (default 0: off) and for --adversarial-steps steps when given. Then runs `vqgen eval --ae RUN
--n N` on each: held-out PSNR and SSIM, codes used, the reconstructions' Fréchet distance in the eval classifier's
features (with train-vs-held-out images as the noise) and how often a reconstruction keeps its class beside how
often the original is classified right; with --prior also the default prior on each variant's codes and `vqgen eval`
of its samples. Writes bench/results/<name>.json (default natural-cifar10) and
docs/img/cifar10-recon-<name>-<variant>.png (held-out originals over reconstructions; with --prior also
docs/img/cifar10-samples-<name>-<variant>.png).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="train-ae --steps for every variant")
    parser.add_argument("--minutes", type=float, default=None, help="train-ae --minutes instead of --steps")
    parser.add_argument(
        "--adversarial-steps",
        type=int,
        default=None,
        help="--steps of 'adversarial' (default: as the others); --minutes cannot foresee the discriminator's cost",
    )
    parser.add_argument("--feature-matching", type=float, default=0.0, help="--feature-matching of 'adversarial'")
    parser.add_argument("--prior", action="store_true", help="also a prior on each variant's codes, and its samples")
    parser.add_argument("--prior-extra", default="", help="more train-prior flags, e.g. '--minutes 13'")
    parser.add_argument("--adversarial", type=float, default=0.1, help="--adversarial of the adversarial variant")
    parser.add_argument("--adversarial-start", type=int, default=2000, help="its --adversarial-start")
    parser.add_argument("--variants", default="mse,adversarial", help="which variants to run, comma-separated")
    parser.add_argument("--codebook-size", type=int, default=512, help="train-ae --codebook-size of every variant")
    parser.add_argument("--extra", default="", help="more train-ae flags for every variant, e.g. '--downsample 2'")
    parser.add_argument("--name", default="natural-cifar10", help="the results file's name")
    parser.add_argument("--n", type=int, default=5000, help="held-out images for vqgen eval (at most 4,000 exist)")
    parser.add_argument("--reuse", action="store_true", help="keep a variant whose eval.json is newer than its weights")
    args = parser.parse_args()
    command = command_line("natural.py", args)
    os.chdir(REPO)
    data = os.path.relpath(CIFAR)
    # every setting explicit: the file takes CIFAR-10's preset (K = 8192, adversarial) for whatever is left unset
    flags = {
        "mse": ["--adversarial", "0"],
        "adversarial": ["--adversarial", str(args.adversarial), "--adversarial-start", str(args.adversarial_start)]
        + (["--feature-matching", str(args.feature_matching)] if args.feature_matching else []),
    }
    budget = ["--minutes", str(args.minutes)] if args.minutes else ["--steps", str(args.steps)]
    rows = {}
    for variant in args.variants.split(","):
        run = Path("runs") / "bench" / args.name / variant
        own = variant == "adversarial" and args.adversarial_steps
        steps = ["--steps", str(args.adversarial_steps)] if own else budget
        train = ["train-ae", "--data", data, *steps, "--out", str(run), "--force"]
        train += ["--codebook-size", str(args.codebook_size)] + flags[variant] + shlex.split(args.extra)
        evaluate = ["eval", "--ae", str(run), "--n", str(args.n)]
        evaluated, weights = run / "eval.json", run / "model.safetensors"
        if args.reuse and evaluated.exists() and evaluated.stat().st_mtime > weights.stat().st_mtime:
            seconds = (run / "metrics.jsonl").stat().st_mtime - (run / "config.json").stat().st_mtime
        else:
            seconds, _ = vqgen(*train)
            vqgen(*evaluate)
        report = json.loads((run / "eval.json").read_text())
        rec = report["reconstruction"]
        config = json.loads((run / "config.json").read_text())
        rows[variant] = {
            "train_seconds": round(seconds, 1),  # with --reuse: from the run folder's file times
            "steps": config["train"]["steps"],
            "batch_size": config["train"]["batch_size"],
            "grid": "{0}x{0}".format(config["model"]["image_size"] // config["model"]["downsample"]),
            "psnr": round(rec["psnr"], 2),
            "ssim": round(rec["ssim"], 4),
            "codes_used": round(rec["codes_used"], 4),
            "perplexity": round(rec["perplexity"], 1),
            "fid_recon_vs_test": round(frechet(rec, "recon_vs_test"), 3),
            "fid_train_vs_test": round(frechet(rec, "train_vs_test"), 3),
            "recon_class_accuracy": rec["recon_class_accuracy"],
            "original_class_accuracy": rec["original_class_accuracy"],
            "keep_ratio": round(rec["recon_class_accuracy"] / rec["original_class_accuracy"], 4),
            "classifier_accuracy": report["classifier"]["accuracy"],
            "commands": ["vqgen " + shlex.join(train), "vqgen " + shlex.join(evaluate)],
        }
        Path("docs/img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "recon.png", Path("docs/img") / f"cifar10-recon-{args.name}-{variant}.png")
        if args.prior:
            rows[variant]["prior"] = prior_row(
                run,
                args.n,
                args.reuse,
                Path("docs/img") / f"cifar10-samples-{args.name}-{variant}.png",
                shlex.split(args.prior_extra),
            )
        print(json.dumps({variant: rows[variant]}))
    write_result(args.name, command, {"data": str(data), "variants": rows})


def prior_row(ae: Path, n: int, reuse: bool, grid: Path, extra: list[str]) -> dict:
    """The default prior on the autoencoder's codes, `vqgen eval` of its samples, and a grid of 8 per class."""
    codes, prior = ae / "codes.safetensors", ae / "prior"
    encode = ["encode", "--ae", str(ae), "--out", str(codes)]
    train = ["train-prior", "--codes", str(codes), "--out", str(prior), "--force", *extra]
    evaluate = ["eval", "--prior", str(prior), "--n", str(n)]
    evaluated = prior / "eval.json"
    if reuse and evaluated.exists() and evaluated.stat().st_mtime > (prior / "model.safetensors").stat().st_mtime:
        seconds = (prior / "metrics.jsonl").stat().st_mtime - (prior / "config.json").stat().st_mtime
    else:
        vqgen(*encode)
        seconds, _ = vqgen(*train)
        vqgen(*evaluate)
    sample = ["sample", "--prior", str(prior), "--n", "80", "--out", str(ae / "samples"), "--class", "all"]
    vqgen(*sample)
    shutil.copyfile(ae / "samples" / "grid.png", grid)
    report = json.loads(evaluated.read_text())
    s, test = report["samples"], report["likelihood"]
    return {
        "train_seconds": round(seconds, 1),
        "bits_per_code": round(test["bits_per_code"], 4),
        "bits_per_image": round(test["bits_per_image"], 1),
        "fid_samples_vs_test": round(frechet(s, "samples_vs_test"), 3),
        "fid_noise": round(frechet(s, "train_vs_test", float("nan")), 3),
        "class_accuracy": s.get("class_accuracy"),
        "guidance": s.get("guidance"),
        "commands": ["vqgen " + shlex.join(c) for c in (encode, train, evaluate, sample)],
    }


if __name__ == "__main__":
    main()
