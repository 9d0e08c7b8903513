"""Values the elaborator computes with: tensors (graph nodes), block references, output refs.

Numbers are plain Python ints/floats, dims are `Dim`, patterns are `Pattern`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attndsl.errors import ShapeError, Span
from attndsl.frontend import ast
from attndsl.ir.graph import TensorType

MAX_SIZE = 2**40           # no tensor axis is a trillion long; larger sizes are mistakes


def check_size(n: int, what: str, span: Span | None) -> None:
    """A located error for a concrete size above MAX_SIZE (a mistyped constant, `10**300`)."""
    if n > MAX_SIZE:
        shown = str(n) if n < 10**20 else f"a {len(str(n))}-digit number"
        raise ShapeError(f"{what} is {shown}, more than the limit of 2**40 for a size", span)


@dataclass(frozen=True)
class Tensor:
    """A graph value: the node that computes it and its type."""

    node: int
    type: TensorType

    def __str__(self) -> str:
        return f"tensor {self.type}"


@dataclass(frozen=True)
class BlockRef:
    """A user-defined block, callable like a function."""

    block: ast.Block
    module: Any  # the Namespace it was defined in

    @property
    def name(self) -> str:
        return self.block.name


@dataclass(frozen=True)
class OutputRef:
    """A model output named from the training section (`cross_entropy(logits)`)."""

    name: str


def describe(value: object) -> str:
    """A short human name for a value's kind, for error messages."""
    if isinstance(value, Tensor):
        return str(value)
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, BlockRef):
        return f"block '{value.name}'"
    if callable(value):
        return f"function '{getattr(value, '__name__', value)}'"
    return f"{type(value).__name__} {value}"
