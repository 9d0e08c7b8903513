"""Shared test helpers: the repo root, spec discovery, tiny configs and random inputs.

Imported by conftest.py and by test modules (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = REPO_ROOT / "specs"

# Tiny configurations (constant overrides) per spec stem; a spec missing here is skipped.
TINY_CONFIGS: dict[str, dict[str, int]] = {
    "gpt": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64),
    "nanogpt": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2),
    "bert": dict(vocab=97, max_pos=32, d_model=32, heads=4, layers=2, d_ff=64),
    "transformer": dict(vocab=97, ctx=32, d_model=32, heads=4, enc_layers=2, dec_layers=2,
                        d_ff=64),
    "vit": dict(img=16, patch=4, channels=3, d_model=32, heads=4, layers=2, d_ff=64,
                classes=10),
    "llama": dict(vocab=97, ctx=32, d_model=32, heads=4, kv_heads=2, layers=2, d_ff=48),
    "alibi_gpt": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64),
    "t5": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64),
    "bahdanau": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64),
    "linear_transformer": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64),
    "performer": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64, features=16),
    "switch_gpt": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, experts=4),
    "moe_gpt": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=48, experts=4),
    "conformer": dict(n_feats=8, d_model=32, heads=4, layers=2, kernel=5, max_rel=8, classes=6),
    "reformer": dict(vocab=97, ctx=32, d_model=32, heads=4, layers=2, d_ff=64, buckets=4,
                     chunk=4),
    "transformer_xl": dict(vocab=97, d_model=32, heads=4, layers=2, d_ff=64, mem_len=8),
    "compressive": dict(vocab=97, d_model=32, heads=4, layers=2, d_ff=64, mem_len=4, cmem_len=4,
                        rate=2),
}

# Specs with a causal stream: (input whose future positions must not leak, output).
CAUSAL_STREAMS: dict[str, tuple[str, str]] = {
    "gpt": ("tokens", "logits"),
    "nanogpt": ("tokens", "logits"),
    "transformer": ("tgt", "logits"),
    "llama": ("tokens", "logits"),
    "alibi_gpt": ("tokens", "logits"),
    "t5": ("tgt", "logits"),
    "bahdanau": ("tgt", "logits"),
    "linear_transformer": ("tokens", "logits"),
    "performer": ("tokens", "logits"),
    "reformer": ("tokens", "logits"),
    "transformer_xl": ("tokens", "logits"),
    "compressive": ("tokens", "logits"),
}


# Small specs exercising single ops (shared by the NumPy reference tests and the backend
# equivalence tests).
OPS_SPEC = """
model ops {
    input x: float[B, T, 8]
    input ids: int[B, T]
    output sm = softmax(x)
    output sm0 = softmax(x, axis=1)
    output ln = layer_norm(x, eps=1e-5)
    output rn = rms_norm(x, eps=1e-6)
    output gt = gelu(x, approximate="tanh")
    output ge = gelu(x, approximate="none")
    output si = silu(x)
    output lin = linear(x, 5)
    output emb = embedding(ids, 13, 8)
    output pe = sinusoidal(T, 8)
    output arith = (x * 2 - 1) / 4 + x ** 2
    output red = mean(x, axis=-1, keepdims=true) + sum(x, axis=1, keepdims=true)
}
"""

ATTN_SPEC = """
model attn {
    input q: float[B, 2, T, 8]
    input k: float[B, 2, T, 8]
    input v: float[B, 2, T, 8]
    input pad: bool[B, T]
    output a_full = sdpa(q, k, v)
    output a_causal = sdpa(q, k, v, pattern=causal)
    output a_causal_window3 = sdpa(q, k, v, pattern=causal & window(3))
    output a_global0 = sdpa(q, k, v, pattern=window(2) | global([0]))
    output a_prefix_lm = sdpa(q, k, v, pattern=prefix(4) | causal)
    output a_dilated = sdpa(q, k, v, pattern=dilated(2, 3))
    output padded = sdpa(q, k, v, pattern=causal, key_padding=pad)
    output scaled = sdpa(q, k, v, scale=0.1)
    output by_hand = softmax(q @ transpose(k) / sqrt(8)) @ v
}
"""

# Attention variants (grouped heads, score functions, biases, rope) on the sdpa built-in.
VARIANTS_SPEC = """
model variants {
    input q: float[B, 4, T, 8]
    input k: float[B, 4, T, 8]
    input v: float[B, 4, T, 8]
    input k1: float[B, 1, T, 8]
    input v1: float[B, 1, T, 8]
    input k2: float[B, 2, T, 8]
    input v2: float[B, 2, T, 8]
    input pad: bool[B, T]
    input bias: float[B, 1, T, T]
    output mqa = sdpa(q, k1, v1, pattern=causal)
    output gqa = sdpa(q, k2, v2)
    output alibi_causal = sdpa(q, k, v, pattern=causal, bias=alibi())
    output t5 = sdpa(q, k, v, bias=t5_bias(buckets=8, max_distance=16))
    output t5_causal = sdpa(q, k2, v2, pattern=causal, bias=t5_bias(bidirectional=false))
    output rope_half = sdpa(q, k2, v2, pattern=causal, rope=rope(theta=100))
    output rope_interleaved = sdpa(q, k, v, rope=rope(layout="interleaved", dims=4,
                                                      scaling=ntk(2)))
    output rope_linear = sdpa(q, k, v, pattern=causal, rope=rope(scaling=linear(2)))
    output rope_llama3 = sdpa(q, k, v, rope=rope(scaling=llama3(factor=4,
                                                               original_max_position=4)))
    output relative_causal = sdpa(q, k, v, pattern=causal, bias=relative(max_distance=2))
    output tensor_bias = sdpa(q, k, v, pattern=causal, bias=alibi() + bias, key_padding=pad)
    output additive = sdpa(q, k1, v1, score=additive, pattern=causal)
    output bilinear = sdpa(q, k, v, score=bilinear, pattern=causal)
    output dot = sdpa(q, k, v, score=dot, pattern=window(2))
}
"""

# The smaller language features (issue 7): ellipsis/negative/size slicing, sizes as numbers,
# int arithmetic, bool logic, top_k, one_hot, two-tensor max/min, model sizes in blocks.
GAPS_SPEC = """
block by_length(x) {
    return x / T
}

