"""Symbolic dims and shape inference: Dim algebra, op shape rules, whole specs."""

from __future__ import annotations

from fractions import Fraction

import pytest

import attndsl
from attndsl.errors import ShapeError, TypeError_
from attndsl.ir import ops
from attndsl.ir.dims import Dim, shape_str
from attndsl.ir.graph import TensorType

B, T, S = Dim.symbol("B"), Dim.symbol("T"), Dim.symbol("S")


def out_type(body: str, name: str = "y", header: str = "") -> str:
    """The printed type of output `name` of a one-model spec."""
    graph = attndsl.build(f"{header}\nmodel {{\n{body}\n}}\n")
    return str(graph.nodes[graph.outputs[name]].type)


# -- Dim algebra ---------------------------------------------------------------------------------

def test_dim_arithmetic_and_printing() -> None:
    assert str(B * T * 768) == "768*B*T"
    assert str(T + 1) == "T + 1"
    assert str(T - 1) == "T - 1"
    assert str(2 * T - T) == "T"
    assert (T - T).as_int() == 0
    assert str(Dim.of(0)) == "0"
    assert str(B * B) == "B*B"
    assert Dim.of(7).as_int() == 7 and (B + 1).as_int() is None


def test_dim_equality_is_canonical() -> None:
    assert B * T == T * B
    assert (B + T) * 2 == 2 * B + 2 * T
    assert Dim.of(4) == 4 and 4 == Dim.of(4)
    assert B != T and B + 1 != B
    assert hash(B * T) == hash(T * B)
    assert len({B * T, T * B, B}) == 2


def test_dim_divide() -> None:
    assert Dim.of(768).divide(12) == 64
    assert (B * T * 768).divide(T) == B * 768
    assert (B * T).divide(B * T) == 1
    assert (B * T + T).divide(T) == B + 1
    assert (B + 1).divide(T) is None          # T does not divide B + 1
    assert Dim.of(5).divide(0) is None
    assert (B + T).divide(B + T) is None      # only monomial divisors
    half = T.divide(2)
    assert half is not None and half.as_int() is None and str(half) == "T/2"
    assert Dim.of(7).divide(2).as_int() is None and Dim.of(7).divide(2).const() == Fraction(7, 2)


def test_dim_evaluate_and_symbols() -> None:
    d = B * T * 3 + T + 5
    assert d.symbols() == {"B", "T"}
    assert d.evaluate({"B": 2, "T": 10}) == 2 * 10 * 3 + 10 + 5
    assert shape_str((B, T, Dim.of(64))) == "[B, T, 64]"


# -- op shape rules ------------------------------------------------------------------------------

def tt(*dims: object, dtype: str = "float") -> TensorType:
    return TensorType(tuple(Dim.of(d) for d in dims), dtype)


def test_broadcasting_rules() -> None:
    assert ops.broadcast_shapes((B, T, Dim.of(8)), (Dim.of(8),)) == (B, T, 8)
    assert ops.broadcast_shapes((B, Dim.of(1), Dim.of(8)), (T, Dim.of(1))) == (B, T, 8)
    assert ops.broadcast_shapes((), (B,)) == (B,)
    with pytest.raises(ShapeError, match=r"\[B, T\] and \[B, S\] do not broadcast"):
        ops.broadcast_shapes((B, T), (B, S))
    with pytest.raises(ShapeError):
        ops.broadcast_shapes((Dim.of(3),), (Dim.of(4),))


def test_binary_dtype_promotion() -> None:
    assert ops.infer("add", [tt(B, 4, dtype="int"), tt(4)], {}).dtype == "float"
    assert ops.infer("add", [tt(B, 4, dtype="int"), tt(4, dtype="int")], {}).dtype == "int"
    assert ops.infer("less", [tt(B, 4), tt(4)], {}).dtype == "bool"


def test_matmul_rules() -> None:
    assert ops.infer("matmul", [tt(B, T, 64), tt(64, 32)], {}) == tt(B, T, 32)
    assert ops.infer("matmul", [tt(B, 1, T, 64), tt(12, 64, S)], {}) == tt(B, 12, T, S)
    assert ops.infer("matmul", [tt(64), tt(B, 64, 8)], {}) == tt(B, 8)
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        ops.infer("matmul", [tt(B, T, 64), tt(32, 64)], {})
    with pytest.raises(ShapeError, match="rank >= 2 right"):
        ops.infer("matmul", [tt(B, 64), tt(64)], {})


