"""Data sets as uint8 images, in memory or mapped from disk, and a resumable, shardable batch order.

The built-in `shapes`, torchvision's MNIST / Fashion-MNIST / CIFAR-10 and .npz files are decoded into a
(N, C, H, W) uint8 tensor. A folder of images is decoded once into an array file on disk (vqgen/foldercache.py) and
an .npy file is used as it is: both are memory-mapped (`MappedImages`), so a data set larger than memory trains
with resident memory bounded by the batch and the page cache. Either way the training loop only indexes rows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqgen.errors import VQGenError

MAX_IMAGE_SIZE = 8192  # the autoencoder's bound (vqgen.vqvae): larger images could never be trained on
TORCHVISION_SETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
SHAPE_NAMES = ("circle", "square", "triangle", "star")
SHAPES_VERSION = 4
HELD_OUT_FRACTION = 0.1


class MappedImages:
    """(N, C, H, W) uint8 images read on demand from a (M, H, W, C) or (M, H, W) uint8 array (a numpy memory map).

    Indexing with an int, a slice or an index tensor reads just those rows and returns a tensor, as indexing a
    tensor of images would; `subset` and `transformed` return new views and read nothing. Channel conversion and
    resizing, when asked for, are applied to each batch as it is read."""

    def __init__(
        self,
        array: np.ndarray,
        rows: np.ndarray | None = None,
        channels: int | None = None,
        size: int | None = None,
    ):
        self.array = array
        self.rows = np.arange(array.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.channels, self.size = channels, size
        self.dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:
        h, w = self.array.shape[1:3]
        c = min(3, self.array.shape[3]) if self.array.ndim == 4 else 1
        if self.size is not None:
            h = w = self.size
        return torch.Size((len(self.rows), self.channels or c, h, w))

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: torch.Tensor | np.ndarray) -> MappedImages:
        return MappedImages(self.array, self.rows[np.asarray(idx)], self.channels, self.size)

    def transformed(self, channels: int | None, size: int | None) -> MappedImages:
        return MappedImages(self.array, self.rows, channels or self.channels, size or self.size)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if isinstance(index, np.ndarray) and index.ndim == 0:
            index = int(index)
        single = isinstance(index, (int, np.integer))
        rows = self.rows[[index] if single else index]
        # Sorted reads touch the file in order; the rows come back in the order asked for.
        order = np.argsort(rows, kind="stable")
        block = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        block[order] = self.array[rows[order]]
        block = block[..., None] if block.ndim == 3 else block[..., :3]
        images = torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) → (B, C, H, W)
        if len(images) == 0:  # resizing nothing would fail; an empty selection has the split's shape
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        if self.channels is not None:
            images = convert_channels(images, self.channels)
        if self.size is not None:
            images = resize_crop(images, self.size)
        return images[0] if single else images


@dataclass
class Split:
    images: torch.Tensor | MappedImages  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class ImageData:
    name: str
    train: Split
    test: Split
    num_classes: int  # 0 when the data has no labels
    class_names: list[str] | None = None
    skipped: int = 0  # unreadable files skipped while loading a folder
    held_out: list[str] | None = None  # a folder's held-out files (paths relative to it), in the test split's order

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return c, h, w


def default_root() -> Path:
    return Path(os.environ.get("VQGEN_DATA", "data"))


def load_data(
    source: str = "shapes",
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    strict: bool = False,
    seed: int = 0,
) -> ImageData:
    """Load a data set by name (`shapes`, `mnist`, `fashion-mnist`, `cifar10`) or path (folder, .npz, .npy)."""
    if image_size is not None and not (isinstance(image_size, int) and 1 <= image_size <= MAX_IMAGE_SIZE):
        raise VQGenError(f"--image-size must be from 1 to {MAX_IMAGE_SIZE} pixels, not {image_size}")
    if channels is not None and channels not in (1, 3):
        raise VQGenError(f"--channels must be 1 (grey) or 3 (RGB), not {channels}")
    root = Path(root) if root is not None else default_root()
    key = source.lower()
    if key == "shapes":
        data = load_shapes(root)
    elif key in TORCHVISION_SETS:
        data = _load_torchvision(key, root)
    else:
        path = Path(source)
        if not path.exists():
            raise VQGenError(
                f"data '{source}' is neither a built-in data set (shapes, mnist, fashion-mnist, cifar10) "
                "nor an existing path; check the spelling or the path"
            )
        if path.is_dir():
            data = _load_folder(path, root, image_size, channels, strict, seed)
        elif path.suffix.lower() in (".npz", ".npy"):
            data = _load_array_file(path, seed)
        else:
            raise VQGenError(f"'{source}' is a file but not .npz/.npy; pass a folder of images or an array file")
    return _prepare(data, image_size, channels)


# ----------------------------------------------------------------------------------------------- shapes


def _star(n_points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = np.arange(2 * n_points) * math.pi / n_points
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.sin(angles), -radii * np.cos(angles)], axis=1)


_UNIT_POLYGONS = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) / math.sqrt(2),
    "triangle": np.array([[0, -1], [math.sqrt(3) / 2, 0.5], [-math.sqrt(3) / 2, 0.5]], dtype=np.float64),
    "star": _star(),
}


# One background and a palette of fills rather than any RGB pair: with 12 × 11 colour pairs (shapes v3) every edge
# code had to be learnt per pair, and after the demo's few minutes of training neither stage had: the autoencoder
# blurred edges and the prior mixed colours. A fixed background leaves shape, size, place and fill to learn.
BACKGROUND = (255, 255, 255)
PALETTE = np.array(
    [
        [0, 0, 0], [220, 40, 40], [40, 170, 60], [40, 80, 220], [40, 200, 220], [200, 60, 200],
        [250, 140, 30], [120, 70, 30], [130, 130, 130],
    ]
)  # fmt: skip


def generate_shapes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images (n, size, size, 3) of one filled shape each, and their shape labels, deterministic in seed."""
    from PIL import Image, ImageDraw

    supersample = 4  # draw large and downscale: anti-aliased edges
    big = size * supersample
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPE_NAMES), size=n)
    for i in range(n):
        fg = tuple(int(v) for v in PALETTE[rng.integers(0, len(PALETTE))])
        radius = rng.uniform(0.30, 0.45) * big
        cx, cy = rng.uniform(radius, big - radius, size=2)
        canvas = Image.new("RGB", (big, big), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        name = SHAPE_NAMES[labels[i]]
        if name == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
        else:  # upright: a square turned 45° is a diamond, which a few minutes of training cannot tell from a blob
            points = _UNIT_POLYGONS[name] * radius + np.array([cx, cy])
            draw.polygon([tuple(p) for p in points], fill=fg)
        images[i] = np.asarray(canvas.resize((size, size), Image.BOX))
    return images, labels.astype(np.int64)


def load_shapes(root: Path, n_train: int = 20_000, n_test: int = 2_000, seed: int = 0) -> ImageData:
    """The built-in data set: generated once (a few seconds) and cached under the data root."""
    cache = root / "shapes" / f"shapes-v{SHAPES_VERSION}-seed{seed}-{n_train}-{n_test}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as f:
                arrays = {k: f[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
        except (OSError, ValueError, KeyError):
            arrays = None  # a torn cache is regenerated below
    else:
        arrays = None
    if arrays is None:
        train_x, train_y = generate_shapes(n_train, seed)
        test_x, test_y = generate_shapes(n_test, seed + 1)
        arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
        try:
            from vqgen.checkpoint import atomic_path

            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **arrays)
        except OSError:
            pass  # a read-only data root still works, it just regenerates next time

    def split(prefix: str) -> Split:
        images = torch.from_numpy(arrays[f"{prefix}_images"]).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.from_numpy(arrays[f"{prefix}_labels"]).long())

    return ImageData("shapes", split("train"), split("test"), len(SHAPE_NAMES), list(SHAPE_NAMES))


# ----------------------------------------------------------------------------------------------- torchvision

_EXPECTED_FILES = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
}


