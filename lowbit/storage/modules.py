"""Packed layers: weights held as packed n-bit codes and decoded on the fly for compute.

`pack_` turns a model's layers whose `lowbit.simulate.registry` entry has a packed class (float ones,
or the simulated ones `lowbit.quantize_` made) into ``PackedLinear`` … ``PackedEmbedding``, in
place: the float weight is dropped and the layer keeps only its packed codes (a `PackedTensor`:
codes, side parameters such as MX block exponents or codebook levels, an optional scale). Every
forward decodes the codes into a float weight in the layer's ``compute_dtype`` (the original
weight's dtype unless chosen) and runs the layer's usual op with it. `unpack_` undoes `pack_`.

Semantics, exactly:

- **Packed == simulated.** The decoded weight equals ``fmt.quantize(weight)`` bit for bit, so a
  packed model gives the same outputs (``torch.equal``) as the model simulated with
  ``quantize_(model, {"weight": fmt, ...})``. A simulated layer's other roles (bias, input,
  output, grad, accumulation) stay simulated in the packed layer: its forward *is* the simulated
  forward, with the decoded weight in place of the fake-quantized one. Only the weight is
  packed; the bias stays a float parameter (quantized on the fly if it has a bias role).
- **Decoding** of scalar formats of at most 16 bits, and of the fitted formats (binary, ternary,
  codebook), is one table lookup per element: a table of every code's value in the compute
  dtype, read by a fused unpack-and-look-up kernel (numba, when installed; else torch's
  ``unpack_bits`` + ``index_select``). MX / block formats look up the element and multiply by
  the block's power of two. Fitted formats with levels per channel or group use one table per
  granule when each granule's codes are one contiguous run (per output channel, groups along the
  last axis; numba). Anything else decodes through `PackedTensor.decode`.
- **Staging.** Without autograd (``torch.no_grad`` / ``inference_mode``) a CPU forward decodes
  into a reusable per-thread staging buffer (as large as the largest layer decoded through it;
  `staging_nbytes`) instead of a fresh tensor per layer: the decoded weight lives only while its
  op runs. ``module.weight`` and forwards under autograd always get a tensor of their own.
- **Cache.** ``cache=True`` keeps the decoded weight after the first forward (as fast as a float
  layer, the memory of both); ``nbytes`` then counts both. ``clear_cache()`` drops it.
- **Storage in the module.** The packed codes and side parameters are buffers
  (``weight_packed``, ``weight_param_<name>``, ``weight_scale``) and the format, shape and dtype
  its ``_extra_state``: ``state_dict()`` holds plain tensors (``torch.load(weights_only=True)``
  reads it back), ``load_state_dict`` accepts that form, or ``{"<layer>.weight": PackedTensor}``
  from `lowbit.load_packed`, or a float weight (quantized to the layer's format).
  ``.to(device)`` moves the codes; ``.to(dtype)`` / ``.half()`` never touch them (the side
  parameters keep their own dtype too) but change ``compute_dtype``, as they would change a
  float weight's dtype. ``module.weight`` is the decoded weight (read-only).

>>> import torch, lowbit as lb
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
>>> x = torch.randn(4, 64)
>>> simulated = lb.quantize_(torch.nn.Sequential(*[m for m in model]), {"weight": "posit8_es2"})
>>> y_sim = simulated(x)
>>> _ = lb.pack_(model)                    # the quantized model: its weight formats are used
>>> [type(m).__name__ for m in model]
['PackedLinear', 'ReLU', 'PackedLinear']
>>> torch.equal(model(x), y_sim), model[0].nbytes   # 64*32 weights, one byte each
(True, 2048)
>>> _ = lb.unpack_(model); type(model[0]).__name__
'QuantLinear'
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import weakref
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats._float64 import FLOAT_DTYPES, check_float_dtype, round_float64_to
from lowbit.formats.base import MAX_TABLE_BITS, EncodedTensor, NumberFormat, ScalarFormat
from lowbit.formats.block import BlockFormat
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.formats.granules import from_granule_rows, to_granule_rows
from lowbit.formats.learned import LearnedFormat
from lowbit.formats.spec import parse_format
from lowbit.quant.config import pattern_matches
from lowbit.simulate.layers import (
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLayerMixin,
    QuantLinear,
    _QuantConvNd,
)
from lowbit.simulate.registry import entries, entry_for, register_packed
from lowbit.storage.bitpack import unpack_bits
from lowbit.storage.packed import PackedTensor, _value_table, multiply_by_scale, pack_for_role

__all__ = [
    "PackedLayerMixin",
    "PackedLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedEmbedding",
    "PACKED_CLASSES",
    "pack_",
    "unpack_",
    "packed_state_dict",
    "memory_footprint",
    "staging_nbytes",
]

_DATA = "weight_packed"
_SCALE = "weight_scale"
_PARAM = "weight_param_"


def _fmt_dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_DTYPES = {_fmt_dtype(d): d for d in FLOAT_DTYPES}


class PackedLayerMixin(nn.Module):
    """What every packed layer shares: its packed weight, decoding, cache, state dict and moves.

    Not a `lowbit.simulate.layers.QuantLayerMixin`: `lowbit.dequantize_` and
    `lowbit.tensor_formats` leave packed layers alone (use `unpack_`).
    """

    compute_dtype: torch.dtype
    cache: bool
    lowbit_roles: "dict[str, Any]"
    lowbit_accumulate: "tuple[NumberFormat, int] | None"
    _packed_format: NumberFormat
    _packed_shape: torch.Size
    _packed_dtype: torch.dtype
    _packed_axis: "int | None"
    _packed_group_size: "int | None"
    _packed_params: "tuple[str, ...]"
    _packed_decoded: "torch.Tensor | None"
    _packed_table: "tuple[Any, _Lut] | None"
    _packed_prior: "tuple[type, dict[str, Any] | None, bool]"

    # -- the simulated forward's hooks (see lowbit.simulate.layers) ----------------------------
    _lowbit_q = QuantLayerMixin._lowbit_q
    _lowbit_finish = QuantLayerMixin._lowbit_finish

    def _lowbit_bias(self) -> "torch.Tensor | None":
        return self._lowbit_q("bias", self.bias)  # type: ignore[arg-type]

    def _lowbit_weight(self) -> torch.Tensor:
        # the forward's weight. Without autograd, on the CPU and without a cache, decode into this
        # thread's reusable staging buffer: the weight lives only while its op runs, and a fresh
        # allocation per layer and forward costs more than the decoding itself (page faults)
        if self._packed_decoded is None and not self.cache and not torch.is_grad_enabled():
            plan = _staged_plan(self)
            if plan is not None:  # the steady state: one kernel call, nothing else (see _StagedPlan)
                if plan.kernel(*plan.args):  # block scales the kernel rejects: the reference decoder says why
                    return self.packed_weight.decode(self.compute_dtype)
                return plan.weight
            if self._buffers[_DATA].device.type == "cpu":
                return self._decode(staging=True)
        return self.weight

    # -- the packed weight ---------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The decoded weight (``compute_dtype``), from the cache when one is held; read-only."""
        if self._packed_decoded is not None:
            return self._packed_decoded
        if self.cache and torch.is_inference_mode_enabled():
            # a cache filled under inference_mode must still serve forwards that autograd records
            with torch.inference_mode(False):
                w = self._cacheable(self._decode())
        else:
            w = self._decode()
        if self.cache:
            self._packed_decoded = w = self._cacheable(w)
        return w

    @staticmethod
    def _cacheable(w: torch.Tensor) -> torch.Tensor:
        """``w`` itself, or a compact copy when it views a larger decode (MX rows padded to whole
        blocks), so the cache holds the weight only."""
        if w.untyped_storage().nbytes() > w.numel() * w.element_size():
            return w.clone(memory_format=torch.contiguous_format)
        return w

    @weight.setter
    def weight(self, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__}.weight is decoded from packed codes and cannot be assigned; "
            "use load_state_dict (a float weight is re-quantized) or lowbit.unpack_ first"
        )

    @property
    def format(self) -> NumberFormat:
        """The weight's number format."""
        return self._packed_format

    @property
    def packed_weight(self) -> PackedTensor:
        """The packed weight as a `PackedTensor` (sharing this layer's buffers)."""
        params = {p: self._buffers[_PARAM + p] for p in self._packed_params}
        return PackedTensor(
            self._buffers[_DATA], self._packed_format, self._packed_shape, params,  # type: ignore[arg-type]
            self._buffers.get(_SCALE), self._packed_axis, self._packed_dtype, self._packed_group_size,
        )

    @property
    def packed_nbytes(self) -> int:
        """Bytes of the packed weight: codes + side parameters + scale."""
        return sum(_tensor_nbytes(self._buffers[k]) for k in self._packed_keys())

    @property
    def cache_nbytes(self) -> int:
        """Bytes of the decoded weight held by the cache (0 without one)."""
        return 0 if self._packed_decoded is None else _tensor_nbytes(self._packed_decoded)

    @property
    def nbytes(self) -> int:
        """Resident bytes of the weight: packed codes and side parameters, plus the decoded cache if held."""
        return self.packed_nbytes + self.cache_nbytes

    def __getstate__(self) -> "dict[str, Any]":
        # pickling / deep copies leave the decoded cache and the decoding table behind: both are
        # derived (a copied table would view the old buffers, and double a saved model's size)
        state = dict(super().__getstate__())
        state["_packed_decoded"] = None
        state["_packed_table"] = None
        return state

    def clear_cache(self) -> None:
        """Drop the decoded weight (and the decoding table); the next forward decodes again."""
        self._packed_decoded = None
        self._packed_table = None

    def _packed_keys(self) -> "list[str]":
        keys = [_DATA, *(_PARAM + p for p in self._packed_params)]
        return keys + ([_SCALE] if _SCALE in self._buffers else [])

    # -- installing a packed weight ------------------------------------------------------------
    def _set_packed(self, packed: PackedTensor, device: "torch.device | None" = None) -> None:
        """Hold ``packed`` (its tensors moved to ``device``) as this layer's weight."""
        for key in list(self._buffers):
            if key == _DATA or key == _SCALE or key.startswith(_PARAM):
                del self._buffers[key]
        fmt = packed.format
        _check_decodable(packed)

        def move(t: torch.Tensor) -> torch.Tensor:  # the same tensor when it can be: tied weights stay one
            t = t.detach() if t.requires_grad else t
            return t if device is None else t.to(device)

        self.register_buffer(_DATA, move(packed.data))
        for p, t in packed.params.items():
            self.register_buffer(_PARAM + p, move(t))
        if packed.scale is not None:
            self.register_buffer(_SCALE, move(packed.scale))
        self._packed_format = fmt
        self._packed_shape = packed.shape
        self._packed_dtype = packed.dtype
        self._packed_axis = packed.axis
        self._packed_group_size = packed.group_size
        self._packed_params = tuple(packed.params)
        self.clear_cache()

    # -- decoding --------------------------------------------------------------------------------
    def _decode(self, staging: bool = False) -> torch.Tensor:
        dtype = self.compute_dtype
        fmt = self._packed_format
        data = self._buffers[_DATA]
        scale = self._buffers.get(_SCALE)
        value_dtype = scale.dtype if scale is not None else dtype
        table = self._table(value_dtype)
        if table is None:  # no table for this format: the reference decoder
            return self.packed_weight.decode(dtype)
        n = self._packed_shape.numel()
        if table.fast is not None:  # numba on the CPU: one kernel call, views prepared once
            if staging and value_dtype == dtype:
                plan = _stage_plan(self, table, n, dtype)
                return self.packed_weight.decode(dtype) if plan is None else plan.weight
            flat = _fast_decode(table.fast, n, value_dtype, staging)
            if flat is None:  # block scales the kernel rejects: the reference decoder says why
                return self.packed_weight.decode(dtype)
            values = flat.view(self._packed_shape)
            return values if value_dtype == dtype else values.to(dtype)
        out = _staging(n, value_dtype) if staging and value_dtype == dtype else None
        if table.grid is not None:  # levels fitted per channel / group, without numba
            values = _granule_decode(data, fmt.bits, table, tuple(self._packed_shape))
        elif isinstance(fmt, (BlockFormat, ScaledBlockFormat)):
            values = _decode_block(self, table, value_dtype, out)
            if values is None:  # exponents outside the table: the reference decoder says why
                return self.packed_weight.decode(dtype)
        else:
            values = _lut_decode(data, fmt.bits, table, n, out).reshape(self._packed_shape)
        if scale is None:
            return values
        return _scaled(values, scale, self._packed_axis, self._packed_group_size).to(dtype)

    def _table(self, dtype: torch.dtype) -> "_Lut | None":
        """The value of every code (for block formats: of every element code) in ``dtype``.

        Cached per dtype, device and the packed buffers' memory: the table's prepared kernel
        arguments view those buffers, so a buffer replaced (``torch.func.functional_call``, a
        deep copy) makes a new table, while codes edited in place are read as they are."""
        device = self._buffers[_DATA].device
        key = (dtype, device, tuple(self._buffers[k].data_ptr() for k in self._packed_keys()))
        cached = self._packed_table
        stale = cached is not None and cached[1].values.is_inference() and not torch.is_inference_mode_enabled()
        if cached is not None and cached[0] == key and not stale:
            return cached[1]
        fmt = self._packed_format
        params = {p: self._buffers[_PARAM + p] for p in self._packed_params}
        values = _code_table(fmt, params, dtype)
        if values is None:
            lut = _granule_tables(self, params, dtype)  # levels fitted per channel / group
            if lut is not None:
                self._packed_table = (key, lut)
            return lut
        values = values.to(device)
        bits = fmt.element_format.bits if isinstance(fmt, BlockFormat) else fmt.bits
        wide = _wide_table(values, bits)
        lut = _Lut(values, wide, None)
        lut = lut._replace(fast=_fast_args(self, lut, bits))
        self._packed_table = (key, lut)
        return lut

    # -- moves and casts ---------------------------------------------------------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "PackedLayerMixin":
        # the packed tensors move with fn but keep their dtype: a cast (``.half()``, ``.to(dtype)``)
        # would change codebook levels or scales, and the decoded values with them
        held = {k: self._buffers.pop(k) for k in self._packed_keys()}
        try:
            super()._apply(fn, recurse)
        finally:
            for k, t in held.items():
                moved = fn(t)
                if moved.dtype != t.dtype:
                    moved = t.to(device=moved.device)
                self._buffers[k] = moved
        # ... and the compute dtype follows a cast, as a float weight's dtype would
        probe = fn(torch.zeros((), dtype=self.compute_dtype, device=self._buffers[_DATA].device))
        if isinstance(probe, torch.Tensor) and probe.dtype in FLOAT_DTYPES:
            self.compute_dtype = probe.dtype
        self.clear_cache()
        return self

    # -- state dict ---------------------------------------------------------------------------------
    def get_extra_state(self) -> "dict[str, Any]":
        """Format, shape, dtype, scale axis and side-parameter names of the packed weight."""
        return {
            "format": str(self._packed_format),
            "shape": list(self._packed_shape),
            "dtype": _fmt_dtype(self._packed_dtype),
            "axis": self._packed_axis,
            "group_size": self._packed_group_size,
            "params": list(self._packed_params),
            "scale": _SCALE in self._buffers,
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or state.get("format") != str(self._packed_format) or list(
            state.get("shape", ())
        ) != list(self._packed_shape):
            raise ValueError(f"packed-weight metadata {state!r} does not match the loaded codes")

    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: "dict[str, Any]",
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: "list[str]",
        unexpected_keys: "list[str]",
        error_msgs: "list[str]",
    ) -> None:
        device = self._buffers[_DATA].device
        logical = state_dict.get(prefix + "weight")
        try:
            if logical is not None:
                self._set_packed(self._packed_from_logical(logical), device)
                # hand nn.Module the physical form, so it finds every buffer it expects
                state_dict = dict(state_dict)
                del state_dict[prefix + "weight"]
                state_dict.update({prefix + k: self._buffers[k] for k in self._packed_keys()})
                state_dict[prefix + "_extra_state"] = self.get_extra_state()
            elif prefix + "_extra_state" in state_dict:
                self._set_packed(self._packed_from_physical(state_dict, prefix), device)
        except (ValueError, TypeError, KeyError) as err:
            error_msgs.append(f"packed weight {prefix}weight: {err}")
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _packed_from_logical(self, value: Any) -> PackedTensor:
        if isinstance(value, PackedTensor):
            packed = value
        elif isinstance(value, torch.Tensor) and value.dtype in FLOAT_DTYPES:
            packed = PackedTensor.from_tensor(value.detach(), self._packed_format)
        else:
            raise TypeError(f"expected a PackedTensor or a float tensor, got {type(value).__name__}")
        if packed.shape != self._packed_shape:
            raise ValueError(f"shape {tuple(packed.shape)} does not match the layer's {tuple(self._packed_shape)}")
        return packed

    def _packed_from_physical(self, state_dict: Mapping[str, Any], prefix: str) -> PackedTensor:
        meta = state_dict[prefix + "_extra_state"]
        if not isinstance(meta, Mapping) or not {"format", "shape", "dtype"} <= set(meta):
            raise ValueError(f"_extra_state must hold the format, shape and dtype of the packed weight, got {meta!r}")
        if meta["dtype"] not in _DTYPES:
            raise ValueError(f"unknown dtype {meta['dtype']!r}")
        params = {p: state_dict[prefix + _PARAM + p] for p in meta.get("params", ())}
        scale = state_dict.get(prefix + _SCALE) if meta.get("scale") else None
        packed = PackedTensor(
            state_dict[prefix + _DATA], parse_format(meta["format"]), tuple(meta["shape"]), params, scale,
            meta.get("axis"), _DTYPES[meta["dtype"]], meta.get("group_size"),
        )
        if packed.shape != self._packed_shape:
            raise ValueError(f"shape {tuple(packed.shape)} does not match the layer's {tuple(self._packed_shape)}")
        return packed

    # -- printing --------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        base = self._float_class.extra_repr(self)  # type: ignore[attr-defined]
        roles = "".join(f", {r}={q.format}" for r, q in self.lowbit_roles.items())
        cache = ", cached" if self._packed_decoded is not None else (", cache" if self.cache else "")
        return f"{base}, format={self._packed_format}, packed={self.packed_nbytes} B{roles}{cache}"


