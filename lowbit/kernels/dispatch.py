"""Route encode / quantize / decode of scalar formats to the numba kernels.

Installed as the accelerator of `lowbit.formats.base` when `lowbit.kernels` is imported (the
formats layer knows nothing of kernels). Each call returns ``None`` when the fast path does not
apply (non-CPU tensor under ``auto``, a format or dtype it does not cover), and the caller then
runs the torch reference.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any, Callable

import numpy as np
import torch

from lowbit.formats._float64 import round_float64_to
from lowbit.formats.base import ScalarFormat
from lowbit.formats.fixed_point import _UniformGrid
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import ROUNDING_MODES, Rounding, draw_seed
from lowbit.kernels import get_backend, hugepages, resolve_backend, runtime, stochastic_tables

_TABLE_BITS = 16
_FMAX32 = 3.4028234663852886e38  # float32's largest finite value


def _numba() -> Any:
    return runtime.modules()


_HALF = (torch.float16, torch.bfloat16)  # read and written as int16 bit patterns
_IN_KIND = {torch.float32: 0, torch.float64: 0, torch.float16: 1, torch.bfloat16: 2}  # numba_cpu.IN_*
_OUT_KIND = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}  # numba_cpu.OUT_*


def _limits(dtype: torch.dtype) -> tuple[float, float]:
    """(max finite, smallest subnormal) of a float32 / float64 output (unused for 16-bit outputs)."""
    if dtype == torch.float32:
        return float(torch.finfo(torch.float32).max), 2.0**-149
    return float(torch.finfo(torch.float64).max), 5e-324


def _array(t: torch.Tensor) -> Any:
    """The numpy view of a contiguous tensor the kernels read or write (16-bit floats as int16 bits)."""
    t = t.detach().reshape(-1)
    return (t.view(torch.int16) if t.dtype in _HALF else t).numpy()


def _falls_back(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return None (run the reference) when a kernel cannot compile here, unless numba was asked for."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except runtime.KernelUnavailable:
            asked = args[-1] if isinstance(args[-1], str) else get_backend()
            if asked == "numba":
                raise
            runtime.warn_reference_fallback()
            return None

    return wrapper


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
    """Every code's value already cast to ``dtype`` (numpy; 16-bit floats as int16 bit patterns),
    for formats of ≤ 16 bits."""
    return _array(round_float64_to(fmt._table, dtype))


def _run(kernel: Callable[..., Any], *args: Any) -> Any:
    """Launch a parallel kernel (`lowbit.kernels.runtime.launch`: thread count, layer, cache)."""
    return runtime.launch(kernel, *args)


def _applies(fmt: ScalarFormat, x: torch.Tensor, backend: "str | None") -> bool:
    return resolve_backend(backend, x.device.type) == "numba" and _params(fmt) is not None


def _flat_input(x: torch.Tensor) -> torch.Tensor:
    """x flat and contiguous, in its own dtype (16-bit floats are read as bit patterns)."""
    return x.detach().contiguous().reshape(-1)


def _seed(mode: Rounding, generator: "torch.Generator | None") -> int:
    return draw_seed(generator) if mode is Rounding.STOCHASTIC else 0


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the bytes a and b span (first to last element) intersect."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        start = t.data_ptr()
        extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
        low = start - sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if stride < 0)
        return low, low + (extent + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _writes_in_place(out: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether the kernel may write straight into ``out`` while it reads ``flat``: out is
    contiguous and either is exactly the memory flat is read from or does not overlap it
    (a partial overlap, e.g. ``quantize(b[:-1], out=b[1:])``, would read values already written)."""
    if not out.is_contiguous():
        return False
    if out.data_ptr() == flat.data_ptr() and out.numel() == flat.numel():
        return True
    return not _shares_memory(out, flat)


@_falls_back
def encode(fmt: ScalarFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
           backend: "str | None") -> "torch.Tensor | None":
    if not _applies(fmt, x, backend):
        return None
    family, p = _params(fmt)  # type: ignore[misc]
    _, k = _numba()
    flat = _flat_input(x)
    if flat.dtype in _HALF:  # exact in float32: the encode kernels take float32 / float64 input only
        flat = flat.to(torch.float32)
    out = hugepages.empty(flat.shape, fmt.code_dtype)
    m = ROUNDING_MODES.index(mode.value)
    seed = _seed(mode, generator)
    xs, os = flat.numpy(), out.numpy()
    if family == "posit":
        _run(k.posit_encode(m), xs, os, *p, seed, m)
    elif family == "minifloat":
        _run(k.minifloat_encode(m), xs, os, *p, seed, m)
    else:
        _run(k.grid_encode(m), xs, os, *p, seed, m)
    return out.reshape(x.shape)