def _load_torchvision(key: str, root: Path) -> ImageData:
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION_SETS[key])
    download = os.environ.get("VQGEN_DOWNLOAD", "") not in ("", "0")
    splits = []
    try:
        for train in (True, False):
            ds = cls(str(root), train=train, download=download)
            images = torch.as_tensor(np.asarray(ds.data))
            images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
            splits.append(Split(images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)))
            names = list(ds.classes)
    except RuntimeError as e:
        raise VQGenError(
            f"{key} not found under data root '{root}': put the files at {root}/{_EXPECTED_FILES[key]} "
            "(or pass --data-root / set VQGEN_DATA; VQGEN_DOWNLOAD=1 lets torchvision download them)"
        ) from e
    return ImageData(key, splits[0], splits[1], len(names), names)


# ----------------------------------------------------------------------------------------------- files


def _held_out_split(images: torch.Tensor | MappedImages, labels: torch.Tensor | None, seed: int) -> tuple[Split, Split]:
    n = images.shape[0]
    if n < 2:
        raise VQGenError(f"the data has {n} image(s); at least 2 are needed (one to train, one to hold out)")
    n_test = max(1, round(n * HELD_OUT_FRACTION))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = order[:n_test].sort().values, order[n_test:].sort().values
    pick = (lambda t, idx: None) if labels is None else (lambda t, idx: t[idx])
    take = images.subset if isinstance(images, MappedImages) else images.__getitem__
    return Split(take(train_idx), pick(labels, train_idx)), Split(take(test_idx), pick(labels, test_idx))


