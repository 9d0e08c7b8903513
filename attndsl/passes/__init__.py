"""Graph passes, one per file; `optimize` runs the default pipeline."""

from __future__ import annotations

import os

from attndsl.ir.graph import Graph
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.fuse_attention import fuse_attention
from attndsl.passes.fuse_bias_activation import fuse_bias_activation
from attndsl.passes.fuse_projections import fuse_projections
from attndsl.passes.fuse_residual_norm import fuse_residual_norm
from attndsl.passes.manager import PassManager, PassResult, verify

# -O0: the graph as written (for debugging); -O1: clean-ups and attention fusion; -O2 (the
# default): also one GEMM for the projections that read the same input, a linear's bias and
# activation in one in-place pass, and a post-norm residual add inside its layer_norm.
PIPELINES = {
    0: [],
    1: [("cse", eliminate_common_subexpressions), ("fuse_attention", fuse_attention),
        ("dce", eliminate_dead_code)],
    2: [("cse", eliminate_common_subexpressions), ("fuse_attention", fuse_attention),
        ("fuse_projections", fuse_projections), ("fuse_bias_activation", fuse_bias_activation),
        ("fuse_residual_norm", fuse_residual_norm), ("dce", eliminate_dead_code)],
}
DEFAULT_PIPELINE = PIPELINES[2]
OPT_LEVELS = tuple(PIPELINES)


def optimize(graph: Graph, debug: bool | None = None, level: int = 2) -> Graph:
    """Run the pipeline of `level` (0, 1, 2); debug (or ATTNDSL_DEBUG=1) verifies after
    every pass."""
    if level not in PIPELINES:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {level!r}")
    if debug is None:
        debug = os.environ.get("ATTNDSL_DEBUG") == "1"
    return PassManager(PIPELINES[level], debug=debug).run(graph)


__all__ = ["OPT_LEVELS", "PassManager", "PassResult", "optimize", "verify"]
