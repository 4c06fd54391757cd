"""numba kernel for packed-weight decoding: unpack n-bit codes and look each one up, in one pass.

The optional fast path of `lowbit.storage.modules` (the torch reference there is
``unpack_bits`` + ``index_select``): it reads the ``lsb_first`` bit stream exactly as
`lowbit.storage._bitpack_numba.unpack_into` does and writes ``table[code]`` straight into the
output, so no intermediate code tensor is made. The table and the output are given as integer
views of the float values (int16 for float16/bfloat16, int32 for float32, int64 for float64):
the kernel copies bit patterns, so every float dtype decodes bit for bit the same way.

Sequential on purpose, like the bit-packing kernels: decoding runs next to torch's own threads
in a forward pass, and a second parallel region there only fights them for the cores.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

__all__ = ["lut_decode_into", "lut_decode_rows_scaled_into"]


@njit(cache=True, nogil=True)
def lut_decode_into(data, bits, table, out):  # type: ignore[no-untyped-def]
    """data: uint8 stream of ceil(n*bits/8) bytes; table: 2**bits entries; out: n entries to fill."""
    n = out.size
    if bits == 8:
        for i in range(n):
            out[i] = table[data[i]]
        return
    mask = (uint64(1) << uint64(bits)) - uint64(1)
    i = 0
    p = 0
    if bits < 8 and 8 % bits != 0:
        # widths 3, 5, 6, 7: whole groups first. g codes fill exactly nb bytes (g * bits == 8 * nb
        # <= 56), so a group is one 64-bit word and its codes are fixed shifts of it (the bit loop
        # below is faster for 1, 2 and 4 bits, whose groups are single bytes)
        g = 8 // _gcd8(bits)
        nb = g * bits // 8
        full = n // g
        for k in range(full):
            word = uint64(0)
            for b in range(nb):
                word |= uint64(data[p + b]) << uint64(8 * b)
            for j in range(g):
                out[i + j] = table[(word >> uint64(j * bits)) & mask]
            p += nb
            i += g
    acc = uint64(0)
    fill = 0
    while i < n:
        while fill < bits:
            acc |= uint64(data[p]) << uint64(fill)
            p += 1
            fill += 8
        out[i] = table[acc & mask]
        acc >>= uint64(bits)
        fill -= bits
        i += 1


@njit(cache=True, inline="always")
def _gcd8(bits):  # type: ignore[no-untyped-def]
    a, b = bits, 8
    while b:
        a, b = b, a % b
    return a


@njit(cache=True, nogil=True)
def lut_decode_rows_scaled_into(data, bits, table, scale, row, out):  # type: ignore[no-untyped-def]
    """As `lut_decode_into` with float32 ``table``/``out``, then ``out[i] *= scale[i // row]``.

    One float32 multiply per element, rounded to nearest even exactly as torch's float32
    ``values * scale`` rounds it (no fast-math, no float64 detour), so the bits are the same.
    """
    lut_decode_into(data, bits, table.view(np.int32), out.view(np.int32))
    n = out.size
    for r in range(scale.size):
        s = scale[r]
        for i in range(r * row, min(n, (r + 1) * row)):
            out[i] = out[i] * s
