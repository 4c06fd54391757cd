"""The five deterministic rounding modes, checked against each format's own value table.

For every point x (each value, each rounding point between neighbours and the floats next to it,
the arithmetic midpoint, random points), with lo <= x <= hi the adjacent table values found by
``searchsorted`` (an independent neighbour relation, not lowbit's rounding code):
- floor -> lo, ceil -> hi, toward_zero -> the one of smaller magnitude;
- nearest_even / nearest_away -> the neighbour on x's side of the rounding point; at the rounding
  point itself nearest_away takes the larger magnitude and nearest_even the even code (code
  parity = parity of the magnitude's rank in the table; with M = 0 minifloats ties go up).
  The rounding point is the arithmetic midpoint, except for posits when the neighbours differ by
  a factor > 2 (exponent bits cut off): then it is the geometric mean (docs/semantics.md, the
  (n+1)-bit posit 2c+1).
- Posits never round a nonzero value to 0: x between 0 and ±minpos gives ±minpos in every mode.
Overflow (IEEE 754 §7.4 for directed modes) and posit saturation have hand-typed tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_codes_equal, assert_floats_identical

MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
SPECS = [
    "posit8_es2", "posit6_es1_s-4", "posit16_es1", "posit8_es0", "posit5_es3", "posit10_es2_s7",
    "e4m3fn", "e4m3", "e5m2", "e2m1fn", "e3m2fn", "e8m0fnu", "e3m4", "e4m3fnuz", "e4m3fn_sat", "e5m10",
    "fixed8_f4", "ufixed8_f4", "int4", "int8n", "uint8",
]


def _rounding_points(fmt, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Rounding point of each gap (lo, hi) of same-sign (or zero) neighbours, with sign."""
    mid = (lo + hi) / 2
    if not isinstance(fmt, lb.Posit):
        return mid
    a, b = np.minimum(np.abs(lo), np.abs(hi)), np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(all="ignore"):
        geometric = np.sqrt(a * b) * np.sign(lo + hi)  # exact: a·b is an even power of 4 times a²
    return np.where((a > 0) & (b > 2 * a), geometric, mid)


def _points(fmt, values: np.ndarray, seed: int) -> np.ndarray:
    """Values, rounding points and their float64 neighbours, random points (two per gap for
    formats of <= 8 bits, one for 16-bit ones), and for posits also the arithmetic midpoints."""
    lo, hi = values[:-1], values[1:]
    rp = _rounding_points(fmt, lo, hi)
    rng = np.random.default_rng(seed)
    pts = [values, rp, np.nextafter(rp, np.inf), np.nextafter(rp, -np.inf)]
    pts += [lo + (hi - lo) * rng.uniform(0, 1, lo.size) for _ in range(2 if fmt.bits <= 8 else 1)]
    if isinstance(fmt, lb.Posit):
        pts.append((lo + hi) / 2)
    return np.concatenate(pts)


def _expected(fmt, x: np.ndarray, values: np.ndarray, mode: str) -> np.ndarray:
    i_hi = np.searchsorted(values, x, side="left")
    i_lo = np.searchsorted(values, x, side="right") - 1
    lo, hi = values[i_lo], values[i_hi]
    assert np.all((lo <= x) & (x <= hi))
    exact = lo == hi
    negative = x < 0
    small = np.where(negative, hi, lo)  # smaller magnitude
    big = np.where(negative, lo, hi)
    rp = np.abs(_rounding_points(fmt, lo, hi))
    a = np.abs(x)
    if mode == "floor":
        out = lo
    elif mode == "ceil":
        out = hi
    elif mode == "toward_zero":
        out = small
    else:
        mags = np.unique(np.abs(values))
        rank_even = lambda v: np.searchsorted(mags, np.abs(v)) % 2 == 0  # noqa: E731
        if mode == "nearest_away":
            tie_pick = big
        elif isinstance(fmt, lb.Minifloat) and fmt.man_bits == 0:
            tie_pick = np.where(small != 0, big, small)  # kept significand 1 is odd: ties go up
        else:
            tie_pick = np.where(rank_even(small), small, big)
        out = np.where(a < rp, small, np.where(a > rp, big, tie_pick))
    out = np.where(exact, lo, out)
    if isinstance(fmt, lb.Posit):  # never to zero: (−minpos, 0) ∪ (0, minpos) -> ±minpos
        tiny = (x != 0) & (a < fmt.min_positive)
        out = np.where(tiny, np.copysign(fmt.min_positive, x), out)
    return out


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_picks_the_right_neighbour_on_values_rounding_points_midpoints_and_random_points(spec, mode):
    fmt = lb.parse_format(spec)
    values = fmt.values().numpy()
    x = _points(fmt, values, seed=len(spec))
    q = fmt.quantize(torch.from_numpy(x), rounding=mode).numpy()
    want = _expected(fmt, x, values, mode)
    bad = np.nonzero(q != want)[0]  # == : the sign of zero is checked in its own test
    examples = ", ".join(f"x={x[i]!r} -> {q[i]!r}, want {want[i]!r}" for i in bad[:6])
    assert bad.size == 0, f"{bad.size} wrong, e.g. {examples}"
    assert np.isin(q, values).all(), "every result is a representable value"


