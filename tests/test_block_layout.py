"""Block sparsity derived from pattern values (no T x T mask): for every (query block, key
block) pair, `full` blocks allow every pair and `empty` blocks none, checked against the
dense mask on random pattern compositions, block sizes, lengths and cache offsets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attndsl
from attndsl.ir import patterns as pat

PRIMITIVES = st.one_of(
    st.just(pat.FULL), st.just(pat.CAUSAL),
    st.builds(pat.Window, st.integers(1, 20)),
    st.builds(pat.Dilated, st.integers(1, 6), st.integers(1, 4)),
    st.builds(pat.Strided, st.integers(1, 7)),
    st.builds(pat.Global, st.lists(st.integers(0, 30), max_size=3).map(tuple)),
    st.builds(pat.Prefix, st.integers(0, 12)),
    st.builds(pat.RandomBlocks, st.integers(1, 3), st.integers(1, 8), st.integers(0, 5)),
    st.integers(1, 9).flatmap(lambda b: st.builds(pat.Fixed, st.just(b), st.integers(1, b))),
)
PATTERNS = st.recursive(PRIMITIVES, lambda inner: st.one_of(
    st.builds(pat.And, inner, inner), st.builds(pat.Or, inner, inner)), max_leaves=5)


def dense_mask(p: pat.Pattern, tq: int, tk: int) -> np.ndarray:
    q = np.arange(tk - tq, tk)[:, None]
    k = np.arange(tk)[None, :]
    return np.broadcast_to(p.allowed(q, k, tk), (tq, tk))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(PATTERNS, st.integers(1, 40), st.integers(0, 10), st.integers(1, 9), st.integers(1, 9))
def test_layout_is_sound_against_the_dense_mask(p, tk, past, bq, bk):
    tq = max(1, tk - past)
    full, empty = p.block_layout(tq, tk, bq, bk)
    mask = dense_mask(p, tq, tk)
    assert full.shape == empty.shape == (-(-tq // bq), -(-tk // bk))
    for i in range(full.shape[0]):
        for j in range(full.shape[1]):
            block = mask[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            assert not (full[i, j] and not block.all()), (str(p), i, j)
            assert not (empty[i, j] and block.any()), (str(p), i, j)


def test_simple_layouts_are_exact():
    """Causal, window, prefix and their compositions are classified exactly (no block is
    called partial that is in fact full or empty)."""
    for p in (pat.CAUSAL, pat.Window(7), pat.CAUSAL & pat.Window(9), pat.Prefix(5) | pat.CAUSAL,
              pat.FULL):
        full, empty = p.block_layout(32, 32, 4, 4)
        mask = dense_mask(p, 32, 32)
        blocks = mask.reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(8, 8, 16)
        np.testing.assert_array_equal(full, blocks.all(-1), err_msg=str(p))
        np.testing.assert_array_equal(empty, ~blocks.any(-1), err_msg=str(p))


def test_sliding_window_is_banded():
    """A causal window of 256 at T=8192 in blocks of 128 keeps 3 key blocks per query block:
    the layout (and hence the work) grows linearly in T."""
    full, empty = (pat.CAUSAL & pat.Window(256)).block_layout(8192, 8192, 128, 128)
    live = ~empty
    assert live.shape == (64, 64)
    assert live.sum(axis=1).max() == 3 and live.sum() == 64 * 3 - 3


def test_random_blocks_choose_at_most_r_blocks_per_query_block():
    p = pat.RandomBlocks(3, 16, seed=1)
    full, empty = p.block_layout(256, 256, 16, 16)
    assert ((full | empty).all()) and (full.sum(axis=1) <= 3).all()
    assert full.sum() > 16 * 2                         # draws rarely collide
    other = pat.RandomBlocks(3, 16, seed=2).block_layout(256, 256, 16, 16)[0]
    assert (full != other).any()                       # the seed matters


# -- the blocked kernels agree with the dense one --------------------------------------------

from attndsl.backends import numpy_kernels as K  # noqa: E402
from attndsl.backends.codegen import block_sources  # noqa: E402


def run_impl(impl, q, k, v, *extra, pattern, **attrs):
    return K.op_attention(q, k, v, *extra, pattern=None if pattern.is_full else pattern.source(),
                          pattern_blocks=block_sources(pattern), impl=impl, **attrs)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(PATTERNS, st.integers(1, 300), st.integers(0, 40), st.sampled_from([(4, 4), (4, 2), (4, 1)]),
       st.booleans(), st.booleans())
def test_tiled_and_sparse_match_dense(p, tk, past, heads, biased, padded):
    """Random patterns, lengths (several blocks with a partial last one), cache offsets,
    grouped heads, ALiBi + T5 biases, rope and key padding: every implementation gives the
    dense kernel's numbers (float64)."""
    rng = np.random.default_rng(tk * 41 + past)
    h, hk = heads
    tq = max(1, tk - past)
    q, k, v = (rng.standard_normal(s) for s in ((2, h, tq, 8), (2, hk, tk, 8), (2, hk, tk, 6)))
    extras, extra, bias = [], [], ()
    if padded:
        pad = rng.random((2, tk)) > 0.2
        extras.append("key_padding")
        extra.append(pad)
    if biased:
        bias = (("alibi",), ("t5", 8, 40, True))
        extras.append("bias1")
        extra.append(rng.standard_normal((8, h)))
    attrs = dict(scale=0.4, dropout=0.0, bias=bias, extras=tuple(extras),
                 rope=(100.0, 8, "half", ("none",)))
    dense = run_impl("dense", q, k, v, *extra, pattern=p, **attrs)
    for impl in ("tiled", "sparse"):
        got = run_impl(impl, q, k, v, *extra, pattern=p, **attrs)
        np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-12, err_msg=f"{impl} {p}")


