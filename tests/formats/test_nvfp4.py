"""NVFP4 and the float-scaled block rule against torchao's reference and an exact Fraction oracle.

The oracle below is written from the rule (the module docstring of lowbit.formats.scaled_block:
torchao's float32 steps) in pure Python with `fractions.Fraction`, one block at a time; it never
calls lowbit. The torchao tests compare with ``NVFP4Tensor.to_nvfp4(...).dequantize(torch.float32)``
itself on more than 10^6 values per spec and dtype.
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction

import pytest
import torch

import lowbit as lb
from lowbit.errors import FormatSpecError
from lowbit.formats import PowerOfTwoBlocks, ScaledBlockFormat, block_format, format_card
from lowbit.formats.fixed_point import IntegerFormat
from lowbit.formats.minifloat import Minifloat

NVFP4 = lb.parse_format("nvfp4")
NVFP4_1L = lb.parse_format("nvfp4_1l")


# ------------------------------------------------------------------ the exact oracle
def _floor_log2(q: Fraction) -> int:
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e if q >= Fraction(2) ** e else e - 1


def _rne(q: Fraction, man_bits: int, emin: int) -> Fraction:
    """q rounded to nearest even with ``man_bits`` fraction bits, exponents >= emin (subnormals below)."""
    if q == 0:
        return Fraction(0)
    a = abs(q)
    quantum = Fraction(2) ** (max(_floor_log2(a), emin) - man_bits)
    n = a / quantum
    k = math.floor(n)
    rem = n - k
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and k % 2):
        k += 1
    return (k * quantum) if q > 0 else -(k * quantum)


def f32(q: Fraction) -> Fraction:
    r = _rne(q, 23, -126)
    assert abs(r) < Fraction(2) ** 128, "float32 overflow in the oracle"
    return r


def f64(q: Fraction) -> Fraction:
    return _rne(q, 52, -1022)


# minifloat facts, hand-typed: (mantissa bits, min normal exponent, max)
E2M1 = (1, 0, Fraction(6))
E4M3 = (3, -6, Fraction(448))
E5M2 = (2, -14, Fraction(57344))
E3M2 = (2, -2, Fraction(28))


def _clamp(q: Fraction, lo: Fraction, hi: Fraction) -> Fraction:
    return min(max(q, lo), hi)


def oracle(rows: "list[list[float]]", element=E2M1, scale=E4M3, k: int = 16, tensor: bool = True,
           wide: bool = False) -> "list[list[Fraction]]":
    """The block rule on finite inputs, exactly; ``wide``: float64 input (x·r not rounded to float32)."""
    (em, eemin, E), (sm, semin, M) = element, scale
    m = Fraction(2) ** semin  # smallest normal of the scale format
    blocks = [[list(map(Fraction, row[i:i + k])) for i in range(0, len(row), k)] for row in rows]
    amaxes = [[max(abs(v) for v in b) for b in row] for row in blocks]
    if wide:
        amaxes = [[f32(a) for a in row] for row in amaxes]
    if tensor:
        total = max((a for row in amaxes for a in row), default=Fraction(0))
        g = max(f32(total / (M * E)), max(Fraction(2) ** -126, Fraction(2) ** -127 / m))
    out = []
    for row, arow in zip(blocks, amaxes):
        values = []
        for b, amax in zip(row, arow):
            bs = f32(amax / E)
            if tensor:
                s = _rne(_clamp(f32(bs / g), m, M), sm, semin)
                r, S = f32(f32(1 / g) / s), f32(g * s)
            else:
                s = _rne(_clamp(bs, m, M), sm, semin)
                r, S = f32(1 / s), s
            for x in b:
                y = _clamp(f64(x * r) if wide else f32(x * r), -E, E)
                values.append(f32(_rne(y, em, eemin) * S))
        out.append(values)
    return out


def _check_against_oracle(fmt, x: torch.Tensor, **rule) -> None:
    got = fmt.quantize(x).to(torch.float64).tolist()
    want = oracle(x.to(torch.float64).tolist(), **rule)
    for g_row, w_row in zip(got, want):
        assert [Fraction(v) for v in g_row] == w_row


def _hard_rows(seed: int, rows: int = 8, n: int = 64) -> torch.Tensor:
    """Random magnitudes over many binades, a zero block, an outlier, E2M1 midpoints x block scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g) * torch.exp2(torch.randint(-20, 20, (rows, 1), generator=g).float())
    x[0, :16] = 0.0
    x[1, 3] *= 1e5
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    s = 2.0 ** float(torch.randint(-8, 8, (), generator=g))
    x[2, :16] = torch.cat([torch.tensor([6.0]), mids, -mids, torch.tensor([0.0])]) * s  # exact ties (1 level)
    x[3, 16:32] = x[2, :16] * 1.1  # a non power-of-two scale: near ties
    x[4, :16] *= 1e-6  # a block far below the tensor's largest: its scale is clamped to 2^-6 (2 levels)
    return x


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_nvfp4_equals_the_exact_oracle_of_the_rule(spec, seed):
    _check_against_oracle(lb.parse_format(spec), _hard_rows(seed), tensor=spec == "nvfp4")


