"""Reverse-mode autodiff on NumPy: the VJP table is complete, every rule agrees with central
finite differences in float64 (called directly on random inputs), non-smooth points follow
torch autograd, and whole-model loss and gradients equal torch autograd on every spec."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attndsl.backends import numpy_kernels as K
from attndsl.backends.numpy_autodiff import GradProgram, value_and_grad_numpy
from helpers import SPECS_DIR, TINY_CONFIGS, random_inputs, spec_paths
from test_training import targets_for

import attndsl
from attndsl.autodiff import CONSTANT_LIKE, VJP_RULES, unbroadcast
from attndsl.ir import patterns as pat
from attndsl.training.losses import cross_entropy_with_grad, loss_spec

EPS = 1e-6
R = np.random.default_rng(7)


def randn(*shape: int) -> np.ndarray:
    return R.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    return np.abs(randn(*shape)) + 0.5


CAUSAL = pat.Causal().source()
CAUSAL_WINDOW = (pat.Causal() & pat.Window(2)).source()
PAD = np.array([[True, True, True, False, False], [False] * 5])       # batch 1: all masked
ROUTER = np.exp(3 * R.standard_normal((10, 4)))
ROUTER /= ROUTER.sum(axis=1, keepdims=True)                            # router probabilities
ROUTE1 = K.op_moe_route(ROUTER, top_k=1, capacity_factor=1.0)           # its routings
ROUTE2 = K.op_moe_route(ROUTER, top_k=2, capacity_factor=1.0)
ROUTE2_CAPPED = K.op_moe_route(ROUTER, top_k=2, capacity_factor=0.6, training=True)
assert ROUTE2_CAPPED[2].min() == 0 < ROUTE2_CAPPED[2].max()               # some dropped
PAD_FIRST = np.array([[False, True, True, True, True], [True] * 5])   # causal row 0 masked


# (case id, op, inputs, attrs as the kernel receives them)
CASES: list[tuple[str, str, tuple[np.ndarray, ...], dict[str, Any]]] = [
    *[(f"{op}-{tag}", op, (a, b + (3.0 if op == "div" else 0.0)), {})   # div: b away from 0
      for op in ("add", "sub", "mul", "div", "maximum", "minimum")
      for tag, a, b in (("same", randn(3, 4), randn(3, 4)),
                        ("row", randn(2, 3, 4), randn(4)),
                        ("both", randn(2, 1, 4), 0.3 * randn(3, 1)),
                        ("scalar", np.asarray(0.3), randn(3, 4)))],
    ("pow-tensor", "pow", (positive(2, 3), randn(3)), {}),
    ("pow-scalar", "pow", (positive(2, 3), np.asarray(2.5)), {}),
    *[(op, op, (randn(3, 5),), {})
      for op in ("neg", "exp", "tanh", "abs", "sigmoid", "relu", "silu")],
    ("log", "log", (positive(3, 5),), {}),
    *[(op, op, (randn(3, 5),), {}) for op in ("sin", "cos", "sign", "logical_not")],
    ("softplus", "softplus", (np.concatenate([randn(3, 5), 25 + randn(1, 5)]),), {}),
    ("clip", "clip", (randn(3, 5),), {"lo": -0.5, "hi": 0.7}),
    ("clip-lo", "clip", (randn(3, 5),), {"lo": -0.5, "hi": None}),
    ("logical_and", "logical_and", (randn(3, 4) > 0, randn(4) > 0), {}),
    ("logical_or", "logical_or", (randn(3, 4) > 0, randn(3, 4) > 0), {}),
    ("cumsum", "cumsum", (randn(2, 5, 3),), {"axis": 1}),
    ("cumsum-last", "cumsum", (randn(2, 5, 3),), {"axis": -1}),
    ("one_hot", "one_hot", (R.integers(0, 6, (3, 4)),), {"n": 6}),
    ("top_k_indices", "top_k_indices", (randn(3, 6),), {"k": 3, "axis": -1}),
    ("gather", "gather", (randn(3, 6, 2), R.integers(0, 6, (3, 8, 2))), {"axis": 1}),
    ("gather-negative", "gather", (randn(4, 5), R.integers(-5, 5, (4, 3))), {"axis": -1}),
    *[(f"min-{axes}", "min", (randn(2, 3, 4),), {"axes": axes, "keepdims": False})
      for axes in ((1,), (0, 2))],
    ("layer_norm-plain", "layer_norm", (randn(2, 3, 6),), {"eps": 1e-5, "has_bias": False}),
    ("rms_norm-bias", "rms_norm", (randn(2, 3, 6), randn(6), randn(6)), {"eps": 1e-6}),
    ("sqrt", "sqrt", (positive(3, 5),), {}),
    ("gelu-tanh", "gelu", (2 * randn(4, 5),), {"approximate": "tanh"}),
    ("gelu-none", "gelu", (2 * randn(4, 5),), {"approximate": "none"}),
    ("cast-float", "cast", (randn(3, 4),), {"dtype": "float"}),
    ("cast-int", "cast", (R.integers(0, 5, (3, 4)),), {"dtype": "float"}),
    ("cast-to-bool", "cast", (randn(3, 4),), {"dtype": "bool"}),
    ("dropout", "dropout", (randn(3, 4),), {"p": 0.1}),
    ("layer_drop", "layer_drop", (randn(3, 4), randn(3, 4)), {"p": 0.2}),
    ("where", "where", (randn(3, 4) > 0, randn(3, 4), randn(4)), {}),
    ("where-scalar", "where", (randn(3, 1) > 0, np.asarray(0.5), randn(3, 4)), {}),
    ("less", "less", (randn(3, 4), randn(4)), {}),
    ("greater", "greater", (randn(3, 4), randn(4)), {}),
    ("equal", "equal", (randn(3, 4), randn(3, 4)), {}),
    ("matmul", "matmul", (randn(2, 3, 4), randn(4, 5)), {}),
    ("matmul-batch-broadcast", "matmul", (randn(2, 1, 3, 4), randn(5, 4, 2)), {}),
    ("matmul-vector", "matmul", (randn(4), randn(2, 4, 3)), {}),
    ("matmul-left-2d", "matmul", (randn(3, 4), randn(2, 4, 5)), {}),
    ("linear", "linear", (randn(2, 3, 4), randn(5, 4), randn(5)), {"has_bias": True}),
    ("linear-nobias", "linear", (randn(2, 3, 4), randn(5, 4)), {"has_bias": False}),
    ("linear-vector", "linear", (randn(4), randn(5, 4), randn(5)), {"has_bias": True}),
    ("linear_int8", "linear_int8", (randn(2, 3, 4), R.integers(-127, 128, (5, 4)).astype(np.int8),
                                    positive(5), randn(5)), {"has_bias": True}),
    ("linear_int8-nobias", "linear_int8", (randn(3, 4), R.integers(-127, 128, (5, 4)).astype(
        np.int8), positive(5)), {"has_bias": False}),
    *[(f"linear_attention-{fm[0]}-{tag}", "linear_attention", ins,
       {"feature_map": fm, "causal": causal, "scale": 0.5, "has_padding": len(ins) == 4})
      for fm in (("elu_plus_one",), ("favor", 6, 1))
      for tag, causal, ins in (
          ("full", False, (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("causal-gqa", True, (randn(2, 4, 70, 4), randn(2, 2, 70, 4), randn(2, 2, 70, 3))),
          ("causal-last-queries-padded", True,
           (randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD_FIRST)),
          ("full-padded", False, (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD)),
      )],
    ("moe_route", "moe_route", (ROUTER,), {"top_k": 2, "capacity_factor": 0.6, "training": True}),
    ("moe_dispatch", "moe_dispatch", (randn(10, 3), ROUTE2), {}),
    ("moe_dispatch-capacity", "moe_dispatch", (randn(10, 3), ROUTE2_CAPPED), {}),
    ("moe_combine-top2", "moe_combine", (randn(20, 3), ROUTER, ROUTE2),
     {"top_k": 2, "normalize": True}),
    ("moe_combine-capacity", "moe_combine", (randn(20, 3), ROUTER, ROUTE2_CAPPED),
     {"top_k": 2, "normalize": True}),
    ("moe_combine-switch", "moe_combine", (randn(10, 3), ROUTER, ROUTE1),
     {"top_k": 1, "normalize": False}),
    ("moe_aux", "moe_aux", (ROUTER, ROUTE2), {"top_k": 2}),
    ("moe_counts", "moe_counts", (ROUTE2_CAPPED,), {"experts": 4}),
    ("moe_dropped", "moe_dropped", (ROUTE2_CAPPED,), {}),
    ("grouped_linear", "grouped_linear", (randn(7, 3), np.array([2, 0, 4]), randn(3, 5, 3),
                                          randn(3, 5)), {"has_bias": True}),
    ("grouped_linear-nobias", "grouped_linear", (randn(6, 3), np.array([1, 5]), randn(2, 4, 3)),
     {"has_bias": False}),
    *[(f"batch_norm-{mode}-{affine}", "batch_norm",
       (randn(3, 4, 5), randn(5), positive(5)) + ((positive(5), randn(5)) if affine else ()),
       {"eps": 1e-5, "momentum": 0.1, "affine": affine, "training": mode == "train"})
      for mode in ("train", "eval") for affine in (True, False)],
    ("conv1d-same", "conv1d", (randn(2, 7, 4), randn(6, 4, 3), randn(6)),
     {"pad_left": 1, "pad_right": 1, "groups": 1, "has_bias": True}),
    ("conv1d-depthwise-causal", "conv1d", (randn(2, 7, 4), randn(4, 1, 5)),
     {"pad_left": 4, "pad_right": 0, "groups": 4, "has_bias": False}),
    ("conv1d-grouped-valid", "conv1d", (randn(1, 9, 4), randn(6, 2, 4), randn(6)),
     {"pad_left": 0, "pad_right": 0, "groups": 2, "has_bias": True}),
    *[(f"lsh_attention-{tag}", "lsh_attention", ins,
       {"lsh": lsh, "scale": 0.5, "has_padding": len(ins) == 3})
      for tag, lsh, ins in (
          ("one-chunk", (4, 2, 16, False, 1), (randn(2, 2, 9, 4), randn(2, 2, 9, 3))),
          ("causal-chunks", (4, 2, 4, True, 2), (randn(2, 2, 13, 4), randn(2, 2, 13, 3))),
          ("padded", (8, 3, 5, False, 3),
           (randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD_FIRST)),
      )],
    ("transpose", "transpose", (randn(2, 3, 4),), {"perm": (2, 0, 1)}),
    ("reshape", "reshape", (randn(2, 3, 4),), {"shape": (6, 4)}),
    *[(f"{op}-{axes}-{keep}", op, (randn(2, 3, 4),), {"axes": axes, "keepdims": keep})
      for op in ("sum", "mean", "max") for axes in ((1,), (0, 2), (-1,))
      for keep in (True, False)],
    ("concat", "concat", (randn(2, 1, 4), randn(2, 3, 4), randn(2, 2, 4)), {"axis": 1}),
    ("concat-last", "concat", (randn(2, 3), randn(2, 1)), {"axis": -1}),
    ("expand", "expand", (randn(1, 3, 1),), {"shape": (2, 3, 4)}),
    ("expand-rank", "expand", (randn(3),), {"shape": (2, 3)}),
    ("index-int", "index", (randn(2, 3, 4),), {"index": ((None, None), 0)}),
    ("index-slice", "index", (randn(2, 5, 4),), {"index": (1, (1, 3))}),
    ("index-mixed", "index", (randn(3, 4, 5),), {"index": ((0, 2), (None, None), -1)}),
    ("softmax", "softmax", (randn(2, 3, 5),), {"axis": -1}),
    ("softmax-axis1", "softmax", (randn(2, 3, 5),), {"axis": 1}),
    ("layer_norm", "layer_norm", (randn(2, 3, 6), randn(6), randn(6)),
     {"eps": 1e-5, "has_bias": True}),
    ("add_layer_norm", "add_layer_norm", (randn(2, 3, 6), randn(2, 3, 6), randn(6), randn(6)),
     {"eps": 1e-5, "has_bias": True}),
    ("layer_norm-nobias", "layer_norm", (randn(2, 3, 6), randn(6)),
     {"eps": 1e-5, "has_bias": False}),
    ("rms_norm", "rms_norm", (randn(2, 3, 6), randn(6)), {"eps": 1e-6}),
    ("embedding-repeats", "embedding",
     (randn(7, 3), np.array([[1, 1, 2, 0, 6], [6, 6, 6, 3, 1]])), {}),
    *[(f"attention-{tag}", "attention", ins, {"pattern": p, "scale": 0.5, "dropout": 0.1})
      for tag, p, ins in (
          ("full", None, (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("causal", CAUSAL, (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("causal-window", CAUSAL_WINDOW,
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("padding-fully-masked", None,
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD)),
          ("causal-padding-masked-row", CAUSAL,
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD_FIRST)),
          ("shared-kv-heads", CAUSAL, (randn(2, 2, 5, 4), randn(2, 1, 5, 4), randn(2, 1, 5, 3))),
          ("cached-queries", CAUSAL, (randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
      )],
    # attention variants: (op, pattern, score, bias terms, rope, extras, operands)
    *[(f"{op}-{tag}", op, ins, {"pattern": p, "scale": 0.5, "dropout": 0.0, "score": score,
                                "bias": bias, "rope": rope, "extras": extras})
      for op in ("attention", "attention_weights")
      for tag, p, score, bias, rope, extras, ins in (
          ("gqa", CAUSAL, "scaled", (), None, (),
           (randn(2, 4, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("rope-half-gqa", CAUSAL, "scaled", (), (100.0, 4, "half", ("none",)), (),
           (randn(2, 4, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("rope-interleaved-partial-linear", None, "dot", (),
           (50.0, 2, "interleaved", ("linear", 2.0)), (),
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("rope-llama3-cached", CAUSAL, "scaled", (), (500.0, 4, "half",
                                                        ("llama3", 8.0, 1.0, 4.0, 16.0)), (),
           (randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3))),
          ("alibi-t5", CAUSAL, "scaled", (("alibi",), ("t5", 8, 20, False)), None, ("bias1",),
           (randn(2, 3, 5, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 3), randn(8, 3))),
          ("t5-bidirectional-cached", None, "scaled", (("t5", 8, 20, True),),
           (100.0, 4, "half", ("ntk", 2.0)), ("bias0",),
           (randn(2, 2, 3, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), randn(8, 2))),
          ("relative", CAUSAL_WINDOW, "scaled", (("relative", 2),), None, ("bias0",),
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), randn(5, 4))),
          ("tensor-bias-padding", CAUSAL, "scaled", (("tensor",),), None,
           ("key_padding", "bias0"),
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), PAD_FIRST,
            randn(2, 1, 5, 5))),
          ("additive-gqa", CAUSAL, "additive", (), None, ("score_wq", "score_wk", "score_v"),
           (randn(2, 4, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), randn(3, 4), randn(3, 4),
            randn(3))),
          ("bilinear-rope-relative", CAUSAL, "bilinear", (("relative", 1),),
           (100.0, 4, "half", ("none",)), ("bias0", "score_w"),
           (randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3), randn(3, 4),
            randn(4, 4))),
      )],
]


def kernel(op: str) -> Any:
    return getattr(K, f"op_{op}")


def is_float(x: np.ndarray) -> bool:
    return x.dtype.kind == "f"


@pytest.fixture(autouse=True)
def float64_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels that create float tensors (cast) do so in float64, as a float64 program."""
    monkeypatch.setattr(K, "DTYPE", np.float64)


