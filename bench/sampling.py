"""Sampling speed: `vqgen sample --n 64` end to end, codes/s, and the key/value cache's speed-up.

    python bench/sampling.py --prior runs/bench/prior-transformer [--prior runs/bench/prior-pixelcnn]

For each prior: the whole process's wall time (start-up included) and the sampling and decoding seconds that
`sample` prints; for a Transformer also the same with --no-cache. Against the limit: the FLOPs of one forward pass
over a whole grid per sample (torch's FlopCounterMode; twice that under classifier-free guidance, which runs the
conditional and the unconditional pass), the FLOP/s that the codes/s amount to at that cost, and its share of this
machine's fp32 matmul peak (a 2048² torch.mm timed in the same run). Cached sampling of a Transformer does about one
forward pass of work per sample, so this share says how far sampling is from the machine's limit; a PixelCNN has no
cache and recomputes the grid for each of its m·m codes, so its real work is m·m times the figure.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from common import REPO, matmul_peak, vqgen, write_result


def forward_flops_per_sample(prior: str, batch: int = 64) -> tuple[float, float]:
    """FLOPs of one forward pass over a whole grid per sample, and the guidance scale sampling uses by default."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vqgen.priors.training import load_prior

    model, _ = load_prior(prior, "cpu")
    m, k = model.cfg.grid_size, model.cfg.codebook_size
    codes = torch.randint(0, k, (batch, m, m))
    labels = torch.randint(0, model.cfg.num_classes, (batch,)) if model.cfg.num_classes else None
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(codes, labels)
    guidance = json.loads(Path(prior, "config.json").read_text()).get("sampling", {}).get("guidance") or 0.0
    return counter.get_total_flops() / batch, guidance


def timed_sample(prior: str, *extra: str, out_dir: str | None = None) -> dict:
    out_dir = out_dir or str(REPO / "runs" / "bench" / "samples")
    start = time.perf_counter()
    _, out = vqgen("sample", "--n", "64", "--prior", prior, "--out", out_dir, *extra)
    wall = time.perf_counter() - start
    match = re.search(r"sampling ([\d.]+) s \(([\d,]+) codes/s[^)]*\), decoding ([\d.]+) s", out)
    sampling, rate, decoding = float(match[1]), float(match[2].replace(",", "")), float(match[3])
    return {
        "process_seconds": round(wall, 2),
        "sampling_seconds": sampling,
        "decoding_seconds": decoding,
        "codes_per_s": rate,
        "sample_and_decode_seconds": round(sampling + decoding, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prior", action="append", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--name", default="sampling", help="the results file's name")
    args = parser.parse_args()
    rows = []
    import torch

    peak = matmul_peak(torch.float32)
    for prior in args.prior:
        flops, guidance = forward_flops_per_sample(prior)
        passes = 2 if guidance and guidance != 1.0 else 1
        grid = json.loads(Path(prior, "config.json").read_text())["model"]["grid_size"] ** 2
        variants = [("cached", ())]
        if "transformer" in open(f"{prior}/config.json").read():
            variants.append(("uncached", ("--no-cache",)))
        for name, extra in variants:
            runs = [timed_sample(prior, *extra) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["sample_and_decode_seconds"])
            rows.append(
                {
                    "prior": prior,
                    "variant": name,
                    **best,
                    "forward_gflop_per_sample": round(flops / 1e9, 4),
                    "passes_per_code": passes,
                    "achieved_gflops": round(best["codes_per_s"] / grid * flops * passes / 1e9, 2),
                    "share_of_fp32_matmul_peak": round(best["codes_per_s"] / grid * flops * passes / peak, 4),
                    "fp32_matmul_peak_gflops": round(peak / 1e9, 1),
                    "command": f"vqgen sample --n 64 --prior {prior} {' '.join(extra)}".strip(),
                }
            )
            print(rows[-1])
    command = "python bench/sampling.py " + " ".join(f"--prior {p}" for p in args.prior) + f" --name {args.name}"
    write_result(args.name, command, rows)


if __name__ == "__main__":
    main()
