"""The sample-quality classifier of `vqgen eval`: its recipes, its training and its cache.

Sample quality needs no download: a small convnet is trained once on the labelled train split of the data set and
cached under the data root. Its penultimate features stand in for Inception's in a Fréchet distance, and its
predictions say whether a class-conditional prior draws the class it was asked for. Because those features come
from a model trained on the data set itself, the numbers compare runs on the same data set, not across data sets,
and not with published FIDs.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqgen import checkpoint as ckpt
from vqgen.data import SHAPES_VERSION, TORCHVISION_SETS, BatchOrder, ImageData, iterate_batches, to_float
from vqgen.device import autocast, resolve_precision
from vqgen.errors import VQGenError

CLASSIFIER_VERSION = 2  # bump when the classifier's architecture or training recipe changes: caches retrain
CLASSIFIER_BATCH = 128


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the eval classifier of a data set is built and trained (see recipe_for)."""

    name: str
    width: int  # channels of the first conv stage; the cost of a step grows with its square
    double: bool  # two convolutions in each of the first three stages rather than one
    epochs: float  # passes over the train split, capped at max_steps
    max_steps: int
    lr: float
    weight_decay: float
    augment: bool  # random left-right flips and shifts of up to 4 pixels
    label_smoothing: float
    warmup: float  # the fraction of steps over which the learning rate rises linearly
    fast_precision: bool  # autocast as `--precision auto` picks for a convnet (bf16 where native), else fp32
    input_size: int | None = None  # larger images are area-averaged down to this size first (None: as they are)

    def record(self) -> dict:
        """The settings a cached classifier must match; unset ones are left out, so older caches stay valid."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def steps(self, train_size: int) -> int:
        return min(self.max_steps, max(1, math.ceil(self.epochs * train_size / CLASSIFIER_BATCH)))


# ~77k images: > 99% held-out accuracy on shapes and MNIST, 90% on Fashion-MNIST, in 16-20 s on 2 cores.
SMALL_RECIPE = ClassifierRecipe("small", 16, False, 2.0, 600, 2e-3, 1e-4, False, 0.0, 0.0, False)
# Natural images need more: on CIFAR-10 (36,000 train images) the small recipe reads 65% of held-out images right,
# too few for its features to mean much. This one reads 86.95% right (bench/results/natural-cifar10.json), trained
# in 7 min 45 s on 2 AVX-512 cores with bf16: 12 epochs of flips and shifts, twice the width, two convs per stage.
NATURAL_RECIPE = ClassifierRecipe("natural", 32, True, 12.0, 20_000, 2e-3, 5e-4, True, 0.1, 0.05, True)
# Above 32 pixels the natural recipe sees its images averaged down to 32×32: a step at 64 pixels would cost four
# times as much, and what tells the classes of a few thousand photos apart survives the halving (docs/results.md,
# "Your own images").
LARGE_RECIPE = replace(NATURAL_RECIPE, name="natural-32px", input_size=32)


def recipe_for(source: str, image_shape: tuple[int, int, int]) -> ClassifierRecipe:
    """The natural-image recipe for colour data other than the built-in (flat, synthetic) shapes (on 32×32 inputs
    for larger images); else the small."""
    if image_shape[0] != 3 or source.lower() == "shapes":
        return SMALL_RECIPE
    return LARGE_RECIPE if min(image_shape[1:]) > LARGE_RECIPE.input_size else NATURAL_RECIPE


# ----------------------------------------------------------------------------------------------- the classifier


class Classifier(nn.Module):
    """A small convnet: four 3×3 conv stages (BatchNorm, ReLU, max-pooling between; two convs in each of the first
    three with `double`), global average pooling, then a `feature_dim` hidden layer (the features of the Fréchet
    distance) and the class logits."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        width: int = 16,
        feature_dim: int = 128,
        double: bool = False,
        input_size: int | None = None,
    ):
        super().__init__()
        self.input_size = input_size

        def conv(c_in: int, c_out: int, repeat: bool = False) -> list[nn.Module]:
            # BatchNorm makes one or two epochs enough: inputs vary widely in colour and contrast
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            return layers + (conv(c_out, c_out) if repeat else [])

        self.body = nn.Sequential(
            *conv(channels, width, double),
            nn.MaxPool2d(2),  # (B, w, n/2, n/2)
            *conv(width, 2 * width, double),
            nn.MaxPool2d(2),  # (B, 2w, n/4, n/4)
            *conv(2 * width, 4 * width, double),
            nn.MaxPool2d(2),  # (B, 4w, n/8, n/8): the last stage sees the whole object
            *conv(4 * width, 8 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, 8w)
            nn.Linear(8 * width, feature_dim),
            nn.ReLU(),  # (B, F)
        )
        self.head = nn.Linear(feature_dim, num_classes)

    @classmethod
    def for_recipe(cls, channels: int, num_classes: int, recipe: ClassifierRecipe) -> Classifier:
        return cls(channels, num_classes, recipe.width, double=recipe.double, input_size=recipe.input_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, n, n) in [-1, 1] → penultimate features (B, F)."""
        if self.input_size is not None and x.shape[-1] > self.input_size:
            x = F.adaptive_avg_pool2d(x, self.input_size)  # (B, C, input_size, input_size)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, n, n) in [-1, 1] → class logits (B, classes)."""
        return self.head(self.features(x))


