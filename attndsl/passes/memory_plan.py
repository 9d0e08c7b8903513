"""Static memory plan of a NumPy forward pass: intermediates written into reused buffers.

An analysis over the emitted order (as `liveness`). Every float intermediate whose kernel
writes into a given array (`OUT_OPS`: the `out=` argument of the NumPy kernels) is assigned
a buffer; two tensors alive at the same time never share one. A tensor is alive from the
op that writes it to its last read, and an op that may return a view of its inputs
(transpose, reshape, index, the identity of inference dropout: everything not in `FRESH`)
extends its inputs' lives to its own last read. A tensor that leaves the call (an output,
or anything an output may be a view of) is never planned. Elementwise ufuncs (`IN_PLACE`)
write into an input of the same shape that dies at that op and that no other operand reads.

Buffers are reused by size class: a tensor takes the most recently freed buffer with
exactly its element count (symbolic, so one plan holds for every B and T), else a new one.
At run time a buffer is allocated when its first tensor is written and released with its
last one, so the planned peak follows liveness instead of holding one arena all call long.
`memory_report` gives, for concrete sizes: `naive` (a buffer per tensor), `lower_bound`
(liveness: the most bytes of distinct arrays alive at once, kernel workspaces included)
and `planned` (buffers from first write to last read, idle gaps included, plus what the
plan leaves to the allocator). `free_after` names the buffers idle after each op: a debug
run fills them with NaN, so an overlap in the plan cannot go unseen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import numel
from attndsl.passes.liveness import DTYPE_BYTES, workspace_bytes
from attndsl.passes.reverse_mode import SEED, VJP

# Kernels that take `out=` (backends/numpy_kernels.py) and write their whole result there.
OUT_OPS = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "neg", "exp", "tanh",
                     "relu", "gelu", "silu", "linear", "layer_norm", "add_layer_norm",
                     "rms_norm", "softmax", "concat"})
# ufuncs applied element by element: exact with `out` equal to an input of the same shape.
IN_PLACE = frozenset({"add", "sub", "mul", "div", "maximum", "minimum", "neg", "exp", "tanh",
                      "relu"})
# Ops whose NumPy kernel returns a new array, never a view of an input.
FRESH = OUT_OPS | frozenset({
    "embedding", "attention", "attention_weights", "linear_int8", "matmul", "sigmoid",
    "softplus", "sqrt", "log", "abs", "sin", "cos", "sign", "pow", "where", "sum", "mean",
    "max", "min", "cumsum", "one_hot", "gather", "less", "greater", "equal", "logical_and",
    "logical_or", "logical_not", "constant", "arange", "sinusoidal", "size"})


def view_sources(node: Node) -> tuple[int, ...]:
    """The inputs the node's result may be a view of: none for FRESH ops and the reverse
    mode's seeds; for a `vjp` only its cotangent (a cotangent is linear in it: a new array
    or a view of it, never of a forward value); every input otherwise."""
    if node.op in FRESH or node.op == SEED:
        return ()
    return node.inputs[:1] if node.op == VJP else node.inputs


def rope_in_place(graph: Graph, folded: frozenset[int] = frozenset()) -> frozenset[int]:
    """Attentions with rope that may rotate q and k where they are (the NumPy forward at
    inference, `op_attention(..., rope_in_place=True)`) instead of in rotated copies: each
    of q and k is a chain of views of one fresh intermediate (not an input, parameter,
    folded value or output) that nothing reads after the attention, and when q and k view
    the same intermediate, they are `index` slices of disjoint ranges of its last axis."""
    order = emitted_order(graph, folded)
    pos = {n: i for i, n in enumerate(order)}
    end = last_reads(graph, order)

    def root(n: int) -> tuple[int, int | None]:
        """The fresh node `n` views, and the index node right on it (None if none)."""
        first = None
        while graph.nodes[n].op in VIEW_OPS:
            first, n = n, graph.nodes[n].inputs[0]
        return n, first

    out = set()
    for nid, node in graph.nodes.items():
        if node.op != "attention" or node.attr("rope") is None or nid not in pos:
            continue
        q, k = node.inputs[:2]
        rotated = [q, k] if node.attr("rope_keys", True) else [q]
        roots = [root(x) for x in rotated]
        if q == k or not all(r in end and graph.nodes[r].op in FRESH and end[r] == pos[nid]
                             for r, _ in roots):                  # not input, param, folded
            continue
        if len(roots) == 2 and roots[0][0] == roots[1][0] and not _disjoint(
                graph, roots[0][1], roots[1][1]):
            continue
        out.add(nid)
    return frozenset(out)


def program_rope_in_place(graph: Graph) -> frozenset[int]:
    """`rope_in_place` of the NumPy program's forward (none at -O0)."""
    if graph.meta.get("opt_level", 2) < 1:
        return frozenset()
    return rope_in_place(graph, program_folded(graph))


