"""Hugging Face checkpoints in and out: `import_hf`, `from_hf`, `export_hf`.

A family (BERT, RoBERTa, GPT-2, LLaMA/Mistral) is three declarative things: the config keys
it reads, a spec template whose constants are those keys (so export reads the config back
from the spec), and a weight table. Each table row maps one Hugging Face tensor to one
attndsl parameter (a rename), to several (`split` along the output axis: GPT-2's fused
`c_attn`), with `transpose` for Conv1D weights stored [in, out], or to nothing (`tied`: a
copy of another weight that the spec ties). `{i}` in a row stands for every layer index.
Only local directories holding `config.json` and safetensors are read (no downloads, no
pickle); everything is checked before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attndsl.errors import WeightsError
from attndsl.frontend import build
from attndsl.ir.graph import Graph
from attndsl.model import Model, safetensors_entries
from attndsl.model import compile as compile_spec
from attndsl.safetensors_io import read_tensor
from attndsl.training.checkpoint import atomic_save_safetensors, atomic_write_bytes

SPEC_FILE, WEIGHTS_FILE = "model.attn", "model.safetensors"


class HFError(WeightsError):
    """A Hugging Face directory this module cannot convert (the message says why)."""


@dataclass(frozen=True)
class Row:
    hf: str                          # Hugging Face name, `{i}` = layer index
    ours: tuple[str, ...]            # attndsl names: one (rename), several (split), none (tied)
    transpose: bool = False          # HF stores [in, out] (GPT-2 Conv1D)


def row(hf: str, *ours: str, transpose: bool = False) -> Row:
    return Row(hf, ours if ours else (hf,), transpose)


def tied(hf: str) -> Row:
    return Row(hf, ())


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    prefix: str                      # the base model's prefix in task-head checkpoints
    layers: tuple[tuple[str, str], ...]   # (row prefix, config key of its layer count)
    spec: Callable[[dict[str, Any], set[str]], str]
    table: Callable[[dict[str, Any], set[str]], list[Row]]
    head_rows: tuple[str, ...]       # names outside the base model (kept unprefixed)
    architecture: Callable[[set[str]], tuple[str, bool]]   # (class, base prefixed?) by params
    export_config: Callable[[dict[str, Any], set[str]], dict[str, Any]]


def _need(cfg: dict[str, Any], keys: tuple[str, ...], family: str) -> dict[str, Any]:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise HFError(f"config.json of this {family} model lacks {', '.join(missing)}")
    return {k: cfg[k] for k in keys}


def _consts(values: dict[str, Any]) -> str:
    return "\n".join(f"const {k} = {json.dumps(v)}" for k, v in values.items())


def _refuse(cond: bool, what: str) -> None:
    if cond:
        raise HFError(f"not supported by import-hf: {what}")


# -- GPT-2 ------------------------------------------------------------------------------------

GELU = {"gelu_new": 'gelu({}, approximate="tanh")', "gelu_pytorch_tanh": 'gelu({}, approximate="tanh")',
        "gelu": "gelu({})", "relu": "relu({})", "silu": "silu({})", "swish": "silu({})"}


def _act(name: str, x: str) -> str:
    _refuse(name not in GELU, f"activation {name!r} (supported: {', '.join(GELU)})")
    return GELU[name].format(x)


def gpt2_config(cfg: dict[str, Any]) -> dict[str, Any]:
    c = _need(cfg, ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer",
                    "layer_norm_epsilon"), "gpt2")
    c["n_inner"] = cfg.get("n_inner") or 4 * c["n_embd"]
    c["activation_function"] = cfg.get("activation_function", "gelu_new")
    _refuse(cfg.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx")
    _refuse(not cfg.get("scale_attn_weights", True), "scale_attn_weights=false")
    return c


def gpt2_spec(cfg: dict[str, Any], names: set[str]) -> str:
    c = gpt2_config(cfg)
    act = _act(c["activation_function"], 'linear(x, n_inner, name="c_fc")')
    return f"""# GPT-2 (Radford et al. 2019), written by `attndsl import-hf` from a Hugging Face
