"""What one optimization step means on each backend, behind one interface for `Trainer`.

- `TorchEngine`: autograd on the PyTorch backend's module, torch's fused optimizers,
  `clip_grad_norm_`, bf16 autocast.
- `ArrayEngine`: the NumPy backend's reverse mode (`Program.value_and_grad`) and
  `ArrayOptimizer` (the same update rules, written over the array module), with dropout and
  LayerDrop drawn from a documented NumPy stream: `numpy.random.default_rng(seed + 2)`,
  `rng.random(x.shape) >= p` per dropout in graph order (see `backends/numpy_autodiff.py`).

Both save optimizer state in one format (`optim.optimizer_state_tensors`), so a checkpoint
from one resumes on the other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from attndsl.errors import TrainingError
from attndsl.model import Model
from attndsl.training.losses import cross_entropy_numpy, loss_spec

DROPOUT_SEED_OFFSET = 2


class TorchEngine:
    """In a torch.distributed process group (`torchrun`), the forward runs through
    DistributedDataParallel, which averages gradients over the ranks; reported losses are
    averaged too, so every rank logs the global batch's loss. With `cfg.shard`, FSDP
    instead (`torch.distributed.fsdp.fully_shard` on the whole generated module: its
    forward reads every parameter, so the parameters are one unit, gathered for the forward
    and the backward, sharded between them; gradients and optimizer state stay sharded).
    Checkpoints gather the full tensors (every rank takes part); after training the model
    gets a plain unsharded program again."""

    def __init__(self, model: Model, cfg: Any):
        import torch

        from attndsl.training.optim import make_optimizer
        self.model, self.cfg = model, cfg
        self.module = model.module
        torch.manual_seed(cfg.seed)
        self.ddp = None
        self.sharded = False
        self.loss_spec = loss_spec(model.graph)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if cfg.shard:
                from torch.distributed.fsdp import fully_shard
                fully_shard(self.module)
                self.sharded = True
            else:
                from torch.nn.parallel import DistributedDataParallel
                unused = _params_off_the_loss(model, self.loss_spec["output"])
                self.ddp = DistributedDataParallel(self.module,
                                                   find_unused_parameters=bool(unused))
        self.named = self.module._params()    # the spec's parameter names (sharded: DTensors)
        self.optimizer = make_optimizer(cfg.optimizer, self.named, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        eps=cfg.eps, momentum=cfg.momentum, rho=cfg.rho)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def autocast(self) -> Any:
        import torch
        if not self.cfg.amp:
            return contextlib.nullcontext()
        device = next(self.module.parameters()).device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def accumulate(self, inputs: dict[str, Any], targets: np.ndarray, scale: float,
                   keep: dict[str, Any] | None = None) -> float:
        """Forward and backward of `scale * loss`, gradients added to the running ones;
        the outputs named in `keep` (recurrent state) are put there."""
        if not self.module.training:
            self.module.train()
        with self.autocast():
            xs = self.model.validate_inputs(inputs)
            loss = self.model.program.loss(xs, targets, self.loss_spec, module=self.ddp,
                                           keep=keep) * scale
        loss.backward()
        value = loss.detach().float()
        if self.ddp is not None or self.sharded:       # the global batch's mean loss
            import torch.distributed as dist
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return float(value)

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def update_hessian(self, inputs: dict[str, Any], sampled: np.ndarray, tokens: int) -> None:
        """Sophia: the Hessian estimate from the gradient of the loss on sampled labels."""
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulate(inputs, sampled, 1.0)
        self.optimizer.update_hessian(tokens)
        self.optimizer.zero_grad(set_to_none=True)

    def apply(self, clip: float) -> None:
        import torch
        if clip and clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        import torch
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), self.autocast():
                yield
        finally:
            self.module.train(was_training)

    def eval_loss(self, inputs: dict[str, Any], targets: np.ndarray,
                  keep: dict[str, Any] | None = None) -> float:
        xs = self.model.validate_inputs(inputs)
        return float(self.model.program.loss(xs, targets, self.loss_spec, keep=keep))

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from attndsl.training.checkpoint import torch_rng_state
        from attndsl.training.optim import optimizer_param_names, optimizer_state_tensors
        names = optimizer_param_names(self.optimizer, self.named)
        tensors, meta = optimizer_state_tensors(self.optimizer, names)
        return ({k: _full(v).cpu().numpy() for k, v in tensors.items()},
                {"optimizer": meta, "optimizer_names": names, "torch_rng": torch_rng_state()})

    def restore(self, tensors: dict[str, Any], state: dict[str, Any]) -> None:
        from attndsl.training.checkpoint import set_torch_rng_state
        from attndsl.training.optim import load_optimizer_state, optimizer_param_names
        names = optimizer_param_names(self.optimizer, self.named)
        if self.sharded:                               # full tensors -> this rank's shards
            tensors = {k: self._sharded_like(self.named[k[6:].rsplit(".", 1)[0]], v)
                       if k.startswith("state.") else v for k, v in tensors.items()}
        load_optimizer_state(self.optimizer, names, tensors, state["optimizer"])
        if "torch_rng" in state:                       # absent in a NumPy run's checkpoint
            set_torch_rng_state(state["torch_rng"])


    def weights(self) -> dict[str, np.ndarray]:
        """The model's weights as full arrays (sharded: gathered; every rank calls this)."""
        if not self.sharded:
            return self.model.state_dict()
        return {name: _full(p.detach()).cpu().numpy() for name, p in self.named.items()}

    def load_weights(self, weights: dict[str, Any]) -> None:
        """Full arrays into the model (sharded: each rank keeps its shard)."""
        import torch
        if not self.sharded:
            self.model.load_state_dict(weights)
            return
        for name, value in weights.items():
            if name not in self.named or tuple(np.shape(value)) != tuple(self.named[name].shape):
                raise ValueError(f"'{name}' {tuple(np.shape(value))} does not fit the model")
        with torch.no_grad():
            for name, p in self.named.items():
                if name in weights:
                    p.copy_(self._sharded_like(p, weights[name]))

    @staticmethod
    def _sharded_like(param: Any, value: Any) -> Any:
        import torch
        from torch.distributed.tensor import distribute_tensor
        full = torch.as_tensor(np.asarray(value)).to(param.dtype)
        return distribute_tensor(full, param.device_mesh, param.placements)

    def finish(self) -> None:
        """After training: a sharded model gets a plain program with the full weights
        (generation and later calls run on one process)."""
        if self.sharded:
            model = self.model
            model.program = model.backend.compile(model.graph, self.weights(), model.dtype,
                                                  dict(model.options))
            self.sharded = False


