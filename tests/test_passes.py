"""Golden before/after tests for every pass, written in the IR's own text form (TVM Relax
style): `Before` is a spec, `Expected` is the printed graph after the pass."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import attndsl
from attndsl.ir.graph import TensorType
from attndsl.ir.printer import print_graph
from attndsl.passes import PassManager, optimize, verify
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.explain import explain
from attndsl.passes.fuse_attention import fuse_attention
from attndsl.passes.manager import GraphInvariantError, PassResult


def ir(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def test_cse_merges_identical_nodes():
    before = attndsl.build("model m { input x: float[B, T, 8]  output y = relu(x) + relu(x) }")
    result = eliminate_common_subexpressions(before)
    assert result.modified
    assert print_graph(result.graph) == ir("""
        %0 = input() {name='x'} : float[B, T, 8]
        %1 = relu(%0) : float[B, T, 8]
        %2 = add(%1, %1) : float[B, T, 8]
        output y = %2
        """)
    verify(result.graph)


def test_cse_keeps_dropouts_distinct():
    g = attndsl.build("model m { input x: float[B, 8]  output y = dropout(x) + dropout(x) }")
    assert not eliminate_common_subexpressions(g).modified


def test_dce_removes_unused_nodes_but_keeps_inputs_and_params():
    before = attndsl.build("""model m { input x: float[B, 8]  input unused_in: float[B, 8]
        dead = exp(linear(x, 4))
        output y = relu(x) }""")
    result = eliminate_dead_code(before)
    assert result.modified
    assert print_graph(result.graph) == ir("""
        %0 = input() {name='x'} : float[B, 8]
        %1 = input() {name='unused_in'} : float[B, 8]
        %2 = param() {init='normal', name='linear.weight', std=0.02} : float[4, 8]
        %3 = param() {init='zeros', name='linear.bias', std=0.02} : float[4]
        %4 = relu(%0) : float[B, 8]
        output y = %4
        """)
    assert not eliminate_dead_code(result.graph).modified


def test_fuse_attention_rewrites_hand_written_attention():
    before = attndsl.build("""model m { input q: float[B, H, T, 8]  input k: float[B, H, S, 8]
        input v: float[B, H, S, 4]
        output y = softmax(q @ k.T / 2.0) @ v }""")
    result = fuse_attention(before)
    assert result.modified
    assert print_graph(eliminate_dead_code(result.graph).graph) == ir("""
        %0 = input() {name='q'} : float[B, H, T, 8]
        %1 = input() {name='k'} : float[B, H, S, 8]
        %2 = input() {name='v'} : float[B, H, S, 4]
        %3 = attention(%0, %1, %2) {bias=none, dropout=0.0, extras=[], impl='auto', pattern=full, rope=None, scale=0.5, score='scaled'} : float[B, H, T, 4]
        output y = %3
        """)


def test_fuse_attention_leaves_shared_intermediates_alone():
    g = attndsl.build("""model m { input q: float[B, H, T, 8]
        s = softmax(q @ q.T)
        output y = s @ q
        output probs = s }""")
    assert not fuse_attention(g).modified


def test_fused_attention_computes_the_same_numbers():
    spec = """model m { input q: float[B, H, T, 8]  input k: float[B, H, T, 8]
        output y = softmax(q @ k.T * 0.35) @ k }"""
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 2, 3, 5, 8)).astype(np.float32)
    fused = attndsl.compile(spec)
    assert [n.op for n in fused.graph.nodes.values()].count("attention") == 1
    s = q @ np.swapaxes(k, -1, -2) * 0.35
    p = np.exp(s - s.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ k
    np.testing.assert_allclose(fused(q=q, k=k)["y"], expected, rtol=1e-5, atol=1e-6)


def test_pass_manager_names_the_pass_that_broke_the_graph():
    def breaks_types(graph):
        out = graph.copy()
        nid = next(iter(out.outputs.values()))
        out.replace_node(nid, type=TensorType((), "float"))
        return PassResult(out, True)

    g = attndsl.build("model m { input x: float[B, 8]  output y = relu(x) }")
    with pytest.raises(GraphInvariantError, match="after pass 'breaks_types'"):
        PassManager([("breaks_types", breaks_types)], debug=True).run(g)
    assert PassManager([("breaks_types", breaks_types)]).run(g) is not g  # no check w/o debug


def test_default_pipeline_is_valid_on_every_spec(spec_path):
    verify(optimize(attndsl.build(spec_path), debug=True))


def test_explain_names_the_choice_per_backend():
    g = attndsl.build("specs/gpt.attn", config={"layers": 1})
    assert "SDPA is_causal=True" in explain(g, "torch")
    assert "dense, tiled or sparse (cost model)" in explain(g, "numpy")
    assert "gpt.attn:" in explain(g, "numpy")


def test_explain_reports_each_distinct_attention_once_with_its_variant():
    g = attndsl.build("""model m {
        input tokens: int[B, T]
        x = embedding(tokens, 50, 32)
        repeat 4 as layers {
            x = attention(x, 4, pattern=causal, kv_heads=2, bias=alibi(), rope=rope(theta=500))
        }
        output y = attention(x, 4, score=additive)
    }""")
    torch_text, numpy_text = explain(g, "torch"), explain(g, "numpy")
    assert torch_text.count("(x4)") == 1 and len(torch_text.splitlines()) == 5
    assert "4 query / 2 kv heads (grouped-query)" in torch_text
    assert "bias=alibi()" in torch_text and "rope(theta=500" in torch_text
    assert "explicit softmax per block of query rows" in torch_text
    assert "explicit softmax(scores)V" in torch_text           # additive scores
    assert "strided Toeplitz view" in numpy_text


LONG = """const ctx = 16384
model longformer {
    input tokens: int[B, T <= ctx]
    x = embedding(tokens, 100, 32)
    repeat 3 as layers {
        x = x + attention(x, 4, pattern=causal & window(256) | global([0]))
    }
    output y = attention(x, 4, pattern=causal, score=additive)
}"""


def test_explain_with_sizes_prices_every_candidate_and_marks_the_choice():
    g = optimize(attndsl.build(LONG))
    text = explain(g, "numpy", {"B": 1, "T": 8192})
    window = text.split("/longformer")[0] if "/longformer" in text else text
    assert "(x3)" in window and "live 128x128 blocks 313/4096 (7.6%)" in text
    block = text[text.index("(x3)"):text.index(":8:")]
    assert "sparse" in block and "<- chosen" in block and "dense" in block
    chosen = [line for line in block.splitlines() if "<- chosen" in line]
    assert len(chosen) == 1 and chosen[0].split()[0] in ("sparse", "tiled")
    assert "do not implement this variant" in text       # additive scores: dense only


def test_attention_choices_agree(backend):
    """attention=dense/tiled/sparse/auto give the same outputs on every spec-like model."""
    from attndsl.passes.select_attention import select_attention
    spec = LONG.replace("window(256)", "window(40)").replace("ctx = 16384", "ctx = 512")
    ids = np.random.default_rng(0).integers(0, 100, (2, 300))
    outs = {}
    for impl in ("dense", "tiled", "sparse", "auto"):
        m = attndsl.compile(spec, backend=backend, dtype="float64", attention=impl, seed=3)
        impls = {n.attr("impl") for n in m.graph.nodes.values() if n.op == "attention"}
        assert impls == ({impl} if impl in ("auto", "dense") else {impl, "auto"})  # additive
        outs[impl] = m.to_numpy(m(tokens=ids))["y"]
    for impl in ("tiled", "sparse", "auto"):
        np.testing.assert_allclose(outs[impl], outs["dense"], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="attention must be one of"):
        attndsl.compile(spec, attention="flash")
    assert not select_attention(m.graph, "auto").modified