@pytest.mark.parametrize("spec", SPECS)
def test_floor_le_x_le_ceil_and_toward_zero_shrinks_magnitude_and_nearest_modes_differ_only_at_ties(spec):
    fmt = lb.parse_format(spec)
    values = fmt.values().numpy()
    x = _points(fmt, values, seed=7)
    if isinstance(fmt, lb.Posit):  # saturation near zero is a posit rule, tested separately
        x = x[(x == 0) | (np.abs(x) >= fmt.min_positive)]
    t = torch.from_numpy(x)
    q = {m: fmt.quantize(t, rounding=m).numpy() for m in MODES}
    assert np.all(q["floor"] <= x) and np.all(x <= q["ceil"])
    assert np.all(np.abs(q["toward_zero"]) <= np.abs(x))
    # floor and ceil are adjacent table entries (or both x when x is a value)
    i_floor = np.searchsorted(values, q["floor"])
    i_ceil = np.searchsorted(values, q["ceil"])
    assert np.all((i_ceil - i_floor == 1) | ((i_ceil == i_floor) & (q["floor"] == x)))
    for m in ("nearest_even", "nearest_away"):  # a nearest mode returns floor or ceil
        assert np.all((q[m] == q["floor"]) | (q[m] == q["ceil"]))
    lo, hi = q["floor"], q["ceil"]
    tie = np.abs(x) == np.abs(_rounding_points(fmt, lo, hi))
    differ = q["nearest_even"] != q["nearest_away"]
    assert not np.any(differ & ~tie), "nearest_even and nearest_away differ only at exact ties"
    assert np.all(np.abs(q["nearest_away"][tie & (lo != hi)]) == np.maximum(np.abs(lo), np.abs(hi))[tie & (lo != hi)])


