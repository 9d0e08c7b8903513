"""Reverse mode as a graph transformation (`attndsl/passes/reverse_mode.py`): a golden
forward+backward graph, the printed program is the one that runs, and the passes leave
nothing to merge. Gradients against torch for every spec: tests/test_numpy_autodiff.py."""

from __future__ import annotations

import numpy as np
import pytest
from attndsl.backends.numpy_autodiff import value_and_grad_numpy
from helpers import SPECS_DIR, random_inputs, spec_paths, tiny_config

import attndsl
from attndsl.cli import main
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.reverse_mode import SEED, VJP, reverse_mode
from attndsl.training.losses import cross_entropy_with_grad, loss_outputs, loss_spec

GOLDEN = SPECS_DIR.parent / "tests" / "golden"


def test_golden_forward_and_backward_graph(capsys):
    """The small spec's graph with its backward: dropout becomes a drawn mask, `h * h`
    gets two cotangent terms summed, the embedding output two (the residual and the
    linear), the ids none; `--emit graph --grad` prints it."""
    assert main(["compile", str(GOLDEN / "grad_small.attn"), "--emit", "graph", "--grad"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "grad_small.ir").read_text()


def test_the_printed_program_is_the_one_that_runs(capsys):
    """`--emit numpy --grad` prints a module; executed as printed (dropout masks of ones),
    it gives the gradients `value_and_grad_numpy` gives without dropout."""
    spec = GOLDEN / "grad_small.attn"
    assert main(["compile", str(spec), "--emit", "numpy", "--grad"]) == 0
    ns: dict = {}
    exec(capsys.readouterr().out, ns)  # noqa: S102 - the program under test
    model = attndsl.compile(spec, backend="numpy", seed=0)
    inputs = random_inputs(model.graph, batch=2, seq=5)
    targets = np.random.default_rng(1).integers(0, 11, (2, 5))
    _, grads = value_and_grad_numpy(model.graph, model.state_dict(), inputs, targets,
                                    loss_spec(model.graph), "float32")
    logits = model(**inputs)["logits"]
    _, dlogits = cross_entropy_with_grad(logits, targets, 0.0, -100)
    seen = {}

    def seed(name, value):
        seen[name] = value
        return dlogits

    ones = np.ones((2, 5, 4), np.float32)
    out = ns["value_and_grad"](model.state_dict(), {**inputs, "keep:7": ones}, seed, True)
    np.testing.assert_allclose(seen["logits"], logits, rtol=1e-6)
    assert set(out) == {f"grad:{n}" for n in grads}
    for name, g in grads.items():
        np.testing.assert_allclose(out[f"grad:{name}"], g, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("path", spec_paths(), ids=lambda p: p.stem)
def test_every_spec_gets_one_rule_call_per_node_and_nothing_to_merge(path):
    """For every spec: CSE finds nothing left to merge in the joint graph, each forward
    node's `vjp` nodes share one call (same inputs), and every trained parameter the loss
    reaches has its gradient output."""
    graph = attndsl.compile(path, config=tiny_config(path.stem), backend="numpy").graph
    grad = reverse_mode(graph, loss_outputs(loss_spec(graph)), training=True).graph
    assert not eliminate_common_subexpressions(grad).modified
    calls: dict[tuple, set[int]] = {}
    for node in grad.nodes.values():
        if node.op == VJP:
            calls.setdefault(node.inputs, set()).add(node.attr("index"))
            assert grad.nodes[node.inputs[1]].op == node.attr("of")
    assert calls and sum(n.op == SEED for n in grad.nodes.values()) >= 1
    assert any(k.startswith("grad:") for k in grad.outputs)
