"""Attention built-ins: `attention`, `sdpa`, and the values their keywords take.

Every variant stays one `attention` node whose attributes declare it (FlexAttention's
`mask_mod`/`score_mod`, checked at compile time):
- `pattern=` which pairs may attend (`attndsl.ir.patterns`);
- `score=` `dot` | `scaled` (default) | `additive` (Bahdanau) | `bilinear` (Luong general);
- `bias=` score biases composed with `+` (`alibi()`, `t5_bias(...)`, `relative(...)`, a
  tensor; `attndsl.ir.biases`);
- `rope=rope(...)` rotary positions on queries and keys (`attndsl.ir.rope`);
- `kv_heads=` grouped-query attention (K/V projections with fewer heads);
- `weights="name"` the probabilities as an optional model output.

`kernel=elu_plus_one | favor(m, seed)` makes it a `linear_attention` node instead: kernelized
attention (`attndsl.ir.kernels`), full or causal, without the softmax-only keywords.
`pattern=lsh(...)` makes it an `lsh_attention` node: Reformer's shared-QK hashed attention
(`attndsl.ir.lsh`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from attndsl.errors import ArgumentError, DefinitionError, ShapeError, Span, TypeError_
from attndsl.frontend.builtins import (
    BUILTINS,
    builtin,
    choice,
    integer,
    linear_layer,
    merge_heads,
    number,
    split_heads,
    tensor,
)
from attndsl.frontend.values import Tensor, describe
from attndsl.ir import biases as bs
from attndsl.ir import kernels as kn
from attndsl.ir import patterns as pat
from attndsl.ir.lsh import LSH
from attndsl.ir.ops import attention_attrs
from attndsl.ir.rope import LAYOUTS, Rope, RopeScaling


@dataclass(frozen=True)
class Score:
    """A score function name as a value (`score=additive`)."""

    name: str

    def __str__(self) -> str:
        return self.name


SCORES = ("dot", "scaled", "additive", "bilinear")
for _name in SCORES:
    BUILTINS[_name] = Score(_name)


@dataclass(frozen=True)
class BoundTensorBias(bs.TensorBias):
    """A tensor used as a bias, as the frontend holds it (the IR keeps only `TensorBias`)."""

    value: Any = None


# -- argument checking ---------------------------------------------------------------------

def _pattern(value: Any, span: Span) -> pat.Pattern:
    if not isinstance(value, pat.Pattern):
        raise TypeError_(f"pattern must be an attention pattern (causal, full, window(n), ...), "
                         f"got {describe(value)}", span)
    return value


def _score(value: Any, span: Span) -> str:
    name = value.name if isinstance(value, Score) else value
    if name not in SCORES:
        raise ArgumentError(f"score must be one of {', '.join(SCORES)}, got {describe(value)}",
                            span)
    return name


def _bias_terms(value: Any, span: Span) -> tuple[bs.BiasTerm, ...]:
    if value is None:
        return ()
    if isinstance(value, bool):
        raise TypeError_("bias= takes a score bias (alibi(), t5_bias(...), relative(...) or a "
                         "tensor), not a boolean", span,
                         "projection biases are switched with proj_bias=true/false")
    if isinstance(value, Tensor):
        return (BoundTensorBias(value=value),)
    if isinstance(value, bs.Bias):
        return value.terms()
    raise TypeError_(f"bias must be a score bias (alibi(), t5_bias(...), relative(...)) or a "
                     f"tensor, got {describe(value)}", span)


def _rope(value: Any, head_dim: int, span: Span) -> Rope | None:
    if value is None:
        return None
    if not isinstance(value, Rope):
        raise TypeError_(f"rope must be rope(...), got {describe(value)}", span)
    dims = head_dim if value.dims is None else value.dims
    if dims % 2 or dims > head_dim or dims <= 0:
        raise ShapeError(f"rope dims must be even, positive and at most the head size "
                         f"{head_dim}, got {dims}", span)
    if value.scaling is not None and value.scaling.kind == "ntk" and dims <= 2:
        raise ShapeError(f"ntk scaling needs rope dims > 2 (theta * f^(dims / (dims - 2))), "
                         f"got {dims}", span)
    return replace(value, dims=dims)


def add_biases(left: Any, right: Any, span: Span) -> bs.Bias:
    """`a + b` where one side is a score bias: tensors join as tensor-bias terms."""
    terms = tuple(t for side in (left, right) for t in _bias_terms(side, span))
    return bs.BiasSum(terms)


# -- the attention node ---------------------------------------------------------------------

def attention_node(b: Any, span: Span, q: Tensor, k: Tensor, v: Tensor, pattern: Any,
                   scale: Any, key_padding: Any, dropout: Any, score: Any = "scaled",
                   bias: Any = None, rope: Any = None, weights: Any = None) -> Tensor:
    """One `attention` node on q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv]; opens
    the parameter scopes its score and learned biases need (call it inside a layer scope)."""
    hd = q.type.shape[-1].as_int()
    heads = q.type.shape[1].as_int()
    if hd is None or heads is None:
        raise ShapeError(f"attention needs fixed head counts and sizes, got q {q.type}", span)
    score = _score(score, span)
    scale_v = (1.0 / math.sqrt(hd) if score == "scaled" else 1.0) if scale is None else number(
        scale, span, "scale")
    drop = number(dropout, span, "dropout")
    if not 0.0 <= drop < 1.0:
        raise TypeError_(f"dropout must be in [0, 1), got {drop}", span)
    extras: list[str] = []
    inputs = [q, k, v]
    if key_padding is not None:
        inputs.append(tensor(b, key_padding, span, "key_padding", rank=2, dtype="bool"))
        extras.append("key_padding")
    terms: list[bs.BiasTerm] = []
    for i, term in enumerate(_bias_terms(bias, span)):
        if isinstance(term, BoundTensorBias):
            inputs.append(tensor(b, term.value, span, "bias", dtype="float"))
            term = bs.TensorBias()
        elif isinstance(term, bs.T5Bias):
            inputs.append(b.table_param(term.key, (term.buckets, heads), span))
        elif isinstance(term, bs.Relative):
            inputs.append(b.table_param(term.key, (2 * term.max_distance + 1, hd), span))
        if not isinstance(term, bs.ALiBi):
            extras.append(f"bias{i}")
        terms.append(term)
    if score in ("additive", "bilinear"):
        with b.in_scope([b.claim_name("score")]):
            if score == "additive":   # Bahdanau: v^T tanh(Wq q + Wk k), attention width = hd
                inputs += [b.param("wq", (hd, hd), "xavier", span),
                           b.param("wk", (hd, hd), "xavier", span),
                           b.param("v", (hd,), "normal", span)]
                extras += ["score_wq", "score_wk", "score_v"]
            else:                     # Luong general: q^T W k
                inputs.append(b.param("weight", (hd, hd), "xavier", span))
                extras.append("score_w")
    attrs = attention_attrs(_pattern(pattern, span), scale_v, drop, score,
                            bs.BiasAttr(tuple(terms)), _rope(rope, hd, span), tuple(extras))
    out = b.add("attention", inputs, attrs, span)
    if weights is not None:
        _expose_weights(b, span, weights, inputs, attrs)
    return out


def _softmax_free_operands(b: Any, span: Span, what: str, why: str, hint: str,
                           tensors: list[Tensor], scale: Any, key_padding: Any,
                           refused: dict[str, Any]) -> tuple[list[Tensor], float]:
    """Shared by the attentions without a score matrix (linear, LSH): refuse by name the
    keywords only softmax attention has, then (inputs with the key padding, scale)."""
    given = [name for name, value in refused.items()
             if value is not None and value != 0 and str(value) != "scaled"]
    if given:
        raise ArgumentError(f"{what} has no {', '.join(f'{n}=' for n in given)} ({why})",
                            span, hint)
    hd = tensors[0].type.shape[-1].as_int()
    scale_v = 1.0 / math.sqrt(hd) if scale is None else number(scale, span, "scale")
    if key_padding is not None:
        tensors = [*tensors, tensor(b, key_padding, span, "key_padding", rank=2, dtype="bool")]
    return tensors, scale_v


def linear_attention_node(b: Any, span: Span, q: Tensor, k: Tensor, v: Tensor, pattern: Any,
                          scale: Any, key_padding: Any, kernel: Any, **softmax_only: Any
                          ) -> Tensor:
    """A `linear_attention` node (kernel= given): pattern full or causal; the keywords that
    only softmax attention has are refused by name."""
    if not isinstance(kernel, kn.FeatureMap):
        raise TypeError_(f"kernel must be elu_plus_one or favor(m=..., seed=...), got "
                         f"{describe(kernel)}", span)
    inputs, scale_v = _softmax_free_operands(
        b, span, "kernel= attention", "linear attention has no score matrix to bias, rotate, "
        "drop or show", "remove it, or drop kernel= for softmax attention", [q, k, v], scale,
        key_padding, softmax_only)
    pattern = _pattern(pattern, span)
    if pattern not in (pat.FULL, pat.CAUSAL):
        raise ArgumentError(f"kernel= attention is full or causal, not {pattern}", span,
                            "sparse patterns need softmax attention (drop kernel=)")
    return b.add("linear_attention", inputs,
                 {"feature_map": kernel, "causal": pattern == pat.CAUSAL, "scale": scale_v,
                  "has_padding": key_padding is not None}, span)


def lsh_attention_node(b: Any, span: Span, q: Tensor, v: Tensor, lsh: LSH, scale: Any,
                       key_padding: Any, **refused: Any) -> Tensor:
    """An `lsh_attention` node on q [B, H, T, D] (also the keys, normalized) and v."""
    inputs, scale_v = _softmax_free_operands(
        b, span, "lsh attention", "its keys are its queries, hashed into buckets",
        "remove it, or use another pattern", [q, v], scale, key_padding, refused)
    return b.add("lsh_attention", inputs, {"lsh": lsh, "scale": scale_v,
                                           "has_padding": key_padding is not None}, span)


def _expose_weights(b: Any, span: Span, name: Any, inputs: list[Tensor],
                    attrs: dict[str, Any]) -> None:
    """Add an `attention_weights` node as the optional output `<outer scope>.<name>`."""
    if not isinstance(name, str) or not name:
        raise TypeError_(f"weights= names an output, as a string, got {describe(name)}", span)
    full = ".".join([*b.scope[:-1], name])
    if full in b.graph.outputs:
        raise DefinitionError(f"output '{full}' is declared twice", span,
                              "give each attention's weights= a different name")
    node = b.add("attention_weights", inputs, attrs, span)
    b.graph.outputs[full] = node.node
    b.graph.meta.setdefault("optional_outputs", []).append(full)


@builtin("attention", layer=True)
def attention(b: Any, span: Span, x: Tensor, heads: int, pattern: Any = pat.FULL,
              kv: Any = None, key_padding: Any = None, bias: Any = None, dropout: float = 0.0,
              scale: Any = None, kv_heads: Any = None, score: Any = "scaled", rope: Any = None,
              weights: Any = None, proj_bias: bool = True, kernel: Any = None) -> Tensor:
    """Multi-head attention on x: [B, T, d]; projections `q`, `o` (d x d) and `k`, `v`
    (kv_heads * d/heads x d; kv_heads defaults to heads). kv: [B, S, d_kv] for
    cross-attention. See docs/language.md for score=, bias=, rope=, weights= and kernel=."""
    x = tensor(b, x, span, "attention input", rank=3)
    heads = integer(heads, span, "heads")
    src = x if kv is None else tensor(b, kv, span, "kv", rank=3)
    d = x.type.shape[-1].as_int()
    if d is None:
        raise ShapeError(f"attention needs a fixed model width, got {x.type}", span)
    if d % heads:
        raise ShapeError(f"model width {d} is not divisible by heads={heads}", span)
    kvh = heads if kv_heads is None else integer(kv_heads, span, "kv_heads")
    if heads % kvh:
        raise ShapeError(f"heads={heads} is not a multiple of kv_heads={kvh}", span,
                         "each group of heads/kv_heads query heads shares one key/value head")

    def proj(name: str, inp: Tensor, out: int) -> Tensor:
        with b.in_scope([b.claim_name(name)]):
            return linear_layer(b, span, inp, out, bias=proj_bias)

    hd = d // heads
    if isinstance(pattern, LSH):                                  # Reformer: shared QK
        q = split_heads(b, proj("q", x, d), heads, span)           # (B, H, T, hd)
        v = split_heads(b, proj("v", x, d), heads, span)
        a = lsh_attention_node(b, span, q, v, pattern, scale, key_padding, kv=kv,
                               kv_heads=kv_heads, dropout=dropout, score=score, bias=bias,
                               rope=rope, weights=weights, kernel=kernel)
        with b.in_scope([b.claim_name("o")]):
            return linear_layer(b, span, merge_heads(b, a, span), d, bias=proj_bias)
    q = split_heads(b, proj("q", x, d), heads, span)               # (B, H, T, hd)
    k = split_heads(b, proj("k", src, kvh * hd), kvh, span)        # (B, Hk, S, hd)
    v = split_heads(b, proj("v", src, kvh * hd), kvh, span)        # (B, Hk, S, hd)
    if kernel is not None:                                         # (B, H, T, hd)
        a = linear_attention_node(b, span, q, k, v, pattern, scale, key_padding, kernel,
                                  dropout=dropout, score=score, bias=bias, rope=rope,
                                  weights=weights)
    else:
        a = attention_node(b, span, q, k, v, pattern, scale, key_padding, dropout, score, bias,
                           rope, weights)
    with b.in_scope([b.claim_name("o")]):
        return linear_layer(b, span, merge_heads(b, a, span), d, bias=proj_bias)


@builtin("sdpa", layer=True)
def sdpa(b: Any, span: Span, q: Tensor, k: Tensor, v: Tensor, pattern: Any = pat.FULL,
         scale: Any = None, key_padding: Any = None, dropout: float = 0.0,
         score: Any = "scaled", bias: Any = None, rope: Any = None, weights: Any = None,
         kernel: Any = None) -> Tensor:
    """Attention on q [B, H, T, D], k/v [B, Hk, S, D] (Hk divides H: grouped-query), no
    projections; the same score=, bias=, rope=, weights= and kernel= as `attention`."""
    q, k, v = (tensor(b, t, span, n, rank=4) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    if isinstance(pattern, LSH):
        if k.node != q.node:
            raise ArgumentError("lsh attention shares queries and keys: pass the same tensor "
                                "as q and k", span)
        return lsh_attention_node(b, span, q, v, pattern, scale, key_padding, dropout=dropout,
                                  score=score, bias=bias, rope=rope, weights=weights,
                                  kernel=kernel)
    if kernel is not None:
        return linear_attention_node(b, span, q, k, v, pattern, scale, key_padding, kernel,
                                     dropout=dropout, score=score, bias=bias, rope=rope,
                                     weights=weights)
    return attention_node(b, span, q, k, v, pattern, scale, key_padding, dropout, score, bias,
                          rope, weights)


# -- Reformer LSH attention ----------------------------------------------------------------

@builtin("lsh")
def lsh(b: Any, span: Span, buckets: int = 32, rounds: int = 2, chunk: int = 64,
        causal: bool = False, seed: int = 0) -> LSH:
    """Reformer LSH attention as a pattern: shared QK hashed into `buckets` (even) by random
    rotations, `rounds` times, attending within sorted chunks of `chunk` and the previous
    chunk; `causal=true` for decoders."""
    n = integer(buckets, span, "buckets")
    if n % 2 or n < 2:
        raise ArgumentError(f"buckets must be even and at least 2 (angular LSH hashes to "
                            f"argmax of [xR, -xR]), got {n}", span)
    if not isinstance(causal, bool):
        raise TypeError_(f"causal must be true or false, got {describe(causal)}", span)
    return LSH(n, integer(rounds, span, "rounds"), integer(chunk, span, "chunk"), causal,
               integer(seed, span, "seed", positive=False))


# -- feature maps of kernelized attention ---------------------------------------------------

BUILTINS["elu_plus_one"] = kn.ELU_PLUS_ONE


@builtin("favor")
def favor(b: Any, span: Span, m: int = 256, seed: int = 0) -> kn.FeatureMap:
    """Performer FAVOR+ positive orthogonal random features: m of them, drawn from seed."""
    return kn.FeatureMap("favor", integer(m, span, "m"),
                         integer(seed, span, "seed", positive=False))


# -- score biases ---------------------------------------------------------------------------

@builtin("alibi")
def alibi(b: Any, span: Span) -> bs.Bias:
    """ALiBi (Press et al.): -m_h |i - j| with fixed per-head slopes; no parameters."""
    return bs.ALiBi()


@builtin("t5_bias", layer=True)
def t5_bias(b: Any, span: Span, buckets: int = 32, max_distance: int = 128,
            bidirectional: bool = True) -> bs.Bias:
    """T5 relative-position bias: a learned [buckets, heads] table (`weight`), indexed by the
    log-bucketed distance j - i; assign it once (`rel = t5_bias()`) to share it across layers."""
    buckets = integer(buckets, span, "buckets")
    if buckets < (4 if bidirectional else 2):
        raise ArgumentError(f"t5_bias needs at least {4 if bidirectional else 2} buckets", span)
    max_distance = integer(max_distance, span, "max_distance")
    exact = (buckets // 2 if bidirectional else buckets) // 2
    if max_distance <= exact:
        raise ArgumentError(f"max_distance must exceed the {exact} exact buckets, got "
                            f"{max_distance}", span)
    return bs.T5Bias(buckets, max_distance, bool(bidirectional), ".".join([*b.scope, "weight"]))


@builtin("relative", layer=True)
def relative(b: Any, span: Span, max_distance: int = 16) -> bs.Bias:
    """Shaw et al. relative positions: learned key embeddings a_{clip(j - i, -k, k)} (a
    [2k + 1, head_dim] table `weight`), adding scale * q_i . a_ij to the scores."""
    k = integer(max_distance, span, "max_distance")
    return bs.Relative(k, ".".join([*b.scope, "weight"]))


# -- rotary positions -------------------------------------------------------------------------

@builtin("rope")
def rope(b: Any, span: Span, theta: float = 10000.0, dims: Any = None, scaling: Any = None,
         layout: str = "half") -> Rope:
    """Rotary position embedding for attention's rope=: base `theta`, the first `dims` features
    of each head (default all), layout 'half' (rotate_half, LLaMA/NeoX) or 'interleaved'
    (GPT-J), scaling none | linear(f) | ntk(f) | llama3(...)."""
    theta_v = number(theta, span, "theta")
    if theta_v <= 1:
        raise ArgumentError(f"rope theta must be greater than 1, got {theta_v}", span)
    if scaling is not None and not isinstance(scaling, RopeScaling):
        raise TypeError_(f"scaling must be none, linear(f), ntk(f) or llama3(...), got "
                         f"{describe(scaling)}", span)
    return Rope(theta_v, None if dims is None else integer(dims, span, "dims"),
                choice(layout, LAYOUTS, span, "layout"), scaling)


def _factor(value: Any, span: Span) -> float:
    f = number(value, span, "scaling factor")
    if f <= 0:
        raise ArgumentError(f"a scaling factor must be positive, got {f}", span)
    return f


@builtin("ntk")
def ntk(b: Any, span: Span, factor: float) -> RopeScaling:
    """NTK-aware rope scaling: theta * factor^(dims / (dims - 2))."""
    return RopeScaling("ntk", (_factor(factor, span),))


@builtin("llama3")
def llama3(b: Any, span: Span, factor: float = 8.0, low_freq_factor: float = 1.0,
           high_freq_factor: float = 4.0, original_max_position: int = 8192) -> RopeScaling:
    """Llama 3 rope scaling (HF rope_type='llama3'): long wavelengths divided by `factor`,
    short ones kept, a smooth blend between."""
    low, high = number(low_freq_factor, span, "low_freq_factor"), number(
        high_freq_factor, span, "high_freq_factor")
    if high <= low:
        raise ArgumentError("high_freq_factor must exceed low_freq_factor", span)
    return RopeScaling("llama3", (_factor(factor, span), low, high,
                                  float(integer(original_max_position, span,
                                                "original_max_position"))))


def _linear_or_scaling() -> None:
    """`linear(f)` with one number is rope's position-interpolation scaling; otherwise the
    linear layer (which opens its parameter scope only then)."""
    layer = BUILTINS["linear"]

    def call(b: Any, args: list[Any], kwargs: dict[str, Any], node: Any,
             name_hint: str | None) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], (int, float)) and not \
                isinstance(args[0], bool):
            return RopeScaling("linear", (_factor(args[0], node.span),))
        return layer(b, args, kwargs, node, name_hint)

    call.__name__ = "linear"
    call.__doc__ = (f"{layer.__doc__}\n\nlinear(f) with one number: rope position-"
                    "interpolation scaling (positions divided by f).")
    call.usage = layer.usage  # type: ignore[attr-defined]
    BUILTINS["linear"] = call


_linear_or_scaling()
