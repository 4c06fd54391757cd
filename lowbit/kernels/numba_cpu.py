"""Fused multi-threaded CPU kernels (numba) for posit, minifloat and uniform-grid formats.

Each kernel runs the same arithmetic as the torch reference in `lowbit.formats`, one element at a
time in float64/int64 registers, so results are bit-identical (tests check every code of every
≤16-bit format, all ties, random values and every rounding mode). Stochastic rounding uses the
same counter-based stream as the reference (`lowbit.formats.rounding.uniform_stream`).

float16 / bfloat16 tensors are read and written as int16 bit patterns (`_load`, `_store`): no
float64 copy of a 16-bit tensor is made. Lookup kernels (`table_lookup16`, `table_lookup32`) serve
large inputs in deterministic modes from tables the element kernels compute (see `dispatch`).

Kernels are built per (rounding mode, input kind, output kind) by small factories, so that the
mode is a compile-time constant: the branches of the other modes vanish and LLVM vectorises the loop
body (a runtime mode switch costs 3–5× here). Nothing compiles at import; each kernel compiles on
first use (about a second) and is cached on disk (numba keys the cache on the closure values).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
from numba import float64, int64, njit, prange, uint64

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

_INF = math.inf
_MANT52 = (1 << 52) - 1

# rounding mode numbers: the order of lowbit.formats.rounding.ROUNDING_MODES
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, FLOOR, CEIL, STOCHASTIC = range(6)
# input kinds: float32/float64 arrays, or int16 bit patterns of float16 / bfloat16
IN_NATIVE, IN_F16, IN_BF16 = range(3)
# output kinds: float64, float32, or int16 bit patterns of float16 / bfloat16
OUT_F64, OUT_F32, OUT_F16, OUT_BF16 = range(4)


# ------------------------------------------------------------------------------ scalar helpers
@njit(inline="always", cache=True)
def _pow2(k):
    """Exact 2**k for integer k in [-1022, 1023]."""
    return np.int64((k + 1023) << 52).view(np.float64)


@njit(inline="always", cache=True)
def _exponent(a):
    """floor(log2(a)) for positive finite float64 a (subnormals included)."""
    be = (np.float64(a).view(np.int64) >> 52) & 0x7FF
    be2 = (np.float64(a * 18446744073709551616.0).view(np.int64) >> 52) & 0x7FF  # a · 2^64
    return be - 1023 if be != 0 else be2 - 1023 - 64


@njit(inline="always", cache=True)
def _signbit(v):
    return np.float64(v).view(np.int64) < 0


@njit(inline="always", cache=True)
def _splitmix(seed, m):
    """The hash h_m of lowbit.formats.rounding's stochastic stream (serves elements 2m, 2m + 1)."""
    z = uint64(seed) + uint64(m + 1) * uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(inline="always", cache=True)
def _uniform(seed, i):
    """u_i of lowbit.formats.rounding.uniform_stream: a half of h_(i // 2), times 2^-32."""
    z = _splitmix(seed, i >> 1)
    half = (z >> uint64(32)) if (i & 1) == 0 else (z & uint64(0xFFFFFFFF))
    return float64(int64(half)) * 2.3283064365386963e-10  # 2^-32


@njit(inline="always", cache=True)
def _round_scaled(s, negative, mode, u):
    """Round a nonnegative scaled magnitude to an integer (float64); ``mode`` is a constant."""
    if mode == NEAREST_EVEN:
        return np.rint(s)
    if mode == TOWARD_ZERO:
        return math.floor(s)
    if mode == FLOOR:
        return math.ceil(s) if negative else math.floor(s)
    if mode == CEIL:
        return math.floor(s) if negative else math.ceil(s)
    kept = math.floor(s)
    if mode == NEAREST_AWAY:
        return kept + (1.0 if s - kept >= 0.5 else 0.0)
    return kept + (1.0 if u < s - kept else 0.0)


@njit(inline="always", cache=True)
def _toward_zero(mode, negative):
    """Whether a directed mode rounds toward zero for this sign (IEEE 754 overflow rule)."""
    if mode == TOWARD_ZERO:
        return True
    if mode == FLOOR:
        return not negative
    if mode == CEIL:
        return negative
    return False


