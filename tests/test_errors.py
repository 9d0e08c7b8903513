"""One test per spec-triggerable error code: the code, the span (line, col) and the rendered
diagnostic (source line plus caret). E301/E302/E401 are runtime errors, tested elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

import attndsl
from attndsl.errors import (
    ALL_ERRORS,
    ArgumentError,
    AttnError,
    ConfigError,
    DefinitionError,
    ImportError_,
    InputError,
    NameError_,
    RecursionError_,
    ShapeError,
    SyntaxError_,
    TrainingError,
    TypeError_,
    did_you_mean,
)

HEADER = "const d_model = 64\nconst heads = 4\n"


def build_error(text: str, **kwargs: object) -> AttnError:
    with pytest.raises(AttnError) as info:
        attndsl.build(text, **kwargs)
    return info.value


def check(err: AttnError, cls: type[AttnError], line: int, col: int, *fragments: str) -> None:
    """The error's class, code, location, message fragments and rendered caret line."""
    assert type(err) is cls, err.format()
    assert err.code == cls.code
    assert err.span is not None, err.format()
    assert (err.span.line, err.span.col) == (line, col), err.format()
    for fragment in fragments:
        assert fragment in err.message, err.format()
    text = err.format()
    src_line = err.span.source.splitlines()[line - 1]
    assert f"error[{cls.code}]" in text
    assert f" {line} | {src_line}" in text
    caret_line = text.splitlines()[2]
    assert caret_line.index("^") == caret_line.index("|") + 1 + col, text


def test_error_codes_are_unique_and_stable() -> None:
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert codes == ["E100", "E101", "E201", "E202", "E203", "E204", "E205", "E206", "E207",
                     "E208", "E301", "E302", "E401"]
    assert all(issubclass(cls, AttnError) for cls in ALL_ERRORS)


# -- E100 syntax ------------------------------------------------------------------------------

def test_e100_unclosed_call() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    y = linear(x, 4\n"
                      "    output z = y\n}\n")
    check(err, SyntaxError_, 4, 5, "unexpected 'output'")
    assert "')'" in (err.hint or "")


def test_e100_missing_equals() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    y linear(x)\n}\n")
    check(err, SyntaxError_, 3, 7, "unexpected 'linear'")
    assert err.hint == "expected '='"


def test_e100_bad_character() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    y = x $ 2\n}\n")
    check(err, SyntaxError_, 3, 11, "unexpected character '$'")


def test_e100_unexpected_end_of_file() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n")
    assert isinstance(err, SyntaxError_) and "end of file" in err.message
    assert err.span is not None and err.span.line == 2


def test_e100_nesting_limit() -> None:
    err = build_error("const a = " + "1 + " * 300 + "1\nmodel { }\n")
    assert isinstance(err, SyntaxError_) and "nested" in err.message


# -- E101 input -------------------------------------------------------------------------------

def test_e101_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such spec file") as info:
        attndsl.build(str(tmp_path / "missing.attn"))
    assert info.value.code == "E101"


def test_e101_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.attn"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00garbage")
    with pytest.raises(InputError, match="binary"):
        attndsl.build(path)


def test_e101_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.attn"
    path.write_bytes("# caf\xe9\nmodel { }\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8") as info:
        attndsl.build(path)
    assert "0xe9" in info.value.message
    assert (info.value.span.line, info.value.span.col) == (1, 6)


# -- E201 names ---------------------------------------------------------------------------------

def test_e201_unknown_name_with_hint() -> None:
    err = build_error(HEADER + "model {\n    input x: float[B, T, d_model]\n"
                      "    output y = linear(x, d_modle)\n}\n")
    check(err, NameError_, 5, 26, "unknown name 'd_modle'")
    assert err.hint == "did you mean 'd_model'?"
    assert "^^^^^^^" in err.format()  # the caret spans the whole name


def test_e201_unknown_function_hint() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    output y = layernorm(x)\n}\n")
    check(err, NameError_, 3, 16, "unknown name 'layernorm'")
    assert err.hint == "did you mean 'layer_norm'?"


