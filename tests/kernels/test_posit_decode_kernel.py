"""The branch-free decode kernel of posits wider than 16 bits (`lowbit.kernels.posit_decode_numba`).

Expected values come from the exact Fraction oracle (`lowbit.reference.posit.posit_decode`) for
float64 outputs, and from the torch reference backend for float32 / float16 / bfloat16 (one
rounding of the exact value, saturating; torch's own float64 -> 16-bit casts round twice).
Codes cover every pattern class of every posit<n, es>, n = 17..32, es = 0..5: each regime run
length of zeros and of ones (so exponent bits cut off by the word's end, and the longest runs
with no terminating bit), random exponent and fraction bits after each run, zero, NaR, ±maxpos,
±minpos, and scales at both ends of what the format allows. float32 / float16 / bfloat16 outputs
(assembled in 32-bit integer arithmetic, `lowbit.kernels.posit_bits_ir`) are also checked against
the oracle's value rounded once by the exact minifloat oracle, with lowbit's saturation and
no-flush rules applied on top.
"""

from __future__ import annotations

import functools
import math
import random
from fractions import Fraction

import pytest
import torch

import lowbit as lb
from lowbit.kernels import posit_decode_numba, runtime
from lowbit.reference.posit import posit_decode as oracle_decode
from lowbit.reference.quire import round_once
from lowbit.testing import assert_same_bits

pytestmark = pytest.mark.skipif("numba" not in lb.kernels.available_backends(), reason="numba is not installed")

WIDTHS = list(range(17, 33))
ES = list(range(6))


def _pattern_codes(n: int, seed: int) -> list[int]:
    """Codes of every regime run length (zeros and ones) with random bits after the run, their
    negations, and zero, NaR, ±maxpos, ±minpos."""
    rng = random.Random(seed)
    nb = n - 1  # magnitude bits
    codes = {0, 1 << (n - 1), 1, (1 << (n - 1)) - 1, (1 << n) - 1, (1 << (n - 1)) + 1}
    for run in range(1, nb + 1):
        rest_len = max(nb - run - 1, 0)
        for first in (0, 1):
            head = ((1 << run) - 1) if first else 0  # the run
            if run < nb:
                head = (head << 1) | (1 - first)  # its terminating bit
            for rest in {0, (1 << rest_len) - 1, rng.getrandbits(rest_len) if rest_len else 0}:
                mag = (head << rest_len) | rest
                if mag:
                    codes.add(mag)
                    codes.add((1 << n) - mag)  # the negative
    return sorted(codes)


def _scales(n: int, es: int) -> list[int]:
    limit = 1000 - ((n - 2) << es)
    return [0, limit, -limit] if limit else [0]


def _oracle_float64(codes: list[int], n: int, es: int, scale: int) -> torch.Tensor:
    values = []
    for c in codes:
        v = oracle_decode(c, n, es, scale)
        values.append(float("nan") if v is None else float(v))  # exact: <= 29 fraction bits, in range
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("n", WIDTHS)
def test_every_pattern_class_decodes_to_the_exact_value_for_every_es_and_scale(n):
    codes = _pattern_codes(n, seed=n)
    for es in ES:
        for scale in _scales(n, es):
            fmt = lb.formats.Posit(n, es, scale)
            want = _oracle_float64(codes, n, es, scale)
            for dtype in (torch.int64, torch.int32) if n < 32 else (torch.int64,):
                got = fmt.decode(torch.tensor(codes, dtype=dtype), torch.float64, backend="numba")
                assert_same_bits(got, want, torch.tensor(codes), what=f"{fmt} from {dtype}")


@pytest.mark.parametrize("out", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [17, 20, 24, 27, 31, 32])
def test_narrow_outputs_round_the_exact_value_once_like_the_reference(n, out):
    codes = torch.tensor(_pattern_codes(n, seed=100 + n))
    for es in ES:
        for scale in _scales(n, es):
            fmt = lb.formats.Posit(n, es, scale)
            assert_same_bits(fmt.decode(codes, out, backend="numba"), fmt.decode(codes, out, backend="reference"),
                             codes, what=str(fmt))


