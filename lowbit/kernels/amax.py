"""The largest finite magnitude of a tensor (the statistic of ``"amax"`` scaling), in one pass.

``finite_amax(x)`` equals ``float(x[isfinite(x)].abs().max())`` (0.0 when ``x`` has no finite
element), bit for bit, without that expression's three temporaries: on CPU a numba kernel reads
``x`` once (float32 / float64 as values, float16 / bfloat16 as bit patterns); on other devices, or
with ``backend="reference"``, torch computes it.

>>> import torch
>>> finite_amax(torch.tensor([1.5, -3.0, float("inf"), float("nan")]))
3.0
>>> finite_amax(torch.tensor([float("-inf")]), backend="reference")
0.0
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from lowbit.kernels import get_backend, resolve_backend, runtime

__all__ = ["finite_amax"]

_CHUNK = 1 << 16  # elements per partial maximum
_EXPONENT_MASK = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


@functools.lru_cache(maxsize=1)
def _kernels() -> Any:
    runtime.modules()  # numba loaded, its threading layer chosen
    from lowbit.kernels import amax_numba

    return amax_numba


def _reference(x: torch.Tensor) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _numba(x: torch.Tensor) -> float:
    kern = _kernels()
    flat = x.contiguous().reshape(-1)
    if x.dtype in (torch.float32, torch.float64):
        return float(runtime.launch(kern.finite_amax_float, flat.numpy(), _CHUNK))
    bits = runtime.launch(kern.finite_amax_bits16, flat.view(torch.int16).numpy(), _EXPONENT_MASK[x.dtype], _CHUNK)
    return float(torch.tensor(int(bits), dtype=torch.int16).view(x.dtype))


def finite_amax(x: torch.Tensor, backend: "str | None" = None) -> float:
    """max |x| over the finite elements of the floating tensor ``x`` (0.0 when there is none).

    ``backend``: None (the current `lowbit.kernels.use_backend` choice), ``"auto"``,
    ``"numba"`` or ``"reference"``.
    """
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    x = x.detach()
    if x.numel() == 0:
        return 0.0
    fast = x.dtype in (torch.float32, torch.float64, *_EXPONENT_MASK)
    if fast and resolve_backend(backend, x.device.type) == "numba":
        try:
            return _numba(x)
        except runtime.KernelUnavailable:
            if (backend if backend is not None else get_backend()) == "numba":
                raise
            runtime.warn_reference_fallback()
    return _reference(x)
