"""Nothing saved is ever lost: no checkpoint from a diverged run, --force that replaces only once the new run has a
checkpoint, one process per run folder (real processes), and run folders that refuse links and clean up after kills.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqgen import checkpoint as ckpt
from vqgen.errors import VQGenError

from conftest import REPO, run_cli
from test_reliability import assert_clean_error

TINY = (
    "--steps",
    "12",
    "--batch-size",
    "8",
    "--hidden",
    "16",
    "--embed-dim",
    "8",
    "--codebook-size",
    "16",
    "--log-every",
    "12",
    "--save-every",
    "5",
)


def snapshot(folder: Path) -> dict[str, str]:
    """Name → sha256 of every file in a folder (the lock file aside: it holds the last holder's PID)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != ckpt.LOCK}


def state_step(run: Path) -> int:
    return json.loads(ckpt.read_header(run / ckpt.STATE)[1]["state"])["step"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, data_root) -> Path:
    """A tiny finished autoencoder run, copied by the tests that change one."""
    root = tmp_path_factory.mktemp("good")
    result = run_cli("train-ae", *TINY, "--out", str(root / "ae"))
    assert result.code == 0, result.err
    return root / "ae"


@pytest.fixture
def run_copy(good_run, in_tmp) -> Path:
    shutil.copytree(good_run, in_tmp / "ae")
    return in_tmp / "ae"


# ----------------------------------------------------------------------------------------------- divergence


def _poison_loss_at(monkeypatch, at_step: int) -> None:
    from vqgen.autoencoder import AutoencoderTask

    original, calls = AutoencoderTask.step, {"n": 0}

    def step(self, model, rows):
        calls["n"] += 1
        loss, stats = original(self, model, rows)
        return (loss * float("inf") if calls["n"] == at_step else loss), stats

    monkeypatch.setattr(AutoencoderTask, "step", step)


def test_divergence_between_log_lines_keeps_the_last_good_checkpoint(in_tmp, monkeypatch):
    # a log window of 12 steps spans two checkpoints (5, 10): the step-10 one must not be written from step 7's inf
    with monkeypatch.context() as m:
        _poison_loss_at(m, 7)
        result = run_cli("train-ae", *TINY, "--out", "div")
    assert_clean_error(result, "the loss became inf at step 7", "(step 5) is kept")
    assert state_step(in_tmp / "div") == 5
    from vqgen.autoencoder import load_autoencoder

    load_autoencoder(in_tmp / "div")  # finite weights, or this raises


def test_non_finite_weights_are_never_saved(in_tmp, monkeypatch):
    # the loss of the last step is finite, the weights after its update are not: the final checkpoint must refuse
    from vqgen.autoencoder import AutoencoderTask

    calls = {"n": 0}

    def after_step(self):
        calls["n"] += 1
        if calls["n"] == 12:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(AutoencoderTask, "after_step", after_step)
    result = run_cli("train-ae", *TINY, "--out", "div")
    assert_clean_error(result, "weights became non-finite", "at step 12", "(step 10) is kept")
    assert state_step(in_tmp / "div") == 10
    ckpt.load_tensors(in_tmp / "div" / ckpt.WEIGHTS)  # finite, or this raises


def test_diverging_from_the_start_saves_nothing(in_tmp):
    result = run_cli("train-ae", *TINY, "--lr", "1e9", "--out", "div")
    assert_clean_error(result, "nothing was saved")
    assert not (in_tmp / "div").exists()  # the folder only existed to hold the lock


def test_diverging_force_keeps_the_old_run(run_copy):
    before = snapshot(run_copy)
    result = run_cli("train-ae", *TINY, "--lr", "1e9", "--hidden", "32", "--force", "--out", str(run_copy))
    assert_clean_error(result, "nothing was saved")
    assert snapshot(run_copy) == before
    assert run_cli("encode", "--ae", str(run_copy), "--out", "codes.safetensors").code == 0


def test_non_finite_model_is_refused_on_load(run_copy):
    weights = ckpt.load_tensors(run_copy / ckpt.WEIGHTS)
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name][0] = float("inf")
    ckpt.save_tensors(run_copy / ckpt.WEIGHTS, weights)
    result = run_cli("encode", "--ae", str(run_copy), "--out", "codes.safetensors")
    assert_clean_error(result, "non-finite", name)
    assert not Path("codes.safetensors").exists()