@pytest.mark.parametrize("seed", range(3))
def test_research_variant_e3m2_elements_e5m2_scales_per_8_equals_the_oracle(seed):
    fmt = lb.parse_format("block8_e3m2fn_scale_e5m2_t")
    _check_against_oracle(fmt, _hard_rows(seed), element=E3M2, scale=E5M2, k=8, tensor=True)


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_float64_inputs_keep_their_precision_in_the_element_product(spec):
    x = _hard_rows(7).to(torch.float64) * (1 + 2.0**-40)  # not float32 values
    _check_against_oracle(lb.parse_format(spec), x, tensor=spec == "nvfp4", wide=True)


def test_a_tiny_tensor_uses_the_tensor_scale_floor_and_stays_finite():
    x = _hard_rows(3) * 1e-30  # amax ~ 1e-25 .. 1e-36: g reaches its floor 2^-121 for the smallest
    for scale in (1e-6, 1e-10):
        y = x * scale
        out = NVFP4.quantize(y)
        assert bool(torch.isfinite(out).all())
        _check_against_oracle(NVFP4, y, tensor=True)
    assert NVFP4.tensor_scale_floor == 2.0**-121


@pytest.mark.parametrize("fmt", [NVFP4, NVFP4_1L])
def test_all_zero_tensor_quantizes_to_zeros(fmt):
    x = torch.zeros(3, 32)
    assert torch.equal(fmt.quantize(x), x)


# ------------------------------------------------------------------ torchao
def _torchao():
    pytest.importorskip("torchao")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    return NVFP4Tensor, per_tensor_amax_to_scale


def _reference(x: torch.Tensor, two_level: bool) -> torch.Tensor:
    NVFP4Tensor, per_tensor_amax_to_scale = _torchao()
    pts = per_tensor_amax_to_scale(x.abs().max()) if two_level else None
    return NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=pts).dequantize(torch.float32).to(x.dtype)


def _ties_like(x: torch.Tensor, two_level: bool) -> torch.Tensor:
    """Values at (and one ulp either side of) E2M1 midpoints times torchao's own block scales."""
    NVFP4Tensor, per_tensor_amax_to_scale = _torchao()
    pts = per_tensor_amax_to_scale(x.abs().max()) if two_level else None
    t = NVFP4Tensor.to_nvfp4(x.contiguous(), per_tensor_scale=pts)
    scales = t.get_hp_scales().reshape(*x.shape[:-1], -1, 1)
    blocks = x.reshape(*x.shape[:-1], -1, 16).clone()
    g = torch.Generator().manual_seed(1)
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    pick = mids[torch.randint(0, 7, blocks.shape, generator=g)] * torch.where(
        torch.rand(blocks.shape, generator=g) < 0.5, -1.0, 1.0)
    tied = (pick * scales).to(x.dtype)
    nudge = torch.randint(-1, 2, blocks.shape, generator=g)
    up, down = torch.nextafter(tied, tied * 2), torch.nextafter(tied, tied * 0)
    tied = torch.where(nudge > 0, up, torch.where(nudge < 0, down, tied))
    # keep each block's largest element where it is (so its scale stays the same)
    keep = blocks.abs() == blocks.abs().amax(-1, keepdim=True)
    return torch.where(keep, blocks, tied).reshape(x.shape)


