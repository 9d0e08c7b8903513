"""Score biases as symbolic, composable values (FlexAttention's `score_mod`, declared).

A bias is added to the attention logits before the softmax. Biases compose with `+`::

    alibi() + t5_bias(buckets=32, max_distance=128)

Terms:
- `ALiBi()`: -m_h * |i - j| with Press et al.'s head slopes m_h (any head count); no
  parameters;
- `T5Bias(buckets, max_distance, bidirectional)`: a learned [buckets, heads] table indexed
  by the log-bucketed relative position j - i (Raffel et al.);
- `Relative(max_distance)`: Shaw et al.'s learned relative key embeddings
  a_{clip(j - i, -k, k)} (a [2k + 1, head_dim] table); adds scale * q_i . a_{ij};
- `TensorBias()`: a float tensor broadcastable to [B, H, Tq, Tk].

Learned terms and tensors are operands of the attention node: term `i` reads the extra
input named `bias{i}`. `kernel_attr()` is the plain tuple the kernels receive (they live in
standalone emitted modules, so they take no attndsl objects): one tuple per term,
``("alibi",)``, ``("t5", buckets, max_distance, bidirectional)``, ``("relative", k)``,
``("tensor",)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class Bias(ABC):
    """Base class of score biases (a term or a sum of terms); `+` builds a `BiasSum`."""

    def __add__(self, other: Bias) -> BiasSum:
        return BiasSum(self.terms() + other.terms())

    @abstractmethod
    def terms(self) -> tuple[BiasTerm, ...]:
        """The terms, in order."""


class BiasTerm(Bias):
    """One term. `table` is the learned table's operand (a frontend value) when learned."""

    learned = False

    def terms(self) -> tuple[BiasTerm, ...]:
        return (self,)

    @abstractmethod
    def kernel_attr(self) -> tuple[Any, ...]:
        """The plain tuple the kernels receive for this term."""


@dataclass(frozen=True)
class ALiBi(BiasTerm):
    """Press et al. 2022: bias -m_h |i - j|; slopes 2^(-8 k / n) for the n heads (n a power
    of two), else the power-of-two set for the next lower power plus every other slope of
    the next higher one (their reference implementation)."""

    def kernel_attr(self) -> tuple[Any, ...]:
        return ("alibi",)

    def __str__(self) -> str:
        return "alibi()"


@dataclass(frozen=True)
class T5Bias(BiasTerm):
    """Raffel et al. 2020: relative position j - i bucketed (half exact, half log-spaced up
    to `max_distance`), one learned scalar per (bucket, head)."""

    buckets: int
    max_distance: int
    bidirectional: bool
    key: str = ""        # the parameter name of its [buckets, heads] table
    learned = True

    def kernel_attr(self) -> tuple[Any, ...]:
        return ("t5", self.buckets, self.max_distance, self.bidirectional)

    def __str__(self) -> str:
        return (f"t5_bias(buckets={self.buckets}, max_distance={self.max_distance}, "
                f"bidirectional={str(self.bidirectional).lower()})")


@dataclass(frozen=True)
class Relative(BiasTerm):
    """Shaw et al. 2018: learned key embeddings a_{clip(j - i, -k, k)}: [2k + 1, head_dim]."""

    max_distance: int
    key: str = ""        # the parameter name of its table
    learned = True

    def kernel_attr(self) -> tuple[Any, ...]:
        return ("relative", self.max_distance)

    def __str__(self) -> str:
        return f"relative(max_distance={self.max_distance})"


@dataclass(frozen=True)
class TensorBias(BiasTerm):
    """A float tensor broadcastable to [B, H, Tq, Tk] (the frontend keeps the tensor)."""

    def kernel_attr(self) -> tuple[Any, ...]:
        return ("tensor",)

    def __str__(self) -> str:
        return "tensor"


@dataclass(frozen=True)
class BiasSum(Bias):
    """A sum of terms, in order."""

    items: tuple[BiasTerm, ...]

    def terms(self) -> tuple[BiasTerm, ...]:
        return self.items

    def __str__(self) -> str:
        return " + ".join(map(str, self.items))


@dataclass(frozen=True)
class BiasAttr:
    """The attention node's `bias` attribute: its terms, printable, rendered for kernels as a
    tuple of term tuples."""

    terms: tuple[BiasTerm, ...]

    def kernel_attr(self) -> tuple[tuple[Any, ...], ...]:
        return tuple(t.kernel_attr() for t in self.terms)

    def __str__(self) -> str:
        return " + ".join(map(str, self.terms)) if self.terms else "none"

    def __bool__(self) -> bool:
        return bool(self.terms)


NO_BIAS = BiasAttr(())
