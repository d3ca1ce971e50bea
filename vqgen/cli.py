"""The `vqgen` command line. Thin: it parses flags and calls the library (the trainers: vqgen.api, with only the
options typed, so that a command and the same call give the same run).

torch and torchvision take seconds to import, so nothing heavy is imported at module level: `vqgen --help`
stays fast, and each command imports what it needs when it runs.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vqgen.presets import defaults_text

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
    str | None,
    typer.Option("--data-root", help="Where data sets live (default: $VQGEN_DATA, else ./data).", show_default=False),
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size", help="Resize (shorter side) and centre-crop images to N×N. Default: keep.", show_default=False
    ),
]
ChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--channels", help="Convert images to 1 (grey) or 3 (RGB) channels. Default: keep.", show_default=False
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail on an unreadable image in a folder instead of skipping it.")
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps",
        help="Optimizer steps to train. Default: the data set's preset (`vqgen presets`): train-ae "
        f"{defaults_text('ae_steps')}; train-prior {defaults_text('prior_steps')}.",
        show_default=False,
    ),
]
MinutesOpt = Annotated[
    float | None,
    typer.Option(
        "--minutes",
        help="Train for a wall-clock budget instead of --steps: 20 probe steps are run (the last 18 timed), the "
        "learning-rate schedule is set for the steps that fill the budget, and that count goes into config.json (a "
        "re-run "
        "with --steps N repeats the run exactly). Evaluations during training come on top.",
        show_default=False,
    ),
]
EmaWeightsOpt = Annotated[
    float | None,
    typer.Option(
        "--ema-weights",
        help="Keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: none). Evaluation, "
        "previews, the saved model and sampling use the average; --resume keeps both. Default: the data set's "
        "preset (vqgen/presets.py), else 0.",
        show_default=False,
    ),
]
GuidanceOpt = Annotated[
    float | None,
    typer.Option(
        "--guidance",
        help="Classifier-free guidance scale S for a class-conditional prior trained with class dropout: codes "
        "are drawn from null + S·(cond − null). 1 is plain conditional sampling, 0 the null class, > 1 sharper "
        "and more typical of the class. Default: the scale recorded in the prior's config.json (from its data "
        "set's preset), else 1.",
        show_default=False,
    ),
]
EpochsOpt = Annotated[
    float | None,
    typer.Option("--epochs", help="Train for this many passes over the data instead of --steps.", show_default=False),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Global batch size, split across processes under torchrun (default: 64 for both stages; 32 "
        "for both on shapes).",
        show_default=False,
    ),
]
LrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr",
        help="Peak learning rate of AdamW, after a 100-step warm-up and before a cosine decay to 10% "
        "(default: 3e-3 for train-ae; 1e-3 for train-prior, 3e-3 on shapes).",
        show_default=False,
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: the same seed reproduces the same run.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto, fp32, bf16 or fp16 autocast for the networks (the quantizer stays fp32; fp16 needs a GPU). "
        "auto: bf16 on a GPU with bf16; on a CPU with native bf16 (AVX-512 BF16 or AMX) the faster of fp32 and "
        "bf16, timed on the network about to train (about a second; bf16 must be 1.10× as fast) and cached per CPU "
        "model in $VQGEN_CACHE or ~/.cache/vqgen; fp32 elsewhere. The choice and what was measured are printed and "
        "recorded in config.json; a resumed run keeps its precision.",
    ),
]
SamplePrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="auto, fp32, bf16 or fp16 autocast for the decoder (the prior samples in fp32); auto as in train-ae.",
    ),
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the networks (falls back if unsupported).")]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Steps between lines in metrics.jsonl.")]
EvalEveryOpt = Annotated[
    int, typer.Option("--eval-every", help="Steps between held-out evaluations and previews (0: only at the end).")
]
SaveEveryOpt = Annotated[
    int, typer.Option("--save-every", help="Steps between resumable checkpoints (0: only at the end).")
]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing run in --out.")]


def _console():
    from rich.console import Console

    # Under torchrun every rank runs the command; only rank 0 speaks (warnings, tables, progress).
    return Console(stderr=False, quiet=os.environ.get("RANK", "0") != "0")


def _typed(ctx: typer.Context, values: dict) -> dict:
    """The options of a command that were typed (a command's locals on entry), so that the library (vqgen.api)
    decides every default, the same for a command and a call."""
    return {
        name: values[name]
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
    }


def _check_output_file(path: Path | None) -> None:
    """Refuse, before any work, an output file that cannot be written: a directory in its place, a read-only folder."""
    from vqgen.checkpoint import check_writable
    from vqgen.errors import VQGenError

    if path is not None and path.is_dir():
        raise VQGenError(f"--out '{path}' is a directory; give the path of a file to write")
    if path is not None:
        check_writable(path)


def _parse_levels(text: str) -> list[int]:
    """--fsq-levels '8,8,8' → [8, 8, 8]: ASCII digits only (int() would take '٨' or '1_0'), checked by AEConfig."""
    import re

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(re.fullmatch(r"[0-9]{1,9}", part) for part in parts):
        raise ValueError(f"--fsq-levels are integers separated by commas (e.g. 8,8,8), not '{text[:40]}'")
    return [int(part) for part in parts]


def _check_seed(seed: int) -> None:
    from vqgen.limits import check_seed

    check_seed(seed)


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
    ctx: typer.Context,
    data: DataOpt = "shapes",
    data_root: DataRootOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    strict: StrictOpt = False,
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")] = Path("runs/ae"),
    quantizer: Annotated[
        str | None,
        typer.Option(
            "--quantizer",
            help="ema (EMA codebook), vq (codebook + commitment loss), simvq "
            "(frozen random Q times learned W), simvq-diag (diagonal W) or fsq (finite scalar). "
            f"Default: the data set's preset ({defaults_text('ae_quantizer')}).",
            show_default=False,
        ),
    ] = None,
    codebook_size: Annotated[
        int | None,
        typer.Option(
            "--codebook-size",
            help="K, the number of codes (ignored by fsq). Default: the data set's preset: "
            f"{defaults_text('codebook_size')}.",
            show_default=False,
        ),
    ] = None,
    embed_dim: Annotated[int, typer.Option("--embed-dim", help="D, the dimension of each code vector.")] = 64,
    hidden: Annotated[
        int | None,
        typer.Option(
            "--hidden",
            help=f"Channels of the encoder/decoder. Default: the preset's, {defaults_text('ae_hidden')}.",
            show_default=False,
        ),
    ] = None,
    res_blocks: Annotated[int, typer.Option("--res-blocks", help="Residual blocks in encoder and decoder.")] = 2,
    downsample: Annotated[
        int | None,
        typer.Option(
            "--downsample",
            help="n/m: 2, 4, 8 or 16 (an n×n image → m×m codes). Default: the preset's, "
            f"{defaults_text('ae_downsample')}: images over 32 pixels of a folder or array file get a grid near 16×16.",
            show_default=False,
        ),
    ] = None,
    levels: Annotated[
        int,
        typer.Option(
            "--levels",
            help="2: two-level codes as in VQ-VAE-2, a top grid of (m/2)×(m/2) over the m×m bottom grid, which is "
            "quantized and decoded with the top's context; each level gets its own prior (train-prior --level).",
        ),
    ] = 1,
    beta: Annotated[
        float, typer.Option("--beta", help="β, weight of the codebook loss ‖q − sg(z)‖² (vq, simvq).")
    ] = 1.0,
    commitment: Annotated[
        float | None,
        typer.Option(
            "--commitment", help="γ, weight of the commitment loss ‖z − sg(q)‖² (default 0.25·β).", show_default=False
        ),
    ] = None,
    decay: Annotated[float, typer.Option("--decay", help="EMA decay of the ema codebook.")] = 0.99,
    grad: Annotated[
        str,
        typer.Option(
            "--grad", help="Gradient through the quantizer: ste (straight-through) or rotation (the rotation trick)."
        ),
    ] = "ste",
    restart_dead: Annotated[
        int,
        typer.Option(
            "--restart-dead", help="Re-initialise a code unused for N steps from a recent encoder output (0: never)."
        ),
    ] = 50,
    restart_below: Annotated[
        float,
        typer.Option(
            "--restart-below",
            help="Also re-initialise a code whose moving-average use falls below this share of the mean use, "
            "e.g. 0.3 (0: off).",
        ),
    ] = 0.0,
    kmeans_init: Annotated[
        bool,
        typer.Option(
            "--kmeans-init/--no-kmeans-init",
            help="Initialise the codebook by k-means on the first batch's encoder outputs.",
        ),
    ] = True,
    fsq_levels: Annotated[
        str | None,
        typer.Option(
            "--fsq-levels",
            help="Levels per FSQ dimension, e.g. 8,8,8 (K = their product). Default: the preset's "
            f"({defaults_text('fsq_levels')}).",
            show_default=False,
        ),
    ] = None,
    code_factors: Annotated[
        str | None,
        typer.Option(
            "--code-factors",
            help="Factorised codes: sub-vocabulary sizes whose product is K, e.g. 128x128, so that the prior predicts "
            "each code as sub-tokens (a few small softmaxes instead of one K-way one). fsq: products of groups of "
            "levels counted from the last (8,8,8,6,5 → 240x64); vq/ema/simvq: the codebook is renumbered after "
            "training by balanced k-means (two sub-tokens). 'none': flat. Default: the data set's preset.",
            show_default=False,
        ),
    ] = None,
    lookup_dim: Annotated[
        int,
        typer.Option(
            "--lookup-dim",
            help="Look codes up in a learned d-dimensional projection of the encoder output, e.g. 16 (vq, ema, "
            "simvq; 0: in the full --embed-dim).",
        ),
    ] = 0,
    cosine: Annotated[
        bool,
        typer.Option(
            "--cosine/--no-cosine", help="l2-normalise codes and encoder vectors before the lookup (cosine distance)."
        ),
    ] = False,
    adversarial: Annotated[
        float | None,
        typer.Option(
            "--adversarial",
            help="Weight of a VQGAN-style adversarial term (PatchGAN discriminator, hinge loss, weighted adaptively "
            "against the reconstruction loss at the decoder's last layer); 0: off. Default: the data set's preset, "
            f"{defaults_text('ae_adversarial')}, with its --adversarial-start and --feature-matching.",
            show_default=False,
        ),
    ] = None,
    adversarial_start: Annotated[
        int | None,
        typer.Option(
            "--adversarial-start",
            help="Steps of reconstruction alone before the discriminator joins (and trains). Default: the preset's "
            "with the preset's --adversarial, else 0.",
            show_default=False,
        ),
    ] = None,
    adversarial_lr: Annotated[
        float | None,
        typer.Option(
            "--adversarial-lr",
            help="The discriminator's learning rate (default: the autoencoder's --lr).",
            show_default=False,
        ),
    ] = None,
    feature_matching: Annotated[
        float | None,
        typer.Option(
            "--feature-matching",
            help="Weight of feature matching: the L1 distance between original and reconstruction in the "
            "discriminator's hidden layers, a perceptual loss that needs no pretrained network (needs --adversarial). "
            "Default: the preset's with the preset's --adversarial, else 0.",
            show_default=False,
        ),
    ] = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    ema_weights: EmaWeightsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    log_every: LogEveryOpt = 50,
    eval_every: EvalEveryOpt = 0,
    save_every: SaveEveryOpt = 500,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Train the VQ-VAE (stage one): images → m×m code grids → reconstructions.

    Writes config.json, model.safetensors, state.safetensors (for --resume), metrics.jsonl and recon.png
    into --out, then prints held-out MSE, PSNR, SSIM, codes used and perplexity.
    """
    from vqgen.api import train_autoencoder
    from vqgen.errors import VQGenError
    from vqgen.factorise import parse_factors

    given = _typed(ctx, locals())
    try:
        if fsq_levels is not None:
            given["fsq_levels"] = _parse_levels(fsq_levels)
        if code_factors is not None:
            given["code_factors"] = parse_factors(code_factors)
    except ValueError as e:
        raise VQGenError(f"{e}") from e
    console = _console()
    results, run_dir = train_autoencoder(**given, console=console)
    _print_table(f"held-out results ({run_dir})", results, console)
    console.print(f"wrote {run_dir}/model.safetensors, metrics.jsonl, recon.png")


@app.command()
def reconstruct(
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder run folder.")] = Path("runs/ae"),
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Data to reconstruct (default: the run's own), as for train-ae.", show_default=False
        ),
    ] = None,
    data_root: DataRootOpt = None,
    n: Annotated[int, typer.Option("--n", help="Number of held-out images to show.")] = 32,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN/reconstruct.png).", show_default=False)
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Write a grid of held-out originals over their reconstructions through the codes."""
    from vqgen.autoencoder import data_for, load_autoencoder, save_reconstructions
    from vqgen.device import resolve_device
    from vqgen.errors import VQGenError

    if n < 1:
        raise VQGenError(f"--n must be at least 1, not {n}")
    _check_output_file(out or Path(ae) / "reconstruct.png")
    dev = resolve_device(device)
    model, config = load_autoencoder(ae, dev)
    images = data_for(model, config, data, data_root).test.images[:n]
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


# ----------------------------------------------------------------------------------------------- stage two


@app.command()
def encode(
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder run folder.")] = Path("runs/ae"),
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data to encode (default: the data the autoencoder was trained on), as for train-ae.",
            show_default=False,
        ),
    ] = None,
    data_root: DataRootOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Codes file to write (safetensors).")] = Path(
        "runs/codes.safetensors"
    ),
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 500,
    device: DeviceOpt = "auto",
) -> None:
    """Encode the train and test split into m×m code grids (with labels, where the data has them)."""
    from vqgen.codes import encode_dataset

    _check_output_file(out)
    console = _console()
    codes, stats = encode_dataset(ae, out, data, data_root, device, batch_size, console)
    _print_table(
        f"{out}: {stats['train_images']} train + {stats['test_images']} test grids of "
        f"{codes.grid_size}×{codes.grid_size}"
        + (f" (+ {codes.grid_size // 2}×{codes.grid_size // 2} top grids)" if codes.levels == 2 else "")
        + f", K={codes.codebook_size}",
        {"codes used (train)": stats["codes_used"], "perplexity (train)": stats["perplexity"]}
        | (
            {
                "top grid: codes used (train)": stats["codes_used_top"],
                "top grid: perplexity (train)": stats["perplexity_top"],
            }
            if "codes_used_top" in stats
            else {}
        ),
        console,
    )


@app.command()
def factorise(
    ae: Annotated[Path, typer.Option("--ae", help="Autoencoder run folder to factorise.")] = Path("runs/ae"),
    factors: Annotated[
        str,
        typer.Option(
            "--factors",
            help="Sub-vocabulary sizes whose product is K, most significant first: e.g. 128x128 for K=16384 "
            "(vq/ema/simvq: the codebook is renumbered by balanced k-means; fsq: groups of levels from the last).",
        ),
    ] = "128x128",
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="levels (fsq only: groups of levels) or kmeans (renumber the codebook by balanced k-means, two "
            "sub-tokens; fsq's grid of codes too). Default: levels for fsq, kmeans for vq/ema/simvq.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run folder of the factorised copy (default: the --ae folder + '-factorised').",
            show_default=False,
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Copy a trained autoencoder with factorised codes (train-ae --code-factors does this while training).

    The networks are unchanged and so are its images; only the code numbers change, so that a prior predicts each
    code as a few sub-tokens (one small softmax each) rather than with one K-way softmax. Encode with the copy.
    """
    from vqgen.autoencoder import factorise_autoencoder
    from vqgen.errors import VQGenError
    from vqgen.factorise import parse_factors

    try:
        sizes = parse_factors(factors)
    except ValueError as e:
        raise VQGenError(str(e)) from e
    if not sizes:
        raise VQGenError("--factors names at least two sub-vocabulary sizes, e.g. 128x128")
    run_dir = factorise_autoencoder(ae, sizes, out or Path(f"{ae}-factorised"), force, by)
    _console().print(f"wrote {run_dir}: codes of K={'×'.join(map(str, sizes))}; encode with --ae {run_dir}")


