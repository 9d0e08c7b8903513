"""Frontend: text -> AST -> Graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attndsl.frontend.ast import Module
from attndsl.frontend.elaborate import Builder
from attndsl.frontend.parser import parse
from attndsl.ir.graph import Graph


def build(text_or_path: str | Path, config: dict[str, Any] | None = None,
          layerdrop: float | None = None) -> Graph:
    """Parse and elaborate a spec into a shape-checked Graph.

    `config` overrides constants by name (`{"layers": 2}`); unknown names are a ConfigError.
    `layerdrop` overrides the train section's LayerDrop probability for `repeat` stacks.
    """
    module: Module = parse(text_or_path)
    builder = Builder(config, layerdrop)
    ns = builder.load_module(module, root=True)
    return builder.build_model(ns)


__all__ = ["build", "parse"]