# ----------------------------------------------------------------------------------------------- --force


def test_force_validates_before_touching_the_old_run(run_copy):
    before = snapshot(run_copy)
    assert_clean_error(run_cli("train-ae", "--out", str(run_copy), "--force", "--data", "/nonexistent"), "nonexistent")
    assert_clean_error(run_cli("train-ae", *TINY, "--out", str(run_copy), "--force", "--steps", "0"), "--steps")
    assert snapshot(run_copy) == before
    assert not any(p.name.startswith(".ae.") for p in run_copy.parent.iterdir())  # no staging folder left


def test_force_interrupted_before_its_first_checkpoint_keeps_the_old_run(run_copy, monkeypatch):
    from vqgen.autoencoder import AutoencoderTask

    before = snapshot(run_copy)

    def step(self, model, rows):
        raise KeyboardInterrupt  # a second Ctrl-C: no checkpoint at all

    with monkeypatch.context() as m:
        m.setattr(AutoencoderTask, "step", step)
        assert run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", str(run_copy)).code == 130
    assert snapshot(run_copy) == before


def test_force_replaces_the_run_and_keeps_the_users_files(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "eval.json").write_text("{}")  # describes the old weights: dropped
    old = ckpt.read_config(run_copy)
    result = run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", str(run_copy))
    assert result.code == 0, result.err
    assert ckpt.read_config(run_copy)["model"]["hidden"] == 32 != old["model"]["hidden"]
    assert (run_copy / "notes.txt").read_text() == "mine" and not (run_copy / "eval.json").exists()
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["ae"]  # nothing staged left beside it
    assert state_step(run_copy) == 12
    from vqgen.autoencoder import load_autoencoder

    assert load_autoencoder(run_copy)[0].cfg.hidden == 32


def test_leftovers_of_killed_writes_are_cleaned_up(run_copy):
    staged = run_copy.parent / ".ae.vqgen-new"  # a --force start killed before its first checkpoint
    staged.mkdir()
    (staged / ckpt.CONFIG).write_text("{}")
    torn = run_copy / ".model.safetensors.x1y2z3.tmp"  # an atomic write killed before its rename
    torn.write_bytes(b"half")
    mine = run_copy / ".notes.txt.tmp"
    mine.write_text("not vqgen's")
    assert run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13").code == 0
    assert not staged.exists() and not torn.exists() and mine.exists()


# ----------------------------------------------------------------------------------------------- paths resolved once


def test_a_run_path_through_dot_dot_keeps_every_user_file(in_tmp):
    folder = in_tmp / "dd"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        (folder / f"user{i}.txt").write_text(str(i))
    result = run_cli("train-ae", *TINY, "--out", "dd/sub/..")
    assert result.code == 0, result.err
    assert all((folder / f"user{i}.txt").read_text() == str(i) for i in range(12))
    assert (folder / "sub").is_dir() and (folder / ckpt.WEIGHTS).exists()
    assert sorted(p.name for p in in_tmp.iterdir()) == ["dd"]  # nothing staged left beside it
    again = run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", "dd/sub/..")
    assert again.code == 0, again.err
    assert all((folder / f"user{i}.txt").read_text() == str(i) for i in range(12))
    assert ckpt.read_config(folder)["model"]["hidden"] == 32


