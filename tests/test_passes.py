"""Golden before/after tests for every pass, written in the IR's own text form (TVM Relax
style): `Before` is a spec, `Expected` is the printed graph after the pass."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from helpers import CAUSAL_STREAMS, random_inputs, tiny_config

import attndsl
from attndsl.ir.graph import TensorType
from attndsl.ir.printer import print_graph
from attndsl.passes import PassManager, optimize, verify
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.explain import explain
from attndsl.passes.fuse_attention import fuse_attention
from attndsl.passes.fuse_projections import fuse_projections
from attndsl.passes.manager import GraphInvariantError, PassResult
from attndsl.passes.quantize_weights import quantize_weights


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
    assert "SDPA is_causal=True with ALiBi as one extra q/k feature" in torch_text
    assert "explicit softmax(scores)V" in torch_text           # additive scores
    assert "strided Toeplitz view" in numpy_text


def test_explain_names_the_torch_band_and_t5_paths():
    """Sliding windows and T5 biases name the kernels torch's dispatch picks for them."""
    g = attndsl.build("""model m {
        input x: float[B, T, 32]
        a = attention(x, 4, pattern=causal & window(16))
        b = attention(a, 4, pattern=causal, bias=t5_bias(bidirectional=false))
        output y = attention(b, 4, pattern=causal & window(16), kv_heads=2)
    }""")
    text = explain(g, "torch")
    assert "band: query tiles over key windows" in text and "band 15 keys back to 0 ahead" in text
    assert "T5 split (CPU inference)" in text
    assert "blocked or SDPA with a mask (cost model)" in text    # grouped heads: no band


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


def test_fuse_projections_makes_one_gemm_per_input_and_bias_kind():
    before = attndsl.build("""model m { input x: float[B, 8]
        a = linear(x, 4)
        b = linear(x, 2)
        c = linear(x, 3, bias=false)
        output y = relu(a) + b[:, :1] + c[:, :1] }""")
    result = fuse_projections(before)
    assert result.modified
    assert print_graph(result.graph) == ir("""
        %0 = input() {name='x'} : float[B, 8]
        %1 = param() {init='normal', name='a.weight', std=0.02} : float[4, 8]
        %2 = param() {init='zeros', name='a.bias', std=0.02} : float[4]
        %3 = param() {init='normal', name='b.weight', std=0.02} : float[2, 8]
        %4 = param() {init='zeros', name='b.bias', std=0.02} : float[2]
        %5 = param() {init='normal', name='c.weight', std=0.02} : float[3, 8]
        %6 = linear(%0, %5) {has_bias=false} : float[B, 3]
        %7 = index(%6) {index=[[None, None], [None, 1]]} : float[B, 1]
        %8 = concat(%1, %3) {axis=0} : float[6, 8]
        %9 = concat(%2, %4) {axis=0} : float[6]
        %10 = linear(%0, %8, %9) {has_bias=true} : float[B, 6]
        %11 = index(%10) {index=[[None, None], [0, 4]]} : float[B, 4]
        %12 = index(%10) {index=[[None, None], [4, 6]]} : float[B, 2]
        %13 = relu(%11) : float[B, 4]
        %14 = index(%12) {index=[[None, None], [None, 1]]} : float[B, 1]
        %15 = add(%13, %14) : float[B, 4]
        %16 = add(%15, %7) : float[B, 4]
        output y = %16
        """)
    verify(result.graph)
    assert result.graph.params == before.params               # names and shapes unchanged
    assert not fuse_projections(attndsl.build(
        "model m { input x: float[B, 8]  output y = linear(x, 4) }")).modified


def test_fuse_projections_leaves_different_inputs_and_shared_weights_alone():
    g = attndsl.build("""model m { input x: float[B, 8]  input z: float[B, 8]
        output y = linear(x, 4) + linear(z, 4) }""")
    assert not fuse_projections(g).modified
    tied = attndsl.build("""model m { input x: float[B, 8]
        a = linear(x, 8)
        output y = a + linear(x, 8, tie="a") }""")
    assert not fuse_projections(tied).modified          # one weight twice: nothing to join