class PackedLinear(PackedLayerMixin, nn.Linear):
    """``nn.Linear`` with a packed weight (see the module docstring)."""

    _float_class = nn.Linear
    forward = QuantLinear.forward


class PackedConv1d(PackedLayerMixin, nn.Conv1d):
    """``nn.Conv1d`` with a packed weight."""

    _float_class = nn.Conv1d
    forward = _QuantConvNd.forward
    _chunked = _QuantConvNd._chunked


class PackedConv2d(PackedLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with a packed weight."""

    _float_class = nn.Conv2d
    forward = _QuantConvNd.forward
    _chunked = _QuantConvNd._chunked


class PackedConvTranspose2d(PackedLayerMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with a packed weight."""

    _float_class = nn.ConvTranspose2d
    forward = QuantConvTranspose2d.forward


class PackedEmbedding(PackedLayerMixin, nn.Embedding):
    """``nn.Embedding`` with a packed weight.

    Without a cache or ``max_norm``, and for table-decoded formats whose rows fill whole bytes,
    a forward decodes only the rows it looks up (a large vocabulary is never decoded whole).

    ``max_norm``: ``F.embedding`` renormalizes looked-up rows of the weight *in place*. The codes
    cannot change, so decoding on the fly starts every forward from the stored rows, while a
    cache (``cache=True``) — like the float and simulated layers — keeps the renormalized rows:
    the two agree on the first forward and may differ after it.
    """

    _float_class = nn.Embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        rows = None if (self.cache or self.max_norm is not None) else self._decode_rows(x)
        if rows is None:
            return QuantEmbedding.forward(self, x)  # type: ignore[arg-type]
        return self._lowbit_finish(rows)

    def _decode_rows(self, x: torch.Tensor) -> "torch.Tensor | None":
        fmt = self._packed_format
        dim = self._packed_shape[1]
        if isinstance(fmt, BlockFormat) or _SCALE in self._buffers or (dim * fmt.bits) % 8:
            return None
        table = self._table(self.compute_dtype)
        if table is None or table.grid is not None:
            return None
        if x.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"Embedding indices must be int32 or int64, got {x.dtype}")
        row_bytes = dim * fmt.bits // 8
        data = self._buffers[_DATA].view(self._packed_shape[0], row_bytes)
        picked = data.index_select(0, x.reshape(-1).to(torch.int64)).reshape(-1)
        return _lut_decode(picked, fmt.bits, table, x.numel() * dim).reshape(*x.shape, dim)


