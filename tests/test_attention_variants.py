"""Attention variants against independent references written here from the papers'
formulas (NumPy float64, explicit loops; nothing shared with the kernels), on every
installed backend: ALiBi (Press et al.), T5 relative buckets (Raffel et al.), Shaw et al.
relative keys, RoPE (half and interleaved layouts, partial dims, linear / NTK / Llama 3
scaling), grouped-query heads (repeat_kv), additive (Bahdanau) and bilinear (Luong) scores,
tensor biases and the exposed attention weights; plus the located errors."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import attndsl
from attndsl.errors import AttnError

H, T, D = 6, 7, 8


def softmax_rows(s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    s = np.where(allowed, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(q, k, v, score_fn, bias_fn=lambda b, h, i, j: 0.0, causal=False):
    """softmax_j(score(b, h, i, j) + bias(b, h, i, j)) v, by explicit loops (B, H, T, D)."""
    b, h, t, _ = q.shape
    out = np.zeros(q.shape[:3] + v.shape[3:])
    probs = np.zeros((b, h, t, k.shape[2]))
    for bi in range(b):
        for hi in range(h):
            s = np.array([[score_fn(bi, hi, i, j) + bias_fn(bi, hi, i, j) for j in range(k.shape[2])]
                          for i in range(t)])
            allowed = np.tril(np.ones_like(s, dtype=bool)) if causal else np.ones_like(
                s, dtype=bool)
            probs[bi, hi] = softmax_rows(s, allowed)
            out[bi, hi] = probs[bi, hi] @ v[bi, hi]
    return out, probs


def alibi_slopes_paper(n: int) -> list[float]:
    """ofirpress/attention_with_linear_biases, get_slopes()."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes_paper(2 * closest)[0::2][:n - closest]


def t5_bucket_paper(rel: int, bidirectional: bool, buckets: int, max_distance: int) -> int:
    """mesh_tensorflow / HF T5Attention._relative_position_bucket for one position."""
    ret = 0
    n = -rel
    if bidirectional:
        buckets //= 2
        ret += buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = buckets // 2
    if n < exact:
        return ret + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (buckets - exact))
    return ret + min(large, buckets - 1)


