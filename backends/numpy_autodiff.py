"""Training on the NumPy backend: the loss and its gradient for every parameter.

`value_and_grad_numpy` runs the graph forward node by node with the kernels of the emitted
NumPy program (attributes rendered exactly as `codegen` renders them), keeps every value,
takes the cross-entropy loss with its gradient w.r.t. the logits, then walks the graph in
reverse topological order applying `attndsl.autodiff.VJP_RULES`, summing the cotangents of
nodes used more than once (`x * x`, tied weights). Without `rng`, inference semantics:
dropout, attention dropout and LayerDrop are off, as in torch's eval mode. With `rng` (a
`numpy.random.Generator`; training), in topological order: each `dropout(x, p)` draws
`keep = rng.random(x.shape) >= p` and gives `x * keep / (1 - p)`; each LayerDrop draws one
`rng.random() < p` and skips its layer when true (as torch: the layer's input passes
through); attention dropout is not supported (an error says so before any work).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from attndsl.backends.codegen import dim_bindings, kernel_attrs
from attndsl.backends.numpy_backend import load_module
from attndsl.backends.numpy_kernels import _batch_stats as kernels_batch_stats

from attndsl.autodiff import CONSTANT_LIKE, VJP_RULES
from attndsl.errors import TrainingError
from attndsl.ir.graph import Graph
from attndsl.training.losses import check_targets, cross_entropy_with_grad

Kernels = Mapping[str, Callable[..., Any]]


# ops whose training semantics differ (told by the interpreter): moe routing drops tokens at
# capacity, batch_norm uses the batch's statistics and moves its running buffers
TRAINING_MODE_OPS = frozenset({"moe_route", "batch_norm"})


def bind_dims(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbol -> size from the input shapes, bound as the emitted program binds them."""
    return {s: int(inputs[name].shape[axis]) for s, (name, axis) in dim_bindings(graph).items()
            if name in inputs}


def value_and_grad_numpy(graph: Graph, params: Mapping[str, np.ndarray],
                         inputs: Mapping[str, np.ndarray], targets: np.ndarray,
                         loss: Mapping[str, Any], dtype: str,
                         kernels: Kernels | None = None,
                         rng: np.random.Generator | None = None,
                         updates: dict[str, np.ndarray] | None = None,
                         keep: dict[str, Any] | None = None
                         ) -> tuple[float, dict[str, np.ndarray]]:
    """The loss `loss` (as `losses.loss_spec(graph)`: output, label_smoothing, ignore_index)
    on (inputs, targets) and its gradient for every name in `graph.params` (zeros where a
    parameter does not reach the loss). Computes in `dtype` ('float32' or 'float64');
    `kernels` is the program's kernel namespace (default: `load_module(graph, dtype)`).
    With `rng` and `updates`, the new values of buffers the forward moves (batch_norm's
    running statistics) are put in `updates` by name; the outputs named in `keep` (a
    recurrent state's next value) are computed too and put there. Inputs are assumed
    validated (`Model.validate_inputs`)."""
    fdtype = np.dtype(dtype)
    ops = kernels if kernels is not None else load_module(graph, fdtype.name)
    xs = {name: _convert(inputs[name], graph.nodes[nid].type.dtype, fdtype)
          for name, nid in graph.inputs.items() if name in inputs}
    ps = {k: np.asarray(v, dtype=fdtype) for k, v in params.items()}
    env = bind_dims(graph, xs)
    out_id = graph.outputs[loss["output"]]
    extra = [(coef, graph.outputs[name]) for coef, name in loss.get("extra", [])]
    kept = [graph.outputs[name] for name in keep or ()]
    live = set().union(*(_ancestors(graph, nid)
                         for nid in [out_id, *(n for _, n in extra), *kept]))
    order = [n for n in graph.topological_order() if n in live]

    values: dict[int, Any] = {}
    attrs: dict[int, dict[str, Any]] = {}
    drawn: dict[int, Any] = {}        # training: dropout keep-masks, LayerDrop coin flips
    saved: dict[int, tuple[Any, ...]] = {}   # dense attention: probabilities, rotated q, k
    for nid in order:
        node = graph.nodes[nid]
        if node.op == "input":
            values[nid] = xs[node.attr("name")]
        elif node.op == "param":
            values[nid] = ps[node.attr("name")]
        elif rng is not None and node.op == "dropout" and node.attr("p") > 0:
            x, p = values[node.inputs[0]], node.attr("p")
            drawn[nid] = (rng.random(x.shape) >= p).astype(fdtype) / fdtype.type(1 - p)
            values[nid] = x * drawn[nid]
        elif rng is not None and node.op == "layer_drop" and node.attr("p") > 0:
            drawn[nid] = bool(rng.random() < node.attr("p"))          # True: skip the layer
            values[nid] = values[node.inputs[0 if drawn[nid] else 1]]
        else:
            if rng is not None:
                _check_trainable_node(node)
            attrs[nid] = kernel_attrs(node, env)
            if node.op in TRAINING_MODE_OPS:
                attrs[nid]["training"] = rng is not None
            if node.op == "batch_norm" and rng is not None and updates is not None:
                _move_running_stats(graph, node, values, attrs[nid], updates)
            args = [values[i] for i in node.inputs]
            if node.op == "attention" and _keeps_probs(ops, args, attrs[nid]):
                a = attrs[nid]
                values[nid], *kept_probs = ops["attention_dense"](
                    *args[:3], tuple(args[3:]), a["pattern"], a["scale"],
                    a.get("score", "scaled"), a.get("bias", ()), a.get("rope"),
                    a.get("extras") or ("key_padding",) * (len(args) - 3))
                saved[nid] = tuple(kept_probs)
            else:
                values[nid] = ops[f"op_{node.op}"](*args, **attrs[nid])

    for name in keep or ():
        keep[name] = values[graph.outputs[name]]
    logits = values[out_id]
    tgt = np.asarray(targets)
    check_targets(tgt.shape, logits.shape, loss["output"])
    value, dlogits = cross_entropy_with_grad(logits, tgt, loss["label_smoothing"],
                                             loss["ignore_index"])

    needs = _needs_grad(graph, order)
    cotangents: dict[int, Any] = {out_id: dlogits} if out_id in needs else {}
    for coef, nid in extra:                     # + coef * scalar output (an moe's aux loss)
        value += coef * float(values[nid])
        if nid in needs:
            seed = np.full_like(values[nid], coef)
            cotangents[nid] = seed if nid not in cotangents else cotangents[nid] + seed
    for nid in reversed(order):
        node = graph.nodes[nid]
        if nid not in cotangents or node.op in CONSTANT_LIKE:
            continue
        g = cotangents.pop(nid)
        if nid in drawn:
            grads = ((g * drawn[nid],) if node.op == "dropout"
                     else (g, None) if drawn[nid] else (None, g))
        else:
            grads = VJP_RULES[node.op](g, values[nid], (tuple(values[i] for i in node.inputs)),
                                       {**attrs[nid], "saved": saved.pop(nid)}
                                       if nid in saved else attrs[nid])
        for src, gi in zip(node.inputs, grads, strict=True):
            if gi is not None and src in needs:
                cotangents[src] = gi if src not in cotangents else cotangents[src] + gi
    buffers = set(graph.meta.get("buffers", ()))      # not trained: zero, as torch's
    return value, {name: np.array(cotangents.get(nid, np.zeros_like(ps[name]))
                                  if name not in buffers else np.zeros_like(ps[name]),
                                  dtype=fdtype)
                   for name, nid in graph.params.items()}