for _packed in (PackedLinear, PackedConv1d, PackedConv2d, PackedConvTranspose2d, PackedEmbedding):
    register_packed(_packed._float_class, _packed)
#: float layer class -> its packed class (the ``packed`` slots of `lowbit.simulate.registry`)
PACKED_CLASSES: "dict[type, type]" = {e.float_class: e.packed for e in entries() if e.packed is not None}
_DERIVED: "dict[type, type]" = {}


def _packed_class_for(float_cls: type) -> type:
    if float_cls in PACKED_CLASSES:
        return PACKED_CLASSES[float_cls]
    for base, pcls in PACKED_CLASSES.items():
        if issubclass(float_cls, base):
            if float_cls not in _DERIVED:
                _DERIVED[float_cls] = type(
                    f"Packed{float_cls.__name__}", (pcls, float_cls),
                    {"__module__": __name__, "_float_class": float_cls},
                )
            return _DERIVED[float_cls]
    raise TypeError(f"{float_cls.__name__} cannot be packed")  # pragma: no cover - callers check first


# ------------------------------------------------------------------------------ decoding
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


def _fast_args(layer: "PackedLayerMixin", lut: _Lut, bits: int) -> "tuple[Any, ...] | None":
    """numpy views (made once) of what `_decode_numba.decode_into` reads, for a scalar or fitted
    format on the CPU with the numba backend; None otherwise (block formats, other scales)."""
    from lowbit.kernels import resolve_backend

    fmt = layer._packed_format
    data = layer._buffers[_DATA]
    if data.device.type != "cpu" or resolve_backend(None, "cpu") != "numba":
        return None
    if isinstance(fmt, (BlockFormat, ScaledBlockFormat)):
        return _fast_block_args(layer, lut, bits)
    shape = layer._packed_shape
    scale = layer._buffers.get(_SCALE)
    row = 0
    if scale is not None:
        per_row = len(shape) > 0 and scale.dim() == len(shape) and scale.shape[0] == shape[0] \
            and all(d == 1 for d in scale.shape[1:])
        if lut.values.dtype != torch.float32 or not (scale.numel() == 1 or per_row):
            return None
        n = shape.numel()
        row = max(1, n if scale.numel() == 1 else n // max(shape[0], 1))
        scale_np = scale.reshape(-1).contiguous().numpy()
    else:
        scale_np = np.zeros(1, dtype=np.float32)
    wide = lut.wide if lut.wide is not None else torch.zeros(1, dtype=_PAIR.get(lut.values.element_size(), torch.int64))
    table = lut.values.contiguous().view(_VIEW[lut.values.element_size()])
    return (_numba().decode_into, data.contiguous().numpy(), bits, table.numpy(), wide.numpy(), lut.wide is not None,
            scale_np, row)


def _fast_block_args(layer: "PackedLayerMixin", lut: _Lut, bits: int) -> "tuple[Any, ...] | None":
    """`_fast_args` of a block format: `_decode_numba.decode_blocks_into` reads the scale codes
    themselves (uint8, one per block) through a 256-entry factor table made here once, so no
    per-block factor tensor is held or rebuilt per forward. None where `_decode_block` decides
    (float32 tables only, blocks along the last axis, E8M0 codes as stored by `lowbit.save`)."""
    fmt = layer._packed_format
    shape = layer._packed_shape
    if lut.values.dtype != torch.float32 or bits > 8 or _SCALE in layer._buffers or not len(shape) \
            or (getattr(fmt, "axis", -1) != -1 and fmt._moves(len(shape))):  # type: ignore[union-attr]
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
    blocks = (codes.contiguous().reshape(-1).numpy(), factors.contiguous().numpy(), valid.numpy(),
              tensor_scale.contiguous().numpy(), int(fmt.block_size))
    return (_numba().decode_blocks_into, layer._buffers[_DATA].contiguous().numpy(), bits,
            lut.values.contiguous().view(torch.int32).numpy(), wide.numpy(), lut.wide is not None, blocks, shape[-1])


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
    plan = _StagedPlan(layer._packed_table, layer._buffers[_DATA], buf, kernel,
                       (data, bits, table, wide, use_wide, scale, row, n, ints, pairs, floats), weight)
    plans = getattr(_STAGING, "plans", None)
    if plans is None:
        plans = _STAGING.plans = weakref.WeakKeyDictionary()
    plans[layer] = plan
    if n and plan.kernel(*plan.args):
        return None
    return plan


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
    buffer, when given). None where the reference decoder must run (blocks along another axis,
    scales it would reject: it then says why)."""
    fmt = layer._packed_format
    shape = layer._packed_shape
    if getattr(fmt, "axis", -1) != -1 and fmt._moves(len(shape)):  # type: ignore[union-attr]
        return None  # blocks along another axis than the last: the reference decoder
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
        values = _block_products(data, fmt.bits, table, factor, shape, fmt.block_size,
                                 out if dtype == torch.float32 else None)
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
    values = _block_products(data, fmt.bits, table, factor, shape, fmt.block_size,
                             out if work == dtype else None)
    return values if work == dtype else round_float64_to(values.to(torch.float64), dtype)


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
    rows = elements.reshape(-1, length)
    nb = -(-length // k)
    if nb * k != length:
        rows = F.pad(rows, (0, nb * k - length))
    products = (rows.reshape(-1, nb, k) * factor.reshape(-1, nb).unsqueeze(-1)).reshape(-1, nb * k)[:, :length]
    return products.reshape(shape)


@functools.lru_cache(maxsize=1)
def _block_kernels():  # type: ignore[no-untyped-def]
    from lowbit.kernels import blocks_numba

    return blocks_numba


# ------------------------------------------------------------------------------ pack_ / unpack_
def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    cls = _float_class_of(module)
    return pattern_matches(pattern, name, [c.__name__ for c in cls.__mro__])


def _float_class_of(module: nn.Module) -> type:
    if isinstance(module, PackedLayerMixin):
        return module._float_class  # type: ignore[attr-defined,no-any-return]
    return getattr(module, "lowbit_float_class", type(module))


def _packable(module: nn.Module) -> bool:
    if isinstance(module, PackedLayerMixin):
        return False
    entry = entry_for(_float_class_of(module))
    return entry is not None and entry.packed is not None


def _packable_names() -> str:
    return ", ".join(e.name for e in entries() if e.packed is not None)


def _is_glob(pattern: str) -> bool:
    return pattern.startswith("type:") or any(c in pattern for c in "*?[")


def pack_(
    model: nn.Module,
    formats: Any = None,
    *,
    cache: bool = False,
    compute_dtype: "torch.dtype | None" = None,
) -> nn.Module:
    """Replace supported layers' weights by packed codes, in place; returns ``model``.

    ``formats``:

    - None: the layers simulated by `lowbit.quantize_` are packed in their weight formats
      (``lowbit.tensor_formats``); their other roles stay simulated (see the module docstring);
    - a spec string or `NumberFormat`: every supported layer (float or simulated);
    - ``{pattern: spec or None}``: module names (fnmatch patterns, ``"type:Conv2d"``, or a
      state-dict key ``"fc.weight"``; a container's name covers the layers inside it, as in
      `lowbit.quantize_`); the last matching entry wins, None leaves a layer as it
      is; simulated layers no entry matches keep their own weight format;
    - a packed state dict from `lowbit.load_packed` (``{key: PackedTensor or tensor}``): the
      layers it holds ``PackedTensor`` weights for are packed with exactly those codes (nothing
      is re-encoded), then every entry is loaded with ``load_state_dict`` (strict; a model built
      on the meta device takes the loaded tensors as they are, so no float weight is ever made).

    Supported layers: the `lowbit.simulate.registry` entries with a packed class, and their
    subclasses that keep the base ``forward`` (as for `lowbit.quantize_`). ``cache=True`` keeps each decoded
    weight after its first forward. ``compute_dtype`` (default: the weight's dtype) is the dtype
    weights decode to; the bias is cast to it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if compute_dtype is not None:
        compute_dtype = check_float_dtype(compute_dtype, "compute_dtype")
    state: "Mapping[str, Any] | None" = None
    if isinstance(formats, Mapping) and any(isinstance(v, torch.Tensor) for v in formats.values()):
        state = formats
        formats = _formats_of_state(state)
    plan = _plan(model, formats)
    if state is not None:
        _check_state_fits(model, state)  # before any layer changes: a failure leaves the model as it was
    made: dict[int, PackedTensor] = {}  # tied weights stay tied: one PackedTensor per Parameter
    for name, module, spec in plan:
        _pack_module(name, module, spec, made, cache, compute_dtype)
    if state is not None:
        # a skeleton built on the meta device takes the loaded tensors themselves (assign)
        meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        model.load_state_dict(dict(state), strict=True, assign=meta)
    return model


def _check_state_fits(model: nn.Module, state: Mapping[str, Any]) -> None:
    """ValueError (as strict ``load_state_dict`` would raise it later) when a packed state dict's keys
    or shapes do not fit ``model``; checked only while no layer of ``model`` is packed yet."""
    if any(isinstance(m, PackedLayerMixin) for m in model.modules()):
        return
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} in the state dict, {tuple(own[k].shape)} in the model"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [text for text, found in ((f"missing keys {missing}", missing),
                                         (f"unexpected keys {unexpected}", unexpected),
                                         (f"shape mismatch: {'; '.join(wrong)}", wrong)) if found]
    if problems:
        raise ValueError("the packed state dict does not fit the model (nothing was changed): " + "; ".join(problems))


