"""fp32 against bf16 autocast on this machine: the matmul peak, each network's training throughput, and quality.

    python bench/precision.py [--speed-steps 200] [--quality ae|both] [--no-speed]

Speed: a 2048² `torch.mm` timed in each dtype (the machine's peak), then `train-ae` (MNIST, default flags) and
`train-prior` with each architecture on MNIST codes, each for --speed-steps steps in fp32 and in bf16; the img/s or
codes/s is the mean over the log windows after the first. The FLOPs of one training step (torch's FlopCounterMode,
forward and backward) times that rate give the achieved FLOP/s, set against the matmul peak of the same dtype.
`--precision auto` (vqgen.device.auto_precision) follows these ratios: bf16 where it wins on this kind of CPU.

Quality (--quality ae, 6 minutes on 2 cores; --quality prior, about 40 for both architectures; both: the two): both
stages at the default budgets on MNIST, in fp32 and in bf16 from the same seed: held-out PSNR of the autoencoder,
held-out bits per code of each prior (--archs) on one set of codes, the fp32 autoencoder's. The target is
|ΔPSNR| ≤ 0.2 dB and |Δbits/code| ≤ 0.02.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import torch

from common import REPO, SHARED, command_line, last_metrics, matmul_peak, mean_rate, vqgen, write_result


def flops_per_example(network: str, run: Path, batch: int = 64) -> float:
    """FLOPs of one training step (forward and backward, counted by torch's FlopCounterMode) per image or code grid,
    for the model in run folder `run`."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu = torch.device("cpu")
    if network == "autoencoder":
        from vqgen.autoencoder import load_autoencoder
        from vqgen.vqvae import reconstruction_loss

        model, _ = load_autoencoder(run, cpu)
        n = model.cfg.image_size
        x = torch.rand(batch, model.cfg.channels, n, n) * 2 - 1
        model.train()
        with FlopCounterMode(display=False) as counter:
            recon, vq = model(x)
            (reconstruction_loss(recon, x) + vq.loss).backward()
    else:
        from vqgen.priors import code_cross_entropy
        from vqgen.priors.training import load_prior

        model, _ = load_prior(run, cpu)
        m, k = model.cfg.grid_size, model.cfg.codebook_size
        codes = torch.randint(0, k, (batch, m, m))
        labels = torch.randint(0, model.cfg.num_classes, (batch,)) if model.cfg.num_classes else None
        model.train()
        with FlopCounterMode(display=False) as counter:
            code_cross_entropy(model(codes, labels), codes).backward()
    return counter.get_total_flops() / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument(
        "--quality",
        choices=("none", "ae", "prior", "both"),
        default="none",
        help="stages to compare at their default budgets (prior: on the codes an earlier --quality ae left)",
    )
    parser.add_argument("--archs", default="transformer,pixelcnn", help="priors for --quality prior|both")
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput part")
    parser.add_argument("--name", default="precision")
    args = parser.parse_args()
    command = command_line("precision.py", args)
    os.chdir(REPO)
    base = Path("runs") / "bench" / "precision"
    root = ["--data-root", os.path.relpath(SHARED)]
    figures: dict = {"matmul_gflops": {}, "speed": [], "quality": []}
    codes_q = base / "codes-fp32.safetensors"
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        figures["matmul_gflops"][name] = round(matmul_peak(dtype) / 1e9, 1)
        print(name, "matmul", figures["matmul_gflops"][name], "GFLOP/s", flush=True)

    codes = Path("runs") / "bench" / "mnist" / "codes.safetensors"
    if not codes.exists():
        raise SystemExit(f"{codes} is missing: run python bench/datasets.py --data mnist first")
    log = ["--log-every", str(max(1, args.speed_steps // 8)), "--save-every", "0", "--force"]
    networks = {
        "autoencoder": ["train-ae", "--data", "mnist", *root],
        "transformer": ["train-prior", "--codes", str(codes), "--arch", "transformer"],
        "pixelcnn": ["train-prior", "--codes", str(codes), "--arch", "pixelcnn"],
    }
    for network, flags in networks.items() if not args.no_speed else ():
        rates = {}
        for precision in ("fp32", "bf16"):
            run = base / f"speed-{network}-{precision}"
            cmd = [*flags, "--steps", str(args.speed_steps), *log, "--out", str(run), "--precision", precision]
            vqgen(*cmd)
            unit = "img_per_s" if network == "autoencoder" else "code_per_s"
            rates[precision] = mean_rate(run, unit)
            # codes/s counts every code of a grid: per grid, divide by m²
            per_row = (
                1
                if network == "autoencoder"
                else json.loads((run / "config.json").read_text())["model"]["grid_size"] ** 2
            )
            flops = flops_per_example(network, run)
            achieved = flops * rates[precision] / per_row
            figures["speed"].append(
                {
                    "network": network,
                    "precision": precision,
                    unit: round(rates[precision], 1),
                    "gflop_per_example": round(flops / 1e9, 4),
                    "achieved_gflops": round(achieved / 1e9, 1),
                    "percent_of_matmul_peak": round(100 * achieved / 1e9 / figures["matmul_gflops"][precision], 1),
                    "command": cmd,
                }
            )
        ratio = rates["bf16"] / rates["fp32"]
        figures["speed"].append({"network": network, "bf16_over_fp32": round(ratio, 3)})
        print(network, {k: round(v) for k, v in rates.items()}, f"bf16/fp32 {ratio:.2f}", flush=True)

    if args.quality in ("ae", "both"):
        for precision in ("fp32", "bf16"):
            ae = base / f"ae-{precision}"
            ae_cmd = ["train-ae", "--data", "mnist", *root, "--out", str(ae), "--force", "--precision", precision]
            ae_seconds, _ = vqgen(*ae_cmd)
            if precision == "fp32":
                vqgen("encode", "--ae", str(ae), *root, "--out", str(codes_q))
            row = {"precision": precision, "psnr": round(last_metrics(ae, "test")["psnr"], 3)}
            row |= {"ae_seconds": round(ae_seconds, 1), "commands": [ae_cmd]}
            print(row, flush=True)
            figures["quality"].append(row)
        fp32, bf16 = figures["quality"]
        figures["quality_delta"] = {"psnr_db": round(bf16["psnr"] - fp32["psnr"], 3)}
    if args.quality in ("prior", "both"):
        if not codes_q.exists():
            raise SystemExit(f"{codes_q} is missing: run --quality ae first")
        # every prior trains on one set of codes (the fp32 autoencoder's), so only its own precision differs
        figures["prior_quality"] = []
        for arch in args.archs.split(","):
            bits = {}
            for precision in ("fp32", "bf16"):
                prior = base / f"prior-{arch}-{precision}"
                cmd = ["train-prior", "--codes", str(codes_q), "--arch", arch, "--out", str(prior), "--force"]
                cmd += ["--precision", precision]
                seconds, _ = vqgen(*cmd)
                bits[precision] = last_metrics(prior, "test")["bits_per_code"]
                row = {"arch": arch, "precision": precision, "bits_per_code": round(bits[precision], 4)}
                row |= {"prior_seconds": round(seconds, 1), "command": "vqgen " + shlex.join(cmd)}
                print(row, flush=True)
                figures["prior_quality"].append(row)
            delta = round(bits["bf16"] - bits["fp32"], 4)
            figures.setdefault("quality_delta", {})[f"bits_per_code_{arch}"] = delta
    print(figures.get("quality_delta"))
    write_result(args.name, command, figures)


if __name__ == "__main__":
    main()
