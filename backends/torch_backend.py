"""The PyTorch backend: the graph becomes a real `torch.nn.Module` (source printed by
`attndsl compile SPEC --emit torch`) whose `nn.Parameter`s carry the spec's hierarchical
names (`layers.0.attn.q.weight`), usable with optimizers, `torch.compile` and DDP."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from attndsl.backends import Backend, Program
from attndsl.backends.codegen import (
    EmitOptions,
    cached_kernel_names,
    emit_fold,
    emit_forward,
    folded_nodes,
    kernel_names,
)
from attndsl.backends.numpy_backend import kernel_sources

from attndsl.ir.graph import Graph
from attndsl.passes.memory_plan import rope_in_place

TRAINING_OPS = frozenset({"dropout", "attention", "attention_weights", "layer_drop",
                          "moe_route", "batch_norm"})
CONTEXT_OPS = frozenset({"constant", "size", "arange", "sinusoidal", "cast", "one_hot",
                         "moe_dropped"})

MODULE_TEMPLATE = '''

PARAMS = {params}


def _register(root, name, param):
    """Create the submodules on the dotted path and register `param` at its end; returns
    the (submodule, leaf name) slot that holds it. A part that is an nn.Module attribute
    (`training`, `forward`, `to`, ...) gets a trailing `_` in the module tree only; the
    spec's names stay the parameter names everywhere else (`_params()`)."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        part = _safe(module, part, module._modules)
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    leaf = _safe(module, leaf, {{}})
    module.register_parameter(leaf, param)
    return module, leaf


def _parameter(shape, kind):
    """A float parameter, a frozen int8 one (quantized weights) or a float buffer that the
    forward updates and no optimizer trains (batch_norm's running statistics)."""
    if kind == "int":
        return nn.Parameter(torch.empty(shape, dtype=torch.int8), requires_grad=False)
    return nn.Parameter(torch.empty(shape), requires_grad=kind != "buffer")


def _safe(module, part, existing):
    """`part` as a module-tree name: `p` before a leading `_`, then `_` appended while it
    names an attribute of `module` that is not already this path's submodule."""
    part = "p" + part if part.startswith("_") else part
    while part not in existing and hasattr(module, part):
        part += "_"
    return part


class {cls}(nn.Module):
    """Generated from {spec}. forward(**inputs) -> dict of outputs."""

    def __init__(self):
        super().__init__()
        self._slots = [(name, *_register(self, name, _parameter(shape, kind)))
                       for name, (shape, kind) in PARAMS.items()]

    def _params(self):
        """Name -> the Parameter currently in its slot (cheaper than named_parameters())."""
        return {{name: module._parameters[leaf] for name, module, leaf in self._slots}}

    fdtype = torch.float32  # the float dtype of a module without parameters

    def _context(self):
        """(device, float dtype) of the parameters (int8 quantized weights skipped)."""
        first = next((p for p in self.parameters() if p.is_floating_point()), None)
        if first is None:
            return torch.device("cpu"), self.fdtype
        return first.device, first.dtype

    _fold_key = None

    def _folded(self):
        """Parameters plus fold(p), the values computed from them alone: recomputed on every
        call while autograd records (gradients flow through them), else cached until a
        parameter is replaced, changed in place (its version counter moves) or any torch
        optimizer steps (fused AdamW updates in place without moving version counters)."""
        p = self._params()
        if torch.is_grad_enabled():
            return {{**p, **fold(p)}}
        key = (_OPTIMIZER_STEPS[0], *((id(t), t._version) for t in p.values()))
        if key != self._fold_key:
            self._fold_cache, self._fold_key = fold(p), key
        return {{**p, **self._fold_cache}}

    def forward(self, **inputs):
        device, fdtype = self._context()
        return forward(self._folded(), inputs, self.training, device, fdtype)

    def forward_cached(self, cache, past, **inputs):
        """Incremental decoding: `cache` (a dict) holds keys/values of `past` positions."""
        device, fdtype = self._context()
        return forward_cached(self._folded(), inputs, self.training, device, fdtype, cache,
                              past)
