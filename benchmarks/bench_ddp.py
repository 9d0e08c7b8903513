"""Data-parallel overhead: `attndsl train specs/nanogpt.attn` with 1 process (batch 12) and
with 2 ranks (`--nproc 2`, batch 6 each: the same global batch), alternating runs, tokens/s
from the trainer's own summary line.

    python benchmarks/bench_ddp.py [--steps 200] [--rounds 3]

On a 2-core machine no speed-up is expected (the two ranks share the cores that one
process's GEMMs already use); the point is the measured overhead of DDP over gloo.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tokens_per_second(nproc: int, batch: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "attndsl", "train", str(ROOT / "specs" / "nanogpt.attn"),
               "--steps", str(steps), "--batch", str(batch), "--seq", "64", "--eval-every",
               "0", "--sample", "0", "--quiet", "--nproc", str(nproc), "--out", out]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(re.search(r"([\d,]+) tok/s", done.stdout).group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"1 process, batch 12": [], "2 ranks, batch 6 each": []}
    for _ in range(args.rounds):
        runs["1 process, batch 12"].append(tokens_per_second(1, 12, args.steps))
        runs["2 ranks, batch 6 each"].append(tokens_per_second(2, 6, args.steps))
    for name, values in runs.items():
        print(f"{name}: {statistics.median(values):,.0f} tok/s (median of {args.rounds}; "
              f"{', '.join(f'{v:,.0f}' for v in values)})")
    one, two = (statistics.median(v) for v in runs.values())
    print(f"2 ranks / 1 process: {two / one:.2f}x")


if __name__ == "__main__":
    main()