def test_force_through_a_symlinked_out_follows_the_link(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    link = run_copy.parent / "link"
    link.symlink_to(run_copy.name)
    result = run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", "link")
    assert result.code == 0, result.err
    assert link.is_symlink() and (link / "notes.txt").read_text() == "mine"
    assert (run_copy / "notes.txt").read_text() == "mine" and ckpt.read_config(run_copy)["model"]["hidden"] == 32
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["ae", "link"]


def test_a_swap_killed_after_moving_the_users_files_loses_none(run_copy, monkeypatch):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "mine").mkdir()
    (run_copy / "mine" / "data.txt").write_text("kept")
    old_weights = (run_copy / ckpt.WEIGHTS).read_bytes()

    def killed(a, b):
        raise KeyboardInterrupt  # the process dies between moving the user's files and the swap

    monkeypatch.setattr(ckpt, "_exchange", killed)
    staged = run_copy.parent / ".ae.vqgen-new"
    monkeypatch.setattr(ckpt, "sweep_staging", lambda staging, final: [])  # as a kill -9: nothing cleans up
    assert run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", str(run_copy)).code != 0
    assert (staged / "notes.txt").exists()  # where the kill left them
    monkeypatch.undo()
    # the next start, even a resume of the old run, puts them back and drops only vqgen's own files
    resumed = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13")
    assert resumed.code == 0, resumed.err
    assert not staged.exists()
    assert (run_copy / "notes.txt").read_text() == "mine" and (run_copy / "mine" / "data.txt").read_text() == "kept"
    assert state_step(run_copy) == 13 and (run_copy / ckpt.WEIGHTS).read_bytes() != old_weights  # the old run, on
    assert ckpt.read_config(run_copy)["model"]["hidden"] == 16  # not the killed --force start's


def test_a_staging_folder_holding_a_users_file_of_a_taken_name_is_left_and_named(run_copy):
    staged = run_copy.parent / ".ae.vqgen-new"
    staged.mkdir()
    (staged / ckpt.WEIGHTS).write_bytes(b"vqgen's")
    (staged / "notes.txt").write_text("the one in the way")
    (run_copy / "notes.txt").write_text("mine")
    result = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13")
    assert result.code == 0, result.err
    assert "notes.txt" in result.err and "move them yourself" in result.err
    assert (staged / "notes.txt").read_text() == "the one in the way" and not (staged / ckpt.WEIGHTS).exists()
    assert (run_copy / "notes.txt").read_text() == "mine"


def test_factorise_refuses_to_write_into_its_own_input(run_copy):
    before = snapshot(run_copy)
    for out in (run_copy, run_copy / "inner"):
        result = run_cli("factorise", "--ae", str(run_copy), "--out", str(out), "--force", "--factors", "4x4")
        assert_clean_error(result, "--out", "inside it")
    assert snapshot(run_copy) == before


