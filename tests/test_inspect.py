"""Seeing inside: attention maps of every attention (equal to the formula and to the
spec's own `weights=` output on both backends), rollout, entropy, and `attndsl inspect`."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attndsl
from attndsl.cli import main
from attndsl.inspect import attention_maps, entropy, rollout

SPEC = """model {
    input tokens: int[B, T]
    x = embedding(tokens, 300, 16)
    repeat 2 as layers {
        x = x + attention(x, 4, pattern=causal, weights="probs")
    }
    output logits = linear(x, 300)
}
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "s.attn"
    path.write_text(SPEC)
    return path


@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_maps_are_the_attention_probabilities(spec, be) -> None:
    if be == "torch":
        pytest.importorskip("torch")
    model = attndsl.compile(spec, backend=be, seed=1)
    ids = np.random.default_rng(0).integers(0, 50, (2, 7))
    maps = attention_maps(model, {"tokens": ids})
    assert list(maps) == ["attention.0", "attention.1"]
    # the first layer's map by the formula, from the weights: softmax(q k^T / sqrt(d) + mask)
    w = model.state_dict()
    x = w["x.weight"][ids]                                                     # (B, T, 16)
    q = (x @ w["layers.0.attention.q.weight"].T + w["layers.0.attention.q.bias"])
    k = (x @ w["layers.0.attention.k.weight"].T + w["layers.0.attention.k.bias"])
    q, k = (a.reshape(2, 7, 4, 4).transpose(0, 2, 1, 3) for a in (q, k))
    s = q @ k.transpose(0, 1, 3, 2) / 2.0 + np.where(np.tri(7, dtype=bool), 0.0, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(maps["attention.0"], p / p.sum(-1, keepdims=True), rtol=1e-4,
                               atol=1e-6)
    # and the spec's own weights= output (the same map through another path)
    named = attndsl.compile(spec, backend=be, seed=1, outputs=["layers.1.probs"])
    np.testing.assert_allclose(named.to_numpy(named(tokens=ids))["layers.1.probs"],
                               maps["attention.1"], rtol=1e-5, atol=1e-7)


def test_rollout_and_entropy_formulas() -> None:
    uniform = np.full((1, 2, 4, 4), 0.25)
    assert np.allclose(entropy({"a": uniform})["a"], math.log(4))
    one_hot = np.broadcast_to(np.eye(4), (1, 2, 4, 4))
    assert np.allclose(entropy({"a": one_hot})["a"], 0.0)
    # rollout of two uniform layers: 0.5 A + 0.5 I, rows normalized, multiplied
    a = 0.5 * np.full((4, 4), 0.25) + 0.5 * np.eye(4)
    np.testing.assert_allclose(rollout({"l0": uniform, "l1": uniform})[0], a @ a)
    np.testing.assert_allclose(rollout({"l0": uniform})[0].sum(-1), 1.0)


def test_cli_inspect_writes_a_png_and_the_entropy_table(spec, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "maps.png"
    assert main(["inspect", str(spec), "--text", "(hello)", "--layer", "attention.1",
                 "--head", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "attention.0" in text and "h3" in text and "wrote" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(spec), "--text", "hi", "--head", "9", "-o", str(out)]) == 2
    assert "has 4 heads" in capsys.readouterr().err
    assert main(["inspect", "specs/transformer.attn", "--text", "x", "-o", str(out)]) == 2
    assert "one token input" in capsys.readouterr().err


def test_memory_keys_and_attention_without_maps(tmp_path, capsys) -> None:
    """Transformer-XL attends over memory + tokens (Tq < Tk): heatmaps crop the unused
    memory, no rollout is claimed; linear attention has no map and says so."""
    pytest.importorskip("matplotlib")
    sets = ["--set", "layers=2", "--set", "d_model=32", "--set", "heads=4"]
    out = tmp_path / "m.png"
    assert main(["inspect", "specs/transformer_xl.attn", "--text", "hello", "-o", str(out),
                 *sets]) == 0
    said = capsys.readouterr().out
    assert out.stat().st_size > 0 and "rollout" not in said.splitlines()[-1]
    assert main(["inspect", "specs/linear_transformer.attn", "--text", "hi", "-o", str(out),
                 *sets]) == 2
    assert "linear_attention: no attention matrix is built" in capsys.readouterr().err
