"""Autoregressive priors over the m×m grid of VQ-VAE codes.

A prior factorises p(c) = Π_i p(c_i | c_<i [, y]) over the grid in raster order, where every code is an
integer in [0, K) and y is an optional class label. Two architectures share the `Prior` interface:

- ``"pixelcnn"``: a gated PixelCNN (van den Oord et al. 2016) with vertical and horizontal stacks;
- ``"transformer"`` (a.k.a. PixelAtt): a decoder-only causal Transformer with a key/value cache.

Class-conditional models reserve label ``num_classes`` as the "null" class; labels=None means null, and
class dropout during training teaches a single model to sample both with and without a label.

A patched prior (``patch`` p > 1) runs over the (m/p)×(m/p) grid of p×p patches: each position predicts its p²
codes one after another (sub-tokens of the position, vqgen.priors.heads), so a 16×16 grid costs about what an 8×8
one does. The order is still a raster order of patches, codes row by row inside each, so p(c) stays exact.

The bottom prior of a two-level autoencoder models p(c_bottom | c_top [, y]): it takes the whole top grid as
`context` (``context_grid`` > 0), the Transformer as a prefix of tokens, the PixelCNN as a conditioning stack. The
context is given, so every bottom code may see all of it; the bottom codes stay causal among themselves.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen.choices import ARCHS, Arch
from vqgen.distributed import shard_rand
from vqgen.factorise import check_factors, join_codes, split_codes
from vqgen.limits import MAX_CLASSES, MAX_CODEBOOK, MAX_GRID, MAX_PARAMETERS
from vqgen.limits import is_int as _is_int
from vqgen.limits import short as _short

_ARCH_ALIASES = {"pixelatt": "transformer"}
# The fields every saved prior config has had: without them a run's weights cannot be told apart.
REQUIRED = ("arch", "codebook_size", "grid_size", "num_classes")


@dataclass
class PriorConfig:
    arch: Arch = "transformer"  # "transformer" (PixelAtt) or "pixelcnn"
    codebook_size: int = 512  # K: codes are integers in [0, K)
    grid_size: int = 7  # m: the prior models an m×m grid
    num_classes: int = 0  # 0 = unconditional; else labels 0..num_classes-1, and num_classes = null
    class_dropout: float = 0.1  # training-time probability of replacing the label by the null class
    context_grid: int = 0  # m_c > 0: conditioned on an m_c×m_c grid of codes in [0, K) (a two-level top grid)
    # sub-vocabulary sizes of a code (vqgen.factorise), most significant first: G softmaxes of K_g, not one of K.
    # [] is the flat K-way output.
    factors: list[int] = field(default_factory=list)
    patch: int = 1  # p: each position of the network predicts a p×p patch of codes (m divisible by p)
    # transformer
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # pixelcnn (defaults chosen so that both archs have ~0.9-1M parameters at K=512, m=7)
    pcnn_channels: int = 64
    pcnn_layers: int = 10
    pcnn_kernel: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str):
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {_short(self.arch)}")
        self.arch = _ARCH_ALIASES.get(self.arch.lower(), self.arch.lower())
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {_short(self.arch)}")
        # Upper bounds keep a damaged or hostile config.json from asking for an absurd allocation.
        bounds = {
            "codebook_size": (2, MAX_CODEBOOK),
            "grid_size": (1, MAX_GRID),
            "n_layer": (1, 256),
            "n_head": (1, 256),
            "n_embd": (1, 16384),
            "pcnn_channels": (1, 16384),
            "pcnn_layers": (1, 256),
            "pcnn_kernel": (3, 63),
            "num_classes": (0, MAX_CLASSES),
        }
        for name, (lower, upper) in bounds.items():
            value = getattr(self, name)
            if not _is_int(value) or not lower <= value <= upper:
                raise ValueError(f"{name} must be an integer in [{lower}, {upper}], not {_short(value)}")
        if not _is_int(self.context_grid) or not 0 <= self.context_grid <= self.grid_size:
            raise ValueError(f"context_grid must be an integer in [0, grid_size], not {_short(self.context_grid)}")
        for name in ("class_dropout", "dropout"):
            value = getattr(self, name)
            if not (_is_int(value) or isinstance(value, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], not {_short(value)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.pcnn_kernel < 3 or self.pcnn_kernel % 2 == 0:
            raise ValueError(f"pcnn_kernel must be odd and >= 3, not {self.pcnn_kernel}")
        self.factors = check_factors(self.factors, self.codebook_size)
        if not _is_int(self.patch) or not 1 <= self.patch <= self.grid_size or self.grid_size % self.patch:
            raise ValueError(
                f"patch must be an integer that divides the grid side {self.grid_size}, not {_short(self.patch)}"
            )
        if self.patch > 1 and self.context_grid:
            raise ValueError("a patched prior takes no context grid: give a two-level bottom prior patch 1")
        if self.patch > 1 and (self.codebook_size - 1).bit_length() * self.patch**2 > 62:
            raise ValueError(
                f"a patch of {self.patch}×{self.patch} codes of K={self.codebook_size} does not fit one 64-bit number: "
                "use a smaller patch"
            )
        parameters = estimate_parameters(self)
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"this prior would have about {parameters:,} parameters, over the limit of {MAX_PARAMETERS:,} (4 GiB "
                "of fp32 weights): use fewer --layers or a smaller --width"
                + ("" if self.factors else ", or factorised codes (vqgen factorise) for this K")
            )

    @property
    def token_factors(self) -> list[int]:
        """The sub-vocabularies of one position: a code's factors (or K) once per code of its patch; [] flat."""
        if self.patch == 1:
            return self.factors
        return (self.factors or [self.codebook_size]) * self.patch**2

    @property
    def factorised(self) -> bool:
        return len(self.token_factors) >= 2

    @property
    def side(self) -> int:
        """The side of the grid of positions the network runs over: m, or m/p for a patched prior."""
        return self.grid_size // self.patch

    @property
    def seq_len(self) -> int:
        return self.side * self.side

    @property
    def null_class(self) -> int:
        # For unconditional models this is 0: the single "label" that selects the learned start/bias.
        return self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        """The config a run saved (fields added since then take their defaults); a ValueError if it is damaged."""
        if not isinstance(d, dict):
            raise ValueError(f"the prior's model section is not an object but {type(d).__name__}")
        missing = [name for name in REQUIRED if name not in d]
        if missing:
            raise ValueError(f"the prior's model section has no {', '.join(missing)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# the options (and api keywords) that set a field: a message about a size the user chose names the option
_OPTION_OF_FIELD = {
    "n_layer": "--layers",
    "pcnn_layers": "--layers",
    "n_embd": "--width",
    "pcnn_channels": "--width",
    "n_head": "--heads",
    "class_dropout": "--class-dropout",
    "dropout": "--dropout",
    "arch": "--arch",
    "patch": "--patch",
}
_FIELD = re.compile(r"(?<![\w-])(" + "|".join(_OPTION_OF_FIELD) + r")(?![\w-])")


def as_options(message: str) -> str:
    """'n_embd (128) must be divisible by n_head (3)' → '--width (128) must be divisible by --heads (3)', for an
    error about a setting the user gave (a damaged config.json keeps the field names)."""
    return _FIELD.sub(lambda m: _OPTION_OF_FIELD[m[1]], message)


def estimate_parameters(cfg: PriorConfig) -> int:
    """About how many parameters build_prior(cfg) has, from the sizes alone: what is checked before building."""
    k, labels = cfg.codebook_size, cfg.num_classes + 1
    vocab = sum(cfg.token_factors) if cfg.factorised else k  # rows of an input embedding, and outputs of the head
    if cfg.arch == "transformer":
        c = cfg.n_embd
        width, body = c, cfg.n_layer * (12 * c * c + 13 * c) + (cfg.context_grid**2 + cfg.seq_len + labels) * c
    else:
        c, half = cfg.pcnn_channels, cfg.pcnn_kernel // 2
        per_layer = 2 * c * c * ((half + 1) * cfg.pcnn_kernel + half + 1) + 5 * c * c + 4 * c * labels
        body = cfg.pcnn_layers * (per_layer + (4 * c * c if cfg.context_grid else 0)) + 19 * c * c
        width = c
    embeddings = vocab * width * (2 if cfg.context_grid else 1)
    head = vocab * width
    if cfg.factorised:  # per sub-token after the first: an embedding of the one before and a residual MLP
        head += (len(cfg.token_factors) - 1) * 4 * width * width + sum(cfg.token_factors[:-1]) * width
    return body + embeddings + head


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one index per row of logits (B, K) → (B,) int64, after temperature, top-k and top-p filtering."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    logits = logits.float()
    # Subtracting the row max first keeps a tiny temperature finite: the max becomes 0 and every other
    # logit a large negative number, so softmax tends to the argmax one-hot instead of inf/inf = nan.
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, not {top_k}")
        if top_k < logits.size(-1):
            # scatter (rather than thresholding at the k-th value) keeps exactly k tokens even with ties
            top = torch.topk(logits, top_k, dim=-1)
            logits = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        if top_p < 1.0:
            sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            # A token is dropped when the more likely tokens already reach top_p; this keeps the smallest
            # set whose mass is >= top_p, and always the most likely token.
            drop_sorted = mass_before >= top_p
            drop_sorted[..., 0] = False
            drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)  # back to vocabulary order
            logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, K)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def guided_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: logits (2B, K) of [conditional; null-class] rows → (B, K) null + S·(cond − null).

    torch.lerp(null, cond, S) computes exactly that, and returns `cond` bit for bit at S = 1 and `null` at S = 0,
    so guidance 1 and 0 reproduce plain conditional and null-class sampling code for code.
    """
    cond, null = logits.float().chunk(2, dim=0)  # each (B, K)
    return torch.lerp(null, cond, scale)


def code_cross_entropy(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """logits (B, m·m, K) against codes (B, m, m) → mean nats per code."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), codes.reshape(-1))


