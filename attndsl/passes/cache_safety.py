"""Cache safety: may incremental decoding (`forward_cached`) run this graph?

An analysis, not a rewrite. The cached program feeds only the new positions of the decoded
sequence dim (the symbol `codegen.decode_symbol` finds), offsets position tables by `past`
and lets `attention` nodes append keys/values to a cache. That computes the full forward's
values at the new positions only if every node is *position-wise* along that dim: its value
at position t depends on inputs at t alone (elementwise ops, projections over features,
embeddings), except attention nodes that read earlier positions through the cache.

The analysis tracks, for every node, the axis that indexes decode positions ("time axis")
or None (the value does not depend on them), and rejects — naming the node and why — any
node that mixes positions: a matmul, linear, norm, softmax, reduction, concat or slice along
the time axis, a reshape that merges it, a non-causal self-attention (earlier positions
would see later keys), a growing key-padding or bias tensor, and every op it does not know.

Requires: a valid graph. Guarantees: `safe=True` only if the cached program's outputs at
the new positions equal the full forward's.
"""

from __future__ import annotations

from dataclasses import dataclass

from attndsl.errors import Span
from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import numel

ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "less", "greater", "equal",
    "where", "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "gelu", "silu",
    "cast", "dropout", "layer_drop", "sin", "cos", "softplus", "sign", "clip", "logical_and",
    "logical_or", "logical_not"})
FEATURE_OPS = frozenset({"linear", "linear_int8", "layer_norm", "add_layer_norm",  # last axis
                         "rms_norm", "batch_norm"})    # whole (batch_norm: running statistics)
REDUCTIONS = frozenset({"sum", "mean", "max", "min"})


@dataclass(frozen=True)
class CacheVerdict:
    """Whether cached decoding is exact; otherwise the first offending node and why."""

    safe: bool
    reason: str = ""
    node: int | None = None
    span: Span | None = None

    def describe(self) -> str:
        where = f"{self.span!r}: " if self.span else ""
        return f"{where}{self.reason}"


class _Unsafe(Exception):
    pass


def cache_safety(graph: Graph, symbol: str | None, output: str) -> CacheVerdict:
    """The verdict for decoding `output` along `symbol` (None: no decodable dim)."""
    if symbol is None:
        return CacheVerdict(False, "the spec has no int input with a sequence dim to decode")
    axes: dict[int, int | None] = {}
    live = graph.ancestors([graph.outputs[output]])
    for nid in graph.topological_order():
        if nid not in live:
            continue
        node = graph.nodes[nid]
        try:
            axes[nid] = _time_axis(graph, node, [axes[i] for i in node.inputs], symbol)
        except _Unsafe as e:
            return CacheVerdict(False, str(e), nid, node.span)
    out = graph.outputs[output]
    if axes[out] != 1:
        return CacheVerdict(False, f"output '{output}' does not have positions on axis 1",
                            out, graph.nodes[out].span)
    return CacheVerdict(True)


def _is_symbol(d: Dim, symbol: str) -> bool:
    return d == Dim.symbol(symbol)


def _time_axis(graph: Graph, node: Node, ins: list[int | None], symbol: str) -> int | None:
    """The node's time axis given its inputs' (raises _Unsafe with the reason)."""
    op, rank = node.op, node.type.rank
    types = [graph.nodes[i].type for i in node.inputs]
    if op in ("param", "constant"):
        return None
    if op == "input":
        hits = [a for a, d in enumerate(node.type.shape) if symbol in d.symbols()]
        if not hits:
            return None
        if len(hits) > 1 or not _is_symbol(node.type.shape[hits[0]], symbol):
            raise _Unsafe(f"input '{node.attr('name')}' uses {symbol} other than as one axis")
        return hits[0]
    if op in ("arange", "sinusoidal"):
        n = node.attr("n")
        if symbol not in n.symbols():
            return None
        if not _is_symbol(n, symbol):
            raise _Unsafe(f"{op}({n}) is not a table of the decoded positions")
        return 0
    if op in ELEMENTWISE:
        return _aligned(op, rank, ins, types)
    if op in FEATURE_OPS:
        if ins[0] is not None and ins[0] == types[0].rank - 1:
            raise _Unsafe(f"{op} mixes positions (the time axis is its feature axis)")
        return ins[0]
    if op == "embedding":
        return ins[1]
    if op == "softmax":
        if ins[0] is not None and ins[0] == node.attr("axis") % rank:
            raise _Unsafe("softmax over the time axis mixes positions")
        return ins[0]
    if op in REDUCTIONS:
        axes = {a % types[0].rank for a in node.attr("axes")}
        if ins[0] is None:
            return None
        if ins[0] in axes:
            raise _Unsafe(f"{op} over the time axis mixes positions")
        return ins[0] if node.attr("keepdims") else ins[0] - sum(a < ins[0] for a in axes)
    if op == "transpose":
        return None if ins[0] is None else list(node.attr("perm")).index(ins[0])
    if op == "reshape":
        return _reshape_axis(types[0].shape, node.type.shape, ins[0])
    if op == "expand":
        shape = node.attr("shape")
        hits = [a for a, d in enumerate(shape) if symbol in Dim.of(d).symbols()]
        if ins[0] is not None:
            return ins[0] + rank - types[0].rank
        if hits and (len(hits) > 1 or not _is_symbol(Dim.of(shape[hits[0]]), symbol)):
            raise _Unsafe(f"expand to {symbol} other than as one axis")
        return hits[0] if hits else None
    if op == "concat":
        axis = node.attr("axis") % rank
        if any(a == axis for a in ins if a is not None):
            raise _Unsafe("concat along the time axis mixes positions")
        return _aligned(op, rank, ins, types)
    if op == "index":
        return _index_axis(node.attr("index"), ins[0])
    if op == "matmul":
        return _matmul_axis(types, ins, rank)
    if op == "attention":
        return _attention_axis(node, ins)
    if op == "linear_attention":
        return _linear_attention_axis(node, ins)
    raise _Unsafe(f"{op} is not known to be position-wise")


