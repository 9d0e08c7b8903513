"""Every shipped spec builds, and its parameter count matches a closed form written here
independently of the compiler; FLOPs of GPT-2 match the standard estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import attndsl
from attndsl.ir.stats import compute_stats

SPECS = Path(__file__).resolve().parent.parent / "specs"


def layer_norm(d: int) -> int:
    return 2 * d


def linear(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def attention(d: int) -> int:
    return 4 * linear(d, d)


def ffn(d: int, d_ff: int) -> int:
    return linear(d, d_ff) + linear(d_ff, d)


def gpt_params(vocab: int = 50257, ctx: int = 1024, d_model: int = 768, layers: int = 12,
               **_: Any) -> int:
    """GPT-2: token + position embeddings, pre-LN layers, final LN, head tied to wte."""
    layer = layer_norm(d_model) + attention(d_model) + layer_norm(d_model) + ffn(d_model,
                                                                                  4 * d_model)
    return vocab * d_model + ctx * d_model + layers * layer + layer_norm(d_model)


def bert_params(vocab: int = 30522, max_pos: int = 512, type_vocab: int = 2, d_model: int = 768,
                layers: int = 12, **_: Any) -> int:
    """BERT: 3 embeddings + LN, post-LN layers, pooler, MLM head (decoder tied, own bias)."""
    d_ff = 4 * d_model
    embeddings = (vocab + max_pos + type_vocab) * d_model + layer_norm(d_model)
    layer = attention(d_model) + layer_norm(d_model) + ffn(d_model, d_ff) + layer_norm(d_model)
    pooler = linear(d_model, d_model)
    mlm = linear(d_model, d_model) + layer_norm(d_model) + vocab
    return embeddings + layers * layer + pooler + mlm


def transformer_params(vocab: int = 37000, d_model: int = 512, enc_layers: int = 6,
                       dec_layers: int = 6, d_ff: int = 2048, **_: Any) -> int:
    """Transformer base: one shared embedding (encoder, decoder and pre-softmax linear)."""
    enc = attention(d_model) + layer_norm(d_model) + ffn(d_model, d_ff) + layer_norm(d_model)
    dec = 2 * (attention(d_model) + layer_norm(d_model)) + ffn(d_model, d_ff) + layer_norm(
        d_model)
    return vocab * d_model + enc_layers * enc + dec_layers * dec


def vit_params(img: int = 224, patch: int = 16, channels: int = 3, d_model: int = 768,
               layers: int = 12, d_ff: int = 3072, classes: int = 1000, **_: Any) -> int:
    """ViT: patch projection, [CLS] token, position table, pre-LN layers, LN, head."""
    patches = (img // patch) ** 2
    embed = linear(channels * patch * patch, d_model) + d_model + (patches + 1) * d_model
    layer = layer_norm(d_model) + attention(d_model) + layer_norm(d_model) + ffn(d_model, d_ff)
    return embed + layers * layer + layer_norm(d_model) + linear(d_model, classes)


def nanogpt_params(vocab: int = 65, ctx: int = 64, d_model: int = 128, layers: int = 4,
                   **_: Any) -> int:
    """nanoGPT's Shakespeare configuration: the GPT-2 architecture at a small size."""
    return gpt_params(vocab, ctx, d_model, layers)