def test_auto_chooses_blocked_kernels_for_long_sparse_patterns():
    window = pat.CAUSAL & pat.Window(256)
    layout = block_sources(window)
    costs = K.attention_costs(1, 12, 12, 8192, 8192, 64, 64, layout, 4, True)
    assert costs["sparse"][1] * 20 < costs["dense"][1]          # memory
    assert costs["sparse"][2] * 5 < costs["dense"][2]           # estimated time
    q = np.zeros((1, 12, 8192, 64), dtype=np.float32)
    assert K.attention_impl("auto", q, q, q, layout, "scaled", (), (), "x") in ("sparse", "tiled")
    small = np.zeros((1, 2, 16, 8), dtype=np.float32)
    assert K.attention_impl("auto", small, small, small, layout, "scaled", (), (), "x") == "dense"
    assert K.attention_impl("sparse", q, q, q, layout, "additive", (), (), "x") == "dense"


@pytest.mark.parametrize("impl", ["tiled", "sparse"])
@pytest.mark.parametrize("pattern", [pat.CAUSAL & pat.Window(70), pat.Window(50) | pat.Global((0, 7)),
                                     pat.CAUSAL & pat.Strided(3) | pat.Prefix(4),
                                     pat.RandomBlocks(2, 64, seed=3),
                                     pat.CAUSAL & pat.Fixed(32, 4)], ids=str)