@_falls_back
def quantize(fmt: ScalarFormat, x: torch.Tensor, mode: Rounding, generator: "torch.Generator | None",
             out: "torch.Tensor | None", backend: "str | None") -> "torch.Tensor | None":
    """Every input dtype is read in place and every output written directly in x's dtype, so the
    only extra memory is the output (and a contiguous copy of a strided input)."""
    if not _applies(fmt, x, backend):
        return None
    family, p = _params(fmt)  # type: ignore[misc]
    _, k = _numba()
    flat = _flat_input(x)
    if out is not None and _writes_in_place(out, flat):
        result = out
    else:
        result = hugepages.empty(x.shape, x.dtype)
    m = ROUNDING_MODES.index(mode.value)
    deterministic = mode is not Rounding.STOCHASTIC
    big = deterministic and flat.numel() >= _TABLES_FROM
    table32 = (_float32_table(fmt, m) if deterministic and x.dtype == torch.float32
               and flat.numel() >= _FLOAT32_TABLE_FROM else None)
    arithmetic32 = _stochastic32(fmt) if not deterministic and x.dtype == torch.float32 else None
    stochastic32 = (stochastic_tables.float32_tables(fmt) if not deterministic and x.dtype == torch.float32
                    and flat.numel() >= _STOCHASTIC_TABLES_FROM else None)
    if big and x.dtype in _HALF:
        _run(k.table_lookup16, _array(flat), _half_table(fmt, m, x.dtype), _array(result))
    elif table32 is not None:
        _run(k.table_lookup32, flat.view(torch.int32).numpy(), table32, _array(result))
    elif arithmetic32 is not None or stochastic32 is not None:
        from lowbit.kernels import stochastic_numba

        flags, params = arithmetic32 if arithmetic32 is not None else _TABLES_ONLY
        staged = result.data_ptr() == flat.data_ptr()  # in place: the flagged elements need x still
        tables = stochastic32.arrays + (stochastic32.divide,) if stochastic32 is not None else _NO_TABLES
        _run(stochastic_numba.stochastic_float32(*flags, staged),
             flat.view(torch.int32).numpy(), flat.numpy(), *params, *tables, _seed(mode, generator), _array(result))
    else:
        _quantize_into(fmt, family, p, m, _seed(mode, generator), _array(flat), _array(result), x.dtype)
    if out is None:
        return result
    if result is not out:
        with torch.no_grad():
            out.copy_(result)
    return out


def _quantize_into(fmt: ScalarFormat, family: str, p: "tuple[Any, ...]", m: int, seed: int, xs: Any, rs: Any,
                   dtype: torch.dtype) -> None:
    """Run the quantize kernel of ``fmt`` on the arrays of a ``dtype`` tensor (see `_array`)."""
    _, k = _numba()
    ink, outk = _IN_KIND[dtype], _OUT_KIND[dtype]
    fmax, tiny = _limits(dtype)
    if family == "posit":
        if fmt.bits <= _TABLE_BITS:
            _run(k.posit_quantize_table(m, ink), xs, rs, *p, seed, _value_table(fmt, dtype), m)
        else:
            _run(k.posit_quantize(m, ink, outk), xs, rs, *p, seed, fmax, tiny, m)
    elif family == "minifloat":
        e, mb, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code, signed_nan = p
        _run(k.minifloat_quantize(m, ink, outk), xs, rs, mb, emin, maxv, minpos, sub, sat, inf, nan, fnu, fnuz,
             seed, fmax, tiny, m)
    else:
        fs, bound, kmin, kmax, _ = p
        _run(k.grid_quantize(m, ink, outk), xs, rs, fs, bound, kmin, kmax, seed, fmax, tiny, m)


_TABLES_FROM = 1 << 16  # 16-bit inputs of at least this many elements use a lookup table (deterministic modes)
# float32 inputs use the float32 table wherever the format has one: a lookup on the calling
# thread costs ~0.5 ns per element, the element kernel ~2 ns plus waking a worker (~20 µs on an
# idle machine, often milliseconds on a loaded one; benchmarks/bench_training.py)
_FLOAT32_TABLE_FROM = 1
# stochastic rounding of float32 inputs by bucket tables (`stochastic_tables`: ~0.1-0.2 s to build
# once per format) from this many elements
_STOCHASTIC_TABLES_FROM = 1 << 12


