from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"

torch.set_num_threads(min(2, torch.get_num_threads()))
# --precision auto by the CPU-flag rule, not by timing: a test's run must not depend on how busy the machine is
# (tests/test_device.py lifts this to test the timing itself)
os.environ["VQGEN_PRECISION_AUTO"] = "rule"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run `vqgen ARGS` in-process through the real entry point (errors become one line + exit code)."""
    from vqgen.cli import _DEBUG, main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["vqgen", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        _DEBUG["on"] = False
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny tensors: intra-op threads only add synchronisation, which turns into heavy spinning when
    another process is busy on the same few cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root shared by the whole session, so the shapes data set is generated once."""
    root = tmp_path_factory.mktemp("data")
    os.environ["VQGEN_DATA"] = str(root)
    return root


@pytest.fixture
def in_tmp(tmp_path, data_root, monkeypatch) -> Path:
    """Run in an empty folder, so the CLI's default paths (runs/, samples/) land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VQGEN_DATA", str(data_root))
    return tmp_path


def needs_shared(name: str) -> Path:
    if not (SHARED_DATA / name / "raw").exists():
        pytest.skip(f"{SHARED_DATA / name} not present")
    return SHARED_DATA
