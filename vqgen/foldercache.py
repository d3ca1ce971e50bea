"""A folder of images, decoded once in parallel into a uint8 array file on disk, and mapped on later runs.

The cache lives under the data root (`<root>/cache/<folder>-<hash of its path>/`): `images.npy`, a (M, H, W, C)
uint8 array that numpy maps rather than reads (`mmap_mode="r"`), and `index.json` with the file names, labels, the
rows that decoded and a fingerprint of the folder (every file's name, size and modification time, and the decoding
options). A run whose fingerprint matches maps the array at once; a changed folder is decoded again. The index is
written last, by an atomic rename, so an interrupted build is never mistaken for a finished one. Under torchrun,
rank 0 builds and the other ranks wait for it. A data root that cannot be written still works: the array is built
in a temporary folder, mapped, and the folder removed (the mapping keeps the data until the process ends).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqgen.errors import VQGenError

CACHE_VERSION = 1
PARALLEL_FROM = 256  # fewer files are decoded in this process: starting workers would cost more
CHUNK = 256  # files per worker task
PROGRESS_FROM = 2000  # files from which a progress bar is drawn


@dataclass
class DecodedFolder:
    array: np.ndarray  # (M, H, W, C) uint8, memory-mapped
    rows: np.ndarray  # (N,) int64: the rows of `array` that decoded, in file order
    labels: np.ndarray | None  # (N,) int64, one per decoded row
    class_names: list[str] | None
    skipped: list[str]  # files that could not be read, relative to the folder
    names: list[str] | None = None  # (N,) the decoded files' paths relative to the folder, one per row


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def resize_crop_pil(im, size: int):
    """A PIL image → size×size: the shorter side to `size` (bicubic), then a centre crop."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def upright_8bit(im):
    """A PIL image as a viewer shows it: turned as its EXIF orientation says, and a 16-bit grey image scaled to 8
    bits (PIL's own conversion clips 0–65535 to 0–255, which saturates nearly every pixel)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        if array.size and array.max() > 255:  # 16-bit range
            array = array / 257.0
        im = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    return im


def decode(file: Path, mode: str | None, image_size: int | None) -> np.ndarray:
    """One image file → (H, W, C) uint8; mode None picks L for grey files and RGB otherwise."""
    from PIL import Image

    with Image.open(file) as im:
        im.load()
        mode = mode or ("L" if im.mode in ("1", "L", "I;16", "I;16B", "I;16L", "I", "F") else "RGB")
        im = upright_8bit(im).convert(mode)
        if image_size is not None:
            im = resize_crop_pil(im, image_size)
        array = np.asarray(im, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _readable(file: Path, mode: str | None, image_size: int | None) -> np.ndarray | str:
    from PIL import Image, UnidentifiedImageError

    try:
        return decode(file, mode, image_size)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{e}" or type(e).__name__  # a decompression bomb is an unreadable file like any other


def _die_with_parent() -> None:
    """A decode worker's initializer: on Linux, the kernel kills it when the process that started it dies (kill -9
    included), so no worker outlives its run."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def sweep_partials(where: Path) -> None:
    """Delete the partial files (`NAME.PID.partial`) of cache builds whose process is gone (killed)."""
    with contextlib.suppress(OSError):
        for partial in where.glob("*.partial"):
            pid = partial.name.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _decode_chunk(
    npy: str, start: int, files: list[str], mode: str, image_size: int | None
) -> list[tuple[int, str, tuple[int, ...] | None]]:
    """Decode files[i] into row start + i of the array file; returns the rows that failed (reason, shape found)."""
    array = np.load(npy, mmap_mode="r+")
    failed = []
    for i, file in enumerate(files):
        image = _readable(Path(file), mode, image_size)
        if isinstance(image, str):
            failed.append((start + i, image, None))
        elif image.shape != array.shape[1:]:
            failed.append((start + i, "size", image.shape))
        else:
            array[start + i] = image
    array.flush()
    return failed


def list_images(path: Path) -> tuple[list[Path], list[str] | None, list[int] | None]:
    """The image files under `path` (sorted), and class names and labels when every file sits in a sub-folder."""
    extensions = image_extensions()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise VQGenError(
            f"no images found in folder '{path}' (searched recursively for {', '.join(sorted(extensions)[:8])}, ...)"
        )
    # One level of sub-folders names the classes, but only when every image lives in one.
    parts = [p.relative_to(path).parts for p in files]
    if not all(len(p) >= 2 for p in parts):
        return files, None, None
    class_names = sorted({p[0] for p in parts})
    lookup = {name: i for i, name in enumerate(class_names)}
    return files, class_names, [lookup[p[0]] for p in parts]


