"""numba kernels for packed-weight decoding: unpack n-bit codes and look each one up, in one pass.

The optional fast path of `lowbit.storage.decode` (the torch reference there is
``unpack_bits`` + ``index_select``). The kernels read the ``lsb_first`` bit stream exactly as
`lowbit.storage._bitpack_numba.unpack_into` does and write ``table[code]`` straight into the
output, so no intermediate code tensor is made. Tables and outputs are given as integer views of
the float values (int16 for float16/bfloat16, int32 for float32, int64 for float64): the kernels
copy bit patterns, so every float dtype decodes bit for bit the same way.

Widths 1, 2, 4 and 6 also have *wide* tables (`wide_table`), built once per layer: every byte
(1, 2, 4 bits) or every 12-bit pair of codes (6 bits) maps to the values of all its codes at
once, stored as one integer of twice the value's width (int64 for float32). A 4-bit weight then
decodes with one lookup per byte instead of two shifts, masks and lookups per code.

Sequential on purpose, like the bit-packing kernels: decoding runs next to torch's own threads
in a forward pass, and a second parallel region there only fights them for the cores.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

from lowbit.storage._block_rows_numba import (
    _all_valid,
    block_rows_apply,
    decode_block_rows,
    decode_scaled_rows,
    scaled_rows_apply,
)

__all__ = ["WIDE_BITS", "lut_decode_into", "wide_decode_into", "decode_into", "decode_runs_into", "decode_grid_into",
           "decode_blocks_into",
           "decode_lines_into", "grid_geometry"]

#: Code widths with a wide table (see the module docstring).
WIDE_BITS = (1, 2, 4, 6)


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
def wide_decode_into(data, bits, wide, out2):  # type: ignore[no-untyped-def]
    """Decode whole chunks with a wide table; returns how many codes were written.

    ``out2``: the output viewed as pairs of values (one integer per two codes). Chunks: one byte
    (8 / bits codes) for 1, 2 and 4 bits, three bytes (four codes) for 6 bits. The caller decodes
    the remaining codes (fewer than a chunk) with `lut_decode_into`.
    """
    if bits == 6:
        groups = min(data.size // 3, out2.size // 2)
        for k in range(groups):
            p = 3 * k
            word = int(data[p]) | (int(data[p + 1]) << 8) | (int(data[p + 2]) << 16)
            out2[2 * k] = wide[word & 0xFFF]
            out2[2 * k + 1] = wide[word >> 12]
        return 4 * groups
    per = 4 // bits  # pairs per byte; one loop per width, so each compiles to straight-line code
    nbytes = min(data.size, out2.size // per)
    if bits == 4:
        for k in range(nbytes):
            out2[k] = wide[data[k]]
    elif bits == 2:
        for k in range(nbytes):
            b = 2 * int(data[k])
            out2[2 * k] = wide[b]
            out2[2 * k + 1] = wide[b + 1]
    else:
        for k in range(nbytes):
            b = 4 * int(data[k])
            out2[4 * k] = wide[b]
            out2[4 * k + 1] = wide[b + 1]
            out2[4 * k + 2] = wide[b + 2]
            out2[4 * k + 3] = wide[b + 3]
    return 2 * per * nbytes


@njit(cache=True, nogil=True, inline="always")
def _scale_segment(seg, s):  # type: ignore[no-untyped-def]
    # seg[j] * s in float32: one IEEE multiply rounded to nearest even, exactly as torch's float32
    # ``values * scale`` (no fast-math). A loop from 0 over a slice: with signed start/stop indices
    # numba checks every index for wraparound and LLVM does not vectorize the multiply (3x slower)
    for j in range(seg.size):
        seg[j] = seg[j] * s


#: Codes per chunk of a scaled decode: decoded, then scaled while still in L1/L2 (a multiple of
#: 8, so every chunk starts on a byte, and of 4, so 6-bit chunks start on a wide-table group).
SCALE_CHUNK = 4096


@njit(cache=True, nogil=True)
def _decode_range(data, bits, table, wide, use_wide, a, b, out, out2):  # type: ignore[no-untyped-def]
    """Codes ``a`` to ``b`` (``a`` a multiple of 8) into ``out[a:b]``, through the wide table where it can."""
    src = data[a * bits // 8:]
    m = b - a
    done = 0
    if use_wide and m >= 2:
        done = wide_decode_into(src, bits, wide, out2[a // 2: a // 2 + m // 2])
    if done < m:
        lut_decode_into(src[done * bits // 8:], bits, table, out[a + done:b])


@njit(cache=True, nogil=True)
def decode_into(data, bits, table, wide, use_wide, scale, row, n, out, out2, outf):  # type: ignore[no-untyped-def]
    """A layer's whole decode in one call: the first ``n`` entries of ``out`` (integer view),
    through the wide table where ``use_wide`` (``out2``: the same memory as pairs), the rest code
    by code; if row > 0, also ``outf[i] *= scale[i // row]`` (``outf``: the same memory as
    float32), chunk by chunk (`SCALE_CHUNK`) right after each chunk is decoded, so the scaling
    reads what is still in cache instead of sweeping the whole weight a second time."""
    if row <= 0:
        _decode_range(data, bits, table, wide, use_wide, 0, n, out, out2)
        return
    if scaled_rows_apply(bits, row, n):  # 8-bit rows: one lookup in the row's scaled table each
        decode_scaled_rows(data, table, scale, row, n, out)
        return
    for a in range(0, n, SCALE_CHUNK):
        b = min(n, a + SCALE_CHUNK)
        _decode_range(data, bits, table, wide, use_wide, a, b, out, out2)
        i = a
        r = a // row
        while i < b:  # the rows this chunk overlaps
            stop = min(b, (r + 1) * row)
            _scale_segment(outf[i:stop], np.float32(scale[r]))
            i = stop
            r += 1


@njit(cache=True, nogil=True, inline="always")
def _scale_by_line(seg, s):  # type: ignore[no-untyped-def]
    # seg[j] * s[j] in float32, one IEEE multiply each (as torch's ``values * scale``); a loop from
    # 0 over slices, as in `_scale_segment`, so LLVM vectorizes it
    for j in range(seg.size):
        seg[j] = seg[j] * s[j]


@njit(cache=True, nogil=True)
def decode_lines_into(data, bits, table, wide, use_wide, scale, geometry, n, out, out2, outf):  # type: ignore[no-untyped-def]
    """Codes times a float32 scale per group along a leading axis (groups of ``g`` indices of an
    axis of length ``A`` with ``inner`` elements after it; ``geometry = (A, g, inner)``):
    element (o, a, j) of the weight viewed as (outer, A, inner) is multiplied by
    ``scale[(o * (A // g) + a // g) * inner + j]``, the group scale laid out as the weight with
    ``A`` replaced by ``A // g``. Same signature as `decode_into`; each chunk of `SCALE_CHUNK`
    codes is decoded, then every line of ``inner`` codes in it is multiplied elementwise by its
    scale line while still in cache (one float32 multiply per element, as ``values * scale``)."""
    a_len, g, inner = geometry
    groups = a_len // g
    for a in range(0, n, SCALE_CHUNK):
        b = min(n, a + SCALE_CHUNK)
        _decode_range(data, bits, table, wide, use_wide, a, b, out, out2)
        i = a
        while i < b:  # the lines this chunk overlaps
            line = i // inner
            j = i - line * inner
            stop = min(b, (line + 1) * inner)
            s0 = ((line // a_len) * groups + (line % a_len) // g) * inner + j
            _scale_by_line(outf[i:stop], scale[s0:s0 + (stop - i)])
            i = stop


@njit(cache=True, nogil=True)
def decode_runs_into(data, bits, tables, wide, use_wide, scale, row, n, out, out2, outf):  # type: ignore[no-untyped-def]
    """Codes with one table per run of ``row`` codes (levels fitted per channel or group):
    ``out[i] = tables[(i // row) * 2**bits + code i]`` (integer views of the values). Same
    signature as `decode_into` (``wide``, ``scale``, ``out2`` and ``outf`` are not read); bits <= 8."""
    size = 1 << bits
    runs = (n + row - 1) // row
    if bits == 4 and row % 2 == 0:  # every run starts on a byte: two codes per byte, fixed shifts
        for r in range(runs):
            seg = out[r * row: min(n, r * row + row)]
            table = tables[r * size: r * size + size]
            src = data[r * row // 2: (r * row + seg.size) // 2]  # n is a whole number of runs: seg.size is even
            for j in range(seg.size // 2):
                b = src[j]
                seg[2 * j] = table[b & 15]
                seg[2 * j + 1] = table[b >> 4]
        return
    mask = uint64(size - 1)
    acc = uint64(0)
    fill = 0
    p = 0
    for r in range(runs):  # one bit stream across the runs (they may start mid-byte)
        seg = out[r * row: min(n, r * row + row)]
        table = tables[r * size: r * size + size]
        if bits == 8:
            src = data[r * row: r * row + seg.size]
            for j in range(seg.size):
                seg[j] = table[src[j]]
            continue
        # the bit reader of `lut_decode_into`, written out again on purpose: with one shared inline
        # helper, decoding every codebook4-per-channel weight of EfficientNet-Lite0 took 1.25 ms
        # (while-loop refill) or 3.75 ms (two-if refill) instead of 1.1 ms (measured)
        for j in range(seg.size):
            if fill < bits:  # bits <= 8: one byte always suffices
                acc |= uint64(data[p]) << uint64(fill)
                p += 1
                fill += 8
            seg[j] = table[acc & mask]
            acc >>= uint64(bits)
            fill -= bits


def grid_geometry(shape: "tuple[int, ...]", grid: "tuple[int, ...]", bits: int) -> np.ndarray:
    """What `decode_grid_into` reads for codes of ``shape`` with one table per granule of ``grid``
    (see `lowbit.formats.granules`): ``[ndim, *shape]``, then for every axis d and index j along it
    the offset ``(j // block_d) * grid_stride_d * 2**bits`` of that index's share of the table
    index (granules row-major over ``grid``; a granule's table is 2**bits entries).

    >>> grid_geometry((2, 3), (1, 3), 2).tolist()  # per column: 3 tables of 4 entries
    [2, 2, 3, 0, 0, 0, 4, 8]
    """
    shape, grid = _collapse(shape, grid)
    nd = len(shape)
    strides = [1] * nd
    for d in range(nd - 2, -1, -1):
        strides[d] = strides[d + 1] * grid[d + 1]
    parts = [np.array([nd, *shape], dtype=np.int64)]
    for d in range(nd):
        block = shape[d] // grid[d]
        parts.append((np.arange(shape[d], dtype=np.int64) // block) * (strides[d] << bits))
    return np.concatenate(parts)


def _collapse(shape: "tuple[int, ...]", grid: "tuple[int, ...]") -> "tuple[tuple[int, ...], tuple[int, ...]]":
    """The same granules over fewer, longer axes: size-1 axes dropped, neighbours merged where both
    are whole (one granule along each) or both per index (one granule per index of each), so the
    kernel's lines are as long as they can be (a 1x1 conv per input channel: one line per output
    channel, not one per weight).

    >>> _collapse((8, 16, 1, 1), (1, 16, 1, 1)), _collapse((8, 16, 3, 3), (1, 16, 1, 1))
    (((8, 16), (1, 16)), ((8, 16, 9), (1, 16, 1)))
    """
    axes = [(n, g) for n, g in zip(shape, grid) if n != 1] or [(1, 1)]
    out = [axes[0]]
    for n, g in axes[1:]:
        n0, g0 = out[-1]
        if (g0 == 1 and g == 1) or (g0 == n0 and g == n):
            out[-1] = (n0 * n, g0 * g)
        else:
            out.append((n, g))
    return tuple(n for n, _ in out), tuple(g for _, g in out)


@njit(cache=True, nogil=True)
def decode_grid_into(data, bits, tables, geom, use_wide, scale, row, n, out, out2, outf):  # type: ignore[no-untyped-def]
    """Codes with one table per granule of any grid (levels fitted per channel or group, also
    where a granule's codes are strided: a channel axis other than 0, groups along a leading
    axis): ``out[i] = tables[sum_d geom_d[index_d(i)] + code i]``, ``geom`` from `grid_geometry`.
    Same signature as `decode_into`, with the geometry in the place of the wide table (``scale``,
    ``row``, ``out2`` and ``outf`` are not read); bits <= 8."""
    nd = geom[0]
    last = geom[nd]
    start = np.empty(nd, np.int64)  # where each axis's offsets begin in geom
    o = 1 + nd
    for d in range(nd):
        start[d] = o
        o += geom[1 + d]
    tail = geom[start[nd - 1]: start[nd - 1] + last]
    index = np.zeros(nd, np.int64)  # the leading axes' indices of the current line
    mask = uint64((1 << bits) - 1)
    acc = uint64(0)
    fill = 0
    p = 0
    i = 0
    while i < n:
        base = 0
        for d in range(nd - 1):
            base += geom[start[d] + index[d]]
        line = out[i: i + last]
        if bits == 4 and last % 2 == 0:  # every line starts on a byte: two codes per byte, fixed shifts
            src = data[i // 2: (i + last) // 2]
            for j in range(last // 2):
                b = np.int64(src[j])
                line[2 * j] = tables[base + tail[2 * j] + (b & 15)]
                line[2 * j + 1] = tables[base + tail[2 * j + 1] + (b >> 4)]
        elif bits == 8:
            src = data[i: i + last]
            for k in range(last):
                line[k] = tables[base + tail[k] + src[k]]
        else:
            # the bit reader of `lut_decode_into` again (see `decode_runs_into` for why it is not shared)
            for k in range(last):
                if fill < bits:  # bits <= 8: one byte always suffices
                    acc |= uint64(data[p]) << uint64(fill)
                    p += 1
                    fill += 8
                line[k] = tables[base + tail[k] + np.int64(acc & mask)]
                acc >>= uint64(bits)
                fill -= bits
        i += last
        d = nd - 2
        while d >= 0:  # next line: an odometer over the leading axes
            index[d] += 1
            if index[d] < geom[1 + d]:
                break
            index[d] = 0
            d -= 1


@njit(cache=True, nogil=True, inline="always")
def _lookup_products(src, products, base, seg):  # type: ignore[no-untyped-def]
    # seg[j] = products[base + code j] (integer views: the bits of a product made once in float32)
    for j in range(seg.size):
        seg[j] = products[base + src[j]]


@njit(cache=True, nogil=True)
def decode_blocks_into(data, bits, table, wide, use_wide, blocks, length, n, out, out2, outf):  # type: ignore[no-untyped-def]
    """A block format's whole decode (blocks along the last axis) in one call, float32 only:
    ``outf[i] = table[code i] · f`` with ``f = factors[c]`` (times ``tensor_scale[0]`` when it has
    one entry) for the block's scale code ``c``, rows of ``length`` codes, blocks of ``k`` along
    each row (the last one shorter). ``blocks`` = (scale codes uint8, factors float32[256],
    valid uint8[256], tensor_scale float32[0 or 1], k, products float32[256 * 256] or empty: for 8-bit
    elements without a tensor scale, ``products[c * 256 + e] = factors[c] · table[e]``). Rows that start on a byte (and on a
    wide-table chunk) decode row by row, as `decode_into` does, and each block is then scaled while
    still in cache: one float32 multiply per element, as ``values * factor`` in torch; other shapes
    decode in chunks of `SCALE_CHUNK` codes; rows of one code (a block per element) go through
    `_decode_element_blocks`, rows no longer than a block (a kxk conv weight's) through
    `_decode_short_rows`. Returns True, writing nothing, when a scale code is
    not ``valid`` or the tensor scale is not finite and positive (the caller then runs the
    reference decoder, which says why)."""
    codes, factors, valid, tensor_scale, k, products = blocks
    if block_rows_apply(bits, k, length, n, products) and (use_wide or bits == 8):  # Linear weights: rows of blocks
        return decode_block_rows(data, bits, table, blocks, length, n, out, out2)
    if not _all_valid(valid):  # (the usual E8M0 and E4M3 scales: every code is, and no pass over the codes)
        for c in codes:
            if not valid[c]:
                return True
    scaled = tensor_scale.size > 0
    g = tensor_scale[0] if scaled else np.float32(1.0)
    if scaled and not (np.isfinite(g) and g > 0):
        return True
    if length == 1:  # a block per element (a 1x1 conv weight's last axis): no rows to walk
        _decode_element_blocks(data, bits, table, wide, use_wide, codes, factors, g, scaled, n, out, out2, outf)
        return False
    nb = (length + k - 1) // k
    if nb == 1 and 2 * length <= SCALE_CHUNK and ((bits == 4 and use_wide) or bits == 8) and n % length == 0:
        # rows no longer than a block (the last axis of a kxk conv weight, its _r rows of a
        # depthwise conv): `_decode_short_rows`
        _decode_short_rows(data, bits, table, wide, codes, factors, g, scaled, length, n, out, out2, outf)
        return False
    if products.size and bits == 8 and n % length == 0:
        # 8-bit elements: the products of every element value with every factor, made once per
        # format (`lowbit.storage.decode`), so each element is one lookup in its block's row of
        # 256 products (the rows of the scales a layer uses stay in L1); 2.6x faster than a
        # lookup pass and a scaling pass (measured on MXFP8 384x384)
        for r in range(n // length):
            row = out[r * length: (r + 1) * length]
            src = data[r * length: (r + 1) * length]
            for j in range(nb):
                _lookup_products(src[j * k: min((j + 1) * k, length)], products, int(codes[r * nb + j]) << 8,
                                 row[j * k: min((j + 1) * k, length)])
        return False
    if length % 4 == 0 and (length * bits) % 8 == 0:  # every row starts on a byte and a wide chunk
        for r in range(n // length):
            lo = r * length
            if use_wide and bits == 4:  # the common case (MX / NV FP4) written out: 1.5x faster
                src = data[lo // 2: (lo + length) // 2]
                dst = out2[lo // 2: (lo + length) // 2]
                for t in range(src.size):
                    dst[t] = wide[src[t]]
            else:
                _decode_range(data, bits, table, wide, use_wide, lo, lo + length, out, out2)
            row = outf[lo: lo + length]
            for j in range(nb):
                f = factors[codes[r * nb + j]]
                if scaled:
                    f = g * f
                _scale_segment(row[j * k: min((j + 1) * k, length)], f)
        return False
    for a in range(0, n, SCALE_CHUNK):
        b = min(n, a + SCALE_CHUNK)
        _decode_range(data, bits, table, wide, use_wide, a, b, out, out2)
        i = a
        r = a // length  # the row and block of code a, then stepped along without dividing: rows
        j = (a - r * length) // k  # shorter than a block (a 1x1 conv's) are one code each
        while i < b:  # the blocks this chunk overlaps
            end = r * length + min((j + 1) * k, length)
            stop = min(b, end)
            f = factors[codes[r * nb + j]]
            if scaled:
                f = g * f
            if stop - i >= 16:
                _scale_segment(outf[i:stop], f)
            else:
                for t in range(i, stop):
                    outf[t] = outf[t] * f
            i = stop
            if stop == end:
                j += 1
                if j == nb:
                    j = 0
                    r += 1
    return False


@njit(cache=True, nogil=True)
def _decode_short_rows(data, bits, table, wide, codes, factors, g, scaled, length, n,  # type: ignore[no-untyped-def]
                       out, out2, outf):
    """Block-format codes in rows of ``length`` codes no longer than a block, one scale code per
    row (a bare block spec on a kxk conv weight: rows of the kernel width; a depthwise conv's
    ``_r`` rows of k·k): ``outf[i] = table[code i] · f`` with ``f = factors[codes[i // length]]``
    (``g · factors[...]`` when ``scaled``), the float32 operations of `decode_blocks_into`. 4-bit
    codes need the wide table (``out2``: the output as pairs); 8-bit codes are looked up one by one.
    Rows of at most ``SCALE_CHUNK // 2`` codes.

    Chunk by chunk of an even number of whole rows (about `SCALE_CHUNK` codes, so every chunk
    starts on a byte): the element values are decoded as a plain table decode is, the chunk's
    factors are written out once per element into a local array, and the chunk is multiplied by
    it in one loop LLVM vectorizes. Measured (hot, `benchmarks/bench_block_conv_decode.py`'s
    depthwise 1152 5x5): MXFP4 / NVFP4 32 -> 14 us, MXFP8 26 -> 17 us, against one pass that
    looked each code up and multiplied it by its row's factor."""
    scaled_factors = np.empty(256, np.float32)  # g · factors[c], as decode_blocks_into forms f
    for c in range(256):
        scaled_factors[c] = g * factors[c] if scaled else factors[c]
    # (2 * length <= SCALE_CHUNK, so at least 2; bounding it here with max() made LLVM give up
    # on the loops below: 1.4x slower, measured)
    rows_per = SCALE_CHUNK // (2 * length) * 2
    expanded = np.empty(rows_per * length, np.float32)
    rows = n // length
    for r0 in range(0, rows, rows_per):
        r1 = min(rows, r0 + rows_per)
        a = r0 * length  # even: r0 is
        b = r1 * length
        if bits == 4:
            src = data[a // 2: (b + 1) // 2]
            dst = out2[a // 2: b // 2]
            for t in range(uint64(dst.size)):
                dst[t] = wide[uint64(src[t])]
            if (b - a) % 2:  # an odd count: the last code, in the low half of its byte
                out[b - 1] = table[data[(b - 1) // 2] & 15]
        else:
            src = data[a:b]
            seg = out[a:b]
            for t in range(uint64(seg.size)):
                seg[t] = table[uint64(src[t])]
        j = 0
        for r in range(r0, r1):
            f = scaled_factors[codes[r]]
            for t in range(length):
                expanded[j + t] = f
            j += length
        _scale_by_line(outf[a:b], expanded)


@njit(cache=True, nogil=True, inline="always")
def _is_pow2_scale(factors):  # type: ignore[no-untyped-def]
    # whether factors[c] is 2^(c - 127) for every code 1..254 (E8M0 scales: MX, ``*_scale_e8m0fnu``),
    # its float32 bits ``c << 23``; codes 0 and 255 (2^-127, NaN) are read from the table itself
    bits = factors.view(np.uint32)
    for c in range(1, 255):
        if bits[c] != np.uint32(c) << np.uint32(23):
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _pow2_factor(code, tiny, nan):  # type: ignore[no-untyped-def]
    # 2^(code - 127) in float32, from its bits (code << 23), branch-free; codes 0 and 255 are the
    # table's ``tiny`` and ``nan`` bits
    c = np.uint32(code)
    x = c << np.uint32(23)
    x = tiny if c == 0 else x
    x = nan if c == 255 else x
    return np.uint32(x).view(np.float32)


@njit(cache=True, nogil=True)
def _decode_element_blocks(data, bits, table, wide, use_wide, codes, factors, g, scaled, n,  # type: ignore[no-untyped-def]
                           out, out2, outf):
    """Block-format codes with one scale code per element (rows of length 1, as a bare block spec
    gives a 1x1 conv weight): ``outf[i] = table[code i] · f`` with ``f = factors[codes[i]]``
    (``g · factors[codes[i]]`` when ``scaled``), the float32 operations of `decode_blocks_into`.

    Chunk by chunk (`SCALE_CHUNK`): the element values are decoded as a plain table decode is
    (4-bit: one wide lookup per byte), then every element is multiplied by its own factor while
    the chunk is still in cache. E8M0 factors (`_is_pow2_scale`) are formed from the scale code's
    bits (`_pow2_factor`), a loop LLVM vectorizes; other scales read a table of the 256 factors
    (times ``g``), or, for 4-bit elements, go through `_decode_element_products`. Measured on a
    1152 -> 192 1x1 conv (`benchmarks/bench_block_conv_decode.py`): 458 us row by row before,
    53 us so (MXFP4; NVFP4 82 us, MXFP8 80 us); its ``_r`` layout (a scale per 32 elements)
    decodes in 32 us."""
    pow2 = _is_pow2_scale(factors) and not scaled
    scaled_factors = np.empty(256, np.float32)  # g · factors[c], as decode_blocks_into forms f
    for c in range(256):
        scaled_factors[c] = g * factors[c] if scaled else factors[c]
    if bits == 4 and not pow2:
        _decode_element_products(data, table, scaled_factors, codes, n, outf)
        return
    fbits = factors.view(np.uint32)
    tiny = fbits[0]
    nan = fbits[255]
    for a in range(0, n, SCALE_CHUNK):
        b = min(n, a + SCALE_CHUNK)
        if use_wide and bits == 4:  # the common case (MX / NV FP4) written out, as in decode_blocks_into
            src = data[a // 2: b // 2]
            dst = out2[a // 2: b // 2]
            for t in range(src.size):
                dst[t] = wide[src[t]]
            if (b - a) % 2:  # an odd count: the last code, in the low half of its byte
                out[b - 1] = table[data[(b - 1) // 2] & 15]
        elif bits == 8:  # unsigned indices: no wraparound checks (MXFP8 1152x192 1x1: 78 -> 72 us)
            src = data[a:b]
            seg8 = out[a:b]
            for t in range(uint64(seg8.size)):
                seg8[t] = table[uint64(src[t])]
        else:
            _decode_range(data, bits, table, wide, use_wide, a, b, out, out2)
        cs = codes[a:b]
        seg = outf[a:b]
        if pow2:
            for t in range(cs.size):
                seg[t] = seg[t] * _pow2_factor(cs[t], tiny, nan)
        else:
            for t in range(cs.size):
                seg[t] = seg[t] * scaled_factors[cs[t]]


@njit(cache=True, nogil=True)
def _decode_element_products(data, table, factors, codes, n, outf):  # type: ignore[no-untyped-def]
    """4-bit codes with one scale code per element, scales that are not E8M0 (NVFP4's E4M3
    times its tensor scale): ``outf[i] = table[code i] · factors[codes[i]]`` through a table of
    the 16 x 256 products made here (``factors`` already times the tensor scale), one lookup per
    element (measured: 83 us on a 1152 -> 192 1x1 conv, against 107 us decoding then scaling)."""
    values = table.view(np.float32)
    products = np.empty(256 * 16, np.float32)
    for c in range(256):
        for e in range(16):
            products[c * 16 + e] = values[e] * factors[c]
    for j in range(uint64(n // 2)):
        byte = uint64(data[j])
        outf[j + j] = products[(uint64(codes[j + j]) << uint64(4)) | (byte & uint64(15))]
        outf[j + j + uint64(1)] = products[(uint64(codes[j + j + uint64(1)]) << uint64(4)) | (byte >> uint64(4))]
    if n % 2:  # an odd count: the last code, in the low half of its byte
        outf[n - 1] = products[(uint64(codes[n - 1]) << uint64(4)) | (uint64(data[n // 2]) & uint64(15))]
