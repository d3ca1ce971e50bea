"""Scale-out: torchrun with 2 CPU processes (gloo) against one process, precision checks and --compile fallback.

The torchrun runs go through tests/ddp_worker.py: the real `vqgen` CLI, plus a dump of every rank's final
weights, so the tests can check that the ranks agree bit for bit and that 2 processes train what 1 does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqgen import checkpoint as ckpt

from conftest import run_cli

WORKER = Path(__file__).with_name("ddp_worker.py")
AE_FLAGS = (
    "--hidden",
    "32",
    "--embed-dim",
    "16",
    # 128 rather than 32 codes: with 32, k-means leaves no code unused for 2 steps and no restart would happen
    "--codebook-size",
    "128",
    "--batch-size",
    "16",
    "--restart-dead",
    "2",
    "--log-every",
    "3",
    "--save-every",
    "0",
)
# PixelCNN rather than the default Transformer: conditional, its last layer's vertical label bias gets no gradient,
# which plain DDP rejects
# N processes train what 1 does only up to reduction order; in bf16 that order moves a code's usage count across a
# restart threshold, so the comparisons run in fp32 (what --precision auto picks on a CPU without native bf16).
EXACT = ("--precision", "fp32")
PRIOR_FLAGS = ("--arch", "pixelcnn", "--layers", "2", "--width", "16", "--batch-size", "16", "--eval-every", "0")


def torchrun(cwd: Path, dump: Path, *args: str) -> subprocess.CompletedProcess:
    """`vqgen ARGS` in 2 processes of 1 thread; each rank leaves dump/rank{r}.safetensors."""
    dump.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQGEN_TEST_DUMP": str(dump)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rank_weights(dump: Path) -> dict[str, torch.Tensor]:
    """Rank 0's final weights, after checking that rank 1 holds exactly the same."""
    w0, w1 = (ckpt.load_tensors(dump / f"rank{r}.safetensors") for r in (0, 1))
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), f"ranks differ in {name}"
    return w0


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def metrics_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_root) -> Path:
    """One-process reference runs: a 6-step autoencoder, its codes, and a 6-step conditional PixelCNN on them."""
    root = tmp_path_factory.mktemp("single")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert run_cli("train-ae", *AE_FLAGS, *EXACT, "--steps", "6", "--out", "ae").code == 0
        assert run_cli("encode", "--ae", "ae", "--out", "codes.safetensors").code == 0
        result = run_cli(
            "train-prior", "--codes", "codes.safetensors", *PRIOR_FLAGS, *EXACT, "--steps", "6", "--out", "prior"
        )
        assert result.code == 0, result.err
    finally:
        os.chdir(cwd)
    return root


def test_train_ae_two_processes_match_one_and_resume(tmp_path, single):
    """3 steps in 2 processes, then --resume to 6 (two launches keep the test short): the ranks agree after each,
    and the result is a 6-step one-process run. Warm-up lasts 100 steps, so 3 + 3 steps see the same rates."""
    first = torchrun(tmp_path, tmp_path / "first", "train-ae", *AE_FLAGS, *EXACT, "--steps", "3", "--out", "ae")
    assert_close(rank_weights(tmp_path / "first"), ckpt.load_tensors(tmp_path / "ae" / ckpt.WEIGHTS))
    assert first.stdout.count("held-out results") == 1  # only rank 0 prints
    assert sorted(p.name for p in (tmp_path / "ae").iterdir()) == [
        ".lock",  # rank 0's lock on the folder (see RunLock)
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "recon.png",
        "state.safetensors",
    ]
    torchrun(tmp_path, tmp_path / "dump", "train-ae", "--out", "ae", "--resume", "--steps", "6")
    assert_close(rank_weights(tmp_path / "dump"), ckpt.load_tensors(single / "ae" / ckpt.WEIGHTS))

    # only rank 0 writes: one line per log window and evaluation; the logged numbers are global, not rank 0's
    lines = metrics_lines(tmp_path / "ae")
    assert [(r["step"], r["split"]) for r in lines] == [(3, "train"), (3, "test"), (6, "train"), (6, "test")]
    reference = {(r["step"], r["split"]): r for r in metrics_lines(single / "ae")}
    assert sum(r["restarted"] for r in reference.values() if r["split"] == "train") > 0  # restarts did happen
    for ours in lines:
        theirs = reference.get((ours["step"], ours["split"]))
        for key in ("loss", "mse", "codes_used", "perplexity", "restarted"):
            if theirs is not None and key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4), key


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_match_one_process(tmp_path, single):
    """Two torchrun launchers, one process each, meeting at a rendezvous on 127.0.0.1 as two machines would: they
    end with the weights of the 6-step one-process run on the same global batch."""
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VQGEN_TEST_DUMP": str(dump)}
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "vqgen-test",
                "--local-addr",
                "127.0.0.1",
                str(WORKER),
                "train-ae",
                *AE_FLAGS,
                *EXACT,
                "--steps",
                "6",
                "--out",
                "ae",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()  # a no-op for one that has exited; else no node outlives a failed test
    assert all(launcher.returncode == 0 for launcher in launchers), "\n".join(o[-3000:] for o in outputs)
    assert_close(rank_weights(dump), ckpt.load_tensors(single / "ae" / ckpt.WEIGHTS))


def test_a_folder_is_cached_once_by_rank_0(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for i in range(24):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=rng, dtype=torch.uint8).numpy()
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"{i}.png")
    flags = ("--data", "imgs", "--data-root", "root", *AE_FLAGS, "--steps", "2", "--out", "ae")
    torchrun(tmp_path, tmp_path / "dump", "train-ae", *flags)
    assert sorted(p.name for p in (tmp_path / "dump").glob("built-*")) == ["built-rank0"]
    assert len(list((tmp_path / "root" / "cache").glob("imgs-*/images.npy"))) == 1
    rank_weights(tmp_path / "dump")  # and the ranks agree


