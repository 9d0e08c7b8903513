"""The activation-memory estimate (`attndsl.passes.liveness`) against measured NumPy runs:
tracemalloc sees every NumPy allocation, so the predicted peak of a forward pass (liveness
over the emitted program plus each kernel's workspace, attention scores included) must be
within 20% of the measured peak, whichever attention implementation runs."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from helpers import SPECS_DIR

import attndsl
from attndsl.passes.liveness import peak_memory

CONFIG = dict(layers=2, d_model=256, heads=4, vocab=64)


def measured_peak(model, inputs) -> int:
    model(**inputs)                                   # warm caches (masks, emitted module)
    tracemalloc.start()
    try:
        model(**inputs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("spec, attention, seq", [
    ("gpt", "dense", 512), ("gpt", "auto", 512), ("gpt", "tiled", 384),
    ("llama", "auto", 384), ("alibi_gpt", "dense", 384)])
def test_predicted_peak_is_within_20_percent_of_measured(spec, attention, seq):
    config = dict(CONFIG, **({"kv_heads": 2, "d_ff": 512} if spec == "llama" else {}))
    model = attndsl.compile(SPECS_DIR / f"{spec}.attn", config=config, attention=attention)
    ids = np.random.default_rng(0).integers(0, 64, (1, seq))
    got = measured_peak(model, {"tokens": ids})
    predicted = peak_memory(model.graph, {"B": 1, "T": seq}).peak
    assert abs(predicted - got) <= 0.2 * got, (predicted, got)


def test_dense_attention_scores_are_counted():
    """The [B, H, T, T] score buffer of the dense kernel is in the estimate (it used to be
    left out), and the naive figure keeps every intermediate."""
    model = attndsl.compile(SPECS_DIR / "gpt.attn", config=CONFIG, attention="dense")
    report = peak_memory(model.graph, {"B": 1, "T": 1024})
    assert report.workspace >= 4 * 1024 * 1024 * 4            # heads * T * T * float32
    assert report.naive > 2 * report.peak > 2 * report.workspace
