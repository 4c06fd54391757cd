"""Stochastic rounding of float32 inputs by bucket tables (`lowbit.kernels.stochastic_tables`):
the same bits as the reference for every slot's boundary floats of every ≤ 8-bit format, and the
stream the kernels draw equals an independent splitmix64.

The tables serve the arithmetic kernel's flagged elements and the formats it does not cover
(`quantize` takes its arithmetic first): the tables-only kernel is called directly here."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.formats.rounding import draw_seed, uniforms_at
from lowbit.kernels import dispatch, numba_cpu, stochastic_numba, stochastic_tables

pytestmark = pytest.mark.skipif(lb.kernels.runtime.numba_problem() is not None, reason="numba does not load")

# every family and the corner cases of each: es, scales, NaN / inf policies, subnormals, grids
TABLE_FORMATS = [
    "posit8_es0", "posit8_es1", "posit8_es2", "posit8_es2_s-3", "posit6_es1", "posit4_es0", "posit5_es3",
    "e4m3fn", "e5m2", "e2m1fn", "e3m2fn", "e2m3fn", "e4m3fnuz", "e5m2fnuz", "e4m3", "e3m4",
    "fixed8_f4", "fixed8_f0", "fixed6_f7", "int8", "int4", "uint8",
]


def _boundary_floats() -> torch.Tensor:
    """Per bucket of 2^16 float32 patterns: its first two, middle and last two patterns."""
    top = torch.arange(1 << 16, dtype=torch.int64) << 16
    pats = torch.cat([top, top | 1, top | 0x8000, top | 0xFFFE, top | 0xFFFF])
    pats = torch.where(pats >= 1 << 31, pats - (1 << 32), pats).to(torch.int32)
    return pats.view(torch.float32)


def _table_kernel(fmt, x: torch.Tensor, seed: int) -> torch.Tensor:
    """quantize(x, "stochastic") by the bucket-table kernel itself, with the generator seed ``seed``."""
    tables = stochastic_tables.float32_tables(fmt)
    out = torch.empty_like(x)
    flags, params = dispatch._TABLES_ONLY
    kernel = numba_cpu.SERIAL[stochastic_numba.stochastic_float32(*flags, False)]
    kernel(x.view(torch.int32).numpy(), x.numpy(), *params, *tables.arrays, tables.divide,
           draw_seed(torch.Generator().manual_seed(seed)), out.numpy())
    return out


def wide_random_with_specials(scales: "tuple[float, ...]" = (1e-30, 1e-7, 1e-3, 1.0, 300.0, 1e5, 1e30)) -> torch.Tensor:
    """Normal samples at each scale, NaN / ±inf / ±0 sprinkled in, shuffled (shared with
    test_stochastic_kernel)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(len(scales), 280_000 // len(scales), generator=g) * torch.tensor(scales)[:, None]).reshape(-1)
    x[::997] = float("nan")
    x[1::991] = float("inf")
    x[2::983] = -float("inf")
    x[3::977] = -0.0
    x[4::971] = 0.0
    return x[torch.randperm(x.numel(), generator=g)]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(a) & torch.isnan(b)
    return bool(((a.view(torch.int32) == b.view(torch.int32)) | nan).all())


@pytest.mark.parametrize("spec", TABLE_FORMATS)
def test_table_path_equals_reference_at_every_slot_boundary(spec):
    fmt = lb.parse_format(spec)
    tables = stochastic_tables.float32_tables(fmt)
    assert tables is not None, f"{spec}: every ≤ 8-bit format of these families has tables"
    x = _boundary_floats()
    for seed in (0, 1):
        fast = _table_kernel(fmt, x, seed)
        ref = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed), backend="reference")
        assert same_bits(fast, ref), spec
        public = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed), backend="numba")
        assert same_bits(public, ref), spec


@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "e5m2", "int8"])
def test_table_path_equals_reference_on_wide_random_data_and_specials(spec):
    fmt = lb.parse_format(spec)
    x = wide_random_with_specials()
    fast = _table_kernel(fmt, x, 9)
    ref = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(9), backend="reference")
    assert same_bits(fast, ref)


def test_kernel_divides_only_where_a_gap_is_not_a_power_of_two():
    # posit8_es2 cuts exponent bits at its extreme regimes: gaps like 2^18 - 2^16
    assert stochastic_tables.float32_tables(lb.parse_format("posit8_es2")).divide
    assert not stochastic_tables.float32_tables(lb.parse_format("e4m3fn")).divide
    assert not stochastic_tables.float32_tables(lb.parse_format("posit8_es0")).divide


def test_wider_formats_have_no_tables():
    assert stochastic_tables.float32_tables(lb.parse_format("posit16_es1")) is None
    assert stochastic_tables.float32_tables(lb.parse_format("e5m10")) is None


def assert_out_semantics(fmt, x: torch.Tensor, seed: int = 3) -> None:
    """quantize(x, "stochastic") equals the reference into a fresh tensor, in place, and into an
    output overlapping the input one element on (shared with test_stochastic_kernel)."""
    expected = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed), backend="reference")
    assert same_bits(fmt.quantize(x, "stochastic", torch.Generator().manual_seed(seed)), expected)
    inplace = x.clone()
    fmt.quantize(inplace, "stochastic", torch.Generator().manual_seed(seed), out=inplace)
    assert same_bits(inplace, expected)
    shifted = torch.cat([x, torch.zeros(1)])
    fmt.quantize(shifted[:-1], "stochastic", torch.Generator().manual_seed(seed), out=shifted[1:])
    assert same_bits(shifted[1:], expected)


def test_tables_only_path_keeps_in_place_and_out_semantics():
    # e8m0fnu's spacing reaches 2^-127: quantize takes the bucket tables for every element
    fmt = lb.parse_format("e8m0fnu")
    assert dispatch._stochastic32(fmt) is None and stochastic_tables.float32_tables(fmt) is not None
    assert_out_semantics(fmt, torch.randn(50_000, generator=torch.Generator().manual_seed(2)))


# ------------------------------------------------------------------------------ the stream
def _splitmix64(state: int) -> int:
    """Vigna's splitmix64 output for one state (pure Python, arbitrary precision ints)."""
    mask = (1 << 64) - 1
    z = state & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _oracle_uniform(seed: int, i: int) -> float:
    h = _splitmix64(seed + (i // 2 + 1) * 0x9E3779B97F4A7C15)
    half = h >> 32 if i % 2 == 0 else h & 0xFFFFFFFF
    return half / 2**32


@pytest.mark.parametrize("seed", [0, 1, (1 << 62) - 1, 123456789])
def test_stream_is_splitmix64_halves(seed):
    index = torch.tensor([0, 1, 2, 3, 4, 5, 1001, 1 << 40, (1 << 40) + 1], dtype=torch.int64)
    got = uniforms_at(seed, index).tolist()
    assert got == [_oracle_uniform(seed, int(i)) for i in index]
