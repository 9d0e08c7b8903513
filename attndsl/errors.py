"""User-facing errors: every spec problem is an `AttnError` with a stable code and a span.

`format()` renders the compiler-style diagnostic::

    specs/gpt.attn:12:9: error[E201]: unknown name 'd_modle'
       12 |     x = linear(x, d_modle)
          |                   ^^^^^^^
    hint: did you mean 'd_model'?
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A source range: 1-based line/column of the first and last character."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    source: str = ""

    def __repr__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# Shown as one space in a quoted source line, so the caret stays under its column.
INVISIBLE = {ord(c): " " for c in "\t\v\f\r\x1c\x1d\x1e\x85\u2028\u2029"}


class AttnError(Exception):
    """Base of every error that a spec (not a bug in attndsl) can cause."""

    code = "E000"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.span!r}: " if self.span else ""
        return f"{where}error[{self.code}]: {self.message}"

    def format(self) -> str:
        """Render the diagnostic with the source line and a caret under the span."""
        lines = [str(self)]
        span = self.span
        if span is not None and span.source:
            src_lines = span.source.split("\n")               # the grammar's line breaks
            if 1 <= span.line <= len(src_lines):
                text = src_lines[span.line - 1].translate(INVISIBLE)
                width = len(str(span.line))
                end = span.end_col if span.end_line == span.line else len(text) + 1
                carets = max(1, end - span.col)
                lines.append(f" {span.line} | {text}")
                lines.append(f" {' ' * width} | {' ' * (span.col - 1)}{'^' * carets}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class SyntaxError_(AttnError):
    """The text does not follow the grammar."""

    code = "E100"


class InputError(AttnError):
    """The file cannot be read or is not text."""

    code = "E101"


class NameError_(AttnError):
    """A name is not defined."""

    code = "E201"


class ArgumentError(AttnError):
    """Wrong arguments to an op or block: unknown keyword, missing or extra argument."""

    code = "E202"


class TypeError_(AttnError):
    """A value of the wrong kind (a tensor where a number is needed, a bad dtype...)."""

    code = "E203"


class ShapeError(AttnError):
    """Tensor shapes do not agree."""

    code = "E204"


class RecursionError_(AttnError):
    """A block calls itself, directly or through others."""

    code = "E205"


class ImportError_(AttnError):
    """An import cannot be resolved or is circular."""

    code = "E206"


class DefinitionError(AttnError):
    """A duplicate or invalid definition (constant, block, input, output, parameter name)."""

    code = "E207"


class ConfigError(AttnError):
    """A `--set` override or config entry is invalid."""

    code = "E208"


class RuntimeInputError(AttnError):
    """A runtime input does not match the declared type (dtype, rank, dims, max length)."""

    code = "E301"


class WeightsError(AttnError):
    """Weights do not match the model: missing, unexpected or wrongly shaped parameters."""

    code = "E302"


class ExportError(AttnError):
    """A model the ONNX exporter cannot export, or whose export fails the checks."""

    code = "E303"


class TrainingError(AttnError):
    """The training section or training options are invalid."""

    code = "E401"


ALL_ERRORS: tuple[type[AttnError], ...] = (
    SyntaxError_, InputError, NameError_, ArgumentError, TypeError_, ShapeError,
    RecursionError_, ImportError_, DefinitionError, ConfigError, RuntimeInputError,
    WeightsError, TrainingError,
)


def did_you_mean(name: str, candidates: object) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
