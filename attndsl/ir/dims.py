"""Symbolic dimensions: polynomials over named sizes with rational coefficients.

`Dim` covers what tensor shapes in attention models need: named sizes (`B`, `T`),
integer constants, sums, products and exact division by constants (`d_model / heads`
is concrete once constants are known; `T / 16` stays symbolic). Two dims are equal
iff their canonical polynomials are equal.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Union

Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers
DimLike = Union["Dim", int]


class Dim:
    """An immutable polynomial `sum(coef * prod(symbols))`."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[Monomial, Fraction]):
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def of(value: DimLike) -> Dim:
        if isinstance(value, Dim):
            return value
        return Dim({(): Fraction(value)})

    @staticmethod
    def symbol(name: str) -> Dim:
        return Dim({(name,): Fraction(1)})

    # -- queries ---------------------------------------------------------------
    def is_const(self) -> bool:
        return all(m == () for m in self.terms)

    def const(self) -> Fraction:
        """The value of a constant dim (0 for the empty polynomial)."""
        return self.terms.get((), Fraction(0))

    def as_int(self) -> int | None:
        """The integer value, or None if symbolic or fractional."""
        if not self.is_const():
            return None
        c = self.const()
        return int(c) if c.denominator == 1 else None

    def symbols(self) -> set[str]:
        return {s for m in self.terms for s in m}

    def evaluate(self, env: dict[str, int]) -> Fraction:
        total = Fraction(0)
        for mono, coef in self.terms.items():
            term = coef
            for s in mono:
                term *= env[s]
            total += term
        return total

    # -- arithmetic --------------------------------------------------------------
    def __add__(self, other: DimLike) -> Dim:
        o = Dim.of(other)
        terms = dict(self.terms)
        for m, c in o.terms.items():
            terms[m] = terms.get(m, Fraction(0)) + c
        return Dim(terms)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Dim({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: DimLike) -> Dim:
        return self + (-Dim.of(other))

    def __rsub__(self, other: DimLike) -> Dim:
        return Dim.of(other) - self

    def __mul__(self, other: DimLike) -> Dim:
        o = Dim.of(other)
        terms: dict[Monomial, Fraction] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, Fraction(0)) + c1 * c2
        return Dim(terms)

    __rmul__ = __mul__

    def divide(self, other: DimLike) -> Dim | None:
        """Exact division: by a constant, or by a single symbol that divides every term."""
        o = Dim.of(other)
        if o.is_const():
            if o.const() == 0:
                return None
            return Dim({m: c / o.const() for m, c in self.terms.items()})
        if len(o.terms) == 1:
            (mono, coef), = o.terms.items()
            out: dict[Monomial, Fraction] = {}
            for m, c in self.terms.items():
                rest = list(m)
                for s in mono:
                    if s not in rest:
                        return None
                    rest.remove(s)
                out[tuple(rest)] = c / coef
            return Dim(out)
        return None

    # -- comparison, printing -------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, int):
            other = Dim.of(other)
        return isinstance(other, Dim) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(frozenset(self.terms.items()))

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for mono in sorted(self.terms, key=lambda m: (-len(m), m)):
            coef = self.terms[mono]
            body = "*".join(mono)
            if not body:
                parts.append(str(coef))
            elif coef == 1:
                parts.append(body)
            elif coef.denominator != 1 and coef.numerator == 1:
                parts.append(f"{body}/{coef.denominator}")
            else:
                parts.append(f"{coef}*{body}")
        return " + ".join(parts).replace("+ -", "- ")

    __repr__ = __str__


def shape_str(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
