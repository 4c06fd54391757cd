"""Concurrent calls from several Python threads give exactly the single-threaded results.

Four threads (posit8_es2, e5m2, fixed8_f4, int4; deterministic and stochastic with their own
generators; encode and quantize; numba and reference backends mixed) start together on 10^6-element
tensors, several rounds in a row; every result must equal, bit for bit, the result computed
beforehand in the main thread alone.
"""

from __future__ import annotations

import threading

import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_codes_equal, assert_same_bits, random_binade_floats

N = 10**6
ROUNDS = 10
SPECS = ["posit8_es2", "e5m2", "fixed8_f4", "int4"]


def _input(seed: int) -> torch.Tensor:
    return torch.from_numpy(random_binade_floats(N, -12, 12, seed=seed, dtype="float32"))


def _job(spec: str, op: str, mode: str, seed: int, backend: str):
    fmt = lb.parse_format(spec)
    x = _input(seed)

    def call() -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed) if mode == "stochastic" else None
        return getattr(fmt, op)(x, mode, gen, backend=backend)

    return f"{spec} {op} {mode} {backend}", x, call


def _run_concurrently(jobs) -> None:
    expected = [call() for _, _, call in jobs]  # single-threaded, before any thread starts
    barrier = threading.Barrier(len(jobs))
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(jobs))}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(ROUNDS):
                barrier.wait(timeout=60)
                results[i].append(jobs[i][2]())
        except BaseException as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, f"worker raised: {errors[0]!r}"
    for i, (name, x, _) in enumerate(jobs):
        assert len(results[i]) == ROUNDS, name
        for got in results[i]:
            if got.dtype.is_floating_point:
                assert_same_bits(got, expected[i], x, what=name)
            else:
                assert_codes_equal(got, expected[i], x, what=name)


@pytest.mark.parametrize("op", ["quantize", "encode"])
@pytest.mark.parametrize("mode", ["nearest_even", "stochastic"])
def test_four_threads_on_different_formats_get_their_single_threaded_results(op, mode):
    _run_concurrently([_job(spec, op, mode, seed=i + 1, backend="numba") for i, spec in enumerate(SPECS)])


def test_threads_mixing_modes_ops_and_backends_get_their_single_threaded_results():
    jobs = [
        _job("posit8_es2", "quantize", "stochastic", 11, "numba"),
        _job("e5m2", "encode", "floor", 12, "numba"),
        _job("fixed8_f4", "quantize", "nearest_away", 13, "reference"),
        _job("int4", "quantize", "stochastic", 14, "numba"),
    ]
    _run_concurrently(jobs)


def test_threads_on_the_same_format_and_input_with_their_own_generators_get_their_own_results():
    fmt = lb.parse_format("posit8_es2")
    x = _input(21)
    jobs = []
    for seed in (1, 2, 3, 4):
        jobs.append((f"seed {seed}", x, lambda s=seed: fmt.quantize(x, "stochastic", torch.Generator().manual_seed(s),
                                                                    backend="numba")))
    _run_concurrently(jobs)
