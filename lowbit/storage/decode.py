"""The decode engine of packed layers: packed codes -> a float weight, as fast as the format allows.

What `lowbit.storage.packed_layers` calls on every forward (see its docstring for the semantics):

- **tables**: `_code_table` (every code's value in the compute dtype), `_granule_tables` (one
  table per channel / group of a fitted format), `_wide_table` (the values of every byte's codes,
  as pairs, for the numba kernels);
- **decoders**: `_lut_decode` (unpack + look up; numba or torch), `_granule_decode`,
  `_decode_block` / `_block_products` (MX and scaled block formats: element value times the
  block's factor), `_scaled` (a float32 tensor / channel / group scale);
- **staging**: without autograd a CPU forward decodes into this thread's reusable buffer
  (`_staging`, `staging_nbytes`), through a prepared kernel call per layer (`_StagedPlan`).

The torch paths run on any device; numba (`lowbit.storage._decode_numba`,
`lowbit.kernels.blocks_numba`) is the CPU fast path and gives the same bits.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lowbit.formats._float64 import round_float64_to
from lowbit.formats.base import MAX_TABLE_BITS, EncodedTensor, NumberFormat, ScalarFormat
from lowbit.formats.block import BlockFormat
from lowbit.formats.granules import from_granule_rows, to_granule_rows
from lowbit.formats.learned import LearnedFormat
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.storage.bitpack import unpack_bits
from lowbit.storage.packed import PackedTensor, _value_table, multiply_by_scale

if TYPE_CHECKING:
    from lowbit.storage.packed_layers import PackedLayerMixin

__all__ = ["staging_nbytes"]

#: names of a packed layer's buffers: the codes, the float32 scale, and each side parameter's prefix
_DATA = "weight_packed"
_SCALE = "weight_scale"
_PARAM = "weight_param_"


def _tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_decodable(packed: PackedTensor) -> None:
    """Reject codes the format does not use (ternary's 2), which a table would decode silently."""
    fmt = packed.format
    if isinstance(fmt, LearnedFormat):
        codes = packed.codes().reshape(-1).to(torch.int64)
        bad = fmt._unused(codes)
        if bool(bad.any()):
            raise ValueError(f"codes of {fmt} must be in {fmt._code_note()}; got {int(codes[bad][0])}")


def _code_table(fmt: NumberFormat, params: Mapping[str, torch.Tensor], dtype: torch.dtype) -> "torch.Tensor | None":
    """Every code's value in ``dtype`` (NaN for unused codes), or None for formats without a table."""
    if isinstance(fmt, ScalarFormat):
        return _value_table(fmt, dtype) if fmt.bits <= MAX_TABLE_BITS else None
    if isinstance(fmt, ScaledBlockFormat):  # element values (float32-exact); products are float32
        return _value_table(fmt.element, torch.float32) if fmt.element.bits <= MAX_TABLE_BITS else None
    if isinstance(fmt, BlockFormat):
        element = fmt.element_format
        if element.bits > MAX_TABLE_BITS:
            return None
        # element values, exact in both; float32 products are formed only for a float32 result
        return _value_table(element, torch.float32 if dtype == torch.float32 else torch.float64)
    if isinstance(fmt, LearnedFormat):
        if fmt.per_channel(params):
            return None  # levels fitted per channel: one table per channel, decoded by the reference path
        codes = torch.arange(1 << fmt.bits)
        valid = codes[~fmt._unused(codes)]
        table = torch.full((1 << fmt.bits,), float("nan"), dtype=dtype)
        levels = fmt.decode_tensor(EncodedTensor(fmt, valid.to(torch.uint8), dict(params)), dtype)
        table[valid] = levels
        return table
    return None


_STAGING = threading.local()


def _staging_views(
    n: int, dtype: torch.dtype, pair: "torch.dtype | None"
) -> "tuple[torch.Tensor, tuple[Any, Any, Any]]":
    """This thread's staging buffer for ``dtype`` (at least ``n`` elements) and its numpy views."""
    views = getattr(_STAGING, "views", None)
    if views is None:
        views = _STAGING.views = {}
    key = (dtype, pair)
    cached = views.get(key)
    full = _staging(n, dtype, whole=True)
    if cached is None or cached[0] is not full:
        cached = views[key] = (full, _out_views(full, pair))
    return full, cached[1]


def _staging(n: int, dtype: torch.dtype, whole: bool = False) -> torch.Tensor:
    """This thread's staging buffer for ``dtype``, first ``n`` elements (it grows to the largest
    layer decoded through it, and stays: one layer's decoded weight per thread and dtype)."""
    bufs = getattr(_STAGING, "bufs", None)
    if bufs is None:
        bufs = _STAGING.bufs = {}
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):
            buf = bufs[dtype] = torch.empty(n, dtype=dtype)
    return buf if whole else buf[:n]


