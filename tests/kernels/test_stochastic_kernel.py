"""Stochastic rounding of float32 inputs by arithmetic on their bit patterns
(`lowbit.kernels.stochastic_numba`, the path `quantize` takes first): bit for bit the reference's
results at every power of two and its neighbours, at every value, midpoint and neighbour of each
format, on wide random data with NaN / ±inf / ±0 / subnormals, in place and out of place, with and
without the bucket tables for the flagged elements; its uniforms are the stream's, split exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.formats.rounding import draw_seed, uniform_stream
from lowbit.kernels import dispatch, stochastic_numba
from tests.kernels.test_stochastic_tables import assert_out_semantics, same_bits, wide_random_with_specials

pytestmark = pytest.mark.skipif(lb.kernels.runtime.numba_problem() is not None, reason="numba does not load")

# every family and its corner cases: es and scales (posits up to 32 bits), NaN / inf / zero
# policies, no subnormals, saturation, unsigned grids, wide minifloats
ARITHMETIC_FORMATS = [
    "posit8_es2", "posit8_es0", "posit8_es2_s-3", "posit6_es1_s-4", "posit4_es0", "posit12_es1", "posit16_es1",
    "posit16_es2", "posit20_es3", "posit32_es2", "posit8_es2_s128", "posit16_es1_s-128",
    "e4m3fn", "e5m2", "e2m1fn", "e3m2fn", "e4m3fnuz", "e5m2fnuz", "e4m3", "e4m3_sat", "e4m3fn_sat", "e5m10",
    "e6m1",
    "fixed8_f4", "fixed8_f0", "fixed6_f7", "ufixed8_f4", "int8", "int4", "uint8", "int16",
]


def _patterns(values: torch.Tensor) -> torch.Tensor:
    """float32 values and their neighbours one and two patterns away, both signs."""
    v = values.to(torch.float32).abs()
    v = v[torch.isfinite(v)]
    bits = v.view(torch.int32)
    near = torch.cat([bits + d for d in (-2, -1, 0, 1, 2)])
    near = near[(near >= 0) & (near < 0x7F800000)]
    f = near.view(torch.float32)
    return torch.cat([f, -f])


def _powers_of_two() -> torch.Tensor:
    return _patterns(torch.tensor([2.0**e for e in range(-149, 128)], dtype=torch.float64))


def _format_points(fmt) -> torch.Tensor:
    """Every value of the format (≤ 16 bits) or a spread of them (wider), their midpoints, and
    the float32 neighbours of both."""
    if fmt.bits <= 16:
        vals = fmt.values().to(torch.float64)
    else:
        x = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        vals = fmt.quantize(x * torch.logspace(-30, 30, 200_000, dtype=torch.float64), backend="reference")
    vals = torch.unique(vals[torch.isfinite(vals)].abs())
    mids = (vals[1:] + vals[:-1]) / 2
    return _patterns(torch.cat([vals, mids]))


def _check(fmt, x: torch.Tensor, seed: int) -> None:
    ref = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed), backend="reference")
    fast = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed), backend="numba")
    assert same_bits(fast, ref), f"{fmt}: {int((fast.view(torch.int32) != ref.view(torch.int32)).sum())} differ"


@pytest.mark.parametrize("spec", ARITHMETIC_FORMATS)
def test_arithmetic_path_covers_the_format(spec):
    assert dispatch._stochastic32(lb.parse_format(spec)) is not None


@pytest.mark.parametrize("spec", ARITHMETIC_FORMATS)
def test_equals_reference_at_powers_of_two_values_midpoints_and_neighbours(spec):
    fmt = lb.parse_format(spec)
    x = torch.cat([_powers_of_two(), _format_points(fmt)])
    for seed in (0, 1):
        _check(fmt, x, seed)
        _check(fmt, x[:3000], seed)  # below the bucket tables' size: the element kernels finish flagged elements


@pytest.mark.parametrize("spec", ARITHMETIC_FORMATS)
def test_equals_reference_on_wide_random_data_and_specials(spec):
    fmt = lb.parse_format(spec)
    x = wide_random_with_specials((1e-40, 1e-30, 1e-7, 1e-3, 1.0, 300.0, 1e5, 1e30))
    _check(fmt, x, 9)


@pytest.mark.parametrize("spec", ["e4m3fn", "posit8_es2", "posit16_es1", "int8"])
@pytest.mark.parametrize("size", [1, 2, 511, 513, 4095, 20_001])
def test_equals_reference_at_odd_sizes_in_place_and_out_of_place(spec, size):
    fmt = lb.parse_format(spec)
    x = torch.randn(size, generator=torch.Generator().manual_seed(size)) * 3
    x[::7] = 1e-6  # flagged by posits (cut exponent bits), ordinary for the others
    assert_out_semantics(fmt, x)


@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fnuz", "posit16_es1"])
def test_runs_of_flagged_and_ordinary_blocks_equal_reference(spec):
    # posit8_es2 flags |x| < 2^-12 (cut exponent bits): after a mostly flagged block the kernel
    # serves 31 blocks by the bucket tables, then tries the arithmetic again
    fmt = lb.parse_format(spec)
    g = torch.Generator().manual_seed(12)
    parts = [torch.randn(n, generator=g) * scale for n, scale in
             [(512 * 40, 1e-6), (512 * 40 + 17, 1.0), (300, 1e-6), (512 * 3, 1.0), (512 * 70, 1e-3), (999, 10.0)]]
    x = torch.cat(parts)
    x[::4099] = float("nan")
    _check(fmt, x, 4)
    _check(fmt, x[5:], 4)


def test_strided_input_equals_reference():
    fmt = lb.parse_format("e5m2")
    x = torch.randn(300, 200, generator=torch.Generator().manual_seed(4)).T
    expected = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(8), backend="reference")
    assert same_bits(fmt.quantize(x, "stochastic", torch.Generator().manual_seed(8)), expected)


@pytest.mark.parametrize("spec", ["e4m3fn", "e5m2", "int8", "fixed8_f4"])
def test_a_uniform_equal_to_the_fraction_rounds_down(spec):
    # x = u_i · Q below the format's smallest spacing Q: the fraction (x − 0) / Q is u_i itself
    # wherever u_i has at most 24 significant bits; stochastic rounding goes up only if u_i < p
    fmt = lb.parse_format(spec)
    spacing = {"e4m3fn": 2.0**-9, "e5m2": 2.0**-16, "int8": 1.0, "fixed8_f4": 2.0**-4}[spec]
    n = 200_000
    u = uniform_stream(draw_seed(torch.Generator().manual_seed(11)), 0, n)
    x = (u * spacing).to(torch.float32)
    exact = x.to(torch.float64) == u * spacing
    assert int(exact.sum()) > 100  # about 1 in 256 (u's last 8 bits zero)
    ref = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(11), backend="reference")
    fast = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(11))
    assert same_bits(fast, ref)


@pytest.mark.parametrize("start", [0, 1, 2, 7, 1 << 33])
@pytest.mark.parametrize("count", [0, 1, 2, 5, 512])
def test_uniform_halves_add_up_to_the_stream_exactly(start, count):
    seed = 987654321
    high = np.zeros(512, dtype=np.float32)
    low = np.zeros(512, dtype=np.float32)
    stochastic_numba.fill_halves(high, low, seed, start, count)
    expected = uniform_stream(seed, start, count).numpy()
    assert (high[:count].astype(np.float64) + low[:count].astype(np.float64)).tolist() == expected.tolist()
    assert all(float(h) * 2**24 == int(float(h) * 2**24) for h in high[:count])  # the top 24 bits only
    assert all(float(lo) < 2**-24 for lo in low[:count])


def test_formats_outside_the_arithmetic_are_left_to_the_tables_and_element_kernels():
    # spacings below 2^-126 (bfloat16's subnormals: 2^-133; e8m0fnu's 2^-127) are not normal
    # float32s; posit scales beyond ±128 leave the int32 exponent-field arithmetic
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(6))
    for spec in ("e8m0fnu", "e8m7", "posit8_es2_s976", "posit16_es1_s-972"):
        assert dispatch._stochastic32(lb.parse_format(spec)) is None
        _check(lb.parse_format(spec), x, 2)
