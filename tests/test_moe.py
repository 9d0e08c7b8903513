"""Mixture of experts: `moe(...)` against a per-token reference written from the Switch /
GShard formulas, on every backend and in training (capacity) and inference mode; compute
that grows with top_k, not the expert count; the load-balancing loss in `train`; refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attndsl
from attndsl.errors import AttnError, DefinitionError, TrainingError, TypeError_
from attndsl.ir.stats import compute_stats
from attndsl.training.losses import loss_spec

SPEC = """
block ffn(x) {{
    return linear(gelu(linear(x, 12)), 8)
}}
model m {{
    input x: float[B, T, 8]
    output y = moe(x, experts={experts}, expert=ffn, top_k={k}, capacity_factor={cf},
                   dropped="dropped", name="moe")
}}
"""


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def reference(x, p, k, cf, training):
    """Per token: softmax router, top_k experts (ties: lower index), gates renormalized for
    k > 1; while training each expert keeps the first ceil(cf k N / E) assignments, first
    choices of every token before second choices; the aux loss E sum_e f_e P_e."""
    xs = x.reshape(-1, x.shape[-1])
    n, e = len(xs), p["moe.router.weight"].shape[0]
    z = xs @ p["moe.router.weight"].T
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    cap = math.ceil(cf * k * n / e) if training else n * k
    used = np.zeros(e, int)
    out = np.zeros((n, 8))
    kept = dropped = 0
    for j in range(k):
        for t in range(n):
            ex = top[t, j]
            if used[ex] >= cap:
                dropped += 1
                continue
            used[ex] += 1
            kept += 1
            gate = probs[t, ex] / (probs[t, top[t]].sum() if k > 1 else 1.0)
            w1, b1 = p["moe.experts.linear.weight"][ex], p["moe.experts.linear.bias"][ex]
            w2, b2 = p["moe.experts.linear_1.weight"][ex], p["moe.experts.linear_1.bias"][ex]
            out[t] += gate * (gelu(xs[t] @ w1.T + b1) @ w2.T + b2)
    f = np.bincount(top.reshape(-1), minlength=e) / n
    aux = e * np.sum(f * probs.mean(0))
    return out.reshape(x.shape), aux, dropped / (kept + dropped)


@pytest.mark.parametrize("k, cf", [(1, 1.0), (2, 0.75), (2, 4.0)])
def test_moe_is_the_switch_gshard_formula(backend, k, cf) -> None:
    model = attndsl.compile(SPEC.format(experts=4, k=k, cf=cf), backend=backend, seed=3,
                            dtype="float32" if backend == "torch" else "float64",
                            outputs=["y", "aux", "dropped"])
    rng = np.random.default_rng(0)
    weights = {n: v * (20 if "router" in n else 1) for n, v in model.state_dict().items()}
    weights = {n: v + 0.1 * rng.standard_normal(v.shape) for n, v in weights.items()}
    model.load_state_dict(weights)                     # distinct experts, decisive routing
    x = rng.standard_normal((2, 9, 8))
    tol = 1e-4 if backend == "torch" else 1e-10
    want, aux, dropped = reference(x, weights, k, cf, training=False)
    got = model.to_numpy(model(x=x))
    np.testing.assert_allclose(got["y"], want, rtol=tol, atol=tol)
    assert float(got["aux"]) == pytest.approx(aux, rel=tol)
    assert float(got["dropped"]) == dropped == 0.0          # inference keeps every token
    if backend == "torch":                                  # capacity applies while training
        import torch
        model.module.train()
        with torch.no_grad():
            got = model.to_numpy(model.module(**model.program.convert_inputs({"x": x})))
        want, aux, dropped = reference(x, weights, k, cf, training=True)
        np.testing.assert_allclose(got["y"], want, rtol=tol, atol=tol)
        assert float(got["dropped"]) == pytest.approx(dropped)
        assert dropped > 0 if cf < 1 else True
        assert dropped == 0 if cf * k >= 4 else True       # capacity >= every token


def test_compute_grows_with_top_k_not_experts() -> None:
    """`stats` FLOPs of the expert layers: the same for 4 or 64 experts, twice for top-2
    (the router's N x E x d grows with E, as it should)."""
    def expert_flops(experts: int, k: int) -> int:
        g = attndsl.build(SPEC.format(experts=experts, k=k, cf=1.0))
        stats = compute_stats(g)
        router = 2 * 8 * experts + 5 * experts             # linear + softmax, per token
        return int(stats.flops.evaluate({"B": 4, "T": 64})) - 256 * router
    assert expert_flops(4, 1) == expert_flops(64, 1)
    assert expert_flops(8, 2) == pytest.approx(2 * expert_flops(8, 1), rel=0.05)


def test_parameters_are_stacked_per_expert() -> None:
    g = attndsl.build(SPEC.format(experts=5, k=2, cf=1.0))
    shapes = {n: tuple(int(d.as_int()) for d in t.shape) for n, t in g.param_types().items()}
    assert shapes == {"moe.router.weight": (5, 8), "moe.experts.linear.weight": (5, 12, 8),
                      "moe.experts.linear.bias": (5, 12), "moe.experts.linear_1.weight": (5, 8, 12),
                      "moe.experts.linear_1.bias": (5, 8)}


TRAIN = """
block ffn(x) {{
    return linear(relu(linear(x, 16)), 8)
}}
model m {{
    input tokens: int[B, T]
    h = embedding(tokens, 20, 8)
    repeat 2 as layers {{
        h = h + moe(h, experts=4, expert=ffn)
    }}
    output logits = linear(h, 20)
}}
train {{
    loss = {loss}
}}
"""


def test_the_aux_loss_sums_over_layers_and_enters_the_loss(tmp_path) -> None:
    g = attndsl.build(TRAIN.format(loss="cross_entropy(logits) + 0.01 * aux"))
    assert loss_spec(g)["extra"] == [(0.01, "aux")]
    adds = [n for n in g.nodes.values() if n.op == "add" and n.type.rank == 0]
    assert len(adds) == 1                                   # layers.0 aux + layers.1 aux
    g = attndsl.build(TRAIN.format(loss="cross_entropy(logits) - aux * 0.5 + aux"))
    assert loss_spec(g)["extra"] == [(-0.5, "aux"), (1.0, "aux")]
    model = attndsl.compile(TRAIN.format(loss="cross_entropy(logits) + 0.01 * aux"), seed=1,
                            dtype="float64")
    x = np.random.default_rng(0).integers(0, 20, (2, 5))
    t = np.random.default_rng(1).integers(0, 20, (2, 5))
    plain = attndsl.compile(TRAIN.format(loss="cross_entropy(logits)"), seed=1, dtype="float64")
    (value, _), (ce, _) = model.value_and_grad(t, tokens=x), plain.value_and_grad(t, tokens=x)
    assert value == pytest.approx(ce + 0.01 * float(model(tokens=x)["aux"]), rel=1e-12)


@pytest.mark.parametrize("loss, message", [
    ("cross_entropy(logits) * 2", "one built-in loss plus number"),
    ("cross_entropy(logits) + logits", "a loss term must be a scalar"),
    ("aux + aux", "must be a loss"),
])
def test_bad_loss_arithmetic_is_a_spec_error(loss, message) -> None:
    with pytest.raises((TypeError_, TrainingError), match=message):
        attndsl.build(TRAIN.format(loss=loss))


@pytest.mark.parametrize("body, message", [
    ("return softmax(x, 0)", "does not compute each token row alone"),
    ("return layer_norm(x)", "not a linear layer's"),
    ('return linear(x, 8, tie="x")', "every expert has its own weights"),
])
def test_expert_blocks_must_be_row_wise(body, message) -> None:
    spec = ("block bad(x) {\n    " + body + "\n}\nmodel m {\n    input x: float[B, T, 8]\n"
            "    output y = moe(x, experts=2, expert=bad)\n}\n")
    with pytest.raises(AttnError, match=message):
        attndsl.build(spec)


def test_other_refusals() -> None:
    with pytest.raises(TypeError_, match="expert= names a block"):
        attndsl.build("model m { input x: float[B, 8]  output y = moe(x, experts=2, expert=relu) }")
    with pytest.raises(AttnError, match="top_k=3 is more than experts=2"):
        attndsl.build(SPEC.format(experts=2, k=3, cf=1.0))
    with pytest.raises(DefinitionError, match="declared twice"):
        attndsl.build("block f(x) {\n return linear(x, 4)\n}\nmodel m {\n input x: float[B, 4]\n"
                      " output aux = x\n output y = moe(x, experts=2, expert=f)\n}\n")
