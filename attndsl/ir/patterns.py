"""Attention patterns as symbolic, composable values.

A pattern says which key positions each query position may attend to. Patterns
compose with `&` (both allow) and `|` (either allows)::

    causal & window(256) | global([0])

`source()` is the pattern as a Python expression over broadcastable integer position
arrays `q` and `k`; it works with any array module (NumPy, CuPy, torch), so backends
and emitted programs share one definition and no backend needs its own pattern code.
Query position `q` and key position `k` are absolute; for cached decoding the query
positions are offset by the cache length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class Pattern(ABC):
    """Base class; subclasses are frozen dataclasses."""

    def __and__(self, other: Pattern) -> Pattern:
        return And(self, other)

    def __or__(self, other: Pattern) -> Pattern:
        return Or(self, other)

    @abstractmethod
    def source(self) -> str:
        """The pattern as a Python expression over position arrays `q` and `k` (any array
        module); `allowed(q, k)` evaluates exactly this text."""

    def allowed(self, q: Any, k: Any) -> Any:
        return eval(self.source(), {"abs": abs}, {"q": q, "k": k})  # noqa: S307 - our own text

    @property
    def is_full(self) -> bool:
        return False

    @property
    def is_causal(self) -> bool:
        return False

    @property
    def causal_implied(self) -> bool:
        """True if the pattern never lets a query see a later key (safe for KV caching)."""
        return self.is_causal


@dataclass(frozen=True)
class Full(Pattern):
    """Every query sees every key (bidirectional attention)."""

    def source(self) -> str:
        return "((q >= 0) | (k >= 0))"

    @property
    def is_full(self) -> bool:
        return True

    def __str__(self) -> str:
        return "full"


@dataclass(frozen=True)
class Causal(Pattern):
    """Query i sees keys j <= i."""

    def source(self) -> str:
        return "(k <= q)"

    @property
    def is_causal(self) -> bool:
        return True

    def __str__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class Window(Pattern):
    """Local band: |i - j| < size (combine with `causal` for a causal sliding window)."""

    size: int

    def source(self) -> str:
        return f"(abs(q - k) < {self.size})"

    def __str__(self) -> str:
        return f"window({self.size})"


@dataclass(frozen=True)
class Dilated(Pattern):
    """Dilated band: |i - j| < size * dilation and (i - j) divisible by dilation."""

    size: int
    dilation: int

    def source(self) -> str:
        return f"((abs(q - k) < {self.size * self.dilation}) & ((q - k) % {self.dilation} == 0))"

    def __str__(self) -> str:
        return f"dilated({self.size}, {self.dilation})"


@dataclass(frozen=True)
class Global(Pattern):
    """Global tokens: the listed positions see everything and are seen by everything."""

    positions: tuple[int, ...]

    def source(self) -> str:
        return "(" + " | ".join(f"(q == {p}) | (k == {p})" for p in self.positions) + ")" if \
            self.positions else "((q < 0) & (k < 0))"

    def __str__(self) -> str:
        return f"global([{', '.join(map(str, self.positions))}])"


@dataclass(frozen=True)
class Prefix(Pattern):
    """Prefix-LM: the first `length` positions are visible to every query."""

    length: int

    def source(self) -> str:
        return f"(k < {self.length})"

    def __str__(self) -> str:
        return f"prefix({self.length})"


@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse-Transformer strided pattern: (i - j) divisible by `stride`."""

    stride: int

    def source(self) -> str:
        return f"((q - k) % {self.stride} == 0)"

    def __str__(self) -> str:
        return f"strided({self.stride})"


@dataclass(frozen=True)
class And(Pattern):
    left: Pattern
    right: Pattern

    def source(self) -> str:
        return f"({self.left.source()} & {self.right.source()})"

    @property
    def causal_implied(self) -> bool:
        return self.left.causal_implied or self.right.causal_implied

    def __str__(self) -> str:
        return f"({self.left} & {self.right})"


@dataclass(frozen=True)
class Or(Pattern):
    left: Pattern
    right: Pattern

    def source(self) -> str:
        return f"({self.left.source()} | {self.right.source()})"

    @property
    def is_full(self) -> bool:
        return self.left.is_full or self.right.is_full

    @property
    def causal_implied(self) -> bool:
        return self.left.causal_implied and self.right.causal_implied

    def __str__(self) -> str:
        return f"({self.left} | {self.right})"


FULL = Full()
CAUSAL = Causal()
