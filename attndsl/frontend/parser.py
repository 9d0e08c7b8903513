"""Parse `.attn` text into the AST, turning every Lark failure into an `AttnError`."""

from __future__ import annotations

import functools
import stat
import sys
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from attndsl.errors import InputError, Span, SyntaxError_
from attndsl.frontend import ast

MAX_SOURCE_BYTES = 8 * 1024 * 1024
MAX_NESTING = 200
MAX_INT_DIGITS = 1000

# Human names for the grammar's terminals, used in "expected ..." hints.
TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "DTYPE": "a dtype (int, float, bool)",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "AT": "'@'", "DOT": "'.'", "VBAR": "'|'", "AMPERSAND": "'&'", "LE": "'<='",
    "PERCENT": "'%'", "DOUBLESTAR": "'**'", "DOUBLESLASH": "'//'", "SHARED": "'shared'",
    "$END": "end of file",
}

# Frequent mistakes -> specific messages (Lark's `match_examples`).
SYNTAX_EXAMPLES: dict[str, list[str]] = {
    "missing '=' in an assignment": ["model { x linear(y) }", "model { x }"],
    "a statement is not closed: unbalanced parentheses or brackets": [
        "model { x = f(a, b }", "model { x = f(a }", "model { x = [1, 2 }"],
    "missing '{' after a block, model or repeat header": [
        "block f(x) x = 1", "model x = 1", "model { repeat 2 as l x = 1 }"],
    "a block or model is not closed with '}'": ["model { x = 1", "block f(x) { return x"],
    "an input needs a type, like `input tokens: int[B, T]`": [
        "model { input x }", "model { input x: }", "model { input x: int }"],
    "an expression is incomplete": ["model { x = 1 + }", "model { x = f(a, ) + }", "const a ="],
}


@functools.lru_cache(maxsize=1)
def grammar_parser() -> lark.Lark:
    text = resources.files("attndsl.grammar").joinpath("attn.lark").read_text(encoding="utf-8")
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _span(meta_or_token: object, file: str, source: str) -> Span:
    m = meta_or_token
    line = getattr(m, "line", None) or 1
    col = getattr(m, "column", None) or 1
    end_line = getattr(m, "end_line", None) or line
    end_col = getattr(m, "end_column", None) or col + 1
    return Span(file, line, col, end_line, end_col, source)