def fingerprint(path: Path, files: list[Path], image_size: int | None, channels: int | None) -> str:
    """A hash of every file's name, size and modification time, and of the options that shape the decoded array."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, image_size, channels]).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_dir(root: Path, path: Path, image_size: int | None, channels: int | None) -> Path:
    """One cache per folder and decoding options: training and `eval --data` may ask for different ones."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return root / "cache" / f"{path.name}-{key}-size{image_size or 'any'}-c{channels or 'any'}"


def load_folder(
    path: Path,
    root: Path,
    image_size: int | None,
    channels: int | None,
    strict: bool,
    workers: int | None = None,
) -> DecodedFolder:
    """The folder's images, from the cache when its fingerprint matches, else decoded into it first."""
    from vqgen.distributed import is_distributed, rank_and_world

    files, class_names, labels = list_images(path)
    stamp = fingerprint(path, files, image_size, channels)
    where = cache_dir(root, path, image_size, channels)
    sweep_partials(where)
    if is_distributed():
        import torch.distributed as dist

        # Every rank meets at the barrier, whatever it finds on disk; only rank 0 builds, and only when needed.
        if rank_and_world()[0] == 0 and _mapped(where, stamp) is None:
            _build_or_report(path, files, where, stamp, image_size, channels, workers)
        dist.barrier()
    elif _mapped(where, stamp) is None:  # none yet, another folder's or settings', or damaged: (re)built
        _build_or_report(path, files, where, stamp, image_size, channels, workers)
    cached = _mapped(where, stamp)
    if cached is None:  # the data root is not writable: build in a temporary folder, map it, remove the folder
        with tempfile.TemporaryDirectory(prefix="vqgen-cache-") as tmp:
            try:
                _build(path, files, Path(tmp), stamp, image_size, channels, workers)
            except OSError as e:
                raise VQGenError(
                    f"'{root}' cannot hold the image cache and neither can {tmp} ({e}); pass a writable --data-root"
                ) from e
            cached = _mapped(Path(tmp), stamp)
    if cached is None:
        raise VQGenError(f"the image cache in '{where}' is inconsistent; delete that folder and run again")
    index, array = cached
    skipped = index["skipped"]
    if skipped and strict:
        name, reason = skipped[0]
        raise VQGenError(f"cannot read image '{path / name}' ({reason}); remove it, or drop --strict to skip it")
    rows = np.asarray(index["rows"], dtype=np.int64)
    if rows.size == 0:
        raise VQGenError(f"none of the {len(files)} image files in '{path}' could be read")
    label_array = np.asarray(labels, dtype=np.int64)[rows] if labels is not None else None
    names = [files[r].relative_to(path).as_posix() for r in rows.tolist()]
    return DecodedFolder(array, rows, label_array, class_names, [name for name, _ in skipped], names)


