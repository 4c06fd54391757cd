"""Exact oracle for the quire (docs/semantics.md, "The quire: exact accumulation").

A dot product is computed here with Python ints and :class:`fractions.Fraction` only: every
product exact, the sum exact, then one rounding, done by CPython's correctly rounded int / int
division (float64) or by the independent scalar oracles of this package (posit, minifloat,
fixed point). Slow on purpose; tests compare `lowbit.exact_matmul` with it.

>>> from fractions import Fraction
>>> exact_dot([3.2e7, 1.0, -1.0, 8e7], [4e7, 1.0, -1.0, -1.6e7])
Fraction(2, 1)
>>> round_once(Fraction(1, 3), "float64") == 1 / 3
True
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Sequence

from lowbit.reference.fixed import fixed_decode, fixed_encode
from lowbit.reference.minifloat import minifloat_decode, minifloat_encode, minifloat_params
from lowbit.reference.posit import posit_decode, posit_encode

__all__ = ["exact_dot", "round_once", "oracle_matmul"]

#: result dtypes (by name) the oracle rounds to, and their minifloat parameters (None: float64)
_DTYPE_PARAMS = {"float64": None, "float32": "e8m23", "float16": "e5m10", "bfloat16": "e8m7"}


def _special(values: Iterable[float]) -> "float | None":
    """The IEEE value of a sum of products that holds NaN or inf (None if all are finite)."""
    pos = neg = nan = False
    for v in values:
        if math.isnan(v):
            nan = True
        elif v == math.inf:
            pos = True
        elif v == -math.inf:
            neg = True
    if nan or (pos and neg):
        return math.nan
    if pos:
        return math.inf
    if neg:
        return -math.inf
    return None


def exact_dot(a: Sequence[float], b: Sequence[float]) -> "Fraction | float":
    """The exact value of sum_k a[k]·b[k]: a Fraction, or NaN / ±inf as IEEE says.

    NaN if any product is NaN (a NaN factor, or inf·0) or if products of both infinite signs
    occur; else ±inf if an infinite product occurs; else the exact Fraction (0 for empty input).
    """
    if len(a) != len(b):
        raise ValueError(f"exact_dot needs equally long operands, got {len(a)} and {len(b)}")
    floats = [(float(x), float(y)) for x, y in zip(a, b)]
    # Python's float product follows IEEE when a factor is NaN or inf (inf·0 = nan)
    special = _special(x * y for x, y in floats if not (math.isfinite(x) and math.isfinite(y)))
    if special is not None:
        return special
    return sum((Fraction(x) * Fraction(y) for x, y in floats), Fraction(0))


def round_once(value: "Fraction | float", target) -> float:
    """``value`` rounded once (nearest even) to ``target``, returned as a Python float.

    ``target``: ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``, or a lowbit scalar
    format object (posit, minifloat, fixed point, integer: only its parameters are read). NaN and
    ±inf follow the target's own encoding rules (IEEE for dtypes; NaR for posits).
    """
    if isinstance(target, str):
        if target not in _DTYPE_PARAMS:
            raise ValueError(f"target must be one of {sorted(_DTYPE_PARAMS)} or a scalar format, got {target!r}")
        params = _DTYPE_PARAMS[target]
        if params is None:
            if isinstance(value, float):
                return value
            try:
                return value.numerator / value.denominator  # correctly rounded int / int
            except OverflowError:
                return math.inf if value > 0 else -math.inf
        return _as_float(minifloat_decode(minifloat_encode(value, params), params))
    kind = type(target).__name__
    if kind == "Posit":
        n, es, s = target.n, target.es, target.scale
        out = posit_decode(posit_encode(value, n, es, s), n, es, s)
        return math.nan if out is None else float(out)
    if kind == "Minifloat":
        p = minifloat_params(str(target))
        return _as_float(minifloat_decode(minifloat_encode(value, p), p))
    if kind in ("FixedPoint", "IntegerFormat"):
        args = (target.word_bits, getattr(target, "frac_bits", 0), target.signed, target.narrow)
        return float(fixed_decode(fixed_encode(value, *args), *args))
    raise ValueError(f"target must be a dtype name or a posit / minifloat / fixed / integer format, got {target!r}")


def _as_float(v: "Fraction | float") -> float:
    return v if isinstance(v, float) else float(v)


def oracle_matmul(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], target,
                  bias: "Sequence[float] | None" = None, n: "int | None" = None) -> list[list[float]]:
    """The [m][n] matrix of round_once(exact a[i]·b[:, j] (+ bias[j]), target), as Python floats.

    ``n`` is needed only when b has no rows (k = 0) and no bias tells it.
    """
    k = len(b)
    if n is None:
        n = len(b[0]) if k else (len(bias) if bias is not None else 0)
    out = []
    for row in a:
        line = []
        for j in range(n):
            xs, ys = list(row), [b[t][j] for t in range(k)]
            if bias is not None:
                xs.append(bias[j])
                ys.append(1.0)
            line.append(round_once(exact_dot(xs, ys), target))
        out.append(line)
    return out