# -- the table --------------------------------------------------------------------------------

def test_every_differentiable_op_has_a_rule():
    from attndsl.ir.ops import OPS
    differentiable = {name for name, op in OPS.items() if op.kind != "leaf"}
    leaves = {name for name, op in OPS.items() if op.kind == "leaf"}
    assert differentiable - set(VJP_RULES) == set()
    assert set(VJP_RULES) <= set(OPS)
    assert leaves == CONSTANT_LIKE
    assert not leaves & set(VJP_RULES)


def test_every_case_op_is_covered():
    assert {op for _, op, _, _ in CASES} == set(VJP_RULES)


@pytest.mark.parametrize("shape, target", [((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)),
                                           ((2, 3, 4), ()), ((2, 3, 4), (1, 3, 4)),
                                           ((2, 3), (2, 3))])
def test_unbroadcast_sums_broadcast_axes(shape, target):
    """unbroadcast(g, shape of x) is the gradient of sum(broadcast(x) * g) w.r.t. x."""
    g = randn(*shape)
    x = torch.zeros(target, dtype=torch.float64, requires_grad=True)
    (x.expand(shape) * torch.tensor(g)).sum().backward()
    out = unbroadcast(g, target)
    assert out.shape == target
    np.testing.assert_allclose(out, x.grad.numpy(), rtol=1e-12)


