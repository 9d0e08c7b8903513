"""Optimizers and pickle-free optimizer-state (de)serialization.

Optimizer state is split into flat tensors (for safetensors) keyed
``"state.<param name>.<key>"`` plus a JSON-serializable dict for the rest.
Parameters are identified by name, so the names passed to
:func:`optimizer_state_tensors` and :func:`load_optimizer_state` must list the
optimizer's parameters in optimizer order (see :func:`optimizer_param_names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from attndsl.training.array_optim import OPTIMIZER_KINDS, decay_groups


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2):
    p <- p (1 - lr wd) - lr sign(b1 m + (1 - b1) g);  m <- b2 m + (1 - b2) g."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas),
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


class Sophia(torch.optim.Optimizer):
    """Sophia with the Gauss-Newton-Bartlett Hessian estimate (Liu et al. 2023, "Sophia: A
    Scalable Stochastic Second-order Optimizer", Alg. 3 with Alg. 2):
    m <- b1 m + (1 - b1) g;  p <- p (1 - lr wd) - lr clip(m / max(rho h, 1e-15), 1), and every
    k steps `update_hessian(tokens)` with the gradients (`.grad`) of the loss on labels
    sampled from the model: h <- b2 h + (1 - b2) B g*g, B the number of label positions."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99),
                 rho: float = 0.04, weight_decay: float = 0.1):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "rho": rho,
                                  "weight_decay": weight_decay})

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self, tokens: int) -> None:
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    h = self._state(p)["hessian"]
                    h.mul_(beta2).addcmul_(p.grad, p.grad, value=(1 - beta2) * tokens)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, wd, beta1 = group["lr"], group["weight_decay"], group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                m = state["exp_avg"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                p.mul_(1 - lr * wd)
                ratio = (m.abs() / (group["rho"] * state["hessian"] + 1e-15)).clamp(max=1.0)
                p.addcmul_(torch.sign(m), ratio, value=-lr)


def param_groups(
    named_params: Mapping[str, torch.nn.Parameter], weight_decay: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group (nanoGPT).

    Parameters with ``ndim >= 2`` (weight matrices, embeddings) get
    ``weight_decay``; 1-D ones (norm gains, biases) get 0. Parameters that do
    not require grad are skipped; a tensor registered under several names is
    included once. Order: decayed group first, then the others, each in
    ``named_params`` order.
    """
    first: dict[int, str] = {}
    for name, p in named_params.items():
        if p.requires_grad:
            first.setdefault(id(p), name)
    unique = {name: named_params[name] for name in first.values()}
    return [{**g, "params": [unique[n] for n in g["params"]]}
            for g in decay_groups(unique, weight_decay)]


def make_optimizer(
    kind: str,
    named_params: Mapping[str, torch.nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
    rho: float = 0.04,
) -> torch.optim.Optimizer:
    """Build an optimizer over :func:`param_groups` (decay only on ``ndim >= 2``).

    - ``"sgd"``: SGD with ``momentum``; ``weight_decay`` is coupled L2.
    - ``"adam"``, ``"radam"``: Adam, rectified Adam; ``weight_decay`` is coupled L2.
    - ``"adamw"``: AdamW with decoupled ``weight_decay``.
    - ``"lion"``, ``"sophia"``: :class:`Lion`, :class:`Sophia` (decoupled decay).
    """
    groups = param_groups(named_params, weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if kind == "radam":
        return torch.optim.RAdam(groups, lr=lr, betas=betas, eps=eps)
    if kind == "lion":
        return Lion(groups, lr=lr, betas=betas)
    if kind == "sophia":
        return Sophia(groups, lr=lr, betas=betas, rho=rho)
    fused = all(p.is_floating_point() for g in groups for p in g["params"])  # one kernel
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    raise ValueError(f"unknown optimizer {kind!r}; expected one of {', '.join(OPTIMIZER_KINDS)}")


def optimizer_param_names(
    opt: torch.optim.Optimizer, named_params: Mapping[str, torch.nn.Parameter]
) -> list[str]:
    """Names of ``opt``'s parameters in optimizer order (the index order of ``state_dict()``)."""
    by_id = {}
    for name, p in named_params.items():
        by_id.setdefault(id(p), name)
    names = []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError(
                    f"optimizer parameter of shape {tuple(p.shape)} is not in named_params"
                )
            names.append(by_id[id(p)])
    return names


def _encode(value: Any) -> Any:
    """Encode a non-tensor-array state value as JSON data, exactly invertible by ``_decode``."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise TypeError(f"cannot encode a tensor of shape {tuple(value.shape)} as JSON")
        return {"__scalar__": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot encode optimizer state value of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__scalar__" in value:
            dtype = getattr(torch, value["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown torch dtype {value['dtype']!r} in optimizer state")
            return torch.tensor(value["__scalar__"], dtype=dtype)
        raise ValueError(f"malformed optimizer state value {value!r}")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _owned_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A writable tensor that shares no memory with ``value``."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return torch.from_numpy(np.array(value, copy=True))


def _check_state_tensor(key: str, value: torch.Tensor, param: torch.Tensor) -> None:
    """Per-parameter optimizer state (exp_avg, momentum_buffer, ...) must have the
    parameter's shape, a floating dtype and finite values: the fused optimizers index it
    with the parameter's sizes, so a wrong shape reads and writes out of bounds."""
    import torch
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"optimizer state tensor {key!r} has shape {tuple(value.shape)}, "
                         f"its parameter has {tuple(param.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"optimizer state tensor {key!r} is {value.dtype}, not floating point")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"optimizer state tensor {key!r} holds NaN or infinite values")


def _check_names(opt: torch.optim.Optimizer, names: list[str]) -> None:
    n = sum(len(g["params"]) for g in opt.param_groups)
    if len(names) != n:
        raise ValueError(f"got {len(names)} parameter names for an optimizer with {n} parameters")
    if len(set(names)) != n:
        raise ValueError("parameter names must be unique")


def optimizer_state_tensors(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten ``opt.state_dict()`` into ``(tensors, meta)`` without pickle.

    ``names[i]`` names the optimizer's i-th parameter (optimizer order).
    ``tensors`` maps ``"state.<name>.<key>"`` to a detached CPU copy of every
    state tensor with ``ndim >= 1`` (e.g. ``exp_avg``, ``momentum_buffer``);
    ``meta`` is JSON-serializable: hyperparameters of each param group (with
    ``params`` as names) and the remaining per-parameter state (step counters,
    as python numbers tagged with their dtype).
    """
    _check_names(opt, names)
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entries in sd["state"].items():
        name = names[idx]
        encoded: dict[str, Any] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tkey = f"state.{name}.{key}"
                tensors[tkey] = value.detach().cpu().clone()
                encoded[key] = {"__tensor__": tkey}
            else:
                encoded[key] = _encode(value)
        state_meta[name] = encoded
    groups_meta = []
    for group in sd["param_groups"]:
        g = {k: _encode(v) for k, v in group.items() if k != "params"}
        g["params"] = [names[i] for i in group["params"]]
        groups_meta.append(g)
    return tensors, {"state": state_meta, "param_groups": groups_meta}


def load_optimizer_state(
    opt: torch.optim.Optimizer,
    names: list[str],
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    meta: Mapping[str, Any],
) -> None:
    """Inverse of :func:`optimizer_state_tensors`: restore ``opt`` in place.

    ``names`` lists ``opt``'s parameters in its own order; saved state is
    matched to parameters by name (each saved group must hold the same names
    as the corresponding live group). ``tensors`` may be torch tensors or
    numpy arrays (e.g. from safetensors); they are copied, then moved to each
    parameter's device/dtype by ``Optimizer.load_state_dict``.
    """
    _check_names(opt, names)
    if len(meta["param_groups"]) != len(opt.param_groups):
        raise ValueError(
            f"optimizer state has {len(meta['param_groups'])} param groups, "
            f"the optimizer has {len(opt.param_groups)}"
        )
    index = {name: i for i, name in enumerate(names)}
    groups = []
    start = 0
    for j, (g, live) in enumerate(zip(meta["param_groups"], opt.param_groups)):
        current = names[start : start + len(live["params"])]
        if set(g["params"]) != set(current):
            missing = sorted(set(current) - set(g["params"]))
            extra = sorted(set(g["params"]) - set(current))
            raise ValueError(
                f"optimizer state param group {j} does not match the optimizer: "
                f"missing {missing}, unexpected {extra}"
            )
        group = {k: _decode(v) for k, v in g.items() if k != "params"}
        # Optimizer.load_state_dict pairs saved and live params by position within each
        # group, so list the live indices; state below is keyed by those same indices.
        group["params"] = list(range(start, start + len(current)))
        groups.append(group)
        start += len(current)
    state: dict[int, dict[str, Any]] = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    if not isinstance(meta.get("state"), dict):
        raise ValueError("optimizer state has no 'state' table")
    for name, entries in meta["state"].items():
        if name not in index:
            raise ValueError(f"optimizer state names an unknown parameter {name!r}")
        restored: dict[str, Any] = {}
        for key, value in entries.items():
            if isinstance(value, dict) and "__tensor__" in value:
                tkey = value["__tensor__"]
                if tkey not in tensors:
                    raise ValueError(f"optimizer state tensor {tkey!r} is missing")
                restored[key] = _owned_tensor(tensors[tkey])
                _check_state_tensor(tkey, restored[key], params[index[name]])
            else:
                restored[key] = _decode(value)
        state[index[name]] = restored
    opt.load_state_dict({"state": state, "param_groups": groups})
