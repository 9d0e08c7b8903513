"""Feature maps of kernelized (linear) attention, as values a `linear_attention` node carries.

softmax(q k^T) v is replaced by phi(q) (phi(k)^T v) / phi(q) (phi(k)^T 1), which costs
O(T m Dv) instead of O(T^2): per query, the keys are summed into an m x Dv state once (the
causal form keeps a running state — a prefix sum — which is also the O(1) decoding state).

- `elu_plus_one` (Katharopoulos et al. 2020, "Transformers are RNNs"): phi(x) = elu(x) + 1,
  m = D features;
- `favor(m, seed)` (Choromanski et al. 2021, Performer FAVOR+): positive orthogonal random
  features phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x * scale^(1/2), so that
  E[phi(q) . phi(k)] = exp(scale q . k), the softmax kernel. W (m x D) is drawn from `seed`
  by `favor_matrix` — the same on every backend — and redrawn only when the seed changes.

`kernel_attr()` is the plain tuple the kernels receive: ``("elu_plus_one",)`` or
``("favor", m, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FEATURE_MAPS = ("elu_plus_one", "favor")


@dataclass(frozen=True)
class FeatureMap:
    kind: str                      # "elu_plus_one" | "favor"
    features: int = 0              # favor: m
    seed: int = 0                  # favor: the random features' seed

    def kernel_attr(self) -> tuple[Any, ...]:
        return (self.kind,) if self.kind == "elu_plus_one" else (self.kind, self.features,
                                                                 self.seed)

    def width(self, head_dim: int) -> int:
        """m, the number of features per head."""
        return head_dim if self.kind == "elu_plus_one" else self.features

    def __str__(self) -> str:
        if self.kind == "elu_plus_one":
            return "elu_plus_one"
        return f"favor(m={self.features}, seed={self.seed})"


ELU_PLUS_ONE = FeatureMap("elu_plus_one")
