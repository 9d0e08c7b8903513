"""Training on the NumPy backend: the same loss curve as PyTorch (same weights, data order,
dropout off), every optimizer, accumulation and clipping; seeded dropout and LayerDrop with
exact gradients; checkpoints that resume on the other backend; the CLI."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from attndsl.backends.numpy_autodiff import value_and_grad_numpy  # noqa: E402
from helpers import spec_paths  # noqa: E402

import attndsl  # noqa: E402
from attndsl.cli import main  # noqa: E402
from attndsl.errors import TrainingError  # noqa: E402
from attndsl.training.data import TextDataset  # noqa: E402
from attndsl.training.losses import loss_spec  # noqa: E402
from attndsl.training.tokenizers import make_tokenizer  # noqa: E402
from attndsl.training.trainer import TrainConfig, Trainer  # noqa: E402

TEXT = open(attndsl.training.trainer.BUNDLED_TEXT, encoding="utf-8").read()[:20000]
TOK = make_tokenizer("char", TEXT)
TINY = dict(vocab=TOK.vocab_size, d_model=32, heads=4, layers=2)
# specs `attndsl train` feeds from a text stream, with their tiny sizes and dropout off
TEXT_SPECS = {
    "nanogpt": dict(TINY, ctx=32),
    "gpt": dict(TINY, ctx=32, d_ff=64),
    "llama": dict(TINY, ctx=32, kv_heads=2, d_ff=48),
    "alibi_gpt": dict(TINY, ctx=32, d_ff=64),
    "bert": dict(TINY, vocab=TOK.vocab_size + 1, max_pos=32, d_ff=64, dropout_p=0.0),
}


def make(spec: str, backend: str, steps: int, config: dict, **overrides) -> Trainer:
    model = attndsl.compile(spec, backend=backend, config=config, seed=0)
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=steps, batch=4,
                                seq=16, eval_every=0, seed=1, **overrides)
    mask = TOK.vocab_size if loss_spec(model.graph)["target"] == "masked_lm" else None
    return Trainer(model, TextDataset(TEXT, TOK), cfg, mask)


def curve(spec: str, backend: str, steps: int, config: dict, **overrides) -> list[float]:
    result = make(spec, backend, steps, config, **overrides).run(progress=False)
    return [row["loss"] for row in result.history]


@pytest.mark.parametrize("spec", spec_paths(), ids=lambda p: p.stem)
def test_numpy_and_torch_losses_agree_for_50_steps(spec) -> None:
    if spec.stem not in TEXT_SPECS:
        pytest.skip(f"{spec.stem} needs paired or array data, which `attndsl train` does not "
                    "read yet")
    config = TEXT_SPECS[spec.stem]
    ours, ref = (np.array(curve(str(spec), b, 50, config)) for b in ("numpy", "torch"))
    assert np.all(np.abs(ours - ref) <= 1e-4 * np.abs(ref)), np.abs(ours - ref).max()
    assert ours[-5:].mean() < ours[:5].mean()


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", lr=0.05, momentum=0.9), dict(optimizer="adam", weight_decay=0.01),
    dict(optimizer="adamw", grad_accum=3, clip=0.05), dict(schedule="noam", warmup=4, noam_scale=0.2),
    dict(schedule="linear", clip=0.0)])
def test_every_optimizer_and_option_matches_torch(options) -> None:
    config = TEXT_SPECS["nanogpt"]
    ours, ref = (np.array(curve("specs/nanogpt.attn", b, 12, config, **options))
                 for b in ("numpy", "torch"))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


@pytest.mark.parametrize("first, second", [("numpy", "torch"), ("torch", "numpy")])
def test_a_checkpoint_resumes_on_the_other_backend(tmp_path, first, second) -> None:
    config = TEXT_SPECS["nanogpt"]
    straight = curve("specs/nanogpt.attn", second, 10, config)
    head = make("specs/nanogpt.attn", first, 10, config)
    for _ in range(5):
        head.train_step()
    head.save(tmp_path, {})
    tail = make("specs/nanogpt.attn", second, 10, config)
    tail.restore(tmp_path)
    assert tail.step == 5
    losses = [row["loss"] for row in tail.run(progress=False).history]
    np.testing.assert_allclose(losses[-5:], straight[-5:], rtol=1e-4)


def _dropout_spec(tmp_path, layerdrop: bool = False) -> attndsl.Model:
    path = tmp_path / "d.attn"
    path.write_text("model {\n    input x: int[B, T]\n    h = embedding(x, 11, 8)\n"
                    "    repeat 2 as layers {\n        h = h + dropout(linear(h, 8), 0.4)\n"
                    "    }\n    output logits = linear(h, 11)\n}\n"
                    + ("train {\n    layerdrop = 0.5\n}\n" if layerdrop else ""))
    return attndsl.compile(path, dtype="float64", seed=2)


@pytest.mark.parametrize("layerdrop", [False, True])
def test_numpy_dropout_is_seeded_and_its_gradient_exact(tmp_path, layerdrop) -> None:
    model = _dropout_spec(tmp_path, layerdrop)
    graph, params = model.graph, model.state_dict()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, (2, 5))
    y = rng.integers(0, 11, (2, 5))
    spec = loss_spec(graph)

    def run(p, seed):
        return value_and_grad_numpy(graph, p, {"x": x}, y, spec, "float64",
                                    rng=np.random.default_rng(seed))

    loss, grads = run(params, 7)
    assert run(params, 7)[0] == loss                         # the same stream, the same masks
    assert run(params, 8)[0] != loss                         # another stream, other masks
    eval_loss = value_and_grad_numpy(graph, params, {"x": x}, y, spec, "float64")[0]
    assert eval_loss != loss
    name = "layers.0.linear.weight"
    eps, (i, j) = 1e-6, (3, 4)
    plus, minus = dict(params), dict(params)
    plus[name] = params[name].copy()
    minus[name] = params[name].copy()
    plus[name][i, j] += eps
    minus[name][i, j] -= eps
    numeric = (run(plus, 7)[0] - run(minus, 7)[0]) / (2 * eps)
    assert grads[name][i, j] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_attention_dropout_is_refused_before_numpy_training() -> None:
    model = attndsl.compile("specs/bert.attn", config=dict(TEXT_SPECS["bert"], dropout_p=0.1))
    with pytest.raises(TrainingError, match="attention dropout"):
        Trainer(model, TextDataset(TEXT, TOK), TrainConfig(steps=1), TOK.vocab_size)


def test_cli_trains_on_numpy_and_loss_falls(tmp_path, capsys) -> None:
    sets = sum((["--set", f"{k}={v}"] for k, v in TEXT_SPECS["nanogpt"].items()
                if k != "vocab"), [])
    assert main(["train", "specs/nanogpt.attn", "--backend", "numpy", "--steps", "30",
                 "--batch", "4", "--seq", "16", "--eval-every", "15", "--quiet",
                 "--out", str(tmp_path / "run"), *sets]) == 0
    out = capsys.readouterr().out
    assert "step 30: train loss" in out
    state = (tmp_path / "run" / "state.json").read_text()
    assert '"backend": "numpy"' in state
    assert main(["generate", str(tmp_path / "run"), "--prompt", "ROMEO:", "--max-new", "5",
                 "--backend", "numpy"]) == 0