@njit(inline="always", cache=True)
def _cast(v, out32, fmax, tiny):
    """Round float64 v to the output precision, saturating (as formats._float64.round_float64_to)."""
    if out32:
        c = v
        if v > fmax and v != _INF:
            c = fmax
        if v < -fmax and v != -_INF:
            c = -fmax
        r = float64(np.float32(c))
        return math.copysign(tiny, v) if (r == 0.0 and v != 0.0) else r
    return v


# ------------------------------------------------------------------------------ 16-bit inputs and outputs
# float16 / bfloat16 tensors are read and written as their int16 bit patterns (numba has no
# bfloat16), converted exactly to float64 on load and rounded once, to nearest even, on store.
@njit(inline="always", cache=True)
def _load(x, i, in_kind):
    """Element i of x as float64: x itself (float32/64) or float16 / bfloat16 bit patterns."""
    if in_kind == IN_NATIVE:
        return float64(x[i])
    h = int64(x[i]) & 0xFFFF
    sign = -1.0 if (h >> 15) == 1 else 1.0
    if in_kind == IN_BF16:
        return float64(np.uint32(h << 16).view(np.float32))
    e = (h >> 10) & 31
    m = h & 1023
    if e == 31:
        return math.copysign(_INF if m == 0 else np.nan, sign)
    mag = float64(m) * 5.9604644775390625e-08 if e == 0 else float64(1024 + m) * _pow2(e - 25)  # 2^-24
    return math.copysign(mag, sign)


@njit(inline="always", cache=True)
def _half_bits(v, out_kind):
    """float64 v rounded once (nearest even, saturating, nonzero stays nonzero; NaN -> the
    canonical quiet NaN) to float16 / bfloat16, as signed int16 bits (formats._float64.round_float64_to)."""
    if out_kind == OUT_F16:
        man, emin, bias, fmax, inf_bits, nan_bits = 10, -14, 15, 65504.0, 0x7C00, 0x7E00
    else:
        man, emin, bias, fmax, inf_bits, nan_bits = 7, -126, 127, 3.3895313892515355e38, 0x7F80, 0x7FC0
    a = abs(v)
    if v != v:
        mag = int64(nan_bits)
    elif a == _INF:
        mag = int64(inf_bits)
    elif a == 0.0:
        mag = int64(0)
    else:
        a = min(a, fmax)
        q = max(_exponent(a), emin) - man
        r = max(np.rint(a * _pow2(-q)), 1.0)  # a nonzero value never rounds to 0: the smallest subnormal
        value = r * _pow2(q)
        ev = _exponent(value)
        if ev < emin:
            mag = int64(r)
        else:
            mag = ((ev + bias) << man) | (int64(value * _pow2(man - ev)) - (int64(1) << man))
    bits = mag | (int64(0x8000) if (_signbit(v) and v == v) else int64(0))
    return np.int16(bits - 65536 if bits >= 32768 else bits)


@njit(inline="always", cache=True)
def _store(v, out_kind, fmax, tiny):
    """float64 v as an element of the output array (float64, float32, or 16-bit patterns)."""
    if out_kind == OUT_F64:
        return v
    if out_kind == OUT_F32:
        return _cast(v, True, fmax, tiny)
    return _half_bits(v, out_kind)


# ------------------------------------------------------------------------------ posit
@njit(inline="always", cache=True)
def _posit_decode_mag(mag, n, es, scale):
    nb = n - 1
    mask = (int64(1) << nb) - 1
    first = (mag >> (nb - 1)) & 1
    y = (~mag & mask) if first == 1 else mag
    run = nb - 1 - _exponent(float64(y if y != 0 else 1))
    run = nb if y == 0 else run
    k = run - 1 if first == 1 else -run
    rem_len = max(nb - run - 1, 0)
    rem = mag & ((int64(1) << rem_len) - 1)
    exp_len = min(rem_len, es)
    frac_len = rem_len - exp_len
    ex = (rem >> frac_len) << (es - exp_len)
    frac = rem & ((int64(1) << frac_len) - 1)
    value = float64((int64(1) << frac_len) + frac) * _pow2((k << es) + ex + scale - frac_len)
    return 0.0 if mag == 0 else value