def test_torch_blocked_kernel_matches_numpy_and_differentiates(impl, pattern):
    """The torch blocked kernel gives the NumPy dense numbers, and its autograd gradients
    equal the dense path's (float64, grouped heads, ALiBi + T5 bias, rope, padding)."""
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    rng = np.random.default_rng(5)
    tq = tk = 300
    q, k, v = (rng.standard_normal(s) for s in ((2, 4, tq, 8), (2, 2, tk, 8), (2, 2, tk, 6)))
    pad = rng.random((2, tk)) > 0.1
    table = rng.standard_normal((8, 4))
    attrs = dict(pattern=pattern.source(), pattern_blocks=block_sources(pattern), scale=0.4,
                 dropout=0.0, bias=(("alibi",), ("t5", 8, 40, True)),
                 extras=("key_padding", "bias1"), rope=(100.0, 8, "half", ("none",)))
    expected = K.op_attention(q, k, v, pad, table, impl="dense", **attrs)
    grads = {}
    for mode in (impl, "dense"):
        ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v, table)]
        out = TK.op_attention(*ts[:3], torch.tensor(pad), ts[3], impl=mode, training=False,
                              **attrs)
        if mode == impl:
            np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
        out.backward(torch.tensor(np.cos(expected)))
        grads[mode] = [t.grad.numpy() for t in ts]
    for got, want in zip(grads[impl], grads["dense"]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("pattern, bias", [
    (pat.CAUSAL & pat.Window(70), ()), (pat.Window(40), (("alibi",),)),
    (pat.CAUSAL & pat.Window(3), ()),          # padding rows past T = 300 see no key at all
    (pat.Window(90) & pat.CAUSAL & pat.Window(50), (("alibi",), ("t5", 8, 40, True)))], ids=str)
def test_torch_band_kernel_matches_numpy_and_differentiates(pattern, bias, monkeypatch):
    """A sliding window (a band: `Pattern.band()`) runs on torch as tiles of queries over
    their key windows in SDPA's CPU kernel, a call per tile here: the NumPy dense numbers, and
    autograd gradients equal to the dense path's for q, k, v (float64; the T5 table is
    constant here: with a trainable table the band path is not taken)."""
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    rng = np.random.default_rng(6)
    t = 300
    q, k, v = (rng.standard_normal((2, 4, t, 8)) for _ in range(3))   # one head size: flash
    table = rng.standard_normal((8, 4))
    extras = ("bias1",) if len(bias) == 2 else ()
    attrs = dict(pattern=pattern.source(), pattern_blocks=block_sources(pattern), scale=0.4,
                 dropout=0.0, bias=bias, extras=extras, pattern_band=pattern.band())
    extra = (table,) if extras else ()
    expected = K.op_attention(q, k, v, *extra, impl="dense", **attrs)
    band, calls = TK._band, []
    monkeypatch.setattr(TK, "_band", lambda *a: calls.append(1) or band(*a))
    monkeypatch.setattr(TK, "BAND_CALL_ELEMENTS", 1)      # one SDPA call per tile
    grads = {}
    for mode in ("auto", "dense"):
        ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
        out = TK.op_attention(*ts, *map(torch.tensor, extra), impl=mode, training=False,
                              **attrs)
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
        out.backward(torch.tensor(np.cos(expected)))
        grads[mode] = [x.grad.numpy() for x in ts]
    assert calls == [1]                                   # "auto" took the band path
    for got, want in zip(grads["auto"], grads["dense"]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(PATTERNS, st.integers(1, 300), st.integers(0, 40), st.sampled_from([(4, 4), (4, 2)]),
       st.sampled_from(["tiled", "sparse"]), st.sampled_from(["scaled", "bilinear"]))
def test_blocked_backward_matches_dense_backward(p, tk, past, heads, impl, score):
    """The NumPy VJP over query tiles gives the dense VJP's cotangents for q, k, v, the T5
    table and the bilinear weight (float64), with rope, ALiBi and key padding."""
    from attndsl.autodiff import VJP_RULES
    rng = np.random.default_rng(tk * 7 + past)
    h, hk = heads
    tq = max(1, tk - past)
    q, k, v = (rng.standard_normal(s) for s in ((2, h, tq, 8), (2, hk, tk, 8), (2, hk, tk, 6)))
    ins = (q, k, v, rng.random((2, tk)) > 0.2, rng.standard_normal((8, h)))
    extras = ("key_padding", "bias1")
    if score == "bilinear":
        ins += (rng.standard_normal((8, 8)),)
        extras += ("score_w",)
    attrs = dict(pattern=None if p.is_full else p.source(), pattern_blocks=block_sources(p),
                 scale=0.4, dropout=0.0, score=score, bias=(("alibi",), ("t5", 8, 40, True)),
                 extras=extras, rope=(100.0, 8, "half", ("none",)))
    out = K.op_attention(*ins, impl="dense", **attrs)
    g = rng.standard_normal(out.shape)
    dense = VJP_RULES["attention"](g, out, ins, {**attrs, "impl": "dense"})
    blocked = VJP_RULES["attention"](g, out, ins, {**attrs, "impl": impl})
    for i, (a, b) in enumerate(zip(blocked, dense)):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"input {i}")


def test_torch_tensor_bias_never_takes_the_blocked_path():
    """The blocked kernels add only ALiBi/T5 biases: a tensor bias on a sparse pattern runs
    SDPA (the torch cost model would otherwise pick the blocked kernel at this length)."""
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    window = pat.Window(20)
    q = torch.zeros(1, 2, 900, 8)
    assert TK._use_blocked("auto", q, q, q, window.source(), block_sources(window), ())
    assert not TK._use_blocked("auto", q, q, q, window.source(), block_sources(window),
                               (("tensor",),))
    spec = """model m {
        input q: float[B, 2, T, 8]
        input k: float[B, 2, T, 8]
        input v: float[B, 2, T, 8]
        input b: float[B, 1, T, T]
        output y = sdpa(q, k, v, pattern=window(20), bias=b + alibi())
    }"""
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((1, 2, 300, 8)) for n in "qkv"}
    inputs["b"] = rng.standard_normal((1, 1, 300, 300))
    want = attndsl.compile(spec, dtype="float64", attention="dense")(**inputs)["y"]
    for backend in ("numpy", "torch"):
        m = attndsl.compile(spec, backend=backend, dtype="float64")
        np.testing.assert_allclose(m.to_numpy(m(**inputs))["y"], want, rtol=1e-10, atol=1e-12)


