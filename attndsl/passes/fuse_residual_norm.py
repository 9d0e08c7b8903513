"""Residual + normalization fusion: `layer_norm(a + b)` becomes `add_layer_norm(a, b, ...)`.

Requires: a valid graph. Guarantees: each layer_norm whose input is an add of two operands
of the add's own type, read by nothing else and not an output, is replaced by
`add_layer_norm` (the layer_norm's attributes and parameters, under its node id); the add
is removed. That is the post-norm residual (`x = layer_norm(x + f(x))`, BERT and the
original Transformer). A pre-norm residual stream (`x = x + f(layer_norm(x))`) keeps its
add: the sum is read again by the next residual add, and an IR node has one output. The
NumPy kernel adds and normalizes a cache-sized block of rows at a time: the same operations
as the two kernels, so the same numbers (tested on every spec).
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult


def fuse_residual_norm(graph: Graph) -> PassResult:
    users = graph.users()
    outputs = set(graph.outputs.values())
    out = graph.copy()
    changed = False
    for nid, node in graph.nodes.items():
        if node.op != "layer_norm":
            continue
        src = node.inputs[0]
        add = graph.nodes[src]
        if (add.op != "add" or len(users[src]) != 1 or src in outputs
                or any(graph.nodes[i].type != add.type for i in add.inputs)):
            continue
        out.replace_node(nid, op="add_layer_norm", inputs=(*add.inputs, *node.inputs[1:]))
        del out.nodes[src]
        changed = True
    return PassResult(out if changed else graph, changed)