def rope_paper(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, dims: int,
               layout: str) -> np.ndarray:
    """RoFormer eq. 34 with complex numbers: pair (a, b) -> (a + ib) e^{i pos theta}."""
    out = x.copy()
    for t, pos in enumerate(positions):
        rot = np.exp(1j * pos * inv_freq)                              # (dims/2,)
        if layout == "interleaved":
            z = (x[..., t, 0:dims:2] + 1j * x[..., t, 1:dims:2]) * rot
            out[..., t, 0:dims:2], out[..., t, 1:dims:2] = z.real, z.imag
        else:
            z = (x[..., t, :dims // 2] + 1j * x[..., t, dims // 2:dims]) * rot
            out[..., t, :dims // 2], out[..., t, dims // 2:dims] = z.real, z.imag
    return out


def llama3_inv_freq(inv: np.ndarray, factor, low, high, old) -> np.ndarray:
    """HF _compute_llama3_parameters, element by element."""
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


SPEC = """model m {{
    input q: float[B, {h}, T, {d}]
    input k: float[B, {hk}, T, {d}]
    input v: float[B, {hk}, T, {d}]
    output y = sdpa(q, k, v, {kwargs})
}}"""


def run(kwargs: str, backend: str, hk: int = H, seed: int = 0, params=None, outputs=None,
        extra_inputs: str = ""):
    spec = SPEC.format(h=H, hk=hk, d=D, kwargs=kwargs)
    if extra_inputs:
        spec = spec.replace("    output y", f"    {extra_inputs}\n    output y")
    model = attndsl.compile(spec, backend=backend, dtype="float64", outputs=outputs)
    rng = np.random.default_rng(seed)
    if params:
        model.load_state_dict({n: params(n, a.shape, rng) for n, a in
                               model.state_dict().items()})
    q, k, v = (rng.standard_normal((2, h, T, D)) for h in (H, hk, hk))
    return model, (q, k, v)


def check(model, ins, expected, **more):
    got = model.to_numpy(model(q=ins[0], k=ins[1], v=ins[2], **more))
    np.testing.assert_allclose(got["y"], expected, rtol=1e-10, atol=1e-12)
    return got


def test_alibi_slopes_match_the_paper_code():
    from attndsl.backends.numpy_kernels import _alibi_slopes
    for n in (1, 2, 6, 8, 12, 16, 20):
        np.testing.assert_allclose(_alibi_slopes(n), alibi_slopes_paper(n), rtol=1e-13)
    assert alibi_slopes_paper(8) == [2.0 ** -i for i in range(1, 9)]


def test_alibi(backend):
    model, (q, k, v) = run("pattern=causal, bias=alibi()", backend)
    m = alibi_slopes_paper(H)
    want, _ = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ k[b, h, j] / math.sqrt(D),
                        lambda b, h, i, j: -m[h] * abs(i - j), causal=True)
    check(model, (q, k, v), want)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias(backend, bidirectional):
    flag = "true" if bidirectional else "false"
    model, (q, k, v) = run(f"score=dot, bias=t5_bias(buckets=8, max_distance=12, "
                           f"bidirectional={flag})", backend,
                           params=lambda n, s, rng: rng.standard_normal(s))
    (table,) = model.state_dict().values()
    assert table.shape == (8, H)
    want, _ = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ k[b, h, j],
                        lambda b, h, i, j: table[t5_bucket_paper(j - i, bidirectional, 8, 12), h])
    check(model, (q, k, v), want)


@pytest.mark.parametrize("bidirectional, causal", [(False, True), (True, False), (True, True)])
def test_t5_bias_long_sequence(backend, bidirectional, causal, monkeypatch):
    """Past the last bucket's distance (10 here) torch runs T5 as a band plus shifted causal
    SDPA over the far keys (in groups of heads), merged by log-sum-exp: the same numbers as
    the paper's formula."""
    flag = "true" if bidirectional else "false"
    pattern = "pattern=causal, " if causal else ""
    model, _ = run(f"{pattern}score=dot, bias=t5_bias(buckets=8, max_distance=12, "
                   f"bidirectional={flag})", backend, params=lambda n, s, rng: rng.standard_normal(s))
    (table,) = model.state_dict().values()
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, H, 41, D)) for _ in range(3))
    if backend == "torch":                         # spy on the generated module's kernel
        ns = type(model.program.module).forward.__globals__
        split, calls = ns["_t5_split_sdpa"], []
        monkeypatch.setitem(ns, "_t5_split_sdpa", lambda *a: calls.append(out := split(*a)) or out)
        monkeypatch.setitem(ns, "T5_GROUP_HEADS", 1)    # the far keys a head at a time
    want, _ = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ k[b, h, j],
                        lambda b, h, i, j: table[t5_bucket_paper(j - i, bidirectional, 8, 12), h],
                        causal=causal)
    check(model, (q, k, v), want)
    if backend == "torch":
        assert len(calls) == 1 and calls[0] is not None


def test_shaw_relative_keys(backend):
    model, (q, k, v) = run("pattern=causal, bias=relative(max_distance=2)", backend,
                           params=lambda n, s, rng: rng.standard_normal(s))
    (a,) = model.state_dict().values()                               # [2k + 1, D]
    s = 1 / math.sqrt(D)
    want, _ = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ (k[b, h, j] + a[
        min(max(j - i, -2), 2) + 2]) * s, causal=True)
    check(model, (q, k, v), want)


