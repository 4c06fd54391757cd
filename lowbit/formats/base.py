"""The NumberFormat interface shared by every lowbit format.

A format is a frozen, hashable value object whose facts (bits, max, min_positive, value table)
are computed from its parameters. Scalar element formats (posit, minifloat, fixed point,
integer) map every element independently to a bit pattern ("code") and back; they implement
two float64/int64 primitives and inherit everything else from `ScalarFormat`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Any, Mapping

import torch

from lowbit.formats._float64 import check_float_dtype, check_float_tensor, round_float64_to
from lowbit.formats.rounding import Rounding, check_rounding, draw_seed, uniform_stream

__all__ = ["NumberFormat", "ScalarFormat", "code_dtype_for"]

MAX_TABLE_BITS = 16
#: Elements the reference path converts to float64 at a time: its temporaries stay a few tens of
#: MB however large the tensor, so it needs little more than the output's own memory.
REFERENCE_CHUNK = 1 << 18

# Fast paths are installed from above (lowbit.kernels) so that this layer imports nothing of
# them. The accelerator's encode/quantize/decode return None when they do not apply.
_accelerator: Any = None


def install_accelerator(accelerator: Any) -> None:
    """Register the module whose encode/quantize/decode functions are tried before the reference."""
    global _accelerator
    _accelerator = accelerator


def code_dtype_for(bits: int) -> torch.dtype:
    """Smallest torch integer dtype that holds every code in [0, 2**bits)."""
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    if bits <= 31:
        return torch.int32
    return torch.int64


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedTensor:
    """A tensor held in a format: integer codes plus the side parameters needed to decode them.

    ``codes`` has the tensor's shape and values in ``[0, 2**format.bits)``. ``params`` maps names
    to tensors a data-dependent or block format fitted to the data (MX: one shared exponent per
    block; codebook: the levels; binary/ternary: the scale); it is empty for scalar formats.
    ``format.decode_tensor(enc)`` gives back ``format.quantize(x)`` bit for bit.
    """

    format: "NumberFormat"
    codes: torch.Tensor
    params: "dict[str, torch.Tensor]" = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def decode(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values, as ``dtype``: ``self.format.decode_tensor(self, dtype)``."""
        return self.format.decode_tensor(self, dtype)


