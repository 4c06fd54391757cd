"""Validate the exact posit oracle (lowbit.reference.posit) against SoftPosit and by hand.

SoftPosit provides posit8 (es 0), posit16 (es 1), posit32 (es 2) and posit_2 (es 2, any width
2..32, stored left-aligned in a 32-bit word).  Its double -> posit conversions round to nearest
even on the posit bit string and saturate to minpos / maxpos, which is exactly semantics.md.
All comparisons are exact (codes as ints, values as Fractions).
"""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction

import pytest

softposit = pytest.importorskip("softposit")

from lowbit.reference.posit import posit_decode, posit_encode, posit_neighbors  # noqa: E402

MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
INF = float("inf")
NAN = float("nan")


# ---- SoftPosit adapters ----------------------------------------------------------------------
def sp_decode(code: int, n: int) -> float:
    """SoftPosit's double value of a code of posit8/16/32 (n = 8, 16, 32 with es = 0, 1, 2)."""
    if n == 8:
        t = softposit.posit8_t()
        t.v = code
        return softposit.convertP8ToDouble(t)
    if n == 16:
        t = softposit.posit16_t()
        t.v = code
        return softposit.convertP16ToDouble(t)
    t = softposit.posit32_t()
    t.v = code
    return softposit.convertP32ToDouble(t)


def sp_encode(x: float, n: int) -> int:
    conv = {8: softposit.convertDoubleToP8, 16: softposit.convertDoubleToP16,
            32: softposit.convertDoubleToP32}[n]
    return conv(float(x)).v


def spx2_decode(code: int, n: int) -> float:
    """SoftPosit posit_2 (es = 2, width n): codes are left-aligned in a 32-bit word."""
    t = softposit.posit_2_t()
    t.v = code << (32 - n)
    return softposit.convertPX2ToDouble(t)


def spx2_encode(x: float, n: int) -> int:
    return softposit.convertDoubleToPX2(float(x), n).v >> (32 - n)


SOFTPOSIT_ES = {8: 0, 16: 1, 32: 2}


def assert_decode_matches(code: int, mine, theirs: float) -> None:
    if mine is None:  # NaR: SoftPosit's double is inf (p8/p16/pX2) or nan (p32)
        assert math.isinf(theirs) or math.isnan(theirs), (code, theirs)
    else:
        assert math.isfinite(theirs), (code, mine, theirs)
        assert Fraction(theirs) == mine, (code, mine, theirs)


def next_up(x: float) -> float:
    return math.nextafter(x, INF)


def next_down(x: float) -> float:
    return math.nextafter(x, -INF)


def random_double(rng: random.Random, lo_exp: int, hi_exp: int) -> float:
    """Random sign, random 52-bit mantissa, binary exponent uniform in [lo_exp, hi_exp]."""
    e = rng.randint(lo_exp, hi_exp)
    x = math.ldexp(1.0 + rng.getrandbits(52) / 2.0**52, e)
    return -x if rng.getrandbits(1) else x


def random_bit_pattern_double(rng: random.Random) -> float:
    x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    return 0.0 if math.isnan(x) else x


# ---- decode ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 16])
def test_every_code_decodes_to_the_softposit_value(n):
    es = SOFTPOSIT_ES[n]
    for code in range(1 << n):
        assert_decode_matches(code, posit_decode(code, n, es), sp_decode(code, n))


def test_softposit_class_api_agrees_with_the_oracle_on_every_posit8_code_and_rounding_point():
    """The user-level classes (posit8 / posit16 / posit_2) give the same answers."""
    for code in range(256):
        v = posit_decode(code, 8, 0)
        if v is not None:
            assert Fraction(float(softposit.posit8(bits=code))) == v
            assert Fraction(float(softposit.posit_2(bits=code, x=8))) == posit_decode(code, 8, 2)
    for code in range(512):
        v = posit_decode(code, 9, 0)
        if v is not None:
            assert softposit.posit8(float(v)).v.v == posit_encode(v, 8, 0)
            w = posit_decode(code, 9, 2)
            assert softposit.posit_2(float(w), x=8).v.v >> 24 == posit_encode(w, 8, 2)
    for code in (0x0001, 0x4001, 0x7FFF, 0x8001, 0xC000):
        assert Fraction(float(softposit.posit16(bits=code))) == posit_decode(code, 16, 1)


