"""Reverse-mode gradient rules: one vector-Jacobian product (VJP) per differentiable op.

`VJP_RULES[op](g, out, ins, attrs) -> tuple[cotangent | None, ...]` maps the cotangent `g`
of an op's output to one cotangent per input, given the forward output `out`, the forward
input values `ins` (in node order) and `attrs` as the kernel receives them (patterns as
source text or None for full, dims as ints; see `backends/codegen.py`). None means "no
cotangent": int/bool inputs (ids, masks, conditions) and inputs the output does not depend
on. Every op in `attndsl.ir.ops.OPS` whose kind is not "leaf" has a rule; the leaves
(`CONSTANT_LIKE`) have none.

Rules use only `np` and the NumPy kernels' own helpers (CuPy would need `np` rebound as the
forward kernels do; that is not wired up or tested). Non-smooth points follow torch autograd: `relu`/`abs` have derivative 0 at 0,
`maximum`/`minimum` split ties evenly between the operands, and `max` spreads the
cotangent evenly over every position equal to the maximum. Dropout, LayerDrop and attention
dropout use inference semantics (identity / the layer always runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from attndsl.backends.numpy_kernels import (
    BLOCK,
    _batch_stats,
    _block_grid,
    _causal_product,
    _grouped,
    _in_threads,
    _linear_den,
    _linear_numden,
    _linear_operands,
    _lsh_forward,
    _phi_vjp,
    _relative_index,
    _rope,
    _rows,
    _t5_buckets,
    _tile_keys,
    attention_impl,
    attention_probs,
    blocked_bias_values,
    blocked_probs,
    blocked_steps,
    op_sigmoid,
)

Array = Any  # a NumPy (or CuPy) array
Cotangents = tuple[Array | None, ...]
VjpRule = Callable[[Array, Array, tuple[Array, ...], dict[str, Any]], Cotangents]

VJP_RULES: dict[str, VjpRule] = {}
CONSTANT_LIKE = frozenset({"constant", "size", "arange", "sinusoidal", "input", "param"})


def vjp(*ops: str) -> Callable[[VjpRule], VjpRule]:
    """Register a function as the VJP rule of `ops`."""
    def register(rule: VjpRule) -> VjpRule:
        for op in ops:
            VJP_RULES[op] = rule
        return rule
    return register


def unbroadcast(g: Array, shape: tuple[int, ...]) -> Array:
    """Sum `g` over the axes that broadcasting added or stretched to reach `g.shape` from
    `shape`, so the result has exactly `shape`."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                      if n == 1 and g.shape[lead + i] != 1)
    return np.sum(g, axis=axes, keepdims=True).reshape(shape)


def _swap(x: Array) -> Array:
    return np.swapaxes(x, -1, -2)


# -- elementwise --------------------------------------------------------------------------

