"""Loss and gradients of one batch, NumPy (the compiler's reverse mode) against the PyTorch
backend (autograd), interleaved in one process, on nanoGPT's CPU configuration (4 layers,
4 heads, d=128, block 64, batch 12, vocabulary 65), the same weights and batch.

    python benchmarks/bench_value_and_grad.py [--rounds 5] [--repeats 10]

Prints each backend's median and minimum ms per call and the NumPy program's peak traced
memory (tracemalloc) for one call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

import attndsl
from attndsl.training.losses import loss_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"vocab": 65, "ctx": 64, "d_model": 128, "heads": 4, "layers": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    spec = ROOT / "specs" / "nanogpt.attn"
    numpy_model = attndsl.compile(spec, backend="numpy", config=CONFIG, seed=0)
    torch_model = attndsl.compile(spec, backend="torch", config=CONFIG, seed=0)
    numpy_model.load_state_dict(torch_model.state_dict())
    rng = np.random.default_rng(0)
    tokens, targets = rng.integers(0, 65, (2, 12, 64))
    loss = loss_spec(numpy_model.graph)
    runs = {"numpy": lambda: numpy_model.program.value_and_grad({"tokens": tokens}, targets,
                                                                loss),
            "torch": lambda: torch_model.value_and_grad(targets, tokens=tokens)}
    values = {name: run() for name, run in runs.items()}            # warm-up, and a check
    assert abs(values["numpy"][0] - values["torch"][0]) < 1e-4 * abs(values["torch"][0])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            for _ in range(args.repeats):
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
    tracemalloc.start()
    runs["numpy"]()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:6s} median {med[name] * 1e3:6.1f} ms  min {min(ts) * 1e3:6.1f} ms")
    print(f"numpy / torch (medians): {med['numpy'] / med['torch']:.2f}x; NumPy peak traced "
          f"memory of one call {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
