"""The test run's own configuration (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import xdist_worker_threads


def test_xdist_workers_share_the_cores_instead_of_each_using_all_of_them():
    threads = xdist_worker_threads()
    if threads is None:
        pytest.skip("not running under pytest-xdist with several workers")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert threads == max(1, cores // workers)
    assert torch.get_num_threads() == threads


def test_a_single_process_run_keeps_torch_default_threads(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert xdist_worker_threads() is None
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert xdist_worker_threads() is None
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "64")
    assert xdist_worker_threads() == 1