model gaps {
    input x: float[B, T, 8]
    input ids: int[B, T]
    output ellipsis = x[..., :4] + x[..., -4:]
    output last = x[:, -1]
    output tail = x[:, T - 2:]
    output positions = arange(T) / T
    output next_ids = ids + 1
    output mask = ~greater(x[..., 0], 0) & greater(x[..., 1], 0) | equal(ids, 3)
    output top = top_k(x, 3)[0]
    output top_idx = top_k(x, 3)[1]
    output hot = one_hot(ids, 5)
    output elementwise = max(x, x[..., :1]) + min(x, 0.5)
    output in_block = by_length(x)
    output math = sin(x) * cos(x) + softplus(x) + sign(x) + clip(x, min=-0.5, max=0.5)
    output scans = cumsum(x, axis=1) + gather(x, top_k(x, 8)[1], 2)
    output norms = layer_norm(x, affine=false) + rms_norm(x, bias=true)
}
"""

OP_SPECS = {"ops": OPS_SPEC, "attn": ATTN_SPEC, "variants": VARIANTS_SPEC, "gaps": GAPS_SPEC}


def spec_paths() -> list[Path]:
    """Every spec in specs/, sorted (discovered, so new specs are tested automatically)."""
    return sorted(SPECS_DIR.glob("*.attn"))


def tiny_config(stem: str) -> dict[str, int]:
    """The tiny config for a spec, or skip the test with a clear reason."""
    if stem not in TINY_CONFIGS:
        pytest.skip(f"no tiny config for {stem}")
    return dict(TINY_CONFIGS[stem])


def set_args(config: dict[str, int]) -> list[str]:
    """A config as CLI `--set name=value` arguments."""
    out: list[str] = []
    for k, v in config.items():
        out += ["--set", f"{k}={v}"]
    return out


def input_dims(graph, batch: int = 2, seq: int = 12) -> dict[str, int]:
    """Sizes for the symbolic input dims: the batch axis gets `batch`, the sequence dims
    `seq`, `seq - 3`, ... (so encoder and decoder lengths differ), capped by their bounds."""
    bounds = graph.meta.get("dim_bounds", {})
    env: dict[str, int] = {}
    for nid in graph.inputs.values():
        for axis, d in enumerate(graph.nodes[nid].type.shape):
            for s in sorted(d.symbols()):
                if s in env:
                    continue
                if axis == 0:
                    env[s] = batch
                else:
                    n_seq = sum(1 for k in env if k != "B")
                    env[s] = min(max(1, seq - 3 * n_seq), bounds.get(s, seq))
    return env


def random_inputs(graph, batch: int = 2, seq: int = 12, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Random inputs of the declared types: int ids below the size of every embedding table
    they index, bool padding masks with some padded keys, float32 normals."""
    rng = np.random.default_rng(seed)
    env = input_dims(graph, batch, seq)
    out: dict[str, np.ndarray] = {}
    for name, nid in graph.inputs.items():
        ttype = graph.nodes[nid].type
        shape = tuple(int(d.evaluate(env)) for d in ttype.shape)
        if ttype.dtype == "int":
            tables = [int(graph.nodes[n.inputs[0]].type.shape[0].as_int())
                      for n in graph.nodes.values() if n.op == "embedding" and n.inputs[1] == nid]
            out[name] = rng.integers(0, min(tables, default=2), size=shape)
        elif ttype.dtype == "bool":
            mask = np.ones(shape, dtype=bool)
            if len(shape) == 2 and shape[-1] > 2:
                mask[-1, -(shape[-1] // 3):] = False   # pad the tail of the last batch row
            out[name] = mask
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out
