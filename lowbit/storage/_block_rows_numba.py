"""numba decode of block-format weights whose rows span several blocks (Linear weights), and of
8-bit codes times a scale per row: one table lookup per element (4-bit: per byte), no multiply.

The fast paths `lowbit.storage._decode_numba.decode_blocks_into` and ``decode_into`` take for
row-major weights (blocks along the last axis, rows longer than a block; a float32 scale per row
or per tensor). Each looks every code up in a table of already-scaled float32 values, made from
the same two IEEE float32 operations the reference decoder applies, so the bits are the same:

- **4-bit elements** (MXFP4, NVFP4): for every scale code ``c`` that occurs, a row of 256 pairs
  ``(value[b & 15] · f_c, value[b >> 4] · f_c)``, one per byte ``b``, with ``f_c = factors[c]``
  (NVFP4: ``g · factors[c]``, the tensor scale ``g`` times the block scale, as
  ``ScaledBlockFormat._block_factors`` forms it). A byte of two codes is then one 8-byte lookup.
  Rows are made per call, for the codes the weight uses, in a table local to the call (512 KB,
  of which a weight touches 2 KB per distinct scale code): nothing derived from a tensor scale
  outlives the call, so a tensor scale edited in place is read, and threads share nothing.
- **8-bit elements** (MXFP8, MXINT8): the shared 256 x 256 product table of
  `lowbit.storage.decode` (``factors[c] · value[e]``), one lookup per element.
- **8-bit codes times a scale per row or per tensor** (int8 per channel): per row, the 256 values
  times the row's scale (256 multiplies), then one lookup per code.

Indices are unsigned and loops run from 0: numba then skips its negative-index wraparound, which
otherwise costs 1.2-1.4x on these lookup loops (measured on MXFP8 384x1536: 198 -> 144 us).

Called from `lowbit.storage._decode_numba`, whose numba cache does not notice edits of this file:
after editing it, delete ``lowbit/storage/__pycache__/_decode_numba*.nb*``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

__all__ = ["block_rows_apply", "decode_block_rows", "decode_scaled_rows", "scaled_rows_apply"]

#: the least codes per scale of `decode_scaled_rows`: below it, making a row's table (256
#: multiplies) costs more than multiplying the row's codes
MIN_SCALED_ROW = 256


@njit(cache=True, nogil=True, inline="always")
def block_rows_apply(bits, k, length, n, products):  # type: ignore[no-untyped-def]
    """Whether `decode_block_rows` decodes these codes: 4-bit elements, or 8-bit ones with a
    product table; rows of ``length`` codes, longer than a block (``k``), each row and block
    starting on a byte."""
    if n == 0 or length <= k or n % length != 0:
        return False
    if bits == 8:
        return products.size > 0
    return bits == 4 and length % 2 == 0 and k % 2 == 0


@njit(cache=True, nogil=True, inline="always")
def _all_valid(valid):  # type: ignore[no-untyped-def]
    for c in range(valid.size):
        if not valid[c]:
            return False
    return True


@njit(cache=True, nogil=True)
def decode_block_rows(data, bits, table, blocks, length, n, out, out2):  # type: ignore[no-untyped-def]
    """Blocks along rows of ``length`` codes (`block_rows_apply`): ``out`` (int32 view of the
    float32 output; for 4-bit codes ``out2``, its int64 pairs) gets ``value[code] · f`` of each
    block's factor ``f``; ``blocks`` as `decode_blocks_into` reads it. Returns True, writing nothing, when a
    used scale code is not ``valid`` or the tensor scale is not finite and positive."""
    codes, factors, valid, tensor_scale, k, products = blocks
    scaled = tensor_scale.size > 0
    g = tensor_scale[0] if scaled else np.float32(1.0)
    if scaled and not (np.isfinite(g) and g > 0):
        return True
    nb = (length + k - 1) // k
    rows = n // length
    if bits == 8:
        if not _all_valid(valid):  # (the usual E8M0 scales: every code is, and no pass over the codes)
            for c in codes:
                if not valid[c]:
                    return True
        i = uint64(0)
        if k == 32 and length % 32 == 0:  # whole MX blocks: a fixed trip count the compiler unrolls
            for b in range(n // 32):
                base = uint64(codes[b]) << uint64(8)
                for t in range(32):
                    out[i + uint64(t)] = products[base + uint64(data[i + uint64(t)])]
                i += uint64(32)
            return False
        for r in range(rows):
            for j in range(nb):
                base = uint64(codes[r * nb + j]) << uint64(8)
                for t in range(min(k, length - j * k)):
                    out[i] = products[base + uint64(data[i])]
                    i += uint64(1)
        return False
    # 4 bits: the pair rows of the scale codes used, made once each
    values = table.view(np.float32)
    pairs = np.empty(256 * 512, np.float32)
    made = np.zeros(256, np.uint8)
    for c in codes:
        if made[c]:
            continue
        if not valid[c]:
            return True
        f = factors[c]
        if scaled:
            f = g * f
        row = pairs[uint64(c) * uint64(512):]
        for b in range(256):
            row[2 * b] = values[b & 15] * f
            row[2 * b + 1] = values[b >> 4] * f
        made[c] = 1
    wide = pairs.view(np.int64)
    i = uint64(0)  # byte index = pair index
    for r in range(rows):
        for j in range(nb):
            base = uint64(codes[r * nb + j]) << uint64(8)
            for t in range(min(k, length - j * k) // 2):
                out2[i] = wide[base + uint64(data[i])]
                i += uint64(1)
    return False


@njit(cache=True, nogil=True, inline="always")
def scaled_rows_apply(bits, row, n):  # type: ignore[no-untyped-def]
    """Whether `decode_scaled_rows` decodes these codes: 8 bits, whole rows of at least
    `MIN_SCALED_ROW` codes."""
    return bits == 8 and row >= MIN_SCALED_ROW and n % row == 0


@njit(cache=True, nogil=True)
def decode_scaled_rows(data, table, scale, row, n, out):  # type: ignore[no-untyped-def]
    """8-bit codes times a float32 scale per ``row`` codes (`scaled_rows_apply`): ``out[i] =
    value[code i] · scale[i // row]`` in float32 (``out``: int32 view of the float32 output),
    through a table of the 256 values times the row's scale, made per row."""
    values = table.view(np.float32)
    scaled = np.empty(256, np.float32)
    lookup = scaled.view(np.int32)
    i = uint64(0)
    for r in range(n // row):
        s = np.float32(scale[r])
        for c in range(256):
            scaled[c] = values[c] * s
        for t in range(row):
            out[i] = lookup[uint64(data[i])]
            i += uint64(1)