def test_posit32_es2_random_codes_decode_to_the_softposit_value():
    rng = random.Random(32)
    codes = [rng.getrandbits(32) for _ in range(4000)] + [0, 1, 0x7FFFFFFF, 0x80000000,
                                                           0x80000001, 0xFFFFFFFF, 0x40000000]
    for code in codes:
        assert_decode_matches(code, posit_decode(code, 32, 2), sp_decode(code, 32))


@pytest.mark.parametrize("n", list(range(2, 33)))
def test_es2_codes_decode_to_the_softposit_posit_2_value_at_every_width(n):
    rng = random.Random(n)
    codes = range(1 << n) if n <= 12 else [rng.getrandbits(n) for _ in range(1500)]
    for code in codes:
        assert_decode_matches(code, posit_decode(code, n, 2), spx2_decode(code, n))


def test_negative_codes_are_the_twos_complement_of_the_magnitude_code():
    for n, es in [(5, 0), (8, 0), (8, 2), (10, 3), (12, 5)]:
        for code in range(1, 1 << (n - 1)):
            assert posit_decode((1 << n) - code, n, es) == -posit_decode(code, n, es)


def test_zero_and_nar_codes_and_their_encodings():
    for n, es in [(2, 0), (8, 0), (8, 2), (16, 1), (32, 2), (32, 5)]:
        assert posit_decode(0, n, es) == 0
        assert posit_decode(1 << (n - 1), n, es) is None
        for mode in MODES:
            assert posit_encode(0, n, es, rounding=mode) == 0
            assert posit_encode(-0.0, n, es, rounding=mode) == 0
            assert posit_encode(Fraction(0), n, es, rounding=mode) == 0
            for special in (NAN, -NAN, INF, -INF):
                assert posit_encode(special, n, es, rounding=mode) == 1 << (n - 1)


# ---- encode: exact values, rounding points, random doubles -------------------------------------
@pytest.mark.parametrize("n", [8, 16])
def test_every_value_encodes_to_its_own_code_in_every_mode_and_in_softposit(n):
    es = SOFTPOSIT_ES[n]
    for code in range(1 << n):
        v = posit_decode(code, n, es)
        if v is None:
            continue
        assert sp_encode(float(v), n) == code
        for mode in MODES:
            assert posit_encode(v, n, es, rounding=mode) == code


@pytest.mark.parametrize("n", [8, 16])
def test_every_rounding_point_and_its_double_neighbours_encode_like_softposit(n):
    """The (n+1)-bit codes 2c+1 are the rounding points between n-bit codes c and c+1."""
    es = SOFTPOSIT_ES[n]
    for code in range(1 << (n + 1)):
        v = posit_decode(code, n + 1, es)
        if v is None:
            continue
        x = float(v)
        assert Fraction(x) == v
        for y in (x, next_up(x), next_down(x)):
            assert posit_encode(y, n, es) == sp_encode(y, n), (code, y)


@pytest.mark.parametrize("n", [8, 16])
def test_arithmetic_midpoints_of_neighbours_encode_like_softposit(n):
    es = SOFTPOSIT_ES[n]
    values = sorted(v for v in (posit_decode(c, n, es) for c in range(1 << n)) if v is not None)
    for a, b in zip(values, values[1:]):
        mid = (a + b) / 2
        x = float(mid)
        assert Fraction(x) == mid
        assert posit_encode(mid, n, es) == sp_encode(x, n), (a, b)


