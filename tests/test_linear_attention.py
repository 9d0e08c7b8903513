"""Kernelized (linear) attention: `attention(..., kernel=elu_plus_one | favor(m, seed))`
against the papers' formulas written out here, on every backend; FAVOR+ approaching the
softmax as m grows; memory linear in T; the recurrent decoding state; refusals."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SPECS_DIR

import attndsl
from attndsl.errors import ArgumentError, TypeError_
from attndsl.passes.liveness import peak_memory
from attndsl.passes.select_attention import select_attention

R = np.random.default_rng(0)


def elu1(x: np.ndarray) -> np.ndarray:
    """Katharopoulos et al. eq. 7: phi(x) = elu(x) + 1."""
    return np.where(x > 0, x + 1, np.exp(x))


def favor_features(x: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
    """Choromanski et al. Lemma 1: phi(x) = exp(w x' - |x'|^2 / 2) / sqrt(m), x' = x scale^.5."""
    xs = x * np.sqrt(scale)
    return np.exp(xs @ w.T - 0.5 * np.sum(xs * xs, -1, keepdims=True)) / np.sqrt(len(w))


def reference(q, k, v, pad, phi, causal, eps):
    """V'_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps), j <= i if causal
    (queries are the last Tq positions), padded keys left out; K/V heads shared by groups."""
    g = q.shape[1] // k.shape[1]
    a = np.einsum("bhim,bhjm->bhij", phi(q), np.repeat(phi(k), g, axis=1))
    if pad is not None:
        a = a * pad[:, None, None, :]
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        a = a * (np.arange(tk)[None] <= np.arange(tq)[:, None] + tk - tq)
    den = a.sum(-1, keepdims=True) + eps
    return a @ np.repeat(v, g, axis=1) / np.where(den > 0, den, 1)   # no key at all: 0


SDPA = """model m {{
    input q: float[B, 4, T, 8]
    input k: float[B, 2, S, 8]
    input v: float[B, 2, S, 5]
    input pad: bool[B, S]
    output y = sdpa(q, k, v, pattern={pattern}, key_padding=pad, kernel={kernel})
}}"""


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["elu_plus_one", "favor(m=24, seed=7)"])
@pytest.mark.parametrize("tq, tk", [(150, 150), (3, 150)])
def test_kernel_attention_is_the_papers_formula(backend, kernel, causal, tq, tk) -> None:
    from attndsl.backends.numpy_kernels import _favor_matrix
    model = attndsl.compile(SDPA.format(pattern="causal" if causal else "full", kernel=kernel),
                            backend=backend, dtype="float64" if backend != "torch" else "float32")
    q, k, v = R.standard_normal((2, 4, tq, 8)), R.standard_normal((2, 2, tk, 8)), \
        R.standard_normal((2, 2, tk, 5))
    pad = R.random((2, tk)) > 0.2
    pad[:, -1] = True
    if kernel == "elu_plus_one":
        phi, eps = elu1, 1e-6
    else:
        w = _favor_matrix(24, 8, 7)
        phi, eps = (lambda x: favor_features(x, w, 8 ** -0.5)), 0.0
    want = reference(q, k, v, pad, phi, causal, eps)
    got = model.to_numpy(model(q=q, k=k, v=v, pad=pad))["y"]
    tol = 1e-5 if backend == "torch" else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_favor_features_are_orthogonal_and_approach_the_softmax() -> None:
    from attndsl.backends.numpy_kernels import _favor_matrix
    w = _favor_matrix(32, 16, 3)
    block = w[:16] / np.linalg.norm(w[:16], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(16), atol=1e-12)     # one QR block
    np.testing.assert_array_equal(w, _favor_matrix(32, 16, 3))               # seeded
    assert not np.allclose(w, _favor_matrix(32, 16, 4))
    q, k, v = (R.standard_normal((1, 1, 40, 16)) * 0.5 for _ in range(3))
    s = q @ k.swapaxes(-1, -2) / 4
    p = np.exp(s - s.max(-1, keepdims=True))
    soft = (p / p.sum(-1, keepdims=True)) @ v
    errors = []
    for m in (8, 128, 2048):
        model = attndsl.compile(
            "model m { input q: float[B, 1, T, 16]  input k: float[B, 1, T, 16]\n"
            "input v: float[B, 1, T, 16]\n"
            f"output y = sdpa(q, k, v, kernel=favor(m={m}, seed=1)) }}", dtype="float64")
        out = model(q=q, k=k, v=v)["y"]
        errors.append(np.abs(out - soft).mean() / np.abs(soft).mean())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.15, errors


def test_memory_is_linear_in_the_sequence_length() -> None:
    """The liveness estimate (which counts what each kernel materializes) grows ~4x from T=1k
    to 4k for linear attention and ~16x (dominated by the T x T scores) for dense softmax."""
    spec = SPECS_DIR / "linear_transformer.attn"
    config = dict(layers=1, ctx=4096, d_model=64, heads=4, vocab=32)
    lin = attndsl.build(spec, config=config)
    soft = select_attention(attndsl.build(spec.read_text().replace(", kernel=elu_plus_one", ""),
                                          config=config), "dense").graph
    ratio = {name: peak_memory(g, {"B": 1, "T": 4096}, "numpy", 4).peak
             / peak_memory(g, {"B": 1, "T": 1024}, "numpy", 4).peak
             for name, g in (("linear", lin), ("softmax", soft))}
    assert 3.5 < ratio["linear"] < 4.5 and ratio["softmax"] > 8, ratio


def test_decoding_keeps_a_constant_state() -> None:
    from attndsl.training.generate import Decoder
    model = attndsl.compile(SPECS_DIR / "linear_transformer.attn",
                            config=dict(vocab=50, ctx=64, d_model=32, heads=4, layers=2))
    dec = Decoder(model)
    assert dec.cached
    dec.step(np.array([[1, 2, 3]]))
    sizes = [sum(a.size for a in dec.cache.values())]
    for t in range(5):
        dec.step(np.array([[t]]))
        sizes.append(sum(a.size for a in dec.cache.values()))
    assert len(set(sizes)) == 1          # (B, Hk, 1, m, Dv + 1) per layer, whatever the length


@pytest.mark.parametrize("call, error, message", [
    ("attention(x, 2, kernel=elu_plus_one, bias=alibi())", ArgumentError, "has no bias="),
    ("attention(x, 2, kernel=elu_plus_one, rope=rope())", ArgumentError, "has no rope="),
    ("attention(x, 2, kernel=favor(), pattern=causal & window(4))", ArgumentError,
     "full or causal"),
    ("attention(x, 2, kernel=causal)", TypeError_, "kernel must be elu_plus_one or favor"),
    ("attention(x, 2, kernel=favor(m=0))", Exception, "m must be a positive"),
])
def test_refusals_name_the_keyword(call, error, message) -> None:
    with pytest.raises(error, match=message):
        attndsl.build(f"model m {{ input x: float[B, T, 8]\n output y = {call} }}")
