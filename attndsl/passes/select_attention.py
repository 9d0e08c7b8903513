"""Attention implementation override: `attndsl.compile(..., attention=...)`.

Requires: a valid graph. Guarantees: every `attention` node's `impl` attribute is the
requested implementation — 'auto' (the backend's cost model chooses per call from the
actual sizes), 'dense', 'tiled' or 'sparse' — except where the node's variant has no blocked
kernel (additive scores, Shaw's relative term, tensor biases), which stays 'auto' and so
runs dense: the override never changes the numbers, only how they are computed. Runs after
fusion, so fused hand-written attention is covered too.
"""

from __future__ import annotations

from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import IMPLS
from attndsl.passes.manager import PassResult


def blocked_kernel_exists(node: Node) -> bool:
    """True if the blocked (tiled/sparse) kernels implement this attention's variant."""
    bias = node.attr("bias")
    terms = [t.kernel_attr()[0] for t in bias.terms] if bias else []
    return node.attr("score") != "additive" and all(t in ("alibi", "t5") for t in terms)


def select_attention(graph: Graph, impl: str) -> PassResult:
    if impl not in IMPLS:
        raise ValueError(f"attention= must be one of {', '.join(IMPLS)}, got {impl!r}")
    out = graph.copy()
    modified = False
    for nid, node in graph.nodes.items():
        if node.op != "attention":
            continue
        wanted = impl if impl in ("auto", "dense") or blocked_kernel_exists(node) else "auto"
        if node.attr("impl") != wanted:
            attrs = dict(node.attrs, impl=wanted)
            out.replace_node(nid, attrs=tuple(sorted(attrs.items())))
            modified = True
    return PassResult(out if modified else graph, modified)