@app.command("train-prior")
def train_prior_cmd(
    ctx: typer.Context,
    codes: Annotated[
        Path | None,
        typer.Option(
            "--codes",
            help="Codes file written by `vqgen encode` (default: runs/codes.safetensors; with --resume, the one "
            "the run was trained on).",
            show_default=False,
        ),
    ] = None,
    arch: Annotated[
        str, typer.Option("--arch", help="transformer (PixelAtt, a causal Transformer) or pixelcnn (gated PixelCNN).")
    ] = "transformer",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run folder to write (default: runs/prior; runs/prior-bottom with --level bottom).",
            show_default=False,
        ),
    ] = None,
    flat: Annotated[
        bool,
        typer.Option(
            "--flat",
            help="One K-way softmax even when the codes factorise (by default a prior of factorised codes predicts "
            "each code's sub-tokens in turn, as the codes file records).",
        ),
    ] = False,
    patch: Annotated[
        int | None,
        typer.Option(
            "--patch",
            help="p: each position of the prior predicts a p×p patch of codes, one code after another, so a 16×16 "
            "grid runs as 8×8 positions at about an 8×8 grid's cost (default: 2 for grids above 8×8, else 1).",
            show_default=False,
        ),
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(
            "--level",
            help="Which grid of a two-level autoencoder's codes to model: top, or bottom (conditioned on the top "
            "grid). One-level codes need none.",
            show_default=False,
        ),
    ] = None,
    class_conditional: Annotated[
        bool | None,
        typer.Option(
            "--class-conditional/--unconditional",
            help="Condition on the class label (default: when the codes file has labels).",
            show_default=False,
        ),
    ] = None,
    class_dropout: Annotated[
        float,
        typer.Option(
            "--class-dropout",
            help="Training probability of hiding the label, so the model also samples unconditionally.",
        ),
    ] = 0.1,
    layers: Annotated[
        int | None,
        typer.Option(
            "--layers", help="Transformer blocks / PixelCNN gated layers (default 4 / 10).", show_default=False
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(
            "--width",
            help="Transformer embedding width / PixelCNN channels (default 128, 64 on shapes / 64).",
            show_default=False,
        ),
    ] = None,
    heads: Annotated[int, typer.Option("--heads", help="Attention heads (transformer).")] = 4,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout in the Transformer blocks.")] = 0.0,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW decay on weight matrices only.")] = 0.01,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    minutes: MinutesOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    ema_weights: EmaWeightsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    log_every: LogEveryOpt = 50,
    eval_every: EvalEveryOpt = 500,
    save_every: SaveEveryOpt = 500,
    resume: ResumeOpt = False,
    force: ForceOpt = False,
) -> None:
    """Fit an autoregressive prior over the code grids, in raster order (stage two).

    Logs train loss and held-out bits per code / per image; writes config.json, model.safetensors,
    metrics.jsonl and samples.png (decoded samples at every evaluation) into --out.
    """
    from vqgen.api import train_prior

    console = _console()
    results, run_dir = train_prior(**_typed(ctx, locals()), console=console)
    _print_table(f"held-out results ({run_dir})", results, console)


