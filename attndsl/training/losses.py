"""Training losses, in NumPy (the reference) and PyTorch (differentiable).

Cross-entropy with label smoothing α over C classes uses the smoothed target
ỹ = (1 − α)·y + α/C, so per position

    loss = −(1 − α)·log p[target] − (α / C)·Σ_c log p[c]

averaged over positions whose target is not `ignore_index`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attndsl.errors import RuntimeInputError


def cross_entropy_numpy(logits: np.ndarray, targets: np.ndarray, label_smoothing: float = 0.0,
                        ignore_index: int = -100) -> float:
    """logits: (..., C), targets: (...) int. Mean over non-ignored positions."""
    return cross_entropy_with_grad(logits, targets, label_smoothing, ignore_index)[0]


def cross_entropy_with_grad(logits: np.ndarray, targets: np.ndarray, label_smoothing: float,
                            ignore_index: int) -> tuple[float, np.ndarray]:
    """`cross_entropy_numpy` and its gradient w.r.t. `logits` (..., C), in float64:
    (softmax - smoothed one-hot) / (number of non-ignored positions), zero rows where the
    target is `ignore_index`. No kept position: loss 0 and a zero gradient."""
    c = logits.shape[-1]
    z = logits.reshape(-1, c).astype(np.float64)                     # (N, C)
    tgt = targets.reshape(-1)                                         # (N,)
    keep = tgt != ignore_index                                        # (N,)
    count = int(keep.sum())
    if count == 0:
        return 0.0, np.zeros_like(logits)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))           # (N, C)
    rows = np.arange(len(tgt))
    safe = np.where(keep, tgt, 0)
    nll = -logp[rows, safe]                                           # (N,)
    smooth = -logp.mean(axis=1)                                       # (N,)
    per_row = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    loss = float(per_row[keep].sum() / count)
    soft = np.full_like(logp, label_smoothing / c)                    # (N, C)
    soft[rows, safe] += 1.0 - label_smoothing
    grad = (np.exp(logp) - soft) * (keep[:, None] / count)            # (N, C)
    return loss, grad.reshape(logits.shape).astype(logits.dtype)


def cross_entropy_torch(logits: Any, targets: Any, label_smoothing: float = 0.0,
                        ignore_index: int = -100) -> Any:
    """The same loss as `cross_entropy_numpy`, on torch tensors (differentiable)."""
    import torch
    import torch.nn.functional as F
    c = logits.shape[-1]
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()                      # low-precision logits: loss in float32
    return F.cross_entropy(logits.reshape(-1, c), targets.reshape(-1),
                           ignore_index=ignore_index, label_smoothing=label_smoothing)


def check_targets(targets_shape: tuple[int, ...], logits_shape: tuple[int, ...],
                  output: str) -> None:
    """Targets must have the logits' shape without the class axis."""
    if tuple(targets_shape) != tuple(logits_shape[:-1]):
        raise RuntimeInputError(f"targets have shape {tuple(targets_shape)}, output "
                                f"'{output}' needs {tuple(logits_shape[:-1])}")


def loss_spec(graph: Any) -> dict[str, Any]:
    """The spec's loss setting, or cross-entropy on the output `logits` (else the first)."""
    train = graph.meta.get("train", {})
    first = "logits" if "logits" in graph.outputs else next(iter(graph.outputs))
    default = {"name": "cross_entropy", "output": first,
               "label_smoothing": 0.0, "ignore_index": -100, "target": "causal_lm",
               "extra": []}   # (coefficient, scalar output) terms added to the loss
    return {**default, **train.get("loss", {})}


def loss_outputs(loss: dict[str, Any]) -> tuple[str, ...]:
    """The outputs a loss setting differentiates: its output, then its extra terms'."""
    return tuple(dict.fromkeys([loss["output"], *(name for _, name in loss.get("extra", []))]))
