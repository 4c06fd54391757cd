"""Exact float64 helpers for the vectorized torch reference path.

Every input dtype lowbit accepts (float16, bfloat16, float32, float64) converts to float64
exactly, so the reference path does all rounding in float64 (or int64) and rounds once.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "torch.float16, torch.bfloat16, torch.float32, torch.float64"


def check_float_tensor(x: object, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a floating tensor lowbit accepts, else raise TypeError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor with dtype in ({_DTYPE_NAMES}), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype in ({_DTYPE_NAMES}), got {x.dtype}")
    return x


def check_float_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of ({_DTYPE_NAMES}), got {dtype}")
    return dtype  # type: ignore[return-value]


def pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact 2**k as float64 for integer k in [-1074, 1023] (built from the bit pattern)."""
    k = k.to(torch.int64)
    normal = ((k.clamp(-1022, 1023) + 1023) << 52).view(torch.float64)
    subnormal = (torch.ones_like(k) << (k.clamp(-1074, -1023) + 1074)).view(torch.float64)
    return torch.where(k >= -1022, normal, subnormal)


def exponent_of(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) as int64 for positive finite float64 a (exact, subnormals included)."""
    _, e = torch.frexp(a)
    return e.to(torch.int64) - 1


_TARGETS: dict[torch.dtype, tuple[int, int, float, float]] = {
    # dtype: (mantissa bits, min normal exponent, max finite, smallest subnormal)
    torch.float16: (10, -14, 65504.0, 2.0**-24),
    torch.bfloat16: (7, -126, float(torch.finfo(torch.bfloat16).max), 2.0**-133),
}


def round_float64_to(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round float64 values once, to nearest even, into ``dtype``, saturating.

    torch's float64 -> float16/bfloat16 casts go through float32 and so round twice; this rounds
    once. A finite value never becomes inf (it saturates to the dtype's max) and a nonzero value
    never becomes 0 (it becomes the smallest subnormal), which keeps quantize idempotent.
    """
    if dtype == torch.float64:
        return v
    if dtype == torch.float32:
        fmax = float(torch.finfo(torch.float32).max)
        r = _clamp_finite(v, fmax).to(torch.float32)
        tiny = 2.0**-149
    else:
        man, emin, fmax, tiny = _TARGETS[dtype]
        c = _clamp_finite(v, fmax)
        a = c.abs()
        finite_nonzero = torch.isfinite(a) & (a > 0)
        safe = torch.where(finite_nonzero, a, torch.ones_like(a))
        qexp = exponent_of(safe).clamp_min(emin) - man
        r64 = torch.round(safe * pow2(-qexp)) * pow2(qexp)  # torch.round: half to even, exact here
        r64 = torch.where(finite_nonzero, torch.copysign(r64, c), c)
        r = r64.to(dtype)  # exact: r64 is representable in dtype and within its range
        if dtype == torch.bfloat16:  # torch's vectorized cast makes NaN 0xFFFF, its scalar one 0x7FC0
            r = torch.where(torch.isnan(r), _BF16_NAN, r)
    lost = (r == 0) & (v != 0) & ~torch.isnan(v)
    if v.is_meta or bool(lost.any()):  # a meta tensor has no values to look at
        r = torch.where(lost, torch.copysign(torch.full_like(r, tiny), v.to(r.dtype)), r)
    return r


_BF16_NAN = torch.tensor(float("nan"), dtype=torch.bfloat16)  # the canonical NaN, 0x7FC0


def _clamp_finite(v: torch.Tensor, fmax: float) -> torch.Tensor:
    return torch.where(torch.isfinite(v), v.clamp(-fmax, fmax), v)