def classifier_root(data_root: str | Path) -> Path:
    """Where classifiers are cached: beside the data (DATA_ROOT/classifiers/) where that folder can be written, else
    in $VQGEN_CACHE or ~/.cache/vqgen, so that a read-only data set does not retrain its classifier on every eval."""
    import os
    import stat

    data_root = Path(data_root)
    folder = data_root / "classifiers"
    folder = folder if folder.exists() else data_root
    # the mode bits too: root may write anywhere, but a folder marked read-only is meant to stay as it is
    writable = folder.exists() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    if writable or not data_root.exists():
        return data_root
    return Path(os.environ.get("VQGEN_CACHE") or Path.home() / ".cache" / "vqgen")


def classifier_path(root: str | Path, source: str, image_shape: tuple[int, int, int]) -> Path:
    """<root>/classifiers/<dataset>-<C>x<n>.safetensors; a folder or array file also gets a hash of its path, so
    two folders that happen to share a name do not share a classifier."""
    key = source.lower()
    if key == "shapes":
        name = f"shapes-v{SHAPES_VERSION}"  # a new version of the generator must not reuse an old classifier
    elif key in TORCHVISION_SETS:
        name = key
    else:
        digest = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:8]
        name = f"{Path(source).stem}-{digest}"
    c, n, _ = image_shape
    return Path(root) / "classifiers" / f"{name}-{c}x{n}.safetensors"


