"""Shared helpers for the benchmarks: run a vqgen command, time it, and record machine + command + figures."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("VQGEN_BENCH_DATA", REPO.parent / "shared" / "datasets"))


def machine() -> dict:
    import torch

    cpu, flags, named = platform.processor() or "", [], False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                named = True
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    # the vector units that decide the speed of CPU training (AVX-512 with native bf16 runs several times faster)
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {
        "cpu": cpu,
        "cpu_flags": simd,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def git_commit() -> dict:
    """The checkout the benchmark runs from: `git rev-parse HEAD` and whether tracked files differ from it (dirty),
    with the frozen copy of vqgen/ that VQGEN_BENCH_SRC names, if any. sha None outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    record: dict = {"sha": sha, "dirty": None if status is None else bool(status)}
    if os.environ.get("VQGEN_BENCH_SRC"):
        record["vqgen_source"] = os.environ["VQGEN_BENCH_SRC"]
    return record


COMMIT_AT_START = git_commit()  # when the benchmark was started (this module is imported first)


def matmul_peak(dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n×n by n×n matmul in `dtype`, best of `repeats`."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def median_step_seconds(step, steps: int, repeats: int, warmup: int = 3) -> float:
    """Seconds per call of `step()`: the median of `repeats` timings of `steps` calls, after `warmup` calls."""
    for _ in range(warmup):
        step()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        timings.append((time.perf_counter() - start) / steps)
    import statistics

    return statistics.median(timings)


def command_line(script: str, args) -> str:
    """The command that repeats this benchmark: `python bench/SCRIPT` with every parsed option, flags bare."""
    parts = [f"python bench/{script}"]
    for key, value in vars(args).items():
        if value is False or value is None:
            continue
        flag = f"--{key.replace('_', '-')}"
        parts.append(flag if value is True else f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def vqgen(*args: str, env: dict | None = None) -> tuple[float, str]:
    """Run `python -m vqgen ARGS`; returns wall seconds and the output. Raises on failure."""
    cmd = [sys.executable, "-m", "vqgen", *map(str, args)]
    source = os.environ.get("VQGEN_BENCH_SRC")
    if source:  # a frozen copy of vqgen/, so that edits to the working tree cannot reach a running benchmark
        entry = f"import sys; sys.path.insert(0, {source!r}); sys.argv[0] = 'vqgen'; from vqgen.cli import main; main()"
        cmd = [sys.executable, "-c", entry, *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def frechet(section: dict, name: str, default: float | None = None) -> float | None:
    """The Fréchet distance `name` ('samples_vs_test', 'recon_vs_test', 'train_vs_test') of an eval.json section:
    `frechet_NAME`, or `fid_NAME` in reports written before the keys were renamed."""
    return section.get(f"frechet_{name}", section.get(f"fid_{name}", default))


def last_metrics(run: Path, split: str) -> dict:
    """The last metrics.jsonl record of a split; {} when there is none (yet)."""
    path = run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return next((r for r in reversed(records) if r.get("split") == split), {})


def mean_rate(run: Path, key: str) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r[key] for r in records if r.get("split") == "train" and key in r][1:]  # skip the warm-up window
    return sum(rates) / max(len(rates), 1)


def write_result(name: str, command: str, figures) -> Path:
    """bench/results/NAME.json: the command that repeats it, the commit it ran from, the machine and the figures."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    commit = dict(COMMIT_AT_START)
    now = git_commit()
    if now != COMMIT_AT_START:  # the checkout changed while the benchmark ran: say so
        commit["at_end"] = now
    record = {"benchmark": name, "command": command, "commit": commit, "machine": machine(), "figures": figures}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def beyond_texture(report: dict) -> dict:
    """The figures of an eval.json that see more than texture, flat: the structure gap (intact − shuffled class
    accuracy) of held-out images, reconstructions and samples; precision, recall, density and coverage of samples,
    reconstructions and train images against held-out images; and the two-sample accuracies. Absent ones are left
    out (reports written before these measures have none)."""
    out: dict = {}
    for name, row in report.get("structure", {}).items():
        if isinstance(row, dict):
            out |= {f"structure_{k}_{name}": round(v, 4) for k, v in row.items()}
    fd = report.get("fidelity_diversity", {})
    for name in ("train", "reconstructions", "samples"):
        out |= {f"{k}_{name}": round(v, 4) for k, v in fd.get(name, {}).items()}
    if "samples_per_class" in fd:
        recall = fd["samples_per_class"]["recall"]
        out["per_class_recall_samples"] = [None if r is None else round(r, 4) for r in recall]
    for key, result in report.get("two_sample", {}).items():
        if isinstance(result, dict):
            out[f"two_sample_{key}"] = round(result["accuracy"], 4)
    seconds = {k: report[k]["seconds"] for k in ("structure", "fidelity_diversity") if k in report}
    seconds |= {k: v["seconds"] for k, v in report.get("two_sample", {}).items() if isinstance(v, dict)}
    if seconds:
        out["beyond_texture_seconds"] = seconds
    return out