# checkpoint; the constants are its config.json keys (activation_function is recorded for
# export-hf; the MLP below spells it out).
{_consts(c)}

block mlp(x) {{
    h = {act}                       # (B, T, n_inner)
    return linear(h, n_embd, name="c_proj")                   # (B, T, n_embd)
}}

model gpt2 {{
    input input_ids: int[B, T <= n_positions]
    wte = embedding(input_ids, vocab_size, n_embd)            # (B, T, n_embd)
    wpe = embedding(arange(T), n_positions, n_embd)           # (T, n_embd)
    x = wte + wpe
    repeat n_layer as h {{
        attn = attention(layer_norm(x, eps=layer_norm_epsilon, name="ln_1"), n_head,
                         pattern=causal)
        x = x + attn
        x = x + mlp(layer_norm(x, eps=layer_norm_epsilon, name="ln_2"))
    }}
    ln_f = layer_norm(x, eps=layer_norm_epsilon)
    output hidden = ln_f                                      # (B, T, n_embd)
    output logits = linear(ln_f, vocab_size, bias=false, tie="wte")   # (B, T, vocab_size)
}}
"""


def gpt2_table(cfg: dict[str, Any], names: set[str]) -> list[Row]:
    rows = [row("wte.weight"), row("wpe.weight"), row("ln_f.weight"), row("ln_f.bias"),
            tied("lm_head.weight")]
    for p in ("weight", "bias"):
        rows += [row(f"h.{{i}}.ln_1.{p}"), row(f"h.{{i}}.ln_2.{p}"),
                 row(f"h.{{i}}.attn.c_attn.{p}", *(f"h.{{i}}.attn.{x}.{p}" for x in "qkv"),
                     transpose=p == "weight"),
                 row(f"h.{{i}}.attn.c_proj.{p}", f"h.{{i}}.attn.o.{p}", transpose=p == "weight"),
                 row(f"h.{{i}}.mlp.c_fc.{p}", transpose=p == "weight"),
                 row(f"h.{{i}}.mlp.c_proj.{p}", transpose=p == "weight")]
    return rows


# -- LLaMA / Mistral --------------------------------------------------------------------------

ROPE_KEYS = {"linear": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings")}


def llama_rope(cfg: dict[str, Any]) -> dict[str, Any]:
    """The rope settings (transformers 5 `rope_parameters` or older `rope_theta` +
    `rope_scaling`) as constants."""
    params = {**(cfg.get("rope_parameters") or {}), **(cfg.get("rope_scaling") or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    out = {"rope_theta": float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))}
    if kind == "default":
        return out
    if kind not in ROPE_KEYS:
        raise HFError(f"not supported by import-hf: rope_type {kind!r} (default, linear, "
                      "llama3)")
    missing = [k for k in ROPE_KEYS[kind] if k not in params]
    if missing:
        raise HFError(f"rope_type {kind!r} needs {', '.join(missing)} in config.json")
    return {**out, "rope_type": kind, **{k: params[k] for k in ROPE_KEYS[kind]}}


def rope_call(c: dict[str, Any]) -> str:
    kind = c.get("rope_type", "default")
    if kind == "linear":
        return "rope(theta=rope_theta, scaling=linear(factor))"
    if kind == "llama3":
        return ("rope(theta=rope_theta, scaling=llama3(factor=factor, low_freq_factor="
                "low_freq_factor, high_freq_factor=high_freq_factor, original_max_position="
                "original_max_position_embeddings))")
    return "rope(theta=rope_theta)"


def llama_config(cfg: dict[str, Any]) -> dict[str, Any]:
    c = _need(cfg, ("vocab_size", "max_position_embeddings", "hidden_size",
                    "num_attention_heads", "num_hidden_layers", "intermediate_size",
                    "rms_norm_eps"), cfg.get("model_type", "llama"))
    c["num_key_value_heads"] = cfg.get("num_key_value_heads") or c["num_attention_heads"]
    head_dim = cfg.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    _refuse(head_dim * c["num_attention_heads"] != c["hidden_size"],
            f"head_dim {head_dim} x {c['num_attention_heads']} heads != hidden_size")
    _refuse(cfg.get("attention_bias", False) or cfg.get("mlp_bias", False), "biases")
    _refuse(cfg.get("hidden_act", "silu") != "silu", f"hidden_act {cfg.get('hidden_act')!r}")
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if window:  # Mistral: query i sees keys i - window < j <= i
        c["sliding_window"] = window
    return {**c, **llama_rope(cfg)}


def llama_spec(cfg: dict[str, Any], names: set[str]) -> str:
    c = llama_config(cfg)
    pattern = "causal & window(sliding_window)" if "sliding_window" in c else "causal"
    head = ('linear(norm, vocab_size, bias=false, tie="embed_tokens")' if "lm_head.weight"
            not in names else 'linear(norm, vocab_size, bias=false, name="lm_head")')
    return f"""# {cfg.get("model_type", "llama")} decoder (Touvron et al. 2023) written by `attndsl import-hf` from a
