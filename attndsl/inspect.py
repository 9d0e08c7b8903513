"""Seeing inside a model: attention maps of every attention, attention rollout across layers
(Abnar & Zuidema 2020) and per-head attention entropy; `plot` draws them (matplotlib, the
`plot` extra). `attndsl inspect` is the command line.

    maps = attention_maps(model, {"tokens": ids})     # name -> [B, H, Tq, Tk]
    rollout(maps)                                     # [B, T, T]: input token j's share in position i
    entropy(maps)                                     # name -> [H], nats
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attndsl.errors import ConfigError
from attndsl.model import Model
from attndsl.model import compile as compile_spec
from attndsl.passes.expose_attention import expose_attention_weights


def attention_maps(model: Model, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The attention probabilities [B, H, Tq, Tk] of every attention in `model` on `inputs`,
    keyed `attention.<layer>` (the i-th repeat iteration) or `attention.line<N>`, in graph
    order; computed by the model's backend with its weights."""
    graph = expose_attention_weights(model.graph).graph
    names = [name for name, *_ in graph.meta["attention_maps"]]
    if not names:
        kinds = {n.op for n in graph.nodes.values()} & {"linear_attention", "lsh_attention"}
        raise ConfigError("the model has no attention to inspect" + (
            f" ({' and '.join(sorted(kinds))}: no attention matrix is built)" if kinds else ""),
            None)
    probe = compile_spec(graph, backend=model.backend.name, dtype=model.dtype, outputs=names,
                         **model.options)
    weights = model.state_dict()
    probe.load_state_dict({k: weights[k] for k in probe.graph.params})
    out = probe.to_numpy(probe(**inputs))
    return {name: out[name] for name in names}


def self_attention(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The maps whose queries and keys are the same positions (Tq == Tk)."""
    return {k: v for k, v in maps.items() if v.shape[-1] == v.shape[-2]}


def rollout(maps: dict[str, np.ndarray], residual: float = 0.5) -> np.ndarray:
    """Attention rollout over the self-attention maps in order: per layer the head-averaged
    map mixed with the identity for the residual stream, rows renormalized, multiplied from
    the first layer up. [B, T, T]; row i says how much each input position feeds position i."""
    layers = list(self_attention(maps).values())
    if not layers:
        raise ConfigError("rollout needs self-attention maps (Tq == Tk)", None)
    result = None
    for a in layers:
        mixed = (1 - residual) * a.mean(axis=1) + residual * np.eye(a.shape[-1])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    return result


def entropy(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean entropy (nats) of each head's attention distribution over batch and queries;
    low = focused on few keys, log(Tk) = uniform."""
    out = {}
    for name, p in maps.items():
        logp = np.log(np.where(p > 0, p, 1.0))
        out[name] = -(p * logp).sum(axis=-1).mean(axis=(0, 2))
    return out


def entropy_table(maps: dict[str, np.ndarray]) -> str:
    ent = entropy(maps)
    heads = max(len(v) for v in ent.values())
    width = max(len(k) for k in ent)
    lines = [" " * width + "".join(f"{f'h{h}':>7}" for h in range(heads))]
    lines += [f"{name:<{width}}" + "".join(f"{x:7.3f}" for x in values)
              for name, values in ent.items()]
    return "\n".join(lines)


def plot(maps: dict[str, np.ndarray], labels: list[str], path: str | Path,
         layer: str | None = None, head: int | None = None) -> Path:
    """One PNG: the heads of `layer` (default the first map; one `head` if given) as
    heatmaps with token labels, the rollout, and the per-head entropy as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layer = layer or next(iter(maps))
    chosen = maps[layer][0]                                        # (H, Tq, Tk), first example
    heads = [head] if head is not None else list(range(chosen.shape[0]))
    cols = min(4, len(heads))
    rows = -(-len(heads) // cols)
    fig = plt.figure(figsize=(4 * max(cols, 2), 4 * rows + 4), constrained_layout=True)
    grid = fig.add_gridspec(rows + 1, max(cols, 2))
    ticks = labels if len(labels) <= 40 else None
    for i, h in enumerate(heads):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        _heatmap(ax, chosen[h], ticks, f"{layer} head {h}")
    has_self = bool(self_attention(maps))
    if has_self:
        _heatmap(fig.add_subplot(grid[rows, 0]), rollout(maps)[0], ticks, "attention rollout")
    ax = fig.add_subplot(grid[rows, 1 if has_self else 0])
    ent = entropy(maps)
    x, names = 0, []
    for name, values in ent.items():
        ax.bar(np.arange(x, x + len(values)), values, label=name)
        x += len(values) + 1
        names.append(name)
    ax.set_title("attention entropy per head (nats)")
    ax.set_xticks([])
    if len(names) <= 12:
        ax.legend(fontsize="small")
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _heatmap(ax: Any, a: np.ndarray, labels: list[str] | None, title: str) -> None:
    if a.shape[1] > a.shape[0]:        # keys before the queries (a memory): drop those unused
        used = np.flatnonzero(a.any(axis=0))
        a = a[:, min(int(used[0]) if used.size else a.shape[1] - a.shape[0],
                     a.shape[1] - a.shape[0]):]
    ax.imshow(a, cmap="viridis", vmin=0.0, vmax=max(float(a.max()), 1e-9))
    ax.set_title(title, fontsize="medium")
    if labels is not None:       # queries are the last positions; earlier keys (a recurrent
        keys = [""] * max(0, a.shape[1] - len(labels)) + labels[-a.shape[1]:]   # memory) blank
        ax.set_xticks(range(a.shape[1]), keys, rotation=90, fontsize="x-small")
        ax.set_yticks(range(a.shape[0]), labels[-a.shape[0]:], fontsize="x-small")
