"""Shared test configuration.

Hypothesis profiles: ``default`` (random examples, no deadline), ``ci`` (derandomized, so a CI
run is reproducible) and ``thorough`` (3000 examples, for bug hunts), chosen with the
environment: ``CI`` set -> ``ci``; ``HYPOTHESIS_PROFILE`` names a profile explicitly.

Under pytest-xdist (``make test``: ``-n auto``) each worker gets an equal share of the cores for
torch's (and so lowbit's numba kernels') intra-op threads: with every worker on every core, the
threads oversubscribe the machine and spin (the posit8 training test took 106 s of CPU with 2
workers × 2 threads on 2 cores, 12 s with 1 thread each).

``LOWBIT_TEST_BACKEND`` (optional: ``reference`` or ``numba``) runs every test under
``lowbit.kernels.use_backend(...)``; unset, tests use lowbit's default dispatch, as users do.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


@pytest.fixture(autouse=True)
def _lowbit_backend():
    name = os.environ.get("LOWBIT_TEST_BACKEND")
    if not name:
        yield
        return
    from lowbit.kernels import use_backend

    with use_backend(name):
        yield


def xdist_worker_threads() -> "int | None":
    """Intra-op threads of one pytest-xdist worker (its share of the usable cores), or None when
    not running as one of several xdist workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if not os.environ.get("PYTEST_XDIST_WORKER") or workers < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def pytest_configure(config):
    threads = xdist_worker_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    # hypothesis' reporting of a failing example imports mypy_extensions.TypedDict, deprecated;
    # with filterwarnings=error that warning would hide the real failure behind an INTERNALERROR
    config.addinivalue_line("filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
