"""The CuPy backend: the NumPy program with `np` bound to `cupy` (one kernel table, `xp`
style). CuPy is imported only when this backend is requested."""

from __future__ import annotations

from typing import Any

import numpy as np
from attndsl.backends import Backend, Program
from attndsl.backends.numpy_backend import NumpyProgram, check_numpy_options, emit_module

from attndsl.errors import TrainingError
from attndsl.ir.graph import Graph


class CupyProgram(NumpyProgram):
    """Inference only: the NumPy gradient rules have not been run on CuPy (no GPU here)."""

    def to_numpy(self, value: Any) -> np.ndarray:
        return self.xp.asnumpy(value)

    def value_and_grad(self, inputs: dict[str, Any], targets: Any, loss: dict[str, Any]
                       ) -> tuple[float, dict[str, np.ndarray]]:
        raise TrainingError("the cupy backend computes no gradients yet",
                            None, "use backend='numpy' or backend='torch'")


class CupyBackend(Backend):
    name = "cupy"

    @staticmethod
    def unavailable_reason() -> str | None:
        try:
            import cupy
        except ImportError:
            return "cupy is not installed (pip install 'attndsl[cuda]')"
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "no CUDA GPU is visible"
        except Exception as e:  # noqa: BLE001 - any CUDA runtime failure means unavailable
            return f"CUDA is not usable: {e}"
        return None

    def compile(self, graph: Graph, params: dict[str, np.ndarray], dtype: str,
                options: dict[str, Any]) -> Program:
        import cupy
        check_numpy_options(dtype, options)
        return CupyProgram(graph, params, dtype, array_module=cupy)

    def emit(self, graph: Graph) -> str:
        """The NumPy module with `np` bound to CuPy (how this backend runs it)."""
        source = emit_module(graph)
        return (source.replace("Needs only NumPy.", "Runs on CuPy (the NumPy kernels, np = cupy).", 1)
                .replace("import numpy as np\n", "import cupy as np\n", 1))
