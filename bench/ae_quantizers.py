"""Stage one on MNIST (28×28 → 7×7 codes, K = 512): held-out PSNR, codes used, perplexity and img/s per quantizer.

    python bench/ae_quantizers.py [--steps 1500] [--quantizers ema,vq,simvq,fsq] [--extra "--grad rotation"] [--name N]

Each run is `vqgen train-ae --data mnist --steps N --quantizer Q` with every other setting at its default. Writes
bench/results/<name>.json (default ae_quantizers).
"""

from __future__ import annotations

import argparse
import json
import shlex

from common import REPO, SHARED, last_metrics, mean_rate, vqgen, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quantizers", default="ema,vq,simvq,fsq")
    parser.add_argument("--extra", default="", help="extra train-ae flags for every run")
    parser.add_argument("--name", default="ae_quantizers")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of the same step count")
    args = parser.parse_args()
    # a value that begins with '-' as --extra=VALUE: `--extra --cosine` would read --cosine as an option
    command = "python bench/ae_quantizers.py " + " ".join(
        f"--{k}={shlex.quote(str(v))}" if str(v).startswith("-") else f"--{k} {shlex.quote(str(v))}"
        for k, v in vars(args).items()
        if k != "reuse"
    )
    rows = []
    for q in args.quantizers.split(","):
        suffix = "-" + args.extra.replace(" ", "").replace("-", "") if args.extra else ""
        suffix += f"-{args.steps}" if args.steps != 1500 else ""  # never overwrite the 1500-step runs
        run = REPO / "runs" / "bench" / f"ae-{q}{suffix}"
        flags = [
            "train-ae",
            "--data",
            "mnist",
            "--data-root",
            str(SHARED),
            "--steps",
            str(args.steps),
            "--quantizer",
            q,
            "--out",
            str(run),
            "--force",
            *shlex.split(args.extra),
        ]
        done = last_metrics(run, "test").get("step") == args.steps or (run / "eval.json").exists()
        seconds = None
        if not (args.reuse and done):
            seconds, _ = vqgen(*flags)
        test, source = last_metrics(run, "test"), "train-ae's final evaluation"
        if not test and (run / "eval.json").exists():
            # the run's own final evaluation was cut off: `vqgen eval` measures the same weights on the same split
            test, source = json.loads((run / "eval.json").read_text())["reconstruction"], "vqgen eval --ae RUN"
        row = {
            "quantizer": q,
            "extra": args.extra,
            "steps": args.steps,
            "seconds": None if seconds is None else round(seconds, 1),
            "img_per_s": round(mean_rate(run, "img_per_s"), 1),
            "psnr": round(test["psnr"], 2),
            "mse": test["mse"],
            "codes_used": round(test["codes_used"], 4),
            "perplexity": round(test["perplexity"], 1),
            "command": "vqgen " + shlex.join(flags),
            "held_out_from": source,
        }
        print(row)
        rows.append(row)
        write_result(args.name, command, rows)  # after every run, so an interrupted benchmark keeps its rows


if __name__ == "__main__":
    main()