# -- rules against finite differences ---------------------------------------------------------

@pytest.mark.parametrize("op, ins, attrs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_finite_differences(op, ins, attrs):
    """⟨rule(g)_i, v⟩ == (⟨g, f(x_i + εv)⟩ − ⟨g, f(x_i − εv)⟩) / 2ε for each float input;
    int/bool inputs (and every input of a non-float result) get None."""
    f = kernel(op)
    out = f(*ins, **attrs)
    g = randn(*out.shape)
    grads = VJP_RULES[op](g, out, ins, attrs)
    assert len(grads) == len(ins)
    for i, (x, gi) in enumerate(zip(ins, grads)):
        if not (is_float(x) and is_float(out)):
            assert gi is None, f"input {i}"
            continue
        v = randn(*x.shape)
        shifted = [list(ins), list(ins)]
        shifted[0][i], shifted[1][i] = x + EPS * v, x - EPS * v
        numeric = (np.sum(g * f(*shifted[0], **attrs))
                   - np.sum(g * f(*shifted[1], **attrs))) / (2 * EPS)
        analytic = 0.0 if gi is None else np.sum(gi * v)
        if gi is not None:
            assert gi.shape == x.shape, f"input {i}"
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), f"input {i}"


def test_attention_fully_masked_rows_get_no_gradient():
    q, k, v = randn(2, 2, 5, 4), randn(2, 2, 5, 4), randn(2, 2, 5, 3)
    attrs = {"pattern": CAUSAL, "scale": 0.5, "dropout": 0.0}
    out = K.op_attention(q, k, v, PAD_FIRST, **attrs)
    dq, dk, dv, dpad = VJP_RULES["attention"](np.ones_like(out), out, (q, k, v, PAD_FIRST), attrs)
    assert dpad is None
    assert np.all(out[0, :, 0] == 0) and np.all(dq[0, :, 0] == 0)   # query 0 sees no key
    assert np.all(dk[0, :, 0] == 0) and np.all(dv[0, :, 0] == 0)   # key 0 is padding


