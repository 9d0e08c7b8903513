"""Predicted peak of one training step, for B, T and the float size given:

    weights + gradients + optimizer state             (1 or 2 moments per parameter)
    + every forward value the backward pass reads     (all non-leaf tensors: a slight
                                                       overestimate, views counted too)
    - the values inside the first k repeat iterations (checkpointed: only their inputs are
                                                       kept, they are recomputed) ...
    + the largest of those iterations                 (... one at a time, during backward)
"""

from __future__ import annotations

from attndsl.ir.graph import Graph
from attndsl.ir.ops import numel
from attndsl.ir.stats import compute_stats

MOMENTS = {"sgd": 1, "adam": 2, "adamw": 2, "radam": 2, "lion": 1, "sophia": 2}
LEAVES = frozenset({"input", "param", "constant"})


def training_peaks(graph: Graph, env: dict[str, int], optimizer: str, itemsize: int = 4
                   ) -> list[int]:
    """Predicted peak bytes of one training step with the first k repeat iterations
    checkpointed, for k = 0 .. number of iterations."""
    params = compute_stats(graph).params * itemsize
    fixed = params * (2 + MOMENTS.get(optimizer, 2))
    sizes = {nid: int(numel(node.type.shape).evaluate(env)) * (
        8 if node.type.dtype == "int" else 1 if node.type.dtype == "bool" else itemsize)
        for nid, node in graph.nodes.items() if node.op not in LEAVES}
    extra = graph.meta.get("segment_extra", {})
    layers = [tuple(r) for r in graph.meta.get("layers", ())]
    inside = [sum(b for nid, b in sizes.items()
                  if r[0] <= nid < r[1] or tuple(extra.get(nid, ())) == r) for r in layers]
    kept = sum(sizes.values())
    peaks = []
    for k in range(len(layers) + 1):
        saved = sum(inside[:k])
        peaks.append(fixed + kept - saved + (max(inside[:k]) if k else 0))
    return peaks
