"""`attndsl compile --explain`: which implementation each attention node gets, and why.

An analysis, not a rewrite. The choice mirrors the kernels' own dispatch
(`backends/*_kernels.py: op_attention`), so the text states what will actually run.
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.ir.ops import numel
from attndsl.ir.patterns import Pattern


def choose(pattern: Pattern, has_padding: bool, fused: bool) -> tuple[str, str]:
    """(implementation, reason) for one attention, on a backend with (`fused`) or without a
    fused scaled-dot-product attention kernel (its `Backend.fused_attention` flag)."""
    if fused:
        if has_padding:
            return ("SDPA with a boolean mask",
                    "key padding needs a per-batch mask; fully masked rows are zeroed")
        if pattern.is_full:
            return "SDPA, no mask", "every query sees every key: the fused kernel needs no mask"
        if pattern.is_causal:
            return ("SDPA is_causal=True",
                    "plain causal pattern with equal query/key lengths; with a KV cache "
                    "(fewer queries than keys) a bottom-right-aligned boolean mask is used")
        return ("SDPA with a boolean mask",
                f"pattern {pattern} is not expressible as is_causal; the mask is built once "
                "per (pattern, Tq, Tk) from the pattern expression and cached")
    if pattern.is_full and not has_padding:
        return "dense softmax(QK^T)V", "no mask needed"
    return ("dense masked softmax(QK^T)V",
            f"mask from {'key padding and ' if has_padding else ''}pattern {pattern}, cached per "
            "(pattern, Tq, Tk); fully masked rows give zeros")


def explain(graph: Graph, backend: str) -> str:
    from attndsl.backends import get_backend
    fused = get_backend(backend, require_available=False).fused_attention
    lines = [f"attention implementations on the {backend} backend:"]
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        if node.op != "attention":
            continue
        q, k = (graph.nodes[i].type for i in node.inputs[:2])
        pattern = node.attr("pattern")
        impl, why = choose(pattern, len(node.inputs) == 4, fused)
        where = f"{node.span!r}" if node.span else f"node {nid}"
        scores = numel(q.shape[:3]) * k.shape[2]
        lines.append(f"  {where}: {pattern}, q {q}, k {k} -> {impl}")
        lines.append(f"      why: {why}; score matrix {scores} elements per call")
    if len(lines) == 1:
        lines.append("  (no attention nodes)")
    return "\n".join(lines)
