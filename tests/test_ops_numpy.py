"""NumPy kernels and small compiled specs against direct NumPy implementations of the
standard formulas (written out here, independently of the kernels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from attndsl.backends import numpy_kernels as K
from helpers import ATTN_SPEC, GAPS_SPEC, OPS_SPEC
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import TOLERANCES

import attndsl
from attndsl.ir import patterns as pat
from attndsl.ir.ops import OPS

DTYPES = ("float32", "float64")
RNG_SEED = 1234


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


def close(actual, expected, dtype: str = "float32") -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), **TOLERANCES[dtype])


# -- reference formulas ------------------------------------------------------------------------

def softmax_ref(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layer_norm_ref(x, gamma, beta, eps):
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + (0.0 if beta is None else beta)


def rms_norm_ref(x, gamma, eps):
    x = np.asarray(x, dtype=np.float64)
    return gamma * x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)


def gelu_tanh_ref(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf_ref(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid_ref(x):
    return np.vectorize(lambda v: 1.0 / (1.0 + math.exp(-v)) if v >= 0
                        else math.exp(v) / (1.0 + math.exp(v)), otypes=[np.float64])(x)


def silu_ref(x):
    return np.asarray(x, dtype=np.float64) * sigmoid_ref(x)


def linear_ref(x, w, b=None):
    y = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    return y if b is None else y + b


def embedding_ref(table, ids):
    rows = [table[i] for i in np.asarray(ids).reshape(-1)]
    return np.stack(rows).reshape(np.shape(ids) + table.shape[1:])


def sinusoidal_ref(n, d, offset=0):
    pe = np.zeros((n, d))
    for pos in range(offset, offset + n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            pe[pos - offset, 2 * i] = math.sin(angle)
            pe[pos - offset, 2 * i + 1] = math.cos(angle)
    return pe


def attention_ref(q, k, v, allowed, scale, key_padding=None):
    """softmax(q k^T * scale + mask) v, one query row at a time; queries are the last Tq
    of the Tk positions; a row with no allowed key is zero."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    bsz, heads, tq, _ = q.shape
    tk = k.shape[2]
    out = np.zeros((bsz, heads, tq, v.shape[-1]))
    for b in range(bsz):
        for h in range(heads):
            for i in range(tq):
                qpos = tk - tq + i
                keys = [j for j in range(tk) if allowed(qpos, j)
                        and (key_padding is None or key_padding[b, j])]
                if not keys:
                    continue
                s = np.array([q[b, h, i] @ k[b, h, j] * scale for j in keys])
                p = np.exp(s - s.max())
                p /= p.sum()
                out[b, h, i] = sum(pj * v[b, h, j] for pj, j in zip(p, keys))
    return out


# Each pattern: the Pattern value the compiler builds, and its definition as a predicate.
PATTERNS = {
    "full": (pat.FULL, lambda i, j: True),
    "causal": (pat.CAUSAL, lambda i, j: j <= i),
    "window3": (pat.Window(3), lambda i, j: abs(i - j) < 3),
    "causal_window3": (pat.CAUSAL & pat.Window(3), lambda i, j: j <= i and i - j < 3),
    "global0": (pat.Window(2) | pat.Global((0,)), lambda i, j: abs(i - j) < 2 or 0 in (i, j)),
    "causal_global": (pat.CAUSAL & pat.Window(2) | pat.Global((0, 5)),
                      lambda i, j: (j <= i and i - j < 2) or i in (0, 5) or j in (0, 5)),
    "prefix_lm": (pat.Prefix(4) | pat.CAUSAL, lambda i, j: j < 4 or j <= i),
    "dilated": (pat.Dilated(2, 3), lambda i, j: abs(i - j) < 6 and (i - j) % 3 == 0),
    "strided": (pat.Strided(2) & pat.CAUSAL, lambda i, j: j <= i and (i - j) % 2 == 0),
}


def pattern_source(p: pat.Pattern) -> str | None:
    """The attribute the code generator passes to the kernel (None for full attention)."""
    return None if p.is_full else p.source()


# -- ops covered by this file (kept complete by test_every_op_is_covered) -------------------------

