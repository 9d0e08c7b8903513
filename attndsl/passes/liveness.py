"""Peak activation memory of a forward pass: liveness over the emitted program.

An analysis, not a rewrite. It walks the graph in the order the code generator emits it
(`Graph.topological_order`; every intermediate is deleted after its last use, outputs
stay), with concrete sizes `env`, and reports:
- `naive`: one buffer per tensor, none ever freed (what the old "activation memory" summed);
- `peak`: the most bytes alive at once, counting each op's transient workspace while it
  runs (below) — the number the backend actually reaches above its weights and inputs.

Views share their input's buffer (transpose, expand, index, and reshape of a contiguous
array); a reshape of a transposed array copies, as NumPy does. Workspaces: attention
materializes what its kernel does — on NumPy the implementation the cost model picks at
these sizes (dense: the [B, H, Tq, Tk] scores plus a cached [Tq, Tk] mask; tiled/sparse:
one step's scores, its query rows and output, and for sparse its gathered keys and values),
on torch nothing of that size for SDPA's full/causal
paths, two outputs' worth for sliding windows and T5 at inference (the CPU band/split
kernels), three row blocks of scores for biased attention (scores, biased scores,
probabilities), and the scores twice for the explicit path;
layer_norm, rms_norm, softmax, sigmoid and silu allocate one temporary of their output's
size, the exact gelu four, rope a rotated copy of q and k (none where the NumPy program
rotates them in place). Linear attention holds the
features of q and k, [v, 1], the numerator/normalizer rows and (causal) one chunk's
[B, H, chunk, chunk] block: O(T), never T x T.
"""

from __future__ import annotations

from dataclasses import dataclass

from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import LINEAR_ATTENTION_CHUNK, numel

VIEWS = frozenset({"transpose", "expand", "index"})
TEMPORARY = frozenset({"layer_norm", "add_layer_norm", "rms_norm", "softmax"})
DTYPE_BYTES = {"int": 8, "bool": 1}


@dataclass(frozen=True)
class MemoryReport:
    naive: int          # bytes: every tensor kept
    peak: int           # bytes: most alive at once, workspaces included
    workspace: int      # bytes: the largest single op workspace
    resident: int = 0   # bytes: most alive at once between ops (tensors only, no workspace)


def _bytes(node: Node, env: dict[str, int], itemsize: int) -> int:
    size = int(numel(node.type.shape).evaluate(env))
    return size * DTYPE_BYTES.get(node.type.dtype, itemsize)


def workspace_bytes(node: Node, graph: Graph, env: dict[str, int], backend: str,
                    itemsize: int, rope_in_place: bool = False) -> int:
    """Transient bytes an op's kernel allocates beyond its output while it runs
    (`rope_in_place`: the NumPy program rotates this attention's q and k where they are,
    see `memory_plan.program_rope_in_place`)."""
    if node.op in TEMPORARY or node.op in ("sigmoid", "silu"):
        return _bytes(node, env, itemsize)
    if node.op == "gelu":          # tanh form in place; the exact form's erf: a few temps
        return _bytes(node, env, itemsize) * (0 if node.attr("approximate") == "tanh" else 4)
    if node.op == "linear" and node.attr("activation") is not None:
        from attndsl.backends.numpy_kernels import ACTIVATION_BLOCK
        temps = {"relu": 0, "gelu_tanh": 1, "silu": 2}.get(node.attr("activation"), 4)
        return min(_bytes(node, env, itemsize), 2 * ACTIVATION_BLOCK * itemsize) * temps
    if node.op == "linear_attention":
        return _linear_attention_workspace(node, graph, env, itemsize)
    if node.op not in ("attention", "attention_weights"):
        return 0
    from attndsl.backends.codegen import block_sources
    from attndsl.backends.numpy_kernels import BLOCK, attention_choice, attention_costs
    q, k, v = (graph.nodes[i].type for i in node.inputs[:3])
    b, h, tq, d = (int(x.evaluate(env)) for x in q.shape)
    b = max(b, int(k.shape[0].evaluate(env)))
    hk, tk, dv = (int(k.shape[1].evaluate(env)), int(k.shape[2].evaluate(env)),
                  int(v.shape[3].evaluate(env)))
    attrs = node.attr_dict
    pattern, bias = attrs["pattern"], attrs.get("bias")
    terms = {t.kernel_attr()[0] for t in bias.terms} if bias else set()
    scores = b * h * tq * tk * itemsize
    explicit = attrs.get("score") == "additive" or bool(terms & {"relative", "tensor"})
    if node.op == "attention_weights":
        return scores
    if backend == "torch":
        if attrs.get("score") == "additive" or "relative" in terms:
            return 2 * scores                    # the explicit path: scores and probabilities
        from attndsl.passes.explain import torch_cpu_path
        path = torch_cpu_path(node, graph)
        band = pattern.band()
        if path == "split" or path == "band" and sum(band) - 1 <= tk // 2:
            return 2 * b * h * tq * dv * itemsize   # band/T5 split: SDPA's outputs, merged
        if terms:                                # per row block: scores, biased, probabilities
            return min(2 * scores, 3 * b * h * min(tq, BLOCK) * tk * itemsize)
        return 0 if pattern.is_full or pattern.is_causal else tq * tk
    supported = not explicit
    layout = block_sources(pattern)
    rotated = ((b * h * tq * d + b * hk * tk * d) * itemsize
               if attrs.get("rope") and not rope_in_place else 0)
    costs = attention_costs(b, h, hk, tq, tk, d, dv, layout, itemsize, not pattern.is_full,
                            supported)
    impl = attention_choice(attrs.get("impl", "auto"), b, h, hk, tq, tk, d, dv, itemsize,
                            layout, not pattern.is_full, supported)
    return costs[impl][1] + rotated + (scores if attrs.get("score") == "additive" else 0)


