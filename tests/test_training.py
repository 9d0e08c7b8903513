"""Training on the torch backend: gradients (autograd vs finite differences in float64),
losses, the trainer (exact resume, accumulation, LayerDrop, checkpointing, bf16), KV-cache
decoding and beam search, and the `train`/`generate` CLI."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, random_inputs, tiny_config

import attndsl
from attndsl.cli import main
from attndsl.errors import TrainingError
from attndsl.training.data import TextDataset
from attndsl.training.generate import Decoder, beam_search, filter_logits, greedy_decode
from attndsl.training.losses import cross_entropy_numpy, cross_entropy_torch, loss_spec
from attndsl.training.tokenizers import make_tokenizer
from attndsl.training.trainer import TrainConfig, Trainer, TrainingInterrupted

GPT = dict(vocab=40, ctx=16, d_model=16, heads=2, layers=2, d_ff=32)
TEXT = "to be or not to be, that is the question. " * 40


def targets_for(model: attndsl.Model, inputs: dict, seed: int = 1) -> np.ndarray:
    """Random class targets with the shape of the loss output minus its class axis."""
    spec = loss_spec(model.graph)
    out = model.to_numpy(model(**inputs))[spec["output"]]
    rng = np.random.default_rng(seed)
    return rng.integers(0, out.shape[-1], size=out.shape[:-1])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_formula(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5, 7))
    targets = rng.integers(0, 7, (3, 5))
    targets[0, 0] = -100
    # direct formula: smoothed targets (1 - a) y + a / C against log-softmax
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = targets != -100
    onehot = np.eye(7)[np.where(keep, targets, 0)]
    soft = (1 - smoothing) * onehot + smoothing / 7
    expected = -(soft * logp).sum(-1)[keep].mean()
    assert cross_entropy_numpy(logits, targets, smoothing) == pytest.approx(expected, rel=1e-12)
    got = cross_entropy_torch(torch.tensor(logits), torch.tensor(targets), smoothing)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_gradients_match_finite_differences(spec_path):
    """torch autograd vs central differences in float64 for every parameter tensor of every
    spec (tiny config, eval mode): along a random direction v per tensor,
    (L(θ + εv) − L(θ − εv)) / 2ε must equal ⟨∇L, v⟩."""
    model = attndsl.compile(spec_path, backend="torch", config=tiny_config(spec_path.stem),
                            seed=0, dtype="float64")
    inputs = random_inputs(model.graph, batch=2, seq=6)
    targets = targets_for(model, inputs)
    loss, grads = model.value_and_grad(targets=targets, **inputs)
    assert set(grads) == set(model.state_dict())
    assert np.isfinite(loss)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in model.graph.meta.get("buffers", ()):   # batch_norm running statistics
        assert not grads[name].any()                   # are not trained: no gradient
    for name, p in model.module.named_parameters():
        if not p.requires_grad:
            continue
        v = torch.as_tensor(rng.standard_normal(tuple(p.shape)))
        with torch.no_grad():
            p += eps * v
            up = float(model.loss(targets, **inputs))
            p -= 2 * eps * v
            down = float(model.loss(targets, **inputs))
            p += eps * v
        numeric = (up - down) / (2 * eps)
        analytic = float((torch.as_tensor(grads[name]) * v).sum())
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_numpy_gradients_match_torch():
    """NumPy differentiates (reverse mode) with torch's numbers; Model.loss is torch-only."""
    model = attndsl.compile("specs/gpt.attn", config=GPT, dtype="float64")
    torch_model = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT,
                                  dtype="float64")
    ids = np.random.default_rng(0).integers(0, GPT["vocab"], (2, 6))
    loss, grads = model.value_and_grad(tokens=ids, targets=np.roll(ids, -1, 1))
    ref_loss, ref_grads = torch_model.value_and_grad(tokens=ids, targets=np.roll(ids, -1, 1))
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-7, atol=1e-9)
    with pytest.raises(TrainingError, match="use value_and_grad"):
        model.loss(np.roll(ids, -1, 1), tokens=ids)


def make_trainer(steps: int = 6, **overrides) -> Trainer:
    model = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT, seed=0,
                            **overrides.pop("compile", {}))
    data = TextDataset(TEXT, make_tokenizer("char", TEXT))
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=steps, batch=4, seq=8,
                                eval_every=3, eval_iters=2, warmup=2, **overrides)
    return Trainer(model, data, cfg)


