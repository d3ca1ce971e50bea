"""`--precision auto` on a CPU with native bf16: decided by timing the network about to train, cached per CPU model.

The clock is a fake one throughout: what is checked is the decision and the cache, never a real duration.
"""

from __future__ import annotations

import json

import pytest
import torch

import vqgen.device as device_mod
from vqgen import checkpoint as ckpt
from vqgen.device import (
    CPU_BF16_MARGIN,
    auto_is_measured,
    lookup_precision,
    measure_cpu_precision,
    precision_cache_path,
    resolve_precision,
)

from conftest import run_cli

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def timed_auto(monkeypatch):
    """These tests are of the timing itself, which conftest turns off for the rest of the suite."""
    monkeypatch.delenv("VQGEN_PRECISION_AUTO", raising=False)


REAL_TIME_PRECISIONS = device_mod.time_precisions
AE_FLAGS = (
    "--hidden",
    "16",
    "--embed-dim",
    "8",
    "--codebook-size",
    "128",
    "--batch-size",
    "16",
    "--restart-dead",
    "2",  # the quantizer counts its steps: a measurement on the run's own model would shift its restarts
    "--log-every",
    "3",
    "--save-every",
    "0",
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_step(clock: FakeClock, seconds: dict[str, float], first: dict[str, float] | None = None):
    """A training step that takes `seconds[precision]` on `clock` (`first[precision]` the first time), and the
    precisions it was called with."""
    calls: list[str] = []

    def step(precision: str) -> None:
        warm = first is not None and precision not in calls
        calls.append(precision)
        clock.now += first[precision] if warm else seconds[precision]

    return step, calls


def never(precision: str) -> None:
    raise AssertionError("measured, where nothing should have been")


@pytest.mark.parametrize(
    ("bf16_seconds", "first", "expected"),
    [
        (1 / (CPU_BF16_MARGIN * 1.02), None, "bf16"),  # faster by more than the margin
        (1 / (CPU_BF16_MARGIN * 0.98), None, "fp32"),  # faster, but by less than the margin
        (1.3, None, "fp32"),  # slower (bf16 emulated, or too small a network to gain)
        (0.5, {"fp32": 0.1, "bf16": 60.0}, "bf16"),  # bf16's slow first pass (kernel set-up) is a warm-up: untimed
    ],
)
def test_bf16_is_picked_only_when_faster_by_the_margin(tmp_path, bf16_seconds, first, expected):
    clock = FakeClock()
    step, calls = timed_step(clock, {"fp32": 1.0, "bf16": bf16_seconds}, first)
    choice = measure_cpu_precision("net", step, path=tmp_path / "precision.json", timer=clock)
    assert choice.precision == expected and not choice.cached
    assert calls.count("fp32") >= 3 and calls.count("bf16") >= 3  # a warm-up pass, then at least two timed
    assert choice.speedup == pytest.approx(1.0 / bf16_seconds)


def test_one_interrupted_pass_does_not_decide(tmp_path):
    clock = FakeClock()
    passes = {"bf16": 0}

    def step(precision: str) -> None:
        if precision == "bf16":
            passes["bf16"] += 1
            clock.now += 30.0 if passes["bf16"] == 2 else 0.5  # the first timed bf16 pass was preempted
        else:
            clock.now += 1.0

    assert measure_cpu_precision("net", step, path=tmp_path / "precision.json", timer=clock).precision == "bf16"


def test_the_choice_is_cached_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "precision.json"
    clock = FakeClock()
    step, calls = timed_step(clock, {"fp32": 1.0, "bf16": 0.5})
    first = measure_cpu_precision("net", step, path=path, timer=clock)
    assert calls and path.exists()
    again = measure_cpu_precision("net", never, path=path, timer=clock)  # a second call does not measure
    assert again.cached and again.precision == first.precision == "bf16"
    assert again.speedup == pytest.approx(first.speedup)
    # another network, or the same on another CPU model, is measured afresh; the first entry stays
    calls.clear()
    assert measure_cpu_precision("other net", step, path=path, timer=clock).cached is False and calls
    monkeypatch.setattr(device_mod, "cpu_model", lambda: "Some Other CPU 9000")
    calls.clear()
    assert measure_cpu_precision("net", step, path=path, timer=clock).cached is False and calls
    monkeypatch.undo()
    assert lookup_precision("net", path) is not None and lookup_precision("other net", path) is not None


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        "[1, 2]",
        '{"version": 1, "entries": []}',
        "entry",  # a readable file whose entry for this network is nonsense
    ],
)
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, damage):
    path = tmp_path / "precision.json"
    if damage == "entry":
        damage = json.dumps({"version": 1, "entries": {device_mod._cache_key("net"): {"precision": "fp8"}}})
    path.write_text(damage)
    clock = FakeClock()
    step, calls = timed_step(clock, {"fp32": 1.0, "bf16": 0.5})
    choice = measure_cpu_precision("net", step, path=path, timer=clock)
    assert calls and choice.precision == "bf16"
    assert json.loads(path.read_text())["version"] == 1  # valid again
    assert lookup_precision("net", path).precision == "bf16"


