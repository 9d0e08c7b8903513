"""The `Model` API, shared by every backend.

    model = attndsl.compile("specs/gpt.attn", backend="numpy", config={"layers": 2}, seed=0)
    out = model(tokens=ids)            # dict: output name -> array
    sd = model.state_dict(); model.load_state_dict(sd)
    model.save("w.safetensors"); model.load("w.safetensors")
    model.report()                     # params, FLOPs, memory for the last call's shapes
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from attndsl.backends import Backend, Program, get_backend
from attndsl.errors import (
    ConfigError,
    RuntimeInputError,
    TrainingError,
    WeightsError,
    did_you_mean,
)
from attndsl.frontend import build
from attndsl.init import iter_init_params
from attndsl.ir.dims import Dim
from attndsl.ir.graph import Graph
from attndsl.ir.ops import IMPLS
from attndsl.ir.stats import Stats, compute_stats, human, human_bytes
from attndsl.passes import OPT_LEVELS, optimize
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.liveness import peak_memory
from attndsl.passes.memory_plan import memory_report
from attndsl.passes.prune_params import prune_parameters
from attndsl.passes.select_attention import select_attention
from attndsl.passes.training_memory import training_peaks
from attndsl.safetensors_io import Entry, SafetensorsFormatError, read_header, read_tensor
from attndsl.training.losses import loss_spec

INPUT_KINDS = {"int": "iu", "float": "fiu", "bool": "b"}
DTYPES = ("float32", "float64", "bfloat16", "float16")
FLOAT_DTYPES = {*DTYPES, "F32", "F64", "BF16", "F16"}     # NumPy and safetensors names


class Model:
    """A compiled spec bound to weights on one backend."""

    def __init__(self, graph: Graph, backend: Backend, params: dict[str, np.ndarray] | None,
                 dtype: str = "float32", options: dict[str, Any] | None = None,
                 seed: int = 0):
        """`params=None` initializes lazily from `seed`: only what is not loaded first, at
        the first call, `state_dict()` or `module` (compiling to load a checkpoint never
        draws random weights)."""
        self.graph = graph
        self.backend = backend
        self.dtype = dtype
        self.options = dict(options or {})
        self.program: Program = backend.compile(graph, params or {}, dtype, dict(self.options))
        self._pending_seed: int | None = seed if params is None else None
        self.stats: Stats = compute_stats(graph)
        self.last_dims: dict[str, int] = {}
        self.id_limits = embedding_limits(graph)
        self.fractional_sizes = [(d, str(node.span)) for node in graph.nodes.values()
                                 if node.op == "reshape" for d in node.attr("shape")
                                 if isinstance(d, Dim) and d.symbols()
                                 and any(c.denominator != 1 for c in d.terms.values())]
        self.position_tables = position_tables(graph)

    def _materialize(self, provided: set[str] = frozenset()) -> None:
        """Run the pending lazy initialization for every parameter not in `provided`."""
        if self._pending_seed is None:
            return
        missing = set(self.graph.params) - set(provided)
        if missing:                               # one parameter at a time: no second copy
            for name, value in iter_init_params(self.graph, self._pending_seed, names=missing):
                self.program.set_params({name: value})
        self._pending_seed = None

    def set_checkpointing(self, layers: bool | int) -> None:
        """Recompile the torch program so that the first `layers` repeat iterations (True:
        all) recompute their activations in the backward pass; weights are kept."""
        if self.backend.name != "torch":
            raise TrainingError("activation checkpointing is a torch backend option", None,
                                "compile with backend='torch'")
        self._materialize()
        weights = self.program.get_params()
        self.options["checkpointing"] = layers
        self.program = self.backend.compile(self.graph, weights, self.dtype, dict(self.options))

    @property
    def module(self) -> Any:
        """The backend's `torch.nn.Module` (torch backend only)."""
        self._materialize()
        module = getattr(self.program, "module", None)
        if module is None:
            raise AttributeError(f"the {self.backend.name} backend has no nn.Module; "
                                 "compile with backend='torch'")
        return module

    # -- running --------------------------------------------------------------------------
    def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run the model; returns output name -> backend array (NumPy for numpy)."""
        xs = self.validate_inputs(inputs)
        try:
            return self.program.run(xs)
        except IndexError as e:               # the kernels' own checks on computed ids
            if not str(e).startswith(("embedding id", "gather index")):
                raise
            raise RuntimeInputError(f"{e} (an index computed inside the model)", None,
                                    "check the ids the model computes from its inputs") from None

    def validate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Check names, dtypes, ranks and dims against the declared inputs; binds dims."""
        self._materialize()
        graph = self.graph
        defaults = graph.meta.get("input_defaults", {})
        missing = [n for n in graph.inputs if n not in inputs and n not in defaults]
        if missing:
            raise RuntimeInputError(f"missing input '{missing[0]}'", None,
                                    f"the model takes: {', '.join(graph.inputs)}")
        for name in inputs:
            if name not in graph.inputs:
                raise RuntimeInputError(f"unexpected input '{name}'", None,
                                        did_you_mean(name, graph.inputs)
                                        or f"the model takes: {', '.join(graph.inputs)}")
        env: dict[str, int] = {}
        out: dict[str, Any] = {}
        derived: list[tuple[str, int, Dim, int]] = []    # axes like [2 * N]: after the rest
        for name, nid in graph.inputs.items():
            ttype = graph.nodes[nid].type
            if name not in inputs:
                continue                                   # defaulted: filled below
            value = inputs[name]
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                value = np.asarray(value)
            kind = getattr(value.dtype, "kind", None) or _torch_kind(value)
            if ttype.dtype == "bool" and kind in "iu":     # 0/1 masks, as tokenizers return
                value = _int_mask(name, value)
                kind = "b"
            if kind not in INPUT_KINDS[ttype.dtype]:
                raise RuntimeInputError(f"input '{name}' must be {ttype.dtype}, got dtype "
                                        f"{value.dtype}", None, f"declared as {ttype}")
            if len(value.shape) != ttype.rank:
                raise RuntimeInputError(f"input '{name}' must have rank {ttype.rank} "
                                        f"{ttype}, got shape {tuple(value.shape)}", None)
            for axis, (dim, size) in enumerate(zip(ttype.shape, value.shape)):
                if int(size) == 0:
                    raise RuntimeInputError(f"input '{name}' axis {axis} ({dim}) is empty", None,
                                            "every input axis needs at least one element")
                if not self._bind_dim(name, axis, dim, int(size), env):
                    derived.append((name, axis, dim, int(size)))
            if name in self.id_limits and value.size:
                lo, hi = int(value.min()), int(value.max())
                if lo < 0 or hi >= self.id_limits[name]:
                    raise RuntimeInputError(f"input '{name}' has ids in [{lo}, {hi}], but the "
                                            f"embedding it indexes has {self.id_limits[name]} "
                                            f"rows", None, f"ids must be in [0, "
                                            f"{self.id_limits[name] - 1}]")
            out[name] = value
        _check_derived(derived, env)
        for dim, where in self.fractional_sizes:     # reshapes to T / rate and the like
            value = dim.evaluate(env) if dim.symbols() <= env.keys() else None
            if value is not None and value.denominator != 1:
                given = ", ".join(f"{s} = {env[s]}" for s in sorted(dim.symbols()))
                raise RuntimeInputError(f"with {given} the size {dim} is {float(value):g}, not a "
                                        f"whole number (a reshape at {where})", None,
                                        "give an input length that makes it whole")
        for sym, bound in graph.meta.get("dim_bounds", {}).items():
            if sym in env and env[sym] > bound:
                raise RuntimeInputError(f"{sym} = {env[sym]} exceeds the model's maximum "
                                        f"{sym} <= {bound}", None,
                                        "shorten the input or raise the bound in the spec")
        for name in graph.inputs:
            if name not in inputs:
                out[name] = _default_input(name, graph.nodes[graph.inputs[name]].type,
                                           defaults[name], env)
        out = {name: out[name] for name in graph.inputs}   # declaration order
        self._check_positions(env)
        self.last_dims = env
        return out

    @staticmethod
    def _bind_dim(name: str, axis: int, dim: Dim, size: int, env: dict[str, int]) -> bool:
        """Bind or check a plain symbol or constant axis; False for a derived one (`2 * N`)."""
        syms = dim.symbols()
        if len(syms) == 1 and dim == Dim.symbol(next(iter(syms))):
            sym = next(iter(syms))
            if sym in env and env[sym] != size:
                raise RuntimeInputError(f"input '{name}' axis {axis} is {sym} = {size}, but "
                                        f"another input set {sym} = {env[sym]}", None)
            env[sym] = size
            return True
        if not syms:
            if dim.as_int() != size:
                raise RuntimeInputError(f"input '{name}' axis {axis} must be {dim}, got {size}",
                                        None)
            return True
        return False

    def _check_positions(self, env: dict[str, int]) -> None:
        """`embedding(arange(n), rows, d)`: positions up to n - 1 must fit the table (a
        learned position table shorter than the input used to index out of range)."""
        for n, rows, span in self.position_tables:
            count = int(n.evaluate(env))
            if count > rows:
                raise RuntimeInputError(f"positions 0..{count - 1} index a table of {rows} rows "
                                        f"({n} = {count})", span,
                                        f"inputs can be at most {rows} long here; raise the "
                                        "table size in the spec or shorten them")

    def value_and_grad(self, targets: Any, **inputs: Any) -> tuple[float, dict[str, np.ndarray]]:
        """The spec's training loss on (inputs, targets) and its gradient for every parameter,
        keyed like `state_dict()`. torch differentiates with autograd in the module's current
        mode (eval by default, so dropout is off); NumPy runs the program reverse mode derives
        from the graph (`passes/reverse_mode.py`; inference semantics: dropout off)."""
        if not self.backend.differentiable:
            raise TrainingError(f"the {self.backend.name} backend computes no gradients",
                                None, "compile with backend='numpy' or backend='torch'")
        xs = self.validate_inputs(inputs)
        return self.program.value_and_grad(xs, targets, loss_spec(self.graph))

    def loss(self, targets: Any, **inputs: Any) -> Any:
        """The training loss as a differentiable torch tensor (the torch training step)."""
        if not self.backend.can_train:
            raise TrainingError(f"Model.loss is a torch tensor for autograd; on the "
                                f"{self.backend.name} backend use value_and_grad", None,
                                "attndsl.train(model, ...) and `attndsl train --backend "
                                "numpy` train on NumPy")
        return self.program.loss(self.validate_inputs(inputs), targets, loss_spec(self.graph))

    # -- weights --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> NumPy array (a copy), the same names on every backend."""
        self._materialize()
        return self.program.get_params()

    def load_state_dict(self, state: dict[str, Any], strict: bool = True,
                        rename: dict[str, str] | None = None) -> LoadReport:
        """Load weights (NumPy arrays or torch tensors, float16/bfloat16 converted); with
        strict=True missing or unexpected names are an error, with strict=False they are
        reported and warned about. `rename` maps name prefixes (`{"bert.": ""}`). Shapes
        must always match and values be floating point; everything is checked before any
        weight changes. Returns what was missing, ignored and converted."""
        arrays: dict[str, np.ndarray] = {}
        converted: dict[str, str] = {}
        for name, value in _renamed(state, rename).items():
            arrays[name], source = _as_array(value)
            if source:
                converted[name] = source
        names, report = self._check_weights(
            {n: (a.shape, a.dtype.name) for n, a in arrays.items()}, strict, "weights",
            converted)
        self._materialize(provided=set(names))       # initializes only what is not loaded
        self.program.set_params({n: arrays[n] for n in names})
        return report

    def _check_weights(self, found: dict[str, tuple[tuple[int, ...], str]], strict: bool,
                       where: str, converted: dict[str, str]) -> tuple[list[str], LoadReport]:
        """Validate (shape, dtype name) per name against the model: the names to load and
        the report (warned about when not strict and something is missing or unexpected)."""
        types = self.graph.param_types()
        expected = {name: tuple(int(d.as_int()) for d in t.shape) for name, t in types.items()}
        missing = [n for n in expected if n not in found]
        extra = [n for n in found if n not in expected]
        if strict and (missing or extra):
            parts = []
            if missing:
                parts.append(f"missing {len(missing)}: {', '.join(missing[:5])}")
            if extra:
                parts.append(f"unexpected {len(extra)}: {', '.join(extra[:5])}")
            hint = did_you_mean(extra[0], missing) if missing and extra else None
            raise WeightsError(f"{where} do not match the model (" + "; ".join(parts) + ")",
                               None, hint or "pass strict=False to load what matches, "
                               "or rename={'old.prefix.': 'new.prefix.'}")
        names = [n for n in found if n in expected]
        for name in names:
            shape, dtype = found[name]
            if tuple(shape) != expected[name]:
                raise WeightsError(f"parameter '{name}' in {where} has shape {tuple(shape)}, "
                                   f"the model needs {expected[name]}", None)
            if types[name].dtype == "int":                    # quantized weights
                if dtype not in ("int8", "I8"):
                    raise WeightsError(f"parameter '{name}' in {where} is {dtype}; this "
                                       "quantized model needs int8", None)
                continue
            if dtype not in FLOAT_DTYPES:
                raise WeightsError(f"parameter '{name}' in {where} is {dtype}, not floating "
                                   "point", None,
                                   "weights must be float16/bfloat16/float32/float64")
        report = LoadReport(missing, extra, {n: converted[n] for n in names if n in converted})
        if missing or extra:
            warnings.warn(f"{where}: {len(missing)} model parameters not provided (they keep "
                          f"their initial values: {', '.join(missing[:3]) or '-'}), "
                          f"{len(extra)} names ignored ({', '.join(extra[:3]) or '-'})",
                          stacklevel=3)
        return names, report

    def save(self, path: str | Path) -> None:
        """Write the weights to a safetensors file atomically (a failed save keeps the old file)."""
        from attndsl.training.checkpoint import atomic_save_safetensors
        atomic_save_safetensors({k: np.ascontiguousarray(v, dtype=v.dtype if v.dtype == np.int8
                                                         else np.float32)
                                 for k, v in self.state_dict().items()}, str(path),
                                {"attndsl_spec": str(self.graph.meta.get("name", ""))})

    def load(self, path: str | Path, strict: bool = True,
             rename: dict[str, str] | None = None) -> LoadReport:
        """Read weights from a safetensors file, a sharded checkpoint's
        `*.safetensors.index.json`, or a directory holding either (`model.safetensors`,
        `model.safetensors.index.json`). Names, shapes and dtypes are checked from the
        headers first; then tensors are read and copied in one at a time (peak memory: the
        model plus one tensor). float16/bfloat16 are converted and named in the report."""
        entries = safetensors_entries(Path(path))
        named = _renamed({n: n for n in entries}, rename)     # new name -> name in the file
        converted = {new: entries[old][1].dtype for new, old in named.items()
                     if entries[old][1].dtype in ("F16", "BF16")}
        names, report = self._check_weights(
            {new: (entries[old][1].shape, entries[old][1].dtype) for new, old in named.items()},
            strict, str(path), converted)
        self._materialize(provided=set(names))
        handles: dict[Path, Any] = {}
        try:
            for name in names:
                file, entry = entries[named[name]]
                if file not in handles:
                    handles[file] = open(file, "rb")  # noqa: SIM115 - closed below
                self.program.set_params({name: read_tensor(handles[file], entry)})
        except OSError as e:
            raise WeightsError(f"reading {path} failed: {e}") from None
        finally:
            for handle in handles.values():
                handle.close()
        return report

    # -- reporting --------------------------------------------------------------------------
    def report(self) -> str:
        """Parameters, FLOPs and activation memory (for the last call's dims if any)."""
        s = self.stats
        lines = [f"parameters: {s.params:,} ({human_bytes(s.param_bytes)} in float32)"]
        for block, n in s.params_by_block.items():
            lines.append(f"  {block:<24} {n:>14,}")
        if self.last_dims:
            ev = s.evaluate(self.last_dims)
            dims = ", ".join(f"{k}={v}" for k, v in self.last_dims.items())
            lines.append(f"forward FLOPs ({dims}): {human(ev['flops'])}")
            lines += memory_lines(self.graph, self.last_dims, self.backend.name,
                                  8 if self.dtype == "float64" else 4)
        else:
            lines.append(f"forward FLOPs: {s.flops}")
        return "\n".join(lines)

    def to_numpy(self, outputs: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: self.program.to_numpy(v) for k, v in outputs.items()}


