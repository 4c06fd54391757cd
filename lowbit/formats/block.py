"""Block formats: OCP MX v1.0 (``mxfp8_e4m3fn`` … ``mxint8``) and block floating point (``bfp8_b16``).

A block format cuts the **last axis** of a tensor into blocks of ``block_size`` elements (the last
block of a row is shorter when the axis length is not a multiple of the block size: it is treated
as if padded with zeros, which change no block maximum). Every block shares one power-of-two scale
2^s; each element is stored as a code of a small element format and means ``element × 2^s``.
Other rows than the last axis: a `BlockLayout` (spec suffix ``_r``: a conv weight's output-channel
reductions, ``_rt<g>``: a transposed conv's; `lowbit.formats.block_layout`; `quantize_` resolves
``_r`` per layer), or ``axis`` (``_a<axis>``, `PowerOfTwoBlocks` and `ScaledBlockFormat`).

OCP MX v1.0 (section 6.3), as in the spec's reference code (microsoft/microxcaling) and gfloat:

- ``s = floor(log2(amax)) − emax_elem``, amax the block's largest magnitude and emax_elem the
  exponent of the element format's largest normal (e4m3fn 8, e5m2 15, e3m2fn 4, e2m3fn 2,
  e2m1fn 2, int8 0); s is clamped into E8M0's range [−127, 127] (float32 inputs never reach the
  top; a float64 block beyond it saturates its elements).
- elements: ``x / 2^s`` rounded to the element format (nearest even by default) and **clamped** to
  the element max, also for e5m2 which has an infinity.
- an all-zero block gets s = −127 (the E8M0 minimum, as gfloat; microxcaling arrives at the same
  value), its elements are zeros.
- a block holding a NaN or ±inf gets the E8M0 NaN scale (code 0xFF, stored as s = 128): the whole
  block decodes to NaN, as the spec says for a NaN scale; its element codes are 0.
- MXINT8 elements are 8-bit two's complement with an implicit scale 2^-6 (values k/64). Encoding
  clamps to the symmetric range k ∈ [−127, 127] (as microxcaling's max_norm 1 63/64); the code
  0x80 is never produced but decodes to −2, its value in the spec.

Block floating point ``bfp<bits>_b<k>`` (QPyTorch's ``block_quantize``): the shared exponent is
``e = floor(log2(amax))`` — any float64 exponent, no clamping — and elements are signed
``bits``-bit integers of step 2^(e − bits + 2), saturated to the symmetric range
±(2^(bits−1) − 1) as QPyTorch's clip does. So ``bfp8`` has the grid of ``mxint8``; the
differences are the unclamped exponent, the zero-block exponent (−1074, the smallest float64
exponent) and the 16-bit exponent storage. Differences from QPyTorch, on purpose: ties round to
even, rounded once from the input's precision (QPyTorch adds a float32 offset, which rounds, then
rounds half up); blocks are ``k`` elements along the last axis (QPyTorch shares one exponent over
a whole tensor or along a ``dim``); NaN/inf make a NaN block (QPyTorch yields garbage).

Rounding modes other than nearest even apply to the element rounding (stochastic rounding with a
seeded ``torch.Generator`` included); the scale rule does not depend on the mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import check_float_dtype, check_float_tensor, exponent_of, pow2, round_float64_to
from lowbit.formats.base import EncodedTensor, NumberFormat, ScalarFormat, _check_out, code_dtype_for
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat
from lowbit.formats.block_layout import LAST, BlockLayout, standard_strides
from lowbit.formats.granules import normalize_axis
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import Rounding, check_rounding

__all__ = ["BlockFormat", "MXFormat", "BlockFloatingPoint", "PowerOfTwoBlocks", "MX_ELEMENTS", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 32
MAX_BLOCK_SIZE = 1 << 16
#: OCP MX v1.0 element types and the exponent/mantissa split (None: the int8 element).
MX_ELEMENTS: dict[str, "tuple[int, int, str] | None"] = {
    "e4m3fn": (4, 3, "fn"),
    "e5m2": (5, 2, "ieee"),
    "e3m2fn": (3, 2, "fn"),
    "e2m3fn": (2, 3, "fn"),
    "e2m1fn": (2, 1, "fn"),
    "int8": None,
}
BFP_BITS = (2, 16)
# Values whose exponent after scaling would fall below this are replaced by ±2^_TINY: they lie far
# below every element format's smallest rounding point, so every rounding mode (stochastic with
# its 53-bit uniforms included) decides the same for them, and float64 never underflows.
_TINY = -1000


# The numba fast paths of block formats are installed from above (`lowbit.kernels.blocks`), so this
# layer imports nothing of them; its functions return None where they do not apply.
_block_accelerator: Any = None


def install_block_accelerator(accelerator: Any) -> None:
    """Register the module whose block-format fast paths are tried before the torch reference."""
    global _block_accelerator
    _block_accelerator = accelerator


class BlockFormat(NumberFormat):
    """Shared machinery of block-scaled formats (see the module docstring for the rules).

    Subclasses define the element format (``element_format``, used to decode), the saturating
    codec that rounds (``_encoder``, working on x · 2^(``_encode_shift`` − s)), and the range of
    the shared exponent.
    """

    data_dependent = True
    block_size: int

    # ------------------------------------------------------------------ subclass facts
    @property
    def element_format(self) -> ScalarFormat:
        """The format of one element code (its value, before the block scale)."""
        raise NotImplementedError

    @property
    def _encoder(self) -> ScalarFormat:
        raise NotImplementedError

    _encode_shift: int = 0
    scale_bits: int = 8
    exponent_min: int = -127
    exponent_max: int = 127
    #: scale_exponent value of a block whose scale is NaN (holds a NaN or ±inf).
    nan_exponent: int = 128
    zero_block_exponent: int = -127

    # ------------------------------------------------------------------ facts
    @property
    def bits(self) -> int:
        """Bits per element code (the shared scale comes on top: see `bits_per_element`)."""
        return self.element_format.bits

    @property
    def bits_per_element(self) -> float:
        """Storage per element including the shared scale: bits + scale_bits / block_size."""
        return self.bits + self.scale_bits / self.block_size

    @property
    def code_dtype(self) -> torch.dtype:
        return code_dtype_for(self.bits)

    @functools.cached_property
    def emax(self) -> int:
        """Exponent of the element format's largest normal value: floor(log2(element max))."""
        return math.frexp(self.element_format.max)[1] - 1

    @property
    def element_max(self) -> float:
        """The largest element value elements are clamped to."""
        return self._encoder.max * 2.0**-self._encode_shift

    @property
    def max(self) -> float:
        """Largest finite value any element can hold: element max × 2^exponent_max."""
        return math.ldexp(self.element_max, self.exponent_max)

    @property
    def min_positive(self) -> float:
        """Smallest positive value any element can hold: element min_positive × 2^exponent_min."""
        return math.ldexp(self.element_format.min_positive, self.exponent_min)

    def num_blocks(self, length: int) -> int:
        """Blocks along a last axis of ``length`` elements (the last one may be shorter)."""
        return -(-length // self.block_size)

    def scale_shape(self, shape: "torch.Size | tuple[int, ...]") -> tuple[int, ...]:
        """Shape of ``params["scale_exponent"]`` for a tensor of ``shape`` (a 0-d tensor is one block)."""
        shape = tuple(shape) or (1,)
        return (*shape[:-1], self.num_blocks(shape[-1]))

    def _check_block_size(self) -> None:
        k = self.block_size
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_BLOCK_SIZE:
            raise FormatSpecError(f"block_size={k!r} is out of range; allowed: an int in 1..{MAX_BLOCK_SIZE}")

    # ------------------------------------------------------------------ codec
    def shared_exponents(self, x: torch.Tensor) -> torch.Tensor:
        """The scale exponent s of every block of ``x`` (int64, shape `scale_shape`)."""
        x64 = check_float_tensor(x).detach().to(torch.float64)
        return self._exponents(self._blocked(_rows(x64)))[0]

    def _blocked(self, t: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., n_blocks, block_size), the last block padded with zeros."""
        n, k = t.shape[-1], self.block_size
        nb = self.num_blocks(n)
        if nb * k != n:
            t = F.pad(t, (0, nb * k - n))  # zeros change no maximum
        return t.reshape(*t.shape[:-1], nb, k)

    @staticmethod
    def _unblocked(t: torch.Tensor, n: int) -> torch.Tensor:
        """(..., n_blocks, block_size) -> (..., n), the padding dropped."""
        t = t.reshape(*t.shape[:-2], t.shape[-2] * t.shape[-1])
        return t if t.shape[-1] == n else t[..., :n]

    def _exponents(self, xb: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
        """Scale exponents (int64) and NaN-scale mask of blocked float64 data."""
        amax = xb.abs().amax(dim=-1)  # NaN propagates; ±inf stays inf
        nan_block = ~torch.isfinite(amax)
        positive = amax > 0  # False for NaN
        s = exponent_of(torch.where(positive, amax, torch.ones_like(amax))) - self.emax
        s = torch.where(positive, s, torch.full_like(s, self.zero_block_exponent))
        s = s.clamp(self.exponent_min, self.exponent_max)
        return torch.where(nan_block, torch.full_like(s, self.nan_exponent), s), nan_block

    def encode_tensor(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> EncodedTensor:
        """Element codes (shape of ``x``) and ``params["scale_exponent"]`` (int16, one per block).

        >>> import torch, lowbit as lb
        >>> enc = lb.parse_format("mxfp4_e2m1fn_b4").encode_tensor(torch.tensor([0.3, -1.0, 5.0, 0.0, 7.0]))
        >>> enc.codes.tolist(), enc.params["scale_exponent"].tolist()
        ([1, 10, 6, 0, 7], [0, 0])
        """
        x = check_float_tensor(x)
        mode = check_rounding(rounding, generator)
        fast = None if _block_accelerator is None else _block_accelerator.pow2_block_encode(self, x, mode, generator)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
        rows = _rows(x.detach().to(torch.float64))
        xb = self._blocked(rows)
        s, nan_block = self._exponents(xb)
        if bool(nan_block.any()):  # the whole block is NaN: its element codes are 0
            xb = xb.masked_fill(nan_block.unsqueeze(-1), 0.0)
        shift = torch.where(nan_block, torch.zeros_like(s), self._encode_shift - s)
        # x · 2^shift in two exact steps (2^shift alone may not be a float64 for BFP)
        half = torch.div(shift, 2, rounding_mode="floor")
        y = xb * pow2(half).unsqueeze(-1) * pow2(shift - half).unsqueeze(-1)
        if x.dtype == torch.float64 and bool((shift < 0).any()):
            # only float64 inputs can fall below float64's range when scaled down (see _TINY)
            a = xb.abs()
            nonzero = a > 0
            exp = exponent_of(torch.where(nonzero, a, torch.ones_like(a)))
            tiny = nonzero & (exp + shift.unsqueeze(-1) < _TINY)
            y = torch.where(tiny, torch.copysign(torch.full_like(y, 2.0**_TINY), xb), y)
        codes = self._encoder.encode(self._unblocked(y, rows.shape[-1]), mode, generator)
        return EncodedTensor(self, codes.reshape(x.shape), {"scale_exponent": s.to(torch.int16)})

    def _fast_quantize(
        self, x: torch.Tensor, rounding: "str | Rounding", generator: "torch.Generator | None",
        out: "torch.Tensor | None"
    ) -> "torch.Tensor | None":
        """One fused numba pass for float32 CPU input (bit-identical to the torch reference).

        >>> import torch, lowbit as lb
        >>> lb.parse_format("mxfp4_e2m1fn_b4").quantize(torch.tensor([0.3, -1.0, 5.0, 0.0, 7.0])).tolist()
        [0.5, -1.0, 4.0, 0.0, 6.0]
        """
        if _block_accelerator is None:
            return None
        mode = check_rounding(rounding, generator)
        return _block_accelerator.pow2_block_quantize(self, x, mode, generator, out)  # type: ignore[no-any-return]

    def decode_tensor(self, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values ``element × 2^s`` of an `EncodedTensor` from `encode_tensor`, as ``dtype``."""
        codes, s = _unpack(self, encoded, "scale_exponent")
        dtype = check_float_dtype(dtype)
        want = self.scale_shape(codes.shape)
        if not isinstance(s, torch.Tensor) or s.dtype.is_floating_point or tuple(s.shape) != want:
            got = f"{s.dtype} tensor of shape {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(
                f"params['scale_exponent'] must be an integer tensor of shape {want} for codes of shape "
                f"{tuple(codes.shape)} (one per block of {self.block_size} along the last axis); got {got}"
            )
        s = s.to(torch.int64)
        bad = ((s < self.exponent_min) | (s > self.exponent_max)) & (s != self.nan_exponent)
        if bool(bad.any()):
            raise ValueError(
                f"params['scale_exponent'] of {self} must be in [{self.exponent_min}, {self.exponent_max}] "
                f"or {self.nan_exponent} (NaN scale); got {int(s[bad][0])}"
            )
        rows = _rows(codes)
        elements = self.element_format.decode(self._blocked(rows), torch.float64)  # validates the codes
        factor = pow2(s.clamp(self.exponent_min, self.exponent_max))
        factor = torch.where(s == self.nan_exponent, torch.full_like(factor, float("nan")), factor)
        values = self._unblocked(elements * factor.unsqueeze(-1), rows.shape[-1])
        return round_float64_to(values, dtype).reshape(codes.shape)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with at least one axis (a 0-d tensor is a block of one element)."""
    return t if t.dim() else t.reshape(1)


def _unpack(fmt: NumberFormat, encoded: EncodedTensor, *names: str) -> "tuple[torch.Tensor, ...]":
    """Check an EncodedTensor against ``fmt`` and return its codes and the named params."""
    if not isinstance(encoded, EncodedTensor):
        raise TypeError(f"encoded must be an EncodedTensor, got {type(encoded).__name__}")
    if encoded.format != fmt:
        raise ValueError(f"encoded holds {encoded.format} codes; this format is {fmt}")
    codes = encoded.codes
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype.is_complex:
        raise TypeError("encoded.codes must be an integer torch.Tensor")
    missing = [n for n in names if n not in encoded.params]
    if missing:
        raise ValueError(f"encoded.params lacks {', '.join(map(repr, missing))}, which {fmt} needs to decode")
    return (codes, *(encoded.params[n] for n in names))


class _E8M0Scales:
    """Stores a block format's shared exponents as OCP MX E8M0 bytes (MX and `PowerOfTwoBlocks`)."""

    nan_exponent: int

    def storage_params(self, params: "Mapping[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """The shared scales as 8-bit E8M0 codes, as the OCP MX spec stores them.

        ``scale_e8m0`` (uint8) = scale_exponent + 127; 255 is the NaN scale. A zero block
        (exponent −127) is code 0.

        >>> import torch
        >>> fmt = MXFormat("e4m3fn", block_size=2)
        >>> enc = fmt.encode_tensor(torch.tensor([1.0, 2.0, 0.0, 0.0, float("nan"), 1.0]))
        >>> fmt.storage_params(enc.params)["scale_e8m0"].tolist()
        [120, 0, 255]
        """
        out = dict(params)
        s = out.pop("scale_exponent", None)
        if s is None:
            return out
        s = s.to(torch.int16)
        code = torch.where(s == self.nan_exponent, torch.full_like(s, 255), s + 127)
        if bool(((code < 0) | (code > 255)).any()):
            raise ValueError(f"{self}: scale_exponent outside [-127, {self.nan_exponent}] cannot be stored as E8M0")
        out["scale_e8m0"] = code.to(torch.uint8)
        return out

    def params_from_storage(self, stored: "Mapping[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """``scale_e8m0`` codes back to ``scale_exponent`` (int16); files that stored the exponent itself still read."""
        out = dict(stored)
        code = out.pop("scale_e8m0", None)
        if code is None:
            return out
        if code.dtype != torch.uint8:
            raise ValueError(f"{self}: params['scale_e8m0'] must be uint8 E8M0 codes, got {code.dtype}")
        c = code.to(torch.int16)
        out["scale_exponent"] = torch.where(c == 255, torch.full_like(c, self.nan_exponent), c - 127)
        return out


class _AlongAxis:
    """Blocks along other rows than the last axis: ``axis`` (the tensor moved so that axis is
    last) or a `BlockLayout` (``layout``: a conv weight's reduction rows …). The tensor is turned
    into its rows, handled by the last-axis twin of the format (``axis=-1``, default layout), and
    turned back. Scales keep the rows' layout: shape ``rows.shape[:-1] + (n_blocks,)`` (for
    ``axis``: ``x.movedim(axis, -1).shape[:-1] + (n_blocks,)``)."""

    axis: int = -1
    layout: BlockLayout = LAST

    def _check_axis(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise FormatSpecError(f"axis={self.axis!r} must be an int (the axis the blocks run along; -1 = last)")
        if not isinstance(self.layout, BlockLayout):
            raise FormatSpecError(f"layout={self.layout!r} must be a lowbit.formats.BlockLayout")
        if self.axis != -1 and self.layout != LAST:
            raise FormatSpecError(f"axis={self.axis} and layout {self.layout.kind!r} both place the blocks; "
                                  "give one of them")

    def _axis_for(self, ndim: int) -> int:
        return normalize_axis(self.axis, max(ndim, 1))

    def _moves(self, ndim: int) -> bool:
        if self.layout.moves(ndim):
            return True
        return self.axis != -1 and ndim > 0 and self._axis_for(ndim) != ndim - 1

    def _layout_suffix(self) -> str:
        return str(self.layout) + ("" if self.axis == -1 else f"_a{self.axis}")

    def _last_axis_twin(self) -> "NumberFormat":
        names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        changes = {k: v for k, v in (("axis", -1), ("layout", LAST)) if k in names}
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _rows_shape(self, shape: "tuple[int, ...]") -> "tuple[int, ...]":
        """Shape of the rows the blocks run along, for a tensor of ``shape`` (validates it)."""
        shape = tuple(shape)
        if self.layout.moves(len(shape)):
            return self.layout.rows_shape(shape)
        a = self._axis_for(len(shape))  # validates the axis
        if not self._moves(len(shape)):
            return shape
        return shape[:a] + shape[a + 1:] + (shape[a],)

    def _to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the rows its blocks run along (the last axis of the result)."""
        if self.layout.moves(x.dim()):
            return self.layout.to_rows(x)
        return x.movedim(self._axis_for(x.dim()), -1)

    def _from_rows(self, rows: torch.Tensor, shape: "tuple[int, ...]") -> torch.Tensor:
        """Inverse of `_to_rows` (contiguous)."""
        if self.layout.moves(len(shape)):
            return self.layout.from_rows(rows, shape)
        return standard_strides(rows.movedim(-1, self._axis_for(len(shape))))

    def scale_shape(self, shape: "torch.Size | tuple[int, ...]") -> tuple[int, ...]:
        """Shape of the block scales for a tensor of ``shape`` (blocks along its rows)."""
        shape = tuple(shape)
        rows = self._rows_shape(shape)
        if not self._moves(len(shape)):
            return super().scale_shape(shape)  # type: ignore[misc,no-any-return]
        return self._last_axis_twin().scale_shape(rows)  # type: ignore[attr-defined,no-any-return]

    def encode_tensor(self, x, rounding="nearest_even", generator=None):  # type: ignore[no-untyped-def]
        """As the last-axis format, on the rows of ``x`` (codes keep x's shape)."""
        x = check_float_tensor(x)
        self._rows_shape(tuple(x.shape))
        if not self._moves(x.dim()):
            return super().encode_tensor(x, rounding, generator)  # type: ignore[misc]
        enc = self._last_axis_twin().encode_tensor(self._to_rows(x), rounding, generator)
        return EncodedTensor(self, self._from_rows(enc.codes, tuple(x.shape)), enc.params)  # type: ignore[arg-type]

    def decode_tensor(self, encoded, dtype=torch.float32):  # type: ignore[no-untyped-def]
        """Values of an `EncodedTensor` of this format, as ``dtype``."""
        codes = _unpack(self, encoded)[0]  # type: ignore[arg-type]
        self._rows_shape(tuple(codes.shape))
        if not self._moves(codes.dim()):
            return super().decode_tensor(encoded, dtype)  # type: ignore[misc]
        twin = self._last_axis_twin()
        values = twin.decode_tensor(EncodedTensor(twin, self._to_rows(codes), dict(encoded.params)), dtype)
        return self._from_rows(values, tuple(codes.shape))

    def quantize(self, x, rounding="nearest_even", generator=None, out=None):  # type: ignore[no-untyped-def]
        """As the last-axis format, on the rows of ``x`` (into ``out`` when given)."""
        x = check_float_tensor(x)
        self._rows_shape(tuple(x.shape))
        if not self._moves(x.dim()):
            return super().quantize(x, rounding, generator, out)  # type: ignore[misc]
        if out is not None:
            _check_out(out, x)
        twin = self._last_axis_twin()
        rows = self._to_rows(x)
        if out is not None and self.layout.moves(x.dim()) and self.layout.is_view() and out.is_contiguous():
            twin.quantize(rows, rounding, generator, out=out.view(rows.shape))  # type: ignore[attr-defined]
            return out
        result = self._from_rows(twin.quantize(rows, rounding, generator), tuple(x.shape))  # type: ignore[attr-defined]
        if out is None:
            return result
        out.copy_(result)
        return out

    def shared_exponents(self, x: torch.Tensor) -> torch.Tensor:
        """The scale exponent of every block (blocks along the rows; shape `scale_shape`)."""
        x = check_float_tensor(x)
        self._rows_shape(tuple(x.shape))
        if not self._moves(x.dim()):
            return super().shared_exponents(x)  # type: ignore[misc,no-any-return]
        return self._last_axis_twin().shared_exponents(self._to_rows(x))  # type: ignore[attr-defined,no-any-return]


@dataclasses.dataclass(frozen=True, repr=False)
class MXFormat(_AlongAxis, _E8M0Scales, BlockFormat):
    """An OCP MX v1.0 format: ``element`` codes plus one E8M0 scale per ``block_size`` elements.

    >>> import torch
    >>> fmt = MXFormat("e4m3fn")
    >>> str(fmt), fmt.bits, fmt.bits_per_element, fmt.emax
    ('mxfp8_e4m3fn', 8, 8.25, 8)
    >>> fmt.quantize(torch.tensor([1000.0, 3.3, -0.01])).tolist()  # scale 2^(9-8); 500 clamps to 448
    [896.0, 3.25, -0.01171875]
    >>> str(MXFormat("int8", block_size=16)), MXFormat("int8").element_max
    ('mxint8_b16', 1.984375)
    """

    element: str
    block_size: int = DEFAULT_BLOCK_SIZE
    #: the rows the blocks run along (default: the last axis, as OCP MX; spec suffix ``_r`` / ``_rt<g>``)
    layout: BlockLayout = LAST

    family = "mx"

    def __post_init__(self) -> None:
        if self.element not in MX_ELEMENTS:
            raise FormatSpecError(
                f"MX element={self.element!r} is not an OCP MX v1.0 element type; allowed: {', '.join(MX_ELEMENTS)}"
            )
        self._check_block_size()
        self._check_axis()

    def __str__(self) -> str:
        if self.element == "int8":
            s = "mxint8"
        else:
            s = f"mxfp{self.element_format.bits}_{self.element}"
        return (s if self.block_size == DEFAULT_BLOCK_SIZE else f"{s}_b{self.block_size}") + self._layout_suffix()

    @functools.cached_property
    def element_format(self) -> ScalarFormat:  # type: ignore[override]
        split = MX_ELEMENTS[self.element]
        if split is None:
            return FixedPoint(8, 6)  # MXINT8: two's complement with implicit scale 2^-6
        e, m, policy = split
        return Minifloat(e, m, policy=policy)

    @functools.cached_property
    def _encoder(self) -> ScalarFormat:  # type: ignore[override]
        split = MX_ELEMENTS[self.element]
        if split is None:
            return IntegerFormat(8, narrow=True)  # k in [-127, 127], value k / 64
        e, m, policy = split
        return Minifloat(e, m, policy=policy, saturate=True)

    @property
    def _encode_shift(self) -> int:  # type: ignore[override]
        return 6 if self.element == "int8" else 0


@dataclasses.dataclass(frozen=True, repr=False)
class BlockFloatingPoint(_AlongAxis, BlockFormat):
    """Block floating point: signed ``bits``-bit integer elements, one exponent per block.

    The shared exponent is e = floor(log2(amax)) of the block (unclamped); elements are
    k · 2^(e − bits + 2) with k in ±(2^(bits−1) − 1).

    >>> import torch
    >>> fmt = BlockFloatingPoint(4, block_size=2)
    >>> str(fmt), fmt.bits_per_element
    ('bfp4_b2', 12.0)
    >>> fmt.quantize(torch.tensor([3.0, 0.3, -100.0, 7.0])).tolist()  # steps 2^(1-2), 2^(6-2)
    [3.0, 0.5, -96.0, 0.0]
    """

    element_bits: int
    block_size: int
    #: the rows the blocks run along (default: the last axis; spec suffix ``_r`` / ``_rt<g>``)
    layout: BlockLayout = LAST

    family = "bfp"
    scale_bits = 16
    exponent_min = -1074
    exponent_max = 1023
    nan_exponent = 1024
    zero_block_exponent = -1074

    def __post_init__(self) -> None:
        b = self.element_bits
        lo, hi = BFP_BITS
        if not isinstance(b, int) or isinstance(b, bool) or not lo <= b <= hi:
            raise FormatSpecError(f"block floating point element_bits={b!r} is out of range; allowed: {lo}..{hi}")
        self._check_block_size()
        self._check_axis()

    def __str__(self) -> str:
        return f"bfp{self.element_bits}_b{self.block_size}" + self._layout_suffix()

    @functools.cached_property
    def element_format(self) -> ScalarFormat:  # type: ignore[override]
        return FixedPoint(self.element_bits, self.element_bits - 2)

    @functools.cached_property
    def _encoder(self) -> ScalarFormat:  # type: ignore[override]
        return IntegerFormat(self.element_bits, narrow=True)

    @property
    def _encode_shift(self) -> int:  # type: ignore[override]
        return self.element_bits - 2

    @property
    def min_positive(self) -> float:
        """2^-1074: element steps of the lowest exponents fall below float64, where values are computed."""
        return max(super().min_positive, math.ldexp(1.0, -1074))


@dataclasses.dataclass(frozen=True, repr=False)
class PowerOfTwoBlocks(_AlongAxis, _E8M0Scales, BlockFormat):
    """OCP MX's block rule over any other element format: an E8M0 scale 2^s per block.

    ``s = floor(log2(amax)) − emax_elem`` clamped to [−127, 127] (emax_elem = floor(log2(element
    max))), elements ``x / 2^s`` rounded to ``element`` and clamped to its max (integers: to the
    symmetric range ±(2^(b−1) − 1), as MXINT8 and BFP; fixed point: to its range), a NaN/±inf block
    NaN, a zero block s = −127: the rules of `MXFormat` (see the module docstring), which MX
    element types (e4m3fn, e5m2, e3m2fn, e2m3fn, e2m1fn) use; spelled
    ``block<k>_<element>_scale_e8m0fnu``.

    >>> import torch
    >>> fmt = PowerOfTwoBlocks(IntegerFormat(4), 4)
    >>> str(fmt), fmt.emax, fmt.bits_per_element
    ('block4_int4_scale_e8m0fnu', 2, 6.0)
    >>> fmt.quantize(torch.tensor([1.0, 3.0, -7.5, 0.2])).tolist()   # s = 2 - 2 = 0: integers, clamped to 7
    [1.0, 3.0, -7.0, 0.0]
    """

    element: ScalarFormat
    block_size: int
    #: the axis the blocks run along (-1: the last, as MX)
    axis: int = -1
    #: other rows the blocks run along (a conv weight's reduction: ``_r`` / ``_rt<g>``)
    layout: BlockLayout = LAST

    family = "block"

    def __post_init__(self) -> None:
        el = self.element
        if isinstance(el, Minifloat) and str(el) in MX_ELEMENTS:
            raise FormatSpecError(
                f"{el} elements with an E8M0 scale are the OCP MX format {MXFormat(str(el), self.block_size)} "
                "(MXFormat); write that"
            )
        allowed = (Minifloat, Posit, FixedPoint, IntegerFormat)
        if not isinstance(el, allowed) or el.bits > 16 or not getattr(el, "signed", True):
            raise FormatSpecError(
                f"block element={el!r} is not allowed; allowed: a signed posit, minifloat, fixed-point or "
                "integer format of at most 16 bits"
            )
        self._check_block_size()
        self._check_axis()

    def __str__(self) -> str:
        return f"block{self.block_size}_{self.element}_scale_e8m0fnu" + self._layout_suffix()

    @property
    def element_format(self) -> ScalarFormat:  # type: ignore[override]
        return self.element

    @functools.cached_property
    def _encoder(self) -> ScalarFormat:  # type: ignore[override]
        el = self.element
        if isinstance(el, Minifloat) and el.overflow_policy != "saturate":
            return dataclasses.replace(el, saturate=True)
        if isinstance(el, IntegerFormat):
            return dataclasses.replace(el, narrow=True)  # the symmetric range, as MXINT8 and BFP
        return el
