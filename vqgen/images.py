"""PNG output through Pillow, always written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vqgen.checkpoint import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, fill: int = 255) -> torch.Tensor:
    """(N, C, H, W) uint8 → one (C, H', W') uint8 image with `nrow` images per row and `pad` pixels between."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), fill, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def save_image(
    image: torch.Tensor, path: str | Path, scale: int = 1, row_labels: list[tuple[int, str]] | None = None
) -> Path:
    """Write one (C, H, W) uint8 image (C = 1 or 3) as PNG, enlarged `scale` times with nearest neighbours;
    `row_labels` (y of a row's centre in the unscaled image, text) are written in a white margin on the left."""
    from PIL import Image, ImageDraw, ImageFont

    array = image.permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array, mode="L" if array.shape[2] == 1 else "RGB")
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    if row_labels:
        font = ImageFont.load_default()
        widths = [ImageDraw.Draw(pil).textlength(text, font=font) for _, text in row_labels]
        margin = int(max(widths)) + 8
        labelled = Image.new(pil.mode, (pil.width + margin, pil.height), 255 if pil.mode == "L" else (255, 255, 255))
        labelled.paste(pil, (margin, 0))
        draw = ImageDraw.Draw(labelled)
        for (y, text), width in zip(row_labels, widths, strict=True):
            draw.text((margin - 4 - width, y * scale), text, fill=0, font=font, anchor="lm")
        pil = labelled
    path = Path(path)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return path


def save_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int | None = None,
    scale: int = 1,
    row_names: list[str] | None = None,
    pad: int = 2,
) -> Path:
    """A grid of (N, C, H, W) uint8 images with `nrow` per row as PNG; `row_names` label the rows on the left."""
    n, _, h, _ = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    labels = [(pad + r * (h + pad) + h // 2, name) for r, name in enumerate(row_names or [])]
    return save_image(make_grid(images, nrow, pad), path, scale, labels or None)


def load_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """One image file → (C, size, size) uint8, resized and centre-cropped; a clear error when unreadable."""
    from PIL import Image, UnidentifiedImageError

    from vqgen.data import resize_crop
    from vqgen.errors import VQGenError
    from vqgen.foldercache import upright_8bit

    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise VQGenError(f"image '{path}' is a symbolic link that leads nowhere (a loop, or a missing target)")
        raise VQGenError(f"image '{path}' does not exist")
    try:
        with Image.open(path) as im:
            im = upright_8bit(im).convert("L" if channels == 1 else "RGB")
            array = torch.from_numpy(np.asarray(im).copy())
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise VQGenError(f"cannot read image '{path}' ({e}); is it a valid image file?") from e
    image = array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
    return resize_crop(image.unsqueeze(0).contiguous(), size)[0]
