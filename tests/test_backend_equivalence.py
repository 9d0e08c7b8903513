"""Every spec gives the same numbers on every backend: same seed, same inputs, outputs equal to
the NumPy reference within TOLERANCES; causal models do not look ahead on any backend; the
torch backend's nn.Module carries the same parameter names as the state dict."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
from attndsl.backends import numpy_kernels as K
from helpers import CAUSAL_STREAMS, OP_SPECS, random_inputs, tiny_config
from tolerances import TOLERANCES

import attndsl
from attndsl.ir import patterns as pat


@functools.cache
def compiled(spec: str, backend: str, dtype: str = "float32", seed: int = 0):
    """One compiled tiny model per (spec, backend, dtype, seed), shared across tests."""
    stem = Path(spec).stem
    return attndsl.compile(spec, backend=backend, config=tiny_config(stem), seed=seed,
                           dtype=dtype)


@functools.cache
def reference(spec: str, dtype: str = "float32") -> tuple[dict, dict]:
    """NumPy inputs and outputs for a spec (the reference every backend is compared with)."""
    model = compiled(spec, "numpy", dtype)
    inputs = random_inputs(model.graph, batch=2, seq=12, seed=1)
    if dtype == "float64":
        inputs = {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                  for k, v in inputs.items()}
    return inputs, model.to_numpy(model(**inputs))


def assert_outputs_close(actual: dict, expected: dict, dtype: str) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert np.isfinite(actual[name]).all(), f"{name} has non-finite values"
        np.testing.assert_allclose(actual[name], expected[name], err_msg=name,
                                   **TOLERANCES[dtype])


def test_specs_are_discovered(spec_path: Path) -> None:
    """Every spec in specs/ has a tiny config (or is skipped with a reason)."""
    assert spec_path.suffix == ".attn"
    config = tiny_config(spec_path.stem)
    graph = attndsl.build(spec_path, config)
    assert graph.outputs


def test_backend_matches_numpy(spec_path: Path, backend: str) -> None:
    inputs, expected = reference(str(spec_path))
    model = compiled(str(spec_path), backend)
    out = model.to_numpy(model(**inputs))
    for name, value in out.items():
        assert value.dtype == np.float32, f"{backend} {name} is {value.dtype}"
    assert_outputs_close(out, expected, "float32")


def test_torch_float64_matches_numpy_float64(spec_path: Path) -> None:
    pytest.importorskip("torch")
    inputs, expected = reference(str(spec_path), "float64")
    model = compiled(str(spec_path), "torch", "float64")
    out = model.to_numpy(model(**inputs))
    for name, value in out.items():
        assert value.dtype == np.float64, f"torch {name} is {value.dtype}"
    assert_outputs_close(out, expected, "float64")


def test_float64_and_float32_agree(spec_path: Path) -> None:
    inputs, out32 = reference(str(spec_path), "float32")
    _, out64 = reference(str(spec_path), "float64")
    assert_outputs_close(out32, {k: v.astype(np.float32) for k, v in out64.items()}, "float32")


def test_same_seed_same_weights_on_every_backend(spec_path: Path, backend: str) -> None:
    ref = compiled(str(spec_path), "numpy").state_dict()
    got = compiled(str(spec_path), backend).state_dict()
    assert list(got) == list(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


@pytest.mark.parametrize("stem", sorted(CAUSAL_STREAMS))
def test_causal_models_do_not_look_ahead(stem: str, backend: str, repo_root: Path) -> None:
    spec = repo_root / "specs" / f"{stem}.attn"
    if not spec.exists():
        pytest.skip(f"no spec {spec.name}")
    model = compiled(str(spec), backend)
    input_name, output_name = CAUSAL_STREAMS[stem]
    inputs = random_inputs(model.graph, batch=2, seq=16, seed=2)
    seq = inputs[input_name].shape[1]
    cut = seq // 2
    changed = dict(inputs)
    changed[input_name] = inputs[input_name].copy()
    changed[input_name][:, cut:] = (changed[input_name][:, cut:] + 1) % 7
    a = model.to_numpy(model(**inputs))[output_name]
    b = model.to_numpy(model(**changed))[output_name]
    np.testing.assert_allclose(a[:, :cut], b[:, :cut], **TOLERANCES["float32"])
    assert not np.allclose(a[:, cut:], b[:, cut:]), "later positions should see the change"


def test_module_parameter_names_match_state_dict(spec_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = compiled(str(spec_path), "torch")
    assert isinstance(model.module, torch.nn.Module)
    names = [name for name, _ in model.module.named_parameters()]
    # the module tree groups parameters by submodule (a T5 bias table created mid-stack
    # comes after it); state_dict() keeps the spec's order on every backend
    assert sorted(names) == sorted(model.state_dict())
    assert list(model.state_dict()) == list(compiled(str(spec_path), "numpy").state_dict())
    for name, param in model.module.named_parameters():
        assert tuple(param.shape) == model.state_dict()[name].shape, name


def test_numpy_model_has_no_module(repo_root: Path) -> None:
    model = compiled(str(repo_root / "specs" / "gpt.attn"), "numpy")
    with pytest.raises(AttributeError, match="backend='torch'"):
        _ = model.module


def test_torch_module_forward_matches_model_call(repo_root: Path) -> None:
    torch = pytest.importorskip("torch")
    model = compiled(str(repo_root / "specs" / "gpt.attn"), "torch")
    ids = np.random.default_rng(0).integers(0, 97, (2, 9))
    with torch.no_grad():
        direct = model.module(tokens=torch.as_tensor(ids))["logits"].numpy()
    np.testing.assert_allclose(direct, model.to_numpy(model(tokens=ids))["logits"],
                               **TOLERANCES["float32"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OP_SPECS))
def test_op_specs_match_numpy(name: str, backend: str, dtype: str) -> None:
    """Single-op specs (every pattern, key padding with a fully masked row, norms, GELU forms,
    positions) give the NumPy numbers on every backend, in float32 and float64."""
    ref_model = attndsl.compile(OP_SPECS[name], backend="numpy", seed=1, dtype=dtype)
    inputs = random_inputs(ref_model.graph, batch=2, seq=9, seed=3)
    if "pad" in inputs:
        inputs["pad"][0, 0] = False          # batch 0, query 0 (causal) sees no key
    inputs = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    expected = ref_model(**inputs)
    model = attndsl.compile(OP_SPECS[name], backend=backend, seed=1, dtype=dtype)
    out = model.to_numpy(model(**inputs))
    for key, value in out.items():
        if value.dtype.kind == "f":
            assert value.dtype == np.dtype(dtype), f"{backend} {key} is {value.dtype}"
    assert_outputs_close(out, expected, dtype)


INT_OPERAND_EXPRS = {
    "exp(arange(T))": lambda t: np.exp(t),
    "arange(T) * 2": lambda t: t * 2.0,
    "gelu(arange(T), approximate=\"tanh\")": lambda t: 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi)
                                                         * (t + 0.044715 * t ** 3))),
    "silu(arange(T))": lambda t: t / (1 + np.exp(-t)),
}


@pytest.mark.parametrize("expr", sorted(INT_OPERAND_EXPRS))
def test_float_ops_on_int_tensors(expr: str, backend: str) -> None:
    """The IR types these float (the frontend casts the int operand); every backend computes
    them in the model's dtype."""
    text = f"model m {{\n    input x: float[T]\n    output y = x + {expr}\n}}\n"
    model = attndsl.compile(text, backend=backend)
    x = np.zeros(5, np.float32)
    out = model.to_numpy(model(x=x))["y"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, INT_OPERAND_EXPRS[expr](np.arange(5.0)),
                               **TOLERANCES["float32"])