def memory_lines(graph: Graph, env: dict[str, int], backend: str, itemsize: int = 4
                 ) -> list[str]:
    """What `stats` and `report()` say about memory at the sizes in `env`: one forward
    (on NumPy the memory plan's peak, the liveness lower bound and the naive sum; on the
    others the liveness peak) and one training step (`training_peaks`)."""
    dims = ", ".join(f"{k}={v}" for k, v in env.items())
    dtype = "float64" if itemsize == 8 else "float32"
    if backend == "numpy":
        r = memory_report(graph, env, itemsize)
        forward = (f"planned peak {human_bytes(r.planned)} ({r.buffers} buffers reused by "
                   f"size, in place where legal; score buffers included); liveness lower "
                   f"bound {human_bytes(r.lower_bound)}; naive {human_bytes(r.naive)} (a "
                   f"buffer per tensor)")
    else:
        mem = peak_memory(graph, env, backend, itemsize)
        forward = (f"peak {human_bytes(mem.peak)} (liveness over the emitted program, score "
                   f"buffers included; no plan: {backend} allocates as it runs); naive "
                   f"{human_bytes(mem.naive)} (a buffer per tensor)")
    optimizer = graph.meta.get("train", {}).get("optimizer", {}).get("name", "adamw")
    peaks = training_peaks(graph, env, optimizer, itemsize)
    step = (f"one training step ({optimizer}, {dtype}; weights, gradients, optimizer state "
            f"and saved activations): predicted peak {human_bytes(peaks[0])}")
    if len(peaks) > 1:
        step += (f", {human_bytes(min(peaks))} with every repeat iteration recomputed "
                 f"(--memory-budget, torch)")
    return [f"activation memory ({dims}, {backend}, {dtype}): {forward}", step]


