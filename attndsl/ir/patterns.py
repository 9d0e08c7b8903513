"""Attention patterns as symbolic, composable values.

A pattern says which key positions each query position may attend to. Patterns
compose with `&` (both allow) and `|` (either allows)::

    causal & window(256) | global([0])

`allowed(q, k)` evaluates the pattern on broadcastable integer position arrays, for
any array module (NumPy, CuPy, torch), so no backend needs its own pattern code.
Query position `q` and key position `k` are absolute; for cached decoding the query
positions are offset by the cache length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Pattern:
    """Base class; subclasses are frozen dataclasses."""

    def __and__(self, other: Pattern) -> Pattern:
        return And(self, other)

    def __or__(self, other: Pattern) -> Pattern:
        return Or(self, other)

    def allowed(self, q: Any, k: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

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

    def allowed(self, q: Any, k: Any) -> Any:
        return (q >= 0) | (k >= 0)

    @property
    def is_full(self) -> bool:
        return True

    def __str__(self) -> str:
        return "full"


@dataclass(frozen=True)
class Causal(Pattern):
    """Query i sees keys j <= i."""

    def allowed(self, q: Any, k: Any) -> Any:
        return k <= q

    @property
    def is_causal(self) -> bool:
        return True

    def __str__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class Window(Pattern):
    """Local band: |i - j| < size (combine with `causal` for a causal sliding window)."""

    size: int

    def allowed(self, q: Any, k: Any) -> Any:
        return abs(q - k) < self.size

    def __str__(self) -> str:
        return f"window({self.size})"


@dataclass(frozen=True)
class Dilated(Pattern):
    """Dilated band: |i - j| < size * dilation and (i - j) divisible by dilation."""

    size: int
    dilation: int

    def allowed(self, q: Any, k: Any) -> Any:
        d = q - k
        return (abs(d) < self.size * self.dilation) & (d % self.dilation == 0)

    def __str__(self) -> str:
        return f"dilated({self.size}, {self.dilation})"


@dataclass(frozen=True)
class Global(Pattern):
    """Global tokens: the listed positions see everything and are seen by everything."""

    positions: tuple[int, ...]

    def allowed(self, q: Any, k: Any) -> Any:
        out = (q < 0) & (k < 0)
        for p in self.positions:
            out = out | (q == p) | (k == p)
        return out

    def __str__(self) -> str:
        return f"global([{', '.join(map(str, self.positions))}])"


@dataclass(frozen=True)
class Prefix(Pattern):
    """Prefix-LM: the first `length` positions are visible to every query."""

    length: int

    def allowed(self, q: Any, k: Any) -> Any:
        return (k < self.length) | (q < 0)

    def __str__(self) -> str:
        return f"prefix({self.length})"


@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse-Transformer strided pattern: (i - j) divisible by `stride`."""

    stride: int

    def allowed(self, q: Any, k: Any) -> Any:
        return (q - k) % self.stride == 0

    def __str__(self) -> str:
        return f"strided({self.stride})"


@dataclass(frozen=True)
class And(Pattern):
    left: Pattern
    right: Pattern

    def allowed(self, q: Any, k: Any) -> Any:
        return self.left.allowed(q, k) & self.right.allowed(q, k)

    @property
    def causal_implied(self) -> bool:
        return self.left.causal_implied or self.right.causal_implied

    def __str__(self) -> str:
        return f"({self.left} & {self.right})"


@dataclass(frozen=True)
class Or(Pattern):
    left: Pattern
    right: Pattern

    def allowed(self, q: Any, k: Any) -> Any:
        return self.left.allowed(q, k) | self.right.allowed(q, k)

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
