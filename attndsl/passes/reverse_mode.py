"""Reverse mode as a graph transformation: the forward graph plus its backward, in one graph.

Requires: an optimized forward graph (fused bias + activation linears are split back
first: the activation's VJP reads the pre-activation). Guarantees: the result computes the forward, then a
`seed` node per loss output (the loss's cotangent of that output, given by the caller at
run time), then for every float node that depends on a trained parameter its cotangent:
the sum (`add` nodes) of one `vjp` node per use. A `vjp` node reads (cotangent, forward
node, *forward inputs) and has `index`: the forward input it is the cotangent of; the
`vjp` nodes of one forward node share their inputs and are computed by one call of the op's
rule in `attndsl.autodiff.VJP_RULES`. Outputs: `grad:<param>` per trained parameter the
loss reaches, `value:<name>` per kept output and per loss output no parameter reaches (the
others are handed to the caller with their seed), and while training
`stats:<nid>` (the input of each batch_norm, whose running statistics the caller moves).

While training, randomness becomes inputs drawn by the caller (`GradGraph.draws`, in the
forward's topological order): `dropout(x, p)` is `x * keep:<nid>` and `layer_drop(a, b, p)`
is `where(skip:<nid>, a, b)`. The result goes through CSE and DCE like any graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, TensorType
from attndsl.ir.ops import OPS
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.fuse_bias_activation import unfuse_bias_activation

SEED, VJP = "seed", "vjp"


@dataclass(frozen=True)
class Draw:
    """One random input the caller draws before the call: a dropout keep-mask (float, 0 or
    1/(1-p), of `shape`) or a LayerDrop coin (bool scalar: skip the layer)."""

    kind: str                   # 'dropout' | 'layer_drop'
    input: str                  # the graph input it feeds
    p: float
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class GradGraph:
    graph: Graph
    draws: tuple[Draw, ...]


def reverse_mode(graph: Graph, losses: tuple[str, ...], keep: tuple[str, ...] = (),
                 training: bool = False) -> GradGraph:
    """The forward and backward graph of the outputs `losses` (each gets a cotangent seed)
    with the outputs `keep` computed as well; `training` turns dropout and LayerDrop into
    drawn inputs and exports batch_norm inputs."""
    graph = unfuse_bias_activation(graph).graph    # the VJPs read the pre-activation
    g = graph.copy()
    g.outputs = {}
    roots = [graph.outputs[n] for n in (*losses, *keep)]
    live = graph.ancestors(roots)
    order = [n for n in graph.topological_order() if n in live]
    draws = _draw_inputs(g, order) if training else ()

    buffers = {g.params[b] for b in graph.meta.get("buffers", ()) if b in g.params}
    needs = set(g.params.values()) - buffers
    for nid in order:
        node = g.nodes[nid]
        if node.type.dtype == "float" and any(i in needs for i in node.inputs):
            needs.add(nid)

    parts: dict[int, list[int]] = {}                 # node -> its cotangent's summands
    for name in losses:
        nid = graph.outputs[name]
        if nid in needs:
            parts.setdefault(nid, []).append(
                g.add(SEED, (nid,), {"name": name}, g.nodes[nid].type))
    for nid in reversed(order):
        node = g.nodes[nid]
        if nid not in parts or OPS[node.op].kind == "leaf":
            continue
        cot = _sum(g, parts.pop(nid), node.type)
        for i, src in enumerate(node.inputs):
            if src in needs:                          # each use adds its own term
                parts.setdefault(src, []).append(
                    g.add(VJP, (cot, nid, *node.inputs), {"index": i, "of": node.op},
                          g.nodes[src].type))
    for name, pid in graph.params.items():
        if pid in parts:
            g.outputs[f"grad:{name}"] = _sum(g, parts.pop(pid), g.nodes[pid].type)
    seeded = {g.nodes[n].attr("name") for n in g.nodes if g.nodes[n].op == SEED}
    for name in (*losses, *keep):                 # a seed hands the caller its loss output
        if name not in seeded:
            g.outputs[f"value:{name}"] = graph.outputs[name]
    if training:
        for nid in order:
            if g.nodes[nid].op == "batch_norm":
                g.outputs[f"stats:{nid}"] = g.nodes[nid].inputs[0]
    g = eliminate_dead_code(eliminate_common_subexpressions(g).graph).graph
    return GradGraph(g, draws)


def _draw_inputs(g: Graph, order: list[int]) -> tuple[Draw, ...]:
    """Rewrite each training-time random node into a computation on a drawn input."""
    draws = []
    for nid in order:
        node = g.nodes[nid]
        p = node.attr("p") or 0
        if node.op == "dropout" and p > 0:
            name = f"keep:{nid}"
            m = g.add("input", (), {"name": name}, node.type)
            g.inputs[name] = m
            g.replace_node(nid, op="mul", inputs=(node.inputs[0], m), attrs=())
            draws.append(Draw("dropout", name, float(p), node.type.shape))
        elif node.op == "layer_drop" and p > 0:
            name = f"skip:{nid}"
            c = g.add("input", (), {"name": name}, TensorType((), "bool"))
            g.inputs[name] = c
            g.replace_node(nid, op="where", inputs=(c, *node.inputs), attrs=())
            draws.append(Draw("layer_drop", name, float(p), ()))
    return tuple(draws)


def _sum(g: Graph, terms: list[int], type_: TensorType) -> int:
    total = terms[0]
    for t in terms[1:]:
        total = g.add("add", (total, t), {}, type_)
    return total