def test_e201_bad_tie_target() -> None:
    err = build_error("model {\n    input t: int[B, T]\n    wte = embedding(t, 10, 8)\n"
                      "    output y = linear(wte, 10, tie=\"wtf\")\n}\n")
    check(err, NameError_, 4, 16, "tie: no parameters named 'wtf.weight'")
    assert err.hint == "did you mean 'wte'?"


# -- E202 arguments -------------------------------------------------------------------------------

def test_e202_unknown_keyword() -> None:
    err = build_error(HEADER + "model {\n    input x: float[B, T, d_model]\n"
                      "    output y = linear(x, d_model, biass=false)\n}\n")
    check(err, ArgumentError, 5, 16, "linear() has no argument 'biass'")
    assert err.hint == "did you mean 'bias'?"


def test_e202_too_many_arguments() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    output y = relu(x, 2)\n}\n")
    check(err, ArgumentError, 3, 16, "relu(): too many positional arguments")
    assert err.hint == "usage: relu(x)"


def test_e202_missing_block_argument() -> None:
    err = build_error(HEADER + "block f(x, n) {\n    return linear(x, n)\n}\nmodel {\n"
                      "    input x: float[B, T, d_model]\n    output y = f(x)\n}\n")
    check(err, ArgumentError, 8, 16, "block 'f' is missing argument 'n'")
    assert err.hint == "signature: f(x, n)"


def test_e202_block_unknown_keyword() -> None:
    err = build_error("block f(x, n=2) {\n    return x * n\n}\nmodel {\n"
                      "    input x: float[B, 4]\n    output y = f(x, m=3)\n}\n")
    check(err, ArgumentError, 6, 16, "block 'f' has no parameter 'm'")


def test_e202_bad_choice() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n"
                      "    output y = gelu(x, approximate=\"erf\")\n}\n")
    check(err, ArgumentError, 3, 16, "approximate must be one of 'tanh', 'none'")


# -- E203 types ---------------------------------------------------------------------------------------

def test_e203_float_where_integer_needed() -> None:
    err = build_error(HEADER + "model {\n    input x: float[B, T, d_model]\n"
                      "    output y = linear(x, 2.5)\n}\n")
    check(err, TypeError_, 5, 16, "linear output size must be a positive integer",
          "the number 2.5")


def test_e203_int_ids_required() -> None:
    err = build_error("model {\n    input x: float[B, T]\n    output y = embedding(x, 10, 4)\n}\n")
    check(err, TypeError_, 3, 16, "embedding ids must be a int tensor")


def test_e203_bad_operator_operands() -> None:
    err = build_error("const a = causal + 1\nmodel {\n    input x: float[B, 4]\n"
                      "    output y = x\n}\n")
    check(err, TypeError_, 1, 11, "operator '+' cannot combine")


# -- E204 shapes ----------------------------------------------------------------------------------------

def test_e204_matmul_mismatch_names_both_shapes() -> None:
    err = build_error(HEADER + "model {\n    input a: float[B, T, d_model]\n"
                      "    input b: float[B, 32, T]\n    output y = a @ b\n}\n")
    check(err, ShapeError, 6, 16, "[B, T, 64]", "[B, 32, T]")


def test_e204_heads_must_divide_width() -> None:
    err = build_error(HEADER + "model {\n    input x: float[B, T, d_model]\n"
                      "    output y = attention(x, 5)\n}\n")
    check(err, ShapeError, 5, 16, "model width 64 is not divisible by heads=5")


def test_e204_broadcast_mismatch_inside_block_points_at_block_line() -> None:
    err = build_error("block bad(x, y) {\n    z = x + y\n    return z\n}\nmodel {\n"
                      "    input a: float[B, T, 8]\n    input b: float[B, T, 4]\n"
                      "    output y = bad(a, b)\n}\n")
    check(err, ShapeError, 2, 9, "[B, T, 8]", "[B, T, 4]", "do not broadcast")


# -- E205 recursion ---------------------------------------------------------------------------------------

def test_e205_mutual_recursion() -> None:
    err = build_error("block f(x) {\n    return g(x)\n}\nblock g(x) {\n    return f(x)\n}\n"
                      "model {\n    input x: float[B, 4]\n    output y = f(x)\n}\n")
    check(err, RecursionError_, 5, 12, "block 'f' calls itself (f -> g -> f)")