@pytest.mark.parametrize("n", [8, 16, 32])
def test_random_doubles_encode_like_softposit(n):
    es = SOFTPOSIT_ES[n]
    rng = random.Random(1000 + n)
    span = (n - 2) * (1 << es)  # maxpos = 2**span
    xs = [random_double(rng, -span - 3, span + 3) for _ in range(3000)]
    xs += [random_bit_pattern_double(rng) for _ in range(500)]
    for x in xs:
        assert posit_encode(x, n, es) == sp_encode(x, n), x


def test_posit32_es2_arithmetic_midpoints_of_random_neighbours_encode_like_softposit():
    rng = random.Random(3232)
    for _ in range(2500):
        code = rng.randrange(1, (1 << 31) - 1)
        a, b = posit_decode(code, 32, 2), posit_decode(code + 1, 32, 2)
        mid = (a + b) / 2
        x = float(mid)
        assert Fraction(x) == mid
        for y in (x, next_up(x), next_down(x), -x):
            assert posit_encode(y, 32, 2) == sp_encode(y, 32), (code, y)


@pytest.mark.parametrize("n", list(range(2, 33)))
def test_es2_rounding_points_and_random_doubles_encode_like_softposit_posit_2(n):
    rng = random.Random(7 * n)
    if n < 32:
        codes = range(1 << (n + 1)) if n <= 12 else [rng.getrandbits(n + 1) for _ in range(1500)]
        points = [posit_decode(c, n + 1, 2) for c in codes]
    else:  # no 33-bit posits: use arithmetic midpoints (fraction bits present there)
        points = []
        for _ in range(1500):
            c = rng.randrange(1, (1 << 31) - 1)
            points.append((posit_decode(c, 32, 2) + posit_decode(c + 1, 32, 2)) / 2)
    for v in points:
        if v is None:
            continue
        x = float(v)
        assert Fraction(x) == v
        for y in (x, next_up(x), next_down(x)):
            assert posit_encode(y, n, 2) == spx2_encode(y, n), (n, y)
    span = (n - 2) * 4
    for _ in range(1000):
        x = random_double(rng, -span - 3, span + 3)
        assert posit_encode(x, n, 2) == spx2_encode(x, n), (n, x)


def test_saturation_and_specials_agree_with_softposit():
    cases = [1e300, -1e300, 1e-300, -1e-300, 5e-324, -5e-324, INF, -INF, NAN, 2.0**1000]
    for n in (8, 16, 32):
        es = SOFTPOSIT_ES[n]
        for x in cases:
            assert posit_encode(x, n, es) == sp_encode(x, n), (n, x)
    for n in (3, 8, 20, 32):
        for x in cases:
            assert posit_encode(x, n, 2) == spx2_encode(x, n), (n, x)


def test_nonzero_finite_values_never_round_to_zero_or_nar_in_any_mode():
    for n, es in [(2, 0), (3, 1), (8, 0), (8, 2), (16, 1), (32, 2), (12, 5)]:
        nar = 1 << (n - 1)
        maxpos_code, minpos_code = nar - 1, 1
        for mode in MODES:
            for x, expected in [(2.0**600, maxpos_code), (-(2.0**600), (1 << n) - maxpos_code),
                                (2.0**-600, minpos_code), (-(2.0**-600), (1 << n) - minpos_code),
                                (Fraction(1, 10**400), minpos_code), (10**400, maxpos_code)]:
                assert posit_encode(x, n, es, rounding=mode) == expected, (n, es, mode, x)


