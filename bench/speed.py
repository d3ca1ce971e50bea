"""Training throughput of stage one on MNIST (img/s): fp32, bf16 and --compile, in 1 process or 2 under torchrun.

    python bench/speed.py [--steps 200] [--configs fp32,bf16,compile] [--procs 1,2] [--name speed]
    python bench/speed.py --levers [--steps 60] [--repeats 3] [--name speed-levers]

--levers times the training step itself in this process, for the autoencoder and the PixelCNN prior at the MNIST
defaults, in the precision `--precision auto` picks here: as vqgen trains them, then with channels_last weights and
inputs, with AdamW's fused kernel, with both, and at twice the batch. Each variant runs --steps timed steps after 5
warm-up steps, --repeats times in turn (A B C A B C ...), and reports the median rate, so that drift in the machine's
speed falls on every variant alike. Writes bench/results/<name>.json: speed-levers.json with --levers, speed.json
without, unless --name says otherwise.

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

from common import REPO, SHARED, command_line, last_metrics, mean_rate, write_result

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


LEVERS = {
    "as trained": {},
    "channels_last": {"channels_last": True},
    "fused AdamW": {"fused": True},
    "channels_last + fused AdamW": {"channels_last": True, "fused": True},
    "batch ×2": {"batch": 2},
}


def lever_rate(network: str, steps: int, channels_last=False, fused=False, batch=1) -> float:
    """Examples per second of `steps` training steps of `network` (after 5 untimed ones), in this process."""
    import torch

    from vqgen.device import autocast, resolve_precision
    from vqgen.priors import PriorConfig, build_prior, code_cross_entropy
    from vqgen.vqvae import VQVAE, AEConfig, reconstruction_loss

    torch.manual_seed(0)
    if network == "autoencoder":
        model = VQVAE(AEConfig(image_size=28, channels=1, kmeans_init=False))
        inputs = torch.rand(64 * batch, 1, 28, 28) * 2 - 1

        def loss_of(model, x):
            recon, vq = model(x)
            return reconstruction_loss(recon, x) + vq.loss

    else:
        model = build_prior(PriorConfig(arch="pixelcnn", num_classes=10))
        inputs = torch.randint(0, 512, (64 * batch, 7, 7))
        labels = torch.randint(0, 10, (64 * batch,))

        def loss_of(model, codes):
            return code_cross_entropy(model(codes, labels), codes)

    precision = resolve_precision("auto", torch.device("cpu"), network)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if fused else None)
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss = loss_of(model, inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * inputs.shape[0] / (time.perf_counter() - start)


def levers(steps: int, repeats: int) -> list[dict]:
    import statistics

    import torch

    from vqgen.device import resolve_precision

    rows = []
    for network in ("autoencoder", "pixelcnn"):
        rates: dict[str, list[float]] = {name: [] for name in LEVERS}
        for _ in range(repeats):
            for name, options in LEVERS.items():
                rates[name].append(lever_rate(network, steps, **options))
        base = statistics.median(rates["as trained"])
        for name, values in rates.items():
            rate = statistics.median(values)
            row = {
                "network": network,
                "variant": name,
                "per_s": round(rate, 1),
                "over_as_trained": round(rate / base, 3),
            }
            row["precision"] = resolve_precision("auto", torch.device("cpu"), network)
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--levers", action="store_true", help="time the step's levers in-process instead")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the --levers variants")
    parser.add_argument("--configs", default="fp32,bf16,compile", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--name", default=None, help="the results file's name (default: speed, or speed-levers)")
    args = parser.parse_args()
    command = command_line("speed.py", args)  # flags bare: `--levers False` would not parse
    if args.levers:
        write_result(args.name or "speed-levers", command, levers(args.steps, args.repeats))
        return
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
    write_result(args.name or "speed", command, rows)


if __name__ == "__main__":
    main()
