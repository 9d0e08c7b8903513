"""Character-level Shakespeare with nanoGPT's CPU configuration: attndsl's trainer on
specs/nanogpt.attn against a hand-written PyTorch training loop of the same model, in the
same process, one after the other.

    python benchmarks/bench_train.py --data ../shared/data/shakespeare.txt [--steps 2000]

Config: 4 layers, 4 heads, d=128, block 64, batch 12, lr 1e-3 with 100 warm-up steps and
cosine decay to 1e-4, dropout 0, AdamW (betas 0.9/0.99, weight decay 0.1), clip 1.0,
90/10 split. Reports final validation loss (mean of `--eval-iters` batches) and time per
iteration (evaluation excluded) for both, and their ratio; then times both loops again in
alternating 50-step blocks (`--rounds`), which is the robust ratio on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from baselines import GPTConfig, TorchGPT, train_handwritten  # noqa: E402

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


def interleaved_step_times(text: str, rounds: int, steps: int, seed: int) -> dict[str, float]:
    """Median ms per training step of both loops, timed in alternating blocks of `steps`
    (after warm-up), so machine noise affects both alike."""
    tokenizer = make_tokenizer("char", text)
    data = TextDataset(text, tokenizer)
    model = attndsl.compile(ROOT / "specs" / "nanogpt.attn", backend="torch",
                            config={"vocab": tokenizer.vocab_size}, seed=seed)
    cfg = TrainConfig.from_spec(model.graph.meta["train"], steps=10**6, batch=12, seq=64,
                                eval_every=0, seed=seed)
    trainer = Trainer(model, data, cfg)
    ref = TorchGPT(GPTConfig(vocab=tokenizer.vocab_size, ctx=64, d_model=128, heads=4,
                             layers=4, d_ff=512))
    groups = [{"params": [p for p in ref.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in ref.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=True)
    rng = np.random.default_rng(seed)

    def ref_step() -> None:
        x, y = data.get_batch("train", 12, 64, rng)
        _, loss = ref(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    loops = {"attndsl": trainer.train_step, "hand-written": ref_step}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            for _ in range(5):
                step()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(ROOT / "attndsl" / "data" / "tiny_shakespeare.txt"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = ap.parse_args()
    text = load_text(args.data)
    print(f"data: {args.data} ({len(text):,} characters), steps={args.steps}")
    ours = train_attndsl(text, args.steps, args.eval_every, args.eval_iters, args.seed)
    print(f"attndsl:      val loss {ours['val_loss']:.4f}, {ours['sec_per_iter'] * 1e3:.1f} ms/iter")
    ref = train_handwritten(text, steps=args.steps, eval_interval=args.eval_every,
                            eval_iters=args.eval_iters, seed=args.seed)
    print(f"hand-written: val loss {ref['val_loss']:.4f}, {ref['sec_per_iter'] * 1e3:.1f} ms/iter")
    print(f"val loss difference {ours['val_loss'] - ref['val_loss']:+.4f}; "
          f"time per iteration ratio {ours['sec_per_iter'] / ref['sec_per_iter']:.2f}x "
          "(sequential runs)")
    ms = interleaved_step_times(text, args.rounds, 50, args.seed)
    print(f"interleaved timing ({args.rounds} rounds x 50 steps): attndsl "
          f"{ms['attndsl']:.1f} ms/step, hand-written {ms['hand-written']:.1f} ms/step, "
          f"ratio {ms['attndsl'] / ms['hand-written']:.2f}x")


if __name__ == "__main__":
    main()
