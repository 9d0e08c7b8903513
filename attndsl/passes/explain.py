"""`attndsl compile --explain`: which implementation each attention gets, and why.

An analysis, not a rewrite. The choice mirrors the kernels' own dispatch
(`backends/*_kernels.py: op_attention`), so the text states what will actually run.
Attentions that are the same (spec line, variant, shapes) are reported once with their
count: a `repeat` of 12 identical layers is one entry "x12".
"""

from __future__ import annotations

from collections import Counter

from attndsl.ir.graph import Graph, Node
from attndsl.ir.ops import numel


def variant(node: Node, graph: Graph) -> str:
    """A one-line description: heads, score, bias, rope, pattern, padding."""
    q, k = (graph.nodes[i].type for i in node.inputs[:2])
    attrs = node.attr_dict
    heads = f"{q.shape[1]} heads"
    if k.shape[1] != q.shape[1]:
        kind = "multi-query" if k.shape[1] == 1 else "grouped-query"
        heads = f"{q.shape[1]} query / {k.shape[1]} kv heads ({kind})"
    parts = [heads, f"score={attrs.get('score', 'scaled')}", f"pattern={attrs['pattern']}"]
    if attrs.get("bias"):
        parts.append(f"bias={attrs['bias']}")
    if attrs.get("rope") is not None:
        parts.append(str(attrs["rope"]))
    if "key_padding" in attrs.get("extras", ()):
        parts.append("key padding")
    return ", ".join(parts)


def torch_cpu_path(node: Node, graph: Graph) -> str | None:
    """The CPU flash path torch's `op_attention` takes for this attention at inference, as
    far as the graph tells: 'split' (one T5 bias, full or causal pattern), 'band' (a band
    pattern with ALiBi/T5 biases at most; whether it is narrow enough is checked per call)
    or None. Both need equal query/key lengths and heads, one head size, no key padding."""
    attrs = node.attr_dict
    pattern, bias = attrs["pattern"], attrs.get("bias")
    terms = [t.kernel_attr()[0] for t in bias.terms] if bias else []
    q, k, v = (graph.nodes[i].type for i in node.inputs[:3])
    if ("key_padding" in attrs.get("extras", ()) or attrs.get("score") == "additive"
            or q.shape[1] != k.shape[1] or q.shape[3] != v.shape[3] or q.shape[2] != k.shape[2]
            or attrs.get("impl", "auto") != "auto"):
        return None
    if terms == ["t5"] and (pattern.is_full or pattern.is_causal):
        return "split"
    band = pattern.band()
    if band is not None and None not in band and set(terms) <= {"alibi", "t5"}:
        return "band"
    return None


