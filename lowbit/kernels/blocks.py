"""Route encode / quantize of float-scaled block formats (`ScaledBlockFormat`: nvfp4, nvfp4_1l,
``block<k>_<element>_scale_<scale>[_t][_a<axis>]``) to the numba kernels of `lowbit.kernels.blocks_numba`.

Installed as the block accelerator of `lowbit.formats.block` when `lowbit.kernels` is imported.
Each call returns None where the fast path does not apply (a non-CPU tensor or the reference
backend, an empty tensor), and the caller then runs the torch reference. The per-block scale
arithmetic is the reference's own (`ScaledBlockFormat._block_scales`); the kernels do the
data-sized passes, so results are bit-identical, stochastic rounding included.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch

from lowbit.formats.base import EncodedTensor
from lowbit.formats.block import BlockFormat, _rows
from lowbit.formats.rounding import ROUNDING_MODES, Rounding
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.kernels import resolve_backend
from lowbit.kernels.dispatch import _params, _run, _seed, _writes_in_place

__all__ = ["scaled_block_encode", "scaled_block_quantize", "pow2_block_encode", "pow2_block_quantize"]

_FP32_MAX = float(np.finfo(np.float32).max)


@functools.lru_cache(maxsize=1)
def _kernels() -> Any:
    from lowbit.kernels import blocks_numba

    return blocks_numba


@functools.lru_cache(maxsize=64)
def _element_table(fmt: ScaledBlockFormat) -> np.ndarray:
    """float32 value of every element code (exact: elements are float32-exact), NaN for unused ones."""
    return fmt.element._table.to(torch.float32).numpy()


def _applies(fmt: object, x: torch.Tensor) -> bool:
    return (isinstance(fmt, ScaledBlockFormat) and x.numel() > 0
            and resolve_backend(None, x.device.type) == "numba" and _params(fmt.element) is not None)


def _codes_array(codes: "torch.Tensor | None", dtype: torch.dtype) -> np.ndarray:
    """The flat array the element codes go to; when none are wanted, one element of the same
    dtype (so storing codes or not runs the same compiled kernel)."""
    return codes.reshape(-1).numpy() if codes is not None else torch.zeros(1, dtype=dtype).numpy()


def _values_array(values: "torch.Tensor | None") -> np.ndarray:
    return values.numpy() if values is not None else np.zeros(1, dtype=np.float32)


def _blocks(fmt: ScaledBlockFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
            codes: bool, values: "torch.Tensor | None") -> "tuple[torch.Tensor | None, dict[str, torch.Tensor]]":
    """Run the rule on ``x`` (blocks along its last axis): element codes (if ``codes``) shaped as
    x, the params, and the decoded float32 values written into ``values`` (flat, if given)."""
    kern = _kernels()
    rows = _rows(x.detach())
    work = rows if rows.dtype == torch.float64 else rows.to(torch.float32)
    flat = work.contiguous().reshape(-1).numpy()
    n, k = work.shape[-1], fmt.block_size
    lead = work.shape[:-1]
    count = flat.size // n * fmt.num_blocks(n)
    amax = np.empty(count, dtype=flat.dtype)
    bad = np.empty(count, dtype=np.bool_)
    _run(kern.block_amax, flat, n, k, amax, bad)
    if bad.any():
        fmt._check_nonfinite_allowed()
    params: dict[str, torch.Tensor] = {}
    g = inv_g = np.float32(1.0)
    if fmt.tensor_scale:  # the max of the blocks' float32 amax (float64 ones: clamped, rounded)
        total = np.float32(min(float(amax.max()), _FP32_MAX))
        g_t = fmt._tensor_scale_of(torch.tensor(total, dtype=torch.float32))
        params["tensor_scale"] = g_t
        g, inv_g = g_t.numpy()[()], (1.0 / g_t).numpy()[()]
    scale_codes = torch.empty(count, dtype=fmt.scale.code_dtype)
    params["scale_codes"] = scale_codes.reshape(*lead, -1)
    code_out = torch.empty(work.shape, dtype=fmt.element.code_dtype) if codes else None
    family, p = _params(fmt.element)  # type: ignore[misc]
    scale_family, sp = _params(fmt.scale)  # type: ignore[misc]
    mode_id = ROUNDING_MODES.index(mode.value)
    kernel = kern.element_kernel(family, scale_family, mode_id)
    f32 = np.float32
    _run(kernel, flat, n, k, amax, bad, f32(fmt.element_max), f32(fmt.scale_floor), f32(fmt.scale_max), g, inv_g,
         _seed(mode, generator), p, _element_table(fmt), sp, fmt._scale_nan_code() or 0,
         _codes_array(code_out, fmt.element.code_dtype), scale_codes.numpy(), _values_array(values),
         codes, values is not None, mode_id)
    return code_out, params


def scaled_block_encode(fmt: ScaledBlockFormat, x: torch.Tensor, mode: Rounding,
                        generator: "torch.Generator | None") -> "EncodedTensor | None":
    """``fmt.encode_tensor(x)`` for blocks along x's last axis (the format moves other rows there
    first); None where the fast path does not apply."""
    if not _applies(fmt, x):
        return None
    codes, params = _blocks(fmt, x, mode, generator, True, None)
    return EncodedTensor(fmt, codes.reshape(x.shape), params)  # type: ignore[union-attr]


def scaled_block_quantize(fmt: ScaledBlockFormat, x: torch.Tensor, mode: Rounding,
                          generator: "torch.Generator | None", out: "torch.Tensor | None") -> "torch.Tensor | None":
    """``fmt.quantize(x, out=out)`` (blocks along x's last axis) in one fused pass after the amax
    pass; None where it does not apply."""
    if not _applies(fmt, x):
        return None
    return _values_into(x, out, lambda values: _blocks(fmt, x, mode, generator, False, values))


def _values_into(x: torch.Tensor, out: "torch.Tensor | None",
                 write: "Callable[[torch.Tensor], object]") -> torch.Tensor:
    """Run ``write(values)`` (flat float32 values of ``x``) straight into ``out`` when it is a
    contiguous float32 tensor that is x's own memory or does not overlap it; else into a new
    tensor, cast to x's dtype and copied into ``out`` (a partial overlap would be read after
    being written)."""
    direct = out is not None and out.dtype == torch.float32 and _writes_in_place(out, x)
    values = out.reshape(-1) if direct else torch.empty(x.numel(), dtype=torch.float32)  # type: ignore[union-attr]
    write(values)
    if direct:
        return out  # type: ignore[return-value]
    result = values.reshape(x.shape)
    if x.dtype != torch.float32:
        result = result.to(x.dtype)
    if out is None:
        return result
    out.copy_(result)
    return out


# ---------------------------------------------------------------- power-of-two scales (MX, BFP)
def _pow2_applies(fmt: object, x: torch.Tensor) -> bool:
    """float32 input only: x · 2^(shift − s) and element · 2^(s − shift) are then exact in float64
    and the values are rounded once to float32, as the reference's float64 arithmetic does."""
    return (isinstance(fmt, BlockFormat) and not isinstance(fmt, ScaledBlockFormat) and x.dtype == torch.float32
            and x.numel() > 0 and resolve_backend(None, x.device.type) == "numba"
            and _params(fmt._encoder) is not None)