@torch.no_grad()
def classifier_outputs(
    model: Classifier, images: torch.Tensor, device: torch.device, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, C, n, n) → features (N, F) float32 and predicted classes (N,) int64, on the CPU."""
    model.eval()
    feats, preds = [], []
    for start, stop in iterate_batches(len(images), batch_size):
        f = model.features(to_float(images[start:stop]).to(device))  # (B, F)
        feats.append(f.float().cpu())
        preds.append(model.head(f).argmax(1).cpu())
    dim = model.head.in_features
    if not feats:
        return torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(preds)


def flip_and_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """x (B, C, n, n) → the same images, each mirrored left-right with probability 1/2 and shifted by up to `pad`
    pixels each way (borders reflected): the augmentation that lets a small net generalise on natural images."""
    B, C, H, W = x.shape
    flip = torch.rand(B, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (B, C, H+2p, W+2p)
    dy, dx = (torch.randint(0, 2 * pad + 1, (B,), generator=generator) for _ in range(2))
    rows = dy[:, None] + torch.arange(H)  # (B, H): the source row of each output row
    cols = dx[:, None] + torch.arange(W)  # (B, W)
    padded = padded.gather(2, rows[:, None, :, None].expand(B, C, H, W + 2 * pad))  # (B, C, H, W+2p)
    return padded.gather(3, cols[:, None, None, :].expand(B, C, H, W))  # (B, C, H, W)


def train_classifier(
    data: ImageData,
    steps: int,
    device: torch.device,
    progress=None,
    seed: int = 0,
    recipe: ClassifierRecipe = SMALL_RECIPE,
) -> tuple[Classifier, float]:
    """Fit a Classifier on the labelled train split as `recipe` says (AdamW, linear warm-up and decay to 0); returns
    it and the seconds taken.

    `progress` is a live rich Progress (see vqgen.progress.make_progress) to show a bar in, or None for none."""
    channels, size, _ = data.image_shape
    train = data.train
    t0 = time.perf_counter()
    precision = resolve_precision("auto", device, "classifier") if recipe.fast_precision else "fp32"
    warmup = max(1, round(recipe.warmup * steps))
    # A private RNG stream: the classifier is the same whatever ran before, and the caller's RNG is untouched.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        shifts = torch.Generator().manual_seed(seed + 1)
        model = Classifier.for_recipe(channels, data.num_classes, recipe).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        order = BatchOrder(len(train), CLASSIFIER_BATCH, seed)
        model.train()
        bar = progress.add_task("classifier", total=steps, info="") if progress is not None else None
        correct, seen = 0, 0
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = recipe.lr * min(1.0, (step + 1) / warmup) * (1 - step / steps)
            rows = order.next()
            x = to_float(train.images[rows])  # (B, C, n, n)
            x = (flip_and_shift(x, shifts) if recipe.augment else x).to(device)
            y = train.labels[rows].to(device)  # (B,)
            with autocast(device, precision):
                logits = model(x)  # (B, classes)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                correct += int((logits.argmax(1) == y).sum())  # a sync per step, only when someone watches
                seen += len(y)
                if (step + 1) % 20 == 0 or step + 1 == steps:
                    info = f"loss {loss.item():.3f} train acc {correct / seen:.1%}"
                    progress.update(bar, completed=step + 1, info=info)
                    correct, seen = 0, 0
    return model.eval(), time.perf_counter() - t0


def load_or_train_classifier(
    data: ImageData,
    source: str,
    root: str | Path,
    device: torch.device,
    steps: int | None = None,
    progress=None,
) -> tuple[Classifier, dict]:
    """The cached classifier of this data set, or a new one trained (and cached) when there is none that matches.

    Only safetensors and JSON are read. A cache that is damaged, or was trained with other settings, is replaced.
    """
    if data.num_classes < 2 or data.train.labels is None:
        raise VQGenError(f"data '{data.name}' has no labels: the sample-quality classifier needs at least 2 classes")
    channels, size, width = data.image_shape
    if min(size, width) < 8:
        raise VQGenError(f"the classifier needs images of at least 8×8 pixels, not {size}×{width}")
    recipe = recipe_for(source, data.image_shape)
    if steps is None:
        steps = recipe.steps(len(data.train))
    path = classifier_path(root, source, data.image_shape)
    meta_path = path.with_suffix(".json")
    wanted = {
        "kind": "vqgen-classifier",
        "version": CLASSIFIER_VERSION,
        "dataset": data.name,
        "image_shape": [channels, size, width],
        "num_classes": data.num_classes,
        "recipe": recipe.record(),
        "train_size": len(data.train),
        "steps": steps,
        "batch_size": CLASSIFIER_BATCH,
    }
    if path.exists() and meta_path.exists():
        try:
            info = ckpt.load_json(meta_path)
            if all(info.get(k) == v for k, v in wanted.items()):
                with torch.device("meta"):
                    reference = Classifier.for_recipe(channels, data.num_classes, recipe).state_dict()
                model = Classifier.for_recipe(channels, data.num_classes, recipe)
                model.load_state_dict(ckpt.load_tensors(path, expected=reference))
                return model.to(device).eval(), {**info, "path": str(path), "cached": True}
        except VQGenError:
            pass  # a damaged cache is retrained and overwritten below
    model, seconds = train_classifier(data, steps, device, progress, recipe=recipe)
    info = {**wanted, "train_seconds": round(seconds, 2)}
    try:
        ckpt.save_tensors(path, model.state_dict())
        ckpt.save_json(meta_path, info)  # written last: weights without it are never trusted
    except (VQGenError, OSError) as e:
        if progress is not None:
            progress.console.print(f"[yellow]warning:[/] could not cache the classifier in '{path.parent}' ({e})")
    return model, {**info, "path": str(path), "cached": False}
