"""Training on the NumPy backend: the loss and its gradient for every parameter.

`value_and_grad_numpy` runs the graph forward node by node with the kernels of the emitted
NumPy program (attributes rendered exactly as `codegen` renders them), keeps every value,
takes the cross-entropy loss with its gradient w.r.t. the logits, then walks the graph in
reverse topological order applying `attndsl.autodiff.VJP_RULES`, summing the cotangents of
nodes used more than once (`x * x`, tied weights). Inference semantics throughout: dropout,
attention dropout and LayerDrop are off, as in torch's eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import numpy as np
from attndsl.backends.codegen import SKIP_ATTRS
from attndsl.backends.numpy_backend import emit_module

from attndsl.autodiff import CONSTANT_LIKE, VJP_RULES
from attndsl.errors import RuntimeInputError
from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, Node
from attndsl.ir.patterns import Pattern

Kernels = Mapping[str, Callable[..., Any]]


def kernel_namespace(graph: Graph, dtype: str) -> dict[str, Any]:
    """The graph's emitted NumPy program, executed: its `op_<name>` kernels with `DTYPE`
    bound to `dtype` (as `NumpyProgram.namespace(False)` builds it)."""
    ns: dict[str, Any] = {}
    source = emit_module(graph, dtype)
    exec(compile(source, f"<attndsl-grad:{graph.meta.get('name')}>", "exec"), ns)  # noqa: S102 - our own generated code
    return ns


def bind_dims(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbol -> size from the input shapes (an axis declared as exactly one symbol binds it,
    the first such axis wins, as in the emitted program)."""
    env: dict[str, int] = {}
    for name, nid in graph.inputs.items():
        for axis, d in enumerate(graph.nodes[nid].type.shape):
            for s in sorted(d.symbols()):
                if d == Dim.symbol(s) and s not in env and name in inputs:
                    env[s] = int(inputs[name].shape[axis])
    return env


def attr_value(value: Any, env: dict[str, int]) -> Any:
    """An attribute as the kernel receives it (the value of `codegen.attr_source`): dims as
    ints, patterns as source text or None for full, fractions as floats."""
    if isinstance(value, Dim):
        return math.floor(value.evaluate(env))
    if isinstance(value, Pattern):
        return None if value.is_full else value.source()
    if isinstance(value, tuple):
        return tuple(attr_value(v, env) for v in value)
    if isinstance(value, Fraction):
        return float(value)
    return value


def kernel_attrs(node: Node, env: dict[str, int]) -> dict[str, Any]:
    """The keyword arguments the emitted program passes to `op_<node.op>`."""
    return {k: attr_value(v, env) for k, v in node.attrs if k not in SKIP_ATTRS}


def cross_entropy_with_grad(logits: np.ndarray, targets: np.ndarray, label_smoothing: float,
                            ignore_index: int) -> tuple[float, np.ndarray]:
    """`losses.cross_entropy_numpy` and its gradient w.r.t. `logits` (..., C), in float64:
    (softmax - smoothed one-hot) / (number of non-ignored positions), zero rows where the
    target is `ignore_index`. No kept position: loss 0 and a zero gradient."""
    c = logits.shape[-1]
    z = logits.reshape(-1, c).astype(np.float64)                     # (N, C)
    tgt = targets.reshape(-1)                                         # (N,)
    keep = tgt != ignore_index                                        # (N,)
    count = int(keep.sum())
    if count == 0:
        return 0.0, np.zeros_like(logits)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))           # (N, C)
    rows = np.arange(len(tgt))
    safe = np.where(keep, tgt, 0)
    nll = -logp[rows, safe]                                           # (N,)
    smooth = -logp.mean(axis=1)                                       # (N,)
    per_row = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    loss = float(per_row[keep].sum() / count)
    soft = np.full_like(logp, label_smoothing / c)                    # (N, C)
    soft[rows, safe] += 1.0 - label_smoothing
    grad = (np.exp(logp) - soft) * (keep[:, None] / count)            # (N, C)
    return loss, grad.reshape(logits.shape).astype(logits.dtype)