# ----------------------------------------------------------------------------- overflow tables
INF = math.inf
# spec -> (x, codes for nearest_even, nearest_away, toward_zero, floor, ceil)
OVERFLOW = {
    "e5m2": [  # max 57344 = 0x7b, inf 0x7c; nearest overflows from 61440 (a tie that goes up)
        (86016.0, (0x7C, 0x7C, 0x7B, 0x7B, 0x7C)),
        (-86016.0, (0xFC, 0xFC, 0xFB, 0xFC, 0xFB)),
        (61440.0, (0x7C, 0x7C, 0x7B, 0x7B, 0x7C)),
        (58000.0, (0x7B, 0x7B, 0x7B, 0x7B, 0x7C)),
        (-58000.0, (0xFB, 0xFB, 0xFB, 0xFC, 0xFB)),
        (INF, (0x7C,) * 5),
        (-INF, (0xFC,) * 5),
    ],
    "e4m3": [  # IEEE-style: max 240 = 0x77, inf 0x78
        (360.0, (0x78, 0x78, 0x77, 0x77, 0x78)),
        (-360.0, (0xF8, 0xF8, 0xF7, 0xF8, 0xF7)),
        (247.0, (0x77, 0x77, 0x77, 0x77, 0x78)),
        (INF, (0x78,) * 5),
    ],
    "e5m10": [  # fp16: max 65504 = 0x7bff, inf 0x7c00
        (1e6, (0x7C00, 0x7C00, 0x7BFF, 0x7BFF, 0x7C00)),
        (-1e6, (0xFC00, 0xFC00, 0xFBFF, 0xFC00, 0xFBFF)),
        (65519.0, (0x7BFF, 0x7BFF, 0x7BFF, 0x7BFF, 0x7C00)),
        (65520.0, (0x7C00, 0x7C00, 0x7BFF, 0x7BFF, 0x7C00)),
    ],
    "e4m3fn": [  # max 448 = 0x7e, NaN 0x7f/0xff: overflow and ±inf -> NaN, toward-zero side -> ±max
        (672.0, (0x7F, 0x7F, 0x7E, 0x7E, 0x7F)),
        (-672.0, (0xFF, 0xFF, 0xFE, 0xFF, 0xFE)),
        (460.0, (0x7E, 0x7E, 0x7E, 0x7E, 0x7F)),
        (464.0, (0x7E, 0x7F, 0x7E, 0x7E, 0x7F)),  # tie: 448 = 1.110b·2^8 is even, 480 overflows
        (INF, (0x7F,) * 5),
        (-INF, (0xFF,) * 5),
    ],
    "e4m3fnuz": [  # max 240 = 0x7f, the one NaN 0x80
        (360.0, (0x80, 0x80, 0x7F, 0x7F, 0x80)),
        (-360.0, (0x80, 0x80, 0xFF, 0x80, 0xFF)),
        (INF, (0x80,) * 5),
        (-INF, (0x80,) * 5),
    ],
    "e4m3fn_sat": [  # saturating: every overflow and ±inf -> ±max
        (672.0, (0x7E,) * 5),
        (-672.0, (0xFE,) * 5),
        (INF, (0x7E,) * 5),
        (-INF, (0xFE,) * 5),
    ],
    "e2m1fn": [  # no NaN, no inf: saturate to ±6
        (9.0, (0x7,) * 5),
        (-9.0, (0xF,) * 5),
        (INF, (0x7,) * 5),
        (-INF, (0xF,) * 5),
    ],
    "e8m0fnu": [  # max 2^127 = 0xfe, NaN 0xff; no zero, no negatives
        (1.5 * 2.0**127, (0xFF, 0xFF, 0xFE, 0xFE, 0xFF)),
        (1.25 * 2.0**127, (0xFE, 0xFE, 0xFE, 0xFE, 0xFF)),
        (INF, (0xFF,) * 5),
        (2.0**-130, (0x00,) * 5),  # below the smallest value -> the smallest, in every mode
        (0.0, (0xFF,) * 5),
        (-0.0, (0xFF,) * 5),
        (-1.0, (0xFF,) * 5),
    ],
}


def _overflow_cases():
    for spec, rows in OVERFLOW.items():
        for i, mode in enumerate(MODES):
            yield pytest.param(spec, mode, [r[0] for r in rows], [r[1][i] for r in rows], id=f"{spec}-{mode}")


@pytest.mark.parametrize("spec,mode,xs,expected", list(_overflow_cases()))
def test_minifloat_overflow_follows_ieee_754_section_7_4_and_the_format_policy(spec, mode, xs, expected):
    x = torch.tensor(xs, dtype=torch.float64)
    assert_codes_equal(lb.parse_format(spec).encode(x, rounding=mode), expected, x)


# spec -> (maxpos code, minpos code); negative codes are their two's complements
POSIT_ENDS = {
    "posit8_es2": (8, 0x7F, 0x01, 2.0**24, 2.0**-24),
    "posit6_es1_s-4": (6, 0x1F, 0x01, 16.0, 2.0**-12),
    "posit16_es1": (16, 0x7FFF, 0x0001, 2.0**28, 2.0**-28),
    "posit8_es0": (8, 0x7F, 0x01, 64.0, 1 / 64),
}


