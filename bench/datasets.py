"""The README's results row for one data set: both stages trained, then `vqgen eval` and a timed `sample --n 64`.

    python bench/datasets.py --data fashion-mnist --ae-steps 1500 --prior-steps 1000 --prior-batch 64
    python bench/datasets.py --data shapes            # the demo: every training flag at its default
    python bench/datasets.py --data mnist --ae-steps 3000 --ae-extra '--codebook-size 512 --ema-weights 0' \
        --name dataset-mnist-k512                     # MNIST's previous preset, beside the present one

Writes bench/results/<name>.json (default dataset-<data>). Runs go to runs/bench/<stem>/{ae,codes.safetensors,prior},
<stem> being the name without "dataset-" (so <data> by default); `vqgen eval --prior` writes eval.json (held-out
PSNR, codes used, bits per image, Fréchet distance of the samples with its reconstruction floor, class accuracy);
the reconstruction and sample grids are copied to docs/img/<stem>-recon.png and docs/img/<stem>-samples.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from pathlib import Path

from common import REPO, SHARED, beyond_texture, command_line, frechet, last_metrics, vqgen, write_result
from sampling import timed_sample


def _folder_seconds(run: Path) -> float:
    """How long a reused run trained: from config.json (written at the start) to the last metrics line."""
    return (run / "metrics.jsonl").stat().st_mtime - (run / "config.json").stat().st_mtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="shapes", help="data set name, as for vqgen train-ae --data")
    parser.add_argument("--ae-steps", type=int, help="train-ae --steps (default: train-ae's own)")
    parser.add_argument("--ae-extra", help="more train-ae flags, e.g. '--codebook-size 512 --ema-weights 0'")
    parser.add_argument("--prior-steps", type=int, help="train-prior --steps (default: train-prior's own)")
    parser.add_argument("--prior-batch", type=int, help="train-prior --batch-size (default: train-prior's own)")
    parser.add_argument("--ae", help="reuse this finished autoencoder run instead of training one")
    parser.add_argument("--prior", help="reuse this finished prior run (of --ae's codes) instead of training one")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs in runs/bench/<data>/")
    parser.add_argument("--n", type=int, default=5000, help="samples for vqgen eval (classes uniform)")
    parser.add_argument("--name", help="the results file's name (default: dataset-<data>)")
    args = parser.parse_args()
    command = command_line("datasets.py", args)
    os.chdir(REPO)  # relative paths, so the recorded commands run from any checkout
    name = args.name or f"dataset-{args.data}"
    stem = name.removeprefix("dataset-")  # runs/bench/<data> and docs/img/<data>-*.png by default
    base = Path("runs") / "bench" / stem
    root = ["--data-root", os.path.relpath(SHARED)] if args.data != "shapes" else []
    steps: dict[str, float] = {}

    ae = base / "ae" if args.ae is None else Path(args.ae)
    ae_flags = ["train-ae", "--data", args.data, *root, "--out", str(ae), "--force"]
    ae_flags += ["--steps", str(args.ae_steps)] if args.ae_steps else []
    ae_flags += shlex.split(args.ae_extra or "")
    if args.ae is None and not (args.reuse and (ae / "model.safetensors").exists()):
        steps["train-ae"], _ = vqgen(*ae_flags)
    elif args.ae is None:
        steps["train-ae (reused: its run folder's file times)"] = _folder_seconds(ae)

    codes = base / "codes.safetensors"
    encode_flags = ["encode", "--ae", str(ae), *root, "--out", str(codes)]
    if args.prior is None and not (args.reuse and codes.exists()):
        steps["encode"], _ = vqgen(*encode_flags)

    prior = base / "prior" if args.prior is None else Path(args.prior)
    prior_flags = ["train-prior", "--codes", str(codes), "--out", str(prior), "--force"]
    prior_flags += ["--steps", str(args.prior_steps)] if args.prior_steps else []
    prior_flags += ["--batch-size", str(args.prior_batch)] if args.prior_batch else []
    if args.prior is None and not (args.reuse and last_metrics(prior, "test")):
        steps["train-prior"], _ = vqgen(*prior_flags)
    elif args.prior is None:
        steps["train-prior (reused: its run folder's file times)"] = _folder_seconds(prior)

    eval_flags = ["eval", "--prior", str(prior), *root, "--n", str(args.n)]
    evaluated = prior / "eval.json"
    fresh = evaluated.exists() and evaluated.stat().st_mtime > (prior / "model.safetensors").stat().st_mtime
    if not (args.reuse and fresh):
        steps["eval"], _ = vqgen(*eval_flags)
    report = json.loads(evaluated.read_text())
    # samples drawn without naming a class: labels from the training frequencies, at the prior's default guidance
    uncond_flags, unconditional = [], {}
    if report["runs"]["prior"]["class_conditional"] and frechet(report["samples"], "samples_vs_test") is not None:
        uncond_out = prior / "eval-unconditional.json"
        uncond_flags = [
            "eval",
            "--prior",
            str(prior),
            *root,
            "--n",
            str(args.n),
            "--class",
            "none",
            "--out",
            str(uncond_out),
        ]
        steps["eval --class none"], _ = vqgen(*uncond_flags)
        unconditional = json.loads(uncond_out.read_text())["samples"]

    samples = base / "samples"
    start = time.perf_counter()
    timing = min(
        (timed_sample(str(prior), out_dir=str(samples)) for _ in range(3)), key=lambda r: r["process_seconds"]
    )  # best of 3, as in bench/sampling.py
    steps["sample"] = (time.perf_counter() - start) / 3
    # the picture: 64 samples in a square grid, or 8 per class in rows where there are more classes than rows
    num_classes = report["data"]["num_classes"]
    picture_n = 8 * num_classes if num_classes > 8 else 64
    picture = base / "samples-grid"
    vqgen("sample", "--n", str(picture_n), "--prior", str(prior), "--out", str(picture))

    docs = Path("docs/img")
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ae / "recon.png", docs / f"{stem}-recon.png")
    shutil.copyfile(picture / "grid.png", docs / f"{stem}-samples.png")

    rec, nll, smp = report["reconstruction"], report["likelihood"], report["samples"]
    ae_config = json.loads((ae / "config.json").read_text())
    prior_config = json.loads((prior / "config.json").read_text())
    figures = {
        "data": args.data,
        "ae_steps": ae_config["train"]["steps"],
        "prior_steps": prior_config["train"]["steps"],
        "prior_batch": prior_config["train"]["batch_size"],
        "psnr": round(rec["psnr"], 2),
        "ssim": round(rec["ssim"], 4),
        "codes_used": round(rec["codes_used"], 4),
        "perplexity": round(rec["perplexity"], 1),
        "codebook_size": rec["codebook_size"],
        "held_out_images": rec["n"],
        "bits_per_code": round(nll["bits_per_code"], 3),
        "bits_per_image": round(nll["bits_per_image"], 1),
        "unigram_bits_per_image": round(nll["unigram_bits_per_image"], 1),
        "samples": smp["n"],
        "fid_samples": round(frechet(smp, "samples_vs_test", float("nan")), 2),
        "fid_recon_floor": round(frechet(smp, "recon_vs_test", float("nan")), 2),
        "fid_train_vs_test": round(frechet(smp, "train_vs_test", float("nan")), 2),
        "guidance": smp.get("guidance"),
        "class_accuracy": smp.get("class_accuracy"),
        "worst_class_accuracy": smp.get("worst_class_accuracy"),
        "fid_unconditional": round(frechet(unconditional, "samples_vs_test"), 2) if unconditional else None,
        "recon_class_accuracy": smp.get("recon_class_accuracy"),
        "classifier_test_accuracy": report.get("classifier", {}).get("accuracy"),
        "distinct_fraction": smp["distinct_fraction"],
        "train_copy_fraction": smp["train_copy_fraction"],
        **beyond_texture(report),
        "sample_n64": timing,
        "wall_seconds": {k: round(v, 1) for k, v in steps.items()},
        "commands": [
            "vqgen " + shlex.join(ae_flags) if args.ae is None else f"(reused {args.ae})",
            "vqgen " + shlex.join(encode_flags) if args.prior is None else "",
            "vqgen " + shlex.join(prior_flags) if args.prior is None else f"(reused {args.prior})",
            "vqgen " + shlex.join(eval_flags),
            "vqgen " + shlex.join(uncond_flags) if uncond_flags else "",
            f"vqgen sample --n 64 --prior {prior} --out {samples}",
            f"vqgen sample --n {picture_n} --prior {prior} --out {picture}",
        ],
    }
    write_result(name, command, figures)


if __name__ == "__main__":
    main()
