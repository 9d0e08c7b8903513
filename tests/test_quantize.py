"""Weight-only int8 quantization: the rounding formula, the kernel against its formula on
every backend, every spec in specs/ against its float model with the rounded weights,
int8 checkpoints, cached generation, the CLI, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_inputs, set_args, tiny_config

import attndsl
from attndsl.cli import main
from attndsl.errors import ConfigError, TrainingError, WeightsError
from attndsl.passes.quantize_weights import SCALE_SUFFIX, quantize_int8
from attndsl.training.engines import make_engine
from attndsl.training.trainer import TrainConfig

NANO = dict(vocab=65, d_model=32, heads=4, layers=2, ctx=32)


def test_per_channel_symmetric_rounding() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 10)) * np.array([1e-3, 0.1, 1, 10, 100, 0])[:, None]
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and s.shape == (6,)
    np.testing.assert_allclose(s[:5], np.abs(w[:5]).max(axis=1) / 127, rtol=1e-6)
    assert np.all(np.abs(q[:5]).max(axis=1) == 127) and s[5] == 1 and not q[5].any()
    assert np.all(np.abs(q * s[:, None].astype(np.float64) - w) <= s[:, None] * (0.5 + 1e-5))


@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_is_its_formula_on_every_backend(backend, bias) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8))
    q = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    s, b = rng.random(5) + 0.1, rng.standard_normal(5)
    want = x @ q.T.astype(np.float64) * s + (b if bias else 0)   # (x Q^T) s + b
    spec = ("model m { input x: float[B, T, 8]  output y = linear(x, 5"
            + ("" if bias else ", bias=false") + ") }")
    model = attndsl.quantize(attndsl.compile(spec, backend=backend))
    model.load_state_dict({"y.weight": q, "y.weight" + SCALE_SUFFIX: s,
                           **({"y.bias": b} if bias else {})})
    got = model.to_numpy(model(x=x.astype(np.float32)))["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_every_spec_equals_its_float_model_with_rounded_weights(spec_path, backend) -> None:
    """Quantization changes nothing but the weights' rounding, on every spec: the float
    model given dequantized weights (q * scale) computes the same outputs."""
    config = tiny_config(spec_path.stem)
    model = attndsl.compile(spec_path, backend=backend, config=config, seed=1)
    quant = attndsl.quantize(model)
    assert quant.quantize_report.quantized
    qs = quant.state_dict()
    rounded = {n: (qs[n] * qs[n + SCALE_SUFFIX][:, None] if qs[n].dtype == np.int8 else qs[n])
               for n in model.state_dict()}
    model.load_state_dict(rounded)
    inputs = random_inputs(model.graph, seed=2)
    want, got = (m.to_numpy(m(**inputs)) for m in (model, quant))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * np.abs(
            want[name]).max(), err_msg=name)


def test_report_saving_loading_and_cached_generation(tmp_path) -> None:
    from attndsl.training.generate import generate_ids
    model = attndsl.compile("specs/nanogpt.attn", backend="torch", config=NANO, seed=0)
    quant = attndsl.quantize(model)
    report = quant.quantize_report
    assert report.kept == ["wte.weight"]                  # tied to the embedding: stays float
    assert len(report.quantized) == 12 and report.bytes_after < report.bytes_before / 2.5
    assert "12 linear weights quantized" in str(report)
    quant.save(tmp_path / "q.safetensors")
    again = attndsl.quantize(attndsl.compile("specs/nanogpt.attn", config=NANO, seed=5))
    again.load(tmp_path / "q.safetensors")
    x = np.random.default_rng(0).integers(0, 65, (2, 16))
    np.testing.assert_allclose(again.to_numpy(again(tokens=x))["logits"],
                               quant.to_numpy(quant(tokens=x))["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsError, match="needs int8"):
        again.load_state_dict({**again.state_dict(), "layers.0.attn.q.weight":
                               np.zeros((32, 32), np.float32)})
    with pytest.raises(WeightsError, match="unexpected"):  # an int8 file into a float model
        attndsl.compile("specs/nanogpt.attn", config=NANO).load(tmp_path / "q.safetensors")
    cached = generate_ids(quant, [1, 2, 3], 12, temperature=0.0)
    full = [1, 2, 3]
    for _ in range(12):                                   # greedy without the cache
        logits = quant.to_numpy(quant(tokens=np.array([full])))["logits"][0, -1]
        full.append(int(np.argmax(logits)))
    assert cached == full


def test_refusals() -> None:
    model = attndsl.compile("specs/nanogpt.attn", config=NANO)
    quant = attndsl.quantize(model)
    with pytest.raises(ConfigError, match="already quantized"):
        attndsl.quantize(quant)
    with pytest.raises(ConfigError, match="unknown quantization"):
        attndsl.quantize(model, "int4")
    with pytest.raises(ConfigError, match="nothing to quantize"):
        attndsl.quantize(attndsl.compile("model m { input x: float[B, 4]  output y = relu(x) }"))
    with pytest.raises(TrainingError, match="for inference"):
        make_engine(quant, TrainConfig())


def test_cli_run_and_generate_quantize(tmp_path, capsys) -> None:
    args = set_args(NANO)
    float_file, int8_file = tmp_path / "f.safetensors", tmp_path / "q.safetensors"
    model = attndsl.compile("specs/nanogpt.attn", config=NANO, seed=3)
    model.save(float_file)
    attndsl.quantize(model).save(int8_file)
    outs = {}
    for name, weights in (("float", float_file), ("int8", int8_file)):
        out = tmp_path / f"{name}.npz"
        assert main(["run", "specs/nanogpt.attn", *args, "--quantize", "int8", "--weights",
                     str(weights), "-o", str(out)]) == 0
        outs[name] = np.load(out)["logits"]
        assert "12 linear weights quantized" in capsys.readouterr().err
    np.testing.assert_array_equal(outs["float"], outs["int8"])
    assert main(["generate", "specs/nanogpt.attn", "--set", "vocab=256", *args[2:],
                 "--quantize", "int8", "--max-new", "5", "--backend", "numpy"]) == 0
    assert "recomputing" not in capsys.readouterr().err    # the cache stays exact
    with pytest.raises(SystemExit) as bad:
        main(["run", "specs/nanogpt.attn", "--quantize", "int4"])
    assert bad.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
