"""Prepared decode calls of packed layers: one numba call with one argument per forward.

A packed layer's staging plan (`lowbit.storage.decode._StagedPlan`, and each tile of
`lowbit.storage.tiled`) calls a decode kernel of `lowbit.storage._decode_numba` with the same
eleven arguments on every forward: numpy views of the codes, the tables, the side parameters and
the staging buffer. numba's dispatcher then types every argument, finds the compiled overload
and unboxes every array, each forward again, right after a convolution swept the caches: measured
on the EfficientNet-Lite0 stand-in (49 packed layers, one decode call each), 9.4 us per call for
MXFP8's 16 arguments (a tuple of 6 among them) against 2.3 us for an empty Python call, 400 us
per forward in all, as long as decoding its pointwise convs.

`addressed` turns such a call, for the float32 kernels ``decode_into``, ``decode_lines_into``
and ``decode_blocks_into`` with the argument types a float32 plan has, into a call of a twin
(`decode_into_at`, `decode_lines_at`, `decode_blocks_at`) with one int64 array: the address and length of each
array, then the integers. The twin makes the arrays again (``numba.carray``) and calls the same
kernel, compiled for the same types, so it writes the same bits. Measured there: MXFP8 3.2 ms
-> 2.8 ms of decode calls per forward, MXFP4 2.8 -> 2.5 ms.

The addresses are those of the plan's own numpy views, which the plan keeps (``held``): valid
for as long as the views are, which the plan's own checks already require (a replaced code
buffer, table or staging buffer makes a new plan).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lowbit.kernels.runtime import key_caches_on_kernel_sources

key_caches_on_kernel_sources()  # before the first @njit(cache=True) below

from lowbit.storage._decode_numba import decode_blocks_into, decode_into, decode_lines_into

__all__ = ["addressed", "decode_blocks_at", "decode_into_at", "decode_lines_at"]


@intrinsic
def _pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """The int64 ``address`` as a ``void *`` (for ``numba.carray``)."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(cache=True, nogil=True, inline="always")
def _array(a, i, dtype):  # type: ignore[no-untyped-def]
    # the C-contiguous 1-d array of a[i + 1] elements of dtype at address a[i]
    return carray(_pointer(a[i]), (a[i + 1],), dtype)


@njit(cache=True, nogil=True)
def decode_into_at(a):  # type: ignore[no-untyped-def]
    """``decode_into`` of a float32 plan from its `addressed` argument array: (address, length) of
    data (uint8), table (int32), wide (int64), scale (float32), out (int32), out2 (int64),
    outf (float32), then bits, use_wide, row, n. Returns False (``decode_into`` rejects nothing)."""
    decode_into(_array(a, 0, np.uint8), a[14], _array(a, 2, np.int32), _array(a, 4, np.int64), a[15] != 0,
                _array(a, 6, np.float32), a[16], a[17], _array(a, 8, np.int32), _array(a, 10, np.int64),
                _array(a, 12, np.float32))
    return False


@njit(cache=True, nogil=True)
def decode_lines_at(a):  # type: ignore[no-untyped-def]
    """``decode_lines_into`` (a float32 scale per group along a leading axis) from its `addressed`
    argument array: the arrays as `decode_into_at` reads them, then bits, use_wide, the
    geometry (A, g, inner), n. Returns False."""
    decode_lines_into(_array(a, 0, np.uint8), a[14], _array(a, 2, np.int32), _array(a, 4, np.int64), a[15] != 0,
                      _array(a, 6, np.float32), (a[16], a[17], a[18]), a[19], _array(a, 8, np.int32),
                      _array(a, 10, np.int64), _array(a, 12, np.float32))
    return False


@njit(cache=True, nogil=True)
def decode_blocks_at(a):  # type: ignore[no-untyped-def]
    """``decode_blocks_into`` from its `addressed` argument array: (address, length) of data
    (uint8), table (int32), wide (int64), the block side parameters — scale codes (uint8),
    factors (float32), valid (uint8), tensor scale (float32), products (int32) — out (int32),
    out2 (int64), outf (float32), then bits, use_wide, the block size, length, n. Returns what
    ``decode_blocks_into`` returns (True: scales it rejects, nothing written)."""
    blocks = (_array(a, 6, np.uint8), _array(a, 8, np.float32), _array(a, 10, np.uint8), _array(a, 12, np.float32),
              a[24], _array(a, 14, np.int32))
    return decode_blocks_into(_array(a, 0, np.uint8), a[22], _array(a, 2, np.int32), _array(a, 4, np.int64),
                              a[23] != 0, blocks, a[25], a[26], _array(a, 16, np.int32), _array(a, 18, np.int64),
                              _array(a, 20, np.float32))


def _is(x: Any, dtype: type) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == dtype and x.ndim == 1 and x.flags.c_contiguous


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _spans(arrays: "tuple[np.ndarray, ...]") -> "list[int]":
    out: "list[int]" = []
    for x in arrays:
        out += [x.ctypes.data, x.size]
    return out


def addressed(kernel: Callable[..., Any], args: "tuple[Any, ...]"
              ) -> "tuple[Callable[..., Any], tuple[Any, ...]] | None":
    """``(twin, (argument array,))`` calling ``kernel(*args)`` through one argument (see the module
    docstring), or None where ``kernel`` has no twin or ``args`` are not the types it takes (the
    caller then calls ``kernel`` itself). The caller must keep ``args`` alive with the twin call.

    >>> import numpy as np
    >>> from lowbit.storage._decode_numba import decode_into
    >>> data, table = np.array([0x21], np.uint8), np.array([0, 1, 2, 3], np.float32).view(np.int32)
    >>> out = np.zeros(2, np.float32)
    >>> args = (data, 4, table, np.zeros(1, np.int64), False, np.zeros(1, np.float32), 0, 2,
    ...         out.view(np.int32), out.view(np.int64), out)
    >>> twin, (a,) = addressed(decode_into, args)
    >>> twin(a), out.tolist()
    (False, [1.0, 2.0])
    """
    if len(args) != 11:
        return None
    data, bits, table, wide, use_wide, side, row, n, out, out2, outf = args
    common = _is(data, np.uint8) and _is(table, np.int32) and _is(wide, np.int64) and isinstance(use_wide, bool) \
        and _is(out, np.int32) and _is(out2, np.int64) and _is(outf, np.float32) and _is_int(bits) and _is_int(n)
    if not common:
        return None
    flags = [int(bits), int(use_wide)]
    if kernel is decode_into and _is(side, np.float32) and _is_int(row):
        spans = _spans((data, table, wide, side, out, out2, outf))
        return decode_into_at, (np.array(spans + flags + [int(row), int(n)], dtype=np.int64),)
    if kernel is decode_lines_into and _is(side, np.float32) and isinstance(row, tuple) and len(row) == 3 \
            and all(_is_int(r) for r in row):
        spans = _spans((data, table, wide, side, out, out2, outf))
        return decode_lines_at, (np.array(spans + flags + [int(r) for r in row] + [int(n)], dtype=np.int64),)
    if not _is_int(row):
        return None
    if kernel is decode_blocks_into and isinstance(side, tuple) and len(side) == 6:
        codes, factors, valid, tensor_scale, k, products = side
        if not (_is(codes, np.uint8) and _is(factors, np.float32) and _is(valid, np.uint8)
                and _is(tensor_scale, np.float32) and _is_int(k) and _is(products, np.int32)):
            return None
        spans = _spans((data, table, wide, codes, factors, valid, tensor_scale, products, out, out2, outf))
        return decode_blocks_at, (np.array(spans + flags + [int(k), int(row), int(n)], dtype=np.int64),)
    return None
