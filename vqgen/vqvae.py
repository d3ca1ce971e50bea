"""The convolutional VQ-VAE: encoder → quantizer → decoder, and its configuration."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.choices import FACTOR_BY, GRADS, QUANTIZERS, FactorBy, Grad, Quantizer
from vqgen.data import to_float
from vqgen.errors import SettingError, VQGenError, WrongModelError
from vqgen.factorise import balanced_order, check_factors, fsq_factor_groups
from vqgen.limits import MAX_CODEBOOK, MAX_PARAMETERS
from vqgen.limits import is_int as _is_int
from vqgen.limits import short as _short
from vqgen.quantize import QuantizerOutput, build_quantizer

# Upper bounds keep a damaged or hostile config.json from asking for an absurd allocation.
_SIZE_BOUNDS = {
    "image_size": 8192,
    "channels": 4,
    "hidden": 8192,
    "res_blocks": 64,
    "res_hidden": 8192,
    "embed_dim": 8192,
    "codebook_size": MAX_CODEBOOK,
}
MAX_FSQ_LEVELS = 16  # dimensions of an fsq code; their product, K, has the codebook_size bound above


@dataclass
class AEConfig:
    image_size: int = 32
    channels: int = 3
    hidden: int = 128
    res_blocks: int = 2
    res_hidden: int = 32
    downsample: int = 4
    embed_dim: int = 64
    codebook_size: int = 512
    quantizer: Quantizer = "ema"
    beta: float = 1.0  # weight of the codebook loss ‖q − sg[z]‖² (vq, simvq)
    commitment: float = 0.25  # weight γ of the commitment loss ‖z − sg[q]‖²
    decay: float = 0.99  # EMA decay
    grad: Grad = "ste"
    restart_dead: int = 50
    restart_below: float = 0.0  # also restart a code whose moving-average use falls below this share of the mean
    kmeans_init: bool = True
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8])
    lookup_dim: int = 0  # d: nearest-neighbour lookup in a learned d-dimensional projection (0: in the full D)
    cosine: bool = False  # l2-normalise codes and encoder vectors before the lookup
    levels: int = 1  # 2: also a top grid at half the resolution, which the bottom is quantized and decoded with
    # sub-vocabulary sizes whose product is K, most significant first ([]: flat codes); see vqgen.factorise
    code_factors: list[int] = field(default_factory=list)
    # how codes become sub-tokens: "levels" (fsq's levels in groups) or "kmeans" (the codebook renumbered by balanced
    # k-means after training, two sub-tokens); None: levels for fsq, kmeans for the learnt codebooks
    factor_by: FactorBy | None = None

    def __post_init__(self) -> None:
        for name, upper in _SIZE_BOUNDS.items():
            value = getattr(self, name)
            lower = 0 if name == "res_blocks" else 1
            if not _is_int(value) or not lower <= value <= upper:
                raise SettingError(f"{_flag(name)} must be an integer in [{lower}, {upper}], not {_short(value)}")
        for name in ("lookup_dim", "restart_dead", "levels", "downsample"):
            if not _is_int(getattr(self, name)):
                raise SettingError(f"{name} must be an integer, not {_short(getattr(self, name))}")
        for name in ("beta", "commitment", "decay", "restart_below"):
            value = getattr(self, name)
            if not _is_int(value) and not isinstance(value, float) or not math.isfinite(value):
                raise SettingError(f"{name} must be a finite number, not {_short(value)}")
        for name in ("kmeans_init", "cosine"):
            if not isinstance(getattr(self, name), bool):
                raise SettingError(f"{name} must be true or false, not {_short(getattr(self, name))}")
        for name in ("quantizer", "grad"):
            if not isinstance(getattr(self, name), str):
                raise SettingError(f"{name} must be a string, not {_short(getattr(self, name))}")
        if self.downsample not in (2, 4, 8, 16):
            raise SettingError(f"--downsample must be 2, 4, 8 or 16, not {self.downsample}")
        if self.levels not in (1, 2):
            raise SettingError(f"--levels must be 1 or 2, not {self.levels}")
        if self.quantizer not in QUANTIZERS:
            raise SettingError(f"--quantizer must be one of {', '.join(QUANTIZERS)}, not {self.quantizer!r}")
        if self.grad not in GRADS:
            raise SettingError(f"--grad must be one of {', '.join(GRADS)}, not {self.grad!r}")
        if not 0 <= self.restart_below < 1:
            raise SettingError(f"--restart-below must be in [0, 1) (a share of the mean use), not {self.restart_below}")
        if not 0 < self.decay < 1:
            raise SettingError(f"--decay must be in (0, 1) (the EMA codebook's decay), not {self.decay}")
        if not 0 <= self.lookup_dim <= self.embed_dim:
            raise SettingError(f"--lookup-dim must be in [0, --embed-dim {self.embed_dim}], not {self.lookup_dim}")
        if self.quantizer == "fsq":
            if self.lookup_dim or self.cosine or self.restart_below:
                raise SettingError(
                    "--lookup-dim, --cosine and --restart-below apply to vq, ema and simvq; fsq has no codebook lookup"
                )
            self.fsq_levels = check_fsq_levels(self.fsq_levels)
            self.codebook_size = math.prod(self.fsq_levels)
        self.code_factors = check_factors(self.code_factors, self.codebook_size)
        if self.factor_by is not None and self.factor_by not in FACTOR_BY:
            raise SettingError(f"factor_by must be levels or kmeans, not {_short(self.factor_by)}")
        if self.factor_by == "levels" and self.quantizer != "fsq":
            raise SettingError(f"only fsq codes factorise by levels; {self.quantizer} codes are renumbered (kmeans)")
        grouped = self.renumbered or fsq_factor_groups(self.fsq_levels, self.code_factors) is not None
        if self.code_factors and not grouped:
            raise SettingError(
                f"fsq codes factorise into groups of levels, counted from the last level: {self.code_factors} are not "
                f"products of contiguous groups of --fsq-levels {self.fsq_levels} (e.g. 8,8,8,6,5 → 240x64)"
            )
        if self.renumbered and len(self.code_factors) > 2:
            raise SettingError(f"a renumbered codebook has two sub-tokens, not {self.code_factors}")
        if self.grid_size < self.levels:
            raise SettingError(
                f"--image-size {self.image_size} with --downsample {self.downsample} leaves no code grid"
                + (" at the top level" if self.levels == 2 else "")
            )
        parameters = estimate_parameters(self)
        if parameters > MAX_PARAMETERS:
            raise SettingError(
                f"this autoencoder would have about {parameters:,} parameters, over the limit of {MAX_PARAMETERS:,} "
                "(4 GiB of fp32 weights): use a smaller --hidden, --res-hidden, --res-blocks, --embed-dim or "
                "--codebook-size"
            )

    @property
    def grid_size(self) -> int:
        """m: the side of the code grid (the bottom grid of a two-level model)."""
        return self.image_size // self.downsample

    @property
    def factors(self) -> list[int]:
        """The sub-vocabulary sizes of a code: [K] for flat codes."""
        return self.code_factors or [self.codebook_size]

    @property
    def renumbered(self) -> bool:
        """Whether codes are a flat codebook's, renumbered after training (fsq's factorise by construction, unless
        factor_by says kmeans)."""
        by = self.factor_by or ("levels" if self.quantizer == "fsq" else "kmeans")
        return bool(self.code_factors) and by == "kmeans"

    @property
    def grid_sizes(self) -> list[int]:
        """The side of each level's grid, top first: [m] or [m/2, m]."""
        return [self.grid_size // 2, self.grid_size] if self.levels == 2 else [self.grid_size]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _flag(name: str) -> str:
    """A field's option: lookup_dim → --lookup-dim (errors show the keyword to Python callers, vqgen.errors); a
    field no command has an option for keeps its name. Type errors name the field: only a config.json or Python
    can give a setting of the wrong type."""
    return name if name == "res_hidden" else "--" + name.replace("_", "-")


def check_fsq_levels(levels: object) -> list[int]:
    """fsq's levels as a list of integers ≥ 2 whose product K is within the codebook bound; else a SettingError."""
    limit = _SIZE_BOUNDS["codebook_size"]
    integers = isinstance(levels, (list, tuple)) and all(_is_int(v) for v in levels)
    if not integers or not 1 <= len(levels) <= MAX_FSQ_LEVELS or any(v < 2 for v in levels):
        shown = ",".join(map(str, levels)) if integers else _short(levels)
        raise SettingError(
            f"--fsq-levels must be 1 to {MAX_FSQ_LEVELS} integers, each at least 2 (e.g. 8,8,8), not {shown or 'none'}"
        )
    if math.prod(levels) > limit:
        raise SettingError(
            f"--fsq-levels {','.join(map(str, levels))} make K = {math.prod(levels):,} codes; their product must be "
            f"at most {limit:,} (the codebook size limit)"
        )
    return list(levels)


def estimate_parameters(cfg: AEConfig) -> int:
    """About how many parameters VQVAE(cfg) has (weights of every layer, codebook and EMA buffers), from the sizes
    alone: what is checked before anything is built."""
    widths = stage_widths(cfg)
    stages = sum(16 * a * b for a, b in zip([cfg.channels, *widths], widths, strict=False))  # each of encoder, decoder
    res = cfg.res_blocks * 10 * cfg.hidden * cfg.res_hidden
    d = cfg.embed_dim
    quantizer = 3 * cfg.codebook_size * d if cfg.quantizer != "fsq" else 2 * d * len(cfg.fsq_levels)
    quantizer += 2 * d * cfg.lookup_dim + d * d  # a lookup projection, simvq's codebook transform
    total = 2 * stages + 2 * res + cfg.hidden * d + 9 * cfg.levels * d * cfg.hidden + quantizer
    if cfg.levels == 2:
        total += 16 * d * cfg.hidden + res + cfg.hidden * d + quantizer + 16 * d * d + 2 * d * d
    return total


class ResBlock(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def stage_widths(cfg: AEConfig) -> list[int]:
    """Channels after each stride-2 stage, outermost first: the last stage has `hidden`, a stage whose output is at
    1/8 of the image or smaller half of it (only with --downsample 16), the outer ones a quarter. Most of the compute
    sits at the full-resolution stages, and on a 2-core CPU this halves the cost of a step for a fraction of a dB."""
    n_down = int(math.log2(cfg.downsample))
    quarter, half = max(16, cfg.hidden // 4), max(16, cfg.hidden // 2)
    return [half if i >= 2 else quarter for i in range(n_down - 1)] + [cfg.hidden]


class Encoder(nn.Module):
    """(B, C, n, n) → (B, embed_dim, n/downsample, n/downsample) with log2(downsample) stride-2 convolutions."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = cfg.channels
        for width in stage_widths(cfg):
            layers += [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), nn.ReLU()]
            in_ch = width
        layers = layers[:-1]  # the residual blocks start with their own ReLU
        layers += [ResBlock(cfg.hidden, cfg.res_hidden) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.embed_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, levels·embed_dim, m, m) → (B, C, m·downsample, m·downsample), the mirror of the encoder."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        widths = stage_widths(cfg)[::-1]  # innermost first: hidden, then the outer widths
        # a two-level model decodes its bottom vectors beside the top's, upsampled to the bottom grid
        layers: list[nn.Module] = [nn.Conv2d(cfg.embed_dim * cfg.levels, cfg.hidden, 3, padding=1)]
        layers += [ResBlock(cfg.hidden, cfg.res_hidden) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU()]
        outs = widths[1:] + [cfg.channels]
        for i, (in_ch, out_ch) in enumerate(zip(widths, outs, strict=False)):
            layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)]
            if i < len(outs) - 1:
                layers += [nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def last_layer(self) -> torch.Tensor:
        """The weight of the layer that writes the image: where the adversarial weight compares gradients."""
        return self.net[-1].weight


def _quantizer(cfg: AEConfig) -> nn.Module:
    return build_quantizer(
        cfg.quantizer,
        cfg.codebook_size,
        cfg.embed_dim,
        beta=cfg.beta,
        commitment=cfg.commitment,
        decay=cfg.decay,
        grad=cfg.grad,
        restart_dead=cfg.restart_dead,
        restart_below=cfg.restart_below,
        kmeans_init=cfg.kmeans_init,
        fsq_levels=cfg.fsq_levels,
        lookup_dim=cfg.lookup_dim,
        cosine=cfg.cosine,
    )


class TopLevel(nn.Module):
    """The top level of a two-level VQ-VAE (VQ-VAE-2, Razavi et al. 2019, arXiv 1906.00446).

    It encodes the bottom encoder's output once more at half the resolution and quantizes that with its own codebook
    (of the same K); its vectors, upsampled to the bottom grid, are the context the bottom is quantized with and
    decoded beside. The top grid so carries the global layout, the bottom what the top leaves out."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        d = cfg.embed_dim
        layers: list[nn.Module] = [nn.Conv2d(d, cfg.hidden, 4, stride=2, padding=1)]
        layers += [ResBlock(cfg.hidden, cfg.res_hidden) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(cfg.hidden, d, 1)]
        self.encoder = nn.Sequential(*layers)  # (B, D, m, m) → (B, D, m/2, m/2)
        self.quantizer = _quantizer(cfg)
        self.upsample = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)  # (B, D, m/2, m/2) → (B, D, m, m)
        self.mix = nn.Conv2d(2 * d, d, 1)  # [bottom encoding, top context] → what the bottom quantizer sees


class VQVAE(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = _quantizer(cfg)  # the bottom level's, in a two-level model
        self.top = TopLevel(cfg) if cfg.levels == 2 else None
        if cfg.renumbered:
            # code_order[level, new] = the quantizer's own index, top level first; identity until renumber_codes()
            self.register_buffer("code_order", torch.arange(cfg.codebook_size).repeat(cfg.levels, 1))

    def quantizers(self) -> list[nn.Module]:
        """The quantizer of each level, top first."""
        return [self.quantizer] if self.top is None else [self.top.quantizer, self.quantizer]

    @torch.no_grad()
    def renumber_codes(self) -> None:
        """Renumber each level's codebook into sub-tokens (vqgen.factorise.balanced_order); a no-op for flat codes
        and for fsq's grouped levels. It changes only the numbers that encode gives and decode takes, never the
        images."""
        if not self.cfg.renumbered:
            return
        for level, quantizer in enumerate(self.quantizers()):
            self.code_order[level] = balanced_order(quantizer.codebook().float(), self.cfg.code_factors).to(
                self.code_order.device
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """x (B, C, n, n) in [-1, 1] → reconstruction (B, C, n, n) and the quantizer's output (with .top for a
        two-level model, whose auxiliary loss it includes)."""
        vq, context = self._quantize(self.encoder(x))
        if context is None:
            return self.decoder(vq.quantized), vq
        return self.decoder(torch.cat([vq.quantized, context], dim=1)), vq

    def _quantize(self, z: torch.Tensor) -> tuple[QuantizerOutput, torch.Tensor | None]:
        """The encoding z (B, D, m, m) → the quantizer's output and, for two levels, the top's context (B, D, m, m)."""
        if self.top is None:
            return self.quantizer(z), None
        top = self.top.quantizer(self.top.encoder(z))  # (B, D, m/2, m/2)
        context = self.top.upsample(top.quantized)  # (B, D, m, m)
        bottom = self.quantizer(self.top.mix(torch.cat([z, context], dim=1)))
        return QuantizerOutput(bottom.quantized, bottom.indices, bottom.loss + top.loss, bottom.counts, top), context

    @torch.no_grad()
    def encode_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, C, n, n) → the code grid of each level, top first: [(B, m, m)] or [(B, m/2, m/2), (B, m, m)].

        x is uint8 in [0, 255] or float in [-1, 1] (vqgen.data.to_float maps the one to the other).
        Runs in eval mode whatever the model's mode: encoding never changes the codebook (k-means, EMA, restarts)."""
        self.check_images(x)
        x = to_float(x) if x.dtype == torch.uint8 else x.float()  # float64 or float16 in: the weights' float32
        was_training = self.training
        self.eval()
        try:
            vq = self.quantize(x)
        finally:
            self.train(was_training)
        return self.code_grids(vq)

    def quantize(self, x: torch.Tensor) -> QuantizerOutput:
        """x (B, C, n, n) in [-1, 1] → the quantizer's output, without decoding (in training mode a quantizer
        updates its codebook: encode_levels is the call that never does)."""
        return self._quantize(self.encoder(x))[0]

    def code_grids(self, vq: QuantizerOutput) -> list[torch.Tensor]:
        """The quantizer's output → the code grid of each level, top first, in the numbers that encode gives and
        decode takes (a renumbered codebook's, not the quantizer's own indices)."""
        grids = [vq.indices] if vq.top is None else [vq.top.indices, vq.indices]
        if not self.cfg.renumbered:
            return grids
        rank = self.code_order.argsort(dim=1)  # (levels, K): rank[level, own index] = the renumbered code
        return [rank[level][grid] for level, grid in enumerate(grids)]

    @torch.no_grad()
    def decode_levels(self, grids: list[torch.Tensor]) -> torch.Tensor:
        """The code grid of each level, top first → images (B, C, n, n) in [-1, 1] (unclamped)."""
        self.check_grids(grids)
        if self.cfg.renumbered:
            grids = [self.code_order[level][grid] for level, grid in enumerate(grids)]
        if self.top is None:
            return self.decoder(self.quantizer.lookup(grids[0]))
        context = self.top.upsample(self.top.quantizer.lookup(grids[0]))  # (B, D, m, m)
        return self.decoder(torch.cat([self.quantizer.lookup(grids[1]), context], dim=1))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("generate", "generate_codes", "complete", "sample"):
                raise WrongModelError(
                    f"this is an autoencoder, which has no {name}: vqgen.Pipeline.load(PRIOR_RUN) samples from a prior "
                    "and the autoencoder it was trained on"
                ) from None
            raise

    def check_images(self, x: object, name: str = "images") -> None:
        """Refuse, in one VQGenError line, what encode cannot take: (B, C, n, n) uint8 or float images of this
        model's channels and size, B ≥ 1."""
        c, n = self.cfg.channels, self.cfg.image_size
        if not isinstance(x, torch.Tensor):
            hint = " (torch.from_numpy turns an array into one)" if type(x).__module__ == "numpy" else ""
            raise VQGenError(f"{name} must be a torch.Tensor of shape (B, {c}, {n}, {n}), not {type(x).__name__}{hint}")
        if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
            raise VQGenError(f"{name} must be uint8 in [0, 255] or float in [-1, 1], not {x.dtype}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, n, n) or len(x) == 0:
            raise VQGenError(
                f"{name} must have shape (B, {c}, {n}, {n}) with B ≥ 1 for this autoencoder, not {tuple(x.shape)}"
                + ("; pass --image-size or resize them" if x.dim() == 4 and x.shape[-1] != n else "")
            )

    def check_grids(self, grids: object) -> None:
        """Refuse, in one VQGenError line, code grids decode cannot take: a list with one integer (B, m_l, m_l)
        grid per level, top first, codes in [0, K)."""
        levels, k = self.cfg.levels, self.cfg.codebook_size
        if not isinstance(grids, (list, tuple)) or not all(isinstance(g, torch.Tensor) for g in grids):
            raise VQGenError(
                f"code grids must be a list of {levels} tensor(s), one per level, not {type(grids).__name__}"
            )
        if len(grids) != levels:
            raise VQGenError(f"this autoencoder has {levels} level(s) of codes, not {len(grids)}")
        for grid, m in zip(grids, self.cfg.grid_sizes, strict=True):
            if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
                raise VQGenError(f"codes must be integers, not {grid.dtype}")
            if grid.dim() != 3 or tuple(grid.shape[1:]) != (m, m) or len(grid) == 0:
                raise VQGenError(f"code grids must have shape (B, {m}, {m}) with B ≥ 1, not {tuple(grid.shape)}")
            low, high = int(grid.min()), int(grid.max())
            if low < 0 or high >= k:
                raise VQGenError(f"codes must lie in [0, {k}) for this codebook, not {low if low < 0 else high}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, n, n), uint8 in [0, 255] or float in [-1, 1] → code grid (B, m, m) int64 of a one-level model."""
        return self._only(self.encode_levels(x))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """code grid (B, m, m) of a one-level model → float images (B, C, n, n) in [-1, 1], unclamped
        (vqgen.data.to_uint8 clamps and rounds them to uint8)."""
        return self.decode_levels([indices])

    def _only(self, grids: list[torch.Tensor]) -> torch.Tensor:
        if len(grids) != 1:
            raise VQGenError("a two-level autoencoder has two code grids: use encode_levels / decode_levels")
        return grids[0]


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon.float(), x.float())
