"""Training throughput of stage one on MNIST (img/s): fp32, bf16 and --compile, in 1 process or 2 under torchrun.

    python bench/speed.py [--steps 200] [--configs fp32,bf16,compile] [--procs 1,2]

One process uses every core (OMP_NUM_THREADS = cores); N processes under torchrun get cores / N threads each, so
both use the whole machine. img/s is the mean over the log windows after the first (warm-up and compilation);
it counts the global batch. Every other train-ae setting is at its default (batch 128, hidden 128, K = 512).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from common import REPO, SHARED, last_metrics, mean_rate, write_result

CONFIGS = {"fp32": [], "bf16": ["--precision", "bf16"], "compile": ["--compile"]}


def launch(procs: int, flags: list[str], threads: int) -> tuple[list[str], float]:
    """Run `vqgen train-ae FLAGS` in `procs` processes; returns the command and its wall seconds."""
    if procs == 1:
        cmd = [sys.executable, "-m", "vqgen", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "vqgen", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return cmd, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--configs", default="fp32,bf16,compile", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--name", default="speed")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for config in args.configs.split(","):
        for procs in (int(p) for p in args.procs.split(",")):
            threads = max(1, cores // procs)
            run = REPO / "runs" / "bench" / f"speed-{config}-{procs}p"
            flags = ["train-ae", "--data", "mnist", "--data-root", str(SHARED), "--steps", str(args.steps)]
            flags += ["--log-every", str(max(1, args.steps // 10)), "--save-every", "0"]
            flags += ["--out", str(run), "--force", *CONFIGS[config]]
            cmd, seconds = launch(procs, flags, threads)
            row = {
                "config": config,
                "processes": procs,
                "threads_per_process": threads,
                "steps": args.steps,
                "img_per_s": round(mean_rate(run, "img_per_s"), 1),
                "seconds": round(seconds, 1),  # wall time, data loading, compilation and final evaluation included
                "psnr": round(last_metrics(run, "test")["psnr"], 2),
                "command": f"OMP_NUM_THREADS={threads} " + shlex.join(["python", *cmd[1:]]),
            }
            print(row)
            rows.append(row)
    write_result(
        args.name,
        "python bench/speed.py " + " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in vars(args).items()),
        rows,
    )


if __name__ == "__main__":
    main()
