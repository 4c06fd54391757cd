"""lowbit (both backends) against the exact Fraction oracle of `lowbit.reference`.

For each format the inputs are: every value of the format (for 32-bit posits, a sample), every
midpoint between neighbouring values computed with Fractions (kept where float64 holds it
exactly) and the float64 numbers just below and above it, for posits the rounding points (the
(n+1)-bit posit 2c+1) and their neighbours, points beyond the largest and smallest values, tiny
values, ±0, NaN of both signs, ±inf, and a few thousand random doubles over a wide binade range,
each also negated.  Formats of 16 bits keep every value but sample their gaps; 32-bit posits
sample their codes.

- ``encode`` gives the oracle's code exactly, in each of the five deterministic modes;
- ``quantize`` of float64 gives the oracle's value of that code exactly (sign of zero included);
- ``decode`` of every code (≤ 16 bits; sampled codes for 32-bit posits) is the oracle's value;
- float32 inputs (a subset of formats) encode and quantize like the oracle of their exact value;
- ``stochastic`` always returns one of the oracle's two neighbours (``*_neighbors``).

The oracle is pure Python, so its answers are computed once per (format, mode) and shared by
both backends.
"""

from __future__ import annotations

import functools
import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.reference import posit_decode
from lowbit.testing import (
    assert_codes_equal,
    assert_same_bits,
    exact_float64,
    oracle_for,
    random_binade_floats,
    random_float_patterns,
    unique_floats,
)

BACKENDS = ["reference", "numba"]
MODES = ["nearest_even", "nearest_away", "toward_zero", "floor", "ceil"]

EXHAUSTIVE = [
    "posit8_es0", "posit8_es2", "posit6_es1_s-4", "posit5_es3", "posit10_es1",
    "e4m3fn", "e4m3", "e5m2", "e4m3fnuz", "e4m3b11fnuz", "e3m4", "e2m1fn", "e3m2fn", "e2m3fn",
    "e8m0fnu", "e6m1", "e2m1", "e4m3fn_sat", "e5m2_sat",
    "e3m0fn", "e4m0b10fn", "e3m0fnuz",  # power-of-two (log) formats: 0 and ±2^k only
    "fixed8_f4", "ufixed8_f4", "int8", "int8n", "uint4", "int4",
]
SAMPLED_16 = ["posit16_es1", "e5m10", "e8m7", "fixed16_f12"]  # every value; sampled gaps
WIDE = ["posit32_es2", "posit32_es5"]  # sampled codes
ALL = EXHAUSTIVE + SAMPLED_16 + WIDE

GAP_SAMPLE = 2000  # random gaps of a 16-bit format (plus the ones at the ends and around 0)
CODE_SAMPLE = 2000  # random magnitude codes of a 32-bit posit (plus the ends)
RANDOM_NEAR, RANDOM_WIDE = 2000, 1000  # random doubles near the format's range / over all of float64

# float32 inputs: formats whose every value float32 holds exactly (quantize is checked too) ...
FLOAT32_SPECS = ["posit8_es2", "posit6_es1_s-4", "posit16_es1", "e4m3fn", "e5m2", "e4m3fnuz", "e8m0fnu",
                 "e2m1fn", "e5m10", "e8m7", "fixed16_f12", "int8n"]
# ... and formats where only encode is compared (float32 cannot hold every value)
FLOAT32_ENCODE_ONLY = ["posit32_es2"]


def _seed(spec: str) -> int:
    return zlib.crc32(spec.encode())


def _checked(spec: str, backend: str, x: np.ndarray) -> np.ndarray:
    """Mask of the inputs a comparison checks: all of them (a past numba bug for |x| >= 2**1023 in
    man_bits == 0 minifloats is fixed and pinned by its own test below)."""
    return np.ones(x.shape, dtype=bool)


def _floor_log2(q: Fraction) -> int:
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e if Fraction(2) ** e <= q else e - 1


def _with_neighbours(qs) -> list[float]:
    """Each Fraction that float64 holds exactly, with the float64 numbers just below and above."""
    out = []
    for q in qs:
        f = exact_float64(q)
        if f is not None:
            out += [f, math.nextafter(f, math.inf), math.nextafter(f, -math.inf)]
    return out