def llama_params(vocab: int = 32000, d_model: int = 768, heads: int = 12, kv_heads: int = 4,
                 layers: int = 12, d_ff: int = 2048, **_: Any) -> int:
    """LLaMA: RMSNorm weights only, q/o d x d and k/v d x kv_heads*head_dim (GQA), SwiGLU's
    three matrices, no biases, untied head."""
    kv = kv_heads * (d_model // heads)
    attn = 2 * d_model * d_model + 2 * d_model * kv
    layer = d_model + attn + d_model + 3 * d_model * d_ff
    return 2 * vocab * d_model + layers * layer + d_model


def alibi_gpt_params(vocab: int = 50257, d_model: int = 768, layers: int = 12, **_: Any) -> int:
    """GPT-2 without the position table: ALiBi adds no parameters."""
    return gpt_params(vocab, 0, d_model, layers)


def t5_params(vocab: int = 32128, d_model: int = 512, heads: int = 8, layers: int = 6,
              d_ff: int = 2048, **_: Any) -> int:
    """T5: one shared embedding (tied head), bias-free projections, RMSNorm weights, one
    [32, heads] relative-bias table per stack, final norms of both stacks."""
    attn = 4 * d_model * d_model
    ffn_ = 2 * d_model * d_ff
    enc = 2 * d_model + attn + ffn_
    dec = 3 * d_model + 2 * attn + ffn_
    return vocab * d_model + layers * (enc + dec) + 2 * 32 * heads + 2 * d_model


def bahdanau_params(vocab: int = 8000, d_model: int = 256, heads: int = 4, layers: int = 2,
                    d_ff: int = 1024, **_: Any) -> int:
    """Two embeddings, post-LN encoder/decoder layers; the additive cross-attention adds Wq,
    Wk [hd, hd] and v [hd]; untied head with bias."""
    hd = d_model // heads
    enc = attention(d_model) + layer_norm(d_model) + ffn(d_model, d_ff) + layer_norm(d_model)
    dec = 2 * attention(d_model) + 2 * hd * hd + hd + 3 * layer_norm(d_model) + ffn(d_model,
                                                                                    d_ff)
    return 2 * vocab * d_model + layers * (enc + dec) + linear(d_model, vocab)


def linear_transformer_params(vocab: int = 256, ctx: int = 4096, d_model: int = 512,
                              layers: int = 6, d_ff: int | None = None, **_: Any) -> int:
    """Token and position tables, pre-LN layers, an untied head with bias; kernelized
    attention (elu+1 or FAVOR+ random features) adds no parameters."""
    d_ff = d_ff or 4 * d_model
    layer = 2 * layer_norm(d_model) + attention(d_model) + ffn(d_model, d_ff)
    return ((vocab + ctx) * d_model + layers * layer + layer_norm(d_model)
            + linear(d_model, vocab))


def switch_gpt_params(vocab: int = 50257, ctx: int = 1024, d_model: int = 768,
                      layers: int = 12, d_ff: int | None = None, experts: int = 8,
                      **_: Any) -> int:
    """GPT-2 layout with every FFN an moe: a bias-free router [E, d] and E FFNs; untied
    bias-free head."""
    d_ff = d_ff or 4 * d_model
    layer = (2 * layer_norm(d_model) + attention(d_model) + experts * d_model
             + experts * ffn(d_model, d_ff))
    return ((vocab + ctx) * d_model + layers * layer + layer_norm(d_model)
            + linear(d_model, vocab, bias=False))


def moe_gpt_params(vocab: int = 32000, d_model: int = 512, layers: int = 8, d_ff: int = 1408,
                   experts: int = 8, **_: Any) -> int:
    """RMSNorm (weight only), bias-free attention, router [E, d], E SwiGLU experts (three
    bias-free matrices each), untied bias-free head."""
    layer = 2 * d_model + 4 * d_model * d_model + experts * d_model + experts * 3 * d_model * d_ff
    return 2 * vocab * d_model + layers * layer + d_model


def conformer_params(n_feats: int = 80, d_model: int = 256, heads: int = 4, layers: int = 4,
                     d_ff: int | None = None, kernel: int = 31, max_rel: int = 64,
                     classes: int = 32, **_: Any) -> int:
    """Input projection; per block two pre-LN FFNs, pre-LN attention with a Shaw relative
    table [2k + 1, d_head], the convolution module (LN, pointwise 2d for the GLU, depthwise
    conv [d, 1, K] without bias, batch norm: weight, bias and the running mean and variance
    buffers, pointwise), a final LN; the frame classifier."""
    d_ff = d_ff or 4 * d_model
    two_ffn = 2 * (layer_norm(d_model) + ffn(d_model, d_ff))
    attn = layer_norm(d_model) + attention(d_model) + (2 * max_rel + 1) * (d_model // heads)
    conv = (layer_norm(d_model) + linear(d_model, 2 * d_model) + d_model * kernel
            + 4 * d_model + linear(d_model, d_model))
    layer = two_ffn + attn + conv + layer_norm(d_model)
    return linear(n_feats, d_model) + layers * layer + linear(d_model, classes)


def reformer_params(vocab: int = 256, ctx: int = 4096, d_model: int = 512, layers: int = 6,
                    d_ff: int | None = None, **_: Any) -> int:
    """As the linear transformer, but attention has no key projection (shared QK)."""
    return (linear_transformer_params(vocab, ctx, d_model, layers, d_ff)
            - layers * linear(d_model, d_model))


def transformer_xl_params(vocab: int = 256, d_model: int = 512, layers: int = 6,
                          d_ff: int | None = None, **_: Any) -> int:
    """Token table only (ALiBi: no position parameters), pre-LN layers, untied head; the
    memory is state, not parameters."""
    d_ff = d_ff or 4 * d_model
    layer = 2 * layer_norm(d_model) + attention(d_model) + ffn(d_model, d_ff)
    return vocab * d_model + layers * layer + layer_norm(d_model) + linear(d_model, vocab)


FORMULAS = {"gpt": gpt_params, "bert": bert_params, "transformer": transformer_params,
            "vit": vit_params, "nanogpt": nanogpt_params, "llama": llama_params,
            "alibi_gpt": alibi_gpt_params, "t5": t5_params, "bahdanau": bahdanau_params,
            "linear_transformer": linear_transformer_params,
            "performer": linear_transformer_params, "switch_gpt": switch_gpt_params,
            "moe_gpt": moe_gpt_params, "conformer": conformer_params,
            "reformer": reformer_params, "transformer_xl": transformer_xl_params,
            "compressive": transformer_xl_params}

# Published / independently verified totals.
KNOWN = {"gpt": 124_439_808, "bert": 110_104_890, "transformer": 63_082_496, "vit": 86_567_656,
         "nanogpt": 809_856,  # nanoGPT prints 0.80M (without wpe)
         "t5": 60_506_624,    # Hugging Face t5-small
         "alibi_gpt": 124_439_808 - 1024 * 768,   # GPT-2 small without wpe
         "llama": 124_668_672, "bahdanau": 9_854_912,
         "linear_transformer": 21_274_880, "performer": 21_274_880,   # summed by hand
         "switch_gpt": 559_795_200, "moe_gpt": 179_610_112, "conformer": 6_154_784,
         "reformer": 21_274_880 - 6 * (512 * 512 + 512),
         "transformer_xl": 21_274_880 - 4096 * 512, "compressive": 21_274_880 - 4096 * 512}

OVERRIDES = {
    "gpt": [{"layers": 2}, {"layers": 1, "d_model": 128, "heads": 4, "vocab": 1000, "ctx": 64}],
    "bert": [{"layers": 2}, {"layers": 1, "d_model": 64, "heads": 2, "vocab": 500}],
    "transformer": [{"enc_layers": 1, "dec_layers": 2}, {"d_model": 256, "heads": 4, "d_ff": 1024,
                                                         "enc_layers": 2, "dec_layers": 1}],
    "nanogpt": [{"layers": 1, "vocab": 97}],
    "vit": [{"layers": 2}, {"img": 32, "patch": 8, "d_model": 64, "heads": 4, "d_ff": 128,
                            "layers": 1, "classes": 10}],
    "llama": [{"layers": 1, "kv_heads": 1}, {"d_model": 64, "heads": 8, "kv_heads": 2,
                                             "d_ff": 96, "layers": 2, "vocab": 300}],
    "alibi_gpt": [{"layers": 2, "vocab": 1000}],
    "t5": [{"layers": 1, "heads": 4}, {"d_model": 64, "heads": 2, "d_ff": 128, "vocab": 500}],
    "bahdanau": [{"layers": 1, "heads": 8}],
    "linear_transformer": [{"layers": 2, "d_model": 64, "heads": 4, "ctx": 128}],
    "performer": [{"layers": 1, "features": 32}],
    "switch_gpt": [{"layers": 2, "experts": 4, "d_model": 64, "heads": 4, "vocab": 100}],
    "moe_gpt": [{"layers": 1, "experts": 16, "d_ff": 96}],
    "conformer": [{"layers": 1, "d_model": 64, "heads": 2, "kernel": 7, "max_rel": 4}],
    "reformer": [{"layers": 2, "d_model": 64, "heads": 4, "ctx": 256, "chunk": 16}],
    "transformer_xl": [{"layers": 1, "mem_len": 4, "d_model": 64, "heads": 2}],
    "compressive": [{"layers": 2, "cmem_len": 8, "rate": 2, "d_model": 64, "heads": 2}],
}


def test_every_spec_has_a_formula() -> None:
    assert sorted(p.stem for p in SPECS.glob("*.attn")) == sorted(FORMULAS)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_default_parameter_count(name: str) -> None:
    graph = attndsl.build(SPECS / f"{name}.attn")
    stats = compute_stats(graph)
    assert stats.params == FORMULAS[name]() == KNOWN[name]
    assert sum(stats.params_by_block.values()) == stats.params
    assert stats.param_bytes == 4 * stats.params
    assert graph.outputs and graph.meta.get("train")


@pytest.mark.parametrize("name,config", [(n, c) for n, cs in sorted(OVERRIDES.items())
                                         for c in cs])
def test_parameter_count_with_overrides(name: str, config: dict[str, int]) -> None:
    stats = compute_stats(attndsl.build(SPECS / f"{name}.attn", config=config))
    assert stats.params == FORMULAS[name](**config)


def test_string_config_values_are_numbers() -> None:
    stats = compute_stats(attndsl.build(SPECS / "gpt.attn", config={"layers": "2"}))
    assert stats.params == gpt_params(layers=2)


def test_gpt_parameter_names_per_layer() -> None:
    graph = attndsl.build(SPECS / "gpt.attn", config={"layers": 3})
    layer0 = sorted(n.split(".", 2)[2] for n in graph.params if n.startswith("layers.0."))
    for i in (1, 2):
        assert sorted(n.split(".", 2)[2] for n in graph.params
                      if n.startswith(f"layers.{i}.")) == layer0
    assert "layers.2.attn.q.weight" in graph.params
    assert "lm_head" not in graph.params and "logits.weight" not in graph.params


def test_tied_weights_are_shared_nodes() -> None:
    t = attndsl.build(SPECS / "transformer.attn", config={"enc_layers": 1, "dec_layers": 1})
    assert [n for n in t.params if "embed" in n] == ["embed.weight"]
    bert = attndsl.build(SPECS / "bert.attn", config={"layers": 1})
    assert "mlm.decoder.bias" in bert.params and "mlm.decoder.weight" not in bert.params


def test_gpt_flops_match_closed_form() -> None:
    """2 * N FLOPs per token for every linear (including the tied LM head) plus the
    attention scores and weighted sum, 4 * T^2 * d per layer, for B=1, T=1024."""
    d, layers, vocab, seq = 768, 12, 50257, 1024
    stats = compute_stats(attndsl.build(SPECS / "gpt.attn"))
    linear_weights = layers * (4 * d * d + 2 * d * 4 * d) + vocab * d
    expected = 2 * linear_weights * seq + layers * 4 * seq * seq * d
    flops = stats.flops.evaluate({"B": 1, "T": seq})
    assert abs(flops - expected) / expected < 0.01
    assert stats.evaluate({"B": 1, "T": seq})["flops"] == int(flops)


def test_flops_scale_with_batch() -> None:
    stats = compute_stats(attndsl.build(SPECS / "gpt.attn", config={"layers": 1}))
    one = stats.flops.evaluate({"B": 1, "T": 128})
    assert stats.flops.evaluate({"B": 4, "T": 128}) == 4 * one
    act = stats.activation_bytes
    assert act.symbols() == {"B", "T"}
    assert act.evaluate({"B": 2, "T": 128}) > act.evaluate({"B": 1, "T": 128})
