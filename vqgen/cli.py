"""The `vqgen` command line. Thin: it parses flags and calls the library.

torch and torchvision take seconds to import, so nothing heavy is imported at module level: `vqgen --help`
stays fast, and each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="vqgen",
    help=(
        "Two-stage discrete image generation. Stage one (train-ae) learns a VQ-VAE that turns each image into a "
        "grid of integer codes; stage two (encode, train-prior) learns an autoregressive prior over those grids; "
        "sample chains prior → codebook → decoder. With no flags every command runs on the built-in 'shapes' data:\n\n"
        "vqgen train-ae && vqgen encode && vqgen train-prior && vqgen sample --n 64"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_DEBUG = {"on": os.environ.get("VQGEN_DEBUG", "") not in ("", "0")}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    if debug:
        _DEBUG["on"] = True


# ----------------------------------------------------------------------------------------------- shared options

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Data set: shapes (built in, no download), mnist, fashion-mnist, cifar10, a folder of images "
        "(sub-folders = classes) or an .npz/.npy file of uint8 images (N,H,W[,C]) with optional 'labels'.",
    ),
]
DataRootOpt = Annotated[
    Optional[str],
    typer.Option("--data-root", help="Where data sets live (default: $VQGEN_DATA, else ./data).", show_default=False),
]
ImageSizeOpt = Annotated[
    Optional[int],
    typer.Option("--image-size", help="Resize (shorter side) and centre-crop images to N×N. Default: keep.",
                 show_default=False),
]
ChannelsOpt = Annotated[
    Optional[int], typer.Option("--channels", help="Convert images to 1 (grey) or 3 (RGB) channels. Default: keep.",
                                show_default=False)
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail on an unreadable image in a folder instead of skipping it.")
]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps to train (default 1500).",
                                                 show_default=False)]
EpochsOpt = Annotated[
    Optional[float], typer.Option("--epochs", help="Train for this many passes over the data instead of --steps.",
                                  show_default=False)
]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Global batch size (split across processes under torchrun).")
]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).",
                                                show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed reproduces the same run.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="fp32, bf16 or fp16 autocast for the networks (quantizer stays fp32).")
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the networks (falls back if unsupported).")]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Steps between lines in metrics.jsonl.")]
EvalEveryOpt = Annotated[
    int, typer.Option("--eval-every", help="Steps between held-out evaluations and previews (0: only at the end).")
]
SaveEveryOpt = Annotated[int, typer.Option("--save-every", help="Steps between resumable checkpoints (0: only at the end).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing run in --out.")]


def _console():
    from rich.console import Console

    return Console(stderr=False)


def _train_config(**kwargs):
    from vqgen.train import TrainConfig

    defaults = TrainConfig()
    values = {k: v for k, v in kwargs.items() if v is not None}
    return TrainConfig(**(defaults.to_dict() | values))


def _print_table(title: str, rows: dict, console=None) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    (console or _console()).print(table)


# ----------------------------------------------------------------------------------------------- stage one


@app.command("train-ae")
def train_ae(
    data: DataOpt = "shapes",
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    strict: StrictOpt = False,
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")] = Path("runs/ae"),
    quantizer: Annotated[
        str, typer.Option("--quantizer", help="ema (EMA codebook), vq (codebook + commitment loss), simvq "
                          "(frozen random Q times learned W), simvq-diag (diagonal W) or fsq (finite scalar).")
    ] = "ema",
    codebook_size: Annotated[int, typer.Option("--codebook-size", help="K, the number of codes (ignored by fsq).")] = 512,
    embed_dim: Annotated[int, typer.Option("--embed-dim", help="D, the dimension of each code vector.")] = 64,
    hidden: Annotated[int, typer.Option("--hidden", help="Channels of the encoder/decoder.")] = 128,
    res_blocks: Annotated[int, typer.Option("--res-blocks", help="Residual blocks in encoder and decoder.")] = 2,
    downsample: Annotated[int, typer.Option("--downsample", help="n/m: 2, 4 or 8 (an n×n image → m×m codes).")] = 4,
    beta: Annotated[float, typer.Option("--beta", help="β, weight of the codebook loss ‖q − sg[z]‖² (vq, simvq).")] = 1.0,
    commitment: Annotated[
        Optional[float], typer.Option("--commitment", help="γ, weight of the commitment loss ‖z − sg[q]‖² "
                                      "(default 0.25·β).", show_default=False)
    ] = None,
    decay: Annotated[float, typer.Option("--decay", help="EMA decay of the ema codebook.")] = 0.99,
    grad: Annotated[str, typer.Option("--grad", help="Gradient through the quantizer: ste (straight-through) "
                                      "or rotation (the rotation trick).")] = "ste",
    restart_dead: Annotated[
        int, typer.Option("--restart-dead", help="Re-initialise a code unused for N steps from a recent encoder "
                          "output (0: never).")
    ] = 50,
    kmeans_init: Annotated[
        bool, typer.Option("--kmeans-init/--no-kmeans-init", help="Initialise the codebook by k-means on the "
                           "first batch's encoder outputs.")
    ] = True,
    fsq_levels: Annotated[str, typer.Option("--fsq-levels", help="Levels per FSQ dimension, e.g. 8,8,8 (K = their "
                                            "product).")] = "8,8,8",
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = 128,
    lr: LrOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    compile: CompileOpt = False,
    log_every: LogEveryOpt = 50,
    eval_every: EvalEveryOpt = 0,
    save_every: SaveEveryOpt = 500,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Train the VQ-VAE (stage one): images → m×m code grids → reconstructions.

    Writes config.json, model.safetensors, state.safetensors (for --resume), metrics.jsonl and recon.png
    into --out, then prints held-out MSE, PSNR, codes used and perplexity.
    """
    from vqgen.autoencoder import DataConfig, train_autoencoder
    from vqgen.errors import VQGenError
    from vqgen.vqvae import AEConfig

    try:
        levels = [int(v) for v in fsq_levels.split(",") if v.strip()]
        ae = AEConfig(
            hidden=hidden, res_blocks=res_blocks, downsample=downsample, embed_dim=embed_dim,
            codebook_size=codebook_size, quantizer=quantizer, beta=beta,
            commitment=0.25 * beta if commitment is None else commitment, decay=decay, grad=grad,
            restart_dead=restart_dead, kmeans_init=kmeans_init, fsq_levels=levels,
        )
    except ValueError as e:
        raise VQGenError(f"{e}") from e
    if grad not in ("ste", "rotation"):
        raise VQGenError(f"--grad must be ste or rotation, not '{grad}'")
    train = _train_config(
        steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, precision=precision,
        compile=compile, log_every=log_every, eval_every=eval_every, save_every=save_every,
    )
    data_cfg = DataConfig(data, data_root, image_size, channels, strict)
    console = _console()
    results, run_dir = train_autoencoder(ae, train, data_cfg, out, resume=resume, force=force, console=console)
    _print_table(f"held-out results ({run_dir})", results, console)
    console.print(f"wrote {run_dir}/model.safetensors, metrics.jsonl, recon.png")