def test_float32_output_equals_torch_cast_of_the_exact_value_where_it_needs_no_saturation():
    # posit32_es2 spans 2^±120: inside float32's normal range, so one torch cast is the rounding
    codes = _pattern_codes(32, seed=7)
    want = _oracle_float64(codes, 32, 2, 0).to(torch.float32)
    got = lb.parse_format("posit32_es2").decode(torch.tensor(codes), torch.float32, backend="numba")
    assert_same_bits(got, want, torch.tensor(codes))


@pytest.mark.parametrize("code_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
def test_every_integer_code_dtype_gives_the_same_values(code_dtype):
    fmt = lb.parse_format("posit20_es3")
    hi = {torch.uint8: 1 << 8, torch.int8: 1 << 7, torch.int16: 1 << 15}.get(code_dtype, 1 << 20)
    codes = torch.randint(0, hi, (5000,), generator=torch.Generator().manual_seed(3)).to(code_dtype)
    want = _oracle_float64([int(c) for c in codes], 20, 3, 0)
    assert_same_bits(fmt.decode(codes, torch.float64, backend="numba"), want, codes)


@pytest.mark.parametrize("spec", ["posit17_es1", "posit32_es2", "posit32_es5"])
@pytest.mark.parametrize("size", [1, posit_decode_numba.BLOCK - 1, posit_decode_numba.BLOCK + 1,
                                  runtime.SERIAL_BELOW * 3 + 17])
def test_sizes_around_blocks_and_thread_splits_match_the_reference(spec, size):
    fmt = lb.parse_format(spec)
    g = torch.Generator().manual_seed(size)
    codes = torch.randint(0, 1 << fmt.n, (size,), generator=g, dtype=torch.int64).to(fmt.code_dtype)
    for dtype in (torch.float32, torch.float64):
        with runtime.num_threads(2):
            got = fmt.decode(codes, dtype, backend="numba")
        assert_same_bits(got, fmt.decode(codes, dtype, backend="reference"), codes, what=f"{spec} -> {dtype}")


BAD_CODES = [
    ("posit17_es1", torch.int32, -1), ("posit17_es1", torch.int32, 1 << 17), ("posit17_es1", torch.int64, 1 << 40),
    ("posit17_es1", torch.int64, -(1 << 40)), ("posit31_es2", torch.int32, -(1 << 31)), ("posit32_es2", torch.int32, -5),
    ("posit32_es2", torch.int64, 1 << 32), ("posit32_es2", torch.int64, -1), ("posit24_es0", torch.int16, -3),
]


@pytest.mark.parametrize(("spec", "dtype", "bad"), BAD_CODES, ids=lambda v: str(v))
@pytest.mark.parametrize("where", [0, posit_decode_numba.BLOCK, runtime.SERIAL_BELOW * 3 - 1])
def test_a_code_outside_the_word_anywhere_raises_the_references_error(spec, dtype, bad, where):
    fmt = lb.parse_format(spec)
    codes = torch.full((runtime.SERIAL_BELOW * 3,), 5, dtype=torch.int64)
    codes[where] = bad
    codes = codes.to(dtype)
    with pytest.raises(ValueError, match=f"codes must be valid {fmt.n}-bit patterns") as numba_error:
        fmt.decode(codes, backend="numba")
    with pytest.raises(ValueError) as reference_error:
        fmt.decode(codes, backend="reference")
    assert str(numba_error.value) == str(reference_error.value)


def test_the_value_function_alone_decodes_every_code_of_small_posits_exactly():
    # posit_decode_value serves any n in 2..32; small words are checked on every code
    from numba import njit

    @njit
    def values(codes, n, es, scale, out):
        for i in range(codes.size):
            out[i] = posit_decode_numba.posit_decode_value(codes[i], n, es, scale)

    for n in (2, 3, 5, 8, 11):
        for es in ES:
            codes = list(range(1 << n))
            out = torch.empty(len(codes), dtype=torch.float64)
            values(torch.tensor(codes).numpy(), n, es, 3, out.numpy())
            assert_same_bits(out, _oracle_float64(codes, n, es, 3), torch.tensor(codes), what=f"posit{n}_es{es}_s3")


def test_int64_codes_read_as_word_pairs_give_the_same_values_in_either_word_order():
    # the kernel reads an int64 code as two 32-bit words; on a big-endian machine the low word
    # comes second: that order is checked here on swapped pairs
    from lowbit.kernels import dispatch

    codes = torch.tensor(_pattern_codes(32, seed=11) + [1 << 32, (1 << 32) + 5], dtype=torch.int64)
    words = codes.numpy().view("uint32").reshape(-1, 2)
    kernel = posit_decode_numba.posit_decode(dispatch._OUT_KIND[torch.float64])
    results = []
    for low, pairs in ((0, words), (1, words[:, ::-1].copy())):
        out = torch.empty(len(codes), dtype=torch.float64)
        low_max, high_max = kernel(pairs.reshape(-1), 2, low, 32, 3, -7, out.numpy(), 0.0, 0.0)
        assert (int(low_max), int(high_max)) == (0xFFFFFFFF, 1)  # the two codes >= 2^32 show in the high word
        results.append(out[:-2])
    want = _oracle_float64([int(c) for c in codes[:-2]], 32, 3, -7)
    assert_same_bits(results[0], want)
    assert_same_bits(results[1], want)


# ------------------------------------------------ 32-bit outputs assembled in 32-bit integer arithmetic
# Expected values: the exact Fraction oracle's value, rounded once to nearest even by the exact
# minifloat oracle (`lowbit.reference.quire.round_once`, IEEE: overflow gives inf), then lowbit's
# output rules: saturation at the largest finite value, and no nonzero value rounds to zero.
_FLOAT_MAX = {torch.float32: float(torch.finfo(torch.float32).max), torch.float16: 65504.0,
              torch.bfloat16: float(torch.finfo(torch.bfloat16).max)}
_FLOAT_TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}