# -- non-smooth points follow torch -----------------------------------------------------------

def torch_grads(fn: Any, *arrays: np.ndarray, g: np.ndarray) -> list[np.ndarray]:
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    fn(*ts).backward(torch.tensor(g))
    return [t.grad.numpy() for t in ts]


TIES = np.array([[1.0, 3.0, 3.0, 0.0], [-2.0, 0.0, -2.0, 0.0]])
TIES_OTHER = np.array([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, -2.0, 5.0]])
NON_SMOOTH = [
    ("relu", (TIES,), {}, F.relu),
    ("abs", (TIES,), {}, torch.abs),
    ("maximum", (TIES, TIES_OTHER), {}, torch.maximum),
    ("minimum", (TIES, TIES_OTHER), {}, torch.minimum),
    ("max", (TIES,), {"axes": (1,), "keepdims": False}, lambda x: torch.amax(x, dim=1)),
    ("max", (TIES,), {"axes": (0, 1), "keepdims": True},
     lambda x: torch.amax(x, dim=(0, 1), keepdim=True)),
    ("min", (TIES,), {"axes": (1,), "keepdims": False}, lambda x: torch.amin(x, dim=1)),
    ("clip", (TIES,), {"lo": 0.0, "hi": 1.0}, lambda x: torch.clamp(x, 0.0, 1.0)),
    ("sign", (TIES,), {}, torch.sign),
    ("softplus", (np.array([[19.5, 20.0, 20.5, -3.0]]),), {}, F.softplus),
]


