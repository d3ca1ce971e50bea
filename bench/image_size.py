"""What stage one's step costs at each image size with the grid the size rule picks (vqgen.presets.sized_preset).

    python bench/image_size.py

Times forward, backward and an AdamW update of the autoencoder (CIFAR-10's recipe, fsq 8,8,8,6,5, no discriminator)
on random batches of 64 images, in-process, median of `--repeats` timings of `--steps` steps after 3 warm-up steps:
32×32 at 4× downsampling, 64×64 at 8× (the rule's 8×8 grid) and 64×64 at 4×. Writes bench/results/image-size.json.
"""

from __future__ import annotations

import argparse

import torch

from vqgen.presets import grid_downsample
from vqgen.train import seed_everything
from vqgen.vqvae import VQVAE, AEConfig, reconstruction_loss

from common import command_line, median_step_seconds, write_result


def step_seconds(size: int, downsample: int, steps: int, repeats: int) -> float:
    seed_everything(0)
    model = VQVAE(AEConfig(image_size=size, downsample=downsample, quantizer="fsq", fsq_levels=[8, 8, 8, 6, 5]))
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    x = torch.rand(64, 3, size, size) * 2 - 1

    def step() -> None:
        recon, vq = model(x)
        loss = reconstruction_loss(recon, x) + vq.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_step_seconds(step, steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = command_line("image_size.py", args)
    rows = []
    for size, downsample in ((32, grid_downsample(32)), (64, grid_downsample(64)), (64, 4)):
        seconds = step_seconds(size, downsample, args.steps, args.repeats)
        rows.append({"image_size": size, "downsample": downsample, "ms_per_step": round(1000 * seconds, 1)})
        print(rows[-1])
    base = rows[0]["ms_per_step"]
    for row in rows:
        row["step_cost_vs_32px"] = round(row["ms_per_step"] / base, 3)
    write_result("image-size", command, {"batch": 64, "rows": rows})


if __name__ == "__main__":
    main()
