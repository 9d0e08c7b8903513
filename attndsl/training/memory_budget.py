"""`--memory-budget`: how many `repeat` iterations to checkpoint so a training step fits.

The prediction for one training step is `attndsl.passes.training_memory.training_peaks`
(weights, gradients, optimizer state and saved activations, minus what checkpointing
recomputes). `choose_checkpointing` picks the smallest k whose prediction fits, or raises a
TrainingError naming the smallest budget that can fit (every iteration checkpointed).
"""

from __future__ import annotations

from typing import Any

from attndsl.errors import TrainingError
from attndsl.ir.graph import Graph
from attndsl.ir.stats import human_bytes
from attndsl.passes.training_memory import training_peaks


def choose_checkpointing(graph: Graph, env: dict[str, int], optimizer: str, budget: int,
                         itemsize: int = 4) -> tuple[int, int]:
    """(k, predicted peak): the fewest checkpointed iterations that fit `budget`."""
    peaks = training_peaks(graph, env, optimizer, itemsize)
    for k, peak in enumerate(peaks):
        if peak <= budget:
            return k, peak
    dims = ", ".join(f"{k}={v}" for k, v in env.items())
    raise TrainingError(f"a training step needs at least {human_bytes(min(peaks))} ({dims}, every "
                        f"repeat iteration checkpointed); the budget is {human_bytes(budget)}",
                        None, "raise --memory-budget, or lower --batch / --seq")


def describe(k: int, total: int, peak: int, budget: int) -> str:
    return (f"memory budget {human_bytes(budget)}: checkpointing {k} of {total} repeat iterations "
            f"(predicted peak {human_bytes(peak)})")


def apply_budget(model: Any, optimizer: str, batch: int, seq: int, budget: int) -> str:
    """Choose k for `model` (torch backend) and recompile it with those iterations
    checkpointed; returns the line to print."""
    from attndsl.cli import dims_env
    if model.backend.name != "torch":
        raise TrainingError("--memory-budget chooses activation checkpointing, which is for "
                            "the torch backend", None, "add --backend torch")
    env = dims_env(model.graph, batch, seq)
    itemsize = 8 if model.dtype == "float64" else 4
    k, peak = choose_checkpointing(model.graph, env, optimizer, budget, itemsize)
    if k:
        model.set_checkpointing(k)
    return describe(k, len(model.graph.meta.get("layers", ())), peak, budget)
