"""Fixed point and integer grids against hand-typed codes and values.

Value = k · 2^-f with k saturated to [-2^(w-1), 2^(w-1) - 1] (signed), [0, 2^w - 1] (unsigned) or
[-(2^(w-1) - 1), 2^(w-1) - 1] (narrow ``int<b>n``); the code is k mod 2^w. NaN -> 0, ±inf -> the
range ends. Every expected code below was worked out by hand from those rules.
"""

from __future__ import annotations

import math

import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_codes_equal, assert_floats_identical

MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
NAN, INF = math.nan, math.inf

# spec -> list of (x, (nearest_even, nearest_away, toward_zero, floor, ceil) codes)
CASES: dict[str, list[tuple[float, tuple[int, int, int, int, int]]]] = {
    "fixed8_f4": [  # step 1/16, k in [-128, 127]
        (2.5, (40, 40, 40, 40, 40)),
        (-2.5, (216, 216, 216, 216, 216)),  # k = -40
        (0.03125, (0, 1, 0, 0, 1)),  # k = 0.5: tie
        (-0.03125, (0, 255, 0, 255, 0)),  # k = -0.5
        (0.09375, (2, 2, 1, 1, 2)),  # k = 1.5: tie to even 2
        (-0.09375, (254, 254, 255, 254, 255)),  # k = -1.5
        (0.15625, (2, 3, 2, 2, 3)),  # k = 2.5: tie to even 2
        (0.1, (2, 2, 1, 1, 2)),  # k = 1.6
        (-0.1, (254, 254, 255, 254, 255)),
        (7.9375, (127, 127, 127, 127, 127)),  # max
        (7.96875, (127, 127, 127, 127, 127)),  # k = 127.5 saturates
        (-8.0, (128, 128, 128, 128, 128)),  # min
        (-8.03125, (128, 128, 128, 128, 128)),  # k = -128.5 saturates
        (1000.0, (127, 127, 127, 127, 127)),
        (-1000.0, (128, 128, 128, 128, 128)),
        (INF, (127, 127, 127, 127, 127)),
        (-INF, (128, 128, 128, 128, 128)),
        (NAN, (0, 0, 0, 0, 0)),
        (-0.0, (0, 0, 0, 0, 0)),
    ],
    "ufixed8_f4": [  # step 1/16, k in [0, 255]
        (2.5, (40, 40, 40, 40, 40)),
        (0.03125, (0, 1, 0, 0, 1)),
        (0.09375, (2, 2, 1, 1, 2)),
        (15.9375, (255, 255, 255, 255, 255)),
        (15.96875, (255, 255, 255, 255, 255)),
        (7.96875, (128, 128, 127, 127, 128)),  # k = 127.5: tie to even 128
        (-0.03125, (0, 0, 0, 0, 0)),  # negative: clamped to 0
        (-1000.0, (0, 0, 0, 0, 0)),
        (1000.0, (255, 255, 255, 255, 255)),
        (INF, (255, 255, 255, 255, 255)),
        (-INF, (0, 0, 0, 0, 0)),
        (NAN, (0, 0, 0, 0, 0)),
    ],
    "int8": [
        (2.5, (2, 3, 2, 2, 3)),
        (-2.5, (254, 253, 254, 253, 254)),
        (0.5, (0, 1, 0, 0, 1)),
        (-0.5, (0, 255, 0, 255, 0)),
        (1.5, (2, 2, 1, 1, 2)),
        (-1.5, (254, 254, 255, 254, 255)),
        (3.5, (4, 4, 3, 3, 4)),
        (0.4, (0, 0, 0, 0, 1)),
        (-0.4, (0, 0, 0, 255, 0)),
        (126.5, (126, 127, 126, 126, 127)),
        (127.5, (127, 127, 127, 127, 127)),  # would be 128: saturates
        (-127.5, (128, 128, 129, 128, 129)),  # -128 (even) / -127
        (-128.5, (128, 128, 128, 128, 128)),
        (300.0, (127, 127, 127, 127, 127)),
        (-300.0, (128, 128, 128, 128, 128)),
        (INF, (127, 127, 127, 127, 127)),
        (-INF, (128, 128, 128, 128, 128)),
        (NAN, (0, 0, 0, 0, 0)),
    ],
    "uint8": [
        (2.5, (2, 3, 2, 2, 3)),
        (127.5, (128, 128, 127, 127, 128)),
        (254.5, (254, 255, 254, 254, 255)),
        (255.5, (255, 255, 255, 255, 255)),
        (-0.5, (0, 0, 0, 0, 0)),
        (-3.0, (0, 0, 0, 0, 0)),
        (1e9, (255, 255, 255, 255, 255)),
        (INF, (255, 255, 255, 255, 255)),
        (-INF, (0, 0, 0, 0, 0)),
        (NAN, (0, 0, 0, 0, 0)),
    ],
    "int8n": [  # k in [-127, 127]; code 128 unused
        (2.5, (2, 3, 2, 2, 3)),
        (-2.5, (254, 253, 254, 253, 254)),
        (-126.5, (130, 129, 130, 129, 130)),  # -126 (even) / -127
        (-127.0, (129, 129, 129, 129, 129)),
        (-127.5, (129, 129, 129, 129, 129)),  # -128 is outside the narrow range
        (-128.0, (129, 129, 129, 129, 129)),
        (-1000.0, (129, 129, 129, 129, 129)),
        (127.5, (127, 127, 127, 127, 127)),
        (-INF, (129, 129, 129, 129, 129)),
        (INF, (127, 127, 127, 127, 127)),
        (NAN, (0, 0, 0, 0, 0)),
    ],
    "int4": [  # k in [-8, 7], code k mod 16
        (2.5, (2, 3, 2, 2, 3)),
        (-2.5, (14, 13, 14, 13, 14)),
        (6.5, (6, 7, 6, 6, 7)),
        (7.5, (7, 7, 7, 7, 7)),
        (-7.5, (8, 8, 9, 8, 9)),
        (-8.5, (8, 8, 8, 8, 8)),
        (0.5, (0, 1, 0, 0, 1)),
        (-0.5, (0, 15, 0, 15, 0)),
        (100.0, (7, 7, 7, 7, 7)),
        (-100.0, (8, 8, 8, 8, 8)),
        (INF, (7, 7, 7, 7, 7)),
        (-INF, (8, 8, 8, 8, 8)),
        (NAN, (0, 0, 0, 0, 0)),
    ],
}


