"""Lower a Graph to readable Python source: one line per node, calling `op_<name>` kernels.

The same emitter serves every backend; a backend supplies its kernel module and says
which extra keyword arguments its kernels take (`training`, `device`/`fdtype`). The
emitted function is::

    def forward(p, inputs, ...):
        d_B, d_T = inputs["tokens"].shape               # symbolic dims bound from inputs
        t0 = inputs["tokens"]                           # int[B, T]
        t1 = p["wte.weight"]                            # float[50257, 768]
        t2 = op_embedding(t1, t0)                       # float[B, T, 768]
        ...

Intermediates are deleted after their last use, so peak memory follows liveness.
With `cached=True` the function also takes `cache` (a dict) and `past` (positions
already decoded): self-attention keys/values are appended to the cache and position
tables start at `past` — incremental decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, Node
from attndsl.ir.patterns import Pattern
from attndsl.passes.reverse_mode import SEED, VJP

SKIP_ATTRS = {"type", "name", "init", "std"}


@dataclass(frozen=True)
class EmitOptions:
    signature_extra: tuple[str, ...] = ()     # extra forward() parameters
    training_ops: frozenset[str] = frozenset()  # ops that get `training=training`
    context_ops: frozenset[str] = frozenset()   # ops that get `device=device, fdtype=fdtype`
    cached: bool = False
    segments: tuple[tuple[int, int], ...] = ()  # node-id ranges run under `checkpoint`
    folded: frozenset[int] = frozenset()          # computed by `fold(p)`, read from p
    out: frozenset[int] = frozenset()             # kernels called with out=o.get(nid)
    hooks: bool = False                           # call after(nid) after every node (debug)
    rope_in_place: frozenset[int] = frozenset()   # attentions that may rotate q, k in place


def dim_source(d: Dim) -> str:
    """Python source computing a dim from the bound symbols (`d_B`, `d_T`)."""
    n = d.as_int()
    if n is not None:
        return str(n)
    den = math.lcm(*(c.denominator for c in d.terms.values()))
    parts = []
    for mono, coef in sorted(d.terms.items()):
        c = coef * den
        factors = ([str(c.numerator)] if c != 1 else []) + [f"d_{s}" for s in mono]
        parts.append("*".join(factors) or "1")
    body = " + ".join(parts)
    if den != 1:
        return f"(({body}) // {den})"
    return body if len(parts) == 1 else f"({body})"


def dim_bindings(graph: Graph) -> dict[str, tuple[str, int]]:
    """Symbol -> (input name, axis) that defines it: the first input axis declared as exactly
    that symbol (`tokens: int[B, T]` binds B and T)."""
    out: dict[str, tuple[str, int]] = {}
    for in_name, nid in graph.inputs.items():
        for axis, d in enumerate(graph.nodes[nid].type.shape):
            for s in sorted(d.symbols()):
                if s not in out and d == Dim.symbol(s):
                    out[s] = (in_name, axis)
    return out


def attr_value(value: Any, env: dict[str, int]) -> Any:
    """An attribute as the kernel receives it: the value of `attr_source(value)` with the
    dims bound by `env` (dims as ints, patterns as source text or None for full, score
    biases and rope as the plain tuples of their `kernel_attr()`)."""
    if isinstance(value, Dim):
        return math.floor(value.evaluate(env))
    if isinstance(value, Pattern):
        return None if value.is_full else value.source()
    if hasattr(value, "kernel_attr"):  # score biases, rope: plain tuples
        return value.kernel_attr()
    if isinstance(value, tuple):
        return tuple(attr_value(v, env) for v in value)
    if isinstance(value, Fraction):
        return float(value)
    return value


def kernel_attrs(node: Node, env: dict[str, int]) -> dict[str, Any]:
    """The keyword arguments the emitted program passes to `op_<node.op>`: the attributes,
    plus `<name>_blocks` and `<name>_band` for each pattern attribute (`pattern_kwargs`)."""
    out = {k: attr_value(v, env) for k, v in node.attrs if k not in SKIP_ATTRS}
    out.update((f"{k}_{what}", src) for k, v in node.attrs if isinstance(v, Pattern)
               for what, src in pattern_kwargs(v))
    return out


def pattern_kwargs(pattern: Pattern) -> list[tuple[str, Any]]:
    """What kernels get besides a pattern's source: its block layout sources (`_blocks`)
    and, when it is a plain band, its (before, after) extent (`_band`)."""
    return [("blocks", block_sources(pattern)), ("band", pattern.band())]


def block_sources(pattern: Pattern) -> tuple[str, str] | None:
    """(full, empty) block-layout expressions of a pattern, None for the full pattern."""
    return None if pattern.is_full else (pattern.full_source(), pattern.empty_source())


def attr_source(value: Any) -> str:
    if isinstance(value, Dim):
        return dim_source(value)
    if isinstance(value, Pattern):
        return "None" if value.is_full else repr(value.source())
    if hasattr(value, "kernel_attr"):
        return repr(value.kernel_attr())
    if isinstance(value, tuple):
        inner = ", ".join(attr_source(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Fraction):
        return repr(float(value))
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


def _growing_nodes(graph: Graph, symbol: str) -> set[int]:
    """Nodes whose value depends on an input with the growing (decoded) dim `symbol`."""
    grow = {nid for nid in graph.inputs.values() if symbol in {
        s for d in graph.nodes[nid].type.shape for s in d.symbols()}}
    for nid in graph.topological_order():
        if any(i in grow for i in graph.nodes[nid].inputs):
            grow.add(nid)
    return grow


def decode_symbol(graph: Graph) -> str | None:
    """The sequence dim that grows during decoding: the last dim of the first int input."""
    for nid in graph.inputs.values():
        t = graph.nodes[nid].type
        if t.dtype == "int" and t.rank >= 1 and t.shape[-1].as_int() is None:
            syms = t.shape[-1].symbols()
            if len(syms) == 1:
                return next(iter(syms))
    return None


def emit_forward(graph: Graph, opts: EmitOptions, name: str = "forward") -> str:
    order = graph.topological_order()
    users = graph.users()
    last_use: dict[int, int] = {}
    for pos, nid in enumerate(order):
        for src in graph.nodes[nid].inputs:
            last_use[src] = pos
    outputs = set(graph.outputs.values())
    params = ["p", "inputs", *opts.signature_extra]
    if opts.cached:
        params += ["cache", "past"]
    lines = [f"def {name}({', '.join(params)}):"]
    read = fold_outputs(graph, opts.folded, users)
    if read:                              # called with bare parameters: fold them here
        lines += [f"    if {fold_key(read[0])!r} not in p:", "        p = {**p, **fold(p)}"]
    for s, (in_name, axis) in dim_bindings(graph).items():
        lines.append(f"    d_{s} = inputs[{in_name!r}].shape[{axis}]")
    sym = decode_symbol(graph) if opts.cached else None
    growing = _growing_nodes(graph, sym) if sym else set()
    position = {nid: pos for pos, nid in enumerate(order)}
    segment_of = {nid: seg for seg in opts.segments for nid in order if seg[0] <= nid < seg[1]}
    for nid, seg in graph.meta.get("segment_extra", {}).items():   # nodes added by passes
        if tuple(seg) in opts.segments and nid in position:
            segment_of[nid] = tuple(seg)
    done: set[tuple[int, int]] = set()
    skip = opts.folded - set(read)        # only feed other folded values: inside fold(p)
    groups = vjp_groups(graph)            # reverse mode (`passes/reverse_mode.py`)
    keeps = kept_attentions(graph, groups)

    def free(nids: list[int], upto: int) -> None:
        dead = [n for n in dict.fromkeys(nids) if last_use.get(n, -1) <= upto and n not in outputs]
        if dead:
            lines.append("    del " + ", ".join(f"t{d}" for d in dead))

    for pos, nid in enumerate(order):
        node = graph.nodes[nid]
        if nid in skip:
            continue
        seg = segment_of.get(nid)
        if node.op == VJP:
            lines += _vjp_lines(graph, groups[nid], opts, keeps) if nid in groups else []
            free([*node.inputs] + ([nid] if not users[nid] else []), pos)
        elif nid in keeps:                # may keep (probabilities, rotated q, k) for its VJP
            call = _call(node, nid, opts, sym, growing, kernel="attention_keep")
            lines.append(f"    t{nid}, s{nid} = {call}  # {node.type}")
            free([*node.inputs], pos)
        elif seg is None:
            lines.append(f"    t{nid} = {_call(node, nid, opts, sym, growing)}  # {node.type}")
            free([*node.inputs] + ([nid] if not users[nid] else []), pos)
            if opts.hooks:
                lines.append(f"    after({nid})")
        elif seg not in done:
            done.add(seg)
            members = [n for n in order if segment_of.get(n) == seg and n not in skip]
            lines += _segment(graph, members, users, outputs, opts, sym, growing)
            free([i for m in members for i in graph.nodes[m].inputs if segment_of.get(i) != seg],
                 position[members[-1]])
    result = ", ".join(f"{k!r}: t{v}" for k, v in graph.outputs.items())
    lines.append(f"    return {{{result}}}")
    return "\n".join(lines) + "\n"


def _segment(graph: Graph, members: list[int], users: dict[int, list[int]], outputs: set[int],
             opts: EmitOptions, sym: str | None, growing: set[int]) -> list[str]:
    """A nested function for one repeat iteration, run under activation checkpointing while
    training (its intermediates are recomputed in the backward pass)."""
    inside = set(members)
    live_in = list(dict.fromkeys(i for m in members for i in graph.nodes[m].inputs
                                 if i not in inside))
    live_out = [m for m in members if m in outputs or any(u not in inside for u in users[m])]
    name = f"layer_{members[0]}"
    args = ", ".join(f"t{i}" for i in live_in)
    outs = ", ".join(f"t{o}" for o in live_out) + ("," if len(live_out) == 1 else "")
    lines = [f"    def {name}({args}):"]
    for m in members:
        node = graph.nodes[m]
        lines.append(f"        t{m} = {_call(node, m, opts, sym, growing)}  # {node.type}")
    lines.append(f"        return ({outs})")
    lines.append(f"    ({outs}) = checkpoint({name}, {args}, use_reentrant=False) if training "
                 f"else {name}({args})")
    return lines


def folded_nodes(graph: Graph, opts: EmitOptions) -> frozenset[int]:
    """Computations on parameters alone (the weight concatenations of projection fusion,
    a transposed or reshaped weight): computed once per weight version by `fold(p)`
    instead of on every call. Never dropout or anything else that depends on the mode."""
    out: set[int] = set()
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        if (node.inputs and node.op not in opts.training_ops and node.op not in opts.context_ops
                and all(graph.nodes[i].op == "param" or i in out for i in node.inputs)
                and all(d.as_int() is not None for d in node.type.shape)):
            out.add(nid)
    return frozenset(out)


def fold_outputs(graph: Graph, folded: frozenset[int], users: dict[int, list[int]]
                 ) -> list[int]:
    """The folded nodes the forward reads (a user outside the fold, or an output)."""
    outputs = set(graph.outputs.values())
    return [n for n in sorted(folded)
            if n in outputs or any(u not in folded for u in users[n])]


def fold_key(nid: int) -> str:
    """Where a folded value lives in the parameter dict (no parameter name has a ':')."""
    return f"fold:{nid}"


def emit_fold(graph: Graph, opts: EmitOptions) -> str:
    """`fold(p)`: the folded nodes that the forward reads, from the parameters `p`."""
    users = graph.users()
    lines = ["def fold(p):"]
    needed = [n for n in graph.topological_order() if n in opts.folded or (
        graph.nodes[n].op == "param" and any(u in opts.folded for u in users[n]))]
    for nid in needed:
        node = graph.nodes[nid]
        inline = replace(opts, folded=frozenset())
        lines.append(f"    t{nid} = {_call(node, nid, inline, None, set())}")
    read = fold_outputs(graph, opts.folded, users)
    lines.append("    return {" + ", ".join(f"{fold_key(n)!r}: t{n}" for n in read) + "}")
    return "\n".join(lines) + "\n"


def _kwargs(node: Node, sym: str | None) -> list[str]:
    """`name=source` of each attribute the kernel takes (what `kernel_attrs` evaluates)."""
    attrs = dict(node.attrs)
    if sym and node.op in ("arange", "sinusoidal") and sym in attrs["n"].symbols():
        attrs["offset"] = _Raw("past")
    kwargs = [f"{k}={attr_source(v) if not isinstance(v, _Raw) else v.text}"
              for k, v in sorted(attrs.items()) if k not in SKIP_ATTRS]
    return kwargs + [f"{k}_{what}={src!r}" for k, v in sorted(attrs.items())
                     if isinstance(v, Pattern) for what, src in pattern_kwargs(v)]


def _call(node: Node, nid: int, opts: EmitOptions, sym: str | None, growing: set[int],
          kernel: str | None = None) -> str:
    if nid in opts.folded:
        return f"p[{fold_key(nid)!r}]"
    if node.op == "input":
        return f"inputs[{node.attr('name')!r}]"
    if node.op == "param":
        return f"p[{node.attr('name')!r}]"
    if node.op == SEED:
        return f"seed({node.attr('name')!r}, t{node.inputs[0]})"
    args = [f"t{i}" for i in node.inputs]
    kwargs = _kwargs(node, sym)
    if node.op in opts.training_ops:
        kwargs.append("training=training")
    if nid in opts.out:
        kwargs.append(f"out=o.get({nid})")
    if nid in opts.rope_in_place:
        kwargs.append("rope_in_place=True")
    if node.op in opts.context_ops:
        kwargs += ["device=device", "fdtype=fdtype"]
    if opts.cached and node.op in ("attention", "linear_attention") and node.inputs[1] in growing:
        # self-attention while decoding: attend over cached keys/values plus the new ones
        # (linear attention: update its recurrent state)
        return f"op_{node.op}_cached(cache, {nid}, {', '.join(args + kwargs)})"
    return f"{kernel or 'op_' + node.op}({', '.join(args + kwargs)})"


def vjp_groups(graph: Graph) -> dict[int, list[int]]:
    """The `vjp` nodes of one forward node (same inputs), keyed by the first emitted (the
    lowest id: they are ready together, and the emitted order takes the lowest ready id
    first): one rule call gives all their cotangents."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for nid in sorted(graph.nodes):
        if graph.nodes[nid].op == VJP:
            groups.setdefault(graph.nodes[nid].inputs, []).append(nid)
    return {members[0]: members for members in groups.values()}