# -- E206 imports -------------------------------------------------------------------------------------------

def test_e206_missing_import(tmp_path: Path) -> None:
    main = tmp_path / "main.attn"
    main.write_text('import "nowhere.attn"\nmodel {\n    input x: float[B, 4]\n'
                    "    output y = x\n}\n")
    with pytest.raises(ImportError_) as info:
        attndsl.build(main)
    check(info.value, ImportError_, 1, 1, "cannot import 'nowhere.attn'", "no such spec file")


def test_e206_circular_import(tmp_path: Path) -> None:
    (tmp_path / "a.attn").write_text('import "b.attn"\nconst a = 1\n')
    (tmp_path / "b.attn").write_text('const b = 2\nimport "a.attn"\n')
    main = tmp_path / "main.attn"
    main.write_text('import "a.attn"\nmodel {\n    input x: float[B, 4]\n    output y = x\n}\n')
    with pytest.raises(ImportError_) as info:
        attndsl.build(main)
    err = info.value
    assert err.code == "E206" and "circular import of 'a.attn'" in err.message
    assert err.span is not None and err.span.file.endswith("b.attn")
    assert (err.span.line, err.span.col) == (2, 1)
    assert ' 2 | import "a.attn"' in err.format()


def test_e206_import_with_syntax_error_reports_the_imported_file(tmp_path: Path) -> None:
    (tmp_path / "lib.attn").write_text("block f(x) {\n    return x +\n}\n")
    main = tmp_path / "main.attn"
    main.write_text('import "lib.attn" as lib\nmodel {\n    input x: float[B, 4]\n'
                    "    output y = lib.f(x)\n}\n")
    with pytest.raises(SyntaxError_) as info:
        attndsl.build(main)
    assert info.value.span is not None and info.value.span.file.endswith("lib.attn")
    assert info.value.span.line == 3


def test_e201_missing_module_member(tmp_path: Path) -> None:
    (tmp_path / "lib.attn").write_text("block ffn(x) {\n    return relu(x)\n}\n")
    main = tmp_path / "main.attn"
    main.write_text('import "lib.attn" as lib\nmodel {\n    input x: float[B, 4]\n'
                    "    output y = lib.fnn(x)\n}\n")
    with pytest.raises(NameError_) as info:
        attndsl.build(main)
    check(info.value, NameError_, 4, 16, "module 'lib' has no 'fnn'")
    assert info.value.hint == "did you mean 'ffn'?"


# -- E207 definitions -----------------------------------------------------------------------------------------

def test_e207_duplicate_constant() -> None:
    err = build_error("const a = 1\nconst a = 2\nmodel {\n    input x: float[B, 4]\n"
                      "    output y = x\n}\n")
    check(err, DefinitionError, 2, 1, "constant 'a' is defined twice")


def test_e207_block_shadows_builtin() -> None:
    err = build_error("block relu(x) {\n    return x\n}\nmodel {\n    input x: float[B, 4]\n"
                      "    output y = x\n}\n")
    check(err, DefinitionError, 1, 1, "block 'relu' is a built-in")


def test_e207_duplicate_output() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    output y = x\n    output y = x\n}\n")
    check(err, DefinitionError, 4, 5, "output 'y' is declared twice")


def test_e207_duplicate_input() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    input x: float[B, 4]\n"
                      "    output y = x\n}\n")
    check(err, DefinitionError, 3, 5, "'x' is already defined")


def test_e207_shared_repeat_needs_same_parameter_shapes() -> None:
    err = build_error("model {\n    input x: float[B, 4]\n    repeat 2 as layers shared {\n"
                      "        x = linear(x, 8)\n    }\n    output y = x\n}\n")
    check(err, DefinitionError, 4, 13, "parameter 'layers.linear.weight' is defined twice")


def test_e207_no_model() -> None:
    err = build_error("const a = 1\n")
    assert isinstance(err, DefinitionError) and "no `model" in err.message


# -- E208 config ------------------------------------------------------------------------------------------------