class LoadReport(NamedTuple):
    """What `load_state_dict`/`load` did besides loading (like torch's `_IncompatibleKeys`)."""

    missing: list[str]          # model parameters not in the weights (kept as initialized)
    unexpected: list[str]       # names in the weights the model does not have (ignored)
    converted: dict[str, str]   # name -> the half-precision dtype it was converted from


def _renamed(state: dict[str, Any], rename: dict[str, str] | None) -> dict[str, Any]:
    """Apply the first matching prefix rename to each name; two names becoming one is an
    error (it would silently drop a tensor)."""
    if not rename:
        return dict(state)
    out: dict[str, Any] = {}
    for name, value in state.items():
        new = next((to + name[len(old):] for old, to in rename.items() if name.startswith(old)),
                   name)
        if new in out:
            raise WeightsError(f"rename maps two weights to '{new}'", None)
        out[new] = value
    return out


def _as_array(value: Any) -> tuple[np.ndarray, str | None]:
    """A NumPy array of a weight, and the half-precision dtype it was converted from."""
    dtype = str(getattr(value, "dtype", ""))
    if hasattr(value, "detach"):                       # a torch tensor (bf16 has no NumPy)
        half = dtype.replace("torch.", "") if dtype in ("torch.bfloat16", "torch.float16") else None
        t = value.detach().cpu()
        return (t.float() if half else t).numpy(), half
    array = np.asarray(value)
    return array, ("float16" if array.dtype == np.float16 else None)


