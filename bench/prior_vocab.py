"""What the codebook's size costs stage two: a training step of the default Transformer prior at several K.

    python bench/prior_vocab.py --sizes 512,2048,8192,16384,16384=128x128,15360=240x64

A size written K=K1xK2 is factorised codes (vqgen.factorise): the prior predicts each code as sub-tokens, one small
softmax each, instead of one K-way softmax.

Times forward, backward and an AdamW update of the default prior (4 blocks × 128, class-conditional) on random 8×8
grids (CIFAR-10's at 4× downsampling), batch 64, in-process, median of `--repeats` timings of `--steps` steps after
3 warm-up steps, and the minutes that the preset's 3600 steps would take at that rate. The output layer and the
cross-entropy grow with K; the rest of the model does not. Writes bench/results/prior-vocab.json.
"""

from __future__ import annotations

import argparse

import torch

from vqgen.factorise import parse_factors
from vqgen.priors import PriorConfig, build_prior
from vqgen.train import seed_everything

from common import command_line, median_step_seconds, write_result


def step_seconds(codebook_size: int, grid: int, batch: int, steps: int, repeats: int, factors: list[int]) -> float:
    seed_everything(0)
    prior = build_prior(PriorConfig(codebook_size=codebook_size, grid_size=grid, num_classes=10, factors=factors))
    optimizer = torch.optim.AdamW(prior.parameters(), 1e-3)
    codes = torch.randint(0, codebook_size, (batch, grid, grid))
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = prior.loss(codes, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_step_seconds(step, steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes",
        default="512,2048,8192,16384,16384=128x128,15360=240x64",
        help="codebook sizes K (K=K1xK2: factorised), comma-separated",
    )
    parser.add_argument("--grid", type=int, default=8, help="the grid's side m")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="prior-vocab", help="the results file's name")
    args = parser.parse_args()
    command = command_line("prior_vocab.py", args)
    rows = []
    for size in args.sizes.split(","):
        k_text, _, factor_text = size.partition("=")
        k, factors = int(k_text), parse_factors(factor_text)
        seconds = step_seconds(k, args.grid, args.batch, args.steps, args.repeats, factors)
        rows.append(
            {
                "codebook_size": k,
                "factors": factors,
                "logits_per_code": sum(factors) if factors else k,
                "ms_per_step": round(1000 * seconds, 1),
                "codes_per_s": round(args.batch * args.grid**2 / seconds),
                "minutes_for_3600_steps": round(3600 * seconds / 60, 1),
            }
        )
        print(rows[-1])
    write_result(args.name, command, {"grid": args.grid, "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