@functools.lru_cache(maxsize=None)
def _table(spec: str) -> "tuple[np.ndarray, np.ndarray, list[Fraction]]":
    """(codes, exact float64 values, sorted distinct finite Fraction values) of a ≤16-bit format,
    or of a sample of codes of a wider posit."""
    o = oracle_for(spec)
    if o.bits <= 16:
        codes = np.array([c for c in range(1 << o.bits) if c not in o.unused_codes], dtype=np.int64)
    else:
        rng = np.random.default_rng(_seed(spec))
        maxmag = (1 << (o.bits - 1)) - 1
        mags = np.concatenate([np.arange(0, 64), np.arange(maxmag - 63, maxmag + 1),
                               rng.integers(1, maxmag, CODE_SAMPLE)])
        codes = np.unique(np.concatenate([mags, (1 << o.bits) - mags[mags > 0], [1 << (o.bits - 1)]]))
    decoded = [o.decode(int(c)) for c in codes]
    values = np.array([exact_float64(v) for v in decoded], dtype=np.float64)
    finite = sorted({v for v in decoded if isinstance(v, Fraction)})
    return codes, values, finite


@functools.lru_cache(maxsize=None)
def _gaps(spec: str) -> "list[tuple[Fraction, Fraction]]":
    """Adjacent (lo, hi) value pairs: all of them, or a sample for 16-bit and wider formats."""
    o = oracle_for(spec)
    _, _, finite = _table(spec)
    if o.bits > 16:  # sampled posit codes: the value of code c+1 follows the value of code c
        pairs = []
        for v in finite:
            if v > 0:
                code = o.encode(v)
                nxt = o.decode(code + 1)
                if isinstance(nxt, Fraction) and nxt > v:
                    pairs.append((v, nxt))
        pairs += [(Fraction(0), finite[[i for i, v in enumerate(finite) if v > 0][0]])]
        return pairs
    pairs = list(zip(finite[:-1], finite[1:]))
    if spec in SAMPLED_16:
        rng = np.random.default_rng(_seed(spec))
        zero = min(range(len(finite)), key=lambda i: abs(finite[i]))
        keep = set(range(128)) | set(range(len(pairs) - 128, len(pairs))) | set(range(max(zero - 128, 0), zero + 128))
        keep |= set(rng.choice(len(pairs), GAP_SAMPLE, replace=False).tolist())
        pairs = [pairs[i] for i in sorted(keep) if i < len(pairs)]
    return pairs


@functools.lru_cache(maxsize=None)
def _point_parts(spec: str) -> "dict[str, np.ndarray]":
    """The float64 inputs of a format, by kind (each kind also negated)."""
    o = oracle_for(spec)
    _, values, finite = _table(spec)
    gaps = _gaps(spec)
    parts: dict[str, list[float]] = {}
    parts["values"] = [v for v in values.tolist() if not math.isnan(v)]
    parts["midpoints"] = _with_neighbours((lo + hi) / 2 for lo, hi in gaps)
    parts["rounding_points"] = []
    if o.family == "posit" and o.bits < 32:  # rounding points: the (n+1)-bit posit between c and c+1
        n, es, s = o._args
        parts["rounding_points"] = _with_neighbours(
            posit_decode(2 * o.encode(lo) + 1, n + 1, es, s) for lo, hi in gaps if lo > 0
        )
    # beyond both ends, by half a gap, a gap and two gaps; far beyond; tiny values; specials
    top, bottom = finite[-1], finite[0]
    g_top, g_bottom = finite[-1] - finite[-2], finite[1] - finite[0]
    beyond = [top + g_top / 2, top + g_top, top + 2 * g_top, bottom - g_bottom / 2, bottom - g_bottom,
              bottom - 2 * g_bottom, 4 * top, 1024 * top]
    edges = _with_neighbours(b for b in beyond if b != 0 and _floor_log2(b) < 1024)
    edges += [1e300, 2.0**1023 * 1.75, 1.7976931348623157e308]
    minpos = min(v for v in finite if v > 0)
    tiny = [minpos / 2, minpos / 4, minpos * 3 / 4, minpos * 5 / 4]
    edges += _with_neighbours(t for t in tiny if _floor_log2(t) >= -1074)
    edges += [math.nextafter(exact_float64(minpos) or 0.0, 0.0), 5e-324, 2.2250738585072014e-308, 1e-300]
    edges += [0.0, math.inf, math.nan]
    parts["edges"] = edges
    # random doubles near the format's range and over all of float64
    lo_e = max(_floor_log2(minpos) - 4, -1074)
    hi_e = min(_floor_log2(top) + 4, 1023)
    out = {k: np.array(v, dtype=np.float64) for k, v in parts.items()}
    out["random"] = np.concatenate([random_binade_floats(RANDOM_NEAR, lo_e, hi_e, seed=_seed(spec)),
                                    random_binade_floats(RANDOM_WIDE, -1074, 1023, seed=_seed(spec) + 1)])
    return {k: np.concatenate([v, -v]) for k, v in out.items()}  # -0.0, -nan, -inf, every point mirrored