def safetensors_entries(path: Path) -> dict[str, tuple[Path, Entry]]:
    """name -> (file, entry) of a safetensors file, an index JSON (every shard) or a
    directory holding `model.safetensors` or `model.safetensors.index.json`."""
    if path.is_dir():
        for candidate in ("model.safetensors", "model.safetensors.index.json"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise WeightsError(f"{path} holds neither model.safetensors nor "
                               "model.safetensors.index.json")
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    files = [path]
    if path.name.endswith(".json"):
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({path.parent / f for f in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise WeightsError(f"{path} is not a safetensors index ({e})") from None
    entries: dict[str, tuple[Path, Entry]] = {}
    for file in files:
        try:
            header, _ = read_header(file)
        except (OSError, SafetensorsFormatError) as e:
            raise WeightsError(f"{file} is not a readable safetensors file: {e}") from None
        for name, entry in header.items():
            if name in entries:
                raise WeightsError(f"'{name}' is in both {entries[name][0]} and {file}")
            entries[name] = (file, entry)
    return entries


def _int_mask(name: str, value: Any) -> Any:
    """An integer 0/1 array (NumPy or torch) for a bool input, as a bool array."""
    count = value.numel() if hasattr(value, "numel") else value.size
    lo, hi = (int(value.min()), int(value.max())) if count else (0, 0)
    if lo < 0 or hi > 1:
        raise RuntimeInputError(f"input '{name}' is a bool mask; integer values must be 0 or "
                                f"1, got values in [{lo}, {hi}]", None)
    return value != 0


def _default_input(name: str, ttype: Any, default: Any, env: dict[str, int]) -> np.ndarray:
    """The array an omitted input with a declared default stands for."""
    unbound = sorted({s for d in ttype.shape for s in d.symbols()} - env.keys())
    if unbound:
        raise RuntimeInputError(f"input '{name}' was not given and no other input sets "
                                f"{', '.join(unbound)}", None, f"pass '{name}' explicitly")
    shape = tuple(int(d.evaluate(env)) for d in ttype.shape)
    dtype = {"int": np.int64, "float": np.float32, "bool": np.bool_}[ttype.dtype]
    return np.full(shape, default, dtype=dtype)


def _check_derived(derived: list[tuple[str, int, Dim, int]], env: dict[str, int]) -> None:
    """Axes declared by an expression (`[2 * N]`, `[T + 1]`) against the input, once every
    plain axis has bound its size (the language introduces a size name only plainly)."""
    for name, axis, dim, size in derived:
        want = dim.evaluate(env)
        if want != size:
            raise RuntimeInputError(f"input '{name}' axis {axis} must be {dim} = {want}, got "
                                    f"{size}", None)


def position_tables(graph: Graph) -> list[tuple[Dim, int, Any]]:
    """(n, rows, span) of every `embedding(arange(n), rows, d)`: what `_check_positions`
    compares against the call's sizes."""
    out = []
    for node in graph.nodes.values():
        if node.op == "embedding" and graph.nodes[node.inputs[1]].op == "arange":
            rows = int(graph.nodes[node.inputs[0]].type.shape[0].as_int())
            out.append((Dim.of(graph.nodes[node.inputs[1]].attr("n")), rows, node.span))
    return out


def embedding_limits(graph: Graph) -> dict[str, int]:
    """Input name -> rows of the smallest embedding table that input indexes directly."""
    out: dict[str, int] = {}
    names = {nid: name for name, nid in graph.inputs.items()}
    for node in graph.nodes.values():
        if node.op == "embedding" and node.inputs[1] in names:
            rows = int(graph.nodes[node.inputs[0]].type.shape[0].as_int())
            name = names[node.inputs[1]]
            out[name] = min(rows, out.get(name, rows))
    return out


def random_inputs(graph: Any, env: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Random inputs of the declared types: ids below the embedding table each input indexes."""
    rng = np.random.default_rng(seed)
    limits = embedding_limits(graph)
    out: dict[str, np.ndarray] = {}
    for name, nid in graph.inputs.items():
        t = graph.nodes[nid].type
        shape = tuple(int(d.evaluate(env)) for d in t.shape)
        if t.dtype == "int":
            out[name] = rng.integers(0, limits.get(name, 2), size=shape)
        elif t.dtype == "bool":
            out[name] = np.ones(shape, dtype=bool)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _torch_kind(value: Any) -> str:
    """numpy-style dtype kind for a torch tensor."""
    dt = getattr(value, "dtype", None)
    if getattr(dt, "is_floating_point", False):
        return "f"
    text = str(dt)
    return "b" if "bool" in text else "i"


def compile(spec: str | Path | Graph, backend: str = "numpy",
            config: dict[str, Any] | None = None, seed: int = 0, dtype: str = "float32", weights: str | Path | None = None,
            layerdrop: float | None = None, outputs: list[str] | None = None,
            attention: str = "auto", opt_level: int = 2, **options: Any) -> Model:
    """Parse, check, optimize and lower a spec (or a graph from `attndsl.build`); initialize
    weights from `seed` (or load `weights`). `layerdrop` overrides the spec's LayerDrop probability. `outputs` keeps only
    the named outputs (the rest of the graph that feeds nothing else is removed); attention
    weights exposed with `weights="name"` are outputs only when named here. `attention`
    picks the attention implementation: "auto" (the backend's cost model, per call),
    "dense", "tiled" or "sparse" (`attndsl.passes.select_attention`). `opt_level` 0 runs
    the graph as written, 1 adds clean-ups and attention fusion, 2 (default) also fuses
    projections of one input into one GEMM. `options` go to the backend (torch:
    device="cuda", checkpointing=True)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if attention not in IMPLS:
        raise ValueError(f"attention must be one of {', '.join(IMPLS)}, got {attention!r}")
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {opt_level!r}")
    if isinstance(spec, Graph):
        if config or layerdrop is not None:
            raise ValueError("config and layerdrop apply when building; pass them to "
                             "attndsl.build for a graph")
        graph = spec.copy()
    else:
        graph = build(spec, config, layerdrop)
    if outputs is not None:
        unknown = [o for o in outputs if o not in graph.outputs]
        if unknown:
            raise ConfigError(f"the model has no output '{unknown[0]}'", None,
                              did_you_mean(unknown[0], graph.outputs)
                              or f"outputs: {', '.join(graph.outputs)}")
        graph.outputs = {k: v for k, v in graph.outputs.items() if k in outputs}
        graph = prune_parameters(eliminate_dead_code(graph).graph).graph   # pruned heads' too
    else:  # attention weights (`weights="name"`) are returned only when asked for
        optional = set(graph.meta.get("optional_outputs", ()))
        graph.outputs = {k: v for k, v in graph.outputs.items() if k not in optional}
    graph = select_attention(optimize(graph, level=opt_level), attention).graph
    graph.meta = {**graph.meta, "opt_level": opt_level}    # -O0: no memory plan either
    be = get_backend(backend)
    model = Model(graph, be, None, dtype, options, seed=seed)
    if weights is not None:
        model.load(weights)
    return model