# ----------------------------------------------------------------------------------------------- sampling

PriorOpt = Annotated[Path, typer.Option("--prior", help="Prior run folder (its autoencoder is found from it).")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", help="Softmax temperature (> 0; < 1 is more conservative).")
]
TopKOpt = Annotated[
    int | None, typer.Option("--top-k", help="Sample only among the k most likely codes.", show_default=False)
]
TopPOpt = Annotated[
    float | None,
    typer.Option(
        "--top-p", help="Nucleus sampling: the smallest set of codes with this much probability.", show_default=False
    ),
]
IgnoreHashOpt = Annotated[
    bool,
    typer.Option("--ignore-hash", help="Sample even if the autoencoder's weights changed since the prior was trained."),
]
BottomPriorOpt = Annotated[
    Path | None,
    typer.Option(
        "--bottom-prior",
        help="A two-level autoencoder's bottom prior (default: the --prior folder's name + '-bottom').",
        show_default=False,
    ),
]
AeOverrideOpt = Annotated[
    Path | None,
    typer.Option("--ae", help="Autoencoder run (default: the one the prior records).", show_default=False),
]


@app.command()
def sample(
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 64,
    prior: PriorOpt = Path("runs/prior"),
    out: Annotated[Path, typer.Option("--out", help="Folder for grid.png and 000.png, 001.png, ...")] = Path("samples"),
    seed: SeedOpt = 0,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    guidance: GuidanceOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Grids sampled in parallel.")] = 64,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class",
            "--classes",
            help="Class index or name to sample (repeatable; cycles over the values); 'all' (the default for a "
            "class-conditional prior) gives rows per class; 'none' draws each sample's class from the training "
            "labels' frequencies (unconditional samples of p(x), guided); 'null' the model's null class, unguided.",
            show_default=False,
        ),
    ] = None,
    classes_all: Annotated[
        bool, typer.Option("--classes-all", "--all-classes", help="One row per class (same as --class all).")
    ] = False,
    save_codes: Annotated[
        bool, typer.Option("--save-codes", help="Also write the sampled grids to OUT/codes.safetensors.")
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Transformer: recompute the whole sequence for each code (for benchmarks)."),
    ] = False,
    bottom_prior: BottomPriorOpt = None,
    ae: AeOverrideOpt = None,
    ignore_hash: IgnoreHashOpt = False,
    device: DeviceOpt = "auto",
    precision: SamplePrecisionOpt = "auto",
) -> None:
    """Sample new images: prior → codebook lookup → decoder. Writes OUT/grid.png and one PNG per image."""
    from vqgen.sample import SamplingOptions, check_count, load_pipeline
    from vqgen.sample import sample as run_sample

    _check_seed(seed)
    check_count(n, "--n")
    opts = SamplingOptions(temperature, top_k, top_p, batch_size, seed, use_cache=not no_cache, guidance=guidance)
    opts.check()  # before anything is loaded; --top-k is checked against the prior's K
    pipe = load_pipeline(prior, device, ae, ignore_hash, precision, bottom_prior)
    wanted = ["all"] if classes_all else (classes or [])
    result = run_sample(pipe, n, out, opts, wanted, save_codes)
    console = _console()
    console.print(
        f"wrote {result.grid} and {len(result.files)} images {result.files[0].name}…{result.files[-1].name} in {out}/"
    )
    guided = f", guidance {result.guidance:g}" if result.guidance is not None else ""
    console.print(
        f"sampling {result.sample_seconds:.2f} s ({result.codes_per_second:,.0f} codes/s{guided}), "
        f"decoding {result.decode_seconds:.2f} s ({pipe.precision})"
    )


