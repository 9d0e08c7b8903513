"""Training on the NumPy backend: the same loss curve as PyTorch (same weights, data order,
dropout off), every optimizer, accumulation and clipping; seeded dropout and LayerDrop with
exact gradients; checkpoints that resume on the other backend; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from attndsl.backends.numpy_autodiff import value_and_grad_numpy  # noqa: E402
from helpers import REPO_ROOT, spec_paths  # noqa: E402

import attndsl  # noqa: E402
from attndsl.cli import main  # noqa: E402
from attndsl.errors import TrainingError  # noqa: E402
from attndsl.training.data import (  # noqa: E402
    ArrayDataset,
    PairedDataset,
    TextDataset,
    load_pairs,
)
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
    "linear_transformer": dict(TINY, ctx=32, d_ff=64),
    "performer": dict(TINY, ctx=32, d_ff=64, features=16),
    "switch_gpt": dict(TINY, ctx=32, experts=4),
    "moe_gpt": dict(TINY, ctx=32, d_ff=48, experts=4),
    "reformer": dict(TINY, ctx=32, d_ff=64, buckets=4, chunk=4),
    "transformer_xl": dict(TINY, d_ff=64, mem_len=8),
    "compressive": dict(TINY, d_ff=64, mem_len=4, cmem_len=4, rate=2),
    "bert": dict(TINY, vocab=TOK.vocab_size + 1, max_pos=32, d_ff=64, dropout_p=0.0),
}


PAIRS = load_pairs(REPO_ROOT / "tests" / "data" / "reverse.tsv")
PAIRED = PairedDataset(PAIRS, make_tokenizer("char", "\n".join(s + "\n" + t for s, t in PAIRS)))
SMALL = dict(vocab=PAIRED.vocab_size, d_model=32, heads=4, d_ff=64, ctx=32)
PAIRED_SPECS = {
    "transformer": dict(SMALL, enc_layers=2, dec_layers=2, dropout_p=0.0),
    "t5": dict(SMALL, layers=2),
    "bahdanau": dict(SMALL, layers=2),
}


def labelled_frames(path, n: int = 64) -> ArrayDataset:
    """Feature frames [n, 16, 8] whose class is the argmax of their first 6 features, with
    neighbouring frames mixed in (so the convolution has something to use), as an .npz."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 16, 8)).astype(np.float32)
    targets = np.argmax(features[..., :6] + 0.5 * np.roll(features[..., :6], 1, axis=1), -1)
    np.savez(path, features=features, targets=targets)
    return ArrayDataset(path)