VIEW_OPS = frozenset({"transpose", "reshape", "index"})


def _disjoint(graph: Graph, a: int | None, b: int | None) -> bool:
    """Two `index` views of one array that select disjoint ranges of its last axis (every
    other axis whole)."""
    if a is None or b is None or graph.nodes[a].op != "index" or graph.nodes[b].op != "index":
        return False
    ia, ib = graph.nodes[a].attr("index"), graph.nodes[b].attr("index")
    if len(ia) != len(ib) or any(x != (None, None) for x in (*ia[:-1], *ib[:-1])):
        return False
    last = (ia[-1], ib[-1])
    if not all(isinstance(r, tuple) and len(r) == 2 and all(
            isinstance(v, int) and v >= 0 for v in r) for r in last):
        return False
    (sa, ea), (sb, eb) = last
    return ea <= sb or eb <= sa


@dataclass(frozen=True)
class BufferPlan:
    """Which buffer each planned node writes; independent of the sizes."""
    order: tuple[int, ...]                         # the emitted order (no inputs/params)
    end: dict[int, int]                            # node -> position of its last read
    buffer: dict[int, int]                         # planned node -> its buffer
    last: dict[int, int]                           # buffer -> the last node written to it
    span: dict[int, tuple[int, int]]               # buffer -> (first write, last read)
    free_after: dict[int, tuple[int, ...]]         # node -> buffers left idle after it


@dataclass(frozen=True)
class MemoryReport:
    naive: int           # bytes: every tensor kept
    lower_bound: int     # bytes: liveness peak, workspaces included
    planned: int         # bytes: planned buffers + what the allocator serves, worst moment
    buffers: int         # how many buffers the plan uses


def plannable(graph: Graph, folded: frozenset[int] = frozenset()) -> frozenset[int]:
    """Nodes whose kernel call gets `out=`: float results of OUT_OPS with float operands
    that never leave the call."""
    escaping = set(graph.outputs.values())
    for nid in reversed(graph.topological_order()):          # users before their inputs
        node = graph.nodes[nid]
        if nid in escaping:
            escaping.update(view_sources(node))               # it may be a view of them
    return frozenset(
        nid for nid, node in graph.nodes.items()
        if node.op in OUT_OPS and nid not in escaping and nid not in folded
        and node.type.dtype == "float"
        and all(graph.nodes[i].type.dtype == "float" for i in node.inputs))


def program_folded(graph: Graph) -> frozenset[int]:
    """The nodes the NumPy program folds (computed from the parameters, read from them)."""
    from attndsl.backends.codegen import EmitOptions, folded_nodes
    return folded_nodes(graph, EmitOptions())


def emitted_order(graph: Graph, folded: frozenset[int]) -> tuple[int, ...]:
    """The nodes the program computes, in its order (no inputs, parameters, folded)."""
    return tuple(n for n in graph.topological_order()
                 if graph.nodes[n].op not in ("input", "param") and n not in folded)


def last_reads(graph: Graph, order: tuple[int, ...]) -> dict[int, int]:
    """Node of `order` -> the position of its last read, through anything that may be a
    view of it (an output: past the end)."""
    pos = {n: i for i, n in enumerate(order)}
    end = dict(pos)
    for n in graph.outputs.values():
        if n in end:
            end[n] = len(order)
    for n in reversed(order):
        node = graph.nodes[n]
        views = view_sources(node)
        for src in node.inputs:
            if src in end:
                end[src] = max(end[src], max(pos[n], end[n]) if src in views else pos[n])
    return end


