"""Attention patterns as symbolic, composable values.

A pattern says which key positions each query position may attend to. Patterns
compose with `&` (both allow) and `|` (either allows)::

    causal & window(256) | global([0])

`source()` is the pattern as a Python expression over broadcastable integer position
arrays `q` and `k`; it works with any array module (NumPy, CuPy, torch), so backends
and emitted programs share one definition and no backend needs its own pattern code.
Query position `q` and key position `k` are absolute; for cached decoding the query
positions are offset by the cache length. `n` is the number of key positions (only
`random_blocks` reads it).

Block sparsity comes from the pattern itself, never from a T x T mask: `full_source()` and
`empty_source()` are expressions over the inclusive bounds `q0, q1, k0, k1` of a (query
block, key block) pair (broadcastable int arrays) that are true where every pair in the
block is allowed (full) or none is (empty); anything else is partial. Both are
conservative: a block the expressions cannot decide is partial, never wrongly full/empty.
`block_layout(...)` evaluates them for a block grid.
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

    def allowed(self, q: Any, k: Any, n: int = 0) -> Any:
        return eval(self.source(), {"abs": abs}, {"q": q, "k": k, "n": n})  # noqa: S307

    @abstractmethod
    def full_source(self) -> str:
        """Expression over block bounds q0, q1, k0, k1: every pair in the block allowed."""

    @abstractmethod
    def empty_source(self) -> str:
        """Expression over block bounds q0, q1, k0, k1: no pair in the block allowed."""

    def block_layout(self, tq: int, tk: int, block_q: int, block_k: int) -> tuple[Any, Any]:
        """(full, empty) boolean [ceil(tq/block_q), ceil(tk/block_k)] grids for queries that are
        the last tq of tk positions (as under a KV cache); no [tq, tk] mask is built."""
        import numpy as np
        q0 = (tk - tq + np.arange(0, tq, block_q))[:, None]
        q1 = np.minimum(q0 + block_q, tk) - 1
        k0 = np.arange(0, tk, block_k)[None, :]
        k1 = np.minimum(k0 + block_k, tk) - 1
        env = {"q0": q0, "q1": q1, "k0": k0, "k1": k1, "n": tk}
        shape = (q0.shape[0], k0.shape[1])
        return tuple(np.broadcast_to(eval(src, {"abs": abs}, env), shape)  # noqa: S307
                     for src in (self.full_source(), self.empty_source()))

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

    def band(self) -> tuple[int | None, int | None] | None:
        """(before, after) when the pattern is exactly the band q - before < k < q + after
        (None: unbounded on that side), else None."""
        return None


@dataclass(frozen=True)
class Full(Pattern):
    """Every query sees every key (bidirectional attention)."""

    def source(self) -> str:
        return "((q >= 0) | (k >= 0))"

    def full_source(self) -> str:
        return "((q0 >= 0) | (k0 >= 0))"

    def empty_source(self) -> str:
        return "((q0 < 0) & (k0 < 0))"

    @property
    def is_full(self) -> bool:
        return True

    def band(self) -> tuple[int | None, int | None] | None:
        return None, None

    def __str__(self) -> str:
        return "full"


@dataclass(frozen=True)
class Causal(Pattern):
    """Query i sees keys j <= i."""

    def source(self) -> str:
        return "(k <= q)"

    def full_source(self) -> str:
        return "(k1 <= q0)"

    def empty_source(self) -> str:
        return "(k0 > q1)"

    @property
    def is_causal(self) -> bool:
        return True

    def band(self) -> tuple[int | None, int | None] | None:
        return None, 1

    def __str__(self) -> str:
        return "causal"


@dataclass(frozen=True)
class Window(Pattern):
    """Local band: |i - j| < size (combine with `causal` for a causal sliding window)."""

    size: int

    def source(self) -> str:
        return f"(abs(q - k) < {self.size})"

    def full_source(self) -> str:
        return f"((q0 - k1 > -{self.size}) & (q1 - k0 < {self.size}))"

    def empty_source(self) -> str:
        return f"((q0 - k1 >= {self.size}) | (q1 - k0 <= -{self.size}))"

    def band(self) -> tuple[int | None, int | None] | None:
        return self.size, self.size

    def __str__(self) -> str:
        return f"window({self.size})"


@dataclass(frozen=True)
class Dilated(Pattern):
    """Dilated band: |i - j| < size * dilation and (i - j) divisible by dilation."""

    size: int
    dilation: int

    def source(self) -> str:
        return f"((abs(q - k) < {self.size * self.dilation}) & ((q - k) % {self.dilation} == 0))"

    def full_source(self) -> str:
        band = Window(self.size * self.dilation).full_source()
        return band if self.dilation == 1 else _one_multiple(band, self.dilation)

    def empty_source(self) -> str:
        return (f"({Window(self.size * self.dilation).empty_source()} | "
                f"{_no_multiple(self.dilation)})")

    def __str__(self) -> str:
        return f"dilated({self.size}, {self.dilation})"


@dataclass(frozen=True)
class Global(Pattern):
    """Global tokens: the listed positions see everything and are seen by everything."""

    positions: tuple[int, ...]

    def source(self) -> str:
        return "(" + " | ".join(f"(q == {p}) | (k == {p})" for p in self.positions) + ")" if \
            self.positions else "((q < 0) & (k < 0))"

    def _count(self, lo: str, hi: str) -> str:
        return " + ".join(f"(({lo} <= {p}) & ({p} <= {hi})) * 1" for p in set(self.positions))

    def full_source(self) -> str:
        if not self.positions:
            return "((q0 < 0) & (k0 < 0))"
        return (f"(({self._count('q0', 'q1')} == q1 - q0 + 1) | "
                f"({self._count('k0', 'k1')} == k1 - k0 + 1))")

    def empty_source(self) -> str:
        if not self.positions:
            return "((q0 >= 0) | (k0 >= 0))"
        return f"(({self._count('q0', 'q1')} + {self._count('k0', 'k1')}) == 0)"

    def __str__(self) -> str:
        return f"global([{', '.join(map(str, self.positions))}])"


@dataclass(frozen=True)
class Prefix(Pattern):
    """Prefix-LM: the first `length` positions are visible to every query."""

    length: int

    def source(self) -> str:
        return f"(k < {self.length})"

    def full_source(self) -> str:
        return f"(k1 < {self.length})"

    def empty_source(self) -> str:
        return f"(k0 >= {self.length})"

    def __str__(self) -> str:
        return f"prefix({self.length})"


@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse-Transformer strided pattern: (i - j) divisible by `stride`."""

    stride: int

    def source(self) -> str:
        return f"((q - k) % {self.stride} == 0)"

    def full_source(self) -> str:
        always = "((q0 >= 0) | (k0 >= 0))"
        return always if self.stride == 1 else _one_multiple(always, self.stride)

    def empty_source(self) -> str:
        return _no_multiple(self.stride)

    def __str__(self) -> str:
        return f"strided({self.stride})"