class ToAst(Transformer):
    """Lark tree -> frozen AST dataclasses."""

    def __init__(self, file: str, source: str):
        super().__init__()
        self.file, self.source = file, source

    def sp(self, meta: object) -> Span:
        return _span(meta, self.file, self.source)

    # top level
    @v_args(meta=True)
    def start(self, meta, items):
        return ast.Module(self.sp(meta), self.file, tuple(items))

    @v_args(meta=True)
    def import_stmt(self, meta, c):
        return ast.Import(self.sp(meta), _unquote(c[0]), str(c[1]) if len(c) > 1 and c[1] else None)

    @v_args(meta=True)
    def const_def(self, meta, c):
        return ast.Const(self.sp(meta), str(c[0]), c[1])

    @v_args(meta=True)
    def block_def(self, meta, c):
        return ast.Block(self.sp(meta), str(c[0]), tuple(c[1] or ()), c[2])

    def params(self, c):
        return tuple(c)

    @v_args(meta=True)
    def param(self, meta, c):
        return ast.Param(self.sp(meta), str(c[0]), c[1] if len(c) > 1 else None)

    @v_args(meta=True)
    def model_def(self, meta, c):
        return ast.Model(self.sp(meta), str(c[0]) if c[0] else None, c[1])

    @v_args(meta=True)
    def train_def(self, meta, c):
        return ast.Train(self.sp(meta), tuple(c))

    @v_args(meta=True)
    def setting(self, meta, c):
        return ast.Setting(self.sp(meta), str(c[0]), c[1])

    def body(self, c):
        return tuple(c)

    # statements
    @v_args(meta=True)
    def input_stmt(self, meta, c):
        return ast.Input(self.sp(meta), str(c[0]), c[1], c[2] if len(c) > 2 else None)

    @v_args(meta=True)
    def tensor_type(self, meta, c):
        return ast.TensorTypeSpec(self.sp(meta), str(c[0]), tuple(c[1] or ()))

    def dims(self, c):
        return tuple(c)

    @v_args(meta=True)
    def dim(self, meta, c):
        return ast.DimSpec(self.sp(meta), c[0], c[2] if len(c) > 2 else None)

    @v_args(meta=True)
    def output_stmt(self, meta, c):
        return ast.Output(self.sp(meta), str(c[0]), c[1] if len(c) > 1 else None)

    @v_args(meta=True)
    def state_stmt(self, meta, c):
        return ast.State(self.sp(meta), str(c[0]), c[1])

    @v_args(meta=True)
    def next_stmt(self, meta, c):
        return ast.Next(self.sp(meta), str(c[0]), c[1])

    def target(self, c):
        return c[0]

    @v_args(meta=True)
    def assign(self, meta, c):
        return ast.Assign(self.sp(meta), str(c[0]), c[1])

    @v_args(meta=True)
    def return_stmt(self, meta, c):
        return ast.Return(self.sp(meta), c[0])

    def scope_name(self, c):
        return ".".join(str(t) for t in c)

    def scope_part(self, c):
        return c[0]

    @v_args(meta=True)
    def repeat_stmt(self, meta, c):
        shared = len(c) == 4
        return ast.Repeat(self.sp(meta), c[0], str(c[1]), shared, c[-1])

    # expressions
    def _bin(op):  # noqa: N805 - helper building methods
        @v_args(meta=True)
        def method(self, meta, c):
            return ast.BinOp(self.sp(meta), op, c[0], c[1])
        return method

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")
    floordiv, mod, matmul, pow = _bin("//"), _bin("%"), _bin("@"), _bin("**")
    and_op, or_op = _bin("&"), _bin("|")

    @v_args(meta=True)
    def neg(self, meta, c):
        return ast.Neg(self.sp(meta), c[0])

    @v_args(meta=True)
    def invert(self, meta, c):
        return ast.Invert(self.sp(meta), c[0])

    @v_args(meta=True)
    def ellipsis(self, meta, c):
        return ast.Ellipsis_(self.sp(meta))

    @v_args(meta=True)
    def number(self, meta, c):
        text = str(c[0])
        if not any(ch in text for ch in ".eE") and len(text.lstrip("0")) > MAX_INT_DIGITS:
            raise SyntaxError_(f"integer literal of {len(text)} digits (the limit is "
                               f"{MAX_INT_DIGITS})", self.sp(meta),
                               "sizes and constants this large cannot be computed with")
        value = float(text) if any(ch in text for ch in ".eE") else int(text)
        return ast.Number(self.sp(meta), value)

    @v_args(meta=True)
    def string(self, meta, c):
        return ast.String(self.sp(meta), _unquote(c[0]))

    @v_args(meta=True)
    def name(self, meta, c):
        return ast.Name(self.sp(meta), str(c[0]))

    @v_args(meta=True)
    def attr(self, meta, c):
        return ast.Attr(self.sp(meta), c[0], str(c[1]))

    @v_args(meta=True)
    def call(self, meta, c):
        args = c[1] or ()
        pos = tuple(a for a in args if not isinstance(a, ast.Keyword))
        kws = tuple(a for a in args if isinstance(a, ast.Keyword))
        return ast.Call(self.sp(meta), c[0], pos, kws)

    def args(self, c):
        return tuple(c)

    @v_args(meta=True)
    def kwarg(self, meta, c):
        return ast.Keyword(self.sp(meta), str(c[0]), c[1])

    @v_args(meta=True)
    def subscript(self, meta, c):
        return ast.Subscript(self.sp(meta), c[0], c[1])

    def subscripts(self, c):
        return tuple(c)

    @v_args(meta=True)
    def slice(self, meta, c):
        return ast.Slice(self.sp(meta), c[0], c[1])

    @v_args(meta=True)
    def tuple(self, meta, c):
        items = [c[0]] + list(c[1] or ()) if c else []
        return ast.TupleExpr(self.sp(meta), tuple(items))

    @v_args(meta=True)
    def list(self, meta, c):
        return ast.ListExpr(self.sp(meta), tuple(c[0] or ()))

    def exprs(self, c):
        return tuple(c)


def _unquote(token: Token) -> str:
    return str(token)[1:-1].encode("utf-8").decode("unicode_escape", errors="replace")


def read_source(path: str | Path) -> str:
    """Read a spec file as UTF-8 text. Only regular `.attn` files (not a directory, device,
    FIFO or `/etc/hostname`), at most MAX_SOURCE_BYTES, checked before reading."""
    p = Path(path)
    try:
        info = p.stat()                                   # follows symlinks
    except FileNotFoundError:
        raise InputError(f"no such spec file: {p}") from None
    except RuntimeError:                                  # a symlink loop
        raise InputError(f"cannot read {p}: symbolic link loop") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise InputError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{p} is not a regular file (a directory, device or pipe); "
                         "specs are .attn files")
    if p.suffix != ".attn":
        raise InputError(f"{p} is not an .attn file", None,
                         "spec files end in .attn; rename it if it really is a spec")
    if info.st_size > MAX_SOURCE_BYTES:
        raise InputError(f"{p} is {info.st_size} bytes; specs are limited to "
                         f"{MAX_SOURCE_BYTES}")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)           # bounded even if the file grows
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    return decode_source(data, str(p))


