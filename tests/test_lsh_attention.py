"""Reformer LSH attention: `attention(x, heads, pattern=lsh(...))` against a reference
written in the test — per round, a dense attention restricted to each position's bucket
(and its sorted chunk and the one before), the rounds combined by their log-sum-exp — on
every backend; shared QK; refusals."""

from __future__ import annotations

import numpy as np
import pytest

import attndsl
from attndsl.errors import ArgumentError

R = np.random.default_rng(0)


def reference(q, v, pad, lsh, scale):
    """Loops over positions (Kitaev et al. 2020, sec. 3): angular LSH h(k) = argmax([kR,
    -kR]) on k = q / |q|; sort by (bucket, position); chunk; a query sees keys of its bucket
    in its chunk and the previous one, not later ones when causal, itself only if nothing
    else; rounds combined with softmax over their log-sum-exps."""
    from attndsl.backends.numpy_kernels import _lsh_rotations
    buckets, rounds, chunk, causal, seed = lsh
    b_, h_, t, d = q.shape
    k = q / np.linalg.norm(q, axis=-1, keepdims=True)
    rot = _lsh_rotations(h_, d, buckets, rounds, seed)
    n = -(-t // chunk)
    c = min(chunk, n * chunk)
    outs, lses = np.zeros((rounds, *v.shape)), np.zeros((rounds, b_, h_, t))
    for r in range(rounds):
        for b in range(b_):
            for h in range(h_):
                proj = k[b, h] @ rot[r, h]
                bucket = np.argmax(np.concatenate([proj, -proj], -1), -1)
                valid = np.ones(t, bool) if pad is None else pad[b]
                bucket = np.where(valid, bucket, buckets)
                where = np.empty(t, int)
                where[np.argsort(bucket * t + np.arange(t), kind="stable")] = np.arange(t) // c
                for i in range(t):
                    keys = [j for j in range(t) if where[j] == where[i]
                            or (n > 1 and where[j] == (where[i] - 1) % n)]
                    s = np.array([(-1e5 if valid[j] else -1e9) if j == i
                                  else q[b, h, i] @ k[b, h, j] * scale
                                  if bucket[j] == bucket[i] and valid[j] and (not causal or j <= i)
                                  else -1e9 for j in keys])
                    p = np.exp(s - s.max())
                    lses[r, b, h, i] = s.max() + np.log(p.sum())
                    outs[r, b, h, i] = p / p.sum() @ v[b, h, keys]
    w = np.exp(lses - lses.max(0))
    w /= w.sum(0)
    return np.sum(w[..., None] * outs, axis=0)


SPEC = """model m {{
    input q: float[B, 2, T, 4]
    input v: float[B, 2, T, 3]
    input pad: bool[B, T]
    output y = sdpa(q, q, v, key_padding=pad, scale=0.5, pattern=lsh({args}))
}}"""


@pytest.mark.parametrize("args, lsh", [
    ("buckets=4, rounds=2, chunk=16, seed=1", (4, 2, 16, False, 1)),   # one chunk: buckets only
    ("buckets=4, rounds=2, chunk=4, causal=true, seed=2", (4, 2, 4, True, 2)),
    ("buckets=8, rounds=3, chunk=5, seed=3", (8, 3, 5, False, 3)),       # T not a multiple
])
def test_lsh_attention_is_the_reformer_formula(backend, args, lsh) -> None:
    model = attndsl.compile(SPEC.format(args=args), backend=backend,
                            dtype="float32" if backend == "torch" else "float64")
    q, v = R.standard_normal((2, 2, 13, 4)), R.standard_normal((2, 2, 13, 3))
    pad = R.random((2, 13)) > 0.2
    pad[:, 0] = True
    got = model.to_numpy(model(q=q, v=v, pad=pad))["y"]
    want = reference(q, v, pad, lsh, 0.5)
    tol = 1e-5 if backend == "torch" else 1e-10
    np.testing.assert_allclose(got * pad[:, None, :, None], want * pad[:, None, :, None],
                               rtol=tol, atol=tol)


def test_shared_qk_has_no_key_projection_and_costs_o_t_chunk() -> None:
    from attndsl.ir.stats import compute_stats
    spec = ("model m {{ input x: float[B, T, 32]\n"
            "output y = attention(x, 4, pattern={}) }}")
    g = attndsl.build(spec.format("lsh(chunk=64)"))
    assert sorted(g.params) == ["y.o.bias", "y.o.weight", "y.q.bias", "y.q.weight",
                                "y.v.bias", "y.v.weight"]
    flops = {t: int(compute_stats(g).flops.evaluate({"B": 1, "T": t})) for t in (1024, 4096)}
    assert flops[4096] == pytest.approx(4 * flops[1024], rel=0.01)      # linear in T


@pytest.mark.parametrize("call, message", [
    ("attention(x, 2, pattern=lsh(), bias=alibi())", "has no bias="),
    ("attention(x, 2, pattern=lsh(), kv=x)", "has no kv="),
    ("attention(x, 2, pattern=lsh(buckets=5))", "buckets must be even"),
    ("sdpa(x4, x4 * 2.0, x4, pattern=lsh())", "pass the same tensor as q and k"),
])
def test_refusals(call, message) -> None:
    with pytest.raises(ArgumentError, match=message):
        attndsl.build("model m { input x: float[B, T, 8]  input x4: float[B, 2, T, 4]\n"
                      f"output y = {call} }}")
