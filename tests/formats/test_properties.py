"""Algebraic properties of every family, on hypothesis-drawn tensors of every input dtype, plus
exhaustive structural checks of every preset of at most 16 bits.

Hypothesis profile: ``ci`` (derandomized) when the CI environment variable is set, see
tests/conftest.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import lowbit as lb
from lowbit.formats import PRESETS
from lowbit.testing import (
    FLOAT_DTYPES,
    assert_codes_equal,
    assert_floats_identical,
    float_tensors,
    sorted_float_tensors,
)

DETERMINISTIC = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
FAMILY_SPECS = [
    "posit8_es2", "posit6_es1_s-4", "posit16_es1", "posit8_es0", "posit32_es2", "posit3_es1",
    "e4m3fn", "e4m3", "e5m2", "e2m1fn", "e3m2fn", "e8m0fnu", "e3m4", "e4m3fnuz", "e4m3b11fnuz", "e4m3fn_sat",
    "e5m10", "e8m7", "e8m23", "e6m1",
    "fixed8_f4", "ufixed8_f4", "fixed16_f8", "fixed32_f20", "int4", "int8n", "uint8", "int32",
]
SMALL_PRESETS = [
    p for group in PRESETS.values() for p in group
    if not lb.parse_format(p).data_dependent and lb.parse_format(p).bits <= 16  # scalar formats only
]

specs = st.sampled_from(FAMILY_SPECS)
dtypes = st.sampled_from(FLOAT_DTYPES)
modes = st.sampled_from(DETERMINISTIC)


def _symmetric(fmt) -> bool:
    """Formats whose value set is closed under negation (fixed/int: only the narrow int range)."""
    if isinstance(fmt, lb.Posit):
        return True
    if isinstance(fmt, lb.Minifloat):
        return fmt.signed
    return isinstance(fmt, lb.IntegerFormat) and fmt.narrow


def _signed(fmt) -> bool:
    if isinstance(fmt, lb.Minifloat):
        return fmt.signed
    return getattr(fmt, "signed", True)


# ----------------------------------------------------------------------------- hypothesis
@given(spec=specs, mode=modes, data=st.data())
def test_quantize_is_idempotent_for_every_family_dtype_and_mode(spec, mode, data):
    dtype = data.draw(dtypes, label="dtype")
    x = data.draw(float_tensors(dtype), label="x")
    fmt = lb.parse_format(spec)
    q = fmt.quantize(x, rounding=mode)
    assert q.dtype == dtype and q.shape == x.shape
    assert_floats_identical(fmt.quantize(q, rounding=mode), q, x)


@given(spec=specs, mode=modes, data=st.data())
def test_quantize_is_monotone_non_decreasing(spec, mode, data):
    dtype = data.draw(dtypes, label="dtype")
    x = data.draw(sorted_float_tensors(dtype, min_size=2), label="x")
    q = lb.parse_format(spec).quantize(x, rounding=mode).to(torch.float64)
    q = q[~torch.isnan(q)]  # NaN results (overflow to NaN, e8m0fnu's negatives) have no order
    assert bool((q[1:] >= q[:-1]).all()), f"not monotone: x={x.tolist()} q={q.tolist()}"


@given(spec=specs, mode=st.sampled_from(("nearest_even", "nearest_away", "toward_zero")), data=st.data())
def test_sign_symmetry_q_of_minus_x_is_minus_q_of_x_for_symmetric_formats(spec, mode, data):
    fmt = lb.parse_format(spec)
    assume(_signed(fmt))  # unsigned grids and e8m0fnu have no negatives
    dtype = data.draw(dtypes, label="dtype")
    if _symmetric(fmt):
        x = data.draw(float_tensors(dtype, allow_nan=False), label="x")
    else:  # two's complement grids are symmetric only inside [-max, max]
        x = data.draw(float_tensors(dtype, min_value=-fmt.max, max_value=fmt.max), label="x")
    q_pos = fmt.quantize(x, rounding=mode).to(torch.float64)
    q_neg = fmt.quantize(-x, rounding=mode).to(torch.float64)
    if isinstance(fmt, lb.Minifloat) and fmt.has_negative_zero:
        assert_floats_identical(q_neg, -q_pos, x)  # the sign of zero follows too
    else:  # posits, fnuz, grids: one zero (+0)
        both_nan = torch.isnan(q_neg) & torch.isnan(q_pos)
        msg = f"x={x.tolist()} q(x)={q_pos.tolist()} q(-x)={q_neg.tolist()}"
        assert bool(((q_neg == -q_pos) | both_nan).all()), msg


@given(spec=specs, mode=st.sampled_from(DETERMINISTIC + ("stochastic",)), seed=st.integers(0, 2**31), data=st.data())
def test_quantize_equals_decode_of_encode_in_the_input_dtype(spec, mode, seed, data):
    dtype = data.draw(dtypes, label="dtype")
    x = data.draw(float_tensors(dtype), label="x")
    fmt = lb.parse_format(spec)
    g = (lambda: torch.Generator().manual_seed(seed)) if mode == "stochastic" else (lambda: None)
    q = fmt.quantize(x, rounding=mode, generator=g())
    assert_floats_identical(q, fmt.decode(fmt.encode(x, rounding=mode, generator=g()), dtype=dtype), x)


@given(spec=specs, mode=st.sampled_from(DETERMINISTIC + ("stochastic",)), data=st.data())
def test_encode_returns_codes_in_range_with_the_documented_dtype(spec, mode, data):
    dtype = data.draw(dtypes, label="dtype")
    x = data.draw(float_tensors(dtype), label="x")
    fmt = lb.parse_format(spec)
    g = torch.Generator().manual_seed(0) if mode == "stochastic" else None
    codes = fmt.encode(x, rounding=mode, generator=g)
    expected_dtype = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}[
        8 if fmt.bits <= 8 else 16 if fmt.bits <= 15 else 32 if fmt.bits <= 31 else 64
    ]
    assert codes.dtype == expected_dtype and codes.shape == x.shape
    c = codes.to(torch.int64)
    assert bool(((c >= 0) & (c < (1 << fmt.bits))).all())


# ----------------------------------------------------------------------------- exhaustive
@pytest.mark.parametrize(
    "spec", SMALL_PRESETS + ["posit3_es1", "posit12_es3_s5", "e6m1", "e1m2fn", "int3n", "ufixed5_f7"]
)
def test_values_are_sorted_strictly_increasing_finite_and_include_max_and_min_positive(spec):
    fmt = lb.parse_format(spec)
    v = fmt.values()
    assert v.dtype == torch.float64
    assert bool(torch.isfinite(v).all())
    assert bool((v[1:] > v[:-1]).all())
    assert float(v[-1]) == fmt.max
    assert float(v[v > 0][0]) == fmt.min_positive


# codes that do not survive decode -> encode, per format: NaN patterns other than the canonical
# quiet NaN land on a canonical NaN (either sign is accepted: decode need not keep a NaN's sign).
# -0 codes are not listed: decode keeps the sign of zero, so they round-trip.
def _ieee_nan_codes(e: int, m: int) -> set[int]:
    top = ((1 << e) - 1) << m
    return {sign | top | mant for sign in (0, 1 << (e + m)) for mant in range(1, 1 << m)}


NON_IDENTITY: dict[str, tuple[set[int], set[int]]] = {
    # spec: (codes that may change, the codes they may become)
    "e4m3fn": ({0x7F, 0xFF}, {0x7F, 0xFF}),
    "e4m3fn_sat": ({0x7F, 0xFF}, {0x7F, 0xFF}),
    "e4m3": (set(range(0x79, 0x80)) | set(range(0xF9, 0x100)), {0x7C, 0xFC}),
    "e5m2": ({0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}, {0x7E, 0xFE}),
    "e3m4": (set(range(0x71, 0x80)) | set(range(0xF1, 0x100)), {0x78, 0xF8}),
    "e5m10": (_ieee_nan_codes(5, 10), {0x7E00, 0xFE00}),
    "e8m7": (_ieee_nan_codes(8, 7), {0x7FC0, 0xFFC0}),
    "e6m1": ({0x7F, 0xFF}, {0x7F, 0xFF}),
    "e5m6": (_ieee_nan_codes(5, 6), {0x7E0, 0xFE0}),
}
INVALID_CODES = {"int8n": {0x80}, "int3n": {0x4}}  # decode rejects them
EXTRA_SMALL = [
    "posit5_es3", "posit12_es3_s5", "posit2_es0", "e6m1", "e5m6", "e3m0fnu", "e2m2fn", "e1m0fnuz",
    "fixed3_f5", "int3n", "ufixed5_f7", "uint1",
]


@pytest.mark.parametrize("spec", SMALL_PRESETS + EXTRA_SMALL)
def test_decode_then_encode_returns_every_code_except_the_listed_nan_duplicates(spec):
    fmt = lb.parse_format(spec)
    all_codes = torch.arange(1 << fmt.bits, dtype=torch.int64)
    valid = torch.tensor([c for c in range(1 << fmt.bits) if c not in INVALID_CODES.get(spec, set())])
    back = fmt.encode(fmt.decode(valid, torch.float64)).to(torch.int64)
    changing, targets = NON_IDENTITY.get(spec, (set(), set()))
    mask = torch.tensor([int(c) in changing for c in valid])
    assert_codes_equal(back[~mask], valid[~mask], valid[~mask].to(torch.float64), what=f"{spec} round trip")
    assert set(back[mask].tolist()) <= targets
    assert all_codes.numel() == 1 << fmt.bits


@pytest.mark.parametrize("spec", SMALL_PRESETS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_values_quantize_to_themselves_in_every_dtype_that_holds_them(spec, dtype):
    fmt = lb.parse_format(spec)
    v = fmt.values()
    x = v.to(dtype)
    held = x.to(torch.float64) == v  # exact in this dtype
    assert_floats_identical(fmt.quantize(x[held]), x[held], x[held])