def _read_index(where: Path, stamp: str) -> dict | None:
    """The cache's index if it is this folder's and whole: every row a file, read or skipped, exactly once."""
    try:
        index = json.loads((where / "index.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(index, dict) or index.get("fingerprint") != stamp:
        return None
    shape, rows, skipped = index.get("shape"), index.get("rows"), index.get("skipped")
    if not (isinstance(shape, list) and len(shape) == 4 and all(type(d) is int and d > 0 for d in shape)):
        return None
    if not (isinstance(rows, list) and all(type(r) is int for r in rows) and rows == sorted(set(rows))):
        return None
    if rows and not 0 <= rows[0] <= rows[-1] < shape[0]:
        return None
    pairs = isinstance(skipped, list) and all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped
    )
    if not pairs or len(rows) + len(skipped) != shape[0]:
        return None
    return index


def _mapped(where: Path, stamp: str) -> tuple[dict, np.ndarray] | None:
    """The cache's index and its memory-mapped array, or None when either is missing, another's or damaged (a
    truncated or overwritten array, an index that does not describe it): then it is built again."""
    index = _read_index(where, stamp)
    if index is None:
        return None
    try:
        array = np.load(where / "images.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):  # truncated ("mmap length is greater than file size"), pickled header
        return None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or list(array.shape) != index["shape"]:
        return None
    return index, array


def _build_or_report(path, files, where, stamp, image_size, channels, workers) -> None:
    """Build the cache in `where`, or leave no index there when the data root cannot be written."""
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    try:
        _build(path, files, where, stamp, image_size, channels, workers)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return
        raise VQGenError(f"cannot write the image cache in '{where}' ({e}); free some space or pass --data-root") from e


def _build(
    path: Path,
    files: list[Path],
    where: Path,
    stamp: str,
    image_size: int | None,
    channels: int | None,
    workers: int | None,
) -> None:
    # The first readable file fixes the mode (when --channels does not) and the size (when --image-size does not).
    mode = {1: "L", 3: "RGB"}.get(channels or 0)
    first = None
    for file in files:
        first = _readable(file, mode, image_size)
        if not isinstance(first, str):
            break
    if first is None or isinstance(first, str):
        raise VQGenError(f"none of the {len(files)} image files in '{path}' could be read")
    mode = mode or ("L" if first.shape[2] == 1 else "RGB")
    npy = where / f"images.npy.{os.getpid()}.partial"  # two runs building at once never share a file
    try:
        _fill(npy, path, files, where, stamp, first, mode, image_size, workers)
    finally:
        npy.unlink(missing_ok=True)


def _fill(npy, path, files, where, stamp, first, mode, image_size, workers) -> None:
    shape = (len(files), *first.shape)
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=shape)
    del array  # the workers open it themselves
    if hasattr(os, "posix_fallocate"):
        # Reserve the blocks now: a full disk is then an OSError here, not a SIGBUS in a worker's write
        with open(npy, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    names = [str(f) for f in files]
    chunks = [(start, names[start : start + CHUNK]) for start in range(0, len(names), CHUNK)]
    failed: list[tuple[int, str, tuple[int, ...] | None]] = []
    with _progress(len(files), path) as advance:
        if len(files) < PARALLEL_FROM:
            for start, chunk in chunks:
                failed += _decode_chunk(str(npy), start, chunk, mode, image_size)
                advance(len(chunk))
        else:
            import multiprocessing

            count = workers or min(8, os.cpu_count() or 1)
            # fork: the workers only run PIL and numpy, and start without re-importing torch
            context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
            with ProcessPoolExecutor(count, mp_context=context, initializer=_die_with_parent) as pool:
                jobs = [pool.submit(_decode_chunk, str(npy), s, c, mode, image_size) for s, c in chunks]
                for job, (_, chunk) in zip(jobs, chunks, strict=True):
                    failed += job.result()
                    advance(len(chunk))
    wrong_size = sorted({found[:2] for _, reason, found in failed if reason == "size"} | {first.shape[:2]})
    if len(wrong_size) > 1:
        raise VQGenError(
            f"images in '{path}' have {len(wrong_size)} different sizes (e.g. {wrong_size[:3]}); "
            "pass --image-size N to resize and centre-crop them all to N×N"
        )
    bad = {row for row, _, _ in failed}
    index = {
        "fingerprint": stamp,
        "shape": list(shape),
        "folder": str(path.resolve()),
        "files": [str(f.relative_to(path)) for f in files],
        "rows": [row for row in range(len(files)) if row not in bad],
        "skipped": [[str(files[row].relative_to(path)), reason] for row, reason, _ in sorted(failed)],
    }
    (where / "index.json").unlink(missing_ok=True)  # never an old index beside the new array
    os.replace(npy, where / "images.npy")
    partial = where / f"index.json.{os.getpid()}.partial"
    partial.write_text(json.dumps(index))
    os.replace(partial, where / "index.json")


class _progress:
    """A rich progress bar over decoded files (only for large folders); yields a function that advances it."""

    def __init__(self, total: int, path: Path):
        self.total, self.path, self.bar = total, path, None

    def __enter__(self):
        if self.total < PROGRESS_FROM:
            return lambda n: None
        from vqgen.progress import make_progress

        self.bar = make_progress()
        self.bar.start()
        task = self.bar.add_task(f"caching {self.path.name}", total=self.total, info="")
        started = time.perf_counter()

        def advance(n: int) -> None:
            self.bar.advance(task, n)
            done = self.bar.tasks[0].completed
            self.bar.update(task, info=f"{done / max(time.perf_counter() - started, 1e-9):,.0f} img/s")

        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
