"""Folders larger than memory: the first run's cache build, later start-ups, and training memory against data size.

    python bench/bigdata.py --images 20000 --small 5000 --size 128

Builds a folder of `--images` PNGs of `--size`² pixels (CIFAR-10 training images upscaled bicubically, in one
sub-folder per class; built once under --work, outside the repo), and a second folder holding the first `--small`
of them. For each folder it measures:
- the first `load_data` (decoding every file in worker processes into the cache under a fresh data root), and a
  second `load_data` (mapping the cache), both timed in a fresh Python process;
- `vqgen train-ae` for the same few steps of the same batch on each folder, sampled every 0.1 s from
  /proc/PID/status: the peak of the anonymous resident memory (what the process allocated) and of the file-backed
  resident memory (pages of the mapped array that it touched, which the kernel can drop), and the kernel's own
  peak (VmHWM, the two together).
Writes bench/results/bigdata.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO, SHARED, write_result

CIFAR = SHARED / "CIFAR10" / "cifar10-train-40k.npz"
LOAD = """
import sys, time
from vqgen.data import load_data
start = time.perf_counter()
data = load_data(sys.argv[1], sys.argv[2])
print()
print(time.perf_counter() - start, len(data.train) + len(data.test))
"""


def make_folder(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    if (folder / ".complete").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    with np.load(CIFAR) as f:
        images, labels = f["images"][:n], f["labels"][:n]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / f"class{int(label)}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.BICUBIC).save(target / f"{i:06d}.png", compress_level=1)
    (folder / ".complete").write_text("")


def link_first(big: Path, small: Path, n: int) -> None:
    """The first n images of `big` as hard links (no second decode of CIFAR, no second copy on disk)."""
    if (small / ".complete").exists():
        return
    shutil.rmtree(small, ignore_errors=True)
    files = sorted(big.rglob("*.png"), key=lambda p: p.name)[:n]
    for file in files:
        target = small / file.parent.name
        target.mkdir(parents=True, exist_ok=True)
        (target / file.name).hardlink_to(file)
    (small / ".complete").write_text("")


def timed_load(folder: Path, root: Path) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder), str(root)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    seconds, count = out.stdout.split()[-2:]  # after the progress bar, if one was drawn
    return float(seconds), int(count)


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return fields


def train_memory(folder: Path, root: Path, out: Path, flags: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vqgen", "train-ae", "--data", str(folder), "--data-root", str(root)]
    cmd += ["--out", str(out), "--force", *flags]
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        for key, value in status_kib(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(proc.stderr.read()[-2000:])
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_anon_mib": round(peaks["RssAnon"] / 1024, 1),
        "peak_file_mib": round(peaks["RssFile"] / 1024, 1),
        "peak_rss_mib": round(peaks["VmHWM"] / 1024, 1),
        "command": "vqgen " + shlex.join(cmd[3:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="train-ae steps on each folder")
    parser.add_argument("--work", default="/tmp/vqgen-bigdata", help="where the folders and caches go")
    args = parser.parse_args()
    command = "python bench/bigdata.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items())
    work = Path(args.work)
    big, small = work / f"folder-{args.images}", work / f"folder-{args.small}"
    start = time.perf_counter()
    make_folder(big, args.images, args.size)
    print(f"folder of {args.images}: {time.perf_counter() - start:.0f} s")
    link_first(big, small, args.small)
    flags = ["--steps", str(args.steps), "--batch-size", "32", "--downsample", "8", "--log-every", "10"]
    rows = []
    for folder in (small, big):
        root = work / f"root-{folder.name}"
        shutil.rmtree(root, ignore_errors=True)
        first, count = timed_load(folder, root)
        later, _ = timed_load(folder, root)
        cache = next((root / "cache").glob("*/images.npy"))
        row = {
            "images": count,
            "size": args.size,
            "first_load_seconds": round(first, 2),
            "first_load_img_per_s": round(count / first, 1),
            "later_load_seconds": round(later, 3),
            "cache_gib": round(cache.stat().st_size / 2**30, 3),
            "train": train_memory(folder, root, work / "run", flags),
        }
        print(json.dumps(row))
        rows.append(row)
    write_result("bigdata", command, {"folders": rows, "workers": "min(8, cores)"})


if __name__ == "__main__":
    main()