def test_out_inside_the_data_folder_is_refused(in_tmp):
    from PIL import Image

    for name in ("a", "b"):
        (in_tmp / "photos" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(in_tmp / "photos" / name / f"{i}.png")
    result = run_cli("train-ae", *TINY, "--data", "photos", "--out", "photos/run")
    assert_clean_error(result, "--out", "--data folder")
    assert sorted(p.name for p in (in_tmp / "photos").iterdir()) == ["a", "b"]


def test_a_name_too_long_for_the_file_system_is_refused_before_training(in_tmp):
    name = "r" * 250  # fits the file system itself, not with the staging folder's prefix and suffix
    result = run_cli("train-ae", *TINY, "--out", name)
    assert_clean_error(result, "too long")
    assert list(in_tmp.iterdir()) == []


# ----------------------------------------------------------------------------------------------- one writer


def test_a_second_writer_in_one_process_is_refused(tmp_path):
    with ckpt.open_run(tmp_path / "run", resume=False, force=False) as first:
        with pytest.raises(VQGenError, match=f"PID {os.getpid()}"):
            ckpt.open_run(tmp_path / "run", resume=False, force=False)
        assert first.path != first.final  # staged until its first checkpoint
    assert not (tmp_path / "run").exists()
    with ckpt.open_run(tmp_path / "run", resume=False, force=False):  # released: free again
        pass


def _vqgen(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vqgen", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_holder(lock: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first process never took the lock")


def test_two_processes_never_share_a_run_folder(run_copy, data_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQGEN_DATA": str(data_root), "PYTHONPATH": str(REPO)}
    out = str(run_copy)
    first = _vqgen("train-ae", "--out", out, "--resume", "--steps", "100000", "--save-every", "3", env=env)
    try:
        _wait_for_holder(run_copy / ckpt.LOCK, first)
        others = [_vqgen("train-ae", "--out", out, *extra, env=env) for extra in (("--resume",), ("--force", *TINY))]
        for other in others:
            _, err = other.communicate(timeout=120)
            assert other.returncode not in (0, None)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and f"PID {first.pid}" in lines[0], lines
    finally:
        first.send_signal(signal.SIGKILL)  # kill -9 must not leave a stale lock
        first.wait(timeout=30)
    resumed = run_cli("train-ae", "--out", out, "--resume", "--steps", str(state_step(run_copy) + 1))
    assert resumed.code == 0, resumed.err


# ----------------------------------------------------------------------------------------------- links and fsync


def test_symlinked_files_in_a_run_folder_are_refused(run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("")
    (run_copy / ckpt.METRICS).unlink()
    (run_copy / ckpt.METRICS).symlink_to(elsewhere)
    assert_clean_error(run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13"), "symbolic link")
    assert elsewhere.read_text() == ""
    (run_copy / ckpt.METRICS).unlink()
    weights = run_copy / ckpt.WEIGHTS
    weights.rename(tmp_path / "other.safetensors")
    weights.symlink_to(tmp_path / "other.safetensors")
    assert_clean_error(run_cli("encode", "--ae", str(run_copy)), "symbolic link", "model.safetensors")


def test_model_file_that_is_a_directory_or_fifo(run_copy):
    weights = run_copy / ckpt.WEIGHTS
    weights.unlink()
    weights.mkdir()
    assert_clean_error(run_cli("encode", "--ae", str(run_copy)), "is a directory")
    weights.rmdir()
    os.mkfifo(weights)
    assert_clean_error(run_cli("encode", "--ae", str(run_copy)), "is a FIFO")  # and does not hang


def test_atomic_writes_are_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ckpt.save_json(tmp_path / "x.json", {"a": 1})
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)


# -------------------------------------------------------------------------------------------- one line, nothing written


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--steps", "abc"), "--steps"),
        (("--lr", "nan"), "--lr"),
        (("--lr", "-1"), "--lr"),
        (("--epochs", "nan"), "--epochs"),
        (("--epochs", "0"), "--epochs"),
        (("--steps", "0"), "--steps"),
        (("--seed", "99999999999999999999"), "--seed"),
        (("--batch-size", "1000000000000"), "--batch-size"),
        (("--image-size", "0"), "--image-size"),
        (("--image-size", "100000"), "--image-size"),
        (("--channels", "2"), "--channels"),
    ],
)
def test_bad_training_flags_write_nothing(in_tmp, flags, needle):
    assert_clean_error(run_cli("train-ae", *flags, "--out", "run"), needle)
    assert not (in_tmp / "run").exists()


def test_bad_seed_for_sampling(in_tmp):
    assert_clean_error(run_cli("sample", "--seed", "99999999999999999999"), "--seed")


def _edit_config(run: Path, edit) -> None:
    config = json.loads((run / ckpt.CONFIG).read_text())
    edit(config)
    (run / ckpt.CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(train=None), "train"),
        (lambda c: c["train"].update(steps="x"), "--steps"),
        (lambda c: c["train"].update(lr=None), "--lr"),
        (lambda c: c["train"].update(seed=10**30), "--seed"),
        (lambda c: c.pop("data"), "'data' section is missing"),
        (lambda c: c["data"].update(image_size="big"), "data.image_size"),
        (lambda c: c.update(model=None), "model"),
        (lambda c: c["model"].update(hidden=10**9), "hidden"),
    ],
)
def test_damaged_config_is_one_line(run_copy, edit, needle):
    _edit_config(run_copy, edit)
    before = snapshot(run_copy)
    assert_clean_error(run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13"), needle)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    "text",
    ['{"kind": "vqvae", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"kind": "vqvae", "x": ' + "7" * 5000 + "}"],
)
def test_hostile_json_is_one_line(run_copy, text):
    (run_copy / ckpt.CONFIG).write_text(text)
    assert_clean_error(run_cli("encode", "--ae", str(run_copy)), "config.json")


