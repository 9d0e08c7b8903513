"""Common-subexpression elimination.

Requires: a valid graph. Guarantees: no two non-leaf nodes with the same op, inputs and
attributes remain (dropout is kept distinct: two dropouts draw different masks); uses of
a removed duplicate read the surviving node. Types are unchanged.
"""

from __future__ import annotations

from typing import Any

from attndsl.ir.graph import Graph
from attndsl.passes.manager import PassResult

NOT_MERGED = {"input", "param", "dropout"}


def eliminate_common_subexpressions(graph: Graph) -> PassResult:
    out = graph.copy()
    seen: dict[tuple[Any, ...], int] = {}
    alias: dict[int, int] = {}
    for nid in graph.topological_order():
        node = out.nodes[nid]
        inputs = tuple(alias.get(i, i) for i in node.inputs)
        if inputs != node.inputs:
            out.replace_node(nid, inputs=inputs)
        if node.op in NOT_MERGED:
            continue
        key = (node.op, inputs, _hashable(node.attrs))
        if key in seen:
            alias[nid] = seen[key]
        else:
            seen[key] = nid
    if not alias:
        return PassResult(graph, False)
    out.outputs = {k: alias.get(v, v) for k, v in out.outputs.items()}
    for nid in alias:
        del out.nodes[nid]
    return PassResult(out, True)


def _hashable(attrs: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    return tuple((k, v if _is_hashable(v) else repr(v)) for k, v in attrs)


def _is_hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True
