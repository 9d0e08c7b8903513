"""Hugging Face interop: tiny random models of each family, created here (no downloads),
must agree with attndsl after `import-hf` on NumPy and PyTorch, generate the same greedy
tokens, and survive `export-hf` back into `transformers`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import attndsl.hf as hf  # noqa: E402
from attndsl.cli import main  # noqa: E402
from attndsl.training.generate import generate_ids, greedy_decode  # noqa: E402

V = 97


def configs() -> dict[str, tuple[object, type]]:
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48)
    return {
        "gpt2": (tf.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_head=4, n_layer=2,
                               bos_token_id=0, eos_token_id=0), tf.GPT2LMHeadModel),
        "llama": (tf.LlamaConfig(vocab_size=V, max_position_embeddings=64, num_key_value_heads=2,
                                 rope_theta=500000.0, **small), tf.LlamaForCausalLM),
        "llama3_scaled": (tf.LlamaConfig(
            vocab_size=V, max_position_embeddings=64, num_key_value_heads=1, tie_word_embeddings=True,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
            **small), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(vocab_size=V, max_position_embeddings=64, sliding_window=4,
                                     num_key_value_heads=2, **small), tf.MistralForCausalLM),
        "bert": (tf.BertConfig(vocab_size=V, max_position_embeddings=64, **small),
                 tf.BertForPreTraining),
        "bert_base": (tf.BertConfig(vocab_size=V, max_position_embeddings=64, **small),
                      tf.BertModel),
        "roberta": (tf.RobertaConfig(vocab_size=V, max_position_embeddings=66, **small),
                    tf.RobertaForMaskedLM),
        "t5": (tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                           num_decoder_layers=3, num_heads=4, relative_attention_num_buckets=8,
                           relative_attention_max_distance=20), tf.T5ForConditionalGeneration),
        "t5_gated": (tf.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                 num_heads=4, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False), tf.T5ForConditionalGeneration),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    """family -> directory of a saved tiny random model (its module is kept for reference)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, (cfg, cls) in configs().items():
        torch.manual_seed(0)
        model = cls(cfg).eval()
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    return out