def _edit_state(run: Path, edit_meta=None, edit_tensors=None) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / ckpt.STATE), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    if edit_meta is not None:
        state = json.loads(meta["state"])
        meta["state"] = edit_meta(state) if callable(edit_meta) else edit_meta
        if callable(edit_meta):
            meta["state"] = json.dumps(meta["state"])
    if edit_tensors is not None:
        edit_tensors(tensors)
    save_file(tensors, str(run / ckpt.STATE), metadata=meta)


def _without(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def _drop_optimizer(tensors):
    for name in [n for n in tensors if n.startswith("optim.")][:2]:
        del tensors[name]


def _wrong_shape(tensors):
    name = next(n for n in tensors if n.startswith("model.") and tensors[n].ndim == 4)
    tensors[name] = tensors[name][:1].clone()


@pytest.mark.parametrize(
    ("meta", "tensors", "needle"),
    [
        ("not json{", None, "damaged metadata"),
        (_without("step"), None, "no valid step"),
        (_without("optimizer"), None, "'optimizer'"),
        (_without("order"), None, "'order'"),
        (None, lambda t: t.pop("rng.torch"), "random number generator"),
        (None, _drop_optimizer, "optimizer tensor"),
        (None, _wrong_shape, "wrong shape"),
    ],
)
def test_damaged_state_is_refused(run_copy, meta, tensors, needle):
    _edit_state(run_copy, meta, tensors)
    result = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13")
    assert_clean_error(result, needle)
    assert state_step(run_copy) == 12 if meta is None else True


def test_damaged_metrics_lines_are_skipped(run_copy):
    with open(run_copy / ckpt.METRICS, "ab") as f:
        f.write(b"[1, 2]\n\xff\xfe not utf-8\n42\n")
    result = run_cli("info", str(run_copy))
    assert result.code == 0, result.err


def test_bad_array_files(in_tmp):
    import numpy as np

    np.savez(in_tmp / "none.npz", images=np.zeros((0, 8, 8), np.uint8))
    assert_clean_error(run_cli("train-ae", "--data", "none.npz", "--out", "r"), "at least 2 images")
    np.savez(in_tmp / "flat.npz", images=np.zeros((4, 0, 0, 3), np.uint8))
    assert_clean_error(run_cli("train-ae", "--data", "flat.npz", "--out", "r"), "at least 2 images")
    np.savez(in_tmp / "full.npz", images=np.zeros((64, 8, 8), np.uint8))
    data = (in_tmp / "full.npz").read_bytes()
    (in_tmp / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("train-ae", "--data", "cut.npz", "--out", "r"))
    assert not (in_tmp / "r").exists()


def test_decompression_bomb_in_a_folder(in_tmp):
    from PIL import Image

    (in_tmp / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(in_tmp / "imgs" / f"{i}.png")
    Image.new("1", (15000, 15000)).save(in_tmp / "imgs" / "bomb.png")  # 225 Mpixels, a few kB on disk
    assert_clean_error(run_cli("train-ae", "--data", "imgs", "--strict", "--out", "r"), "bomb.png")


@pytest.mark.parametrize("command", ["encode", "reconstruct", "eval"])
def test_output_that_is_a_directory_is_refused_before_any_work(run_copy, command, monkeypatch):
    import vqgen.autoencoder

    def no_work(*args, **kwargs):
        raise AssertionError("loaded the model before checking --out")

    monkeypatch.setattr(vqgen.autoencoder, "load_autoencoder", no_work)
    (run_copy.parent / "dir").mkdir()
    assert_clean_error(run_cli(command, "--ae", str(run_copy), "--out", str(run_copy.parent / "dir")), "directory")


def test_disk_full_is_one_line(run_copy, monkeypatch):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    result = run_cli("encode", "--ae", str(run_copy), "--out", "codes.safetensors")
    assert_clean_error(result, "No space left on device")
    assert not Path("codes.safetensors").exists() and not list(Path(".").glob(".codes*"))


def test_a_full_disk_during_a_resume_keeps_weights_and_state_of_one_step(run_copy, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    before = snapshot(run_copy)
    real_save = safetensors.torch.save_file

    def full_at_the_weights(tensors, path, metadata=None):  # the state fits, the weights do not
        if Path(path).name.startswith(f".{ckpt.WEIGHTS}."):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, message: No space left on device })")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_at_the_weights)
    result = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "20")
    assert_clean_error(result, "No space left on device", "free some space")
    after = snapshot(run_copy)
    for name in (ckpt.WEIGHTS, ckpt.STATE):
        assert after[name] == before[name], name  # neither moved on alone
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    resumed = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13")
    assert resumed.code == 0, resumed.err