def staging_nbytes() -> int:
    """Bytes held by this thread's staging buffers (see `PackedLayerMixin._lowbit_weight`)."""
    return sum(_tensor_nbytes(b) for b in getattr(_STAGING, "bufs", {}).values())


class _Lut(NamedTuple):
    """A decoding table: every code's value, the wide table of `_decode_numba` (or None), and
    the prepared arguments of its one-call decoder (`_fast_args`, or None)."""

    values: torch.Tensor
    wide: "torch.Tensor | None"
    fast: "tuple[Any, ...] | None"
    #: 0: one table for every code, or granules that are not contiguous runs; r > 0: the granules
    #: (below) are contiguous runs of r codes each
    run: int = 0
    #: None: one table for every code; else the granule grid of a format fitted per channel /
    #: group, and ``values`` holds one table per granule, (granules, 2**bits), row-major over it
    grid: "tuple[int, ...] | None" = None


_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _fast_args(layer: "PackedLayerMixin", lut: _Lut, bits: int, dtype: torch.dtype) -> "tuple[Any, ...] | None":
    """numpy views (made once) of what `_decode_numba.decode_into` reads, for a scalar or fitted
    format on the CPU with the numba backend, decoded into ``dtype`` (block formats:
    `_fast_block_args`); None otherwise (other scales)."""
    from lowbit.kernels import resolve_backend

    fmt = layer._packed_format
    data = layer._buffers[_DATA]
    if data.device.type != "cpu" or resolve_backend(None, "cpu") != "numba":
        return None
    if isinstance(fmt, (BlockFormat, ScaledBlockFormat)):
        return _fast_block_args(layer, lut, bits) if dtype == torch.float32 else None
    shape = layer._packed_shape
    scale = layer._buffers.get(_SCALE)
    row: "int | tuple[int, int, int]" = 0
    kernel = _numba().decode_into
    if scale is not None:
        if lut.values.dtype != torch.float32 or scale.dtype != torch.float32:
            return None
        n = shape.numel()
        group = _group_geometry(shape, scale, layer._packed_axis, layer._packed_group_size)
        per_row = len(shape) > 0 and scale.dim() == len(shape) and scale.shape[0] == shape[0] \
            and all(d == 1 for d in scale.shape[1:])
        if group is not None:  # one scale per group: runs of g codes, or lines of a leading axis's groups
            row = group[1] if group[2] == 1 else group
            if group[2] != 1:
                kernel = _numba().decode_lines_into
        elif scale.numel() == 1 or per_row:
            row = max(1, n if scale.numel() == 1 else n // max(shape[0], 1))
        else:
            return None
        scale_np = scale.reshape(-1).contiguous().numpy()
    else:
        scale_np = np.zeros(1, dtype=np.float32)
    wide = lut.wide if lut.wide is not None else torch.zeros(1, dtype=_PAIR.get(lut.values.element_size(), torch.int64))
    table = lut.values.contiguous().view(_VIEW[lut.values.element_size()])
    return (kernel, data.contiguous().numpy(), bits, table.numpy(), wide.numpy(), lut.wide is not None, scale_np, row)


def _group_geometry(shape: torch.Size, scale: torch.Tensor, axis: "int | None", group_size: "int | None"
                    ) -> "tuple[int, int, int] | None":
    """``(A, g, inner)`` of a per-group scale (groups of ``g`` along an axis of length ``A``, with
    ``inner`` elements after that axis), laid out as the weight with ``A`` replaced by ``A // g``;
    None for other scales."""
    if group_size is None or axis is None or not len(shape) or not 0 <= axis < len(shape):
        return None
    a_len = shape[axis]
    if group_size <= 0 or a_len % group_size or scale.numel() * group_size != shape.numel() or not a_len:
        return None
    return a_len, int(group_size), math.prod(shape[axis + 1:])


def _fast_block_args(layer: "PackedLayerMixin", lut: _Lut, bits: int) -> "tuple[Any, ...] | None":
    """`_fast_args` of a block format: `_decode_numba.decode_blocks_into` reads the scale codes
    themselves (uint8, one per block) through a 256-entry factor table made here once, so no
    per-block factor tensor is held or rebuilt per forward. The kernel writes float32 only, so
    `_fast_args` sends only float32 layers here (a scaled block format's element table is float32
    for every compute dtype). None where `_decode_block` decides (float32 tables only, blocks
    along rows that are a reshape of the codes — the last axis, or a conv weight's output-channel
    rows — E8M0 codes as stored by `lowbit.save`)."""
    fmt = layer._packed_format
    shape = layer._packed_shape
    row = _view_row_length(fmt, shape)
    if lut.values.dtype != torch.float32 or bits > 8 or _SCALE in layer._buffers or not len(shape) or row is None:
        return None
    stored = {p: layer._buffers[_PARAM + p] for p in layer._packed_params}
    codes_all = torch.arange(256, dtype=torch.uint8)
    if isinstance(fmt, ScaledBlockFormat):
        codes = stored.get("scale_codes")
        g = stored.get("tensor_scale")
        if codes is None or codes.dtype != torch.uint8 or fmt.scale.bits != 8 or (
                fmt.tensor_scale and (g is None or g.dtype != torch.float32 or g.numel() != 1)):
            return None
        valid = torch.ones(256, dtype=torch.uint8)
        try:
            factors = fmt.scale.decode(codes_all, torch.float32)
        except (TypeError, ValueError):  # some codes are rejected: find which, once
            factors = torch.zeros(256, dtype=torch.float32)
            for c in range(256):
                try:
                    factors[c] = fmt.scale.decode(codes_all[c:c + 1], torch.float32)[0]
                except (TypeError, ValueError):
                    valid[c] = 0
        tensor_scale = g.reshape(1) if fmt.tensor_scale else torch.zeros(0, dtype=torch.float32)
    else:
        assert isinstance(fmt, BlockFormat)
        codes = stored.get("scale_e8m0")
        if codes is None or codes.dtype != torch.uint8 or fmt.exponent_min < -127 or fmt.exponent_max > 127 \
                or fmt.nan_exponent != 128:
            return None
        s = codes_all.to(torch.int64) - 127  # code 255: the NaN scale (2^128 in the table: NaN)
        valid = (((s >= fmt.exponent_min) & (s <= fmt.exponent_max)) | (s == 128)).to(torch.uint8)
        factors = _pow2_table(torch.float32)
        tensor_scale = torch.zeros(0, dtype=torch.float32)
    wide = lut.wide if lut.wide is not None else torch.zeros(1, dtype=torch.int64)
    products = _product_table(str(fmt), lut.values, factors) if bits == 8 and not tensor_scale.numel() \
        else torch.zeros(0, dtype=torch.float32)
    blocks = (codes.contiguous().reshape(-1).numpy(), factors.contiguous().numpy(), valid.numpy(),
              tensor_scale.contiguous().numpy(), int(fmt.block_size), products.view(torch.int32).numpy())
    return (_numba().decode_blocks_into, layer._buffers[_DATA].contiguous().numpy(), bits,
            lut.values.contiguous().view(torch.int32).numpy(), wide.numpy(), lut.wide is not None, blocks, row)


def _view_row_length(fmt: NumberFormat, shape: torch.Size) -> "int | None":
    """The length of the rows a block format's blocks run along when they are a plain reshape of
    the codes in memory order (the last axis; a conv weight's ``_r`` rows: I/groups · kernel),
    else None (an ``_a<axis>`` or transposed-conv layout: the codes must be permuted)."""
    moves = getattr(fmt, "_moves", None)
    if moves is None or not moves(len(shape)):
        return shape[-1] if len(shape) else 1
    layout = getattr(fmt, "layout", None)
    if getattr(fmt, "axis", -1) != -1 or layout is None or not layout.is_view():
        return None
    return int(fmt._rows_shape(tuple(shape))[-1])  # type: ignore[attr-defined]


_PRODUCTS: "dict[str, torch.Tensor]" = {}


def _product_table(key: str, values: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``factors[c] · values[e]`` in float32 at ``c * 256 + e`` for every scale code c and 8-bit
    element code e (256 KB), made once per block format (``key``) and shared by its layers: the
    same IEEE product the block decoders form per element."""
    table = _PRODUCTS.get(key)
    if table is None:
        table = _PRODUCTS[key] = (factors.reshape(-1, 1) * values.reshape(1, -1)).reshape(-1).contiguous()
    return table


def _granule_tables(layer: "PackedLayerMixin", params: Mapping[str, torch.Tensor], dtype: torch.dtype
                    ) -> "_Lut | None":
    """One value table per channel / group of a fitted format (None for other formats).

    Decoded by `_granule_decode` (torch, any device) or, on the CPU with numba and up to 8 bits,
    by one kernel call: `decode_runs_into` where the granules are contiguous runs of codes (per
    output channel; groups along the last axis, or along any axis whose trailing axes they span),
    `decode_grid_into` for every other grid (a channel axis other than 0, groups along a leading
    axis of a conv weight). The grid kernel decodes contiguous runs too, but about 2x slower (one
    table offset read per code; measured 0.62 vs 0.28 ms on a 1000x1280 codebook4 per output
    channel), so runs keep their own kernel.
    """
    from lowbit.kernels import resolve_backend

    fmt = layer._packed_format
    data = layer._buffers[_DATA]
    if not isinstance(fmt, LearnedFormat) or not fmt.per_channel(params):
        return None
    shape = tuple(layer._packed_shape)
    if not shape or math.prod(shape) == 0:
        return None
    grid, tables = fmt.tables_per_granule(params, shape)
    values = round_float64_to(tables, dtype).to(data.device).contiguous()
    # contiguous runs: granule blocks are 1 along leading axes, then one partial axis, then whole
    blocks = [n // g for n, g in zip(shape, grid)]
    k = next((d for d, b in enumerate(blocks) if b != 1), len(shape))
    run = math.prod(blocks) if all(g == 1 for g in grid[k + 1:]) else 0
    lut = _Lut(values, None, None, run, grid)
    if data.device.type != "cpu" or resolve_backend(None, "cpu") != "numba" or fmt.bits > 8:
        return lut
    kernels = _numba()
    table = values.reshape(-1).view(_VIEW[values.element_size()]).numpy()
    raw = data.contiguous().numpy()
    if run:
        fast = (kernels.decode_runs_into, raw, fmt.bits, table, np.zeros(1, np.int64), False, np.zeros(1, np.float32),
                run)
    else:
        fast = (kernels.decode_grid_into, raw, fmt.bits, table, kernels.grid_geometry(shape, grid, fmt.bits), False,
                np.zeros(1, np.float32), 0)
    return lut._replace(fast=fast)


def _granule_decode(data: torch.Tensor, bits: int, lut: _Lut, shape: "tuple[int, ...]") -> torch.Tensor:
    """The torch decode of codes with one table per granule (`_granule_tables`): unpack, then
    gather every granule's codes from its own table (as `LearnedFormat.decode_tensor` does, on
    tables already rounded to the output dtype)."""
    assert lut.grid is not None
    n = math.prod(shape)
    codes = unpack_bits(data.contiguous(), bits, n, torch.int64).reshape(shape)
    rows = to_granule_rows(codes, lut.grid)
    return from_granule_rows(torch.gather(lut.values, 1, rows), shape, lut.grid)


def _out_views(buf: torch.Tensor, pair: "torch.dtype | None") -> "tuple[Any, Any, Any]":
    """The integer, pair and float32 numpy views of a flat output buffer."""
    ints = buf.view(_VIEW[buf.element_size()]).numpy()
    even = buf[: buf.numel() - buf.numel() % 2]
    pairs = even.view(pair).numpy() if pair is not None else np.zeros(1, dtype=np.int64)
    floats = buf.numpy() if buf.dtype == torch.float32 else np.zeros(1, dtype=np.float32)
    return ints, pairs, floats


class _StagedPlan(NamedTuple):
    """A layer's prepared staging decode: the kernel and its arguments, the weight-shaped view of
    the staging buffer it writes, and what they were made from (valid while both are current).

    Made once per layer and thread; a forward then costs one kernel call. That matters more than
    it seems: after a convolution has swept the caches, every Python-level step (attribute and
    dict lookups, torch views) pays cache misses, ~0.5 us each, and the per-layer decode used to
    cost 30-50 us on a layer of a few hundred weights.
    """

    table: Any  # the layer's ``_packed_table`` entry the arguments were made from
    codes: torch.Tensor  # the layer's code buffer they view (replaced: the plan is stale)
    buffer: torch.Tensor  # this thread's staging buffer they write into
    kernel: Callable[..., Any]
    args: "tuple[Any, ...]"
    weight: torch.Tensor
    #: the kernel's own arguments, kept alive while ``kernel`` is the one-argument twin that
    #: reads them by address (`_plan_numba.addressed`); else ``args`` itself
    held: "tuple[Any, ...]" = ()


def _staged_plan(layer: "PackedLayerMixin") -> "_StagedPlan | None":
    """This thread's prepared staging decode of ``layer``, if it is still valid."""
    plans = getattr(_STAGING, "plans", None)
    plan = None if plans is None else plans.get(layer)
    if plan is None or plan.table is not layer._packed_table or plan.codes is not layer._buffers[_DATA] \
            or plan.buffer is not _STAGING.bufs.get(plan.weight.dtype):
        return None
    return plan


def _stage_plan(layer: "PackedLayerMixin", lut: _Lut, n: int, dtype: torch.dtype) -> "_StagedPlan | None":
    """Decode ``layer`` into this thread's staging buffer, keeping the prepared call for the next
    forward; None when the kernel rejects the block scales (`_decode_numba.decode_blocks_into`)."""
    kernel, data, bits, table, wide, use_wide, scale, row = lut.fast  # type: ignore[misc]
    pair = _PAIR.get(torch.empty((), dtype=dtype).element_size()) if use_wide else None
    buf, (ints, pairs, floats) = _staging_views(n, dtype, pair)
    with torch.inference_mode(False):  # a plain view, usable inside and outside inference mode
        weight = buf[:n].view(layer._packed_shape)
    args = (data, bits, table, wide, use_wide, scale, row, n, ints, pairs, floats)
    kernel, call = _one_argument(kernel, args)
    plan = _StagedPlan(layer._packed_table, layer._buffers[_DATA], buf, kernel, call, weight, args)
    plans = getattr(_STAGING, "plans", None)
    if plans is None:
        plans = _STAGING.plans = weakref.WeakKeyDictionary()
    plans[layer] = plan
    if n and plan.kernel(*plan.args):
        return None
    return plan


def _one_argument(kernel: Callable[..., Any], args: "tuple[Any, ...]") -> "tuple[Callable[..., Any], tuple[Any, ...]]":
    """The prepared call ``kernel(*args)`` as a call with one argument array where a twin kernel
    takes it (`_plan_numba.addressed`: numba then types and unboxes one argument per forward,
    not eleven), else as it is. The caller keeps ``args`` alive with the call."""
    twin = _plans_numba().addressed(kernel, args)
    return (kernel, args) if twin is None else twin


@functools.lru_cache(maxsize=1)
def _plans_numba():  # type: ignore[no-untyped-def]
    from lowbit.storage import _plan_numba

    return _plan_numba


def _fast_decode(fast: "tuple[Any, ...]", n: int, dtype: torch.dtype, staging: bool) -> "torch.Tensor | None":
    """The flat decode of ``n`` codes (None when the kernel rejects the block scales)."""
    kernel, data, bits, table, wide, use_wide, scale, row = fast
    pair = _PAIR.get(torch.empty((), dtype=dtype).element_size()) if use_wide else None
    if staging:
        buf, (ints, pairs, floats) = _staging_views(n, dtype, pair)
    else:
        buf = torch.empty(n, dtype=dtype)
        ints, pairs, floats = _out_views(buf, pair)
    if n and kernel(data, bits, table, wide, use_wide, scale, row, n, ints, pairs, floats):
        return None
    return buf[:n]


_PAIR = {2: torch.int32, 4: torch.int64}  # value size -> an integer holding two values


def _wide_table(values: torch.Tensor, bits: int) -> "torch.Tensor | None":
    """Values of all codes of every byte (1, 2, 4 bits) or 12-bit code pair (6 bits), as pairs."""
    from lowbit.kernels import resolve_backend

    pair = _PAIR.get(values.element_size())
    if pair is None or bits not in _WIDE_BITS or values.device.type != "cpu" or resolve_backend(None, "cpu") != "numba":
        return None
    mask = (1 << bits) - 1
    if bits == 6:
        idx = torch.arange(1 << 12)
        codes = torch.stack([idx & mask, idx >> 6], 1)
    else:
        codes = (torch.arange(256).unsqueeze(1) >> (bits * torch.arange(8 // bits))) & mask
    return values[codes].contiguous().view(pair).reshape(-1)


_WIDE_BITS = (1, 2, 4, 6)  # lowbit.storage._decode_numba.WIDE_BITS, without importing numba here


def _lut_decode(data: torch.Tensor, bits: int, lut: _Lut, n: int, out: "torch.Tensor | None" = None) -> torch.Tensor:
    """``lut.values[code]`` for the ``n`` codes packed ``bits`` bits each in ``data`` (1-D), into
    ``out`` (n elements of the table's dtype) when given."""
    table = lut.values
    if out is None:
        out = torch.empty(n, dtype=table.dtype, device=data.device)
    if n == 0:
        return out
    from lowbit.kernels import resolve_backend

    if resolve_backend(None, data.device.type) != "numba":
        codes = unpack_bits(data.contiguous(), bits, n, torch.int32 if bits < 32 else torch.int64)
        return torch.index_select(table, 0, codes, out=out)
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[table.element_size()]
    kernels = _numba()
    raw = data.contiguous().numpy()
    done = 0
    if lut.wide is not None and n >= 2:
        pairs = out[: n - n % 2].view(lut.wide.dtype)
        done = kernels.wide_decode_into(raw, bits, lut.wide.numpy(), pairs.numpy())
    if done < n:  # the rest starts on a byte boundary: whole chunks were decoded
        kernels.lut_decode_into(raw[done * bits // 8:], bits, table.view(view).numpy(), out[done:].view(view).numpy())
    return out


def _scaled(values: torch.Tensor, scale: torch.Tensor, axis: "int | None" = None,
            group_size: "int | None" = None) -> torch.Tensor:
    """``values * scale`` (float32), in place where it can be: ``values`` is a fresh decode.

    A per-channel scale along axis 0 multiplies a 2-d view: torch's in-place broadcast over
    trailing size-1 dims, (N, C, 1, 1) *= (N, 1, 1, 1), runs ~100x slower than the 2-d form.
    Per-group scales go through `multiply_by_scale` (a grouped view, no expanded copy).
    """
    if group_size is not None:
        return multiply_by_scale(values, scale, axis, group_size)
    if values.dim() >= 2 and scale.dim() == values.dim() and scale.shape[0] == values.shape[0] \
            and all(d == 1 for d in scale.shape[1:]):
        values.view(values.shape[0], -1).mul_(scale.reshape(-1, 1))
        return values
    if scale.shape == values.shape or scale.numel() == 1:
        return values.mul_(scale)
    return values * scale


@functools.lru_cache(maxsize=1)
def _numba():  # type: ignore[no-untyped-def]
    from lowbit.storage import _decode_numba

    return _decode_numba


@functools.lru_cache(maxsize=4)
def _pow2_table(dtype: torch.dtype) -> torch.Tensor:
    """2^s for s in [-127, 127] and NaN for 128 (the NaN-scale marker), index s + 127; exact."""
    exps = torch.arange(-127, 129, dtype=torch.float64)
    table = torch.pow(2.0, exps)
    table[-1] = float("nan")
    return table.to(dtype)


def _decode_block(layer: PackedLayerMixin, table: "_Lut", dtype: torch.dtype,
                  out: "torch.Tensor | None" = None) -> "torch.Tensor | None":
    """Block formats: element value × the block's factor (2^s for MX / E8M0 scales; the decoded
    scale, times the tensor scale, for float scales), as decode_tensor rounds it to ``dtype``.

    float32 products go through `_block_products` (one numba pass into ``out``, the staging
    buffer, when given; blocks along other rows: `_laid_products`). None where the reference
    decoder must run (scales it would reject: it then says why)."""
    fmt = layer._packed_format
    shape = layer._packed_shape
    stored = {p: layer._buffers[_PARAM + p] for p in layer._packed_params}
    data = layer._buffers[_DATA]
    if isinstance(fmt, ScaledBlockFormat):
        params = fmt.params_from_storage(stored)
        g = params.get("tensor_scale") if fmt.tensor_scale else None
        codes = params.get("scale_codes")
        if codes is None or (fmt.tensor_scale and (g is None or g.dtype != torch.float32 or g.dim() != 0
                                                   or not bool(torch.isfinite(g) & (g > 0)))):
            return None
        try:
            factor = fmt._block_factors(codes, g)  # validates the scale codes
        except (TypeError, ValueError):
            return None
        values = _laid_products(fmt, data, fmt.bits, table, factor, shape, out if dtype == torch.float32 else None)
        return values if dtype == torch.float32 else values.to(dtype)
    assert isinstance(fmt, BlockFormat)
    s = fmt.params_from_storage(stored)["scale_exponent"].to(torch.int64)
    if fmt.exponent_min < -127 or fmt.exponent_max > 127 or fmt.nan_exponent != 128:
        return None
    if bool((((s < fmt.exponent_min) | (s > fmt.exponent_max)) & (s != fmt.nan_exponent)).any()):
        return None
    # float32 products are exact-then-rounded once (elements have few significant bits, 2^s is
    # exact), so they equal float64 products rounded to float32; other dtypes go through float64
    work = table.values.dtype
    factor = _pow2_table(work).to(data.device)[s + 127]
    values = _laid_products(fmt, data, fmt.bits, table, factor, shape, out if work == dtype else None)
    return values if work == dtype else round_float64_to(values.to(torch.float64), dtype)


def _laid_products(fmt: NumberFormat, data: torch.Tensor, bits: int, table: "_Lut", factor: torch.Tensor,
                   shape: torch.Size, out: "torch.Tensor | None") -> torch.Tensor:
    """`_block_products` for blocks along the format's rows (its ``layout`` / ``axis``): rows that
    are a reshape of the codes (the last axis, a conv weight's ``_r``) in the one pass; others
    (a transposed conv's ``_rt<g>``, ``_a<axis>``) decode the elements in stored order, multiply
    them as rows and lay them back."""
    k = int(fmt.block_size)  # type: ignore[attr-defined]
    row = _view_row_length(fmt, shape)
    if row is not None:
        rows = torch.Size((shape.numel() // row, row)) if len(shape) > 1 else shape
        return _block_products(data, bits, table, factor, rows, k, out).view(shape)
    elements = _lut_decode(data, bits, table, shape.numel()).view(shape)
    rows = fmt._to_rows(elements)  # type: ignore[attr-defined]
    products = _row_products(rows, factor, k)
    result = fmt._from_rows(products, tuple(shape))  # type: ignore[attr-defined]
    if out is None:
        return result  # type: ignore[no-any-return]
    target = out.view(shape)
    target.copy_(result)
    return target


def _block_products(data: torch.Tensor, bits: int, table: "_Lut", factor: torch.Tensor, shape: torch.Size, k: int,
                    out: "torch.Tensor | None") -> torch.Tensor:
    """``table[code] · factor[block]`` in the table's dtype, shaped ``shape`` (blocks of ``k``
    along its last axis, the last one shorter), into ``out`` (flat) when given."""
    from lowbit.kernels import resolve_backend

    n = shape.numel()
    length = shape[-1] if len(shape) else 1
    values = table.values
    if (n and bits <= 8 and values.dtype == torch.float32 and data.device.type == "cpu"
            and resolve_backend(None, "cpu") == "numba"):
        result = out if out is not None else torch.empty(n, dtype=torch.float32)
        _block_kernels().decode_packed_into(data.contiguous().numpy(), bits, values.contiguous().numpy(),
                                            factor.reshape(-1).contiguous().numpy(), length, k,
                                            result.numpy())
        return result.view(shape)
    elements = _lut_decode(data, bits, table, n)
    return _row_products(elements.reshape(-1, length), factor, k).reshape(shape)


def _row_products(rows: torch.Tensor, factor: torch.Tensor, k: int) -> torch.Tensor:
    """``rows`` (..., length) times one factor per block of ``k`` along the last axis (the last
    block shorter), shaped as ``rows``."""
    length = rows.shape[-1] if rows.dim() else 1
    flat = rows.reshape(-1, length)
    nb = -(-length // k)
    if nb == 1:  # rows no longer than a block (a conv weight's kernel width): one factor per row, no padding
        return (flat * factor.reshape(-1, 1)).reshape(rows.shape)
    if nb * k != length:
        flat = F.pad(flat, (0, nb * k - length))
    products = (flat.reshape(-1, nb, k) * factor.reshape(-1, nb).unsqueeze(-1)).reshape(-1, nb * k)[:, :length]
    return products.reshape(rows.shape)


@functools.lru_cache(maxsize=1)
def _block_kernels():  # type: ignore[no-untyped-def]
    from lowbit.kernels import blocks_numba

    return blocks_numba
