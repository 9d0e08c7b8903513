"""Expose attention maps: an `attention_weights` node (the probabilities [B, H, Tq, Tk])
beside every fused `attention` node, as an extra output — what `attndsl inspect` reads,
without the spec naming `weights=` anywhere.

Requires: a valid graph (before or after optimization). Output names say where each
attention is: `attention.<layer>` inside the i-th `repeat` iteration (`graph.meta["layers"]`
ranges), `attention.line<N>` outside, with `.<k>` for a second one at the same place.
Guarantees: the existing nodes and outputs are unchanged; the new outputs are listed in
`graph.meta["attention_maps"]` in graph order (name, spec line, layer index or None,
self-attention?).
"""

from __future__ import annotations

from attndsl.ir import ops
from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult


def expose_attention_weights(graph: Graph) -> PassResult:
    out = graph.copy()
    ranges = [tuple(r) for r in out.meta.get("layers", ())]
    maps = []
    for nid in sorted(n for n, node in graph.nodes.items() if node.op == "attention"):
        node = out.nodes[nid]
        layer = next((i for i, (lo, hi) in enumerate(ranges) if lo <= nid < hi), None)
        line = node.span.line if node.span is not None else 0
        base = f"attention.{layer}" if layer is not None else f"attention.line{line}"
        name, k = base, 0
        while name in out.outputs:
            k += 1
            name = f"{base}.{k}"
        attrs = dict(node.attrs)
        ttype = ops.infer("attention_weights", [out.nodes[i].type for i in node.inputs], attrs)
        out.outputs[name] = out.add("attention_weights", node.inputs, attrs, ttype, node.span)
        tq, tk = (out.nodes[i].type.shape[2] for i in node.inputs[:2])
        maps.append((name, line, layer, tq == tk))
    out.meta["attention_maps"] = maps
    return PassResult(out, bool(maps))
