"""--memory-budget's prediction against the measured peak of PyTorch training steps.

    python benchmarks/bench_memory_budget.py

GPT (`specs/gpt.attn`, 6 layers, d=256, 4 heads, vocab 256, batch 16 x 256 tokens, AdamW),
each number of checkpointed repeat iterations k in a fresh process: the predicted peak
(`attndsl.passes.training_memory.training_peaks`) and the measured growth of the process's
peak RSS over 3 training steps, above the RSS after the model is built (the weights are in
both; the optimizer state and gradients appear in the first step).
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np
import attndsl
from attndsl.cli import dims_env
from attndsl.passes.training_memory import training_peaks
k = int(sys.argv[1])
cfg = dict(layers=6, d_model=256, heads=4, vocab=256, ctx=256)
model = attndsl.compile("specs/gpt.attn", backend="torch", config=cfg, seed=0)
model.module
if k:
    model.set_checkpointing(k)
pred = training_peaks(model.graph, dims_env(model.graph, 16, 256), "adamw")[k]
weights = sum(v.size for v in model.state_dict().values()) * 4

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

text = "the quick brown fox jumps over the lazy dog " * 2000
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
attndsl.train(model, text, steps=3, batch=16, seq=256, eval_every=0)
print(json.dumps({"predicted": pred - weights, "measured": rss("VmHWM:") - base}))
"""


def main() -> None:
    print("| checkpointed iterations | predicted MiB (above weights) | measured MiB | measured / predicted |")
    print("|---|---|---|---|")
    for k in (0, 2, 4, 6):
        out = subprocess.run([sys.executable, "-c", CHILD, str(k)], capture_output=True,
                             text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {k} | {r['predicted'] / 2**20:.0f} | {r['measured'] / 2**20:.0f} | "
              f"{r['measured'] / r['predicted']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