UNARY = {
    "neg": lambda x: -np.asarray(x, dtype=np.float64),
    "exp": lambda x: np.vectorize(math.exp)(x),
    "log": lambda x: np.vectorize(math.log)(x),
    "sqrt": lambda x: np.vectorize(math.sqrt)(x),
    "tanh": lambda x: np.vectorize(math.tanh)(x),
    "abs": lambda x: np.vectorize(abs)(x),
    "sigmoid": sigmoid_ref,
    "relu": lambda x: np.vectorize(lambda v: max(v, 0.0))(x),
    "silu": silu_ref,
    "sin": lambda x: np.vectorize(math.sin)(x),
    "cos": lambda x: np.vectorize(math.cos)(x),
    "sign": lambda x: np.vectorize(lambda v: 1.0 if v > 0 else -1.0 if v < 0 else 0.0)(x),
    "softplus": lambda x: np.vectorize(lambda v: v if v > 20 else math.log(1 + math.exp(v)))(x),
}
POSITIVE_ONLY = {"log", "sqrt"}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: np.abs(a) ** b,
    "maximum": lambda a, b: np.where(a > b, a, b),
    "minimum": lambda a, b: np.where(a < b, a, b),
}
COMPARE = {"less": lambda a, b: a < b, "greater": lambda a, b: a > b,
           "equal": lambda a, b: a == b}
TESTED_ELSEWHERE = {
    "constant", "arange", "sinusoidal", "gelu", "cast", "dropout", "layer_drop", "where", "matmul", "linear",
    "transpose", "reshape", "sum", "mean", "max", "concat", "expand", "index", "softmax",
    "layer_norm", "add_layer_norm", "rms_norm", "embedding", "attention", "attention_weights", "size", "clip",
    "logical_and", "logical_or", "logical_not", "min", "cumsum", "one_hot", "top_k_indices",
    "gather", "linear_int8", "linear_attention", "moe_route", "moe_dispatch", "moe_counts",
    "moe_combine", "moe_aux", "moe_dropped", "grouped_linear", "conv1d", "lsh_attention",
    "batch_norm",
}
GRAPH_SOURCES = {"input", "param"}   # read by generated code, no kernel


def test_every_op_is_covered() -> None:
    covered = set(UNARY) | set(BINARY) | set(COMPARE) | TESTED_ELSEWHERE | GRAPH_SOURCES
    assert set(OPS) - covered == set(), "ops without a reference test here"


# -- elementwise -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op: str, dtype: str) -> None:
    x = rng().standard_normal((3, 7)).astype(dtype) * 3
    if op in POSITIVE_ONLY:
        x = np.abs(x) + 0.1
    y = getattr(K, f"op_{op}")(x)
    assert y.dtype == np.dtype(dtype), "float kernels keep their input's dtype"
    close(y, UNARY[op](x.astype(np.float64)), dtype)


@pytest.mark.parametrize("op", ["sigmoid", "silu", "exp", "tanh"])
def test_unary_extremes_are_finite(op: str) -> None:
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0], dtype=np.float32)
    if op == "exp":
        x = np.clip(x, -100, 80)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = getattr(K, f"op_{op}")(x)
    assert np.isfinite(y).all()
    close(y, UNARY[op](x.astype(np.float64)))