def _aligned(op: str, rank: int, ins: list[int | None], types: list) -> int | None:
    """Broadcasting ops: every input's time axis must land on the same output axis."""
    out = {a + rank - t.rank for a, t in zip(ins, types) if a is not None}
    if len(out) > 1:
        raise _Unsafe(f"{op} combines different positions (time axes {sorted(out)})")
    return out.pop() if out else None


def _reshape_axis(before: tuple[Dim, ...], after: tuple[Dim, ...], axis: int | None
                  ) -> int | None:
    if axis is None:
        return None
    prefix = numel(before[:axis])
    for j, d in enumerate(after):
        if d == before[axis] and numel(after[:j]) == prefix:
            return j
    raise _Unsafe("reshape merges the time axis with others")


def _index_axis(index: tuple, axis: int | None) -> int | None:
    if axis is None:
        return None
    if axis < len(index):
        ix = index[axis]
        whole = isinstance(ix, tuple) and ix[0] in (None, 0) and ix[1] is None
        if not whole:
            raise _Unsafe("indexing or slicing the time axis selects positions")
    return axis - sum(isinstance(ix, int) for ix in index[:axis])


def _matmul_axis(types: list, ins: list[int | None], rank: int) -> int | None:
    a, b = types
    ta, tb = ins
    if ta is not None and ta == a.rank - 1:
        raise _Unsafe("matmul contracts the time axis of its left operand (mixes positions)")
    if tb is not None and (b.rank == 1 or tb == b.rank - 2):
        raise _Unsafe("matmul contracts the time axis of its right operand (mixes positions)")
    out = set()
    if ta is not None:
        out.add(rank - 2 if ta == a.rank - 2 else ta + rank - a.rank)
    if tb is not None:
        out.add(rank - 1 if tb == b.rank - 1 else tb + rank - b.rank)
    if len(out) > 1:
        raise _Unsafe("matmul pairs every position with every other (e.g. q @ k.T written out "
                      "by hand)")
    return out.pop() if out else None


def _linear_attention_axis(node: Node, ins: list[int | None]) -> int | None:
    """As attention; growing keys need the causal form (its recurrent state)."""
    tq, tk, tv = ins[:3]
    if tq not in (None, 2) or (tk is None) != (tv is None) or tk not in (None, 2):
        raise _Unsafe("linear attention operands do not carry positions on axis 2 alike")
    if tk is not None and not node.attr("causal"):
        raise _Unsafe("non-causal linear self-attention lets earlier positions see later keys")
    if any(a is not None for a in ins[3:]):
        raise _Unsafe("linear attention reads a key-padding tensor that grows with the "
                      "sequence")
    return tq


def _attention_axis(node: Node, ins: list[int | None]) -> int | None:
    """q must carry positions on axis 2; k and v either do not depend on them (cross-
    attention) or grow on axis 2 under a causal-implied pattern (the cached kernel); extra
    tensors (key padding, bias tensors) must not grow; parameter tables are fine."""
    tq, tk, tv = ins[:3]
    if tq not in (None, 2):
        raise _Unsafe("attention queries do not carry positions on axis 2")
    if (tk is None) != (tv is None) or tk not in (None, 2) or tv not in (None, 2):
        raise _Unsafe("attention keys and values grow differently")
    if tk is not None and not node.attr("pattern").causal_implied:
        raise _Unsafe(f"self-attention with pattern {node.attr('pattern')} lets earlier "
                      "positions see later keys")
    if any(a is not None for a in ins[3:]):
        raise _Unsafe("attention reads a key-padding or bias tensor that grows with the "
                      "sequence")
    return tq
