"""Fault injection: `attndsl train` killed with SIGKILL at many points — between steps and
inside checkpoint writes (before/after each file rename and fsync) — always leaves a loadable
checkpoint once one was saved, and `--resume` reproduces the uninterrupted loss curve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from attndsl.training.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS = 5
# Runs `attndsl train` in this process, SIGKILLing itself at the K-th call of one of the
# file operations a checkpoint save makes (K = 0: no fault).
DRIVER = """
import os, signal, sys
from attndsl.training import checkpoint
op, k = sys.argv[1], int(sys.argv[2])
calls = [0]
real = getattr(os, op)
def faulty(*args, **kwargs):
    calls[0] += 1
    if calls[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
if k:
    setattr(checkpoint.os, op, faulty)
from attndsl.cli import main
sys.exit(main(sys.argv[3:]))
"""
CONFIG = ["--set", "vocab=40", "--set", "ctx=16", "--set", "d_model=16", "--set", "heads=2",
          "--set", "layers=1", "--set", "d_ff=32"]


def train(tmp: Path, out: Path, op: str = "replace", k: int = 0, resume: bool = False
          ) -> subprocess.CompletedProcess:
    data = tmp / "data.txt"
    if not data.exists():
        data.write_text("to be or not to be, that is the question. " * 40)
    args = ["train", str(ROOT / "specs" / "gpt.attn"), "--steps", str(STEPS), "--batch", "2",
            "--seq", "8", "--eval-every", "0", "--save-every", "1", "--sample", "0", "--quiet",
            "--out", str(out), *CONFIG]
    args += ["--resume", str(out)] if resume else ["--data", str(data)]
    return subprocess.run([sys.executable, "-c", DRIVER, op, str(k), *args], cwd=tmp,
                          capture_output=True, text=True, timeout=120)


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in load_checkpoint(out)[2]["history"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    tmp = tmp_path_factory.mktemp("reference")
    done = train(tmp, tmp / "ck")
    assert done.returncode == 0, done.stderr
    return losses(tmp / "ck")


# Each save renames 5 times (3 files into a fresh directory, the old directory aside, the new
# one in) and fsyncs 4 times: these points land before the first save completes, between its
# renames, and inside later saves.
@pytest.mark.parametrize("op, k", [("replace", 2), ("replace", 4), ("replace", 5),
                                   ("replace", 9), ("fsync", 7), ("replace", 14)])
def test_sigkill_during_saves_leaves_a_checkpoint_that_resumes_exactly(tmp_path, reference,
                                                                     op, k):
    out = tmp_path / "ck"
    killed = train(tmp_path, out, op, k)
    assert killed.returncode == -9, killed.stderr
    try:
        step = load_checkpoint(out)[2]["step"]
    except FileNotFoundError:
        step = 0                                 # killed before the first save completed
    assert step < STEPS
    if step:
        np.testing.assert_allclose(losses(out), reference[:step], rtol=1e-6)
    resumed = train(tmp_path, out, resume=bool(step))
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(losses(out), reference, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "data.txt"]   # no leftovers
    assert json.loads((out / "state.json").read_text())["step"] == STEPS
