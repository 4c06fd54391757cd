"""The exact Fraction oracle of `lowbit.reference` for a spec string, with batch helpers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np


def exact_float64(q: Any) -> "float | None":
    """``q`` (Fraction, int or float) as the float64 of exactly the same value, or None when
    float64 cannot hold it exactly.  Floats (nan, ±inf, -0.0 included) pass through.

    >>> from fractions import Fraction
    >>> exact_float64(Fraction(3, 8)), exact_float64(Fraction(1, 3))
    (0.375, None)
    """
    from fractions import Fraction

    if isinstance(q, float):
        return q
    q = Fraction(q)
    try:
        f = q.numerator / q.denominator  # correctly rounded int / int division
    except OverflowError:
        return None
    return f if math.isfinite(f) and Fraction(f) == q else None


class Oracle:
    """The exact oracle of `lowbit.reference` for one scalar spec string, with batch helpers.

    The spec is parsed here, independently of `lowbit.formats` (posit, fixed point and integer
    specs by their grammar, minifloats by `lowbit.reference.minifloat_params`), so a parsing
    slip in lowbit cannot hide from a comparison.  Values are exact: ``decode`` gives a
    Fraction, or a float for nan / ±inf / -0.0 (posit NaR -> nan).

    >>> o = oracle_for("posit8_es2")
    >>> o.encode(0.3), o.decode(64), o.neighbors(0.3)
    (50, Fraction(1, 1), (49, 50))
    """

    _POSIT = r"posit(\d+)_es(\d+)(?:_s([+-]?\d+))?"
    _FIXED = r"(u?)fixed(\d+)_f(\d+)"
    _INTEGER = r"(u?)int(\d+)(n?)"

    def __init__(self, spec: str) -> None:
        import re

        from lowbit import reference as ref

        self.spec = spec
        self._ref = ref
        self._values: dict[int, float] = {}
        self.unused_codes: frozenset[int] = frozenset()
        if m := re.fullmatch(self._POSIT, spec):
            self.family = "posit"
            self._args: tuple[Any, ...] = (int(m[1]), int(m[2]), int(m[3] or 0))
            self.bits = int(m[1])
        elif m := re.fullmatch(self._FIXED, spec):
            self.family = "fixed"
            self._args = (int(m[2]), int(m[3]), not m[1], False)
            self.bits = int(m[2])
        elif m := re.fullmatch(self._INTEGER, spec):
            self.family = "fixed"
            self._args = (int(m[2]), 0, not m[1], bool(m[3]))
            self.bits = int(m[2])
            if m[3]:
                self.unused_codes = frozenset({1 << (self.bits - 1)})
        else:
            self.family = "minifloat"
            self._args = (ref.minifloat_params(spec),)
            self.bits = self._args[0].bits

    def __repr__(self) -> str:
        return f"oracle_for({self.spec!r})"

    # ---- scalars
    def encode(self, x: Any, rounding: str = "nearest_even") -> int:
        """Code of ``x`` (float, int or Fraction) in a deterministic rounding mode."""
        if self.family == "posit":
            return self._ref.posit_encode(x, *self._args, rounding=rounding)
        if self.family == "fixed":
            return self._ref.fixed_encode(x, *self._args, rounding=rounding)
        return self._ref.minifloat_encode(x, self._args[0], rounding)

    def decode(self, code: int) -> Any:
        """Exact value of ``code``: Fraction, or float nan / ±inf / -0.0."""
        if self.family == "posit":
            v = self._ref.posit_decode(code, *self._args)
            return math.nan if v is None else v
        if self.family == "fixed":
            return self._ref.fixed_decode(code, *self._args)
        return self._ref.minifloat_decode(code, self._args[0])

    def neighbors(self, x: Any) -> tuple[int, int]:
        """Codes ``(lo, hi)`` that a stochastic rounding of ``x`` may return."""
        if self.family == "posit":
            return self._ref.posit_neighbors(x, *self._args)
        if self.family == "fixed":
            return self._ref.fixed_neighbors(x, *self._args)
        return self._ref.minifloat_neighbors(x, self._args[0])

    def value_float64(self, code: int) -> float:
        """float64 of ``code``'s value; raises ValueError if float64 cannot hold it exactly."""
        f = self._values.get(code)
        if f is None:
            f = exact_float64(self.decode(code))
            if f is None:
                raise ValueError(f"{self.spec} code {code} has a value float64 cannot hold exactly")
            self._values[code] = f
        return f

    # ---- batches (numpy in, numpy out)
    def encode_many(self, xs: "np.ndarray | Sequence[float]", rounding: str = "nearest_even") -> np.ndarray:
        enc = self.encode
        return np.fromiter((enc(float(x), rounding) for x in np.asarray(xs).reshape(-1)), dtype=np.int64)

    def neighbors_many(self, xs: "np.ndarray | Sequence[float]") -> tuple[np.ndarray, np.ndarray]:
        nb = self.neighbors
        pairs = [nb(float(x)) for x in np.asarray(xs).reshape(-1)]
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def values_many(self, codes: "np.ndarray | Sequence[int]") -> np.ndarray:
        """Exact float64 values of ``codes`` (decoded once per distinct code)."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        distinct, inverse = np.unique(codes, return_inverse=True)
        table = np.array([self.value_float64(int(c)) for c in distinct], dtype=np.float64)
        return table[inverse.reshape(-1)]


def oracle_for(spec: str) -> Oracle:
    """The (cached) `Oracle` of a posit, minifloat, fixed point or integer spec string."""
    return _oracle_cached(spec)


@functools.lru_cache(maxsize=None)
def _oracle_cached(spec: str) -> Oracle:
    return Oracle(spec)