# -- kernel-level parity: numpy kernels vs torch kernels ------------------------------------------

ATTENTION_PATTERNS = [None, pat.CAUSAL, pat.CAUSAL & pat.Window(3), pat.Window(2) | pat.Global((0,)),
                      pat.Prefix(3) | pat.CAUSAL, pat.Dilated(2, 2)]


@pytest.mark.parametrize("tq,tk", [(8, 8), (1, 8), (3, 8)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pattern", ATTENTION_PATTERNS, ids=lambda p: str(p or "full"))
def test_attention_kernel_parity(pattern, padded: bool, tq: int, tk: int) -> None:
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    r = np.random.default_rng(0)
    q = r.standard_normal((2, 2, tq, 4))
    k, v = r.standard_normal((2, 2, tk, 4)), r.standard_normal((2, 2, tk, 4))
    pad = None
    if padded:
        pad = np.ones((2, tk), dtype=bool)
        pad[1, :] = False           # batch 1 fully padded: zero rows on both backends
        pad[0, 1] = False
    src = None if pattern is None or pattern.is_full else pattern.source()
    expected = K.op_attention(q, k, v, pad, pattern=src, scale=0.5, dropout=0.0)
    t = [torch.as_tensor(a) for a in (q, k, v)]
    got = TK.op_attention(*t, None if pad is None else torch.as_tensor(pad), pattern=src,
                          scale=0.5, dropout=0.0, training=False)
    np.testing.assert_allclose(got.numpy(), expected, **TOLERANCES["float64"])


ELEMENTWISE = ["neg", "exp", "tanh", "abs", "sigmoid", "relu", "silu"]


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_kernel_parity(op: str) -> None:
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    x = np.random.default_rng(0).standard_normal((4, 5)) * 3
    got = getattr(TK, f"op_{op}")(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, getattr(K, f"op_{op}")(x), **TOLERANCES["float64"])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_kernel_parity(approximate: str) -> None:
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    x = np.linspace(-6, 6, 97)
    got = TK.op_gelu(torch.as_tensor(x), approximate=approximate).numpy()
    np.testing.assert_allclose(got, K.op_gelu(x, approximate=approximate),
                               **TOLERANCES["float64"])


def test_norm_and_position_kernel_parity() -> None:
    torch = pytest.importorskip("torch")
    from attndsl.backends import torch_kernels as TK
    r = np.random.default_rng(0)
    x, g, b = r.standard_normal((3, 16)), r.standard_normal(16), r.standard_normal(16)
    tt = torch.as_tensor
    tol = TOLERANCES["float64"]
    np.testing.assert_allclose(TK.op_layer_norm(tt(x), tt(g), tt(b), eps=1e-5, has_bias=True),
                               K.op_layer_norm(x, g, b, eps=1e-5, has_bias=True), **tol)
    np.testing.assert_allclose(TK.op_rms_norm(tt(x), tt(g), eps=1e-6),
                               K.op_rms_norm(x, g, eps=1e-6), **tol)
    np.testing.assert_allclose(TK.op_softmax(tt(x * 50), axis=-1), K.op_softmax(x * 50, axis=-1),
                               **tol)
    table = TK.op_sinusoidal(n=9, dim=6, offset=4, device="cpu", fdtype=torch.float64)
    old = K.DTYPE
    try:
        K.DTYPE = np.float64
        np.testing.assert_allclose(table.numpy(), K.op_sinusoidal(n=9, dim=6, offset=4), **tol)
    finally:
        K.DTYPE = old
    assert math.isclose(float(table[0, 0]), math.sin(4.0))