@functools.lru_cache(maxsize=None)
def _exact_values(n: int, es: int) -> tuple:
    """Every code's exact value at scale 0 (None for NaR)."""
    return tuple(oracle_decode(c, n, es, 0) for c in range(1 << n))


_QUIET_NAN = {torch.float32: (torch.int32, 0x7FC00000), torch.float16: (torch.int16, 0x7E00),
               torch.bfloat16: (torch.int16, 0x7FC0)}


def _as(values: list, dtype: torch.dtype) -> torch.Tensor:
    """Python floats exact in ``dtype`` as a ``dtype`` tensor, NaN as the canonical quiet NaN."""
    out = torch.tensor(values, dtype=torch.float64).to(dtype)
    bits_dtype, nan = _QUIET_NAN[dtype]
    out.view(bits_dtype)[out.isnan()] = nan
    return out


def _rounded_once(value, scale: int, dtype: torch.dtype) -> float:
    if value is None:
        return math.nan
    v = value * Fraction(2) ** scale
    r = round_once(v, str(dtype).replace("torch.", ""))
    if math.isinf(r):
        r = math.copysign(_FLOAT_MAX[dtype], r)  # saturates
    if r == 0.0 and v != 0:
        r = math.copysign(_FLOAT_TINY[dtype], v)  # never flushes to zero
    return r