@functools.lru_cache(maxsize=None)
def _points(spec: str) -> np.ndarray:
    """All float64 inputs of a format (distinct bit patterns)."""
    return unique_floats(np.concatenate(list(_point_parts(spec).values())))


@functools.lru_cache(maxsize=None)
def _expected_codes(spec: str, mode: str, which: str = "float64") -> np.ndarray:
    x = _points(spec) if which == "float64" else _points32(spec)
    return oracle_for(spec).encode_many(x, mode)


@functools.lru_cache(maxsize=None)
def _expected_values(spec: str, mode: str) -> np.ndarray:
    return oracle_for(spec).values_many(_expected_codes(spec, mode))


@functools.lru_cache(maxsize=None)
def _neighbours(spec: str) -> "tuple[np.ndarray, np.ndarray]":
    return oracle_for(spec).neighbors_many(_points(spec))


# ---------------------------------------------------------------------------------- float64
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", ALL)
def test_encode_of_values_midpoints_their_float64_neighbours_specials_and_random_doubles_equals_the_oracle_code(
    spec, mode, backend
):
    x = _points(spec)
    keep = _checked(spec, backend, x)
    codes = lb.parse_format(spec).encode(torch.from_numpy(x[keep]), mode, backend=backend)
    assert_codes_equal(codes, _expected_codes(spec, mode)[keep], x[keep], what=f"{spec} {mode} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", ALL)
