"""numba kernels for block-scaled formats (NVFP4's rule, `lowbit.formats.scaled_block`; MX's decode).

The torch reference in `lowbit.formats.scaled_block` is the specification; these kernels run its
two data-sized steps, fused and multi-threaded over blocks, while the per-block scale arithmetic
(one value per block: 1/16 of the data for NVFP4) stays the reference's own torch code:

1. `block_amax`: every block's largest magnitude in the input's precision (float32 or float64),
   and whether the block holds NaN or ±inf (its amax is then reported as 0, as the reference
   masks it);
2. the element kernels (`element_kernel`): ``y = x · r`` in the input's precision (r the block's
   float32 reciprocal, widened exactly for float64 input), clamped to ±E, rounded to the element
   format with the scalar kernels' own rounding helpers (`lowbit.kernels.numba_cpu`, every
   rounding mode, the same counter-based stochastic stream indexed by the flat element index),
   writing the element codes and/or ``table[code] · f`` in float32 (f the block's decoded scale,
   NaN for a NaN block), the reference's decode product.

`decode_packed_into` decodes packed element codes (lsb_first, any width ≤ 8 bits) times a
float32 factor per block, sequentially (it runs inside a forward pass, next to torch's threads).
Nothing compiles at import; kernels compile on first use and are cached on disk (each kernel
factory closes over integers and booleans only, so every specialisation has a stable cache key).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
from numba import float64, int64, njit, prange

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

from lowbit.kernels.numba_cpu import (
    NEAREST_EVEN,
    STOCHASTIC,
    _grid_k,
    _mf_code,
    _mf_value,
    _posit_decode,
    _posit_encode,
    _uniform,
)

__all__ = ["block_amax", "element_kernel", "pow2_element_kernel", "decode_packed_into"]

_FP32_MAX = float(np.finfo(np.float32).max)


@njit(parallel=True, cache=True)
def block_amax(x, n, k, amax, bad):  # type: ignore[no-untyped-def]
    """amax[b] = max |x| over block b of the rows (length n, blocks of k, the last may be shorter);
    bad[b] = the block holds NaN or ±inf (then amax[b] = 0)."""
    nb = (n + k - 1) // k
    for b in prange(amax.size):
        row = b // nb
        j = b - row * nb
        start = row * n + j * k
        stop = row * n + min((j + 1) * k, n)
        amax[b] = 0
        m = amax[b]  # a zero of the input's dtype
        nonfinite = False
        for i in range(start, stop):
            a = abs(x[i])
            if a != a or a == np.inf:
                nonfinite = True
            elif a > m:
                m = a
        bad[b] = nonfinite
        amax[b] = 0 if nonfinite else m


#: element / scale family names -> the integer constant the kernels branch on
FAMILIES: "dict[str, int]" = {"minifloat": 0, "posit": 1, "grid": 2}
_MINIFLOAT, _POSIT, _GRID = 0, 1, 2


def _family_id(family: str, argument: str, allowed: "tuple[str, ...]") -> int:
    if family not in allowed:
        raise ValueError(f"{argument}={family!r}; allowed: {', '.join(allowed)}")
    return FAMILIES[family]


# The element operations of every family. The kernels below are closures over integers and
# booleans only (family ids, mode, flags) and branch on them in their own body: numba prunes the
# untaken branches before it inlines these functions (so each kernel inlines one family's code),
# and caches every specialisation on disk. (A closure over other jitted functions gets a new cache
# key in every process and recompiles; a dispatch inside an inlined function inlines every family.)
@njit(inline="always", cache=True)
def _mf_code_of(v, p, u, mode):  # type: ignore[no-untyped-def]
    (exp_bits, man_bits, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code,
     signed_nan) = p
    r = _mf_value(v, man_bits, emin, maxv, minpos, sub, sat, inf, nan, fnu, fnuz, mode, u)
    return _mf_code(v, r, exp_bits, man_bits, bias, emin, signed, sub, nan_code, signed_nan)


@njit(inline="always", cache=True)
def _mf_value_of(v, p, u, mode):  # type: ignore[no-untyped-def]
    """The value computed directly, without a table gather (which stops LLVM vectorising: 3x slower)."""
    (exp_bits, man_bits, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code,
     signed_nan) = p
    return _mf_value(v, man_bits, emin, maxv, minpos, sub, sat, inf, nan, fnu, fnuz, mode, u)


@njit(inline="always", cache=True)
def _posit_code_of(v, p, u, mode):  # type: ignore[no-untyped-def]
    n, es, scale = p
    return _posit_encode(v, n, es, scale, mode, u)


@njit(inline="always", cache=True)
def _posit_value_of(v, p, u, mode, table):  # type: ignore[no-untyped-def]
    n, es, scale = p
    return float64(table[_posit_encode(v, n, es, scale, mode, u)])


@njit(inline="always", cache=True)
def _grid_code_of(v, p, u, mode):  # type: ignore[no-untyped-def]
    frac_scale, bound, k_min, k_max, word_mask = p
    return _grid_k(v, frac_scale, bound, k_min, k_max, mode, u) & word_mask


@njit(inline="always", cache=True)
def _grid_value_of(v, p, u, mode):  # type: ignore[no-untyped-def]
    frac_scale, bound, k_min, k_max, word_mask = p
    return float64(_grid_k(v, frac_scale, bound, k_min, k_max, mode, u)) / frac_scale


@njit(inline="always", cache=True)
def _mf_scale_of(t, p):  # type: ignore[no-untyped-def]
    """(code, float32 value) of the block scale t, rounded to nearest even."""
    (exp_bits, man_bits, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code,
     signed_nan) = p
    r = _mf_value(t, man_bits, emin, maxv, minpos, sub, sat, inf, nan, fnu, fnuz, NEAREST_EVEN, 0.0)
    return _mf_code(t, r, exp_bits, man_bits, bias, emin, signed, sub, nan_code, signed_nan), np.float32(r)


@njit(inline="always", cache=True)
def _posit_scale_of(t, p):  # type: ignore[no-untyped-def]
    n, es, scale = p
    c = _posit_encode(t, n, es, scale, NEAREST_EVEN, 0.0)
    return c, np.float32(_posit_decode(c, n, es, scale))


def _fixed_mode(mode: int) -> int:
    """The rounding mode a kernel is specialised for: nearest-even (the hot path) is a compile-time
    constant; every other mode is read at run time from the kernel's last argument (-1), so a
    sweep over modes compiles one kernel instead of five."""
    return mode if mode == NEAREST_EVEN else -1


def element_kernel(family: str, scale_family: str, mode: int) -> Callable[..., Any]:
    """The fused scale-and-round kernel of one element family ("minifloat", "posit", "grid"),
    scale family ("minifloat", "posit") and rounding mode (the order of ``ROUNDING_MODES``);
    signature ``kernel(x, n, k, amax, bad, E, m, M, g, inv_g, seed, params, table, scale_params,
    scale_nan, codes, scale_codes, values, store_codes, store_values, mode)`` (E, m, M, g, inv_g
    float32 scalars, g = inv_g = 1 without a tensor scale: t / 1, 1 / s and 1 · s are exact, so
    one kernel serves both; ``codes`` / ``values`` are written when ``store_codes`` /
    ``store_values``, else may be one-element arrays of the same dtypes; ``mode`` the same
    rounding mode again)."""
    return _element_kernel(family, scale_family, _fixed_mode(mode))


# What to store is read at run time (a loop-invariant branch, hoisted by LLVM), not specialised:
# codes-only, values-only and both share one compiled kernel per family, mode and dtypes.
@functools.lru_cache(maxsize=None)
def _element_kernel(family: str, scale_family: str, fixed_mode: int) -> Callable[..., Any]:
    family_id = _family_id(family, "family", ("minifloat", "posit", "grid"))
    scale_id = _family_id(scale_family, "scale_family", ("minifloat", "posit"))

    @njit(parallel=True, cache=True)
    def kernel(x, n, k, amax, bad, E, m, M, g, inv_g, seed, params, table, scale_params, scale_nan,  # type: ignore[no-untyped-def]
               codes, scale_codes, values, store_codes, store_values, mode_arg):
        mode = fixed_mode if fixed_mode >= 0 else mode_arg
        nb = (n + k - 1) // k
        emax = float64(E)
        for b in prange(amax.size):
            row = b // nb
            j = b - row * nb
            start = row * n + j * k
            stop = row * n + min((j + 1) * k, n)
            # the reference's float32 scale steps (ScaledBlockFormat._block_scales), one block
            a = np.float32(min(float64(amax[b]), _FP32_MAX))  # float64 input: clamped, rounded once
            t = (a / E) / g
            t = min(max(t, m), M)
            if scale_id == _MINIFLOAT:
                sc, s = _mf_scale_of(float64(t), scale_params)
            else:
                sc, s = _posit_scale_of(float64(t), scale_params)
            r = inv_g / s
            f = g * s
            zero = bad[b]
            if zero:
                sc = scale_nan
                f = np.float32(np.nan)
            scale_codes[b] = sc
            for i in range(start, stop):
                y = x[i] * r  # float32 · float32, or float64 · (float32 widened): the reference's product
                y = min(max(y, -emax), emax)
                v = 0.0 if zero else float64(y)
                u = _uniform(seed, i) if mode == STOCHASTIC else 0.0
                if store_codes:
                    if family_id == _MINIFLOAT:
                        codes[i] = _mf_code_of(v, params, u, mode)
                    elif family_id == _POSIT:
                        codes[i] = _posit_code_of(v, params, u, mode)
                    else:
                        codes[i] = _grid_code_of(v, params, u, mode)
                if store_values:  # the element's float32 value times the block's float32 factor
                    if family_id == _MINIFLOAT:
                        e = _mf_value_of(v, params, u, mode)
                    elif family_id == _POSIT:
                        e = _posit_value_of(v, params, u, mode, table)
                    else:
                        e = _grid_value_of(v, params, u, mode)
                    values[i] = np.float32(e) * f

    return kernel


@njit(cache=True, nogil=True)
def decode_packed_into(data, bits, table, factor, n, k, out):  # type: ignore[no-untyped-def]
    """out[i] = table[code_i] · factor[block of i] for the lsb_first ``bits``-bit codes (bits ≤ 8)
    in ``data``: rows of length n, blocks of k along each row (the last may be shorter), out holds
    rows · n entries, table 2**bits."""
    nb = (n + k - 1) // k
    mask = (1 << bits) - 1
    last = data.size - 1
    for row in range(out.size // n if n else 0):
        for j in range(nb):
            f = factor[row * nb + j]
            for p in range(row * n + j * k, row * n + min((j + 1) * k, n)):
                if bits == 4:
                    c = (int64(data[p >> 1]) >> ((p & 1) << 2)) & 15
                elif bits == 8:
                    c = int64(data[p])
                else:
                    bit = p * bits
                    at = bit >> 3
                    word = int64(data[at]) | ((int64(data[at + 1]) << 8) if at < last else 0)
                    c = (word >> (bit & 7)) & mask
                out[p] = table[c] * f


def pow2_element_kernel(family: str, mode: int) -> Callable[..., Any]:
    """The fused kernel of power-of-two block formats (MX, BFP, ``block<k>_<el>_scale_e8m0fnu``)
    for float32 input: per block ``s = ⌊log2 amax⌋ − emax`` (``zero_s`` for a zero block),
    clamped to [s_min, s_max]; elements ``x · 2^(shift − s)`` (exact in float64) rounded by the
    encoder (element family ``family``, rounding ``mode``), their values ``v · 2^(s − shift)``
    rounded once to float32; a block holding NaN or ±inf has s = ``nan_s``, codes of 0 and NaN
    values. Signature ``kernel(x, n, k, amax, bad, emax, zero_s, s_min, s_max, nan_s, shift, seed,
    params, table, codes, exponents, values, store_codes, store_values, mode)`` (``codes`` /
    ``values`` written when ``store_codes`` / ``store_values``; ``mode`` the same rounding mode
    again)."""
    return _pow2_element_kernel(family, _fixed_mode(mode))


@functools.lru_cache(maxsize=None)
def _pow2_element_kernel(family: str, fixed_mode: int) -> Callable[..., Any]:
    family_id = _family_id(family, "family", ("minifloat", "posit", "grid"))

    @njit(parallel=True, cache=True)
    def kernel(x, n, k, amax, bad, emax, zero_s, s_min, s_max, nan_s, shift, seed, params, table,  # type: ignore[no-untyped-def]
               codes, exponents, values, store_codes, store_values, mode_arg):
        mode = fixed_mode if fixed_mode >= 0 else mode_arg
        nb = (n + k - 1) // k
        for b in prange(amax.size):
            row = b // nb
            j = b - row * nb
            start = row * n + j * k
            stop = row * n + min((j + 1) * k, n)
            a = float64(amax[b])
            if a > 0:
                s = math.frexp(a)[1] - 1 - emax
            else:
                s = zero_s
            s = min(max(s, s_min), s_max)
            nan_block = bad[b]
            if nan_block:
                s = nan_s
            exponents[b] = s
            up = math.ldexp(1.0, shift - s)
            down = math.ldexp(1.0, s - shift)
            for i in range(start, stop):
                v = 0.0 if nan_block else float64(x[i]) * up
                u = _uniform(seed, i) if mode == STOCHASTIC else 0.0
                if store_codes:
                    if family_id == _MINIFLOAT:
                        codes[i] = _mf_code_of(v, params, u, mode)
                    elif family_id == _POSIT:
                        codes[i] = _posit_code_of(v, params, u, mode)
                    else:
                        codes[i] = _grid_code_of(v, params, u, mode)
                if store_values:
                    if family_id == _MINIFLOAT:
                        e = _mf_value_of(v, params, u, mode)
                    elif family_id == _POSIT:
                        e = _posit_value_of(v, params, u, mode, table)
                    else:
                        e = _grid_value_of(v, params, u, mode)
                    values[i] = np.float32(np.nan) if nan_block else np.float32(e * down)

    return kernel
