"""Graph passes, one per file; `optimize` runs the default pipeline."""

from __future__ import annotations

import os

from attndsl.ir.graph import Graph
from attndsl.passes.cse import eliminate_common_subexpressions
from attndsl.passes.dce import eliminate_dead_code
from attndsl.passes.fuse_attention import fuse_attention
from attndsl.passes.manager import PassManager, PassResult, verify

DEFAULT_PIPELINE = [
    ("cse", eliminate_common_subexpressions),
    ("fuse_attention", fuse_attention),
    ("dce", eliminate_dead_code),
]


def optimize(graph: Graph, debug: bool | None = None) -> Graph:
    """Run the default pipeline; debug (or ATTNDSL_DEBUG=1) verifies after every pass."""
    if debug is None:
        debug = os.environ.get("ATTNDSL_DEBUG") == "1"
    return PassManager(DEFAULT_PIPELINE, debug=debug).run(graph)


__all__ = ["PassManager", "PassResult", "optimize", "verify"]
