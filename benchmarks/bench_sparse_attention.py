"""Sliding-window attention with the blocked kernels vs dense masked attention, and dense
causal attention tiled vs untiled (issue 8's pattern-selection targets).

    python benchmarks/bench_sparse_attention.py [--seq 2048 4096 8192 16384 32768]
                                                [--backends numpy torch] [--repeats 2]
                                                [--kinds alone layer]

`pattern=causal & window(256)`, B=1, 12 heads of 64, each configuration in a fresh
subprocess (see bench_attention_variants.measure): forward time (median) and the peak
memory the forward adds. Two kinds: the attention alone (`sdpa(q, k, v, pattern=...)` on
given q, k, v: what the kernels themselves cost) and one attention layer (`attention(x, 12,
...)` with d=768: its Q/K/V and output projections, the same for every kernel, on top).
`auto` is what the compiler picks (the blocked kernels here); `dense` forces one [B, H, T, T]
score buffer (NumPy) or SDPA with a boolean mask (torch) and is skipped where it would need
more than --dense-limit GiB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention_variants import measure  # noqa: E402

SPECS = {
    "layer": """model bench {{
    input x: float[B, T, 768]
    output y = attention(x, 12, pattern={pattern})
}}""",
    "alone": """model bench {{
    input q: float[B, 12, T, 64]
    input k: float[B, 12, T, 64]
    input v: float[B, 12, T, 64]
    output y = sdpa(q, k, v, pattern={pattern})
}}"""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dense-limit", type=float, default=8.0,
                    help="skip dense runs whose score buffer exceeds this many GiB")
    ap.add_argument("--kinds", nargs="+", choices=list(SPECS), default=["alone", "layer"])
    args = ap.parse_args()
    for kind in args.kinds:
        window = SPECS[kind].format(pattern="causal & window(256)")
        print(f"\n{kind}:\n| backend | T | window auto ms | +MiB | window dense ms | +MiB "
              "| dense/auto time | dense/auto memory |")
        print("|---|---|---|---|---|---|---|---|")
        for backend in args.backends:
            for seq in args.seq:
                auto = measure(backend, seq, window, args.repeats, "auto")
                scores_gib = 12 * seq * seq * 4 / 2**30
                if scores_gib * (1 if backend == "numpy" else 0.25) > args.dense_limit:
                    dense_cols = f"skipped ({scores_gib:.0f} GiB of scores) | | |"
                else:
                    dense = measure(backend, seq, window, args.repeats, "dense")
                    dense_cols = (f"{dense['seconds'] * 1e3:.0f} | {dense['peak'] / 2**20:.0f} | "
                                  f"{dense['seconds'] / auto['seconds']:.1f} | "
                                  f"{dense['peak'] / max(auto['peak'], 1):.1f}")
                print(f"| {backend} | {seq} | {auto['seconds'] * 1e3:.0f} | "
                      f"{auto['peak'] / 2**20:.0f} | {dense_cols} |", flush=True)
    causal = SPECS["layer"].format(pattern="causal")
    print("\nlayer, plain causal:\n| backend | T | causal tiled ms | +MiB | causal dense ms | +MiB |")
    print("|---|---|---|---|---|---|")
    for seq in (4096, 8192):
        tiled = measure("numpy", seq, causal, args.repeats, "tiled")
        dense = measure("numpy", seq, causal, args.repeats, "dense")
        print(f"| numpy | {seq} | {tiled['seconds'] * 1e3:.0f} | {tiled['peak'] / 2**20:.0f} | "
              f"{dense['seconds'] * 1e3:.0f} | {dense['peak'] / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
