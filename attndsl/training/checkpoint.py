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
from safetensors.numpy import save as _safetensors_save

from attndsl.safetensors_io import SafetensorsFormatError, read_header, read_tensor

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors' `save`, on C-contiguous copies where needed: given a strided view it
    writes the wrong bytes (a slice of a recurrent memory, a transposed weight)."""
    return _safetensors_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                             metadata=metadata)


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


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        entries, _ = read_header(path)
        with open(path, "rb") as f:
            return {k: read_tensor(f, e) for k, e in entries.items()}
    except SafetensorsFormatError as e:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None


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
    check_checkpoint_dir(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
            os.replace(directory, old)
            os.replace(tmp, directory)
        else:
            os.replace(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in _leftovers(directory):     # this save's old copy and any earlier crash's
        shutil.rmtree(stale, ignore_errors=True)


def _leftovers(directory: Path) -> list[Path]:
    """Copies a save leaves beside `directory` while it runs (or after a crash)."""
    return sorted([*directory.parent.glob(f".{directory.name}.old-*"),
                   *directory.parent.glob(f".{directory.name}.new-*")])


def _recover(directory: Path) -> Path:
    """A save crashed between its renames (or twice): the complete copy with the highest
    step among the leftovers (uuid names say nothing about order)."""
    best: tuple[int, Path] | None = None
    for candidate in _leftovers(directory):
        try:
            step = _validated_state(candidate)["step"]
        except (OSError, ValueError):
            continue                                   # incomplete: a crash mid-write
        if best is None or step > best[0]:
            best = (step, candidate)
    if best is None:
        raise FileNotFoundError(f"checkpoint directory not found: {str(directory)!r}")
    return best[1]


def check_checkpoint_dir(directory: str | Path) -> None:
    """Refuse an output path that is a file, or a directory holding anything but a
    checkpoint (called before training starts, and again by every save)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{str(directory)!r} is a file, not a checkpoint directory")
    if directory.is_dir():
        foreign = sorted(set(os.listdir(directory)) - {STATE_FILE, MODEL_FILE, OPTIMIZER_FILE})
        if foreign:
            raise ValueError(f"{str(directory)!r} holds files that are not a checkpoint "
                             f"({', '.join(foreign[:3])}); choose an empty or new directory")


def read_state(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The directory that holds the checkpoint (after a crash, the newest moved-aside copy)
    and its validated `state.json`; the safetensors headers are checked for the same step,
    but no tensor is read."""
    directory = Path(directory)
    if not directory.is_dir():
        directory = _recover(directory)
    return directory, _validated_state(directory)


def load_checkpoint(
    directory: str | Path,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(weights, optimizer_tensors, state)`` written by :func:`save_checkpoint`."""
    directory, state = read_state(directory)
    return (_load_safetensors(directory / MODEL_FILE),
            _load_safetensors(directory / OPTIMIZER_FILE), state)


def _validated_state(directory: Path) -> dict[str, Any]:
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"incomplete checkpoint: {str(state_path)!r} is missing (interrupted save?)"
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(state_path)!r} is not JSON ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{str(state_path)!r} does not name a 'step'")
    check_state(state, state_path)
    step = str(state["step"])
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"incomplete checkpoint: {str(path)!r} is missing")
        try:
            _, meta = read_header(path)
        except SafetensorsFormatError as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
        if meta.get("step") != step:
            raise ValueError(
                f"inconsistent checkpoint in {str(directory)!r}: {name} is from step "
                f"{meta.get('step')!r} but {STATE_FILE} names step {step!r}"
            )
    return state


# What each field of a training checkpoint's state.json must be (absent fields are fine:
# `save_checkpoint` is also used for plain weight + optimizer snapshots).
STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "step": (int,), "optimizer": (dict,), "optimizer_names": (list,), "rng": (dict,),
    "torch_rng": (list,), "config": (dict,), "history": (list,), "tokenizer": (dict,),
    "spec_path": (str,), "spec_text": (str,), "spec_config": (dict,), "data": (str, type(None)),
}


def check_state(state: dict[str, Any], path: Path) -> None:
    """Refuse a state.json whose known fields have the wrong JSON types, naming the field."""
    for key, types in STATE_FIELDS.items():
        if key in state and (not isinstance(state[key], types) or isinstance(state[key], bool)):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"{str(path)!r}: field {key!r} should be {want}, "
                             f"got {type(state[key]).__name__}")
    if state["step"] < 0:
        raise ValueError(f"{str(path)!r}: field 'step' is negative")
    names = state.get("optimizer_names", [])
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{str(path)!r}: 'optimizer_names' should be a list of strings")
    if "tokenizer" in state and not isinstance(state["tokenizer"].get("kind"), str):
        raise ValueError(f"{str(path)!r}: 'tokenizer' has no 'kind'")


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


def model_from_source(source: Path, backend: str, config: dict[str, Any], seed: int = 0,
                      weights: str | None = None, quantize: str | None = None
                      ) -> tuple[Any, dict[str, Any] | None]:
    """(model, training state) of a run directory written by `attndsl train` (its spec and
    latest weights), or (model, None) of a spec file with `weights` or seeded weights;
    with `quantize` ("int8"), the quantized model (`attndsl.quantize`)."""
    import attndsl
    if not source.is_dir():
        if quantize:
            from attndsl.quantize import quantized_model
            model = attndsl.compile(source, backend=backend, config=config, seed=seed)
            return quantized_model(model, quantize, weights), None
        return attndsl.compile(source, backend=backend, config=config, seed=seed,
                               weights=weights), None
    if weights:
        raise ValueError("--weights is for a spec file; a run directory brings its own")
    tensors, _, state = load_checkpoint(source)
    if "spec_text" not in state:
        raise ValueError(f"{source} was not written by `attndsl train` (no spec inside)")
    spec_text = state["spec_text"]            # always text, never a path to read
    model = attndsl.compile(spec_text if "\n" in spec_text else spec_text + "\n",
                            backend=backend, config={**state.get("spec_config", {}), **config})
    model.load_state_dict(tensors)
    if quantize:
        model = attndsl.quantize(model, quantize)
    return model, state