@pytest.mark.parametrize("op, ins, attrs, torch_fn", NON_SMOOTH,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NON_SMOOTH)])
def test_non_smooth_points_follow_torch(op, ins, attrs, torch_fn):
    out = kernel(op)(*ins, **attrs)
    g = randn(*out.shape)
    ours = VJP_RULES[op](g, out, ins, attrs)
    for mine, theirs in zip(ours, torch_grads(torch_fn, *ins, g=g)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=0)


# -- the loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_gradient_matches_torch(smoothing):
    logits = randn(3, 5, 7)
    targets = R.integers(0, 7, (3, 5))
    targets[0, :2] = -100
    loss, grad = cross_entropy_with_grad(logits, targets, smoothing, -100)
    t = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(t.reshape(-1, 7), torch.tensor(targets).reshape(-1),
                               ignore_index=-100, label_smoothing=smoothing)
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-15)
    assert np.all(grad[0, :2] == 0)


def test_cross_entropy_with_every_target_ignored_is_zero():
    loss, grad = cross_entropy_with_grad(randn(2, 3), np.full(2, -1), 0.0, -1)
    assert loss == 0.0 and not grad.any()


# -- whole models against torch autograd ------------------------------------------------------

@pytest.fixture(scope="module", params=spec_paths(), ids=lambda p: p.stem)
def torch_model(request: pytest.FixtureRequest) -> attndsl.Model:
    path = request.param
    if path.stem not in TINY_CONFIGS:
        pytest.skip(f"no tiny config for {path.stem}")
    return attndsl.compile(path, backend="torch", config=TINY_CONFIGS[path.stem], seed=0,
                           dtype="float64")