def test_reshape_checks_element_count() -> None:
    x = tt(B, T, 768)
    assert ops.infer("reshape", [x], {"shape": (B, T, Dim.of(12), Dim.of(64))}) == tt(B, T, 12, 64)
    assert ops.infer("reshape", [x], {"shape": (B * T, Dim.of(768))}) == tt(B * T, 768)
    with pytest.raises(ShapeError, match=r"cannot reshape \[B, T, 768\] \(768\*B\*T elements\)"):
        ops.infer("reshape", [x], {"shape": (B, T, Dim.of(12), Dim.of(32))})
    with pytest.raises(ShapeError):
        ops.infer("reshape", [x], {"shape": (B, S, Dim.of(768))})


def test_transpose_concat_expand_index() -> None:
    x = tt(B, T, 8)
    assert ops.infer("transpose", [x], {"perm": (0, 2, 1)}) == tt(B, 8, T)
    with pytest.raises(ShapeError, match="permutation"):
        ops.infer("transpose", [x], {"perm": (0, 0, 1)})
    assert ops.infer("concat", [tt(B, 1, 8), x], {"axis": 1}) == tt(B, T + 1, 8)
    with pytest.raises(ShapeError, match="equal other dimensions"):
        ops.infer("concat", [tt(B, 1, 4), x], {"axis": 1})
    assert ops.infer("expand", [tt(1, 1, 8)], {"shape": (B, Dim.of(1), Dim.of(8))}) == tt(B, 1, 8)
    with pytest.raises(ShapeError, match="cannot expand"):
        ops.infer("expand", [x], {"shape": (Dim.of(1), T, Dim.of(8))})
    assert ops.infer("index", [x], {"index": ((None, None), 0)}) == tt(B, 8)
    assert ops.infer("index", [x], {"index": ((None, None), (1, None))}) == tt(B, T - 1, 8)
    assert ops.infer("index", [x], {"index": ((None, None), (None, None), (2, 6))}) == tt(B, T, 4)
    with pytest.raises(ShapeError, match="out of range"):
        ops.infer("index", [x], {"index": ((None, None), (None, None), 8)})
    with pytest.raises(ShapeError, match="out of range"):
        ops.infer("index", [x], {"index": ((None, None), (None, None), (6, 2))})
    with pytest.raises(ShapeError, match="out of range"):
        ops.infer("index", [x], {"index": ((None, None), (None, None), (0, 9))})


def test_reductions_and_softmax_axis() -> None:
    x = tt(B, T, 8)
    assert ops.infer("mean", [x], {"axes": (-1,), "keepdims": True}) == tt(B, T, 1)
    assert ops.infer("sum", [x], {"axes": (0, 2), "keepdims": False}) == tt(T)
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        ops.infer("max", [x], {"axes": (3,), "keepdims": False})
    assert ops.infer("softmax", [x], {"axis": -1}) == x
    with pytest.raises(ShapeError, match="axis 7 is out of range"):
        ops.infer("softmax", [x], {"axis": 7})


def test_attention_rule() -> None:
    q, k = tt(B, 8, T, 16), tt(B, 8, S, 16)
    assert ops.infer("attention", [q, k, k], {}) == tt(B, 8, T, 16)
    pad = {"extras": ("key_padding",)}
    assert ops.infer("attention", [q, k, k, tt(B, S, dtype="bool")], pad) == tt(B, 8, T, 16)
    with pytest.raises(ShapeError, match="head sizes differ"):
        ops.infer("attention", [q, tt(B, 8, S, 8), k], {})
    with pytest.raises(TypeError_, match="key_padding must be bool"):
        ops.infer("attention", [q, k, k, tt(B, S)], pad)
    grouped = tt(B, 2, S, 16)                                  # 8 query heads share 2 kv heads
    assert ops.infer("attention", [q, grouped, grouped], {}) == tt(B, 8, T, 16)
    assert ops.infer("attention_weights", [q, grouped, grouped], {}) == tt(B, 8, T, S)
    with pytest.raises(ShapeError, match="multiple of kv_heads"):
        ops.infer("attention", [q, tt(B, 3, S, 16), tt(B, 3, S, 16)], {})
    with pytest.raises(ShapeError, match="different head counts"):
        ops.infer("attention", [q, grouped, k], {})


# -- shape inference through specs ------------------------------------------------------------------

