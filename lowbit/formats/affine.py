"""Affine (scale + zero point) integer quantization primitives: qparams from a range, and
quantizing with them. The lowest layer that needs them (simulated static ranges and
`lowbit.quant.affine`'s searches both use them); also importable from `lowbit.quant.affine`.
"""

from __future__ import annotations

import torch

from lowbit.formats import IntegerFormat
from lowbit.formats._float64 import check_float_tensor
from lowbit.formats.granularity import Granularity, check_scale, compute_dtype, expand_to
from lowbit.formats.rounding import Rounding, check_rounding

__all__ = ["qrange", "affine_qparams", "fake_quantize_affine", "quantize_affine", "dequantize_affine"]

# An unbounded-enough integer grid: R(x / s) with lowbit's six rounding modes (clamped later).
_ROUND_GRID = IntegerFormat(32)


def qrange(bits: int, signed: bool = True, narrow: bool = False) -> "tuple[int, int]":
    """(qmin, qmax) of a ``bits``-bit integer code.

    >>> qrange(8), qrange(8, narrow=True), qrange(8, signed=False), qrange(4, signed=False, narrow=True)
    ((-128, 127), (-127, 127), (0, 255), (1, 15))
    """
    lo_bits = 2 if signed else 1
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo_bits <= bits <= 32:
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"bits={bits!r}; allowed: an int in {lo_bits}..32 for {kind} codes")
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return qmin + int(bool(narrow)), qmax