def test_loss_and_gradients_match_torch(torch_model):
    """Float64, torch in eval mode: the same loss and every parameter's gradient (tied
    weights and parameters that do not reach the loss included)."""
    inputs = random_inputs(torch_model.graph, batch=2, seq=6)
    targets = targets_for(torch_model, inputs)
    expected_loss, expected = torch_model.value_and_grad(targets=targets, **inputs)
    loss, grads = value_and_grad_numpy(torch_model.graph, torch_model.state_dict(), inputs,
                                       targets, loss_spec(torch_model.graph), "float64")
    assert loss == pytest.approx(expected_loss, rel=1e-7, abs=1e-9)
    assert set(grads) == set(expected)
    for name, g in grads.items():
        assert g.shape == expected[name].shape and g.dtype == np.float64, name
        np.testing.assert_allclose(g, expected[name], rtol=1e-7, atol=1e-9, err_msg=name)


def test_float32_through_the_program():
    """float32 gradients, computed by a NumPy program's own (cached) gradient program, stay
    in float32 and agree with float64 to float32 accuracy."""
    model = attndsl.compile(SPECS_DIR / "gpt.attn", backend="numpy", config=TINY_CONFIGS["gpt"],
                            seed=0)
    inputs = random_inputs(model.graph, batch=2, seq=6)
    targets = targets_for(model, inputs)
    spec = loss_spec(model.graph)
    params = model.state_dict()
    loss32, g32 = model.program.value_and_grad(inputs, targets, spec)
    loss64, g64 = value_and_grad_numpy(model.graph, params, inputs, targets, spec, "float64")
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name, g in g32.items():
        assert g.dtype == np.float32, name
        np.testing.assert_allclose(g, g64[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("stem", ["gpt", "llama", "t5"])
def test_kept_and_recomputed_attention_probabilities_give_the_same_gradients(stem, monkeypatch):
    """The forward keeps small dense attention probabilities for the backward; above
    SAVED_PROBS_BYTES the backward recomputes them: bitwise the same gradients."""
    model = attndsl.compile(SPECS_DIR / f"{stem}.attn", backend="numpy",
                            config=TINY_CONFIGS[stem], seed=0, dtype="float64")
    inputs = random_inputs(model.graph, batch=2, seq=6)
    targets = targets_for(model, inputs)
    spec = loss_spec(model.graph)
    args = (model.graph, model.state_dict(), inputs, targets, spec, "float64")
    monkeypatch.delenv("ATTNDSL_DEBUG", raising=False)     # the spied module is the plain one
    program = GradProgram(model.graph, spec, "float64")
    ns, saved = program.namespace, []
    keep = ns["attention_keep"]

    def spy(*a: object, **k: object) -> tuple:
        out = keep(*a, **k)
        saved.append(out[1] is not None)
        return out

    ns["attention_keep"] = spy
    kept = value_and_grad_numpy(*args, program=program)
    assert saved and all(saved)
    saved.clear()
    ns["SAVED_PROBS_BYTES"] = 0
    recomputed = value_and_grad_numpy(*args, program=program)
    assert saved and not any(saved)                  # nothing kept: the VJP recomputed
    assert kept[0] == recomputed[0]
    for name, g in kept[1].items():
        np.testing.assert_array_equal(g, recomputed[1][name], err_msg=name)