def _formats_of_state(state: Mapping[str, Any]) -> "dict[str, PackedTensor]":
    out: dict[str, PackedTensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be str, got {key!r}")
        if isinstance(value, PackedTensor):
            if key != "weight" and not key.endswith(".weight"):
                raise ValueError(f"packed state dict: {key!r} holds a PackedTensor; only layer weights can be packed")
            out[key] = value
        elif not isinstance(value, torch.Tensor):
            raise TypeError(
                f"packed state dict value {key!r} must be a tensor or PackedTensor, got {type(value).__name__}"
            )
    return out


def _plan(model: nn.Module, formats: Any) -> "list[tuple[str, nn.Module, Any]]":
    """(name, module, spec) for every layer to pack; spec: (format, rounding, generator, scale) or a PackedTensor."""
    modules = list(model.named_modules())
    by_name = dict(modules)
    entries: "list[tuple[str, Any]]" = []
    default: Any = None
    if formats is None:
        pass
    elif isinstance(formats, (str, NumberFormat)):
        default = parse_format(formats)
    elif isinstance(formats, Mapping):
        for key, spec in formats.items():
            if not isinstance(key, str):
                raise TypeError(f"formats keys must be module names or patterns (str), got {key!r}")
            pattern = key
            if key not in by_name and (key == "weight" or key.endswith(".weight")) and key[:-7].rstrip(".") in by_name:
                pattern = key[:-7].rstrip(".")
            if spec is not None and not isinstance(spec, PackedTensor):
                try:
                    spec = parse_format(spec)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"formats[{key!r}]: {err}") from None
            matched = [n for n, m in modules if _matches(pattern, n, m)]
            if not matched:
                names = [n for n, _ in modules if n]
                raise ValueError(
                    f"formats names {key!r}, which matches no module of the model; module names: "
                    f"{', '.join(names[:30])}{' …' if len(names) > 30 else ''}"
                )
            if not _is_glob(pattern):
                module = by_name[pattern]
                if isinstance(module, PackedLayerMixin) and spec is not None:
                    raise ValueError(f"layer {pattern!r} is already packed ({module.format}); unpack_ it first")
                container = any(_packable(m) for m in module.modules())  # a name covers the layers inside it
                if not _packable(module) and spec is not None and (isinstance(spec, PackedTensor) or not container):
                    raise ValueError(
                        f"layer {pattern!r} ({type(module).__name__}) cannot be packed; supported: "
                        f"{_packable_names()} (and subclasses that keep their forward)"
                    )
            elif isinstance(spec, PackedTensor):
                raise ValueError(f"formats[{key!r}] is a PackedTensor; name one layer exactly, not a pattern")
            entries.append((pattern, spec))
    else:
        raise TypeError(
            "formats must be None, a spec string (e.g. 'posit8_es2'), a {layer pattern: spec or None} dict "
            f"or a packed state dict from lowbit.load_packed; got {type(formats).__name__}"
        )

    plan = []
    for name, module in modules:
        if not _packable(module):
            continue
        role = getattr(module, "lowbit_roles", {}).get("weight") if isinstance(module, QuantLayerMixin) else None
        chosen: Any = default
        explicit = False
        for pattern, spec in entries:
            if (name == pattern) if isinstance(spec, PackedTensor) else _matches(pattern, name, module):
                chosen, explicit = spec, True
        if chosen is None and not explicit and role is not None:
            first = role.tracker is not None and role.tracker.calls == 0  # as lowbit.tensor_formats does
            chosen = role.current_format(module._parameters["weight"] if first else None)
        if chosen is None:
            continue
        if isinstance(chosen, PackedTensor):
            plan.append((name, module, chosen))
        else:
            rounding = role.rounding if role is not None else "nearest_even"
            generator = role.generator if role is not None else None
            packed = None
            if role is not None and chosen == role.format:
                # float scales or per-channel fitted levels: pack exactly what the simulation computes
                packed = pack_for_role(role, module._parameters["weight"])
            if packed is not None:
                plan.append((name, module, packed))
            else:
                plan.append((name, module, (chosen, rounding, generator, None)))
    if formats is None and not plan:
        raise TypeError(
            f"pack_() got a {type(model).__name__} with no lowbit weight formats (not quantized with "
            "lowbit.quantize_); pass formats= (one spec such as 'posit8_es2', or {layer: spec})"
        )
    return plan