def test_quantize_of_float64_is_the_oracle_value_of_the_oracle_code_bit_for_bit(spec, mode, backend):
    x = _points(spec)
    keep = _checked(spec, backend, x)
    x = x[keep]
    q = lb.parse_format(spec).quantize(torch.from_numpy(x), mode, backend=backend)
    expected = torch.from_numpy(_expected_values(spec, mode)[keep])
    # NaN results: only NaN-ness is specified, so compare them as the canonical NaN
    q = torch.where(torch.isnan(q), torch.full_like(q, math.nan), q)
    expected = torch.where(torch.isnan(expected), torch.full_like(expected, math.nan), expected)
    assert_same_bits(q, expected, x, what=f"{spec} {mode} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ALL)
def test_decode_of_every_code_to_float64_is_the_oracle_value_exactly(spec, backend):
    codes, values, _ = _table(spec)
    fmt = lb.parse_format(spec)
    got = fmt.decode(torch.from_numpy(codes), torch.float64, backend=backend)
    expected = torch.from_numpy(values)
    got = torch.where(torch.isnan(got), torch.full_like(got, math.nan), got)
    assert_same_bits(got, expected, codes.astype(np.float64), what=f"{spec} decode {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [s for s in ALL if oracle_for(s).bits <= 16])
def test_decode_of_every_code_to_float32_is_the_oracle_value_which_float32_holds_exactly(spec, backend):
    codes, values, _ = _table(spec)
    v32 = values.astype(np.float32)
    finite = np.isfinite(values)
    assert np.array_equal(v32[finite].astype(np.float64), values[finite]), "precondition: float32 holds every value"
    got = lb.parse_format(spec).decode(torch.from_numpy(codes), torch.float32, backend=backend)
    got = torch.where(torch.isnan(got), torch.full_like(got, math.nan), got)
    assert_same_bits(got, torch.from_numpy(v32), codes.astype(np.float64), what=f"{spec} decode {backend}")


# ---------------------------------------------------------------------------------- float32
@functools.lru_cache(maxsize=None)
def _points32(spec: str) -> np.ndarray:
    """float32 inputs: the ends of every (sampled) gap and the midpoints float32 holds exactly,
    with their float32 neighbours; the edge points (beyond the ends, tiny, specials) rounded to
    float32; random float32 over the format's binades and random float32 bit patterns."""
    ends, mids = [], []
    for lo, hi in _gaps(spec):
        ends += [exact_float64(lo), exact_float64(hi)]
        mids.append(exact_float64((lo + hi) / 2))
    with np.errstate(all="ignore"):
        e64 = np.array([math.nan if v is None else v for v in ends + mids], dtype=np.float64)
        e32 = e64.astype(np.float32)
        pts = [e32[e32.astype(np.float64) == e64], _point_parts(spec)["edges"].astype(np.float32)]
    inf32 = np.float32(np.inf)
    pts += [np.nextafter(pts[0], inf32), np.nextafter(pts[0], -inf32)]
    _, _, finite = _table(spec)
    lo_e = max(_floor_log2(min(v for v in finite if v > 0)) - 4, -149)
    hi_e = min(_floor_log2(finite[-1]) + 4, 127)
    pts.append(random_binade_floats(2000, lo_e, hi_e, seed=_seed(spec) + 2, dtype=np.float32))
    pts.append(random_float_patterns(1000, torch.float32, seed=_seed(spec) + 3).numpy())
    x = np.concatenate(pts)
    return unique_floats(np.concatenate([x, -x]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", FLOAT32_SPECS + FLOAT32_ENCODE_ONLY)
def test_float32_inputs_encode_to_the_oracle_code_of_their_exact_value(spec, mode, backend):
    x = _points32(spec)
    codes = lb.parse_format(spec).encode(torch.from_numpy(x), mode, backend=backend)
    assert_codes_equal(codes, _expected_codes(spec, mode, "float32"), x, what=f"{spec} {mode} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", FLOAT32_SPECS)
def test_float32_inputs_quantize_to_the_oracle_value_of_the_oracle_code(spec, mode, backend):
    x = _points32(spec)
    expected64 = oracle_for(spec).values_many(_expected_codes(spec, mode, "float32"))
    expected = expected64.astype(np.float32)
    finite = np.isfinite(expected64)
    assert np.array_equal(expected[finite].astype(np.float64), expected64[finite]), "precondition: exact in float32"
    q = lb.parse_format(spec).quantize(torch.from_numpy(x), mode, backend=backend)
    q = torch.where(torch.isnan(q), torch.full_like(q, math.nan), q)
    assert_same_bits(q, torch.from_numpy(expected), x, what=f"{spec} {mode} {backend}")


# ---------------------------------------------------------------------------------- stochastic
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ALL)
def test_stochastic_codes_and_values_are_always_one_of_the_two_oracle_neighbours(spec, backend):
    x = _points(spec)
    keep = _checked(spec, backend, x)
    lo, hi = _neighbours(spec)
    x, lo, hi = x[keep], lo[keep], hi[keep]
    fmt = lb.parse_format(spec)
    o = oracle_for(spec)
    v_lo, v_hi = o.values_many(lo), o.values_many(hi)
    went_up = went_down = 0
    for seed in (1, 2):
        codes = fmt.encode(torch.from_numpy(x), "stochastic", torch.Generator().manual_seed(seed),
                           backend=backend).to(torch.int64).numpy()
        bad = np.nonzero((codes != lo) & (codes != hi))[0]
        rows = [f"x={x[i]!r}: code {codes[i]}, neighbours ({lo[i]}, {hi[i]})" for i in bad[:6]]
        assert bad.size == 0, f"{bad.size} stochastic codes outside the oracle neighbours:\n" + "\n".join(rows)
        inexact = lo != hi
        went_down += int(np.sum(inexact & (codes == lo)))
        went_up += int(np.sum(inexact & (codes == hi)))

        q = fmt.quantize(torch.from_numpy(x), "stochastic", torch.Generator().manual_seed(seed),
                         backend=backend).numpy()

        def same(a, b):
            return (np.isnan(a) & np.isnan(b)) | ((a == b) & (np.signbit(a) == np.signbit(b)))

        bad = np.nonzero(~(same(q, v_lo) | same(q, v_hi)))[0]
        rows = [f"x={x[i]!r}: value {q[i]!r}, neighbours ({v_lo[i]!r}, {v_hi[i]!r})" for i in bad[:6]]
        assert bad.size == 0, f"{bad.size} stochastic values outside the oracle neighbours:\n" + "\n".join(rows)
    assert went_up > 0 and went_down > 0, "stochastic rounding should take both neighbours somewhere"


# ---------------------------------------------------------------------------------- past bugs
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", ["e8m0fnu", "e8m0fnu_sat", "e3m0fn", "e4m0fnuz"])
def test_numba_minifloats_without_mantissa_bits_round_doubles_from_2_pow_1023_like_the_oracle(spec, mode):
    x = np.array([2.0**1023, -(2.0**1023), 1.5 * 2.0**1023, 1.7976931348623157e308, -1.7976931348623157e308])
    o = oracle_for(spec)
    expected = o.encode_many(x, mode)
    fmt = lb.parse_format(spec)
    assert_codes_equal(fmt.encode(torch.from_numpy(x), mode, backend="numba"), expected, x)
    q = fmt.quantize(torch.from_numpy(x), mode, backend="numba")
    q = torch.where(torch.isnan(q), torch.full_like(q, math.nan), q)
    assert_same_bits(q, torch.from_numpy(o.values_many(expected)), x)