@functools.lru_cache(maxsize=64)
def _encoder_table(fmt: BlockFormat) -> np.ndarray:
    """float64 value of every encoder code (the posit family's value_of reads it)."""
    return fmt._encoder._table.to(torch.float64).numpy()


def _pow2_blocks(fmt: BlockFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
                 codes: bool, values: "torch.Tensor | None") -> "tuple[torch.Tensor | None, torch.Tensor]":
    """Element codes (if ``codes``; shaped as x) and the int16 scale exponents (shape
    ``fmt.scale_shape``) of float32 ``x`` (blocks along its last axis), values into ``values``."""
    kern = _kernels()
    rows = _rows(x.detach())
    flat = rows.contiguous().reshape(-1).numpy()
    n, k = rows.shape[-1], fmt.block_size
    count = flat.size // n * fmt.num_blocks(n)
    amax = np.empty(count, dtype=np.float32)
    bad = np.empty(count, dtype=np.bool_)
    _run(kern.block_amax, flat, n, k, amax, bad)
    exponents = torch.empty(count, dtype=torch.int16)
    code_out = torch.empty(rows.shape, dtype=fmt._encoder.code_dtype) if codes else None
    family, p = _params(fmt._encoder)  # type: ignore[misc]
    mode_id = ROUNDING_MODES.index(mode.value)
    kernel = kern.pow2_element_kernel(family, mode_id)
    _run(kernel, flat, n, k, amax, bad, fmt.emax, fmt.zero_block_exponent, fmt.exponent_min, fmt.exponent_max,
         fmt.nan_exponent, fmt._encode_shift, _seed(mode, generator), p, _encoder_table(fmt),
         _codes_array(code_out, fmt._encoder.code_dtype), exponents.numpy(), _values_array(values),
         codes, values is not None, mode_id)
    return code_out, exponents.reshape(fmt.scale_shape(x.shape))


def pow2_block_encode(fmt: BlockFormat, x: torch.Tensor, mode: Rounding,
                      generator: "torch.Generator | None") -> "EncodedTensor | None":
    """``fmt.encode_tensor(x)`` of a power-of-two block format, blocks along x's last axis
    (the caller moves the axis); None where the fast path does not apply."""
    if not _pow2_applies(fmt, x):
        return None
    codes, exponents = _pow2_blocks(fmt, x, mode, generator, True, None)
    codes = codes.reshape(x.shape)  # type: ignore[union-attr]
    return EncodedTensor(fmt, codes, {"scale_exponent": exponents})


def pow2_block_quantize(fmt: BlockFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
                        out: "torch.Tensor | None") -> "torch.Tensor | None":
    """``fmt.quantize(x, out=out)`` (blocks along x's last axis) in one fused pass after the amax
    pass; None where it does not apply."""
    if not _pow2_applies(fmt, x):
        return None
    return _values_into(x, out, lambda values: _pow2_blocks(fmt, x, mode, generator, False, values))