# Hugging Face checkpoint: pre-RMSNorm, rotary positions, SwiGLU, grouped-query attention.
{_consts(c)}

block mlp(x) {{
    gate = silu(linear(x, intermediate_size, bias=false, name="gate_proj"))   # (B, T, ff)
    up = linear(x, intermediate_size, bias=false, name="up_proj")             # (B, T, ff)
    return linear(gate * up, hidden_size, bias=false, name="down_proj")       # (B, T, d)
}}

model {cfg.get("model_type", "llama")} {{
    input input_ids: int[B, T <= max_position_embeddings]
    x = embedding(input_ids, vocab_size, hidden_size, name="embed_tokens")    # (B, T, d)
    repeat num_hidden_layers as layers {{
        self_attn = attention(rms_norm(x, eps=rms_norm_eps, name="input_layernorm"),
                              num_attention_heads, pattern={pattern},
                              kv_heads=num_key_value_heads, rope={rope_call(c)},
                              proj_bias=false)
        x = x + self_attn
        x = x + mlp(rms_norm(x, eps=rms_norm_eps, name="post_attention_layernorm"))
    }}
    norm = rms_norm(x, eps=rms_norm_eps)
    output hidden = norm                                      # (B, T, d)
    output logits = {head}          # (B, T, vocab_size)
}}
"""


def llama_table(cfg: dict[str, Any], names: set[str]) -> list[Row]:
    rows = [row("embed_tokens.weight"), row("norm.weight"),
            row("lm_head.weight") if "lm_head.weight" in names and not cfg.get(
                "tie_word_embeddings") else tied("lm_head.weight")]
    rows += [row(f"layers.{{i}}.self_attn.{x}_proj.weight", f"layers.{{i}}.self_attn.{x}.weight")
             for x in "qkvo"]
    rows += [row(f"layers.{{i}}.{n}.weight") for n in (
        "input_layernorm", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
        "mlp.down_proj")]
    return rows


# -- BERT / RoBERTa ---------------------------------------------------------------------------

def bert_config(cfg: dict[str, Any]) -> dict[str, Any]:
    c = _need(cfg, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings", "type_vocab_size",
                    "layer_norm_eps"), cfg.get("model_type", "bert"))
    _refuse(cfg.get("position_embedding_type", "absolute") != "absolute",
            f"position_embedding_type {cfg.get('position_embedding_type')!r}")
    c["hidden_act"] = cfg.get("hidden_act", "gelu")
    if cfg.get("model_type") == "roberta":
        c["pad_token_id"] = _need(cfg, ("pad_token_id",), "roberta")["pad_token_id"]
    return c


def bert_heads(cfg: dict[str, Any]) -> tuple[str, str, str]:
    """The MLM head's (scope, dense layer, norm) names: BERT's `cls.predictions...` or
    RoBERTa's `lm_head...`."""
    if cfg.get("model_type") == "roberta":
        return "lm_head", "lm_head.dense", "lm_head.layer_norm"
    return ("cls.predictions", "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm")


