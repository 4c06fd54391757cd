"""Spec parsing refuses, with a FormatSpecError, what it cannot mean: non-ASCII digits, numbers
too long to be parameters, and ``fp<w>_`` aliases whose width is not the format's."""

from __future__ import annotations

import pytest

import lowbit as lb
from lowbit.errors import FormatSpecError


@pytest.mark.parametrize("spec", ["posit" + "9" * 5000 + "_es2", "e4m3b" + "1" * 5000, "int" + "8" * 13,
                                  "mxfp8_e4m3fn_b" + "3" * 4400, "codebook" + "4" * 20])
def test_huge_numbers_raise_format_spec_error_not_a_plain_value_error(spec):
    with pytest.raises(FormatSpecError, match="digits"):
        lb.parse_format(spec)


@pytest.mark.parametrize("spec", ["posit٨_es٢", "posit８_es２", "e٤m٣fn", "int８", "ｐosit8_es2", "posit8_es2\u200b"])
def test_non_ascii_characters_are_refused_and_named(spec):
    with pytest.raises(FormatSpecError, match="ASCII") as info:
        lb.parse_format(spec)
    assert "U+" in str(info.value)


@pytest.mark.parametrize(("spec", "right"), [
    ("fp4_e4m3fn", "fp8_e4m3fn"), ("fp6_e5m2", "fp8_e5m2"), ("fp8_e2m1fn", "fp4_e2m1fn"),
    ("float8_e3m2fn", "fp6_e3m2fn"), ("fp4_e5m10", "fp16_e5m10"),
])
def test_a_prefixed_alias_whose_width_is_not_the_formats_names_the_right_width(spec, right):
    fmt = spec.split("_", 1)[1]
    bits = lb.parse_format(fmt).bits
    with pytest.raises(FormatSpecError, match=f"has {bits} bits, not {spec[spec.index('_') - 1]}") as info:
        lb.parse_format(spec)
    assert right in str(info.value)


@pytest.mark.parametrize(("spec", "canonical"), [("fp8_int8", "int8"), ("fp8_posit8_es2", "posit8_es2"),
                                                 ("fp8_fixed8_f4", "fixed8_f4"), ("fp4_uint4", "uint4")])
def test_the_fp_prefix_is_only_for_minifloats(spec, canonical):
    with pytest.raises(FormatSpecError, match=f"names a minifloat.*write {canonical}"):
        lb.parse_format(spec)


@pytest.mark.parametrize(("spec", "canonical"), [
    ("fp8_e4m3fn", "e4m3fn"), ("fp8_e5m2", "e5m2"), ("FP8_E4M3FN", "e4m3fn"), ("float8_e4m3fnuz", "e4m3fnuz"),
    ("fp6_e2m3fn", "e2m3fn"), ("fp6_e3m2fn", "e3m2fn"), ("fp4_e2m1fn", "e2m1fn"), ("float4_e2m1fn", "e2m1fn"),
    ("fp8_e8m0fnu", "e8m0fnu"), ("fp8_e4m3fn_sat", "e4m3fn_sat"), ("posit0008_es02", "posit8_es2"),
    ("mxfp8_e4m3fn_b" + "0" * 10 + "16", "mxfp8_e4m3fn_b16"),
])
def test_valid_aliases_and_leading_zeros_still_parse(spec, canonical):
    assert str(lb.parse_format(spec)) == canonical