_NO_TABLES = (np.zeros(1), np.zeros(1), np.zeros(2, dtype=np.float32), False)
# `stochastic_numba`'s TABLES family (every element by the bucket tables): flags and unused parameters
_TABLES_ONLY = ((3, False, True, False, 0), (np.int32(0), np.int32(0), np.int32(0), np.float32(0), np.float32(0),
                                             np.float32(0), np.zeros(10), np.zeros(1, dtype=np.float32)))


@functools.lru_cache(maxsize=256)
def _stochastic32(fmt: ScalarFormat) -> "tuple[tuple[Any, ...], tuple[Any, ...]] | None":
    """The closure constants (but ``staged``) and the parameters of
    `stochastic_numba.stochastic_float32` for ``fmt``, or None where its arithmetic does not hold
    exactly (a spacing outside float32's normal powers of two, limits not exact in float32)."""
    from lowbit.kernels import stochastic_numba as sn

    family, p = _params(fmt)  # type: ignore[misc]
    f32, i32 = np.float32, np.int32
    none = np.zeros(1, dtype=np.float32)
    if family == "posit":
        n, es, scale = p
        table = _value_table(fmt, torch.float32) if fmt.bits <= _TABLE_BITS else none
        if abs(scale) > 128:  # the exponent-field arithmetic stays inside int32
            return None
        element = np.array([n, es, scale] + [0] * 7, dtype=np.float64)
        return (sn.POSIT, True, True, False, 23 + es), (i32((127 + scale) << 23), i32(n - 1 - es), i32(0),
                                                        f32(_FMAX32), f32(_FMAX32), f32(0), element, table)
    if family == "minifloat":
        e, mb, bias, emin, maxv, minpos, signed, sub, sat, inf, nan, fnu, fnuz, nan_code, signed_nan = p
        qmin = emin - mb
        if not (1 <= mb <= 23 and -126 <= qmin <= 0 and float(f32(maxv)) == maxv and float(f32(minpos)) == minpos):
            return None
        element = np.array([maxv, minpos, sub, sat, inf, nan, fnu, fnuz, mb, emin], dtype=np.float64)
        check_min = bool(fnu or not sub)  # no zero (fnu: 0 becomes NaN) or no values below min_positive
        return (sn.MINIFLOAT, bool(fnuz), bool(signed and not fnu), check_min, 0), (
            i32(mb << 23), i32(0), i32((qmin + 127) << 23), f32(maxv), f32(maxv), f32(minpos), element, none)
    frac_scale, bound, k_min, k_max, _ = p
    q = -round(math.log2(frac_scale))
    top, bottom = k_max / frac_scale, -k_min / frac_scale
    if not (2.0**q == 1 / frac_scale and -126 <= q <= 0 and float(f32(top)) == top and float(f32(bottom)) == bottom):
        return None
    element = np.array([frac_scale, bound, k_min, k_max] + [0] * 6, dtype=np.float64)
    return (sn.GRID, True, True, False, 0), (i32(0x7F800000), i32(0), i32((q + 127) << 23), f32(top), f32(bottom),
                                             f32(0), element, none)


@functools.lru_cache(maxsize=64)
def _half_table(fmt: ScalarFormat, m: int, dtype: torch.dtype) -> Any:
    """quantize of every float16 / bfloat16 bit pattern in rounding mode ``m`` (deterministic modes),
    computed once by the element kernel: a 16-bit input then costs one table lookup per element."""
    family, p = _params(fmt)  # type: ignore[misc]
    patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    patterns = torch.cat([patterns[1 << 15:], patterns[: 1 << 15]])  # table[i] is the value of pattern i (mod 2^16)
    table = torch.empty(1 << 16, dtype=dtype)
    _quantize_into(fmt, family, p, m, 0, patterns.numpy(), _array(table), dtype)
    return _array(table)


