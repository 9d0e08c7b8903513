"""GPT-2-small forward without the LM head: attndsl (NumPy backend at -O2, -O1 and -O0, and
the PyTorch backend) against a hand-written PyTorch eager model (SDPA) and hand-written NumPy,
side by side in one run.

    python benchmarks/bench_forward.py [--seq 256] [--batch 1] [--repeats 10]

Each round times every variant in a block (one warm-up run, then --repeats timed runs);
rounds interleave the variants so machine noise hits all alike, while blocks keep one
library's idle BLAS/OpenMP threads from slowing the next call. Reports the median, the ratio to hand-written PyTorch and achieved GFLOP/s (FLOPs from
`attndsl stats` for the same graph).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import GPTConfig, TorchGPT, numpy_gpt_forward, params_from_torch  # noqa: E402

import attndsl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def copy_weights(model: attndsl.Model, ref: TorchGPT, layers: int) -> None:
    """Load the hand-written model's weights into the attndsl model (q/k/v split from c_attn)."""
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    out = {"wte.weight": sd["transformer.wte.weight"], "wpe.weight": sd["transformer.wpe.weight"],
           "ln_f.weight": sd["transformer.ln_f.weight"], "ln_f.bias": sd["transformer.ln_f.bias"]}
    for i in range(layers):
        src, dst = f"transformer.h.{i}.", f"layers.{i}."
        w, b = sd[src + "attn.c_attn.weight"], sd[src + "attn.c_attn.bias"]
        for j, name in enumerate("qkv"):
            d = w.shape[1]
            out[dst + f"attn.{name}.weight"] = w[j * d:(j + 1) * d]
            out[dst + f"attn.{name}.bias"] = b[j * d:(j + 1) * d]
        pairs = {"ln_1": "layer_norm", "ln_2": "layer_norm_1", "attn.c_proj": "attn.o",
                 "mlp.c_fc": "mlp.linear", "mlp.c_proj": "mlp.linear_1"}
        for a, c in pairs.items():
            out[dst + c + ".weight"] = sd[src + a + ".weight"]
            out[dst + c + ".bias"] = sd[src + a + ".bias"]
    model.load_state_dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per block")
    ap.add_argument("--rounds", type=int, default=3, help="blocks per variant, interleaved")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab=50257, ctx=1024, d_model=768, heads=12, layers=args.layers, d_ff=3072)
    ref = TorchGPT(cfg).eval()
    ref_params = params_from_torch(ref)
    spec = ROOT / "specs" / "gpt.attn"
    config = {"layers": args.layers}
    np_model = attndsl.compile(spec, backend="numpy", config=config, outputs=["hidden"])
    np_o1 = attndsl.compile(spec, backend="numpy", config=config, outputs=["hidden"],
                            opt_level=1)
    np_o0 = attndsl.compile(spec, backend="numpy", config=config, outputs=["hidden"],
                            opt_level=0)
    th_model = attndsl.compile(spec, backend="torch", config=config, outputs=["hidden"])
    for model in (np_model, np_o1, np_o0, th_model):
        copy_weights(model, ref, args.layers)
    ids = np.random.default_rng(0).integers(0, cfg.vocab, (args.batch, args.seq))
    ids_t = torch.as_tensor(ids)

    with torch.no_grad():
        expected = ref(ids_t, head=False)[0].numpy()
        got = np_model(tokens=ids)["hidden"]
        got_t = th_model.to_numpy(th_model(tokens=ids))["hidden"]
    print(f"max |attndsl numpy - torch reference| = {np.abs(got - expected).max():.2e}, "
          f"attndsl torch: {np.abs(got_t - expected).max():.2e}")

    variants: dict[str, Callable[[], object]] = {
        "hand-written PyTorch (SDPA)": lambda: ref(ids_t, head=False),
        "attndsl numpy (-O2)": lambda: np_model(tokens=ids),
        "attndsl numpy -O1": lambda: np_o1(tokens=ids),
        "attndsl numpy -O0": lambda: np_o0(tokens=ids),
        "attndsl torch": lambda: th_model(tokens=ids),
        "hand-written NumPy": lambda: numpy_gpt_forward(ref_params, ids, cfg, head=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, fn in variants.items():
                fn()        # warm-up: also lets the other library's idle threads settle
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    flops = np_model.stats.evaluate({"B": args.batch, "T": args.seq})["flops"]
    base = statistics.median(times["hand-written PyTorch (SDPA)"])
    print(f"GPT-2 small forward without LM head, layers={args.layers}, B={args.batch}, "
          f"T={args.seq}, {flops / 1e9:.1f} GFLOP, torch threads={torch.get_num_threads()}")
    print(f"{'variant':<30} {'median ms':>10} {'vs torch':>9} {'GFLOP/s':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<30} {med * 1e3:>10.1f} {med / base:>8.2f}x {flops / med / 1e9:>8.1f}")


if __name__ == "__main__":
    main()
