"""Route encode / quantize / decode of scalar formats to the numba kernels.

Installed as the accelerator of `lowbit.formats.base` when `lowbit.kernels` is imported (the
formats layer knows nothing of kernels). Each call returns ``None`` when the fast path does not
apply (non-CPU tensor under ``auto``, a format or dtype it does not cover), and the caller then
runs the torch reference.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import torch

from lowbit.formats._float64 import round_float64_to
from lowbit.formats.base import ScalarFormat
from lowbit.formats.fixed_point import _UniformGrid
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import ROUNDING_MODES, Rounding, draw_seed
from lowbit.kernels import resolve_backend

_TABLE_BITS = 16
_KERNEL_DTYPES = (torch.float32, torch.float64)
_launch_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _numba() -> Any:
    import numba

    from lowbit.kernels import numba_cpu

    return numba, numba_cpu


def _limits(dtype: torch.dtype) -> tuple[bool, float, float]:
    """(is float32, max finite, smallest subnormal) of a kernel output dtype."""
    if dtype == torch.float32:
        return True, float(torch.finfo(torch.float32).max), 2.0**-149
    return False, float(torch.finfo(torch.float64).max), 5e-324


@functools.lru_cache(maxsize=256)
def _params(fmt: ScalarFormat) -> "tuple[str, tuple[Any, ...]] | None":
    if isinstance(fmt, Posit):
        return "posit", (fmt.n, fmt.es, fmt.scale)
    if isinstance(fmt, Minifloat):
        return "minifloat", (
            fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.min_normal_exponent, fmt.max, fmt.min_positive,
            fmt.signed, fmt.has_subnormals, fmt.overflow_policy == "saturate", fmt.has_inf, fmt.has_nan,
            fmt.policy == "fnu", fmt.policy == "fnuz", fmt.nan_code if fmt.nan_code is not None else 0,
            fmt.policy in ("ieee", "fn"),
        )
    if isinstance(fmt, _UniformGrid):
        return "grid", (
            float(2.0**fmt.frac_bits), float(2.0 ** (fmt.word_bits + 1)), fmt.k_min, fmt.k_max,
            (1 << fmt.word_bits) - 1,
        )
    return None


@functools.lru_cache(maxsize=256)
def _value_table(fmt: ScalarFormat, dtype: torch.dtype) -> Any:
    """Every code's value already cast to ``dtype`` (numpy), for formats of ≤ 16 bits."""
    return round_float64_to(fmt._table, dtype).numpy()


_needs_lock: "bool | None" = None  # known after the first launch
_SERIAL_BELOW = 1 << 15  # elements; smaller launches run on the calling thread


def _run(kernel: Callable[..., Any], *args: Any) -> Any:
    """Launch a parallel kernel with torch's thread count.

    numba's omp and tbb threading layers run kernels from several Python threads at once; its
    fallback "workqueue" layer does not, so launches are serialised when that is the layer.
    """
    global _needs_lock
    numba, _ = _numba()
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    size = max((getattr(a, "size", 0) for a in args), default=0)
    if size < _SERIAL_BELOW:  # waking worker threads costs more than the work itself
        threads = 1
    numba.set_num_threads(threads)
    if _needs_lock is False:
        return kernel(*args)
    with _launch_lock:
        result = kernel(*args)
        _needs_lock = numba.threading_layer() == "workqueue"
    return result


def _applies(fmt: ScalarFormat, x: torch.Tensor, backend: "str | None") -> bool:
    return resolve_backend(backend, x.device.type) == "numba" and _params(fmt) is not None


def _flat_input(x: torch.Tensor) -> torch.Tensor:
    """A contiguous float32/float64 view of x (float16/bfloat16 convert exactly to float32)."""
    x = x.detach()
    if x.dtype not in _KERNEL_DTYPES:
        x = x.to(torch.float32)
    return x.contiguous().reshape(-1)


def _seed(mode: Rounding, generator: "torch.Generator | None") -> int:
    return draw_seed(generator) if mode is Rounding.STOCHASTIC else 0


def encode(fmt: ScalarFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
           backend: "str | None") -> "torch.Tensor | None":
    if not _applies(fmt, x, backend):
        return None
    family, p = _params(fmt)  # type: ignore[misc]
    _, k = _numba()
    flat = _flat_input(x)
    out = torch.empty(flat.shape, dtype=fmt.code_dtype)
    m = ROUNDING_MODES.index(mode.value)
    seed = _seed(mode, generator)
    xs, os = flat.numpy(), out.numpy()
    if family == "posit":
        _run(k.posit_encode(m), xs, os, *p, seed)
    elif family == "minifloat":
        _run(k.minifloat_encode(m), xs, os, *p, seed)
    else:
        _run(k.grid_encode(m), xs, os, *p, seed)
    return out.reshape(x.shape)