@app.command()
def reconstruct(
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder run folder.")] = Path("runs/ae"),
    data: Annotated[Optional[str], typer.Option("--data", help="Data to reconstruct (default: the run's own), "
                                                "as for train-ae.", show_default=False)] = None,
    data_root: DataRootOpt = None,
    n: Annotated[int, typer.Option("--n", help="Number of held-out images to show.")] = 32,
    out: Annotated[Optional[Path], typer.Option("--out", help="PNG to write (default: RUN/reconstruct.png).",
                                                show_default=False)] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Write a grid of held-out originals over their reconstructions through the codes."""
    from vqgen.autoencoder import DataConfig, data_config_of, load_autoencoder, save_reconstructions
    from vqgen.errors import VQGenError
    from vqgen.train import resolve_device

    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    dev = resolve_device(device)
    model, config = load_autoencoder(ae, dev)
    dc = data_config_of(config)
    if data is not None:
        dc = DataConfig(data, data_root, model.cfg.image_size, model.cfg.channels)
    elif data_root is not None:
        dc.data_root = data_root
    images = dc.load().test.images[:n]
    path = save_reconstructions(model, images, out or Path(ae) / "reconstruct.png", dev)
    _console().print(f"wrote {path}")


@app.command()
def info(run: Annotated[Path, typer.Argument(help="A run folder (autoencoder or prior).")] = Path("runs/ae")) -> None:
    """Print a run's configuration and its last metrics."""
    from vqgen import checkpoint as ckpt

    config = ckpt.read_config(run)
    console = _console()
    flat: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    _print_table(f"{run}/config.json", flat, console)
    records = ckpt.read_metrics(run)
    for split in ("train", "test"):
        last = next((r for r in reversed(records) if r.get("split") == split), None)
        if last is not None:
            _print_table(f"last {split} metrics", last, console)
    if not records:
        console.print("no metrics yet")


# ----------------------------------------------------------------------------------------------- entry point


def main() -> None:
    from vqgen.errors import TrainingInterrupted, VQGenError

    try:
        app()
    except VQGenError as e:
        if _DEBUG["on"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}. Resume with the same command plus --resume.", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