# ---- rounding modes (no external reference: checked against the definition) -----------------
@pytest.mark.parametrize("n,es,scale", [(6, 0, 0), (8, 0, 0), (8, 2, 0), (7, 3, 5), (9, 1, -3)])
def test_directed_modes_bracket_x_and_nearest_modes_pick_the_nearer_in_bit_string_terms(n, es,
                                                                                        scale):
    """floor/ceil bracket x with adjacent codes; nearest_* agree with the (n+1)-bit points."""
    half = 1 << (n - 1)
    for c in range(1, (1 << (n + 1))):
        if c == 1 << n:
            continue
        point = posit_decode(c, n + 1, es, scale)
        for x in (point, point * Fraction(1025, 1024), point * Fraction(1023, 1024)):
            lo, hi = posit_neighbors(x, n, es, scale)
            vlo, vhi = posit_decode(lo, n, es, scale), posit_decode(hi, n, es, scale)
            maxpos = posit_decode(half - 1, n, es, scale)
            minpos = posit_decode(1, n, es, scale)
            if abs(x) > maxpos or abs(x) < minpos:  # saturation: both neighbours equal
                assert lo == hi
                assert abs(vlo) in (maxpos, minpos)
                continue
            assert vlo <= x <= vhi
            assert (lo == hi) == (vlo == x)
            if lo != hi:  # adjacent in value order = adjacent codes (two's complement order)
                assert (hi - lo) % (1 << n) == 1
            tz = posit_encode(x, n, es, scale, "toward_zero")
            assert tz == (lo if x > 0 else hi)
            ne = posit_encode(x, n, es, scale, "nearest_even")
            na = posit_encode(x, n, es, scale, "nearest_away")
            assert ne in (lo, hi) and na in (lo, hi)
            # the rounding point between lo and hi is the (n+1)-bit code 2*lo + 1
            split = posit_decode((2 * lo + 1) % (1 << (n + 1)), n + 1, es, scale)
            if lo == hi:
                continue
            if x == split:  # tie: even code / away from zero
                assert ne == (lo if lo % 2 == 0 else hi)
                assert na == (hi if x > 0 else lo)
            else:
                expected = lo if x < split else hi
                assert ne == expected and na == expected


def test_neighbors_saturate_and_are_equal_for_representable_values():
    assert posit_neighbors(2.0**30, 8, 0) == (0x7F, 0x7F)
    assert posit_neighbors(-(2.0**30), 8, 0) == (0x81, 0x81)
    assert posit_neighbors(2.0**-30, 8, 0) == (0x01, 0x01)
    assert posit_neighbors(-(2.0**-30), 8, 0) == (0xFF, 0xFF)
    assert posit_neighbors(1.0, 8, 0) == (0x40, 0x40)
    assert posit_neighbors(Fraction(65, 64), 8, 0) == (0x40, 0x41)  # 1 < x < 1 + 1/32
    assert posit_neighbors(-Fraction(65, 64), 8, 0) == (0xBF, 0xC0)
    assert posit_neighbors(0, 8, 0) == (0, 0)
    assert posit_neighbors(NAN, 8, 0) == (0x80, 0x80)


# ---- hand-typed values ---------------------------------------------------------------------------
def test_posit8_es2_maxpos_is_2_pow_24_and_minpos_is_2_pow_minus_24():
    assert posit_decode(0x7F, 8, 2) == 2**24
    assert posit_decode(0x01, 8, 2) == Fraction(1, 2**24)
    assert posit_decode(0x81, 8, 2) == -(2**24)
    assert posit_decode(0xFF, 8, 2) == -Fraction(1, 2**24)
    assert posit_decode(0x40, 8, 2) == 1
    assert posit_decode(0x7E, 8, 2) == 2**20  # 0 1111110: k = 5, exponent bits cut -> 0
    assert posit_decode(0x7D, 8, 2) == 2**18  # 0 1111101: k = 4, e = '1' + cut '0' = 2
    assert posit_decode(0x50, 8, 2) == 4      # 0 10 10 000: k = 0, e = 2


def test_posit8_es0_and_posit16_es1_hand_typed_values():
    assert posit_decode(0x7F, 8, 0) == 64
    assert posit_decode(0x01, 8, 0) == Fraction(1, 64)
    assert posit_decode(0x41, 8, 0) == Fraction(33, 32)
    assert posit_decode(0x60, 8, 0) == 2
    assert posit_decode(0x7FFF, 16, 1) == 2**28
    assert posit_decode(0x0001, 16, 1) == Fraction(1, 2**28)
    assert posit_decode(0x7FFFFFFF, 32, 2) == 2**120
    assert posit_decode(0x00000001, 32, 2) == Fraction(1, 2**120)


