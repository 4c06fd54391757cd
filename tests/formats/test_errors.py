"""Errors name the wrong argument and what is allowed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.formats import ROUNDING_MODES

SPECS = ["posit8_es2", "e4m3fn", "fixed8_f4", "int8n"]
DTYPE_NAMES = ("torch.float16", "torch.bfloat16", "torch.float32", "torch.float64")


def _names_all_dtypes(msg: str) -> bool:
    return all(name in msg for name in DTYPE_NAMES)


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("method", ["encode", "quantize"])
@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([1, 2]),
        torch.tensor([True]),
        torch.tensor([1], dtype=torch.uint8),
        torch.zeros(2, dtype=torch.complex64),
        torch.zeros(2).to(torch.float8_e4m3fn),
    ],
    ids=["int64", "bool", "uint8", "complex64", "float8"],
)
def test_non_floating_tensors_raise_type_error_naming_x_and_the_allowed_dtypes(spec, method, bad):
    with pytest.raises(TypeError) as err:
        getattr(lb.parse_format(spec), method)(bad)
    msg = str(err.value)
    assert msg.startswith("x ") and _names_all_dtypes(msg), msg
    assert str(bad.dtype) in msg


@pytest.mark.parametrize("method", ["encode", "quantize"])
@pytest.mark.parametrize("bad", [[1.0, 2.0], 1.5, np.array([1.0]), None], ids=["list", "float", "ndarray", "None"])
def test_non_tensors_raise_type_error_naming_x_and_the_allowed_dtypes(method, bad):
    with pytest.raises(TypeError) as err:
        getattr(lb.parse_format("e4m3fn"), method)(bad)
    msg = str(err.value)
    assert "x must be a torch.Tensor" in msg and _names_all_dtypes(msg), msg
    assert type(bad).__name__ in msg


@pytest.mark.parametrize("method", ["encode", "quantize"])
@pytest.mark.parametrize("bad", ["nearest", "round", "NEAREST_EVEN", "", "stochastic_rounding"])
def test_unknown_rounding_raises_value_error_listing_every_mode(method, bad):
    with pytest.raises(ValueError) as err:
        getattr(lb.parse_format("posit8_es2"), method)(torch.ones(2), rounding=bad)
    msg = str(err.value)
    assert "rounding" in msg and repr(bad) in msg
    assert all(m in msg for m in ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil", "stochastic"))
    assert set(ROUNDING_MODES) == {"nearest_even", "nearest_away", "toward_zero", "floor", "ceil", "stochastic"}


def test_rounding_accepts_the_enum_members_too():
    fmt = lb.parse_format("int8")
    x = torch.tensor([2.5])
    assert int(fmt.encode(x, rounding=lb.Rounding.NEAREST_AWAY)) == 3
    assert int(fmt.encode(x, rounding=lb.Rounding.FLOOR)) == 2


def test_generator_that_is_not_a_torch_generator_raises_type_error():
    with pytest.raises(TypeError, match="generator"):
        lb.parse_format("e4m3fn").quantize(torch.ones(2), rounding="stochastic", generator=42)


# ----------------------------------------------------------------------------- spec strings
VALID_FORM_MARKERS = ("posit<n>_es<es>", "e<E>m<M>", "fixed<w>_f<f>", "int<b>")


@pytest.mark.parametrize(
    "bad", ["", "posit", "float8", "e4m3xx", "fixed8", "int", "bogus", "8bit", "posit8_es", "e4m3fn_sat_sat"]
)
def test_unknown_spec_raises_format_spec_error_listing_the_valid_forms(bad):
    with pytest.raises(lb.FormatSpecError) as err:
        lb.parse_format(bad)
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert repr(bad) in msg
    assert all(marker in msg for marker in VALID_FORM_MARKERS), msg


@pytest.mark.parametrize("n", [8, 16, 32])
def test_bare_posit_n_is_refused_with_the_es0_es2_hint(n):
    with pytest.raises(lb.FormatSpecError) as err:
        lb.parse_format(f"posit{n}")
    msg = str(err.value)
    assert f"posit{n}_es2" in msg and f"posit{n}_es0" in msg and "ambiguous" in msg


@pytest.mark.parametrize(
    "typo,suggestion",
    [
        ("e4m3f", "e4m3fn"), ("poist8_es2", "posit8_es2"), ("e5m2fnz", "e5m2fnuz"), ("int8m", "int8n"),
        ("bf61", "bf16"), ("fixd8_f4", "fixed8_f4"),
    ],
)
def test_typos_get_a_close_match_suggestion(typo, suggestion):
    with pytest.raises(lb.FormatSpecError, match=re.escape(repr(suggestion))):
        lb.parse_format(typo)


@pytest.mark.parametrize("bad", ["fp8", "fp6", "fp4"])
def test_bare_fp8_fp6_fp4_ask_for_the_split(bad):
    with pytest.raises(lb.FormatSpecError, match="e4m3fn"):
        lb.parse_format(bad)


@pytest.mark.parametrize(
    "bad,allowed",
    [
        ("posit33_es2", "2 <= n <= 32"), ("posit1_es0", "2 <= n <= 32"), ("posit8_es6", "0 <= es <= 5"),
        ("posit8_es2_s990", "|scale| <="), ("e11m2", "1..10"), ("e5m24", "0..23"), ("e10m23", "at most 32"),
        ("e4m0", "man_bits >= 1"), ("uint8n", "signed integers only"), ("int1", "2..32"), ("int33", "2..32"),
        ("uint0", "1..32"), ("fixed1_f0", "2..32"), ("fixed8_f65", "0..64"), ("e4m3b2000", "-985..997"),
    ],
)
def test_out_of_range_parameters_raise_format_spec_error_naming_the_allowed_range(bad, allowed):
    with pytest.raises(lb.FormatSpecError) as err:
        lb.parse_format(bad)
    assert allowed in str(err.value) and repr(bad) in str(err.value), str(err.value)


@pytest.mark.parametrize("bad", [8, 1.5, None, b"e4m3fn"])
def test_non_string_spec_raises_format_spec_error(bad):
    with pytest.raises(lb.FormatSpecError, match="posit8_es2"):
        lb.parse_format(bad)


# ----------------------------------------------------------------------------- codes
@pytest.mark.parametrize(
    "spec,bad,hi",
    [("e4m3fn", 256, 255), ("e4m3fn", -1, 255), ("posit16_es1", 65536, 65535), ("e2m1fn", 16, 15), ("int4", 100, 15),
     ("posit32_es2", 1 << 32, (1 << 32) - 1)],
)
def test_out_of_range_codes_raise_value_error_naming_the_allowed_range(spec, bad, hi):
    with pytest.raises(ValueError) as err:
        lb.parse_format(spec).decode(torch.tensor([0, bad, 1], dtype=torch.int64))
    msg = str(err.value)
    assert f"[0, {hi}]" in msg and str(bad) in msg, msg


def test_negative_int8_codes_are_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        lb.parse_format("posit8_es2").decode(torch.tensor([-64], dtype=torch.int8))


def test_narrow_integer_unused_code_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"except 128"):
        lb.parse_format("int8n").decode(torch.tensor([128]))


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([1.0]), torch.tensor([True]), torch.tensor([1.0], dtype=torch.float64)],
    ids=["f32", "bool", "f64"],
)
def test_non_integer_codes_raise_type_error(bad):
    with pytest.raises(TypeError, match="integer"):
        lb.parse_format("e4m3fn").decode(bad)


@pytest.mark.parametrize("bad", [[1, 2], np.array([1, 2]), 3])
def test_non_tensor_codes_raise_type_error(bad):
    with pytest.raises(TypeError, match="codes"):
        lb.parse_format("e4m3fn").decode(bad)


@pytest.mark.parametrize("bad", [torch.int32, torch.float8_e4m3fn, torch.complex64, "float32"], ids=str)
def test_decode_to_a_non_float_dtype_raises_type_error_naming_the_allowed_dtypes(bad):
    with pytest.raises(TypeError) as err:
        lb.parse_format("e4m3fn").decode(torch.tensor([1]), dtype=bad)
    assert "dtype" in str(err.value) and _names_all_dtypes(str(err.value))


# ----------------------------------------------------------------------------- out=
@pytest.mark.parametrize(
    "out",
    [torch.zeros(4), torch.zeros(3, dtype=torch.float64), torch.zeros(3, 1), torch.zeros(1)],
    ids=["shape", "dtype", "rank", "broadcastable"],
)
def test_out_with_a_different_shape_or_dtype_raises_value_error_and_is_untouched(out):
    before = out.clone()
    with pytest.raises(ValueError) as err:
        lb.parse_format("e4m3fn").quantize(torch.ones(3), out=out)
    assert "out must match x" in str(err.value)
    assert torch.equal(out, before)


@pytest.mark.parametrize("out", [[0.0, 0.0, 0.0], np.zeros(3)], ids=["list", "ndarray"])
def test_out_that_is_not_a_tensor_raises_type_error(out):
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        lb.parse_format("e4m3fn").quantize(torch.ones(3), out=out)