def test_e208_unknown_set_key() -> None:
    with pytest.raises(ConfigError) as info:
        attndsl.build(HEADER + "model {\n    input x: float[B, d_model]\n    output y = x\n}\n",
                      config={"nope": 1})
    assert info.value.code == "E208"
    assert "--set nope" in info.value.message


def test_e208_unknown_set_key_hint() -> None:
    with pytest.raises(ConfigError) as info:
        attndsl.build("specs/gpt.attn", config={"layer": 2})
    assert info.value.hint == "did you mean 'layers'?"


def test_e208_bad_set_value_points_at_constant() -> None:
    err = build_error(HEADER + "model {\n    input x: float[B, d_model]\n    output y = x\n}\n",
                      config={"heads": "four"})
    check(err, ConfigError, 2, 1, "--set heads=four: not a number")


def test_did_you_mean() -> None:
    assert did_you_mean("d_modle", ["d_model", "heads"]) == "did you mean 'd_model'?"
    assert did_you_mean("zzz", ["d_model"]) is None


# -- E401 training section --------------------------------------------------------------------------------------

TRAIN_MODEL = "model {\n    input x: float[B, 4]\n    output y = linear(x, 3)\n}\n"


def test_e401_unknown_training_setting_with_hint() -> None:
    err = build_error(TRAIN_MODEL + "train {\n    optimiser = adam()\n}\n")
    check(err, TrainingError, 6, 5, "unknown training setting 'optimiser'")
    assert err.hint == "did you mean 'optimizer'?"


def test_e401_setting_of_the_wrong_kind() -> None:
    err = build_error(TRAIN_MODEL + "train {\n    schedule = adam()\n}\n")
    check(err, TrainingError, 6, 5, "'schedule' must be a schedule")


# -- resource limits and accepted nonsense (issue 9, front end) ----------------------------------

@pytest.mark.parametrize("text, line, fragment", [
    ("model m { input x: float[B, -3]\n output y = x }", 1, "input dimensions must be positive"),
    ("model m { input x: float[B, T <= -4]\n output y = x }", 1, "bound of T must be positive"),
    ("model m { input x: float[B, 6]\n output y = reshape(x, [B, -2, -3]) }", 2,
     "size must be positive"),
    ("const a = 1" + "0" * 5000 + "\nmodel m { input x: float[B, 6]\n output y = x }", 1,
     "integer literal of 5001 digits"),
    ("const a = 3\nconst b = " + " * ".join(["a"] * 60) + "\n" + "".join(
        f"const {c} = {p} * {p}\n" for p, c in zip("bcdefgh", "cdefghi"))
     + "model m { input x: float[B, 6]\n output y = x }", 8, "larger than 4096 bits"),
    ("model m { input x: float[B, 6]\n output y = linear(x, 1e400) }", 2,
     "must be a positive integer"),
])
def test_nonsense_and_bombs_are_located_errors(text, line, fragment):
    err = build_error(text)
    assert fragment in str(err) and err.span is not None and err.span.line == line, str(err)


def test_sinusoidal_width_is_a_feature_size():
    """`layer_norm(sinusoidal(T, 8))` used to raise AttributeError ('int' has no as_int)."""
    g = attndsl.build("model m { input x: float[B, T, 8]\n output y = layer_norm(sinusoidal(T, 8)) }")
    assert str(g.nodes[g.outputs["y"]].type) == "float[T, 8]"


def test_graph_node_limit(monkeypatch):
    import attndsl.frontend.elaborate as elaborate
    monkeypatch.setattr(elaborate, "MAX_NODES", 500)
    err = build_error("model m { input x: float[B, 6]\n"
                      "repeat 100 as a { repeat 100 as b { x = relu(x) } }\n output y = x }")
    assert "more than 500 graph nodes" in str(err) and err.span.line == 2
    assert "MAX_NODES" in (err.hint or "")


# -- newline conventions, odd files (issue 9) ----------------------------------------------------

