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
    pairs = [(nid, src) for nid, src in graph.fusable_pairs(("layer_norm",), "add")
             if all(graph.nodes[i].type == graph.nodes[src].type
                    for i in graph.nodes[src].inputs)]
    if not pairs:
        return PassResult(graph, False)
    out = graph.copy()
    for nid, src in pairs:
        out.replace_node(nid, op="add_layer_norm",
                         inputs=(*graph.nodes[src].inputs, *graph.nodes[nid].inputs[1:]))
        del out.nodes[src]
    return PassResult(out, True)