@vjp("add")
def _add(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    return unbroadcast(g, a.shape), unbroadcast(g, b.shape)


@vjp("sub")
def _sub(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    return unbroadcast(g, a.shape), unbroadcast(-g, b.shape)


@vjp("mul")
def _mul(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    return unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)


@vjp("div")
def _div(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    ga = g / b
    return unbroadcast(ga, a.shape), unbroadcast(-ga * out, b.shape)


@vjp("pow")
def _pow(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """d/da = b a^(b-1) (0 where b == 0); d/db = a^b log(a), taken as 0 where a <= 0 (no real
    derivative there; torch gives nan for a < 0)."""
    a, b = ins
    da = np.where(b == 0, 0.0, b * np.power(a, b - 1))
    db = out * np.log(np.where(a > 0, a, 1.0))
    return unbroadcast(g * da, a.shape), unbroadcast(g * db, b.shape)


def _select(g: Array, mine: Array, other: Array, wins: Array) -> Array:
    """g where `mine` wins, g/2 on ties, 0 where it loses."""
    return np.where(mine == other, 0.5 * g, np.where(wins, g, 0.0))


@vjp("maximum")
def _maximum(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    return (unbroadcast(_select(g, a, b, a > b), a.shape),
            unbroadcast(_select(g, b, a, b > a), b.shape))


@vjp("minimum")
def _minimum(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    a, b = ins
    return (unbroadcast(_select(g, a, b, a < b), a.shape),
            unbroadcast(_select(g, b, a, b < a), b.shape))


@vjp("less", "greater", "equal", "logical_and", "logical_or")
def _compare(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return None, None


@vjp("logical_not", "top_k_indices", "one_hot")
def _no_gradient(g: Array, out: Array, ins: tuple[Array, ...],
                 attrs: dict[str, Any]) -> Cotangents:
    """Bool or int results, or int inputs: nothing to differentiate."""
    return (None,)


@vjp("sign")
def _sign(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (np.zeros_like(g),)


@vjp("sin")
def _sin(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g * np.cos(ins[0]),)


@vjp("cos")
def _cos(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (-g * np.sin(ins[0]),)


@vjp("softplus")
def _softplus(g: Array, out: Array, ins: tuple[Array, ...],
              attrs: dict[str, Any]) -> Cotangents:
    """sigmoid(x), and 1 past torch's threshold of 20 (where softplus is x)."""
    x = ins[0]
    return (np.where(x > 20, g, g * op_sigmoid(x)),)


@vjp("clip")
def _clip(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """Passes where lo <= x <= hi (bounds included, as torch.clamp)."""
    x = ins[0]
    keep = np.ones(x.shape, dtype=bool)
    if attrs["lo"] is not None:
        keep &= x >= attrs["lo"]
    if attrs["hi"] is not None:
        keep &= x <= attrs["hi"]
    return (np.where(keep, g, 0.0),)


@vjp("neg")
def _neg(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (-g,)


@vjp("exp")
def _exp(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g * out,)


@vjp("log")
def _log(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g / ins[0],)


@vjp("sqrt")
def _sqrt(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g / (2.0 * out),)


@vjp("tanh")
def _tanh(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g * (1.0 - out * out),)


@vjp("abs")
def _abs(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g * np.sign(ins[0]),)


@vjp("sigmoid")
def _sigmoid(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g * out * (1.0 - out),)


@vjp("relu")
def _relu(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (np.where(ins[0] > 0, g, 0.0),)


@vjp("gelu")
def _gelu(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """Exact form: Phi(x) + x phi(x). Tanh form: with t = tanh(c (x + a x^3)),
    0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)."""
    x = ins[0]
    if attrs["approximate"] == "none":
        # Phi(x) = out / x (out = x Phi(x)), not erf again; near 0 its series 0.5 + x phi(0)
        # (1 - x^2 / 6) (the next term, x^5 / 40 sqrt(2 pi), is below 1e-17 for |x| < 1e-3)
        pdf = x * x
        pdf *= -0.5
        np.exp(pdf, out=pdf)
        pdf *= 1.0 / math.sqrt(2.0 * math.pi)                # phi(x)
        near = np.abs(x) < 1e-3
        safe = np.where(near, 1.0, x)
        cdf = np.where(near, 0.5 + x * (1.0 / math.sqrt(2.0 * math.pi)) * (1.0 - x * x / 6.0),
                       out / safe)
        pdf *= x
        pdf += cdf
        pdf *= g
        return (pdf,)
    d = np.empty(x.shape, x.dtype)
    _in_threads(_gelu_tanh_vjp, _rows(d), _rows(g), _rows(out), _rows(x))
    return (d,)


def _gelu_tanh_vjp(g: Array, y: Array, x: Array, out: Array) -> None:
    """Rows of the tanh form's VJP, from y = 0.5 x u with u = 1 + t (no tanh again):
    1 - t^2 = u (2 - u), so d = 0.5 u + 0.5 x u (2 - u) c (1 + 3 a x^2); u = 1 at x = 0."""
    c, a = math.sqrt(2.0 / math.pi), 0.044715
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.divide(y, x)
    np.copyto(u, 0.5, where=x == 0)
    u *= 2.0                                           # u = 1 + t
    d = np.multiply(x, x, out=out)                     # in place from here
    d *= 3.0 * a
    d += 1.0
    d *= x
    d *= 0.5 * c                                       # 0.5 x c (1 + 3 a x^2)
    d *= u
    w = np.subtract(2.0, u)
    d *= w                                             # ... (1 - t^2)
    u *= 0.5
    d += u
    d *= g


@vjp("silu")
def _silu(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    x = ins[0]
    s = op_sigmoid(x)
    return (g * s * (1.0 + x * (1.0 - s)),)


@vjp("cast")
def _cast(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """float -> float passes the cotangent; int/bool inputs or outputs have none."""
    float_to_float = ins[0].dtype.kind == "f" and attrs["dtype"] == "float"
    return (g if float_to_float else None,)


@vjp("dropout")
def _dropout(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (g,)


@vjp("layer_drop")
def _layer_drop(g: Array, out: Array, ins: tuple[Array, ...],
                attrs: dict[str, Any]) -> Cotangents:
    return None, g


@vjp("where")
def _where(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    cond, a, b = ins
    return (None, unbroadcast(np.where(cond, g, 0.0), a.shape),
            unbroadcast(np.where(cond, 0.0, g), b.shape))


# -- linear algebra -------------------------------------------------------------------------

@vjp("matmul")
def _matmul(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """a (..., m, k) or (k,), b (..., k, n), g (..., m, n) or (..., n) for a 1-D `a`."""
    a, b = ins
    a2 = a[None, :] if a.ndim == 1 else a                  # (..., m, k)
    g2 = g[..., None, :] if a.ndim == 1 else g             # (..., m, n)
    da = unbroadcast(np.matmul(g2, _swap(b)), a2.shape)    # (..., m, k)
    db = unbroadcast(np.matmul(_swap(a2), g2), b.shape)    # (..., k, n)
    return da.reshape(a.shape), db


@vjp("linear")
def _linear(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """y = x W^T + b with x (..., in), W (out, in), b (out,)."""
    x, w = ins[0], ins[1]
    g2 = g.reshape(-1, w.shape[0])                          # (N, out)
    dx = np.matmul(g2, w).reshape(x.shape)                  # (..., in)
    dw = np.matmul(g2.T, x.reshape(-1, w.shape[1]))         # (out, in)
    if len(ins) == 3:
        return dx, dw, np.sum(g2, axis=0)
    return dx, dw


@vjp("linear_int8")
def _linear_int8(g: Array, out: Array, ins: tuple[Array, ...],
                 attrs: dict[str, Any]) -> Cotangents:
    """y = (x Q^T) s + b with int Q (out, in): no gradient for Q (quantized weights are
    frozen); x, the scales s (out,) and b get theirs."""
    x, q, s = ins[0], ins[1], ins[2]
    w = q.astype(g.dtype)                                   # (out, in)
    g2 = g.reshape(-1, q.shape[0])                          # (N, out)
    x2 = x.reshape(-1, q.shape[1])                          # (N, in)
    dx = np.matmul(g2 * s, w).reshape(x.shape)
    ds = np.sum(g2 * np.matmul(x2, w.T), axis=0)            # (out,)
    return (dx, None, ds, np.sum(g2, axis=0)) if len(ins) == 4 else (dx, None, ds)


@vjp("linear_attention")
def _linear_attention(g: Array, out: Array, ins: tuple[Array, ...],
                      attrs: dict[str, Any]) -> Cotangents:
    """out = N[:, :Dv] / (N[:, Dv] + eps) with N_t = phi(q_t) . sum_j phi(k_j) [v_j, 1]^T
    (j <= t when causal). With a = phi(q), b = phi(k), c = [v, 1] and dN from the quotient:
    da = dN (sum c b^T), db_j = sum_t (dN_t . c_j) a_t, dc_j = sum_t (a_t . b_j) dN_t, over
    t >= j when causal — the same chunked prefix product, run backwards in time. Memory
    O(T) like the forward: nothing of size T x T."""
    q, k, v = ins[:3]
    pad = ins[3] if attrs["has_padding"] else None
    fmap, scale, causal = attrs["feature_map"], attrs["scale"], attrs["causal"]
    a, b, c, pq, pk, w = _linear_operands(q, k, v, pad, fmap, scale)
    n, _ = _linear_numden(a, b, c, causal)
    den = _linear_den(n, fmap)                                        # (B, Hk, G, Tq, 1)
    gg = g.reshape(a.shape[:-1] + (g.shape[-1],))                      # (B, Hk, G, Tq, Dv)
    dn = np.concatenate([gg / den, -np.sum(gg * n[..., :-1], axis=-1, keepdims=True)
                         / (den * den)], axis=-1)                      # (B, Hk, G, Tq, Dv + 1)
    if causal:
        off = b.shape[-2] - a.shape[-2]
        bs, cs = b[..., off:, :], c[..., off:, :]
        prefix = np.matmul(_swap(c[..., :off, :]), b[..., :off, :]) if off else None
        da, _ = _causal_product(dn, cs, bs, prefix)

        def rev(x: Array) -> Array:
            return x[..., ::-1, :]

        db = rev(_causal_product(rev(cs), rev(dn), rev(a))[0])
        dc = rev(_causal_product(rev(bs), rev(a), rev(dn))[0])
        if off:                                       # keys before every query
            m = np.matmul(_swap(dn), a)                                # (..., Dv + 1, m)
            db = np.concatenate([np.matmul(c[..., :off, :], m), db], axis=-2)
            dc = np.concatenate([np.matmul(b[..., :off, :], _swap(m)), dc], axis=-2)
    else:
        da = np.matmul(dn, _swap(np.matmul(_swap(b), c)))
        m = np.matmul(_swap(dn), a)                                    # (..., Dv + 1, m)
        db, dc = np.matmul(c, m), np.matmul(b, _swap(m))
    db, dc = db.sum(axis=2), dc.sum(axis=2)                            # over query groups
    if pad is not None:
        db = db * pad[:, None, :, None]
    dq = _phi_vjp(q, pq, w, da.reshape(pq.shape), fmap, scale, True)
    dk = _phi_vjp(k, pk, w, unbroadcast(db, pk.shape), fmap, scale, False)
    dv = unbroadcast(dc[..., :-1], v.shape)
    return (dq, dk, dv) + ((None,) if pad is not None else ())


@vjp("lsh_attention")
def _lsh_attention(g: Array, out: Array, ins: tuple[Array, ...],
                   attrs: dict[str, Any]) -> Cotangents:
    """The hashing is piecewise constant (no gradient). Per round, in sorted-chunk space:
    o = P V, lse = logsumexp(S); the rounds combine as sum_r w_r o_r, w = softmax_r(lse), so
    do_r = w_r g and dlse_r = w_r (g . o_r - g . out); dS = P (dP - rowsum(dP P)) + P dlse
    on the scores that depend on q (not the constant self/masked ones); dq from the
    queries and, through k = q / |q|, from the keys; everything unsorted and summed over
    rounds."""
    q, v = ins[0], ins[1]
    f = _lsh_forward(q, v, ins[2] if attrs["has_padding"] else None, attrs["lsh"],
                     attrs["scale"])
    t, c, scale = f["t"], f["c"], attrs["scale"]
    tp = f["out"].shape[2]
    gp = np.pad(g, ((0, 0), (0, 0), (0, tp - t), (0, 0)))                 # (B, H, Tp, Dv)
    w, o_r, perm, inv = f["w"], f["o_r"], f["perm"], f["inv"]
    dlse = w * (np.einsum("bhtv,bhrtv->bhrt", gp, o_r)
                - np.einsum("bhtv,bhtv->bht", gp, f["out"])[:, :, None])
    do = w[..., None] * gp[:, :, None]                                    # (B, H, R, Tp, Dv)

    def to_chunks(x: Array) -> Array:                   # unsorted (B, H, R, Tp, F) -> sorted
        x = np.take_along_axis(x, perm[..., None], axis=-2)
        return x.reshape(*x.shape[:-2], tp // c, c, x.shape[-1])

    def from_window(x: Array) -> Array:                 # (..., n, w, F) -> unsorted (.., Tp, F)
        if x.shape[-2] != c:
            x = x[..., c:, :] + np.roll(x[..., :c, :], -1, axis=-3)
        x = x.reshape(*x.shape[:-3], tp, x.shape[-1])
        return np.take_along_axis(x, inv[..., None], axis=-2)

    do_s, dlse_s = to_chunks(do), to_chunks(dlse[..., None])[..., 0]
    p = f["p"]
    dvw = np.matmul(np.swapaxes(p, -1, -2), do_s)
    dp = np.matmul(do_s, np.swapaxes(f["vw"], -1, -2))
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True) + dlse_s[..., None]) * f["free"]
    dqs = np.matmul(ds, f["kw"]) * scale
    dkw = np.matmul(np.swapaxes(ds, -1, -2), f["qs"]) * scale
    dqs = dqs.reshape(*dqs.shape[:-3], tp, dqs.shape[-1])
    dq = np.take_along_axis(dqs, inv[..., None], axis=-2).sum(axis=2)
    dk = from_window(dkw).sum(axis=2)
    dv = from_window(dvw).sum(axis=2)
    k, norm = f["k"], f["norm"]
    dq = dq + (dk - k * np.sum(k * dk, axis=-1, keepdims=True)) / norm      # k = q / |q|
    grads = (dq[:, :, :t].astype(q.dtype), dv[:, :, :t].astype(v.dtype))
    return grads + ((None,) if attrs["has_padding"] else ())


# -- mixture of experts ----------------------------------------------------------------------

def _picked(rows: Array, route: Array, top_k: int) -> Array:
    """(k, N, d): each assignment's dispatch row, zero where it was dropped."""
    out = rows[route[1]].reshape(top_k, -1, rows.shape[1])
    return out * (route[2] > 0).reshape(top_k, -1)[..., None]


@vjp("moe_route", "moe_counts", "moe_dropped")
def _moe_discrete(g: Array, out: Array, ins: tuple[Array, ...],
                  attrs: dict[str, Any]) -> Cotangents:
    """The routing and what is counted from it are discrete: no gradient."""
    return (None,)


@vjp("moe_dispatch")
def _moe_dispatch(g: Array, out: Array, ins: tuple[Array, ...],
                  attrs: dict[str, Any]) -> Cotangents:
    """A gather of token rows: dx[n] = sum of the cotangents of n's kept rows."""
    x, route = ins
    return _picked(g, route, route.shape[1] // x.shape[0]).sum(axis=0), None


@vjp("moe_combine")
def _moe_combine(g: Array, out: Array, ins: tuple[Array, ...],
                 attrs: dict[str, Any]) -> Cotangents:
    """out[n] = sum_j kept gate[n, j] y[row(j, n)]: dy at those rows = kept gate g[n];
    dgate = kept y[row] . g[n]; gates p_j / sum_i p_i (normalize) give dp_j = (dgate_j -
    sum_i dgate_i gate_i) / sum_i p_i; dp lands on the chosen experts' columns."""
    y, probs, route = ins
    k, n = attrs["top_k"], probs.shape[0]
    top = route[0].reshape(k, n).T                                    # (N, k)
    p = np.take_along_axis(probs, top, axis=1)
    gates = p / np.sum(p, axis=1, keepdims=True) if attrs["normalize"] else p
    dy = np.zeros_like(y)
    kept = (route[2] > 0).reshape(k, n).T                             # (N, k)
    dy[route[1]] = ((gates * kept).T[..., None] * g[None]).reshape(k * n, -1)
    dgate = np.einsum("knd,nd->nk", _picked(y, route, k), g)         # dropped: 0
    if attrs["normalize"]:
        dgate = (dgate - np.sum(dgate * gates, axis=1, keepdims=True)) / np.sum(
            p, axis=1, keepdims=True)
    dprobs = np.zeros_like(probs)
    np.put_along_axis(dprobs, top, dgate, axis=1)
    return dy, dprobs, None


@vjp("moe_aux")
def _moe_aux(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """aux = E sum_e f_e mean_n p[n, e] with f (a count) constant: dp[n, e] = E f_e / N."""
    probs, route = ins
    n, e = probs.shape
    f = np.bincount(route[0], minlength=e) / n
    return np.broadcast_to(g * e * f / n, probs.shape).astype(probs.dtype), None


@vjp("grouped_linear")
def _grouped_linear(g: Array, out: Array, ins: tuple[Array, ...],
                    attrs: dict[str, Any]) -> Cotangents:
    """Per expert segment: dx = g W_e, dW_e = g^T x, db_e = sum of g over the segment."""
    x, counts, w = ins[:3]
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    db = np.zeros(w.shape[:2], dtype=w.dtype)
    start = 0
    for e, c in enumerate(np.asarray(counts).tolist()):
        seg = slice(start, start + c)
        dx[seg] = np.matmul(g[seg], w[e])
        dw[e] = np.matmul(g[seg].T, x[seg])
        db[e] = np.sum(g[seg], axis=0)
        start += c
    return (dx, None, dw, db) if len(ins) == 4 else (dx, None, dw)


@vjp("batch_norm")
def _batch_norm(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """Training (batch statistics, x^ = (x - mean) / s): dx = (N dx^ - sum dx^ - x^ sum(dx^ x^))
    / (N s) over the N rows, and the running statistics are not read (no gradient);
    inference (running statistics): dx = g w / s. dw = sum g x^, db = sum g."""
    x, rm, rv = ins[:3]
    c = x.shape[-1]
    x2, g2 = x.reshape(-1, c), g.reshape(-1, c)
    mean, var = _batch_stats(x) if attrs.get("training") else (rm, rv)
    inv = 1.0 / np.sqrt(var + attrs["eps"])
    xhat = (x2 - mean) * inv
    dxhat = g2 * ins[3] if attrs["affine"] else g2
    if attrs.get("training"):
        n = x2.shape[0]
        dx = (n * dxhat - dxhat.sum(0) - xhat * np.sum(dxhat * xhat, axis=0)) * (inv / n)
        grads = (dx.reshape(x.shape).astype(x.dtype), None, None)
    else:                          # the running statistics are read: they have a gradient
        dx = dxhat * inv           # (which no optimizer applies: they are buffers)
        grads = (dx.reshape(x.shape).astype(x.dtype), -np.sum(dxhat, axis=0) * inv,
                 -0.5 * np.sum(dxhat * xhat, axis=0) * inv * inv)
    if attrs["affine"]:
        grads += (np.sum(g2 * xhat, axis=0).astype(x.dtype), np.sum(g2, axis=0))
    return grads


@vjp("conv1d")
def _conv1d(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """Per tap k: dx_pad[:, k:k+T'] += g w[..., k] (grouped), dw[..., k] = x_pad[:, k:k+T']^T g;
    db = sum of g over batch and time; dx is dx_pad without the padding."""
    x, w = ins[0], ins[1]
    groups, pl, pr = attrs["groups"], attrs["pad_left"], attrs["pad_right"]
    bsz, tx, c = x.shape
    out, per, k = w.shape
    xp = np.pad(x, ((0, 0), (pl, pr), (0, 0)))
    t = g.shape[1]
    gg = g.reshape(bsz, t, groups, out // groups)
    wg = w.reshape(groups, out // groups, per, k)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(wg)
    for tap in range(k):
        xs = xp[:, tap:tap + t].reshape(bsz, t, groups, per)
        dxp[:, tap:tap + t] += np.einsum("btgo,goc->btgc", gg, wg[..., tap]).reshape(bsz, t, c)
        dw[..., tap] = np.einsum("btgc,btgo->goc", xs, gg)
    dx = dxp[:, pl:pl + tx]
    dw = dw.reshape(w.shape)
    return (dx, dw, np.sum(g, axis=(0, 1))) if len(ins) == 3 else (dx, dw)


# -- shape ops ------------------------------------------------------------------------------

@vjp("transpose")
def _transpose(g: Array, out: Array, ins: tuple[Array, ...],
               attrs: dict[str, Any]) -> Cotangents:
    return (np.transpose(g, tuple(np.argsort(attrs["perm"]))),)


@vjp("reshape")
def _reshape(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (np.reshape(g, ins[0].shape),)


def _restore_axes(g: Array, shape: tuple[int, ...], attrs: dict[str, Any]) -> Array:
    """A reduced cotangent with its reduced axes put back as size 1 (keepdims form)."""
    if attrs["keepdims"]:
        return g
    axes = sorted(a % len(shape) for a in attrs["axes"])
    return np.expand_dims(g, tuple(axes))


@vjp("sum")
def _sum(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    x = ins[0]
    return (np.broadcast_to(_restore_axes(g, x.shape, attrs), x.shape),)


@vjp("mean")
def _mean(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    x = ins[0]
    count = math.prod(x.shape[a] for a in attrs["axes"])
    return (np.broadcast_to(_restore_axes(g, x.shape, attrs) / count, x.shape),)


@vjp("max")
def _max(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """The cotangent is split evenly over every position equal to the maximum (torch.amax)."""
    x = ins[0]
    hit = x == _restore_axes(out, x.shape, attrs)                           # x.shape
    count = np.sum(hit, axis=tuple(attrs["axes"]), keepdims=True, dtype=g.dtype)
    return (np.where(hit, _restore_axes(g, x.shape, attrs) / count, 0.0),)


@vjp("min")
def _min(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return _max(g, out, ins, attrs)


@vjp("cumsum")
def _cumsum(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """The reversed running sum of g along the axis."""
    axis = attrs["axis"]
    return (np.flip(np.cumsum(np.flip(g, axis), axis=axis), axis),)


@vjp("gather")
def _gather(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """g scattered back to the gathered positions (repeats accumulate); no index gradient."""
    x, index = ins
    axis = attrs["axis"] % x.ndim
    where = list(np.indices(index.shape, sparse=True))
    where[axis] = index % x.shape[axis]
    dx = np.zeros(x.shape, dtype=g.dtype)
    np.add.at(dx, tuple(where), g)
    return dx, None


@vjp("concat")
def _concat(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    axis = attrs["axis"]
    bounds = np.cumsum([x.shape[axis] for x in ins])[:-1]
    return tuple(np.split(g, [int(b) for b in bounds], axis=axis))


@vjp("expand")
def _expand(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    return (unbroadcast(g, ins[0].shape),)


@vjp("index")
def _index(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    """Scatter into zeros at the indexed positions (ints and (start, stop) slices)."""
    x = ins[0]
    dx = np.zeros(x.shape, dtype=g.dtype)
    dx[tuple(i if isinstance(i, int) else slice(*i) for i in attrs["index"])] = g
    return (dx,)


# -- normalization, softmax, embeddings -----------------------------------------------------

@vjp("softmax")
def _softmax(g: Array, out: Array, ins: tuple[Array, ...], attrs: dict[str, Any]) -> Cotangents:
    gy = g * out
    return (gy - out * np.sum(gy, axis=attrs["axis"], keepdims=True),)


@vjp("layer_norm")
def _layer_norm(g: Array, out: Array, ins: tuple[Array, ...],
                attrs: dict[str, Any]) -> Cotangents:
    """x (..., d), gamma (d,), optional beta (d,); xhat = (x - mean) / sqrt(var + eps)."""
    x = ins[0]
    d = x.shape[-1]
    gamma, eps = (ins[1] if len(ins) > 1 else None), attrs["eps"]
    xhat, dx = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype)

    def rows(x: Array, g: Array, xh: Array, out: Array) -> None:   # (N, d) each; writes xh
        dxr = out
        np.subtract(x, np.mean(x, axis=-1, keepdims=True), out=xh)
        rstd = 1.0 / np.sqrt(np.einsum("...i,...i->...", xh, xh)[..., None] / d + eps)
        xh *= rstd
        gx = g * gamma if gamma is not None else g
        # dx = rstd (gx - mean(gx) - xhat mean(gx xhat)), built in one buffer
        dot = np.einsum("...i,...i->...", gx, xh)[..., None] / d
        np.multiply(xh, dot, out=dxr)
        np.subtract(gx, dxr, out=dxr)
        dxr -= np.mean(gx, axis=-1, keepdims=True)
        dxr *= rstd

    _in_threads(rows, _rows(dx), _rows(x), _rows(g), _rows(xhat))
    if len(ins) == 1:                                                         # affine=false
        return (dx,)
    g2 = g.reshape(-1, d)
    dgamma = np.sum(g2 * xhat.reshape(-1, d), axis=0)
    if len(ins) == 3:
        return dx, dgamma, np.sum(g2, axis=0)
    return dx, dgamma


@vjp("add_layer_norm")
def _add_layer_norm(g: Array, out: Array, ins: tuple[Array, ...],
                    attrs: dict[str, Any]) -> Cotangents:
    """layer_norm(a + b): the norm's VJP at the sum, whose cotangent both operands get."""
    dx, *rest = _layer_norm(g, out, (ins[0] + ins[1], *ins[2:]), attrs)
    return (dx, dx, *rest)


@vjp("rms_norm")
def _rms_norm(g: Array, out: Array, ins: tuple[Array, ...],
              attrs: dict[str, Any]) -> Cotangents:
    """y = gamma * x * r with r = 1 / sqrt(mean(x^2) + eps) over the last axis."""
    x, gamma = ins[:2]
    d = x.shape[-1]
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + attrs["eps"])   # (..., 1)
    gx = g * gamma                                                             # (..., d)
    dx = r * (gx - x * (r * r) * np.mean(gx * x, axis=-1, keepdims=True))
    dgamma = np.sum((g * x * r).reshape(-1, d), axis=0)
    if len(ins) == 3:                                                          # with a bias
        return dx, dgamma, np.sum(g.reshape(-1, d), axis=0)
    return dx, dgamma


@vjp("embedding")
def _embedding(g: Array, out: Array, ins: tuple[Array, ...],
               attrs: dict[str, Any]) -> Cotangents:
    """Rows of g added into a zero table at `ids` (repeated ids accumulate)."""
    table, ids = ins
    dtable = np.zeros(table.shape, dtype=g.dtype)
    np.add.at(dtable, ids.reshape(-1), g.reshape((-1,) + table.shape[1:]))
    return dtable, None


# -- attention -------------------------------------------------------------------------------

def _group_sum(x: Array, kv_heads: int) -> Array:
    """(B, H, T, D) -> (B, Hk, T, D): sum the query heads that share each kv head."""
    b, h, t, d = x.shape
    return x.reshape(b, kv_heads, h // kv_heads, t, d).sum(axis=2)


def _t5_table_grad(ds: Array, term: tuple[Any, ...], table: Array) -> Array:
    """d table [buckets, H] of a T5 term from the logits' cotangent ds (B, H, Tq, Tk): sum
    ds over each relative position (diagonal), then over the positions of each bucket."""
    _, h, tq, tk = ds.shape
    diag = (np.arange(tk)[None, :] - np.arange(tq)[:, None] + tq - 1).reshape(-1)  # (Tq Tk,)
    per_head = ds.sum(axis=0).reshape(h, -1)                                          # (H, Tq Tk)
    dvals = np.stack([np.bincount(diag, weights=per_head[i], minlength=tq + tk - 1)
                      for i in range(h)])                                             # (H, L)
    buckets = _t5_buckets(np.arange(-(tk - 1), tq), *term[1:])                        # (L,)
    dtable = np.zeros(table.shape, dtype=ds.dtype)
    np.add.at(dtable, buckets, dvals.T)
    return dtable


def _relative_grads(ds: Array, q: Array, table: Array, k: int, scale: float
                    ) -> tuple[Array, Array]:
    """(dq, d table) of Shaw's term scale * q_i . a_{idx(i, j)} added to the logits."""
    tq, tk = ds.shape[-2:]
    idx = _relative_index(k, tq, tk, 0, tq)                                  # (Tq, Tk)
    dqa = np.stack([np.sum(np.where(idx == c, ds, 0.0), axis=-1)
                    for c in range(2 * k + 1)], axis=-1) * scale             # (B, H, Tq, 2k+1)
    dq = np.matmul(dqa, table)                                               # (B, H, Tq, D)
    dtable = np.einsum("bhic,bhid->cd", dqa, q)                              # (2k+1, D)
    return dq, dtable


@vjp("attention")
def _attention(g: Array, out: Array, ins: tuple[Array, ...],
               attrs: dict[str, Any]) -> Cotangents:
    """q (B, H, Tq, D), k/v (B, Hk, Tk, D) with H a multiple of Hk, then the extra operands
    named by attrs['extras']; batch axes broadcast. Recomputes the probabilities; attention
    dropout is ignored (inference)."""
    return _attention_vjp(g, ins, attrs, weights=False)


@vjp("attention_weights")
def _attention_weights(g: Array, out: Array, ins: tuple[Array, ...],
                       attrs: dict[str, Any]) -> Cotangents:
    """g is the probabilities' cotangent (B, H, Tq, Tk); v gets none."""
    return _attention_vjp(g, ins, attrs, weights=True)


def _attention_vjp(g: Array, ins: tuple[Array, ...], attrs: dict[str, Any],
                   weights: bool) -> Cotangents:
    q, k, v = ins[:3]
    extras = attrs.get("extras") or ("key_padding",) * (len(ins) - 3)
    ex = dict(zip(extras, ins[3:]))
    score, bias, rope, scale = attrs.get("score", "scaled"), attrs.get("bias", ()), attrs.get(
        "rope"), attrs["scale"]
    layout = attrs.get("pattern_blocks")
    impl = "dense" if weights else attention_impl(attrs.get("impl", "dense"), q, k, v, layout,
                                                   score, bias, extras, attrs["pattern"])
    if impl != "dense":
        return _blocked_vjp(g, q, k, v, ex, extras, attrs, layout, impl == "sparse")
    p, qr, kr = attrs.get("saved") or attention_probs(q, k, ins[3:], attrs["pattern"], scale,
                                                      score, bias, rope, extras)
    b, h, tq, tk = p.shape
    hk = k.shape[1]
    if weights:
        dp, dv = g, None
    else:
        pg = _grouped(p, hk)                                               # (B, Hk, G Tq, Tk)
        gg = _grouped(g, hk)                                               # (B, Hk, G Tq, Dv)
        dv = unbroadcast(np.matmul(_swap(pg), gg), v.shape)                # (B, Hk, Tk, Dv)
        dp = np.matmul(gg, _swap(v)).reshape(p.shape)                      # (B, H, Tq, Tk)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))               # d logits, 0 masked
    grads: dict[str, Array | None] = {name: None for name in extras}
    dqr = np.zeros(qr.shape, dtype=ds.dtype)
    for i, term in enumerate(bias):
        name = f"bias{i}"
        if term[0] == "tensor":
            grads[name] = unbroadcast(ds, ex[name].shape)
        elif term[0] == "t5":
            grads[name] = _t5_table_grad(ds, term, ex[name])
        elif term[0] == "relative":
            dq_rel, grads[name] = _relative_grads(ds, qr, ex[name], term[1], scale)
            dqr += dq_rel
    dsc = ds * scale                                                       # (B, H, Tq, Tk)
    if score == "additive":
        dqr_s, dkr = _additive_grads(dsc, qr, kr, ex, grads)
        dqr += dqr_s
    else:
        qs = np.matmul(qr, ex["score_w"]) if score == "bilinear" else qr
        dqs = np.matmul(_grouped(dsc, hk), kr).reshape(qr.shape)           # (B, H, Tq, D)
        dkr = np.matmul(_swap(_grouped(dsc, hk)), _grouped(qs, hk))        # (B, Hk, Tk, D)
        if score == "bilinear":
            grads["score_w"] = np.einsum("bhid,bhie->de", qr, dqs)
            dqs = np.matmul(dqs, _swap(ex["score_w"]))
        dqr += dqs
    dq = _rope(dqr, tk - tq, rope, inverse=True) if rope is not None else dqr
    dk = _rope(dkr, 0, rope, inverse=True) if rope is not None else dkr
    return (unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), dv,
            *(grads[name] for name in extras))


def _additive_grads(dsc: Array, q: Array, k: Array, ex: dict[str, Array],
                    grads: dict[str, Array | None]) -> tuple[Array, Array]:
    """Bahdanau s_ij = w . tanh(Wq q_i + Wk k_j): (dq, dk), and the score parameters'
    cotangents into `grads`. Materializes (B, H, Tq, Tk, A): a training-time cost."""
    h, hk = q.shape[1], k.shape[1]
    wq, wk, w = ex["score_wq"], ex["score_wk"], ex["score_v"]
    qa = np.matmul(q, wq.T)                                                # (B, H, Tq, A)
    ka = np.repeat(np.matmul(k, wk.T), h // hk, axis=1)                    # (B, H, Tk, A)
    t = np.tanh(qa[:, :, :, None, :] + ka[:, :, None, :, :])               # (B, H, Tq, Tk, A)
    grads["score_v"] = np.einsum("bhij,bhija->a", dsc, t)
    pre = dsc[..., None] * w * (1.0 - t * t)                               # (B, H, Tq, Tk, A)
    dqa, dka = pre.sum(axis=3), _group_sum(pre.sum(axis=2), hk)            # (B, H, Tq, A) ...
    grads["score_wq"] = np.einsum("bhia,bhid->ad", dqa, q)
    grads["score_wk"] = np.einsum("bhja,bhjd->ad", dka, k)
    return np.matmul(dqa, wq), np.matmul(dka, wk)


def _blocked_vjp(g: Array, q: Array, k: Array, v: Array, ex: dict[str, Array],
                 extras: tuple[str, ...], attrs: dict[str, Any], layout: Any,
                 gather: bool) -> Cotangents:
    """The attention VJP over the same query tiles and live key blocks as the forward
    `blocked_attention` (probabilities recomputed per tile, as flash attention's backward):
    extra memory O(B H block K) per step, never [B, H, Tq, Tk]."""
    score, bias, rope, scale = attrs.get("score", "scaled"), attrs.get("bias", ()), attrs.get(
        "rope"), attrs["scale"]
    b, h, tq, _ = q.shape
    hk, tk = k.shape[1], k.shape[2]
    grp = h // hk
    qr = _rope(q, tk - tq, rope) if rope is not None else q
    kr = _rope(k, 0, rope) if rope is not None else k
    qs = np.matmul(qr, ex["score_w"]) if score == "bilinear" else qr
    dqs, dk, dv = np.zeros(qs.shape, g.dtype), np.zeros(kr.shape, g.dtype), np.zeros(
        v.shape, g.dtype)
    dvals = {i: np.zeros((h, tq + tk - 1), g.dtype) for i, t in enumerate(bias) if t[0] == "t5"}
    heads = np.arange(h)[:, None, None, None]
    values = blocked_bias_values(bias, ex, h, tq, tk, g.dtype)
    full = None if layout is None else _block_grid(layout[0], tq, tk, BLOCK)
    for t, kk, rows in blocked_steps(layout, tq, tk, b * h, gather):   # (nt,), (nt, K)
        p = blocked_probs(qs, kr, ex, attrs["pattern"], scale, values, t, kk, rows, BLOCK,
                          full)
        qpos = t[:, None] * BLOCK + np.arange(rows)[None, :]             # (nt, rows)
        pg = p.reshape(b, hk, grp, *p.shape[2:])                         # (B, Hk, G, nt, r, K)
        gg = g[:, :, qpos].reshape(b, hk, grp, len(t), rows, -1)         # (B, Hk, G, nt, r, Dv)
        np.add.at(dv, (slice(None), slice(None), kk), np.matmul(_swap(pg), gg).sum(axis=2))
        dp = np.matmul(gg, _swap(_tile_keys(v, kk))[:, :, None])         # (B, Hk, G, nt, r, K)
        ds = pg * (dp - np.sum(dp * pg, axis=-1, keepdims=True))
        for i in dvals:
            idx = kk[:, None, :] - qpos[:, :, None] + tq - 1             # (nt, r, K)
            np.add.at(dvals[i], (heads, idx[None]), ds.reshape(p.shape).sum(axis=0))
        ds *= scale
        dqs[:, :, qpos] = np.matmul(ds, _tile_keys(kr, kk)[:, :, None]).reshape(
            b, h, len(t), rows, -1)                                      # (B, H, nt, r, D)
        qg = qs[:, :, qpos].reshape(b, hk, grp, len(t), rows, -1)
        np.add.at(dk, (slice(None), slice(None), kk), np.matmul(_swap(ds), qg).sum(axis=2))
    grads: dict[str, Array | None] = {name: None for name in extras}
    for i, dval in dvals.items():
        table = ex[f"bias{i}"]
        dtable = np.zeros(table.shape, dtype=g.dtype)
        np.add.at(dtable, _t5_buckets(np.arange(-(tk - 1), tq), *bias[i][1:]), dval.T)
        grads[f"bias{i}"] = dtable
    dqr = dqs
    if score == "bilinear":
        grads["score_w"] = np.einsum("bhid,bhie->de", qr, dqs)
        dqr = np.matmul(dqs, _swap(ex["score_w"]))
    dq = _rope(dqr, tk - tq, rope, inverse=True) if rope is not None else dqr
    dk = _rope(dk, 0, rope, inverse=True) if rope is not None else dk
    return (dq, dk, dv, *(grads[name] for name in extras))
