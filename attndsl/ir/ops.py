"""The op registry: every op is defined here once.

An `OpDef` carries the op's kind, its attributes, its shape-and-dtype rule and its FLOP
rule (a symbolic `Dim`). Backends implement each op by name (see `backends/`); a test
checks that every op here has an implementation in every backend.

Kinds:
- ``leaf``: graph sources (inputs, parameters, constants, position tables);
- ``primitive``: the small set every backend implements and autodiff knows;
- ``composite``: fused ops (linear, layer_norm, attention, ...) whose `decomposition`
  docstring names the primitives they stand for. Backends run composites directly.

Gradients: every non-leaf op has a vector-Jacobian rule in `attndsl.autodiff.VJP_RULES`
(a table keyed by op name, as tinygrad's gradient rules); the NumPy backend runs reverse
mode with them and the torch backend uses autograd. A test checks that both tables cover
every op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attndsl.errors import ShapeError, TypeError_
from attndsl.ir.biases import NO_BIAS, BiasAttr
from attndsl.ir.dims import Dim, shape_str
from attndsl.ir.graph import TensorType

ShapeRule = Callable[[list[TensorType], dict[str, Any]], TensorType]
FlopRule = Callable[[list[TensorType], TensorType, dict[str, Any]], Dim]


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str
    shape: ShapeRule
    flops: FlopRule
    attrs: tuple[str, ...] = ()
    doc: str = ""


OPS: dict[str, OpDef] = {}

# Operand positions that stay int/bool when an op's result is float (ids, masks,
# conditions). Every other int/bool operand of a float-valued op is cast to float by the
# frontend, so kernels only ever combine floats with floats.
NON_FLOAT_OPERANDS: dict[str, tuple[int, ...]] = {"embedding": (1,), "attention": (3,),
                                                  "linear_attention": (3,),
                                                  "lsh_attention": (2,),
                                                  "attention_weights": (3,), "where": (0,),
                                                  "gather": (1,), "one_hot": (0,),
                                                  "linear_int8": (1,), "grouped_linear": (1,),
                                                  "moe_dispatch": (1,), "moe_combine": (2,),
                                                  "moe_aux": (1,), "moe_dropped": (0,)}


def numel(shape: tuple[Dim, ...]) -> Dim:
    out = Dim.of(1)
    for d in shape:
        out = out * d
    return out


def _zero(ins: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> Dim:
    return Dim.of(0)


def _per_output(k: int) -> FlopRule:
    return lambda ins, out, attrs: numel(out.shape) * k


def register(name: str, kind: str, shape: ShapeRule, flops: FlopRule = _zero,
             attrs: tuple[str, ...] = (), doc: str = "") -> OpDef:
    if name in OPS:
        raise ValueError(f"op {name!r} registered twice")
    OPS[name] = OpDef(name, kind, shape, flops, attrs, doc)
    return OPS[name]


# -- shape helpers -------------------------------------------------------------------------

def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy broadcasting over symbolic dims; a mismatch raises ShapeError naming both."""
    out: list[Dim] = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else Dim.of(1)
        db = b[-i] if i <= len(b) else Dim.of(1)
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise ShapeError(f"shapes {shape_str(a)} and {shape_str(b)} do not broadcast "
                             f"(dimension {da} vs {db})")
    return tuple(reversed(out))


def _require_float(t: TensorType, what: str) -> None:
    if t.dtype != "float":
        raise TypeError_(f"{what} needs a float tensor, got {t}")


def _norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


# -- leaves ---------------------------------------------------------------------------------