class NumberFormat(abc.ABC):
    """A number format: something that can quantize a tensor.

    Subclasses are frozen dataclasses; ``str(fmt)`` is the canonical spec string and
    ``lowbit.parse_format(str(fmt)) == fmt``. Every format has ``bits`` (storage bits per element
    code) and the tensor-level codec ``encode_tensor`` / ``decode_tensor`` that storage uses.
    """

    family: str = ""
    #: True when quantize() fits levels or scales to the tensor (binary, ternary, codebook, MX).
    data_dependent: bool = False

    @property
    @abc.abstractmethod
    def bits(self) -> int:
        """Storage bits per element code."""

    def encode_tensor(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> EncodedTensor:
        """``x`` as codes plus fitted side parameters (see `EncodedTensor`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode_tensor")

    def decode_tensor(self, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values of an `EncodedTensor` made by this format's ``encode_tensor``."""
        raise NotImplementedError(f"{type(self).__name__} must implement decode_tensor")

    @abc.abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return f"parse_format({str(self)!r})"

    @property
    def spec(self) -> str:
        """The canonical spec string (same as ``str(fmt)``)."""
        return str(self)

    def quantize(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        out: "torch.Tensor | None" = None,
    ) -> torch.Tensor:
        """Round ``x`` to this format; the result has x's dtype, shape and device.

        ``decode_tensor(encode_tensor(x, rounding, generator), x.dtype)``; ``out=`` takes a
        preallocated tensor like ``x`` (``x`` itself for in place).
        """
        x = check_float_tensor(x)
        if out is not None:
            _check_out(out, x)
        fast = self._fast_quantize(x, rounding, generator, out)
        if fast is not None:
            return fast
        result = self.decode_tensor(self.encode_tensor(x, rounding, generator), x.dtype)
        if out is None:
            return result
        out.copy_(result)
        return out

    def _fast_quantize(
        self, x: torch.Tensor, rounding: "str | Rounding", generator: "torch.Generator | None",
        out: "torch.Tensor | None"
    ) -> "torch.Tensor | None":
        """A fused kernel's ``quantize`` (``x`` and ``out`` already checked), or None to run the
        reference ``decode_tensor(encode_tensor(x))``. Formats with a fast path override this."""
        return None

    def card(self) -> "dict[str, Any]":
        """Facts about this format (see ``lowbit info``)."""
        from lowbit.formats.card import format_card

        return format_card(self)

    def storage_params(self, params: "Mapping[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """``EncodedTensor.params`` in their compact stored form (identity unless a format packs them)."""
        return dict(params)

    def params_from_storage(self, stored: "Mapping[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """Inverse of `storage_params`: the ``params`` that ``decode_tensor`` reads."""
        return dict(stored)


class ScalarFormat(NumberFormat):
    """A format whose elements are encoded independently as ``bits``-bit codes.

    Subclasses implement ``_encode64`` (float64 -> int64 codes) and ``_decode64``
    (int64 codes -> float64 values) on flat tensors, plus ``bits``, ``max`` and
    ``min_positive``; encode/decode/quantize/values are shared.
    """

    @property
    @abc.abstractmethod
    def max(self) -> float:
        """Largest finite value."""

    @property
    @abc.abstractmethod
    def min_positive(self) -> float:
        """Smallest positive value."""

    @property
    def code_dtype(self) -> torch.dtype:
        """The integer dtype ``encode`` returns (smallest that holds [0, 2**bits))."""
        return code_dtype_for(self.bits)

    @abc.abstractmethod
    def _encode64(self, x: torch.Tensor, mode: Rounding, u: "torch.Tensor | None" = None) -> torch.Tensor:
        """Flat float64 tensor -> int64 codes (the reference implementation).

        ``u``: for stochastic rounding, one uniform per element (see `uniform_stream`).
        """

    @abc.abstractmethod
    def _decode64(self, codes: torch.Tensor) -> torch.Tensor:
        """Valid int64 codes -> float64 values (NaN for NaN/NaR codes)."""

    def _invalid_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Mask of codes in [0, 2**bits) that this format does not use (e.g. int8n's -128)."""
        return torch.zeros_like(codes, dtype=torch.bool)

    # ----------------------------------------------------------------- public operations
    def encode(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        *,
        backend: "str | None" = None,
    ) -> torch.Tensor:
        """Round ``x`` to this format and return the bit patterns.

        Returns an integer tensor (``self.code_dtype``) of the same shape and device as ``x``,
        with values in ``[0, 2**bits)``. ``backend`` picks the implementation ("auto",
        "reference", "numba"; default: `lowbit.kernels.get_backend()`); all give the same bits.
        """
        x = check_float_tensor(x)
        mode = check_rounding(rounding, generator)
        if _accelerator is not None:
            fast = _accelerator.encode(self, x, mode, generator, backend)
            if fast is not None:
                return fast
        flat = x.detach().reshape(-1)
        codes = torch.empty(flat.shape, dtype=self.code_dtype, device=x.device)
        seed = _seed(mode, generator)
        for start, stop in _chunks(flat.numel()):
            part = flat[start:stop].to(torch.float64)
            codes[start:stop] = self._encode64(part, mode, _uniforms(mode, seed, start, part))
        return codes.reshape(x.shape)

    def decode(
        self, codes: torch.Tensor, dtype: torch.dtype = torch.float32, *, backend: "str | None" = None
    ) -> torch.Tensor:
        """Values of bit patterns ``codes`` (any integer dtype), as a ``dtype`` tensor.

        NaN/NaR codes decode to NaN. Codes outside ``[0, 2**bits)`` raise ValueError.
        """
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be an integer torch.Tensor, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
        dtype = check_float_dtype(dtype)
        if _accelerator is not None:
            fast = _accelerator.decode(self, codes, dtype, backend)
            if fast is not None:
                return fast
        flat = codes.detach().reshape(-1)
        values = torch.empty(flat.shape, dtype=dtype, device=codes.device)
        for start, stop in _chunks(flat.numel()):
            part = flat[start:stop].to(torch.int64)
            bad = (part < 0) | (part >= (1 << self.bits)) | self._invalid_codes(part)
            if not part.is_meta and bool(bad.any()):
                example = int(part[bad][0])
                raise ValueError(
                    f"codes must be valid {self.bits}-bit patterns of {self} "
                    f"(integers in [0, {(1 << self.bits) - 1}]{self._invalid_note()}); got {example}"
                )
            values[start:stop] = round_float64_to(self._decode64(part), dtype)
        return values.reshape(codes.shape)

    def _invalid_note(self) -> str:
        return ""

    def encode_tensor(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> EncodedTensor:
        """The codes of ``x`` (no side parameters: every code decodes on its own)."""
        return EncodedTensor(self, self.encode(x, rounding, generator))

    def decode_tensor(self, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``decode(encoded.codes, dtype)``."""
        return self.decode(encoded.codes, dtype)

    def quantize(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        out: "torch.Tensor | None" = None,
        *,
        backend: "str | None" = None,
    ) -> torch.Tensor:
        """Round ``x`` to the nearest representable value (per ``rounding``), in x's dtype.

        Equals ``decode(encode(x), x.dtype)``. ``out=`` takes a preallocated tensor like
        ``x`` (``x`` itself for in-place).

        >>> import torch, lowbit as lb
        >>> lb.parse_format("posit8_es2").quantize(torch.tensor([0.3, 100.0])).tolist()
        [0.3125, 96.0]
        """
        x = check_float_tensor(x)
        mode = check_rounding(rounding, generator)
        if out is not None:
            _check_out(out, x)
        if _accelerator is not None:
            fast = _accelerator.quantize(self, x, mode, generator, out, backend)
            if fast is not None:
                return fast
        return self._quantize_reference(x, mode, generator, out)

    def _quantize_reference(
        self, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None", out: "torch.Tensor | None"
    ) -> torch.Tensor:
        """The torch path (any device), `REFERENCE_CHUNK` elements at a time, into the output.

        Writes straight into ``out`` when it is contiguous and either is x's own memory or does
        not overlap it; otherwise into a new tensor, copied into ``out`` at the end.
        """
        flat = x.detach().reshape(-1)
        direct = out is not None and out.is_contiguous() and (out.data_ptr() == x.data_ptr() or not _overlap(out, x))
        result = out.detach() if direct else torch.empty(x.shape, dtype=x.dtype, device=x.device)  # type: ignore[union-attr]
        target = result.reshape(-1)
        seed = _seed(mode, generator)
        for start, stop in _chunks(flat.numel()):
            part = flat[start:stop].to(torch.float64)
            values = self._decode64(self._encode64(part, mode, _uniforms(mode, seed, start, part)))
            target[start:stop] = round_float64_to(values, x.dtype)
        if out is None:
            return result
        if not direct:
            with torch.no_grad():
                out.copy_(result)
        return out

    def values(self) -> torch.Tensor:
        """All distinct finite values, sorted ascending, as float64 (formats of ≤ 16 bits).

        -0 and +0 count as one value.
        """
        return self._value_table().clone()

    @functools.cached_property
    def _table(self) -> torch.Tensor:
        """float64 value of every code 0..2**bits-1 (NaN where a code is NaN/invalid)."""
        if self.bits > MAX_TABLE_BITS:
            raise ValueError(f"values() needs a format of at most {MAX_TABLE_BITS} bits; {self} has {self.bits}")
        codes = torch.arange(1 << self.bits, dtype=torch.int64)
        v = self._decode64(codes)
        return torch.where(self._invalid_codes(codes), torch.full_like(v, float("nan")), v)

    def _value_table(self) -> torch.Tensor:
        v = self._table
        v = v[torch.isfinite(v)]
        return torch.unique(v + 0.0)  # +0.0 folds -0 into 0; unique sorts


def _check_out(out: object, x: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor like x, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must match x in shape, dtype and device: x is {tuple(x.shape)} {x.dtype} {x.device}, "
            f"out is {tuple(out.shape)} {out.dtype} {out.device}"
        )
    if out.requires_grad and torch.is_grad_enabled():  # torch's rule for out= arguments
        raise ValueError(
            "out must not require grad while autograd records (quantize(out=) is not differentiable): "
            "call it under torch.no_grad(), or pass out=None and use the returned tensor"
        )


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory a and b span (first to last element) intersects."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.is_meta or b.is_meta:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        low = t.data_ptr() + t.element_size() * sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if s < 0)
        high = t.data_ptr() + t.element_size() * (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if s > 0))
        return low, high

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _chunks(n: int) -> "list[tuple[int, int]]":
    """[start, stop) ranges of at most `REFERENCE_CHUNK` elements covering 0..n (one if n == 0)."""
    return [(start, min(start + REFERENCE_CHUNK, n)) for start in range(0, max(n, 1), REFERENCE_CHUNK)]


def _seed(mode: Rounding, generator: "torch.Generator | None") -> int:
    """The stochastic-rounding seed of one call (drawn once, so chunks continue one stream)."""
    return draw_seed(generator) if mode is Rounding.STOCHASTIC else 0


def _uniforms(mode: Rounding, seed: int, start: int, part: torch.Tensor) -> "torch.Tensor | None":
    if mode is not Rounding.STOCHASTIC:
        return None
    return uniform_stream(seed, start, part.numel(), part.device)
