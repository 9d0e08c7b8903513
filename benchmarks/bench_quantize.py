"""Post-training int8 weight quantization on nanoGPT's CPU configuration: validation loss
before and after, parameter bytes, and forward time, on NumPy and PyTorch.

    python benchmarks/bench_quantize.py [--data FILE] [--steps 2000]

Trains `specs/nanogpt.attn` (4 layers, 4 heads, d=128, block 64) on the PyTorch backend for
`--steps` iterations (batch 12), then evaluates the float model and `attndsl.quantize(model)`
on the same `--eval-iters` validation batches on each backend, and times a forward pass
(batch 12 x 64 tokens) of each in alternating rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import attndsl
from attndsl.training.data import load_text
from attndsl.training.losses import cross_entropy_numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_backends import trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "nanogpt.attn"


def val_loss(model: attndsl.Model, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([cross_entropy_numpy(model.to_numpy(model(tokens=x))["logits"], y)
                          for x, y in batches]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "attndsl" / "data" / "tiny_shakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    text = load_text(args.data)
    run = trainer(text, "torch", args.steps, 0, 1, args.seed)     # nanoGPT's CPU setup
    model, data = run.model, run.data
    config = {"vocab": data.tokenizer.vocab_size}
    t0 = time.perf_counter()
    run.run(progress=False)
    print(f"data: {args.data} ({len(text):,} characters); trained {args.steps} steps in "
          f"{time.perf_counter() - t0:.0f} s")
    weights = model.state_dict()
    rng = np.random.default_rng(0)
    batches = [data.get_batch("val", 12, 64, rng) for _ in range(args.eval_iters)]
    print("| backend | model | val loss | parameters | forward ms (12 x 64) |")
    print("|---|---|---|---|---|")
    for backend in ("numpy", "torch"):
        base = attndsl.compile(SPEC, backend=backend, config=config)
        base.load_state_dict(weights)
        quant = attndsl.quantize(base)
        report = quant.quantize_report
        x = batches[0][0]
        times: dict[str, list[float]] = {"float32": [], "int8": []}
        for _ in range(args.rounds):
            for name, m in (("float32", base), ("int8", quant)):
                m(tokens=x)
                t = time.perf_counter()
                for _ in range(10):
                    m(tokens=x)
                times[name].append((time.perf_counter() - t) / 10 * 1e3)
        for name, m, size in (("float32", base, report.bytes_before),
                              ("int8", quant, report.bytes_after)):
            print(f"| {backend} | {name} | {val_loss(m, batches):.4f} | "
                  f"{size / 2 ** 20:.2f} MiB | {statistics.median(times[name]):.2f} |")
    print(f"\n{report}")


if __name__ == "__main__":
    main()