BROKEN = ["model m {", "  input x: float[B, 4]", "  output y = foo(x)", "}", ""]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_newline_convention_locates_the_same_line(newline: str) -> None:
    """CRLF and lone-CR files report the line an editor shows (a CR-only file used to be one
    line, and a `#` comment swallowed the rest of it)."""
    err = build_error(newline.join(["# a comment", *BROKEN]))
    assert (err.span.line, err.span.col) == (4, 14), err.format()
    assert " 4 |   output y = foo(x)" in err.format()


@pytest.mark.parametrize("char", ["\f", "\v", "\u2028", "\u2029", "\x85", "\x1c"])
def test_characters_python_splits_lines_on_are_not_line_breaks(char: str) -> None:
    """Python's splitlines() breaks at form feeds, U+2028 and friends; the grammar does not.
    The quoted line and caret must follow the grammar's lines."""
    lines = ["model m {", f"  input x: float[B, 4]{char}", "  output y = foo(x)", "}"]
    err = build_error("\n".join(lines))
    text = err.format()
    if char == "\f":                             # whitespace to the grammar: the name error
        assert (err.span.line, err.span.col) == (3, 14), text
        assert " 3 |   output y = foo(x)" in text
    else:                                        # not whitespace: located where it stands
        assert (err.span.line, err.span.col) == (2, 23), text
        assert " 2 |   input x: float[B, 4] " in text
    caret = text.splitlines()[2]
    assert caret.index("^") == caret.index("|") + 1 + err.span.col, text


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.attn"
    path.write_bytes(b"\xef\xbb\xbfmodel m {\n  input x: float[B, 4]\n  output y = x\n}\n")
    assert attndsl.build(path).outputs


def test_only_regular_attn_files_are_specs(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("myhost\n")
    with pytest.raises(InputError, match="not an .attn file"):
        attndsl.build(tmp_path / "hostname")
    (tmp_path / "dir.attn").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        attndsl.build(tmp_path / "dir.attn")
    (tmp_path / "a.attn").symlink_to(tmp_path / "b.attn")
    (tmp_path / "b.attn").symlink_to(tmp_path / "a.attn")
    with pytest.raises(InputError, match="cannot read"):
        attndsl.build(tmp_path / "a.attn")


@pytest.mark.parametrize("target", ["/dev/zero", "loop.attn", "sub", "data.txt"])
def test_imports_of_devices_loops_directories_and_non_specs_fail_fast(
        tmp_path: Path, target: str) -> None:
    (tmp_path / "loop.attn").symlink_to(tmp_path / "loop.attn")
    (tmp_path / "sub").mkdir()
    (tmp_path / "data.txt").write_text("model m { }\n")
    main = tmp_path / "main.attn"
    main.write_text(f'import "{target}"\nmodel m {{\n  input x: float[B, 4]\n  output y = x\n}}\n')
    with pytest.raises(ImportError_, match=f"cannot import '{target}'") as info:
        attndsl.build(main)
    assert (info.value.span.line, info.value.span.col) == (1, 1)


def test_an_oversized_spec_is_refused_before_reading(tmp_path: Path) -> None:
    from attndsl.frontend.parser import MAX_SOURCE_BYTES
    path = tmp_path / "big.attn"
    with open(path, "wb") as f:
        f.truncate(MAX_SOURCE_BYTES + 1)              # sparse: no data is written or read
    with pytest.raises(InputError, match="specs are limited to"):
        attndsl.build(path)


@pytest.mark.parametrize("text, fragment", [
    ("const d = 2**2000\nmodel m {\n input x: float[B, 4]\n output y = x\n"
     " p = parameter([d, d])\n}\n", "603-digit number"),
    ("const d = 10**300\nmodel m {\n input x: float[B, 4]\n output y = linear(x, d)\n}\n",
     "301-digit number"),
    ("model m {\n input x: float[B, 100000000000000000000000000]\n output y = x\n}\n",
     "27-digit number"),
])
def test_sizes_beyond_2_to_the_40_are_located_errors(text: str, fragment: str) -> None:
    """A parameter count that overflowed when printed (OverflowError in `check`), and sizes
    no model has, are refused where they are written."""
    err = build_error(text)
    assert "limit of 2**40" in err.message and fragment in err.message, err.format()
    assert err.span is not None and err.span.line in (4, 5, 2)
