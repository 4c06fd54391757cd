"""Stochastic rounding of float32 arrays by arithmetic on their bit patterns (numba).

For a posit, minifloat or uniform-grid format, the values around a float32 ``x`` are spaced by a
power of two ``Q`` that follows from x's exponent field alone: ``max(e, emin) − man_bits`` for a
minifloat, the grid's step for fixed point and integers, and ``e − f`` for a posit whose
regime leaves ``f ≥ 1`` fraction bits at x's scale. Stochastic rounding then is, exactly::

    s = |x| · 2^-q            (exact: a power-of-two scaling of a 24-bit significand)
    kept = floor(s)           (s − kept is the exact (|x| − lo) / gap of the element kernels)
    up = u_i < s − kept       (u_i: the element's uniform, lowbit.formats.rounding's stream)
    result = ±(kept + up) · Q

which a vectorised loop computes for every element of a block, in int32 / float32 only (8 lanes
wide here). Elements outside that arithmetic (NaN, ±inf, overflow, a format without subnormals
or without negative values, a posit's cut exponent bits or full-length regime) are flagged in the
same loop and finished one by one: by the bucket tables (`stochastic_tables`, formats of ≤ 8 bits
on inputs of ≥ 2^12 elements), a posit's value table, or the element kernels' own functions
(`numba_cpu`). A flagged element costs ~17 ns that way, so after a block of more than 1/16 flagged
elements (a posit8's gradients, mostly below its fraction-carrying regimes) the next 31 blocks go
through the bucket tables alone. The family ``TABLES`` runs every element so: the ≤ 8-bit formats
the arithmetic does not cover (e.g. ``e8m0fnu``). Results are bit for bit
the reference's (tests/kernels/test_stochastic_kernel.py).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import math

import numpy as np
from numba import float64, int64, njit, prange, uint64

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

from lowbit.kernels import numba_cpu as _k  # noqa: E402  (after the cache keying)

__all__ = ["MINIFLOAT", "GRID", "POSIT", "TABLES", "BLOCK", "fill_halves", "stochastic_float32"]

MINIFLOAT, GRID, POSIT, TABLES = range(4)  # TABLES: the bucket tables alone (any ≤ 8-bit format)
BLOCK = 512  # elements per block: their uniforms (4 KiB) and results stay in L1
_LINE = 16  # float32 elements per 64-byte cache line
_SKIP_BLOCKS = 31  # after a block over 1/16 flagged (~17 ns each), the next ones by the bucket tables alone
_FMAX32 = 3.4028234663852886e38
_TINY32 = 2.0**-149


@njit(inline="always", cache=True)
def _slot(b):
    """The bucket-table slot of float32 pattern b: its top 16 bits, and whether its low 16 bits are
    nonzero (`stochastic_tables`)."""
    w = int64(b) & 0xFFFFFFFF
    return ((w >> 16) << 1) | (int64(1) if (w & 0xFFFF) != 0 else int64(0))


@njit(cache=True)
def fill_halves(high, low, seed, start, m):
    """The uniforms u_(start + k), k < m, of lowbit.formats.rounding's stream, split exactly into
    float32 parts: ``high[k]`` (the top 24 of the 32 bits) + ``low[k]`` (the last 8)."""
    if start % 2 == 0:
        for q in range(m >> 1):  # one hash per pair, in a loop LLVM vectorises
            z = _k._splitmix(seed, (start >> 1) + q)
            first, second = z >> uint64(32), z & uint64(0xFFFFFFFF)
            high[2 * q] = np.float32(first >> uint64(8)) * np.float32(2.0**-24)
            low[2 * q] = np.float32(first & uint64(0xFF)) * np.float32(2.0**-32)
            high[2 * q + 1] = np.float32(second >> uint64(8)) * np.float32(2.0**-24)
            low[2 * q + 1] = np.float32(second & uint64(0xFF)) * np.float32(2.0**-32)
        first_odd = m - (m & 1)
    else:
        first_odd = 0
    for k in range(first_odd, m):
        u = _k._uniform(seed, start + k)
        high[k] = np.float32(math.floor(u * 2.0**24) * 2.0**-24)
        low[k] = np.float32(u - float64(high[k]))


@functools.lru_cache(maxsize=None)
def stochastic_float32(family: int, zero_positive: bool, signed_ok: bool, check_min: bool, regime_shift: int,
                       staged: bool) -> Callable[..., Any]:
    """The parallel kernel ``(bits, x, p0, p1, qmin_bits, pos_limit, neg_limit, min_value,
    element, table, lo, gap, results, divide, seed, out)`` for one family, built once; its serial
    twin is registered in ``numba_cpu.SERIAL``.

    ``bits``: x's int32 view. ``p0, p1`` (int32): a minifloat's ``man_bits << 23``, a
    grid's ``0x7F800000`` (its step never changes), a posit's ``(127 + scale) << 23`` and
    ``n - 1 - es`` (its exponent-field arithmetic; ``|scale| ≤ 128``).
    ``qmin_bits`` (int32): the float32 bits of the smallest spacing (minifloat, grid).
    ``pos_limit``/``neg_limit`` (float32): the largest magnitude the arithmetic may give for
    positive / negative inputs (a grid clamps to it); ``min_value``: the smallest it may give
    (with ``check_min``). ``element``: the element kernels' parameters, 10 entries (minifloat
    ``[max, min_positive, subnormals, saturate, inf, nan, fnu, fnuz, man_bits, emin]``, grid
    ``[frac_scale, bound, k_min, k_max]``, posit ``[n, es, scale]``, zeros after); ``table``: a
    posit's float32 values by code (size 1: decode instead). ``lo, gap, results, divide``: the bucket tables of
    `stochastic_tables` for the flagged elements (``lo.size == 1``: none). Closure constants:
    ``zero_positive`` (a result 0 is +0), ``signed_ok`` (negative inputs take the arithmetic),
    ``check_min``, ``regime_shift`` (a posit's ``23 + es``, 0 otherwise: a constant shift is an
    int32 vector shift, a variable one was widened to int64 and cost a third of the posit loop),
    ``staged`` (results go through a block buffer: ``out`` may be ``x``).

    The loop is written in int32 / float32 only (every integer result cast back to int32, the
    flags summed in an int32), so LLVM vectorises it 8 lanes wide: with one int64 value in it,
    it ran at half the speed.
    """
    i32, f32 = np.int32, np.float32

    @njit(inline="always", cache=True)
    def spacing(b, p0, p1, qmin_bits):
        """float32 bits of the spacing Q at pattern b, and whether the arithmetic applies."""
        if family == POSIT:  # in exponent-field units: p0 = (127 + scale) << 23, p1 = n - 1 - es
            eb = i32(b & i32(0x7F800000))
            regime = i32(i32(eb - p0) >> i32(regime_shift))
            run = max(i32(regime + i32(2)), i32(i32(1) - regime))  # the regime's length in bits
            qb = i32(eb + i32(i32(run - p1) << i32(23)))  # x's exponent minus the p1 - run fraction bits left
            ok = (run < p1) & (qb >= i32(1 << 23))  # a fraction bit left; Q normal (so x is too)
            return (qb if ok else i32(127 << 23)), ok
        return max(i32(i32(b & i32(0x7F800000)) - p0), qmin_bits), True

    @njit(inline="always", cache=True)
    def arithmetic(x, b, high, low, p0, p1, qmin_bits, pos_limit, neg_limit, min_value):
        qb, ok = spacing(b, p0, p1, qmin_bits)
        if family == POSIT:
            ok = ok | (x == f32(0))  # Q = 1 there: ±0 gives +0
        step = i32(qb).view(np.float32)
        inverse = i32(i32(0x7F000000) - qb).view(np.float32)  # 2^-q
        s = abs(x) * inverse  # exact
        kept = np.floor(s)
        # u < s - kept, exactly: u = high + low, and (s - kept) - high is exact (see fill_halves)
        r = (kept + (f32(1) if low < (s - kept) - high else f32(0))) * step
        negative = b < i32(0)
        limit = neg_limit if negative else pos_limit
        if family == GRID:  # clamps (±inf too); min(NaN, limit) is NaN, flagged below
            r = min(r, limit)
        ok = ok & (r <= limit)  # NaN, ±inf and overflow are flagged
        if check_min:
            ok = ok & (r >= min_value)
        if not signed_ok:
            ok = ok & (not negative)
        # x's sign onto r >= 0 by bit operations (a conditional here became three masked stores)
        rb = f32(r).view(np.int32)
        sign = i32(b & i32(-0x80000000))
        if zero_positive:  # a result 0 is +0: keep the sign only where rb != 0
            sign = i32(sign & i32(i32(-rb) >> i32(31)))
        return i32(rb | sign).view(np.float32), ok

    @njit(inline="always", cache=True)
    def element_value(x, u, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9):
        """The element kernels' result for one element (scalars only: an array argument would cost
        reference counting per call, ~30 ns)."""
        if family == MINIFLOAT:
            r = _k._mf_value(x, int64(e8), int64(e9), e0, e1, e2 != 0, e3 != 0, e4 != 0, e5 != 0, e6 != 0, e7 != 0,
                             _k.STOCHASTIC, u)
            return f32(_k._store(r, _k.OUT_F32, _FMAX32, _TINY32))
        if family == GRID:
            kk = _k._grid_k(x, e0, e1, int64(e2), int64(e3), _k.STOCHASTIC, u)
            return f32(_k._store(float64(kk) * (1.0 / e0), _k.OUT_F32, _FMAX32, _TINY32))
        n, es, scale = int64(e0), int64(e1), int64(e2)
        code = _k._posit_encode(x, n, es, scale, _k.STOCHASTIC, u)
        return f32(_k._store(_k._posit_decode(code, n, es, scale), _k.OUT_F32, _FMAX32, _TINY32))

    @njit(cache=True)
    def rows(bits, x, p0, p1, qmin_bits, pos_limit, neg_limit, min_value, element, table, lo, gap, results,
             divide, seed, start, out):
        n = x.size
        high = np.empty(BLOCK, dtype=np.float32)
        low = np.empty(BLOCK, dtype=np.float32)
        buffer = np.empty(BLOCK, dtype=np.float32)
        flags = np.empty(BLOCK, dtype=np.int32)
        tables, values = lo.size > 1, table.size > 1
        skip = 0
        e0, e1, e2, e3, e4 = element[0], element[1], element[2], element[3], element[4]  # scalars for the
        e5, e6, e7, e8, e9 = element[5], element[6], element[7], element[8], element[9]  # element kernels
        touched = i32(0)
        for a in range(0, n, BLOCK):
            m = min(BLOCK, n - a)
            xb, bb = x[a:a + m], bits[a:a + m]
            ob = buffer[:m] if staged else out[a:a + m]
            fill_halves(high, low, seed, start + a, m)
            flagged_count = i32(0)
            if family == TABLES or skip > 0:  # every element by the bucket tables, in a tight loop
                skip = max(skip - 1, 0)
                for j in range(m):
                    slot = _slot(bb[j])
                    u = float64(high[j]) + float64(low[j])
                    d = abs(float64(xb[j])) - lo[slot]
                    up = (u < d / gap[slot]) if divide else (u * gap[slot] < d)
                    ob[j] = results[2 * slot + (1 if up else 0)]
            else:
                if family == POSIT:  # read the next block ahead, a load per cache line (see the module doc)
                    for t in range(a + BLOCK, min(a + 2 * BLOCK, n), _LINE):
                        touched = i32(touched | bits[t])
                for j in range(m):
                    r, ok = arithmetic(xb[j], bb[j], high[j], low[j], p0, p1, qmin_bits, pos_limit, neg_limit,
                                       min_value)
                    ob[j] = r
                    flag = i32(0) if ok else i32(1)
                    flags[j] = flag
                    flagged_count = i32(flagged_count + flag)
                if tables and flagged_count * 16 > m:
                    skip = _SKIP_BLOCKS
            if flagged_count:  # by the bucket tables, a posit's value table or the element kernels
                for j in range(m):
                    if flags[j]:
                        v = float64(xb[j])
                        u = float64(high[j]) + float64(low[j])
                        if tables:
                            slot = _slot(bb[j])
                            d = abs(v) - lo[slot]
                            up = (u < d / gap[slot]) if divide else (u * gap[slot] < d)
                            ob[j] = results[2 * slot + (1 if up else 0)]
                        elif family == POSIT and values:
                            ob[j] = table[_k._posit_encode(v, int64(e0), int64(e1), int64(e2), _k.STOCHASTIC, u)]
                        else:
                            ob[j] = element_value(v, u, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9)
            if staged:
                out[a:a + m] = buffer[:m]
        return touched

    @njit(cache=True)
    def serial(bits, x, p0, p1, qmin_bits, pos_limit, neg_limit, min_value, element, table, lo, gap, results,
               divide, seed, out):
        rows(bits, x, p0, p1, qmin_bits, pos_limit, neg_limit, min_value, element, table, lo, gap, results,
             divide, seed, 0, out)

    @njit(parallel=True, cache=True)
    def kernel(bits, x, p0, p1, qmin_bits, pos_limit, neg_limit, min_value, element, table, lo, gap, results,
               divide, seed, out):
        n = x.size
        for c in prange((n + _k.LOOKUP_CHUNK - 1) // _k.LOOKUP_CHUNK):
            a = c * _k.LOOKUP_CHUNK
            b = min(a + _k.LOOKUP_CHUNK, n)
            rows(bits[a:b], x[a:b], p0, p1, qmin_bits, pos_limit, neg_limit, min_value, element, table, lo, gap,
                 results, divide, seed, a, out[a:b])

    _k.SERIAL[kernel] = serial
    return kernel