class Prior(nn.Module):
    """Base class: logits over the next code in raster order, the training loss and sampling."""

    cfg: PriorConfig

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        self.subtokens: nn.Module | None = None  # the architecture sets a SubtokenHead for factorised codes

    def _outputs(self, codes: torch.Tensor, labels: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, H, W) with H ≤ s rows (codes, or a patched prior's joined patches), resolved labels (B,) and
        context → per raster position either the logits (B, H·W, K) of flat codes or the hidden states (B, H·W, C)
        that the sub-token head reads.

        Output i depends only on the codes at raster positions < i (and on the label and the context)."""
        raise NotImplementedError

    def forward(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        nll: bool = False,
    ) -> torch.Tensor:
        """codes (B, m, m) int64, labels (B,) or None, context (B, m_c, m_c) where the prior has one → logits
        (B, m*m, K) in raster order (for factorised codes the exact log-probabilities of all K codes, enumerated:
        a test's view, dear at large K); or with nll=True the mean negative log-likelihood in nats per code.

        logits[:, i] depends only on the codes at raster positions < i (and on the label and the context).
        """
        batch = codes.size(0)
        tokens = self.to_positions(codes)  # (B, s, s): one token per position
        out = self._outputs(
            tokens, self.resolve_labels(labels, batch, codes.device), self.check_context(context, batch)
        )
        if nll:
            if self.subtokens is None:
                return code_cross_entropy(out, tokens)
            # a position's −log p is the sum over its p² codes, so per code it is divided by p²
            nats = self.subtokens.nll(out.reshape(-1, out.size(-1)), tokens.reshape(-1))
            return nats.mean() / self.cfg.patch**2
        if self.subtokens is None:
            return out
        if self.cfg.patch > 1:
            raise ValueError("a patched prior's positions have K^(p²) values: ask for nll=True, not every logit")
        return self.subtokens.log_probs(out.reshape(-1, out.size(-1))).view(batch, -1, self.cfg.codebook_size)

    def to_positions(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, m, m) → the tokens the network models (B, s, s): for a patched prior each p×p patch joined into
        one number, its codes in row order, the first most significant; else the codes themselves."""
        p = self.cfg.patch
        if p == 1:
            return codes
        b, m = codes.size(0), codes.size(1)
        patches = codes.reshape(b, m // p, p, m // p, p).permute(0, 1, 3, 2, 4).reshape(b, m // p, m // p, p * p)
        return join_codes(list(patches.unbind(-1)), [self.cfg.codebook_size] * p * p)  # (B, s, s)

    def from_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """The inverse of to_positions: tokens (B, s, s) → codes (B, m, m)."""
        p = self.cfg.patch
        if p == 1:
            return tokens
        b, s = tokens.size(0), tokens.size(1)
        patches = torch.stack(split_codes(tokens, [self.cfg.codebook_size] * p * p), dim=-1)  # (B, s, s, p²)
        return patches.reshape(b, s, s, p, p).permute(0, 1, 3, 2, 4).reshape(b, s * p, s * p)

    def draw_code(self, out: torch.Tensor, draw: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One raster position's outputs (n, K) or (n, C) → its codes (n,): `draw` picks from each softmax (the
        one K-way softmax, or each sub-token's in turn), so temperature, top-k/p and guidance act on each."""
        return draw(out) if self.subtokens is None else self.subtokens.sample(out, draw)

    def loss(
        self, codes: torch.Tensor, labels: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean cross-entropy (nats per code) over all B·m·m codes."""
        return self(codes, self.training_labels(labels, codes), context, nll=True)

    def check_context(self, context: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The context as this prior needs it: (B, m_c, m_c) int64 when it has one, else None; or a ValueError."""
        mc = self.cfg.context_grid
        if mc == 0:
            if context is not None:
                raise ValueError("this prior takes no context grid")
            return None
        if context is None or context.shape != (batch, mc, mc):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"this prior is conditioned on a ({batch}, {mc}, {mc}) grid of codes, not {got}")
        return context.long()

    def training_labels(self, labels: torch.Tensor | None, codes: torch.Tensor) -> torch.Tensor:
        """(B,) labels for a forward pass; in training, class dropout swaps some for the null class."""
        batch = codes.size(0)
        labels = self.resolve_labels(labels, batch, codes.device)
        if self.training and self.cfg.num_classes > 0 and self.cfg.class_dropout > 0:
            # drawn for the global batch under DDP, so N processes hide the labels one process would
            drop = shard_rand(batch, codes.device) < self.cfg.class_dropout
            labels = labels.masked_fill(drop, self.cfg.null_class)
        return labels

    def resolve_labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """(B,) int64 labels; None, and any label of an unconditional model, becomes the null class."""
        if labels is None or self.cfg.num_classes == 0:
            return torch.full((batch,), self.cfg.null_class, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, dtype=torch.long, device=device)
        return labels.expand(batch) if labels.ndim == 0 else labels

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: decay weight matrices and conv kernels, not embeddings, biases or norms."""
        embedding_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for param in self.parameters():
            if not param.requires_grad:
                continue
            if param.ndim >= 2 and id(param) not in embedding_weights:
                decay.append(param)
            else:
                no_decay.append(param)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
        prefix_len: int = 0,
        use_cache: bool = True,
        guidance: float | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample n grids → (n, m, m) int64 codes (given the context grids (n, m_c, m_c) of a prior that has one).

        The first prefix_len raster positions of `prefix` (n, m, m) are kept and the rest sampled, which is
        how image completion works (a patched prior keeps whole rows of patches: prefix_len a multiple of p·m).
        labels=None samples unconditionally (the null class).

        `guidance` S (a class-conditional model only) samples from the logits null + S·(cond − null): the n
        conditional and n null-class sequences run as one batch of 2n through the same forward pass (and the
        same key/value cache), and both halves receive the code drawn from the guided logits, so they stay
        equal. None is plain conditional sampling.
        """
        m, p, seq_len = self.cfg.grid_size, self.cfg.patch, self.cfg.seq_len
        device = next(self.parameters()).device
        if not 0 <= prefix_len <= m * m:
            raise ValueError(f"prefix_len must be in [0, {m * m}], not {prefix_len}")
        if p > 1 and prefix_len % (p * m):
            raise ValueError(
                f"a prior of {p}×{p} patches keeps whole rows of patches: prefix_len a multiple of {p * m}"
            )
        codes = torch.zeros(n, seq_len, dtype=torch.long, device=device)  # (n, T) tokens, one per position
        if prefix_len > 0:
            if prefix is None or prefix.shape != (n, m, m):
                raise ValueError(f"a prefix of shape ({n}, {m}, {m}) is needed when prefix_len > 0")
            kept = prefix.reshape(n, m * m)[:, :prefix_len].to(device=device, dtype=torch.long)
            if kept.min() < 0 or kept.max() >= self.cfg.codebook_size:
                raise ValueError(f"prefix codes must be in [0, {self.cfg.codebook_size})")
            prefix_len //= p * p  # in positions
            codes[:, :prefix_len] = self.to_positions(prefix.to(device=device, dtype=torch.long)).flatten(1)[
                :, :prefix_len
            ]
        context = self.check_context(None if context is None else context.to(device), n)
        if context is not None and (context.min() < 0 or context.max() >= self.cfg.codebook_size):
            raise ValueError(f"context codes must be in [0, {self.cfg.codebook_size})")
        labels = self.resolve_labels(labels, n, device)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() > self.cfg.num_classes:
            raise ValueError(f"labels must have shape ({n},) and values in [0, {self.cfg.num_classes}]")
        draw = functools.partial(
            sample_from_logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        if guidance is not None:
            if self.cfg.num_classes == 0:
                raise ValueError("guidance needs a class-conditional model")
            if not guidance >= 0:
                raise ValueError(f"guidance must be >= 0, not {guidance}")
            # (2n, T): conditional rows first, then the same grids under the null class
            codes = codes.repeat(2, 1)
            context = None if context is None else context.repeat(2, 1, 1)
            labels = torch.cat([labels, torch.full_like(labels, self.cfg.null_class)])
            draw = functools.partial(_draw_guided, draw=draw, scale=guidance)
        was_training = self.training
        self.eval()  # no dropout while sampling, so cached and uncached paths agree
        try:
            # fp32 regardless of any surrounding autocast: low-precision logits distort the tails
            with torch.autocast(device_type=device.type, enabled=False):
                self._generate(codes, labels, prefix_len, draw, use_cache, context)
        finally:
            self.train(was_training)
        return self.from_positions(codes[:n].reshape(n, self.cfg.side, self.cfg.side))  # (n, m, m)

    def _generate(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor,
        start: int,
        draw: Callable[[torch.Tensor], torch.Tensor],
        use_cache: bool,
        context: torch.Tensor | None = None,
    ) -> None:
        """Fill tokens (n, T) in place from raster position `start` on. Default: a full forward per position."""
        n, m = codes.size(0), self.cfg.side
        for i in range(start, self.cfg.seq_len):
            out = self._outputs(codes.view(n, m, m), labels, context)  # (n, T, K) or (n, T, C)
            codes[:, i] = self.draw_code(out[:, i], draw)


def _draw_guided(logits: torch.Tensor, draw: Callable[[torch.Tensor], torch.Tensor], scale: float) -> torch.Tensor:
    """logits (2n, K) of [cond; null] → the code drawn from the guided logits, for both halves (2n,)."""
    return draw(guided_logits(logits, scale)).repeat(2)


def build_prior(cfg: PriorConfig) -> Prior:
    # imported here because both architectures import `Prior` from this module
    if cfg.arch == "pixelcnn":
        from vqgen.priors.pixelcnn import PixelCNNPrior

        return PixelCNNPrior(cfg)
    from vqgen.priors.transformer import TransformerPrior

    return TransformerPrior(cfg)


__all__ = [
    "ARCHS",
    "Prior",
    "PriorConfig",
    "build_prior",
    "code_cross_entropy",
    "guided_logits",
    "sample_from_logits",
]
