"""Hand-written reference baselines that attndsl's benchmarks compare against.

* ``TorchGPT``: a nanoGPT-style GPT in idiomatic PyTorch (pre-LN, fused qkv, SDPA).
* ``numpy_gpt_forward``: the same forward pass in plain NumPy float32.
* ``train_handwritten``: nanoGPT's ``train.py`` loop for character-level Shakespeare on CPU.

Run ``python benchmarks/baselines.py --smoke`` for a quick check of all three, or without
``--smoke`` for the GPT-2-small forward timing and a training run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "attndsl" / "data" / "tiny_shakespeare.txt"


@dataclass
class GPTConfig:
    """GPT hyper-parameters (nanoGPT's names: vocab_size, block_size, n_embd, n_head, n_layer)."""

    vocab: int
    ctx: int
    d_model: int
    heads: int
    layers: int
    d_ff: int
    dropout: float = 0.0
    bias: bool = True
    tie: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.heads == 0
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.heads = cfg.heads
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=1e-5, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=1e-5, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class TorchGPT(nn.Module):
    """nanoGPT's ``GPT``: token + position embeddings, pre-LN blocks, tied LM head."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab, cfg.d_model),
                wpe=nn.Embedding(cfg.ctx, cfg.d_model),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.layers)),
                ln_f=nn.LayerNorm(cfg.d_model, eps=1e-5, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        if cfg.tie:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, head: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, loss)``; ``loss`` is None without targets.

        With ``head=False`` the first element is the final (post ``ln_f``) hidden state.
        """
        B, T = idx.shape
        if T > self.cfg.ctx:
            raise ValueError(f"sequence length {T} exceeds context {self.cfg.ctx}")
        if targets is not None and not head:
            raise ValueError("a loss needs the LM head")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if not head:
            return x, None
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        return logits, loss


def params_from_torch(model: nn.Module) -> dict[str, np.ndarray]:
    """Snapshot a model's state_dict as float32 NumPy arrays under the same names."""
    return {
        name: t.detach().to("cpu", torch.float32).numpy().copy()
        for name, t in model.state_dict().items()
    }


def _linear(x: np.ndarray, params: dict[str, np.ndarray], name: str) -> np.ndarray:
    y = x @ params[f"{name}.weight"].T
    bias = params.get(f"{name}.bias")
    if bias is not None:
        y += bias
    return y


def _layer_norm(x: np.ndarray, params: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + 1e-5)
    y *= params[f"{name}.weight"]
    bias = params.get(f"{name}.bias")
    if bias is not None:
        y += bias
    return y


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in place on one temporary."""
    y = x * x
    y *= 0.044715
    y += 1.0
    y *= x
    y *= math.sqrt(2.0 / math.pi)
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def numpy_gpt_forward(
    params: dict[str, np.ndarray], idx: np.ndarray, cfg: GPTConfig, head: bool = True
) -> np.ndarray:
    """TorchGPT's forward pass (eval mode) in NumPy float32.

    Returns logits ``(B, T, vocab)``, or the final hidden state ``(B, T, d_model)`` if not head.
    """
    B, T = idx.shape
    nh, hs = cfg.heads, cfg.d_model // cfg.heads
    x = params["transformer.wte.weight"][idx] + params["transformer.wpe.weight"][:T]  # (B, T, C)
    causal = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)  # (T, T): 0 / -inf
    scale = 1.0 / math.sqrt(hs)
    for i in range(cfg.layers):
        p = f"transformer.h.{i}"
        qkv = _linear(_layer_norm(x, params, f"{p}.ln_1"), params, f"{p}.attn.c_attn")  # (B, T, 3C)
        qkv = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, nh, T, hs)
        att = (q * scale) @ k.transpose(0, 1, 3, 2)  # (B, nh, T, T)
        att += causal
        att -= att.max(axis=-1, keepdims=True)
        np.exp(att, out=att)
        att /= att.sum(axis=-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, cfg.d_model)  # (B, T, C)
        x += _linear(y, params, f"{p}.attn.c_proj")  # (B, T, C)
        h = _linear(_layer_norm(x, params, f"{p}.ln_2"), params, f"{p}.mlp.c_fc")  # (B, T, d_ff)
        h = _gelu_tanh(h)  # (B, T, d_ff)
        x += _linear(h, params, f"{p}.mlp.c_proj")  # (B, T, C)
    x = _layer_norm(x, params, "transformer.ln_f")  # (B, T, C)
    if not head:
        return x
    return x @ params["lm_head.weight"].T  # (B, T, vocab)


def train_handwritten(
    text: str,
    steps: int = 2000,
    layers: int = 4,
    heads: int = 4,
    d_model: int = 128,
    block: int = 64,
    batch: int = 12,
    lr: float = 1e-3,
    min_lr: float = 1e-4,
    warmup: int = 100,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.99),
    eval_interval: int = 250,
    eval_iters: int = 200,
    seed: int = 1337,
    threads: int | None = None,
) -> dict:
    """Train a character-level TorchGPT on ``text`` with nanoGPT's ``train.py`` recipe (CPU).

    Returns ``val_loss`` and ``train_loss`` (final estimates, mean over ``eval_iters`` batches),
    ``sec_per_iter`` (mean wall-clock per training iteration, evaluation excluded) and
    ``history``: ``[(step, train_loss, val_loss), ...]`` every ``eval_interval`` steps and at the end.
    """
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)

        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        data = np.array([stoi[ch] for ch in text], dtype=np.int64)
        n = int(0.9 * len(data))
        splits = {"train": data[:n], "val": data[n:]}
        offsets = np.arange(block)

        def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            d = splits[split]
            ix = rng.integers(0, len(d) - block, size=batch)[:, None] + offsets  # (B, T)
            return torch.from_numpy(d[ix]), torch.from_numpy(d[ix + 1])

        cfg = GPTConfig(
            vocab=len(chars),
            ctx=block,
            d_model=d_model,
            heads=heads,
            layers=layers,
            d_ff=4 * d_model,
        )
        model = TorchGPT(cfg)

        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # nanoGPT fuses AdamW where available; torch's fused kernel now covers CPU too.
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)

        def get_lr(it: int) -> float:
            if it < warmup:
                return lr * (it + 1) / (warmup + 1)
            if it > steps:
                return min_lr
            decay_ratio = (it - warmup) / (steps - warmup)
            coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
            return min_lr + coeff * (lr - min_lr)

        @torch.no_grad()
        def estimate_loss() -> dict[str, float]:
            model.eval()
            out = {}
            for split in splits:
                losses = torch.empty(eval_iters)
                for k in range(eval_iters):
                    _, loss = model(*get_batch(split))
                    losses[k] = loss
                out[split] = losses.mean().item()
            model.train()
            return out

        history: list[tuple[int, float, float]] = []
        iter_times: list[float] = []
        for it in range(steps + 1):
            if it % eval_interval == 0 or it == steps:
                losses = estimate_loss()
                history.append((it, losses["train"], losses["val"]))
            if it == steps:
                break
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = get_lr(it)
            _, loss = model(*get_batch("train"))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            iter_times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev_threads)

    return {
        "val_loss": history[-1][2],
        "train_loss": history[-1][1],
        "sec_per_iter": statistics.fmean(iter_times) if iter_times else float("nan"),
        "history": history,
    }


def time_forward(
    cfg: GPTConfig, batch: int, seq: int, runs: int = 10, warmup: int = 2, seed: int = 0
) -> dict[str, float]:
    """Median seconds of a no-head forward pass: TorchGPT (eval, no_grad) vs numpy_gpt_forward.

    Torch is timed first: OpenBLAS worker threads keep spinning after NumPy's matmuls and would
    slow a Torch run that follows them on a machine with few cores.
    """
    torch.manual_seed(seed)
    model = TorchGPT(cfg).eval()
    params = params_from_torch(model)
    idx = torch.randint(cfg.vocab, (batch, seq))
    idx_np = idx.numpy()

    def median_time(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.no_grad():
        t_torch = median_time(lambda: model(idx, head=False))
        ref = model(idx, head=False)[0].numpy()
    t_numpy = median_time(lambda: numpy_gpt_forward(params, idx_np, cfg, head=False))
    err = float(np.abs(numpy_gpt_forward(params, idx_np, cfg, head=False) - ref).max())
    return {"torch_s": t_torch, "numpy_s": t_numpy, "max_abs_diff": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs, runs in seconds")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training text")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--runs", type=int, default=10, help="timed forward runs")
    parser.add_argument("--seq", type=int, default=256, help="forward benchmark sequence length")
    parser.add_argument("--threads", type=int, help="torch threads for training")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    text = args.text.read_text(encoding="utf-8")
    if args.smoke:
        fwd_cfg, seq = GPTConfig(vocab=50, ctx=16, d_model=32, heads=4, layers=2, d_ff=128), 16
        train_kw = dict(
            steps=30,
            layers=2,
            heads=2,
            d_model=32,
            block=16,
            batch=4,
            warmup=5,
            eval_interval=10,
            eval_iters=5,
        )
        text = text[:20_000]
    else:
        fwd_cfg = GPTConfig(vocab=50257, ctx=1024, d_model=768, heads=12, layers=12, d_ff=3072)
        seq = args.seq
        train_kw = dict(steps=args.steps)

    if not args.skip_forward:
        r = time_forward(fwd_cfg, batch=1, seq=seq, runs=args.runs)
        print(
            f"forward (no head) {fwd_cfg}, B=1, T={seq}: torch {r['torch_s'] * 1e3:.2f} ms, "
            f"numpy {r['numpy_s'] * 1e3:.2f} ms, max |diff| {r['max_abs_diff']:.2e}"
        )
    if not args.skip_train:
        r = train_handwritten(text, threads=args.threads, **train_kw)
        for step, tr, va in r["history"]:
            print(f"step {step}: train {tr:.4f}, val {va:.4f}")
        print(
            f"train {train_kw} on {len(text):,} chars: {r['sec_per_iter'] * 1e3:.2f} ms/iter, "
            f"val {r['val_loss']:.4f}"
        )


if __name__ == "__main__":
    main()
