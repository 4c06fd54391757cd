"""Multi-threaded CPU quire kernels (numba): exact sums of exact products, rounded once.

Operands arrive decomposed into integer significands and exponents (value = m · 2**e, m an
int64 with |m| < 2**53, see `lowbit.kernels.quire`). Two accumulators, chosen per call:

- `int_matmul`: every operand is an integer on one common grid and the whole sum fits in
  62 bits, so a plain int64 multiply-add is exact (the fast path of posit8 / e4m3fn / int8
  values of a usual range);
- `limb_matmul`: a Kulisch accumulator of signed int64 limbs holding 30 bits each, wide enough for
  the exponent range present in the call. A product (≤ 106 bits) is split into six 60-bit
  partial products added to the limbs without carries (a limb has room for 2**31 such
  additions; carries are normalised every 2**24 products and at the end).

Both end in `_round_to_float64`, the exact rounding of (sign, 62 leading bits, sticky, exponent)
to float64, either to nearest even or to odd (see docs/semantics.md, "The quire").
Parallel over output rows (`prange`); nothing compiles at import.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

_M30 = (1 << 30) - 1
_MAXF64 = 1.7976931348623157e308
_NORMALIZE_EVERY = 1 << 24


@njit(inline="always", cache=True)
def _bitlen(x):
    """Number of bits of the int64 x >= 0."""
    n = 0
    while x > 0:
        x >>= 1
        n += 1
    return n


@njit(inline="always", cache=True)
def _round_to_float64(neg, t, e, sticky, odd):
    """(-1)**neg · (t + δ) · 2**e rounded once to float64.

    ``t`` >= 0 is an int64 below 2**62; ``sticky`` says that a δ in (0, 1) was cut off (only
    when t has 62 bits). ``odd``: round to odd (inexact results get an odd last bit, values past
    the float64 range become ±max), else to nearest even (past the range: ±inf).
    """
    if t == 0:
        return 0.0
    bl = _bitlen(t)
    msb = e + bl - 1
    kept = 53 if msb >= -1022 else msb + 1075
    drop = bl - kept
    if drop <= 0:
        q = t
        qe = e
    elif drop >= 63:  # below half the smallest subnormal
        q = 1 if odd else 0
        qe = e + drop
    else:
        q = t >> drop
        rem = t & ((np.int64(1) << drop) - 1)
        half = np.int64(1) << (drop - 1)
        if odd:
            if rem != 0 or sticky:
                q |= 1
        elif rem > half or (rem == half and (sticky or (q & 1) == 1)):
            q += 1
        qe = e + drop
    if odd and q != 0 and qe + _bitlen(q) - 1 > 1023:
        v = _MAXF64
    else:
        v = math.ldexp(np.float64(q), qe)
    return -v if neg else v


@njit(inline="always", cache=True)
def _normalize(limbs):
    """Propagate carries: limbs[:-1] in [0, 2**30), the top limb signed."""
    for i in range(limbs.shape[0] - 1):
        c = limbs[i] >> 30
        limbs[i] -= c << 30
        limbs[i + 1] += c


@njit(inline="always", cache=True)
def _limbs_to_float64(limbs, bottom, odd):
    """The exact value sum(limbs[i] · 2**(30 i)) · 2**bottom rounded once to float64."""
    _normalize(limbs)
    nl = limbs.shape[0]
    neg = limbs[nl - 1] < 0
    if neg:
        for i in range(nl):
            limbs[i] = -limbs[i]
        _normalize(limbs)
    h = nl - 1
    while h >= 0 and limbs[h] == 0:
        h -= 1
    if h < 0:
        return 0.0
    msb = 30 * h + _bitlen(limbs[h]) - 1
    s = msb - 61 if msb > 61 else 0
    t = np.int64(0)
    sticky = False
    for i in range(h, -1, -1):
        sh = 30 * i - s
        li = limbs[i]
        if sh >= 0:
            t += li << sh
        elif sh > -30:
            t += li >> (-sh)
            if li & ((np.int64(1) << (-sh)) - 1) != 0:
                sticky = True
        elif li != 0:
            sticky = True
    return _round_to_float64(neg, t, bottom + s, sticky, odd)


@njit(parallel=True, cache=True)
def limb_matmul(ma, ea, mbt, ebt, bottom, nlimbs, odd, out):
    """out[r, j] = round(sum_t ma[r,t]·2**ea[r,t] · mbt[g,j,t]·2**ebt[g,j,t]), g = r // (R // G).

    ``ma``/``ea``: [R, K] int64 significands / exponents of the left operand (R = G·m rows);
    ``mbt``/``ebt``: [G, N, K] of the right operand, transposed; ``bottom`` <= every
    ea + ebt of a nonzero product; ``nlimbs`` 30-bit limbs hold the whole sum.
    """
    rows, k = ma.shape
    groups, n, _ = mbt.shape
    per_group = rows // groups
    for r in prange(rows):
        g = r // per_group
        limbs = np.zeros(nlimbs, np.int64)
        for j in range(n):
            limbs[:] = 0
            count = 0
            for t in range(k):
                x = ma[r, t]
                y = mbt[g, j, t]
                if x == 0 or y == 0:
                    continue
                neg = (x < 0) != (y < 0)
                if x < 0:
                    x = -x
                if y < 0:
                    y = -y
                p = ea[r, t] + ebt[g, j, t] - bottom
                q = p // 30
                s = p - 30 * q
                x0 = (x & _M30) << s
                x1 = ((x >> 30) << s) + (x0 >> 30)
                a0 = x0 & _M30
                a1 = x1 & _M30
                a2 = x1 >> 30
                b0 = y & _M30
                b1 = y >> 30
                sg = -1 if neg else 1
                pr = a0 * b0
                limbs[q] += sg * (pr & _M30)
                limbs[q + 1] += sg * (pr >> 30)
                if b1 != 0:
                    pr = a0 * b1
                    limbs[q + 1] += sg * (pr & _M30)
                    limbs[q + 2] += sg * (pr >> 30)
                if a1 != 0 or a2 != 0:
                    pr = a1 * b0
                    limbs[q + 1] += sg * (pr & _M30)
                    limbs[q + 2] += sg * (pr >> 30)
                    pr = a2 * b0
                    limbs[q + 2] += sg * (pr & _M30)
                    limbs[q + 3] += sg * (pr >> 30)
                    if b1 != 0:
                        pr = a1 * b1
                        limbs[q + 2] += sg * (pr & _M30)
                        limbs[q + 3] += sg * (pr >> 30)
                        pr = a2 * b1
                        limbs[q + 3] += sg * (pr & _M30)
                        limbs[q + 4] += sg * (pr >> 30)
                count += 1
                if count == _NORMALIZE_EVERY:
                    _normalize(limbs)
                    count = 0
            out[r, j] = _limbs_to_float64(limbs, bottom, odd)


@njit(parallel=True, cache=True)
def int_matmul(a, b, out):
    """out[r, :] = sum_t a[r, t] · b[g, t, :] in int64 (g = r // (R // G)); exact when it fits."""
    rows, k = a.shape
    groups, _, n = b.shape
    per_group = rows // groups
    for r in prange(rows):
        g = r // per_group
        acc = out[r]
        acc[:] = 0
        for t in range(k):
            x = a[r, t]
            if x == 0:
                continue
            bt = b[g, t]
            for j in range(n):
                acc[j] += x * bt[j]


@njit(parallel=True, cache=True)
def round_int64(s, e, odd, out):
    """out[i] = s[i] · 2**e rounded once to float64 (|s[i]| < 2**62)."""
    for i in prange(s.shape[0]):
        v = s[i]
        out[i] = _round_to_float64(v < 0, -v if v < 0 else v, e, False, odd)


@njit(parallel=True, cache=True)
def frame(x, chunks):
    """One pass over the flat float array x: (all finite, any nonzero, lowest lsb exponent, highest top).

    A finite nonzero v = m · 2**e with m odd has lsb exponent e; its top is the e' with
    2**(e' - 1) <= |v| < 2**e'. The scan runs in ``chunks`` parallel pieces.
    """
    n = x.shape[0]
    size = (n + chunks - 1) // chunks
    finite = np.ones(chunks, np.bool_)
    lo = np.full(chunks, 1 << 20, np.int64)
    top = np.full(chunks, -(1 << 20), np.int64)
    for c in prange(chunks):
        f = True
        lmin = np.int64(1 << 20)
        tmax = np.int64(-(1 << 20))
        for i in range(c * size, min(n, (c + 1) * size)):
            v = np.float64(x[i])
            if v != v or v == np.inf or v == -np.inf:
                f = False
            elif v != 0.0:
                bits = np.float64(v).view(np.int64)
                be = (bits >> 52) & 0x7FF
                frac = bits & 0xFFFFFFFFFFFFF
                if be == 0:  # subnormal: frac · 2**-1074, top from frac's length (frac < 2**52: exact)
                    m = frac
                    e = np.int64(-1074)
                    ex = ((np.float64(frac).view(np.int64) >> 52) & 0x7FF) - 1023 + 1 - 1074
                else:
                    m = frac | 0x10000000000000
                    e = be - 1075
                    ex = be - 1022
                low = m & (-m)
                tz = ((np.float64(low).view(np.int64) >> 52) & 0x7FF) - 1023
                e_lsb = e + tz
                if e_lsb < lmin:
                    lmin = e_lsb
                if ex > tmax:
                    tmax = ex
        finite[c] = f
        lo[c] = lmin
        top[c] = tmax
    return finite.all(), lo.min(), top.max()


@njit(parallel=True, cache=True)
def to_scaled_int64(x, e, out):
    """out[i] = x[i] · 2**e as int64 (exact: the caller knows every result is an integer < 2**62)."""
    half = e // 2
    s1 = math.ldexp(1.0, half)
    s2 = math.ldexp(1.0, e - half)
    for i in prange(x.shape[0]):
        out[i] = np.int64(np.float64(x[i]) * s1 * s2)


@njit(parallel=True, cache=True)
def to_scaled_float64(x, e, out):
    """out[i] = x[i] · 2**e in float64 (exact: the caller knows every result is an integer < 2**53)."""
    half = e // 2
    s1 = math.ldexp(1.0, half)
    s2 = math.ldexp(1.0, e - half)
    for i in prange(x.shape[0]):
        out[i] = np.float64(x[i]) * s1 * s2