@app.command()
def complete(
    images: Annotated[list[Path], typer.Option("--image", help="Image file(s) to complete (repeatable).")],
    keep_rows: Annotated[
        int | None,
        typer.Option(
            "--keep-rows",
            help="Rows of codes to keep from each image (of the top grid, two-level). Default 3; for a prior of p×p "
            "patches half the rows, a multiple of p.",
            show_default=False,
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Completions per image.")] = 8,
    prior: PriorOpt = Path("runs/prior"),
    out: Annotated[Path, typer.Option("--out", help="Folder for completions.png.")] = Path("samples"),
    seed: SeedOpt = 0,
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    guidance: GuidanceOpt = None,
    label: Annotated[
        str | None,
        typer.Option("--class", help="Class to complete towards (conditional priors).", show_default=False),
    ] = None,
    bottom_prior: BottomPriorOpt = None,
    ae: AeOverrideOpt = None,
    ignore_hash: IgnoreHashOpt = False,
    device: DeviceOpt = "auto",
    precision: SamplePrecisionOpt = "auto",
) -> None:
    """Encode images, keep their first rows of codes, let the prior sample the rest N times.

    Writes a grid with one row per image: the original, the kept part, then the completions.
    """
    from vqgen.sample import SamplingOptions, check_count, load_pipeline
    from vqgen.sample import complete as run_complete

    _check_seed(seed)
    check_count(n, "--n")
    opts = SamplingOptions(temperature, top_k, top_p, seed=seed, guidance=guidance)
    opts.check()
    pipe = load_pipeline(prior, device, ae, ignore_hash, precision, bottom_prior)
    path = run_complete(pipe, images, keep_rows, n, out, opts, label)
    _console().print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------- evaluation


@app.command("eval")
def eval_cmd(
    ae: Annotated[
        Path | None,
        typer.Option("--ae", help="Autoencoder run (default: the prior's, else runs/ae).", show_default=False),
    ] = None,
    prior: Annotated[
        Path | None,
        typer.Option("--prior", help="Prior run: adds held-out bits per code and sample quality.", show_default=False),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Data to evaluate on (default: the autoencoder's own), as for train-ae.", show_default=False
        ),
    ] = None,
    data_root: DataRootOpt = None,
    n: Annotated[int, typer.Option("--n", help="Samples, and held-out images they are compared with.")] = 1000,
    temperature: TemperatureOpt = 1.0,
    guidance: GuidanceOpt = None,
    classes: Annotated[
        str,
        typer.Option(
            "--class",
            help="Which labels the samples get from a class-conditional prior: 'all' cycles over the classes "
            "(uniform; class accuracy is measured), 'none' draws them from the training labels' frequencies "
            "(unconditional samples), 'null' uses the null class.",
        ),
    ] = "all",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch, grids sampled at once.")] = 500,
    train_limit: Annotated[
        int,
        typer.Option(
            "--train-limit", help="Train images to encode for the unigram entropy and the memorisation check."
        ),
    ] = 60_000,
    classifier_steps: Annotated[
        int | None,
        typer.Option(
            "--classifier-steps",
            help="Steps to train the sample-quality classifier when none is cached (default: 2 epochs, at most 600; "
            "12 epochs on natural colour images).",
            show_default=False,
        ),
    ] = None,
    features_from: Annotated[
        str | None,
        typer.Option(
            "--features-from",
            help="A labelled data set whose classifier gives the features of the Fréchet distances, for data with "
            "no labels of its own (e.g. a folder of flowers scored in TinyImageNet20's features); its images are "
            "resized to the evaluated ones. Default: the evaluated data's own classifier.",
            show_default=False,
        ),
    ] = None,
    two_sample_steps: Annotated[
        int | None,
        typer.Option(
            "--two-sample-steps",
            help="Training steps of each two-sample test's network (batches of 128; default 400); fewer are faster "
            "and see less.",
            show_default=False,
        ),
    ] = None,
    bottom_prior: BottomPriorOpt = None,
    ignore_hash: IgnoreHashOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Report to write (default: eval.json in the prior's run folder, else the autoencoder's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Evaluate an autoencoder run (and a prior run with it) on the held-out split; write eval.json.

    Stage one: MSE, PSNR, SSIM, codes used, perplexity. With --prior: held-out bits per code beside the unigram
    entropy of the train codes; distinct and train-copying samples; and, for labelled data (or with
    --features-from), Fréchet distances and class accuracy in the features of a small classifier trained once and
    cached in DATA_ROOT/classifiers/ (12 epochs on natural colour images, on 32×32 inputs above 32 pixels).
    eval.json goes into the prior's run folder when --prior is given, else the autoencoder's.
    """
    from vqgen.evaluate import EvalOptions, evaluate_run, report_notes, report_rows

    _check_output_file(out)
    _check_seed(seed)
    opts = EvalOptions(
        n=n,
        seed=seed,
        batch_size=batch_size,
        temperature=temperature,
        guidance=guidance,
        classes=classes,
        train_limit=train_limit,
        classifier_steps=classifier_steps,
        features_from=features_from,
        **({"two_sample_steps": two_sample_steps} if two_sample_steps is not None else {}),
    )
    console = _console()
    report, path = evaluate_run(ae, prior, data, data_root, opts, device, ignore_hash, console, out, bottom_prior)
    _print_table(f"{path} ({report['data']['name']}, {report['seconds']:.0f} s)", report_rows(report), console)
    for note in report_notes(report):
        console.print(f"[dim]{note}[/]")


@app.command()
def presets() -> None:
    """Print the defaults of each data set (vqgen/presets.py); a flag always wins over them.

    A folder or array file whose name starts with a data set's name takes that set's preset; other data take the
    plain recipe up to 32 pixels and the size rule's above (a 16×16 grid of codes at 64 pixels, read by the prior as
    2×2 patches). Measured figures for each: the README's table of presets and docs/results.md.
    """
    from rich.table import Table

    from vqgen.presets import LISTED, adversarial_text, listed_patch, listed_preset, stage_one_text, stage_two_text

    table = Table(title="presets (vqgen/presets.py)", show_header=True, header_style="bold")
    for column in ("data", "stage one", "codes", "adversarial", "stage two", "guidance"):
        table.add_column(column)
    for key, label in LISTED.items():
        p = listed_preset(key)
        grid = f"downsample {p.ae_downsample}, width {p.ae_hidden}"
        guidance = "none" if p.prior_guidance is None else f"{p.prior_guidance:g}"
        two = stage_two_text(p, listed_patch(key))
        table.add_row(label, stage_one_text(p), grid, adversarial_text(p), two, guidance)
    _console().print(table)


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(help="A run folder (autoencoder or prior).")] = Path("runs/ae"),
    n: Annotated[
        int, typer.Option("--n", help="Held-out images to encode for the code-usage plots (autoencoder runs).")
    ] = 5000,
    data_root: DataRootOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Write PNGs into a run folder: training curves (curves.png); for an autoencoder also code usage sorted by
    frequency (code_usage.png) and a 2-D PCA of the codebook coloured by usage (codebook_pca.png).

    Needs matplotlib: pip install -e '.\\[plots]'.
    """
    from vqgen.plots import plot_run

    paths = plot_run(run, n, device, data_root)
    _console().print("wrote " + ", ".join(str(p) for p in paths))


# ----------------------------------------------------------------------------------------------- entry point


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _system_error(e: BaseException) -> str | None:
    """One line for what the system refused (disk full, permissions, memory, an image too large), else None."""
    if isinstance(e, OSError):
        where = f" ('{e.filename}')" if e.filename else ""
        what = e.strerror or str(e) or type(e).__name__
        hint = {
            errno.ENOSPC: "; free some space or write elsewhere (what was saved before is intact)",
            errno.EDQUOT: "; free some space or write elsewhere (what was saved before is intact)",
            errno.EACCES: "; check the permissions or choose another path",
            errno.EROFS: "; choose a writable path",
        }.get(e.errno, "")
        return f"{what}{where}{hint}"
    if isinstance(e, MemoryError):
        return "not enough memory; use a smaller --batch-size, model or data set"
    if isinstance(e, RecursionError):
        return "an input is nested too deeply to read"
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(e, pil.DecompressionBombError):
        return f"{e} Use a smaller image"
    return None


def main() -> None:
    from vqgen.errors import VQGenError, flag_names

    with flag_names():  # errors name --flags here, keyword arguments for Python callers
        try:
            _main()
        except VQGenError as e:  # only with --debug: its traceback, printed after this block, keeps the flags
            e.keep_flags = True
            raise


def _main() -> None:
    from typer._click import exceptions as usage  # typer's own copy of click

    from vqgen.errors import TrainingInterrupted, VQGenError

    try:
        code = app(standalone_mode=False)
    except usage.NoArgsIsHelpError as e:
        e.show()
        sys.exit(2)
    except usage.ClickException as e:  # a usage error: one line, like every other error
        if _DEBUG["on"]:
            raise
        ctx = getattr(e, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        print(f"error: {_one_line(e.format_message())}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except VQGenError as e:
        if _DEBUG["on"]:
            raise
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        print(f"interrupted: {e}. Resume with the same command plus --resume.", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        message = None if _DEBUG["on"] else _system_error(e)
        if message is None:
            raise
        print(f"error: {_one_line(message)}", file=sys.stderr)
        sys.exit(1)
    if code == 130:  # typer turns a KeyboardInterrupt into exit code 130
        print("interrupted", file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