def choose(node: Node, graph: Graph, fused: bool) -> tuple[str, str]:
    """(implementation, reason) for one attention node on a backend with (`fused`) or
    without a fused scaled-dot-product attention kernel (its `Backend.fused_attention`)."""
    attrs = node.attr_dict
    pattern, bias, score = attrs["pattern"], attrs.get("bias"), attrs.get("score", "scaled")
    padded = "key_padding" in attrs.get("extras", ())
    terms = [t.kernel_attr()[0] for t in bias.terms] if bias else []
    blocked = ("blocked: query tiles over the live key blocks of the pattern's layout, or "
               "SDPA/dense, whichever the cost model prices lower per call")
    if fused and (score == "additive" or "relative" in terms):
        return ("explicit softmax(scores)V",
                f"{'additive scores' if score == 'additive' else 'the relative-key term'} "
                "cannot be expressed as an SDPA mask; the [B, H, Tq, Tk] scores are built")
    if fused and terms == ["alibi"] and pattern.is_causal and not padded:
        return ("SDPA is_causal=True with ALiBi as one extra q/k feature",
                "for keys j <= i, -m|i - j| = m j - m i and m i is constant in a row, so "
                "q' = [q, m/s], k' = [k, j] gives the same softmax on the fused causal kernel "
                "(a KV-cache step: the same with one query); from T = 1536 in float32 on "
                "the CPU, heads whose keys beyond a window provably weigh below float32's "
                "smallest normal (a bound from the query and key norms) run as bands over "
                "that window (their subnormal weights slow the fused kernel's GEMMs)")
    path = torch_cpu_path(node, graph) if fused else None
    if path == "split":
        return ("T5 split (CPU inference), else explicit softmax per block of query rows",
                "at inference T5's bucket is constant past some distance n, so keys n or more "
                "away are plain causal SDPA over shifted q/k (a constant bias per head) and "
                "only a band of nearer keys gets the bucket values (query tiles over key "
                "windows in SDPA's CPU kernel), merged by log-sum-exp; the band must be at "
                "most half the sequence. While training (SDPA's log-sum-exp carries no "
                "gradient) and on CUDA, the bias is added per 128-row block")
    if path == "band":
        band = pattern.band()
        return ("band: query tiles over key windows in SDPA's CPU kernel (else blocked)",
                f"pattern {pattern} is the band {band[0] - 1} keys back to {band[1] - 1} "
                "ahead: tiles of 64 queries read strided windows of k and v, all in one SDPA "
                "call with one float mask (bias inside the band, -inf outside); used while "
                "the band is at most half the sequence, without dropout or a trainable T5 "
                "table, on the CPU; otherwise the blocked kernel below")
    if fused and not (pattern.is_full or pattern.is_causal) and "tensor" not in terms:
        return "blocked or SDPA with a mask (cost model)", blocked
    if fused:
        if terms:
            return ("explicit softmax per block of query rows",
                    "the bias (and pattern) is evaluated per 128-row block over its live keys "
                    "and added to that block's scores; no [H, Tq, Tk] tensor is materialized")
        if padded:
            return ("SDPA with a boolean mask",
                    "key padding needs a per-batch mask; fully masked rows are zeroed")
        if pattern.is_full:
            return "SDPA, no mask", "every query sees every key: the fused kernel needs no mask"
        if pattern.is_causal:
            return ("SDPA is_causal=True",
                    "plain causal pattern with equal query/key lengths; with a KV cache "
                    "(fewer queries than keys) a bottom-right-aligned boolean mask is used")
        return ("SDPA with a boolean mask",
                f"pattern {pattern} is not expressible as is_causal; the mask is built once "
                "per (pattern, Tq, Tk) from the pattern expression (16 most recent kept)")
    how = ["dense scores in one [B, H, Tq, Tk] buffer, softmax in place"]
    if score == "additive":
        how = ["additive scores computed per block of query rows into one [B, H, Tq, Tk] "
               "buffer, softmax in place"]
    if {"alibi", "t5"} & set(terms):
        how.append("ALiBi/T5 biases added in place through a strided Toeplitz view of one "
                   "(H, Tq + Tk - 1) table")
    if "relative" in terms:
        how.append("the relative-key term gathered per block of query rows")
    if not pattern.is_full or padded:
        how.append(f"mask from {'key padding and ' if padded else ''}pattern {pattern}, "
                   "cached per (pattern, Tq, Tk)")
    if score != "additive" and not {"relative", "tensor"} & set(terms):
        return "dense, tiled or sparse (cost model)", (
            "per call, the cheapest of: " + "; ".join(how) + " | tiled: query tiles over the "
            "span of live key blocks | sparse: query tiles over gathered live key blocks")
    return "dense softmax(QK^T)V", "; ".join(how)