def test_an_unwritable_cache_still_decides(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    clock = FakeClock()
    step, _ = timed_step(clock, {"fp32": 1.0, "bf16": 0.5})
    assert measure_cpu_precision("net", step, path=blocker / "precision.json", timer=clock).precision == "bf16"


def test_the_cache_lives_in_vqgen_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQGEN_CACHE", str(tmp_path))
    assert precision_cache_path() == tmp_path / "precision.json"
    monkeypatch.delenv("VQGEN_CACHE")
    assert precision_cache_path().parent.name == "vqgen"


@pytest.mark.parametrize("native", [False, True])
def test_callers_without_a_network_keep_the_flag_rule(monkeypatch, native):
    """Sampling and eval have no training step to time: auto follows the flag, and an explicit precision stays."""
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(device_mod, "time_precisions", lambda *a, **k: never("fp32"))
    assert resolve_precision("auto", CPU, "autoencoder") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU, "autoencoder") == "fp32"
    assert resolve_precision("bf16", CPU, "autoencoder") == "bf16"
    assert auto_is_measured("auto", CPU) is native  # training measures only where the CPU has native bf16
    assert not auto_is_measured("fp32", CPU) and not auto_is_measured("bf16", CPU)


def _fake_timing(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """time_precisions with the real training step (so the run's networks are copied and stepped) on a fake clock."""
    clock, calls = FakeClock(), []

    def fake(step, **kwargs):
        def stepped(precision: str) -> None:
            calls.append(precision)
            step(precision)
            clock.now += seconds[precision]

        return REAL_TIME_PRECISIONS(stepped, seconds=0.0, timer=clock)

    monkeypatch.setattr(device_mod, "time_precisions", fake)
    return calls


def _out(result) -> str:
    assert result.code == 0, result.err
    return " ".join(result.out.split())  # rich wraps long lines


def test_training_measures_prints_records_caches_and_resumes(in_tmp, monkeypatch):
    monkeypatch.setenv("VQGEN_CACHE", str(in_tmp / "cache"))
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    calls = _fake_timing(monkeypatch, {"fp32": 1.0, "bf16": 0.5})
    out = _out(run_cli("train-ae", *AE_FLAGS, "--steps", "2", "--device", "cpu", "--out", "measured"))
    assert calls  # the real step ran, on the model about to train
    line = "precision bf16 (auto: bf16 ran 2.00× as fast as fp32 on this CPU"
    assert out.count(line) == 1 and "measured now" in out
    train = json.loads((in_tmp / "measured" / ckpt.CONFIG).read_text())["train"]
    assert train["precision"] == "bf16" and train["precision_auto"]["bf16_speedup"] == pytest.approx(2.0)
    assert len(json.loads((in_tmp / "cache" / "precision.json").read_text())["entries"]) == 1

    # the same network again: read from the cache, not measured; and it trains exactly what the measured run did,
    # since the measurement stepped copies of the networks with the random state put back
    calls.clear()
    out = _out(run_cli("train-ae", *AE_FLAGS, "--steps", "2", "--device", "cpu", "--out", "cached"))
    assert not calls and "precision bf16" in out and "from the cache" in out
    a, b = (ckpt.load_tensors(in_tmp / run / ckpt.WEIGHTS) for run in ("measured", "cached"))
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # a resumed run keeps its precision, even where a measurement would now pick the other one
    (in_tmp / "cache" / "precision.json").unlink()
    calls = _fake_timing(monkeypatch, {"fp32": 0.5, "bf16": 1.0})
    out = _out(run_cli("train-ae", "--resume", "--out", "measured", "--steps", "3"))
    assert not calls and "precision bf16" in out and "auto:" not in out
    assert json.loads((in_tmp / "measured" / ckpt.CONFIG).read_text())["train"]["precision"] == "bf16"


@pytest.mark.parametrize(("native", "flag", "expected"), [(True, "fp32", "fp32"), (False, "auto", "fp32")])
def test_no_measurement_for_an_explicit_precision_or_without_native_bf16(in_tmp, monkeypatch, native, flag, expected):
    monkeypatch.setenv("VQGEN_CACHE", str(in_tmp / "cache"))
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    calls = _fake_timing(monkeypatch, {"fp32": 1.0, "bf16": 0.1})  # bf16 would win by far, were it measured
    out = _out(run_cli("train-ae", *AE_FLAGS, "--steps", "2", "--device", "cpu", "--precision", flag))
    assert not calls and f"precision {expected}" in out and "auto:" not in out
    train = json.loads((in_tmp / "runs/ae" / ckpt.CONFIG).read_text())["train"]
    assert train["precision"] == expected and "precision_auto" not in train
    assert not (in_tmp / "cache").exists()
