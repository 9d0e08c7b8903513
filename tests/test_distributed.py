"""Data-parallel training: `attndsl train --nproc 2` (torchrun, DDP over gloo on CPU) must
follow the loss curve of one process with twice the batch, write one checkpoint, and resume
with another number of ranks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from helpers import REPO_ROOT  # noqa: E402

SMALL = ["--set", "d_model=32", "--set", "layers=2", "--set", "heads=4", "--seq", "16",
         "--eval-every", "0", "--sample", "0", "--quiet"]


def train(*args: str) -> subprocess.CompletedProcess:
    """`attndsl train specs/nanogpt.attn ...` in a fresh process (as a user runs it)."""
    cmd = [sys.executable, "-m", "attndsl", "train", str(REPO_ROOT / "specs" / "nanogpt.attn"),
           *SMALL, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def losses(run) -> np.ndarray:
    return np.array([h["loss"] for h in json.loads((run / "state.json").read_text())["history"]])


def test_two_ranks_follow_one_process_with_twice_the_batch(tmp_path) -> None:
    done = train("--nproc", "2", "--batch", "2", "--steps", "20", "--out", str(tmp_path / "ddp"))
    assert "launching 2 ranks" in done.stdout and done.stdout.count("checkpoint:") == 1
    train("--batch", "4", "--steps", "20", "--out", str(tmp_path / "one"))
    ddp, one = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(ddp) == len(one) == 20
    np.testing.assert_allclose(ddp, one, rtol=1e-5)
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())
    assert state["world_size"] == 2 and state["config"]["batch"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "state.json"]   # one checkpoint

    # the checkpoint resumes with another number of ranks (global batch kept: 1 x 4)
    train("--resume", str(tmp_path / "ddp"), "--steps", "30", "--out", str(tmp_path / "ddp"))
    train("--resume", str(tmp_path / "one"), "--steps", "30", "--out", str(tmp_path / "one"))
    np.testing.assert_allclose(losses(tmp_path / "ddp")[20:], losses(tmp_path / "one")[20:],
                               rtol=1e-5)


def test_nproc_is_for_the_torch_backend(tmp_path, capsys) -> None:
    from attndsl.cli import main
    assert main(["train", "specs/nanogpt.attn", "--backend", "numpy", "--nproc", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "data-parallel training" in capsys.readouterr().err


def test_sharded_ranks_follow_one_process_and_resume_anywhere(tmp_path) -> None:
    """--shard (FSDP over 2 gloo ranks): the single-process loss curve with twice the batch,
    one checkpoint with full tensors, which resumes sharded or on one process alike."""
    done = train("--nproc", "2", "--shard", "--batch", "2", "--steps", "12",
                 "--out", str(tmp_path / "fsdp"))
    assert done.stdout.count("checkpoint:") == 1
    train("--batch", "4", "--steps", "12", "--out", str(tmp_path / "one"))
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "one"), rtol=1e-5)
    for d in ("fsdp", "one"):                                    # sharded and plain resumes
        (tmp_path / f"{d}2").mkdir()
        for f in (tmp_path / d).iterdir():
            (tmp_path / f"{d}2" / f.name).write_bytes(f.read_bytes())
    train("--nproc", "2", "--shard", "--resume", str(tmp_path / "fsdp"), "--steps", "18",
          "--out", str(tmp_path / "fsdp"))
    train("--resume", str(tmp_path / "fsdp2"), "--steps", "18", "--out", str(tmp_path / "fsdp2"))
    train("--resume", str(tmp_path / "one"), "--steps", "18", "--out", str(tmp_path / "one"))
    for d in ("fsdp", "fsdp2"):
        np.testing.assert_allclose(losses(tmp_path / d)[12:], losses(tmp_path / "one")[12:],
                                   rtol=1e-5)


def test_shard_needs_ranks(tmp_path, capsys) -> None:
    from attndsl.cli import main
    assert main(["train", "specs/nanogpt.attn", "--shard", "--out", str(tmp_path / "o")]) == 2
    assert "--shard splits the model over data-parallel ranks" in capsys.readouterr().err
