"""numba kernels for pack_bits / unpack_bits (the optional fast path; `bitpack` is the reference).

One sequential pass through a 64-bit bit accumulator: a code enters at the accumulator's fill
level and whole bytes leave from the bottom, which is exactly the ``lsb_first`` stream. No
parallel region, so the speed does not collapse when the cores are shared (torch's many small
parallel ops in the reference do). Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

__all__ = ["pack_into", "unpack_into"]


@njit(cache=True, nogil=True)
def pack_into(codes, bits, out):  # type: ignore[no-untyped-def]
    """codes: 1-D integer array of values in [0, 2**bits); out: uint8 array of ceil(n*bits/8)."""
    acc = uint64(0)
    fill = 0  # bits waiting in acc (< 8 between codes, so acc never holds more than 39)
    o = 0
    byte = uint64(0xFF)
    for i in range(codes.size):
        acc |= uint64(codes[i]) << uint64(fill)
        fill += bits
        while fill >= 8:
            out[o] = np.uint8(acc & byte)
            o += 1
            acc >>= uint64(8)
            fill -= 8
    if fill > 0:
        out[o] = np.uint8(acc & byte)


@njit(cache=True, nogil=True)
def unpack_into(data, bits, out):  # type: ignore[no-untyped-def]
    """data: uint8 array of ceil(n*bits/8) bytes; out: 1-D integer array of n codes to fill."""
    acc = uint64(0)
    fill = 0
    p = 0
    mask = (uint64(1) << uint64(bits)) - uint64(1)
    for i in range(out.size):
        while fill < bits:
            acc |= uint64(data[p]) << uint64(fill)
            p += 1
            fill += 8
        out[i] = acc & mask
        acc >>= uint64(bits)
        fill -= bits
