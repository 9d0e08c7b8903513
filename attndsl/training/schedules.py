"""Learning-rate schedules: frozen dataclasses mapping a step to a learning rate.

Step conventions: :class:`Noam` counts steps from 1 (step 0 is treated as 1,
as in the original Transformer paper); all other schedules count from 0
(as nanoGPT's ``get_lr(it)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Constant:
    """``lr`` at every step."""

    lr: float

    def __call__(self, step: int) -> float:
        return self.lr


@dataclass(frozen=True)
class Noam:
    """``scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)``, steps from 1.

    Rises linearly to its peak ``scale * (d_model * warmup)**-0.5`` at
    ``step == warmup``, then decays as ``step**-0.5``.
    """

    d_model: int
    warmup: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.warmup < 1:
            raise ValueError(
                f"Noam needs d_model >= 1 and warmup >= 1, got {self.d_model}, {self.warmup}"
            )

    def __call__(self, step: int) -> float:
        step = max(step, 1)
        return self.scale * self.d_model**-0.5 * min(step**-0.5, step * self.warmup**-1.5)


def _check_warmup_total(name: str, warmup: int, total: int) -> None:
    if warmup < 0 or total <= warmup:
        raise ValueError(f"{name} needs 0 <= warmup < total, got warmup={warmup}, total={total}")


@dataclass(frozen=True)
class WarmupCosine:
    """nanoGPT's ``get_lr``, steps from 0.

    ``lr * (step + 1) / (warmup + 1)`` for ``step < warmup``; cosine decay from
    ``lr`` (at ``warmup``) to ``min_lr`` (at ``total``); ``min_lr`` after ``total``.
    """

    lr: float
    warmup: int
    total: int
    min_lr: float

    def __post_init__(self) -> None:
        _check_warmup_total("WarmupCosine", self.warmup, self.total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        if step > self.total:
            return self.min_lr
        ratio = (step - self.warmup) / (self.total - self.warmup)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        return self.min_lr + coeff * (self.lr - self.min_lr)


@dataclass(frozen=True)
class WarmupLinear:
    """As :class:`WarmupCosine` but with linear decay from ``lr`` to ``min_lr``, steps from 0."""

    lr: float
    warmup: int
    total: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        _check_warmup_total("WarmupLinear", self.warmup, self.total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        if step > self.total:
            return self.min_lr
        ratio = (step - self.warmup) / (self.total - self.warmup)
        return self.lr + ratio * (self.min_lr - self.lr)


@dataclass(frozen=True)
class CosineRestarts:
    """SGDR (Loshchilov & Hutter 2017), as torch's ``CosineAnnealingWarmRestarts``, after a
    linear warm-up; steps from 0. Cycle ``i`` lasts ``period * mult**i`` steps and decays from
    ``lr`` to ``min_lr`` along a half cosine, then the rate jumps back to ``lr``."""

    lr: float
    period: int
    mult: int = 1
    warmup: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.period < 1 or self.mult < 1 or self.warmup < 0:
            raise ValueError(f"CosineRestarts needs period >= 1, mult >= 1 and warmup >= 0, "
                             f"got {self.period}, {self.mult}, {self.warmup}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        t, length = step - self.warmup, self.period
        while t >= length:
            t, length = t - length, length * self.mult
        coeff = 0.5 * (1.0 + math.cos(math.pi * t / length))
        return self.min_lr + coeff * (self.lr - self.min_lr)


@dataclass(frozen=True)
class Exponential:
    """``max(lr * gamma**(step - warmup), min_lr)`` after a linear warm-up, steps from 0 (as
    torch's ``ExponentialLR`` stepped once per optimizer step)."""

    lr: float
    gamma: float
    warmup: int = 0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0 or self.warmup < 0:
            raise ValueError(f"Exponential needs 0 < gamma <= 1 and warmup >= 0, got "
                             f"gamma={self.gamma}, warmup={self.warmup}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        return max(self.lr * self.gamma ** (step - self.warmup), self.min_lr)


Schedule = Constant | Noam | WarmupCosine | WarmupLinear | CosineRestarts | Exponential

SCHEDULES: dict[str, type] = {
    "constant": Constant,
    "noam": Noam,
    "cosine": WarmupCosine,
    "linear": WarmupLinear,
    "cosine_restarts": CosineRestarts,
    "exponential": Exponential,
}


def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """Build the schedule called ``name`` (a key of :data:`SCHEDULES`)."""
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    fields = dataclasses.fields(cls)
    allowed = [f.name for f in fields]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in kwargs]
    unexpected = [k for k in kwargs if k not in allowed]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected)}")
        raise ValueError(
            f"schedule {name!r}: {'; '.join(problems)} (arguments: {', '.join(allowed)})"
        )
    return cls(**kwargs)