def bert_spec(cfg: dict[str, Any], names: set[str]) -> str:
    c = bert_config(cfg)
    roberta = cfg.get("model_type") == "roberta"
    act = c["hidden_act"]
    if roberta:  # positions count real tokens from pad_token_id + 1, as fairseq does
        positions = ('real = cast(~equal(input_ids, pad_token_id), "int")   # (B, T)\n'
                     "    positions = cumsum(real, axis=1) * real + pad_token_id")
    else:
        positions = "positions = arange(T)"
    lines = []
    if "pooler.dense.weight" in names:
        lines.append('output pooler_output = tanh(linear(x[:, 0], hidden_size, '
                     'name="pooler.dense"))   # (B, d)')
    if "cls.seq_relationship.weight" in names:
        lines.append('output seq_relationship_logits = linear(pooler_output, 2, '
                     'name="cls.seq_relationship")   # (B, 2): next-sentence head')
    head, dense, norm = bert_heads(cfg)
    if f"{dense}.weight" in names:
        lines += [f'h = {_act(act, f"linear(x, hidden_size, name={dense!r})")}',
                  f'h = layer_norm(h, eps=layer_norm_eps, name="{norm}")',
                  f'output logits = linear(h, vocab_size, tie="embeddings.word_embeddings", '
                  f'name="{head}.decoder")   # (B, T, vocab_size)']
    heads = "\n    ".join(lines).replace("'", '"')
    return f"""# {"RoBERTa (Liu et al. 2019)" if roberta else "BERT (Devlin et al. 2019)"}, written by `attndsl import-hf` from a Hugging Face
# checkpoint: a post-LN encoder; parameter names follow Hugging Face's, except that the
# attention's projections are `attention.q/k/v/o` (HF: self.query/key/value, output.dense).
{_consts(c)}

block layer(x, mask) {{
    attn = attention(x, num_attention_heads, key_padding=mask, name="attention")
    x = layer_norm(x + attn, eps=layer_norm_eps, name="attention.output.LayerNorm")
    h = {_act(act, 'linear(x, intermediate_size, name="intermediate.dense")')}
    return layer_norm(x + linear(h, hidden_size, name="output.dense"), eps=layer_norm_eps,
                      name="output.LayerNorm")               # (B, T, d)
}}

model {cfg.get("model_type", "bert")} {{
    input input_ids: int[B, T <= max_position_embeddings]
    input token_type_ids: int[B, T] = 0
    input attention_mask: bool[B, T] = true                   # true = real token
    {positions}
    x = embedding(input_ids, vocab_size, hidden_size, name="embeddings.word_embeddings")
        + embedding(positions, max_position_embeddings, hidden_size,
                    name="embeddings.position_embeddings")
        + embedding(token_type_ids, type_vocab_size, hidden_size,
                    name="embeddings.token_type_embeddings")
    x = layer_norm(x, eps=layer_norm_eps, name="embeddings.LayerNorm")   # (B, T, d)
    repeat num_hidden_layers as encoder.layer {{
        x = layer(x, attention_mask, name="")
    }}
    output last_hidden_state = x                              # (B, T, d)
    {heads}
}}
"""


def bert_table(cfg: dict[str, Any], names: set[str]) -> list[Row]:
    head, dense, norm = bert_heads(cfg)
    mlm = f"{dense}.weight" in names
    rows = [row(f"embeddings.{n}.weight") for n in (
        "word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")]
    rows += [row("embeddings.LayerNorm.bias")]
    layer = "encoder.layer.{i}."
    for p in ("weight", "bias"):
        rows += [row(f"{layer}attention.self.{hf}.{p}", f"{layer}attention.{x}.{p}")
                 for hf, x in (("query", "q"), ("key", "k"), ("value", "v"))]
        rows += [row(f"{layer}attention.output.dense.{p}", f"{layer}attention.o.{p}")]
        rows += [row(f"{layer}{n}.{p}") for n in (
            "attention.output.LayerNorm", "intermediate.dense", "output.dense",
            "output.LayerNorm")]
        rows += [row(f"{n}.{p}") for n in ("pooler.dense", "cls.seq_relationship")
                 if f"{n}.weight" in names]
        if mlm:
            rows += [row(f"{dense}.{p}"), row(f"{norm}.{p}")]
    if mlm:
        rows += [row(f"{head}.bias", f"{head}.decoder.bias"), tied(f"{head}.decoder.weight"),
                 tied(f"{head}.decoder.bias")]
    return rows


