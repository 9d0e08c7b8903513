"""Attention variants vs plain causal attention, and vs the same variant spelled out by hand.

    python benchmarks/bench_attention_variants.py [--seq 1024 4096] [--backends numpy torch]
                                                  [--repeats 3] [--quick]

One attention layer (B=1, d=768, 12 heads, head dim 64) per configuration, each measured
in a fresh subprocess, in --rounds interleaved rounds (every configuration once per round,
so machine noise hits all alike): the median forward time over rounds (each round's
value the median of --repeats runs after one warm-up), and the peak memory one more
forward adds (VmHWM after /proc/self/clear_refs, minus the resident size before the call,
so model and inputs are not counted). That run is made after telling glibc to map every
allocation of 1 MiB or more on its own and to hand its free heap back, so a buffer the
heap reuses from an earlier call is still counted (the timed runs keep glibc's defaults:
mapping each tile's buffers anew would slow them). Variants are the built-in
values (`bias=alibi()`, `bias=t5_bias()`, `rope=rope()`, `kv_heads=4`) and what a user
wrote before they existed: the bias as a float [1, 12, T, T] input added to
`q @ k.T * s`, RoPE rotated by hand with `sin`/`cos`, grouped K/V repeated with
`expand` + `reshape`, the causal mask applied with `where`. Prints a markdown table with
ratios to plain causal attention on the same backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

D, H = 768, 12
HEADER = """model bench {{
    input x: float[B, T, {d}]
{inputs}
{body}
}}"""

BUILTIN = {
    "causal": "attention(x, {h}, pattern=causal)",
    "alibi": "attention(x, {h}, pattern=causal, bias=alibi())",
    "t5": "attention(x, {h}, pattern=causal, bias=t5_bias(bidirectional=false))",
    "rope": "attention(x, {h}, pattern=causal, rope=rope())",
    "gqa4": "attention(x, {h}, pattern=causal, kv_heads=4)",
}
PROJ = """    q = split_heads(linear(x, {d}), {h})
    k = split_heads(linear(x, {kvd}), {kvh})
    v = split_heads(linear(x, {kvd}), {kvh})
"""
CAUSAL_MASK = "    future = greater(reshape(arange(T), [1, T]), reshape(arange(T), [T, 1]))\n"
SPELLED = {
    "alibi": ("    input bias: float[1, {h}, T, T]",
              "    s = where(future, -1e9, q @ k.T * 0.125 + bias)\n"
              "    output y = linear(merge_heads(softmax(s) @ v), {d})"),
    "t5": ("    input bias: float[1, {h}, T, T]",
           "    s = where(future, -1e9, q @ k.T * 0.125 + bias)\n"
           "    output y = linear(merge_heads(softmax(s) @ v), {d})"),
    "rope": ("    input inv_freq: float[32]",
             "    ang = reshape(cast(arange(T), \"float\"), [T, 1]) * reshape(inv_freq, [1, 32])\n"
             "    c = concat([cos(ang), cos(ang)], axis=-1)\n"
             "    sn = concat([sin(ang), sin(ang)], axis=-1)\n"
             "    qr = q * c + concat([-q[..., 32:], q[..., :32]], axis=-1) * sn\n"
             "    kr = k * c + concat([-k[..., 32:], k[..., :32]], axis=-1) * sn\n"
             "    s = where(future, -1e9, qr @ kr.T * 0.125)\n"
             "    output y = linear(merge_heads(softmax(s) @ v), {d})"),
    "gqa4": ("",
             "    kk = reshape(expand(reshape(k, [B, 4, 1, T, 64]), [B, 4, 3, T, 64]), "
             "[B, 12, T, 64])\n"
             "    vv = reshape(expand(reshape(v, [B, 4, 1, T, 64]), [B, 4, 3, T, 64]), "
             "[B, 12, T, 64])\n"
             "    s = where(future, -1e9, q @ kk.T * 0.125)\n"
             "    output y = linear(merge_heads(softmax(s) @ vv), {d})"),
}


def spec(variant: str, spelled: bool) -> str:
    if not spelled:
        body = f"    output y = {BUILTIN[variant].format(h=H)}"
        return HEADER.format(d=D, inputs="", body=body)
    kvh = 4 if variant == "gqa4" else H
    inputs, body = SPELLED[variant]
    proj = PROJ.format(d=D, h=H, kvd=kvh * 64, kvh=kvh)
    return HEADER.format(d=D, inputs=inputs.format(h=H),
                         body=proj + CAUSAL_MASK + body.format(d=D, h=H))


CHILD = r"""
import ctypes, json, statistics, sys, time
import numpy as np
import attndsl
cfg = json.loads(sys.argv[1])
if cfg["backend"] == "torch":
    import torch
    torch.set_num_threads(2)
