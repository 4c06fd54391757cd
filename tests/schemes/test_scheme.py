"""lowbit.schemes.Scheme: a frozen value that quantizes exactly as the existing implementations.

Every comparison is bit for bit (`torch.equal`) against an independent path: the role quantizer
built from a RoleConfig, the format's own quantize, torchao's NVFP4 reference, and `lowbit.save`'s
stored bytes (read from the checkpoint header).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit as lb
from lowbit.formats.granularity import Granularity
from lowbit.quant.config import RoleConfig
from lowbit.schemes import (PRESETS, Absmax, BlockScale, Fitted, NoScale, PowerOfTwo, Scheme, SchemeCodes, Static,
                            rule_from_dict)
from lowbit.simulate.layers import RoleQuantizer
from lowbit.storage.inspect import inspect_checkpoint
from lowbit.storage.plan import pack_state_dict

# role options (RoleConfig dicts) and the scheme spec each one is
ROLES = {
    "posit8_es2": {"format": "posit8_es2"},
    "e4m3fn@stochastic": {"format": "e4m3fn", "rounding": "stochastic"},
    "posit8_es2+pow2_histogram": {"format": "posit8_es2", "scaling": "histogram"},
    "e4m3fn+pow2_amax_h4": {"format": "e4m3fn", "scaling": "amax", "history": 4},
    "posit6_es1+pow2_k-3": {"format": "posit6_es1", "scaling": -3},
    "int8+absmax": {"format": "int8", "scaling": "absmax"},
    "int8+absmax_c0": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
    "int4+absmax_g32": {"format": "int4", "scaling": "absmax",
                        "granularity": {"kind": "group", "axis": -1, "group_size": 32}},
    "e2m1fn+absmax_g16_a0": {"format": "e2m1fn", "scaling": "absmax",
                             "granularity": {"kind": "group", "axis": 0, "group_size": 16}},
    "int8+absmax_token": {"format": "int8", "granularity": "token"},
    "uint8+static_-1.5_3.0": {"format": "uint8", "scaling": "static", "range": [-1.5, 3.0]},
    "e4m3fn+static_-2.0_1.0": {"format": "e4m3fn", "scaling": "static", "range": [-2.0, 1.0]},
    "codebook2+fitted_c0": {"format": "codebook2", "granularity": "channel"},
    "ternary+fitted_g16": {"format": "ternary", "granularity": {"kind": "group", "axis": -1, "group_size": 16}},
    "nvfp4": {"format": "nvfp4"},
    "mxfp4_e2m1fn": {"format": "mxfp4_e2m1fn"},
    "bfp8_b16": {"format": "bfp8_b16"},
    "block32_e2m1fn_scale_posit8_es1_t": {"format": "block32_e2m1fn_scale_posit8_es1_t"},
    "block16_int4_scale_e8m0fnu_a0": {"format": "block16_int4_scale_e8m0fnu_a0"},
}
DETERMINISTIC = [s for s in ROLES if "stochastic" not in s]


def _x(shape=(32, 64), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.exp2(torch.randn(*shape, generator=g) * 3)
    x[3] = 0.0  # an all-zero row: zero scales per channel / token / group
    return x.to(dtype)


# ------------------------------------------------------------------ the value
@pytest.mark.parametrize("spec", sorted(ROLES) + sorted(PRESETS))
def test_every_scheme_is_frozen_hashable_and_round_trips_through_json_and_its_string(spec):
    s = Scheme.preset(spec) if spec in PRESETS else Scheme.parse(spec)
    assert Scheme.from_json(json.dumps(json.loads(s.to_json()))) == s
    assert hash(Scheme.from_dict(s.to_dict())) == hash(s)
    assert Scheme.parse(str(s)) == s
    if spec not in PRESETS:
        assert str(s) == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rounding = "floor"  # type: ignore[misc]
    assert {s: 1}[Scheme.parse(str(s))] == 1


@pytest.mark.parametrize("spec", sorted(ROLES))
def test_role_config_scheme_is_the_scheme_of_the_spec(spec):
    assert RoleConfig.parse(ROLES[spec], "w").scheme == Scheme.parse(spec)


_granularities = st.one_of(
    st.just(Granularity.tensor()), st.just(Granularity.token()),
    st.builds(Granularity.channel, st.integers(-3, 3)),
    st.builds(Granularity.group, st.integers(1, 256), st.integers(-3, 3)),
)
_rules = st.one_of(
    st.just(NoScale()),
    st.builds(PowerOfTwo, st.one_of(st.sampled_from(["histogram", "amax"]), st.integers(-40, 40)),
              st.one_of(st.none(), st.integers(1, 50)), st.integers(1, 64)),
    st.builds(Absmax, _granularities),
    st.tuples(st.floats(-1e6, 0, allow_nan=False), st.floats(0, 1e6, allow_nan=False)).map(lambda r: Static(*r)),
)
_blocks = st.tuples(st.sampled_from(["e8m0fnu", "e4m3fn", "posit8_es1", "e5m2"]), st.integers(1, 128),
                    st.sampled_from([-1, 0, 1]), st.booleans())


@settings(max_examples=60, deadline=None)
@given(rule=_rules, element=st.sampled_from(["posit8_es2", "e4m3fn", "e5m2"]),
       rounding=st.sampled_from(["nearest_even", "floor", "stochastic"]))
def test_any_rule_round_trips_through_dict_json_and_string(rule, element, rounding):
    s = Scheme(element, rule, rounding)
    assert rule_from_dict(rule.to_dict()) == rule
    assert Scheme.from_json(s.to_json()) == s and Scheme.parse(str(s)) == s and hash(Scheme.parse(str(s))) == hash(s)


@settings(max_examples=40, deadline=None)
@given(rule=_blocks, element=st.sampled_from(["e2m1fn", "e3m2fn", "int4", "int8", "posit8_es1"]))
def test_any_block_rule_is_the_block_format_of_its_spec(rule, element):
    try:
        s = Scheme(element, BlockScale(*rule))
    except ValueError:  # e.g. an E8M0 scale with a tensor scale: refused with a named reason
        return
    fmt = lb.parse_format(str(s))
    assert Scheme(fmt) == s and fmt == s.format
    assert Scheme.from_dict(s.to_dict()) == s


def test_a_block_format_given_as_element_is_split_into_the_one_block_rule():
    assert Scheme("nvfp4") == Scheme("e2m1fn", BlockScale("e4m3fn", 16, tensor_scale=True))
    assert Scheme("mxint8").scale == BlockScale("e8m0fnu", 32)
    assert Scheme("bfp8_b16") == Scheme("fixed8_f6", BlockScale("exp16", 16))
    assert Scheme.preset("int4_g128") == Scheme("int4", Absmax(Granularity.group(128)))


# ------------------------------------------------------------------ quantize == the existing paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("spec", DETERMINISTIC)
def test_quantize_is_the_role_quantizer_of_the_same_role_config_bit_for_bit(spec, dtype):
    x = _x(dtype=dtype)
    rc = RoleConfig.parse(ROLES[spec], "w")
    role = RoleQuantizer(rc.format, rc.rounding, rc.scaling, rc.every, rc.history, granularity=rc.granularity,
                         range=rc.range)
    want = role(x)
    got = Scheme.parse(spec).quantize(x)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(RoleQuantizer.from_scheme(Scheme.parse(spec))(x), want)


def test_stochastic_quantize_with_a_seeded_generator_is_the_role_quantizers():
    x = _x()
    s = Scheme.parse("posit8_es2@stochastic")
    want = RoleQuantizer(lb.parse_format("posit8_es2"), "stochastic", seed=7)(x)
    assert torch.equal(s.quantize(x, torch.Generator().manual_seed(7)), want)
    assert torch.equal(RoleQuantizer.from_scheme(s, seed=7)(x), want)


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l", "mxfp4_e2m1fn", "mxint8", "bfp8_b16",
                                  "block32_e2m1fn_scale_posit8_es1_t", "posit8_es2"])
def test_a_format_scheme_quantizes_as_the_format(spec):
    x = _x()
    assert torch.equal(Scheme.parse(spec).quantize(x), lb.parse_format(spec).quantize(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset", ["nvfp4", "nvfp4_1l"])
def test_nvfp4_presets_are_torchaos_reference_bit_for_bit(preset, dtype):
    pytest.importorskip("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    x = _x((64, 256), dtype)
    x[5, 17] *= 1e4  # one huge outlier in its block
    pts = per_tensor_amax_to_scale(x.abs().max()) if preset == "nvfp4" else None
    want = NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=pts).dequantize(torch.float32).to(dtype)
    assert torch.equal(Scheme.preset(preset).quantize(x), want)


# ------------------------------------------------------------------ encode / decode
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", DETERMINISTIC)
def test_decode_of_encode_is_quantize_bit_for_bit(spec, dtype):
    s = Scheme.parse(spec)
    x = _x(dtype=dtype)
    enc = s.encode(x)
    assert isinstance(enc, SchemeCodes) and enc.codes.shape == x.shape and not enc.codes.dtype.is_floating_point
    got = s.decode(enc)
    assert got.dtype == dtype and torch.equal(got, s.quantize(x))


def test_a_zero_absmax_granule_encodes_to_codes_that_decode_to_zeros():
    s = Scheme.parse("int8+absmax_c0")
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    enc = s.encode(x)
    assert enc.scales["scale"].flatten().tolist()[0] == 0.0
    assert torch.equal(s.decode(enc), s.quantize(x)) and s.decode(enc)[0].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------ storage_bits == the checkpoint
WEIGHT_ROLES = ["posit8_es2", "int4+absmax", "int8+absmax_c0", "int4+absmax_g32", "e2m1fn+absmax_g16_a0", "nvfp4",
                "nvfp4_1l", "mxfp4_e2m1fn", "mxint8", "bfp8_b16", "block32_e2m1fn_scale_posit8_es1_t",
                "block16_int4_scale_e8m0fnu_a0", "codebook2+fitted_c0", "ternary+fitted_g16", "codebook4"]


@pytest.mark.parametrize("spec", WEIGHT_ROLES)
def test_storage_bits_is_what_lowbit_save_stores(spec, tmp_path):
    w = _x((32, 64))
    s = Scheme.parse(spec)
    role = ROLES.get(spec, {"format": spec.split("+")[0]})
    if "+absmax" in spec and spec not in ROLES:
        role = {"format": spec.split("+")[0], "scaling": "absmax"}
    packed = pack_state_dict({"fc.weight": w}, {"weight": role})
    lb.save(packed, tmp_path / "w.lb")
    (row,) = inspect_checkpoint(tmp_path / "w.lb")
    assert s.storage_bits(w) == 8 * row["stored_bytes"]
    if not isinstance(s.element, lb.formats.LearnedFormat):
        assert s.storage_bits(tuple(w.shape)) == 8 * row["stored_bytes"]


def test_sensitivity_storage_bits_is_the_schemes():
    from lowbit.quant import storage_bits

    w = _x((16, 64))
    for spec in ROLES:
        rc = RoleConfig.parse(ROLES[spec], "w")
        if rc.scaling == "static":
            continue
        assert storage_bits(rc.format, w, scaling=rc.scaling, granularity=rc.granularity) == \
            rc.scheme.storage_bits(w)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, words", [
    (lambda: Scheme.preset("nvfp5"), ["name='nvfp5'", "nvfp4", "int4_g128"]),
    (lambda: Scheme("int4", rounding="up"), ["rounding='up'", "nearest_even"]),
    (lambda: Scheme("int4", PowerOfTwo("histogram")), ["PowerOfTwo", "posit and minifloat"]),
    (lambda: Scheme("nvfp4", Absmax()), ["block format", "NoScale"]),
    (lambda: Scheme("codebook2", Absmax()), ["Absmax", "scalar element"]),
    (lambda: Scheme("int4", "absmax"), ["scale must be a scale rule", "Absmax"]),
    (lambda: Scheme.parse("int4+absmax_x3"), ["'absmax_x3'", "absmax_g<size>"]),
    (lambda: BlockScale("e8m0fnu", 0), ["block_size=0", "1..65536"]),
    (lambda: BlockScale("e8m0fnu", 32, tensor_scale=True), ["tensor_scale=True", "float scale format"]),
    (lambda: BlockScale("bogus", 32), ["scale='bogus'", "e8m0fnu", "exp16"]),
    (lambda: Scheme("e2m1fn", BlockScale("e8m0fnu", 32, axis=0)), ["axis=0", "last axis"]),
    (lambda: Scheme("int4", BlockScale("exp16", 32)), ["exp16", "fixed<b>_f<b-2>"]),
    (lambda: Static(2.0, 1.0), ["lo must be <= hi"]),
    (lambda: PowerOfTwo("max"), ["rule='max'", "'histogram', 'amax'"]),
    (lambda: Fitted(Granularity.tensor()), ["Fitted granularity", "'channel' or 'group'"]),
    (lambda: rule_from_dict({"rule": "minmax"}), ["rule='minmax'", "none, pow2, absmax, static, fitted, block"]),
    (lambda: Scheme.from_dict({"element": "int4", "scales": {}}), ["unknown key(s) ['scales']", "element, scale"]),
    (lambda: Scheme.parse("codebook2").storage_bits((4, 4)), ["needs the tensor"]),
    (lambda: Scheme.parse("int4").storage_bits((4, -1)), ["shape=(4, -1)", "ints >= 0"]),
])
def test_bad_input_raises_an_error_naming_the_argument_and_the_allowed_values(make, words):
    with pytest.raises((ValueError, TypeError)) as err:
        make()
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_decode_without_the_scales_it_needs_names_them():
    s = Scheme.parse("int8+absmax_c0")
    enc = s.encode(_x((4, 8)))
    with pytest.raises(ValueError, match="lacks 'scale'"):
        s.decode(SchemeCodes(enc.codes, {}, enc.dtype))
