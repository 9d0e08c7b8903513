"""Long-running use (issue 13): compile-from-checkpoint time and peak RSS for GPT-2 small on
both backends, and `attndsl run --seq T` peak RSS on torch against NumPy.

    python benchmarks/bench_memory.py [--repo PATH] [--seq 1024] [--repeats 3]

Every measurement runs in a fresh subprocess (peak RSS is the child's ru_maxrss). `--repo`
points the children at another checkout (e.g. an older commit in a git worktree) so that
"before" and "after" are measured by the same script on the same checkpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMPILE = """
import sys, time
t0 = time.perf_counter()
import attndsl
m = attndsl.compile(sys.argv[1], backend=sys.argv[2], weights=sys.argv[3])
print(time.perf_counter() - t0)
"""

HAND_WRITTEN = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from baselines import GPTConfig, TorchGPT
torch.manual_seed(0)
model = TorchGPT(GPTConfig(vocab=50257, ctx=1024, d_model=768, heads=12, layers=12,
                           d_ff=3072)).eval()
ids = torch.as_tensor(np.random.default_rng(0).integers(0, 50257, (1, int(sys.argv[1]))))
with torch.inference_mode():
    logits = model(ids)[0].numpy()
np.savez(sys.argv[3], logits=logits)
"""


def peak_of(argv: list[str], repo: Path) -> tuple[float, float, str]:
    """(seconds, the child's own peak RSS in MiB, stdout), measured by a tiny wrapper."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stderr.write(r.stderr); "
               "print(r.returncode, time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.stdout)")
    env = dict(os.environ, PYTHONPATH=str(repo))
    out = subprocess.run([sys.executable, "-c", wrapper, *argv], env=env, cwd=repo,
                         capture_output=True, text=True, check=True)
    head, _, rest = out.stdout.partition("\n")
    rc, secs, kib = head.split()
    if rc != "0":
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
    return float(secs), int(kib) / 1024, rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    repo = args.repo.resolve()
    spec = str(ROOT / "specs" / "gpt.attn")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "gpt2.safetensors")
        subprocess.run([sys.executable, "-c",
                        "import sys, attndsl; attndsl.compile(sys.argv[1]).save(sys.argv[2])",
                        spec, ckpt], env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
        print(f"repo: {repo}")
        print("| measurement | backend | median s | peak RSS MiB |")
        print("|---|---|---:|---:|")
        for backend in ("numpy", "torch"):
            runs = [peak_of([sys.executable, "-c", COMPILE, spec, backend, ckpt], repo)
                    for _ in range(args.repeats)]
            secs = statistics.median(float(r[2].split()[0]) for r in runs)
            rss = statistics.median(r[1] for r in runs)
            print(f"| compile GPT-2 small from a checkpoint (in-process time) | {backend} "
                  f"| {secs:.2f} | {rss:.0f} |")
        for backend in ("numpy", "torch"):
            runs = [peak_of([sys.executable, "-m", "attndsl.cli", "run", spec, "--backend",
                             backend, "--seq", str(args.seq), "-o",
                             str(Path(tmp) / "out.npz")], repo)
                    for _ in range(args.repeats)]
            secs = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            print(f"| attndsl run --seq {args.seq} (whole command) | {backend} | {secs:.2f} "
                  f"| {rss:.0f} |")
        runs = [peak_of([sys.executable, "-c", HAND_WRITTEN, str(args.seq),
                         str(ROOT / "benchmarks"), str(Path(tmp) / "out.npz")], repo)
                for _ in range(args.repeats)]
        print(f"| hand-written PyTorch GPT-2 (build, forward, save logits) | torch "
              f"| {statistics.median(r[0] for r in runs):.2f} "
              f"| {statistics.median(r[1] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