def _leaf(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return attrs["type"]


register("input", "leaf", _leaf, attrs=("name", "type"), doc="A named model input.")
register("param", "leaf", _leaf, attrs=("name", "type", "init", "std"),
         doc="A trainable parameter, initialized by `init`.")
register("constant", "leaf", lambda ins, a: TensorType((), a["dtype"]),
         attrs=("value", "dtype"), doc="A scalar literal.")
register("arange", "leaf", lambda ins, a: TensorType((a["n"],), "int"), attrs=("n", "offset"),
         doc="Positions offset, offset+1, ..., offset+n-1.")
register("size", "leaf", lambda ins, a: TensorType((), "int"), attrs=("value",),
         doc="A (possibly symbolic) size as an int scalar, e.g. T bound from an input.")
register("sinusoidal", "leaf", lambda ins, a: TensorType((a["n"], Dim.of(a["dim"])), "float"),
         attrs=("n", "dim", "offset"),
         doc="PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same).")


# -- elementwise ----------------------------------------------------------------------------

def _binary(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = ins
    dtype = "float" if "float" in (a.dtype, b.dtype) else a.dtype
    return TensorType(broadcast_shapes(a.shape, b.shape), dtype)


def _true_divide(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType(broadcast_shapes(ins[0].shape, ins[1].shape), "float")


def _logical(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    for t in ins:
        if t.dtype != "bool":
            raise TypeError_(f"&, | and ~ combine bool tensors, got {t}")
    shape = ins[0].shape if len(ins) == 1 else broadcast_shapes(ins[0].shape, ins[1].shape)
    return TensorType(shape, "bool")


def _compare(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType(broadcast_shapes(ins[0].shape, ins[1].shape), "bool")


for _name in ("add", "sub", "mul", "pow", "maximum", "minimum"):
    register(_name, "primitive", _binary, _per_output(1), doc=f"Elementwise {_name}, broadcasting.")
register("div", "primitive", _true_divide, _per_output(1),
         doc="Elementwise true division, broadcasting (always float).")
for _name in ("logical_and", "logical_or"):
    register(_name, "primitive", _logical, _per_output(1), doc=f"Elementwise {_name} of bools.")
register("logical_not", "primitive", _logical, _per_output(1), doc="Elementwise not of bools.")
for _name in ("less", "greater", "equal"):
    register(_name, "primitive", _compare, _per_output(1), doc=f"Elementwise {_name} -> bool.")


def _unary_float(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType(ins[0].shape, "float" if ins[0].dtype != "bool" else "float")


def _same(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return ins[0]


register("neg", "primitive", _same, _per_output(1), doc="-x")
for _name, _cost in (("exp", 1), ("log", 1), ("sqrt", 1), ("tanh", 1), ("sigmoid", 4),
                     ("relu", 1), ("abs", 1), ("sin", 1), ("cos", 1), ("sign", 1)):
    register(_name, "primitive", _unary_float, _per_output(_cost), doc=f"Elementwise {_name}.")
register("softplus", "composite", _unary_float, _per_output(4),
         doc="log(1 + exp(x)), and x itself where x > 20 (torch's threshold).")
register("clip", "primitive", _unary_float, _per_output(2), attrs=("lo", "hi"),
         doc="min(max(x, lo), hi); a bound of None is no bound.")
register("gelu", "composite", _unary_float, _per_output(8), attrs=("approximate",),
         doc="x * Phi(x); approximate='tanh': 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).")
register("silu", "composite", _unary_float, _per_output(5), doc="x * sigmoid(x).")
register("cast", "primitive", lambda ins, a: TensorType(ins[0].shape, a["dtype"]),
         attrs=("dtype",), doc="Convert dtype ('float', 'int', 'bool').")
register("dropout", "composite", _same, _per_output(2), attrs=("p",),
         doc="Zero each element with probability p while training, scale the rest by 1/(1-p).")


def _layer_drop(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if ins[0] != ins[1]:
        raise ShapeError(f"layer_drop needs equal types, got {ins[0]} and {ins[1]}")
    return ins[1]


register("layer_drop", "composite", _layer_drop, attrs=("p",),
         doc="LayerDrop: while training, with probability p the layer is skipped (the input "
             "passes through); otherwise and at inference, the layer's output.")


def _where(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    c, a, b = ins
    return TensorType(broadcast_shapes(broadcast_shapes(c.shape, a.shape), b.shape),
                      "float" if "float" in (a.dtype, b.dtype) else a.dtype)


register("where", "primitive", _where, _per_output(1), doc="cond ? a : b, broadcasting.")


# -- linear algebra -------------------------------------------------------------------------

def _matmul(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = ins
    if a.rank < 1 or b.rank < 2:
        raise ShapeError(f"matmul needs a rank >= 1 left and rank >= 2 right operand, got "
                         f"{shape_str(a.shape)} @ {shape_str(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul inner dimensions differ: {shape_str(a.shape)} @ "
                         f"{shape_str(b.shape)} ({a.shape[-1]} vs {b.shape[-2]})")
    if a.rank == 1:
        return TensorType(b.shape[:-2] + b.shape[-1:], "float")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), "float")


register("matmul", "primitive", _matmul,
         lambda ins, out, a: numel(out.shape) * ins[0].shape[-1] * 2,
         doc="Batched matrix product with broadcasting of leading dims.")


def _linear(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w = ins[0], ins[1]
    if x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"linear expects input [..., {w.shape[1]}], got {shape_str(x.shape)}")
    _require_float(x, "linear")
    return TensorType(x.shape[:-1] + (w.shape[0],), "float")


# the activations bias-activation fusion puts on a linear, and their FLOPs per element
LINEAR_ACTIVATIONS = {"relu": 1, "silu": 5, "gelu": 8, "gelu_tanh": 8}


register("linear", "composite", _linear,
         lambda ins, out, a: numel(out.shape) * (ins[1].shape[1] * 2 + LINEAR_ACTIVATIONS.get(
             a.get("activation"), 0)),
         attrs=("has_bias", "activation"),
         doc="y = act(x @ W^T + b) with W: [out, in] (matmul, transpose, add); act, when "
             "fused, one of relu, silu, gelu (exact), gelu_tanh.")


def _linear_int8(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w, scale = ins[0], ins[1], ins[2]
    if w.dtype != "int" or scale.dtype != "float" or scale.shape != w.shape[:1]:
        raise TypeError_(f"linear_int8 needs int weights [out, in] and float scales [out], "
                         f"got {w} and {scale}")
    return _linear([x, w], attrs)


register("linear_int8", "composite", _linear_int8,
         lambda ins, out, a: numel(out.shape) * ins[1].shape[1] * 2, attrs=("has_bias",),
         doc="y = (x @ W^T) * scale + b with W: int8 [out, in] and one scale per output "
             "channel (weight-only quantization; dequantize, matmul, mul, add).")


def _conv1d(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w = ins[0], ins[1]
    groups = attrs["groups"]
    if x.rank != 3 or w.rank != 3:
        raise ShapeError(f"conv1d needs x [B, T, C] and weight [out, C/groups, K], got "
                         f"{shape_str(x.shape)} and {shape_str(w.shape)}")
    _require_float(x, "conv1d")
    c, out, per, k = (d.as_int() for d in (x.shape[2], w.shape[0], w.shape[1], w.shape[2]))
    if c is None or c % groups or out % groups or per * groups != c:
        raise ShapeError(f"conv1d: {c} input channels in {groups} groups need weight "
                         f"[out, {c // groups if c and c % groups == 0 else '?'}, K] with out "
                         f"divisible by groups, got {shape_str(w.shape)}")
    t = x.shape[1] + (attrs["pad_left"] + attrs["pad_right"] - k + 1)
    return TensorType((x.shape[0], t, w.shape[0]), "float")


register("conv1d", "composite", _conv1d,
         lambda ins, out, a: numel(out.shape) * ins[1].shape[1] * ins[1].shape[2] * 2,
         attrs=("pad_left", "pad_right", "groups", "has_bias"),
         doc="y[b, t, o] = sum_{c in o's group, k} x_pad[b, t + k, c] w[o, c, k] + bias[o] on "
             "[B, T, C] (channels last), x padded with zeros on the time axis; stride 1.")


# -- shape ops ------------------------------------------------------------------------------

def _transpose(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    perm = attrs["perm"]
    x = ins[0]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"permutation {list(perm)} does not fit a rank-{x.rank} tensor")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


register("transpose", "primitive", _transpose, attrs=("perm",), doc="Permute axes.")


def _reshape(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = ins[0]
    shape = attrs["shape"]
    if numel(shape) != numel(x.shape):
        raise ShapeError(f"cannot reshape {shape_str(x.shape)} ({numel(x.shape)} elements) to "
                         f"{shape_str(shape)} ({numel(shape)} elements)")
    return TensorType(tuple(shape), x.dtype)


register("reshape", "primitive", _reshape, attrs=("shape",),
         doc="Reshape (row-major) to a shape with the same number of elements.")


def _reduce(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = ins[0]
    axes = {_norm_axis(a, x.rank) for a in attrs["axes"]}
    if attrs["keepdims"]:
        shape = tuple(Dim.of(1) if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return TensorType(shape, "float" if x.dtype == "bool" else x.dtype)


for _name in ("sum", "mean", "max", "min"):
    register(_name, "primitive", _reduce, lambda ins, out, a: numel(ins[0].shape),
             attrs=("axes", "keepdims"), doc=f"Reduce with {_name} over `axes`.")


def _cumsum(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _norm_axis(attrs["axis"], ins[0].rank)
    return TensorType(ins[0].shape, "float" if ins[0].dtype == "bool" else ins[0].dtype)


register("cumsum", "primitive", _cumsum, _per_output(1), attrs=("axis",),
         doc="Running sum along `axis` (inclusive).")


def _one_hot(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if ins[0].dtype != "int":
        raise TypeError_(f"one_hot needs int ids, got {ins[0]}")
    return TensorType(ins[0].shape + (Dim.of(attrs["n"]),), "float")


register("one_hot", "primitive", _one_hot, _per_output(1), attrs=("n",),
         doc="ids [...] -> [..., n] with 1.0 at each id (ids must be in [0, n)).")


def _top_k_indices(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = ins[0]
    axis = _norm_axis(attrs["axis"], x.rank)
    n = x.shape[axis].as_int()
    if n is not None and attrs["k"] > n:
        raise ShapeError(f"top_k: k={attrs['k']} exceeds the {n} entries along axis {axis}")
    return TensorType(x.shape[:axis] + (Dim.of(attrs["k"]),) + x.shape[axis + 1:], "int")


register("top_k_indices", "primitive", _top_k_indices,
         lambda ins, out, a: numel(ins[0].shape) * 2, attrs=("k", "axis"),
         doc="Indices of the k largest entries along `axis`, largest first (ties: lower "
             "index first).")


def _gather(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, index = ins
    axis = _norm_axis(attrs["axis"], x.rank)
    if index.dtype != "int" or index.rank != x.rank:
        raise TypeError_(f"gather needs an int index of the input's rank {x.rank}, got {index}")
    for i, (a, b) in enumerate(zip(x.shape, index.shape)):
        if i != axis and a != b:
            raise ShapeError(f"gather: index {shape_str(index.shape)} and input "
                             f"{shape_str(x.shape)} differ on axis {i}")
    return TensorType(index.shape, x.dtype)


register("gather", "primitive", _gather, attrs=("axis",),
         doc="out[..., i, ...] = x[..., index[..., i, ...], ...] along `axis` (torch.gather).")


def _concat(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    first = ins[0]
    axis = _norm_axis(attrs["axis"], first.rank)
    total = Dim.of(0)
    for t in ins:
        if t.rank != first.rank or any(
                i != axis and a != b for i, (a, b) in enumerate(zip(t.shape, first.shape))):
            raise ShapeError(f"concat along axis {attrs['axis']} needs equal other dimensions, "
                             f"got {shape_str(first.shape)} and {shape_str(t.shape)}")
        total = total + t.shape[axis]
    return TensorType(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)


register("concat", "primitive", _concat, attrs=("axis",), doc="Join tensors along an axis.")


def _expand(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    shape = tuple(attrs["shape"])
    broadcast_shapes(ins[0].shape, shape)
    if broadcast_shapes(ins[0].shape, shape) != shape:
        raise ShapeError(f"cannot expand {shape_str(ins[0].shape)} to {shape_str(shape)}")
    return TensorType(shape, ins[0].dtype)


register("expand", "primitive", _expand, attrs=("shape",), doc="Broadcast to a larger shape.")


def _index(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """attrs['index']: per leading axis, an int (drops the axis) or (start, stop) slice."""
    x = ins[0]
    idx = attrs["index"]
    if len(idx) > x.rank:
        raise ShapeError(f"too many indices ({len(idx)}) for a rank-{x.rank} tensor")
    shape: list[Dim] = []
    for d, ix in zip(x.shape, idx):
        if isinstance(ix, int):
            n = d.as_int()
            if n is not None and not -n <= ix < n:
                raise ShapeError(f"index {ix} is out of range for dimension {d}")
            continue
        start, stop = ix
        length = (d if stop is None else Dim.of(stop)) - Dim.of(0 if start is None else start)
        n, m = d.as_int(), length.as_int()
        end = Dim.of(stop).as_int() if stop is not None else None
        if (m is not None and m < 0) or (n is not None and end is not None and end > n):
            raise ShapeError(f"slice {start or ''}:{'' if stop is None else stop} is out of range "
                             f"for dimension {d}")
        shape.append(length)
    return TensorType(tuple(shape) + x.shape[len(idx):], x.dtype)


register("index", "primitive", _index, attrs=("index",), doc="Integer indexing and slicing.")


# -- normalization, softmax, embeddings -------------------------------------------------------

def _softmax(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _norm_axis(attrs["axis"], ins[0].rank)
    return ins[0]


register("softmax", "composite", _softmax, _per_output(5), attrs=("axis",),
         doc="exp(x - max(x)) / sum(exp(x - max(x))) along `axis`.")


def _norm(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = ins[0]
    _require_float(x, "normalization")
    for g in ins[1:]:
        if x.rank < 1 or x.shape[-1] != g.shape[0]:
            raise ShapeError(f"normalization over {g.shape[0]} features got input "
                             f"{shape_str(x.shape)}")
    return x


register("batch_norm", "composite", _norm, _per_output(8), attrs=("eps", "momentum", "affine"),
         doc="(x - mean) / sqrt(var + eps) * weight + bias per channel (the last axis), over "
             "every other axis: the batch's statistics while training (which also move the "
             "running_mean/running_var buffers by `momentum`, var unbiased), the running "
             "ones at inference. Operands: x, running_mean, running_var[, weight, bias].")
register("layer_norm", "composite", _norm, _per_output(8), attrs=("eps", "has_bias"),
         doc="gamma * (x - mean) / sqrt(var + eps) + beta over the last axis (inputs x, then "
             "gamma and beta unless affine=false).")
def _add_norm(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if ins[0] != ins[1]:
        raise ShapeError(f"add_layer_norm needs two operands of one type, got {ins[0]} and "
                         f"{ins[1]}")
    return _norm([ins[0], *ins[2:]], attrs)


register("add_layer_norm", "composite", _add_norm, _per_output(9), attrs=("eps", "has_bias"),
         doc="layer_norm(a + b): a residual add and the norm that is its only reader, fused "
             "(inputs a, b, then gamma and beta unless affine=false).")
register("rms_norm", "composite", _norm, _per_output(4), attrs=("eps",),
         doc="gamma * x / sqrt(mean(x^2) + eps) (+ beta if given) over the last axis.")


def _embedding(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    table, ids = ins
    if ids.dtype != "int":
        raise TypeError_(f"embedding lookup needs int ids, got {ids}")
    return TensorType(ids.shape + table.shape[1:], "float")


register("embedding", "composite", _embedding, doc="table[ids] (gather rows).")


# -- attention -------------------------------------------------------------------------------

SCORES = ("dot", "scaled", "additive", "bilinear")
ATTENTION_ATTRS = ("pattern", "scale", "dropout", "score", "bias", "rope", "extras", "impl")
IMPLS = ("auto", "dense", "tiled", "sparse")


def attention_attrs(pattern: Any, scale: float, dropout: float = 0.0, score: str = "scaled",
                    bias: BiasAttr = NO_BIAS, rope: Any = None,
                    extras: tuple[str, ...] = (), impl: str = "auto") -> dict[str, Any]:
    """Every attribute of an attention node (plain multi-head attention by default). `impl`
    is the implementation: 'auto' (chosen per call by the backend's cost model) or forced."""
    return {"pattern": pattern, "scale": scale, "dropout": dropout, "score": score,
            "bias": bias, "rope": rope, "extras": extras, "impl": impl}


def _attention(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv], then the extra operands named
    by attrs['extras']; H must be a multiple of Hk (grouped-query attention)."""
    q, k, v = ins[:3]
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise ShapeError(f"attention expects [B, H, T, D] tensors, got q {shape_str(q.shape)}, "
                         f"k {shape_str(k.shape)}, v {shape_str(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"query and key head sizes differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[2] != v.shape[2]:
        raise ShapeError(f"key and value lengths differ: {k.shape[2]} vs {v.shape[2]}")
    if k.shape[1] != v.shape[1]:
        raise ShapeError(f"keys and values have different head counts: {k.shape[1]} vs "
                         f"{v.shape[1]}")
    broadcast_shapes(q.shape[:1], k.shape[:1])
    h, hk = q.shape[1].as_int(), k.shape[1].as_int()
    if q.shape[1] != k.shape[1] and hk != 1 and (h is None or hk is None or h % hk):
        raise ShapeError(f"{q.shape[1]} query heads cannot share {k.shape[1]} key/value heads "
                         "(the query head count must be a multiple of kv_heads)")
    extras = attrs.get("extras", ())
    if len(extras) != len(ins) - 3:
        raise ShapeError(f"attention got {len(ins) - 3} extra operands for {list(extras)}")
    scores = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    for name, t in zip(extras, ins[3:]):
        if name == "key_padding":
            if t.dtype != "bool" or t.rank != 2:
                raise TypeError_(f"key_padding must be bool[B, S], got {t}")
            broadcast_shapes(t.shape, (q.shape[0], k.shape[2]))
        elif name.startswith("bias") and attrs["bias"].terms[int(name[4:])].kernel_attr() == (
                "tensor",):
            if t.dtype != "float" or t.rank > 4 or broadcast_shapes(t.shape, scores) != scores:
                raise ShapeError(f"a bias tensor must be float and broadcast to "
                                 f"{shape_str(scores)}, got {t}")
    return TensorType(q.shape[:3] + v.shape[3:], "float")


def _attention_weights(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    q, k = ins[:2]
    _attention(ins, attrs)
    return TensorType((q.shape[0], q.shape[1], q.shape[2], k.shape[2]), "float")


def _attention_flops(ins: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> Dim:
    """2 D (scores) + 2 Dv (values) + 5 (softmax) per score; additive scores add 3 A per
    score (add, tanh, dot with v); bilinear adds the q W product; each bias term 1."""
    q, k, v = ins[:3]
    scores = numel(q.shape[:3]) * k.shape[2]
    per = q.shape[3] * 2 + v.shape[3] * 2 + 5 + len(attrs["bias"].terms)
    extra = Dim.of(0)
    if attrs["score"] == "additive":
        a = ins[3 + attrs["extras"].index("score_wq")].shape[0]
        per = v.shape[3] * 2 + 5 + len(attrs["bias"].terms) + a * 3
        extra = numel(q.shape[:3]) * a * q.shape[3] * 2 + numel(k.shape[:3]) * a * k.shape[3] * 2
    elif attrs["score"] == "bilinear":
        extra = numel(q.shape) * q.shape[3] * 2
    return scores * per + extra


register("attention", "composite", _attention, _attention_flops, attrs=ATTENTION_ATTRS,
         doc="softmax(score(rope(q), rope(k)) + bias + mask(pattern, key_padding)) @ v on "
             "[B, H, T, D] (k, v may have fewer heads: grouped-query attention); fully "
             "masked rows give zeros.")
register("attention_weights", "composite", _attention_weights,
         lambda ins, out, a: _attention_flops(ins, out, a) - numel(out.shape) * ins[2].shape[3] * 2,
         attrs=ATTENTION_ATTRS,
         doc="The probabilities [B, H, Tq, Tk] of the attention with the same operands and "
             "attributes (what `weights=` exposes).")


def _linear_attention(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv], then a bool key padding [B, Tk]
    when attrs['has_padding']."""
    return _attention(ins, {"extras": ("key_padding",) if attrs["has_padding"] else ()})


def _linear_attention_flops(ins: list[TensorType], out: TensorType,
                            attrs: dict[str, Any]) -> Dim:
    """Feature maps (favor: 2 D per feature) of q and k, the key state phi(k)^T [v, 1]
    (2 m (Dv + 1) per key) and its read-out (2 m (Dv + 1) per query); the causal form adds a
    masked CHUNK-wide block per query (2 CHUNK (m + Dv + 1))."""
    q, k, v = ins[:3]
    d, dv = q.shape[3], v.shape[3] + 1
    m = d if attrs["feature_map"].kind == "elu_plus_one" else Dim.of(attrs["feature_map"].features)
    per_map = Dim.of(3) if attrs["feature_map"].kind == "elu_plus_one" else m * d * 2 + m * 3
    rows_q, rows_k = numel(q.shape[:3]), numel(k.shape[:3])
    total = rows_q * per_map + rows_k * per_map + rows_k * m * dv * 2 + rows_q * m * dv * 2
    if attrs["causal"]:
        total = total + rows_q * (m + dv) * 2 * LINEAR_ATTENTION_CHUNK
    return total


LINEAR_ATTENTION_CHUNK = 64      # causal form: queries per chunk (the kernels' CHUNK)

register("linear_attention", "composite", _linear_attention, _linear_attention_flops,
         attrs=("feature_map", "causal", "scale", "has_padding"),
         doc="phi(q) (phi(k)^T v) / (phi(q) (phi(k)^T 1) + eps) on [B, H, T, D] with a "
             "feature map phi (`attndsl.ir.kernels`); causal: sums over keys j <= i only "
             "(prefix sums, chunked); padded keys are left out.")


def _lsh_attention(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """q [B, H, T, D] (also the keys, normalized), v [B, H, T, Dv], then a bool key padding
    [B, T] when attrs['has_padding']."""
    q, v = ins[0], ins[1]
    if q.rank != 4 or v.rank != 4 or q.shape[:3] != v.shape[:3]:
        raise ShapeError(f"lsh attention needs q [B, H, T, D] and v [B, H, T, Dv], got "
                         f"{shape_str(q.shape)} and {shape_str(v.shape)}")
    if attrs["has_padding"] and (len(ins) != 3 or ins[2].dtype != "bool" or ins[2].rank != 2):
        raise TypeError_("lsh attention's key padding must be bool [B, T]")
    return TensorType(q.shape[:3] + v.shape[3:], "float")


def _lsh_flops(ins: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> Dim:
    """Per round: hashing (2 D buckets/2 per position) and each query against its chunk and
    the one before (2 chunk keys: 2 D + 2 Dv + 5 per score)."""
    q, v = ins[0], ins[1]
    lsh = attrs["lsh"]
    rows = numel(q.shape[:3])
    window = 2 * lsh.chunk
    per_round = q.shape[3] * lsh.buckets + (q.shape[3] * 2 + v.shape[3] * 2 + 5) * window
    return rows * per_round * lsh.rounds


register("lsh_attention", "composite", _lsh_attention, _lsh_flops,
         attrs=("lsh", "scale", "has_padding"),
         doc="Reformer LSH attention with shared QK (`attndsl.ir.lsh`): hashed buckets, "
             "sorted chunks attending to themselves and the previous chunk, rounds combined "
             "by their log-sum-exp.")


# -- mixture of experts ----------------------------------------------------------------------
# Routing is one node, `moe_route`, computed once per layer from the router probabilities
# [N, E] (deterministically): each token's top_k experts (ties: the lower index); the
# assignments a = j N + n (choice j of token n; first choices of all tokens before second
# choices) take the slots of their expert in that order; while training an expert holds
# ceil(capacity_factor * top_k * N / E) of them and the rest are dropped. Its int [3, N top_k]
# result holds, per assignment, the expert, the dispatch row (kept ones expert by expert,
# rows [start_e, start_e + count_e); dropped ones after them) and whether it was kept; the
# other moe ops read it.


def _router(probs: TensorType) -> TensorType:
    if probs.rank != 2 or probs.dtype != "float":
        raise ShapeError(f"moe router probabilities must be float [N, E], got {probs}")
    return probs


def _route(route: TensorType) -> TensorType:
    if route.rank != 2 or route.dtype != "int" or route.shape[0] != Dim.of(3):
        raise ShapeError(f"an moe routing must be int [3, N * top_k], got {route}")
    return route


def _moe_route(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType((Dim.of(3), _router(ins[0]).shape[0] * attrs["top_k"]), "int")


def _moe_dispatch(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, route = ins[0], _route(ins[1])
    if x.rank != 2:
        raise ShapeError(f"moe dispatch needs tokens [N, d], got {shape_str(x.shape)}")
    return TensorType((route.shape[1], x.shape[1]), x.dtype)


def _moe_counts(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _route(ins[0])
    return TensorType((Dim.of(attrs["experts"]),), "int")


def _moe_combine(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    y, probs, route = ins[0], _router(ins[1]), _route(ins[2])
    if y.rank != 2 or y.shape[0] != route.shape[1]:
        raise ShapeError(f"moe combine needs expert rows [N * top_k, d], got {shape_str(y.shape)}")
    return TensorType((probs.shape[0], y.shape[1]), "float")


def _moe_aux(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _router(ins[0])
    _route(ins[1])
    return TensorType((), "float")


def _moe_dropped(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _route(ins[0])
    return TensorType((), "float")


def _grouped_linear(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, counts, w = ins[:3]
    if x.rank != 2 or counts.dtype != "int" or counts.rank != 1 or w.rank != 3 \
            or w.shape[0] != counts.shape[0] or w.shape[2] != x.shape[1]:
        raise ShapeError(f"grouped_linear needs rows [M, in], counts int[E] and weights "
                         f"[E, out, in], got {shape_str(x.shape)}, {counts} and "
                         f"{shape_str(w.shape)}")
    return TensorType((x.shape[0], w.shape[1]), "float")


register("moe_route", "composite", _moe_route, attrs=("top_k", "capacity_factor"),
         doc="The routing int [3, N * top_k]: per assignment its expert, its dispatch row and "
             "whether it was kept (capacity applies while training).")
register("moe_dispatch", "composite", _moe_dispatch,
         doc="The kept token assignments [N * top_k, d], expert by expert (a gather).")
register("moe_counts", "composite", _moe_counts, attrs=("experts",),
         doc="Kept assignments per expert, int [E].")
register("moe_combine", "composite", _moe_combine, _per_output(4), attrs=("top_k", "normalize"),
         doc="out[n] = sum over n's kept assignments of gate * expert row; gate = the router "
             "probability, renormalized over the token's top_k when normalize.")
register("moe_aux", "composite", _moe_aux, attrs=("top_k",),
         doc="Switch/GShard load balancing: E * sum_e f_e * P_e, f_e the fraction of tokens "
             "with e among their top_k, P_e the mean router probability of e.")
register("moe_dropped", "composite", _moe_dropped,
         doc="The fraction of token assignments dropped at capacity (no gradient).")
register("grouped_linear", "composite", _grouped_linear,
         lambda ins, out, a: numel(out.shape) * ins[2].shape[2] * 2, attrs=("has_bias",),
         doc="Rows [start_e, start_e + counts[e]) times W[e]^T (+ b[e]) for each expert e; "
             "rows past sum(counts) are zeros (one expert's linear layer, on its tokens).")


def infer(op: str, ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """Apply an op's shape rule (raises ShapeError/TypeError_ without a span)."""
    return OPS[op].shape(ins, attrs)
