"""Float-scaled blocks: NVFP4 (``nvfp4``, ``nvfp4_1l``) and the general ``block<k>_<element>_scale_<scale>[_t]``.

The one block rule: the **last axis** is cut into blocks of ``block_size`` values (a shorter last
block when the axis is not a multiple, as if padded with zeros, which change no maximum); each
block has one scale held in a small **scale format**; each value is an **element** code meaning
``element × scale`` — optionally × one FP32 **per-tensor scale** (``_t``, NVFP4's second level).
How the scale is chosen depends on the scale format:

- a power-of-two scale format (``e8m0fnu``) takes OCP MX's rule, 2^(floor(log2 amax) − emax_elem):
  those are `MXFormat` (MX element types) and `PowerOfTwoBlocks` (any other element);
- any other scale format (``e4m3fn`` as NVFP4, a posit, ``e5m2``, ``fp32`` …) takes NVFP4's rule,
  `ScaledBlockFormat`, below.

NVFP4's rule, exactly as torchao's reference (``torchao.prototype.mx_formats.nvfp4_tensor``
``nvfp4_quantize``, 0.18), every step a float32 operation in this order:

1. ``amax`` = the block's largest magnitude; ``bs = amax / E`` (E the element max, 6 for E2M1).
2. one level: ``s = round(clamp(bs, m, M))`` to the scale format (m its smallest normal — 2^-6
   for E4M3, the lower clamp torchao applies — M its max, 448); ``r = 1 / s``.
   two levels: the per-tensor scale ``g = amax_tensor / (M · E)`` (= amax / 2688 for NVFP4);
   ``s = round(clamp(bs / g, m, M))``; ``r = (1 / g) / s``.
3. elements ``round(clamp(x · r, −E, E))`` to the element format (nearest even by default; other
   rounding modes apply here only).

Decoding is ``element · s`` (one level) or ``element · (g · s)`` (two levels), in float32, then
cast to the output dtype with torch's cast (bfloat16 / float16: one rounding from float32).

Inputs torchao does not define, decided here:

- the last axis need not be a multiple of the block size (shorter last block, as MX);
- a block holding NaN or ±inf gets the scale format's NaN code: the whole block decodes to NaN
  (as MX); the per-tensor amax is taken over the finite values. A scale format without a NaN
  code refuses non-finite input (ValueError);
- a tiny tensor: ``g`` is raised to at least g_min = max(2^-126, 2^-127 / m) (2^-121 for NVFP4,
  reached when amax < 2688 · 2^-121 ≈ 1.0e-33) so that ``(1/g)/s`` stays a finite float32 —
  torchao's reciprocal overflows there and gives inf/NaN. An all-zero tensor decodes to zeros;
- float16 inputs are converted to float32 exactly and follow the float32 steps; the result is
  rounded once to float16;
- float64 inputs are never rounded to float32 as a whole: the scales are computed from their
  amax values rounded to float32 (clamped to float32's max), and the product ``x · r`` and the
  element rounding are done in float64.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch
import torch.nn.functional as F

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import check_float_dtype, check_float_tensor
from lowbit.formats import block as _block
from lowbit.formats.base import EncodedTensor, NumberFormat, ScalarFormat
from lowbit.formats.block import MAX_BLOCK_SIZE, _AlongAxis, _rows, _unpack
from lowbit.formats.block_layout import LAST, BlockLayout
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import Rounding, check_rounding

__all__ = ["ScaledBlockFormat", "NVFP4", "NVFP4_1L"]

_FP32_MAX = float(torch.finfo(torch.float32).max)
_FP32_TINY = 2.0**-126  # smallest normal float32
_FP32_SUBNORMAL = 2.0**-149


def _exact_in_float32(fmt: ScalarFormat) -> bool:
    """Every value of ``fmt`` is a float32 (so float32 arithmetic on them is torchao's)."""
    if fmt.max > _FP32_MAX or fmt.min_positive < _FP32_SUBNORMAL:
        return False
    if isinstance(fmt, Minifloat):
        return fmt.man_bits <= 23
    if isinstance(fmt, Posit):
        return fmt.n <= 26
    if isinstance(fmt, (FixedPoint, IntegerFormat)):
        return fmt.word_bits <= 24
    return False


@dataclasses.dataclass(frozen=True, repr=False)
class ScaledBlockFormat(_AlongAxis, NumberFormat):
    """Blocks of ``block_size`` ``element`` codes along the last axis, one ``scale``-format scale each.

    NVFP4's rule (see the module docstring); ``tensor_scale=True`` adds the FP32 per-tensor scale.
    ``nvfp4`` = e2m1fn elements, e4m3fn scales per 16, per-tensor scale; ``nvfp4_1l`` without it.
    ``axis`` (default -1, the last) names the axis the blocks run along (spec suffix ``_a<axis>``).

    >>> import torch, lowbit as lb
    >>> fmt = lb.parse_format("nvfp4_1l")
    >>> str(fmt), fmt.bits, fmt.bits_per_element
    ('nvfp4_1l', 4, 4.5)
    >>> x = torch.tensor([0.0, 1.0, 2.0, 3.5, 6.5, -12.0] + [0.25] * 10)
    >>> fmt.quantize(x)[:6].tolist()   # block scale 12 / 6 = 2
    [0.0, 1.0, 2.0, 4.0, 6.0, -12.0]
    >>> enc = fmt.encode_tensor(x)
    >>> enc.params["scale_codes"].tolist()   # E4M3 code of 2.0
    [64]
    >>> str(lb.parse_format("block32_e2m1fn_scale_posit8_es1_t"))
    'block32_e2m1fn_scale_posit8_es1_t'
    """

    element: ScalarFormat
    scale: ScalarFormat
    block_size: int = 16
    tensor_scale: bool = False
    #: the axis the blocks run along (-1: the last, as NVFP4 and MX)
    axis: int = -1
    #: other rows the blocks run along (a conv weight's reduction: ``_r`` / ``_rt<g>``)
    layout: BlockLayout = LAST

    family = "scaled-block"
    data_dependent = True

    def __post_init__(self) -> None:
        el, sc, k = self.element, self.scale, self.block_size
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_BLOCK_SIZE:
            raise FormatSpecError(f"block_size={k!r} is out of range; allowed: an int in 1..{MAX_BLOCK_SIZE}")
        if not isinstance(self.tensor_scale, bool):
            raise FormatSpecError(f"tensor_scale must be True or False, got {self.tensor_scale!r}")
        self._check_axis()
        if not isinstance(el, (Minifloat, Posit, FixedPoint, IntegerFormat)) or el.bits > 16:
            raise FormatSpecError(
                f"block element={el!r} is not allowed; allowed: a posit, minifloat, fixed-point or integer "
                "format of at most 16 bits"
            )
        if not _signed(el) or not _exact_in_float32(el):
            raise FormatSpecError(
                f"block element {el} must be signed and have only float32-exact values (e.g. e2m1fn, e3m2fn, "
                "e2m3fn, e4m3fn, int4, int8, posit8_es1)"
            )
        if not isinstance(sc, (Minifloat, Posit)) or (isinstance(sc, Minifloat) and sc.man_bits == 0):
            raise FormatSpecError(
                f"block scale={sc!r} is not allowed here; allowed: a minifloat with mantissa bits (e4m3fn, "
                "e5m2, e8m23 …) or a posit (posit8_es1 …); power-of-two scales (e8m0fnu) are the MX rule"
            )
        if sc.bits > 32 or not _exact_in_float32(sc) or self.scale_floor < _FP32_TINY:
            raise FormatSpecError(
                f"block scale {sc} must have float32-exact values with a smallest normal >= 2^-126 "
                "(its values are float32 scales)"
            )

    # ------------------------------------------------------------------ facts
    def __str__(self) -> str:
        base = dataclasses.replace(self, layout=LAST) if self.layout != LAST else self
        for name, preset in _PRESETS.items():
            if preset == base:
                return name + str(self.layout)
        return (f"block{self.block_size}_{self.element}_scale_{self.scale}" + ("_t" if self.tensor_scale else "")
                + self._layout_suffix())

    @property
    def bits(self) -> int:
        """Bits per element code (the block scales and the tensor scale come on top)."""
        return self.element.bits

    @property
    def code_dtype(self) -> torch.dtype:
        return self.element.code_dtype

    @property
    def scale_bits(self) -> int:
        """Bits of one block scale code."""
        return self.scale.bits

    @property
    def bits_per_element(self) -> float:
        """bits + scale_bits / block_size (the 32-bit tensor scale is per tensor, not counted here)."""
        return self.bits + self.scale_bits / self.block_size

    @property
    def element_max(self) -> float:
        """E: elements are clamped to ±E; a block's scale is amax / E."""
        return float(self.element.max)

    @property
    def scale_floor(self) -> float:
        """m: block scales are clamped below to the scale format's smallest normal (2^-6 for E4M3)."""
        sc = self.scale
        return float(sc.min_normal) if isinstance(sc, Minifloat) else float(sc.min_positive)

    @property
    def scale_max(self) -> float:
        """M: block scales are clamped above to the scale format's max (448 for E4M3)."""
        return float(self.scale.max)

    @property
    def tensor_scale_divisor(self) -> float:
        """M · E: the per-tensor scale is amax / (M · E) (2688 for NVFP4)."""
        return self.scale_max * self.element_max

    @property
    def tensor_scale_floor(self) -> float:
        """g_min = max(2^-126, 2^-127 / m): the smallest per-tensor scale (keeps (1/g)/s finite)."""
        return max(_FP32_TINY, 2.0**-127 / self.scale_floor)

    @property
    def max(self) -> float:
        """Largest magnitude of one level (E · M); two levels scale it by the tensor scale."""
        return self.element_max * self.scale_max

    @property
    def min_positive(self) -> float:
        """Smallest positive element × smallest scale (one level)."""
        return float(self.element.min_positive) * float(self.scale.min_positive)

    def num_blocks(self, length: int) -> int:
        """Blocks along a last axis of ``length`` elements (the last one may be shorter)."""
        return -(-length // self.block_size)

    def scale_shape(self, shape: "torch.Size | tuple[int, ...]") -> tuple[int, ...]:
        """Shape of ``params["scale_codes"]`` for a tensor of ``shape`` (a 0-d tensor is one block)."""
        if self._moves(len(shape)):
            return _AlongAxis.scale_shape(self, shape)
        self._rows_shape(tuple(shape))
        shape = tuple(shape) or (1,)
        return (*shape[:-1], self.num_blocks(shape[-1]))

    def side_bits(self, shape: "torch.Size | tuple[int, ...]") -> int:
        """Bits of everything but the element codes: block scale codes (+ 32 for the tensor scale).

        >>> import lowbit as lb
        >>> lb.parse_format("nvfp4").side_bits((4, 64))   # 16 E4M3 scales + one FP32
        160
        """
        return math.prod(self.scale_shape(shape)) * self.scale_bits + (32 if self.tensor_scale else 0)

    # ------------------------------------------------------------------ codec
    def _blocked(self, t: torch.Tensor) -> torch.Tensor:
        n, k = t.shape[-1], self.block_size
        nb = self.num_blocks(n)
        if nb * k != n:
            t = F.pad(t, (0, nb * k - n))
        return t.reshape(*t.shape[:-1], nb, k)

    @staticmethod
    def _unblocked(t: torch.Tensor, n: int) -> torch.Tensor:
        t = t.reshape(*t.shape[:-2], t.shape[-2] * t.shape[-1])
        return t if t.shape[-1] == n else t[..., :n]

    def _scale_nan_code(self) -> "int | None":
        sc = self.scale
        return sc.nar_code if isinstance(sc, Posit) else sc.nan_code

    def encode_tensor(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> EncodedTensor:
        """Element codes (shape of ``x``), ``params["scale_codes"]`` (scale-format codes, one per
        block) and, with a tensor scale, ``params["tensor_scale"]`` (float32, 0-d).

        >>> import torch, lowbit as lb
        >>> enc = lb.parse_format("nvfp4").encode_tensor(torch.tensor([[1.0] * 15 + [-6.0]]))
        >>> enc.codes[0, -2:].tolist(), enc.params["scale_codes"].tolist(), enc.params["tensor_scale"].item()
        ([2, 15], [[126]], 0.0022321429569274187)
        """
        x = check_float_tensor(x)
        if self._moves(x.dim()):
            return _AlongAxis.encode_tensor(self, x, rounding, generator)  # type: ignore[no-any-return]
        self._rows_shape(tuple(x.shape))
        mode = check_rounding(rounding, generator)
        acc = _block._block_accelerator
        fast = None if acc is None else acc.scaled_block_encode(self, x, mode, generator)
        if fast is not None:
            return fast  # type: ignore[no-any-return]
        wide = x.dtype == torch.float64
        rows = _rows(x.detach())
        rows = rows if wide else rows.to(torch.float32)
        xb = self._blocked(rows)
        amax = xb.abs().amax(dim=-1) if xb.numel() else xb.new_zeros(xb.shape[:-1])
        bad = ~torch.isfinite(amax)  # NaN propagates through amax; ±inf stays inf
        has_bad = bool(bad.any())
        if has_bad:
            xb = xb.masked_fill(bad.unsqueeze(-1), 0.0)
            amax = amax.masked_fill(bad, 0.0)
        scale_codes, reciprocal, params = self._block_scales(amax, bad if has_bad else None)
        y = xb * reciprocal.to(xb.dtype).unsqueeze(-1)
        y = torch.clamp(y, -self.element_max, self.element_max)
        codes = self.element.encode(self._unblocked(y, rows.shape[-1]), mode, generator)
        return EncodedTensor(self, codes.reshape(x.shape), params)

    def _block_scales(
        self, amax: torch.Tensor, bad: "torch.Tensor | None"
    ) -> "tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]":
        """Steps 1-2 of the rule on the blocks' amax (NaN/±inf blocks already 0 in ``amax`` and
        True in ``bad``, or None when there are none): (scale codes, float32 reciprocals, params).

        Shared by the reference and the numba path, so both compute the scales alike."""
        if bad is not None:
            self._check_nonfinite_allowed()
        if amax.dtype == torch.float64:
            amax = amax.clamp(max=_FP32_MAX).to(torch.float32)
        block_scale = amax / self.element_max  # float32, as torchao
        params: dict[str, torch.Tensor] = {}
        if self.tensor_scale:
            total = amax.amax() if amax.numel() else amax.new_zeros(())
            g = self._tensor_scale_of(total)
            scale_codes = self.scale.encode(torch.clamp(block_scale / g, min=self.scale_floor, max=self.scale_max))
            s = self.scale.decode(scale_codes, torch.float32)
            reciprocal = (1.0 / g) / s
            params["tensor_scale"] = g
        else:
            scale_codes = self.scale.encode(torch.clamp(block_scale, min=self.scale_floor, max=self.scale_max))
            s = self.scale.decode(scale_codes, torch.float32)
            reciprocal = 1.0 / s
        if bad is not None:
            scale_codes = scale_codes.masked_fill(bad, self._scale_nan_code())  # type: ignore[arg-type]
        params["scale_codes"] = scale_codes
        return scale_codes, reciprocal, params

    def _check_nonfinite_allowed(self) -> None:
        if self._scale_nan_code() is None:
            raise ValueError(
                f"x holds NaN or ±inf, which {self} cannot hold: its scale format {self.scale} has no NaN"
            )

    def _tensor_scale_of(self, total: torch.Tensor) -> torch.Tensor:
        """g = max(amax_tensor / (M · E), g_min) from the float32 0-d tensor amax."""
        return torch.clamp(total / self.tensor_scale_divisor, min=self.tensor_scale_floor)

    def _block_factors(self, scale_codes: torch.Tensor, tensor_scale: "torch.Tensor | None") -> torch.Tensor:
        """float32 ``s`` (or ``g · s``) of every block: what its elements are multiplied by to decode."""
        s = self.scale.decode(scale_codes, torch.float32)  # validates the codes
        return s if tensor_scale is None else tensor_scale.to(s.device) * s

    def _fast_quantize(
        self, x: torch.Tensor, rounding: "str | Rounding", generator: "torch.Generator | None",
        out: "torch.Tensor | None"
    ) -> "torch.Tensor | None":
        """Fused on the CPU (numba), bit-identical to the torch reference.

        >>> import torch, lowbit as lb
        >>> lb.parse_format("nvfp4_1l").quantize(torch.tensor([0.3, -1.0, 5.0, 0.0])).tolist()
        [0.40625, -0.8125, 4.875, 0.0]
        """
        acc = _block._block_accelerator
        mode = check_rounding(rounding, generator)
        return None if acc is None else acc.scaled_block_quantize(self, x, mode, generator, out)  # type: ignore[no-any-return]

    def decode_tensor(self, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values ``element · s`` (or ``element · (g · s)``) in float32, cast to ``dtype``."""
        names = ("scale_codes", "tensor_scale") if self.tensor_scale else ("scale_codes",)
        codes, scale_codes, *rest = _unpack(self, encoded, *names)
        if self._moves(codes.dim()):
            return _AlongAxis.decode_tensor(self, encoded, dtype)  # type: ignore[no-any-return]
        dtype = check_float_dtype(dtype)
        want = self.scale_shape(codes.shape)
        if (not isinstance(scale_codes, torch.Tensor) or scale_codes.dtype.is_floating_point
                or scale_codes.dtype == torch.bool or tuple(scale_codes.shape) != want):
            got = (f"{scale_codes.dtype} tensor of shape {tuple(scale_codes.shape)}"
                   if isinstance(scale_codes, torch.Tensor) else type(scale_codes).__name__)
            raise ValueError(
                f"params['scale_codes'] must be an integer tensor of {self.scale} codes, shape {want} for codes of "
                f"shape {tuple(codes.shape)} (one per block of {self.block_size} along the last axis); got {got}"
            )
        g = None
        if self.tensor_scale:
            g = rest[0]
            if (not isinstance(g, torch.Tensor) or g.dtype != torch.float32 or g.dim() != 0
                    or not bool(torch.isfinite(g) & (g > 0))):
                raise ValueError(f"params['tensor_scale'] must be a positive finite float32 0-d tensor; got {g!r}")
        s = self._block_factors(scale_codes, g)
        rows = _rows(codes)
        elements = self.element.decode(self._blocked(rows), torch.float32)  # validates the codes
        values = self._unblocked(elements * s.unsqueeze(-1), rows.shape[-1])
        return values.to(dtype).reshape(codes.shape)

    def storage_params(self, params: "Mapping[str, torch.Tensor]") -> "dict[str, torch.Tensor]":
        """Stored as they are: one scale code per block (1 byte for 8-bit scales), the float32 tensor scale."""
        return dict(params)


def _signed(fmt: ScalarFormat) -> bool:
    if isinstance(fmt, Minifloat):
        return fmt.signed
    if isinstance(fmt, (FixedPoint, IntegerFormat)):
        return fmt.signed
    return True


#: NVFP4 (NVIDIA, as torchao): E2M1 elements, an E4M3 scale per 16 values, an FP32 scale per tensor.
NVFP4 = ScaledBlockFormat(Minifloat(2, 1, policy="fn"), Minifloat(4, 3, policy="fn"), 16, tensor_scale=True)
#: NVFP4 with the block scales only (no per-tensor scale).
NVFP4_1L = ScaledBlockFormat(Minifloat(2, 1, policy="fn"), Minifloat(4, 3, policy="fn"), 16, tensor_scale=False)
_PRESETS = {"nvfp4": NVFP4, "nvfp4_1l": NVFP4_1L}
