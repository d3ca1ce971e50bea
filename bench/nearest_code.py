"""The nearest-code search at several codebook sizes: vqgen's blocked search against one (N, K) score matrix.

    python bench/nearest_code.py --sizes 512,2048,8192,16384

Both find argmin_k ‖z − e_k‖² for N = `--rows` random vectors of `--dim` dimensions (a CIFAR-10 batch of 64 images
at 8×8 codes is 4,096): `one matrix` builds the whole (N, K) matrix with one addmm and takes its argmin (vqgen's
search before blocking); `blocked` is vqgen.quantize.nearest_code. Medians of `--repeats` timings, after a warm-up,
and a check that both give the same indices. Writes bench/results/nearest-code.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vqgen.quantize import nearest_code

from common import command_line, write_result


def one_matrix(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return torch.addmm((codebook * codebook).sum(1), z, codebook.t(), beta=1.0, alpha=-2.0).argmin(1)


def median_ms(search, z: torch.Tensor, codebook: torch.Tensor, repeats: int) -> float:
    search(z, codebook)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        search(z, codebook)
        timings.append(time.perf_counter() - start)
    return 1000 * statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,2048,8192,16384", help="codebook sizes K, comma-separated")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    command = command_line("nearest_code.py", args)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for k in (int(v) for v in args.sizes.split(",")):
        z = torch.randn(args.rows, args.dim, generator=generator)
        codebook = torch.randn(k, args.dim, generator=generator)
        same = bool(torch.equal(nearest_code(z, codebook), one_matrix(z, codebook)))
        before = median_ms(one_matrix, z, codebook, args.repeats)
        after = median_ms(nearest_code, z, codebook, args.repeats)
        rows.append(
            {"codebook_size": k, "one_matrix_ms": round(before, 1), "blocked_ms": round(after, 1), "same": same}
        )
        print(rows[-1])
    write_result("nearest-code", command, {"rows": args.rows, "dim": args.dim, "sizes": rows})


if __name__ == "__main__":
    main()