@pytest.mark.parametrize("spec", list(POSIT_ENDS))
@pytest.mark.parametrize("mode", MODES + ("stochastic",))
def test_posits_saturate_to_maxpos_and_minpos_in_every_mode(spec, mode):
    n, maxc, minc, maxpos, minpos = POSIT_ENDS[spec]
    fmt = lb.parse_format(spec)
    assert (fmt.max, fmt.min_positive) == (maxpos, minpos)
    xs = [maxpos * 1.5, maxpos * 1e10, 1e308, minpos / 1.5, minpos * 1e-10, 5e-324]
    xs = xs + [-v for v in xs] + [maxpos, -maxpos, minpos, -minpos]
    neg = lambda c: (1 << n) - c  # noqa: E731
    expected = [maxc] * 3 + [minc] * 3 + [neg(maxc)] * 3 + [neg(minc)] * 3 + [maxc, neg(maxc), minc, neg(minc)]
    g = torch.Generator().manual_seed(1) if mode == "stochastic" else None
    x = torch.tensor(xs, dtype=torch.float64)
    assert_codes_equal(fmt.encode(x, rounding=mode, generator=g), expected, x)
    nar = 1 << (n - 1)
    specials = torch.tensor([INF, -INF, math.nan], dtype=torch.float64)
    assert_codes_equal(fmt.encode(specials, rounding=mode, generator=g), [nar] * 3, specials)


def test_posit8_es2_rounding_point_is_the_geometric_mean_where_exponent_bits_are_cut():
    # 0x7e = 2^20 (exponent bits cut), 0x7f = 2^24: the 9-bit posit between them is 2^22, so the
    # arithmetic midpoint 2^20·8.5 (above 2^22) rounds up, 3·2^20 (below) rounds down, and 2^22 is
    # a tie (to the even code 0x7e). SoftPosit's posit_2(8) gives the same four codes.
    fmt = lb.parse_format("posit8_es2")
    x = torch.tensor([8.5 * 2.0**20, 2.0**22, 2.0**22 * (1 + 2.0**-30), 3 * 2.0**20], dtype=torch.float64)
    assert_codes_equal(fmt.encode(x), [0x7F, 0x7E, 0x7F, 0x7E], x)
    assert_codes_equal(fmt.encode(x, "nearest_away"), [0x7F, 0x7F, 0x7F, 0x7E], x)
    # near 1 all bits are fraction bits: 1 (0x40) and 1.125 (0x41) have the arithmetic midpoint
    y = torch.tensor([1.0625, 1.0625 + 2.0**-30, 1.1875], dtype=torch.float64)
    assert_codes_equal(fmt.encode(y), [0x40, 0x41, 0x42], y)


@pytest.mark.parametrize(
    "spec,x,mode,code,value",
    [
        ("e4m3fn", -1e-5, "nearest_even", 0x80, -0.0),  # IEEE/fn formats keep the sign of zero
        ("e4m3fn", -0.0, "nearest_even", 0x80, -0.0),
        ("e5m2", -1e-9, "ceil", 0x80, -0.0),
        ("e5m2", -1e-9, "floor", 0x81, -(2.0**-16)),  # -smallest subnormal
        ("e5m2", 1e-9, "floor", 0x00, 0.0),
        ("e2m1fn", -0.2, "nearest_even", 0x8, -0.0),
        ("e4m3fnuz", -1e-5, "nearest_even", 0x00, 0.0),  # fnuz: no -0, negatives that round to 0 -> 0
        ("e4m3fnuz", -0.0, "toward_zero", 0x00, 0.0),
        ("e4m3fnuz", -1e-9, "ceil", 0x00, 0.0),
        ("posit8_es2", -1e-30, "ceil", 0xFF, -(2.0**-24)),  # posits never round to 0
        ("posit8_es2", -0.0, "floor", 0x00, 0.0),
        ("int8", -0.3, "nearest_even", 0x00, 0.0),
    ],
)
def test_zero_results_carry_the_input_sign_only_in_formats_with_negative_zero(spec, x, mode, code, value):
    fmt = lb.parse_format(spec)
    t = torch.tensor([x], dtype=torch.float64)
    assert_codes_equal(fmt.encode(t, rounding=mode), [code], t)
    assert_floats_identical(fmt.quantize(t, rounding=mode), torch.tensor([value], dtype=torch.float64), t)
