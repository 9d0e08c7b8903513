"""Elaboration: AST -> Graph.

Resolves imports and constants (with config overrides), evaluates the model body,
inlines blocks and `repeat` stacks, names parameters hierarchically and runs shape
inference as each node is added, so a shape error points at the spec line.

Parameter naming (identical on every backend):
- `v = f(...)` where `f` creates parameters (an op like `linear` or a block) opens the
  scope `v`: `attn = attention(x, ...)` gives `attn.q.weight`, `attn.q.bias`, ...
- a call that is not the whole right-hand side of an assignment to a new name (nested
  calls, rebinding `x = f(x)`) is named after the function: `layer_norm`, `layer_norm_1`;
- `repeat N as layers { ... }` names iteration i `layers.i`; `repeat N as layers shared`
  uses one scope `layers` (ALBERT-style sharing);
- `tie="wte"` makes an op use the parameters of scope `wte` instead of its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attndsl.errors import (
    ArgumentError,
    AttnError,
    ConfigError,
    DefinitionError,
    ImportError_,
    NameError_,
    RecursionError_,
    ShapeError,
    Span,
    TrainingError,
    TypeError_,
    did_you_mean,
)
from attndsl.frontend import ast
from attndsl.frontend.parser import parse_text, read_source
from attndsl.frontend.values import BlockRef, OutputRef, Tensor, check_size, describe
from attndsl.ir import ops
from attndsl.ir.biases import Bias
from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph, TensorType
from attndsl.ir.patterns import Pattern

# train-section setting -> the kind of value it takes
TRAIN_SETTINGS = {"loss": "loss", "optimizer": "optimizer", "schedule": "schedule",
                  "clip": "number", "steps": "number", "batch": "number", "seq": "number",
                  "grad_accum": "number", "warmup": "number", "layerdrop": "number"}
MAX_CALL_DEPTH = 64
EXACT_NAME = re.compile(r"([A-Za-z_0-9]+(\.[A-Za-z_0-9]+)*)?")
MAX_REPEAT = 4096
MAX_INT_BITS = 4096
MAX_NODES = 250_000


@dataclass
class Namespace:
    """Top-level definitions of one file (and what it imported)."""

    path: str
    consts: dict[str, Any] = field(default_factory=dict)
    blocks: dict[str, BlockRef] = field(default_factory=dict)
    modules: dict[str, Namespace] = field(default_factory=dict)
    model: ast.Model | None = None
    train: ast.Train | None = None


@dataclass
class Frame:
    """Local variables of a model or block body."""

    vars: dict[str, Any]
    ns: Namespace


class Builder:
    """Builds a Graph from a parsed root module."""

    def __init__(self, config: dict[str, Any] | None = None, layerdrop: float | None = None):
        self.graph = Graph()
        self.config = dict(config or {})
        self.layerdrop = layerdrop
        self.scope: list[str] = []
        self.used_names: dict[tuple[str, ...], set[str]] = {}
        self.sharing = 0
        self.call_stack: list[str] = []
        self.loading: list[str] = []
        self.loaded: dict[str, Namespace] = {}
        self.dim_bounds: dict[str, Any] = {}
        self.model_dims: dict[str, Dim] = {}    # size names declared by inputs (B, T, ...)
        self.expert_group: tuple[Tensor, int] | None = None   # inside moe(expert=...)
        self.pending_states: dict[str, Span] = {}             # states awaiting their `next`
        from attndsl.frontend.builtins import BUILTINS  # late: builtins import this module
        self.builtins = BUILTINS

    # -- loading and constants -------------------------------------------------------------
    def load_module(self, module: ast.Module, root: bool) -> Namespace:
        ns = Namespace(module.path)
        for item in module.items:
            if isinstance(item, ast.Import):
                self._import(item, ns)
        for item in module.items:
            if isinstance(item, ast.Const):
                if item.name in ns.consts:
                    raise DefinitionError(f"constant '{item.name}' is defined twice", item.span)
                if root and item.name in self.config:
                    ns.consts[item.name] = self._config_value(item)
                else:
                    ns.consts[item.name] = self.eval(item.value, Frame({}, ns))
            elif isinstance(item, ast.Block):
                if item.name in ns.blocks or item.name in self.builtins:
                    what = "a built-in" if item.name in self.builtins else "defined twice"
                    raise DefinitionError(f"block '{item.name}' is {what}", item.span,
                                          "choose another name")
                ns.blocks[item.name] = BlockRef(item, ns)
            elif isinstance(item, ast.Model):
                if ns.model is not None:
                    raise DefinitionError("a spec has at most one model", item.span)
                ns.model = item
            elif isinstance(item, ast.Train):
                if ns.train is not None:
                    raise DefinitionError("a spec has at most one train section", item.span)
                ns.train = item
        if root:
            unknown = [k for k in self.config if k not in ns.consts]
            if unknown:
                raise ConfigError(f"--set {unknown[0]}: the spec has no constant '{unknown[0]}'",
                                  None, did_you_mean(unknown[0], ns.consts))
        return ns

    def _config_value(self, item: ast.Const) -> Any:
        value = self.config[item.name]
        if isinstance(value, str):
            try:
                value = parse_number(value)
            except ValueError:
                raise ConfigError(f"--set {item.name}={value}: not a number", item.span) from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"--set {item.name}: expected a number, got {value!r}", item.span)
        return value

    def _import(self, item: ast.Import, ns: Namespace) -> None:
        base = Path(ns.path).parent if not ns.path.startswith("<") else Path.cwd()
        try:
            target = (base / item.path).resolve()
        except (OSError, ValueError, RuntimeError) as e:  # NUL byte in the path; symlink loop
            raise ImportError_(f"cannot import '{item.path}': {e}", item.span) from None
        key = str(target)
        if key in self.loading:
            raise ImportError_(f"circular import of '{item.path}'", item.span)
        if key not in self.loaded:
            try:
                text = read_source(target)
            except AttnError as e:
                raise ImportError_(f"cannot import '{item.path}': {e.message}", item.span) from None
            self.loading.append(key)
            try:
                self.loaded[key] = self.load_module(parse_text(text, str(target)), root=False)
            finally:
                self.loading.pop()
        imported = self.loaded[key]
        if item.alias:
            ns.modules[item.alias] = imported
        else:
            ns.consts.update(imported.consts)
            ns.blocks.update(imported.blocks)
            ns.modules.update(imported.modules)

    # -- model -------------------------------------------------------------------------------
    def build_model(self, ns: Namespace) -> Graph:
        if ns.model is None:
            span = Span(ns.path, 1, 1, 1, 2, "")
            raise DefinitionError("the spec defines no `model { ... }`", span,
                                  "add a model section with inputs and outputs")
        frame = Frame({}, ns)
        if self.layerdrop is None:
            self.layerdrop = self.spec_layerdrop(ns)
        self.exec_body(ns.model.body, frame, in_model=True)
        if self.pending_states:
            name, span = next(iter(self.pending_states.items()))
            raise DefinitionError(f"state '{name}' has no `next {name.split('.')[-1]} = ...`",
                                  span, "say what the state becomes for the next call")
        if not self.graph.outputs:
            raise DefinitionError("the model has no outputs", ns.model.span,
                                  "declare one with `output name = expr`")
        self.graph.meta.update(consts=dict(ns.consts), dim_bounds=dict(self.dim_bounds),
                               name=ns.model.name or Path(ns.path).stem)
        if ns.train is not None:
            self.graph.meta["train"] = self.eval_train(ns.train, ns)
        return self.graph

    def spec_layerdrop(self, ns: Namespace) -> float:
        """The train section's `layerdrop = p` (needed before the model body runs)."""
        for s in ns.train.settings if ns.train else ():
            if s.name == "layerdrop":
                p = self.eval(s.value, Frame({}, ns))
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                    raise TypeError_(f"layerdrop must be a probability in [0, 1), got "
                                     f"{describe(p)}", s.span)
                return float(p)
        return 0.0

    def eval_train(self, train: ast.Train, ns: Namespace) -> dict[str, Any]:
        from attndsl.frontend.builtins import TRAIN_BUILTINS
        frame = Frame({name: OutputRef(name) for name in self.graph.outputs}, ns)
        saved = self.builtins
        self.builtins = {**saved, **TRAIN_BUILTINS}
        try:
            settings: dict[str, Any] = {}
            for s in train.settings:
                if s.name in settings:
                    raise DefinitionError(f"training setting '{s.name}' is given twice", s.span)
                if s.name not in TRAIN_SETTINGS:
                    raise TrainingError(f"unknown training setting '{s.name}'", s.span,
                                        did_you_mean(s.name, TRAIN_SETTINGS)
                                        or f"settings: {', '.join(TRAIN_SETTINGS)}")
                settings[s.name] = self.eval(s.value, frame)
                kind = TRAIN_SETTINGS[s.name]
                value = settings[s.name]
                got = value.get("kind") if isinstance(value, dict) else "number" if isinstance(
                    value, (int, float)) and not isinstance(value, bool) else None
                if got != kind:
                    raise TrainingError(f"'{s.name}' must be a {kind}, got {describe(value)}",
                                        s.span)
                for _, name in value.get("extra", []) if kind == "loss" else []:
                    t = self.graph.nodes[self.graph.outputs[name]].type
                    if t.rank != 0 or t.dtype != "float":
                        raise TrainingError(f"a loss term must be a scalar output; '{name}' "
                                            f"is {t}", s.span)
            return settings
        finally:
            self.builtins = saved

    def exec_body(self, body: tuple[ast.Stmt, ...], frame: Frame, in_model: bool) -> Any:
        """Run statements; returns the block's return value (None if none)."""
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                frame.vars[stmt.target] = self.eval_assigned(stmt, frame)
            elif isinstance(stmt, ast.Return):
                if in_model:
                    raise DefinitionError("`return` is for blocks; a model declares `output`s",
                                          stmt.span, "write `output name = expr`")
                return self.eval(stmt.value, frame)
            elif isinstance(stmt, ast.Input):
                self.declare_input(stmt, frame, in_model)
            elif isinstance(stmt, ast.State):
                self.declare_state(stmt, frame, in_model)
            elif isinstance(stmt, ast.Next):
                self.next_state(stmt, frame)
            elif isinstance(stmt, ast.Output):
                self.declare_output(stmt, frame, in_model)
            elif isinstance(stmt, ast.Repeat):
                self.run_repeat(stmt, frame, in_model)
        return None

    def eval_assigned(self, stmt: ast.Assign, frame: Frame) -> Any:
        value = stmt.value
        if isinstance(value, ast.Call) and stmt.target not in frame.vars:
            return self.eval_call(value, frame, name_hint=stmt.target)
        return self.eval(value, frame)

    def declare_input(self, stmt: ast.Input, frame: Frame, in_model: bool) -> None:
        if not in_model:
            raise DefinitionError("inputs are declared in the model, not in blocks", stmt.span,
                                  "pass the tensor to the block as an argument")
        if stmt.name in self.graph.inputs or stmt.name in frame.vars:
            raise DefinitionError(f"'{stmt.name}' is already defined", stmt.span)
        shape: list[Dim] = []
        for d in stmt.type.dims:
            dim = self.eval_dim(d.size, frame)
            if dim.as_int() is not None and dim.as_int() <= 0:
                raise ShapeError(f"input dimensions must be positive, got {dim.as_int()}",
                                 d.size.span)
            if dim.as_int() is not None:
                check_size(dim.as_int(), "an input dimension", d.size.span)
            if d.max is not None:
                bound = self.eval(d.max, frame)
                if not isinstance(bound, int) or len(dim.symbols()) != 1 or not isinstance(
                        d.size, ast.Name):
                    raise TypeError_("a bound `T <= n` needs a dimension name and an integer",
                                     d.span)
                if bound <= 0:
                    raise ShapeError(f"the bound of {d.size.id} must be positive, got {bound}",
                                     d.max.span)
                self.dim_bounds[d.size.id] = bound
            shape.append(dim)
        ttype = TensorType(tuple(shape), stmt.type.dtype)
        if stmt.default is not None:
            value = self.eval(stmt.default, frame)
            ok = {"bool": (bool,), "int": (int,), "float": (int, float)}[ttype.dtype]
            if not isinstance(value, ok) or (ttype.dtype != "bool" and isinstance(value, bool)):
                article = "an" if ttype.dtype == "int" else "a"
                raise TypeError_(f"the default of {article} {ttype.dtype} input must be "
                                 f"{article} {ttype.dtype} constant, got {describe(value)}",
                                 stmt.default.span)
            defaults = dict(self.graph.meta.get("input_defaults", {}))
            defaults[stmt.name] = value
            self.graph.meta["input_defaults"] = defaults
        nid = self.graph.add("input", (), {"name": stmt.name, "type": ttype}, ttype, stmt.span)
        self.graph.inputs[stmt.name] = nid
        frame.vars[stmt.name] = Tensor(nid, ttype)

    def declare_state(self, stmt: ast.State, frame: Frame, in_model: bool) -> None:
        """`state mem: float[...]` is the input `<scope>.mem` (zeros when omitted); the
        matching `next mem = expr` makes the output of the same name."""
        if not in_model:
            raise DefinitionError("state is declared in the model (or a repeat in it), not in "
                                  "blocks", stmt.span, "pass the tensor to the block instead")
        full = ".".join([*self.scope, stmt.name])
        if stmt.name in frame.vars and full in self.graph.inputs:
            raise DefinitionError(f"state '{full}' is declared twice", stmt.span)
        if stmt.type.dtype != "float":
            raise TypeError_(f"state is float, got {stmt.type.dtype}", stmt.type.span)
        unknown = [d.size.id for d in stmt.type.dims if isinstance(d.size, ast.Name)
                   and self.lookup_optional(d.size.id, frame) is None]
        if unknown:
            raise ShapeError(f"state '{full}' uses {', '.join(unknown)}, which no input "
                             "declares", stmt.span, "state sizes are constants or the sizes "
                             "of the inputs (like B)")
        shape = tuple(self.eval_dim(d.size, frame) for d in stmt.type.dims)
        ttype = TensorType(shape, "float")
        self.graph.meta["input_defaults"] = {**self.graph.meta.get("input_defaults", {}),
                                             full: 0.0}
        self.graph.meta.setdefault("states", []).append(full)
        nid = self.graph.add("input", (), {"name": full, "type": ttype}, ttype, stmt.span)
        self.graph.inputs[full] = nid
        frame.vars[stmt.name] = Tensor(nid, ttype)
        self.pending_states[full] = stmt.span

    def next_state(self, stmt: ast.Next, frame: Frame) -> None:
        full = ".".join([*self.scope, stmt.name])
        if full not in self.pending_states:
            raise DefinitionError(f"`next {stmt.name}` without `state {stmt.name}` in this "
                                  "scope, or given twice", stmt.span)
        value = self.eval(stmt.value, frame)
        want = self.graph.nodes[self.graph.inputs[full]].type
        if not isinstance(value, Tensor) or value.type.dtype != "float":
            raise TypeError_(f"next {stmt.name} must be a float tensor, got {describe(value)}",
                             stmt.span)
        if value.type.shape != want.shape:
            raise ShapeError(f"next {stmt.name} is {value.type}, but state '{full}' is {want}",
                             stmt.span, "the next state must have the state's shape")
        self.graph.outputs[full] = value.node
        del self.pending_states[full]

    def eval_dim(self, expr: ast.Expr, frame: Frame) -> Dim:
        """A dim in an input type: names not yet bound become new symbols (B, T, ...)."""
        if isinstance(expr, ast.Name) and self.lookup_optional(expr.id, frame) is None:
            frame.vars[expr.id] = self.model_dims[expr.id] = Dim.symbol(expr.id)
        value = self.eval(expr, frame)
        if isinstance(value, bool) or not isinstance(value, (int, Dim)):
            raise TypeError_(f"a dimension must be an integer or a size name, got "
                             f"{describe(value)}", expr.span)
        return Dim.of(value)

    def declare_output(self, stmt: ast.Output, frame: Frame, in_model: bool) -> None:
        if not in_model:
            raise DefinitionError("outputs are declared in the model, not in blocks", stmt.span,
                                  "use `return` in a block")
        if stmt.name in self.graph.outputs:
            raise DefinitionError(f"output '{stmt.name}' is declared twice", stmt.span)
        if stmt.value is None:
            value = self.lookup(stmt.name, frame, stmt.span)
        elif isinstance(stmt.value, ast.Call):
            value = self.eval_call(stmt.value, frame, name_hint=stmt.name)
        else:
            value = self.eval(stmt.value, frame)
        if not isinstance(value, Tensor):
            raise TypeError_(f"output '{stmt.name}' must be a tensor, got {describe(value)}",
                             stmt.span)
        self.graph.outputs[stmt.name] = value.node
        frame.vars[stmt.name] = value

    def run_repeat(self, stmt: ast.Repeat, frame: Frame, in_model: bool) -> None:
        count = self.eval(stmt.count, frame)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_REPEAT:
            raise TypeError_(f"repeat needs an integer count in 0..{MAX_REPEAT}, got "
                             f"{describe(count)}", stmt.count.span)
        # `as encoder.layer` names the scope exactly (checkpoint names); `as layers` claims it
        scope = (self.exact_name(stmt.scope, stmt.span) if "." in stmt.scope
                 else [self.claim_name(stmt.scope)])
        outer = set(frame.vars)
        for i in range(count):
            for name in set(frame.vars) - outer:  # body-local names are new in every iteration
                del frame.vars[name]
            path = scope if stmt.shared else [*scope, str(i)]
            if stmt.shared:  # reuse the same names, at every depth, in every iteration
                prefix = tuple(self.scope + path)
                for key in [k for k in self.used_names if k[:len(prefix)] == prefix]:
                    del self.used_names[key]
            before = {k: v for k, v in frame.vars.items() if isinstance(v, Tensor)}
            start = self.graph.next_id
            with self.in_scope(path), self.sharing_params(stmt.shared and i > 0):
                result = self.exec_body(stmt.body, frame, in_model)
            if result is not None:
                raise DefinitionError("`return` inside repeat", stmt.span)
            self.graph.meta.setdefault("layers", []).append((start, self.graph.next_id))
            if self.layerdrop:
                self.drop_layer(before, frame, stmt.span)

    def drop_layer(self, before: dict[str, Tensor], frame: Frame, span: Span) -> None:
        """LayerDrop: each tensor the iteration changed becomes layer_drop(before, after)."""
        for name, old in before.items():
            new = frame.vars.get(name)
            if isinstance(new, Tensor) and new != old and new.type == old.type:
                frame.vars[name] = self.add("layer_drop", [old, new], {"p": self.layerdrop},
                                            span)

    # -- scopes and parameters ----------------------------------------------------------------
    def claim_name(self, base: str) -> str:
        """Reserve a scope name in the current scope, suffixing _1, _2 ... if taken."""
        used = self.used_names.setdefault(tuple(self.scope), set())
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        return name

    def exact_name(self, value: Any, span: Span) -> list[str]:
        """A layer's `name="a.b"`: the scope path it names, exactly (no `_1` suffixes), so
        parameter names can follow a checkpoint's (`attention.output.dense`); `""` adds none."""
        if not isinstance(value, str) or not EXACT_NAME.fullmatch(value):
            raise TypeError_(f"name= must be a dotted name like \"attention.output.dense\", got "
                             f"{describe(value)}", span)
        if not value:  # name="": no scope of its own (a block inlined into the caller's)
            return []
        path = value.split(".")
        self.used_names.setdefault(tuple(self.scope), set()).add(path[0])
        return path

    @contextlib.contextmanager
    def in_scope(self, path: list[str]) -> Iterator[None]:
        self.scope.extend(path)
        try:
            yield
        finally:
            del self.scope[len(self.scope) - len(path):]

    @contextlib.contextmanager
    def sharing_params(self, on: bool) -> Iterator[None]:
        self.sharing += on
        try:
            yield
        finally:
            self.sharing -= on

    def param(self, local: str, shape: tuple[Dim | int, ...], init: str, span: Span,
              std: float = 0.02) -> Tensor:
        """The parameter `<scope>.<local>`: created once, reused inside shared repeats."""
        dims = tuple(Dim.of(d) for d in shape)
        for d in dims:
            if d.as_int() is None or d.as_int() <= 0:
                raise ShapeError(f"parameter sizes must be positive integers, got {d}", span)
            check_size(d.as_int(), "a parameter size", span)
        name = ".".join(self.scope + [local])
        ttype = TensorType(dims, "float")
        if name in self.graph.params:
            nid = self.graph.params[name]
            if not self.sharing or self.graph.nodes[nid].type != ttype:
                raise DefinitionError(f"parameter '{name}' is defined twice", span)
            return Tensor(nid, ttype)
        nid = self.graph.add("param", (), {"name": name, "type": ttype, "init": init, "std": std},
                             ttype, span)
        self.graph.params[name] = nid
        return Tensor(nid, ttype)

    def buffer(self, local: str, shape: tuple[Dim | int, ...], init: str, span: Span) -> Tensor:
        """A parameter that is not trained: the forward pass updates it (batch_norm's running
        statistics). Listed in `graph.meta["buffers"]`; optimizers skip it."""
        t = self.param(local, shape, init, span)
        name = ".".join(self.scope + [local])
        buffers = self.graph.meta.setdefault("buffers", [])
        if name not in buffers:
            buffers.append(name)
        return t

    def table_param(self, name: str, shape: tuple[int, ...], span: Span) -> Tensor:
        """The learned table `name` of a score bias (T5, Shaw): created at its first use,
        shared by every attention that uses the same bias value (T5 shares one per stack)."""
        ttype = TensorType(tuple(Dim.of(d) for d in shape), "float")
        if name in self.graph.params:
            nid = self.graph.params[name]
            if self.graph.nodes[nid].type != ttype:
                raise ShapeError(f"the bias table '{name}' is {self.graph.nodes[nid].type}, but "
                                 f"this attention needs {ttype}", span,
                                 "a shared bias needs the same head count (and head size) "
                                 "in every attention that uses it")
            return Tensor(nid, ttype)
        nid = self.graph.add("param", (), {"name": name, "type": ttype, "init": "normal",
                                           "std": 0.02}, ttype, span)
        self.graph.params[name] = nid
        return Tensor(nid, ttype)

    def tied_param(self, scope_name: str, local: str, span: Span) -> Tensor:
        """Resolve `tie="wte"`: the parameter `wte.<local>`, looked up from the innermost scope."""
        if not isinstance(scope_name, str):
            raise TypeError_("tie= names the layer to share with, as a string", span)
        for depth in range(len(self.scope), -1, -1):
            name = ".".join(self.scope[:depth] + [scope_name, local])
            if name in self.graph.params:
                nid = self.graph.params[name]
                return Tensor(nid, self.graph.nodes[nid].type)
        known = sorted({n.rsplit(".", 1)[0] for n in self.graph.params})
        raise NameError_(f"tie: no parameters named '{scope_name}.{local}' are defined yet", span,
                         did_you_mean(scope_name, known))

    # -- graph construction ---------------------------------------------------------------------
    def add(self, op: str, inputs: list[Tensor], attrs: dict[str, Any], span: Span) -> Tensor:
        """Add a node, inferring its type; errors are located at `span`."""
        try:
            ttype = ops.infer(op, [t.type for t in inputs], attrs)
        except AttnError as e:
            raise type(e)(e.message, span, e.hint) from None
        if ttype.dtype == "float" and op != "cast":
            keep = ops.NON_FLOAT_OPERANDS.get(op, ())
            inputs = [t if t.type.dtype == "float" or i in keep else self.add(
                "cast", [t], {"dtype": "float"}, span) for i, t in enumerate(inputs)]
        if self.graph.next_id >= MAX_NODES:
            raise DefinitionError(f"the model has more than {MAX_NODES:,} graph nodes", span,
                                  "nested repeats or blocks multiply; reduce them (the limit "
                                  "is attndsl.frontend.elaborate.MAX_NODES)")
        nid = self.graph.add(op, tuple(t.node for t in inputs), attrs, ttype, span)
        return Tensor(nid, ttype)

    def to_tensor(self, value: Any, span: Span, like: Tensor | None = None) -> Tensor:
        """A tensor for `value`; an int next to an int tensor `like` stays an int constant,
        and a symbolic size (T) becomes a `size` node computed from the bound dims."""
        if isinstance(value, Tensor):
            return value
        if isinstance(value, bool):
            return self.add("constant", [], {"value": value, "dtype": "bool"}, span)
        if isinstance(value, Dim) and value.as_int() is not None:
            value = value.as_int()
        if isinstance(value, int) and like is not None and like.type.dtype == "int":
            if value.bit_length() > 63:
                raise TypeError_("integer too large for an int tensor", span)
            return self.add("constant", [], {"value": value, "dtype": "int"}, span)
        if isinstance(value, (int, float)):
            try:
                scalar = float(value)
            except OverflowError:
                raise TypeError_("number too large", span) from None
            return self.add("constant", [], {"value": scalar, "dtype": "float"}, span)
        if isinstance(value, Dim):
            return self.add("size", [], {"value": value}, span)
        raise TypeError_(f"expected a tensor or a number, got {describe(value)}", span)

    # -- expressions ----------------------------------------------------------------------------
    def lookup_optional(self, name: str, frame: Frame) -> Any:
        for table in (frame.vars, frame.ns.consts, frame.ns.blocks, frame.ns.modules,
                      self.model_dims, self.builtins):
            if name in table:
                return table[name]
        return None

    def lookup(self, name: str, frame: Frame, span: Span) -> Any:
        value = self.lookup_optional(name, frame)
        if value is None:
            known = [*frame.vars, *frame.ns.consts, *frame.ns.blocks, *self.builtins]
            raise NameError_(f"unknown name '{name}'", span, did_you_mean(name, known))
        return value

    def eval(self, expr: ast.Expr, frame: Frame) -> Any:
        if isinstance(expr, ast.Number | ast.String):
            return expr.value
        if isinstance(expr, ast.Name):
            return self.lookup(expr.id, frame, expr.span)
        if isinstance(expr, ast.Call):
            return self.eval_call(expr, frame, None)
        if isinstance(expr, ast.BinOp):
            return self.binop(expr.op, self.eval(expr.left, frame),
                              self.eval(expr.right, frame), expr.span)
        if isinstance(expr, ast.Neg):
            value = self.eval(expr.value, frame)
            if isinstance(value, Tensor):
                return self.add("neg", [value], {}, expr.span)
            if isinstance(value, (int, float, Dim)) and not isinstance(value, bool):
                return -value
            raise TypeError_(f"cannot negate {describe(value)}", expr.span)
        if isinstance(expr, ast.Invert):
            value = self.eval(expr.value, frame)
            if isinstance(value, Tensor):
                return self.add("logical_not", [value], {}, expr.span)
            if isinstance(value, bool):
                return not value
            raise TypeError_(f"~ needs a bool tensor, got {describe(value)}", expr.span)
        if isinstance(expr, ast.TupleExpr | ast.ListExpr):
            return tuple(self.eval(e, frame) for e in expr.items)
        if isinstance(expr, ast.Attr):
            return self.eval_attr(expr, frame)
        if isinstance(expr, ast.Subscript):
            return self.eval_subscript(expr, frame)
        raise TypeError_(f"cannot evaluate {type(expr).__name__}", expr.span)

    def eval_attr(self, expr: ast.Attr, frame: Frame) -> Any:
        if isinstance(expr.value, ast.Name) and expr.value.id in frame.ns.modules:
            mod = frame.ns.modules[expr.value.id]
            for table in (mod.consts, mod.blocks):
                if expr.attr in table:
                    return table[expr.attr]
            raise NameError_(f"module '{expr.value.id}' has no '{expr.attr}'", expr.span,
                             did_you_mean(expr.attr, [*mod.consts, *mod.blocks]))
        value = self.eval(expr.value, frame)
        if isinstance(value, Tensor) and expr.attr == "T":
            if value.type.rank < 2:
                raise ShapeError(f".T needs rank >= 2, got {value.type}", expr.span)
            perm = list(range(value.type.rank))
            perm[-1], perm[-2] = perm[-2], perm[-1]
            return self.add("transpose", [value], {"perm": tuple(perm)}, expr.span)
        if isinstance(value, Tensor) and expr.attr == "shape":  # ints where known, as size()
            return tuple(_simplify(d) for d in value.type.shape)
        raise NameError_(f"{describe(value)} has no attribute '{expr.attr}'", expr.span,
                         "tensors have .T and .shape")

    def eval_subscript(self, expr: ast.Subscript, frame: Frame) -> Any:
        value = self.eval(expr.value, frame)
        if isinstance(value, tuple):
            if len(expr.items) != 1 or isinstance(expr.items[0], ast.Slice):
                raise TypeError_("a tuple takes one integer index", expr.span)
            i = self.eval(expr.items[0], frame)
            if not isinstance(i, int) or not -len(value) <= i < len(value):
                raise TypeError_(f"index {i!r} is out of range for a {len(value)}-tuple", expr.span)
            return value[i]
        if not isinstance(value, Tensor):
            raise TypeError_(f"cannot index {describe(value)}", expr.span)
        items = list(expr.items)
        dots = [i for i, item in enumerate(items) if isinstance(item, ast.Ellipsis_)]
        if len(dots) > 1:
            raise TypeError_("an index has at most one '...'", items[dots[1]].span)
        if dots:
            fill = value.type.rank - (len(items) - 1)
            if fill < 0:
                raise ShapeError(f"too many indices ({len(items) - 1}) for {value.type}",
                                 expr.span)
            items[dots[0]:dots[0] + 1] = [ast.Slice(items[dots[0]].span, None, None)] * fill
        index: list[Any] = []
        for axis, item in enumerate(items):
            dim = value.type.shape[axis] if axis < value.type.rank else Dim.of(1)
            if isinstance(item, ast.Slice):
                bounds = [None if e is None else self._slice_bound(self.eval(e, frame), dim,
                                                                     item.span)
                          for e in (item.start, item.stop)]
                index.append(tuple(bounds))
            else:
                i = self.eval(item, frame)
                if not isinstance(i, int) or isinstance(i, bool):
                    raise TypeError_(f"tensor indices must be integers, got {describe(i)}",
                                     item.span)
                index.append(i)
        return self.add("index", [value], {"index": tuple(index)}, expr.span)

    @staticmethod
    def _slice_bound(value: Any, dim: Dim, span: Span) -> int | Dim:
        """A slice bound: an int, a size (T, T - 1) or a negative int counted from the end."""
        if isinstance(value, bool) or not isinstance(value, (int, Dim)):
            raise TypeError_(f"slice bounds must be integers or sizes, got {describe(value)}",
                             span)
        if isinstance(value, int) and value < 0:
            bound = _simplify(dim + Dim.of(value))
            if isinstance(bound, int) and bound < 0:
                raise ShapeError(f"slice bound {value} is out of range for dimension {dim}",
                                 span)
            return bound
        return _simplify(Dim.of(value))

    def binop(self, op: str, a: Any, b: Any, span: Span) -> Any:
        if isinstance(a, Pattern) and isinstance(b, Pattern) and op in "&|":
            return a & b if op == "&" else a | b
        if op == "+" and (isinstance(a, Bias) or isinstance(b, Bias)):
            from attndsl.frontend.attention import add_biases  # late: it imports builtins
            return add_biases(a, b, span)
        if any(isinstance(v, (OutputRef, dict)) for v in (a, b)):
            from attndsl.frontend.builtins import loss_binop
            return loss_binop(op, a, b, span)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            name = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul",
                    "**": "pow", "&": "logical_and", "|": "logical_or"}.get(op)
            if name is None:
                raise TypeError_(f"operator '{op}' is not defined for tensors", span)
            tensor = a if isinstance(a, Tensor) else b
            return self.add(name, [self.to_tensor(a, span, tensor),
                                   self.to_tensor(b, span, tensor)], {}, span)
        return scalar_binop(op, a, b, span)

    def eval_call(self, call: ast.Call, frame: Frame, name_hint: str | None) -> Any:
        func = self.eval(call.func, frame)
        args = [self.eval(a, frame) for a in call.args]
        kwargs: dict[str, Any] = {}
        for kw in call.kwargs:
            if kw.name in kwargs:
                raise ArgumentError(f"keyword argument '{kw.name}' is given twice", kw.span)
            kwargs[kw.name] = self.eval(kw.value, frame)
        if isinstance(func, BlockRef):
            return self.call_block(func, args, kwargs, call, name_hint)
        if callable(func):
            return func(self, args, kwargs, call, name_hint)
        raise TypeError_(f"{describe(func)} is not callable", call.func.span)

    def call_block(self, ref: BlockRef, args: list[Any], kwargs: dict[str, Any], call: ast.Call,
                   name_hint: str | None) -> Any:
        block = ref.block
        if block.name in self.call_stack:
            chain = " -> ".join([*self.call_stack[self.call_stack.index(block.name):], block.name])
            raise RecursionError_(f"block '{block.name}' calls itself ({chain})", call.span,
                                  "blocks are inlined, so they cannot recurse; use repeat")
        if len(self.call_stack) >= MAX_CALL_DEPTH:
            raise RecursionError_(f"blocks nested more than {MAX_CALL_DEPTH} deep", call.span)
        names = [p.name for p in block.params]
        exact = kwargs.pop("name", None) if "name" not in names else None
        if len(args) > len(names):
            raise ArgumentError(f"block '{block.name}' takes {len(names)} arguments, got "
                                f"{len(args)}", call.span, f"signature: {signature(block)}")
        bound: dict[str, Any] = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise ArgumentError(f"block '{block.name}' has no parameter '{key}'", call.span,
                                    did_you_mean(key, names) or f"signature: {signature(block)}")
            if key in bound:
                raise ArgumentError(f"argument '{key}' of block '{block.name}' is given twice",
                                    call.span)
            bound[key] = value
        callee = Frame({}, ref.module)
        for p in block.params:
            if p.name in bound:
                callee.vars[p.name] = bound[p.name]
            elif p.default is not None:
                callee.vars[p.name] = self.eval(p.default, callee)
            else:
                raise ArgumentError(f"block '{block.name}' is missing argument '{p.name}'",
                                    call.span, f"signature: {signature(block)}")
        path = (self.exact_name(exact, call.span) if exact is not None
                else [self.claim_name(name_hint or block.name)])
        self.call_stack.append(block.name)
        try:
            with self.in_scope(path):
                result = self.exec_body(block.body, callee, in_model=False)
        finally:
            self.call_stack.pop()
        if result is None:
            raise DefinitionError(f"block '{block.name}' returns nothing", block.span,
                                  "end it with `return expr`")
        return result


