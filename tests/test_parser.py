"""Parser and printer golden tests: `ast.dump` of specs vs tests/golden/*.ast, and
`print_graph` of built specs vs tests/golden/*.ir.

Regenerate the golden files after an intended change with::

    ATTNDSL_UPDATE_GOLDEN=1 python -m pytest tests/test_parser.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

import attndsl
from attndsl.errors import SyntaxError_
from attndsl.frontend import ast
from attndsl.frontend.parser import parse_text
from attndsl.ir.printer import print_graph, to_dot

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
UPDATE = os.environ.get("ATTNDSL_UPDATE_GOLDEN") == "1"

# golden AST name -> spec file (parsed under its bare file name, so the dump is stable)
AST_CASES = {
    "syntax": GOLDEN / "syntax.attn",
    "lib": GOLDEN / "lib.attn",
    "encdec": GOLDEN / "encdec.attn",
    "gpt": GOLDEN / "gpt.attn",  # a frozen copy: editing specs/ must not break these tests
}
# golden IR name -> (spec file, config)
IR_CASES: dict[str, tuple[Path, dict[str, Any]]] = {
    "syntax": (GOLDEN / "syntax.attn", {}),
    "encdec": (GOLDEN / "encdec.attn", {}),
    "gpt_tiny": (GOLDEN / "gpt.attn",
                 {"layers": 2, "d_model": 32, "heads": 2, "vocab": 64, "ctx": 16}),
    "vit_tiny": (ROOT / "specs" / "vit.attn",
                 {"layers": 1, "img": 32, "patch": 16, "d_model": 16, "heads": 2, "d_ff": 32,
                  "classes": 10}),
}


def check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"missing {path.name}: run with ATTNDSL_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs (ATTNDSL_UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize("name", sorted(AST_CASES))
def test_ast_golden(name: str) -> None:
    spec = AST_CASES[name]
    module = parse_text(spec.read_text(encoding="utf-8"), spec.name)
    check_golden(GOLDEN / f"{name}.ast", ast.dump(module) + "\n")


@pytest.mark.parametrize("name", sorted(IR_CASES))
def test_ir_golden(name: str) -> None:
    spec, config = IR_CASES[name]
    check_golden(GOLDEN / f"{name}.ir", print_graph(attndsl.build(spec, config=config)))


# -- parser details ----------------------------------------------------------------------------

def parse_expr(text: str) -> ast.Expr:
    module = parse_text(f"const c = {text}\n")
    const = module.items[0]
    assert isinstance(const, ast.Const)
    return const.value


def test_numbers_strings_and_names() -> None:
    assert parse_expr("42") == ast.Number(None, 42)  # spans do not take part in equality
    assert isinstance(parse_expr("42").value, int)
    assert parse_expr("1.5").value == 1.5 and parse_expr(".5").value == 0.5
    assert parse_expr("1e-5").value == 1e-5 and isinstance(parse_expr("1e3").value, float)
    assert parse_expr('"a\\"b\\n"').value == 'a"b\n'
    assert parse_expr("d_model") == ast.Name(None, "d_model")


def test_operator_precedence() -> None:
    e = parse_expr("a + b * c @ d ** -e")
    # + < * < @ < unary - < ** ; the exponent of ** is a unary
    assert ast.dump(e) == ast.dump(ast.BinOp(None, "+", ast.Name(None, "a"), ast.BinOp(
        None, "*", ast.Name(None, "b"), ast.BinOp(None, "@", ast.Name(None, "c"), ast.BinOp(
            None, "**", ast.Name(None, "d"), ast.Neg(None, ast.Name(None, "e")))))))
    e = parse_expr("causal & window(4) | global([0])")
    assert isinstance(e, ast.BinOp) and e.op == "|"
    assert isinstance(e.left, ast.BinOp) and e.left.op == "&"
    e = parse_expr("-x ** 2")
    assert isinstance(e, ast.Neg) and isinstance(e.value, ast.BinOp)
    e = parse_expr("a - b - c")
    assert isinstance(e, ast.BinOp) and isinstance(e.left, ast.BinOp)  # left-associative


def test_postfix_and_collections() -> None:
    e = parse_expr("f(x, 1, k=2,)[:, 0, 1:, :3].T")
    assert isinstance(e, ast.Attr) and e.attr == "T"
    sub = e.value
    assert isinstance(sub, ast.Subscript) and len(sub.items) == 4
    assert sub.items[0] == ast.Slice(None, None, None)
    assert sub.items[1] == ast.Number(None, 0)
    call = sub.value
    assert isinstance(call, ast.Call) and len(call.args) == 2
    assert call.kwargs == (ast.Keyword(None, "k", ast.Number(None, 2)),)
    assert parse_expr("()") == ast.TupleExpr(None, ())
    assert parse_expr("(1,)") == ast.TupleExpr(None, (ast.Number(None, 1),))
    assert parse_expr("(1)") == ast.Number(None, 1)
    assert parse_expr("[]") == ast.ListExpr(None, ())
    assert parse_expr("[1, 2,]") == ast.ListExpr(None, (ast.Number(None, 1), ast.Number(None, 2)))


def test_statements_and_spans() -> None:
    text = ("# comment\nmodel {\n    input t: int[B, T <= 8]\n    x = t  # trailing\n"
            "    repeat 2 as l shared {\n        x = x\n    }\n    output y = x\n    output x\n}\n")
    module = parse_text(text, "m.attn")
    model = module.items[0]
    assert isinstance(model, ast.Model) and model.name is None
    inp, assign, rep, out1, out2 = model.body
    assert isinstance(inp, ast.Input) and inp.type.dtype == "int"
    assert inp.type.dims[1].max == ast.Number(None, 8)
    assert (inp.span.file, inp.span.line, inp.span.col) == ("m.attn", 3, 5)
    assert isinstance(assign, ast.Assign) and (assign.span.line, assign.span.col) == (4, 5)
    assert assign.value.span.col == 9
    assert isinstance(rep, ast.Repeat) and rep.shared and rep.scope == "l"
    assert out1 == ast.Output(None, "y", ast.Name(None, "x"))
    assert out2 == ast.Output(None, "x", None)


def test_top_level_items() -> None:
    module = parse_text('import "a.attn"\nimport "b.attn" as b\nconst k = 1\n'
                        "block f(x, n = 2) {\n    return x\n}\nmodel named { }\n"
                        "train {\n    clip = 1.0\n}\n")
    imp_a, imp_b, const, block, model, train = module.items
    assert imp_a == ast.Import(None, "a.attn", None) and imp_b == ast.Import(None, "b.attn", "b")
    assert const == ast.Const(None, "k", ast.Number(None, 1))
    assert isinstance(block, ast.Block) and [p.name for p in block.params] == ["x", "n"]
    assert block.params[1].default == ast.Number(None, 2) and block.params[0].default is None
    assert isinstance(model, ast.Model) and model.name == "named" and model.body == ()
    assert train == ast.Train(None, (ast.Setting(None, "clip", ast.Number(None, 1.0)),))


def test_input_output_model_are_names_outside_statement_heads() -> None:
    # Hugging Face layer names (`attention.output.dense`, `model.layers`) need these words.
    module = parse_text("const model = 2\nblock f(output, input) { return output + input }\n"
                        "model { input x: float[B]\n output = f(x, input=x)\n"
                        "input = output * model\n output y = input }\n")
    const, block, model = module.items
    assert const.name == "model" and [p.name for p in block.params] == ["output", "input"]
    assign_out, assign_in = model.body[1], model.body[2]
    assert isinstance(assign_out, ast.Assign) and assign_out.target == "output"
    assert isinstance(assign_in, ast.Assign) and assign_in.target == "input"
    assert isinstance(model.body[3], ast.Output) and model.body[3].name == "y"


@pytest.mark.parametrize("text", ["model { repeat = 1 }", "const return = 3", "block f(shared) { }",
                                  "model { x = 1 2 }", "const a = 1 <= 2",
                                  "model { input x: float[B, ] }", "const s = \"abc"])
def test_keywords_and_malformed_text_are_syntax_errors(text: str) -> None:
    with pytest.raises(SyntaxError_):
        parse_text(text)


def test_syntax_hints_from_examples() -> None:
    with pytest.raises(SyntaxError_, match="missing '=' in an assignment"):
        parse_text("model { x }")
    with pytest.raises(SyntaxError_, match="an input needs a type"):
        parse_text("model {\n    input tokens\n}\n")
    with pytest.raises(SyntaxError_, match="end of file") as info:
        parse_text("model {\n    x = 1 +\n")
    assert info.value.span.line == 2


def test_parse_accepts_paths_and_text() -> None:
    by_path = attndsl.parse(str(ROOT / "specs" / "gpt.attn"))
    by_pathlib = attndsl.parse(ROOT / "specs" / "gpt.attn")
    by_text = attndsl.parse((ROOT / "specs" / "gpt.attn").read_text())
    assert by_path == by_pathlib and by_path.items == by_text.items
    assert by_path.path.endswith("gpt.attn") and by_text.path == "<string>"


def test_dump_is_deterministic_and_skips_spans() -> None:
    a = parse_text("const a = 1 + 2\n", "x.attn")
    b = parse_text("\n\nconst a = 1+2  # moved\n", "x.attn")
    assert ast.dump(a) == ast.dump(b)
    assert "span" not in ast.dump(a)


# -- printer --------------------------------------------------------------------------------------

def test_print_graph_renumbers_and_spans() -> None:
    graph = attndsl.build("model {\n    input x: float[B, 4]\n    output y = relu(x) * 2\n}\n")
    assert print_graph(graph) == ("%0 = input() {name='x'} : float[B, 4]\n"
                                  "%1 = relu(%0) : float[B, 4]\n"
                                  "%2 = constant() {dtype='float', value=2.0} : float[]\n"
                                  "%3 = mul(%1, %2) : float[B, 4]\n"
                                  "output y = %3\n")
    with_spans = print_graph(graph, spans=True)
    assert "%1 = relu(%0) : float[B, 4]    # <string>:3:16" in with_spans


def test_dot_export() -> None:
    graph = attndsl.build(ROOT / "specs" / "gpt.attn", config={"layers": 1})
    dot = to_dot(graph)
    assert dot.startswith("digraph attndsl {") and dot.rstrip().endswith("}")
    nodes = re.findall(r"^  n(\d+) \[label=", dot, flags=re.M)
    assert len(nodes) == len(graph.nodes)
    edges = re.findall(r"^  n\d+ -> n\d+", dot, flags=re.M)
    assert len(edges) == sum(len(n.inputs) for n in graph.nodes.values())
    assert 'xlabel="output logits"' in dot
    assert 'label="tokens\\nint[B, T]", shape=invhouse' in dot
    assert 'label="wte.weight\\nfloat[50257, 768]", shape=box' in dot


# -- parameter naming ----------------------------------------------------------------------------

NAMING = """
block mlp(x) {
    up = linear(x, 16)
    return linear(relu(up), 8)
}
model {
    input x: float[B, T, 8]
    proj = linear(x, 8)
    x = linear(proj, 8)
    x = layer_norm(x)
    x = layer_norm(x)
    repeat 2 as layers {
        attn = attention(x, 2)
        x = x + attn
        h = mlp(x)
        x = x + h
    }
    repeat 3 as shared_stack shared {
        x = mlp(x)
        x = x + attention(x, 2)
    }
    output y = x
}
"""


def test_parameter_naming_rules() -> None:
    names = list(attndsl.build(NAMING).params)
    top = [n for n in names if not n.startswith(("layers.", "shared_stack."))]
    assert top == ["proj.weight", "proj.bias", "linear.weight", "linear.bias",
                   "layer_norm.weight", "layer_norm.bias", "layer_norm_1.weight",
                   "layer_norm_1.bias"]
    layer0 = [n.removeprefix("layers.0.") for n in names if n.startswith("layers.0.")]
    layer1 = [n.removeprefix("layers.1.") for n in names if n.startswith("layers.1.")]
    assert layer0 == layer1  # every iteration is named the same way
    assert layer0[:2] == ["attn.q.weight", "attn.q.bias"]
    assert "h.up.weight" in layer0 and "h.linear.weight" in layer0
    shared = [n for n in names if n.startswith("shared_stack.")]
    assert shared == ["shared_stack.mlp.up.weight", "shared_stack.mlp.up.bias",
                      "shared_stack.mlp.linear.weight", "shared_stack.mlp.linear.bias",
                      *(f"shared_stack.attention.{p}.{w}" for p in "qkvo"
                        for w in ("weight", "bias"))]


# -- docs/language.md ---------------------------------------------------------------------------

DOC = ROOT / "docs" / "language.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC.read_text(encoding="utf-8"),
                      flags=re.M | re.S)


def test_doc_examples_build() -> None:
    """Every ```attn block in the language reference is a complete spec that builds."""
    blocks = doc_blocks("attn")
    assert len(blocks) >= 10
    for text in blocks:
        graph = attndsl.build(text)
        assert graph.outputs


def test_doc_snippets_parse() -> None:
    """```attn-snippet blocks are fragments, but each still parses on its own."""
    snippets = doc_blocks("attn-snippet")
    assert snippets
    for text in snippets:
        parse_text(text)


def test_doc_lists_every_builtin_and_error() -> None:
    from attndsl.errors import ALL_ERRORS
    from attndsl.frontend.builtins import BUILTINS, TRAIN_BUILTINS
    doc = DOC.read_text(encoding="utf-8")
    missing = [name for name in [*BUILTINS, *TRAIN_BUILTINS]
               if not re.search(rf"`{name}(\(|`)", doc)]
    assert not missing, f"undocumented built-ins: {missing}"
    for cls in ALL_ERRORS:
        assert f"| {cls.code} | `{cls.__name__}` |" in doc, cls.__name__


def test_keywords_can_name_keyword_arguments() -> None:
    """`random(3, block=64)`: a keyword (block, model, input, ...) is a valid argument name."""
    import attndsl
    g = attndsl.build("model m { input x: float[B, T, 8]\n"
                      "output y = attention(x, 2, pattern=random(2, block=4, seed=1)) }")
    node = next(n for n in g.nodes.values() if n.op == "attention")
    assert str(node.attr("pattern")) == "random_blocks(2, block=4, seed=1)"