def test_sigmoid_of_int_tensor_is_not_truncated() -> None:
    """`sigmoid` is float-valued whatever its input (the IR types it float)."""
    y = K.op_sigmoid(np.arange(-3, 4))
    assert y.dtype.kind == "f"
    close(y, sigmoid_ref(np.arange(-3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_broadcasting(op: str, dtype: str) -> None:
    r = rng()
    a = r.standard_normal((2, 3, 4)).astype(dtype)
    b = r.standard_normal((3, 1)).astype(dtype)
    if op == "div":
        b = np.where(np.abs(b) < 0.1, 1.0, b).astype(dtype)
    if op == "pow":
        a = np.abs(a)
    y = getattr(K, f"op_{op}")(a, b)
    assert y.shape == (2, 3, 4)
    close(y, BINARY[op](a.astype(np.float64), b.astype(np.float64)), dtype)


@pytest.mark.parametrize("op", sorted(COMPARE))
def test_comparisons(op: str) -> None:
    a = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    b = np.array([[2.0], [1.0]], dtype=np.float32)
    y = getattr(K, f"op_{op}")(a, b)
    assert y.dtype == bool
    np.testing.assert_array_equal(y, COMPARE[op](a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh(dtype: str) -> None:
    x = (rng().standard_normal((4, 9)) * 3).astype(dtype)
    x_before = x.copy()
    close(K.op_gelu(x, approximate="tanh"), gelu_tanh_ref(x), dtype)
    np.testing.assert_array_equal(x, x_before)  # the in-place tanh form must not touch x


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_exact_erf(dtype: str) -> None:
    x = np.concatenate([np.linspace(-6, 6, 241), rng().standard_normal(50) * 2]).astype(dtype)
    close(K.op_gelu(x, approximate="none"), gelu_erf_ref(x), dtype)


def test_gelu_tanh_and_erf_forms_differ_slightly() -> None:
    x = np.linspace(-3, 3, 61)
    diff = np.abs(K.op_gelu(x, approximate="tanh") - K.op_gelu(x, approximate="none"))
    assert 1e-5 < diff.max() < 1e-2


def test_cast() -> None:
    x = np.array([-1.7, 0.0, 2.5])
    np.testing.assert_array_equal(K.op_cast(x, dtype="int"), [-1, 0, 2])
    np.testing.assert_array_equal(K.op_cast(x, dtype="bool"), [True, False, True])
    y = K.op_cast(np.arange(3), dtype="float")
    assert y.dtype == K.DTYPE
    np.testing.assert_array_equal(y, [0.0, 1.0, 2.0])


def test_dropout_is_identity_at_inference() -> None:
    x = rng().standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_array_equal(K.op_dropout(x, p=0.5), x)


def test_layer_drop_runs_the_layer_at_inference() -> None:
    x, y = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(K.op_layer_drop(x, y, p=0.5), y)


def test_where() -> None:
    c = np.array([[True, False, True]])
    a = np.ones((2, 3), dtype=np.float32)
    b = np.float32(-2.0)
    np.testing.assert_array_equal(K.op_where(c, a, b), [[1, -2, 1], [1, -2, 1]])


# -- leaves --------------------------------------------------------------------------------------

def test_constant_and_arange() -> None:
    c = K.op_constant(value=2.5, dtype="float")
    assert c.shape == () and c.dtype == K.DTYPE and float(c) == 2.5
    assert K.op_constant(value=True, dtype="bool").dtype == bool
    np.testing.assert_array_equal(K.op_arange(n=4, offset=3), [3, 4, 5, 6])
    assert K.op_arange(n=4, offset=0).dtype.kind == "i"


@pytest.mark.parametrize("n,d,offset", [(16, 8, 0), (5, 12, 7), (1, 2, 0)])
def test_sinusoidal(n: int, d: int, offset: int) -> None:
    table = K.op_sinusoidal(n=n, dim=d, offset=offset)
    assert table.shape == (n, d) and table.dtype == K.DTYPE
    close(table, sinusoidal_ref(n, d, offset))


# -- linear algebra and shapes -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_batched_broadcast(dtype: str) -> None:
    r = rng()
    a = r.standard_normal((2, 1, 3, 4)).astype(dtype)
    b = r.standard_normal((5, 4, 6)).astype(dtype)
    y = K.op_matmul(a, b)
    assert y.shape == (2, 5, 3, 6)
    ref = np.einsum("xyik,zkj->xzij", a.astype(np.float64), b.astype(np.float64))
    close(y, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_linear(shape: tuple[int, ...], bias: bool, dtype: str) -> None:
    r = rng()
    x = r.standard_normal(shape).astype(dtype)
    w = r.standard_normal((7, 5)).astype(dtype)
    b = r.standard_normal(7).astype(dtype) if bias else None
    y = K.op_linear(x, w, b, has_bias=bias)
    assert y.shape == shape[:-1] + (7,)
    close(y, linear_ref(x, w, b), dtype)


def test_linear_on_a_non_contiguous_input() -> None:
    r = rng()
    x = r.standard_normal((4, 3, 5)).astype(np.float32).transpose(1, 0, 2)   # (3, 4, 5) view
    w = r.standard_normal((2, 5)).astype(np.float32)
    close(K.op_linear(x, w, has_bias=False), linear_ref(x, w))


def test_shape_ops() -> None:
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(K.op_transpose(x, perm=(2, 0, 1)), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(K.op_reshape(x, shape=(6, 4)), x.reshape(6, 4))
    np.testing.assert_array_equal(K.op_concat(x, x[:, :1], axis=1),
                                  np.concatenate([x, x[:, :1]], axis=1))
    y = K.op_expand(np.ones((1, 1, 4)), shape=(2, 3, 4))
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(K.op_index(x, index=((None, None), 0)), x[:, 0])
    np.testing.assert_array_equal(K.op_index(x, index=(1, (1, 3))), x[1, 1:3])
    np.testing.assert_array_equal(K.op_index(x, index=((1, None),)), x[1:])


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("axes,keepdims", [((-1,), False), ((0, 2), True), ((1,), True)])
def test_reductions(op: str, axes: tuple[int, ...], keepdims: bool) -> None:
    x = rng().standard_normal((2, 3, 4))
    ref = {"sum": np.add.reduce, "mean": None, "max": np.maximum.reduce}[op]
    y = getattr(K, f"op_{op}")(x, axes=axes, keepdims=keepdims)
    if op == "mean":
        expected = np.add.reduce(x, axis=axes, keepdims=keepdims) / np.prod(
            [x.shape[a] for a in axes])
    else:
        expected = ref(x, axis=axes, keepdims=keepdims)
    close(y, expected, "float64")


# -- softmax, norms, embedding ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis: int, dtype: str) -> None:
    x = (rng().standard_normal((3, 4, 5)) * 4).astype(dtype)
    y = K.op_softmax(x, axis=axis)
    close(y, softmax_ref(x, axis), dtype)
    close(y.sum(axis=axis), np.ones(np.delete(x.shape, axis % 3)), dtype)


def test_softmax_large_logits_are_stable() -> None:
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4 - 1.0], [-1e4, -1e4, -1e4]],
                 dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = K.op_softmax(x, axis=-1)
    assert np.isfinite(y).all()
    close(y, softmax_ref(x))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=12))
def test_softmax_property(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    y = K.op_softmax(x, axis=-1)
    assert np.isfinite(y).all() and (y >= 0).all()
    assert abs(float(y.sum()) - 1.0) < 1e-5
    assert int(np.argmax(y)) == int(np.argmax(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(bias: bool, dtype: str) -> None:
    r = rng()
    x = (r.standard_normal((2, 3, 16)) * 5 + 3).astype(dtype)
    g = r.standard_normal(16).astype(dtype)
    b = r.standard_normal(16).astype(dtype) if bias else None
    x_before = x.copy()
    y = K.op_layer_norm(x, g, b, eps=1e-5, has_bias=bias)
    assert y.dtype == np.dtype(dtype)
    close(y, layer_norm_ref(x, g, b, 1e-5), dtype)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm(dtype: str) -> None:
    """layer_norm(a + r) against the formula; inputs unchanged; rows beyond one block (the
    kernel works a block of rows at a time), and affine=false."""
    r = rng()
    a, res = (r.standard_normal((2, 300, 64)) * 3 + 1).astype(dtype)
    g, b = r.standard_normal((2, 64)).astype(dtype)
    before = a.copy(), res.copy()
    y = K.op_add_layer_norm(a, res, g, b, eps=1e-5, has_bias=True)
    assert y.dtype == np.dtype(dtype)
    close(y, layer_norm_ref(a + res, g, b, 1e-5), dtype)
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(res, before[1])
    close(K.op_add_layer_norm(a, res, eps=1e-5, has_bias=False),
          layer_norm_ref(a + res, np.ones(64, dtype), None, 1e-5), dtype)


def test_layer_norm_of_a_constant_row_is_beta() -> None:
    x = np.full((2, 8), 7.0, dtype=np.float32)
    b = np.arange(8, dtype=np.float32)
    y = K.op_layer_norm(x, np.ones(8, np.float32), b, eps=1e-5, has_bias=True)
    close(y, np.broadcast_to(b, (2, 8)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype: str) -> None:
    r = rng()
    x = (r.standard_normal((2, 5, 16)) * 3).astype(dtype)
    g = r.standard_normal(16).astype(dtype)
    y = K.op_rms_norm(x, g, eps=1e-6)
    assert y.dtype == np.dtype(dtype)
    close(y, rms_norm_ref(x, g, 1e-6), dtype)


def test_embedding() -> None:
    table = rng().standard_normal((11, 4)).astype(np.float32)
    ids = np.array([[0, 10, 3], [3, 3, 1]])
    y = K.op_embedding(table, ids)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, embedding_ref(table, ids))
    np.testing.assert_array_equal(K.op_embedding(table, np.arange(3)), table[:3])


@pytest.mark.parametrize("bad_id", [-1, 11])
def test_embedding_rejects_out_of_range_ids(bad_id: int) -> None:
    """Like torch's embedding: no silent wrap-around of negative ids."""
    table = np.zeros((11, 4), dtype=np.float32)
    with pytest.raises(IndexError):
        K.op_embedding(table, np.array([[0, bad_id]]))


# -- attention -----------------------------------------------------------------------------------

def qkv(bsz=2, heads=2, tq=10, tk=10, d=8, dtype="float64", seed=RNG_SEED, scale=1.0):
    r = rng(seed)
    return tuple((r.standard_normal((bsz, heads, t, d)) * scale).astype(dtype)
                 for t in (tq, tk, tk))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_attention_patterns(name: str, dtype: str) -> None:
    pattern, allowed = PATTERNS[name]
    q, k, v = qkv(dtype=dtype)
    y = K.op_attention(q, k, v, pattern=pattern_source(pattern), scale=1 / math.sqrt(8),
                       dropout=0.0)
    assert y.shape == (2, 2, 10, 8) and y.dtype == np.dtype(dtype)
    close(y, attention_ref(q, k, v, allowed, 1 / math.sqrt(8)), dtype)


def test_pattern_source_agrees_with_its_definition() -> None:
    qpos, kpos = np.arange(12)[:, None], np.arange(12)[None, :]
    for name, (pattern, allowed) in PATTERNS.items():
        expected = np.array([[allowed(i, j) for j in range(12)] for i in range(12)])
        got = np.broadcast_to(pattern.allowed(qpos, kpos), (12, 12))
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("name", ["full", "causal", "causal_window3"])
def test_attention_queries_are_the_last_positions(name: str) -> None:
    """With fewer queries than keys (cached decoding), queries sit at the end."""
    pattern, allowed = PATTERNS[name]
    q, k, v = qkv(tq=3, tk=9)
    y = K.op_attention(q, k, v, pattern=pattern_source(pattern), scale=0.3, dropout=0.0)
    close(y, attention_ref(q, k, v, allowed, 0.3), "float64")


@pytest.mark.parametrize("name", ["full", "causal", "window3"])
def test_attention_key_padding(name: str) -> None:
    pattern, allowed = PATTERNS[name]
    q, k, v = qkv()
    pad = np.ones((2, 10), dtype=bool)
    pad[0, 7:] = False
    pad[1, ::3] = False
    y = K.op_attention(q, k, v, pad, pattern=pattern_source(pattern), scale=0.25, dropout=0.0)
    close(y, attention_ref(q, k, v, allowed, 0.25, pad), "float64")


def test_attention_fully_masked_rows_are_zero_not_nan() -> None:
    q, k, v = qkv(dtype="float32")
    pad = np.ones((2, 10), dtype=bool)
    pad[1] = False                                   # batch 1: every key padded
    with np.errstate(invalid="raise", divide="raise"):
        y = K.op_attention(q, k, v, pad, pattern=None, scale=0.3, dropout=0.0)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[1], 0.0)
    close(y[0], attention_ref(q[:1], k[:1], v[:1], lambda i, j: True, 0.3)[0])
    # a pattern that leaves some query rows without keys (window around position 0 only)
    only_first = pat.Window(1) & pat.Global((0,))
    y = K.op_attention(q, k, v, pattern=only_first.source(), scale=0.3, dropout=0.0)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, :, 1:], 0.0)
    close(y[:, :, 0], v[:, :, 0])


@pytest.mark.parametrize("name", ["full", "causal", "causal_window3"])
def test_attention_large_logits_are_stable(name: str) -> None:
    pattern, allowed = PATTERNS[name]
    q, k, v = qkv(scale=40.0)                        # scores of order 1e4
    assert np.abs(np.einsum("bhid,bhjd->bhij", q, k)).max() > 1e3
    y64 = K.op_attention(q, k, v, pattern=pattern_source(pattern), scale=1.0, dropout=0.0)
    close(y64, attention_ref(q, k, v, allowed, 1.0), "float64")
    q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
    with np.errstate(over="raise", invalid="raise"):
        y32 = K.op_attention(q32, k32, v32, pattern=pattern_source(pattern), scale=1.0,
                             dropout=0.0)
    assert np.isfinite(y32).all()


def test_attention_cross_lengths() -> None:
    q, _, _ = qkv(tq=4)
    _, k, v = qkv(tk=7, seed=7)
    y = K.op_attention(q, k, v, pattern=None, scale=0.5, dropout=0.0)
    close(y, attention_ref(q, k, v, lambda i, j: True, 0.5), "float64")


def test_attention_cached_appends_to_the_cache() -> None:
    q, k, v = qkv(tq=6, tk=6)
    full = K.op_attention(q, k, v, pattern=pat.CAUSAL.source(), scale=0.3, dropout=0.0)
    cache: dict = {}
    steps = [K.op_attention_cached(cache, 0, q[:, :, t:t + 1], k[:, :, t:t + 1],
                                   v[:, :, t:t + 1], pattern=pat.CAUSAL.source(), scale=0.3,
                                   dropout=0.0) for t in range(6)]
    close(np.concatenate(steps, axis=2), full, "float64")
    assert cache[0][0].shape == k.shape


# -- the same ops through compiled specs --------------------------------------------------------



@pytest.fixture(scope="module")
def ops_model():
    model = attndsl.compile(OPS_SPEC, backend="numpy", seed=3)
    state = {name: rng(i).standard_normal(v.shape).astype(np.float32)
             for i, (name, v) in enumerate(model.state_dict().items())}
    model.load_state_dict(state)
    return model


def test_compile_accepts_spec_text() -> None:
    model = attndsl.compile("model m {\n  input x: float[B, 4]\n  output y = relu(x)\n}\n")
    close(model(x=np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32))["y"], [[0, 2, 0, 4]])


def test_ops_through_a_spec(ops_model) -> None:
    r = rng(5)
    x = r.standard_normal((2, 6, 8)).astype(np.float32)
    ids = r.integers(0, 13, (2, 6))
    out = ops_model(x=x, ids=ids)
    p = ops_model.state_dict()
    assert set(out) == {"sm", "sm0", "ln", "rn", "gt", "ge", "si", "lin", "emb", "pe", "arith",
                        "red"}
    close(out["sm"], softmax_ref(x, -1))
    close(out["sm0"], softmax_ref(x, 1))
    close(out["ln"], layer_norm_ref(x, p["ln.weight"], p["ln.bias"], 1e-5))
    close(out["rn"], rms_norm_ref(x, p["rn.weight"], 1e-6))
    close(out["gt"], gelu_tanh_ref(x))
    close(out["ge"], gelu_erf_ref(x))
    close(out["si"], silu_ref(x))
    close(out["lin"], linear_ref(x, p["lin.weight"], p["lin.bias"]))
    np.testing.assert_array_equal(out["emb"], embedding_ref(p["emb.weight"], ids))
    close(out["pe"], sinusoidal_ref(6, 8))
    x64 = x.astype(np.float64)
    close(out["arith"], (x64 * 2 - 1) / 4 + x64 ** 2)
    close(out["red"], x64.mean(-1, keepdims=True) + x64.sum(1, keepdims=True))
    for name, value in out.items():
        if value.dtype.kind == "f":
            assert value.dtype == np.float32, f"{name} is {value.dtype} in a float32 model"


def test_ops_through_a_spec_in_float64() -> None:
    model = attndsl.compile(OPS_SPEC, backend="numpy", seed=3, dtype="float64")
    r = rng(5)
    x = r.standard_normal((1, 5, 8))
    out = model(x=x, ids=r.integers(0, 13, (1, 5)))
    p = model.state_dict()
    close(out["ln"], layer_norm_ref(x, p["ln.weight"], p["ln.bias"], 1e-5),
          "float64")
    close(out["sm"], softmax_ref(x), "float64")
    close(out["ge"], gelu_erf_ref(x), "float64")
    close(out["pe"], sinusoidal_ref(5, 8), "float64")
    assert out["ln"].dtype == np.float64




def test_attention_through_a_spec() -> None:
    model = attndsl.compile(ATTN_SPEC, backend="numpy")
    q, k, v = qkv(tq=10, tk=10, dtype="float32")
    pad = np.ones((2, 10), dtype=bool)
    pad[1, 6:] = False
    pad[0, 0] = False     # query 0 of batch 0 is causal and sees only key 0: a fully masked row
    out = model(q=q, k=k, v=v, pad=pad)
    s = 1 / math.sqrt(8)
    for name in ("full", "causal", "causal_window3", "global0", "prefix_lm", "dilated"):
        close(out[f"a_{name}"], attention_ref(q, k, v, PATTERNS[name][1], s), "float32")
    close(out["padded"], attention_ref(q, k, v, PATTERNS["causal"][1], s, pad))
    np.testing.assert_array_equal(out["padded"][0, :, 0], 0.0)
    close(out["scaled"], attention_ref(q, k, v, PATTERNS["full"][1], 0.1))
    close(out["by_hand"], out["a_full"])
    # the hand-written form is fused into the attention op
    attn_nodes = [n for n in model.graph.nodes.values() if n.op == "attention"]
    assert len(attn_nodes) == 9


# -- new elementwise, scans, gathers -------------------------------------------------------------

def test_clip_logical_cumsum_one_hot_formulas() -> None:
    x = rng().standard_normal((3, 7))
    close(K.op_clip(x, lo=-0.5, hi=None), np.array([[max(v, -0.5) for v in row] for row in x]))
    a, b = x > 0, x < 0.5
    np.testing.assert_array_equal(K.op_logical_and(a, b), [[p and q for p, q in zip(r, s)]
                                                         for r, s in zip(a, b)])
    np.testing.assert_array_equal(K.op_logical_not(a), ~a)
    close(K.op_cumsum(x, axis=1), np.array([[sum(row[:j + 1]) for j in range(7)] for row in x]))
    ids = np.array([[0, 3], [2, 2]])
    hot = K.op_one_hot(ids, n=4)
    assert hot.dtype == K.DTYPE and hot.shape == (2, 2, 4)
    np.testing.assert_array_equal(hot.argmax(-1), ids)
    assert hot.sum() == 4
    with pytest.raises(IndexError, match=r"one_hot ids must be in \[0, 4\)"):
        K.op_one_hot(np.array([4]), n=4)


def test_top_k_and_gather_formulas() -> None:
    x = np.array([[3.0, 1.0, 3.0, 2.0, 5.0]])
    idx = K.op_top_k_indices(x, k=3, axis=-1)
    np.testing.assert_array_equal(idx, [[4, 0, 2]])          # ties: the lower index first
    np.testing.assert_array_equal(K.op_gather(x, idx, axis=-1), [[5.0, 3.0, 3.0]])
    m = rng().standard_normal((4, 6))
    index = np.array([[5, 0], [1, 1], [2, 3], [0, 5]])
    np.testing.assert_array_equal(K.op_gather(m, index, axis=1),
                                  [[m[i, j] for j in row] for i, row in enumerate(index)])
    with pytest.raises(IndexError, match="gather index out of range"):
        K.op_gather(m, np.array([[6, 0]] * 4), axis=1)


def test_language_gaps_spec_values() -> None:
    """Ellipsis and negative slicing, sizes as numbers and slice bounds, int arithmetic,
    bool &/|/~, top_k, one_hot, two-tensor max/min, a model size inside a block."""
    model = attndsl.compile(GAPS_SPEC, backend="numpy", dtype="float64")
    r = rng()
    x, ids = r.standard_normal((2, 5, 8)), r.integers(0, 5, (2, 5))
    out = model(x=x, ids=ids)
    close(out["ellipsis"], x[..., :4] + x[..., -4:])
    close(out["last"], x[:, -1])
    close(out["tail"], x[:, 3:])
    close(out["positions"], np.arange(5) / 5)
    assert out["next_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["next_ids"], ids + 1)
    np.testing.assert_array_equal(out["mask"], ~(x[..., 0] > 0) & (x[..., 1] > 0) | (ids == 3))
    order = np.argsort(-x, axis=-1, kind="stable")[..., :3]
    close(out["top"], np.take_along_axis(x, order, -1))
    np.testing.assert_array_equal(out["top_idx"], order)
    np.testing.assert_array_equal(out["hot"], np.eye(5)[ids])
    close(out["elementwise"], np.maximum(x, x[..., :1]) + np.minimum(x, 0.5))
    close(out["in_block"], x / 5)


def test_kernels_split_over_threads_give_the_numbers_of_one_call(monkeypatch):
    """GELU, LayerNorm and their VJPs split rows over threads above PARALLEL_MIN elements
    and work a block of ACTIVATION_BLOCK elements at a time, and so does attention's softmax
    (dense and blocked): bitwise what one call over the whole array gives."""
    from attndsl.backends.codegen import block_sources

    from attndsl.autodiff import VJP_RULES
    from attndsl.ir import patterns as pat
    if K._workers() < 2:
        pytest.skip("one CPU: kernels run in one thread")
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, 2, 3, 50, 64)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0                                   # GELU's VJP at x = 0
    gamma, beta = rng.standard_normal((2, 64)).astype(np.float32)

    def run() -> list:
        out = []
        for form in ("tanh", "none"):
            y = K.op_gelu(x, approximate=form)
            out += [y, *VJP_RULES["gelu"](g, y, (x,), {"approximate": form})]
        y = K.op_layer_norm(x, gamma, beta, eps=1e-5, has_bias=True)
        out += [y, *VJP_RULES["layer_norm"](g, y, (x, gamma, beta), {"eps": 1e-5})]
        for p in (pat.CAUSAL, pat.CAUSAL & pat.Window(20)):
            attrs = dict(pattern=p.source(), pattern_blocks=block_sources(p), scale=0.3,
                         dropout=0.0)
            out += [K.op_attention(x, g, x + g, impl=impl, **attrs)
                    for impl in ("dense", "tiled", "sparse")]
        return out

    monkeypatch.setattr(K, "PARALLEL_MIN", 1 << 60)
    monkeypatch.setattr(K, "ACTIVATION_BLOCK", 1 << 60)
    monkeypatch.setattr(K, "BLOCK", 16)                          # several query tiles
    one = run()
    monkeypatch.setattr(K, "PARALLEL_MIN", 1)
    monkeypatch.setattr(K, "ACTIVATION_BLOCK", 1000)              # several blocks per thread
    split = run()
    assert K._workers.pool._threads                      # the other rows ran there
    for a, b in zip(one, split, strict=True):
        np.testing.assert_array_equal(a, b)
    nested = K._workers.pool.submit(K.op_gelu, x, approximate="tanh")   # from a pool thread:
    np.testing.assert_array_equal(nested.result(timeout=30), one[0])   # one call, no wait


def test_kernel_threads_work_in_a_forked_child(monkeypatch):
    """A process forked after the kernels used their thread pool gets its own pool (the
    copy it inherits has no threads: waiting on it would hang forever)."""
    import os
    import time
    if K._workers() < 2 or not hasattr(os, "fork"):
        pytest.skip("one CPU or no fork: kernels run in one thread")
    monkeypatch.setattr(K, "PARALLEL_MIN", 1)
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    want = K.op_gelu(x, approximate="tanh")              # the parent's pool has run
    pid = os.fork()
    if pid == 0:                                         # the child: exit 0 if right
        ok = np.array_equal(K.op_gelu(x, approximate="tanh"), want)
        os._exit(0 if ok else 1)
    for _ in range(200):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the kernel thread pool")
