"""Run folders, atomic writes and validated safetensors checkpoints. Only safetensors and JSON are ever loaded.

A run folder holds:
    config.json         the full configuration (`kind`, `vqgen_version`, model and training settings)
    model.safetensors   the weights (buffers such as the EMA statistics included)
    state.safetensors   optimizer state, step, RNG states and data order, for --resume
    metrics.jsonl       one JSON object per log line
    *.png               previews
    .lock               held (flock) by the one process writing into the folder; holds its PID
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
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
LOCK = ".lock"
RUN_FILES = (CONFIG, WEIGHTS, STATE, METRICS)
# What training writes atomically into its folder: a `.NAME.*.tmp` of one of these is a killed write of a lock
# holder's, safe to delete at the next start. (eval.json, plots... come from commands that take no lock.)
_TRAINING_WRITES = (CONFIG, WEIGHTS, STATE, "recon.png", "samples.png")
# A run's outputs that describe its weights: a replaced run drops them; anything else in the folder is carried over.
_RUN_OUTPUTS = (
    *RUN_FILES,
    "recon.png",
    "samples.png",
    "reconstruct.png",
    "eval.json",
    "curves.png",
    "code_usage.png",
    "codebook_pca.png",
)
FORMAT_VERSION = 1  # bump when the layout of config.json or the weights changes incompatibly


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # mkstemp creates 0600 files; finished files get the usual permissions


def _write_error(path: Path, e: BaseException) -> VQGenError:
    """The one line for a failed write, whatever raised it (the OS, safetensors, Pillow)."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1][:200]
    hint = (
        "free some space and run again" if "space" in reason.lower() else f"check that '{path.parent}' can be written"
    )
    return VQGenError(f"cannot write '{path}' ({reason}); nothing already saved was changed: {hint}")


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, a file that could not be written at the end: its folder exists but is read-only."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise VQGenError(
            f"'{folder}' cannot be written, so '{path}' could not be saved; make it writable or write elsewhere"
        )


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of `paths`; once all are written they are renamed into place, so readers
    never see a torn file, and a failed write (a full disk) leaves every old file as it was. Any write error becomes
    one VQGenError line here, the one place every file of vqgen is written through."""
    finals = [Path(p) for p in paths]
    temps: list[str] = []
    try:
        for path in finals:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(tmp)
    except OSError as e:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        folder = finals[len(temps)].parent
        raise VQGenError(f"cannot write to '{folder}' ({e.strerror}); make it writable or write elsewhere") from e
    try:
        try:
            yield [Path(t) for t in temps]
            for tmp in temps:
                os.chmod(tmp, _FILE_MODE)
                _fsync(tmp)  # the data reaches the disk before the name does: a power loss never leaves an empty file
        except Exception as e:  # OSError, SafetensorError: the disk is full, or the folder went away
            if isinstance(e, OSError) or type(e).__module__.split(".")[0] == "safetensors":
                raise _write_error(finals[0], e) from e
            raise  # not a write error: a bug, or an error the caller handles
        for tmp, path in zip(temps, finals, strict=True):
            os.replace(tmp, path)
        for folder in {path.parent for path in finals}:
            _fsync(folder)  # and the renames themselves are durable
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """atomic_paths for one file."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)


