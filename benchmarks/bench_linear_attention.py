"""Causal linear attention (elu+1, FAVOR+) against causal softmax attention on NumPy, as T
grows: time and memory should grow linearly in T for linear attention.

    python benchmarks/bench_linear_attention.py [--seq 1024 2048 4096 8192 16384]

One attention layer (B=1, d=768, 12 heads of 64, projections included), each configuration
in a fresh subprocess (bench_attention_variants.measure): median forward time and the peak
memory the forward adds. Softmax runs as the compiler picks (`auto`: the tiled kernel at
long T, whose memory is O(T * block)) and, up to --dense-limit GiB of scores, `dense`
(one [B, H, T, T] buffer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention_variants import measure  # noqa: E402

SPEC = """model bench {{
    input x: float[B, T, 768]
    output y = attention(x, 12, pattern=causal{kernel})
}}"""
VARIANTS = {"elu+1": ", kernel=elu_plus_one", "favor m=256": ", kernel=favor(m=256)",
            "softmax": ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dense-limit", type=float, default=4.0)
    args = ap.parse_args()
    print("| T | elu+1 ms | +MiB | favor m=256 ms | +MiB | softmax auto ms | +MiB "
          "| softmax dense ms | +MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    first: dict[str, dict[str, float]] = {}
    for seq in args.seq:
        cols = []
        for name, kernel in VARIANTS.items():
            r = measure("numpy", seq, SPEC.format(kernel=kernel), args.repeats)
            first.setdefault(name, {**r, "seq": seq})
            cols.append(f"{r['seconds'] * 1e3:.0f} | {r['peak'] / 2**20:.0f}")
        if 12 * seq * seq * 4 / 2**30 > args.dense_limit:
            cols.append("skipped | ")
        else:
            r = measure("numpy", seq, SPEC.format(kernel=""), args.repeats, "dense")
            cols.append(f"{r['seconds'] * 1e3:.0f} | {r['peak'] / 2**20:.0f}")
        print(f"| {seq} | " + " | ".join(cols) + " |", flush=True)


if __name__ == "__main__":
    main()