def test_gpt_output_type_is_symbolic() -> None:
    graph = attndsl.build("specs/gpt.attn", config={"layers": 1})
    assert str(graph.nodes[graph.outputs["logits"]].type) == "float[B, T, 50257]"
    assert graph.meta["dim_bounds"] == {"T": 1024}
    assert str(graph.nodes[graph.inputs["tokens"]].type) == "int[B, T]"


def test_spec_output_types() -> None:
    bert = attndsl.build("specs/bert.attn", config={"layers": 1})
    types = {n: str(bert.nodes[i].type) for n, i in bert.outputs.items()}
    assert types == {"hidden": "float[B, T, 768]", "pooled": "float[B, 768]",
                     "mlm_logits": "float[B, T, 30522]"}
    vit = attndsl.build("specs/vit.attn", config={"layers": 1})
    assert str(vit.nodes[vit.outputs["logits"]].type) == "float[B, 1000]"
    t5 = attndsl.build("specs/transformer.attn", config={"enc_layers": 1, "dec_layers": 1})
    assert str(t5.nodes[t5.outputs["logits"]].type) == "float[B, T, 37000]"
    assert t5.meta["dim_bounds"] == {"S": 512, "T": 512}


def test_cross_attention_keeps_query_length() -> None:
    body = ("    input x: float[B, T, 32]\n    input m: float[B, S, 16]\n"
            "    output y = attention(x, 4, kv=m)")
    assert out_type(body) == "float[B, T, 32]"


def test_dims_from_constants_and_arithmetic() -> None:
    header = "const d = 64\nconst h = 4"
    body = ("    input x: float[B, T, d]\n"
            "    q = reshape(x, [B, T, h, d / h])\n"
            "    output y = transpose(q, [0, 2, 1, 3])\n"
            "    output z = reshape(x, [B * T, d])\n"
            "    output w = x[:, 1:, :d // 2]\n")
    assert out_type(body, "y", header) == "float[B, 4, T, 16]"
    assert out_type(body, "z", header) == "float[B*T, 64]"
    assert out_type(body, "w", header) == "float[B, T - 1, 32]"


def test_shape_attribute_size_and_transpose() -> None:
    body = ("    input x: float[B, T, 8]\n"
            "    s = x.shape\n"
            "    n = size(x, 1)\n"
            "    output y = reshape(x, [s[0], n * s[2]])\n"
            "    output t = x.T\n"
            "    output a = x @ x.T\n")
    assert out_type(body, "y") == "float[B, 8*T]"
    assert out_type(body, "t") == "float[B, 8, T]"
    assert out_type(body, "a") == "float[B, T, T]"


def test_broadcast_with_positions_and_scalars() -> None:
    body = ("    input t: int[B, T <= 16]\n"
            "    e = embedding(t, 100, 8)\n"
            "    p = embedding(arange(T), 16, 8)\n"
            "    output y = e + p * 2 - sinusoidal(T, 8) / 3\n"
            "    output m = less(arange(T), 3)\n"
            "    output c = cast(t, \"float\")\n")
    assert out_type(body, "y") == "float[B, T, 8]"
    assert out_type(body, "m") == "bool[T]"
    assert out_type(body, "c") == "float[B, T]"


def test_class_token_concat_and_patches() -> None:
    body = ("    input img: float[B, 3, 32, 32]\n"
            "    p = patch_embed(img, 8, 24)\n"
            "    cls = expand(parameter([1, 1, 24]), [B, 1, 24])\n"
            "    output y = concat([cls, p], axis=1)\n")
    assert out_type(body) == "float[B, 17, 24]"


def test_spec_shape_errors() -> None:
    with pytest.raises(ShapeError, match="not divisible by patch 5"):
        attndsl.build("model {\n    input i: float[B, 3, 32, 32]\n"
                      "    output y = patch_embed(i, 5, 8)\n}\n")
    with pytest.raises(ShapeError, match="cannot divide size T by B"):
        attndsl.build("model {\n    input x: float[B, T]\n    output y = reshape(x, [B, T // B])\n}\n")
    with pytest.raises(ShapeError, match="cannot reshape"):
        attndsl.build("model {\n    input x: float[B, T, 8]\n    output y = reshape(x, [B, T, 3])\n}\n")
    with pytest.raises(ShapeError, match="tie='wte'"):
        attndsl.build("model {\n    input t: int[B, T]\n    wte = embedding(t, 10, 8)\n"
                      "    output y = linear(wte, 12, tie=\"wte\")\n}\n")
