"""The quire kernels (`lowbit.kernels.quire`): every accumulation path and backend equals the
Fraction oracle rounded once, bit for bit, to nearest even and to odd."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from lowbit.kernels import available_backends
from lowbit.kernels import quire_torch
from lowbit.kernels.quire import accumulator_plan, quire_matmul
from lowbit.reference.quire import exact_dot

BACKENDS = available_backends()


def round_odd_float64(v: "Fraction | float") -> float:
    """Round-to-odd of an exact value to float64 (independent: Fractions and Python floats)."""
    if isinstance(v, float) or v == 0:
        return float(v)
    neg, x = v < 0, abs(v)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    while Fraction(2) ** e > x:
        e -= 1
    while Fraction(2) ** (e + 1) <= x:
        e += 1
    ulp_e = max(e, -1022) - 52
    if ulp_e + 53 > 1024:  # past the largest float64
        r = sys_max()
    else:
        q = x / Fraction(2) ** ulp_e
        fl = q.numerator // q.denominator
        if fl != q and fl % 2 == 0:
            fl += 1
        if fl >= 1 << 53 and ulp_e + 53 > 1023:
            r = sys_max()
        else:
            r = math.ldexp(float(fl), ulp_e)
    return -r if neg else r


def sys_max() -> float:
    return float(np.finfo(np.float64).max)


def oracle(a: torch.Tensor, b: torch.Tensor, odd: bool) -> torch.Tensor:
    al, bl = a.double().tolist(), b.double().tolist()
    out = []
    for g in range(len(al)):
        rows = []
        for row in al[g]:
            line = []
            for j in range(b.shape[2]):
                v = exact_dot(row, [bl[g][t][j] for t in range(b.shape[1])])
                if odd:
                    line.append(round_odd_float64(v))
                else:
                    line.append(v if isinstance(v, float) else float_rne(v))
            rows.append(line)
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64).reshape(a.shape[0], a.shape[1], b.shape[2])


def float_rne(v: Fraction) -> float:
    try:
        return v.numerator / v.denominator
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    an, en = actual.isnan(), expected.isnan()
    assert torch.equal(an, en), (actual, expected)
    a = torch.where(an, torch.zeros_like(actual), actual).view(torch.int64)
    e = torch.where(en, torch.zeros_like(expected), expected).view(torch.int64)
    bad = (a != e).nonzero()
    assert bad.numel() == 0, f"{len(bad)} differ, e.g. {actual[tuple(bad[0])].item()!r} != {expected[tuple(bad[0])].item()!r}"


def finite_patterns(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random finite bit patterns of dtype: every exponent, subnormals and zeros included."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype == torch.float64:
        raw = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
        x = torch.from_numpy(raw).view(torch.float64)
    else:
        raw = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int64).astype(np.int32)
        x = torch.from_numpy(raw).view(torch.float32)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    return x.reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_limbs_equal_oracle_over_the_whole_exponent_range(backend, odd, dtype):
    a = finite_patterns((2, 3, 7), dtype, 1)
    b = finite_patterns((2, 7, 4), dtype, 2)
    assert accumulator_plan(a.double(), b.double())["bits"] > 500  # really the wide accumulator
    assert_identical(quire_matmul(a, b, odd=odd, backend=backend), oracle(a, b, odd))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("odd", [False, True])
def test_subnormal_products_round_once_into_subnormals(backend, odd):
    # products far below 2**-1074 that add up to a float64 subnormal, plus a tie and a sticky bit
    tiny = 2.0**-1074
    a = torch.tensor([[[tiny, tiny, 2.0**-600, 2.0**-600], [2.0**-537, 2.0**-538, 2.0**-1000, 0.0]]],
                     dtype=torch.float64)
    b = torch.tensor([[[0.5], [0.5], [2.0**-500], [2.0**-520]]], dtype=torch.float64)
    assert_identical(quire_matmul(a, b, odd=odd, backend=backend), oracle(a, b, odd))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["float64", "int64", "limbs"])
def test_every_path_equals_oracle_on_cancelling_sums(backend, path):
    # the example and its x10 version; sums that cancel to 2 and to ties of float32
    a = torch.tensor([[[3.2e7, 1, -1, 8e7], [3.2e8, 1, -1, 8e8], [1.0, 2.0**-24, 0.0, 0.0],
                       [1.0, 2.0**-24, 2.0**-30, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[[4e7, 4e8, 1.0], [1, 1, 1.0], [-1, -1, 1.0], [-1.6e7, -1.6e8, 1.0]]], dtype=torch.float64)
    plan = accumulator_plan(a, b)
    if (path == "float64" and plan["bits"] > 53) or (path == "int64" and plan["bits"] > 62):
        with pytest.raises(ValueError, match="cannot hold"):
            quire_matmul(a, b, backend=backend, path=path)
        return
    for odd in (False, True):
        got = quire_matmul(a, b, odd=odd, backend=backend, path=path)
        assert_identical(got, oracle(a, b, odd))
    assert quire_matmul(a, b, backend=backend, path=path)[0, 0, 0].item() == 2.0
    assert quire_matmul(a, b, backend=backend, path=path)[0, 1, 1].item() == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["auto", "float64", "int64", "limbs"])
def test_small_integer_grids_take_every_path_exactly(backend, path):
    g = torch.Generator().manual_seed(3)
    a = (torch.randint(-127, 128, (3, 5, 40), generator=g).double() * 2.0**-7)
    b = (torch.randint(-127, 128, (3, 40, 6), generator=g).double() * 2.0**-3)
    assert_identical(quire_matmul(a, b, backend=backend, path=path), oracle(a, b, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int64_path_holds_sums_needing_up_to_62_bits(backend):
    # operands of 26 and 30 bits over k = 64: sums of 62 bits, beyond float64's 53
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-(2**25), 2**25, (1, 3, 64), generator=g).double()
    b = torch.randint(-(2**29), 2**29, (1, 64, 3), generator=g).double()
    a[0, 0, :] = 2.0**25 - 1
    b[0, :, 0] = 2.0**29 - 1
    assert 53 < accumulator_plan(a, b)["bits"] <= 62
    for odd in (False, True):
        assert_identical(quire_matmul(a, b, odd=odd, backend=backend, path="int64"), oracle(a, b, odd))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ieee_specials_follow_ieee(backend):
    inf, nan = math.inf, math.nan
    a = torch.tensor([[[inf, 1.0], [inf, 0.0], [inf, -inf], [nan, 0.0], [-inf, 2.0], [1e308, 1e308]]],
                     dtype=torch.float64)
    b = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    got = quire_matmul(a, b, backend=backend)
    assert_identical(got, oracle(a, b, False))
    assert got[0, 0, 0].item() == inf and got[0, 0, 1].isnan()
    assert got[0, 5, 0].item() == inf  # finite products whose exact sum overflows float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_all_zero_sums_are_zero(backend):
    for a, b in ((torch.zeros(1, 2, 0), torch.zeros(1, 0, 3)), (torch.zeros(1, 2, 4), torch.ones(1, 4, 3))):
        got = quire_matmul(a, b, backend=backend)
        assert_identical(got, torch.zeros(1, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("odd", [False, True])
def test_torch_rounding_equals_the_independent_rounding(odd):
    rng = np.random.default_rng(5)
    t = torch.from_numpy(rng.integers(0, 2**62, 2000, dtype=np.int64))
    t[:100] = torch.from_numpy(rng.integers(0, 2**60, 100, dtype=np.int64)) | (1 << 61)  # 62 bits
    t[100:200] >>= torch.from_numpy(rng.integers(0, 62, 100, dtype=np.int64))
    e = torch.from_numpy(rng.integers(-1200, 1000, 2000, dtype=np.int64))
    sticky = torch.from_numpy(rng.integers(0, 2, 2000)).bool() & (t >= 2**61)
    neg = torch.from_numpy(rng.integers(0, 2, 2000)).bool()
    got = quire_torch.round_to_float64(neg, t, e, sticky, odd)
    exp = []
    for n_, t_, e_, s_ in zip(neg.tolist(), t.tolist(), e.tolist(), sticky.tolist()):
        v = (Fraction(t_) + (Fraction(1, 3) if s_ else 0)) * Fraction(2) ** e_
        r = round_odd_float64(v) if odd else float_rne(v)
        exp.append(-r if n_ else r)
    assert_identical(got, torch.tensor(exp, dtype=torch.float64))


def test_bad_path_and_shapes_are_named():
    with pytest.raises(ValueError, match="path='fast'.*allowed: auto, float64, int64, limbs"):
        quire_matmul(torch.ones(1, 2, 2), torch.ones(1, 2, 2), path="fast")
    with pytest.raises(ValueError, match=r"\[G, m, k\] and \[G, k, n\]"):
        quire_matmul(torch.ones(2, 2), torch.ones(2, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("odd", [False, True])
def test_bits_far_below_a_float64_tie_decide_the_rounding(backend, odd):
    # 1 + 2^-53 is a float64 tie; a term 2^-200 (or -2^-200) far below the 62 leading bits of the
    # accumulator must still break it (the sticky bit), also past 2^-1074 and for negative sums
    rows = [[1.0, 2.0**-53, 2.0**-200], [1.0, 2.0**-53, -(2.0**-200)], [1.0, 2.0**-53, 0.0],
            [-1.0, -(2.0**-53), -(2.0**-1074)], [2.0**-1000, 2.0**-1053, 2.0**-1074],
            [2.0**60, 1.0, 2.0**-900]]
    a = torch.tensor([rows], dtype=torch.float64)
    b = torch.ones(1, 3, 1, dtype=torch.float64)
    got = quire_matmul(a, b, odd=odd, backend=backend)
    assert_identical(got, oracle(a, b, odd))
    if not odd:
        assert got[0, :4, 0].tolist() == [1.0 + 2.0**-52, 1.0, 1.0, -1.0 - 2.0**-52]