# ------------------------------------------------------------------------- sizes checked before anything is built


@pytest.mark.parametrize(
    ("levels", "needle"),
    [
        ("1000,1000,1000", "at most 1,048,576"),  # K = 10^9: was killed by the kernel's out-of-memory killer
        ("1", "each at least 2"),
        ("0,8", "each at least 2"),
        ("8,a", "integers separated by commas"),
        ("²", "integers separated by commas"),
    ],
)
def test_fsq_levels_are_bounded_before_anything_is_written(in_tmp, levels, needle):
    result = run_cli("train-ae", "--quantizer", "fsq", "--fsq-levels", levels, "--out", "run")
    assert_clean_error(result, "--fsq-levels", needle)
    assert not (in_tmp / "run").exists()


def test_model_sizes_are_bounded_together():
    from vqgen.priors import PriorConfig, build_prior
    from vqgen.priors import estimate_parameters as prior_parameters
    from vqgen.vqvae import VQVAE, AEConfig, estimate_parameters

    # each size within its own bound, their product not: refused from the sizes alone, before anything is built
    with pytest.raises(ValueError, match="parameters, over the limit of 1,073,741,824"):
        AEConfig(hidden=8192, res_hidden=8192, res_blocks=64)
    with pytest.raises(ValueError, match="parameters, over the limit"):
        PriorConfig(codebook_size=1 << 20, n_embd=4096, n_head=4)
    with pytest.raises(ValueError, match="num_classes must be an integer in"):
        PriorConfig(num_classes=10**9)
    # the estimates the bounds use are close to the real counts
    for cfg in (AEConfig(hidden=32, embed_dim=8, codebook_size=64), AEConfig(levels=2, quantizer="fsq", hidden=16)):
        model = VQVAE(cfg)
        real = sum(t.numel() for t in [*model.parameters(), *model.buffers()])
        assert 0.7 < estimate_parameters(cfg) / real < 1.5
    for cfg in (PriorConfig(n_embd=32), PriorConfig(arch="pixelcnn", num_classes=10, factors=[16, 32])):
        real = sum(t.numel() for t in build_prior(cfg).parameters())
        assert 0.7 < prior_parameters(cfg) / real < 1.5


