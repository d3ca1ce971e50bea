"""Code grids: encode a data set with a trained autoencoder, and read / write / validate codes files.

A codes file is safetensors: `train.codes`, `test.codes` as (N, m, m) integer tensors, `train.labels` and
`test.labels` where the data has labels, and metadata naming the codebook size, grid size, data set, number of
classes, the autoencoder's run folder and the SHA-256 of its weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vqgen import checkpoint as ckpt
from vqgen.data import Split, iterate_batches, pixel_batch, to_float
from vqgen.errors import VQGenError
from vqgen.metrics import codes_used, perplexity


@dataclass
class CodesFile:
    train_codes: torch.Tensor  # (N, m, m) int64
    test_codes: torch.Tensor
    train_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    codebook_size: int
    grid_size: int
    num_classes: int
    dataset: str
    ae_run: str
    ae_sha256: str
    class_names: list[str] | None = None


def _storage_dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= torch.iinfo(torch.int16).max else torch.int32


def save_codes(path: str | Path, codes: CodesFile) -> None:
    dtype = _storage_dtype(codes.codebook_size)
    tensors = {"train.codes": codes.train_codes.to(dtype), "test.codes": codes.test_codes.to(dtype)}
    if codes.train_labels is not None and codes.test_labels is not None:
        tensors["train.labels"] = codes.train_labels.long()
        tensors["test.labels"] = codes.test_labels.long()
    meta = {
        "kind": "vqgen-codes",
        "codebook_size": str(codes.codebook_size),
        "grid_size": str(codes.grid_size),
        "num_classes": str(codes.num_classes),
        "dataset": codes.dataset,
        "ae_run": codes.ae_run,
        "ae_sha256": codes.ae_sha256,
        "class_names": json.dumps(codes.class_names),
    }
    ckpt.save_tensors(path, tensors, meta)


def load_codes(path: str | Path) -> CodesFile:
    """Read and validate a codes file: shapes, dtypes and every index in [0, K)."""
    path = Path(path)
    if not path.exists():
        raise VQGenError(f"codes file '{path}' does not exist; make it with `vqgen encode --out {path}`")
    entries, meta = ckpt.read_header(path)
    if meta.get("kind") != "vqgen-codes":
        raise VQGenError(f"'{path}' is not a vqgen codes file (make one with `vqgen encode`)")
    try:
        k, m, classes = int(meta["codebook_size"]), int(meta["grid_size"]), int(meta["num_classes"])
        class_names = json.loads(meta.get("class_names", "null"))
    except (KeyError, ValueError) as e:
        raise VQGenError(f"'{path}' has damaged metadata ({e}); encode the data again") from e
    for name in ("train.codes", "test.codes"):
        if name not in entries:
            raise VQGenError(f"'{path}' has no '{name}' tensor; encode the data again")
        dtype, shape = entries[name]
        if dtype not in ("I16", "I32", "I64", "U8") or len(shape) != 3 or shape[1:] != (m, m):
            raise VQGenError(f"'{path}': '{name}' is {dtype}{list(shape)}, expected integer (N, {m}, {m})")
    tensors = ckpt.load_tensors(path)
    out = {}
    for split in ("train", "test"):
        codes = tensors[f"{split}.codes"].long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise VQGenError(
                f"'{path}': {split} codes range over [{int(codes.min())}, {int(codes.max())}] but the codebook has "
                f"K={k} entries; the file is damaged or from another autoencoder: encode again"
            )
        labels = tensors.get(f"{split}.labels")
        if labels is not None:
            labels = labels.long()
            if labels.shape != (codes.shape[0],) or (labels.numel() and (labels.min() < 0 or labels.max() >= classes)):
                raise VQGenError(f"'{path}': {split}.labels do not match the codes or the {classes} classes")
        out[split] = (codes, labels)
    return CodesFile(
        out["train"][0],
        out["test"][0],
        out["train"][1],
        out["test"][1],
        k,
        m,
        classes,
        meta.get("dataset", "?"),
        meta.get("ae_run", ""),
        meta.get("ae_sha256", ""),
        class_names,
    )


@torch.no_grad()
def encode_split(model, split: Split, device: torch.device, batch_size: int = 500, progress=None) -> torch.Tensor:
    """Images (N, C, n, n) uint8 → codes (N, m, m) int64, batched, without gradients."""
    model.eval()
    out = []
    task = progress.add_task("encode", total=len(split), info="") if progress is not None else None
    for start, stop in iterate_batches(len(split), pixel_batch(batch_size, split.images)):
        out.append(model.encode(to_float(split.images[start:stop]).to(device)).cpu())
        if progress is not None:
            progress.update(task, completed=stop)
    m = model.cfg.grid_size
    return torch.cat(out) if out else torch.zeros(0, m, m, dtype=torch.long)


def encode_dataset(
    ae_run: str | Path,
    out: str | Path,
    data: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    batch_size: int = 500,
    console=None,
) -> tuple[CodesFile, dict[str, float]]:
    """Encode the train and test split of a data set (default: the one the autoencoder was trained on)."""
    from vqgen.autoencoder import data_for, load_autoencoder
    from vqgen.train import make_progress, resolve_device

    dev = resolve_device(device)
    model, config = load_autoencoder(ae_run, dev)
    dataset = data_for(model, config, data, data_root)
    with make_progress(console) as progress:
        train_codes = encode_split(model, dataset.train, dev, batch_size, progress)
        test_codes = encode_split(model, dataset.test, dev, batch_size, progress)
    codes = CodesFile(
        train_codes,
        test_codes,
        dataset.train.labels,
        dataset.test.labels,
        model.cfg.codebook_size,
        model.cfg.grid_size,
        dataset.num_classes if dataset.train.labels is not None else 0,
        dataset.name,
        str(Path(ae_run).resolve()),  # absolute: the codes file is read from other working directories
        ckpt.sha256(Path(ae_run) / ckpt.WEIGHTS),
        dataset.class_names,
    )
    save_codes(out, codes)
    counts = torch.bincount(train_codes.flatten(), minlength=model.cfg.codebook_size)
    stats = {
        "train_images": len(train_codes),
        "test_images": len(test_codes),
        "codes_used": codes_used(counts),
        "perplexity": perplexity(counts),
    }
    return codes, stats