def held_out_by_name(names: list[str]) -> torch.Tensor:
    """Which files of a folder are held out: those whose path's SHA-1 falls in the first HELD_OUT_FRACTION of its
    range. The choice depends on each file's own name only, so adding or removing files never moves another file
    between the splits, and a run's held-out images stay held out for every later command and run (at least one
    file is held out, and at least one trains)."""
    import hashlib

    keys = torch.tensor([int.from_bytes(hashlib.sha1(n.encode()).digest()[:4], "big") for n in names], dtype=torch.long)
    held = keys < int(HELD_OUT_FRACTION * 2**32)
    if len(names) >= 2 and not held.any():
        held[keys.argmin()] = True
    if len(names) >= 2 and held.all():
        held[keys.argmax()] = False
    return held


def held_out_record(data: ImageData) -> dict | None:
    """What a run records of a folder's held-out files: how many, and a digest of their names."""
    if data.held_out is None:
        return None
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(data.held_out)).encode()).hexdigest()
    return {"rule": "sha1 of the file's path", "count": len(data.held_out), "sha256": digest}


def _load_folder(
    path: Path, root: Path, image_size: int | None, channels: int | None, strict: bool, seed: int
) -> ImageData:
    from vqgen.foldercache import load_folder

    folder = load_folder(path, root, image_size, channels, strict)
    images = MappedImages(folder.array, folder.rows)
    labels = torch.from_numpy(folder.labels) if folder.labels is not None else None
    if len(folder.names) < 2:
        raise VQGenError(
            f"the data has {len(folder.names)} image(s); at least 2 are needed (one to train, one to hold out)"
        )
    held = held_out_by_name(folder.names)
    test_idx, train_idx = held.nonzero().squeeze(1), (~held).nonzero().squeeze(1)
    pick = (lambda idx: None) if labels is None else (lambda idx: labels[idx])
    train, test = Split(images.subset(train_idx), pick(train_idx)), Split(images.subset(test_idx), pick(test_idx))
    names = folder.class_names
    held_out = [folder.names[i] for i in test_idx.tolist()]
    return ImageData(path.name, train, test, len(names or []), names, len(folder.skipped), held_out)