def _cases():
    for spec, rows in CASES.items():
        for i, mode in enumerate(MODES):
            yield pytest.param(spec, mode, [r[0] for r in rows], [r[1][i] for r in rows], id=f"{spec}-{mode}")


@pytest.mark.parametrize("spec,mode,xs,expected", list(_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_encode_gives_hand_computed_codes_for_ties_saturation_nan_and_inf(spec, mode, xs, expected, dtype):
    x = torch.tensor(xs, dtype=dtype)
    assert_codes_equal(lb.parse_format(spec).encode(x, rounding=mode), expected, x)


def _value_of(spec: str, code: int) -> float:
    w = {"fixed8_f4": 8, "ufixed8_f4": 8, "int8": 8, "uint8": 8, "int8n": 8, "int4": 4}[spec]
    f = 4 if "fixed" in spec else 0
    k = code - (1 << w) if (not spec.startswith("u") and code >= 1 << (w - 1)) else code
    return k / 2**f


@pytest.mark.parametrize("spec,mode,xs,expected", list(_cases()))
def test_quantize_gives_the_value_of_the_hand_computed_code(spec, mode, xs, expected):
    x = torch.tensor(xs, dtype=torch.float64)
    want = torch.tensor([_value_of(spec, c) for c in expected], dtype=torch.float64)
    assert_floats_identical(lb.parse_format(spec).quantize(x, rounding=mode), want, x)


@pytest.mark.parametrize(
    "spec,values",
    [
        ("int4", [float(k) for k in range(-8, 8)]),
        ("uint4", [float(k) for k in range(16)]),
        ("int3n", [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]),
        ("int2", [-2.0, -1.0, 0.0, 1.0]),
        ("uint1", [0.0, 1.0]),
        ("fixed4_f2", [-2.0, -1.75, -1.5, -1.25, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]),
        ("ufixed3_f1", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
        ("fixed3_f5", [-0.125, -0.09375, -0.0625, -0.03125, 0.0, 0.03125, 0.0625, 0.09375]),
        ("fixed4_f0", [float(k) for k in range(-8, 8)]),
        ("int8", [float(k) for k in range(-128, 128)]),
        ("int8n", [float(k) for k in range(-127, 128)]),
        ("fixed8_f4", [k / 16 for k in range(-128, 128)]),
        ("ufixed8_f4", [k / 16 for k in range(256)]),
    ],
)
def test_values_equal_the_hand_computed_grid(spec, values):
    assert_floats_identical(lb.parse_format(spec).values(), torch.tensor(values, dtype=torch.float64))


@pytest.mark.parametrize(
    "spec,bits,signed", [("int8", 8, True), ("uint8", 8, False), ("fixed8_f4", 8, True), ("int4", 4, True)]
)
def test_every_code_decodes_to_its_twos_complement_integer_times_step(spec, bits, signed):
    fmt = lb.parse_format(spec)
    f = 4 if "fixed" in spec else 0
    want = [((c - (1 << bits)) if signed and c >= 1 << (bits - 1) else c) / 2**f for c in range(1 << bits)]
    assert_floats_identical(fmt.decode(torch.arange(1 << bits), torch.float64), torch.tensor(want, dtype=torch.float64))


def test_narrow_int8n_code_128_is_rejected_by_decode_and_its_neighbours_decode():
    fmt = lb.parse_format("int8n")
    with pytest.raises(ValueError, match=r"128"):
        fmt.decode(torch.tensor([5, 128, 7]))
    got = fmt.decode(torch.tensor([127, 129, 255]), torch.float64)
    assert_floats_identical(got, torch.tensor([127.0, -127.0, -1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "spec,x,expected",
    [
        ("int8", [-0.0, -0.4], [0.0, 0.0]),  # integers have no -0
        ("fixed8_f4", [-0.0, -0.01], [0.0, 0.0]),
        ("int8n", [-0.0], [0.0]),
    ],
)
def test_grids_have_no_negative_zero(spec, x, expected):
    got = lb.parse_format(spec).quantize(torch.tensor(x, dtype=torch.float64))
    assert_floats_identical(got, torch.tensor(expected, dtype=torch.float64))


def test_wide_and_fine_grids_saturate_and_round_exactly_at_the_extremes():
    # int32: k in [-2^31, 2^31 - 1]; fixed32_f64: step 2^-64; uint32 codes reach 2^32 - 1
    i32 = lb.parse_format("int32")
    x = torch.tensor([2.0**31, -(2.0**31) - 0.5, 2.0**31 - 1.5, 1e300, -1e300], dtype=torch.float64)
    assert_codes_equal(i32.encode(x), [2**31 - 1, 2**31, 2**31 - 2, 2**31 - 1, 2**31], x)
    u32 = lb.parse_format("uint32")
    assert_codes_equal(u32.encode(torch.tensor([2.0**32, 2.0**32 - 1.5], dtype=torch.float64)), [2**32 - 1, 2**32 - 2])
    fine = lb.parse_format("fixed32_f64")
    y = torch.tensor([2.0**-64, 1.5 * 2.0**-64, 2.5 * 2.0**-64, -(2.0**-65), 2.0**-66, 1.0], dtype=torch.float64)
    assert_codes_equal(fine.encode(y), [1, 2, 2, 0, 0, 2**31 - 1], y)