def test_quantize_weights_turns_linear_weights_into_int8_and_scales():
    before = fuse_projections(attndsl.build("""model m { input x: float[B, 8]
        e = embedding(cast(x[:, :2], "int"), 8, 8)
        a = linear(x, 4)
        b = linear(x, 2)
        c = linear(x, 8, bias=false, tie="e")
        output y = relu(a) + b[:, :1] + c[:, :1] + sum(e, 1)[:, :1] }""")).graph
    result = quantize_weights(before)
    assert result.modified
    assert print_graph(result.graph) == ir("""
        %0 = input() {name='x'} : float[B, 8]
        %1 = index(%0) {index=[[None, None], [None, 2]]} : float[B, 2]
        %2 = cast(%1) {dtype='int'} : int[B, 2]
        %3 = param() {init='normal', name='e.weight', std=0.02} : float[8, 8]
        %4 = embedding(%3, %2) : float[B, 2, 8]
        %5 = param() {init='normal', name='a.weight', std=0.02} : int[4, 8]
        %6 = param() {init='zeros', name='a.bias', std=0.02} : float[4]
        %7 = param() {init='normal', name='b.weight', std=0.02} : int[2, 8]
        %8 = param() {init='zeros', name='b.bias', std=0.02} : float[2]
        %9 = linear(%0, %3) {has_bias=false} : float[B, 8]
        %10 = index(%9) {index=[[None, None], [None, 1]]} : float[B, 1]
        %11 = sum(%4) {axes=[1], keepdims=false} : float[B, 8]
        %12 = index(%11) {index=[[None, None], [None, 1]]} : float[B, 1]
        %13 = concat(%5, %7) {axis=0} : int[6, 8]
        %14 = concat(%6, %8) {axis=0} : float[6]
        %15 = param() {init='ones', name='a.weight_scale', std=0.0} : float[4]
        %16 = param() {init='ones', name='b.weight_scale', std=0.0} : float[2]
        %17 = concat(%15, %16) {axis=0} : float[6]
        %18 = linear_int8(%0, %13, %17, %14) {has_bias=true} : float[B, 6]
        %19 = index(%18) {index=[[None, None], [0, 4]]} : float[B, 4]
        %20 = index(%18) {index=[[None, None], [4, 6]]} : float[B, 2]
        %21 = relu(%19) : float[B, 4]
        %22 = index(%20) {index=[[None, None], [None, 1]]} : float[B, 1]
        %23 = add(%21, %22) : float[B, 4]
        %24 = add(%23, %10) : float[B, 4]
        %25 = add(%24, %12) : float[B, 4]
        output y = %25
        """)
    verify(result.graph)
    assert list(result.graph.params) == ["e.weight", "a.weight", "a.weight_scale", "a.bias",
                                         "b.weight", "b.weight_scale", "b.bias"]
    assert not quantize_weights(attndsl.build(          # only a tied weight: nothing to do
        'model m { input x: int[B, T]  e = embedding(x, 8, 4)\n'
        'output y = linear(e, 8, bias=false, tie="e") }')).modified


def test_every_spec_computes_the_same_at_every_opt_level(spec_path):
    """-O0 (as written), -O1 and -O2 (projection fusion) agree in float64 on NumPy, outputs
    and gradients; the same weights load at every level."""
    config = tiny_config(spec_path.stem)
    models = {level: attndsl.compile(spec_path, config=config, seed=2, dtype="float64",
                                     opt_level=level) for level in (0, 1, 2)}
    assert models[2].state_dict().keys() == models[0].state_dict().keys()
    inputs = random_inputs(models[0].graph, seed=3)
    want = models[0](**inputs)
    for level in (1, 2):
        got = models[level](**inputs)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12,
                                       err_msg=f"-O{level} {name}")
    if spec_path.stem in CAUSAL_STREAMS and "train" in models[0].graph.meta:
        stream = CAUSAL_STREAMS[spec_path.stem][0]
        target = np.roll(inputs[stream], -1, axis=-1)
        _, g0 = models[0].value_and_grad(target, **inputs)
        _, g2 = models[2].value_and_grad(target, **inputs)
        for name in g0:
            np.testing.assert_allclose(g2[name], g0[name], rtol=1e-8, atol=1e-12, err_msg=name)


def test_opt_level_is_validated_and_offered_by_the_cli(capsys, repo_root):
    with pytest.raises(ValueError, match="opt_level must be one of"):
        attndsl.compile(repo_root / "specs" / "gpt.attn", opt_level=3)
    from attndsl.cli import main
    assert main(["compile", str(repo_root / "specs" / "gpt.attn"), "--set", "layers=1",
                 "-O0"]) == 0
    assert "concat" not in capsys.readouterr().out
    assert main(["compile", str(repo_root / "specs" / "gpt.attn"), "--set", "layers=1"]) == 0
    assert "concat" in capsys.readouterr().out


