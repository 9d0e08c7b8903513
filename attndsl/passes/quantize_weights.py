"""Weight-only int8 quantization: linear layers read int8 weights and per-channel scales.

Matches `linear(x, w, b?)` whose weight is a parameter, or a concatenation of parameters
along axis 0 (what `fuse_projections` makes of Q/K/V), where every such parameter is read
by linear layers only (a weight tied to an embedding stays float). Requires: a valid graph.
Guarantees: each matched parameter `name` [out, in] becomes an int parameter (stored as
int8 by the backends) plus a float parameter `name_scale` [out], and each matched node

    linear(x, w, b)          becomes    linear_int8(x, w, scale, b)
    w = concat([w_1, w_2])   becomes    w = concat([w_1, w_2]) (int), scale = concat([s_1, s_2])

so outputs change only by the rounding of the weights (`quantize_int8`: symmetric, one
scale per output row, max |w| -> 127). Inference only: `linear_int8` has no gradient for
its weights.
"""

from __future__ import annotations

import numpy as np

from attndsl.ir.graph import Graph, TensorType
from attndsl.passes.fuse_bias_activation import unfuse_bias_activation
from attndsl.passes.manager import PassResult

SCALE_SUFFIX = "_scale"


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: w ~= q * scale[:, None], q in [-127, 127], scale > 0."""
    w = np.asarray(w, dtype=np.float64)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _weight_params(graph: Graph, nid: int) -> list[int] | None:
    """The parameter nodes a linear weight operand is made of, or None."""
    node = graph.nodes[nid]
    if node.op == "param" and node.type.rank == 2 and node.type.dtype == "float":
        return [nid]
    if node.op == "concat" and node.attr("axis") == 0 and all(
            graph.nodes[i].op == "param" and graph.nodes[i].type.dtype == "float"
            for i in node.inputs):
        return list(node.inputs)
    return None


def linear_weights(graph: Graph) -> set[str]:
    """Names of the float parameters linear layers read as their weight (directly or
    concatenated), whether or not they can be quantized."""
    return {graph.nodes[p].attr("name") for node in graph.nodes.values() if node.op == "linear"
            for p in _weight_params(graph, node.inputs[1]) or ()}


def quantizable(graph: Graph) -> dict[int, list[int]]:
    """Linear node -> the weight parameters it reads, for every linear that can be
    quantized (all readers of those parameters, and of their concatenation, are linears)."""
    users = graph.users()
    found: dict[int, list[int]] = {}
    for nid, node in graph.nodes.items():
        if node.op != "linear":
            continue
        params = _weight_params(graph, node.inputs[1])
        if params is None:
            continue
        via = node.inputs[1]
        readers = [u for p in params for u in users[p] if u != via] + users[via]
        if all(graph.nodes[u].op == "linear" and graph.nodes[u].inputs[1] == via
               for u in readers):
            found[nid] = params
    return found


def quantize_weights(graph: Graph) -> PassResult:
    split = unfuse_bias_activation(graph)           # int8 linears take no activation
    graph = split.graph
    matched = quantizable(graph)
    if not matched:
        return split
    out = graph.copy()
    scales: dict[int, int] = {}                      # weight param -> its scale param
    params: dict[str, int] = {}
    for name, nid in graph.params.items():           # each scale right after its weight
        params[name] = nid
        if any(nid in ps for ps in matched.values()):
            node = graph.nodes[nid]
            itype = TensorType(node.type.shape, "int")
            out.replace_node(nid, type=itype, attrs=tuple(
                (k, itype if k == "type" else v) for k, v in node.attrs))
            stype = TensorType(node.type.shape[:1], "float")
            scales[nid] = out.add("param", (), {"name": name + SCALE_SUFFIX, "type": stype,
                                                "init": "ones", "std": 0.0}, stype, node.span)
            params[name + SCALE_SUFFIX] = scales[nid]
    out.params = params
    done: dict[int, int] = {}                        # weight operand -> its scale operand
    for nid, ps in matched.items():
        node = out.nodes[nid]
        via = node.inputs[1]
        if via not in done:
            if len(ps) == 1:
                done[via] = scales[ps[0]]
            else:
                w = out.nodes[via]
                out.replace_node(via, type=TensorType(w.type.shape, "int"))
                done[via] = out.add("concat", tuple(scales[p] for p in ps), {"axis": 0},
                                    TensorType(w.type.shape[:1], "float"), w.span)
                out.join_layer((done[via],), via)
        inputs = (node.inputs[0], via, done[via], *node.inputs[2:])
        out.replace_node(nid, op="linear_int8", inputs=inputs)
    # scale nodes were appended after their readers' operands: restore creation = topo order
    out.nodes = {nid: out.nodes[nid] for nid in out.topological_order()}
    return PassResult(out, True)