def _move_running_stats(graph: Graph, node: Any, values: dict[int, Any],
                        attrs: dict[str, Any], updates: dict[str, np.ndarray]) -> None:
    """running <- (1 - momentum) running + momentum batch (variance unbiased), as torch."""
    x = values[node.inputs[0]]
    mean, var = kernels_batch_stats(x)
    n = x.size // x.shape[-1]
    m = attrs["momentum"]
    for nid, stat in ((node.inputs[1], mean), (node.inputs[2], var * n / max(n - 1, 1))):
        updates[graph.nodes[nid].attr("name")] = (1 - m) * values[nid] + m * stat


def check_trainable(graph: Graph) -> None:
    """NumPy training draws dropout and LayerDrop; attention dropout it does not have (an
    error before any work; the interpreter checks each node it runs as well)."""
    for node in graph.nodes.values():
        _check_trainable_node(node)


def _check_trainable_node(node: Any) -> None:
    if node.op == "param" and node.type.dtype == "int":
        raise TrainingError(f"parameter '{node.attr('name')}' is quantized (int8): a "
                            "quantized model is for inference", node.span,
                            "train the float model, then quantize it")
    if node.op in ("attention", "attention_weights") and (node.attr("dropout") or 0) > 0:
        raise TrainingError(
            f"attention dropout ({node.attr('dropout')}) is not implemented for NumPy "
            "training", node.span, "set the attention's dropout= to 0 (e.g. --dropout 0, "
            "or --set for the spec's constant), or train with --backend torch")


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


SAVED_PROBS_BYTES = 8 << 20      # keep a dense attention's probabilities up to this size


def _keeps_probs(ops: Kernels, args: list[Any], attrs: dict[str, Any]) -> bool:
    """Whether the forward keeps this attention's probabilities for the backward (which
    otherwise recomputes them): the dense kernel runs, and [B, H, Tq, Tk] is small."""
    q, k, v = args[:3]
    extras = attrs.get("extras") or ("key_padding",) * (len(args) - 3)
    impl = ops["attention_impl"](attrs.get("impl", "dense"), q, k, v,
                                 attrs.get("pattern_blocks"), attrs.get("score", "scaled"),
                                 attrs.get("bias", ()), extras, attrs["pattern"])
    size = max(q.shape[0], k.shape[0]) * q.shape[1] * q.shape[2] * k.shape[2] * q.itemsize
    return impl == "dense" and size <= SAVED_PROBS_BYTES


def _needs_grad(graph: Graph, order: list[int]) -> set[int]:
    """Float nodes that depend on a parameter: the only ones that carry cotangents."""
    needs = set(graph.params.values())
    for nid in order:
        node = graph.nodes[nid]
        if node.type.dtype == "float" and any(i in needs for i in node.inputs):
            needs.add(nid)
    return needs
