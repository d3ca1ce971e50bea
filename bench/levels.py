"""One level of codes against two (VQ-VAE-2's top grid over the bottom one) on 64×64 images, at the same budget.

    python bench/levels.py --ae-minutes 8 --prior-minutes 8 --n 5000

The images are CIFAR-10 (../shared/datasets/CIFAR10/cifar10-train-40k.npz) upscaled to 64×64 by vqgen's loader
(`--image-size 64`): real photographs, but with no detail above 32 px, which the report says. Both arms use
`--downsample 4` (a 16×16 bottom grid; the two-level arm adds an 8×8 top grid), the same minutes of autoencoder
training, and the same minutes of prior training: the one-level prior gets them all, the two-level arm splits them
between its top prior (a quarter: 64 codes) and its bottom prior (three quarters: 256 codes given the top).
`vqgen eval --n N` then measures the reconstructions (PSNR, their Fréchet distance: the floor under samples), the
priors' held-out bits per image (top + bottom for two levels) and the samples' Fréchet distance and class accuracy,
in the features of a classifier trained on the 64×64 images for --classifier-steps steps (shorter than the default,
whose 12 epochs cost half an hour at this size; both arms share it). Writes bench/results/levels-64.json and
docs/img/levels-64-<arm>-{recon,samples}.png.
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
    parser.add_argument("--ae-minutes", type=float, default=8.0, help="train-ae --minutes of each arm")
    parser.add_argument("--prior-minutes", type=float, default=8.0, help="prior minutes of each arm (split 1:3)")
    parser.add_argument("--image-size", type=int, default=64, help="the images' side after upscaling")
    parser.add_argument("--n", type=int, default=5000, help="samples for vqgen eval (held-out images: at most 4,000)")
    parser.add_argument("--classifier-steps", type=int, default=600, help="eval classifier's training steps")
    parser.add_argument("--arms", default="one,two", help="which arms to run")
    parser.add_argument("--name", default="levels-64", help="the results file's name")
    args = parser.parse_args()
    command = command_line("levels.py", args)
    os.chdir(REPO)
    data = os.path.relpath(CIFAR)
    rows = {}
    for arm in args.arms.split(","):
        run = Path("runs") / "bench" / args.name / arm
        ae, codes, prior = run / "ae", run / "codes.safetensors", run / "prior"
        levels = ["--levels", "2"] if arm == "two" else []
        train_ae = ["train-ae", "--data", data, "--image-size", str(args.image_size), "--minutes", str(args.ae_minutes)]
        # K = 512 without the adversarial term, as measured: CIFAR-10's preset would otherwise apply to the file
        train_ae += ["--codebook-size", "512", "--adversarial", "0", "--out", str(ae), "--force", *levels]
        commands = [train_ae, ["encode", "--ae", str(ae), "--out", str(codes)]]
        if arm == "two":
            top, bottom = round(args.prior_minutes / 4, 2), round(args.prior_minutes * 3 / 4, 2)
            commands += [
                ["train-prior", "--codes", str(codes), "--level", "top", "--minutes", str(top), "--out", str(prior)],
                ["train-prior", "--codes", str(codes), "--level", "bottom", "--minutes", str(bottom)]
                + ["--out", f"{prior}-bottom"],
            ]
        else:
            # code by code, as levels-64.json measured it (the size rule now reads a 16×16 grid as 2×2 patches)
            commands += [
                [
                    "train-prior",
                    "--codes",
                    str(codes),
                    "--minutes",
                    str(args.prior_minutes),
                    "--out",
                    str(prior),
                    "--patch",
                    "1",
                ]
            ]
        for c in commands[2:]:
            c.append("--force")
        evaluate = ["eval", "--prior", str(prior), "--n", str(args.n), "--classifier-steps", str(args.classifier_steps)]
        sample = ["sample", "--prior", str(prior), "--n", "80", "--out", str(run / "samples"), "--class", "all"]
        seconds = {}
        for c in commands:
            seconds[c[0] + (f"-{c[c.index('--level') + 1]}" if "--level" in c else "")], _ = vqgen(*c)
        vqgen(*evaluate)
        vqgen(*sample)
        Path("docs/img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ae / "recon.png", Path("docs/img") / f"{args.name}-{arm}-recon.png")
        shutil.copyfile(run / "samples" / "grid.png", Path("docs/img") / f"{args.name}-{arm}-samples.png")
        report = json.loads((prior / "eval.json").read_text())
        rec, nll, s = report["reconstruction"], report["likelihood"], report["samples"]
        ae_config = json.loads((ae / "config.json").read_text())
        rows[arm] = {
            "levels": 2 if arm == "two" else 1,
            "grids": "8x8 + 16x16" if arm == "two" else "16x16",
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "ae_steps": ae_config["train"]["steps"],
            "psnr": round(rec["psnr"], 2),
            "ssim": round(rec["ssim"], 4),
            "perplexity": round(rec["perplexity"], 1),
            "perplexity_top": round(rec["perplexity_top"], 1) if "perplexity_top" in rec else None,
            "fid_recon_vs_test": round(frechet(s, "recon_vs_test"), 3),
            "fid_train_vs_test": round(frechet(s, "train_vs_test"), 3),
            "bits_per_image": round(nll["bits_per_image"], 1),
            "fid_samples_vs_test": round(frechet(s, "samples_vs_test"), 3),
            "class_accuracy": s.get("class_accuracy"),
            "recon_class_accuracy": s.get("recon_class_accuracy"),
            "classifier_accuracy": report["classifier"]["accuracy"],
            "n": s["n"],
            "guidance": s.get("guidance"),
            "commands": ["vqgen " + shlex.join(c) for c in (*commands, evaluate, sample)],
        }
        print(json.dumps({arm: rows[arm]}), flush=True)
    write_result(args.name, command, {"data": f"{data} upscaled to {args.image_size}x{args.image_size}", "arms": rows})


if __name__ == "__main__":
    main()