@njit(inline="always", cache=True)
def _posit_decode(code, n, es, scale):
    negative = (code >> (n - 1)) & 1
    mag = (((int64(1) << n) - code) if negative == 1 else code) & ((int64(1) << (n - 1)) - 1)
    value = _posit_decode_mag(mag, n, es, scale)
    value = -value if negative == 1 else value
    return np.nan if code == (int64(1) << (n - 1)) else value


@njit(inline="always", cache=True)
def _posit_encode(v, n, es, scale, mode, u):
    nar = int64(1) << (n - 1)
    maxmag = nar - 1
    a = abs(v)
    special = not (a < _INF)
    negative = _signbit(v)
    safe = 1.0 if (special or a == 0.0) else a
    exponent = _exponent(safe)
    # the 52 fraction bits of safe's normalised significand (a subnormal is scaled by 2^64 first)
    big = safe * 18446744073709551616.0
    fraction = np.float64(safe if exponent >= -1022 else big).view(np.int64) & _MANT52
    exponent -= scale
    k = exponent >> es
    ex = exponent & ((int64(1) << es) - 1)
    kmax = n - 2
    above = k > kmax
    below = k < -kmax
    k = min(max(k, -kmax), kmax)
    regime_len = k + 2 if k >= 0 else 1 - k
    regime = (((int64(1) << (k + 1)) - 1) << 1) if k >= 0 else int64(1)
    room = 62 - regime_len
    tail = (ex << 52) | fraction
    cut = es + 52 - room
    cut_pos = max(cut, 0)
    body = (tail >> cut_pos) if cut > 0 else (tail << max(-cut, 0))
    sticky = (tail & ((int64(1) << cut_pos) - 1)) != 0
    long = (regime << room) | body
    drop = 62 - (n - 1)
    mag = long >> drop
    guard = ((long >> (drop - 1)) & 1) == 1
    rest = ((long & ((int64(1) << (drop - 1)) - 1)) != 0) | sticky
    if mode == NEAREST_EVEN:
        up = guard & (rest | ((mag & 1) == 1))
    elif mode == NEAREST_AWAY:
        up = guard
    elif mode == TOWARD_ZERO:
        up = False
    elif mode == FLOOR:
        up = (guard | rest) & negative
    elif mode == CEIL:
        up = (guard | rest) & (not negative)
    else:
        lo = _posit_decode_mag(mag, n, es, scale)
        hi = _posit_decode_mag(min(mag + 1, maxmag), n, es, scale)
        gap = hi - lo
        p_up = (safe - lo) / gap if gap > 0 else 0.0
        up = u < p_up
    mag = min(max(mag + (1 if up else 0), 1), maxmag)
    mag = maxmag if above else mag
    mag = 1 if below else mag
    code = (((int64(1) << n) - mag) & ((int64(1) << n) - 1)) if negative else mag
    code = 0 if a == 0.0 else code
    return nar if special else code


# ------------------------------------------------------------------------------ minifloat
@njit(inline="always", cache=True)
def _mf_value(v, man_bits, emin, maxv, minpos, subnormals, sat, has_inf, has_nan, fnu, fnuz, mode, u):
    """The rounded value (with the format's NaN/inf/zero rules) of float64 v."""
    negative = _signbit(v)
    a = abs(v)
    finite_nonzero = (a > 0.0) & (a < _INF)
    safe = a if finite_nonzero else 1.0
    # capped so that 2**-qexp stays a normal double (|v| >= 2**1023 with man_bits = 0)
    e = min(max(_exponent(safe), emin), 1022 + man_bits)
    qexp = e - man_bits
    r = _round_scaled(safe * _pow2(-qexp), negative, mode, u) * _pow2(qexp)
    if not subnormals:
        r = max(r, minpos)
    if r > maxv:
        if sat or _toward_zero(mode, negative):
            r = maxv
        elif has_inf:
            r = _INF
        else:
            r = np.nan
    r = math.copysign(r, v)
    if a == 0.0:
        r = 0.0 if fnuz else v
    elif fnuz and r == 0.0:
        r = 0.0
    if a == _INF:
        r = math.copysign(maxv, v) if sat else (v if has_inf else np.nan)
    if a != a:  # without a NaN pattern, as ml_dtypes: +NaN -> -0, -NaN -> +0
        r = np.nan if has_nan else (0.0 if negative else -0.0)
    if fnu and (negative or a == 0.0):
        r = np.nan
    return np.nan if r != r else r  # one NaN, positive, like the reference's decode


