"""Built-in functions of the language: layers, tensor functions, patterns, training settings.

Each built-in is a Python function `f(b: Builder, span, scope, *args, **kwargs)`; the
`builtin` decorator checks arguments against its signature (so arity and keyword errors
name the function and its signature) and, for layers that own parameters, opens the
parameter scope (`name_hint` or the function's name).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from attndsl.errors import ArgumentError, ShapeError, Span, TypeError_, did_you_mean
from attndsl.frontend import ast
from attndsl.frontend.values import OutputRef, Tensor, check_size, describe
from attndsl.ir import patterns as pat
from attndsl.ir.dims import Dim

BUILTINS: dict[str, Any] = {}
TRAIN_BUILTINS: dict[str, Any] = {}
NONE = object()  # the language's `none`


def builtin(name: str, *, layer: bool | str = False, table: dict[str, Any] | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(b, span, *args, **kwargs)` as a built-in. `layer=True` opens a parameter
    scope, named by the assignment (`name_hint`), the built-in's name, or exactly by a
    `name="a.b"` argument; `layer="leaf"` is a single tensor whose `name=` is its own full
    name (passed to `fn` as `local`) rather than a scope."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        params = [p for p in list(sig.parameters.values())[2:] if p.name != "local"]
        shown = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}=..."
                          for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        usage = f"{name}({shown}{', name=...' if layer else ''})"

        def call(b: Any, args: list[Any], kwargs: dict[str, Any], node: ast.Call,
                 name_hint: str | None) -> Any:
            kwargs = {k: (None if v is NONE else v) for k, v in kwargs.items()}
            args = [None if v is NONE else v for v in args]
            exact = b.exact_name(kwargs.pop("name"), node.span) if layer and "name" in kwargs \
                else None
            names = [p.name for p in params]
            for key in kwargs:
                if key not in names:
                    raise ArgumentError(f"{name}() has no argument '{key}'", node.span,
                                        did_you_mean(key, names) or f"usage: {usage}")
            if layer == "leaf" and exact is not None:
                if not exact:
                    raise ArgumentError(f"{name}(): name= cannot be empty", node.span)
                kwargs["local"] = exact.pop()
            try:
                bound = sig.bind(b, node.span, *args, **kwargs)
            except TypeError as e:
                raise ArgumentError(f"{name}(): {e}", node.span, f"usage: {usage}") from None
            if not layer:
                return fn(*bound.args, **bound.kwargs)
            with b.in_scope(exact if exact is not None else [b.claim_name(name_hint or name)]):
                return fn(*bound.args, **bound.kwargs)

        call.__name__, call.__doc__ = name, fn.__doc__
        call.usage = usage  # type: ignore[attr-defined]
        (BUILTINS if table is None else table)[name] = call
        return fn

    return wrap


# -- argument checking ----------------------------------------------------------------------

def tensor(b: Any, value: Any, span: Span, what: str, rank: int | None = None,
           dtype: str | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError_(f"{what} must be a tensor, got {describe(value)}", span)
    if rank is not None and value.type.rank != rank:
        raise ShapeError(f"{what} must have rank {rank}, got {value.type}", span)
    if dtype is not None and value.type.dtype != dtype:
        raise TypeError_(f"{what} must be a {dtype} tensor, got {value.type}", span)
    return value


def integer(value: Any, span: Span, what: str, positive: bool = True) -> int:
    if isinstance(value, Dim) and value.as_int() is not None:
        value = value.as_int()
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        kind = "a positive integer" if positive else "an integer"
        raise TypeError_(f"{what} must be {kind}, got {describe(value)}", span)
    if positive:
        check_size(value, what, span)
    return value


def number(value: Any, span: Span, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError_(f"{what} must be a number, got {describe(value)}", span)
    try:
        return float(value)
    except OverflowError:
        raise TypeError_(f"{what} is too large", span) from None


def size(value: Any, span: Span, what: str) -> Dim:
    if isinstance(value, bool) or not isinstance(value, (int, Dim)):
        raise TypeError_(f"{what} must be a size (integer or dimension), got {describe(value)}",
                         span)
    n = Dim.of(value).as_int()
    if n is not None and n <= 0:
        raise ShapeError(f"{what} must be positive, got {n}", span)
    if n is not None:
        check_size(n, what, span)
    return Dim.of(value)


def axis_arg(value: Any, span: Span) -> int:
    return integer(value, span, "axis", positive=False)


def choice(value: Any, options: tuple[str, ...], span: Span, what: str) -> str:
    if value not in options:
        raise ArgumentError(f"{what} must be one of {', '.join(map(repr, options))}, got "
                            f"{describe(value)}", span)
    return value


INITS = ("normal", "zeros", "ones", "xavier")


# -- layers with parameters -------------------------------------------------------------------

def linear_layer(b: Any, span: Span, x: Tensor, out: int, bias: bool = True, tie: Any = None,
                 init: str = "normal", std: float = 0.02) -> Tensor:
    """y = x W^T + b; W: [out, in]. Parameters `weight` and (if bias) `bias`."""
    x = tensor(b, x, span, "linear input")
    out = integer(out, span, "linear output size")
    d_in = x.type.shape[-1] if x.type.rank else Dim.of(0)
    if d_in.as_int() is None:
        raise ShapeError(f"linear needs a fixed feature size, got {x.type}", span)
    if b.expert_group is not None:                  # inside moe(expert=...): one per expert
        return _expert_linear(b, span, x, out, d_in, bias, tie, init, std)
    if tie is not None:
        w = b.tied_param(tie, "weight", span)
        if w.type.shape != (Dim.of(out), d_in):
            raise ShapeError(f"tie='{tie}': weight is {w.type}, but this layer needs "
                             f"[{out}, {d_in}]", span)
    else:
        init = choice(init, INITS, span, "init")
        w = b.param("weight", (out, d_in), init, span, number(std, span, "std"))
    inputs = [x, w]
    if bias:
        inputs.append(b.param("bias", (out,), "zeros", span))
    return b.add("linear", inputs, {"has_bias": bool(bias)}, span)


def _expert_linear(b: Any, span: Span, x: Tensor, out: int, d_in: Dim, bias: bool, tie: Any,
                   init: str, std: float) -> Tensor:
    """A linear layer of an moe expert block: weight [E, out, in] (bias [E, out]), applied to
    each expert's rows of the dispatched tokens (`grouped_linear`)."""
    counts, experts = b.expert_group
    if tie is not None:
        raise ArgumentError("tie= inside an moe expert block: every expert has its own "
                            "weights", span)
    if x.type.rank != 2:
        raise ShapeError(f"an expert's linear layers read its token rows [N, d], got {x.type}",
                         span)
    w = b.param("weight", (experts, out, d_in), choice(init, INITS, span, "init"), span,
                number(std, span, "std"))
    inputs = [x, counts, w]
    if bias:
        inputs.append(b.param("bias", (experts, out), "zeros", span))
    return b.add("grouped_linear", inputs, {"has_bias": bool(bias)}, span)


