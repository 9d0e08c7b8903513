"""Optimizers over an array module (NumPy; CuPy arrays work the same way): SGD with
momentum, Adam, AdamW and RAdam with torch's update rules, Lion and Sophia with the update
rules of `optim.Lion` / `optim.Sophia`, all with torch's parameter groups (decay only on
parameters with ndim >= 2), so NumPy and PyTorch training follow the same trajectory.

Their state is saved in the format of `optim.optimizer_state_tensors` — `state.<name>.
exp_avg` / `exp_avg_sq` / `hessian` / `momentum_buffer` tensors, a `step` scalar and
torch-shaped param-group hyperparameters — so a checkpoint written by either backend resumes
on the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

OPTIMIZER_KINDS = ("sgd", "adam", "adamw", "radam", "lion", "sophia")
Array = Any


def decay_groups(params: Mapping[str, Array], weight_decay: float) -> list[dict[str, Any]]:
    """Names in a decayed (ndim >= 2) and a non-decayed group, in `params` order (as
    `optim.param_groups`)."""
    decay = [n for n, p in params.items() if p.ndim >= 2]
    rest = [n for n, p in params.items() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0}]


class ArrayOptimizer:
    """`step(params, grads)` updates `params` (name -> array) in place."""

    def __init__(self, kind: str, params: Mapping[str, Array], lr: float,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, momentum: float = 0.0, rho: float = 0.04):
        if kind not in OPTIMIZER_KINDS:
            raise ValueError(f"unknown optimizer {kind!r}; expected one of "
                             f"{', '.join(OPTIMIZER_KINDS)}")
        self.kind = kind
        extra: dict[str, Any] = {
            "sgd": {"momentum": momentum, "dampening": 0, "nesterov": False},
            "lion": {"betas": tuple(betas)},
            "sophia": {"betas": tuple(betas), "rho": rho},
        }.get(kind, {"betas": tuple(betas), "eps": eps, "amsgrad": False})
        self.param_groups = [{**g, "lr": lr, **extra} for g in decay_groups(params, weight_decay)]
        self.state: dict[str, dict[str, Any]] = {}

    @property
    def names(self) -> list[str]:
        """Parameter names in optimizer order (decayed group first)."""
        return [n for g in self.param_groups for n in g["params"]]

    def set_lr(self, lr: float) -> None:
        for g in self.param_groups:
            g["lr"] = lr

    def step(self, params: dict[str, Array], grads: Mapping[str, Array]) -> None:
        for group in self.param_groups:
            for name in group["params"]:
                self._update(name, params[name], grads[name], group)

    def update_hessian(self, grads: Mapping[str, Array], tokens: int) -> None:
        """Sophia's Gauss-Newton-Bartlett estimate: `grads` is the gradient of the mean loss
        on labels sampled from the model over `tokens` positions; h <- b2 h + (1-b2) B g*g."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for name in group["params"]:
                g = grads[name]
                h = self._sophia_state(name, g)["hessian"]
                h *= beta2
                h += (1 - beta2) * tokens * (g * g)

    def _sophia_state(self, name: str, like: Array) -> dict[str, Any]:
        st = self.state.setdefault(name, {})
        if "exp_avg" not in st:
            st["step"], st["exp_avg"], st["hessian"] = 0.0, like * 0, like * 0
        return st

    def _update(self, name: str, p: Array, g: Array, group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        st = self.state.setdefault(name, {})
        if self.kind == "lion":                               # Chen et al. 2023, Alg. 2
            beta1, beta2 = group["betas"]
            m = st.get("exp_avg")
            if m is None:
                m = st["exp_avg"] = p * 0
            p *= 1 - lr * wd
            p -= lr * np.sign(m * beta1 + g * (1 - beta1))
            m *= beta2
            m += (1 - beta2) * g
            return
        if self.kind == "sophia":                             # Liu et al. 2023, Alg. 3
            beta1 = group["betas"][0]
            st = self._sophia_state(name, p)
            st["step"] += 1
            m, h = st["exp_avg"], st["hessian"]
            m *= beta1
            m += (1 - beta1) * g
            p *= 1 - lr * wd
            ratio = np.minimum(np.abs(m) / (group["rho"] * h + 1e-15), 1.0)
            p -= lr * np.sign(m) * ratio
            return
        if self.kind == "sgd":
            if wd:
                g = g + wd * p
            if group["momentum"]:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = g.copy()
                else:
                    buf *= group["momentum"]
                    buf += g
                g = buf
            p -= lr * g
            return
        beta1, beta2 = group["betas"]
        if self.kind == "adamw":
            p *= 1 - lr * wd                                  # decoupled weight decay
        elif wd:
            g = g + wd * p                                    # Adam: coupled L2
        if "exp_avg" not in st:
            st["step"], st["exp_avg"], st["exp_avg_sq"] = 0.0, p * 0, p * 0
        st["step"] += 1
        m, v = st["exp_avg"], st["exp_avg_sq"]
        step = st["step"]
        if self.kind == "radam":                              # Liu et al. 2020, as torch
            m += (g - m) * (1 - beta1)
            v *= beta2
            v += (1 - beta2) * (g * g)
            bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
            rho_inf = 2 / (1 - beta2) - 1
            rho_t = rho_inf - 2 * step * beta2 ** step / bc2
            if rho_t > 5.0:
                rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                                 / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                p -= (m / bc1) * lr * (math.sqrt(bc2) / (np.sqrt(v) + group["eps"])) * rect
            else:
                p -= (m / bc1) * lr
            return
        tmp = g - m
        tmp *= 1 - beta1
        m += tmp                                              # torch's lerp
        np.multiply(g, g, out=tmp)
        tmp *= 1 - beta2
        v *= beta2
        v += tmp
        np.sqrt(v, out=tmp)                                   # CuPy dispatches np.sqrt
        tmp /= math.sqrt(1 - beta2 ** step)
        tmp += group["eps"]
        np.divide(m, tmp, out=tmp)
        tmp *= lr / (1 - beta1 ** step)
        p -= tmp

    # -- checkpoints (the torch optimizer-state format) ------------------------------------------
    def state_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(tensors, meta) as `optim.optimizer_state_tensors` writes them."""
        tensors: dict[str, np.ndarray] = {}
        state: dict[str, dict[str, Any]] = {}
        for name, entries in self.state.items():
            encoded: dict[str, Any] = {}
            for key, value in entries.items():
                if key == "step":
                    encoded[key] = {"__scalar__": float(value), "dtype": "float32"}
                else:
                    tensors[f"state.{name}.{key}"] = np.asarray(value, np.float32).copy()
                    encoded[key] = {"__tensor__": f"state.{name}.{key}"}
            state[name] = encoded
        groups = []
        for g in self.param_groups:
            meta = {k: ({"__tuple__": list(v)} if isinstance(v, tuple) else v)
                    for k, v in g.items()}
            groups.append(meta)
        return tensors, {"state": state, "param_groups": groups}

    def load_state(self, tensors: Mapping[str, Any], meta: Mapping[str, Any],
                   params: Mapping[str, Array], xp: Any = np) -> None:
        """Restore from either backend's checkpoint; checked before anything changes."""
        groups = meta.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError("optimizer state has a different number of param groups")
        for j, (saved, live) in enumerate(zip(groups, self.param_groups)):
            if set(saved.get("params", [])) != set(live["params"]):
                raise ValueError(f"optimizer state param group {j} holds other parameters")
        state: dict[str, dict[str, Any]] = {}
        for name, entries in (meta.get("state") or {}).items():
            if name not in params:
                raise ValueError(f"optimizer state names an unknown parameter {name!r}")
            restored: dict[str, Any] = {}
            for key, value in entries.items():
                if isinstance(value, dict) and "__tensor__" in value:
                    array = np.asarray(tensors[value["__tensor__"]], np.float32)
                    if array.shape != tuple(params[name].shape):
                        raise ValueError(f"optimizer state {value['__tensor__']!r} has shape "
                                         f"{array.shape}, its parameter {tuple(params[name].shape)}")
                    if not np.isfinite(array).all():
                        raise ValueError(f"optimizer state {value['__tensor__']!r} is not finite")
                    restored[key] = xp.asarray(array.astype(params[name].dtype))
                elif key == "step":
                    restored[key] = float(value["__scalar__"] if isinstance(value, dict)
                                          else value)
            state[name] = restored
        for saved, live in zip(groups, self.param_groups):
            for key in ("lr", "weight_decay", "eps", "momentum", "rho"):
                if key in saved and key in live:
                    live[key] = float(saved[key])
            if "betas" in saved and "betas" in live:
                b = saved["betas"]
                live["betas"] = tuple(b["__tuple__"] if isinstance(b, dict) else b)
        self.state = state
