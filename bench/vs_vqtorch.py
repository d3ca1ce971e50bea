"""vqgen's default quantizer beside lucidrains' vector-quantize-pytorch, with the same encoder, decoder and steps.

    pip install -e '.[bench]'       # vector-quantize-pytorch: a benchmark extra, never a run-time dependency
    python bench/vs_vqtorch.py --data mnist
    python bench/vs_vqtorch.py --data mnist --steps 3000 --restart-below 0.3 --name vs_vqtorch-mnist-short
    python bench/vs_vqtorch.py --data mnist --steps 3000 --codebook-size 512 --ema-weights 0 \
        --name vs_vqtorch-mnist-3000                  # MNIST's previous preset

The rows train the autoencoder of `vqgen train-ae`'s defaults for the data set (vqgen/presets.py: steps, batch, codebook
size and weight average; `--steps`, `--codebook-size` and `--ema-weights` override theirs) through vqgen's one training
loop, in this one process, one after the other, with the same seed and data order. Only the quantizer differs: vqgen's
`ema` (k-means++ initialisation, restarts after 50 idle steps; with `--restart-below S` a further row that also restarts
codes used less than S times the mean) or `VectorQuantize` (EMA decay 0.99, k-means initialisation, dead-code threshold
2, commitment 0.25, rotation trick off). Held-out PSNR, codes used and perplexity come from vqgen's own evaluation of
the 10,000 test images; img/s is the mean training throughput after the first log window. Writes
bench/results/<name>.json (default vs_vqtorch-<data>).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from vqgen.autoencoder import AutoencoderTask, DataConfig
from vqgen.passes import split_pass
from vqgen.presets import preset_for
from vqgen.quantize import Quantizer, QuantizerOutput
from vqgen.train import TrainConfig, fit, seed_everything
from vqgen.vqvae import VQVAE, AEConfig

from common import REPO, SHARED, command_line, mean_rate, write_result


class LucidrainsVQ(Quantizer):
    """vector_quantize_pytorch.VectorQuantize behind vqgen's quantizer interface (bench only)."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.codebook_size, self.dim = codebook_size, dim
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            decay=0.99,
            commitment_weight=0.25,
            kmeans_init=True,
            threshold_ema_dead_code=2,
            rotation_trick=False,
            accept_image_fmap=True,
        )

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, indices, loss = self.vq(z)  # (B, D, H, W), (B, H, W), (1,)
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size)
        return QuantizerOutput(quantized, indices, loss.sum(), counts)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.vq.get_output_from_indices(indices)  # (B, D, H, W), as accept_image_fmap gives it

    def codebook(self) -> torch.Tensor:
        return self.vq.codebook


def train(
    data: str,
    root: str,
    quantizer: str,
    out: Path,
    steps: int | None,
    restart_below: float,
    codebook_size: int | None = None,
    ema_weights: float | None = None,
) -> dict:
    preset = preset_for(data)
    steps = steps or preset.ae_steps
    ema_weights = preset.ae_ema_weights if ema_weights is None else ema_weights
    cfg = TrainConfig(steps=steps, batch_size=preset.ae_batch_size, lr=preset.ae_lr, ema_weights=ema_weights)
    images = DataConfig(data, root).load()
    channels, size, _ = images.image_shape
    ae = AEConfig(
        image_size=size,
        channels=channels,
        hidden=preset.ae_hidden,
        codebook_size=codebook_size or preset.codebook_size,
        restart_below=restart_below,
    )
    seed_everything(cfg.seed)
    model = VQVAE(ae)
    if quantizer == "vector-quantize-pytorch":
        model.quantizer = LucidrainsVQ(ae.codebook_size, ae.embed_dim)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    fit(AutoencoderTask(model, images, torch.device("cpu")), cfg, out)
    held_out = split_pass(model, images.test, torch.device("cpu")).metrics
    return {
        "quantizer": quantizer,
        "psnr": round(held_out["psnr"], 2),
        "codes_used": round(held_out["codes_used"], 4),
        "perplexity": round(held_out["perplexity"], 1),
        "img_per_s": round(mean_rate(out, "img_per_s"), 1),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "codebook_size": ae.codebook_size,
        "ema_weights": cfg.ema_weights,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the data set's preset)")
    parser.add_argument("--restart-below", type=float, default=0.0, help="also a vqgen row with this --restart-below")
    parser.add_argument("--codebook-size", type=int, default=None, help="K (default: the data set's preset)")
    parser.add_argument("--ema-weights", type=float, default=None, help="weight average (default: the preset's)")
    parser.add_argument("--name", default=None, help="the results file's name (default: vs_vqtorch-<data>)")
    args = parser.parse_args()
    command = command_line("vs_vqtorch.py", args)
    os.chdir(REPO)
    root = os.path.relpath(SHARED)
    # (row name, run folder, --restart-below): the library's row uses its own dead-code threshold instead
    arms = [("vqgen ema (default)", "vqgen", 0.0), ("vector-quantize-pytorch", "vqtorch", 0.0)]
    if args.restart_below:
        arms.insert(1, (f"vqgen ema --restart-below {args.restart_below}", "vqgen-restart-below", args.restart_below))
    rows = []
    for quantizer, slug, below in arms:
        out = Path("runs") / "bench" / "vs_vqtorch" / slug
        rows.append(train(args.data, root, quantizer, out, args.steps, below, args.codebook_size, args.ema_weights))
        print(json.dumps(rows[-1]))
    from importlib.metadata import version

    figures = {"data": args.data, "vector_quantize_pytorch": version("vector-quantize-pytorch"), "rows": rows}
    write_result(args.name or f"vs_vqtorch-{args.data}", command, figures)


if __name__ == "__main__":
    main()
