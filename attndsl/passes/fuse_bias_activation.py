"""Bias + activation fusion: `act(linear(x, W, b))` becomes one `linear` with `activation`.

Requires: a valid graph. Guarantees: each relu, silu or gelu whose input is a linear read by
nothing else (and not an output) is replaced by that linear with the `activation`
attribute (`relu`, `silu`, `gelu`, `gelu_tanh`), under the activation's node id (its users
are unchanged); the linear node is removed. The NumPy kernel adds the bias and applies the
activation in place, a cache-sized block of rows at a time, split over threads: the same
operations as the two kernels one after the other, so the same numbers (tested on every
spec). `unfuse_bias_activation` is the inverse, for what needs the pre-activation (the
reverse mode's VJPs) or a linear without one (int8 quantization).
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult

ACTIVATIONS = ("relu", "silu", "gelu")


def _activation(graph: Graph, nid: int) -> str:
    node = graph.nodes[nid]
    if node.op == "gelu":
        return "gelu_tanh" if node.attr("approximate") == "tanh" else "gelu"
    return node.op


def fuse_bias_activation(graph: Graph) -> PassResult:
    pairs = [(nid, src) for nid, src in graph.fusable_pairs(ACTIVATIONS, "linear")
             if graph.nodes[src].attr("activation") is None]
    if not pairs:
        return PassResult(graph, False)
    out = graph.copy()
    for nid, src in pairs:
        lin = graph.nodes[src]
        out.replace_node(nid, op="linear", inputs=lin.inputs,
                         attrs=tuple(sorted({**lin.attr_dict,
                                             "activation": _activation(graph, nid)}.items())),
                         span=graph.nodes[nid].span)
        del out.nodes[src]
    return PassResult(out, True)


def unfuse_bias_activation(graph: Graph) -> PassResult:
    """Each fused linear back to a linear and its activation node (the activation keeps
    the node id, so users read it unchanged)."""
    fused = [n for n, node in graph.nodes.items()
             if node.op == "linear" and node.attr("activation") is not None]
    if not fused:
        return PassResult(graph, False)
    out = graph.copy()
    for nid in fused:
        node = graph.nodes[nid]
        act = node.attr("activation")
        attrs = {k: v for k, v in node.attrs if k != "activation"}
        lin = out.add("linear", node.inputs, attrs, node.type, node.span)
        out.join_layer((lin,), nid)
        op = "gelu" if act.startswith("gelu") else act
        extra = {"approximate": "tanh" if act == "gelu_tanh" else "none"} if op == "gelu" else {}
        out.replace_node(nid, op=op, inputs=(lin,), attrs=tuple(sorted(extra.items())))
    return PassResult(out, True)