def test_adversarial_two_processes_match_one(tmp_path):
    """With the discriminator and feature matching on from step 2, 2 processes end with the autoencoder and the
    discriminator of one process on the same global batch: λ and both networks' gradients are the global batch's."""
    flags = ("train-ae", *AE_FLAGS, *EXACT, "--adversarial", "0.5", "--adversarial-start", "2")
    flags += ("--feature-matching", "0.1", "--steps", "4")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run_cli(*flags, "--out", "one").code == 0
    finally:
        os.chdir(cwd)
    torchrun(tmp_path, tmp_path / "dump", *flags, "--out", "two")
    ours = rank_weights(tmp_path / "dump")
    state = ckpt.load_tensors(tmp_path / "one" / "state.safetensors")
    theirs = ckpt.load_tensors(tmp_path / "one" / ckpt.WEIGHTS)
    prefix = "task.adv.model."
    theirs |= {f"adv.{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)}
    assert any(k.startswith("adv.") for k in theirs)
    assert_close(
        {k: v for k, v in ours.items() if not k.startswith("adv.")},
        {k: v for k, v in theirs.items() if not k.startswith("adv.")},
    )
    # Adam divides by √v: where a discriminator gradient is ~0, reduction-order rounding moves a weight by ~1e-5
    for name in theirs:
        if name.startswith("adv."):
            torch.testing.assert_close(
                ours[name], theirs[name], atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}"
            )
    weights = [r["adv_weight"] for r in metrics_lines(tmp_path / "two") if r["split"] == "train"]
    reference = [r["adv_weight"] for r in metrics_lines(tmp_path / "one") if r["split"] == "train"]
    assert weights == pytest.approx(reference, rel=1e-4) and max(reference) > 0


def test_train_prior_two_processes_match_one(tmp_path, single):
    codes = str(single / "codes.safetensors")
    flags = ("--codes", codes, *PRIOR_FLAGS, *EXACT, "--steps", "6", "--out", "prior")
    torchrun(tmp_path, tmp_path / "dump", "train-prior", *flags)
    config = json.loads((single / "prior" / ckpt.CONFIG).read_text())
    assert config["model"]["num_classes"] > 0  # class dropout (a per-example random draw) is in play
    assert_close(rank_weights(tmp_path / "dump"), ckpt.load_tensors(single / "prior" / ckpt.WEIGHTS))


# ----------------------------------------------------------------------------------------------- precision, compile


def test_bf16_on_cpu_keeps_the_quantizer_in_fp32(in_tmp, monkeypatch):
    from vqgen.quantize import VectorQuantizer

    seen = []
    original = VectorQuantizer._forward

    def spy(self, z):
        seen.append((z.dtype, torch.is_autocast_enabled("cpu")))
        return original(self, z)

    monkeypatch.setattr(VectorQuantizer, "_forward", spy)
    original_forward = VectorQuantizer.forward
    inputs = []

    def forward_spy(self, z):
        inputs.append(z.dtype)
        return original_forward(self, z)

    monkeypatch.setattr(VectorQuantizer, "forward", forward_spy)
    result = run_cli("train-ae", *AE_FLAGS, "--steps", "2", "--precision", "bf16", "--device", "cpu")
    assert result.code == 0, result.err
    assert torch.bfloat16 in inputs  # the encoder did run under bf16 autocast
    assert seen and all(s == (torch.float32, False) for s in seen)
    weights = ckpt.load_tensors(in_tmp / "runs/ae" / ckpt.WEIGHTS).values()
    assert all(v.dtype == torch.float32 for v in weights if v.is_floating_point())


def test_fp16_on_cpu_is_a_clear_error(in_tmp):
    result = run_cli("train-ae", "--precision", "fp16", "--device", "cpu")
    assert result.code == 2 and "bf16" in result.err and "Traceback" not in result.err
    assert not (in_tmp / "runs").exists()  # refused before any folder was made
    assert (
        "unknown --precision 'fp8'; use one of auto, fp32, bf16, fp16" in run_cli("train-ae", "--precision", "fp8").err
    )


def test_compile_falls_back_when_the_first_call_fails(in_tmp, monkeypatch):
    """torch.compile fails lazily, at the first call: the run goes on eagerly, with a warning, and trains the same."""

    def broken_compile(fn, *args, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler")

        return compiled

    assert run_cli("train-ae", *AE_FLAGS, "--steps", "3", "--out", "eager").code == 0
    monkeypatch.setattr(torch, "compile", broken_compile)
    result = run_cli("train-ae", *AE_FLAGS, "--steps", "3", "--out", "fallback", "--compile")
    assert result.code == 0, result.err
    out = " ".join(result.out.split())  # rich wraps long lines
    assert "torch.compile failed for Encoder" in out and "no working C++ compiler" in out
    a, b = (ckpt.load_tensors(in_tmp / run / ckpt.WEIGHTS) for run in ("eager", "fallback"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.skipif(not os.environ.get("VQGEN_TEST_COMPILE"), reason="a real torch.compile takes ~40 s on a CPU")
def test_compile_trains_like_eager(in_tmp):
    assert run_cli("train-ae", *AE_FLAGS, "--steps", "3", "--out", "eager").code == 0
    result = run_cli("train-ae", *AE_FLAGS, "--steps", "3", "--out", "compiled", "--compile")
    assert result.code == 0 and "torch.compile failed" not in result.out, result.out
    assert_close(*(ckpt.load_tensors(in_tmp / run / ckpt.WEIGHTS) for run in ("eager", "compiled")))
