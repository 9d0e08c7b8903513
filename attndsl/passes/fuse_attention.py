"""Attention fusion: rewrite attention written out by hand into the fused `attention` op.

Matches, on rank-4 tensors,

    matmul(softmax(scale(matmul(q, transpose(k))), axis=-1), v)

where `scale` is `mul` or `div` by a scalar constant (or absent) and the transpose
swaps the last two axes; the intermediates must have no other users. Requires: a valid
graph. Guarantees: each match becomes one `attention(q, k, v)` node with
`pattern=full` and the folded scale, with the same type; the orphaned intermediates are
left for dead-code elimination.
"""

from __future__ import annotations

from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import attention_attrs
from attndsl.ir.patterns import FULL
from attndsl.passes.manager import PassResult


def fuse_attention(graph: Graph) -> PassResult:
    out = graph.copy()
    users = graph.users()
    for nid in graph.outputs.values():  # an output is a use the rewrite must keep
        users[nid].append(-1)
    modified = False
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        match = _match(graph, node, users)
        if match is None:
            continue
        q, k, v, scale = match
        attrs = attention_attrs(FULL, scale)
        out.replace_node(nid, op="attention", inputs=(q, k, v),
                         attrs=tuple(sorted(attrs.items())))
        modified = True
    return PassResult(out if modified else graph, modified)


def _single_use(nid: int, users: dict[int, list[int]]) -> bool:
    return len(users[nid]) == 1


def _match(graph: Graph, node: Node, users: dict[int, list[int]]
           ) -> tuple[int, int, int, float] | None:
    if node.op != "matmul" or node.type.rank != 4:
        return None
    probs_id, v = node.inputs
    probs = graph.nodes[probs_id]
    if probs.op != "softmax" or probs.attr("axis") not in (-1, 3) or not _single_use(
            probs_id, users):
        return None
    scores_id = probs.inputs[0]
    scores = graph.nodes[scores_id]
    scale = 1.0
    if scores.op in ("mul", "div") and _single_use(scores_id, users):
        const = graph.nodes[scores.inputs[1]]
        if const.op != "constant":
            return None
        value = float(const.attr("value"))
        if value == 0.0:
            return None
        scale = value if scores.op == "mul" else 1.0 / value
        scores_id = scores.inputs[0]
        scores = graph.nodes[scores_id]
    if scores.op != "matmul" or not _single_use(scores_id, users):
        return None
    q, kt_id = scores.inputs
    kt = graph.nodes[kt_id]
    if kt.op != "transpose" or kt.attr("perm") != (0, 1, 3, 2) or not _single_use(kt_id, users):
        return None
    if graph.nodes[q].type.rank != 4:
        return None
    return q, kt.inputs[0], v, scale
