"""Dead-code elimination.

Requires: a valid graph. Guarantees: every remaining node is an input, a parameter, or
reaches an output; nothing else changes. Runs last in `optimize`, after rewrites have
orphaned nodes.
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult


def eliminate_dead_code(graph: Graph) -> PassResult:
    live: set[int] = set(graph.inputs.values()) | set(graph.params.values())
    stack = list(graph.outputs.values())
    while stack:
        nid = stack.pop()
        if nid not in live or graph.nodes[nid].op in ("input", "param"):
            live.add(nid)
            stack.extend(i for i in graph.nodes[nid].inputs if i not in live)
    dead = [nid for nid in graph.nodes if nid not in live]
    if not dead:
        return PassResult(graph, False)
    out = graph.copy()
    for nid in dead:
        del out.nodes[nid]
    return PassResult(out, True)