builtin("linear", layer=True)(linear_layer)


@builtin("embedding", layer=True)
def embedding(b: Any, span: Span, ids: Tensor, num: int, dim: int, tie: Any = None,
              std: float = 0.02) -> Tensor:
    """table[ids] with table: [num, dim] (parameter `weight`)."""
    ids = tensor(b, ids, span, "embedding ids", dtype="int")
    num, dim = integer(num, span, "embedding count"), integer(dim, span, "embedding size")
    if tie is not None:
        table = b.tied_param(tie, "weight", span)
        if table.type.shape != (Dim.of(num), Dim.of(dim)):
            raise ShapeError(f"tie='{tie}': table is {table.type}, need [{num}, {dim}]", span)
    else:
        table = b.param("weight", (num, dim), "normal", span, number(std, span, "std"))
    return b.add("embedding", [table, ids], {}, span)


def _norm_features(x: Tensor, span: Span) -> Dim:
    if x.type.rank == 0 or x.type.shape[-1].as_int() is None:
        raise ShapeError(f"normalization needs a fixed last dimension, got {x.type}", span)
    return x.type.shape[-1]


@builtin("layer_norm", layer=True)
def layer_norm(b: Any, span: Span, x: Tensor, eps: float = 1e-5, bias: bool = True,
               affine: bool = True) -> Tensor:
    """gamma * (x - mean) / sqrt(var + eps) + beta over the last axis; affine=false has no
    gamma or beta."""
    x = tensor(b, x, span, "layer_norm input")
    d = _norm_features(x, span)
    inputs = [x]
    if affine:
        inputs.append(b.param("weight", (d,), "ones", span))
        if bias:
            inputs.append(b.param("bias", (d,), "zeros", span))
    return b.add("layer_norm", inputs, {"eps": number(eps, span, "eps"),
                                        "has_bias": bool(bias and affine)}, span)