@pytest.mark.parametrize("layout, dims, scaling, theta", [
    ("half", D, "none", 10000.0), ("interleaved", D, "none", 500.0), ("half", 4, "none", 100.0),
    ("half", D, "linear(4)", 10000.0), ("interleaved", 6, "ntk(2)", 10000.0),
    ("half", D, "llama3(factor=8, low_freq_factor=1, high_freq_factor=4, "
     "original_max_position=16)", 10000.0)])
def test_rope(backend, layout, dims, scaling, theta):
    model, (q, k, v) = run(f'pattern=causal, rope=rope(theta={theta}, dims={dims}, '
                           f'scaling={scaling}, layout="{layout}")', backend, hk=2)
    base = theta * (2.0 ** (dims / (dims - 2)) if scaling.startswith("ntk") else 1.0)
    inv = base ** (-np.arange(0, dims, 2) / dims)
    if scaling.startswith("linear"):
        inv = inv / 4
    if scaling.startswith("llama3"):
        inv = llama3_inv_freq(inv, 8, 1, 4, 16)
    pos = np.arange(T)
    qr, kr = (rope_paper(x, pos, inv, dims, layout) for x in (q, k))
    kr, vr = np.repeat(kr, H // 2, axis=1), np.repeat(v, H // 2, axis=1)   # repeat_kv
    want, _ = reference(qr, kr, vr, lambda b, h, i, j: qr[b, h, i] @ kr[b, h, j] / math.sqrt(D),
                        causal=True)
    check(model, (q, k, v), want)


@pytest.mark.parametrize("hk", [1, 2, 3])
def test_grouped_query_heads_equal_repeat_kv(backend, hk):
    model, (q, k, v) = run("pattern=causal", backend, hk=hk)
    kr, vr = np.repeat(k, H // hk, axis=1), np.repeat(v, H // hk, axis=1)
    want, _ = reference(q, kr, vr, lambda b, h, i, j: q[b, h, i] @ kr[b, h, j] / math.sqrt(D),
                        causal=True)
    check(model, (q, k, v), want)


def test_additive_score(backend):
    model, (q, k, v) = run("score=additive", backend, hk=3,
                           params=lambda n, s, rng: rng.standard_normal(s) * 0.5)
    p = model.state_dict()
    wq, wk, w = p["y.score.wq"], p["y.score.wk"], p["y.score.v"]
    kr, vr = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    want, _ = reference(q, kr, vr, lambda b, h, i, j: w @ np.tanh(wq @ q[b, h, i]
                                                                  + wk @ kr[b, h, j]))
    check(model, (q, k, v), want)


def test_bilinear_score(backend):
    model, (q, k, v) = run("score=bilinear, pattern=causal", backend,
                           params=lambda n, s, rng: rng.standard_normal(s) * 0.3)
    (w,) = model.state_dict().values()
    want, _ = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ w @ k[b, h, j], causal=True)
    check(model, (q, k, v), want)


def test_tensor_bias_and_weights_output(backend):
    model, (q, k, v) = run('pattern=causal, bias=alibi() + mask, weights="probs"', backend,
                           outputs=["y", "probs"], extra_inputs="input mask: float[B, 1, T, T]")
    mask = np.random.default_rng(9).standard_normal((2, 1, T, T))
    m = alibi_slopes_paper(H)
    want, probs = reference(q, k, v, lambda b, h, i, j: q[b, h, i] @ k[b, h, j] / math.sqrt(D),
                            lambda b, h, i, j: -m[h] * abs(i - j) + mask[b, 0, i, j],
                            causal=True)
    got = check(model, (q, k, v), want, mask=mask)
    np.testing.assert_allclose(got["probs"], probs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["probs"].sum(-1), 1.0, rtol=1e-12)
    plain = attndsl.compile(SPEC.format(h=H, hk=H, d=D, kwargs='weights="probs"'))
    assert list(plain.graph.outputs) == ["y"]                       # weights only when asked


@pytest.mark.parametrize("kwargs, message, col", [
    ("bias=true", "proj_bias", None),
    ("kv_heads=5", "not a multiple of kv_heads=5", None),
    ("rope=rope(dims=3)", "rope dims must be even", None),
    ("rope=rope(dims=2, scaling=ntk(2))", "ntk scaling needs rope dims > 2", None),
    ("rope=rope(dims=64)", "at most the head size 8", None),
    ("score=cosine", "unknown name 'cosine'", None),
    ("rope=rope(layout=\"spiral\")", "layout must be one of", None),
])
def test_located_errors(kwargs, message, col):
    spec = f"""model m {{
    input x: float[B, T, 48]
    output y = attention(x, 6, {kwargs})
}}"""
    with pytest.raises(AttnError) as e:
        attndsl.build(spec)
    text = str(e.value)
    assert message in text + (e.value.hint or ""), text
    assert e.value.span is not None and e.value.span.line == 3


def test_sharing_one_t5_table_needs_equal_head_counts():
    spec = """model m {
    input x: float[B, T, 48]
    rel = t5_bias()
    a = attention(x, 6, bias=rel)
    output y = attention(a, 4, bias=rel)
}"""
    with pytest.raises(AttnError, match="bias table 'rel.weight'") as e:
        attndsl.build(spec)
    assert e.value.span.line == 5


def test_probabilities_hold_no_subnormals():
    """ALiBi pushes far keys' exp() below float32's smallest normal; those are flushed to 0
    (a GEMM reading subnormals runs ~10x slower on x86), leaving outputs unchanged."""
    spec = """model m {
        input x: float[B, T, 16]
        output y = attention(x, 4, pattern=causal, bias=alibi(), weights="w")
    }"""
    x = np.random.default_rng(0).standard_normal((1, 600, 16)).astype(np.float32)
    ref = attndsl.compile(spec, dtype="float64", seed=1)
    want = ref(x=x.astype(np.float64))["y"]
    tiny = np.finfo(np.float32).tiny
    for backend in ["numpy", *(["torch"] if importlib.util.find_spec("torch") else [])]:
        for attention in ("dense", "tiled"):
            m = attndsl.compile(spec, backend=backend, seed=1, attention=attention,
                                outputs=["y", "w"])
            out = m.to_numpy(m(x=x))
            w = out["w"]
            assert not ((w > 0) & (w < tiny)).any(), (backend, attention)
            assert (w == 0).sum() > w.size // 2 + 1000          # causal zeros and flushed ones
            np.testing.assert_allclose(out["y"], want, rtol=2e-4, atol=2e-5,
                                       err_msg=f"{backend} {attention}")


def test_softmax_rows_drop_weights_whose_products_would_be_subnormal():
    """The kernels' softmax sets weights under tiny^0.8 of the row's largest to 0 before
    exp (exp, and the GEMM with v, run ~10x slower on subnormal results); the others are
    exp(x - max) as computed directly, and the row sums are theirs."""
    from attndsl.backends import numpy_kernels as K
    x = np.linspace(-120.0, 5.0, 500, dtype=np.float32) * np.array([[1], [0.9], [0.5], [1]],
                                                                    np.float32)
    x[1, :7] = -np.inf                                         # masked keys
    x[3] = -np.inf                                             # a row with no key
    m = x.max(axis=-1, keepdims=True)
    e = np.exp((x - np.where(np.isfinite(m), m, 0.0)).astype(np.float64))
    keep = e >= np.finfo(np.float32).tiny ** 0.8
    total = (e * keep).sum(-1, keepdims=True)
    for normalize in (False, True):
        out, den = x.copy(), np.empty((4, 1), np.float32)
        K._softmax_rows(den, out, normalize)
        assert ((out == 0) == ~keep).all() and (~keep[0]).sum() > 100   # many dropped
        want = e * keep / (np.where(total > 0, total, 1.0) if normalize else 1.0)
        np.testing.assert_allclose(out, want, rtol=2e-6, atol=0)
        np.testing.assert_allclose(den[:3], total[:3], rtol=2e-6)
        assert den[3, 0] == 1.0
