"""Reformer's LSH attention (Kitaev et al. 2020) as a value an `lsh_attention` node carries.

Queries and keys are shared (k = q / |q|). Per hashing round r, positions are hashed by a
random rotation R_r [D, buckets/2] (angular LSH: bucket = argmax([k R_r, -k R_r])), sorted
by (bucket, position), cut into chunks of `chunk` positions, and each chunk attends to
itself and the chunk before it (the first chunk to the last), only to keys of its own
bucket (and, causal, not later ones); a position attends to itself only when it has no
other key. The rounds' outputs are combined with weights softmax_r(logsumexp of each
round's scores), as trax does. The rotations come from `seed` through NumPy's generator on
every backend.

`kernel_attr()` is the plain tuple the kernels receive:
``(buckets, rounds, chunk, causal, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LSH:
    buckets: int = 32
    rounds: int = 2
    chunk: int = 64
    causal: bool = False
    seed: int = 0

    def kernel_attr(self) -> tuple[Any, ...]:
        return (self.buckets, self.rounds, self.chunk, self.causal, self.seed)

    def __str__(self) -> str:
        return (f"lsh(buckets={self.buckets}, rounds={self.rounds}, chunk={self.chunk}, "
                f"causal={'true' if self.causal else 'false'}, seed={self.seed})")