model = attndsl.compile(cfg["spec"], backend=cfg["backend"], seed=0,
                        attention=cfg.get("attention", "auto"))
rng = np.random.default_rng(0)
T = cfg["seq"]
shapes = {"x": (1, T, 768), "q": (1, 12, T, 64), "k": (1, 12, T, 64), "v": (1, 12, T, 64)}
inputs = {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in shapes.items() if name in model.graph.inputs}
if "bias" in model.graph.inputs:
    inputs["bias"] = (rng.standard_normal((1, 12, T, T)) * 0.1).astype(np.float32)
if "inv_freq" in model.graph.inputs:
    inputs["inv_freq"] = (10000.0 ** (-np.arange(0, 64, 2) / 64)).astype(np.float32)

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

model(**inputs)                                   # warm-up: caches, emitted module
times = []
for _ in range(cfg["repeats"]):
    t0 = time.perf_counter()
    out = model(**inputs)
    times.append(time.perf_counter() - t0)
    del out
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 1 << 20)        # M_MMAP_THRESHOLD: every buffer >= 1 MiB mapped on its own
libc.malloc_trim(0)              # and the heap's free memory handed back
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                  # reset the peak-RSS mark
base = rss("VmRSS:")
out = model(**inputs)
peak = rss("VmHWM:") - base
print(json.dumps({"seconds": statistics.median(times), "peak": peak}))
"""


def measure(backend: str, seq: int, text: str, repeats: int, attention: str = "auto"
            ) -> dict[str, float]:
    """Median seconds and peak added bytes of one forward, in a fresh subprocess."""
    cfg = json.dumps({"backend": backend, "seq": seq, "spec": text, "repeats": repeats,
                      "attention": attention})
    out = subprocess.run([sys.executable, "-c", CHILD, cfg], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(peak: float, base: float) -> str:
    """peak / base, or n/a where the baseline adds under 1 MiB (allocator reuse)."""
    return f"{peak / base:.2f}" if base >= 2**20 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--backends", nargs="+", default=["numpy", "torch"])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per subprocess")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--quick", action="store_true", help="T=1024 only, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.seq, args.rounds = [1024], 2
    configs = [(backend, seq, variant, spelled) for backend in args.backends
               for seq in args.seq for variant in ("causal", "alibi", "t5", "rope", "gqa4")
               for spelled in ((False,) if variant == "causal" else (False, True))]
    runs: dict[tuple, list[dict[str, float]]] = {c: [] for c in configs}
    for _ in range(args.rounds):          # interleaved: machine noise hits every config alike
        for c in configs:
            runs[c].append(measure(c[0], c[1], spec(c[2], c[3]), args.repeats))
    result = {c: {"seconds": statistics.median(r["seconds"] for r in rs),
                  "peak": max(r["peak"] for r in rs)} for c, rs in runs.items()}
    print("| backend | T | variant | built-in ms | x causal | built-in +MiB | x causal "
          "| spelled-out ms | x causal | spelled-out +MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends:
        for seq in args.seq:
            base = result[(backend, seq, "causal", False)]
            print(f"| {backend} | {seq} | causal | {base['seconds'] * 1e3:.0f} | 1.00 | "
                  f"{base['peak'] / 2**20:.0f} | 1.00 | | | |")
            for variant in ("alibi", "t5", "rope", "gqa4"):
                got, hand = (result[(backend, seq, variant, sp)] for sp in (False, True))
                print(f"| {backend} | {seq} | {variant} | {got['seconds'] * 1e3:.0f} | "
                      f"{got['seconds'] / base['seconds']:.2f} | {got['peak'] / 2**20:.0f} | "
                      f"{ratio(got['peak'], base['peak'])} | {hand['seconds'] * 1e3:.0f} | "
                      f"{hand['seconds'] / base['seconds']:.2f} | {hand['peak'] / 2**20:.0f} |")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - start:.0f} s)", file=sys.stderr)
