"""Deterministic input sweeps: binades, a format's value table (values, midpoints, neighbours),
raw float bit patterns, and chunking.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lowbit.testing.assertions import _to_float64_numpy


def random_binade_floats(
    n: int, lo_exp: int, hi_exp: int, *, seed: int, dtype: Any = np.float64, signed: bool = True
) -> np.ndarray:
    """``n`` values m·2^e with e uniform in [lo_exp, hi_exp], m uniform in [1, 2), random sign.

    The mantissa is drawn in float64 and the product rounded once to ``dtype`` (so float32
    results carry full 24-bit random significands; values below dtype's normal range become
    its subnormals).
    """
    rng = np.random.default_rng(seed)
    m = rng.uniform(1.0, 2.0, n)
    e = rng.integers(lo_exp, hi_exp + 1, n)
    v = np.ldexp(m, e)
    if signed:
        v = v * rng.choice(np.array([-1.0, 1.0]), n)
    with np.errstate(all="ignore"):
        return v.astype(dtype)


def table_points(
    values: "torch.Tensor | np.ndarray", dtype: Any = np.float64, *, exact: bool = True
) -> dict[str, np.ndarray]:
    """Interesting inputs around a sorted table of representable values.

    Returns ``{"values", "midpoints", "above_midpoints", "below_midpoints"}``: the values, the
    arithmetic midpoints of adjacent values (asserted exact in ``dtype`` unless ``exact=False``,
    which rounds them to ``dtype`` instead), and the next ``dtype`` number above / below each
    midpoint.
    """
    v = _to_float64_numpy(values)
    v = v[np.isfinite(v)]
    v = np.unique(v)
    mids64 = (v[1:] + v[:-1]) / 2
    with np.errstate(all="ignore"):
        mids = mids64.astype(dtype)
        vals = v.astype(dtype)
    if exact and not np.array_equal(mids.astype(np.float64), mids64):
        raise ValueError(f"some midpoints are not exact in {np.dtype(dtype).name}")
    inf = np.array(np.inf, dtype=dtype)
    return {
        "values": vals,
        "midpoints": mids,
        "above_midpoints": np.nextafter(mids, inf),
        "below_midpoints": np.nextafter(mids, -inf),
    }


_NP_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def random_float_patterns(n: int, dtype: torch.dtype, *, seed: int) -> torch.Tensor:
    """``n`` uniformly random bit patterns of ``dtype`` (float16/bfloat16/float32/float64) as a
    tensor: every class appears (±0, subnormals, ±inf, NaNs of both signs with payloads)."""
    width = torch.finfo(dtype).bits // 8
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, np.iinfo(_NP_UINT[width]).max, n, dtype=_NP_UINT[width], endpoint=True)
    signed = {2: np.int16, 4: np.int32, 8: np.int64}[width]
    return torch.from_numpy(raw.view(signed).copy()).view(dtype)


def every_float_pattern(dtype: torch.dtype) -> torch.Tensor:
    """All 65536 bit patterns of float16 or bfloat16, in pattern order."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"every_float_pattern: only 16-bit dtypes, got {dtype}")
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)


def unique_floats(x: np.ndarray) -> np.ndarray:
    """The distinct bit patterns of a float array (so -0.0 and +0.0 are both kept), in bit order."""
    x = np.ascontiguousarray(x)
    view = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
    return np.unique(x.view(view)).view(x.dtype)



def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``seq`` in consecutive slices of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
