"""Deterministic parameter initialization (NumPy generates; other backends copy).

Initializations (the standard ones for each layer kind, as in GPT-2/BERT/ViT code):
- `normal`: N(0, std^2), std=0.02 by default — linear and embedding weights, free parameters;
- `xavier`: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) — on request (`init="xavier"`);
- `zeros`: biases, layer-norm shifts; `ones`: norm scales.

Each parameter draws from its own generator, seeded with (seed, its index in the spec's
parameter order), so a spec and a seed give the same weights on every backend, and any
subset (the parameters a checkpoint does not provide) can be initialized alone with the
values a full initialization would give.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from attndsl.ir.graph import Graph


def init_params(graph: Graph, seed: int = 0, dtype: np.dtype | type = np.float32,
                names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Initial values of every parameter, or of `names` only (the same values)."""
    return dict(iter_init_params(graph, seed, dtype, names))


def iter_init_params(graph: Graph, seed: int = 0, dtype: np.dtype | type = np.float32,
                     names: set[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, initial value) one parameter at a time, so a backend that copies each value
    into its own storage never holds a second full copy of the weights."""
    for index, (name, nid) in enumerate(graph.params.items()):
        if names is not None and name not in names:
            continue
        rng = np.random.default_rng([seed, index])
        node = graph.nodes[nid]
        shape = tuple(int(d.as_int()) for d in node.type.shape)
        kind = node.attr("init")
        if kind == "zeros":
            value = np.zeros(shape)
        elif kind == "ones":
            value = np.ones(shape)
        elif kind == "xavier":
            fan_out, fan_in = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, shape[0])
            a = math.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-a, a, size=shape)
        else:
            value = rng.standard_normal(shape) * node.attr("std")
        yield name, np.ascontiguousarray(value, dtype=dtype)
