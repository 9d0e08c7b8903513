"""`moe(x, experts=E, expert=block, top_k=k, ...)`: a sparse mixture-of-experts layer.

A learned router (`router.weight` [E, d], no bias) gives each token probabilities over the
experts; the token goes to its top_k experts, at most ceil(capacity_factor * top_k * N / E)
tokens per expert (the rest are dropped: the layer adds nothing for them, so a residual
passes them through). The expert block runs once, on the dispatched rows, with every linear
layer holding one weight per expert ([E, out, in], `grouped_linear`): each expert computes
only its own tokens, so compute grows with top_k, not E. The outputs are summed with the
gates (the router probabilities, renormalized over the top_k when `normalize`, which is the
default for top_k > 1; Switch's top-1 uses the raw probability so the router learns).

The Switch/GShard load-balancing loss E * sum_e f_e P_e of every moe layer is summed into
the model output named by `aux=` (default "aux"), for `train { loss = cross_entropy(logits)
+ 0.01 * aux }`; `dropped="name"` exposes each layer's dropped fraction as an optional
output. Expert blocks must be row-wise (linear layers and elementwise functions).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from attndsl.errors import ArgumentError, DefinitionError, ShapeError, Span, TypeError_
from attndsl.frontend.builtins import builtin, integer, linear_layer, number, tensor
from attndsl.frontend.values import BlockRef, Tensor, describe
from attndsl.ir.dims import Dim

ROW_WISE = frozenset({
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "neg", "exp", "log", "sqrt",
    "tanh", "sigmoid", "relu", "abs", "gelu", "silu", "cast", "dropout", "sin", "cos",
    "softplus", "sign", "clip", "constant", "grouped_linear"})


@builtin("moe", layer=True)
def moe(b: Any, span: Span, x: Tensor, experts: int, expert: Any, top_k: int = 2,
        capacity_factor: float = 1.25, normalize: Any = None, aux: Any = "aux",
        dropped: Any = None) -> Tensor:
    """Mixture of experts on x [..., d]: `experts` copies of the block `expert`, each token
    to its top_k (see attndsl/frontend/moe.py and docs/language.md)."""
    x = tensor(b, x, span, "moe input")
    d = x.type.shape[-1] if x.type.rank else Dim.of(0)
    if x.type.rank < 1 or d.as_int() is None:
        raise ShapeError(f"moe needs a fixed feature size, got {x.type}", span)
    n_exp = integer(experts, span, "experts")
    k = integer(top_k, span, "top_k")
    if k > n_exp:
        raise ArgumentError(f"top_k={k} is more than experts={n_exp}", span)
    cf = number(capacity_factor, span, "capacity_factor")
    if cf <= 0:
        raise ArgumentError(f"capacity_factor must be positive, got {cf}", span)
    if not isinstance(expert, BlockRef):
        raise TypeError_(f"expert= names a block, like expert=mlp; got {describe(expert)}", span)
    if b.expert_group is not None:
        raise DefinitionError("moe inside an moe expert block", span)
    norm = k > 1 if normalize is None else bool(normalize)
    rows = Dim.of(1)
    for dim in x.type.shape[:-1]:
        rows = rows * dim
    flat = b.add("reshape", [x], {"shape": (rows, d)}, span)               # (N, d)
    with b.in_scope([b.claim_name("router")]):
        logits = linear_layer(b, span, flat, n_exp, bias=False)           # (N, E)
    probs = b.add("softmax", [logits], {"axis": -1}, span)
    route = b.add("moe_route", [probs], {"top_k": k, "capacity_factor": cf}, span)  # (3, N k)
    counts = b.add("moe_counts", [route], {"experts": n_exp}, span)       # (E,)
    dispatched = b.add("moe_dispatch", [flat, route], {}, span)           # (N k, d)
    start = b.graph.next_id
    b.expert_group = (counts, n_exp)
    try:
        y = b.call_block(expert, [dispatched], {}, SimpleNamespace(span=span), "experts")
    finally:
        b.expert_group = None
    if not isinstance(y, Tensor) or y.type.rank != 2 or y.type.shape[0] != rows * k:
        raise ShapeError(f"the expert block must return its token rows [{rows * k}, d_out], "
                         f"got {describe(y)}", span)
    _check_row_wise(b, start, span)
    out = b.add("moe_combine", [y, probs, route], {"top_k": k, "normalize": norm},
                span)                                                      # (N, d_out)
    if aux is not None:
        _add_aux(b, span, aux, b.add("moe_aux", [probs, route], {"top_k": k}, span))
    if dropped is not None:
        _optional_output(b, span, dropped, b.add("moe_dropped", [route], {}, span))
    return b.add("reshape", [out], {"shape": (*x.type.shape[:-1], y.type.shape[1])}, span)


def _check_row_wise(b: Any, start: int, span: Span) -> None:
    """Every node the expert block added computes each row alone, and its parameters belong
    to its linear layers (one per expert)."""
    graph = b.graph
    users = graph.users()
    for nid in range(start, graph.next_id):
        node = graph.nodes[nid]
        if node.op == "param":
            if any(graph.nodes[u].op != "grouped_linear" for u in users[nid]):
                raise DefinitionError(f"parameter '{node.attr('name')}' of the expert block is "
                                      "not a linear layer's: experts may hold only linear "
                                      "layers (one weight per expert)", span)
        elif node.op not in ROW_WISE:
            raise DefinitionError(f"the expert block uses {node.op}, which does not compute "
                                  "each token row alone", node.span or span,
                                  "expert blocks are feed-forward: linear layers and "
                                  "elementwise functions (gelu, silu, *, +, ...)")


def _add_aux(b: Any, span: Span, name: Any, value: Tensor) -> None:
    """Sum `value` into the model output `name` (created by the first moe that names it)."""
    if not isinstance(name, str) or not name:
        raise TypeError_(f"aux= names an output, as a string, got {describe(name)}", span)
    owned = b.graph.meta.setdefault("moe_aux", [])
    if name in b.graph.outputs and name not in owned:
        raise DefinitionError(f"output '{name}' is declared twice (an moe's aux= names it)",
                              span, "give aux= another name")
    if name in b.graph.outputs:
        value = b.add("add", [Tensor(b.graph.outputs[name], value.type), value], {}, span)
    else:
        owned.append(name)
    b.graph.outputs[name] = value.node


def _optional_output(b: Any, span: Span, name: Any, value: Tensor) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError_(f"dropped= names an output, as a string, got {describe(name)}", span)
    full = ".".join([*b.scope[:-1], name])
    if full in b.graph.outputs:
        raise DefinitionError(f"output '{full}' is declared twice", span)
    b.graph.outputs[full] = value.node
    b.graph.meta.setdefault("optional_outputs", []).append(full)
