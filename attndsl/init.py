"""Deterministic parameter initialization (NumPy generates; other backends copy).

Initializations (the standard ones for each layer kind, as in GPT-2/BERT/ViT code):
- `normal`: N(0, std^2), std=0.02 by default — linear and embedding weights, free parameters;
- `xavier`: U(-a, a), a = sqrt(6 / (fan_in + fan_out)) — on request (`init="xavier"`);
- `zeros`: biases, layer-norm shifts; `ones`: norm scales.

Parameters are drawn in the order the spec creates them, from one `numpy.random.Generator`
seeded with `seed`, so a spec and a seed give the same weights on every backend.
"""

from __future__ import annotations

import math

import numpy as np

from attndsl.ir.graph import Graph


def init_params(graph: Graph, seed: int = 0, dtype: np.dtype | type = np.float32
                ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, nid in graph.params.items():
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
        out[name] = np.ascontiguousarray(value, dtype=dtype)
    return out
