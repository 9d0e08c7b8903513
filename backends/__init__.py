"""Backends: one `Backend` interface, small classes, lazy imports (nothing imports torch or
cupy until that backend is asked for).

A backend turns a Graph plus NumPy weights into a `Program`: something that runs the
graph on named inputs. Capability flags tell passes and the Model API what it can do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from attndsl.errors import TrainingError
from attndsl.ir.graph import Graph

BACKENDS = ("numpy", "cupy", "torch")


class Program(ABC):
    """A compiled graph bound to its weights on one backend."""

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run on validated inputs; returns backend-native arrays keyed by output name."""

    @abstractmethod
    def get_params(self) -> dict[str, np.ndarray]:
        """Current weights as NumPy arrays (a copy)."""

    @abstractmethod
    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace the named weights (shapes already checked by the caller); others keep
        their values."""

    @abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray:
        """Convert a backend array to NumPy."""

    def value_and_grad(self, inputs: dict[str, Any], targets: Any, loss: dict[str, Any]
                       ) -> tuple[float, dict[str, np.ndarray]]:
        """The loss (`losses.loss_spec` form) and NumPy gradients keyed by parameter name
        (only on backends whose `differentiable` flag is set)."""
        raise TrainingError("this backend computes no gradients")


class Backend(ABC):
    name: str = ""
    differentiable: bool = False     # Model.value_and_grad
    can_train: bool = False          # the training loop (optimizers, schedules, checkpoints)
    fused_attention: bool = False    # has a fused scaled-dot-product attention kernel

    @staticmethod
    @abstractmethod
    def unavailable_reason() -> str | None:
        """None if usable here, else why not (missing package, no GPU)."""

    @abstractmethod
    def compile(self, graph: Graph, params: dict[str, np.ndarray], dtype: str,
                options: dict[str, Any]) -> Program:
        """Lower the graph and bind the weights."""

    @abstractmethod
    def emit(self, graph: Graph) -> str:
        """Readable source of the lowered program."""


def get_backend(name: str, require_available: bool = True) -> Backend:
    """The backend called `name`; raises ValueError if unknown, or unavailable here when
    `require_available` (emitting source needs no GPU or package)."""
    if name == "numpy":
        from attndsl.backends.numpy_backend import NumpyBackend
        backend: Backend = NumpyBackend()
    elif name == "cupy":
        from attndsl.backends.cupy_backend import CupyBackend
        backend = CupyBackend()
    elif name == "torch":
        from attndsl.backends.torch_backend import TorchBackend
        backend = TorchBackend()
    else:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    reason = backend.unavailable_reason() if require_available else None
    if reason:
        raise ValueError(f"backend {name!r} is not available: {reason}")
    return backend


def available_backends() -> dict[str, str | None]:
    """Backend name -> None if available, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            get_backend(name)
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out