# -- T5 ---------------------------------------------------------------------------------------

T5_FF = {"relu": "relu", "gated-gelu": "gelu_new", "gated-silu": "silu"}


def t5_config(cfg: dict[str, Any]) -> dict[str, Any]:
    c = _need(cfg, ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                    "relative_attention_num_buckets", "layer_norm_epsilon"), "t5")
    c["num_decoder_layers"] = cfg.get("num_decoder_layers") or c["num_layers"]
    c["relative_attention_max_distance"] = cfg.get("relative_attention_max_distance", 128)
    c["feed_forward_proj"] = cfg.get("feed_forward_proj", "relu")
    # T5 v1.0 scales the decoder output by d_model^-0.5 before the LM head, v1.1 does not:
    # transformers 5 says so in scale_decoder_outputs, older configs by tie_word_embeddings
    c["scale_decoder_outputs"] = bool(cfg.get("scale_decoder_outputs",
                                              cfg.get("tie_word_embeddings", True)))
    _refuse(c["num_heads"] * c["d_kv"] != c["d_model"],
            f"num_heads x d_kv = {c['num_heads'] * c['d_kv']} differs from d_model")
    _refuse(c["feed_forward_proj"] not in T5_FF,
            f"feed_forward_proj {c['feed_forward_proj']!r} (supported: {', '.join(T5_FF)})")
    return c


def t5_spec(cfg: dict[str, Any], names: set[str]) -> str:
    c = t5_config(cfg)
    proj = c["feed_forward_proj"]
    if proj == "relu":
        ff = ('relu(linear(x, d_ff, bias=false, name="wi"))')
    else:
        act = _act(T5_FF[proj], 'linear(x, d_ff, bias=false, name="wi_0")')
        ff = f'{act} * linear(x, d_ff, bias=false, name="wi_1")'
    y = "y * d_model ** -0.5" if c["scale_decoder_outputs"] else "y"
    head = (f'linear({y}, vocab_size, bias=false, name="lm_head")' if "lm_head.weight" in names
            else f'linear({y}, vocab_size, bias=false, tie="shared")')
    return f"""# T5 (Raffel et al. 2020), written by `attndsl import-hf` from a Hugging Face checkpoint:
# pre-RMSNorm encoder-decoder, unscaled dot-product scores, one relative-position bias per
# stack (kept in the first block, as Hugging Face does); names follow Hugging Face's.
{_consts(c)}

block ff(x) {{
    h = {ff}                        # (B, L, d_ff)
    return linear(h, d_model, bias=false, name="wo")           # (B, L, d_model)
}}

model t5 {{
    input input_ids: int[B, S]
    input decoder_input_ids: int[B, T]
    input attention_mask: bool[B, S] = true                    # true = real source token
    x = embedding(input_ids, vocab_size, d_model, name="shared")   # (B, S, d_model)
    enc_bias = t5_bias(buckets=relative_attention_num_buckets,
                       max_distance=relative_attention_max_distance, bidirectional=true,
                       name="encoder.block.0.layer.0.SelfAttention.relative_attention_bias")
    repeat num_layers as encoder.block {{
        x = x + attention(rms_norm(x, eps=layer_norm_epsilon, name="layer.0.layer_norm"),
                          num_heads, bias=enc_bias, score=dot, proj_bias=false,
                          key_padding=attention_mask, name="layer.0.SelfAttention")
        x = x + ff(rms_norm(x, eps=layer_norm_epsilon, name="layer.1.layer_norm"),
                   name="layer.1.DenseReluDense")
    }}
    memory = rms_norm(x, eps=layer_norm_epsilon, name="encoder.final_layer_norm")
    output encoder_last_hidden_state = memory                  # (B, S, d_model)
    y = embedding(decoder_input_ids, vocab_size, d_model, tie="shared")   # (B, T, d_model)
    dec_bias = t5_bias(buckets=relative_attention_num_buckets,
                       max_distance=relative_attention_max_distance, bidirectional=false,
                       name="decoder.block.0.layer.0.SelfAttention.relative_attention_bias")
    repeat num_decoder_layers as decoder.block {{
        y = y + attention(rms_norm(y, eps=layer_norm_epsilon, name="layer.0.layer_norm"),
                          num_heads, pattern=causal, bias=dec_bias, score=dot, proj_bias=false,
                          name="layer.0.SelfAttention")
        y = y + attention(rms_norm(y, eps=layer_norm_epsilon, name="layer.1.layer_norm"),
                          num_heads, kv=memory, score=dot, proj_bias=false,
                          key_padding=attention_mask, name="layer.1.EncDecAttention")
        y = y + ff(rms_norm(y, eps=layer_norm_epsilon, name="layer.2.layer_norm"),
                   name="layer.2.DenseReluDense")
    }}
    y = rms_norm(y, eps=layer_norm_epsilon, name="decoder.final_layer_norm")
    output logits = {head}   # (B, T, vocab_size)
}}
"""


