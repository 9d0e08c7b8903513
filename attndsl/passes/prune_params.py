"""Parameter pruning: drop parameters that no node reads.

Requires: a valid graph, after dead-code elimination. Used when `compile(outputs=[...])`
keeps only some outputs: the parameters of the pruned heads go too, so `state_dict()` and
strict loading describe the model that runs (a headless checkpoint loads strictly).
Guarantees: `graph.params` and its nodes lose exactly the unread parameters.
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult


def prune_parameters(graph: Graph) -> PassResult:
    read = {i for node in graph.nodes.values() for i in node.inputs}
    unread = {name: nid for name, nid in graph.params.items() if nid not in read}
    if not unread:
        return PassResult(graph, False)
    out = graph.copy()
    for name, nid in unread.items():
        del out.params[name]
        del out.nodes[nid]
    return PassResult(out, True)
