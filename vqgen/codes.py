"""Code grids: encode a data set with a trained autoencoder, and read / write / validate codes files.

A codes file is safetensors: `train.codes`, `test.codes` as (N, m, m) integer tensors, `train.labels` and
`test.labels` where the data has labels, and metadata naming the codebook size, grid size, data set, number of
classes, the autoencoder's run folder and the SHA-256 of its weights, and how a code factorises into sub-tokens
(`factors`, vqgen.factorise; absent or [] for flat codes). A two-level autoencoder's file also holds
`train.top`, `test.top` as (N, m/2, m/2) (metadata `levels` 2); `train.codes` is then its bottom grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vqgen import checkpoint as ckpt
from vqgen.errors import VQGenError
from vqgen.factorise import check_factors
from vqgen.limits import MAX_BATCH, MAX_CLASSES, MAX_CODEBOOK, MAX_GRID, check_count
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
    train_top: torch.Tensor | None = None  # (N, m/2, m/2): a two-level autoencoder's top grids
    test_top: torch.Tensor | None = None
    factors: list[int] | None = None  # sub-vocabulary sizes of a code, most significant first (None: flat)
    image_size: int | None = None  # n of the n×n images, which picks a prior's defaults (None: not recorded)

    @property
    def levels(self) -> int:
        return 1 if self.train_top is None else 2

    def level(self, name: str) -> CodesFile:
        """The codes a prior of `--level name` models: 'top' or 'bottom' of a two-level file (the bottom keeps the
        top as its context), 'single' of a one-level one."""
        if (name == "single") != (self.levels == 1):
            hint = "--level top or --level bottom" if self.levels == 2 else "no --level (or --level single)"
            raise VQGenError(f"these codes have {self.levels} level(s): train their prior with {hint}")
        if name != "top":
            return self
        return replace(
            self,
            train_codes=self.train_top,
            test_codes=self.test_top,
            grid_size=self.grid_size // 2,
            train_top=None,
            test_top=None,
        )


def _storage_dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= torch.iinfo(torch.int16).max else torch.int32


def save_codes(path: str | Path, codes: CodesFile) -> None:
    dtype = _storage_dtype(codes.codebook_size)
    tensors = {"train.codes": codes.train_codes.to(dtype), "test.codes": codes.test_codes.to(dtype)}
    if codes.train_labels is not None and codes.test_labels is not None:
        tensors["train.labels"] = codes.train_labels.long()
        tensors["test.labels"] = codes.test_labels.long()
    if codes.train_top is not None and codes.test_top is not None:
        tensors["train.top"], tensors["test.top"] = codes.train_top.to(dtype), codes.test_top.to(dtype)
    meta = {
        "kind": "vqgen-codes",
        "codebook_size": str(codes.codebook_size),
        "grid_size": str(codes.grid_size),
        "num_classes": str(codes.num_classes),
        "dataset": codes.dataset,
        "ae_run": codes.ae_run,
        "ae_sha256": codes.ae_sha256,
        "class_names": json.dumps(codes.class_names),
        "levels": str(codes.levels),
        "factors": json.dumps(codes.factors or []),
    } | ({"image_size": str(codes.image_size)} if codes.image_size else {})
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
        factors = check_factors(json.loads(meta.get("factors", "[]")), k)
        image_size = int(meta.get("image_size", "0")) or None
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise VQGenError(f"'{path}' has damaged metadata ({e}); encode the data again") from e
    # bounded before anything is built from them: a prior's embeddings have K rows, its class table classes + 1
    for what, value, lower, upper in (
        ("K (codebook_size)", k, 2, MAX_CODEBOOK),
        ("grid_size", m, 1, MAX_GRID),
        ("num_classes", classes, 0, MAX_CLASSES),
    ):
        if not lower <= value <= upper:
            shown = value if abs(value) < 1 << 64 else f"a {value.bit_length()}-bit number"
            raise VQGenError(
                f"'{path}' is damaged: its metadata claims {what} = {shown}, outside [{lower}, {upper:,}]; "
                "encode the data again"
            )
    if class_names is not None and (
        not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names)
    ):
        raise VQGenError(f"'{path}' is damaged: its class_names are not a list of names; encode the data again")
    levels = meta.get("levels", "1")
    if levels not in ("1", "2"):
        raise VQGenError(f"'{path}' has damaged metadata (levels {levels!r}); encode the data again")
    grids = {"codes": m} | ({"top": m // 2} if levels == "2" else {})
    for name, side in ((f"{split}.{g}", side) for split in ("train", "test") for g, side in grids.items()):
        if name not in entries:
            raise VQGenError(f"'{path}' has no '{name}' tensor; encode the data again")
        dtype, shape = entries[name]
        if dtype not in ("I16", "I32", "I64", "U8") or len(shape) != 3 or shape[1:] != (side, side):
            raise VQGenError(f"'{path}': '{name}' is {dtype}{list(shape)}, expected integer (N, {side}, {side})")
    tensors = ckpt.load_tensors(path)
    out = {}
    tops = {}
    for split in ("train", "test"):
        for g in grids:
            codes = tensors[f"{split}.{g}"].long()
            if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
                raise VQGenError(
                    f"'{path}': {split} codes range over [{int(codes.min())}, {int(codes.max())}] but the codebook "
                    f"has K={k} entries; the file is damaged or from another autoencoder: encode again"
                )
        codes = tensors[f"{split}.codes"].long()
        if levels == "2":
            tops[split] = tensors[f"{split}.top"].long()
            if len(tops[split]) != len(codes):
                raise VQGenError(f"'{path}': {split}.top and {split}.codes differ in length; encode again")
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
        tops.get("train"),
        tops.get("test"),
        factors or None,
        image_size if image_size is not None and 0 < image_size <= MAX_GRID * 16 else None,
    )


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
    from vqgen.device import resolve_device
    from vqgen.passes import split_pass
    from vqgen.progress import make_progress

    check_count(batch_size, "--batch-size", MAX_BATCH)  # 0 or less encoded nothing and wrote an empty file
    dev = resolve_device(device)
    model, config = load_autoencoder(ae_run, dev)
    dataset = data_for(model, config, data, data_root)
    with make_progress(console) as progress:
        train_levels, test_levels = (
            split_pass(model, split, dev, batch_size, decode=False, codes=True, progress=progress, label="encode").grids
            for split in (dataset.train, dataset.test)
        )
    train_codes, test_codes = train_levels[-1], test_levels[-1]
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
        train_levels[0] if len(train_levels) == 2 else None,
        test_levels[0] if len(test_levels) == 2 else None,
        model.cfg.code_factors or None,
        model.cfg.image_size,
    )
    save_codes(out, codes)
    counts = torch.bincount(train_codes.flatten(), minlength=model.cfg.codebook_size)
    stats = {
        "train_images": len(train_codes),
        "test_images": len(test_codes),
        "codes_used": codes_used(counts),
        "perplexity": perplexity(counts),
    }
    if codes.train_top is not None:
        top_counts = torch.bincount(codes.train_top.flatten(), minlength=model.cfg.codebook_size)
        stats |= {"codes_used_top": codes_used(top_counts), "perplexity_top": perplexity(top_counts)}
    return codes, stats