def _tensor(v: "float | torch.Tensor", name: str, number_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``v`` as a floating tensor; a Python number as ``number_dtype`` (float64 keeps it exact, for a
    later single rounding into the compute dtype)."""
    if isinstance(v, torch.Tensor):
        if not v.dtype.is_floating_point:
            v = v.to(torch.float32)
        return v.detach()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number or a floating tensor, got {type(v).__name__}")
    return torch.tensor(float(v), dtype=number_dtype)


def affine_qparams(
    xmin: "float | torch.Tensor",
    xmax: "float | torch.Tensor",
    bits: int = 8,
    symmetric: bool = True,
    narrow: bool = False,
    signed: bool = True,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """(scale, zero_point) for the range [xmin, xmax] (per granule: any matching tensor shapes).

    Rules in the module docstring. ``scale`` is float32 (float64 if xmin/xmax are float64);
    ``zero_point`` is int64. A zero range gives scale 0.

    >>> s, z = affine_qparams(-2.0, 1.0)                 # int8, symmetric
    >>> float(s) == float(torch.tensor(2.0) / 127), int(z)
    (True, 0)
    >>> s, z = affine_qparams(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 3.0]), symmetric=False, signed=False)
    >>> s.tolist()[0], z.tolist()                      # an all-zero granule: scale 0
    (0.0, [0, 64])
    """
    qmin, qmax = qrange(bits, signed, narrow)
    lo, hi = _tensor(xmin, "xmin"), _tensor(xmax, "xmax")
    dtype = torch.promote_types(torch.promote_types(lo.dtype, hi.dtype), torch.float32)
    lo, hi = lo.to(dtype), hi.to(dtype)
    if lo.shape != hi.shape:
        lo, hi = torch.broadcast_tensors(lo, hi)
    for name, t in (("xmin", lo), ("xmax", hi)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite; got {t.tolist() if t.numel() < 8 else t}")
    if bool((lo > hi).any()):
        raise ValueError("xmin must be <= xmax in every granule")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        amax = torch.maximum(-lo, hi) if signed else hi
        scale = amax / qmax
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(qmin - lo / safe).clamp(qmin, qmax).to(torch.int64)
    zp = torch.where(scale == 0, torch.full_like(zp, min(max(0, qmin), qmax)), zp)
    return scale, zp


def _affine_codes(
    x: torch.Tensor,
    scale: "float | torch.Tensor",
    zero_point: "int | torch.Tensor",
    qmin: int,
    qmax: int,
    rounding: "str | Rounding",
    generator: "torch.Generator | None",
    granularity: "Granularity | str | None",
) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]":
    """(codes as floats in the compute dtype, expanded scale, expanded zero point, zero-scale mask)."""
    x = check_float_tensor(x)
    check_rounding(rounding, generator)
    if not (isinstance(qmin, int) and isinstance(qmax, int)) or qmin > qmax:
        raise ValueError(f"qmin={qmin!r}, qmax={qmax!r}; allowed: ints with qmin <= qmax (see qrange)")
    cdt = compute_dtype(x.dtype)
    s = expand_to(granularity, _tensor(scale, "scale", torch.float64).to(device=x.device, dtype=cdt), x.shape)
    check_scale(s)
    z = zero_point if isinstance(zero_point, torch.Tensor) else torch.tensor(zero_point)
    if z.dtype.is_floating_point and not bool((z == torch.round(z)).all()):
        raise ValueError("zero_point must hold integers")
    z = expand_to(granularity, z.detach().to(device=x.device, dtype=cdt), x.shape)
    zero = s == 0
    safe = torch.where(zero, torch.ones_like(s), s)
    r = _ROUND_GRID.quantize(x.detach().to(cdt) / safe, rounding, generator)
    q = (r + z).clamp(qmin, qmax)
    q = torch.where(zero, z, q)
    return q, s, z, zero


def fake_quantize_affine(
    x: torch.Tensor,
    scale: "float | torch.Tensor",
    zero_point: "int | torch.Tensor",
    qmin: int,
    qmax: int,
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
    granularity: "Granularity | str | None" = None,
) -> torch.Tensor:
    """x̂ = (clamp(R(x / s) + z, qmin, qmax) − z) · s, computed in float32 (float64 for float64 x).

    ``scale``/``zero_point``: numbers or per-granule tensors — anything broadcastable to x when
    ``granularity`` is None, else ``granularity``'s `stat_shape` (needed for groups).
    Zero scale → 0. Result in x's dtype.

    >>> fake_quantize_affine(torch.tensor([0.26, 0.5, 9.0]), 0.25, 0, -8, 7).tolist()
    [0.25, 0.5, 1.75]
    """
    q, s, z, zero = _affine_codes(x, scale, zero_point, qmin, qmax, rounding, generator, granularity)
    y = (q - z) * torch.where(zero, torch.zeros_like(s), s)
    return y.to(x.dtype)


def quantize_affine(
    x: torch.Tensor,
    scale: "float | torch.Tensor",
    zero_point: "int | torch.Tensor",
    qmin: int,
    qmax: int,
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
    granularity: "Granularity | str | None" = None,
    dtype: torch.dtype = torch.int64,
) -> torch.Tensor:
    """The integer codes q = clamp(R(x / s) + z, qmin, qmax) as ``dtype`` (a zero scale gives z).

    >>> quantize_affine(torch.tensor([-1.0, 0.3]), 0.1, 10, 0, 255, dtype=torch.uint8).tolist()
    [0, 13]
    """
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"dtype must be an integer dtype, got {dtype}")
    info = torch.iinfo(dtype)
    if qmin < info.min or qmax > info.max:
        raise ValueError(f"codes {qmin}..{qmax} do not fit dtype={dtype} ({info.min}..{info.max})")
    q, _, _, _ = _affine_codes(x, scale, zero_point, qmin, qmax, rounding, generator, granularity)
    return q.to(torch.int64).to(dtype)


def dequantize_affine(
    q: torch.Tensor,
    scale: "float | torch.Tensor",
    zero_point: "int | torch.Tensor",
    granularity: "Granularity | str | None" = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """r = (q − z) · s from integer codes, computed in `compute_dtype(dtype)`, returned as ``dtype``.

    ``dequantize_affine(quantize_affine(x, ...), ...)`` equals ``fake_quantize_affine(x, ...)``
    bit for bit (for float32/float64 ``dtype`` = x's dtype).
    """
    if not isinstance(q, torch.Tensor) or q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor of codes, got {getattr(q, 'dtype', type(q).__name__)}")
    cdt = compute_dtype(dtype)
    s = expand_to(granularity, _tensor(scale, "scale", torch.float64).to(device=q.device, dtype=cdt), q.shape)
    check_scale(s)
    z = zero_point if isinstance(zero_point, torch.Tensor) else torch.tensor(zero_point)
    z = expand_to(granularity, z.detach().to(device=q.device, dtype=cdt), q.shape)
    return ((q.to(cdt) - z) * s).to(dtype)


# ---------------------------------------------------------------------- fixed point
