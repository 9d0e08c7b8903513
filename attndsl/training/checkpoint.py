"""Pickle-free, crash-safe checkpoints: safetensors for arrays, JSON for the rest.

A checkpoint directory holds ``model.safetensors``, ``optimizer.safetensors``
and ``state.json``. A save builds a complete new directory beside the old one and
swaps it in by rename, so a failed save never destroys the previous checkpoint;
the ``"step"`` is stamped into both safetensors files' metadata and checked on load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file in the same dir, fsync, then ``os.replace`` it onto
    ``path`` (streams: nothing is assembled in memory first).

    On any failure the previous content of ``path`` (if any) is untouched and
    the temp file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save_safetensors(
    tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Serialize ``tensors`` with safetensors and write them atomically to ``path``."""
    atomic_write_bytes(path, _safetensors_bytes(tensors, metadata=metadata))


def _load_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"incomplete checkpoint: {str(path)!r} is missing")
    with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def save_checkpoint(
    directory: str | Path,
    weights: dict[str, np.ndarray],
    optimizer_tensors: dict[str, np.ndarray],
    state: dict[str, Any],
) -> None:
    """Write a checkpoint into ``directory`` without ever losing the previous one.

    ``state`` must be JSON-serializable and contain ``"step"``. The three files are
    written and fsynced in a fresh sibling directory, which then replaces ``directory``
    by rename; the old checkpoint is moved aside first and deleted only after the swap.
    If anything fails, ``directory`` keeps the previous checkpoint (or, after a crash
    between the two renames, `load_checkpoint` finds it under its moved-aside name).
    ``directory`` must hold nothing but a checkpoint.
    """
    if "step" not in state:
        raise ValueError("checkpoint state must contain 'step'")
    directory = Path(directory)
    meta = {"step": str(state["step"])}
    files = {
        STATE_FILE: (json.dumps(state, indent=2, sort_keys=True) + "\n").encode("utf-8"),
        MODEL_FILE: _safetensors_bytes(weights, metadata=meta),
        OPTIMIZER_FILE: _safetensors_bytes(optimizer_tensors, metadata=meta),
    }
    if directory.exists():
        foreign = sorted(set(os.listdir(directory)) - set(files))
        if foreign:
            raise ValueError(f"{str(directory)!r} holds files that are not a checkpoint "
                             f"({', '.join(foreign[:3])}); choose an empty or new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(
    directory: str | Path,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(weights, optimizer_tensors, state)`` written by :func:`save_checkpoint`."""
    directory = Path(directory)
    if not directory.is_dir():
        moved = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        if not moved:
            raise FileNotFoundError(f"checkpoint directory not found: {str(directory)!r}")
        directory = moved[-1]  # a save crashed between its two renames
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"incomplete checkpoint: {str(state_path)!r} is missing (interrupted save?)"
        )
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{str(state_path)!r} does not name a 'step'")
    weights, wmeta = _load_safetensors(directory / MODEL_FILE)
    optimizer_tensors, ometa = _load_safetensors(directory / OPTIMIZER_FILE)
    step = str(state["step"])
    for name, meta in ((MODEL_FILE, wmeta), (OPTIMIZER_FILE, ometa)):
        if meta.get("step") != step:
            raise ValueError(
                f"inconsistent checkpoint in {str(directory)!r}: {name} is from step "
                f"{meta.get('step')!r} but {STATE_FILE} names step {step!r}"
            )
    return weights, optimizer_tensors, state


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-serializable snapshot of ``rng.bit_generator.state``."""
    return _jsonable(rng.bit_generator.state)


def numpy_rng_from_state(d: dict[str, Any]) -> np.random.Generator:
    """A new Generator that continues exactly where the one behind ``d`` was."""
    name = d.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unsupported numpy bit generator {name!r}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = d
    return np.random.Generator(bit_generator)


def torch_rng_state() -> list[int]:
    """The global torch CPU RNG state as a JSON-serializable list of bytes."""
    import torch

    return torch.get_rng_state().tolist()


def set_torch_rng_state(state: list[int]) -> None:
    """Restore the global torch CPU RNG state from :func:`torch_rng_state`."""
    import torch

    torch.set_rng_state(torch.tensor(state, dtype=torch.uint8))
