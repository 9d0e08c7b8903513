"""Exact parameter names: `name=` on layers and blocks, dotted repeat scopes, and the
soft keywords `input`/`output`/`model` as names — what reproducing a checkpoint's names needs."""

from __future__ import annotations

import pytest

import attndsl
from attndsl.errors import AttnError

SPEC = """
block bert_layer(x) {
    q = linear(x, 8, name="attention.self.query")
    output = layer_norm(linear(q, 8, name="attention.output.dense"), name="output.LayerNorm")
    return output
}
model {
    input x: float[B, T, 8]
    cls = parameter([1, 8], name="cls_token")
    p = parameter([8])
    repeat 2 as encoder.layer {
        x = bert_layer(x, name="")
    }
    model = linear(x, 8)
    output y = model + cls + p
}
"""


def test_exact_names_follow_a_checkpoints_layout(tmp_path) -> None:
    path = tmp_path / "n.attn"
    path.write_text(SPEC)
    names = list(attndsl.compile(path).state_dict())
    assert names == [
        "cls_token", "p.weight",
        *[f"encoder.layer.{i}.{n}" for i in range(2) for n in (
            "attention.self.query.weight", "attention.self.query.bias",
            "attention.output.dense.weight", "attention.output.dense.bias",
            "output.LayerNorm.weight", "output.LayerNorm.bias")],
        "model.weight", "model.bias"]


@pytest.mark.parametrize("call, message", [
    ('linear(x, 8, name="a..b")', "name= must be a dotted name"),
    ("linear(x, 8, name=3)", "name= must be a dotted name"),
    ('parameter([8], name="")', "name= cannot be empty"),
    ('relu(x, name="a")', "has no argument 'name'"),
])
def test_bad_names_are_spec_errors(tmp_path, call: str, message: str) -> None:
    path = tmp_path / "bad.attn"
    path.write_text(f"model {{\n    input x: float[B, 8]\n    output y = {call}\n}}\n")
    with pytest.raises(AttnError, match=message):
        attndsl.compile(path)


def test_an_exact_name_used_twice_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "twice.attn"
    path.write_text('model {\n    input x: float[B, 8]\n    a = linear(x, 8, name="d")\n'
                    '    output y = linear(a, 8, name="d")\n}\n')
    with pytest.raises(AttnError, match="parameter 'd.weight' is defined twice"):
        attndsl.compile(path)
