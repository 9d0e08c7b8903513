"""nanoGPT's CPU configuration trained by attndsl on the NumPy backend (the compiler's
reverse mode and the array-module AdamW) against the PyTorch backend, in one run, with the
same initial weights, data order and settings.

    python benchmarks/bench_train_backends.py --data ../shared/data/shakespeare.txt

Config as `bench_train.py` (4 layers, 4 heads, d=128, block 64, batch 12, AdamW, cosine
schedule, clip 1.0, dropout 0). Reports the validation loss after `--steps` iterations (mean
of `--eval-iters` batches) and ms per iteration of each, then times both in alternating
blocks of 20 steps (`--rounds`), the robust ratio on a noisy machine.
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


def trainer(text: str, backend: str, steps: int, eval_every: int, eval_iters: int,
            seed: int) -> Trainer:
    tokenizer = make_tokenizer("char", text)
    model = attndsl.compile(ROOT / "specs" / "nanogpt.attn", backend=backend,
                            config={"vocab": tokenizer.vocab_size}, seed=seed)
    cfg = TrainConfig.from_spec(model.graph.meta["train"], steps=steps, batch=12, seq=64,
                                eval_every=eval_every, eval_iters=eval_iters, seed=seed)
    return Trainer(model, TextDataset(text, tokenizer), cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "attndsl" / "data" / "tiny_shakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    text = load_text(args.data)
    print(f"data: {args.data} ({len(text):,} characters), steps={args.steps}")
    results = {}
    for backend in ("torch", "numpy"):
        t = trainer(text, backend, args.steps, args.eval_every, args.eval_iters, args.seed)
        r = t.run(progress=False)
        results[backend] = r
        print(f"{backend:6s}: val loss {r.val_loss:.4f}, train loss {r.train_loss:.4f}, "
              f"{r.seconds_per_step * 1e3:.1f} ms/iter", flush=True)
    diff = results["numpy"].val_loss - results["torch"].val_loss
    ratio = results["numpy"].seconds_per_step / results["torch"].seconds_per_step
    print(f"val loss difference (numpy - torch) {diff:+.4f}; ms/iter ratio {ratio:.2f}x "
          "(sequential)")
    loops = {b: trainer(text, b, 10**6, 0, 1, args.seed) for b in ("torch", "numpy")}
    times: dict[str, list[float]] = {b: [] for b in loops}
    for _ in range(args.rounds):
        for backend, t in loops.items():
            for _ in range(3):
                t.train_step()
            t0 = time.perf_counter()
            for _ in range(20):
                t.train_step()
            times[backend].append((time.perf_counter() - t0) / 20 * 1e3)
    ms = {b: statistics.median(v) for b, v in times.items()}
    print(f"interleaved ({args.rounds} rounds x 20 steps): torch {ms['torch']:.1f} ms/step, "
          f"numpy {ms['numpy']:.1f} ms/step, ratio {ms['numpy'] / ms['torch']:.2f}x")


if __name__ == "__main__":
    main()