def _load_array_file(path: Path, seed: int) -> ImageData:
    import zipfile

    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # a truncated .npz fails in any of these
    try:
        # an .npy is mapped, not read: it may be larger than memory
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix.lower() == ".npy" else None)
    except unreadable as e:
        raise VQGenError(f"cannot read '{path}' as a numpy file ({e}); save it with numpy.savez") from e
    if isinstance(loaded, np.ndarray):
        images, labels = loaded, None
    else:
        with loaded:
            if "images" not in loaded.files:
                raise VQGenError(
                    f"'{path}' has no 'images' array (it has: {', '.join(loaded.files) or 'nothing'}); "
                    "save it as numpy.savez(file, images=..., labels=...)"
                )
            try:
                images = loaded["images"]
                labels = loaded["labels"] if "labels" in loaded.files else None
            except unreadable as e:
                raise VQGenError(f"cannot read '{path}' ({e}); it may be truncated: save it again") from e
    if images.dtype != np.uint8:
        raise VQGenError(f"images in '{path}' are {images.dtype}; vqgen expects uint8 pixels 0..255")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise VQGenError(
            f"images in '{path}' have shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3"
        )
    if images.shape[0] < 2 or min(images.shape[1:3]) < 1 or max(images.shape[1:3]) > MAX_IMAGE_SIZE:
        raise VQGenError(
            f"images in '{path}' have shape {images.shape}; vqgen needs at least 2 images (a train and a test "
            f"split) of 1 to {MAX_IMAGE_SIZE} pixels a side"
        )
    mapped = isinstance(images, np.memmap)
    if mapped:
        tensor = MappedImages(images)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).contiguous()
    label_tensor, num_classes = None, 0
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != tensor.shape[0] or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise VQGenError(f"'labels' in '{path}' must be {tensor.shape[0]} non-negative integers, one per image")
        label_tensor = torch.from_numpy(labels.astype(np.int64))
        num_classes = int(labels.max()) + 1
    train, test = _held_out_split(tensor, label_tensor, seed)
    return ImageData(path.stem, train, test, num_classes)


# ----------------------------------------------------------------------------------------------- transforms


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) uint8 to `channels` (1 or 3): luminance for RGB→grey, repetition for grey→RGB."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise VQGenError(f"cannot convert {c}-channel images to {channels} channels; use --channels 1 or 3")


def resize_crop(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """(N, C, H, W) uint8 → (N, C, size, size): shorter side to `size` (antialiased), then a centre crop."""
    n, _, h, w = images.shape
    if h == size and w == size:
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = []
    for start in range(0, n, chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        out.append(x[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _prepare(data: ImageData, image_size: int | None, channels: int | None) -> ImageData:
    for split in (data.train, data.test):
        if isinstance(split.images, MappedImages):
            c, h, w = split.images.shape[1:]
            wanted_c = channels if channels is not None and channels != c else None
            wanted_size = image_size if image_size is not None and (h, w) != (image_size, image_size) else None
            if wanted_c is not None and wanted_c not in (1, 3):
                raise VQGenError(f"cannot convert {c}-channel images to {channels} channels; use --channels 1 or 3")
            split.images = split.images.transformed(wanted_c, wanted_size)
            continue
        if channels is not None:
            split.images = convert_channels(split.images, channels)
        if image_size is not None:
            split.images = resize_crop(split.images, image_size)
    return data


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], the range the networks see."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ----------------------------------------------------------------------------------------------- batching


class BatchOrder:
    """Which rows form each batch: a fresh seeded permutation per epoch, so (epoch, position) is the whole state.

    Under DDP every rank draws the same permutation and takes its own slice of each global batch, so
    `batch_size` is the global batch and N ranks together see exactly what one process would.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise VQGenError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
        if n < batch_size:
            batch_size = n - n % world_size  # a tiny data set still trains, in full batches that shard evenly
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size  # the ragged tail is dropped: every step sees a full batch

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            self._perm = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            )
        return self._perm

    def next(self) -> torch.Tensor:
        """Row indices of this rank's share of the next global batch."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        start = self.position * self.batch_size
        rows = self._permutation()[start : start + self.batch_size]
        self.position += 1
        share = self.batch_size // self.world_size
        return rows[self.rank * share : (self.rank + 1) * share]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None


def pixel_batch(batch_size: int, images) -> int:
    """A forward-only batch chosen for 32×32 images, scaled down for larger ones so that a pass holds about the same
    number of pixels: activations of 500 images at 256 px would take gigabytes per layer."""
    pixels = images.shape[-2] * images.shape[-1]
    return max(1, batch_size * 1024 // pixels) if pixels > 1024 else batch_size


def iterate_batches(n: int, batch_size: int):
    """Sequential (start, stop) slices over n rows, for evaluation and encoding."""
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)