def _pack_module(
    name: str,
    module: nn.Module,
    spec: Any,
    made: "dict[int, PackedTensor]",
    cache: bool,
    compute_dtype: "torch.dtype | None",
) -> None:
    from torch.nn.utils import parametrize

    label = name or "<model>"
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(
            f"layer {label!r}: its weight is parametrized (lowbit.prepare_qat?); bake it in first "
            "(lowbit.quant.convert) and pack the result"
        )
    weight = module._parameters.get("weight")
    if weight is None:
        raise ValueError(f"layer {label!r} has no weight parameter to pack")
    if isinstance(spec, PackedTensor):
        packed = spec
        if packed.shape != weight.shape:
            raise ValueError(
                f"layer {label!r}: packed weight of shape {tuple(packed.shape)} does not fit the layer's "
                f"weight of shape {tuple(weight.shape)}"
            )
    elif id(weight) in made and made[id(weight)].format == spec[0] and spec[3] is None:
        packed = made[id(weight)]
    else:
        fmt, rounding, generator, scale = spec
        if weight.is_meta:
            raise ValueError(f"layer {label!r}: its weight is on the meta device; there is nothing to encode")
        try:
            packed = PackedTensor.from_tensor(weight.detach(), fmt, rounding, generator=generator)
        except (ValueError, TypeError) as err:
            raise type(err)(f"layer {label!r}: cannot pack its weight in {fmt}: {err}") from None
        made[id(weight)] = packed
    roles = getattr(module, "lowbit_roles", None) if isinstance(module, QuantLayerMixin) else None
    prior = (type(module), roles, bool(weight.requires_grad))
    float_cls = _float_class_of(module)
    device = weight.device if not weight.is_meta else None
    del module._parameters["weight"]
    for attr in ("_lowbit_weight_cache",):  # the simulated layer's quantized copy: not needed any more
        module.__dict__.pop(attr, None)
    module.__class__ = _packed_class_for(float_cls)
    assert isinstance(module, PackedLayerMixin)
    module.lowbit_roles = {r: q for r, q in (roles or {}).items() if r != "weight"}
    if not isinstance(roles, dict):
        module.lowbit_accumulate = None
    module._packed_prior = prior
    module.cache = bool(cache)
    module._packed_table = None
    module._packed_decoded = None
    module._set_packed(packed, device)
    module.compute_dtype = compute_dtype or packed.dtype
    bias = module._parameters.get("bias")
    if compute_dtype is not None and bias is not None and bias.dtype != compute_dtype:
        bias.data = bias.data.to(compute_dtype)


