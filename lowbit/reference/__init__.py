"""Exact scalar oracles, used by tests, never on the hot path.

Pure Python (ints and :class:`fractions.Fraction` only) implementations of docs/semantics.md,
written independently of ``lowbit.formats`` and ``lowbit.kernels`` so they can check them.
"""

from lowbit.reference.fixed import fixed_decode, fixed_encode, fixed_neighbors, fixed_range
from lowbit.reference.minifloat import (
    MinifloatParams,
    minifloat_decode,
    minifloat_encode,
    minifloat_neighbors,
    minifloat_params,
)
from lowbit.reference.posit import posit_decode, posit_encode, posit_neighbors

__all__ = [
    "posit_decode",
    "posit_encode",
    "posit_neighbors",
    "MinifloatParams",
    "minifloat_params",
    "minifloat_decode",
    "minifloat_encode",
    "minifloat_neighbors",
    "fixed_encode",
    "fixed_decode",
    "fixed_neighbors",
    "fixed_range",
]
