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
  packed; the bias stays a float parameter (quantized on the fly if it has a bias role). One
  exception, by default: a `PackedLinear` larger than its ``tile_bytes`` runs inference tile by
  tile of output rows (`lowbit.storage.tiled`): the same decoded values, but torch's GEMM may sum
  a tile's dot products in another order, so outputs can differ in the last bits (within the
  float32 summation bound); ``tile_bytes = 0`` restores ``torch.equal``.
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

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats._float64 import FLOAT_DTYPES
from lowbit.formats.base import NumberFormat
from lowbit.formats.block import BlockFormat
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.formats.spec import parse_format
from lowbit.simulate.layers import (
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLayerMixin,
    QuantLinear,
    _QuantConvNd,
)
from lowbit.simulate.registry import entries, register_packed
from lowbit.storage.decode import (
    _DATA,
    _PARAM,
    _SCALE,
    _check_decodable,
    _code_table,
    _decode_block,
    _fast_args,
    _fast_decode,
    _granule_decode,
    _granule_tables,
    _Lut,
    _lut_decode,
    _scaled,
    _stage_plan,
    _staged_plan,
    _staging,
    _tensor_nbytes,
    _wide_table,
)
from lowbit.storage.packed import PackedTensor
from lowbit.storage.tiled import TILE_BYTES, tiled_linear

__all__ = [
    "PackedLayerMixin",
    "PackedLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedEmbedding",
    "PACKED_CLASSES",
]


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
        lut = lut._replace(fast=_fast_args(self, lut, bits, dtype))
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
    """``nn.Linear`` with a packed weight (see the module docstring).

    Without autograd, a weight larger than ``tile_bytes`` (`lowbit.storage.tiled.TILE_BYTES`
    unless set on the layer) is decoded and multiplied a tile of output rows at a time
    (`lowbit.storage.tiled`): the same decoded values, each output one GEMM dot product over the
    whole input, summed in the order torch's GEMM picks for the tile (within float32 summation
    bounds of the simulated output). ``tile_bytes = 0``: one GEMM, ``torch.equal`` to it.
    """

    _float_class = nn.Linear
    tile_bytes: int = TILE_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.tile_bytes and not torch.is_grad_enabled() and self._packed_decoded is None and not self.cache \
                and self.lowbit_accumulate is None:  # (a quire is an accumulation format too)
            x = self._lowbit_q("input", x)
            b = self._lowbit_bias()
            y = tiled_linear(self, x, b)
            if y is None:
                y = F.linear(x, self._lowbit_weight(), b)
            return self._lowbit_finish(y)
        return QuantLinear.forward(self, x)


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
