"""Spec strings (canonical printing, aliases, round trips) and format cards (hand-typed facts)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import lowbit as lb
from lowbit.formats import PRESETS, count_values, format_card
from lowbit.testing import any_specs, fixed_specs, integer_specs, minifloat_specs, posit_specs

ALL_PRESETS = [p for group in PRESETS.values() for p in group]


@pytest.mark.parametrize("spec", ALL_PRESETS)
def test_every_preset_parses_prints_itself_and_round_trips(spec):
    fmt = lb.parse_format(spec)
    assert str(fmt) == spec == fmt.spec
    again = lb.parse_format(str(fmt))
    assert again == fmt and hash(again) == hash(fmt)
    assert lb.parse_format(fmt) is fmt  # a format passes through
    names = {n: getattr(lb, n) for n in ("parse_format", "Posit", "Minifloat", "FixedPoint", "IntegerFormat")}
    assert eval(repr(fmt), names) == fmt  # repr is constructor-like (dataclass or parse_format form)


@pytest.mark.parametrize(
    "strategy", [posit_specs, minifloat_specs, fixed_specs, integer_specs], ids=lambda s: s.__name__
)
def test_random_valid_specs_round_trip_through_str(strategy):
    @given(strategy())
    def check(spec):
        fmt = lb.parse_format(spec)
        assert lb.parse_format(str(fmt)) == fmt
        assert str(lb.parse_format(str(fmt))) == str(fmt)

    check()


@given(any_specs())
def test_random_valid_formats_have_finite_facts_and_consistent_card(spec):
    fmt = lb.parse_format(spec)
    card = format_card(fmt)
    assert card["spec"] == str(fmt) and card["bits"] == fmt.bits
    assert math.isfinite(fmt.max) and fmt.max > 0
    assert 0 < fmt.min_positive <= fmt.max
    assert card["max"] == fmt.max and card["min_positive"] == fmt.min_positive
    assert 1 <= count_values(fmt) <= 1 << fmt.bits


@pytest.mark.parametrize("spec", ["e10m2b-600", "e9m2b-600"])
def test_accepted_minifloat_bias_keeps_every_value_finite_in_float64(spec):
    try:
        fmt = lb.parse_format(spec)
    except lb.FormatSpecError:
        return  # refusing the spec is a fix too
    assert math.isfinite(fmt.max)
    assert fmt.values().numel() == count_values(fmt)


@pytest.mark.parametrize(
    "alias,canonical",
    [
        ("fp32", "e8m23"), ("float32", "e8m23"), ("float", "e8m23"), ("fp16", "e5m10"), ("half", "e5m10"),
        ("float16", "e5m10"), ("bf16", "e8m7"), ("bfloat16", "e8m7"), ("fp8_e4m3fn", "e4m3fn"),
        ("fp8_e5m2", "e5m2"), ("float8_e5m2", "e5m2"), ("float8_e4m3fnuz", "e4m3fnuz"), ("fp6_e3m2fn", "e3m2fn"),
        ("float6_e2m3fn", "e2m3fn"), ("fp4_e2m1fn", "e2m1fn"), ("float4_e2m1fn", "e2m1fn"), ("e8m0", "e8m0fnu"),
        ("float8_e8m0fnu", "e8m0fnu"), ("  E4M3FN ", "e4m3fn"), ("POSIT8_ES2", "posit8_es2"),
        ("posit8_es2_s0", "posit8_es2"), ("posit6_es1_s-4", "posit6_es1_s-4"), ("posit6_es1_s+3", "posit6_es1_s3"),
        ("e4m3b7fn", "e4m3fn"), ("e4m3b11fnuz", "e4m3b11fnuz"), ("e4m3b8fnuz", "e4m3fnuz"), ("e5m2b15", "e5m2"),
    ],
)
def test_aliases_and_redundant_spellings_print_canonically(alias, canonical):
    fmt = lb.parse_format(alias)
    assert str(fmt) == canonical
    assert fmt == lb.parse_format(canonical)


def test_ml_dtypes_and_torch_names_map_to_formats_with_the_same_width():
    from lowbit.testing import ML_DTYPES_SPECS, TORCH_SPECS

    widths = {"float8": 8, "float6": 6, "float4": 4, "bfloat16": 16, "float16": 16}
    for name, spec in ML_DTYPES_SPECS.items():
        assert lb.parse_format(spec).bits == next(w for k, w in widths.items() if name.startswith(k))
    for dtype, spec in TORCH_SPECS.items():
        assert lb.parse_format(spec).bits == dtype.itemsize * 8


# ----------------------------------------------------------------------------- cards
CARDS = {
    # spec: {card key: hand-typed value}
    "e4m3fn": dict(bits=8, max=448.0, min_positive=2.0**-9, bias=7, num_values=253, min_normal=2.0**-6, overflow="nan"),
    "e4m3fn_sat": dict(bits=8, max=448.0, bias=7, num_values=253, overflow="saturate"),
    "e4m3": dict(bits=8, max=240.0, min_positive=2.0**-9, bias=7, num_values=239, overflow="inf"),
    "e4m3fnuz": dict(bits=8, max=240.0, min_positive=2.0**-10, bias=8, num_values=255, overflow="nan"),
    "e4m3b11fnuz": dict(bits=8, max=30.0, min_positive=2.0**-13, bias=11, num_values=255),
    "e5m2": dict(bits=8, max=57344.0, min_positive=2.0**-16, bias=15, num_values=247, overflow="inf"),
    "e5m2fnuz": dict(bits=8, max=57344.0, min_positive=2.0**-17, bias=16, num_values=255),
    "e3m4": dict(bits=8, max=15.5, min_positive=2.0**-6, bias=3, num_values=223),
    "e3m2fn": dict(bits=6, max=28.0, min_positive=2.0**-4, bias=3, num_values=63, overflow="saturate"),
    "e2m3fn": dict(bits=6, max=7.5, min_positive=2.0**-3, bias=1, num_values=63),
    "e2m1fn": dict(bits=4, max=6.0, min_positive=0.5, bias=1, num_values=15, overflow="saturate"),
    "e8m0fnu": dict(bits=8, max=2.0**127, min_positive=2.0**-127, bias=127, num_values=255, overflow="nan"),
    "e5m10": dict(bits=16, max=65504.0, min_positive=2.0**-24, bias=15, num_values=63487, min_normal=2.0**-14),
    "e8m7": dict(bits=16, max=(2 - 2.0**-7) * 2.0**127, min_positive=2.0**-133, bias=127, num_values=65279),
    "e8m23": dict(
        bits=32, max=(2 - 2.0**-23) * 2.0**127, min_positive=2.0**-149, bias=127, num_values=2**32 - 2**24 - 1
    ),
    "posit8_es2": dict(bits=8, max=2.0**24, min_positive=2.0**-24, es=2, num_values=255, useed="2^4"),
    "posit8_es0": dict(bits=8, max=64.0, min_positive=1 / 64, es=0, num_values=255, useed="2^1"),
    "posit16_es1": dict(bits=16, max=2.0**28, min_positive=2.0**-28, es=1, num_values=65535, useed="2^2"),
    "posit16_es2": dict(bits=16, max=2.0**56, min_positive=2.0**-56, num_values=65535),
    "posit32_es2": dict(bits=32, max=2.0**120, min_positive=2.0**-120, num_values=2**32 - 1),
    "posit6_es1_s-4": dict(bits=6, max=16.0, min_positive=2.0**-12, scale=-4, num_values=63),
    "fixed8_f4": dict(bits=8, max=7.9375, min=-8.0, min_positive=0.0625, step=0.0625, num_values=256),
    "ufixed8_f4": dict(bits=8, max=15.9375, min=0.0, min_positive=0.0625, num_values=256),
    "fixed16_f8": dict(bits=16, max=127.99609375, min=-128.0, min_positive=2.0**-8, num_values=65536),
    "int8": dict(bits=8, max=127.0, min=-128.0, min_positive=1.0, num_values=256),
    "int8n": dict(bits=8, max=127.0, min=-127.0, num_values=255, unused_code="0x80"),
    "uint8": dict(bits=8, max=255.0, min=0.0, num_values=256),
    "int4": dict(bits=4, max=7.0, min=-8.0, num_values=16),
    "uint4": dict(bits=4, max=15.0, min=0.0, num_values=16),
}


@pytest.mark.parametrize("spec", list(CARDS))
def test_format_card_has_the_hand_typed_facts(spec):
    fmt = lb.parse_format(spec)
    card = format_card(fmt)
    assert card == fmt.card()
    for key, want in CARDS[spec].items():
        assert card[key] == want, f"{spec}: card[{key!r}] = {card[key]!r}, want {want!r}"
    assert (fmt.max, fmt.min_positive) == (card["max"], card["min_positive"])


@pytest.mark.parametrize(
    "spec,specials",
    [
        ("e4m3fn", {"NaN": "0x7f", "-0": "0x80"}),
        ("e5m2", {"+inf": "0x7c", "NaN": "0x7e", "-0": "0x80"}),
        ("e4m3fnuz", {"NaN": "0x80"}),
        ("e8m0fnu", {"NaN": "0xff"}),
        ("e2m1fn", {"-0": "0x8"}),
        ("e5m10", {"+inf": "0x7c00", "NaN": "0x7e00", "-0": "0x8000"}),
        ("posit8_es2", {"NaR": "0x80", "zero": "0x0"}),
    ],
)
def test_format_card_lists_the_special_patterns(spec, specials):
    assert format_card(lb.parse_format(spec))["special_values"] == specials


def test_format_card_is_json_serialisable():
    import json

    for spec in ALL_PRESETS:
        json.dumps(format_card(lb.parse_format(spec)))


@pytest.mark.parametrize(
    "spec", [p for p in ALL_PRESETS if not lb.parse_format(p).data_dependent and lb.parse_format(p).bits <= 16]
)
def test_count_values_equals_the_length_of_values(spec):
    fmt = lb.parse_format(spec)
    assert count_values(fmt) == fmt.values().numel() == format_card(fmt)["num_values"]


def test_values_refuses_formats_wider_than_16_bits():
    with pytest.raises(ValueError, match="16 bits"):
        lb.parse_format("posit32_es2").values()


def test_e2m1fn_and_posit4_es0_value_tables_are_the_hand_computed_ones():
    e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert lb.parse_format("e2m1fn").values().tolist() == [-v for v in reversed(e2m1[1:])] + e2m1
    p4 = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0]  # magnitudes 001..111: 2^-2, 2^-1, 1.5·2^-1, 1, 1.5, 2, 4
    assert lb.parse_format("posit4_es0").values().tolist() == [-v for v in reversed(p4[1:])] + p4
    p5 = [0.0, 2.0**-6, 2.0**-4, 2.0**-3, 2.0**-2, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 64.0]
    assert lb.parse_format("posit5_es1").values().tolist() == [-v for v in reversed(p5[1:])] + p5
    e8m0 = [2.0**k for k in range(-127, 128)]
    assert lb.parse_format("e8m0fnu").values().tolist() == e8m0
    assert torch.equal(lb.parse_format("uint4").values(), torch.arange(16, dtype=torch.float64))


# ---------------------------------------------------------------- as_format: the one coercion
def test_as_format_passes_formats_through_and_parses_specs():
    from lowbit.formats.spec import as_format

    fmt = lb.parse_format("posit8_es2")
    assert as_format(fmt, "weight") is fmt
    assert as_format("fp8_e4m3fn", "weight") == lb.parse_format("e4m3fn")
    assert as_format(None, "weight", optional=True) is None


@pytest.mark.parametrize("value", [None, 8, 2.5, b"posit8_es2", ["e4m3fn"]])
def test_as_format_type_error_names_the_argument_and_the_allowed_values(value):
    from lowbit.formats.spec import as_format

    if value is None:
        with pytest.raises(TypeError, match=r"^fmt must be a format spec string \(e\.g\. 'posit8_es2'\) or a "
                                            r"NumberFormat, got NoneType$"):
            as_format(value, "fmt")
        return
    with pytest.raises(TypeError, match=r"^state\['m'\] must be a format spec string \(e\.g\. 'posit8_es2'\), "
                                        rf"a NumberFormat or None, got {type(value).__name__}$"):
        as_format(value, "state['m']", optional=True)


def test_as_format_bad_spec_names_the_argument_and_the_valid_forms():
    from lowbit.formats.spec import as_format

    with pytest.raises(lb.FormatSpecError, match=r"^check_format: unknown format spec 'posit9x'(.|\n)*Valid forms"):
        as_format("posit9x", "check_format")


@pytest.mark.parametrize("call, argument", [
    (lambda bad: lb.fake_quantize(torch.ones(2), bad), "forward"),
    (lambda bad: lb.Quantizer(backward=bad), "backward"),
    (lambda bad: lb.LowPrecisionOptimizer(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1),
                                          weight=bad), "weight"),
    (lambda bad: lb.StaticLossScaler(1.0, check_format=bad), "check_format"),
    (lambda bad: lb.PositHistogramLossScaler(bad), "fmt"),
])
def test_every_format_argument_goes_through_as_format(call, argument):
    with pytest.raises(TypeError, match=rf"^{argument} must be a format spec string"):
        call(3)
    with pytest.raises(lb.FormatSpecError, match=rf"^{argument}: unknown format spec"):
        call("posit9x")
