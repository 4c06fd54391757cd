"""Stochastic rounding: seeded, always a neighbour, unbiased, exact values fixed.

semantics.md: with lo <= |x| <= hi the neighbouring representable magnitudes, round up to hi
with probability (|x| - lo) / (hi - lo), so E[q(x)] = x (posits too: the probability is linear in
the two neighbours' values, whatever the bit-string rounding point is).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_codes_equal, assert_floats_identical

SPECS = [
    "posit8_es2", "posit6_es1_s-4", "posit16_es1", "posit8_es0",
    "e4m3fn", "e5m2", "e2m1fn", "e3m2fn", "e8m0fnu", "e3m4", "e4m3fnuz", "e5m10", "e8m7",
    "fixed8_f4", "ufixed8_f4", "int4", "int8n",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _interior_points(fmt, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n random points strictly inside gaps of the value table (posits: away from the zero gaps)."""
    values = fmt.values().numpy()
    lo, hi = values[:-1], values[1:]
    if isinstance(fmt, lb.Posit):
        keep = (lo != 0) & (hi != 0)
        lo, hi = lo[keep], hi[keep]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, lo.size, n)
    x = lo[idx] + (hi[idx] - lo[idx]) * rng.uniform(0.01, 0.99, n)
    ok = (x > lo[idx]) & (x < hi[idx])
    return x[ok], lo[idx][ok], hi[idx][ok]


@pytest.mark.parametrize("spec", SPECS)
def test_same_generator_seed_reproduces_encode_and_quantize(spec):
    fmt = lb.parse_format(spec)
    x, _, _ = _interior_points(fmt, 5000, seed=1)
    t = torch.from_numpy(x)
    assert_codes_equal(fmt.encode(t, "stochastic", _gen(123)), fmt.encode(t, "stochastic", _gen(123)), t)
    assert_floats_identical(fmt.quantize(t, "stochastic", _gen(9)), fmt.quantize(t, "stochastic", _gen(9)), t)
    # a reseeded generator replays a sequence of calls
    g1, g2 = _gen(5), _gen(5)
    first = [fmt.quantize(t, "stochastic", g1) for _ in range(3)]
    second = [fmt.quantize(t, "stochastic", g2) for _ in range(3)]
    for a, b in zip(first, second):
        assert_floats_identical(a, b, t)


@pytest.mark.parametrize("spec", SPECS)
def test_different_seeds_and_successive_draws_give_different_roundings(spec):
    fmt = lb.parse_format(spec)
    x, _, _ = _interior_points(fmt, 5000, seed=2)
    t = torch.from_numpy(x)
    assert not torch.equal(fmt.encode(t, "stochastic", _gen(1)), fmt.encode(t, "stochastic", _gen(2)))
    g = _gen(3)
    assert not torch.equal(fmt.encode(t, "stochastic", g), fmt.encode(t, "stochastic", g))


@pytest.mark.parametrize("spec", SPECS)
def test_stochastic_result_is_always_one_of_the_two_neighbours_and_both_occur(spec):
    fmt = lb.parse_format(spec)
    x, lo, hi = _interior_points(fmt, 20000, seed=3)
    q = fmt.quantize(torch.from_numpy(x), "stochastic", _gen(11)).numpy()
    assert np.all((q == lo) | (q == hi))
    assert np.any(q == lo) and np.any(q == hi)


@pytest.mark.parametrize("spec", SPECS)
def test_stochastic_rounding_is_unbiased_within_six_bernoulli_sigmas(spec):
    fmt = lb.parse_format(spec)
    values = fmt.values().numpy()
    # a few gaps: near the smallest values, near 1, near the largest; p = 0.03, 0.3, 0.5, 0.8
    positive = values[values > 0]
    picks = sorted({1, positive.size // 2, positive.size - 3})
    draws = 20_000
    for j in picks:
        lo, hi = positive[j], positive[j + 1]
        for p in (0.03, 0.3, 0.5, 0.8):
            for sign in (1.0, -1.0) if values[0] < 0 else (1.0,):
                x = sign * (lo + p * (hi - lo))
                a = abs(x)
                p_true = (a - lo) / (hi - lo)  # p after float64 rounding of x
                xs = torch.full((draws,), x, dtype=torch.float64)
                q = fmt.quantize(xs, "stochastic", _gen(j * 100 + int(p * 10)))
                mean = float(q.mean())
                sigma = (hi - lo) * math.sqrt(p_true * (1 - p_true) / draws)
                assert abs(mean - x) <= 6 * sigma, f"{spec}: x={x!r} mean {mean!r}, 6σ = {6 * sigma!r}"
                frac_up = float((q.abs() == hi).double().mean())
                assert abs(frac_up - p_true) <= 6 * math.sqrt(p_true * (1 - p_true) / draws)


@pytest.mark.parametrize("spec", SPECS)
def test_stochastic_rounding_never_moves_a_representable_value(spec):
    fmt = lb.parse_format(spec)
    v = fmt.values()
    for seed in range(5):
        assert_floats_identical(fmt.quantize(v, "stochastic", _gen(seed)), v, v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_stochastic_rounding_of_low_precision_inputs_returns_a_neighbour_in_the_input_dtype(dtype):
    fmt = lb.parse_format("e4m3fn")
    x = torch.tensor([1.03125, -1.03125, 0.3, 200.0], dtype=dtype)  # 1.03125: p = 0.25 between 1 and 1.125
    q = fmt.quantize(x.repeat(2000), "stochastic", _gen(4)).reshape(2000, 4)
    assert q.dtype == dtype
    allowed = [(1.0, 1.125), (-1.125, -1.0), (0.28125, 0.3125), (192.0, 208.0)]
    for j, (a, b) in enumerate(allowed):
        col = q[:, j].to(torch.float64)
        assert bool(((col == a) | (col == b)).all())
        assert bool((col == a).any()) and bool((col == b).any())


def test_without_a_generator_torch_manual_seed_makes_stochastic_rounding_reproducible():
    fmt = lb.parse_format("e4m3fn")
    x = torch.full((1000,), 1.03125)
    torch.manual_seed(1234)
    a = fmt.quantize(x, "stochastic")
    torch.manual_seed(1234)
    b = fmt.quantize(x, "stochastic")
    assert_floats_identical(a, b, x)
    assert bool(((a == 1.0) | (a == 1.125)).all()) and bool((a == 1.0).any()) and bool((a == 1.125).any())
