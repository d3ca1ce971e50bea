"""Stage two on MNIST codes: held-out bits per image of the PixelCNN and the Transformer (PixelAtt) at about the
same parameter count and the same CPU-time budget, tokens/s in training, and the unigram entropy of the codes.

    python bench/priors.py --ae runs/bench/ae-ema [--minutes 10] [--archs transformer,pixelcnn] [--name priors]

Each architecture is first timed for a few steps; its step count is then set to fill the budget, so both get the
same wall-clock time on this machine. The codes come from `vqgen encode` of the given autoencoder. Writes
bench/results/<name>.json; paths are relative to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common import REPO, command_line, last_metrics, mean_rate, vqgen, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ae", default="runs/bench/ae-ema")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--archs", default="transformer,pixelcnn")
    parser.add_argument("--name", default="priors")
    args = parser.parse_args()
    command = command_line("priors.py", args)  # --archs and --name too: they pick the rows and the file
    os.chdir(REPO)
    codes = REPO / "runs" / "bench" / "mnist-codes.safetensors"
    if not codes.exists() or codes.stat().st_mtime < (Path(args.ae) / "model.safetensors").stat().st_mtime:
        vqgen("encode", "--ae", args.ae, "--out", codes)

    from vqgen.codes import load_codes
    from vqgen.metrics import entropy_bits

    loaded = load_codes(codes)
    counts = torch.bincount(loaded.train_codes.flatten(), minlength=loaded.codebook_size)
    unigram = entropy_bits(counts)
    m2 = loaded.grid_size**2
    rows = []
    for arch in args.archs.split(","):
        probe = REPO / "runs" / "bench" / f"probe-{arch}"
        seconds, _ = vqgen(
            "train-prior",
            "--codes",
            codes,
            "--arch",
            arch,
            "--steps",
            "60",
            "--batch-size",
            "64",
            "--log-every",
            "20",
            "--eval-every",
            "0",
            "--out",
            probe,
            "--force",
        )
        codes_per_s = mean_rate(probe, "code_per_s")
        steps_per_s = codes_per_s / (64 * m2)  # batches of 64 grids
        steps = max(100, int(args.minutes * 60 * steps_per_s))
        run = REPO / "runs" / "bench" / f"prior-{arch}"
        flags = [
            "train-prior",
            "--codes",
            str(codes),
            "--arch",
            arch,
            "--steps",
            str(steps),
            "--batch-size",
            "64",
            "--eval-every",
            "1000",
            "--out",
            str(run),
            "--force",
        ]
        seconds, _ = vqgen(*flags)
        test = last_metrics(run, "test")
        config = json.loads((run / "config.json").read_text())
        row = {
            "arch": arch,
            "parameters": config["parameters"],
            "steps": steps,
            "seconds": round(seconds, 1),
            "codes_per_s": round(mean_rate(run, "code_per_s")),
            "bits_per_code": round(test["bits_per_code"], 4),
            "bits_per_image": round(test["bits_per_image"], 1),
            "command": "vqgen " + " ".join(flags),
        }
        print(row)
        rows.append(row)
    figures = {
        "unigram_bits_per_code": round(unigram, 4),
        "unigram_bits_per_image": round(unigram * m2, 1),
        "codes": str(codes),
        "runs": rows,
    }
    write_result(args.name, command, figures)


if __name__ == "__main__":
    main()
