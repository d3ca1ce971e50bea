"""Sampling speed: `vqgen sample --n 64` end to end, codes/s, and the key/value cache's speed-up.

    python bench/sampling.py --prior runs/bench/prior-transformer [--prior runs/bench/prior-pixelcnn]

For each prior: the whole process's wall time (start-up included) and the sampling and decoding seconds that
`sample` prints; for a Transformer also the same with --no-cache.
"""

from __future__ import annotations

import argparse
import re
import time

from common import REPO, vqgen, write_result


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
    args = parser.parse_args()
    rows = []
    for prior in args.prior:
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
                    "command": f"vqgen sample --n 64 --prior {prior} {' '.join(extra)}".strip(),
                }
            )
            print(rows[-1])
    write_result("sampling", "python bench/sampling.py " + " ".join(f"--prior {p}" for p in args.prior), rows)


if __name__ == "__main__":
    main()