def hf_outputs(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        r = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    out = {}
    for ours, theirs in (("logits", "logits"), ("logits", "prediction_logits"),
                         ("last_hidden_state", "last_hidden_state"),
                         ("encoder_last_hidden_state", "encoder_last_hidden_state"),
                         ("pooler_output", "pooler_output"),
                         ("seq_relationship_logits", "seq_relationship_logits")):
        if getattr(r, theirs, None) is not None:
            out[ours] = getattr(r, theirs).numpy()
    return out


def inputs_for(name: str) -> dict[str, np.ndarray]:
    """Token ids (and a padding mask with padded positions for the encoders)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, size=(2, 24 if name.startswith("t5") else 12))
    if name.startswith(("gpt2", "llama", "mistral")):
        return {"input_ids": ids}
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 8:] = 1                               # RoBERTa's pad id: positions skip pads
    out = {"input_ids": ids, "attention_mask": mask}
    if name.startswith("t5"):                    # long enough for the far relative buckets
        out["decoder_input_ids"] = rng.integers(2, V, size=(2, 22))
    return out


@pytest.mark.parametrize("name", list(configs()))
@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_import_matches_transformers(checkpoints, name: str, be: str) -> None:
    directory, reference = checkpoints[name]
    inputs = inputs_for(name)
    want = hf_outputs(reference, inputs)
    model = hf.from_hf(directory, backend=be)
    got = model.to_numpy(model(**inputs))
    mask = inputs.get("attention_mask", np.ones(inputs["input_ids"].shape)).astype(bool)
    assert want and set(want) <= set(got)
    for key, value in want.items():
        real = mask if value.shape[:2] == mask.shape else np.ones(value.shape[:2], bool)
        ours = got[key][real] if value.ndim == 3 else got[key]
        theirs = value[real] if value.ndim == 3 else value
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 1e-4 * scale, (key, np.abs(ours - theirs).max())


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_greedy_generation_matches_transformers(checkpoints, name: str, be: str) -> None:
    directory, reference = checkpoints[name]
    prompt = [5, 17, 42, 8]
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False,
                                    min_new_tokens=30, pad_token_id=0)[0].tolist()
    ours = generate_ids(hf.from_hf(directory, backend=be), prompt, 30, temperature=0.0)
    assert ours == theirs


@pytest.mark.parametrize("name", ["t5", "t5_gated"])
def test_t5_greedy_decoding_matches_transformers(checkpoints, name: str) -> None:
    directory, reference = checkpoints[name]
    src = inputs_for(name)["input_ids"][:1]
    with torch.no_grad():
        theirs = reference.generate(torch.tensor(src), max_new_tokens=30, min_new_tokens=30,
                                    do_sample=False, decoder_start_token_id=0,
                                    use_cache=False)[0].tolist()   # HF caches 2 of 3 layers
    ours = greedy_decode(hf.from_hf(directory), src, bos=0, eos=-1, max_len=30)
    assert ours == theirs


def test_cli_import_run_export_round_trip(checkpoints, tmp_path, capsys) -> None:
    directory, reference = checkpoints["llama"]
    assert main(["import-hf", str(directory), "-o", str(tmp_path / "conv")]) == 0
    spec = (tmp_path / "conv" / "model.attn").read_text()
    assert "const num_key_value_heads = 2" in spec and "rope(theta=rope_theta)" in spec
    assert main(["run", str(tmp_path / "conv" / "model.attn"), "--weights",
                 str(tmp_path / "conv" / "model.safetensors"), "--seq", "8"]) == 0
    assert main(["export-hf", str(tmp_path / "conv" / "model.attn"), "--weights",
                 str(tmp_path / "conv" / "model.safetensors"), "-o", str(tmp_path / "back")]) == 0
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.tensor(inputs_for("llama")["input_ids"])
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, reference(input_ids=ids).logits)
    for a, b in zip(back.state_dict().items(), reference.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])


@pytest.mark.parametrize("name", ["gpt2", "bert", "bert_base", "roberta", "mistral",
                                  "llama3_scaled", "t5", "t5_gated"])
def test_export_loads_back_into_transformers_unchanged(checkpoints, tmp_path, name) -> None:
    directory, reference = checkpoints[name]
    hf.export_hf(hf.from_hf(directory), tmp_path)
    cls = type(reference)
    back, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref = reference.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, ref[key]), key
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == reference.config.model_type


def test_sharded_and_bf16_checkpoints_convert(checkpoints, tmp_path) -> None:
    _, reference = checkpoints["gpt2"]
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    copy.deepcopy(reference).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    ids = inputs_for("gpt2")["input_ids"]
    want = hf_outputs(reference, {"input_ids": ids})["logits"]
    got = hf.from_hf(tmp_path / "sharded")(input_ids=ids)["logits"]
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    weights = hf.convert(tmp_path / "bf16")[1]
    exact = hf.convert(tmp_path / "sharded")[1]
    assert all(np.abs(weights[k] - exact[k]).max() <= 1e-2 * np.abs(exact[k]).max() + 1e-6
               for k in exact)


def test_bad_directories_are_clear_errors(checkpoints, tmp_path, capsys) -> None:
    (tmp_path / "bart").mkdir()
    (tmp_path / "bart" / "config.json").write_text('{"model_type": "bart"}')
    assert main(["import-hf", str(tmp_path / "bart"), "-o", str(tmp_path / "o")]) == 2
    assert "model_type 'bart' is not supported" in capsys.readouterr().err
    (tmp_path / "pkl").mkdir()
    (tmp_path / "pkl" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pkl" / "pytorch_model.bin").write_bytes(b"x")
    assert main(["import-hf", str(tmp_path / "pkl"), "-o", str(tmp_path / "o")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "none"), "-o", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["export-hf", "specs/gpt.attn", "-o", str(tmp_path / "o")]) == 2
    assert "export-hf writes specs of the families" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
