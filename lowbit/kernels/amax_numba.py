"""numba kernels for the largest finite magnitude of a tensor, in one pass over its memory.

Each chunk of ``chunk`` elements is reduced on its own thread (`prange`), then the partial maxima;
the maximum is exact whatever the order, so the result does not depend on the thread count.
Nothing compiles at import.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below


@njit(parallel=True, cache=True)
def finite_amax_float(x, chunk):
    """max |x[i]| over the finite x[i] of a float32 / float64 array (0.0 when there is none)."""
    n = x.size
    parts = (n + chunk - 1) // chunk
    partial = np.zeros(parts, dtype=np.float64)
    zero, inf = x.dtype.type(0), x.dtype.type(np.inf)
    for c in prange(parts):
        m = zero
        for i in range(c * chunk, min(n, (c + 1) * chunk)):  # branch-free: the loop vectorizes
            a = abs(x[i])
            a = a if a < inf else zero  # inf and NaN (which compares false) count as 0
            m = max(m, a)
        partial[c] = m
    best = 0.0
    for c in range(parts):
        if partial[c] > best:
            best = partial[c]
    return best


@njit(parallel=True, cache=True)
def finite_amax_bits16(bits, exponent_mask, chunk):
    """The magnitude bit pattern (sign cleared) of the largest finite element of a float16 /
    bfloat16 array read as int16 (0 when there is none). A 16-bit float is non-finite when all its
    ``exponent_mask`` bits are set; among finite ones, the magnitude grows with the pattern."""
    n = bits.size
    parts = (n + chunk - 1) // chunk
    partial = np.zeros(parts, dtype=np.int64)
    for c in prange(parts):
        m = 0
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            b = np.int64(bits[i]) & 0x7FFF
            if (b & exponent_mask) != exponent_mask and b > m:
                m = b
        partial[c] = m
    best = 0
    for c in range(parts):
        if partial[c] > best:
            best = partial[c]
    return best
