"""Granules: how a tensor splits into channels or groups that each get their own parameters.

One rule, shared by the fitted formats (`lowbit.formats.learned`: levels per channel / group)
and by `lowbit.quant.Granularity` (scales and observer statistics per channel / group):

- per channel along ``axis``: one granule per index of that axis;
- per group: ``group_size`` contiguous elements along ``axis`` (a divisor of its length).

The *grid* is the number of granules along each dimension (the tensor's shape with ``axis``
reduced to its own length, channel, or to length // group_size, group; every other axis 1 for a
channel, its own length for a group).

>>> granule_grid((8, 64), 0), granule_grid((8, 64), 1), granule_grid((8, 64), 1, group_size=16)
((8, 1), (1, 64), (8, 4))
"""

from __future__ import annotations

import math

import torch

__all__ = ["normalize_axis", "granule_grid", "to_granule_rows", "from_granule_rows"]


def normalize_axis(axis: int, ndim: int) -> int:
    """``axis`` in [0, ndim); ValueError naming the allowed range otherwise."""
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis!r} is out of range for a {ndim}-d tensor; allowed: {-ndim}..{ndim - 1}")
    return axis % ndim


def granule_grid(shape: "tuple[int, ...] | torch.Size", axis: int = 0,
                 group_size: "int | None" = None) -> "tuple[int, ...]":
    """The number of granules along each dimension: per channel along ``axis`` (``group_size``
    None) or per ``group_size`` contiguous elements along ``axis``."""
    shape = tuple(shape)
    a = normalize_axis(axis, len(shape))
    if group_size is None:
        return tuple(n if d == a else 1 for d, n in enumerate(shape))
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}; allowed: an int >= 1")
    if shape[a] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the length {shape[a]} of axis {axis} "
                         f"(tensor shape {shape}); use a group size that divides {shape[a]}")
    return tuple(n // group_size if d == a else n for d, n in enumerate(shape))


def to_granule_rows(x: torch.Tensor, grid: "tuple[int, ...]") -> torch.Tensor:
    """``x`` as one row per granule of ``grid`` (row-major over the grid): shape (granules, elements each)."""
    shape = tuple(x.shape)
    block = [n // g for n, g in zip(shape, grid)]
    v = x.reshape([d for pair in zip(grid, block) for d in pair])
    nd = len(shape)
    v = v.permute([2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)])
    return v.reshape(math.prod(grid), math.prod(block))


def from_granule_rows(rows: torch.Tensor, shape: "tuple[int, ...]", grid: "tuple[int, ...]") -> torch.Tensor:
    """Inverse of `to_granule_rows` (contiguous: ops on it must not see a strided layout)."""
    nd = len(shape)
    block = [n // g for n, g in zip(shape, grid)]
    v = rows.reshape(*grid, *block)
    inverse = [0] * (2 * nd)
    for i in range(nd):
        inverse[2 * i], inverse[2 * i + 1] = i, nd + i
    return v.permute(inverse).contiguous().reshape(shape)
