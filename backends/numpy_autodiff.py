"""Training on the NumPy backend: the loss and its gradient for every parameter.

`value_and_grad_numpy` runs the graph forward node by node with the kernels of the emitted
NumPy program (attributes rendered exactly as `codegen` renders them), keeps every value,
takes the cross-entropy loss with its gradient w.r.t. the logits, then walks the graph in
reverse topological order applying `attndsl.autodiff.VJP_RULES`, summing the cotangents of
nodes used more than once (`x * x`, tied weights). Inference semantics throughout: dropout,
attention dropout and LayerDrop are off, as in torch's eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from attndsl.backends.codegen import dim_bindings, kernel_attrs
from attndsl.backends.numpy_backend import load_module

from attndsl.autodiff import CONSTANT_LIKE, VJP_RULES
from attndsl.ir.graph import Graph
from attndsl.training.losses import check_targets, cross_entropy_with_grad

Kernels = Mapping[str, Callable[..., Any]]


def bind_dims(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbol -> size from the input shapes, bound as the emitted program binds them."""
    return {s: int(inputs[name].shape[axis]) for s, (name, axis) in dim_bindings(graph).items()
            if name in inputs}


def value_and_grad_numpy(graph: Graph, params: Mapping[str, np.ndarray],
                         inputs: Mapping[str, np.ndarray], targets: np.ndarray,
                         loss: Mapping[str, Any], dtype: str,
                         kernels: Kernels | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """The loss `loss` (as `losses.loss_spec(graph)`: output, label_smoothing, ignore_index)
    on (inputs, targets) and its gradient for every name in `graph.params` (zeros where a
    parameter does not reach the loss). Computes in `dtype` ('float32' or 'float64');
    `kernels` is the program's kernel namespace (default: `load_module(graph, dtype)`).
    Inputs are assumed validated (`Model.validate_inputs`)."""
    fdtype = np.dtype(dtype)
    ops = kernels if kernels is not None else load_module(graph, fdtype.name)
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
    check_targets(tgt.shape, logits.shape, loss["output"])
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
