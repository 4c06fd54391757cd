"""Bucket tables that round float32 inputs stochastically to formats of ≤ 8 bits by lookup.

Stochastic rounding of a magnitude ``a`` picks the format's next value up where the element's
uniform ``u < (a − lo) / gap``, with ``lo`` the value toward zero and ``gap`` the distance to the
next value up (posit, minifloat and uniform-grid formats all round so). For a format of ≤ 8 bits,
``lo``, ``gap`` and both results are constant over every group of float32 inputs that share their
top 16 bits, so the kernel (`stochastic_numba`, for the elements its arithmetic flags and for
the formats it does not cover) reads them from tables and only
hashes and compares per element: about twice the speed of the element kernels, bit for bit the
same results.

A bucket's *slot* is its top 16 bits and whether the low 16 bits are nonzero (the bucket's first
float has a slot of its own, as in the nearest-rounding table). Each slot's two results come from
the reference (``_encode64`` with every uniform forced: to 2, never up, and to −1, always up; the
first float with 0, so a format value keeps one result) at the slot's first, middle and last
float; ``lo`` and ``gap`` are read off them. Where a minifloat's next value up overflows to inf /
NaN, the gap is its binade's step (what the reference divides by). `float32_tables` returns None
(the element kernels run) unless every slot's probes agree and every gap is positive.
tests/kernels/test_stochastic_tables.py checks every slot's boundaries against the reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.formats._float64 import round_float64_to
from lowbit.formats.base import ScalarFormat
from lowbit.formats.fixed_point import _UniformGrid
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import Rounding

__all__ = ["Float32Tables", "bucket_probes", "float32_tables"]

_MAX_BITS = 8  # wider formats have values inside most buckets
_FAMILIES = (Posit, Minifloat, _UniformGrid)


@dataclass(frozen=True)
class Float32Tables:
    """Per slot j: ``lo[j]`` and ``gap[j]`` (float64; +inf: one result) and the float32 results
    down and up at ``results[2j]``, ``results[2j + 1]``: the numpy arrays the kernel reads.
    ``divide``: some gap is not a power of two (the kernel must divide, not multiply)."""

    lo: Any
    gap: Any
    results: Any
    divide: bool

    @property
    def arrays(self) -> tuple[Any, Any, Any]:
        return self.lo, self.gap, self.results


def bucket_probes() -> torch.Tensor:
    """The float32 probes of every bucket of 2^16 patterns (its top 16 bits), shape (4, 2^16): the
    bucket's first float, the one after it, its middle and its last float. The nearest-rounding
    table (`lowbit.kernels.dispatch`) and these tables check a bucket at these four.

    >>> bucket_probes()[:, 0x3F80].tolist()   # the bucket of 1.0
    [1.0, 1.0000001192092896, 1.00390625, 1.0078123807907104]
    """
    top = torch.arange(1 << 16, dtype=torch.int64) << 16
    patterns = torch.stack([top, top | 1, top | 0x8000, top | 0xFFFF])
    patterns = torch.where(patterns >= 1 << 31, patterns - (1 << 32), patterns).to(torch.int32)
    return patterns.view(torch.float32)


def _forced(fmt: ScalarFormat, x: torch.Tensor, u: float) -> torch.Tensor:
    """The reference's stochastic result (float64) of x with every uniform set to ``u``."""
    return fmt._decode64(fmt._encode64(x, Rounding.STOCHASTIC, torch.full_like(x, u)))


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: the same float64 value (NaN equals NaN; +0 and −0 differ)."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    return both_nan | (a.view(torch.int64) == b.view(torch.int64))


def _binade_step(fmt: Minifloat, value: torch.Tensor) -> torch.Tensor:
    """The distance from a finite nonzero minifloat value to the next one up in its binade."""
    exponent = torch.frexp(value.abs()).exponent.to(torch.int64) - 1
    step = exponent.clamp_min(fmt.min_normal_exponent) - fmt.man_bits
    return torch.ldexp(torch.ones_like(value), step)


@functools.lru_cache(maxsize=64)
def float32_tables(fmt: ScalarFormat) -> "Float32Tables | None":
    """The tables of ``fmt``; None for formats of more than 8 bits, of other families, or with a
    bucket the tables cannot serve."""
    if fmt.bits > _MAX_BITS or not isinstance(fmt, _FAMILIES):
        return None
    probes = bucket_probes().to(torch.float64)  # (4, 2^16): the first float, then three of the rest
    down, up = _forced(fmt, probes, 2.0), _forced(fmt, probes, -1.0)
    up[0] = _forced(fmt, probes[0], 0.0)

    # slot 2b: the bucket's first float alone; slot 2b + 1: the rest, when its probes agree
    for row in (2, 3):
        if not bool((_same(down[1], down[row]) & _same(up[1], up[row])).all()):
            return None
    down = torch.stack([down[0], down[1]], dim=1).reshape(-1)
    up = torch.stack([up[0], up[1]], dim=1).reshape(-1)

    one_result = _same(down, up)
    gap = up.abs() - down.abs()
    if isinstance(fmt, Minifloat):  # the next value up overflows: the reference divides by the step
        overflow = ~one_result & ~torch.isfinite(up) & torch.isfinite(down)
        gap = torch.where(overflow, _binade_step(fmt, down), gap)
    gap = torch.where(one_result, torch.full_like(gap, torch.inf), gap)
    if not bool(((gap > 0) & ~torch.isnan(gap)).all()):
        return None
    lo = torch.where(one_result, torch.zeros_like(down), down.abs())
    power_of_two = torch.isinf(gap) | (torch.frexp(gap).mantissa == 0.5)
    results = torch.stack([round_float64_to(down, torch.float32), round_float64_to(up, torch.float32)], dim=1)
    return Float32Tables(lo=lo.numpy(), gap=gap.numpy(), results=results.reshape(-1).numpy(),
                         divide=not bool(power_of_two.all()))