@functools.lru_cache(maxsize=64)
def _float32_table(fmt: ScalarFormat, m: int) -> Any:
    """For a format whose every rounding boundary (values, midpoints) has at most 7 fraction bits
    and lies in float32's range: quantize of float32 inputs by their top 16 bits, as pairs
    (value at the bucket's first float, value inside the bucket); None for any other format.

    The bucket of top bits b holds the float32 patterns b·2^16 … b·2^16 + 0xFFFF. quantize is
    monotonic, so it is constant inside the bucket when the values just after its first
    pattern, in its middle and at its last pattern are equal; that is checked for every bucket
    (by the element kernel itself), else the table is not used.
    """
    if fmt.bits > 8:
        return None
    family, p = _params(fmt)  # type: ignore[misc]
    probes = stochastic_tables.bucket_probes()  # (4, 65536)
    values = torch.empty(probes.shape, dtype=torch.float32)
    _quantize_into(fmt, family, p, m, 0, probes.reshape(-1).numpy(), _array(values), torch.float32)
    bits = values.view(torch.int32)
    if not (torch.equal(bits[1], bits[2]) and torch.equal(bits[2], bits[3])):
        return None
    return values[:3:2].T.contiguous().reshape(-1).numpy()  # [start value, inside value] per bucket


@_falls_back
def decode(fmt: ScalarFormat, codes: torch.Tensor, dtype: torch.dtype,
           backend: "str | None") -> "torch.Tensor | None":
    """Table-lookup decode for formats of ≤ 16 bits (straight into ``dtype``, 16-bit floats too).

    Returns None (so the reference runs and raises its precise error) if any code is invalid.
    """
    # the backend is resolved first, so a bad name or numba-on-GPU raises for every format
    if not _applies(fmt, codes, backend):
        return None
    if fmt.bits > _TABLE_BITS and isinstance(fmt, Posit):
        return _posit_decode(fmt, codes, dtype)
    if fmt.bits > _TABLE_BITS:
        return None
    _, k = _numba()
    table = _value_table(fmt, dtype)
    flat = codes.detach().contiguous().reshape(-1)
    if flat.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        flat = flat.to(torch.int64)
    out = hugepages.empty(flat.shape, dtype)
    bad = _run(k.table_decode, flat.numpy(), table, _unused_code(fmt), _array(out))
    if bad:
        return None
    return out.reshape(codes.shape)


def _posit_decode(fmt: Posit, codes: torch.Tensor, dtype: torch.dtype) -> "torch.Tensor | None":
    """Posits of more than 16 bits (`lowbit.kernels.posit_decode_numba`): each code's exact value,
    rounded once to ``dtype``. int32 / int64 codes are read as they are (no widened copy)."""
    from lowbit.kernels import posit_decode_numba

    flat = codes.detach().contiguous().reshape(-1)
    if flat.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        return None  # the reference says what is wrong with the codes
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.to(torch.int32)  # one compiled kernel per output for every narrower code dtype
    out = hugepages.empty(flat.shape, dtype)
    fmax, tiny = _limits(dtype)
    kind = _OUT_KIND[dtype]
    if dtype == torch.float32 and fmt.max <= fmax and fmt.min_positive >= torch.finfo(torch.float32).tiny:
        kind = posit_decode_numba.OUT_F32_IN_RANGE  # every value rounds to a normal float32: no finish
    target = _array(out)
    if dtype == torch.float32:
        target = target.view("int32")  # written as bit patterns
    wide = flat.dtype == torch.int64
    words = flat.numpy().view("uint32")  # 1 (int32) or 2 (int64) words per code
    kernel = posit_decode_numba.posit_decode(kind)
    low, high = _run(kernel, words, 2 if wide else 1, 0 if sys.byteorder == "little" else 1, fmt.n, fmt.es,
                     fmt.scale, target, fmax, tiny)
    # a code outside [0, 2^n): a high word of an int64 code set, or a low word too wide (an int32
    # code must also be nonnegative: below 2^31)
    if int(high) or int(low) >> (fmt.n if wide else min(fmt.n, 31)):
        return None
    return out.reshape(codes.shape)


def _unused_code(fmt: ScalarFormat) -> int:
    return 1 << (fmt.bits - 1) if getattr(fmt, "narrow", False) else -1


@_falls_back
def codebook_bounds(xs: torch.Tensor, k: int, max_iterations: int) -> "torch.Tensor | None":
    """k-means cluster bounds (G, k + 1) of each sorted float64 row of ``xs`` (G, b), exactly as
    `lowbit.formats.learned.Codebook._fit` finds them row by row; None where numba does not run."""
    if resolve_backend(None, xs.device.type) != "numba" or xs.dim() != 2 or xs.shape[1] == 0:
        return None
    _, kern = _numba()
    out = torch.empty(xs.shape[0], k + 1, dtype=torch.int64)
    _run(kern.codebook_bounds, xs.contiguous().numpy(), k, max_iterations, out.numpy())
    return out
