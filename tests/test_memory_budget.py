"""--memory-budget: the predicted peak of a training step per number of checkpointed repeat
iterations, the choice, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

import attndsl  # noqa: E402
from attndsl.cli import dims_env, main  # noqa: E402
from attndsl.errors import TrainingError  # noqa: E402
from attndsl.training.memory_budget import (  # noqa: E402
    apply_budget,
    choose_checkpointing,
    training_peaks,
)

CFG = dict(layers=4, vocab=97, ctx=64, d_model=64, heads=4)


def test_the_prediction_adds_up_and_falls_with_checkpointing() -> None:
    flat = attndsl.build("model m { input x: float[B, 8]  output y = linear(relu(linear(x, 16)), 8) }")
    params = 8 * 16 + 16 + 16 * 8 + 8
    acts = (4 * 16 + 4 * 16 + 4 * 8) * 4            # linear, relu, linear at B=4, float32
    assert training_peaks(flat, {"B": 4}, "adamw") == [params * 4 * 4 + acts]
    assert training_peaks(flat, {"B": 4}, "sgd") == [params * 4 * 3 + acts]
    g = attndsl.build("specs/gpt.attn", CFG)
    peaks = training_peaks(g, dims_env(g, 8, 64), "adamw")
    assert len(peaks) == 5 and peaks[0] == peaks[1]           # one iteration: saved = recomputed
    assert all(a > b for a, b in zip(peaks[1:], peaks[2:]))


def test_the_fewest_checkpointed_iterations_that_fit() -> None:
    g = attndsl.build("specs/gpt.attn", CFG)
    env = dims_env(g, 8, 64)
    peaks = training_peaks(g, env, "adamw")
    assert choose_checkpointing(g, env, "adamw", peaks[0]) == (0, peaks[0])
    assert choose_checkpointing(g, env, "adamw", peaks[2] + 1) == (2, peaks[2])
    with pytest.raises(TrainingError, match="needs at least"):
        choose_checkpointing(g, env, "adamw", peaks[-1] - 1)


def test_the_model_is_recompiled_with_its_weights_and_trains() -> None:
    model = attndsl.compile("specs/gpt.attn", backend="torch", config=CFG, seed=0)
    before = model.state_dict()
    peaks = training_peaks(model.graph, dims_env(model.graph, 8, 64), "adamw")
    line = apply_budget(model, "adamw", 8, 64, peaks[3])
    assert "checkpointing 3 of 4" in line and model.options["checkpointing"] == 3
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    result = attndsl.train(model, "to be or not to be " * 50, steps=2, batch=2, seq=16)
    assert np.isfinite(result.train_loss)


def test_cli_refuses_a_budget_too_small_or_the_numpy_backend(tmp_path, capsys) -> None:
    base = ["train", "specs/nanogpt.attn", "--steps", "1", "--quiet", "--out", str(tmp_path / "r")]
    assert main([*base, "--memory-budget", "1KB"]) == 2
    assert "a training step needs at least" in capsys.readouterr().err
    assert main([*base, "--memory-budget", "1GB", "--backend", "numpy"]) == 2
    assert "for the torch backend" in capsys.readouterr().err
