"""Round-to-nearest-even of float32 inputs by the arithmetic kernel (`stochastic_numba` in its
nearest mode, the path `quantize` takes for formats of ≤ 8 bits with a float32 table): bit for bit
the reference's results at every power of two and its neighbours, at every value, midpoint (the
ties) and neighbour of each format, on wide random data with NaN / ±inf / ±0 / subnormals, at odd
sizes, in place and into an output overlapping the input."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.formats.rounding import ROUNDING_MODES
from lowbit.kernels import dispatch
from tests.kernels.test_stochastic_kernel import ARITHMETIC_FORMATS, _format_points, _powers_of_two
from tests.kernels.test_stochastic_tables import same_bits, wide_random_with_specials

pytestmark = pytest.mark.skipif(lb.kernels.runtime.numba_problem() is not None, reason="numba does not load")

NEAREST = ROUNDING_MODES.index("nearest_even")
EIGHT_BIT = [s for s in ARITHMETIC_FORMATS if lb.parse_format(s).bits <= 8]


def _check(fmt, x: torch.Tensor) -> None:
    ref = fmt.quantize(x, backend="reference")
    fast = fmt.quantize(x, backend="numba")
    assert same_bits(fast, ref), f"{fmt}: {int((fast.view(torch.int32) != ref.view(torch.int32)).sum())} differ"


@pytest.mark.parametrize("spec", ["posit8_es2", "posit8_es0", "e4m3fn", "e5m2", "e2m1fn", "e4m3fnuz", "int8", "fixed8_f4"])
def test_nearest_arithmetic_path_covers_the_format(spec):
    fmt = lb.parse_format(spec)
    assert dispatch._float32_table(fmt, NEAREST) is not None and dispatch._stochastic32(fmt) is not None


@pytest.mark.parametrize("spec", EIGHT_BIT)
def test_equals_reference_at_powers_of_two_values_ties_and_neighbours(spec):
    fmt = lb.parse_format(spec)
    x = torch.cat([_powers_of_two(), _format_points(fmt)])
    _check(fmt, x)
    _check(fmt, x[1:])  # other block boundaries


@pytest.mark.parametrize("spec", EIGHT_BIT)
def test_equals_reference_on_wide_random_data_and_specials(spec):
    fmt = lb.parse_format(spec)
    _check(fmt, wide_random_with_specials((1e-40, 1e-30, 1e-7, 1e-3, 1.0, 300.0, 1e5, 1e30)))


@pytest.mark.parametrize("spec", ["e4m3fn", "posit8_es2", "int8", "e4m3fnuz"])
@pytest.mark.parametrize("size", [1, 2, 511, 513, 20_001, (1 << 21) + 3])
def test_equals_reference_at_odd_sizes_in_place_and_overlapping(spec, size):
    fmt = lb.parse_format(spec)
    x = torch.randn(size, generator=torch.Generator().manual_seed(size)) * 100
    x[::7] = 1e-6  # flagged by posits (cut exponent bits)
    x[3::11] = float("inf")
    expected = fmt.quantize(x, backend="reference")
    assert same_bits(fmt.quantize(x), expected)
    inplace = x.clone()
    fmt.quantize(inplace, out=inplace)
    assert same_bits(inplace, expected)
    shifted = torch.cat([x, torch.zeros(1)])
    fmt.quantize(shifted[:-1], out=shifted[1:])
    assert same_bits(shifted[1:], expected)
