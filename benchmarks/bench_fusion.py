"""The -O2 fusion passes on the NumPy backend: GPT-2 small and BERT-base forwards (random
weights) with every -O2 pass, and without bias-activation fusion, residual-norm fusion or
both, timed interleaved in one process (the same weights and inputs), with each graph's
planned peak memory.

    python benchmarks/bench_fusion.py [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from attndsl.backends import get_backend

import attndsl
from attndsl.frontend import build
from attndsl.passes import PIPELINES, PassManager
from attndsl.passes.memory_plan import memory_report

ROOT = Path(__file__).resolve().parents[1]
CASES = [("gpt", 256), ("bert", 512)]
VARIANTS = {"-O2": (), "no bias-activation": ("fuse_bias_activation",),
            "no residual-norm": ("fuse_residual_norm",),
            "neither": ("fuse_bias_activation", "fuse_residual_norm")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for stem, seq in CASES:
        spec = ROOT / "specs" / f"{stem}.attn"
        model = attndsl.compile(spec, backend="numpy", seed=0)
        model._materialize()
        params = model.state_dict()
        programs, planned = {}, {}
        for name, off in VARIANTS.items():
            graph = PassManager([p for p in PIPELINES[2] if p[0] not in off]).run(build(spec))
            graph.meta["opt_level"] = 2
            programs[name] = get_backend("numpy").compile(graph, params, "float32", {})
            planned[name] = memory_report(graph, {"B": 1, "T": seq}).planned
        ids = np.random.default_rng(0).integers(0, 1000, (1, seq))
        kinds = [model.graph.nodes[i].type.dtype for i in model.graph.inputs.values()]
        inputs = {n: (ids if j == 0 else np.zeros_like(ids)) if kind == "int" else
                  np.ones((1, seq), bool)        # token ids, segment ids, no padding
                  for j, (n, kind) in enumerate(zip(model.graph.inputs, kinds))}
        base = programs["-O2"].run(inputs)
        for name, prog in programs.items():              # the same numbers, and a warm-up
            for k, v in prog.run(inputs).items():
                np.testing.assert_array_equal(v, base[k], err_msg=f"{name} {k}")
        times: dict[str, list[float]] = {n: [] for n in programs}
        for _ in range(args.rounds):
            for name, prog in programs.items():
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    prog.run(inputs)
                    times[name].append(time.perf_counter() - t)
        ref = statistics.median(times["-O2"])
        print(f"{stem} B=1 T={seq} (NumPy, float32; medians of {args.rounds} x "
              f"{args.repeats} interleaved runs)")
        print(f"{'variant':<22}{'ms':>9}{'x -O2':>8}{'planned MiB':>13}")
        for name in programs:
            m = statistics.median(times[name])
            print(f"{name:<22}{m * 1e3:9.1f}{m / ref:8.3f}{planned[name] / 2**20:13.1f}")


if __name__ == "__main__":
    main()