def _codes_file(path: Path, **changes) -> None:
    from dataclasses import replace

    from vqgen.codes import CodesFile, save_codes

    grids, labels = torch.zeros(4, 2, 2, dtype=torch.long), torch.tensor([0, 1, 0, 1])
    codes = CodesFile(grids, grids.clone(), labels, labels.clone(), 16, 2, 2, "shapes", "", "")
    save_codes(path, replace(codes, **changes))


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"codebook_size": 10**9}, "K (codebook_size) = 1000000000, outside [2, 1,048,576]"),
        ({"num_classes": 10**9}, "num_classes = 1000000000, outside [0, 65,536]"),
        ({"grid_size": 10**6}, "grid_size"),
    ],
)
def test_codes_file_claiming_huge_sizes_is_damaged(in_tmp, changes, needle):
    from vqgen.codes import load_codes

    _codes_file(in_tmp / "ok.codes")
    assert load_codes(in_tmp / "ok.codes").num_classes == 2
    _codes_file(in_tmp / "bad.codes", **changes)
    with pytest.raises(VQGenError, match="is damaged"):
        load_codes(in_tmp / "bad.codes")
    result = run_cli("train-prior", "--codes", "bad.codes", "--steps", "1", "--out", "prior")
    assert_clean_error(result, "'bad.codes' is damaged", needle)
    assert not (in_tmp / "prior").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("sample", "--n", str(10**12)), "--n must be an integer from 1 to 1,000,000"),
        (("sample", "--batch-size", str(10**12)), "--batch-size must be an integer from 1 to 65,536"),
        (("sample", "--batch-size", "0"), "--batch-size"),
        (("complete", "--image", "x.png", "--n", str(10**7)), "--n must be an integer from 1 to 1,000,000"),
    ],
)
def test_sampling_counts_are_bounded_before_loading(in_tmp, args, needle):
    # no prior exists: the counts are refused before anything is loaded
    assert_clean_error(run_cli(*args, "--prior", "missing"), needle)
    assert not (in_tmp / "samples").exists()


@pytest.mark.parametrize("batch", ["0", "-5", str(10**12)])
def test_encode_batch_size_is_bounded_before_loading(in_tmp, batch):
    # -5 encoded nothing and wrote an empty codes file; 10^12 encoded the whole data set in one batch
    result = run_cli("encode", "--ae", "missing", "--out", "c.codes", "--batch-size", batch)
    assert_clean_error(result, "--batch-size must be an integer from 1 to 65,536")
    assert not (in_tmp / "c.codes").exists()


def test_class_indices_are_ascii_digits():
    from types import SimpleNamespace

    from vqgen.sample import Pipeline, SamplingOptions, resolve_classes

    pipe = SimpleNamespace(num_classes=4, class_names=["a", "b", "c", "d"])
    assert resolve_classes(pipe, ["2", "b"], 4)[0].tolist() == [2, 1, 2, 1]
    for value, needle in (("²", "is not a class index"), ("٣", "is not a class index"), ("9" * 40, "out of range")):
        with pytest.raises(VQGenError, match=needle):
            resolve_classes(pipe, [value], 4)
    with pytest.raises(VQGenError, match="^n must be an integer from 1 to 1,000,000"):
        resolve_classes(pipe, ["all"], 10**12)
    with pytest.raises(VQGenError, match="^n must be an integer"):  # the Python API names its argument
        Pipeline.generate_codes(pipe, 10**12)
    with pytest.raises(VQGenError, match="^batch_size must be an integer from 1 to 65,536"):
        SamplingOptions(batch_size=10**12).check()


