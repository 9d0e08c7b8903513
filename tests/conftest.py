"""Fixtures and parametrization shared by the test suite.

- `repo_root`: the repository root (located from this file, not the working directory);
- any test taking a `backend` argument runs once per backend in ("numpy", "torch", "cupy"),
  skipped with the backend's own reason where it is not usable here;
- any test taking a `spec_path` argument runs once per spec discovered in specs/.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from attndsl.backends import available_backends
from helpers import REPO_ROOT, spec_paths

BACKEND_NAMES = ("numpy", "torch", "cupy")


def pytest_configure(config: pytest.Config) -> None:
    """Tiny test models: one torch thread avoids OpenMP thread contention on busy machines
    (a 2-thread pool can run 100x slower when another process holds a core)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@functools.lru_cache(maxsize=1)
def _availability() -> dict[str, str | None]:
    return available_backends()


def backend_params(names: tuple[str, ...] = BACKEND_NAMES) -> list:
    """Every backend as a pytest.param, skipped with the reason where unavailable."""
    reasons = _availability()
    params = []
    for name in names:
        reason = reasons.get(name, f"unknown backend {name!r}")
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(
            reason is not None, reason=str(reason))))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_params())
    if "spec_path" in metafunc.fixturenames:
        paths = spec_paths()
        metafunc.parametrize("spec_path", paths, ids=[p.stem for p in paths])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