def decode_source(data: bytes, file: str) -> str:
    """Bytes -> text; errors point at the file (and, for bad bytes, at their line and column).
    A UTF-8 byte-order mark is dropped."""
    whole = Span(file, 1, 1, 1, 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise InputError(f"the file is {len(data)} bytes; specs are limited to "
                         f"{MAX_SOURCE_BYTES}", whole)
    if b"\x00" in data:
        raise InputError("this looks like a binary file, not an .attn spec",
                         _byte_span(data, data.index(b"\x00"), file))
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (bad byte 0x{data[e.start]:02x})",
                         _byte_span(data, e.start, file)) from None


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF, the only line break the grammar (and every line and column
    the compiler reports) counts; form feeds, U+2028 and the like are not line breaks."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _byte_span(data: bytes, offset: int, file: str) -> Span:
    before = data[:offset].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    line = before.count(b"\n") + 1
    col = len(before) - (before.rfind(b"\n") + 1) + 1
    return Span(file, line, col, line, col + 1)


def _first_too_deep(text: str) -> tuple[int, int] | None:
    """(line, col) of the first bracket nested more than MAX_NESTING deep, or None."""
    depth, line, col = 0, 1, 0
    for ch in text:
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING:
                return line, col
        elif ch in ")]}":
            depth -= 1
    return None


def _too_deep(tree: lark.Tree) -> lark.Tree | None:
    """The first node nested more than MAX_NESTING deep (`1+1+...`, `---x`), or None."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return node
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))
    return None


def parse_text(text: str, file: str = "<string>") -> ast.Module:
    """Parse spec text into an `ast.Module`; raises `SyntaxError_` with a located hint."""
    if len(text) > MAX_SOURCE_BYTES:                  # text given directly, not read from a file
        raise InputError(f"the spec is {len(text)} characters; specs are limited to "
                         f"{MAX_SOURCE_BYTES}", Span(file, 1, 1, 1, 1))
    text = normalize_newlines(text)
    deep = _first_too_deep(text)
    if deep is not None:
        line, col = deep
        raise SyntaxError_(f"brackets are nested more than {MAX_NESTING} deep",
                           Span(file, line, col, line, col + 1, text),
                           "split the expression with intermediate assignments")
    parser = grammar_parser()
    try:
        tree = parser.parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _syntax_error(e, parser, text, file) from None
    deep = _too_deep(tree)
    if deep is not None:
        raise SyntaxError_(f"expressions are nested more than {MAX_NESTING} deep",
                           _span(deep.meta, file, text), "split the expression with assignments")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        return ToAst(file, text).transform(tree)
    except lark.exceptions.VisitError as e:   # a located error raised while building the AST
        if isinstance(e.orig_exc, SyntaxError_):
            raise e.orig_exc from None
        raise
    finally:
        sys.setrecursionlimit(limit)


def _syntax_error(e: lark.exceptions.UnexpectedInput, parser: lark.Lark, text: str,
                  file: str) -> SyntaxError_:
    line = getattr(e, "line", 1) or 1
    col = getattr(e, "column", 1) or 1
    if line < 1:  # unexpected end of input: point just past the last character
        lines = text.split("\n")
        line, col = len(lines), len(lines[-1]) + 1
    width = 1
    token = getattr(e, "token", None)
    if isinstance(token, Token) and token.type != "$END":
        width = max(1, len(str(token)))
    span = Span(file, line, col, line, col + width, text)
    label = None
    try:
        label = e.match_examples(parser.parse, SYNTAX_EXAMPLES, use_accepts=True)
    except Exception:  # noqa: BLE001 - best-effort refinement only
        label = None
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        message = f"unexpected character {ch!r}"
    elif isinstance(token, Token) and token.type != "$END":
        message = f"unexpected {str(token)!r}"
    else:
        message = "unexpected end of file"
    if label:
        message = f"{message}: {label}"
    expected = sorted({TOKEN_NAMES.get(t, repr(t.strip('"').lower()) if t.isupper() else t)
                       for t in (getattr(e, "expected", None) or getattr(e, "allowed", None) or ())
                       if not t.startswith("__")},
                      key=lambda x: (x.startswith("'"), x))   # "a name" before keywords
    hint = f"expected {', '.join(expected[:8])}" if expected else None
    return SyntaxError_(message, span, hint)


def parse(text_or_path: str | Path) -> ast.Module:
    """Parse a spec given as a path (if it names a file ending in .attn) or as text."""
    if isinstance(text_or_path, Path) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path
            and text_or_path.endswith(".attn")):
        path = str(text_or_path)
        return parse_text(read_source(path), path)
    return parse_text(str(text_or_path))
