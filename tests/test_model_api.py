"""The Model API: deterministic initialization, weights I/O, input validation, report()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_CONFIGS, random_inputs
from tolerances import TOLERANCES

import attndsl
from attndsl.errors import RuntimeInputError, WeightsError
from attndsl.training import checkpoint

GPT_TINY = TINY_CONFIGS["gpt"]


@pytest.fixture(scope="module")
def gpt_spec(repo_root):
    return repo_root / "specs" / "gpt.attn"


@pytest.fixture(scope="module")
def gpt(gpt_spec):
    """A tiny GPT on NumPy; tests that change its weights must restore them."""
    return attndsl.compile(gpt_spec, config=GPT_TINY, seed=0)


@pytest.fixture
def ids():
    return np.random.default_rng(0).integers(0, GPT_TINY["vocab"], (2, 10))


def tiny(gpt_spec, **kwargs):
    return attndsl.compile(gpt_spec, config=GPT_TINY, **kwargs)


# -- initialization ------------------------------------------------------------------------------

def test_same_seed_gives_identical_weights(gpt_spec, gpt) -> None:
    again = tiny(gpt_spec, seed=0).state_dict()
    for name, value in gpt.state_dict().items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_different_seed_gives_different_weights(gpt_spec, gpt) -> None:
    other = tiny(gpt_spec, seed=1).state_dict()
    ref = gpt.state_dict()
    random_names = [n for n, v in ref.items() if v.std() > 0]
    assert random_names
    for name in random_names:
        assert not np.array_equal(other[name], ref[name]), name


def test_init_scheme(gpt) -> None:
    """Biases zero, norm scales one, weight matrices and embeddings N(0, 0.02^2)."""
    sd = gpt.state_dict()
    graph = gpt.graph
    normal = []
    for name, value in sd.items():
        init = graph.nodes[graph.params[name]].attr("init")
        assert value.dtype == np.float32, name
        if name.endswith(".bias"):
            assert init == "zeros", name
            np.testing.assert_array_equal(value, 0.0, err_msg=name)
        elif "norm" in name or name.startswith("ln_"):
            assert init == "ones", name
            np.testing.assert_array_equal(value, 1.0, err_msg=name)
        else:
            assert init == "normal", name
            assert abs(float(value.mean())) < 0.005, name
            if value.size >= 1000:
                assert 0.017 < float(value.std()) < 0.023, f"{name} std {value.std()}"
            normal.append(value.ravel())
    pooled = np.concatenate(normal)
    assert pooled.size > 10_000
    assert abs(float(pooled.std()) - 0.02) < 0.0005


def test_init_follows_each_params_declared_init(repo_root) -> None:
    """Across all specs with tiny configs: zeros/ones exactly, normal with the given std."""
    for stem, config in TINY_CONFIGS.items():
        spec = repo_root / "specs" / f"{stem}.attn"
        if not spec.exists():
            continue
        model = attndsl.compile(spec, config=config, seed=0)
        for name, value in model.state_dict().items():
            node = model.graph.nodes[model.graph.params[name]]
            init = node.attr("init")
            if init == "zeros":
                np.testing.assert_array_equal(value, 0.0, err_msg=f"{stem} {name}")
            elif init == "ones":
                np.testing.assert_array_equal(value, 1.0, err_msg=f"{stem} {name}")
            elif init == "normal" and value.size >= 1000:
                assert abs(float(value.std()) / node.attr("std") - 1) < 0.15, f"{stem} {name}"


# -- saving and loading --------------------------------------------------------------------------

def test_save_load_round_trip(gpt_spec, gpt, ids, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    gpt.save(path)
    expected = gpt(tokens=ids)["logits"]
    other = tiny(gpt_spec, seed=7)
    assert not np.allclose(other(tokens=ids)["logits"], expected)
    other.load(path)
    np.testing.assert_array_equal(other(tokens=ids)["logits"], expected)
    from_file = tiny(gpt_spec, seed=9, weights=path)
    np.testing.assert_array_equal(from_file(tokens=ids)["logits"], expected)


def test_weights_saved_by_numpy_load_into_torch(gpt_spec, gpt, ids, tmp_path) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "w.safetensors"
    gpt.save(path)
    model = tiny(gpt_spec, backend="torch", seed=3, weights=path)
    np.testing.assert_allclose(model.to_numpy(model(tokens=ids))["logits"],
                               gpt(tokens=ids)["logits"], **TOLERANCES["float32"])


def test_load_state_dict_round_trip(gpt_spec, gpt, ids) -> None:
    other = tiny(gpt_spec, seed=5)
    other.load_state_dict(gpt.state_dict())
    np.testing.assert_array_equal(other(tokens=ids)["logits"], gpt(tokens=ids)["logits"])


def test_state_dict_is_a_copy(gpt) -> None:
    sd = gpt.state_dict()
    sd["wte.weight"][:] = 123.0
    assert not np.any(gpt.state_dict()["wte.weight"] == 123.0)


def test_strict_load_missing(gpt_spec) -> None:
    model = tiny(gpt_spec)
    sd = model.state_dict()
    del sd["wpe.weight"]
    with pytest.raises(WeightsError, match="missing.*wpe.weight"):
        model.load_state_dict(sd)


def test_strict_load_unexpected(gpt_spec) -> None:
    model = tiny(gpt_spec)
    sd = model.state_dict()
    sd["head.extra"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="unexpected.*head.extra"):
        model.load_state_dict(sd)


def test_strict_load_misspelled_name_suggests_the_right_one(gpt_spec) -> None:
    model = tiny(gpt_spec)
    sd = model.state_dict()
    sd["wpe.weights"] = sd.pop("wpe.weight")
    with pytest.raises(WeightsError) as info:
        model.load_state_dict(sd)
    assert "wpe.weight" in str(info.value)
    assert info.value.hint and "did you mean 'wpe.weight'" in info.value.hint


@pytest.mark.parametrize("strict", [True, False])
def test_load_wrong_shape(gpt_spec, strict: bool) -> None:
    model = tiny(gpt_spec)
    before = model.state_dict()
    sd = dict(before)
    sd["layers.0.attn.q.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(WeightsError, match=r"layers\.0\.attn\.q\.weight.*\(3, 3\)"):
        model.load_state_dict(sd, strict=strict)
    after = model.state_dict()
    for name in before:   # a rejected load changes nothing
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_non_strict_load(gpt_spec, gpt) -> None:
    model = tiny(gpt_spec, seed=3)
    before = model.state_dict()
    new_wpe = np.full_like(before["wpe.weight"], 0.5)
    with pytest.warns(UserWarning, match="model parameters not provided") as caught:
        report = model.load_state_dict({"wpe.weight": new_wpe, "not.a.param": np.zeros(2)},
                                       strict=False)
    assert "not.a.param" in str(caught[0].message)
    assert report.unexpected == ["not.a.param"] and "wte.weight" in report.missing
    assert len(report.missing) == len(before) - 1 and report.converted == {}
    after = model.state_dict()
    np.testing.assert_array_equal(after["wpe.weight"], new_wpe)
    for name in before:
        if name != "wpe.weight":
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_load_missing_file_is_a_weights_error(gpt, tmp_path) -> None:
    with pytest.raises(WeightsError, match="no weights file"):
        gpt.load(tmp_path / "absent.safetensors")


def test_load_garbage_file_is_a_weights_error(gpt, tmp_path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        gpt.load(path)


def test_failed_save_keeps_the_existing_file(gpt_spec, gpt, tmp_path, monkeypatch) -> None:
    path = tmp_path / "w.safetensors"
    gpt.save(path)
    original = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny(gpt_spec, seed=11).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"], "temp file left behind"
    model = tiny(gpt_spec, seed=12)
    model.load(path)   # still a valid file with the first model's weights
    np.testing.assert_array_equal(model.state_dict()["wte.weight"], gpt.state_dict()["wte.weight"])


# -- input validation ----------------------------------------------------------------------------

def test_float_tokens_are_rejected(gpt) -> None:
    with pytest.raises(RuntimeInputError, match="input 'tokens' must be int, got dtype float32"):
        gpt(tokens=np.zeros((1, 4), np.float32))


def test_float_torch_tokens_are_rejected(gpt_spec) -> None:
    torch = pytest.importorskip("torch")
    model = tiny(gpt_spec, backend="torch")
    with pytest.raises(RuntimeInputError, match="must be int"):
        model(tokens=torch.zeros(1, 4))


def test_wrong_rank(gpt) -> None:
    with pytest.raises(RuntimeInputError, match=r"rank 2.*got shape \(4,\)"):
        gpt(tokens=np.zeros(4, np.int64))


def test_missing_input(gpt) -> None:
    with pytest.raises(RuntimeInputError, match="missing input 'tokens'") as info:
        gpt()
    assert "tokens" in (info.value.hint or "")


def test_unexpected_input_suggests_the_name(gpt) -> None:
    with pytest.raises(RuntimeInputError, match="unexpected input 'token'") as info:
        gpt(tokens=np.zeros((1, 4), np.int64), token=np.zeros((1, 4), np.int64))
    assert info.value.hint == "did you mean 'tokens'?"


def test_misspelled_only_input_is_reported(gpt) -> None:
    with pytest.raises(RuntimeInputError) as info:
        gpt(tokenz=np.zeros((1, 4), np.int64))
    text = info.value.format()
    assert "tokens" in text


@pytest.mark.parametrize("bad_id", [-1, GPT_TINY["vocab"]])
def test_out_of_range_token_ids(gpt, bad_id: int) -> None:
    with pytest.raises(RuntimeInputError, match="tokens"):
        gpt(tokens=np.array([[1, bad_id]]))


TWO_INPUTS = """
model two {
    input a: float[B, T, 8]
    input b: float[B, T, 8]
    output y = a + b
}
"""


def test_inconsistent_dims_across_inputs() -> None:
    model = attndsl.compile(TWO_INPUTS)
    a = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(RuntimeInputError, match=r"input 'b' axis 1 is T = 4, but another input "
                                                r"set T = 3"):
        model(a=a, b=np.zeros((1, 4, 8), np.float32))
    with pytest.raises(RuntimeInputError, match="input 'a' axis 2 must be 8, got 7"):
        model(a=np.zeros((1, 3, 7), np.float32), b=a)
    np.testing.assert_array_equal(model(a=a + 1, b=a + 2)["y"], a + 3)


def test_sequence_longer_than_ctx(gpt) -> None:
    ctx = GPT_TINY["ctx"]
    gpt(tokens=np.zeros((1, ctx), np.int64))
    with pytest.raises(RuntimeInputError, match=f"T = {ctx + 1} exceeds .* T <= {ctx}"):
        gpt(tokens=np.zeros((1, ctx + 1), np.int64))


def test_errors_format_without_a_span(gpt) -> None:
    with pytest.raises(RuntimeInputError) as info:
        gpt(tokens=np.zeros((1, 4), np.float32))
    assert info.value.format().startswith("error[E301]: ")


def test_float64_input_to_a_float32_model_gives_float32(repo_root) -> None:
    model = attndsl.compile(repo_root / "specs" / "vit.attn", config=TINY_CONFIGS["vit"])
    image = random_inputs(model.graph)["image"].astype(np.float64)
    assert model(image=image)["logits"].dtype == np.float32


@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_integer_array_for_a_float_input(backend_name: str) -> None:
    model = attndsl.compile(TWO_INPUTS, backend=backend_name)
    a = np.ones((1, 3, 8), np.int64)
    out = model.to_numpy(model(a=a, b=a))["y"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 2.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_numpy_backend_rejects_half_dtypes_clearly(gpt_spec, dtype: str) -> None:
    with pytest.raises((ValueError, attndsl.AttnError), match=dtype):
        tiny(gpt_spec, dtype=dtype)


# -- report ----------------------------------------------------------------------------------------

def test_report(gpt_spec, ids) -> None:
    model = tiny(gpt_spec)
    before = model.report()
    assert "parameters: 21,280" in before
    assert "forward FLOPs" in before
    model(tokens=ids)
    after = model.report()
    assert "parameters: 21,280" in after
    assert "forward FLOPs (B=2, T=10):" in after
    assert "activation memory (B=2, T=10, numpy, float32): planned peak" in after
    assert "liveness lower bound" in after and "one training step (adamw" in after
    for block in ("wte", "wpe", "layers", "ln_f"):
        assert block in after


def test_compile_rejects_an_unknown_dtype(gpt_spec) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        tiny(gpt_spec, dtype="float8")


def test_torch_inference_records_no_autograd_graph(repo_root):
    """Model.__call__ on torch runs under inference_mode (no activations kept for backward);
    value_and_grad still differentiates."""
    import torch
    m = attndsl.compile(repo_root / "specs" / "gpt.attn", backend="torch",
                        config=dict(vocab=97, ctx=32, d_model=32, heads=4, layers=1, d_ff=64))
    ids = np.random.default_rng(0).integers(0, 97, (1, 8))
    out = m(tokens=ids)["logits"]
    assert not out.requires_grad and out.is_inference() and torch.is_grad_enabled()
    loss, grads = m.value_and_grad(np.roll(ids, -1, axis=1), tokens=ids)
    assert np.isfinite(loss) and any(np.abs(g).sum() > 0 for g in grads.values())


def test_initialization_is_lazy_and_only_for_what_is_not_loaded(monkeypatch, tmp_path, repo_root):
    """Compiling to load weights draws no random weights; a partial load initializes only
    the missing parameters, with the values a full initialization gives them."""
    import attndsl.model as model_module
    spec = repo_root / "specs" / "gpt.attn"
    config = dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64)
    full = attndsl.compile(spec, config=config, seed=5).state_dict()
    path = tmp_path / "w.safetensors"
    attndsl.compile(spec, config=config, seed=5).save(path)
    drawn: list[set[str] | None] = []
    real = model_module.iter_init_params
    monkeypatch.setattr(model_module, "iter_init_params",
                        lambda graph, seed, names=None: drawn.append(names) or real(
                            graph, seed, names=names))
    for backend in ("numpy", "torch"):
        drawn.clear()
        m = attndsl.compile(spec, backend=backend, config=config, seed=1, weights=path)
        m(tokens=np.zeros((1, 4), dtype=np.int64))
        assert drawn == [], "loading a checkpoint must not initialize anything"
        m = attndsl.compile(spec, backend=backend, config=config, seed=5)
        partial = {k: v for k, v in full.items() if not k.startswith("layers.1.")}
        with pytest.warns(UserWarning, match="16 model parameters not provided"):
            m.load_state_dict(partial, strict=False)
        assert drawn[-1] == {k for k in full if k.startswith("layers.1.")}
        for name, value in m.state_dict().items():
            np.testing.assert_array_equal(value, full[name], err_msg=name)


MASK_SERVER = '''
import sys
import numpy as np
import attndsl

def rss():
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)    # freed heap back to the OS: RSS = what is held
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

spec = """model m {
    input x: float[B, T, 8]
    output y = attention(x, 1, pattern=causal & window(64))
}"""
model = attndsl.compile(spec, backend=sys.argv[1], attention="dense")
for t in range(1900, 1950):
    model(x=np.zeros((1, t, 8), np.float32))
half = rss()
for t in range(1950, 2000):
    model(x=np.zeros((1, t, 8), np.float32))
program = model.program
ns = (type(program.module).forward.__globals__ if sys.argv[1] == "torch"
      else program.namespace(False))
print(len(ns["_MASKS"]), rss() - half)
'''


def test_mask_caches_stay_bounded_over_many_lengths(backend):
    """A server seeing 100 distinct lengths: the per-(pattern, Tq, Tk) mask caches keep at
    most 16 entries (each [T, T] bool is ~3.7 MB here), so once full RSS stops growing: the
    last 50 lengths add a few MB (longer masks), not the 185 MB an unbounded cache would. In
    a fresh process, with malloc_trim before each reading, so that RSS is what is held."""
    env = {k: v for k, v in os.environ.items() if k != "ATTNDSL_DEBUG"}   # the plain module
    out = subprocess.run([sys.executable, "-c", MASK_SERVER, backend], capture_output=True,
                         text=True, check=True, timeout=240, env=env)
    entries, grown = map(int, out.stdout.split())
    assert entries == 16
    assert grown < 16 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB over the last 50 lengths"


def test_torch_outputs_never_alias_weights():
    """Outputs come back without a copy, except where they are (views of) parameters:
    writing into a returned array must not change the model."""
    pytest.importorskip("torch")
    spec = """model m {
        input x: float[B, 4]
        p = parameter([2, 4], init="ones")
        output w = reshape(p, [8])
        output y = x * 2.0
    }"""
    m = attndsl.compile(spec, backend="torch")
    out = m.to_numpy(m(x=np.ones((1, 4), np.float32)))
    out["w"][:] = 7.0
    out["y"][:] = 7.0
    again = m.to_numpy(m(x=np.ones((1, 4), np.float32)))
    np.testing.assert_array_equal(again["w"], np.ones(8))
    (weights,) = m.state_dict().values()
    np.testing.assert_array_equal(weights, np.ones((2, 4)))


def test_weights_of_a_non_float_dtype_are_refused(tmp_path, gpt_spec):
    """int64/bool weights used to load silently (cast to float); now refused, in memory and
    from a file, before any weight changes."""
    from safetensors.numpy import save_file
    m = attndsl.compile(gpt_spec, config=GPT_TINY)
    sd = m.state_dict()
    name = next(iter(sd))
    bad = dict(sd, **{name: sd[name].astype(np.int64)})
    with pytest.raises(WeightsError, match=f"'{name}' in weights is int64"):
        m.load_state_dict(bad)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="is I64, not floating point"):
        m.load(tmp_path / "bad.safetensors")
    np.testing.assert_array_equal(m.state_dict()[name], sd[name])


def test_loading_a_file_streams_tensors(tmp_path, gpt_spec):
    """Model.load reads one tensor at a time and gives the same weights as load_state_dict."""
    a = attndsl.compile(gpt_spec, config=GPT_TINY, seed=3)
    a.save(tmp_path / "w.safetensors")
    for backend in ("numpy", "torch"):
        b = attndsl.compile(gpt_spec, backend=backend, config=GPT_TINY, seed=4,
                            weights=tmp_path / "w.safetensors")
        for name, value in a.state_dict().items():
            np.testing.assert_array_equal(b.state_dict()[name], value, err_msg=name)


def test_a_truncated_weights_file_is_refused_before_loading(tmp_path, gpt_spec):
    m = attndsl.compile(gpt_spec, config=GPT_TINY, seed=1)
    m.save(tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    fresh = attndsl.compile(gpt_spec, config=GPT_TINY, seed=2)
    before = fresh.state_dict()
    with pytest.raises(WeightsError, match="cut.safetensors is not a readable safetensors "
                       "file: tensor '.*' lies outside the file"):
        fresh.load(tmp_path / "cut.safetensors")
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


DERIVED = """model m {
    input a: float[B, N, 4]
    input b: float[B, 2 * N, 4]
    output y = concat([a, a], axis=1) + b
}"""


def test_derived_input_dims_are_checked(backend):
    """`[2 * N]` used to go unchecked: wrong results on NumPy, a raw error on torch."""
    m = attndsl.compile(DERIVED, backend=backend)
    ok = m(a=np.ones((1, 3, 4), np.float32), b=np.ones((1, 6, 4), np.float32))
    assert m.to_numpy(ok)["y"].shape == (1, 6, 4)
    with pytest.raises(RuntimeInputError, match=r"input 'b' axis 1 must be .* = 6, got 5"):
        m(a=np.ones((1, 3, 4), np.float32), b=np.ones((1, 5, 4), np.float32))
    plus_one = attndsl.compile("""model m {
        input a: float[B, N, 4]
        input b: float[B, 2 * N + 1, 4]
        output y = concat([a, a, a[:, :1]], axis=1) + b
    }""", backend=backend)
    with pytest.raises(RuntimeInputError, match="must be .* = 5, got 4"):
        plus_one(a=np.ones((1, 2, 4), np.float32), b=np.ones((1, 4, 4), np.float32))
    out = plus_one(a=np.ones((1, 2, 4), np.float32), b=np.ones((1, 5, 4), np.float32))
    assert plus_one.to_numpy(out)["y"].shape == (1, 5, 4)


def test_empty_inputs_are_refused(backend, gpt_spec):
    m = attndsl.compile(gpt_spec, backend=backend, config=GPT_TINY)
    with pytest.raises(RuntimeInputError, match=r"input 'tokens' axis 1 \(T\) is empty"):
        m(tokens=np.zeros((1, 0), np.int64))


def test_positions_beyond_a_learned_table_are_a_located_error(backend):
    spec = """model m {
        input tokens: int[B, T]
        x = embedding(tokens, 10, 8) + embedding(arange(T), 16, 8)
        output y = x
    }"""
    m = attndsl.compile(spec, backend=backend)
    m(tokens=np.zeros((1, 16), np.int64))
    with pytest.raises(RuntimeInputError, match=r"positions 0..16 index a table of 16 rows") \
            as info:
        m(tokens=np.zeros((1, 17), np.int64))
    assert info.value.span is not None and info.value.span.line == 3


def test_ids_computed_inside_the_model_are_checked(backend):
    spec = """model m {
        input tokens: int[B, T]
        output y = embedding(tokens + 5, 10, 8)
    }"""
    m = attndsl.compile(spec, backend=backend)
    m(tokens=np.full((1, 3), 4, np.int64))
    with pytest.raises(RuntimeInputError, match="embedding id 10 is out of range"):
        m(tokens=np.full((1, 3), 5, np.int64))
    g = attndsl.compile("""model m {
        input x: float[B, 4]
        input i: int[B, 2]
        output y = gather(x, i * 3, axis=1)
    }""", backend=backend)
    with pytest.raises(RuntimeInputError, match="gather index out of range"):
        g(x=np.ones((1, 4), np.float32), i=np.array([[0, 2]]))


@pytest.mark.parametrize("name", ["training", "forward", "to", "state_dict", "_hidden"])
def test_scopes_named_like_module_attributes_work_on_torch(name):
    pytest.importorskip("torch")
    spec = f"""model m {{
        input x: float[B, 4]
        {name} = linear(x, 4)
        output y = {name}
    }}"""
    ref = attndsl.compile(spec, seed=3)
    m = attndsl.compile(spec, backend="torch", seed=3)
    assert list(m.state_dict()) == [f"{name}.weight", f"{name}.bias"]
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(m.to_numpy(m(x=x))["y"], ref(x=x)["y"], rtol=1e-6)
    m.module.train()
    assert m.module.training is True               # the attribute is still nn.Module's flag


def test_load_path_renames_converts_and_reads_shards(tmp_path, gpt_spec):
    """HF-style loading: a prefix rename, float16/bfloat16 weights converted and reported,
    and a sharded checkpoint read through its index (each shard streamed)."""
    from safetensors.numpy import save_file
    ref = tiny(gpt_spec, seed=4)
    sd = ref.state_dict()
    prefixed = {"transformer." + k: v for k, v in sd.items()}
    m = tiny(gpt_spec, seed=5)
    report = m.load_state_dict(prefixed, rename={"transformer.": ""})
    assert report.missing == [] and report.unexpected == []
    for name, value in m.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
    with pytest.raises(WeightsError, match="two weights"):
        m.load_state_dict({"a.x": 1.0, "b.x": 1.0}, rename={"a.": "", "b.": ""})
    half = {k: v.astype(np.float16) for k, v in sd.items()}
    report = m.load_state_dict(half)
    assert set(report.converted.values()) == {"float16"}
    torch = pytest.importorskip("torch")
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}
    report = m.load_state_dict(bf16)
    assert set(report.converted.values()) == {"bfloat16"}
    np.testing.assert_array_equal(m.state_dict()["wte.weight"],
                                  bf16["wte.weight"].float().numpy())
    # two shards and an index, as Hugging Face writes them
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, str(tmp_path / file))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    fresh = tiny(gpt_spec, seed=6)
    assert fresh.load(tmp_path).missing == []
    for name, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
    from safetensors.torch import save_file as save_torch
    save_torch(bf16, str(tmp_path / "bf16.safetensors"))
    assert set(fresh.load(tmp_path / "bf16.safetensors").converted.values()) == {"BF16"}


def test_pruned_outputs_drop_their_parameters(tmp_path, gpt_spec):
    """compile(outputs=["hidden"]) has no LM-head-only parameters, so a headless checkpoint
    loads strictly (GPT's head is tied to wte, so here the head adds none; BERT's does)."""
    spec = gpt_spec.parent / "bert.attn"
    full = attndsl.compile(spec, config=TINY_CONFIGS["bert"])
    headless = attndsl.compile(spec, config=TINY_CONFIGS["bert"], outputs=["hidden"])
    dropped = set(full.state_dict()) - set(headless.state_dict())
    assert dropped and all(not k.startswith("layers.") for k in dropped)
    headless.load_state_dict({k: v for k, v in full.state_dict().items() if k not in dropped})


def test_optional_inputs_and_integer_masks(backend, repo_root):
    """`input seg: int[B, T] = 0` may be omitted; a bool input takes 0/1 integer arrays
    (a tokenizer's int64 attention_mask): BERT runs from tokens alone or with HF-style
    int64 inputs, with the same numbers as explicit zeros / bool masks."""
    spec = repo_root / "specs" / "bert.attn"
    m = attndsl.compile(spec, backend=backend, config=TINY_CONFIGS["bert"], seed=1)
    ids = np.random.default_rng(0).integers(0, TINY_CONFIGS["bert"]["vocab"], (2, 7))
    mask = np.array([[1] * 7, [1] * 5 + [0] * 2], dtype=np.int64)
    explicit = m.to_numpy(m(tokens=ids, segments=np.zeros_like(ids),
                            attention_mask=mask.astype(bool)))
    omitted = m.to_numpy(m(tokens=ids, attention_mask=mask))
    for name in explicit:
        np.testing.assert_allclose(omitted[name], explicit[name], rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeInputError, match="integer values must be 0 or 1"):
        m(tokens=ids, attention_mask=mask * 2)
    with pytest.raises(RuntimeInputError, match="missing input 'attention_mask'"):
        m(tokens=ids)


def test_input_defaults_are_checked():
    with pytest.raises(attndsl.errors.TypeError_, match="default of an int input"):
        attndsl.build("model m { input t: int[B, T] = 0.5\n output y = t }")
    m = attndsl.compile("""model m {
        input a: float[B, 4]
        input extra: float[B, S] = 1.0
        output y = a
    }""")
    with pytest.raises(RuntimeInputError, match="no other input sets S"):
        m(a=np.zeros((1, 4), np.float32))


def test_compile_takes_a_built_graph(gpt_spec):
    graph = attndsl.build(gpt_spec, GPT_TINY)
    a = attndsl.compile(graph, seed=2, outputs=["hidden"])
    b = attndsl.compile(gpt_spec, config=GPT_TINY, seed=2, outputs=["hidden"])
    ids = np.zeros((1, 4), np.int64)
    np.testing.assert_array_equal(a(tokens=ids)["hidden"], b(tokens=ids)["hidden"])
    assert "logits" in graph.outputs                     # the caller's graph is not changed
    with pytest.raises(ValueError, match="config and layerdrop apply when building"):
        attndsl.compile(graph, config={"layers": 1})