def unpack_(model: nn.Module) -> nn.Module:
    """Undo `pack_`, in place: every packed layer gets back the class it had (float, or simulated
    with the roles it had) and a float weight Parameter holding the decoded values, in the
    layer's ``compute_dtype`` (the original weight's dtype unless `pack_` or a ``.to(dtype)``
    changed it, as it changed the bias). Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    restored: dict[int, nn.Parameter] = {}
    for module in list(model.modules()):
        if not isinstance(module, PackedLayerMixin):
            continue
        prior_cls, roles, requires_grad = module._packed_prior
        data = module._buffers[_DATA]
        key = data.data_ptr()
        if key in restored and restored[key].shape == module._packed_shape:
            param = restored[key]
        else:
            param = nn.Parameter(module.packed_weight.decode(module.compute_dtype).to(data.device),
                                 requires_grad=requires_grad)
            restored[key] = param
        for k in module._packed_keys():
            del module._buffers[k]
        for attr in ("_packed_format", "_packed_shape", "_packed_dtype", "_packed_axis", "_packed_group_size", "_packed_params",
                     "_packed_decoded", "_packed_table", "_packed_prior", "cache", "compute_dtype"):
            module.__dict__.pop(attr, None)
        module.__class__ = prior_cls
        module.register_parameter("weight", param)
        if roles is not None:
            module.lowbit_roles = roles  # type: ignore[assignment]
            module._lowbit_weight_cache = None  # type: ignore[assignment]
        else:
            for attr in ("lowbit_roles", "lowbit_accumulate"):
                module.__dict__.pop(attr, None)
    return model


# ------------------------------------------------------------------------------ state and memory
def packed_state_dict(model: nn.Module) -> "collections.OrderedDict[str, Any]":
    """``model.state_dict()`` with each packed layer's buffers folded back into one
    ``"<layer>.weight": PackedTensor`` entry (what `lowbit.save` stores and `lowbit.load_packed`
    gives back)."""
    packed = {name: m for name, m in model.named_modules() if isinstance(m, PackedLayerMixin)}
    out: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
    for key, value in model.state_dict().items():
        owner, _, local = key.rpartition(".")
        if owner in packed:
            layer = packed[owner]
            wkey = f"{owner}.weight" if owner else "weight"
            if wkey not in out:
                out[wkey] = layer.packed_weight
            if local == "_extra_state" or local in layer._packed_keys():
                continue
        out[key] = value
    return out


def memory_footprint(model: nn.Module) -> "dict[str, int]":
    """Resident bytes of a model's tensors, each storage counted once.

    ``packed``: packed weights (codes + side parameters + scales); ``cache``: decoded weights
    held by packed layers' caches; ``float``: every other parameter and buffer (float weights,
    biases, norms); ``total``: their sum.
    """
    seen: set[tuple[int, int]] = set()

    def size(t: torch.Tensor) -> int:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() == 0 or key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    packed = cache = other = 0
    for module in model.modules():
        if isinstance(module, PackedLayerMixin):
            packed += sum(size(module._buffers[k]) for k in module._packed_keys())
            if module._packed_decoded is not None:
                cache += size(module._packed_decoded)
            keys = set(module._packed_keys())
            tensors: Iterator[torch.Tensor] = (b for k, b in module._buffers.items() if b is not None and k not in keys)
        else:
            tensors = (b for b in module._buffers.values() if b is not None)
        other += sum(size(t) for t in tensors)
        other += sum(size(p) for p in module._parameters.values() if p is not None)
    return {"packed": packed, "cache": cache, "float": other, "total": packed + cache + other}
