"""PackedTensor: a tensor held as packed n-bit codes of a format, plus what decoding needs.

A PackedTensor is what a lowbit checkpoint stores per quantized tensor: the codes packed
``format.bits`` bits each (`lowbit.storage.bitpack`, bit order ``lsb_first``), the tensor's shape,
the side parameters a data-dependent or block format fitted (`EncodedTensor.params`: MX shared
exponents, codebook levels, ...) and, optionally, a float32 ``scale`` broadcastable to the shape
(per tensor or per channel along ``axis``) — or, with ``group_size`` g, one scale per group of g
contiguous elements along ``axis``: the scale then broadcasts to the shape with that axis shrunk
to ``shape[axis] // g`` and is stored that small (4 bytes per group, not per element).

Values, exactly:

- without a scale, ``decode(dtype)`` equals ``format.quantize(x)`` for ``x`` of that dtype, bit for
  bit;
- with a scale, the value is ``format.quantize(xs / scale) * scale`` computed in the scale's dtype:
  float32 (``xs = x.to(torch.float32)``), or float64 for a float64 scale tensor (what a float64
  tensor's ``scaling="absmax"`` scales are, so nothing of it passes through float32); then cast to
  ``dtype`` with torch's cast.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import torch

from lowbit.formats._float64 import check_float_dtype, check_float_tensor, round_float64_to
from lowbit.formats.base import MAX_TABLE_BITS, EncodedTensor, NumberFormat, ScalarFormat
from lowbit.formats.spec import parse_format
from lowbit.storage.bitpack import pack_bits, packed_nbytes, unpack_bits

__all__ = ["PackedTensor", "multiply_by_scale", "divide_by_scale", "pack_for_role"]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class PackedTensor:
    """Packed n-bit codes of ``format`` with their shape, side parameters and optional scale.

    ``dtype`` is the dtype of the tensor it was made from (what ``decode()`` returns by default).

    Build one with `PackedTensor.from_tensor`; ``decode()`` gives the values back.

    >>> import torch
    >>> p = PackedTensor.from_tensor(torch.tensor([0.3, 100.0, -1.0, 0.0]), "posit8_es2")
    >>> p.decode().tolist(), p.nbytes
    ([0.3125, 96.0, -1.0, 0.0], 4)
    >>> PackedTensor.from_tensor(torch.ones(1000), "e2m1fn").nbytes   # 4 bits per value
    500
    """

    data: torch.Tensor
    format: NumberFormat
    shape: torch.Size
    params: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    scale: "torch.Tensor | None" = None
    axis: "int | None" = None
    dtype: torch.dtype = torch.float32
    group_size: "int | None" = None

    def __post_init__(self) -> None:
        fmt = parse_format(self.format)
        object.__setattr__(self, "format", fmt)
        if isinstance(self.shape, int) or not all(isinstance(d, int) and d >= 0 for d in self.shape):
            raise ValueError(f"shape must be a sequence of non-negative ints, got {self.shape!r}")
        shape = torch.Size(self.shape)
        object.__setattr__(self, "shape", shape)
        data = self.data
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
            got = f"{data.dtype} tensor of shape {tuple(data.shape)}" if isinstance(data, torch.Tensor) else data
            raise ValueError(f"data must be a 1-D torch.uint8 tensor of packed codes, got {got}")
        expected = packed_nbytes(shape.numel(), fmt.bits)
        if data.numel() != expected:
            raise ValueError(
                f"data must hold ceil(numel * bits / 8) = {expected} bytes for shape {tuple(shape)} in {fmt} "
                f"({fmt.bits} bits); got {data.numel()}"
            )
        params = dict(self.params)
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise TypeError(f"params must map str names to tensors; got {key!r}: {type(value).__name__}")
        object.__setattr__(self, "params", params)
        scale, axis = _check_scale(self.scale, self.axis, shape, group_size=self.group_size)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "axis", axis)
        check_float_dtype(self.dtype, "dtype")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tensor(
        cls,
        x: torch.Tensor,
        fmt: "str | NumberFormat",
        rounding: str = "nearest_even",
        scale: "torch.Tensor | float | None" = None,
        axis: "int | None" = None,
        generator: "torch.Generator | None" = None,
        group_size: "int | None" = None,
    ) -> "PackedTensor":
        """Quantize ``x`` to ``fmt`` and pack the codes.

        ``scale`` (optional): a positive finite float or float32 tensor broadcastable to
        ``x.shape`` (e.g. shape ``(out_channels, 1)`` for per-row scales); ``x / scale`` is
        what gets quantized (see the module docstring). ``axis`` names the dimension the scale
        varies along (inferred when the scale varies along exactly one). ``group_size`` g: one
        scale per g contiguous elements along ``axis`` (scale shape: the tensor's, with ``axis``
        shrunk to ``shape[axis] // g``).

        >>> import torch
        >>> w = torch.tensor([[1.0, 3.0], [10.0, 30.0]])
        >>> p = PackedTensor.from_tensor(w, "int4", scale=torch.tensor([[0.5], [5.0]]))
        >>> p.decode().tolist(), p.axis
        ([[1.0, 3.0], [10.0, 30.0]], 0)
        >>> g = PackedTensor.from_tensor(torch.arange(8.0).reshape(1, 8), "int4", scale=torch.tensor([[1.0, 2.0]]),
        ...                              axis=1, group_size=4)
        >>> g.decode().tolist(), g.nbytes                 # 4 bytes of codes + 2 float32 scales
        ([[0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 6.0, 8.0]], 12)
        """
        fmt = parse_format(fmt)
        x = check_float_tensor(x)
        scale_t, axis = _check_scale(scale, axis, x.shape, device=x.device, group_size=group_size)
        y = x.detach() if scale_t is None else divide_by_scale(x.detach().to(scale_t.dtype), scale_t, axis, group_size)
        enc = fmt.encode_tensor(y, rounding, generator)
        if tuple(enc.codes.shape) != tuple(x.shape):
            raise ValueError(f"{fmt}.encode_tensor returned codes of shape {tuple(enc.codes.shape)} for {tuple(x.shape)}")
        params = {k: v.detach() for k, v in fmt.storage_params(enc.params).items()}  # MX scales: E8M0 bytes
        return cls(pack_bits(enc.codes, fmt.bits), fmt, x.shape, params, scale_t, axis, x.dtype, group_size)

    @classmethod
    def from_encoded(cls, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> "PackedTensor":
        """Pack an `EncodedTensor` as it is (e.g. a fitted format's `encode_channels`).

        >>> import torch
        >>> fmt = parse_format("ternary")
        >>> p = PackedTensor.from_encoded(fmt.encode_channels(torch.tensor([[1.0, -2.0], [0.1, 0.0]])))
        >>> p.decode().tolist()
        [[0.0, -2.0], [0.10000000149011612, 0.0]]
        """
        fmt = encoded.format
        codes = encoded.codes
        params = {k: v.detach() for k, v in fmt.storage_params(encoded.params).items()}
        return cls(pack_bits(codes, fmt.bits), fmt, codes.shape, params, None, None, check_float_dtype(dtype))

    # ------------------------------------------------------------------ reading
    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        return self.shape.numel()

    @property
    def bits(self) -> int:
        """Bits per packed code (``format.bits``)."""
        return self.format.bits

    @property
    def nbytes(self) -> int:
        """Bytes actually held: packed codes + side parameters + scale."""
        total = self.data.numel() + sum(p.numel() * p.element_size() for p in self.params.values())
        return total + (0 if self.scale is None else self.scale.numel() * self.scale.element_size())

    def codes(self) -> torch.Tensor:
        """The unpacked codes, shaped like the tensor (dtype as ``format.encode`` returns)."""
        return unpack_bits(self.data, self.bits, self.numel).reshape(self.shape)

    def encoded(self) -> EncodedTensor:
        """The codes and side parameters as an `EncodedTensor` (scale not applied)."""
        return EncodedTensor(self.format, self.codes(), self.format.params_from_storage(self.params))

    def decode(self, dtype: "torch.dtype | None" = None) -> torch.Tensor:
        """The values, as a ``dtype`` tensor of ``shape`` (see the module docstring).

        ``dtype`` defaults to ``self.dtype``, the dtype of the tensor it was made from.

        Scalar formats of at most 16 bits decode through a cached table of every code's value;
        other formats through ``format.decode_tensor``.
        """
        dtype = check_float_dtype(self.dtype if dtype is None else dtype)
        value_dtype = dtype if self.scale is None else self.scale.dtype
        codes = self.codes()
        fmt = self.format
        if isinstance(fmt, ScalarFormat) and fmt.bits <= MAX_TABLE_BITS:
            table = _value_table(fmt, value_dtype).to(codes.device)
            index = codes.reshape(-1).to(torch.int32)
            values = torch.index_select(table, 0, index).reshape(self.shape)
        else:
            values = fmt.decode_tensor(EncodedTensor(fmt, codes, fmt.params_from_storage(self.params)), value_dtype)
        if self.scale is None:
            return values
        return multiply_by_scale(values, self.scale.to(values.device), self.axis, self.group_size).to(dtype)

    def __repr__(self) -> str:
        extra = "" if self.scale is None else f", scale={tuple(self.scale.shape)}, axis={self.axis}"
        if self.group_size is not None:
            extra += f", group_size={self.group_size}"
        return f"PackedTensor({self.format}, shape={tuple(self.shape)}, nbytes={self.nbytes}{extra})"


@functools.lru_cache(maxsize=32)
def _value_table(fmt: ScalarFormat, dtype: torch.dtype) -> torch.Tensor:
    """Every code's value in ``dtype`` (NaN for codes the format does not use), computed once.

    Rounded from the float64 table exactly as ``fmt.decode`` rounds, so a table lookup gives the
    same bits as ``fmt.decode`` and ``fmt.quantize``.
    """
    return round_float64_to(fmt._table, dtype)


def _grouped_view(t: torch.Tensor, axis: int, group_size: int) -> "tuple[int, ...]":
    """``t``'s shape with ``axis`` split into (groups, group_size)."""
    shape = tuple(t.shape)
    return shape[:axis] + (shape[axis] // group_size, group_size) + shape[axis + 1:]


def _grouped_scale(scale: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A compact group scale as ``ndim`` + 1 dims, broadcastable to the grouped view."""
    s = scale.reshape((1,) * (ndim - scale.dim()) + tuple(scale.shape))
    return s.unsqueeze(axis + 1)


def multiply_by_scale(values: torch.Tensor, scale: torch.Tensor, axis: "int | None",
                      group_size: "int | None") -> torch.Tensor:
    """``values · scale`` for a broadcastable scale, or a per-group one (no expanded copy is made)."""
    if group_size is None or values.dim() == 0:
        return values * scale
    assert axis is not None
    grouped = values.reshape(_grouped_view(values, axis, group_size))
    return (grouped * _grouped_scale(scale, values.dim(), axis)).reshape(values.shape)


def divide_by_scale(x: torch.Tensor, scale: torch.Tensor, axis: "int | None", group_size: "int | None") -> torch.Tensor:
    """``x / scale``, the inverse of `multiply_by_scale`'s broadcasting."""
    if group_size is None or x.dim() == 0:
        return x / scale
    assert axis is not None
    grouped = x.reshape(_grouped_view(x, axis, group_size))
    return (grouped / _grouped_scale(scale, x.dim(), axis)).reshape(x.shape)


def _check_scale(
    scale: object, axis: object, shape: torch.Size, device: "torch.device | None" = None,
    group_size: object = None,
) -> "tuple[torch.Tensor | None, int | None]":
    if scale is None:
        if axis is not None:
            raise ValueError(f"axis={axis!r} needs a scale (axis names the dimension the scale varies along)")
        if group_size is not None:
            raise ValueError(f"group_size={group_size!r} needs a scale (one per group)")
        return None, None
    if isinstance(scale, torch.Tensor):
        if scale.dtype.is_complex or not (scale.dtype.is_floating_point or scale.dtype in _INT_DTYPES):
            raise TypeError(f"scale must be a real tensor or float, got {scale.dtype}")
        s = scale.detach().to(dtype=torch.float64 if scale.dtype == torch.float64 else torch.float32,
                              device=device if device is not None else scale.device, copy=True)
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        s = torch.tensor(float(scale), dtype=torch.float32, device=device)
    else:
        raise TypeError(f"scale must be a positive float or a float32 tensor broadcastable to the shape, got {scale!r}")
    ndim = len(shape)
    target = shape
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size={group_size!r}; allowed: None or an int >= 1")
        if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
            raise ValueError(f"group_size needs the grouped axis: an int in [{-ndim}, {ndim}), got axis={axis!r}")
        axis %= ndim
        if shape[axis] % group_size:
            raise ValueError(f"group_size={group_size} does not divide the size {shape[axis]} of axis {axis}")
        target = torch.Size(shape[:axis] + (shape[axis] // group_size,) + shape[axis + 1:])
    try:
        broadcast = torch.broadcast_shapes(s.shape, target)
    except RuntimeError:
        broadcast = None
    if broadcast != target:
        what = "the tensor's shape" if group_size is None else f"the grouped shape (axis {axis} / {group_size})"
        raise ValueError(f"scale of shape {tuple(s.shape)} must be broadcastable to {what} {tuple(target)}")
    if s.numel() and not bool(((s > 0) & torch.isfinite(s)).all()):
        raise ValueError("scale must be positive and finite everywhere")
    if group_size is not None:
        return s.contiguous(), axis
    varying = [ndim - s.dim() + i for i, d in enumerate(s.shape) if d != 1]
    if axis is None:
        axis = varying[0] if len(varying) == 1 else None
    else:
        if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < max(ndim, 1):
            raise ValueError(f"axis must be an int in [{-ndim}, {ndim}) for a {ndim}-d tensor, got {axis!r}")
        axis %= max(ndim, 1)
        if any(v != axis for v in varying):
            raise ValueError(f"scale of shape {tuple(s.shape)} varies along dims {varying}, not only along axis={axis}")
    return s.contiguous(), axis


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _absmax_scale_args(role: object, t: torch.Tensor) -> "dict[str, object]":
    """``scale`` / ``axis`` / ``group_size`` keywords of `PackedTensor.from_tensor` for a tensor
    that a role quantizer (``scaling='absmax'``) simulates as scale · fmt.quantize(t / scale).

    Per-group scales stay one per group. A zero scale (an all-zero granule) becomes 1, which
    quantizes that granule to the same zeros.
    """
    scale = role.scale(t)  # type: ignore[attr-defined]
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # float64 for a float64 tensor, else float32
    gran = role.granularity  # type: ignore[attr-defined]
    if gran is not None and gran.kind == "group":
        return {"scale": scale, "axis": gran.axis % t.dim(), "group_size": gran.group_size}
    return {"scale": scale}


def pack_for_role(role: object, t: torch.Tensor) -> "PackedTensor | None":
    """``t`` packed exactly as a role quantizer simulates it, when that needs more than a format:
    float scales (``scaling='absmax'``, per tensor / channel / group) or levels fitted per channel
    or group (binary / ternary / codebook with a channel or group granularity). None for plain formats.
    """
    fmt = role.format  # type: ignore[attr-defined]
    rounding, generator = role.rounding, role.generator  # type: ignore[attr-defined]
    if getattr(role, "absmax", False):
        return PackedTensor.from_tensor(t.detach(), fmt, rounding, generator=generator,
                                        **_absmax_scale_args(role, t.detach()))  # type: ignore[arg-type]
    if getattr(role, "per_channel_fit", False):
        return PackedTensor.from_encoded(
            fmt.encode_channels(t.detach(), rounding, generator, **role.fit_granules), t.dtype)  # type: ignore[attr-defined]
    return None
