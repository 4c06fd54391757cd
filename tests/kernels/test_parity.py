"""The numba backend is bit-identical to the torch reference backend.

Codes are compared exactly and floats bit for bit (as integers: NaN sign and payload, the sign of
zero), never with tolerances.  Covered: every code of every ≤16-bit format in a list spanning all
families and their corner cases (decode to float32 and float64); encode and quantize of every
value, every midpoint and the float32/float64 numbers next to it; random float32 (10^6 for the
busiest formats, 10^5 for the rest, 32-bit formats included) and float64; every float16 and
bfloat16 bit pattern; all six rounding modes, stochastic included (the same torch.Generator seed
gives the same bits on both backends: a documented guarantee); non-contiguous, 0-d and empty
inputs; ``out=`` (fresh, strided, and in place ``out=x``); NaN bit patterns of quantize results.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.formats import ROUNDING_MODES
from lowbit.testing import (
    FLOAT_DTYPES,
    assert_codes_equal,
    assert_same_bits,
    every_float_pattern,
    random_binade_floats,
    random_float_patterns,
    table_points,
    unique_floats,
)

pytestmark = pytest.mark.skipif("numba" not in lb.kernels.available_backends(), reason="numba is not installed")

SMALL = [
    # posits: tiny n, every es, scales up to the float64 limits
    "posit2_es0", "posit3_es1", "posit5_es3", "posit6_es1_s-4", "posit8_es0", "posit8_es2", "posit8_es5",
    "posit8_es2_s-976", "posit8_es2_s976", "posit10_es1", "posit12_es3_s20", "posit16_es1",
    "posit16_es1_s-972",
    # minifloats: every policy, M = 0, tiny E, extreme biases
    "e4m3fn", "e4m3", "e5m2", "e5m2fnuz", "e4m3fnuz", "e4m3b11fnuz", "e3m4", "e2m1fn", "e3m2fn", "e2m3fn",
    "e8m0fnu", "e8m0fnu_sat", "e5m10", "e8m7", "e6m1", "e2m1", "e4m3fn_sat", "e5m2_sat", "e2m1fn_sat",
    "e1m0fn", "e1m1fnu", "e3m0fnu", "e2m0fnuz", "e10m5b995", "e4m3b997", "e4m3b-985", "e4m3b-3",
    # fixed point and integers: f > w, f = 64, 1- and 2-bit words, narrow ranges
    "fixed8_f4", "ufixed8_f4", "fixed16_f12", "fixed4_f8", "fixed2_f0", "ufixed1_f0", "fixed16_f64",
    "ufixed8_f64", "ufixed16_f20",
    "int8", "int8n", "uint4", "int4", "int2", "int2n", "uint1", "uint16",
]
# checked on random inputs only: formats of more than 16 bits, and a few more 16-bit ones
WIDE = [
    "posit16_es2", "e10m5", "e5m10fnuz", "int16n",
    "posit32_es2", "posit32_es5", "posit24_es0_s-10", "posit20_es3", "e8m23", "e8m23_sat", "e10m21",
    "e9m22fnuz", "e8m23fn", "fixed32_f16", "fixed24_f30", "fixed32_f64", "ufixed32_f0", "int32", "uint32",
    "int32n",
]
BUSY = ["posit8_es2", "posit16_es1", "e4m3fn", "e5m2", "fixed8_f4", "int8"]  # 10^6 random float32 each
HALF_SPECS = ["posit8_es2", "posit16_es1", "posit6_es1_s-4", "posit32_es2", "e4m3fn", "e5m2", "e8m0fnu",
              "e2m1fn", "e4m3fnuz", "e5m10", "e8m7", "e8m23", "fixed8_f4", "fixed16_f12", "int4", "uint16"]
LAYOUT_SPECS = ["posit8_es2", "posit32_es2", "e4m3fn", "e8m23", "fixed8_f4", "int32"]
MODES = list(ROUNDING_MODES)
DTYPES = list(FLOAT_DTYPES)


def _fmt(spec: str) -> lb.ScalarFormat:
    return lb.parse_format(spec)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(fmt, op: str, x: torch.Tensor, mode: str, backend: str, seed: int = 7, **kw) -> torch.Tensor:
    gen = _gen(seed) if mode == "stochastic" else None
    return getattr(fmt, op)(x, mode, gen, backend=backend, **kw)


def _assert_same(fmt, x: torch.Tensor, mode: str, what: str, seed: int = 7) -> None:
    """encode and quantize of x: numba == reference, codes exactly, values bit for bit."""
    for op in ("encode", "quantize"):
        got = _run(fmt, op, x, mode, "numba", seed)
        want = _run(fmt, op, x, mode, "reference", seed)
        assert got.dtype == want.dtype and got.shape == want.shape, f"{what} {op}: {got.dtype} {got.shape}"
        if op == "encode":
            assert_codes_equal(got, want, x, what=f"{what} encode")
        else:
            assert_same_bits(got, want, x, what=f"{what} quantize")


def _specials(dtype: torch.dtype) -> torch.Tensor:
    fi = torch.finfo(dtype)
    v = [0.0, math.inf, math.nan, fi.max, fi.tiny, fi.smallest_normal / 2, 1.0]
    if dtype == torch.float64:
        v += [2.0**1023, 5e-324]
    t = torch.tensor(v, dtype=torch.float64).to(dtype)
    return torch.cat([t, -t])


# ---------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", SMALL)
def test_decode_of_every_code_is_bit_identical_across_backends(spec, dtype):
    fmt = _fmt(spec)
    codes = torch.arange(1 << fmt.bits, dtype=torch.int64)
    if isinstance(fmt, lb.IntegerFormat) and fmt.narrow:
        codes = codes[codes != 1 << (fmt.bits - 1)]
    codes = codes.to(fmt.code_dtype)
    assert_same_bits(fmt.decode(codes, dtype, backend="numba"), fmt.decode(codes, dtype, backend="reference"),
                     codes, what=spec)


@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "int8n", "posit10_es1", "e5m10", "uint16"])
def test_decode_gives_the_same_bits_for_every_integer_code_dtype_and_strided_codes(spec):
    fmt = _fmt(spec)
    codes = torch.arange(1 << fmt.bits, dtype=torch.int64)
    if isinstance(fmt, lb.IntegerFormat) and fmt.narrow:
        codes = codes[codes != 1 << (fmt.bits - 1)]
    want = fmt.decode(codes, torch.float64, backend="reference")
    for cdt in (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64):
        keep = codes <= torch.iinfo(cdt).max  # e.g. int8 holds only the codes below 128
        if not bool(keep.any()):
            continue
        c = codes[keep].to(cdt)
        assert_same_bits(fmt.decode(c, torch.float64, backend="numba"), want[keep], c, what=f"{spec} {cdt}")
    # strided and 2-d codes keep their shape and element order
    grid = codes.to(fmt.code_dtype)[: (codes.numel() // 4) * 4].reshape(-1, 4)
    for view in (grid.t(), grid[:, ::2], grid[::3]):
        assert_same_bits(fmt.decode(view, torch.float32, backend="numba"),
                         fmt.decode(view, torch.float32, backend="reference"), what=f"{spec} strided")


@pytest.mark.parametrize(
    "spec,bad",
    [("posit8_es2", [-1]), ("posit8_es2", [256]), ("int8n", [128]), ("e4m3fn", [0, 1, 300]),
     ("e5m10", [70000]), ("uint4", [16])],
)
def test_decode_of_invalid_codes_raises_the_same_value_error_on_both_backends(spec, bad):
    fmt = _fmt(spec)
    codes = torch.tensor(bad, dtype=torch.int64)
    messages = []
    for backend in ("numba", "reference"):
        with pytest.raises(ValueError) as info:
            fmt.decode(codes, torch.float32, backend=backend)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------------------------- table sweeps
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", SMALL)
def test_values_midpoints_and_their_ulp_neighbours_round_to_the_same_bits_on_both_backends(spec, mode, dtype):
    fmt = _fmt(spec)
    npdt = np.float32 if dtype == torch.float32 else np.float64
    pts = table_points(fmt.values(), npdt, exact=False)
    x = np.concatenate(list(pts.values()))
    x = torch.from_numpy(unique_floats(np.concatenate([x, -x])))
    x = torch.cat([x, _specials(dtype)])
    _assert_same(fmt, x, mode, f"{spec} {mode} {dtype}")


# ---------------------------------------------------------------------------------- random inputs
def _random(fmt, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """n inputs: half random bit patterns of dtype (every class, NaN payloads), half random
    values over the format's binades (±8) within dtype's range."""
    npdt = np.float32 if dtype == torch.float32 else np.float64
    lo_lim, hi_lim = (-149, 127) if dtype == torch.float32 else (-1074, 1023)
    lo = max(math.floor(math.log2(fmt.min_positive)) - 8, lo_lim)
    hi = min(math.floor(math.log2(fmt.max)) + 8, hi_lim)
    if lo > hi:  # the format lies outside dtype's range (e.g. posit8_es2_s-976 for float32)
        lo, hi = lo_lim, hi_lim
    near = torch.from_numpy(random_binade_floats(n - n // 2, lo, hi, seed=seed, dtype=npdt))
    return torch.cat([random_float_patterns(n // 2, dtype, seed=seed + 1), near])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", SMALL + WIDE)
def test_random_float32_inputs_round_to_the_same_bits_on_both_backends(spec, mode):
    fmt = _fmt(spec)
    n = 10**6 if spec in BUSY else 10**5
    _assert_same(fmt, _random(fmt, n, torch.float32, seed=len(spec)), mode, f"{spec} {mode}", seed=n)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", SMALL + WIDE)
def test_random_float64_inputs_round_to_the_same_bits_on_both_backends(spec, mode):
    fmt = _fmt(spec)
    _assert_same(fmt, _random(fmt, 20000, torch.float64, seed=len(spec) + 50), mode, f"{spec} {mode}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", HALF_SPECS)
def test_every_float16_and_bfloat16_input_rounds_to_the_same_bits_on_both_backends(spec, mode, dtype):
    _assert_same(_fmt(spec), every_float_pattern(dtype), mode, f"{spec} {mode} {dtype}")


# ---------------------------------------------------------------------------------- layouts, out=
def _layouts(dtype: torch.dtype) -> "dict[str, torch.Tensor]":
    base = _random(_fmt("posit8_es2"), 160 * 6, torch.float32, seed=3).to(dtype).reshape(160, 6)
    return {
        "strided": base[:, ::2],
        "transposed": base.t(),
        "column": base[:, 3],
        "expanded": base[:1, :].expand(5, 6),
        "offset_view": base[7:, 1:4],
        "scalar": base[2, 2],
        "empty": base[:0],
        "empty_3d": torch.empty(3, 0, 2, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", LAYOUT_SPECS)
def test_non_contiguous_zero_dim_and_empty_inputs_round_to_the_same_bits_and_shape_on_both_backends(
    spec, mode, dtype
):
    fmt = _fmt(spec)
    for name, x in _layouts(dtype).items():
        _assert_same(fmt, x, mode, f"{spec} {mode} {dtype} {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["nearest_even", "floor", "stochastic"])
@pytest.mark.parametrize("spec", LAYOUT_SPECS)
@pytest.mark.parametrize("kind", ["fresh", "strided_out", "in_place", "in_place_strided"])
def test_quantize_out_gives_the_same_bits_as_the_reference_and_returns_out(spec, mode, dtype, kind):
    fmt = _fmt(spec)
    src = _random(fmt, 2 * 300, torch.float32, seed=11).to(dtype).reshape(30, 20)
    results = {}
    for backend in ("numba", "reference"):
        if kind == "fresh":
            x, out = src.clone(), torch.full_like(src, 123.0)
        elif kind == "strided_out":
            x, out = src[:, ::2].clone(), torch.full((30, 20), 123.0, dtype=dtype)[:, 1::2]
        elif kind == "in_place":
            x = src.clone()
            out = x
        else:
            x = src.clone()[:, ::2]
            out = x
        before = x.clone()
        r = _run(fmt, "quantize", x, mode, backend, out=out)
        assert r is out, f"{backend}: quantize(out=...) must return out itself"
        results[backend] = (r.clone(), before)
        if kind in ("fresh", "strided_out"):
            assert_same_bits(x, before, what=f"{backend}: x is untouched when out is another tensor")
    (got, xin), (want, xin_ref) = results["numba"], results["reference"]
    assert_same_bits(xin, xin_ref)
    assert_same_bits(got, want, xin, what=f"{spec} {mode} {dtype} {kind}")
    # and out= equals the plain call
    plain = _run(fmt, "quantize", xin, mode, "reference")
    assert_same_bits(got, plain, xin, what=f"{spec} {mode} {dtype} {kind} vs no out")


# ---------------------------------------------------------------------------------- NaN bits
def _nan_inputs(dtype: torch.dtype) -> torch.Tensor:
    bits = {
        torch.float16: [0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0xFFFF],
        torch.bfloat16: [0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0xFFFF],
        torch.float32: [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00123],
        torch.float64: [0x7FF8000000000000, 0xFFF8000000000000 - (1 << 64), 0x7FF0000000000001,
                        0xFFF0000000000001 - (1 << 64), 0x7FF8000000000123],
    }[dtype]
    ints = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}[dtype]
    width = torch.finfo(dtype).bits
    signed = [b - (1 << width) if b >= 1 << (width - 1) else b for b in bits]
    nans = torch.tensor(signed, dtype=ints).view(dtype)
    # plus values that become NaN in some format: overflow, ±inf, negatives and zero for e8m0fnu
    others = torch.tensor([1e4, -1e4, 6e4, -6e4, math.inf, -math.inf, -1.0, 0.0, -0.0], dtype=torch.float32)
    return torch.cat([nans, others.to(dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", ["posit8_es2", "posit32_es2", "e4m3fn", "e4m3", "e5m2", "e4m3fnuz", "e8m0fnu",
                                  "e2m1fn", "e8m23", "fixed8_f4", "int8"])
def test_nan_results_of_quantize_have_the_same_sign_and_payload_bits_on_both_backends(spec, mode, dtype):
    fmt = _fmt(spec)
    x = _nan_inputs(dtype)
    got = _run(fmt, "quantize", x, mode, "numba")
    want = _run(fmt, "quantize", x, mode, "reference")
    assert_same_bits(got, want, x, what=f"{spec} {mode} {dtype}")
    codes = _run(fmt, "encode", x, mode, "numba")
    assert_codes_equal(codes, _run(fmt, "encode", x, mode, "reference"), x)


# ---------------------------------------------------------------------------------- stochastic stream
@pytest.mark.parametrize("spec", ["posit8_es2", "posit32_es2", "e5m2", "e8m23", "fixed8_f4", "int32"])
def test_stochastic_bits_do_not_depend_on_numba_thread_count(spec):
    fmt = _fmt(spec)
    x = _random(fmt, 200_001, torch.float32, seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append((_run(fmt, "encode", x, "stochastic", "numba", 3),
                            _run(fmt, "quantize", x, "stochastic", "numba", 3)))
    finally:
        torch.set_num_threads(before)
    assert_codes_equal(results[0][0], results[1][0], x)
    assert_same_bits(results[0][1], results[1][1], x)


@pytest.mark.parametrize("op", ["encode", "quantize"])
@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "fixed8_f4"])
def test_both_backends_draw_the_same_amount_from_the_generator_and_the_default_generator(spec, op):
    fmt = _fmt(spec)
    x = _random(fmt, 1000, torch.float32, seed=9)
    g = {b: _gen(42) for b in ("numba", "reference")}
    seq = {b: [getattr(fmt, op)(x, "stochastic", g[b], backend=b) for _ in range(3)] for b in g}
    for a, b in zip(seq["numba"], seq["reference"]):
        (assert_codes_equal if op == "encode" else assert_same_bits)(a, b, x)
    assert torch.equal(torch.randint(0, 1 << 62, (4,), generator=g["numba"]),
                       torch.randint(0, 1 << 62, (4,), generator=g["reference"])), "generator states differ"
    # generator=None draws from torch's default generator, the same way on both backends
    state = torch.get_rng_state()
    try:
        out = {}
        for backend in ("numba", "reference"):
            torch.manual_seed(1234)
            out[backend] = getattr(fmt, op)(x, "stochastic", backend=backend)
            out[backend + "_next"] = torch.rand(3)
    finally:
        torch.set_rng_state(state)
    (assert_codes_equal if op == "encode" else assert_same_bits)(out["numba"], out["reference"], x)
    assert torch.equal(out["numba_next"], out["reference_next"])


# ---------------------------------------------------------------------------------- past bugs
@pytest.mark.parametrize("spec", ["e8m0fnu", "e8m0fnu_sat", "e3m0fn", "e2m0fnuz", "e1m0fn", "e3m0fnu"])
def test_numba_minifloats_without_mantissa_bits_overflow_doubles_from_2_pow_1023_like_the_reference(spec):
    fmt = _fmt(spec)
    x = torch.tensor([2.0**1023, -(2.0**1023), 1.7976931348623157e308], dtype=torch.float64)
    for mode in MODES:
        assert_codes_equal(_run(fmt, "encode", x, mode, "numba"), _run(fmt, "encode", x, mode, "reference"), x)
        assert_same_bits(_run(fmt, "quantize", x, mode, "numba"), _run(fmt, "quantize", x, mode, "reference"), x)


# ------------------------------------------------------------------ posits of more than 16 bits
WIDE_POSITS = ["posit17_es1", "posit20_es3", "posit24_es0_s-3", "posit32_es2", "posit32_es5", "posit32_es0",
               "posit32_es2_s-880", "posit28_es4_s100"]


def _wide_codes(n: int, seed: int) -> torch.Tensor:
    """Every special and boundary code of posit<n> plus random ones over the whole word."""
    top = (1 << n) - 1
    edges = [0, 1, 2, 3, top, top - 1, top - 2, 1 << (n - 1), (1 << (n - 1)) - 1, (1 << (n - 1)) + 1,
             (1 << (n - 2)), (1 << (n - 2)) - 1, (1 << (n - 2)) + 1, top - (1 << (n - 2))]
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, 1 << n, (50000,), generator=g, dtype=torch.int64)
    return torch.cat([torch.tensor(edges, dtype=torch.int64), rand])


@pytest.mark.parametrize("spec", WIDE_POSITS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_decode_of_wide_posits_is_bit_identical_across_backends(spec, dtype):
    fmt = lb.parse_format(spec)
    codes = _wide_codes(fmt.bits, seed=fmt.bits + fmt.es)
    got = fmt.decode(codes, dtype, backend="numba")
    want = fmt.decode(codes, dtype, backend="reference")
    assert_same_bits(got, want)
    # int32 codes of a 32-bit posit read as two's complement would be negative: the same error
    shaped = codes[:600].reshape(20, 30)
    assert_same_bits(fmt.decode(shaped, dtype, backend="numba"), want[:600].reshape(20, 30))
    assert fmt.decode(codes[:0], dtype, backend="numba").shape == (0,)


@pytest.mark.parametrize("bad", [-1, 1 << 32])
def test_decode_of_invalid_wide_posit_codes_raises_on_both_backends(bad):
    fmt = lb.parse_format("posit32_es2")
    codes = torch.tensor([0, bad], dtype=torch.int64)
    for backend in ("numba", "reference"):
        with pytest.raises(ValueError, match="codes must be valid 32-bit patterns"):
            fmt.decode(codes, backend=backend)