def test_training_reduces_loss():
    trainer = make_trainer(steps=40, lr=3e-3)
    result = trainer.run(progress=False)
    losses = [row["loss"] for row in result.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    assert result.val_loss is not None and np.isfinite(result.val_loss)


def test_resume_gives_the_same_loss_curve(tmp_path):
    full = make_trainer(steps=6)
    full_result = full.run(progress=False)
    first = make_trainer(steps=3)
    first.run(progress=False, checkpoint_dir=tmp_path / "ck")
    second = make_trainer(steps=6)
    second.restore(tmp_path / "ck")
    resumed = second.run(progress=False)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full_result.history]
    for k, v in full.model.state_dict().items():
        np.testing.assert_array_equal(second.model.state_dict()[k], v)


def test_schedule_and_weight_decay_groups():
    trainer = make_trainer(steps=10)
    cfg = trainer.cfg
    assert (cfg.optimizer, cfg.betas, cfg.weight_decay) == ("adamw", (0.9, 0.95), 0.1)
    groups = trainer.engine.optimizer.param_groups
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    lrs = []
    for _ in range(10):
        trainer.train_step()
        lrs.append(trainer.engine.optimizer.param_groups[0]["lr"])
    assert lrs[0] < lrs[1] and lrs[-1] < max(lrs)   # warm-up, then decay


@pytest.mark.parametrize("option", ["grad_accum", "amp", "checkpointing", "layerdrop"])
def test_training_options_run(option):
    overrides: dict = {"grad_accum": 2} if option == "grad_accum" else {}
    if option == "amp":
        overrides = {"amp": True}
    if option == "checkpointing":
        overrides = {"compile": {"checkpointing": True}}
    if option == "layerdrop":
        overrides = {"compile": {"layerdrop": 0.5}}
    result = make_trainer(steps=3, **overrides).run(progress=False)
    assert all(np.isfinite(r["loss"]) for r in result.history)


def test_checkpointing_gives_identical_gradients():
    ids = np.random.default_rng(0).integers(0, 40, (2, 8))
    plain = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT, dtype="float64")
    ckpt = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT, dtype="float64",
                           checkpointing=True)
    for m in (plain, ckpt):
        m.module.train()
    la, ga = plain.value_and_grad(tokens=ids, targets=np.roll(ids, -1, 1))
    lb, gb = ckpt.value_and_grad(tokens=ids, targets=np.roll(ids, -1, 1))
    assert la == lb
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


def test_layerdrop_is_identity_at_inference_and_skips_layers_in_training():
    ids = np.random.default_rng(0).integers(0, 40, (1, 8))
    base = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT)
    drop = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT, layerdrop=0.999)
    assert sum(n.op == "layer_drop" for n in drop.graph.nodes.values()) == GPT["layers"]
    with torch.no_grad():
        a = base.to_numpy(base(tokens=ids))["logits"]
        b = drop.to_numpy(drop(tokens=ids))["logits"]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        zero = attndsl.compile("specs/gpt.attn", backend="torch", config={**GPT, "layers": 0})
        zero.load_state_dict({k: v for k, v in drop.state_dict().items()
                              if not k.startswith("layers.")})
        drop.module.train()
        np.testing.assert_allclose(drop.to_numpy(drop(tokens=ids))["logits"],
                                   zero.to_numpy(zero(tokens=ids))["logits"], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_kv_cache_matches_full_forward(name):
    model = attndsl.compile("specs/gpt.attn", backend=name, config=GPT, seed=3)
    ids = np.random.default_rng(0).integers(0, 40, (1, 10))
    with torch.no_grad():
        full = model.to_numpy(model(tokens=ids))["logits"][0]         # (T, V)
    dec = Decoder(model)
    steps = [dec.step(ids[:, :4])]
    steps += [dec.step(ids[:, t:t + 1]) for t in range(4, 10)]
    np.testing.assert_allclose(np.stack(steps), full[3:], rtol=1e-4, atol=1e-5)


def test_filter_logits_top_k_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.count_nonzero(filter_logits(logits, 1.0, 2, None)) == 2
    probs = filter_logits(logits, 1.0, None, 0.75)
    assert np.count_nonzero(probs) == 2 and probs.sum() == pytest.approx(1.0)
    assert filter_logits(logits, 1e-6, None, None).argmax() == 0


def test_seq2seq_greedy_and_beam_search():
    cfg = tiny_config("transformer")
    model = attndsl.compile("specs/transformer.attn", config=cfg, seed=0)
    src = np.random.default_rng(0).integers(3, cfg["vocab"], (1, 7))
    greedy = greedy_decode(model, src, bos=1, eos=2, max_len=6)
    beam1 = beam_search(model, src, bos=1, eos=2, max_len=6, beam=1, length_penalty=0.0)
    assert greedy[0] == 1 and greedy == beam1
    beam4 = beam_search(model, src, bos=1, eos=2, max_len=6, beam=4)
    assert beam4[0] == 1 and 2 <= len(beam4) <= 7


def test_cli_train_resume_and_generate(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    sets = [x for k, v in GPT.items() if k != "vocab" for x in ("--set", f"{k}={v}")]
    args = ["train", "specs/gpt.attn", "--data", str(data), "--steps", "4", "--batch", "2",
            "--seq", "8", "--eval-every", "2", "--eval-iters", "1", "--out", str(out),
            "--sample", "20", "--quiet", *sets]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "step 4: train loss" in text and "--- sample ---" in text
    assert main([*args[:5], "6", *args[6:], "--resume", str(out)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "to be", "--max-new", "10",
                 "--top-k", "5"]) == 0
    assert capsys.readouterr().out.startswith("to be")


def test_resume_keeps_the_runs_batch_seq_and_data(tmp_path, capsys):
    """--resume used to train on with the default batch size and silently ignore --data."""
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    sets = [x for k, v in GPT.items() if k != "vocab" for x in ("--set", f"{k}={v}")]
    common = ["--eval-every", "0", "--sample", "0", "--quiet", "--out", str(out), *sets]
    assert main(["train", "specs/gpt.attn", "--data", str(data), "--steps", "2", "--batch",
                 "3", "--seq", "6", *common]) == 0
    assert main(["train", "specs/gpt.attn", "--resume", str(out), "--steps", "3", *common]) == 0
    config = json.loads((out / "state.json").read_text())["config"]
    assert (config["batch"], config["seq"], config["steps"]) == (3, 6, 3)
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1])
    capsys.readouterr()
    assert main(["train", "specs/gpt.attn", "--resume", str(out), "--data", str(other),
                 "--steps", "4", *common]) == 2
    assert "is not the data" in capsys.readouterr().err


