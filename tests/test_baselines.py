"""Tests for the hand-written reference baselines in benchmarks/baselines.py."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from baselines import (  # noqa: E402
    GPTConfig,
    TorchGPT,
    numpy_gpt_forward,
    params_from_torch,
    train_handwritten,
)

TINY = GPTConfig(vocab=50, ctx=16, d_model=32, heads=4, layers=2, d_ff=128)


@pytest.fixture
def model() -> TorchGPT:
    torch.manual_seed(0)
    return TorchGPT(TINY).eval()


def test_forward_shapes(model: TorchGPT) -> None:
    idx = torch.randint(TINY.vocab, (3, 10))
    with torch.no_grad():
        logits, loss = model(idx)
        hidden, _ = model(idx, head=False)
        _, loss = model(idx, targets=idx)
    assert logits.shape == (3, 10, TINY.vocab)
    assert hidden.shape == (3, 10, TINY.d_model)
    assert loss.ndim == 0 and math.isfinite(loss.item())


def test_causal(model: TorchGPT) -> None:
    idx = torch.randint(TINY.vocab, (2, TINY.ctx))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % TINY.vocab
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("head", [True, False])
def test_numpy_matches_torch(model: TorchGPT, head: bool) -> None:
    idx = torch.randint(TINY.vocab, (2, TINY.ctx))
    with torch.no_grad():
        ref, _ = model(idx, head=head)
    out = numpy_gpt_forward(params_from_torch(model), idx.numpy(), TINY, head=head)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-4)


def test_train_handwritten_learns() -> None:
    text = "To be, or not to be, that is the question.\n" * 200
    result = train_handwritten(
        text,
        steps=30,
        layers=1,
        heads=2,
        d_model=32,
        block=16,
        batch=8,
        warmup=5,
        eval_interval=10,
        eval_iters=5,
    )
    history = result["history"]
    assert [step for step, _, _ in history] == [0, 10, 20, 30]
    assert all(math.isfinite(v) for _, tr, va in history for v in (tr, va))
    train_losses = [tr for _, tr, _ in history]
    assert train_losses == sorted(train_losses, reverse=True)
    assert result["train_loss"] < train_losses[0] - 0.3
    assert (result["train_loss"], result["val_loss"]) == history[-1][1:]
    assert result["sec_per_iter"] > 0