def t5_table(cfg: dict[str, Any], names: set[str]) -> list[Row]:
    gated = cfg.get("feed_forward_proj", "relu") != "relu"
    wi = ("wi_0", "wi_1") if gated else ("wi",)
    rows = [row("shared.weight"), tied("encoder.embed_tokens.weight"),
            tied("decoder.embed_tokens.weight"), row("encoder.final_layer_norm.weight"),
            row("decoder.final_layer_norm.weight"),
            row("lm_head.weight") if "lm_head.weight" in names else tied("lm_head.weight")]
    rows += [row(f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
             for s in ("encoder", "decoder")]
    for stack, attns, ff in (("encoder", ("0.SelfAttention",), 1),
                             ("decoder", ("0.SelfAttention", "1.EncDecAttention"), 2)):
        block = f"{stack}.block.{{i}}.layer."
        rows += [row(f"{block}{a}.{x}.weight") for a in attns for x in "qkvo"]
        rows += [row(f"{block}{n}.layer_norm.weight") for n in range(ff + 1)]
        rows += [row(f"{block}{ff}.DenseReluDense.{w}.weight") for w in (*wi, "wo")]
    return rows


def t5_export(cfg: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {**cfg, "is_encoder_decoder": True, "decoder_start_token_id": 0,
            "tie_word_embeddings": cfg["scale_decoder_outputs"]}   # what both readers expect



def gpt2_export(cfg: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {**cfg, "tie_word_embeddings": True}


def llama_export(cfg: dict[str, Any], names: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in ("rope_type", *ROPE_KEYS["llama3"])}
    rope = {"rope_type": cfg.get("rope_type", "default"), "rope_theta": cfg["rope_theta"],
            **{k: cfg[k] for k in ROPE_KEYS.get(cfg.get("rope_type", ""), ())}}
    return {**out, "rope_parameters": rope, "head_dim": cfg["hidden_size"] // cfg[
        "num_attention_heads"], "tie_word_embeddings": "lm_head.weight" not in names,
        "sliding_window": cfg.get("sliding_window"), "attention_bias": False, "mlp_bias": False}


def bert_export(cfg: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {**cfg, "position_embedding_type": "absolute", "tie_word_embeddings": True}


FAMILIES = [
    Family("gpt2", ("gpt2",), "transformer.", (("", "n_layer"),), gpt2_spec, gpt2_table, ("lm_head.",),
           lambda names: ("GPT2LMHeadModel", True), gpt2_export),
    Family("llama", ("llama", "mistral"), "model.", (("", "num_hidden_layers"),), llama_spec, llama_table,
           ("lm_head.",), lambda names: ("LlamaForCausalLM", True), llama_export),
    Family("bert", ("bert",), "bert.", (("", "num_hidden_layers"),), bert_spec, bert_table, ("cls.",),
           lambda names: ("BertForPreTraining", True) if "cls.seq_relationship.weight" in names
           else ("BertForMaskedLM", True) if "cls.predictions.decoder.bias" in names
           else ("BertModel", False), bert_export),
    Family("t5", ("t5",), "", (("decoder.", "num_decoder_layers"), ("", "num_layers")), t5_spec, t5_table, (),
           lambda names: ("T5ForConditionalGeneration", False), t5_export),
    Family("roberta", ("roberta",), "roberta.", (("", "num_hidden_layers"),), bert_spec, bert_table,
           ("lm_head.",), lambda names: ("RobertaForMaskedLM", True)
           if "lm_head.decoder.bias" in names else ("RobertaModel", False), bert_export),
]
BUFFERS = ("attn.bias", "attn.masked_bias", "embeddings.position_ids", "rotary_emb.inv_freq")


def family_of(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise HFError(f"model_type {model_type!r} is not supported by import-hf (supported: {known})")


def expand(rows: list[Row], fam: Family, cfg: dict[str, Any]) -> list[Row]:
    """Rows with `{i}` repeated for every layer index of their stack."""
    out = []
    for r in rows:
        if "{i}" in r.hf:
            key = next(k for prefix, k in fam.layers if r.hf.startswith(prefix))
            out += [Row(r.hf.format(i=i), tuple(o.format(i=i) for o in r.ours), r.transpose)
                    for i in range(int(cfg[key]))]
        else:
            out.append(r)
    return out


# -- import -----------------------------------------------------------------------------------

def read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise HFError(f"{directory} is not a directory (import-hf reads a local Hugging Face "
                      "model directory: config.json + safetensors)")
    path = directory / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise HFError(f"{directory} has no readable config.json") from None
    except ValueError as e:
        raise HFError(f"{path} is not JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise HFError(f"{path} names no model_type")
    return cfg


def _weights_path(directory: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (directory / name).is_file():
            return directory / name
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise HFError(f"{directory} has only pickle weights (.bin/.pt), which attndsl does not "
                      "load; convert them to safetensors first (save_pretrained(..., "
                      "safe_serialization=True))")
    raise HFError(f"{directory} holds neither model.safetensors nor "
                  "model.safetensors.index.json")


def convert(directory: str | Path) -> tuple[str, dict[str, np.ndarray], Family]:
    """(spec text, attndsl weights, family) for a local Hugging Face model directory."""
    spec, _, weights, fam = _convert(Path(directory))
    return spec, weights, fam


def _convert(directory: Path) -> tuple[str, Graph, dict[str, np.ndarray], Family]:
    """`convert`, plus the spec's graph (built once, for the shapes and for compiling)."""
    cfg = read_config(directory)
    fam = family_of(cfg["model_type"])
    entries = safetensors_entries(_weights_path(directory))
    base = {_strip(n, fam): n for n in entries}
    names = set(base)
    spec = fam.spec(cfg, names)
    rows = expand(fam.table(cfg, names), fam, cfg)
    graph = build(spec)
    model_params = {name: tuple(int(d.as_int()) for d in graph.nodes[nid].type.shape)
                    for name, nid in graph.params.items()}
    out: dict[str, np.ndarray] = {}
    handles: dict[Path, Any] = {}
    try:
        for r in rows:
            if r.hf not in base or not r.ours:          # absent, or a tied copy
                continue
            file, entry = entries[base[r.hf]]
            if file not in handles:
                handles[file] = open(file, "rb")  # noqa: SIM115 - closed below
            a = read_tensor(handles[file], entry).astype(np.float32)
            if r.transpose:
                a = a.T
            parts = np.split(a, len(r.ours), axis=0) if len(r.ours) > 1 else [a]
            for name, part in zip(r.ours, parts):
                want = model_params.get(name)
                if want is None:
                    raise HFError(f"internal table error: '{name}' is not a parameter of the "
                                  "generated spec")
                if part.shape != want:
                    raise HFError(f"'{base[r.hf]}' gives {name} the shape {part.shape}, the "
                                  f"config says {want}")
                out[name] = np.ascontiguousarray(part)
    finally:
        for f in handles.values():
            f.close()
    known = {r.hf for r in rows}
    unknown = sorted(n for n in names if n not in known and not n.endswith(BUFFERS))
    if unknown:
        raise HFError(f"{len(unknown)} weights of this {fam.name} checkpoint have no place in "
                      f"the {fam.name} spec (e.g. '{unknown[0]}'); a task head import-hf does "
                      "not know?")
    missing = sorted(set(model_params) - set(out))
    if missing:
        raise HFError(f"the checkpoint lacks {len(missing)} weights the spec needs (e.g. "
                      f"'{missing[0]}')")
    return spec, graph, out, fam


def _strip(name: str, fam: Family) -> str:
    return name[len(fam.prefix):] if name.startswith(fam.prefix) else name


def import_hf(directory: str | Path, out: str | Path) -> Path:
    """Write OUT/model.attn and OUT/model.safetensors from a Hugging Face model directory;
    returns the spec's path."""
    spec, weights, fam = convert(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(weights, out / WEIGHTS_FILE, {"attndsl_hf_family": fam.name})
    atomic_write_bytes(out / SPEC_FILE, spec.encode("utf-8"))
    return out / SPEC_FILE


def from_hf(directory: str | Path, backend: str = "numpy", **options: Any) -> Model:
    """A compiled Model of a Hugging Face model directory (no files written)."""
    _, graph, weights, _ = _convert(Path(directory))
    model = compile_spec(graph, backend=backend, **options)
    model.load_state_dict(weights)
    return model


# -- export -----------------------------------------------------------------------------------

def export_hf(model: Model, out: str | Path) -> Path:
    """Write a Hugging Face directory (config.json + model.safetensors) for a model compiled
    from a spec that `import_hf` wrote: its model name is the family's model_type and its
    constants are the config keys."""
    state = model.state_dict()
    model_type = str(model.graph.meta.get("name", ""))
    cfg = {**model.graph.meta.get("consts", {}), "model_type": model_type}
    fam = next((f for f in FAMILIES if model_type in f.model_types), None)
    if fam is None:
        raise HFError(f"export-hf writes specs of the families import-hf writes (model "
                      f"{', '.join(t for f in FAMILIES for t in f.model_types)}); this spec's "
                      f"model is {model_type or 'unnamed'!r}")
    names = set(state)
    rows = expand(fam.table(cfg, names), fam, cfg)
    unmapped = sorted(names - {o for r in rows for o in r.ours})
    if unmapped:
        raise HFError(f"'{unmapped[0]}' has no Hugging Face name in the {fam.name} table; was "
                      "this spec written by import-hf?")
    arch, prefixed = fam.architecture(names)
    if model_type == "mistral":
        arch = "MistralForCausalLM"
    tensors: dict[str, np.ndarray] = {}
    for r in rows:
        if r.ours and all(o in state for o in r.ours):
            a = np.concatenate([np.asarray(state[o], np.float32) for o in r.ours], axis=0)
            hf = r.hf if not prefixed or r.hf.startswith(fam.head_rows) else fam.prefix + r.hf
            tensors[hf] = np.ascontiguousarray(a.T if r.transpose else a)
    config = {**fam.export_config(cfg, names), "architectures": [arch]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(tensors, out / WEIGHTS_FILE, {"format": "pt"})
    atomic_write_bytes(out / "config.json", json.dumps(config, indent=2).encode("utf-8"))
    return out
