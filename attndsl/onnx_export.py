"""ONNX export: the PyTorch backend's module through `torch.onnx.export` (the dynamo
exporter), with every symbolic input size (batch, sequence, ...) a dynamic axis, then
checked with `onnx.checker` and run in onnxruntime against the NumPy backend.

Needs the `onnx` extra (`pip install -e '.[onnx]'`: onnx, onnxscript, onnxruntime)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attndsl.errors import ExportError
from attndsl.ir.dims import Dim
from attndsl.model import Model, random_inputs
from attndsl.model import compile as compile_spec

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportReport:
    path: Path
    inputs: list[str]
    outputs: list[str]
    dynamic: dict[str, list[str]]       # input -> its dynamic axes' symbols
    max_error: float                    # onnxruntime vs NumPy, relative to the output scale
    checked_shapes: dict[str, tuple[int, ...]]


def _modules() -> tuple[Any, Any, Any]:
    try:
        import onnx
        import onnxruntime
        import torch
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx extra ({e.name} is not installed)",
                          None, "pip install -e '.[onnx]'") from None
    return torch, onnx, onnxruntime


def _symbol(d: Dim) -> str | None:
    """The name of a dimension that is a plain size symbol (`T`), else None."""
    names = d.symbols()
    if len(names) != 1:
        return None
    (name,) = names
    return name if d == Dim.symbol(name) else None


def export_onnx(model: Model, path: str | Path, sizes: dict[str, int] | None = None,
                check_sizes: dict[str, int] | None = None) -> ExportReport:
    """Export `model` (any backend; its weights are used) to `path`, then check the file and
    run it in onnxruntime at `check_sizes` (different from the traced `sizes`, so the
    dynamic axes are exercised) against the NumPy backend."""
    torch, onnx, ort = _modules()
    graph = model.graph
    names = list(graph.inputs)
    if not names:
        raise ExportError("the model has no inputs to export", None)
    routed = next((n for n in graph.nodes.values() if n.op.startswith("moe_")), None)
    if routed is not None:
        raise ExportError("mixture-of-experts routing (top-k, capacity, per-expert row "
                          "counts) is data-dependent control flow that torch.onnx.export "
                          "cannot trace here", routed.span,
                          "export a dense spec, or serve the model with attndsl")
    hashed = next((n for n in graph.nodes.values() if n.op == "lsh_attention"), None)
    if hashed is not None:
        raise ExportError("LSH attention pads the sequence to whole chunks and sorts it by "
                          "hash; traced, that layout is fixed to one length, so the ONNX "
                          "graph would be wrong at others", hashed.span,
                          "serve the model with attndsl, or export a spec with another "
                          "pattern")
    symbols = sorted({s for nid in graph.inputs.values()
                      for s in map(_symbol, graph.nodes[nid].type.shape) if s})
    bounds = graph.meta.get("dim_bounds", {})
    sizes = {s: min(3 + i, bounds.get(s, 1 << 30)) for i, s in enumerate(symbols)} | (sizes or {})
    check_sizes = {s: min(sizes[s] + 2, bounds.get(s, 1 << 30)) for s in symbols} | (
        check_sizes or {})
    torch_model = compile_spec(graph, backend="torch", opt_level=2)
    torch_model.load_state_dict(model.state_dict())
    module = torch_model.module.eval()
    outputs = list(graph.outputs)

    class Positional(torch.nn.Module):
        """forward(*inputs) -> tuple of outputs, in the spec's order (what ONNX wants)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *xs: Any) -> tuple[Any, ...]:
            out = self.inner(**dict(zip(names, xs)))
            return tuple(out[o] for o in outputs)

    dims = {s: torch.export.Dim(s, min=2, max=bounds[s]) if s in bounds else
            torch.export.Dim(s, min=2) for s in symbols}
    axes = {n: {i: s for i, d in enumerate(graph.nodes[nid].type.shape)
                if (s := _symbol(d)) in dims} for n, nid in graph.inputs.items()}   # symbols
    dynamic = {n: {i: dims[s] for i, s in ax.items()} for n, ax in axes.items()}
    example = random_inputs(graph, sizes, 0)
    args = tuple(torch.as_tensor(example[n]) for n in names)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")      # moved into place once checked
    log = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # "torchvision is not installed"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(Positional(), args, dynamo=True, input_names=names,
                                        output_names=onnx_output_names(graph),
                                        dynamic_shapes=(tuple(dynamic[n] for n in names),),
                                        verbose=False)
            program.save(str(tmp))
    except Exception as e:  # the exporter raises many types; report its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        tmp.unlink(missing_ok=True)
        raise ExportError(f"torch.onnx.export cannot export this spec: {first}", None,
                          _reason(str(e))) from None
    try:
        err, feed = _check(tmp, graph, model.state_dict(), check_sizes, onnx, ort)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return ExportReport(path, names, onnx_output_names(graph),
                        {n: list(ax.values()) for n, ax in axes.items()},
                        err, {n: tuple(feed[n].shape) for n in names})


def onnx_output_names(graph: Any) -> list[str]:
    """The spec's output names; a recurrent state's next value (an output named like its
    input) is `<name>.next`, since ONNX names each value once."""
    return [f"{n}.next" if n in graph.inputs else n for n in graph.outputs]


def _check(path: Path, graph: Any, state: dict[str, Any], sizes: dict[str, int], onnx: Any,
           ort: Any) -> tuple[float, dict[str, np.ndarray]]:
    """onnx.checker, then onnxruntime against the NumPy backend: (max relative error, the
    inputs used)."""
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names, outputs = list(graph.inputs), list(graph.outputs)
    feed = random_inputs(graph, sizes, 1)
    rng = np.random.default_rng(1)
    for name, value in feed.items():           # masks with some False (padding exercised)
        if value.dtype == bool and value.ndim:
            feed[name] = rng.random(value.shape) < 0.7
            feed[name][..., 0] = True
    got = session.run(onnx_output_names(graph), {n: feed[n] for n in names})
    want = compile_spec(graph, backend="numpy")
    want.load_state_dict(state)
    ref = want(**feed)
    err = 0.0
    for name, value in zip(outputs, got):
        r = np.asarray(ref[name], np.float64)
        if value.shape != r.shape:
            raise ExportError(f"onnxruntime gives output '{name}' the shape {value.shape}, "
                              f"NumPy {r.shape}", None)
        if r.size and r.dtype.kind == "f":
            err = max(err, float(np.abs(value - r).max() / max(np.abs(r).max(), 1e-12)))
    if err > TOLERANCE:
        raise ExportError(f"the exported model differs from the NumPy backend by {err:.2e} "
                          f"(relative; allowed {TOLERANCE:g}); nothing was written", None)
    return err, feed


def _reason(message: str) -> str:
    """A one-line hint from the exporter's long message."""
    for line in message.splitlines():
        if "Caused by" in line or "GuardOnDataDependent" in line or "Unsupported" in line:
            return line.strip()[:300]
    return "run with the torch backend to see whether the spec itself works"