def test_folded_weights_follow_weight_changes(backend, repo_root):
    """The fused Q/K/V weight is computed once per weight set: loading new weights (or an
    optimizer step changing them in place) must be seen by the next call."""
    spec, config = repo_root / "specs" / "gpt.attn", tiny_config("gpt")
    m = attndsl.compile(spec, backend=backend, config=config, seed=1)
    other = attndsl.compile(spec, config=config, seed=2)
    ids = np.random.default_rng(0).integers(0, config["vocab"], (1, 6))
    first = m.to_numpy(m(tokens=ids))["logits"]
    m.load_state_dict(other.state_dict())
    np.testing.assert_allclose(m.to_numpy(m(tokens=ids))["logits"], other(tokens=ids)["logits"],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, other(tokens=ids)["logits"])
    if backend == "torch":
        import torch
        with torch.no_grad():
            m.module._params()["layers.0.attn.k.weight"].mul_(0.5)     # in place, same tensor
        sd = other.state_dict()
        sd["layers.0.attn.k.weight"] = sd["layers.0.attn.k.weight"] * 0.5
        other.load_state_dict(sd)
        np.testing.assert_allclose(m.to_numpy(m(tokens=ids))["logits"],
                                   other(tokens=ids)["logits"], rtol=1e-5, atol=1e-6)


def test_expose_attention_adds_a_weights_output_per_attention():
    from attndsl.passes.expose_attention import expose_attention_weights
    before = attndsl.build("""model m { input q: float[B, 2, T, 8]  input k: float[B, 2, S, 8]
        input v: float[B, 2, S, 4]
        output y = sdpa(q, k, v) }""")
    result = expose_attention_weights(before)
    assert result.modified
    attrs = ("{bias=none, dropout=0.0, extras=[], impl='auto', pattern=full, rope=None, "
             "scale=0.35355339059327373, score='scaled'}")
    assert print_graph(result.graph) == ir(f"""
        %0 = input() {{name='q'}} : float[B, 2, T, 8]
        %1 = input() {{name='k'}} : float[B, 2, S, 8]
        %2 = input() {{name='v'}} : float[B, 2, S, 4]
        %3 = attention(%0, %1, %2) {attrs} : float[B, 2, T, 4]
        %4 = attention_weights(%0, %1, %2) {attrs} : float[B, 2, T, S]
        output y = %3
        output attention.line3 = %4
        """)
    assert result.graph.meta["attention_maps"] == [("attention.line3", 3, None, False)]
    verify(result.graph)
    assert print_graph(before).count("attention_weights") == 0      # the input is unchanged


@pytest.mark.parametrize("name", ["fuse_bias_activation", "fuse_residual_norm"])
def test_fusion_golden(repo_root, name):
    """Before (-O1) and after (-O2), tests/golden/<pass>.*: bias-activation moves the GELU
    and ReLU into the linears they read and leaves the SiLU (its linear has a second
    reader); residual-norm moves the post-norm add into its layer_norm and leaves the
    last add (read again after its norm). -O2 is exactly -O1 plus the pass here."""
    import importlib
    fuse = getattr(importlib.import_module(f"attndsl.passes.{name}"), name)
    golden = repo_root / "tests" / "golden"
    spec = golden / f"{name}.attn"
    before = attndsl.compile(spec, opt_level=1).graph
    assert print_graph(before) == (golden / f"{name}.before.ir").read_text()
    after = fuse(before)
    assert after.modified
    assert print_graph(after.graph) == (golden / f"{name}.after.ir").read_text()
    assert print_graph(attndsl.compile(spec).graph) == print_graph(after.graph)


def test_unfuse_bias_activation_gives_the_ops_back(repo_root):
    from attndsl.passes.fuse_bias_activation import unfuse_bias_activation
    spec = repo_root / "tests" / "golden" / "fuse_bias_activation.attn"
    before, after = (attndsl.compile(spec, opt_level=level).graph for level in (1, 2))
    back = unfuse_bias_activation(after).graph
    assert sorted(n.op for n in back.nodes.values()) == sorted(
        n.op for n in before.nodes.values())


@pytest.mark.parametrize("fusion", ["fuse_bias_activation", "fuse_residual_norm"])
@pytest.mark.parametrize("be", ["numpy", "torch"])
def test_fusions_change_no_number(spec_path, be, fusion):
    """Every spec: -O2 with and without each fusion pass gives bitwise the same outputs,
    float32, on NumPy and torch."""
    from attndsl.backends import get_backend

    from attndsl.frontend import build
    from attndsl.passes import PIPELINES
    if be == "torch":
        pytest.importorskip("torch")
    model = attndsl.compile(spec_path, config=tiny_config(spec_path.stem), seed=1)
    without = PassManager([p for p in PIPELINES[2] if p[0] != fusion]).run(
        build(spec_path, tiny_config(spec_path.stem)))
    without.meta["opt_level"] = 2
    if len(without.nodes) == len(model.graph.nodes):
        pytest.skip(f"{fusion} finds nothing in this spec")
    inputs = random_inputs(model.graph, seed=3)
    params = model.state_dict()
    outs = [get_backend(be).compile(g, params, "float32", {}).run(inputs)
            for g in (model.graph, without)]
    for name in outs[0]:
        np.testing.assert_array_equal(np.asarray(outs[0][name]), np.asarray(outs[1][name]),
                                      err_msg=name)