@builtin("batch_norm", layer=True)
def batch_norm(b: Any, span: Span, x: Tensor, momentum: float = 0.1, eps: float = 1e-5,
               affine: bool = True) -> Tensor:
    """Batch normalization per channel (the last axis) over every other axis, as torch's
    BatchNorm: batch statistics while training, moving the buffers `running_mean` and
    `running_var` (not trained) by `momentum`; the running statistics at inference."""
    x = tensor(b, x, span, "batch_norm input")
    d = _norm_features(x, span)
    m = number(momentum, span, "momentum")
    if not 0.0 <= m <= 1.0:
        raise ArgumentError(f"momentum must be in [0, 1], got {m}", span)
    inputs = [x, b.buffer("running_mean", (d,), "zeros", span),
              b.buffer("running_var", (d,), "ones", span)]
    if affine:
        inputs += [b.param("weight", (d,), "ones", span), b.param("bias", (d,), "zeros", span)]
    return b.add("batch_norm", inputs, {"eps": number(eps, span, "eps"), "momentum": m,
                                        "affine": bool(affine)}, span)


@builtin("rms_norm", layer=True)
def rms_norm(b: Any, span: Span, x: Tensor, eps: float = 1e-6, bias: bool = False) -> Tensor:
    """gamma * x / sqrt(mean(x^2) + eps) (+ beta with bias=true) over the last axis."""
    x = tensor(b, x, span, "rms_norm input")
    d = _norm_features(x, span)
    inputs = [x, b.param("weight", (d,), "ones", span)]
    if bias:
        inputs.append(b.param("bias", (d,), "zeros", span))
    return b.add("rms_norm", inputs, {"eps": number(eps, span, "eps")}, span)


@builtin("parameter", layer="leaf")
def parameter(b: Any, span: Span, shape: tuple, init: str = "normal", std: float = 0.02,
              local: str = "weight") -> Tensor:
    """A free parameter of the given shape, e.g. a [CLS] token: `<name>.weight`, or exactly
    `name="..."`."""
    if not isinstance(shape, tuple):
        raise TypeError_("parameter() takes a shape list like [1, 1, d_model]", span)
    dims = tuple(integer(d, span, "parameter size") for d in shape)
    return b.param(local, dims, choice(init, INITS, span, "init"), span,
                   number(std, span, "std"))


def split_heads(b: Any, x: Tensor, heads: int, span: Span) -> Tensor:
    """[B, T, H*D] -> [B, H, T, D]."""
    bsz, t, d = x.type.shape
    hd = d.divide(heads)
    if hd is None or hd.as_int() is None:
        raise ShapeError(f"model width {d} is not divisible by heads={heads}", span)
    x = b.add("reshape", [x], {"shape": (bsz, t, Dim.of(heads), hd)}, span)
    return b.add("transpose", [x], {"perm": (0, 2, 1, 3)}, span)


def merge_heads(b: Any, x: Tensor, span: Span) -> Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    bsz, h, t, hd = x.type.shape
    x = b.add("transpose", [x], {"perm": (0, 2, 1, 3)}, span)
    return b.add("reshape", [x], {"shape": (bsz, t, h * hd)}, span)


@builtin("split_heads")
def split_heads_fn(b: Any, span: Span, x: Tensor, heads: int) -> Tensor:
    """[B, T, H*D] -> [B, H, T, D]."""
    return split_heads(b, tensor(b, x, span, "input", rank=3), integer(heads, span, "heads"),
                       span)


@builtin("merge_heads")
def merge_heads_fn(b: Any, span: Span, x: Tensor) -> Tensor:
    """[B, H, T, D] -> [B, T, H*D]."""
    return merge_heads(b, tensor(b, x, span, "input", rank=4), span)