def _cases(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    for shape in ((128, 256), (8, 32, 128), (1024, 16)):
        for scale in (1e-30, 1e-12, 1e-3, 1.0, 1e3, 1e12, 1e30):
            x = torch.randn(*shape, generator=g, dtype=torch.float64)
            x = x * torch.exp2(torch.randn(*shape, generator=g, dtype=torch.float64) * 4) * scale
            flat = x.reshape(-1, 16)
            flat[::7] = 0.0  # all-zero blocks
            flat[1::11, 5] *= 1e6  # one huge outlier per block
            flat[2::13] *= 1e-9  # blocks far below the tensor max: clamped (subnormal-range) scales
            yield x.clamp(-3e38, 3e38).to(dtype)  # finite in float32 and bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_nvfp4_is_bit_identical_to_torchao_on_a_million_values(spec, dtype):
    fmt, two = lb.parse_format(spec), spec == "nvfp4"
    total = 0
    for x in _cases(dtype):
        for y in (x, _ties_like(x, two)):
            got = fmt.quantize(y)
            want = _reference(y, two)
            assert got.dtype == dtype
            assert torch.equal(got, want), f"{int((got != want).sum())} of {y.numel()} differ"
            total += y.numel()
    assert total >= 1_000_000


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_codes_and_scales_are_torchaos(spec):
    NVFP4Tensor, per_tensor_amax_to_scale = _torchao()
    x = next(_cases(torch.float32))
    two = spec == "nvfp4"
    t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max()) if two else None)
    enc = lb.parse_format(spec).encode_tensor(x)
    assert torch.equal(enc.params["scale_codes"], t.scale.view(torch.uint8).reshape(enc.params["scale_codes"].shape))
    packed = t.qdata.view(torch.uint8)
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(x.shape)
    assert torch.equal(enc.codes, codes)
    if two:
        assert torch.equal(enc.params["tensor_scale"], t.per_tensor_scale)


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_a_last_axis_not_a_multiple_of_16_is_zero_padded(spec):
    x = next(_cases(torch.float32))[:, :200]
    padded = torch.nn.functional.pad(x, (0, 8))
    assert torch.equal(lb.parse_format(spec).quantize(x), _reference(padded, spec == "nvfp4")[:, :200])


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
def test_float16_follows_the_float32_steps_rounded_once(spec):
    x = next(_cases(torch.float32))[:, :64].clamp(-6e4, 6e4)
    x16 = (x / x.abs().max() * 1000).half()
    assert torch.equal(lb.parse_format(spec).quantize(x16), _reference(x16.float(), spec == "nvfp4").half())


@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_block_with_nan_or_inf_decodes_to_nan_and_the_rest_as_without_it(spec, bad):
    x = _hard_rows(2)
    x[5, 20] = bad
    out = lb.parse_format(spec).quantize(x)
    assert bool(out[5, 16:32].isnan().all())
    clean = x.clone()
    clean[5, 16:32] = 0.0
    expected = lb.parse_format(spec).quantize(clean)
    expected[5, 16:32] = float("nan")
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())


# ------------------------------------------------------------------ codec
@pytest.mark.parametrize(
    "spec", ["nvfp4", "nvfp4_1l", "block16_e2m1fn_scale_posit8_es1", "block32_int4_scale_e4m3fn_t"])