def quadrant_images(path, n: int = 64) -> ArrayDataset:
    """Images whose class is the bright quadrant, as an .npz file."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, n)
    image = rng.standard_normal((n, 3, 16, 16)).astype(np.float32) * 0.3
    for i, t in enumerate(targets):
        r, c = divmod(int(t), 2)
        image[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 1.0
    np.savez(path, image=image, targets=targets)
    return ArrayDataset(path)


def make(spec: str, backend: str, steps: int, config: dict, data=None,
         **overrides) -> Trainer:
    model = attndsl.compile(spec, backend=backend, config=config, seed=0)
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=steps, batch=4,
                                seq=16, eval_every=0, seed=1, **overrides)
    mask = TOK.vocab_size if loss_spec(model.graph)["target"] == "masked_lm" else None
    return Trainer(model, data or TextDataset(TEXT, TOK), cfg, mask)


def curve(spec: str, backend: str, steps: int, config: dict, data=None,
          **overrides) -> list[float]:
    result = make(spec, backend, steps, config, data, **overrides).run(progress=False)
    return [row["loss"] for row in result.history]


@pytest.mark.parametrize("spec", spec_paths(), ids=lambda p: p.stem)
def test_numpy_and_torch_losses_agree_for_50_steps(spec, tmp_path) -> None:
    """Every spec in specs/, with the data it trains from: text, pairs or arrays."""
    data = None
    if spec.stem in PAIRED_SPECS:
        config, data = PAIRED_SPECS[spec.stem], PAIRED
    elif spec.stem == "vit":
        config = dict(img=16, patch=4, channels=3, d_model=32, heads=4, layers=2, d_ff=64,
                      classes=4, dropout_p=0.0)
        data = quadrant_images(tmp_path / "images.npz")
    elif spec.stem == "conformer":
        config = dict(n_feats=8, d_model=32, heads=4, layers=2, kernel=5, max_rel=8, classes=6)
        data = labelled_frames(tmp_path / "frames.npz")
    else:
        config = TEXT_SPECS[spec.stem]
    ours, ref = (np.array(curve(str(spec), b, 50, config, data, schedule="constant",
                                lr=1e-3))
                 for b in ("numpy", "torch"))
    assert np.all(np.abs(ours - ref) <= 1e-4 * np.abs(ref)), np.abs(ours - ref).max()
    assert ours[-5:].mean() < ours[:5].mean()


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", lr=0.05, momentum=0.9), dict(optimizer="adam", weight_decay=0.01),
    dict(optimizer="adamw", grad_accum=3, clip=0.05), dict(schedule="noam", warmup=4, noam_scale=0.2),
    dict(schedule="linear", clip=0.0), dict(optimizer="radam", lr=3e-3),
    dict(optimizer="lion", lr=3e-4, weight_decay=0.1, schedule="exponential"),
    dict(optimizer="sophia", lr=3e-4, betas=(0.965, 0.99), hessian_interval=3,
         schedule="cosine_restarts", period=4, mult=2)])
def test_every_optimizer_and_option_matches_torch(options) -> None:
    config = TEXT_SPECS["nanogpt"]
    ours, ref = (np.array(curve("specs/nanogpt.attn", b, 12, config, **options))
                 for b in ("numpy", "torch"))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


@pytest.mark.parametrize("first, second, options", [
    ("numpy", "torch", {}), ("torch", "numpy", {}),
    ("torch", "numpy", dict(optimizer="sophia", lr=3e-4, hessian_interval=2))])
def test_a_checkpoint_resumes_on_the_other_backend(tmp_path, first, second, options) -> None:
    config = TEXT_SPECS["nanogpt"]
    straight = curve("specs/nanogpt.attn", second, 10, config, **options)
    head = make("specs/nanogpt.attn", first, 10, config, **options)
    for _ in range(5):
        head.train_step()
    head.save(tmp_path, {})
    tail = make("specs/nanogpt.attn", second, 10, config, **options)
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


def test_transformer_trains_from_pairs_and_vit_from_arrays_via_the_cli(tmp_path, capsys) -> None:
    """`--data x.tsv` (teacher forcing, padding ignored) and `--data x.npz`; loss falls."""
    small = ["--set", "d_model=32", "--set", "heads=4", "--set", "d_ff=64", "--dropout", "0",
             "--schedule", "constant", "--quiet", "--sample", "0", "--batch", "16"]
    runs = {
        "pairs": ["specs/transformer.attn", "--data", str(REPO_ROOT / "tests" / "data" /
                                                          "reverse.tsv"), "--lr", "3e-3",
                  "--seq", "12", "--set", "enc_layers=2", "--set", "dec_layers=2"],
        "arrays": ["specs/vit.attn", "--data", str(tmp_path / "images.npz"), "--lr", "1e-3",
                   "--set", "img=16", "--set", "patch=4", "--set", "layers=2",
                   "--set", "classes=4"],
    }
    quadrant_images(tmp_path / "images.npz", n=200)
    for name, args in runs.items():
        out = tmp_path / name
        assert main(["train", *args, "--steps", "40", "--eval-every", "40", *small,
                     "--out", str(out)]) == 0
        history = json.loads((out / "state.json").read_text())["history"]
        first, last = history[0]["loss"], np.mean([h["loss"] for h in history[-5:]])
        assert last < first - 0.15, (name, first, last)
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "pairs"), "--prompt", "abc", "--max-new", "6"]) == 0
    assert capsys.readouterr().out.strip()            # decoded with the run's BOS/EOS


@pytest.mark.parametrize("content, message", [
    ("abc\n", "expected source<TAB>target"), ("a\tb\n", "need at least 2"),
])
def test_bad_paired_files_name_the_line(tmp_path, content, message) -> None:
    path = tmp_path / "p.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_pairs(path)


def test_array_files_must_match_the_inputs(tmp_path, capsys) -> None:
    np.savez(tmp_path / "a.npz", pixels=np.zeros((4, 3, 16, 16), np.float32),
             targets=np.zeros(4, np.int64))
    assert main(["train", "specs/vit.attn", "--data", str(tmp_path / "a.npz"), "--steps", "1",
                 "--set", "img=16", "--set", "patch=4", "--out", str(tmp_path / "o")]) == 2
    assert "missing ['image'], unknown ['pixels']" in capsys.readouterr().err
