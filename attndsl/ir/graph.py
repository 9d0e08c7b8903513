"""The computation graph: a thin wrapper over `networkx.DiGraph` that keeps operand order.

`Graph.nodes` maps a node id to a frozen `Node(op, inputs, attrs, type, span)`. The
networkx graph is derived from `inputs` (so `x * x` is one edge with two uses), and is
used for topological order, liveness and drawing. Passes talk to `Graph`, never to
networkx directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from attndsl.errors import Span
from attndsl.ir.dims import Dim, shape_str

DTYPES = ("float", "int", "bool")


@dataclass(frozen=True)
class TensorType:
    """A tensor's symbolic shape and abstract dtype ('float', 'int' or 'bool')."""

    shape: tuple[Dim, ...]
    dtype: str = "float"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{shape_str(self.shape)}"


@dataclass(frozen=True)
class Node:
    """One operation. `attrs` is a sorted tuple of (name, value) pairs (hashable, printable)."""

    op: str
    inputs: tuple[int, ...]
    attrs: tuple[tuple[str, Any], ...]
    type: TensorType
    span: Span | None = field(default=None, compare=False)

    def attr(self, name: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)


class Graph:
    """Nodes in insertion order (always a valid topological order), plus named inputs,
    outputs and parameters."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.inputs: dict[str, int] = {}
        self.outputs: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self.meta: dict[str, Any] = {}
        self._next = 0

    def add(self, op: str, inputs: tuple[int, ...], attrs: dict[str, Any], type_: TensorType,
            span: Span | None = None) -> int:
        nid = self._next
        self._next += 1
        self.nodes[nid] = Node(op, tuple(inputs), tuple(sorted(attrs.items())), type_, span)
        return nid

    @property
    def next_id(self) -> int:
        """The id the next added node will get (ids grow in creation order)."""
        return self._next

    def replace_node(self, nid: int, **changes: Any) -> None:
        self.nodes[nid] = replace(self.nodes[nid], **changes)

    def join_layer(self, new: Iterable[int], like: int) -> None:
        """Record nodes a pass added as members of `like`'s `repeat` iteration
        (`meta["segment_extra"]`: activation checkpointing recomputes them with it)."""
        extra = dict(self.meta.get("segment_extra", {}))
        layer = extra.get(like) or next((tuple(r) for r in self.meta.get("layers", ())
                                         if r[0] <= like < r[1]), None)
        if layer is not None:
            extra.update({n: layer for n in new})
            self.meta["segment_extra"] = extra

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for nid, node in self.nodes.items():
            g.add_node(nid, op=node.op)
            for src in node.inputs:
                g.add_edge(src, nid)
        return g

    def topological_order(self) -> list[int]:
        return list(nx.lexicographical_topological_sort(self.to_networkx()))

    def ancestors(self, roots: Iterable[int]) -> set[int]:
        """`roots` and every node they read, transitively."""
        seen = set(roots)
        stack = list(seen)
        while stack:
            for src in self.nodes[stack.pop()].inputs:
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
        return seen

    def fusable_pairs(self, ops: Iterable[str], producer: str) -> list[tuple[int, int]]:
        """(node, its first input) for each node of an op in `ops` whose first input is a
        `producer` node read by nothing else and not an output: what a fusion pass may merge
        into one node."""
        users = self.users()
        outputs = set(self.outputs.values())
        return [(nid, node.inputs[0]) for nid, node in self.nodes.items()
                if node.op in ops and self.nodes[node.inputs[0]].op == producer
                and len(users[node.inputs[0]]) == 1 and node.inputs[0] not in outputs]

    def users(self) -> dict[int, list[int]]:
        """Map each node to the nodes that read it (one entry per use)."""
        out: dict[int, list[int]] = {n: [] for n in self.nodes}
        for nid, node in self.nodes.items():
            for src in node.inputs:
                out[src].append(nid)
        return out

    def param_types(self) -> dict[str, TensorType]:
        return {name: self.nodes[nid].type for name, nid in self.params.items()}

    def copy(self) -> Graph:
        g = Graph()
        g.nodes = dict(self.nodes)
        g.inputs, g.outputs, g.params = dict(self.inputs), dict(self.outputs), dict(self.params)
        g.meta = dict(self.meta)
        g._next = self._next
        return g