def value_and_grad_numpy(graph: Graph, params: Mapping[str, np.ndarray],
                         inputs: Mapping[str, np.ndarray], targets: np.ndarray,
                         loss: Mapping[str, Any], dtype: str,
                         kernels: Kernels | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """The loss `loss` (as `losses.loss_spec(graph)`: output, label_smoothing, ignore_index)
    on (inputs, targets) and its gradient for every name in `graph.params` (zeros where a
    parameter does not reach the loss). Computes in `dtype` ('float32' or 'float64');
    `kernels` is the program's kernel namespace (default: `kernel_namespace(graph, dtype)`).
    Inputs are assumed validated (`Model.validate_inputs`)."""
    fdtype = np.dtype(dtype)
    ops = kernels if kernels is not None else kernel_namespace(graph, fdtype.name)
    xs = {name: _convert(inputs[name], graph.nodes[nid].type.dtype, fdtype)
          for name, nid in graph.inputs.items() if name in inputs}
    ps = {k: np.asarray(v, dtype=fdtype) for k, v in params.items()}
    env = bind_dims(graph, xs)
    out_id = graph.outputs[loss["output"]]
    live = _ancestors(graph, out_id)
    order = [n for n in graph.topological_order() if n in live]

    values: dict[int, Any] = {}
    attrs: dict[int, dict[str, Any]] = {}
    for nid in order:
        node = graph.nodes[nid]
        if node.op == "input":
            values[nid] = xs[node.attr("name")]
        elif node.op == "param":
            values[nid] = ps[node.attr("name")]
        else:
            attrs[nid] = kernel_attrs(node, env)
            values[nid] = ops[f"op_{node.op}"](*(values[i] for i in node.inputs), **attrs[nid])

    logits = values[out_id]
    tgt = np.asarray(targets)
    if tgt.shape != logits.shape[:-1]:
        raise RuntimeInputError(f"targets have shape {tgt.shape}, output '{loss['output']}' "
                                f"needs {logits.shape[:-1]}")
    value, dlogits = cross_entropy_with_grad(logits, tgt, loss["label_smoothing"],
                                             loss["ignore_index"])

    needs = _needs_grad(graph, order)
    cotangents: dict[int, Any] = {out_id: dlogits} if out_id in needs else {}
    for nid in reversed(order):
        node = graph.nodes[nid]
        if nid not in cotangents or node.op in CONSTANT_LIKE:
            continue
        g = cotangents.pop(nid)
        ins = tuple(values[i] for i in node.inputs)
        grads = VJP_RULES[node.op](g, values[nid], ins, attrs[nid])
        for src, gi in zip(node.inputs, grads, strict=True):
            if gi is not None and src in needs:
                cotangents[src] = gi if src not in cotangents else cotangents[src] + gi
    return value, {name: np.array(cotangents.get(nid, np.zeros_like(ps[name])), dtype=fdtype)
                   for name, nid in graph.params.items()}


def _convert(value: np.ndarray, declared: str, fdtype: np.dtype) -> np.ndarray:
    """As `NumpyProgram.convert_inputs`: float inputs in the program's dtype, ints as int64."""
    a = np.asarray(value)
    if declared == "float" or a.dtype.kind == "f":
        return a.astype(fdtype, copy=False)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    return a


def _ancestors(graph: Graph, nid: int) -> set[int]:
    """`nid` and every node it reads, transitively."""
    seen, stack = {nid}, [nid]
    while stack:
        for src in graph.nodes[stack.pop()].inputs:
            if src not in seen:
                seen.add(src)
                stack.append(src)
    return seen


def _needs_grad(graph: Graph, order: list[int]) -> set[int]:
    """Float nodes that depend on a parameter: the only ones that carry cotangents."""
    needs = set(graph.params.values())
    for nid in order:
        node = graph.nodes[nid]
        if node.type.dtype == "float" and any(i in needs for i in node.inputs):
            needs.add(nid)
    return needs
