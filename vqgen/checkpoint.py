"""Run folders, atomic writes and validated safetensors checkpoints. Only safetensors and JSON are ever loaded.

A run folder holds:
    config.json         the full configuration (`kind`, `vqgen_version`, model and training settings)
    model.safetensors   the weights (buffers such as the EMA statistics included)
    state.safetensors   optimizer state, step, RNG states and data order, for --resume
    metrics.jsonl       one JSON object per log line
    *.png               previews
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vqgen import __version__
from vqgen.errors import VQGenError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state.safetensors"
METRICS = "metrics.jsonl"
FORMAT_VERSION = 1  # bump when the layout of config.json or the weights changes incompatibly


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # mkstemp creates 0600 files; finished files get the usual permissions


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed into place, so readers never see a torn file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise VQGenError(f"cannot write to '{path.parent}' ({e.strerror}); choose another --out") from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def save_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise VQGenError(f"'{path}' is missing; is '{path.parent}' a vqgen run folder?")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VQGenError(f"'{path}' is not valid JSON ({e}); the run folder is damaged") from e
    if not isinstance(obj, dict):
        raise VQGenError(f"'{path}' does not hold a JSON object; the run folder is damaged")
    return obj


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """Names → (dtype, shape) and the metadata of a safetensors file, read without loading any tensor."""
    path = Path(path)
    if not path.exists():
        raise VQGenError(f"'{path}' is missing; is '{path.parent}' a vqgen run folder?")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            n = int.from_bytes(raw, "little")
            if n > min(size - 8, 100_000_000):
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", {}) or {}
        entries = {}
        data_len = size - 8 - n
        for name, info in header.items():
            start, end = info["data_offsets"]
            shape = tuple(int(s) for s in info["shape"])
            if not (0 <= start <= end <= data_len):
                raise ValueError(f"tensor '{name}' lies outside the file")
            entries[name] = (str(info["dtype"]), shape)
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a map")
        return entries, {str(k): str(v) for k, v in meta.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VQGenError(f"'{path}' is not a valid safetensors file ({e}); it may be truncated or corrupt") from e


_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.int8: "I8",
}


def load_tensors(path: str | Path, expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file; with `expected`, first check names, shapes and dtypes against it."""
    from safetensors.torch import load_file

    entries, _ = read_header(path)
    if expected is not None:
        missing = sorted(set(expected) - set(entries))
        extra = sorted(set(entries) - set(expected))
        if missing or extra:
            what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise VQGenError(f"'{path}' does not match its config.json ({what}); it belongs to another model")
        for name, ref in expected.items():
            dtype, shape = entries[name]
            if shape != tuple(ref.shape) or dtype != _DTYPE_NAMES.get(ref.dtype, "?"):
                raise VQGenError(
                    f"'{path}': tensor '{name}' is {dtype}{list(shape)}, config.json implies "
                    f"{_DTYPE_NAMES.get(ref.dtype)}{list(ref.shape)}; the weights and the config do not belong together"
                )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged payloads
        raise VQGenError(f"'{path}' could not be read ({e}); it may be truncated or corrupt") from e


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- run folders


def prepare_run_dir(out: str | Path, resume: bool, force: bool) -> Path:
    """Refuse to overwrite an existing run silently; --force clears what a run writes, --resume keeps it."""
    out = Path(out)
    if resume:
        if not (out / STATE).exists():
            raise VQGenError(f"nothing to resume in '{out}' (no {STATE}); start the run without --resume")
        return out
    existing = [name for name in (CONFIG, WEIGHTS, STATE, METRICS) if (out / name).exists()]
    if existing and not force:
        raise VQGenError(
            f"'{out}' already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--force to overwrite it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VQGenError(f"cannot create run folder '{out}' ({e.strerror}); choose another --out") from e
    if not os.access(out, os.W_OK):
        raise VQGenError(f"run folder '{out}' is not writable; choose another --out")
    if force:
        (out / METRICS).unlink(missing_ok=True)
        (out / STATE).unlink(missing_ok=True)
    return out


def write_config(run_dir: Path, kind: str, config: dict) -> None:
    save_json(
        run_dir / CONFIG, {"kind": kind, "vqgen_version": __version__, "format_version": FORMAT_VERSION, **config}
    )


def read_config(run_dir: str | Path, kind: str | None = None) -> dict:
    """config.json of a run, checked for its kind and format version."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise VQGenError(f"run folder '{run_dir}' does not exist; train one first or pass the right path")
    if not run_dir.is_dir():
        raise VQGenError(f"'{run_dir}' is a file, not a run folder")
    config = load_json(run_dir / CONFIG)
    found = config.get("kind")
    if kind is not None and found != kind:
        hint = {"vqvae": "an autoencoder run (vqgen train-ae)", "prior": "a prior run (vqgen train-prior)"}
        raise VQGenError(f"'{run_dir}' is a {found or 'unknown'} run, not {hint.get(kind, kind)}; check the path")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VQGenError(
            f"'{run_dir}' was written by a newer vqgen ({config.get('vqgen_version', '?')}, format {version}); "
            "upgrade vqgen to read it"
        )
    return config


def load_model(run_dir: str | Path, kind: str, build, device: torch.device | str = "cpu"):
    """Build a model of a run folder with `build(config)` and load its weights, checked against the config.

    The configs bound every size (see their __post_init__), so building from a damaged config cannot allocate
    an absurd amount; the built model's state_dict then gives the names, shapes and dtypes the weights file must
    have, checked from the file's header before any tensor is read. (Building on the meta device instead would
    import torch._dynamo, two seconds of start-up for every `vqgen sample`.)
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir, kind)
    try:
        model = build(config)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise VQGenError(f"'{run_dir / CONFIG}' has an invalid model section ({e})") from e
    tensors = load_tensors(run_dir / WEIGHTS, expected=model.state_dict())
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def append_metrics(run_dir: Path, record: dict) -> None:
    # Appending a line is the one write that is not atomic by rename: a torn last line is skipped by read_metrics.
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