def test_decode_of_encode_is_quantize_and_nvfp4_1l_is_idempotent(spec):
    fmt = lb.parse_format(spec)
    x = _hard_rows(4)
    enc = fmt.encode_tensor(x)
    assert enc.codes.dtype == torch.uint8 and enc.codes.shape == x.shape
    assert torch.equal(fmt.decode_tensor(enc, x.dtype), fmt.quantize(x))
    assert int(enc.codes.max()) < 1 << fmt.bits
    if spec == "nvfp4_1l":  # E4M3 scales are fine enough that a block's largest element rounds to 6
        q = fmt.quantize(x)
        assert torch.equal(fmt.quantize(q), q)


def test_decode_names_what_is_wrong_with_the_params():
    enc = NVFP4.encode_tensor(torch.ones(2, 32))
    with pytest.raises(ValueError, match="tensor_scale"):
        NVFP4.decode_tensor(lb.EncodedTensor(NVFP4, enc.codes, {"scale_codes": enc.params["scale_codes"]}))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        wrong = torch.zeros(2, 3, dtype=torch.uint8)
        NVFP4.decode_tensor(lb.EncodedTensor(NVFP4, enc.codes, {**enc.params, "scale_codes": wrong}))
    with pytest.raises(ValueError, match="positive finite float32"):
        NVFP4.decode_tensor(lb.EncodedTensor(NVFP4, enc.codes, {**enc.params, "tensor_scale": torch.tensor(-1.0)}))
    with pytest.raises(ValueError, match="this format is nvfp4"):
        NVFP4.decode_tensor(NVFP4_1L.encode_tensor(torch.ones(16)))


