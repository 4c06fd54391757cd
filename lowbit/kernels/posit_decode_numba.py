"""Decode of posits of more than 16 bits (numba): branch-free, vectorised, one pass.

Formats of at most 16 bits decode through a value table (`dispatch.decode`); wider posits
decode here, field by field, with no loop over the regime and no float arithmetic:

- the magnitude (two's complement of a negative code) is shifted so that the regime starts at
  the top of a 32-bit word; the regime's run length is a count of leading zeros (of the word,
  with a run of ones first flipped to zeros), which LLVM compiles to one vector instruction;
- the bits after the run and its terminating bit are the exponent (``es`` of them; bits cut off
  by the end of the word read as 0) and then the fraction, at most 29 bits, which become the
  float64 significand unchanged;
- the float64 is assembled from its bit fields: sign, biased exponent ``k·2^es + e + scale`` and
  significand. A posit's scale is bounded so that every value lies within 2^±1000 (`Posit`), so
  the exponent is always a normal float64 exponent and the float64 is the posit's exact value.

Outputs of at most 32 bits (float32, float16, bfloat16) are assembled in 32-bit integer arithmetic
(`posit_bits_ir`): the fraction rounded to nearest even straight into the output's bit pattern,
on 32-bit vector lanes. The few values that are not a normal finite output number (beyond its
largest, where lowbit saturates, or below its smallest normal) are flagged, and a block holding
any is finished through the float64 value, rounded once by `numba_cpu._store` as the reference
does; a float32 output of a format whose every value is a normal float32 skips the flags.
float64 outputs take the float64 value itself. Codes are read in their own integer dtype
(int32 or int64): no widened copy of the input is made. Each worker takes `BLOCK` codes at a
time, narrows them into a buffer that stays in the L1 cache, then decodes from it (measured on
2^24 codes, 2 threads: the whole decode 1.2-1.4x faster for int32 codes, and a single-thread
decode loop 2.7x faster for int64 codes, than decoding straight from the codes). The kernel
reads the codes as 32-bit words (one per int32 code, two per int64 code), so one compiled kernel
per output serves both dtypes, and returns the largest low and high words it saw, so that the
caller can reject codes outside [0, 2^n) and let the reference raise its precise error.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
from numba import int32, njit, prange, uint32, uint64
from numba.cpython.unsafe.numbers import leading_zeros

from lowbit.kernels.numba_cpu import OUT_BF16, OUT_F16, OUT_F32, OUT_F64, _store
from lowbit.kernels.posit_bits_ir import bfloat16_bits, float16_bits, float32_bits, or32
from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

__all__ = ["BLOCK", "OUT_F32_IN_RANGE", "posit_decode_value", "posit_decode"]

BLOCK = 1 << 12  # codes per work item: their narrowed copy (16 KiB) stays in the L1 cache
#: output kind: float32 for a format whose every nonzero value lies in [2^-126, float32 max] (a
#: normal float32 after rounding): no element needs the float64 finish, so none is flagged
OUT_F32_IN_RANGE = -1


@njit(inline="always", cache=True)
def posit_decode_value(c, n, es, scale):
    """The exact float64 value of posit<n, es> code c (an int in [0, 2^n), 2 <= n <= 32) times
    2^scale; NaR decodes to NaN. Every value must lie in float64's normal range (`Posit` ensures it).
    32-bit arithmetic throughout (so that LLVM packs 16 lanes where it can), 64-bit only to assemble."""
    c = uint32(c)
    nar = uint32(uint32(1) << uint32(n - 1))
    neg = c >= nar
    mag = uint32(uint32(0) - c) if neg else c  # two's complement magnitude, mod 2^32: its low n-1 bits are kept
    t = uint32(mag << uint32(33 - n))  # the n-1 bits after the sign at the top of the word
    run = uint32(leading_zeros(uint32(t ^ uint32(int32(t) >> int32(31)))))  # a run of ones is flipped to zeros
    k = int32(run) - 1 if int32(t) < 0 else -int32(run)
    rest = uint32(uint32(t << run) << uint32(1))  # the exponent then the fraction, at the top; run <= 31 here
    e = int32(uint32(rest >> uint32(26)) >> uint32(6 - es))  # the top es bits (0 when es == 0)
    frac = uint32(rest << uint32(es))  # at most 29 fraction bits: exact in float64's 52
    biased = int32(int32(k << es) + e + int32(scale + 1023))
    high = uint32(uint32(biased) << uint32(20)) | (uint32(0x80000000) if neg else uint32(0))
    value = np.uint64((uint64(high) << uint64(32)) | (uint64(frac) << uint64(20))).view(np.float64)
    value = 0.0 if c == 0 else value
    return np.nan if c == nar else value


@functools.lru_cache(maxsize=None)
def posit_decode(out_kind: int) -> Callable[..., Any]:
    """The decode kernel writing output kind ``out_kind`` (`numba_cpu.OUT_F64` …, or
    `OUT_F32_IN_RANGE`): out[i] = the value of code i (`posit_decode_value` of its low 32 bits)
    rounded once to the output. ``out`` is float64 for OUT_F64, else the output's bit patterns:
    int32 for float32, int16 for float16 / bfloat16.

    The codes come as 32-bit words ``words`` (uint32), ``stride`` of them per code: int32 codes
    (stride 1) or int64 codes (stride 2, ``low`` = the index of the low word in each pair: 0 on a
    little-endian machine), so that one compiled kernel per output serves both. Returns (largest
    low word, largest high word) for the caller's range check."""
    if out_kind not in (OUT_F64, OUT_F32, OUT_F16, OUT_BF16, OUT_F32_IN_RANGE):
        raise ValueError(f"out_kind must be numba_cpu.OUT_F64, OUT_F32, OUT_F16, OUT_BF16 or OUT_F32_IN_RANGE, "
                         f"got {out_kind!r}")

    @njit(inline="always", cache=True)
    def element_bits(c, n, es, scale):
        if out_kind == OUT_F16:
            return float16_bits(c, n, es, scale)
        if out_kind == OUT_BF16:
            return bfloat16_bits(c, n, es, scale)
        return float32_bits(c, n, es, scale)

    @njit(inline="always", cache=True)
    def finished(v, fmax, tiny):
        """The output bits of float64 value v, rounded once as the reference rounds."""
        if out_kind == OUT_F16 or out_kind == OUT_BF16:
            return _store(v, out_kind, fmax, tiny)
        return np.float32(_store(v, OUT_F32, fmax, tiny)).view(np.int32)

    @njit(inline="always", cache=True)
    def decode_buffer(buffer, n, es, scale, out, fmax, tiny):
        if out_kind == OUT_F64:
            for j in range(out.size):
                out[j] = posit_decode_value(buffer[j], n, es, scale)
        elif out_kind == OUT_F32_IN_RANGE:
            for j in range(out.size):
                out[j] = float32_bits(buffer[j], n, es, scale)[0]
        else:
            special = uint32(0)
            for j in range(out.size):
                bits, flag = element_bits(buffer[j], n, es, scale)
                out[j] = bits
                special = or32(special, flag)
            if special:
                for j in range(out.size):
                    if element_bits(buffer[j], n, es, scale)[1]:
                        out[j] = finished(posit_decode_value(buffer[j], n, es, scale), fmax, tiny)

    @njit(inline="always", cache=True)
    def block(words, stride, low, n, es, scale, out, fmax, tiny, buffer):
        low_max = uint32(0)
        high_max = uint32(0)
        if stride == 1:
            for j in range(out.size):  # narrow into the cached buffer, checking the range
                c = words[j]
                low_max = max(low_max, c)
                buffer[j] = c
        elif low == 0:  # constant offsets: LLVM vectorises the paired loads
            for j in range(out.size):
                c = words[2 * j]
                low_max = max(low_max, c)
                high_max = max(high_max, words[2 * j + 1])
                buffer[j] = c
        else:
            for j in range(out.size):
                c = words[2 * j + 1]
                low_max = max(low_max, c)
                high_max = max(high_max, words[2 * j])
                buffer[j] = c
        decode_buffer(buffer, n, es, scale, out, fmax, tiny)
        return low_max, high_max

    @njit(parallel=True, cache=True)
    def kernel(words, stride, low, n, es, scale, out, fmax, tiny):
        count = (out.size + BLOCK - 1) // BLOCK
        low_max = np.zeros(max(count, 1), np.uint32)
        high_max = np.zeros(max(count, 1), np.uint32)
        for b in prange(count):
            lo = b * BLOCK
            hi = min(lo + BLOCK, out.size)
            buffer = np.empty(BLOCK, np.uint32)
            low_max[b], high_max[b] = block(words[lo * stride:hi * stride], stride, low, n, es, scale, out[lo:hi],
                                            fmax, tiny, buffer)
        return low_max.max(), high_max.max()

    return kernel