def check_regular(path: str | Path, what: str = "file") -> Path:
    """Refuse, in one line, a path that is missing, a directory, a FIFO or a device (which would hang a reader)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VQGenError(f"'{path}' is missing; is '{path.parent}' a vqgen run folder?") from None
    except OSError as e:
        raise VQGenError(f"cannot read '{path}' ({e.strerror})") from e
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise VQGenError(f"'{path}' is {kind}, not a {what}; pass the right path")
    return path


def run_file(run_dir: str | Path, name: str) -> Path:
    """A file of a run folder, refused if it is a symbolic link: a link could make a run read another run's
    weights or append its metrics to a file elsewhere."""
    path = Path(run_dir) / name
    if path.is_symlink():
        raise VQGenError(
            f"'{path}' is a symbolic link; vqgen refuses links inside a run folder: replace it by a copy of the file"
        )
    return path


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def save_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> dict:
    path = check_regular(path, "JSON file")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, huge ints
        raise VQGenError(f"'{path}' is not valid JSON ({str(e)[:200]}); the run folder is damaged") from e
    if not isinstance(obj, dict):
        raise VQGenError(f"'{path}' does not hold a JSON object; the run folder is damaged")
    return obj


TensorFile = tuple[dict[str, torch.Tensor], dict[str, str] | None]  # the tensors and the metadata of one file


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_tensor_files({path: (tensors, metadata)})


def save_tensor_files(files: dict[str | Path, TensorFile]) -> None:
    """Write several safetensors files as one: none is replaced until all are written (a run's weights and its
    state, which must always describe the same step)."""
    from safetensors.torch import save_file

    with atomic_paths(*files) as temps:
        for tmp, (tensors, metadata) in zip(temps, files.values(), strict=True):
            tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
            save_file(tensors, str(tmp), metadata=metadata)


def read_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """Names → (dtype, shape) and the metadata of a safetensors file, read without loading any tensor."""
    path = check_regular(path, "safetensors file")
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
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        raise VQGenError(
            f"'{path}' is not a valid safetensors file ({str(e)[:200]}); it may be truncated or corrupt"
        ) from e
    except OSError as e:
        raise VQGenError(f"cannot read '{path}' ({e.strerror})") from e


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
    """Load a safetensors file; with `expected`, first check names, shapes and dtypes against it. Floating tensors
    must be finite: a NaN or inf only comes from a diverged run, whose weights would turn into garbage codes."""
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
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged payloads
        raise VQGenError(f"'{path}' could not be read ({e}); it may be truncated or corrupt") from e
    bad = first_non_finite(tensors)
    if bad is not None:
        raise VQGenError(
            f"'{path}' holds non-finite values (NaN or inf) in '{bad}': the run diverged; train it again, "
            "e.g. with a lower --lr"
        )
    return tensors


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor with a NaN or inf, or None; one device sync for all of them."""
    floating = [(k, v) for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not floating:
        return None
    flags = torch.stack([torch.isfinite(v).all().to(floating[0][1].device) for _, v in floating])
    if bool(flags.all()):
        return None
    return floating[int((~flags).nonzero()[0])][0]


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- run folders


def check_resumable(out: str | Path) -> Path:
    """Read-only checks that `out` holds a run to resume (every rank makes them; only rank 0 locks, see open_run)."""
    out = Path(out)
    if not run_file(out, STATE).exists():
        raise VQGenError(f"nothing to resume in '{out}' (no {STATE}); start the run without --resume")
    for name in RUN_FILES:
        run_file(out, name)
    return out


class RunLock:
    """An exclusive flock on RUN/.lock, held for as long as this process writes into the run folder.

    The kernel drops a flock when its process dies, kill -9 included, so the lock never goes stale; the file stays
    behind with the last holder's PID, which the next refused process names.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = _acquire(folder)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def _acquire(folder: Path) -> int:
    import fcntl

    path = folder / LOCK
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise VQGenError(f"'{path}' is a symbolic link; delete it (vqgen refuses links in a run folder)") from e
            raise VQGenError(f"cannot lock run folder '{folder}' ({e.strerror}); choose another --out") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise VQGenError(f"cannot lock run folder '{folder}' ({e.strerror}); choose another --out") from e
            raise VQGenError(
                f"run folder '{folder}' is in use by another vqgen process (PID {holder}); wait for it to finish or "
                "stop it, or choose another --out"
            ) from None
        # A --force replacement swaps folders: the file locked must still be the one at the path, else lock again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise VQGenError(f"run folder '{folder}' keeps changing under another process; try again")


def _holder(fd: int) -> str:
    """The PID the holder wrote; it writes it just after locking, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _is_vqgen_file(name: str) -> bool:
    """Whether a name in a run or staging folder is one vqgen writes (an output, the lock, a killed atomic write)."""
    if name in _RUN_OUTPUTS or name == LOCK:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{w}.") for w in _RUN_OUTPUTS)


def sweep_staging(staging: Path, final: Path) -> list[str]:
    """Clear a staging folder that a killed start or swap left beside `final`: vqgen's own files are deleted, and
    anything else is the user's and goes back into `final`. Returns the names that could not go back (a file of that
    name is in `final`); then the staging folder stays, with them in it. The caller holds `final`'s lock."""
    if staging.is_symlink() or staging.is_file():
        staging.unlink(missing_ok=True)
        return []
    if not staging.exists():
        return []
    stranded = []
    for name in sorted(os.listdir(staging)):
        entry = staging / name
        if _is_vqgen_file(name):
            _remove_tree(entry)
        elif not os.path.lexists(final / name):
            os.replace(entry, final / name)
        else:
            stranded.append(name)
    if stranded:
        import sys

        print(
            f"note: '{staging}' holds files that are not vqgen's ({', '.join(stranded[:5])}) and whose names are "
            f"taken in '{final}'; they were left where they are: move them yourself",
            file=sys.stderr,
        )
    else:
        with contextlib.suppress(OSError):
            staging.rmdir()
    return stranded


def sweep_if_idle(run_dir: Path) -> None:
    """A reader's share of the cleaning: the staging folder a killed training left beside `run_dir` is swept (see
    sweep_staging) when no process holds the run, so that it does not wait for the next training start."""
    real = Path(os.path.realpath(run_dir))
    staging = real.parent / f".{real.name}.vqgen-new"
    if not os.path.lexists(staging) or not real.is_dir():
        return
    try:
        lock = RunLock(real)
    except VQGenError:
        return  # in use (a training that is staging right now) or not writable: left as it is
    try:
        sweep_staging(staging, real)
    finally:
        lock.release()


def resolve_run_path(out: str | Path) -> Path:
    """The run folder a path names, with `..` and symbolic links resolved, so that the folder staged beside it is
    never inside it and a link is followed, not replaced. A path that is already plain is kept as typed."""
    given = Path(out)
    real = Path(os.path.realpath(given))
    return given if real == given.absolute() else real  # absolute() keeps "..", where abspath folds it


def refuse_inside(out: str | Path, source: str | Path, what: str, flag: str = "--out") -> None:
    """Refuse an output folder that is `source` (a run or data folder this command reads) or lies inside it."""
    real_out, real_source = Path(os.path.realpath(out)), Path(os.path.realpath(source))
    if real_out == real_source or real_out.is_relative_to(real_source):
        raise VQGenError(f"{flag} '{out}' is {what} or inside it, which it would change; choose another {flag}")


def _name_max(folder: Path) -> int:
    """The longest file name the file system holding `folder` (or its nearest existing ancestor) takes."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


class RunFolder:
    """The run folder a training process writes into, locked for its whole lifetime.

    A new run never writes into `final` directly: it is staged in a hidden sibling folder, and only its first
    checkpoint (`commit`) swaps it into place, atomically. Until then whatever was in `final` (an old run that
    --force replaces) is untouched, so a refused, diverged or interrupted start loses nothing. `path` is where
    to write now. Under torchrun only rank 0 owns the folder; the other ranks get a copy that does nothing.
    """

    def __init__(self, final: Path, resume: bool, force: bool):
        final = resolve_run_path(final)
        self.final, self.owner, self.committed = final, True, resume
        self.path = final  # where to write now
        real = Path(os.path.realpath(final))
        if real == real.parent:
            raise VQGenError(f"'{final}' is the file system's root, not a run folder; choose another --out")
        # beside the resolved folder, never inside it, and on its file system (see _start for a mount point)
        self.staging = real.parent / f".{real.name}.vqgen-new"
        if len(os.fsencode(self.staging.name)) > _name_max(real.parent):
            raise VQGenError(f"the name '{real.name}' is too long for this file system; choose a shorter --out")
        self._locks: list[RunLock] = []
        self.created = not final.exists()
        try:
            final.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VQGenError(f"cannot create run folder '{final}' ({e.strerror}); choose another --out") from e
        if not final.is_dir():
            raise VQGenError(f"'{final}' is a file, not a run folder; choose another --out")
        if not os.access(final, os.W_OK):
            raise VQGenError(f"run folder '{final}' is not writable; choose another --out")
        self._locks.append(RunLock(final))
        try:
            self._start(resume, force)
        except BaseException:
            self.close()
            raise

    def _start(self, resume: bool, force: bool) -> None:
        final = self.final
        # a start killed before its first checkpoint, a swap killed midway, or a replaced run not yet deleted
        sweep_staging(self.staging, final)
        for name in os.listdir(final):  # killed atomic writes of earlier runs
            if name.endswith(".tmp") and any(name.startswith(f".{w}.") for w in _TRAINING_WRITES):
                (final / name).unlink(missing_ok=True)
        if resume:
            check_resumable(final)
            return
        existing = [name for name in RUN_FILES if run_file(final, name).exists()]
        if existing and not force:
            raise VQGenError(
                f"'{final}' already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                "--force to overwrite it, or choose another --out"
            )
        if Path.cwd().resolve().is_relative_to(final.resolve()):
            if existing:
                raise VQGenError(
                    f"--force cannot replace '{final}', which holds the current directory; run from elsewhere"
                )
            self.path, self.committed = final, True  # cannot be swapped: written in place, as a folder of its own
            return
        if os.path.ismount(final):
            # a mount point cannot be swapped with a folder beside it (another file system): a new run is written in
            # place, and an old one is not replaced file by file, which a kill could leave half old, half new
            if existing:
                raise VQGenError(
                    f"--force cannot replace the run in '{final}', a mount point (it cannot be swapped atomically); "
                    "delete the old run's files first, or write to a folder inside it"
                )
            self.path, self.committed = final, True
            return
        try:
            self.staging.mkdir()
        except OSError as e:
            raise VQGenError(
                f"cannot create '{self.staging}' beside the run folder ({e.strerror}); choose another --out"
            ) from e
        self._locks.append(RunLock(self.staging))  # it becomes the run folder's lock once swapped in
        self.path = self.staging

    def commit(self) -> Path:
        """Called after each checkpoint: the first one swaps the staged run into place. Returns the folder."""
        if self.owner and not self.committed:
            for name in os.listdir(self.final):  # the user's own files in the folder stay in it
                if name not in _RUN_OUTPUTS and name != LOCK and not name.endswith(".tmp"):
                    if not (self.staging / name).exists():
                        os.replace(self.final / name, self.staging / name)
            if not _exchange(self.staging, self.final):
                # No atomic swap on this system: two renames, both folders locked by this process meanwhile.
                old = self.final.parent / f".{self.final.name}.vqgen-old"
                _remove_tree(old)
                os.replace(self.final, old)
                os.replace(self.staging, self.final)
                os.replace(old, self.staging)
            _fsync(self.final.parent)
            self._locks.pop(0).release()  # the old folder's lock, now in the staging path
            sweep_staging(self.staging, self.final)  # the old run; a file the user added meanwhile goes back
        self.committed = True
        self.path = self.final
        return self.final

    def close(self) -> None:
        """Release the lock; a start that never reached its first checkpoint leaves no trace."""
        if not self.owner:
            return
        if not self.committed:
            if self.path == self.staging:
                sweep_staging(self.staging, self.final)
            if self.created:  # the folder only held the lock
                with contextlib.suppress(OSError):
                    (self.final / LOCK).unlink()
                    self.final.rmdir()
        for lock in self._locks:
            lock.release()
        self._locks = []

    def __getstate__(self) -> dict:
        # What another rank receives (on_main): the paths, no locks and no right to swap or delete.
        return {k: v for k, v in self.__dict__.items() if k != "_locks"} | {"owner": False, "_locks": []}

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run(out: str | Path, resume: bool, force: bool) -> RunFolder:
    """Lock run folder `out` for this process and say where to write (see RunFolder). Without --force an existing
    run is refused; with it, the old run stays until the new one has its first checkpoint; --resume continues it."""
    return RunFolder(Path(out), resume, force)


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
    config = load_json(run_file(run_dir, CONFIG))
    found = config.get("kind")
    if kind is not None and found != kind:
        hint = {"vqvae": "an autoencoder run (vqgen train-ae)", "prior": "a prior run (vqgen train-prior)"}
        raise VQGenError(f"'{run_dir}' is a {found or 'unknown'} run, not {hint.get(kind, kind)}; check the path")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VQGenError(
            f"'{run_dir}' was written by a newer vqgen ({str(config.get('vqgen_version', '?'))[:20]}, format "
            f"{str(version)[:20]}); upgrade vqgen to read it"
        )
    problem = config_problem(config)
    if problem is not None:
        raise VQGenError(f"'{run_dir / CONFIG}' is damaged: {problem}; train the run again")
    return config


_NUMBER = (int, float)
_OPTIONAL = type(None)
# The sections of each kind of run (only `model` must be there) and the types of the fields their readers use
# (only _REQUIRED ones must be there: the readers default the others). The model configs bound the sizes in `model`.
_SCHEMA: dict[str, dict[str, dict[str, tuple]]] = {
    "vqvae": {
        "model": {},
        "train": {},
        "data": {
            "data": (str,),
            "data_root": (str, _OPTIONAL),
            "image_size": (int, _OPTIONAL),
            "channels": (int, _OPTIONAL),
            "strict": (bool,),
        },
    },
    "prior": {
        "model": {},
        "train": {},
        "codes": {
            "path": (str,),
            "sha256": (str, _OPTIONAL),
            "dataset": (str, _OPTIONAL),
            "class_names": (list, _OPTIONAL),
            "class_counts": (list, _OPTIONAL),
            "level": (str,),
        },
        "ae": {"run": (str, _OPTIONAL), "relative": (str, _OPTIONAL), "sha256": (str, _OPTIONAL)},
        "sampling": {"guidance": (*_NUMBER, _OPTIONAL)},
    },
}
_REQUIRED = {"data.data", "codes.path"}


def config_problem(config: dict) -> str | None:
    """What is wrong with the structure of a run's config.json, or None: one check for every reader of it."""
    import math

    schema = _SCHEMA.get(config.get("kind"))
    if schema is None:
        return None  # read_config's kind check names the problem
    for section, fields in schema.items():
        if section not in config and section != "model":
            continue  # needed only by some readers (--resume, sampling), which say so
        value = config.get(section)
        if not isinstance(value, dict):
            return f"its '{section}' section is {'missing' if section not in config else 'not an object'}"
        for name, types in fields.items():
            if name not in value:
                if f"{section}.{name}" in _REQUIRED:
                    return f"'{section}.{name}' is missing"
                continue  # its readers default it
            item = value[name]
            if not isinstance(item, types) or (isinstance(item, bool) and bool not in types):
                return f"'{section}.{name}' is {'null' if item is None else 'a ' + type(item).__name__}"
            if isinstance(item, float) and not math.isfinite(item):
                return f"'{section}.{name}' is not a finite number"
    for section in ("adversarial", "dataset"):
        if section in config and not isinstance(config[section], dict):
            return f"its '{section}' section is not an object"
    codes = config.get("codes")
    if isinstance(codes, dict):
        names, counts = codes.get("class_names"), codes.get("class_counts")
        if names is not None and not all(isinstance(n, str) for n in names):
            return "'codes.class_names' is not a list of names"
        if counts is not None:
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return "'codes.class_counts' is not a list of counts"
            if counts and sum(counts) == 0:
                return "'codes.class_counts' are all zero"
    guidance = config.get("sampling", {}).get("guidance")
    if guidance is not None and not guidance >= 0:
        return "'sampling.guidance' is negative"
    return None


def load_model(run_dir: str | Path, kind: str, build, device: torch.device | str = "cpu"):
    """Build a model of a run folder with `build(config)` and load its weights, checked against the config.

    The configs bound every size (see their __post_init__), so building from a damaged config cannot allocate
    an absurd amount; the built model's state_dict then gives the names, shapes and dtypes the weights file must
    have, checked from the file's header before any tensor is read. (Building on the meta device instead would
    import torch._dynamo, two seconds of start-up for every `vqgen sample`.)
    """
    run_dir = Path(run_dir)
    sweep_if_idle(run_dir)
    config = read_config(run_dir, kind)
    try:
        model = build(config)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise VQGenError(f"'{run_dir / CONFIG}' has an invalid model section ({e})") from e
    tensors = load_tensors(run_file(run_dir, WEIGHTS), expected=model.state_dict())
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def append_metrics(run_dir: Path, record: dict) -> None:
    # Appending a line is the one write that is not atomic by rename: a torn last line is skipped by read_metrics.
    fd = os.open(run_file(run_dir, METRICS), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = run_file(run_dir, METRICS)
    if not path.exists():
        return []
    records = []
    check_regular(path, "metrics file")
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a torn last line, or a damaged one: skipped
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
