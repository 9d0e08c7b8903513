"""Projection fusion: linear layers that read the same input become one GEMM.

Matches two or more `linear` nodes with the same input tensor, all with or all without a
bias, whose weights (and biases) are parameters with the same input width — the Q/K/V
projections of self-attention, K/V of cross-attention, the two halves of a GLU gate.
Requires: a valid graph. Guarantees: each group becomes

    w = concat([w_1, ..., w_n], axis=0)          # [sum(out_i), in]
    b = concat([b_1, ..., b_n], axis=0)          # when the layers have biases
    y = linear(x, w, b)                          # [..., sum(out_i)]
    y_i = y[..., o_i:o_i + out_i]                # a view, in place of each original node

so every user reads a node of the same id and type as before; parameters keep their names
and shapes (checkpoints are unchanged). The new nodes are recorded as members of the
originals' `repeat` iteration (`meta["segment_extra"]`), for activation checkpointing. The
weight concatenations depend on parameters alone: the backends fold them once per set of
weights (`codegen.folded_nodes`), and autograd differentiates through them when training.
"""

from __future__ import annotations

from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, TensorType
from attndsl.passes.manager import PassResult


def fuse_projections(graph: Graph) -> PassResult:
    groups: dict[tuple[int, bool, Dim], list[int]] = {}
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        if (node.op != "linear" or node.attr("activation") is not None
                or not all(graph.nodes[i].op == "param" for i in node.inputs[1:])):
            continue
        w = graph.nodes[node.inputs[1]].type
        groups.setdefault((node.inputs[0], node.attr("has_bias"), w.shape[1]), []).append(nid)
    fusable = [ids for ids in groups.values()
               if len(ids) > 1 and len({graph.nodes[i].inputs[1] for i in ids}) == len(ids)]
    if not fusable:
        return PassResult(graph, False)
    out = graph.copy()
    for ids in fusable:
        _fuse(out, ids)
    return PassResult(out, True)


def _fuse(graph: Graph, ids: list[int]) -> None:
    first = graph.nodes[ids[0]]
    x, has_bias, span = first.inputs[0], first.attr("has_bias"), first.span
    weights = [graph.nodes[graph.nodes[i].inputs[1]] for i in ids]
    widths = [w.type.shape[0] for w in weights]
    total = sum(widths[1:], widths[0])
    dtype = weights[0].type.dtype
    w = graph.add("concat", tuple(graph.nodes[i].inputs[1] for i in ids), {"axis": 0},
                  TensorType((total, weights[0].type.shape[1]), dtype), span)
    inputs = [x, w]
    if has_bias:
        inputs.append(graph.add("concat", tuple(graph.nodes[i].inputs[2] for i in ids),
                                {"axis": 0}, TensorType((total,), dtype), span))
    x_type = graph.nodes[x].type
    fused = graph.add("linear", tuple(inputs), {"has_bias": has_bias},
                      TensorType(x_type.shape[:-1] + (total,), "float"), span)
    graph.join_layer(range(w, fused + 1), ids[0])   # the originals' repeat iteration
    start = Dim.of(0)
    lead = tuple((None, None) for _ in range(x_type.rank - 1))
    for nid, width in zip(ids, widths):
        stop = start + width
        graph.replace_node(nid, op="index", inputs=(fused,),
                           attrs=(("index", (*lead, (start.as_int(), stop.as_int()))),))
        start = stop
