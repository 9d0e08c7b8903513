"""The pass manager: runs passes in order and, in debug mode, verifies the graph after each
pass, naming the pass that broke it (FX's requires -> call -> ensures)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attndsl.ir import ops
from attndsl.ir.graph import Graph


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool


Pass = Callable[[Graph], PassResult]


class GraphInvariantError(AssertionError):
    """A pass produced an invalid graph (a bug in attndsl, not in the spec)."""


def verify(graph: Graph) -> None:
    """Check: inputs defined before use, every node's type is what its op's rule infers,
    outputs, inputs and params point at live nodes."""
    seen: set[int] = set()
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        for src in node.inputs:
            if src not in graph.nodes:
                raise GraphInvariantError(f"node {nid} ({node.op}) reads missing node {src}")
        inferred = ops.infer(node.op, [graph.nodes[i].type for i in node.inputs], node.attr_dict)
        if inferred != node.type:
            raise GraphInvariantError(f"node {nid} ({node.op}) has type {node.type}, its rule "
                                      f"gives {inferred}")
        seen.add(nid)
    for table in (graph.inputs, graph.outputs, graph.params):
        for name, nid in table.items():
            if nid not in seen:
                raise GraphInvariantError(f"'{name}' points at missing node {nid}")


class PassManager:
    def __init__(self, passes: list[tuple[str, Pass]], debug: bool = False):
        self.passes = passes
        self.debug = debug
        self.log: list[tuple[str, bool]] = []

    def run(self, graph: Graph) -> Graph:
        for name, fn in self.passes:
            result = fn(graph)
            self.log.append((name, result.modified))
            if self.debug:
                try:
                    verify(result.graph)
                except GraphInvariantError as e:
                    raise GraphInvariantError(f"after pass '{name}': {e}") from None
            graph = result.graph
        return graph
