"""The attention-variant specs (LLaMA, ALiBi GPT, T5, Bahdanau): each trains for 30 steps
with falling loss on the torch backend, and their parameters follow the papers' layouts
(grouped K/V projections, one shared T5 table per stack, no ALiBi parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SPECS_DIR, tiny_config

import attndsl
from attndsl.training.data import TextDataset
from attndsl.training.tokenizers import make_tokenizer
from attndsl.training.trainer import TrainConfig, Trainer

TEXT = "to be or not to be, that is the question. " * 40


@pytest.mark.parametrize("stem", ["llama", "alibi_gpt", "linear_transformer", "performer",
                                  "switch_gpt", "moe_gpt", "reformer", "transformer_xl",
                                  "compressive"])
def test_decoder_specs_train_with_falling_loss(stem):
    cfg = {**tiny_config(stem), "vocab": 40}
    model = attndsl.compile(SPECS_DIR / f"{stem}.attn", backend="torch", config=cfg, seed=0)
    data = TextDataset(TEXT, make_tokenizer("char", TEXT))
    train = TrainConfig.from_spec(model.graph.meta["train"], steps=30, batch=8, seq=16,
                                  eval_every=30, eval_iters=1, warmup=2, lr=3e-3)
    losses = [h["loss"] for h in Trainer(model, data, train).run(progress=False).history]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("stem", ["t5", "bahdanau"])
def test_encoder_decoder_specs_learn_to_copy(stem):
    """Teacher-forced copying of one fixed batch: 30 AdamW steps cut the loss well down."""
    torch.manual_seed(0)
    cfg = tiny_config(stem)
    model = attndsl.compile(SPECS_DIR / f"{stem}.attn", backend="torch", config=cfg, seed=0)
    model.module.train()
    opt = torch.optim.AdamW(model.module.parameters(), lr=1e-2)
    src = np.random.default_rng(0).integers(3, cfg["vocab"], (8, 10))
    losses = []
    for _ in range(30):
        tgt_in = np.concatenate([np.ones((8, 1), dtype=np.int64), src[:, :-1]], axis=1)
        loss = model.loss(src, src=src, tgt=tgt_in)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_variant_parameter_layouts():
    llama = attndsl.build(SPECS_DIR / "llama.attn", config=tiny_config("llama"))
    shapes = {n: tuple(int(d.as_int()) for d in t.shape) for n, t in llama.param_types().items()}
    assert shapes["layers.0.attn.q.weight"] == (32, 32)
    assert shapes["layers.0.attn.k.weight"] == shapes["layers.0.attn.v.weight"] == (16, 32)
    assert not any(n.endswith(".bias") for n in shapes)                # no biases anywhere
    t5 = attndsl.build(SPECS_DIR / "t5.attn", config=tiny_config("t5"))
    tables = [n for n in t5.params if "bias" in n and n.endswith("weight")]
    assert tables == ["enc_bias.weight", "dec_bias.weight"]           # one per stack
    assert tuple(int(d.as_int()) for d in t5.param_types()["enc_bias.weight"].shape) == (32, 4)
    alibi = attndsl.build(SPECS_DIR / "alibi_gpt.attn", config=tiny_config("alibi_gpt"))
    gpt = attndsl.build(SPECS_DIR / "gpt.attn", config=tiny_config("gpt"))
    assert len(alibi.params) == len(gpt.params) - 1                   # no position table


def test_conformer_learns_frame_classes_from_arrays(tmp_path):
    """30 steps on labelled feature frames (.npz): the loss falls on both backends alike."""
    from test_training_numpy import labelled_frames
    data = labelled_frames(tmp_path / "frames.npz")
    curves = []
    for backend in ("numpy", "torch"):
        model = attndsl.compile(SPECS_DIR / "conformer.attn", backend=backend,
                                config=tiny_config("conformer"), seed=0)
        train = TrainConfig.from_spec(model.graph.meta["train"], steps=30, batch=8, seq=16,
                                      eval_every=0, warmup=2, lr=3e-3)
        curves.append([h["loss"] for h in Trainer(model, data, train).run(progress=False).history])
    for losses in curves:
        assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-3)
