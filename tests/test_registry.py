"""The op registry is complete: every op has every rule and a kernel in every backend, and
every built-in function of the language is documented."""

from __future__ import annotations

import inspect

import pytest
from attndsl.backends import numpy_kernels, torch_kernels

from attndsl.frontend.builtins import BUILTINS, TRAIN_BUILTINS
from attndsl.ir.ops import OPS

# Graph sources that the code generator reads directly (`inputs[...]`, `p[...]`): no kernel.
CODEGEN_LEAVES = {"input", "param"}
KERNEL_OPS = sorted(set(OPS) - CODEGEN_LEAVES)
KERNEL_MODULES = {"numpy": numpy_kernels, "torch": torch_kernels}


def test_codegen_leaves_are_registered_leaves() -> None:
    for name in CODEGEN_LEAVES:
        assert OPS[name].kind == "leaf"


def test_op_kinds_are_known() -> None:
    for name, op in OPS.items():
        assert op.kind in ("leaf", "primitive", "composite"), name
        assert op.name == name


@pytest.mark.parametrize("module", sorted(KERNEL_MODULES))
@pytest.mark.parametrize("op", KERNEL_OPS)
def test_every_op_has_a_kernel(module: str, op: str) -> None:
    kernel = getattr(KERNEL_MODULES[module], f"op_{op}", None)
    assert callable(kernel), f"{module}_kernels has no op_{op}"


@pytest.mark.parametrize("module", sorted(KERNEL_MODULES))
@pytest.mark.parametrize("op", KERNEL_OPS)
def test_kernel_accepts_the_op_attributes(module: str, op: str) -> None:
    """Codegen passes every attribute (except the leaf metadata) as a keyword."""
    kernel = getattr(KERNEL_MODULES[module], f"op_{op}")
    params = inspect.signature(kernel).parameters
    for attr in OPS[op].attrs:
        if attr in ("type", "name", "init", "std"):
            continue
        assert attr in params, f"{module} op_{op} does not take attribute {attr!r}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_shape_and_flop_rules(op: str) -> None:
    opdef = OPS[op]
    assert callable(opdef.shape), f"{op} has no shape rule"
    assert callable(opdef.flops), f"{op} has no FLOP rule"
    assert opdef.doc.strip(), f"{op} has no doc"


BUILTIN_ENTRIES = [(name, fn) for table in (BUILTINS, TRAIN_BUILTINS)
                   for name, fn in table.items() if callable(fn)]


@pytest.mark.parametrize("name,entry", BUILTIN_ENTRIES, ids=[n for n, _ in BUILTIN_ENTRIES])
def test_builtin_is_documented(name: str, entry) -> None:
    assert (inspect.getdoc(entry) or "").strip(), f"built-in {name!r} has no docstring"


@pytest.mark.parametrize("name,entry", BUILTIN_ENTRIES, ids=[n for n, _ in BUILTIN_ENTRIES])
def test_builtin_usage_names_the_builtin(name: str, entry) -> None:
    """The usage string shown in argument-error hints names the function as spelled."""
    assert getattr(entry, "usage", "").startswith(f"{name}("), entry.usage
