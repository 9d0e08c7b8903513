"""GPU paths: PyTorch on CUDA (float32, bfloat16, training step) against the NumPy reference.
Skipped, with the reason, where no CUDA device is visible (CuPy is covered by the
`backend` parametrization of the equivalence suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_inputs, tiny_config
from tolerances import TOLERANCES

import attndsl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device visible to torch")


def test_torch_cuda_matches_numpy(spec_path):
    config = tiny_config(spec_path.stem)
    ref = attndsl.compile(spec_path, config=config, seed=0)
    model = attndsl.compile(spec_path, backend="torch", config=config, seed=0, device="cuda")
    inputs = random_inputs(ref.graph)
    expected = ref(**inputs)
    with torch.no_grad():
        got = model.to_numpy(model(**inputs))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, **TOLERANCES["float32"])


def test_torch_cuda_bfloat16_runs_close_to_float32():
    config = tiny_config("gpt")
    ref = attndsl.compile("specs/gpt.attn", config=config, seed=0)
    model = attndsl.compile("specs/gpt.attn", backend="torch", config=config, seed=0,
                            device="cuda", dtype="bfloat16")
    ids = np.random.default_rng(0).integers(0, config["vocab"], (2, 12))
    with torch.no_grad():
        got = model.to_numpy(model(tokens=ids))["logits"]
    np.testing.assert_allclose(got, ref(tokens=ids)["logits"], atol=5e-2)


def test_torch_cuda_value_and_grad_matches_cpu():
    config = tiny_config("gpt")
    ids = np.random.default_rng(0).integers(0, config["vocab"], (2, 12))
    targets = np.roll(ids, -1, axis=1)
    cpu = attndsl.compile("specs/gpt.attn", backend="torch", config=config, dtype="float64")
    gpu = attndsl.compile("specs/gpt.attn", backend="torch", config=config, dtype="float64",
                          device="cuda")
    loss_c, grads_c = cpu.value_and_grad(tokens=ids, targets=targets)
    loss_g, grads_g = gpu.value_and_grad(tokens=ids, targets=targets)
    assert loss_g == pytest.approx(loss_c, rel=1e-9)
    for name, g in grads_c.items():
        np.testing.assert_allclose(grads_g[name], g, rtol=1e-7, atol=1e-10)