def peak_memory(graph: Graph, env: dict[str, int], backend: str = "numpy",
                itemsize: int = 4) -> MemoryReport:
    """Liveness over the emitted order for the sizes in `env` ({'B': 1, 'T': 1024})."""
    from attndsl.passes.memory_plan import program_rope_in_place
    in_place = program_rope_in_place(graph) if backend != "torch" else frozenset()
    order = graph.topological_order()
    last_use: dict[int, int] = {}
    for pos, nid in enumerate(order):
        for src in graph.nodes[nid].inputs:
            last_use[src] = pos
    outputs = set(graph.outputs.values())
    owner: dict[int, int] = {}            # node -> the node whose buffer it uses
    alive: dict[int, int] = {}            # buffer owner -> bytes
    holders: dict[int, set[int]] = {}     # buffer owner -> nodes still using it
    naive = peak = largest = resident = 0
    for pos, nid in enumerate(order):
        node = graph.nodes[nid]
        if node.op in ("input", "param"):
            continue
        size = _bytes(node, env, itemsize)
        base = owner.get(node.inputs[0]) if node.inputs else None
        view = base is not None and (node.op in VIEWS or (
            node.op == "reshape" and graph.nodes[node.inputs[0]].op != "transpose"))
        work = workspace_bytes(node, graph, env, backend, itemsize, nid in in_place)
        largest = max(largest, work)
        if view:
            owner[nid] = base
            holders[base].add(nid)
        else:
            owner[nid] = nid
            alive[nid] = size
            holders[nid] = {nid}
            naive += size
        held = sum(alive.values())
        peak, resident = max(peak, held + work), max(resident, held)
        for src in {*node.inputs, nid}:
            if src in owner and last_use.get(src, -1) <= pos and src not in outputs:
                buf = owner[src]
                holders[buf].discard(src)
                if not holders[buf]:
                    alive.pop(buf, None)
    return MemoryReport(naive, peak, largest, resident)


def _linear_attention_workspace(node: Node, graph: Graph, env: dict[str, int],
                                itemsize: int) -> int:
    q, k, v = (graph.nodes[i].type for i in node.inputs[:3])
    b, h, tq, d = (int(x.evaluate(env)) for x in q.shape)
    hk, tk, dv = (int(k.shape[1].evaluate(env)), int(k.shape[2].evaluate(env)),
                  int(v.shape[3].evaluate(env)))
    m = node.attr("feature_map").width(d)
    elements = b * (h * tq * m + hk * tk * m + hk * tk * (dv + 1) + h * tq * (dv + 1))
    if node.attr("causal"):
        elements += b * h * LINEAR_ATTENTION_CHUNK * LINEAR_ATTENTION_CHUNK
    return elements * itemsize
