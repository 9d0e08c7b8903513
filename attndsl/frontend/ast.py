"""The AST: frozen dataclasses, each carrying the source span it came from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from attndsl.errors import Span


@dataclass(frozen=True)
class Node:
    span: Span = field(compare=False, repr=False)


# -- expressions -------------------------------------------------------------------------

@dataclass(frozen=True)
class Number(Node):
    value: int | float


@dataclass(frozen=True)
class String(Node):
    value: str


@dataclass(frozen=True)
class Name(Node):
    id: str


@dataclass(frozen=True)
class Attr(Node):
    value: Expr
    attr: str


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # + - * / // % @ ** & |
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Node):
    value: Expr


@dataclass(frozen=True)
class Invert(Node):
    """`~x`: logical not of a bool tensor."""

    value: Expr


@dataclass(frozen=True)
class Keyword(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Call(Node):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True)
class Slice(Node):
    start: Expr | None
    stop: Expr | None


@dataclass(frozen=True)
class Ellipsis_(Node):
    """`...` in a subscript: as many full slices as the remaining axes need."""


@dataclass(frozen=True)
class Subscript(Node):
    value: Expr
    items: tuple[Expr | Slice | Ellipsis_, ...]


@dataclass(frozen=True)
class TupleExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple[Expr, ...]


Expr = (Number | String | Name | Attr | BinOp | Neg | Invert | Call | Subscript | TupleExpr
        | ListExpr)


# -- statements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DimSpec(Node):
    size: Expr
    max: Expr | None


@dataclass(frozen=True)
class TensorTypeSpec(Node):
    dtype: str
    dims: tuple[DimSpec, ...]


@dataclass(frozen=True)
class Input(Node):
    name: str
    type: TensorTypeSpec
    default: Expr | None = None      # `= 0`: the input may be omitted (filled with this)


@dataclass(frozen=True)
class Output(Node):
    name: str
    value: Expr | None


@dataclass(frozen=True)
class State(Node):
    """`state mem: float[B, M, d]`: recurrent state, zeros unless the call passes it."""

    name: str
    type: TensorTypeSpec


@dataclass(frozen=True)
class Next(Node):
    """`next mem = expr`: the state's value for the next call (an output of this one)."""

    name: str
    value: Expr


@dataclass(frozen=True)
class Assign(Node):
    target: str
    value: Expr


@dataclass(frozen=True)
class Return(Node):
    value: Expr


@dataclass(frozen=True)
class Repeat(Node):
    count: Expr
    scope: str
    shared: bool
    body: tuple[Stmt, ...]


Stmt = Input | Output | State | Next | Assign | Return | Repeat


# -- top level -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import(Node):
    path: str
    alias: str | None


@dataclass(frozen=True)
class Const(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Param(Node):
    name: str
    default: Expr | None


@dataclass(frozen=True)
class Block(Node):
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Model(Node):
    name: str | None
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Setting(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Train(Node):
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Module(Node):
    """One parsed file."""

    path: str
    items: tuple[Import | Const | Block | Model | Train, ...]


def dump(node: object, indent: int = 0) -> str:
    """A stable, indented text form of an AST (used by `--emit ast` and golden tests)."""
    pad = "  " * indent
    if isinstance(node, Node):
        parts = [f"{pad}{type(node).__name__}"]
        for f in fields(node):
            if f.name == "span":
                continue
            value = getattr(node, f.name)
            if isinstance(value, (Node, tuple)) and value != ():
                parts.append(f"{pad}  {f.name}:")
                parts.append(dump(value, indent + 2))
            else:
                parts.append(f"{pad}  {f.name}: {value!r}")
        return "\n".join(parts)
    if isinstance(node, tuple):
        return "\n".join(dump(item, indent) for item in node)
    return f"{pad}{node!r}"