def _params_off_the_loss(model: Model, output: str) -> list[str]:
    """Parameters the loss output does not read (DDP must be told some get no gradient)."""
    graph = model.graph
    seen = graph.ancestors([graph.outputs[output]])
    return [name for name, nid in graph.params.items() if nid not in seen]


def _full(t: Any) -> Any:
    """A tensor's full value: a DTensor is gathered from the ranks (collective)."""
    from torch.distributed.tensor import DTensor
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach()


class ArrayEngine:
    sharded = False

    def __init__(self, model: Model, cfg: Any):
        from attndsl.backends.numpy_autodiff import check_trainable
        from attndsl.training.array_optim import ArrayOptimizer
        if cfg.amp:
            raise TrainingError("--amp (bf16 autocast) is for the torch backend", None)
        check_trainable(model.graph)                     # before any work
        self.model, self.cfg = model, cfg
        self.program = model.program
        model._materialize()
        self.params = self.program.params                 # name -> array, updated in place
        buffers = set(model.graph.meta.get("buffers", ()))   # moved by the forward, not trained
        trained = {k: v for k, v in self.params.items() if k not in buffers}
        self.optimizer = ArrayOptimizer(cfg.optimizer, trained, lr=cfg.lr,
                                        weight_decay=cfg.weight_decay, betas=cfg.betas,
                                        eps=cfg.eps, momentum=cfg.momentum, rho=cfg.rho)
        self.rng = np.random.default_rng(cfg.seed + DROPOUT_SEED_OFFSET)
        self.grads: dict[str, Any] | None = None
        self.loss = loss_spec(model.graph)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def _forward_backward(self, inputs: dict[str, Any], targets: np.ndarray,
                          keep: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        """Loss and gradients in training mode; like torch's forward, it moves the buffers
        (batch_norm's running statistics)."""
        xs = self.model.validate_inputs(inputs)
        moved: dict[str, Any] = {}
        value, grads = self.program.value_and_grad(xs, targets, self.loss, rng=self.rng,
                                                   updates=moved, keep=keep)
        if moved:
            self.program.set_params(moved)
        return value, grads

    def accumulate(self, inputs: dict[str, Any], targets: np.ndarray, scale: float,
                   keep: dict[str, Any] | None = None) -> float:
        value, grads = self._forward_backward(inputs, targets, keep)
        if self.grads is None:
            self.grads = {k: g * scale for k, g in grads.items()}
        else:
            for k, g in grads.items():
                self.grads[k] += g * scale
        return float(value) * scale

    def discard(self) -> None:
        self.grads = None

    def update_hessian(self, inputs: dict[str, Any], sampled: np.ndarray, tokens: int) -> None:
        """Sophia: the Hessian estimate from the gradient of the loss on sampled labels."""
        self.optimizer.update_hessian(self._forward_backward(inputs, sampled)[1], tokens)

    def apply(self, clip: float) -> None:
        grads = self.grads or {}
        if clip and clip > 0:                        # as torch.nn.utils.clip_grad_norm_
            total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum())
                                  for g in grads.values()))
            coef = np.float32(min(clip / (total + 1e-6), 1.0))
            for g in grads.values():
                g *= coef
        self.optimizer.step(self.params, grads)
        self.program.set_params(self.params)          # drops values folded from the old ones
        self.grads = None

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        yield

    def eval_loss(self, inputs: dict[str, Any], targets: np.ndarray,
                  keep: dict[str, Any] | None = None) -> float:
        outs = self.model.to_numpy(self.model(**inputs))
        for name in keep or ():
            keep[name] = outs[name]
        value = cross_entropy_numpy(outs[self.loss["output"]], np.asarray(targets),
                                    self.loss["label_smoothing"], self.loss["ignore_index"])
        return float(value + sum(coef * float(outs[name]) for coef, name in self.loss["extra"]))

    def weights(self) -> dict[str, np.ndarray]:
        return self.model.state_dict()

    def load_weights(self, weights: dict[str, Any]) -> None:
        self.model.load_state_dict(weights)

    def finish(self) -> None:
        """Nothing to undo after training."""

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from attndsl.training.checkpoint import numpy_rng_state
        tensors, meta = self.optimizer.state_tensors()
        return tensors, {"optimizer": meta, "optimizer_names": self.optimizer.names,
                         "dropout_rng": numpy_rng_state(self.rng)}

    def restore(self, tensors: dict[str, Any], state: dict[str, Any]) -> None:
        from attndsl.training.checkpoint import numpy_rng_from_state
        xp = getattr(self.program, "xp", np)
        self.optimizer.load_state(tensors, state["optimizer"], self.params, xp)
        if "dropout_rng" in state:                     # absent in a torch run's checkpoint
            self.rng = numpy_rng_from_state(state["dropout_rng"])


def make_engine(model: Model, cfg: Any) -> TorchEngine | ArrayEngine:
    if model.graph.meta.get("quantized"):
        raise TrainingError("a quantized model is for inference: its int8 weights get no "
                            "gradient", None, "train the float model, then quantize it")
    if model.backend.name == "torch":
        return TorchEngine(model, cfg)
    if model.backend.name == "numpy":
        return ArrayEngine(model, cfg)
    raise TrainingError(f"the {model.backend.name} backend has no training loop here", None,
                        "train with backend='torch' or 'numpy' (CuPy training needs the "
                        "gradient kernels on CuPy, which are not wired up)")