def costs_text(node: Node, graph: Graph, backend: str, env: dict[str, int]) -> list[str]:
    """The pattern's density and every candidate's estimated time and extra memory at the
    sizes in `env`, with the one the kernel will pick (the kernels' own cost model)."""
    from attndsl.backends.codegen import block_sources
    from attndsl.backends.numpy_kernels import (
        BLOCK,
        _live_blocks,
        attention_choice,
        attention_costs,
        blocked_supported,
    )
    q, k, v = (graph.nodes[i].type for i in node.inputs[:3])
    try:
        b, h, tq, d = (int(x.evaluate(env)) for x in q.shape)
        hk, tk, dv = int(k.shape[1].evaluate(env)), int(k.shape[2].evaluate(env)), int(
            v.shape[3].evaluate(env))
    except (KeyError, ZeroDivisionError):
        return []
    b = max(b, int(k.shape[0].evaluate(env)))
    attrs = node.attr_dict
    pattern, layout = attrs["pattern"], block_sources(attrs["pattern"])
    bias = attrs["bias"].kernel_attr() if attrs.get("bias") else ()
    supported = blocked_supported(attrs.get("score", "scaled"), bias, attrs.get("extras", ()))
    live = _live_blocks(layout, tq, tk, BLOCK)
    sizes = ", ".join(f"{s}={n}" for s, n in env.items())
    lines = [f"      at {sizes}: live {BLOCK}x{BLOCK} blocks {int(live.sum())}/{live.size} "
             f"({100 * live.mean():.1f}%)"]
    costs = attention_costs(b, h, hk, tq, tk, d, dv, layout, 4, not pattern.is_full, supported)
    pick = attention_choice(attrs.get("impl", "auto"), b, h, hk, tq, tk, d, dv, 4, layout,
                            not pattern.is_full, supported)
    if backend == "torch" and pick != "dense" and attrs.get("impl", "auto") == "auto" and (
            pattern.is_full or pattern.is_causal):
        pick = "dense"                                    # SDPA's fused full/causal kernels
    for name, (flops, peak, seconds) in costs.items():
        mark = "  <- chosen" if name == pick else ""
        lines.append(f"      {name:<7} ~{seconds * 1e3:9.1f} ms  {flops / 1e9:9.2f} GFLOP  "
                     f"+{peak / 2**20:9.1f} MiB{mark}")
    if not supported:
        lines.append("      (tiled/sparse kernels do not implement this variant)")
    if backend == "torch":
        lines.append("      (torch: 'dense' runs SDPA, faster than this NumPy-model estimate)")
    return lines


def explain(graph: Graph, backend: str, env: dict[str, int] | None = None) -> str:
    """Per distinct attention: spec line, repeat count, variant, implementation and why; with
    sizes `env` ({'B': 1, 'T': 4096}) also the candidates' estimated costs and the choice."""
    from attndsl.backends import get_backend
    fused = get_backend(backend, require_available=False).fused_attention
    lines = [f"attention implementations on the {backend} backend"
             + (" (estimates for the 2-core reference machine, float32):" if env else ":")]
    entries: Counter[tuple[str, str, str, str, int]] = Counter()
    for nid in graph.topological_order():
        node = graph.nodes[nid]
        if node.op not in ("attention", "attention_weights"):
            continue
        q, k = (graph.nodes[i].type for i in node.inputs[:2])
        where = f"{node.span!r}" if node.span else f"node {nid}"
        what = variant(node, graph)
        if node.op == "attention_weights":
            impl, why = ("explicit probabilities", "weights= returns the [B, H, Tq, Tk] map")
        else:
            impl, why = choose(node, graph, fused)
        forced = node.attr("impl", "auto")
        if forced != "auto":
            impl = f"{impl} (attention={forced!r})"
        scores = numel(q.shape[:3]) * k.shape[2]
        key = (where, f"{what}; q {q}, k {k}", impl, f"{why}; score matrix {scores} elements "
               "per call", nid)
        if not any(e[:4] == key[:4] for e in entries):
            entries[key] += 1
        else:
            entries[next(e for e in entries if e[:4] == key[:4])] += 1
    for (where, what, impl, why, nid), count in entries.items():
        times = f" (x{count})" if count > 1 else ""
        lines.append(f"  {where}{times}: {what} -> {impl}")
        lines.append(f"      why: {why}")
        if env and graph.nodes[nid].op == "attention":
            lines += costs_text(graph.nodes[nid], graph, backend, env)
    if len(lines) == 1:
        lines.append("  (no attention nodes)")
    return "\n".join(lines)
