"""Character-level Shakespeare with nanoGPT's CPU configuration: attndsl's trainer on
specs/nanogpt.attn against a hand-written PyTorch training loop of the same model, in the
same process, one after the other.

    python benchmarks/bench_train.py --data ../shared/data/shakespeare.txt [--steps 2000]

Config: 4 layers, 4 heads, d=128, block 64, batch 12, lr 1e-3 with 100 warm-up steps and
cosine decay to 1e-4, dropout 0, AdamW (betas 0.9/0.99, weight decay 0.1), clip 1.0,
90/10 split. Reports final validation loss (mean of `--eval-iters` batches) and time per
iteration (evaluation excluded) for both, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import train_handwritten  # noqa: E402

import attndsl  # noqa: E402
from attndsl.training.data import TextDataset, load_text  # noqa: E402
from attndsl.training.tokenizers import make_tokenizer  # noqa: E402
from attndsl.training.trainer import TrainConfig, Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_attndsl(text: str, steps: int, eval_every: int, eval_iters: int, seed: int) -> dict:
    tokenizer = make_tokenizer("char", text)
    model = attndsl.compile(ROOT / "specs" / "nanogpt.attn", backend="torch",
                            config={"vocab": tokenizer.vocab_size}, seed=seed)
    cfg = TrainConfig.from_spec(model.graph.meta["train"], steps=steps, batch=12, seq=64,
                                eval_every=eval_every, eval_iters=eval_iters, seed=seed)
    result = Trainer(model, TextDataset(text, tokenizer), cfg).run(progress=False)
    return {"val_loss": result.val_loss, "train_loss": result.train_loss,
            "sec_per_iter": result.seconds_per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "attndsl" / "data" / "tiny_shakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    text = load_text(args.data)
    print(f"data: {args.data} ({len(text):,} characters), steps={args.steps}")
    ours = train_attndsl(text, args.steps, args.eval_every, args.eval_iters, args.seed)
    print(f"attndsl:      val loss {ours['val_loss']:.4f}, {ours['sec_per_iter'] * 1e3:.1f} ms/iter")
    ref = train_handwritten(text, steps=args.steps, eval_interval=args.eval_every,
                            eval_iters=args.eval_iters, seed=args.seed)
    print(f"hand-written: val loss {ref['val_loss']:.4f}, {ref['sec_per_iter'] * 1e3:.1f} ms/iter")
    print(f"val loss difference {ours['val_loss'] - ref['val_loss']:+.4f}; "
          f"time per iteration ratio {ours['sec_per_iter'] / ref['sec_per_iter']:.2f}x")


if __name__ == "__main__":
    main()