def test_torch_alibi_steep_heads_as_bands(monkeypatch):
    """Causal ALiBi in float32 at T >= ALIBI_SPLIT_MIN: heads whose far keys provably weigh
    under float32's smallest normal run as bands over their window; outputs and gradients
    match the paper's formula (float64) to float32 accuracy, and the band path ran."""
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    rng = np.random.default_rng(7)
    t, h = TK.ALIBI_SPLIT_MIN, 8                           # a power of two: 2^-(i+1)
    q, k, v = (rng.standard_normal((1, h, t, 8)).astype(np.float32) * 0.5 for _ in range(3))
    slopes = np.array([2.0 ** (-8 * (i + 1) / h) for i in range(h)])      # Press et al.
    rel = np.arange(t)[None, :] - np.arange(t)[:, None]
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * 0.3
    s = np.where(rel <= 0, s - slopes[:, None, None] * np.abs(rel), -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = w @ v.astype(np.float64)
    split, calls = TK._alibi_split_heads, []
    monkeypatch.setattr(TK, "_alibi_split_heads",
                        lambda *a: calls.append(out := split(*a)) or out)
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = TK.op_attention(*ts, pattern=TK.CAUSAL, scale=0.3, dropout=0.0, training=False,
                          bias=(("alibi",),), pattern_blocks=None)
    assert len(calls) == 1 and calls[0] is not None           # some heads ran as bands
    np.testing.assert_allclose(out.detach().numpy(), want, atol=2e-5)
    out.backward(torch.ones_like(out))
    grads = [x.grad.numpy() for x in ts]
    ts2 = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    TK._alibi_sdpa(*ts2, 0.3, 0.0, False, True).backward(torch.ones_like(out))
    for got, ref in zip(grads, (x.grad.numpy() for x in ts2)):
        np.testing.assert_allclose(got, ref, atol=5e-4)


@pytest.mark.parametrize("kv_heads", [12, 4])
def test_torch_alibi_head_by_head_at_inference_is_the_all_heads_call(kv_heads):
    """Without autograd recording, ALiBi on the fused kernel pads a few heads at a time
    (two, or one K/V head with its query heads) instead of all: bitwise the all-heads call
    (with grouped heads too), which autograd still gets."""
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as tk
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 300, 64, generator=gen)
    k, v = (torch.randn(2, kv_heads, 300, 64, generator=gen) for _ in range(2))
    calls = []
    padded = tk._alibi_padded
    tk._alibi_padded = lambda *a: calls.append(a[0].shape[1]) or padded(*a)
    try:
        with torch.inference_mode():
            heads = tk._alibi_sdpa(q, k, v, 0.125, 0.0, kv_heads != 12, True)
        assert calls == ([2] * 6 if kv_heads == 12 else [3] * 4)   # query heads per call
        calls.clear()
        whole = tk._alibi_sdpa(q.requires_grad_(), k, v, 0.125, 0.0, kv_heads != 12, True)
        assert calls == [12]
    finally:
        tk._alibi_padded = padded
    assert torch.equal(heads, whole.detach())