def test_cli_generate_from_a_spec(capsys):
    byte_gpt = [x for k, v in {**GPT, "vocab": 256}.items() for x in ("--set", f"{k}={v}")]
    assert main(["generate", "specs/gpt.attn", "--prompt", "ab", "--max-new", "5",
                 "--temperature", "0", *byte_gpt]) == 0
    assert capsys.readouterr().out.startswith("ab")          # byte tokenizer, decoded
    big_gpt = [x for k, v in {**GPT, "vocab": 300}.items() for x in ("--set", f"{k}={v}")]
    assert main(["generate", "specs/gpt.attn", "--prompt", "ab", "--max-new", "5",
                 "--temperature", "0", *big_gpt]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "token" and len(out) == 2 + 7 and out[2:4] == ["97", "98"]
    cfg = tiny_config("transformer")
    sets = [x for k, v in {**cfg, "vocab": 256}.items() for x in ("--set", f"{k}={v}")]
    for beam in ("1", "3"):
        assert main(["generate", "specs/transformer.attn", "--prompt", "hi", "--max-new", "4",
                     "--beam", beam, "--backend", "numpy", *sets]) == 0
    capsys.readouterr()
    assert main(["generate", "specs/bert.attn", "--prompt", "hi"]) == 2
    assert "decoder-only spec" in capsys.readouterr().err


def test_python_train_entry_point():
    model = attndsl.compile("specs/gpt.attn", backend="torch", config={**GPT, "vocab": 64})
    result = attndsl.train(model, TEXT, steps=3, batch=2, seq=8, warmup=1)
    assert result.step == 3 and len(result.history) == 3 and np.isfinite(result.train_loss)


def test_import_does_not_load_torch_or_cupy():
    import subprocess
    import sys
    code = ("import sys, attndsl; attndsl.compile('specs/gpt.attn', config={'layers': 1}); "
            "assert 'torch' not in sys.modules and 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_a_step_boundary_and_resumes_exactly(tmp_path, monkeypatch, signum):
    """Ctrl-C / SIGTERM in the middle of step 5 lets that step finish, saves step 5 and
    raises TrainingInterrupted; resuming reproduces the uninterrupted loss curve (the data
    RNG in the checkpoint has drawn exactly 5 steps' batches)."""
    full = [row["loss"] for row in make_trainer(steps=8).run(progress=False).history]
    trainer = make_trainer(steps=8)
    real_step = trainer.train_step

    def step_with_signal():
        if trainer.step == 4:
            os.kill(os.getpid(), signum)          # arrives while this step runs
        return real_step()

    monkeypatch.setattr(trainer, "train_step", step_with_signal)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run(progress=False, checkpoint_dir=tmp_path / "ck")
    assert info.value.signum == signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    resumed = make_trainer(steps=8)
    resumed.restore(tmp_path / "ck")
    assert resumed.step == 5 and len(resumed.history) == 5
    rest = [row["loss"] for row in resumed.run(progress=False).history]
    np.testing.assert_allclose(rest, full, rtol=1e-6)


def test_a_second_signal_aborts_without_saving(tmp_path, monkeypatch):
    trainer = make_trainer(steps=8)
    trainer.run(progress=False, checkpoint_dir=tmp_path / "ck")      # a finished run: step 8
    again = make_trainer(steps=12)
    again.restore(tmp_path / "ck")
    real_step = again.train_step

    def step_with_two_signals():
        if again.step == 9:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step()

    monkeypatch.setattr(again, "train_step", step_with_two_signals)
    with pytest.raises(KeyboardInterrupt):
        again.run(progress=False, checkpoint_dir=tmp_path / "ck")
    check = make_trainer(steps=12)
    check.restore(tmp_path / "ck")
    assert check.step == 8                         # the previous checkpoint, untouched


def test_a_non_finite_loss_stops_training_before_the_update():
    trainer = make_trainer(steps=30, lr=1e30, clip=0.0)
    with pytest.raises(TrainingError, match="the loss is (nan|inf)") as info:
        trainer.run(progress=False)
    assert "lower the learning rate" in info.value.hint
    params = [p for p in trainer.engine.module.parameters()]
    assert all(bool(p.isfinite().all()) for p in params)


def test_generate_from_a_damaged_checkpoint_names_the_file(tmp_path, capsys):
    """A truncated model.safetensors, a null tokenizer, or a spec_text that looks like a path:
    clear errors (the last used to make generate read that file and print its first line)."""
    ck = tmp_path / "ck"
    trainer = make_trainer(steps=1)
    trainer.run(progress=False, checkpoint_dir=ck,
                extra_state={"spec_text": (REPO_ROOT / "specs" / "gpt.attn").read_text(),
                             "spec_config": GPT})
    good = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(good[:len(good) // 2])
    assert main(["generate", str(ck), "--max-new", "2"]) == 2
    assert "model.safetensors' is not a readable safetensors file" in capsys.readouterr().err
    (ck / "model.safetensors").write_bytes(good)
    state = json.loads((ck / "state.json").read_text())
    secret = tmp_path / "secret.attn"
    secret.write_text("TOP SECRET first line\n")
    (ck / "state.json").write_text(json.dumps(dict(state, spec_text=str(secret))))
    assert main(["generate", str(ck), "--max-new", "2"]) == 2
    assert "TOP SECRET" not in capsys.readouterr().err
    (ck / "state.json").write_text(json.dumps(dict(state, tokenizer=None)))
    assert main(["generate", str(ck), "--max-new", "2"]) == 2
    assert "'tokenizer' should be dict" in capsys.readouterr().err


def test_checkpointing_some_layers_trains_the_same():
    """checkpointing=k (here via Model.set_checkpointing) recomputes the first k repeat
    iterations in backward; the losses are those of the plain model."""
    full = make_trainer(steps=3)
    part = make_trainer(steps=3)
    part.model.set_checkpointing(1)
    source = attndsl.backends.torch_backend.emit_module(part.model.graph, 1)
    assert source.count("= checkpoint(") == 1
    part = Trainer(part.model, part.data, part.cfg)
    a = [r["loss"] for r in full.run(progress=False).history]
    b = [r["loss"] for r in part.run(progress=False).history]
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_evaluation_after_fused_adamw_steps_uses_the_new_weights():
    """Fused AdamW updates parameters in place without moving their version counters; the
    values folded from them (the one-GEMM Q/K/V weight) must still expire."""
    model = attndsl.compile("specs/gpt.attn", backend="torch", config=GPT, seed=0)
    ids = np.random.default_rng(0).integers(0, GPT["vocab"], (2, 6))
    with torch.no_grad():
        model(tokens=ids)                                  # fills the folded-value cache
    opt = torch.optim.AdamW(model.module.parameters(), lr=0.1, fused=True)
    model.module.train()
    model.loss(np.roll(ids, -1, 1), tokens=ids).backward()
    opt.step()
    model.module.eval()
    with torch.no_grad():
        got = model.to_numpy(model(tokens=ids))["logits"]
    ref = attndsl.compile("specs/gpt.attn", config=GPT)
    ref.load_state_dict(model.state_dict())
    np.testing.assert_allclose(got, ref(tokens=ids)["logits"], rtol=1e-4, atol=1e-5)
