"""Validate the exact fixed-point / integer oracle (lowbit.reference.fixed) with hand-typed codes.

Every expected code below is a literal worked out by hand from docs/semantics.md:
value = k * 2**-f, code = k mod 2**w, saturating, NaN -> 0, +-inf -> the range ends.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from lowbit.reference.fixed import fixed_decode, fixed_encode, fixed_neighbors, fixed_range

MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
NAN, INF = float("nan"), float("inf")


def codes(x, *fmt, **kw):
    return tuple(fixed_encode(x, *fmt, rounding=m, **kw) for m in MODES)


def test_fixed8_f4_ties_and_directed_modes_give_the_hand_typed_codes():
    # 1.03125 * 16 = 16.5: a tie between k = 16 and 17
    assert codes(1.03125, 8, 4, True) == (16, 17, 16, 16, 17)
    assert codes(-1.03125, 8, 4, True) == (240, 239, 240, 239, 240)  # k = -16 / -17
    # 1.09375 * 16 = 17.5: tie with odd floor
    assert codes(1.09375, 8, 4, True) == (18, 18, 17, 17, 18)
    assert codes(-1.09375, 8, 4, True) == (238, 238, 239, 238, 239)  # k = -18, -18, -17, -18, -17
    # 1.1 * 16 = 17.6 (not a tie)
    assert codes(Fraction(11, 10), 8, 4, True) == (18, 18, 17, 17, 18)
    assert codes(Fraction(-11, 10), 8, 4, True) == (238, 238, 239, 238, 239)


def test_int8_of_minus_5_5_and_minus_6_5_in_each_mode():
    assert codes(-5.5, 8, 0, True) == (250, 250, 251, 250, 251)  # k = -6 -6 -5 -6 -5
    assert codes(-6.5, 8, 0, True) == (250, 249, 250, 249, 250)  # k = -6 -7 -6 -7 -6
    assert codes(5.5, 8, 0, True) == (6, 6, 5, 5, 6)
    assert codes(2.5, 8, 0, True) == (2, 3, 2, 2, 3)


def test_values_on_the_grid_are_exact_in_every_mode():
    assert codes(Fraction(-3, 16), 8, 4, True) == (253,) * 5
    assert codes(7.9375, 8, 4, True) == (127,) * 5
    assert codes(-8, 8, 4, True) == (128,) * 5
    assert codes(0, 8, 4, True) == (0,) * 5
    assert codes(-0.0, 8, 4, True) == (0,) * 5


def test_saturation_nan_and_infinities_clamp_to_the_range_ends():
    for m in MODES:
        assert fixed_encode(200, 8, 0, True, rounding=m) == 127
        assert fixed_encode(-200, 8, 0, True, rounding=m) == 128      # k = -128
        assert fixed_encode(8.0, 8, 4, True, rounding=m) == 127       # max 7.9375
        assert fixed_encode(-8.5, 8, 4, True, rounding=m) == 128      # min -8
        assert fixed_encode(300, 8, 0, False, rounding=m) == 255
        assert fixed_encode(-3, 8, 0, False, rounding=m) == 0
        assert fixed_encode(NAN, 8, 0, True, rounding=m) == 0
        assert fixed_encode(NAN, 8, 3, False, rounding=m) == 0
        assert fixed_encode(INF, 8, 0, True, rounding=m) == 127
        assert fixed_encode(-INF, 8, 0, True, rounding=m) == 128
        assert fixed_encode(INF, 8, 2, False, rounding=m) == 255
        assert fixed_encode(-INF, 8, 2, False, rounding=m) == 0
        assert fixed_encode(10**30, 32, 0, True, rounding=m) == 0x7FFFFFFF
        assert fixed_encode(-(10**30), 32, 0, True, rounding=m) == 0x80000000
    # -0.4 in uint8 rounds to 0 in every mode except floor, which clamps -1 to 0 as well
    assert codes(-0.4, 8, 0, False) == (0, 0, 0, 0, 0)
    # 255.5 in uint8: nearest_even -> 256 clamps to 255
    assert codes(255.5, 8, 0, False) == (255, 255, 255, 255, 255)


def test_narrow_int8_range_is_symmetric_and_its_unused_code_cannot_be_decoded():
    assert fixed_range(8, 0, True, narrow=True) == (-127, 127)
    assert fixed_range(8, 0, True) == (-128, 127)
    assert fixed_range(8, 0, False) == (0, 255)
    for m in MODES:
        assert fixed_encode(-200, 8, 0, True, narrow=True, rounding=m) == 129   # k = -127
        assert fixed_encode(-INF, 8, 0, True, narrow=True, rounding=m) == 129
        assert fixed_encode(-127.5, 8, 0, True, narrow=True, rounding=m) == 129
    assert fixed_decode(129, 8, 0, True, narrow=True) == -127
    assert fixed_decode(127, 8, 0, True, narrow=True) == 127
    with pytest.raises(ValueError):
        fixed_decode(128, 8, 0, True, narrow=True)
    assert fixed_decode(128, 8, 0, True) == -128
    with pytest.raises(ValueError):
        fixed_encode(1, 8, 0, False, narrow=True)  # narrow is a signed-only range


def test_decode_gives_k_times_2_pow_minus_f():
    assert fixed_decode(0x80, 8, 4, True) == -8
    assert fixed_decode(0xFF, 8, 4, True) == Fraction(-1, 16)
    assert fixed_decode(0xFF, 8, 4, False) == Fraction(255, 16)
    assert fixed_decode(0x11, 8, 4, True) == Fraction(17, 16)
    assert fixed_decode(1, 1, 0, False) == 1
    assert fixed_decode(1, 16, 64, True) == Fraction(1, 2**64)
    assert fixed_decode(0x80000000, 32, 31, True) == -1


def test_every_code_of_small_formats_round_trips_in_every_mode():
    for w, f, signed, narrow in [(8, 4, True, False), (8, 0, True, True), (6, 3, False, False),
                                 (2, 0, True, False), (1, 0, False, False), (5, 7, True, True)]:
        for c in range(1 << w):
            if narrow and c == 1 << (w - 1):
                continue
            v = fixed_decode(c, w, f, signed, narrow)
            for m in MODES:
                assert fixed_encode(v, w, f, signed, narrow, m) == c


def test_neighbors_bracket_x_and_clamp():
    assert fixed_neighbors(1.03125, 8, 4, True) == (16, 17)
    assert fixed_neighbors(-1.03125, 8, 4, True) == (239, 240)
    assert fixed_neighbors(1.0, 8, 4, True) == (16, 16)
    assert fixed_neighbors(100.0, 8, 4, True) == (127, 127)
    assert fixed_neighbors(-100.0, 8, 4, True, narrow=True) == (129, 129)


def test_invalid_parameters_raise_value_error():
    for bad in [(1, 0, True), (33, 0, True), (0, 0, False), (33, 0, False), (8, -1, True),
                (8, 65, True)]:
        with pytest.raises(ValueError):
            fixed_encode(0, *bad)
        with pytest.raises(ValueError):
            fixed_decode(0, *bad)
    with pytest.raises(ValueError):
        fixed_encode(0, 8, 0, True, rounding="stochastic")
    with pytest.raises(ValueError):
        fixed_decode(256, 8, 0, True)