def kept_attentions(graph: Graph, groups: dict[int, list[int]]) -> set[int]:
    """Attentions whose backward runs here: their forward may keep its probabilities."""
    return {graph.nodes[m].inputs[1] for m in groups
            if graph.nodes[graph.nodes[m].inputs[1]].op == "attention"}


def _vjp_lines(graph: Graph, members: list[int], opts: EmitOptions, keeps: set[int]
               ) -> list[str]:
    """One call of the forward op's rule, `vjp(op, g, out, ins, attrs, wanted)`, unpacked
    into the cotangents of the inputs the graph uses."""
    cot, fwd, *ins = graph.nodes[members[0]].inputs
    f = graph.nodes[fwd]
    kw = _kwargs(f, None) + (["training=training"] if f.op in opts.training_ops else [])
    kw += [f"saved=s{fwd}"] if fwd in keeps else []
    tup = "(" + ", ".join(f"t{i}" for i in ins) + ("," if len(ins) == 1 else "") + ")"
    index = tuple(graph.nodes[m].attr("index") for m in members)
    names = ", ".join(f"t{m}" for m in members) + ("," if len(members) == 1 else "")
    wrt = ", ".join(f"t{ins[i]}" for i in index)
    return [f"    {names} = vjp({f.op!r}, t{cot}, t{fwd}, {tup}, dict({', '.join(kw)}), "
            f"{index!r})  # d/d {wrt}"] + ([f"    del s{fwd}"] if fwd in keeps else [])


@dataclass(frozen=True)
class _Raw:
    text: str


def cached_kernel_names(graph: Graph) -> list[str]:
    """The decoding-step kernels (`op_<op>_cached`) of the self-attentions a graph has."""
    ops = {node.op for node in graph.nodes.values()}
    return ["op_attention_cached"] + (["op_linear_attention_cached"]
                                      if "linear_attention" in ops else [])


def kernel_names(graph: Graph) -> list[str]:
    """The kernels a graph needs, in first-use order."""
    seen: dict[str, None] = {}
    for node in graph.nodes.values():
        if node.op not in ("input", "param", SEED, VJP):
            seen[f"op_{node.op}"] = None
    if kept_attentions(graph, vjp_groups(graph)):
        seen["attention_keep"] = None
    return list(seen)
