"""The GPU path in one short run: both stages on MNIST in fp32, bf16 and fp16, --compile, sampling with and without
the key/value cache, and the same training measured on the CPU of the same machine for the GPU/CPU ratio.

    python bench/gpu_check.py [--steps-scale 1.0] [--n 256] [--out-root runs/bench/gpu-check]
    python bench/gpu_check.py --allow-cpu          # no GPU: the same plan on the CPU, with few steps

Without a CUDA GPU (torch.cuda.is_available() false) it refuses in one line with exit code 2, unless --allow-cpu is
given: that runs the same plan on the CPU with the steps scaled by 0.03 (the fp16 arm in fp32, as fp16 needs a GPU;
the bf16 arms in fp32 too where the CPU has no native bf16) and writes its JSON, gpu-check-cpu.json, into --out-root,
not bench/results/: it checks the script itself and measures nothing.

The plan, every command a `vqgen` process of its own, run folders under --out-root (steps × --steps-scale):

    train-ae   MNIST, 300 steps:  --precision fp32 | bf16 | fp16 --adversarial 0.2 --adversarial-start 100
                                  | bf16 --compile
    encode     the fp32 autoencoder's codes (train and test split)
    train-prior  Transformer 4 × 128 on those codes, 300 steps:  --precision fp32 | bf16 | bf16 --compile
    sample     --n 256 from the fp32 prior: with the key/value cache, with --no-cache; and cached on --device cpu
    CPU        train-ae and train-prior at --device cpu --precision fp32 for 20 steps, for the GPU/CPU ratio

Every training run logs 10 windows (--log-every steps/10) and evaluates once, at the end, on the whole test split;
--save-every 0 and --eval-every 0 keep checkpoints and previews out of the timing. Expected time on one H200: about
4 to 6 minutes, most of it process start-up, the two torch.compile warm-ups and the CPU runs' final evaluations;
under 8 minutes is the target. Not yet measured: no GPU was lent where the script was written.

It writes bench/results/gpu-check.json (through common.write_result: command, commit, machine) with `figures`:

    gpu      torch.cuda.get_device_name, capability, memory, CUDA version, bf16 support
    plan     the steps and --n it ran with
    runs     one row per training run: stage, device, precision asked and run (config.json), compiled (false when
             torch.compile fell back to eager, which vqgen prints as a warning), steps, img_per_s or code_per_s (the
             mean of metrics.jsonl's train windows after the first, so warm-up, k-means and compilation are left
             out), psnr (held-out, train-ae) or bits_per_code (held-out, train-prior), seconds (the whole process:
             start-up, data, compilation and the final evaluation included), finished (the process exited 0; vqgen
             stops a run whose loss or weights turn non-finite), finite (every logged loss and held-out figure is
             finite), error (the last line vqgen printed, when it failed) and the command
    encode   the seconds of `vqgen encode`
    sampling one row per sample run: codes_per_s, sampling and decoding seconds as `vqgen sample` prints them
             (CUDA synchronised), the process's seconds, and the command
    ratios   GPU over CPU (fp32 against fp32, and the fastest GPU run against the CPU's fp32), bf16 and fp16 over
             fp32, compiled over eager bf16, cached over uncached sampling, GPU over CPU sampling
    all_finished, seconds (the whole script)

The exit code is 0 when every run finished with finite figures, 1 otherwise (the JSON is written either way).
Once gpu-check.json is in bench/results/, tests/test_docs.py wants its command as a line of `make bench`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import common
from common import REPO, SHARED, command_line, last_metrics, mean_rate, vqgen, write_result

AE_STEPS, PRIOR_STEPS, CPU_STEPS, ADV_START = 300, 300, 20, 100
CPU_CHECK_SCALE = 0.03  # --allow-cpu without a GPU: a few steps of each run, to check the script, not to measure
CONSOLE = {"COLUMNS": "200"}  # vqgen's console wraps at the terminal's width; keep its lines whole for the parsing


def scaled(steps: int, scale: float, least: int = 4) -> int:
    return max(least, round(steps * scale))


def log_flags(steps: int) -> list[str]:
    """Ten log windows (at least two, so that mean_rate has one after the warm-up window), no checkpoints or
    previews before the end."""
    return ["--log-every", str(max(1, steps // 10)), "--eval-every", "0", "--save-every", "0", "--force"]


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            pass
    return out


def all_finite(run: Path) -> bool:
    """Every logged training loss and every held-out figure is a finite number (False when nothing was logged)."""
    rows = records(run)
    losses = [r.get("loss") for r in rows if r.get("split") == "train"]
    held_out = [v for r in rows if r.get("split") == "test" for k, v in r.items() if k not in ("step", "split")]
    values = losses + held_out
    return bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def last_line(error: SystemExit) -> str:
    lines = [line.strip() for line in str(error.code).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")[:500]


def train(name: str, stage: str, flags: list[str], run: Path, steps: int, device: str, asked: str) -> dict:
    """Run one `vqgen train-ae` / `train-prior` and read its figures; a failed run is recorded, not raised."""
    cmd = [stage, *flags, "--steps", str(steps), *log_flags(steps), "--out", str(run), "--device", device]
    cmd += ["--precision", asked]
    row: dict = {"run": name, "stage": stage, "device": device, "precision_asked": asked, "steps": steps}
    start = time.perf_counter()
    try:
        seconds, out = vqgen(*cmd, env=CONSOLE)
        row["finished"] = True
    except SystemExit as error:
        seconds, out = time.perf_counter() - start, ""
        row |= {"finished": False, "error": last_line(error)}
    row["seconds"] = round(seconds, 1)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    row["precision"] = config.get("train", {}).get("precision")
    if "--compile" in flags:
        row["compiled"] = row["finished"] and "torch.compile failed" not in " ".join(out.split())
    unit = "img_per_s" if stage == "train-ae" else "code_per_s"
    if row["finished"]:
        row[unit] = round(mean_rate(run, unit), 1)
        test = last_metrics(run, "test")
        if stage == "train-ae":
            row["psnr"] = round(test["psnr"], 3) if "psnr" in test else None
            adv = [r["adv_weight"] for r in records(run) if r.get("split") == "train" and "adv_weight" in r]
            if adv:
                row["adv_weight_last"] = round(adv[-1], 4)
        else:
            row["bits_per_code"] = round(test["bits_per_code"], 4) if "bits_per_code" in test else None
    row["finite"] = row["finished"] and all_finite(run)
    row["command"] = "vqgen " + shlex.join(cmd)
    print({k: v for k, v in row.items() if k != "command"}, flush=True)
    return row


def sample(name: str, prior: Path, out_dir: Path, n: int, device: str, *extra: str) -> dict:
    cmd = ["sample", "--n", str(n), "--prior", str(prior), "--out", str(out_dir), "--device", device, *extra]
    row: dict = {"variant": name, "device": device, "n": n}
    try:
        seconds, out = vqgen(*cmd, env=CONSOLE)
    except SystemExit as error:
        row |= {"finished": False, "error": last_line(error), "command": "vqgen " + shlex.join(cmd)}
        print(row, flush=True)
        return row
    text = " ".join(out.split())
    match = re.search(r"sampling ([\d.]+) s \(([\d,]+) codes/s[^)]*\), decoding ([\d.]+) s", text)
    row["finished"] = match is not None
    if match:
        row |= {"sampling_seconds": float(match[1]), "codes_per_s": float(match[2].replace(",", ""))}
        row["decoding_seconds"] = float(match[3])
    else:
        row["error"] = f"no timing line in the output: {text[-300:]}"
    row |= {"process_seconds": round(seconds, 1), "command": "vqgen " + shlex.join(cmd)}
    print({k: v for k, v in row.items() if k != "command"}, flush=True)
    return row


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def gpu_record() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"name": None, "note": "no CUDA GPU: --allow-cpu ran the plan on the CPU"}
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps-scale",
        type=float,
        default=None,
        help=f"multiply every run's steps (default 1; {CPU_CHECK_SCALE} with --allow-cpu and no GPU)",
    )
    parser.add_argument("--n", type=int, default=None, help="images per sample run (default 256; 64 on the CPU)")
    parser.add_argument(
        "--out-root", default="runs/bench/gpu-check", help="folder for the run folders (relative: to the repository)"
    )
    parser.add_argument(
        "--data-root", default=None, help=f"holds MNIST/raw (relative: to the repository; default {SHARED})"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="without a GPU, run the plan on the CPU (a check)")
    parser.add_argument("--name", default="gpu-check", help="the results file's name")
    args = parser.parse_args()
    command = command_line("gpu_check.py", args)

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        message = "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); --allow-cpu checks it on the CPU"
        print(message, file=sys.stderr)
        sys.exit(2)
    scale = args.steps_scale if args.steps_scale is not None else (1.0 if on_gpu else CPU_CHECK_SCALE)
    if not scale > 0:
        raise SystemExit(f"--steps-scale must be > 0, not {scale}")
    n = args.n or (256 if on_gpu else 64)
    os.chdir(REPO)
    data_root = Path(args.data_root) if args.data_root else SHARED
    if not (data_root / "MNIST" / "raw").is_dir():
        raise SystemExit(f"{data_root / 'MNIST' / 'raw'} is missing: give --data-root or set VQGEN_BENCH_DATA")
    base = Path(args.out_root)
    base.mkdir(parents=True, exist_ok=True)
    device = "cuda" if on_gpu else "cpu"
    # The CPU check: fp16 needs a GPU (vqgen refuses it on the CPU), so that arm runs, with its adversarial term, in
    # fp32; bf16 runs in bf16 only where the CPU has it natively (emulated, it is ten times slower than fp32).
    from vqgen.device import cpu_has_native_bf16

    fp16 = "fp16" if on_gpu else "fp32"
    bf16 = "bf16" if on_gpu or cpu_has_native_bf16() else "fp32"
    ae_steps, prior_steps = scaled(AE_STEPS, scale), scaled(PRIOR_STEPS, scale)
    cpu_steps = scaled(CPU_STEPS, scale)
    adv_start = min(round(ADV_START * scale), ae_steps // 3)
    root = ["--data-root", os.path.relpath(data_root)]
    ae_flags = ["--data", "mnist", *root]
    adversarial = ["--adversarial", "0.2", "--adversarial-start", str(adv_start)]
    started = time.perf_counter()
    figures: dict = {
        "gpu": gpu_record(),
        "plan": {"steps_scale": scale, "ae_steps": ae_steps, "prior_steps": prior_steps, "cpu_steps": cpu_steps}
        | {"adversarial_start": adv_start, "n": n, "device": device, "fp16_runs_as": fp16, "bf16_runs_as": bf16},
        "runs": [],
        "sampling": [],
    }
    print(figures["gpu"], figures["plan"], flush=True)
    runs = figures["runs"]

    # stage one
    ae = {
        "ae-fp32": ([], "fp32"),
        "ae-bf16": ([], bf16),
        "ae-fp16-adversarial": (adversarial, fp16),
        "ae-bf16-compile": (["--compile"], bf16),
    }
    for name, (extra, precision) in ae.items():
        runs.append(train(name, "train-ae", [*ae_flags, *extra], base / name, ae_steps, device, precision))

    # codes of the fp32 autoencoder, then stage two on them
    codes = base / "codes.safetensors"
    if runs[0]["finished"]:
        try:
            seconds, _ = vqgen("encode", "--ae", str(base / "ae-fp32"), *root, "--out", str(codes), "--device", device)
            figures["encode"] = {"seconds": round(seconds, 1), "finished": True}
        except SystemExit as error:
            figures["encode"] = {"finished": False, "error": last_line(error)}
    else:
        figures["encode"] = {"finished": False, "error": "skipped: ae-fp32 failed"}
    prior_flags = ["--codes", str(codes), "--arch", "transformer"]
    priors = {"prior-fp32": ([], "fp32"), "prior-bf16": ([], bf16), "prior-bf16-compile": (["--compile"], bf16)}
    for name, (extra, precision) in priors.items() if figures["encode"]["finished"] else ():
        runs.append(train(name, "train-prior", [*prior_flags, *extra], base / name, prior_steps, device, precision))

    # sampling from the fp32 prior: the key/value cache against recomputing the sequence, and the CPU
    prior = base / "prior-fp32"
    if any(r["run"] == "prior-fp32" and r["finished"] for r in runs):
        figures["sampling"] = [
            sample("cached", prior, base / "samples-cached", n, device),
            sample("uncached", prior, base / "samples-uncached", n, device, "--no-cache"),
            sample("cpu-cached", prior, base / "samples-cpu", n, "cpu"),
        ]

    # the same fp32 training on this machine's CPU, a few steps, for the GPU/CPU ratio
    runs.append(train("cpu-ae-fp32", "train-ae", ae_flags, base / "cpu-ae-fp32", cpu_steps, "cpu", "fp32"))
    if figures["encode"]["finished"]:
        cpu_prior = base / "cpu-prior-fp32"
        runs.append(train("cpu-prior-fp32", "train-prior", prior_flags, cpu_prior, cpu_steps, "cpu", "fp32"))

    def rate(run: str) -> float | None:
        row = next((r for r in runs if r["run"] == run and r["finished"]), {})
        return row.get("img_per_s", row.get("code_per_s"))

    def codes_per_s(variant: str) -> float | None:
        return next((r.get("codes_per_s") for r in figures["sampling"] if r["variant"] == variant), None)

    best_ae = max((rate(name) or 0 for name in ae), default=0) or None
    best_prior = max((rate(name) or 0 for name in priors), default=0) or None
    figures["ratios"] = {
        "ae_gpu_fp32_over_cpu_fp32": ratio(rate("ae-fp32"), rate("cpu-ae-fp32")),
        "ae_gpu_best_over_cpu_fp32": ratio(best_ae, rate("cpu-ae-fp32")),
        "prior_gpu_fp32_over_cpu_fp32": ratio(rate("prior-fp32"), rate("cpu-prior-fp32")),
        "prior_gpu_best_over_cpu_fp32": ratio(best_prior, rate("cpu-prior-fp32")),
        "ae_bf16_over_fp32": ratio(rate("ae-bf16"), rate("ae-fp32")),
        "ae_fp16_adversarial_over_fp32": ratio(rate("ae-fp16-adversarial"), rate("ae-fp32")),
        "ae_compile_over_eager_bf16": ratio(rate("ae-bf16-compile"), rate("ae-bf16")),
        "prior_bf16_over_fp32": ratio(rate("prior-bf16"), rate("prior-fp32")),
        "prior_compile_over_eager_bf16": ratio(rate("prior-bf16-compile"), rate("prior-bf16")),
        "sampling_cached_over_uncached": ratio(codes_per_s("cached"), codes_per_s("uncached")),
        "sampling_gpu_over_cpu": ratio(codes_per_s("cached"), codes_per_s("cpu-cached")),
    }
    everything = [*runs, figures["encode"], *figures["sampling"]]
    figures["all_finished"] = bool(figures["sampling"]) and all(
        r.get("finished") and r.get("finite", True) for r in everything
    )
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(figures["ratios"], f"all finished: {figures['all_finished']}, {figures['seconds']:.0f} s", flush=True)
    if not on_gpu:  # a check of the script: its CPU figures stay beside the runs, out of bench/results/
        common.RESULTS = base.resolve()
    write_result(args.name if on_gpu else f"{args.name}-cpu", command, figures)
    sys.exit(0 if figures["all_finished"] else 1)


if __name__ == "__main__":
    main()
