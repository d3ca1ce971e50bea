"""Runs that survive interruption, exact resumption, and one clear line for every bad input."""

import json
import signal

import numpy as np
import pytest
import torch

from vqgen import checkpoint as ckpt
from vqgen.errors import VQGenError

from conftest import run_cli

AE_FLAGS = (
    "--steps",
    "12",
    "--batch-size",
    "16",
    "--log-every",
    "4",
    "--save-every",
    "0",
    "--hidden",
    "32",
    "--embed-dim",
    "16",
    "--codebook-size",
    "32",
)


def assert_clean_error(result, *needles):
    assert result.code not in (0, None), result
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _interrupt_at(monkeypatch, cls, at_step):
    original = cls.step
    calls = {"n": 0}

    def step(self, model, rows):
        calls["n"] += 1
        if calls["n"] == at_step:
            signal.raise_signal(signal.SIGINT)  # caught by the loop: state is saved after this step
        return original(self, model, rows)

    monkeypatch.setattr(cls, step.__name__, step)


def _weights(path):
    return ckpt.load_tensors(path)


def resume_matches_straight_run(in_tmp, monkeypatch, command: str, task_cls, flags, at_step: int) -> None:
    """Train once straight and once cut by SIGINT after `at_step` steps then resumed: the weights must be equal."""
    assert run_cli(command, *flags, "--out", "straight").code == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, task_cls, at_step)
        assert run_cli(command, *flags, "--out", "cut").code == 130
    assert run_cli(command, "--out", "cut", "--resume").code == 0
    a, b = _weights(in_tmp / "straight/model.safetensors"), _weights(in_tmp / "cut/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_autoencoder_resume_is_bit_identical(in_tmp, monkeypatch):
    from vqgen.autoencoder import AutoencoderTask

    assert run_cli("train-ae", *AE_FLAGS, "--out", "straight").code == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, AutoencoderTask, 5)
        result = run_cli("train-ae", *AE_FLAGS, "--out", "cut")
    assert result.code == 130 and "--resume" in result.err and "step 5/12" in result.err
    state_meta = ckpt.read_header(in_tmp / "cut" / ckpt.STATE)[1]
    assert json.loads(state_meta["state"])["step"] == 5
    again = run_cli("train-ae", "--out", "cut")  # no --resume, no --force: refuses to overwrite
    assert_clean_error(again, "--resume")
    assert run_cli("train-ae", "--out", "cut", "--resume").code == 0
    a, b = _weights(in_tmp / "straight/model.safetensors"), _weights(in_tmp / "cut/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_prior_resume_is_bit_identical(in_tmp, monkeypatch):
    from vqgen.priors.training import PriorTask

    assert run_cli("train-ae", *AE_FLAGS).code == 0
    assert run_cli("encode").code == 0
    flags = (
        "--steps",
        "10",
        "--batch-size",
        "16",
        "--layers",
        "1",
        "--width",
        "32",
        "--eval-every",
        "0",
        "--dropout",
        "0.1",
    )
    resume_matches_straight_run(in_tmp, monkeypatch, "train-prior", PriorTask, flags, at_step=4)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(in_tmp, monkeypatch):
    from vqgen.autoencoder import AutoencoderTask

    original = AutoencoderTask.step
    calls = {"n": 0}

    def step(self, model, rows):
        calls["n"] += 1
        loss, stats = original(self, model, rows)
        return (loss * float("nan") if calls["n"] == 7 else loss), stats

    monkeypatch.setattr(AutoencoderTask, "step", step)
    result = run_cli(
        "train-ae",
        "--steps",
        "12",
        "--batch-size",
        "8",
        "--save-every",
        "5",
        "--log-every",
        "4",
        "--hidden",
        "32",
        "--codebook-size",
        "16",
    )
    assert_clean_error(result, "step 7")
    meta = json.loads(ckpt.read_header(in_tmp / "runs/ae" / ckpt.STATE)[1]["state"])
    assert meta["step"] == 5


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "file.json"
    ckpt.save_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with ckpt.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


# ----------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A tiny autoencoder, codes and conditional prior shared by the error tests (never modified)."""
    import os

    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_cli("train-ae", *AE_FLAGS).code == 0
        assert run_cli("encode").code == 0
        assert run_cli("train-prior", "--steps", "2", "--layers", "1", "--width", "32").code == 0
    finally:
        os.chdir(cwd)
    return root


def test_bad_data_inputs(in_tmp):
    assert_clean_error(run_cli("train-ae", "--data", "nowhere/at/all"), "nowhere/at/all")
    (in_tmp / "empty").mkdir()
    assert_clean_error(run_cli("train-ae", "--data", "empty"), "no images")
    np.savez(in_tmp / "x.npz", pixels=np.zeros((4, 8, 8), np.uint8))
    assert_clean_error(run_cli("train-ae", "--data", "x.npz"), "no 'images' array")
    np.savez(in_tmp / "odd.npz", images=np.zeros((10, 30, 30), np.uint8))
    assert_clean_error(run_cli("train-ae", "--data", "odd.npz", "--out", "odd"), "--image-size 32")
    assert_clean_error(run_cli("train-ae", "--data", "mnist", "--data-root", str(in_tmp)), "MNIST/raw")
    from PIL import Image

    (in_tmp / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(in_tmp / "imgs" / f"{i}.png")
    (in_tmp / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    assert_clean_error(run_cli("train-ae", "--data", "imgs", "--strict", "--out", "s"), "bad.png")
    ok = run_cli("train-ae", "--data", "imgs", "--steps", "2", "--out", "ok", "--codebook-size", "8")
    assert ok.code == 0, ok.err
    assert json.loads((in_tmp / "ok/config.json").read_text())["dataset"]["skipped"] == 1


def test_bad_run_folders(in_tmp, trained):
    import shutil

    ae, prior = trained / "runs/ae", trained / "runs/prior"
    assert_clean_error(run_cli("encode", "--ae", str(prior)), "prior run", "not an autoencoder")
    assert_clean_error(run_cli("sample", "--prior", str(ae)), "vqvae run", "not a prior")
    assert_clean_error(run_cli("encode", "--ae", "missing"), "does not exist")

    broken = in_tmp / "broken"
    shutil.copytree(ae, broken)
    (broken / "config.json").unlink()
    assert_clean_error(run_cli("encode", "--ae", str(broken)), "config.json", "missing")
    shutil.copy(ae / "config.json", broken / "config.json")
    (broken / "model.safetensors").unlink()
    assert_clean_error(run_cli("encode", "--ae", str(broken)), "model.safetensors")
    data = (ae / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("encode", "--ae", str(broken)), "truncated or corrupt")

    config = json.loads((ae / "config.json").read_text())
    config["model"]["codebook_size"] = 64
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(ae / "model.safetensors", broken / "model.safetensors")
    assert_clean_error(run_cli("encode", "--ae", str(broken)), "do not belong together")

    config["model"]["codebook_size"] = 32
    config["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(config))
    assert_clean_error(run_cli("encode", "--ae", str(broken)), "newer vqgen")


def test_bad_codes_files(in_tmp, trained):
    from safetensors.torch import load_file, save_file

    from vqgen.codes import load_codes

    codes_path = trained / "runs/codes.safetensors"
    tensors = load_file(str(codes_path))
    meta = ckpt.read_header(codes_path)[1]
    tensors["train.codes"] = tensors["train.codes"].clone()
    tensors["train.codes"][0, 0, 0] = 32  # K = 32: one index out of range
    save_file(tensors, str(in_tmp / "oob.safetensors"), metadata=meta)
    assert_clean_error(run_cli("train-prior", "--codes", "oob.safetensors"), "K=32")
    with pytest.raises(VQGenError, match="K=32"):
        load_codes(in_tmp / "oob.safetensors")
    assert_clean_error(
        run_cli("train-prior", "--codes", str(trained / "runs/ae/model.safetensors")), "not a vqgen codes file"
    )
    assert_clean_error(run_cli("train-prior", "--codes", "none.safetensors"), "vqgen encode")
    good = str(trained / "runs/codes.safetensors")
    bad_size = run_cli("train-prior", "--codes", good, "--width", "100", "--heads", "8", "--out", "bad-size")
    assert_clean_error(bad_size, "divisible by --heads")
    assert_clean_error(
        run_cli("train-prior", "--codes", good, "--batch-size", "0", "--out", "bad-batch"), "--batch-size"
    )
    assert_clean_error(run_cli("train-ae", "--batch-size", "0", "--out", "bad-ae"), "--batch-size must be at least 1")
    assert not any((in_tmp / d).exists() for d in ("bad-size", "bad-batch", "bad-ae"))  # nothing half-made


def test_bad_sampling_arguments(in_tmp, trained):
    prior = str(trained / "runs/prior")
    cases = [
        (("--n", "0"), "--n"),
        (("--n", "-3"), "--n"),
        (("--temperature", "0"), "--temperature"),
        (("--top-k", "0"), "--top-k"),
        (("--top-k", "33"), "K=32"),
        (("--top-p", "1.5"), "--top-p"),
        (("--top-p", "0"), "--top-p"),
        (("--class", "9"), "out of range"),
        (("--class", "dragon"), "circle"),
        (("--out", str(trained / "runs/codes.safetensors") + "/sub"), "--out"),
    ]
    for args, needle in cases:
        assert_clean_error(run_cli("sample", "--prior", prior, *args), needle)
    result = run_cli(
        "train-prior",
        "--codes",
        str(trained / "runs/codes.safetensors"),
        "--unconditional",
        "--steps",
        "1",
        "--layers",
        "1",
        "--width",
        "32",
        "--out",
        "uncond",
    )
    assert result.code == 0, result.err
    assert_clean_error(run_cli("sample", "--out", "s", "--prior", "uncond", "--class", "1"), "unconditional")


def test_sampler_refuses_changed_autoencoder(in_tmp, trained):
    import shutil

    shutil.copytree(trained / "runs", in_tmp / "runs")
    weights = ckpt.load_tensors(in_tmp / "runs/ae/model.safetensors")
    weights["decoder.net.0.bias"] += 1
    ckpt.save_tensors(in_tmp / "runs/ae/model.safetensors", weights)
    result = run_cli("sample", "--n", "2")
    assert_clean_error(result, "runs/ae/model.safetensors", "runs/prior/config.json", "--ignore-hash")
    assert run_cli("sample", "--n", "2", "--ignore-hash").code == 0


def test_debug_flag_shows_traceback():
    with pytest.raises(VQGenError):
        run_cli("--debug", "encode", "--ae", "definitely/missing")


def test_resume_with_codes_from_another_autoencoder(in_tmp, trained):
    import shutil

    shutil.copytree(trained / "runs", in_tmp / "runs")
    flags = ("--steps", "4", "--layers", "1", "--width", "32", "--save-every", "2")
    with_interrupt = run_cli("train-prior", *flags, "--out", "p")
    assert with_interrupt.code == 0, with_interrupt.err
    assert run_cli("train-ae", *AE_FLAGS, "--seed", "1", "--out", "other").code == 0
    assert run_cli("encode", "--ae", "other", "--out", "other.safetensors").code == 0
    result = run_cli("train-prior", "--out", "p", "--resume", "--steps", "6", "--codes", "other.safetensors")
    assert_clean_error(result, "another autoencoder")
    assert (
        run_cli(
            "train-ae",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--hidden",
            "32",
            "--codebook-size",
            "32",
            "--downsample",
            "8",
            "--out",
            "coarse",
        ).code
        == 0
    )
    assert run_cli("encode", "--ae", "coarse", "--out", "coarse.safetensors").code == 0
    result = run_cli("train-prior", "--out", "p", "--resume", "--steps", "6", "--codes", "coarse.safetensors")
    assert_clean_error(result, "4×4 grids")
    assert run_cli("train-prior", "--out", "p", "--resume", "--steps", "6").code == 0


def test_skipped_images_are_reported(in_tmp):
    from PIL import Image

    (in_tmp / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(in_tmp / "imgs" / f"{i}.png")
    (in_tmp / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    result = run_cli("train-ae", "--data", "imgs", "--steps", "1", "--codebook-size", "8", "--hidden", "32")
    assert result.code == 0 and "skipped 1 unreadable" in result.out


def test_weight_average_follows_its_formula():
    from vqgen.averaging import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
    for got, want in zip(average.averages, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    trained = [p.detach().clone() for p in model.parameters()]
    with average.applied():
        for p, want in zip(model.parameters(), expected, strict=True):
            assert torch.allclose(p, want, atol=1e-6)
    for p, before in zip(model.parameters(), trained, strict=True):  # and the trained weights come back
        assert torch.equal(p, before)
    with pytest.raises(VQGenError, match="ema_weights"):
        WeightAverage(model, decay=1.0)


def test_prior_resume_with_weight_average_is_bit_identical(in_tmp, monkeypatch, trained):
    from vqgen.priors.training import PriorTask

    codes = str(trained / "runs/codes.safetensors")
    flags = ("--codes", codes, "--steps", "10", "--batch-size", "16", "--layers", "1", "--width", "32")
    flags += ("--eval-every", "0", "--ema-weights", "0.9")
    resume_matches_straight_run(in_tmp, monkeypatch, "train-prior", PriorTask, flags, at_step=4)
    a = _weights(in_tmp / "straight/model.safetensors")
    state = ckpt.load_tensors(in_tmp / "straight" / ckpt.STATE)
    # the saved model is the average, the state keeps the trained weights beside it
    assert any(not torch.equal(a[k], state[f"model.{k}"]) for k in a)
    assert all(torch.equal(a[k], state[f"ema.{k}"]) for k in a if f"ema.{k}" in state)
    records = ckpt.read_metrics(in_tmp / "straight")
    assert "raw_bits_per_code" in records[-1]


def test_minutes_budget_is_kept_and_recorded(in_tmp, trained, monkeypatch):
    from types import SimpleNamespace

    import vqgen.train
    from vqgen.priors.training import PriorTask

    codes = str(trained / "runs/codes.safetensors")
    flags = ("--codes", codes, "--batch-size", "16", "--layers", "1", "--width", "32", "--eval-every", "0")
    # A clock that only steps do move, 10 ms each (the first one 1 s, like a slow first step), so that the check is
    # exact whatever else the machine is doing.
    clock = {"now": 0.0, "steps": 0}
    original = PriorTask.step

    def step(self, model, rows):
        clock["steps"] += 1
        clock["now"] += 1.0 if clock["steps"] == 1 else 0.01
        return original(self, model, rows)

    budget_s = 3.0
    with monkeypatch.context() as m:
        m.setattr(PriorTask, "step", step)
        m.setattr(vqgen.train, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
        assert run_cli("train-prior", *flags, "--minutes", str(budget_s / 60), "--out", "timed").code == 0
    config = json.loads((in_tmp / "timed/config.json").read_text())
    steps = config["train"]["steps"]
    assert config["budget"]["steps"] == steps and config["budget"]["step_seconds"] == pytest.approx(0.01)
    # 1 s for the first step, then 10 ms a step: about 200 steps fill the 3 s
    assert steps in (200, 201) and clock["steps"] == steps
    budget = next(r for r in ckpt.read_metrics(in_tmp / "timed") if r["split"] == "budget")
    assert budget["step"] == steps and abs(budget["seconds"] - budget_s) <= 0.01 + 1e-9
    # the recorded step count reproduces the run exactly
    assert run_cli("train-prior", *flags, "--steps", str(steps), "--out", "stepped").code == 0
    a, b = _weights(in_tmp / "timed/model.safetensors"), _weights(in_tmp / "stepped/model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for args, needle in [
        (("--minutes", "-1"), "--minutes"),
        (("--minutes", "1", "--steps", "5"), "--minutes"),
        (("--ema-weights", "1.5"), "--ema-weights"),
    ]:
        assert_clean_error(run_cli("train-prior", *flags, *args, "--out", "bad"), needle)
    assert not (in_tmp / "bad").exists()


def test_guidance_errors_on_the_command_line(in_tmp, trained):
    prior = str(trained / "runs/prior")
    assert_clean_error(run_cli("sample", "--prior", prior, "--guidance", "-1", "--out", "s"), "--guidance")
    assert_clean_error(run_cli("sample", "--prior", prior, "--guidance", "2", "--class", "null", "--out", "s"), "null")
    codes = str(trained / "runs/codes.safetensors")
    small = ("--codes", codes, "--steps", "1", "--layers", "1", "--width", "32")
    assert run_cli("train-prior", *small, "--unconditional", "--out", "uncond").code == 0
    assert_clean_error(run_cli("sample", "--prior", "uncond", "--guidance", "2", "--out", "s"), "unconditional")
    assert run_cli("train-prior", *small, "--class-dropout", "0", "--out", "nonull").code == 0
    assert_clean_error(run_cli("sample", "--prior", "nonull", "--guidance", "2", "--out", "s"), "class-dropout")
    result = run_cli("sample", "--prior", prior, "--guidance", "2", "--class", "none", "--n", "8", "--out", "ok")
    assert result.code == 0, result.err
    assert len(list((in_tmp / "ok").glob("0*.png"))) == 8


def test_messages_at_the_edges(in_tmp, monkeypatch):
    import os

    import numpy as np

    np.savez(in_tmp / "wide.npz", images=np.zeros((6, 1, 50, 3), np.uint8))  # 1×50 images
    result = run_cli("train-ae", "--data", "wide.npz", "--out", "run", "--steps", "2")
    assert_clean_error(result, "1×50", "square")
    assert "0×0 codes" not in result.out and not (in_tmp / "run").exists()

    from vqgen.errors import VQGenError
    from vqgen.images import load_image

    (in_tmp / "loop").symlink_to(in_tmp / "loop")
    with pytest.raises(VQGenError, match="symbolic link that leads nowhere"):
        load_image(in_tmp / "loop", 3, 32)  # what `vqgen complete --image loop` reads

    real_access = os.access
    (in_tmp / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **k: "locked" not in str(p) and real_access(p, mode, **k))
    result = run_cli("encode", "--out", "locked/codes.safetensors")  # refused before any encoding
    assert_clean_error(result, "cannot be written", "make it writable or write elsewhere")