@njit(inline="always", cache=True)
def _mf_code(v, r, exp_bits, man_bits, bias, emin, signed, subnormals, nan_code, signed_nan):
    """The code of the rounded value r (from _mf_value) of input v."""
    top = exp_bits + man_bits
    a = abs(r)
    safe = a if ((a > 0.0) & (a < _INF)) else 1.0
    e = _exponent(safe)
    sub = subnormals and e < emin
    mant_sub = int64(safe * _pow2(man_bits - emin))
    mant = int64(safe * _pow2(man_bits - e)) - (int64(1) << man_bits)
    mag = mant_sub if sub else (((e + bias) << man_bits) | mant)
    mag = 0 if a == 0.0 else mag
    mag = (((int64(1) << exp_bits) - 1) << man_bits) if a == _INF else mag
    sign = (int64(1) << top) if (signed and _signbit(r)) else int64(0)
    code = sign | mag
    nan = ((int64(1) << top) | nan_code) if (signed_nan and _signbit(v)) else nan_code
    return nan if r != r else code


# ------------------------------------------------------------------------------ uniform grid
@njit(inline="always", cache=True)
def _grid_k(v, frac_scale, bound, k_min, k_max, mode, u):
    negative = _signbit(v)
    scaled = min(abs(v) * frac_scale, bound)
    scaled = 0.0 if v != v else scaled
    k = int64(_round_scaled(scaled, negative, mode, u))
    k = -k if negative else k
    return min(max(k, k_min), k_max)


# ------------------------------------------------------------------------------ kernel factories
# One compiled kernel per (family, operation, input kind[, output kind]) and rounding mode class:
# nearest-even and stochastic (the modes of training and inference) are closure constants, so
# numba specialises them (a run-time stochastic mode measured 2-6x slower); the four directed
# modes are read at run time from the kernel's last argument (``mode_arg``), so a sweep over the
# six modes compiles three kernels instead of six. Closures over integers only, so each is cached
# on disk.
RUNTIME_MODE = -1
SPECIALISED_MODES = (NEAREST_EVEN, STOCHASTIC)


def _mode_specialised(factory: Callable[..., Any]) -> Callable[..., Any]:
    """``factory(mode, *kinds)`` → its kernel, built once per (a mode of `SPECIALISED_MODES` or
    `RUNTIME_MODE`, kinds). The kernel takes the rounding mode again as its last argument."""
    build = functools.lru_cache(maxsize=None)(factory)

    @functools.wraps(factory)
    def kernel_for(mode: int, *kinds: int) -> Callable[..., Any]:
        return build(mode if mode in SPECIALISED_MODES else RUNTIME_MODE, *kinds)

    return kernel_for