@builtin("patch_embed", layer=True)
def patch_embed(b: Any, span: Span, image: Tensor, patch: int, dim: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), dim]: non-overlapping p x p patches, then a linear map
    (the same as a stride-p convolution; parameters `weight` [dim, C*p*p] and `bias`)."""
    image = tensor(b, image, span, "image", rank=4)
    p = integer(patch, span, "patch")
    bsz, c, h, w = image.type.shape
    gh, gw = h.divide(p), w.divide(p)
    if gh is None or gw is None or (h.as_int() or 0) % p or (w.as_int() or 0) % p:
        raise ShapeError(f"image size {h} x {w} is not divisible by patch {p}", span)
    x = b.add("reshape", [image], {"shape": (bsz, c, gh, Dim.of(p), gw, Dim.of(p))}, span)
    x = b.add("transpose", [x], {"perm": (0, 2, 4, 1, 3, 5)}, span)  # (B, gh, gw, C, p, p)
    x = b.add("reshape", [x], {"shape": (bsz, gh * gw, c * p * p)}, span)
    return linear_layer(b, span, x, integer(dim, span, "dim"))


@builtin("conv1d", layer=True)
def conv1d(b: Any, span: Span, x: Tensor, channels: int, kernel: int, groups: int = 1,
           padding: Any = "same", bias: bool = True) -> Tensor:
    """Convolution along time on x [B, T, C] (channels last), stride 1; weight
    [channels, C/groups, kernel] (torch's layout), bias [channels]. padding: "same" (output
    length T; an even kernel pads one more on the right), "causal" (kernel - 1 on the left:
    position t sees t - kernel + 1 .. t), or a number of zeros on each side."""
    x = tensor(b, x, span, "conv1d input", rank=3)
    out, k, g = (integer(v, span, n) for v, n in ((channels, "channels"), (kernel, "kernel"),
                                                  (groups, "groups")))
    c = x.type.shape[2].as_int()
    if c is None or c % g or out % g:
        raise ShapeError(f"conv1d: {x.type.shape[2]} input and {out} output channels must both "
                         f"be divisible by groups={g}", span)
    if padding == "same":
        pads = ((k - 1) // 2, k - 1 - (k - 1) // 2)
    elif padding == "causal":
        pads = (k - 1, 0)
    elif isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        pads = (padding, padding)
    else:
        raise ArgumentError(f'padding must be "same", "causal" or a number >= 0, got '
                            f"{describe(padding)}", span)
    inputs = [x, b.param("weight", (out, c // g, k), "normal", span)]
    if bias:
        inputs.append(b.param("bias", (out,), "zeros", span))
    return b.add("conv1d", inputs, {"pad_left": pads[0], "pad_right": pads[1], "groups": g,
                                    "has_bias": bool(bias)}, span)


# -- functions without parameters ---------------------------------------------------------------

def _unary(op: str, doc: str, float_fn: Callable[[float], float] | None = None) -> None:
    def fn(b: Any, span: Span, x: Any) -> Any:
        if float_fn is not None and isinstance(x, (int, float)) and not isinstance(x, bool):
            try:
                return float_fn(x)
            except (ValueError, OverflowError):
                raise TypeError_(f"{op}({x}) is undefined", span) from None
        return b.add(op, [tensor(b, x, span, f"{op} input")], {}, span)

    fn.__doc__ = doc
    builtin(op)(fn)


_unary("relu", "max(x, 0)")
_unary("silu", "x * sigmoid(x)")
_unary("sigmoid", "1 / (1 + exp(-x))", lambda v: 1.0 / (1.0 + math.exp(-v)))
_unary("tanh", "tanh(x)", math.tanh)
_unary("exp", "e^x", math.exp)
_unary("log", "natural log", math.log)
_unary("sqrt", "square root", math.sqrt)
_unary("abs", "|x|", abs)
_unary("sin", "sin(x) (radians)", math.sin)
_unary("cos", "cos(x) (radians)", math.cos)
_unary("sign", "-1, 0 or 1", lambda v: float((v > 0) - (v < 0)))
_unary("softplus", "log(1 + e^x) (x itself past 20, as torch)",
       lambda v: v if v > 20 else math.log1p(math.exp(v)))


@builtin("clip")
def clip(b: Any, span: Span, x: Tensor, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002
    """Clamp to [min, max]; either bound may be none."""
    lo = None if min is None else number(min, span, "min")
    hi = None if max is None else number(max, span, "max")
    if lo is not None and hi is not None and lo > hi:
        raise ArgumentError(f"clip: min {lo} exceeds max {hi}", span)
    return b.add("clip", [tensor(b, x, span, "clip input")], {"lo": lo, "hi": hi}, span)


@builtin("cumsum")
def cumsum(b: Any, span: Span, x: Tensor, axis: int = -1) -> Tensor:
    """Running (inclusive) sum along `axis`."""
    return b.add("cumsum", [tensor(b, x, span, "cumsum input")], {"axis": axis_arg(axis, span)},
                 span)


@builtin("one_hot")
def one_hot(b: Any, span: Span, ids: Tensor, n: int) -> Tensor:
    """int ids [...] -> float [..., n] with a 1 at each id (ids in [0, n))."""
    return b.add("one_hot", [tensor(b, ids, span, "one_hot ids", dtype="int")],
                 {"n": integer(n, span, "n")}, span)


@builtin("top_k")
def top_k(b: Any, span: Span, x: Tensor, k: int, axis: int = -1) -> tuple:
    """(values, indices) of the k largest entries along `axis`, largest first; ties go to
    the lower index."""
    x = tensor(b, x, span, "top_k input")
    idx = b.add("top_k_indices", [x], {"k": integer(k, span, "k"), "axis": axis_arg(axis, span)},
                span)
    return b.add("gather", [x, idx], {"axis": axis_arg(axis, span)}, span), idx


@builtin("gather")
def gather(b: Any, span: Span, x: Tensor, index: Tensor, axis: int) -> Tensor:
    """out[..., i, ...] = x[..., index[..., i, ...], ...] along `axis` (torch.gather)."""
    return b.add("gather", [tensor(b, x, span, "gather input"),
                            tensor(b, index, span, "gather index", dtype="int")],
                 {"axis": axis_arg(axis, span)}, span)


@builtin("gelu")
def gelu(b: Any, span: Span, x: Tensor, approximate: str = "none") -> Tensor:
    """GELU: exact x * Phi(x) (torch's and Hugging Face's "gelu"); approximate='tanh' is the
    tanh form (GPT-2's "gelu_new")."""
    return b.add("gelu", [tensor(b, x, span, "gelu input")],
                 {"approximate": choice(approximate, ("tanh", "none"), span, "approximate")}, span)


@builtin("softmax")
def softmax(b: Any, span: Span, x: Tensor, axis: int = -1) -> Tensor:
    """exp(x - max) / sum(exp(x - max)) along `axis`."""
    x = tensor(b, x, span, "softmax input")
    return b.add("softmax", [x], {"axis": axis_arg(axis, span)}, span)


@builtin("dropout")
def dropout(b: Any, span: Span, x: Tensor, p: float = 0.1) -> Tensor:
    """Zero elements with probability p while training (identity at inference)."""
    p = number(p, span, "p")
    if not 0.0 <= p < 1.0:
        raise TypeError_(f"dropout probability must be in [0, 1), got {p}", span)
    return b.add("dropout", [tensor(b, x, span, "dropout input")], {"p": p}, span)


def _reduction(op: str, elementwise: str | None = None) -> None:
    def fn(b: Any, span: Span, x: Any, axis: Any = -1, keepdims: bool = False) -> Tensor:
        if elementwise and (isinstance(axis, (Tensor, float)) or not isinstance(x, Tensor)):
            return b.add(elementwise, [b.to_tensor(x, span), b.to_tensor(axis, span)], {}, span)
        axes = axis if isinstance(axis, tuple) else (axis,)
        return b.add(op, [tensor(b, x, span, f"{op} input")],
                     {"axes": tuple(axis_arg(a, span) for a in axes), "keepdims": bool(keepdims)},
                     span)

    fn.__doc__ = f"{op} over `axis` (an int or a list of ints)." + (
        f" With a tensor or float second argument, the elementwise {elementwise} of the two "
        f"(as torch.{op}(a, b))." if elementwise else "")
    builtin(op)(fn)


for _op, _elementwise in (("sum", None), ("mean", None), ("max", "maximum"),
                          ("min", "minimum")):
    _reduction(_op, _elementwise)


def _binary_fn(op: str) -> None:
    def fn(b: Any, span: Span, x: Any, y: Any) -> Tensor:
        return b.add(op, [b.to_tensor(x, span), b.to_tensor(y, span)], {}, span)

    fn.__doc__ = f"Elementwise {op}, broadcasting."
    builtin(op)(fn)


for _op in ("maximum", "minimum", "less", "greater", "equal"):
    _binary_fn(_op)


@builtin("where")
def where(b: Any, span: Span, cond: Tensor, x: Any, y: Any) -> Tensor:
    """cond ? x : y."""
    cond = tensor(b, cond, span, "condition", dtype="bool")
    return b.add("where", [cond, b.to_tensor(x, span), b.to_tensor(y, span)], {}, span)


@builtin("reshape")
def reshape(b: Any, span: Span, x: Tensor, shape: tuple) -> Tensor:
    """Reshape to `shape` (a list of sizes; sizes may be symbolic like B or T)."""
    x = tensor(b, x, span, "reshape input")
    if not isinstance(shape, tuple):
        raise TypeError_("reshape takes a shape list like [B, T, heads, d_model / heads]", span)
    return b.add("reshape", [x], {"shape": tuple(size(d, span, "size") for d in shape)}, span)


@builtin("transpose")
def transpose(b: Any, span: Span, x: Tensor, perm: Any = None) -> Tensor:
    """Permute axes (default: swap the last two)."""
    x = tensor(b, x, span, "transpose input")
    if perm is None:
        if x.type.rank < 2:
            raise ShapeError(f"transpose needs rank >= 2, got {x.type}", span)
        perm = list(range(x.type.rank))
        perm[-1], perm[-2] = perm[-2], perm[-1]
    if not isinstance(perm, (tuple, list)):
        raise TypeError_("perm must be a list of axes", span)
    return b.add("transpose", [x], {"perm": tuple(axis_arg(p, span) for p in perm)}, span)


@builtin("concat")
def concat(b: Any, span: Span, tensors: tuple, axis: int = -1) -> Tensor:
    """Join a list of tensors along `axis`."""
    if not isinstance(tensors, tuple) or not tensors:
        raise TypeError_("concat takes a non-empty list of tensors", span)
    ts = [tensor(b, t, span, "concat item") for t in tensors]
    return b.add("concat", ts, {"axis": axis_arg(axis, span)}, span)


@builtin("expand")
def expand(b: Any, span: Span, x: Tensor, shape: tuple) -> Tensor:
    """Broadcast x to `shape` (e.g. a [1, 1, d] token to [B, 1, d])."""
    x = tensor(b, x, span, "expand input")
    if not isinstance(shape, tuple):
        raise TypeError_("expand takes a shape list", span)
    return b.add("expand", [x], {"shape": tuple(size(d, span, "size") for d in shape)}, span)


@builtin("arange")
def arange(b: Any, span: Span, n: Any) -> Tensor:
    """The positions 0..n-1 as int[n]."""
    return b.add("arange", [], {"n": size(n, span, "n"), "offset": 0}, span)


@builtin("sinusoidal")
def sinusoidal(b: Any, span: Span, n: Any, dim: int) -> Tensor:
    """Sinusoidal position table [n, dim] (Vaswani et al. 2017)."""
    dim = integer(dim, span, "dim")
    if dim % 2:
        raise ShapeError(f"sinusoidal positions need an even dim, got {dim}", span)
    return b.add("sinusoidal", [], {"n": size(n, span, "n"), "dim": dim, "offset": 0}, span)


@builtin("cast")
def cast(b: Any, span: Span, x: Tensor, dtype: str) -> Tensor:
    """Convert to 'float', 'int' or 'bool'."""
    return b.add("cast", [tensor(b, x, span, "cast input")],
                 {"dtype": choice(dtype, ("float", "int", "bool"), span, "dtype")}, span)


@builtin("size")
def size_of(b: Any, span: Span, x: Tensor, axis: int) -> Any:
    """The (possibly symbolic) size of x along `axis`."""
    x = tensor(b, x, span, "input")
    axis = axis_arg(axis, span)
    if not -x.type.rank <= axis < x.type.rank:
        raise ShapeError(f"axis {axis} is out of range for {x.type}", span)
    d = x.type.shape[axis]
    return d.as_int() if d.as_int() is not None else d


# -- attention patterns ---------------------------------------------------------------------------

BUILTINS["causal"] = pat.CAUSAL
BUILTINS["full"] = pat.FULL
BUILTINS["true"] = True
BUILTINS["false"] = False
BUILTINS["none"] = NONE
BUILTINS["pi"] = math.pi


@builtin("window")
def window(b: Any, span: Span, size: int) -> pat.Pattern:
    """Local band |i - j| < size."""
    return pat.Window(integer(size, span, "window size"))


@builtin("dilated")
def dilated(b: Any, span: Span, size: int, dilation: int) -> pat.Pattern:
    """Dilated band: every `dilation`-th position within size * dilation."""
    return pat.Dilated(integer(size, span, "size"), integer(dilation, span, "dilation"))


@builtin("strided")
def strided(b: Any, span: Span, stride: int) -> pat.Pattern:
    """Sparse-Transformer strided pattern: (i - j) divisible by stride."""
    return pat.Strided(integer(stride, span, "stride"))


@builtin("global")
def global_tokens(b: Any, span: Span, positions: tuple) -> pat.Pattern:
    """Global positions that see and are seen by all."""
    if not isinstance(positions, tuple):
        raise TypeError_("global takes a list of positions, like global([0])", span)
    return pat.Global(tuple(integer(p, span, "position", positive=False) for p in positions))


@builtin("random_blocks")
def random_blocks(b: Any, span: Span, blocks: int, block: int = 64, seed: int = 0) -> pat.Pattern:
    """BigBird random attention: each query block sees `blocks` seeded random key blocks."""
    return pat.RandomBlocks(integer(blocks, span, "blocks"), integer(block, span, "block"),
                            integer(seed, span, "seed", positive=False))


@builtin("random")
def random_pattern(b: Any, span: Span, blocks: int, block: int = 64, seed: int = 0
                   ) -> pat.Pattern:
    """BigBird's name for random_blocks: `blocks` seeded random key blocks per query block."""
    return random_blocks(b, span, blocks, block, seed)


@builtin("fixed")
def fixed(b: Any, span: Span, block: int, summary: int = 1) -> pat.Pattern:
    """Sparse-Transformer fixed pattern: own block, plus every block's last `summary` keys."""
    block = integer(block, span, "block")
    summary = integer(summary, span, "summary")
    if summary > block:
        raise ArgumentError(f"summary={summary} is more than block={block}", span)
    return pat.Fixed(block, summary)


@builtin("prefix")
def prefix(b: Any, span: Span, length: int) -> pat.Pattern:
    """Prefix-LM: the first `length` positions are visible to all queries."""
    return pat.Prefix(integer(length, span, "prefix length", positive=False))


# -- training settings ----------------------------------------------------------------------------

def _setting(kind: str, name: str, **values: Any) -> dict[str, Any]:
    return {"kind": kind, "name": name, **values}


@builtin("cross_entropy", table=TRAIN_BUILTINS)
def cross_entropy(b: Any, span: Span, output: Any, label_smoothing: float = 0.0,
                  ignore_index: int = -100, target: str = "causal_lm") -> dict[str, Any]:
    """Mean cross-entropy of a logits output; target: 'causal_lm', 'masked_lm' or 'labels'."""
    if not isinstance(output, OutputRef):
        raise TypeError_("cross_entropy takes a model output name, like cross_entropy(logits)",
                         span)
    return _setting("loss", "cross_entropy", output=output.name,
                    label_smoothing=number(label_smoothing, span, "label_smoothing"),
                    ignore_index=integer(ignore_index, span, "ignore_index", positive=False),
                    target=choice(target, ("causal_lm", "masked_lm", "labels"), span, "target"))


def loss_binop(op: str, a: Any, b: Any, span: Span) -> dict[str, Any]:
    """Loss arithmetic in the train section: `cross_entropy(logits) + 0.01 * aux` adds
    `coefficient * output` terms (scalar outputs, e.g. an moe's load-balancing loss)."""
    def terms(v: Any) -> list[tuple[float, str]] | None:
        if isinstance(v, OutputRef):
            return [(1.0, v.name)]
        if isinstance(v, dict) and v.get("kind") == "loss_terms":
            return list(v["terms"])
        return None

    def scaled(ts: list[tuple[float, str]], c: float) -> dict[str, Any]:
        return {"kind": "loss_terms", "terms": [(c * k, n) for k, n in ts]}

    is_loss = [isinstance(v, dict) and v.get("kind") == "loss" for v in (a, b)]
    ta, tb = terms(a), terms(b)
    number_ = (int, float)
    if op == "*" and ta is not None and isinstance(b, number_) and not isinstance(b, bool):
        return scaled(ta, float(b))
    if op == "*" and tb is not None and isinstance(a, number_) and not isinstance(a, bool):
        return scaled(tb, float(a))
    if op in "+-" and (is_loss[0] or ta is not None) and (is_loss[1] or tb is not None) \
            and not all(is_loss):
        sign = 1.0 if op == "+" else -1.0
        if is_loss[0]:
            return {**a, "extra": [*a.get("extra", []), *scaled(tb, sign)["terms"]]}
        if is_loss[1] and op == "+":
            return {**b, "extra": [*b.get("extra", []), *ta]}
        if ta is not None and tb is not None:
            return {"kind": "loss_terms", "terms": ta + scaled(tb, sign)["terms"]}
    raise TypeError_(f"the loss is one built-in loss plus number * output terms, like "
                     f"cross_entropy(logits) + 0.01 * aux; '{op}' cannot combine "
                     f"{describe(a)} and {describe(b)}", span)


@builtin("sgd", table=TRAIN_BUILTINS)
def sgd(b: Any, span: Span, lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 0.0) -> dict[str, Any]:
    """SGD with momentum."""
    return _setting("optimizer", "sgd", lr=number(lr, span, "lr"),
                    momentum=number(momentum, span, "momentum"),
                    weight_decay=number(weight_decay, span, "weight_decay"))


def _betas(betas: Any, span: Span) -> tuple[float, float]:
    if not isinstance(betas, tuple) or len(betas) != 2:
        raise TypeError_("betas must be a pair like (0.9, 0.999)", span)
    values = tuple(number(x, span, "beta") for x in betas)
    if not all(0.0 <= x < 1.0 for x in values):
        raise ArgumentError(f"betas must lie in [0, 1), got {values}", span)
    return values  # type: ignore[return-value]


def _adam(name: str, doc: str) -> None:
    def fn(b: Any, span: Span, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0) -> dict[str, Any]:
        return _setting("optimizer", name, lr=number(lr, span, "lr"),
                        betas=_betas(betas, span), eps=number(eps, span, "eps"),
                        weight_decay=number(weight_decay, span, "weight_decay"))

    fn.__doc__ = doc
    builtin(name, table=TRAIN_BUILTINS)(fn)


_adam("adam", "Adam optimizer (coupled L2 weight decay)")
_adam("adamw", "AdamW optimizer (decoupled weight decay)")
_adam("radam", "Rectified Adam (Liu et al. 2020), as torch.optim.RAdam")


@builtin("lion", table=TRAIN_BUILTINS)
def lion(b: Any, span: Span, lr: float = 1e-4, betas: tuple = (0.9, 0.99),
         weight_decay: float = 0.0) -> dict[str, Any]:
    """Lion (Chen et al. 2023): sign of an interpolated momentum, decoupled weight decay."""
    return _setting("optimizer", "lion", lr=number(lr, span, "lr"), betas=_betas(betas, span),
                    weight_decay=number(weight_decay, span, "weight_decay"))


@builtin("sophia", table=TRAIN_BUILTINS)
def sophia(b: Any, span: Span, lr: float = 1e-4, betas: tuple = (0.965, 0.99), rho: float = 0.04,
           weight_decay: float = 0.1, interval: int = 10) -> dict[str, Any]:
    """Sophia (Liu et al. 2023) with the Gauss-Newton-Bartlett Hessian estimate every
    `interval` steps."""
    return _setting("optimizer", "sophia", lr=number(lr, span, "lr"), betas=_betas(betas, span),
                    rho=number(rho, span, "rho"),
                    weight_decay=number(weight_decay, span, "weight_decay"),
                    interval=integer(interval, span, "interval"))


@builtin("constant", table=TRAIN_BUILTINS)
def constant(b: Any, span: Span) -> dict[str, Any]:
    """A constant learning rate."""
    return _setting("schedule", "constant")


@builtin("noam", table=TRAIN_BUILTINS)
def noam(b: Any, span: Span, d_model: int, warmup: int = 4000, scale: float = 1.0
         ) -> dict[str, Any]:
    """lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    return _setting("schedule", "noam", d_model=integer(d_model, span, "d_model"),
                    warmup=integer(warmup, span, "warmup"), scale=number(scale, span, "scale"))


@builtin("cosine", table=TRAIN_BUILTINS)
def cosine(b: Any, span: Span, warmup: int = 0, min_lr: float = 0.0) -> dict[str, Any]:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    return _setting("schedule", "cosine", warmup=integer(warmup, span, "warmup", positive=False),
                    min_lr=number(min_lr, span, "min_lr"))


@builtin("linear_decay", table=TRAIN_BUILTINS)
def linear_decay(b: Any, span: Span, warmup: int = 0, min_lr: float = 0.0) -> dict[str, Any]:
    """Linear warm-up, then linear decay to min_lr at the last step."""
    return _setting("schedule", "linear", warmup=integer(warmup, span, "warmup", positive=False),
                    min_lr=number(min_lr, span, "min_lr"))


@builtin("cosine_restarts", table=TRAIN_BUILTINS)
def cosine_restarts(b: Any, span: Span, period: int, mult: int = 1, warmup: int = 0,
                    min_lr: float = 0.0) -> dict[str, Any]:
    """SGDR: cosine decay to min_lr over `period` steps, restarting; cycles grow by `mult`."""
    return _setting("schedule", "cosine_restarts", period=integer(period, span, "period"),
                    mult=integer(mult, span, "mult"),
                    warmup=integer(warmup, span, "warmup", positive=False),
                    min_lr=number(min_lr, span, "min_lr"))


@builtin("exponential", table=TRAIN_BUILTINS)
def exponential(b: Any, span: Span, gamma: float, warmup: int = 0, min_lr: float = 0.0
                ) -> dict[str, Any]:
    """lr * gamma^(step - warmup) after a linear warm-up, never below min_lr."""
    g = number(gamma, span, "gamma")
    if not 0.0 < g <= 1.0:
        raise ArgumentError(f"gamma must lie in (0, 1], got {g}", span)
    return _setting("schedule", "exponential", gamma=g,
                    warmup=integer(warmup, span, "warmup", positive=False),
                    min_lr=number(min_lr, span, "min_lr"))


# attention, sdpa, score biases and rope live in their own module, as does moe; importing
# them registers them
from attndsl.frontend import attention as _attention  # noqa: E402,F401
from attndsl.frontend import moe as _moe  # noqa: E402,F401