@dataclass(frozen=True)
class Fixed(Pattern):
    """Sparse-Transformer "fixed" pattern (Child et al. 2019, eq. A(1) | A(2)): i sees j in
    its own block of `block` positions, and every block's last `summary` positions."""

    block: int
    summary: int = 1

    def source(self) -> str:
        b, c = self.block, self.summary
        return f"((q // {b} == k // {b}) | (k % {b} >= {b - c}))"

    def full_source(self) -> str:
        b, c = self.block, self.summary
        one = f"((q0 // {b} == q1 // {b}) & (q1 // {b} == k0 // {b}) & (k0 // {b} == k1 // {b}))"
        summaries = f"((k0 // {b} == k1 // {b}) & (k0 % {b} >= {b - c}))"
        return f"({one} | {summaries})"

    def empty_source(self) -> str:
        b, c = self.block, self.summary
        apart = f"((k1 // {b} < q0 // {b}) | (k0 // {b} > q1 // {b}))"
        no_summary = f"((k0 // {b} == k1 // {b}) & (k1 % {b} < {b - c}))"
        return f"({apart} & {no_summary})"

    def __str__(self) -> str:
        return f"fixed({self.block}, summary={self.summary})"


@dataclass(frozen=True)
class RandomBlocks(Pattern):
    """BigBird's random attention: each query block of `block` positions sees `blocks` key
    blocks chosen by a seeded hash of (query block, draw) modulo the number of key blocks
    (draws that collide give fewer). Depends on the key length, so it is for encoders."""

    blocks: int
    block: int
    seed: int

    def _hit(self, qb: str, kb: str) -> str:
        nb = f"((n + {self.block - 1}) // {self.block})"
        draws = [f"(({qb} * 1103515245 + {t * 12345 + self.seed * 2654435761 + 1013904223})"
                 f" % 2147483647 % {nb})" for t in range(self.blocks)]
        return "(" + " | ".join(f"({kb} == {d})" for d in draws) + ")"

    def source(self) -> str:
        return self._hit(f"(q // {self.block})", f"(k // {self.block})")

    def _single(self) -> str:
        b = self.block
        return f"((q0 // {b} == q1 // {b}) & (k0 // {b} == k1 // {b}))"

    def full_source(self) -> str:
        return f"({self._single()} & {self._hit(f'(q0 // {self.block})', f'(k0 // {self.block})')})"

    def empty_source(self) -> str:
        hit = self._hit(f"(q0 // {self.block})", f"(k0 // {self.block})")
        return f"({self._single()} & ~{hit})"

    def __str__(self) -> str:
        return f"random_blocks({self.blocks}, block={self.block}, seed={self.seed})"


def _one_multiple(full: str, r: int) -> str:
    """Full only where the block covers a single difference q - k that is a multiple of r."""
    return f"({full} & (q0 - k1 == q1 - k0) & ((q0 - k1) % {r} == 0))"


def _no_multiple(r: int) -> str:
    """No difference q - k in [q0 - k1, q1 - k0] is a multiple of r."""
    return f"((q1 - k0) // {r} == (q0 - k1 - 1) // {r})"


@dataclass(frozen=True)
class And(Pattern):
    left: Pattern
    right: Pattern

    def source(self) -> str:
        return f"({self.left.source()} & {self.right.source()})"

    def full_source(self) -> str:
        return f"({self.left.full_source()} & {self.right.full_source()})"

    def empty_source(self) -> str:
        return f"({self.left.empty_source()} | {self.right.empty_source()})"

    @property
    def causal_implied(self) -> bool:
        return self.left.causal_implied or self.right.causal_implied

    def band(self) -> tuple[int | None, int | None] | None:
        a, b = self.left.band(), self.right.band()
        if a is None or b is None:
            return None
        return tuple(x if y is None else y if x is None else min(x, y)  # type: ignore[return-value]
                     for x, y in zip(a, b))

    def __str__(self) -> str:
        return f"({self.left} & {self.right})"


@dataclass(frozen=True)
class Or(Pattern):
    left: Pattern
    right: Pattern

    def source(self) -> str:
        return f"({self.left.source()} | {self.right.source()})"

    def full_source(self) -> str:
        return f"({self.left.full_source()} | {self.right.full_source()})"

    def empty_source(self) -> str:
        return f"({self.left.empty_source()} & {self.right.empty_source()})"

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
