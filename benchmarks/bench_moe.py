"""Mixture of experts vs the dense model of the same active parameters, on PyTorch: time
per training step (forward, backward, AdamW), in one run.

    python benchmarks/bench_moe.py [--rounds 5] [--steps 10]

MoE: `specs/moe_gpt.attn`-style layers with 8 SwiGLU experts of width d_ff, top-2 routing
(capacity 1.5, aux loss 0.01). Dense: the same model with one SwiGLU of width 2 d_ff per
layer — the parameters a token actually uses. The baseline "workaround" is what a spec
without `moe` has to do: run every expert on every token and mask with the gates (8 expert
FFNs per token), shown for comparison. Batch 8 x 128 tokens, d_model 256, 4 layers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import attndsl
from attndsl.training.data import TextDataset, load_text
from attndsl.training.tokenizers import make_tokenizer
from attndsl.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
MODEL = """
const d_model = 256
const d_ff = 512
block swiglu(x, width) {{
    h = silu(linear(x, width, bias=false)) * linear(x, width, bias=false)
    return linear(h, d_model, bias=false)
}}
block expert(x) {{
    return swiglu(x, d_ff)
}}
model bench {{
    input tokens: int[B, T <= 512]
    x = embedding(tokens, vocab, d_model)
    repeat 4 as layers {{
        x = x + attention(rms_norm(x), 4, pattern=causal, rope=rope(), proj_bias=false)
        h = rms_norm(x)
{ffn}
    }}
    output logits = linear(rms_norm(x), vocab, bias=false)
}}
{train}"""
MOE = MODEL.format(ffn="        x = x + moe(h, experts=8, expert=expert, top_k=2, capacity_factor=1.5)",
                   train="train {\n    loss = cross_entropy(logits) + 0.01 * aux\n}\n")
DENSE = MODEL.format(ffn="        x = x + swiglu(h, 2 * d_ff)", train="")
ALL_EXPERTS = MODEL.format(ffn="""\
        p = softmax(linear(h, 8, bias=false))                   # (B, T, 8)
        top = max(p, -1, keepdims=true)
        y = swiglu(h, d_ff) * 0.0
        repeat 8 as experts {
            y = y + swiglu(h, d_ff) * p[..., 0:1] * cast(greater(p[..., 0:1], top * 0.5), "float")
        }
        x = x + y""", train="")


def trainer(text: str, spec: str) -> Trainer:
    tok = make_tokenizer("char", text)
    model = attndsl.compile(spec.replace("vocab", str(tok.vocab_size)), backend="torch", seed=0)
    cfg = TrainConfig.from_spec(model.graph.meta.get("train", {}), steps=10**6, batch=8,
                                seq=128, eval_every=0, schedule="constant", lr=3e-4)
    return Trainer(model, TextDataset(text, tok), cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "attndsl" / "data" / "tiny_shakespeare.txt"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    text = load_text(args.data)
    runs = {"moe (8 experts, top-2)": trainer(text, MOE), "dense (2 x d_ff)": trainer(text, DENSE),
            "every expert on every token": trainer(text, ALL_EXPERTS)}
    for t in runs.values():
        t.train_step()                                          # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):                                # interleaved
        for name, t in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                t.train_step()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times["dense (2 x d_ff)"])
    print("| model | params | ms per step (median) | x dense |")
    print("|---|---|---|---|")
    for name, t in runs.items():
        ms = statistics.median(times[name])
        print(f"| {name} | {t.model.stats.params:,} | {ms:.1f} | {ms / base:.2f} |")


if __name__ == "__main__":
    main()