'''


def emit_module(graph: Graph, checkpointing: bool | int = False) -> str:
    """Module source; with `checkpointing` (True: every repeat iteration, an int k: the
    first k) those iterations run under `torch.utils.checkpoint` while training (their
    activations are recomputed in backward)."""
    here = Path(__file__).parent
    names = kernel_names(graph) + cached_kernel_names(graph)
    extra = ("training", "device", "fdtype")
    layers = tuple(tuple(r) for r in graph.meta.get("layers", ()))
    segments = layers if checkpointing is True else layers[:int(checkpointing)]
    plain = EmitOptions(extra, TRAINING_OPS, CONTEXT_OPS, segments=segments)
    plain = replace(plain, folded=folded_nodes(graph, plain))
    if graph.meta.get("opt_level", 2) >= 1:
        plain = replace(plain, rope_in_place=rope_in_place(graph, plain.folded))
    cached = EmitOptions(extra, TRAINING_OPS, CONTEXT_OPS, cached=True, folded=plain.folded)
    buffers = set(graph.meta.get("buffers", ()))
    params = "{\n" + "".join(
        f"    {name!r}: ({tuple(int(d.as_int()) for d in t.shape)}, "
        f"{'buffer' if name in buffers else t.dtype!r}),\n"
        for name, t in graph.param_types().items()) + "}"
    spec = graph.meta.get("name", "a spec")
    header = (f'"""Generated by attndsl from {spec}: a torch.nn.Module."""\n\n'
              "import math\n\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
              "from torch import nn\n"
              "from torch.optim.optimizer import register_optimizer_step_post_hook\n"
              "from torch.utils.checkpoint import checkpoint"
              "\n\nCAUSAL = \"(k <= q)\"\n_MASKS: dict = {}\n"
              "_OPTIMIZER_STEPS = [0]  # folded values expire at every optimizer step\n"
              "register_optimizer_step_post_hook(\n"
              "    lambda *_: _OPTIMIZER_STEPS.__setitem__(0, _OPTIMIZER_STEPS[0] + 1))\n")
    body = "\n\n".join(kernel_sources(str(here / "torch_kernels.py"), names,
                                       str(here / "numpy_kernels.py")))
    return (f"{header}\n\n{body}\n\n{emit_fold(graph, plain)}\n\n"
            f"{emit_forward(graph, plain)}\n\n"
            f"{emit_forward(graph, cached, name='forward_cached')}"
            + MODULE_TEMPLATE.format(params=params, cls="GeneratedModel", spec=spec))


class TorchProgram(Program):
    def __init__(self, graph: Graph, params: dict[str, np.ndarray], dtype: str, device: str,
                 checkpointing: bool | int = False):
        import torch
        ns: dict[str, Any] = {}
        source = emit_module(graph, checkpointing)
        exec(compile(source, f"<attndsl-torch:{graph.meta.get('name')}>", "exec"), ns)  # noqa: S102 - our own generated code
        self.module = ns["GeneratedModel"]()
        self.torch_dtype = getattr(torch, dtype)
        self.module.fdtype = self.torch_dtype
        self.module.to(device=device, dtype=self.torch_dtype)
        self.module.eval()
        self.float_inputs = {name for name, nid in graph.inputs.items()
                             if graph.nodes[nid].type.dtype == "float"}
        self.set_params(params)

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Inference: no autograd graph is recorded (gradients come from `loss`,
        `value_and_grad` or calling `module` directly)."""
        import torch
        with torch.inference_mode():
            return self.module(**self.convert_inputs(inputs))

    def convert_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        import torch
        device, fdtype = self.module._context()
        out = {}
        for k, v in inputs.items():
            t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
            if t.is_floating_point() or k in self.float_inputs:
                t = t.to(fdtype)
            elif t.dtype != torch.bool:
                t = t.to(torch.int64)
            out[k] = t.to(device)
        return out

    def loss(self, inputs: dict[str, Any], targets: Any, loss: dict[str, Any],
             module: Any = None, keep: dict[str, Any] | None = None) -> Any:
        """The loss as a differentiable tensor, in the module's current mode; `module` runs
        the forward instead of the program's own (a DistributedDataParallel wrapper of it);
        the outputs named in `keep` are put there as NumPy arrays (detached)."""
        from attndsl.training.losses import check_targets, cross_entropy_torch
        outs = (module or self.module)(**self.convert_inputs(inputs))
        for name in keep or ():
            keep[name] = self.to_numpy(outs[name].detach())
        out = outs[loss["output"]]
        (tgt,) = self.convert_inputs({"targets": targets}).values()
        check_targets(tuple(tgt.shape), tuple(out.shape), loss["output"])
        value = cross_entropy_torch(out, tgt, loss["label_smoothing"], loss["ignore_index"])
        for coef, name in loss.get("extra", []):    # + coef * scalar output (moe aux loss)
            term = outs[name]
            value = value + coef * (term if term.dtype == value.dtype else term.to(value.dtype))
        return value

    def value_and_grad(self, inputs: dict[str, Any], targets: Any, loss: dict[str, Any]
                       ) -> tuple[float, dict[str, np.ndarray]]:
        value = self.loss(inputs, targets, loss)
        self.module.zero_grad(set_to_none=True)
        value.backward()
        import torch
        grads = {name: p.grad if p.grad is not None else torch.zeros_like(p)
                 for name, p in self.module._params().items()}
        return float(value.detach()), {k: self.to_numpy(g).copy() for k, g in grads.items()}

    def get_params(self) -> dict[str, np.ndarray]:
        """In the spec's parameter order (as every backend), not the module tree's."""
        return {k: self.to_numpy(v) for k, v in self.module._params().items()}   # copies

    def set_params(self, params: dict[str, np.ndarray]) -> None:
        import torch
        with torch.no_grad():
            for name, p in self.module._params().items():
                if name in params:
                    p.copy_(torch.as_tensor(np.asarray(params[name])).to(p.dtype))

    def to_numpy(self, value: Any) -> np.ndarray:
        """Shares memory with a fresh CPU result (a GPT-2 logits tensor is 200 MB); copies
        anything that is or views a parameter, so writing into the array never edits weights."""
        import torch
        shared = value.requires_grad or value._is_view() or isinstance(value, torch.nn.Parameter)
        t = value.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        a = t.cpu().numpy()
        return a.copy() if shared and t.device.type == "cpu" else a


class TorchBackend(Backend):
    name = "torch"
    differentiable = True
    can_train = True
    fused_attention = True

    @staticmethod
    def unavailable_reason() -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install 'attndsl[torch]')"
        return None

    def compile(self, graph: Graph, params: dict[str, np.ndarray], dtype: str,
                options: dict[str, Any]) -> Program:
        device = options.pop("device", "cpu")
        checkpointing = options.pop("checkpointing", False)   # True: all; k: the first k
        if not isinstance(checkpointing, int) or checkpointing < 0:
            raise ValueError("checkpointing must be True, False or a number of repeat "
                             f"iterations, got {checkpointing!r}")
        if options:
            raise ValueError(f"unknown torch backend options: {', '.join(options)}")
        return TorchProgram(graph, params, dtype, device, checkpointing)

    def emit(self, graph: Graph) -> str:
        return emit_module(graph)
