"""Stable text form of a Graph (for `--emit graph` and golden tests) and DOT export.

Text form, one node per line in topological order::

    %3 = linear(%1, %2) {has_bias=false} : float[B, T, 768]    # gpt.attn:12:5

Nodes are renumbered densely in print order, so the text does not depend on how many
nodes passes removed or added.
"""

from __future__ import annotations

from typing import Any

from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, TensorType


def format_attr(value: Any) -> str:
    if isinstance(value, TensorType):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (Dim, bool, int)) or value is None:
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def print_graph(graph: Graph, spans: bool = False) -> str:
    """The graph as text; `spans=True` appends each node's source location."""
    order = graph.topological_order()
    number = {nid: i for i, nid in enumerate(order)}
    lines = []
    for nid in order:
        node = graph.nodes[nid]
        args = ", ".join(f"%{number[i]}" for i in node.inputs)
        attrs = [(k, v) for k, v in node.attrs if k != "type"]
        attr_text = " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in attrs) + "}" if attrs else ""
        line = f"%{number[nid]} = {node.op}({args}){attr_text} : {node.type}"
        if spans and node.span is not None:
            line += f"    # {node.span!r}"
        lines.append(line)
    for name, nid in graph.outputs.items():
        lines.append(f"output {name} = %{number[nid]}")
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    """Graphviz DOT text: parameters as boxes, inputs and outputs highlighted."""
    out = ["digraph attndsl {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
    outputs = {nid: name for name, nid in graph.outputs.items()}
    for nid, node in graph.nodes.items():
        label = node.attr("name") if node.op in ("param", "input") else node.op
        label = f"{label}\\n{node.type}"
        style = {"param": 'shape=box, color="gray"', "input": 'shape=invhouse, color="blue"'}.get(
            node.op, "shape=ellipse")
        if nid in outputs:
            style += ', peripheries=2, xlabel="output ' + outputs[nid] + '"'
        out.append(f'  n{nid} [label="{label}", {style}];')
        for i, src in enumerate(node.inputs):
            out.append(f'  n{src} -> n{nid} [label="{i}"];' if len(node.inputs) > 1
                       else f"  n{src} -> n{nid};")
    out.append("}")
    return "\n".join(out) + "\n"
