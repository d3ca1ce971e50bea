"""What stage one's step costs at each image size and grid (the size rule, vqgen.presets.sized_preset, now picks 4× at
64 pixels; 8× was its grid when this was measured, and stays here for the comparison).

    python bench/image_size.py

Times forward, backward and an AdamW update of the autoencoder (CIFAR-10's recipe, fsq 8,8,8,6,5, no discriminator)
on random batches of 64 images, in-process, median of `--repeats` timings of `--steps` steps after 3 warm-up steps:
32×32 at 4× downsampling, 64×64 at 8× (an 8×8 grid) and 64×64 at 4×; then 64×64 at 8× with the adversarial
term (its generator pass, adaptive weight and the discriminator's own step), which the size rule leaves out above
32 pixels. Writes bench/results/image-size.json.
"""

from __future__ import annotations

import argparse

import torch

from vqgen.adversarial import Adversary
from vqgen.presets import grid_downsample
from vqgen.train import seed_everything
from vqgen.vqvae import VQVAE, AEConfig, reconstruction_loss

from common import command_line, median_step_seconds, write_result


def step_seconds(size: int, downsample: int, steps: int, repeats: int, adversarial: bool = False) -> float:
    seed_everything(0)
    model = VQVAE(AEConfig(image_size=size, downsample=downsample, quantizer="fsq", fsq_levels=[8, 8, 8, 6, 5]))
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    x = torch.rand(64, 3, size, size) * 2 - 1
    adversary = Adversary(3, 0.2, 0, 3e-3, torch.device("cpu"), feature_weight=0.1) if adversarial else None

    def step() -> None:
        recon, vq = model(x)
        rec = reconstruction_loss(recon, x)
        loss = rec + vq.loss
        if adversary is not None:
            loss = loss + adversary.generator_term(x, recon, rec, model.decoder.last_layer())[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if adversary is not None:
            adversary.discriminator_step()

    return median_step_seconds(step, steps, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = command_line("image_size.py", args)
    rows = []
    arms = ((32, grid_downsample(32), False), (64, 8, False), (64, 4, False))
    for size, downsample, adversarial in (*arms, (64, 8, True)):
        seconds = step_seconds(size, downsample, args.steps, args.repeats, adversarial)
        rows.append(
            {
                "image_size": size,
                "downsample": downsample,
                "adversarial": adversarial,
                "ms_per_step": round(1000 * seconds, 1),
            }
        )
        print(rows[-1])
    base = rows[0]["ms_per_step"]
    for row in rows:
        row["step_cost_vs_32px"] = round(row["ms_per_step"] / base, 3)
    write_result("image-size", command, {"batch": 64, "rows": rows})


if __name__ == "__main__":
    main()
