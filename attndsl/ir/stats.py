"""Static cost analysis: parameters (total and per top-level block), FLOPs, activation memory.

All numbers are symbolic `Dim`s over the input dims (B, T, ...) and are evaluated for
concrete sizes with `Stats.evaluate`. FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph
from attndsl.ir.ops import OPS, numel

DTYPE_BYTES = {"float": 4, "int": 8, "bool": 1}


@dataclass(frozen=True)
class Stats:
    params: int
    params_by_block: dict[str, int]
    flops: Dim
    activation_bytes: Dim
    param_bytes: int

    def evaluate(self, env: dict[str, int]) -> dict[str, int]:
        """Concrete numbers for dims such as {'B': 1, 'T': 1024}."""
        return {"params": self.params, "flops": int(self.flops.evaluate(env)),
                "activation_bytes": int(self.activation_bytes.evaluate(env)),
                "param_bytes": self.param_bytes}


def unique_params(graph: Graph) -> dict[str, int]:
    """Parameter name -> element count (tied parameters appear once, under their name)."""
    return {name: int(numel(graph.nodes[nid].type.shape).as_int())
            for name, nid in graph.params.items()}


def block_of(name: str) -> str:
    """The top-level group of a parameter name: `layers.3.attn.q.weight` -> `layers`."""
    return name.split(".", 1)[0]


def compute_stats(graph: Graph) -> Stats:
    counts = unique_params(graph)
    by_block: dict[str, int] = defaultdict(int)
    for name, n in counts.items():
        by_block[block_of(name)] += n
    flops = Dim.of(0)
    act = Dim.of(0)
    for node in graph.nodes.values():
        op = OPS[node.op]
        if op.kind == "leaf" and node.op in ("param", "constant"):
            continue
        ins = [graph.nodes[i].type for i in node.inputs]
        flops = flops + op.flops(ins, node.type, node.attr_dict)
        if node.op not in ("reshape", "transpose", "expand"):  # views cost no memory
            act = act + numel(node.type.shape) * DTYPE_BYTES[node.type.dtype]
    total = sum(counts.values())
    return Stats(total, dict(by_block), flops, act, total * 4)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    if abs(n) >= 10**18:                  # beyond a float's comfort: the order of magnitude
        return f"~1e{len(str(int(abs(n)))) - 1}{unit}"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def human_bytes(n: float) -> str:
    for factor, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {suffix}"
    return f"{n:.0f} B"
