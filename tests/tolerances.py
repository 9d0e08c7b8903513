"""Numerical tolerances for comparing backends and references, defined in one place."""

TOLERANCES = {
    "float32": dict(rtol=1e-4, atol=1e-5),
    "float64": dict(rtol=1e-7, atol=1e-9),
}