def signature(block: ast.Block) -> str:
    return f"{block.name}({', '.join(p.name for p in block.params)})"


def parse_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def scalar_binop(op: str, a: Any, b: Any, span: Span) -> Any:
    """Arithmetic on numbers and symbolic dims (constant folding)."""
    numeric = (int, float, Dim)
    if isinstance(a, bool) or isinstance(b, bool) or not (
            isinstance(a, numeric) and isinstance(b, numeric)):
        raise TypeError_(f"operator '{op}' cannot combine {describe(a)} and {describe(b)}", span)
    if isinstance(a, Dim) or isinstance(b, Dim):
        if isinstance(a, float) or isinstance(b, float):
            raise TypeError_("sizes combine with integers only", span)
        a_d, b_d = Dim.of(a), Dim.of(b)
        if op == "+":
            return _simplify(a_d + b_d)
        if op == "-":
            return _simplify(a_d - b_d)
        if op == "*":
            return _simplify(a_d * b_d)
        if op in ("/", "//"):
            q = a_d.divide(b_d)
            if q is None:
                raise ShapeError(f"cannot divide size {a_d} by {b_d}", span)
            return _simplify(q)
        raise TypeError_(f"operator '{op}' is not defined for sizes", span)
    if isinstance(a, int) and isinstance(b, int) and (
            a.bit_length() + b.bit_length() > MAX_INT_BITS):
        raise TypeError_(f"integer result larger than {MAX_INT_BITS} bits", span,
                         "constants this large cannot describe a model")
    try:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            if isinstance(a, int) and isinstance(b, int) and b != 0 and a % b == 0:
                return a // b
            return a / b
        if op == "//":
            return a // b
        if op == "%":
            return a % b
        if op == "**":
            if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and (
                    b * a.bit_length() > MAX_INT_BITS):
                raise OverflowError
            result = a**b
            if isinstance(result, complex):
                raise TypeError_(f"{a} ** {b} is not a real number", span)
            return result
    except ZeroDivisionError:
        raise TypeError_("division by zero", span) from None
    except OverflowError:
        raise TypeError_("number too large", span) from None
    raise TypeError_(f"operator '{op}' is not defined for numbers", span)


def _simplify(d: Dim) -> Dim | int:
    n = d.as_int()
    return n if n is not None else d
