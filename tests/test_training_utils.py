"""Tests for attndsl.training utilities: tokenizers, data, schedules, optim, checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attndsl.training.checkpoint import (
    atomic_save_safetensors,
    atomic_write_bytes,
    load_checkpoint,
    numpy_rng_from_state,
    numpy_rng_state,
    save_checkpoint,
    set_torch_rng_state,
    torch_rng_state,
)
from attndsl.training.data import TextDataset, load_text, masked_lm_batch
from attndsl.training.optim import (
    load_optimizer_state,
    make_optimizer,
    optimizer_param_names,
    optimizer_state_tensors,
    param_groups,
)
from attndsl.training.schedules import (
    Constant,
    Noam,
    WarmupCosine,
    WarmupLinear,
    make_schedule,
)
from attndsl.training.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    make_tokenizer,
    tokenizer_from_json,
)

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 20
UNICODE = "héllo wörld — naïve café 🙂\n\ttabs  and  spaces\n"


# ----------------------------------------------------------------------------- tokenizers


def _json_round_trip(tok):
    return tokenizer_from_json(json.loads(json.dumps(tok.to_json())))


def test_char_tokenizer_round_trip_and_vocab():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    assert list(tok.chars) == sorted(set(TEXT))
    ids = tok.encode(TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    tok2 = _json_round_trip(tok)
    assert isinstance(tok2, CharTokenizer)
    assert tok2.encode(TEXT) == ids


def test_char_tokenizer_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([3])


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(UNICODE)
    assert tok.vocab_size == 256
    assert ids == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    assert tok.decode([0xFF, ord("a")]) == "\ufffda"
    assert isinstance(_json_round_trip(tok), ByteTokenizer)


def test_bpe_tokenizer_round_trip():
    tok = BPETokenizer.train_from_text(TEXT + UNICODE, vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    for s in (TEXT, UNICODE, "unseen words: zebra xylophone 日本語"):
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s
    assert len(tok.encode(TEXT)) < len(TEXT.encode("utf-8"))  # merges were learned
    d = json.loads(json.dumps(tok.to_json()))
    assert d["kind"] == "bpe"
    tok2 = tokenizer_from_json(d)
    assert tok2.vocab_size == tok.vocab_size
    assert tok2.encode(TEXT) == tok.encode(TEXT)


def test_make_tokenizer():
    assert isinstance(make_tokenizer("char", TEXT), CharTokenizer)
    assert isinstance(make_tokenizer("byte", TEXT), ByteTokenizer)
    assert make_tokenizer("bpe", TEXT, vocab_size=280).vocab_size <= 280
    with pytest.raises(ValueError, match="unknown tokenizer kind 'word'"):
        make_tokenizer("word", TEXT)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_json({"kind": "word"})


# ----------------------------------------------------------------------------- data

# Byte i of this text is the token i, so a window's token values are its offsets.
RAMP = "".join(chr(i) for i in range(128))


def test_dataset_split_nanogpt_style():
    ds = TextDataset(RAMP, ByteTokenizer())
    assert ds.tokens.dtype == np.int64
    n = int(128 * 0.9)
    np.testing.assert_array_equal(ds.train, np.arange(n))
    np.testing.assert_array_equal(ds.val, np.arange(n, 128))


def test_get_batch_shapes_shift_and_offsets():
    ds = TextDataset(RAMP, ByteTokenizer())
    seq = 10
    x, y = ds.get_batch("train", 4000, seq, np.random.default_rng(0))
    assert x.shape == y.shape == (4000, seq)
    assert x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(seq))  # contiguous windows
    # nanoGPT: offsets uniform in [0, len(data) - seq)
    assert x[:, 0].min() == 0 and x[:, 0].max() == len(ds.train) - seq - 1
    xv, yv = ds.get_batch("val", 8, 4, np.random.default_rng(0))
    assert xv.min() >= len(ds.train) and yv.max() < 128


def test_get_batch_deterministic_and_errors():
    ds = TextDataset(TEXT, CharTokenizer.from_text(TEXT))
    a = ds.get_batch("train", 3, 16, np.random.default_rng(42))
    b = ds.get_batch("train", 3, 16, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="val split has"):
        ds.get_batch("val", 1, len(ds.val), np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown split"):
        ds.get_batch("test", 1, 4, np.random.default_rng(0))


def test_load_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(UNICODE, encoding="utf-8")
    assert load_text(p) == UNICODE
    with pytest.raises(FileNotFoundError, match="text file not found"):
        load_text(tmp_path / "missing.txt")


def test_masked_lm_80_10_10():
    vocab, mask_id = 101, 100
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 100, size=(256, 512))
    original = tokens.copy()
    inputs, targets = masked_lm_batch(tokens, vocab, mask_id, rng, mask_prob=0.15)
    np.testing.assert_array_equal(tokens, original)  # input not modified
    assert inputs.shape == targets.shape == tokens.shape
    assert inputs.dtype == targets.dtype == np.int64
    selected = targets != -100
    assert abs(selected.mean() - 0.15) < 0.005
    np.testing.assert_array_equal(targets[selected], tokens[selected])
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
    n = selected.sum()
    masked = (inputs == mask_id) & selected
    unchanged = (inputs == tokens) & selected
    replaced = selected & ~masked & ~unchanged
    assert abs(masked.sum() / n - 0.8) < 0.01
    # random replacements may draw the original token or the mask id by chance
    assert abs(unchanged.sum() / n - 0.1 * (1 + 1 / vocab)) < 0.01
    assert abs(replaced.sum() / n - 0.1 * (1 - 2 / vocab)) < 0.01
    assert (inputs >= 0).all() and (inputs < vocab).all()

    _, t2 = masked_lm_batch(tokens, vocab, mask_id, rng, mask_prob=0.0, ignore_index=-1)
    assert (t2 == -1).all()


# ----------------------------------------------------------------------------- schedules


def test_constant():
    assert Constant(3e-4)(0) == Constant(3e-4)(10_000) == 3e-4


def test_noam():
    d, w = 512, 4000
    s = Noam(d, w)
    for step in (1, 10, 1000, 3999, 4000, 4001, 100_000):
        expected = d**-0.5 * min(step**-0.5, step * w**-1.5)
        assert s(step) == pytest.approx(expected, rel=1e-12)
    assert s(w) == pytest.approx(d**-0.5 * w**-0.5, rel=1e-12)
    assert max(s(t) for t in range(1, 3 * w)) == s(w)  # peak at warmup
    assert s(0) == s(1)
    assert Noam(d, w, scale=2.0)(123) == pytest.approx(2 * s(123))


def _nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_warmup_cosine_matches_nanogpt():
    s = WarmupCosine(lr=6e-4, warmup=100, total=1000, min_lr=6e-5)
    for it in (0, 1, 50, 99, 100, 101, 550, 999, 1000, 1001, 5000):
        assert s(it) == pytest.approx(_nanogpt_get_lr(it, 6e-4, 100, 1000, 6e-5), rel=1e-12)
    assert s(100) == pytest.approx(6e-4)
    assert s(550) == pytest.approx((6e-4 + 6e-5) / 2)
    assert s(1000) == pytest.approx(6e-5)


def test_warmup_linear():
    s = WarmupLinear(lr=1.0, warmup=10, total=110, min_lr=0.1)
    assert s(0) == pytest.approx(1 / 11)
    assert s(9) == pytest.approx(10 / 11)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)
    assert s(110) == pytest.approx(0.1)
    assert s(500) == 0.1
    assert WarmupLinear(lr=1.0, warmup=0, total=4)(2) == pytest.approx(0.5)


def test_make_schedule():
    assert make_schedule("constant", lr=0.1) == Constant(0.1)
    assert make_schedule("noam", d_model=64, warmup=10) == Noam(64, 10)
    assert make_schedule("cosine", lr=1.0, warmup=1, total=10, min_lr=0.0) == WarmupCosine(
        1.0, 1, 10, 0.0
    )
    assert make_schedule("linear", lr=1.0, warmup=1, total=10) == WarmupLinear(1.0, 1, 10)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        make_schedule("step", lr=1.0)
    with pytest.raises(ValueError, match="missing warmup"):
        make_schedule("noam", d_model=64)
    with pytest.raises(ValueError, match="unexpected foo"):
        make_schedule("constant", lr=1.0, foo=2)
    with pytest.raises(ValueError, match="warmup < total"):
        make_schedule("cosine", lr=1.0, warmup=10, total=10, min_lr=0.0)


# ----------------------------------------------------------------------------- optim


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.GELU(), torch.nn.Linear(8, 3)
    )


def _train(model, opt, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_param_groups_decay_only_matrices():
    model = _model()
    named = dict(model.named_parameters())
    groups = param_groups(named, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert all(p.ndim == 1 for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(named)
    opt = make_optimizer("adamw", named, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    names = optimizer_param_names(opt, named)
    assert names[:2] == ["0.weight", "3.weight"] and sorted(names) == sorted(named)


def test_make_optimizer_kinds():
    named = dict(_model().named_parameters())
    sgd = make_optimizer("sgd", named, lr=0.1, momentum=0.9)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    adam = make_optimizer("adam", named, lr=0.1)
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    assert all(g["weight_decay"] == 0.0 for g in adam.param_groups)
    assert isinstance(make_optimizer("radam", named, lr=0.1), torch.optim.RAdam)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        make_optimizer("lamb", named, lr=0.1)


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("adamw", {"weight_decay": 0.1, "betas": (0.8, 0.95)}),
        ("adam", {"weight_decay": 0.01}),
        ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
        ("radam", {"weight_decay": 0.01}),
        ("lion", {"weight_decay": 0.1}),
        ("sophia", {"rho": 0.05}),
    ],
)
def test_optimizer_state_round_trip(tmp_path, kind, kwargs):
    model_a = _model(0)
    named_a = dict(model_a.named_parameters())
    opt_a = make_optimizer(kind, named_a, lr=1e-2, **kwargs)
    _train(model_a, opt_a, 3, seed=1)

    tensors, meta = optimizer_state_tensors(opt_a, optimizer_param_names(opt_a, named_a))
    assert all(k.startswith("state.") for k in tensors)
    weights = {k: v.detach().numpy() for k, v in model_a.state_dict().items()}
    save_checkpoint(
        tmp_path / "ckpt",
        weights,
        {k: v.numpy() for k, v in tensors.items()},
        {"step": 3, "optimizer": meta},
    )
    w, ot, state = load_checkpoint(tmp_path / "ckpt")

    # A differently initialised model whose parameters are listed in reverse order.
    model_b = _model(123)
    model_b.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in w.items()})
    named_b = dict(reversed(list(model_b.named_parameters())))
    opt_b = make_optimizer(kind, named_b, lr=0.5)  # hyperparameters come from the state
    load_optimizer_state(opt_b, optimizer_param_names(opt_b, named_b), ot, state["optimizer"])
    assert opt_b.param_groups[0]["lr"] == 1e-2
    if kind == "adamw":
        assert opt_b.param_groups[0]["betas"] == (0.8, 0.95)

    _train(model_a, opt_a, 3, seed=2)
    _train(model_b, opt_b, 3, seed=2)
    for (na, pa), (nb, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb), na


def test_optimizer_state_name_mismatch():
    named = dict(_model().named_parameters())
    opt = make_optimizer("adamw", named, lr=1e-3)
    names = optimizer_param_names(opt, named)
    tensors, meta = optimizer_state_tensors(opt, names)
    renamed = [n + "_x" if n == "0.weight" else n for n in names]
    with pytest.raises(ValueError, match="missing"):
        load_optimizer_state(opt, renamed, tensors, meta)
    with pytest.raises(ValueError, match="parameter names"):
        optimizer_state_tensors(opt, names[:-1])


# ----------------------------------------------------------------------------- checkpoint


def _leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_atomic_write_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_atomic_save_safetensors_failure_keeps_previous(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors({"a": np.arange(3, dtype=np.float32)}, path, {"k": "v"})
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - object arrays are not serializable
        atomic_save_safetensors({"a": np.array([object()], dtype=object)}, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_checkpoint_round_trip_and_errors(tmp_path, monkeypatch):
    d = tmp_path / "run" / "ckpt"
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float64)}
    opt = {"state.w.exp_avg": np.ones((2, 3), np.float32)}
    save_checkpoint(d, weights, opt, {"step": 7, "loss": 1.5})
    assert sorted(os.listdir(d)) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    w, o, state = load_checkpoint(d)
    assert state == {"step": 7, "loss": 1.5}
    assert w.keys() == weights.keys() and o.keys() == opt.keys()
    for k in weights:
        np.testing.assert_array_equal(w[k], weights[k])
        assert w[k].dtype == weights[k].dtype
    np.testing.assert_array_equal(o["state.w.exp_avg"], opt["state.w.exp_avg"])

    with pytest.raises(ValueError, match="'step'"):
        save_checkpoint(d, weights, opt, {"loss": 1.0})
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")

    # A save interrupted partway keeps the previous checkpoint (step 7) loadable and intact.
    real_replace = os.replace

    def crash_on_optimizer(src, dst):
        if str(dst).endswith("optimizer.safetensors"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_optimizer)
    with pytest.raises(OSError):
        save_checkpoint(d, weights, opt, {"step": 8})
    monkeypatch.undo()
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".")] == []
    assert load_checkpoint(d)[2]["step"] == 7

    # A crash between the two renames leaves the old checkpoint under its moved-aside name.
    def crash_on_swap(src, dst):
        if ".new-" in Path(src).name:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_swap)
    with pytest.raises(OSError):
        save_checkpoint(d, weights, opt, {"step": 8})
    monkeypatch.undo()
    assert not d.exists()
    assert load_checkpoint(d)[2]["step"] == 7
    real_replace(next(d.parent.glob(".ckpt.old-*")), d)

    # A directory with other files is never replaced.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "other", weights, opt, {"step": 1})
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"

    # Files from different saves are detected.
    save_checkpoint(d, weights, opt, {"step": 9})
    (d / "state.json").write_text(json.dumps({"step": 10}))
    with pytest.raises(ValueError, match="inconsistent checkpoint"):
        load_checkpoint(d)


def test_numpy_rng_state_round_trip():
    for bit_generator in (np.random.PCG64, np.random.MT19937):
        rng = np.random.Generator(bit_generator(7))
        rng.random(5)
        d = json.loads(json.dumps(numpy_rng_state(rng)))
        rng2 = numpy_rng_from_state(d)
        np.testing.assert_array_equal(rng.random(10), rng2.random(10))
        np.testing.assert_array_equal(rng.integers(0, 100, 10), rng2.integers(0, 100, 10))
    with pytest.raises(ValueError, match="unsupported"):
        numpy_rng_from_state({"bit_generator": "Evil"})


def test_torch_rng_state_round_trip():
    torch.manual_seed(3)
    torch.rand(4)
    state = json.loads(json.dumps(torch_rng_state()))
    a = torch.rand(8)
    set_torch_rng_state(state)
    assert torch.equal(torch.rand(8), a)


def _ckpt(directory, step):
    save_checkpoint(directory, {"w": np.full(3, step, np.float32)}, {}, {"step": step})


def test_recovery_after_double_crash_takes_the_newest_step(tmp_path):
    """Two crashes between renames leave two moved-aside copies with random names: recovery
    must take the highest step (it used to take the last uuid in sort order), and also a
    complete copy that was about to replace the directory."""
    d = tmp_path / "ck"
    for step, name in ((12, ".ck.old-0000"), (5, ".ck.old-ffff"), (3, ".ck.new-zzzz")):
        _ckpt(tmp_path / "tmp", step)
        os.replace(tmp_path / "tmp", tmp_path / name)
    (tmp_path / ".ck.new-half").mkdir()                    # a crash mid-write: incomplete
    (tmp_path / ".ck.new-half" / "state.json").write_text('{"step": 99}')
    assert load_checkpoint(d)[2]["step"] == 12
    _ckpt(d, 13)                                         # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_saves_leave_no_copies_behind(tmp_path):
    d = tmp_path / "ck"
    for step in range(4):
        _ckpt(d, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("field, value, message", [
    ("tokenizer", None, "'tokenizer' should be dict"),
    ("step", "7", "'step' should be int"),
    ("step", True, "'step' should be int"),
    ("step", -1, "'step' is negative"),
    ("history", {}, "'history' should be list"),
    ("spec_text", 3, "'spec_text' should be str"),
    ("data", 1, "'data' should be str or null"),
    ("tokenizer", {"chars": "ab"}, "'tokenizer' has no 'kind'"),
    ("optimizer_names", [1, 2], "list of strings"),
])
def test_a_state_json_with_wrong_types_is_refused_naming_the_field(tmp_path, field, value,
                                                                    message):
    d = tmp_path / "ck"
    _ckpt(d, 7)
    state = json.loads((d / "state.json").read_text())
    state[field] = value
    (d / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_checkpoint(d)


def test_a_state_json_that_is_not_json_is_refused(tmp_path):
    d = tmp_path / "ck"
    _ckpt(d, 7)
    (d / "state.json").write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="is not JSON"):
        load_checkpoint(d)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(2, np.float32), "has shape (2,), its parameter has (4, 3)"),
    (np.zeros((4, 3), np.int64), "not floating point"),
    (np.full((4, 3), np.nan, np.float32), "NaN or infinite"),
])
def test_optimizer_state_is_checked_against_the_parameters(bad, message):
    """A wrong-shaped exp_avg used to be accepted and the fused AdamW step then read and
    wrote out of bounds."""
    model = torch.nn.Linear(3, 4)
    opt = make_optimizer("adamw", dict(model.named_parameters()), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    names = optimizer_param_names(opt, dict(model.named_parameters()))
    tensors, meta = optimizer_state_tensors(opt, names)
    tensors = {k: v.numpy() for k, v in tensors.items()}
    tensors["state.weight.exp_avg"] = bad
    with pytest.raises(ValueError, match=re.escape(message)):
        load_optimizer_state(opt, names, tensors, meta)


def test_strided_arrays_are_saved_by_value(tmp_path):
    """safetensors' own `save` writes a strided view's underlying bytes; ours copies."""
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    views = {"slice": base[:, 1:], "transposed": base.transpose(2, 0, 1)}
    save_checkpoint(tmp_path / "c", {"w": base}, views, {"step": 1})
    _, tensors, _ = load_checkpoint(tmp_path / "c")
    for name, view in views.items():
        np.testing.assert_array_equal(tensors[name], view)
