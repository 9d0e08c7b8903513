"""The NumPy memory plan: predicted peaks against a real forward, with and without the plan.

    python benchmarks/bench_memory_plan.py [--rounds 3]

For GPT-2 small at T=1024 (with the LM head, and `outputs=["hidden"]` without it) and
BERT-base at T=512, B=1, float32: the naive peak (a buffer per tensor), the liveness lower
bound and the planned peak (`attndsl.passes.memory_plan.memory_report`), the measured peak
of one forward with the plan and with the plan switched off (tracemalloc, which sees every
NumPy allocation; after a warm-up call), and the median forward time of each, interleaved
over --rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

import attndsl
from attndsl.passes.memory_plan import memory_report

ROOT = Path(__file__).resolve().parents[1]
CASES = [("gpt", 1024, None), ("gpt", 1024, ["hidden"]), ("bert", 512, None)]


def peak(model, inputs) -> int:
    tracemalloc.start()
    try:
        model(**inputs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def timed(model, inputs) -> float:
    t0 = time.perf_counter()
    model(**inputs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    mib = 2 ** 20
    print("| spec | T | outputs | naive MiB | lower bound MiB | planned MiB | planned / bound "
          "| naive / planned | measured MiB | measured / planned | no plan: measured MiB "
          "| ms planned | ms no plan |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for spec, seq, outputs in CASES:
        model = attndsl.compile(ROOT / "specs" / f"{spec}.attn", outputs=outputs, seed=0)
        rng = np.random.default_rng(0)
        inputs = {n: rng.integers(0, 2, (1, seq)) for n in model.graph.inputs}
        if "attention_mask" in inputs:
            inputs["attention_mask"] = np.ones((1, seq), bool)
        env = {"B": 1, "T": seq}
        r = memory_report(model.graph, env)
        model(**inputs)
        plan = model.program._plan
        planned_peak = peak(model, inputs)
        model.program._plan = (None,)
        plain_peak = peak(model, inputs)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (True, False):
                model.program._plan = plan if on else (None,)
                times[on].append(timed(model, inputs))
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {spec} | {seq} | {','.join(outputs) if outputs else 'all'} "
              f"| {r.naive / mib:.0f} | {r.lower_bound / mib:.1f} | {r.planned / mib:.1f} "
              f"| {r.planned / r.lower_bound:.2f} | {r.naive / r.planned:.1f} "
              f"| {planned_peak / mib:.1f} | {planned_peak / r.planned:.2f} "
              f"| {plain_peak / mib:.1f} | {ms[True]:.0f} | {ms[False]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
