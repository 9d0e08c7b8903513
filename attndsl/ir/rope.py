"""Rotary position embeddings (Su et al. 2021) as a value the attention node carries.

`Rope(theta, dims, layout, scaling)` rotates the first `dims` features of every query and
key head by position-dependent angles pos * inv_freq[i], inv_freq[i] = theta^(-2i / dims):
- layout "half": pairs (x[i], x[i + dims/2]) (`rotate_half`, GPT-NeoX / LLaMA / HF);
- layout "interleaved": pairs (x[2i], x[2i + 1]) (GPT-J, the RoFormer paper).
Features past `dims` pass through (partial rotary). Query positions are offset like the
pattern's (the last Tq of Tk positions), so positions stay right under the KV cache.

Scaling (context extension):
- `linear(f)`: positions divided by f (Chen et al. 2023, position interpolation);
- `ntk(f)`: theta * f^(dims / (dims - 2)) ("NTK-aware", bloc97);
- `llama3(factor, low_freq_factor, high_freq_factor, original_max_position)`: Meta's
  wavelength-dependent interpolation (as HF `rope_type="llama3"`).

`kernel_attr()` is the plain tuple the kernels receive:
``(theta, dims, layout, scaling)`` with `scaling` one of ``("none",)``, ``("linear", f)``,
``("ntk", f)``, ``("llama3", factor, low, high, original_max_position)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUTS = ("half", "interleaved")


@dataclass(frozen=True)
class RopeScaling:
    kind: str                      # "linear" | "ntk" | "llama3"
    params: tuple[float, ...]

    def kernel_attr(self) -> tuple[Any, ...]:
        return (self.kind, *self.params)

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(f'{p:g}' for p in self.params)})"


@dataclass(frozen=True)
class Rope:
    theta: float = 10000.0
    dims: int | None = None        # None: the whole head (resolved by the attention node)
    layout: str = "half"
    scaling: RopeScaling | None = None

    def kernel_attr(self) -> tuple[Any, ...]:
        scaling = self.scaling.kernel_attr() if self.scaling else ("none",)
        return (float(self.theta), self.dims, self.layout, scaling)

    def __str__(self) -> str:
        parts = [f"theta={self.theta:g}", f"dims={self.dims}", f"layout={self.layout!r}"]
        if self.scaling:
            parts.append(f"scaling={self.scaling}")
        return f"rope({', '.join(parts)})"