def test_posit8_es2_tie_where_exponent_bits_are_cut_is_at_the_geometric_point():
    # Codes 0x7E = 2**20 and 0x7F = 2**24. The 9-bit code 2*0x7E+1 = 0 11111101 has regime
    # k = 5 and exponent bits '1' + cut '0' = 2: its value 2**22 is the tie, the geometric mean.
    assert posit_decode(0xFD, 9, 2) == 2**22
    assert posit_encode(2**22, 8, 2) == 0x7E                 # tie -> even code
    assert posit_encode(2**22, 8, 2, rounding="nearest_away") == 0x7F
    assert posit_encode(Fraction(2**22) + Fraction(1, 2**40), 8, 2) == 0x7F
    assert posit_encode(Fraction(2**22) - Fraction(1, 2**40), 8, 2) == 0x7E
    # 2**23 lies below the arithmetic mean (2**20 + 2**24) / 2 but above the geometric point
    assert posit_encode(2**23, 8, 2) == 0x7F
    assert posit_encode(-(2**23), 8, 2) == 0x81
    # SoftPosit agrees
    assert spx2_encode(2.0**22, 8) == 0x7E
    assert spx2_encode(2.0**23, 8) == 0x7F
    # the same at the small end: 0x01 = 2**-24, 0x02 = 2**-20, tie at 2**-22
    assert posit_encode(Fraction(1, 2**22), 8, 2) == 0x02    # tie -> even code 0x02
    assert posit_encode(Fraction(1, 2**23), 8, 2) == 0x01
    assert spx2_encode(2.0**-22, 8) == 0x02


def test_posit6_es1_with_scale_minus_4_decodes_to_2_pow_minus_4_times_the_unscaled_value():
    for code in range(64):
        v = posit_decode(code, 6, 1)
        vs = posit_decode(code, 6, 1, scale=-4)
        if v is None:
            assert vs is None
        else:
            assert vs == v / 16
            for mode in MODES:
                assert posit_encode(vs, 6, 1, scale=-4, rounding=mode) == code
    assert posit_decode(0b010000, 6, 1, scale=-4) == Fraction(1, 16)
    assert posit_decode(0b011111, 6, 1, scale=-4) == 2**8 / Fraction(16)  # maxpos 4**4 * 2**-4
    assert posit_decode(0b000001, 6, 1, scale=-4) == Fraction(1, 2**12)   # minpos 4**-4 * 2**-4
    for x in (Fraction(3, 7), Fraction(-1000), Fraction(5, 1 << 20), Fraction(10**6)):
        for mode in MODES:
            assert posit_encode(x / 16, 6, 1, -4, mode) == posit_encode(x, 6, 1, 0, mode)


def test_posit2_has_only_zero_one_nar_minus_one():
    for es in range(6):
        assert [posit_decode(c, 2, es) for c in range(4)] == [0, 1, None, -1]
        assert posit_encode(Fraction(1, 1000), 2, es) == 1
        assert posit_encode(-1000, 2, es) == 3


def test_python_ints_fractions_and_floats_are_accepted_exactly():
    assert posit_encode(1, 16, 1) == posit_encode(1.0, 16, 1) == posit_encode(Fraction(1), 16, 1)
    assert posit_encode(True, 8, 0) == 0x40
    # 1 + 2**-60 is not a double; as a Fraction it must round up under ceil
    assert posit_encode(1 + Fraction(1, 2**60), 32, 2, rounding="ceil") == 0x40000001


def test_invalid_parameters_raise_value_error():
    for bad in [dict(n=1, es=0), dict(n=33, es=2), dict(n=8, es=6), dict(n=8, es=-1)]:
        with pytest.raises(ValueError):
            posit_encode(1.0, **bad)
        with pytest.raises(ValueError):
            posit_decode(0, **bad)
    with pytest.raises(ValueError):
        posit_decode(256, 8, 0)
    with pytest.raises(ValueError):
        posit_encode(1.0, 8, 0, rounding="stochastic")