@_mode_specialised
def posit_encode(mode: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, n, es, scale, seed, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            out[i] = _posit_encode(float64(x[i]), n, es, scale, m, u)

    return kernel


@_mode_specialised
def posit_quantize(mode: int, in_kind: int, out_kind: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, n, es, scale, seed, fmax, tiny, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            code = _posit_encode(_load(x, i, in_kind), n, es, scale, m, u)
            out[i] = _store(_posit_decode(code, n, es, scale), out_kind, fmax, tiny)

    return kernel


@_mode_specialised
def posit_quantize_table(mode: int, in_kind: int = IN_NATIVE) -> Callable[..., Any]:
    """Posit quantize for n ≤ 16: the value comes from a table already cast to out's dtype
    (for float16 / bfloat16 outputs: a table of their bit patterns)."""

    @njit(parallel=True, cache=True)
    def kernel(x, out, n, es, scale, seed, table, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            out[i] = table[_posit_encode(_load(x, i, in_kind), n, es, scale, m, u)]

    return kernel


@_mode_specialised
def minifloat_quantize(mode: int, in_kind: int, out_kind: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, man_bits, emin, maxv, minpos, subnormals, sat, has_inf, has_nan, fnu, fnuz, seed, fmax,
               tiny, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            r = _mf_value(_load(x, i, in_kind), man_bits, emin, maxv, minpos, subnormals, sat, has_inf, has_nan,
                          fnu, fnuz, m, u)
            out[i] = _store(r, out_kind, fmax, tiny)

    return kernel


@_mode_specialised
def minifloat_encode(mode: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, exp_bits, man_bits, bias, emin, maxv, minpos, signed, subnormals, sat, has_inf, has_nan,
               fnu, fnuz, nan_code, signed_nan, seed, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            v = float64(x[i])
            r = _mf_value(v, man_bits, emin, maxv, minpos, subnormals, sat, has_inf, has_nan, fnu, fnuz, m, u)
            out[i] = _mf_code(v, r, exp_bits, man_bits, bias, emin, signed, subnormals, nan_code, signed_nan)

    return kernel


@_mode_specialised
def grid_quantize(mode: int, in_kind: int, out_kind: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, frac_scale, bound, k_min, k_max, seed, fmax, tiny, mode_arg):
        m = mode if mode >= 0 else mode_arg
        step = 1.0 / frac_scale
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            k = _grid_k(_load(x, i, in_kind), frac_scale, bound, k_min, k_max, m, u)
            out[i] = _store(float64(k) * step, out_kind, fmax, tiny)

    return kernel


@_mode_specialised
def grid_encode(mode: int) -> Callable[..., Any]:
    @njit(parallel=True, cache=True)
    def kernel(x, out, frac_scale, bound, k_min, k_max, word_mask, seed, mode_arg):
        m = mode if mode >= 0 else mode_arg
        for i in prange(x.size):
            u = _uniform(seed, i) if m == STOCHASTIC else 0.0
            out[i] = _grid_k(float64(x[i]), frac_scale, bound, k_min, k_max, m, u) & word_mask

    return kernel


# ------------------------------------------------------------------------------ decode
# The lookup kernels come in two forms: a serial loop (``…_serial``), which `runtime.launch` runs
# on the calling thread when one thread is used, and a parallel one that hands each worker
# `LOOKUP_CHUNK` elements at a time to that same serial loop. A loop of table reads compiled as
# a plain range loop runs 2-2.5x faster per element here than the same body inside ``prange``,
# and the calling thread needs no worker woken (about 20 µs per launch).
LOOKUP_CHUNK = 1 << 14


@njit(cache=True)
def table_lookup32_serial(x, table, out):
    """float32 inputs (int32 bit patterns) by their top 16 bits: table[2b] for the bucket's first
    pattern, table[2b + 1] for the others (dispatch._float32_table says when that is exact)."""
    for i in range(x.size):
        b = int64(x[i]) & 0xFFFFFFFF
        out[i] = table[((b >> 16) << 1) | (1 if (b & 0xFFFF) != 0 else 0)]


@njit(parallel=True, cache=True)
def table_lookup32(x, table, out):
    """`table_lookup32_serial` on `LOOKUP_CHUNK`-element slices, in parallel."""
    n = x.size
    for c in prange((n + LOOKUP_CHUNK - 1) // LOOKUP_CHUNK):
        lo = c * LOOKUP_CHUNK
        hi = min(lo + LOOKUP_CHUNK, n)
        table_lookup32_serial(x[lo:hi], table, out[lo:hi])


@njit(cache=True)
def table_lookup16_serial(x, table, out):
    """out[i] = table[x[i] mod 2^16]: 16-bit inputs (int16 bit patterns) through a full table."""
    for i in range(x.size):
        out[i] = table[int64(x[i]) & 0xFFFF]


@njit(parallel=True, cache=True)
def table_lookup16(x, table, out):
    """`table_lookup16_serial` on `LOOKUP_CHUNK`-element slices, in parallel."""
    n = x.size
    for c in prange((n + LOOKUP_CHUNK - 1) // LOOKUP_CHUNK):
        lo = c * LOOKUP_CHUNK
        hi = min(lo + LOOKUP_CHUNK, n)
        table_lookup16_serial(x[lo:hi], table, out[lo:hi])


#: parallel kernel -> its serial loop, which `runtime.launch` runs on the calling thread for a
#: one-thread launch
SERIAL: "dict[Any, Any]" = {table_lookup32: table_lookup32_serial, table_lookup16: table_lookup16_serial}


@njit(parallel=True, cache=True)
def table_decode(codes, table, unused_code, out):
    """out[i] = table[codes[i]]; returns how many codes were outside the table or unused."""
    bad = 0
    size = table.size
    for i in prange(codes.size):
        c = int64(codes[i])
        invalid = (c < 0) | (c >= size) | (c == unused_code)
        bad += 1 if invalid else 0
        out[i] = table[min(max(c, 0), size - 1)]
    return bad


# ------------------------------------------------------------------------------ codebook k-means
@njit(inline="always", cache=True)
def _assign_sorted(xs, levels, bounds):
    """Cluster boundaries in sorted xs: nearest level, a tie to the lower (formats.learned._assign)."""
    k = levels.size
    bounds[0] = 0
    for j in range(k - 1):
        bounds[j + 1] = np.searchsorted(xs, levels[j] * 0.5 + levels[j + 1] * 0.5, side="right")
    bounds[k] = xs.size


@njit(parallel=True, cache=True)
def codebook_bounds(xs, k, max_iterations, out):
    """Lloyd's k-means on each sorted row of ``xs`` (G, b) into ``out`` (G, k + 1) cluster bounds,
    step for step as `lowbit.formats.learned.Codebook._fit` (linear initialisation, means from
    prefix sums, one empty level reseeded at a time), so every row gets the same bounds."""
    g, n = xs.shape
    for r in prange(g):
        x = xs[r]
        cs = np.zeros(n + 1)
        acc = 0.0
        for i in range(n):
            acc += x[i]
            cs[i + 1] = acc
        levels = np.empty(k)
        lo, hi = x[0], x[n - 1]
        for j in range(k):
            t = float64(j) / float64(k - 1)
            levels[j] = lo * (1.0 - t) + hi * t
        levels[k - 1] = hi
        bounds = np.empty(k + 1, dtype=np.int64)
        prev = np.empty(k + 1, dtype=np.int64)
        _assign_sorted(x, levels, bounds)
        have_prev = False
        for _ in range(max_iterations):
            same = have_prev
            if have_prev:
                for j in range(k + 1):
                    if bounds[j] != prev[j]:
                        same = False
                        break
            if same:
                empty = -1
                for j in range(k):
                    if bounds[j + 1] == bounds[j]:
                        empty = j
                        break
                if empty < 0:
                    break
                worst_err = -1.0
                worst = 0
                for side in range(2):
                    for j in range(k):
                        err = 0.0
                        # a cluster of equal values is exact (its exact mean is the value): no error
                        if bounds[j + 1] > bounds[j] and x[bounds[j]] != x[bounds[j + 1] - 1]:
                            if side == 0:
                                err = abs(x[min(bounds[j], n - 1)] - levels[j])
                            else:
                                err = abs(x[max(bounds[j + 1] - 1, 0)] - levels[j])
                        if err > worst_err:
                            worst_err = err
                            worst = side * k + j
                if worst_err == 0.0:
                    break
                side, c = worst // k, worst % k
                levels[empty] = x[min(bounds[c], n - 1)] if side == 0 else x[max(bounds[c + 1] - 1, 0)]
                levels = np.sort(levels)
                have_prev = False
            else:
                for j in range(k + 1):
                    prev[j] = bounds[j]
                have_prev = True
                for j in range(k):
                    count = bounds[j + 1] - bounds[j]
                    if count > 0:
                        levels[j] = (cs[bounds[j + 1]] - cs[bounds[j]]) / float64(count)
                levels = np.sort(levels)
            _assign_sorted(x, levels, bounds)
        for j in range(k + 1):
            out[r, j] = bounds[j]
