"""Posits against SoftPosit, the reference C implementation of the Posit Standard.

SoftPosit covers posit8 (es=0), posit16 (es=1), posit32 (es=2) and posit_2 (es=2, any width
2..32). Its double -> posit conversion rounds to nearest, ties to even on the bit pattern, and
saturates (never 0 or NaR for a nonzero finite value), which is what lowbit's ``nearest_even``
must reproduce bit for bit. SoftPosit decodes NaR to ±inf; lowbit decodes it to NaN.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

softposit = pytest.importorskip("softposit")
_sp = softposit._softposit

import lowbit as lb  # noqa: E402
from lowbit.testing import (  # noqa: E402
    assert_codes_equal,
    assert_floats_identical,
    random_binade_floats,
    table_points,
)


# ----------------------------------------------------------------------------- SoftPosit access
def sp_encode(n: int, es: int, x: float) -> int:
    """SoftPosit's double -> posit bit pattern (as an unsigned n-bit integer)."""
    if (n, es) == (8, 0):
        return int(_sp.convertDoubleToP8(x).v)
    if (n, es) == (16, 1):
        return int(_sp.convertDoubleToP16(x).v)
    if (n, es) == (32, 2):
        return int(_sp.convertDoubleToP32(x).v)
    if es == 2:
        return int(_sp.convertDoubleToPX2(x, n).v) >> (32 - n)  # posit_2 keeps bits left-aligned
    raise ValueError(f"SoftPosit has no posit{n}_es{es}")


def sp_decode(n: int, es: int, code: int) -> float:
    """SoftPosit's posit -> double, with NaR mapped from SoftPosit's inf to NaN."""
    if (n, es) == (8, 0):
        v = _sp.convertP8ToDouble(softposit.posit8(bits=code).v)
    elif (n, es) == (16, 1):
        v = _sp.convertP16ToDouble(softposit.posit16(bits=code).v)
    elif (n, es) == (32, 2):
        v = _sp.convertP32ToDouble(softposit.posit32(bits=code).v)
    elif es == 2:
        v = _sp.convertPX2ToDouble(softposit.posit_2(bits=code, x=n).v)
    else:
        raise ValueError(f"SoftPosit has no posit{n}_es{es}")
    return math.nan if math.isinf(v) else float(v)


def sp_encode_all(n: int, es: int, xs: np.ndarray) -> np.ndarray:
    return np.fromiter((sp_encode(n, es, float(v)) for v in xs), dtype=np.int64, count=len(xs))


@functools.lru_cache(maxsize=None)
def sp_decode_all(n: int, es: int) -> np.ndarray:
    """SoftPosit's value of every code 0 .. 2**n - 1 (computed once per format, read-only)."""
    table = np.array([sp_decode(n, es, c) for c in range(1 << n)], dtype=np.float64)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=None)
def sp_encode_every_finite(n: int, es: int, dtype: torch.dtype) -> np.ndarray:
    """SoftPosit's code of every finite float16 or bfloat16 (in `_all_finite` order), computed once
    per (format, dtype) and shared by the tests that sweep them (read-only)."""
    codes = sp_encode_all(n, es, _all_finite(dtype).to(torch.float64).numpy())
    codes.flags.writeable = False
    return codes


# (n, es) pairs SoftPosit implements whose code tables are small enough to sweep exhaustively
EXHAUSTIVE = [(8, 0), (16, 1)] + [(n, 2) for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 16)]


def _fmt(n: int, es: int) -> lb.Posit:
    return lb.parse_format(f"posit{n}_es{es}")


# ----------------------------------------------------------------------------- decode
@pytest.mark.parametrize("n,es", EXHAUSTIVE, ids=lambda v: str(v))
def test_every_code_decodes_to_softposit_value_and_NaR_to_nan(n, es):
    fmt = _fmt(n, es)
    codes = torch.arange(1 << n, dtype=torch.int64)
    expected = sp_decode_all(n, es)
    assert math.isnan(expected[1 << (n - 1)]), "NaR must be SoftPosit's only non-real"
    assert_floats_identical(fmt.decode(codes, torch.float64), expected, codes)