def test_stochastic_rounding_is_seeded_and_lands_on_a_neighbour():
    x = _hard_rows(5)
    a = NVFP4.quantize(x, "stochastic", torch.Generator().manual_seed(3))
    b = NVFP4.quantize(x, "stochastic", torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    lo, hi = NVFP4.quantize(x, "floor"), NVFP4.quantize(x, "ceil")
    assert bool(((a == lo) | (a == hi)).all())


# ------------------------------------------------------------------ spec grammar
NEW_SPELLINGS = [
    "nvfp4", "nvfp4_1l", "block16_e2m1fn_scale_posit8_es1", "block32_e2m1fn_scale_posit8_es1_t",
    "block16_int4_scale_e4m3fn", "block32_e3m2fn_scale_e5m2_t", "block16_posit6_es1_s-4_scale_posit8_es0_t",
    "block32_int4_scale_e8m0fnu", "block16_posit8_es1_scale_e8m0fnu", "block64_e4m3fn_scale_e8m23",
    "block16_e2m1fn_scale_e4m3fn_t_a0", "block32_int4_scale_e8m0fnu_a-2", "block16_e2m1fn_scale_posit8_es1_a1",
]


@pytest.mark.parametrize("spec", NEW_SPELLINGS)
def test_every_new_spelling_round_trips(spec):
    fmt = lb.parse_format(spec)
    assert str(fmt) == spec
    assert lb.parse_format(str(fmt)) == fmt and hash(lb.parse_format(spec)) == hash(fmt)
    assert eval(repr(fmt), {"parse_format": lb.parse_format}) == fmt


@pytest.mark.parametrize("alias, canonical", [
    ("block16_e2m1fn_scale_e4m3fn_t", "nvfp4"),
    ("block16_e2m1fn_scale_ue4m3", "nvfp4_1l"),
    ("NVFP4", "nvfp4"),
    ("block32_e4m3fn_scale_e8m0fnu", "mxfp8_e4m3fn"),
    ("block16_fp4_e2m1fn_scale_e8m0", "mxfp4_e2m1fn_b16"),
    ("block32_e5m2_scale_ue8m0", "mxfp8_e5m2"),
    ("block16_e2m1fn_scale_e4m3fn_t_a-1", "nvfp4"),
])
def test_other_spellings_print_back_canonically(alias, canonical):
    assert str(lb.parse_format(alias)) == canonical


def test_non_finite_input_is_refused_when_the_scale_format_has_no_nan():
    fmt = lb.parse_format("block16_e2m1fn_scale_e2m3fn")
    assert isinstance(fmt, ScaledBlockFormat) and isinstance(NVFP4, ScaledBlockFormat)
    with pytest.raises(ValueError, match="has no NaN"):
        fmt.quantize(torch.tensor([1.0, float("inf")]))


def test_mx_is_the_power_of_two_preset_of_the_block_rule():
    assert block_format("e2m1fn", "e8m0fnu", 32) == lb.MXFormat("e2m1fn")
    with pytest.raises(FormatSpecError, match="mxfp8_e4m3fn"):
        PowerOfTwoBlocks(Minifloat(4, 3, policy="fn"), 32)


@pytest.mark.parametrize("spec, message", [
    ("block0_e2m1fn_scale_e4m3fn", "block_size"),
    ("block16_uint4_scale_e4m3fn", "signed"),
    ("block16_e2m1fn_scale_int8", "scale"),
    ("block16_e2m1fn_scale_e8m0fnu_t", "per-tensor scale"),
    ("block16_e2m1fn_scale_nope", "not a format spec"),
    ("block16_binary_scale_e4m3fn", "scalar format"),
    ("block16_e2m1fn_scale_posit32_es5", "float32-exact"),
    ("nvfp4_b32", "block<k>_<element>_scale_<scale>"),
    ("block32_e4m3fn_scale_e8m0fnu_a0", "last axis"),
])
def test_bad_block_specs_say_what_is_allowed(spec, message):
    with pytest.raises(FormatSpecError, match=re.escape(message)):
        lb.parse_format(spec)


def test_cards_explain_the_rule():
    card = format_card(NVFP4)
    assert card["bits"] == 4 and card["bits_per_element"] == 4.5 and card["bits_per_tensor"] == 32
    assert "2688" in card["tensor_scale"] and "0.015625" in card["scale"] and "448" in card["scale"]
    assert format_card(NVFP4_1L)["max"] == 2688.0
    assert "E8M0" in format_card(lb.parse_format("block32_int4_scale_e8m0fnu"))["layout"]


# ------------------------------------------------------------------ power-of-two rule, any element
def test_power_of_two_blocks_over_int4_equal_the_exact_rule():
    fmt = PowerOfTwoBlocks(IntegerFormat(4), 8)
    x = _hard_rows(6, n=40)
    got = fmt.quantize(x).to(torch.float64).tolist()
    for row, out in zip(x.tolist(), got):
        for i in range(0, len(row), 8):
            block = [Fraction(v) for v in row[i:i + 8]]
            amax = max(abs(v) for v in block)
            s = -127 if amax == 0 else min(max(_floor_log2(amax) - 2, -127), 127)
            for v, o in zip(block, out[i:i + 8]):
                k = _clamp(round(v / Fraction(2) ** s), -7, 7)  # round() of a Fraction: ties to even
                assert Fraction(o) == k * Fraction(2) ** s



# ------------------------------------------------------------------ blocks along another axis
@pytest.mark.parametrize("spec, axis", [("block16_e2m1fn_scale_e4m3fn_t_a0", 0), ("block16_e2m1fn_scale_e4m3fn_a1", 1),
                                        ("block8_int4_scale_e8m0fnu_a-3", -3)])
def test_blocks_along_another_axis_are_the_last_axis_rule_on_the_moved_tensor(spec, axis):
    fmt = lb.parse_format(spec)
    last = lb.parse_format(spec.rsplit("_a", 1)[0])
    x = torch.randn(32, 40, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fmt.quantize(x), last.quantize(x.movedim(axis, -1)).movedim(-1, axis))
    enc = fmt.encode_tensor(x)
    assert enc.codes.shape == x.shape and torch.equal(fmt.decode_tensor(enc), fmt.quantize(x))
    moved = x.movedim(axis, -1).shape
    assert fmt.scale_shape(x.shape) == last.scale_shape(moved)
    if axis not in (0, -1):  # a 1-d tensor has no such axis
        with pytest.raises(ValueError, match="out of range"):
            fmt.quantize(torch.ones(16))