def plan_buffers(graph: Graph, env: dict[str, int], itemsize: int = 4,
                 backend: str = "numpy", folded: frozenset[int] | None = None) -> BufferPlan:
    """Buffer assignment for the forward the NumPy program emits from `graph` (or any
    program emitted with these `folded` nodes: the reverse mode's folds none). `env` only
    prices the choices: the plan is correct for every size."""
    folded = program_folded(graph) if folded is None else folded
    order = emitted_order(graph, folded)
    pos = {n: i for i, n in enumerate(order)}
    end = last_reads(graph, order)                             # last read, through views
    planned = plannable(graph, folded)
    group: dict[int, int] = {}                                 # planned node -> in-place chain
    roots: dict[int, frozenset[int]] = {}                      # chains a value may read
    for p, n in enumerate(order):
        node = graph.nodes[n]
        if n in planned:
            chain = _in_place(graph, node, p, end, group, roots, planned)
            group[n] = n if chain is None else chain
        roots[n] = (frozenset({group[n]} if n in group else ()) if node.op in FRESH else
                    frozenset().union(*(roots.get(i, frozenset()) for i in view_sources(node))))
    chains: dict[int, list[int]] = {}
    for n in order:
        if n in group:
            chains.setdefault(group[n], []).append(n)
    live = {g: (pos[ms[0]], max(end[m] for m in ms)) for g, ms in chains.items()}
    size = {n: nbytes(graph.nodes[n], env, itemsize) for n in order}
    lives = {n: end[n] for n in order if allocates(graph, graph.nodes[n]) and n not in group}
    lives.update({g: last for g, (_, last) in live.items()})
    profile = _profile(graph, order, lives, size, env, itemsize, backend)
    budget = max(profile, default=0)
    count = {g: numel(graph.nodes[g].type.shape) for g in chains}
    buffer: dict[int, int] = {}                                # chain -> buffer
    span: dict[int, tuple[int, int]] = {}                      # buffer -> (first, last)
    idle: dict[object, list[int]] = {}                         # element count -> buffers
    for g in sorted(chains, key=lambda g: live[g][0]):
        first, last = live[g]
        reuse = None
        for b in reversed(idle.get(count[g], [])):             # the most recently freed first
            gap = range(span[b][1] + 1, first)
            if span[b][1] < first and all(profile[q] + size[g] <= budget for q in gap):
                reuse = b
                break
        if reuse is None:
            reuse = g
            span[g] = (first, last)
        else:
            idle[count[g]].remove(reuse)
            for q in range(span[reuse][1] + 1, first):         # held while idle
                profile[q] += size[g]
            span[reuse] = (span[reuse][0], last)
        buffer[g] = reuse
        if last < len(order):
            idle.setdefault(count[g], []).append(reuse)
    member = {n: buffer[group[n]] for n in group}
    free_after: dict[int, list[int]] = {}                      # idle gaps and the end
    for g, (_, last) in live.items():
        if last < len(order):
            free_after.setdefault(order[last], []).append(buffer[g])
    return BufferPlan(order, end, member, {b: n for n, b in member.items()}, span,
                      {n: tuple(bs) for n, bs in free_after.items()})


def _in_place(graph: Graph, node: Node, p: int, end: dict[int, int], group: dict[int, int],
              roots: dict[int, frozenset[int]], planned: frozenset[int]) -> int | None:
    """The in-place chain of an input this elementwise op may overwrite, if any: planned,
    of the same shape, read for the last time here, and read by no other operand."""
    if node.op not in IN_PLACE:
        return None
    for i in node.inputs:
        if (i in planned and end[i] == p and node.inputs.count(i) == 1
                and graph.nodes[i].type.shape == node.type.shape
                and not any(group[i] in roots.get(j, frozenset())
                            for j in node.inputs if j != i)):
            return group[i]
    return None


def _profile(graph: Graph, order: tuple[int, ...], lives: dict[int, int], size: dict[int, int],
             env: dict[str, int], itemsize: int, backend: str) -> list[int]:
    """Bytes alive at each op: the arrays in `lives` (node -> its last read) plus the op's
    workspace."""
    out, held = [], 0
    dying: dict[int, int] = {}
    in_place = program_rope_in_place(graph) if backend != "torch" else frozenset()
    for p, n in enumerate(order):
        if n in lives:
            held += size[n]
            dying[lives[n]] = dying.get(lives[n], 0) + size[n]
        out.append(held + workspace_bytes(graph.nodes[n], graph, env, backend, itemsize,
                                          n in in_place))
        held -= dying.pop(p, 0)
    return out


def allocates(graph: Graph, node: Node) -> bool:
    """Whether the op's NumPy kernel makes a new array (views and the identity do not; a
    reshape of a transposed array copies)."""
    if node.op in ("transpose", "expand", "index", "dropout"):
        return False
    return node.op != "reshape" or graph.nodes[node.inputs[0]].op == "transpose"


def nbytes(node: Node, env: dict[str, int], itemsize: int) -> int:
    return math.prod(int(d.evaluate(env)) for d in node.type.shape) * DTYPE_BYTES.get(
        node.type.dtype, itemsize)


def memory_report(graph: Graph, env: dict[str, int], itemsize: int = 4,
                  backend: str = "numpy") -> MemoryReport:
    """Naive, liveness lower bound and planned peak of the forward for the sizes in `env`
    ({'B': 1, 'T': 1024})."""
    plan = plan_buffers(graph, env, itemsize, backend)
    order, end = plan.order, plan.end
    size = {n: nbytes(graph.nodes[n], env, itemsize) for n in order}
    fresh = {n: end[n] for n in order if allocates(graph, graph.nodes[n])}
    lower = max(_profile(graph, order, fresh, size, env, itemsize, backend), default=0)
    moments = _profile(graph, order, {n: e for n, e in fresh.items() if n not in plan.buffer},
                       size, env, itemsize, backend)
    pooled = [0] * len(order)
    for b, (first, last) in plan.span.items():
        for q in range(first, min(last, len(order) - 1) + 1):
            pooled[q] += size[b]
    planned = max((a + b for a, b in zip(moments, pooled)), default=0)
    return MemoryReport(sum(size[n] for n in fresh), lower, planned, len(plan.span))