def quantize(fmt: ScalarFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
             out: "torch.Tensor | None", backend: "str | None") -> "torch.Tensor | None":
    if not _applies(fmt, x, backend):
        return None
    family, p = _params(fmt)  # type: ignore[misc]
    _, k = _numba()
    flat = _flat_input(x)
    direct = x.dtype in _KERNEL_DTYPES
    kernel_dtype = x.dtype if direct else torch.float64
    if direct and out is not None and out.is_contiguous():
        result = out
    else:
        result = torch.empty(x.shape, dtype=kernel_dtype)
    rs = result.reshape(-1).numpy()
    xs = flat.numpy()
    m = ROUNDING_MODES.index(mode.value)
    seed = _seed(mode, generator)
    is32, fmax, tiny = _limits(kernel_dtype)
    if family == "posit":
        if fmt.bits <= _TABLE_BITS:
            _run(k.posit_quantize_table(m), xs, rs, *p, seed, _value_table(fmt, kernel_dtype))
        else:
            _run(k.posit_quantize(m, is32), xs, rs, *p, seed, fmax, tiny)
    elif family == "minifloat":
        e, mb, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code, signed_nan = p
        _run(k.minifloat_quantize(m, is32), xs, rs, mb, emin, maxv, minpos, sub, sat, inf, nan, fnu, fnuz, seed,
             fmax, tiny)
    else:
        fs, bound, kmin, kmax, _ = p
        _run(k.grid_quantize(m, is32), xs, rs, fs, bound, kmin, kmax, seed, fmax, tiny)
    if not direct:
        result = round_float64_to(result, x.dtype)
    if out is None:
        return result
    if result is not out:
        out.copy_(result)
    return out


def decode(fmt: ScalarFormat, codes: torch.Tensor, dtype: torch.dtype,
           backend: "str | None") -> "torch.Tensor | None":
    """Table-lookup decode for formats of ≤ 16 bits.

    Returns None (so the reference runs and raises its precise error) if any code is invalid.
    """
    # the backend is resolved first, so a bad name or numba-on-GPU raises for every format
    if not _applies(fmt, codes, backend):
        return None
    if fmt.bits > _TABLE_BITS and isinstance(fmt, Posit):
        return _posit_decode(fmt, codes, dtype)
    if fmt.bits > _TABLE_BITS or dtype not in _KERNEL_DTYPES:
        return None
    _, k = _numba()
    table = _value_table(fmt, dtype)
    flat = codes.detach().contiguous().reshape(-1)
    if flat.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        flat = flat.to(torch.int64)
    out = torch.empty(flat.shape, dtype=dtype)
    bad = _run(k.table_decode, flat.numpy(), table, _unused_code(fmt), out.numpy())
    if bad:
        return None
    return out.reshape(codes.shape)


def _posit_decode(fmt: Posit, codes: torch.Tensor, dtype: torch.dtype) -> "torch.Tensor | None":
    """Posits of more than 16 bits: decode each code in float64 (exact), then round once to ``dtype``."""
    _, k = _numba()
    flat = codes.detach().contiguous().reshape(-1)
    if flat.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        return None  # the reference says what is wrong with the codes
    flat = flat.to(torch.int64)
    direct = dtype == torch.float64  # narrower dtypes: round_float64_to, the reference's own rounding
    out = torch.empty(flat.shape, dtype=dtype if direct else torch.float64)
    bad = _run(k.posit_decode, flat.numpy(), fmt.n, fmt.es, fmt.scale, out.numpy())
    if bad:
        return None
    values = out if direct else round_float64_to(out, dtype)
    return values.reshape(codes.shape)


def _unused_code(fmt: ScalarFormat) -> int:
    return 1 << (fmt.bits - 1) if getattr(fmt, "narrow", False) else -1


def codebook_bounds(xs: torch.Tensor, k: int, max_iterations: int) -> "torch.Tensor | None":
    """k-means cluster bounds (G, k + 1) of each sorted float64 row of ``xs`` (G, b), exactly as
    `lowbit.formats.learned.Codebook._fit` finds them row by row; None where numba does not run."""
    if resolve_backend(None, xs.device.type) != "numba" or xs.dim() != 2 or xs.shape[1] == 0:
        return None
    _, kern = _numba()
    out = torch.empty(xs.shape[0], k + 1, dtype=torch.int64)
    _run(kern.codebook_bounds, xs.contiguous().numpy(), k, max_iterations, out.numpy())
    return out