def test_posit32_es2_decodes_like_softposit_on_sampled_codes():
    rng = np.random.default_rng(32)
    ends = [0, 1, 2, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, (1 << 32) - 1]
    codes = np.concatenate([rng.integers(0, 1 << 32, 20000), ends])
    expected = np.array([sp_decode(32, 2, int(c)) for c in codes])
    got = lb.parse_format("posit32_es2").decode(torch.from_numpy(codes), torch.float64)
    assert_floats_identical(got, expected, codes)


# ----------------------------------------------------------------------------- encode
@pytest.mark.parametrize("n,es", EXHAUSTIVE, ids=lambda v: str(v))
def test_encode_nearest_even_matches_softposit_on_values_midpoints_and_their_float64_neighbours(n, es):
    fmt = _fmt(n, es)
    table = sp_decode_all(n, es)
    pts = table_points(table[~np.isnan(table)])
    xs = np.concatenate(list(pts.values()))
    xs = np.concatenate([xs, -xs])
    got = fmt.encode(torch.from_numpy(xs))
    assert_codes_equal(got, sp_encode_all(n, es, xs), xs)


@pytest.mark.parametrize(
    "n,es,count,binades",
    [(8, 0, 100_000, 80), (16, 1, 100_000, 80), (32, 2, 20_000, 140)]
    + [(n, 2, 4_000, 140) for n in (11, 14, 17, 20, 24, 27, 31)],
    ids=lambda v: str(v),
)
def test_encode_nearest_even_matches_softposit_on_random_doubles_over_wide_binades(n, es, count, binades):
    xs = random_binade_floats(count, -binades, binades, seed=1000 * n + es)
    got = _fmt(n, es).encode(torch.from_numpy(xs))
    assert_codes_equal(got, sp_encode_all(n, es, xs), xs)


@pytest.mark.parametrize("n,es", [(8, 0), (16, 1), (32, 2), (6, 2), (8, 2), (20, 2)], ids=lambda v: str(v))
def test_zero_nan_and_infinities_encode_to_zero_and_NaR_like_softposit(n, es):
    xs = np.array([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf])
    nar = 1 << (n - 1)
    expected = np.array([0, 0, nar, nar, nar, nar])
    got = _fmt(n, es).encode(torch.from_numpy(xs))
    assert_codes_equal(got, expected, xs)
    assert_codes_equal(got, sp_encode_all(n, es, xs), xs, what="SoftPosit")


@pytest.mark.parametrize("n,es", [(8, 0), (16, 1), (32, 2), (5, 2), (8, 2)], ids=lambda v: str(v))
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero", "floor", "ceil", "stochastic"])
def test_nonzero_finite_values_saturate_to_minpos_or_maxpos_never_zero_or_NaR(n, es, rounding):
    fmt = _fmt(n, es)
    tiny = [5e-324, 1e-300, fmt.min_positive / 3, fmt.min_positive * 0.5]
    huge = [1.7976931348623157e308, 1e300, fmt.max * 3, fmt.max * 2]
    xs = np.array(tiny + huge + [-v for v in tiny] + [-v for v in huge])
    minpos, maxpos = 1, (1 << (n - 1)) - 1
    neg = lambda c: (1 << n) - c  # noqa: E731  two's complement
    expected = np.array([minpos] * 4 + [maxpos] * 4 + [neg(minpos)] * 4 + [neg(maxpos)] * 4)
    g = torch.Generator().manual_seed(5) if rounding == "stochastic" else None
    got = fmt.encode(torch.from_numpy(xs), rounding=rounding, generator=g)
    assert_codes_equal(got, expected, xs)
    if rounding == "nearest_even":
        assert_codes_equal(got, sp_encode_all(n, es, xs), xs, what="SoftPosit")


