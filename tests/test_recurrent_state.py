"""Recurrent state (`state` / `next`): the language rules, memory threaded through calls by
the Model API, the trainer (consecutive segments, exact resume) and generation, on
Transformer-XL."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SPECS_DIR

import attndsl
from attndsl.cli import main
from attndsl.errors import AttnError
from attndsl.training.data import TextDataset
from attndsl.training.generate import Decoder
from attndsl.training.tokenizers import make_tokenizer
from attndsl.training.trainer import TrainConfig, Trainer

XL = SPECS_DIR / "transformer_xl.attn"
CFG = dict(vocab=50, d_model=32, heads=4, layers=2, d_ff=64, mem_len=8)
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_decoding_token_by_token_equals_one_call(be) -> None:
    """Within mem_len, the memory makes step-wise decoding exactly the full forward; past
    it, the oldest positions fall out of memory (Transformer-XL's evaluation)."""
    model = attndsl.compile(XL, backend=be, config=CFG, seed=0, dtype="float64")
    ids = np.random.default_rng(0).integers(0, 50, (1, 8))
    full = model.to_numpy(model(tokens=ids))["logits"][0]
    dec = Decoder(model)
    steps = [dec.step(ids[:, :3])] + [dec.step(ids[:, t:t + 1]) for t in range(3, 8)]
    for t, logits in enumerate(steps, start=2):
        np.testing.assert_allclose(logits, full[t], rtol=1e-10, atol=1e-12)
    assert set(dec.memory) == set(model.graph.meta["states"])


def test_memory_carries_context_between_calls() -> None:
    model = attndsl.compile(XL, config=CFG, seed=0)
    states = model.graph.meta["states"]
    a, b = np.random.default_rng(1).integers(0, 50, (2, 1, 4))
    first = model(tokens=a)
    with_memory = model(tokens=b, **{n: first[n] for n in states})["logits"]
    without = model(tokens=b)["logits"]
    both = model(tokens=np.concatenate([a, b], 1))["logits"][:, 4:]
    np.testing.assert_allclose(with_memory, both, rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_memory, without, atol=1e-3)


@pytest.mark.parametrize("body, message", [
    ("state m: float[B, 4]\n output y = x", "has no `next m"),
    ("next m = x\n output y = x", "without `state m`"),
    ("state m: float[B, 4]\n next m = x[:, :3]\n output y = x", r"next m is float\[B, 3\]"),
    ("state m: int[B, 4]\n next m = x\n output y = x", "state is float"),
    ("state m: float[B, S]\n next m = x\n output y = x", "uses S, which no input declares"),
])
def test_state_rules(body, message) -> None:
    with pytest.raises(AttnError, match=message):
        attndsl.build("model m {\n input x: float[B, 4]\n " + body + "\n}\n")


def _trainer(backend: str, steps: int) -> Trainer:
    tok = make_tokenizer("char", TEXT)
    model = attndsl.compile(XL, backend=backend, config={**CFG, "vocab": tok.vocab_size},
                            seed=0)
    cfg = TrainConfig.from_spec(model.graph.meta["train"], steps=steps, batch=2, seq=8,
                                eval_every=0, eval_iters=3, schedule="constant", lr=3e-3)
    return Trainer(model, TextDataset(TEXT, tok), cfg)


def test_training_feeds_consecutive_segments_and_resumes_exactly(tmp_path) -> None:
    data = TextDataset(TEXT, make_tokenizer("char", TEXT))
    x0, y0, fresh0 = data.segment("train", 2, 8, 0)
    x1, _, fresh1 = data.segment("train", 2, 8, 1)
    assert fresh0 and not fresh1
    np.testing.assert_array_equal(x1[:, 0], y0[:, -1])           # the stream continues
    straight = [h["loss"] for h in _trainer("numpy", 6).run(progress=False).history]
    head = _trainer("numpy", 6)
    for _ in range(3):
        head.train_step()
    assert head.memory and head.segment_index == 3
    head.save(tmp_path, {})
    tail = _trainer("torch", 6)                                    # and across backends
    tail.restore(tmp_path)
    assert set(tail.memory) == set(head.memory)
    losses = [h["loss"] for h in tail.run(progress=False).history]
    np.testing.assert_allclose(losses[-3:], straight[-3:], rtol=1e-4)
    assert np.isfinite(head.estimate_loss("val"))


def test_cli_trains_and_generates_with_memory(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    sets = sum((["--set", f"{k}={v}"] for k, v in CFG.items() if k != "vocab"), [])
    assert main(["train", str(XL), "--steps", "3", "--batch", "2", "--seq", "8", "--out",
                 str(run), "--quiet", "--eval-every", "0", *sets]) == 0
    assert main(["generate", str(run), "--prompt", "the ", "--max-new", "20",
                 "--backend", "numpy"]) == 0
    assert "recomputing" not in capsys.readouterr().err


@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_compressive_memory_generates_as_segments_evaluate(be) -> None:
    """Generation gathers tokens into the spec's training segments (`seq`): a full segment
    moves the memory (and compresses what it evicts), a partial one is only read. Its
    logits equal evaluating the same text segment by segment, memory carried."""
    cfg = dict(vocab=50, d_model=32, heads=4, layers=2, d_ff=64, mem_len=4, cmem_len=4, rate=2)
    model = attndsl.compile(SPECS_DIR / "compressive.attn", backend=be, config=cfg, seed=0,
                            dtype="float64")
    model.graph.meta["train"]["seq"] = 4
    states = model.graph.meta["states"]
    ids = np.random.default_rng(0).integers(0, 50, (1, 16))
    memory, want = {}, []
    for k in range(4):
        out = model.to_numpy(model(tokens=ids[:, 4 * k:4 * k + 4], **memory))
        memory = {n: out[n] for n in states}
        want.append(out["logits"][0])
    want = np.concatenate(want)
    dec = Decoder(model)
    got = [dec.step(ids[:, t:t + 1]) for t in range(16)]
    np.testing.assert_allclose(np.array(got), want, rtol=1e-10, atol=1e-12)
    assert memory["layers.0.cseen"].sum() > 0                 # the compressed memory filled


def test_a_segment_that_is_not_a_multiple_of_the_rate_is_a_clear_error() -> None:
    from attndsl.errors import RuntimeInputError
    cfg = dict(vocab=50, d_model=32, heads=4, layers=1, d_ff=64, mem_len=4, cmem_len=4, rate=2)
    model = attndsl.compile(SPECS_DIR / "compressive.attn", config=cfg)
    with pytest.raises(RuntimeInputError, match=r"T = 5 the size T/2 is 2.5, not a whole"):
        model(tokens=np.zeros((1, 5), int))


def test_state_needs_a_text_stream(tmp_path, capsys) -> None:
    sets = sum((["--set", f"{k}={v}"] for k, v in CFG.items() if k != "vocab"), [])
    assert main(["train", str(XL), "--data", "tests/data/reverse.tsv", "--steps", "1",
                 "--out", str(tmp_path / "r"), *sets]) == 2
    assert "a spec with `state` trains on a text stream" in capsys.readouterr().err
