"""Post-training weight-only int8 quantization for inference.

    qmodel = attndsl.quantize(model)          # a new Model; `model` is unchanged
    qmodel(**inputs)                          # same outputs up to the weights' rounding

Every linear layer whose weight is a parameter read only by linear layers gets per-channel
symmetric int8 weights (`passes/quantize_weights.py`): one float scale per output row,
max |w| -> 127. Embeddings, norms, biases, score-bias tables and weights tied to an
embedding stay float. The quantized model runs on NumPy, PyTorch and CuPy, saves and loads
int8 safetensors (`<name>` int8 plus `<name>_scale`), and refuses training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attndsl.errors import ConfigError
from attndsl.model import Model
from attndsl.passes.quantize_weights import (
    SCALE_SUFFIX,
    linear_weights,
    quantize_int8,
    quantize_weights,
)

KINDS = ("int8",)


@dataclass(frozen=True)
class QuantizeReport:
    quantized: list[str]          # weight names now int8
    kept: list[str]               # linear weights left float (also read by another op)
    bytes_before: int             # all parameters, in the model's float dtype
    bytes_after: int

    def __str__(self) -> str:
        mib = 1024 ** 2
        kept = f"; kept float: {', '.join(self.kept)}" if self.kept else ""
        return (f"int8: {len(self.quantized)} linear weights quantized, parameters "
                f"{self.bytes_before / mib:.2f} MiB -> {self.bytes_after / mib:.2f} MiB{kept}")


def quantize(model: Model, dtype: str = "int8") -> Model:
    """A copy of `model` with int8 linear weights (see the module docstring); its
    `quantize_report` says what was quantized and the parameter bytes before and after."""
    if dtype not in KINDS:
        raise ConfigError(f"unknown quantization {dtype!r}", None, f"use one of {KINDS}")
    if model.graph.meta.get("quantized"):
        raise ConfigError("the model is already quantized", None)
    result = quantize_weights(model.graph)
    if not result.modified:
        raise ConfigError("nothing to quantize: no linear layer reads a parameter weight of "
                          "its own", None)
    weights = model.state_dict()
    types = result.graph.param_types()
    params: dict[str, np.ndarray] = {}
    for name, ttype in types.items():
        if ttype.dtype == "int":
            params[name], params[name + SCALE_SUFFIX] = quantize_int8(weights[name])
        elif name in weights:
            params[name] = weights[name]
    graph = result.graph
    graph.meta["quantized"] = dtype
    itemsize = np.dtype(model.dtype if model.dtype != "bfloat16" else "float16").itemsize
    quantized = [n for n, t in types.items() if t.dtype == "int"]
    report = QuantizeReport(
        quantized, sorted(linear_weights(model.graph) - set(quantized)),
        sum(w.size for w in weights.values()) * itemsize,
        sum(a.size * (1 if n in quantized else itemsize) for n, a in params.items()))
    out = Model(graph, model.backend, params, model.dtype, model.options)
    out.quantize_report = report
    return out


def is_quantized_file(path: str | Path) -> bool:
    """Whether a weights file (or sharded index, or directory) holds int8 tensors."""
    from attndsl.model import safetensors_entries
    return any(entry.dtype == "I8" for _, entry in safetensors_entries(Path(path)).values())


def quantized_model(model: Model, dtype: str, weights: str | Path | None) -> Model:
    """`quantize(model)` with `weights` loaded: a float file into `model` first, an int8 file
    (saved from a quantized model) into the quantized one."""
    int8 = weights is not None and is_quantized_file(weights)
    if weights is not None and not int8:
        model.load(weights)
    out = quantize(model, dtype)
    if int8:
        out.load(weights)
    return out