# ----------------------------------------------------------------------------- input precisions
def _all_finite(dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    return x[torch.isfinite(x)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,es", [(8, 0), (16, 1), (8, 2), (12, 2)], ids=lambda v: str(v))
def test_every_float16_and_bfloat16_input_encodes_like_softposit_of_its_exact_value(dtype, n, es):
    x = _all_finite(dtype)
    exact = x.to(torch.float64).numpy()  # float16/bfloat16 -> float64 is exact
    assert_codes_equal(_fmt(n, es).encode(x), sp_encode_every_finite(n, es, dtype), exact)


@pytest.mark.parametrize("n,es", [(8, 0), (16, 1), (32, 2)], ids=lambda v: str(v))
def test_float32_inputs_encode_like_softposit_of_their_exact_value(n, es):
    x32 = random_binade_floats(20_000, -100, 100, seed=77 + n, dtype=np.float32)
    exact = x32.astype(np.float64)
    assert_codes_equal(_fmt(n, es).encode(torch.from_numpy(x32)), sp_encode_all(n, es, exact), exact)


def test_posit16_quantize_of_every_float16_equals_softposit_value_rounded_once_to_float16_and_saturated():
    # quantize returns the posit value rounded (nearest even, once) to the input dtype, saturating
    # at float16's max instead of overflowing: 65504 -> posit 65536 -> float16 65504, not inf.
    x = _all_finite(torch.float16)
    values = sp_decode_all(16, 1)[sp_encode_every_finite(16, 1, torch.float16)]  # SoftPosit encode, then decode
    with np.errstate(all="ignore"):
        expected = np.clip(values, -65504.0, 65504.0).astype(np.float16)  # numpy rounds once
    assert_floats_identical(lb.parse_format("posit16_es1").quantize(x), torch.from_numpy(expected), x)


def test_posit16_quantize_float16_max_saturates_to_float16_max_not_inf():
    fmt = lb.parse_format("posit16_es1")
    x = torch.tensor([65504.0, -65504.0], dtype=torch.float16)
    assert_codes_equal(fmt.encode(x), [0x7FC0, 0x8040])  # ±65536 = ±2^(2·8 + 0): regime 1{9}0, e = 0, f = 0000
    got = fmt.decode(fmt.encode(x), torch.float64)
    assert_floats_identical(got, torch.tensor([65536.0, -65536.0], dtype=torch.float64))
    assert_floats_identical(fmt.quantize(x), torch.tensor([65504.0, -65504.0], dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_posit16_quantize_of_every_bfloat16_equals_softposit_value_rounded_once_to_the_input_dtype(dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = _all_finite(torch.bfloat16).to(dtype)
    values = sp_decode_all(16, 1)[sp_encode_every_finite(16, 1, torch.bfloat16)]  # SoftPosit encode, then decode
    v32 = values.astype(np.float32)  # exact: a posit16 value has at most 13 significant bits
    assert np.array_equal(v32.astype(np.float64), values)
    if dtype == torch.bfloat16:  # ml_dtypes rounds float32 -> bfloat16 once
        want = torch.from_numpy(v32.astype(ml_dtypes.bfloat16).view(np.int16)).view(torch.bfloat16)
    else:
        want = torch.from_numpy(v32)
    assert_floats_identical(lb.parse_format("posit16_es1").quantize(x), want, x)


# ----------------------------------------------------------------------------- beyond SoftPosit
@pytest.mark.parametrize(
    "spec,n,es,shift",
    [
        ("posit8_es2_s5", 8, 2, 5), ("posit8_es0_s-3", 8, 0, -3), ("posit16_es1_s20", 16, 1, 20),
        ("posit12_es2_s-9", 12, 2, -9),
    ],
)
def test_scaled_posit_encodes_x_like_softposit_encodes_x_over_2_to_the_scale(spec, n, es, shift):
    # value(code) = 2^s · posit value, so encode_s(x) = encode(x / 2^s) (power-of-two scaling is exact)
    table = sp_decode_all(n, es) if n <= 16 else None
    pts = table_points(table[~np.isnan(table)])
    xs = np.concatenate(list(pts.values()) + [random_binade_floats(20_000, -60, 60, seed=n + shift)])
    xs = np.concatenate([xs, -xs]) * 2.0**shift
    got = lb.parse_format(spec).encode(torch.from_numpy(xs))
    assert_codes_equal(got, sp_encode_all(n, es, xs / 2.0**shift), xs)
    codes = torch.arange(1 << n)
    assert_floats_identical(lb.parse_format(spec).decode(codes, torch.float64), table * 2.0**shift, codes)


@pytest.mark.parametrize(
    "spec,code,value",
    [
        # es = 3 (useed 2^8): 1 = 0 10 000 00, 2 = 0 10 001 00, 3 = 0 10 001 10, 0.5 = 0 01 111 00
        ("posit8_es3", 0x40, 1.0), ("posit8_es3", 0x44, 2.0), ("posit8_es3", 0x46, 3.0), ("posit8_es3", 0x3C, 0.5),
        ("posit8_es3", 0x7F, 2.0**48), ("posit8_es3", 0x01, 2.0**-48), ("posit8_es3", 0xC0, -1.0),
        # es = 5 (useed 2^32): 2 = 0 10 00001, 2^16 = 0 10 10000, 2^32 = 0 110 0000 (5th exponent bit cut: 0),
        # 0x61 = 0 110 0001 -> exponent 0001|0 = 2 -> 2^34
        ("posit8_es5", 0x41, 2.0), ("posit8_es5", 0x50, 2.0**16), ("posit8_es5", 0x60, 2.0**32),
        ("posit8_es5", 0x61, 2.0**34),
        ("posit8_es5", 0x7F, 2.0**192), ("posit8_es5", 0x7E, 2.0**160),
        # es = 4, n = 6 (useed 2^16): 0 10 001 = 2^2 (last exponent bit cut), 0 0001 0 -> k = -3 -> 2^-48
        ("posit6_es4", 0x11, 4.0), ("posit6_es4", 0x02, 2.0**-48), ("posit6_es4", 0x01, 2.0**-64),
        ("posit6_es1_s-4", 0x10, 2.0**-4), ("posit6_es1_s-4", 0x1F, 16.0), ("posit6_es1_s-4", 0x18, 2.0**-2),
    ],
)
def test_posits_beyond_softposit_decode_and_encode_hand_typed_codes(spec, code, value):
    fmt = lb.parse_format(spec)
    assert_floats_identical(fmt.decode(torch.tensor([code]), torch.float64), torch.tensor([value], dtype=torch.float64))
    assert_codes_equal(fmt.encode(torch.tensor([value], dtype=torch.float64)), [code])


@pytest.mark.parametrize(
    "spec,x,code",
    [
        ("posit8_es5", 2.0**33, 0x60),  # halfway on the bit string between 2^32 (0x60) and 2^34 (0x61): even
        ("posit8_es5", 2.0**33 * 1.0001, 0x61),
        ("posit8_es5", 2.0**35, 0x62),  # between 2^34 (0x61) and 2^36 (0x62): tie to even 0x62
        ("posit8_es3", 2.5, 0x45),  # 2.5 = 2 · 1.25: fraction 01
        ("posit8_es3", 2.0**50, 0x7F),  # saturates
        ("posit6_es4", 2.0**3, 0x12),  # between 2^2 (0x11) and 2^4 (0x12), tie on the bit string: even
        ("posit6_es4", 2.0**-56, 0x02),  # between 2^-64 (0x01) and 2^-48 (0x02): tie -> even 0x02
    ],
)
def test_posits_with_cut_exponent_bits_round_on_the_bit_string(spec, x, code):
    assert_codes_equal(lb.parse_format(spec).encode(torch.tensor([x], dtype=torch.float64)), [code])