@pytest.mark.parametrize(("dtype", "scale", "every"), [
    (torch.float32, 0, 1),  # inside float32's normal range
    (torch.float32, 110, 1),  # up to 2^140: beyond float32's largest, saturated
    (torch.float32, -140, 1),  # down to 2^-170: float32 subnormals, and below its smallest (never 0)
    (torch.float16, 0, 5), (torch.float16, -10, 5), (torch.bfloat16, 0, 5), (torch.bfloat16, 110, 5),
    (torch.bfloat16, -120, 5),
], ids=str)
def test_every_posit17_es1_code_decodes_to_the_oracle_value_rounded_once(dtype, scale, every):
    codes = list(range(0, 1 << 17, every))
    exact = _exact_values(17, 1)
    want = _as([_rounded_once(exact[c], scale, dtype) for c in codes], dtype)
    fmt = lb.formats.Posit(17, 1, scale)
    for code_dtype in (torch.int32, torch.int64):
        got = fmt.decode(torch.tensor(codes, dtype=code_dtype), dtype, backend="numba")
        assert_same_bits(got, want, torch.tensor(codes), what=f"{fmt} from {code_dtype} to {dtype}")


@pytest.mark.parametrize("spec", ["posit32_es2_s100", "posit32_es2_s-10", "posit28_es3_s-60", "posit32_es0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_values_needing_saturation_or_subnormals_anywhere_among_many_codes_match_the_oracle(spec, dtype):
    # a block holding one flagged value is finished element by element; the values around it keep
    # their fast path bits. Wide posits: up to 27 fraction bits, so the rounding itself is tested
    fmt = lb.parse_format(spec)
    size = runtime.SERIAL_BELOW * 3 + 17
    g = torch.Generator().manual_seed(fmt.n + fmt.scale)
    codes = torch.randint(0, 1 << fmt.n, (size,), generator=g, dtype=torch.int64)
    picked = torch.randint(0, size, (3000,), generator=g)
    want = _as([_rounded_once(oracle_decode(int(c), fmt.n, fmt.es, fmt.scale), 0, dtype) for c in codes[picked]],
               dtype)
    with runtime.num_threads(2):
        got = fmt.decode(codes.to(fmt.code_dtype), dtype, backend="numba")
    assert_same_bits(got[picked], want, codes[picked], what=f"{spec} -> {dtype}")
    assert_same_bits(got, fmt.decode(codes, dtype, backend="reference"), codes, what=f"{spec} -> {dtype}")


def test_float32_output_of_a_format_reaching_float32_subnormals_is_rounded_exactly():
    # posit32_es2_s-10 reaches 2^-130: inside [2^-149, 2^-126), float32's subnormals
    fmt = lb.parse_format("posit32_es2_s-10")
    assert fmt.min_positive < torch.finfo(torch.float32).tiny
    codes = [1, 2, 3, 7, 0x3F, 0x101, (1 << 32) - 1, (1 << 32) - 3, 0x00100000 + 5]
    want = _as([_rounded_once(oracle_decode(c, 32, 2, -10), 0, torch.float32) for c in codes], torch.float32)
    assert (want.abs() < torch.finfo(torch.float32).tiny).any()
    assert_same_bits(fmt.decode(torch.tensor(codes), torch.float32, backend="numba"), want, torch.tensor(codes))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_int32_bits_of_every_pattern_class_round_like_the_float64_path(dtype):
    # every regime length, with fraction bits cut at each position of the output's significand
    for n in (17, 20, 24, 27, 31, 32):
        codes = torch.tensor(_pattern_codes(n, seed=300 + n))
        for es in ES:
            for scale in sorted({0, 100, -100, *_scales(n, es)}):
                if abs(scale) > 1000 - ((n - 2) << es):
                    continue  # beyond what the format allows
                fmt = lb.formats.Posit(n, es, scale)
                want = _as([_rounded_once(oracle_decode(int(c), n, es, scale), 0, dtype) for c in codes], dtype)
                assert_same_bits(fmt.decode(codes, dtype, backend="numba"), want, codes, what=f"{fmt} -> {dtype}")


def test_an_unknown_output_kind_is_refused_naming_the_allowed_kinds():
    allowed = "numba_cpu.OUT_F64, OUT_F32, OUT_F16, OUT_BF16 or OUT_F32_IN_RANGE"
    with pytest.raises(ValueError, match=f"out_kind must be {allowed}, got 7"):
        posit_decode_numba.posit_decode(7)