def _prior_folder(path: Path) -> Path:
    """A prior run folder as train-prior writes it, without weights: the model section is read before them."""
    from vqgen.priors import PriorConfig

    path.mkdir()
    model = PriorConfig(codebook_size=16, grid_size=2, n_layer=1, n_embd=16, n_head=1).to_dict()
    ckpt.write_config(path, "prior", {"model": model, "train": {}, "codes": {"path": "c", "level": "single"}})
    (path / ckpt.STATE).write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m.update(codebook_size=None), "codebook_size"),
        (lambda m: m.update(grid_size="8"), "grid_size"),
        (lambda m: m.pop("codebook_size"), "has no codebook_size"),
        (lambda m: m.pop("arch"), "has no arch"),
        (lambda m: m.update(arch=None), "arch"),
        (lambda m: m.update(factors="4x4"), "code factors"),
        (lambda m: m.update(factors=[3, 5]), "do not multiply to K=16"),
        (lambda m: m.update(num_classes=10**9), "num_classes"),
        (lambda m: m.update(class_dropout=None), "class_dropout"),
        (lambda m: m.update(dropout="x"), "dropout"),
        (lambda m: m.update(n_embd=16384, n_layer=256), "parameters"),
    ],
)
def test_damaged_prior_model_section_is_one_line(in_tmp, edit, needle):
    run = _prior_folder(in_tmp / "prior")
    _edit_config(run, lambda c: edit(c["model"]))
    before = snapshot(run)
    for args in (("train-prior", "--out", str(run), "--resume", "--steps", "2"), ("sample", "--prior", str(run))):
        assert_clean_error(run_cli(*args), f"'{run / ckpt.CONFIG}' has a damaged model section", needle)
    assert snapshot(run) == before and not (in_tmp / "samples").exists()


def test_benchmark_results_record_the_commit(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    record = json.loads(common.write_result("probe", "python bench/probe.py", {"x": 1}).read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert record["command"] == "python bench/probe.py" and record["machine"]["cores"]
    assert record["commit"]["sha"] == head and isinstance(record["commit"]["dirty"], bool)


def test_resume_refuses_model_flags_that_differ_from_the_run(run_copy):
    before = snapshot(run_copy)
    result = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13", "--hidden", "32")
    assert_clean_error(result, "--hidden 32 differs from the run's 16", "drop --hidden")
    assert snapshot(run_copy) == before
    same = run_cli("train-ae", "--out", str(run_copy), "--resume", "--steps", "13", "--hidden", "16")
    assert same.code == 0, same.err


@pytest.fixture
def mount_point(in_tmp):
    """A small tmpfs mounted in the test folder; skipped where this process cannot mount one."""
    folder = in_tmp / "mp"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_run_into_a_mount_point_trains_in_place_and_is_never_half_replaced(mount_point):
    (mount_point / "notes.txt").write_text("mine")
    result = run_cli("train-ae", *TINY, "--out", str(mount_point))
    assert result.code == 0, result.err
    assert (mount_point / ckpt.WEIGHTS).exists() and (mount_point / "notes.txt").read_text() == "mine"
    before = snapshot(mount_point)
    result = run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", str(mount_point))
    assert_clean_error(result, "mount point", "write to a folder inside it")
    assert snapshot(mount_point) == before
    resumed = run_cli("train-ae", "--out", str(mount_point), "--resume", "--steps", "13")
    assert resumed.code == 0, resumed.err
    inside = run_cli("train-ae", *TINY, "--out", str(mount_point / "run"))  # a folder inside swaps as anywhere
    assert inside.code == 0, inside.err
    again = run_cli("train-ae", *TINY, "--hidden", "32", "--force", "--out", str(mount_point / "run"))
    assert again.code == 0, again.err


def test_a_reader_sweeps_what_a_killed_swap_left(run_copy):
    staged = run_copy.parent / ".ae.vqgen-new"  # the old run, left beside the new one by a kill right after the swap
    staged.mkdir()
    (staged / ckpt.WEIGHTS).write_bytes(b"old")
    (staged / ckpt.LOCK).write_text("1\n")
    result = run_cli("encode", "--ae", str(run_copy), "--out", "codes.safetensors")
    assert result.code == 0, result.err
    assert not staged.exists()
