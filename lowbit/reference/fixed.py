"""Exact scalar oracle for fixed point and integers (docs/semantics.md, "Fixed point", "Integer").

Value = k * 2**(-frac_bits) with k in [-2**(w-1), 2**(w-1) - 1] (signed; narrow:
[-(2**(w-1) - 1), 2**(w-1) - 1]) or [0, 2**w - 1] (unsigned).  The code is k mod 2**w.
Saturating; NaN -> 0; +-inf -> the range ends.  Integers are fixed point with frac_bits = 0.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["fixed_encode", "fixed_decode", "fixed_neighbors", "fixed_range", "ROUNDING_MODES"]

#: Deterministic rounding modes understood by :func:`fixed_encode`.
ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")


def fixed_range(word_bits: int, frac_bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer range ``(kmin, kmax)`` of k, after checking the parameters."""
    for name, v in (("word_bits", word_bits), ("frac_bits", frac_bits)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name} must be an int, got {v!r}")
    if signed:
        if not 2 <= word_bits <= 32:
            raise ValueError(f"signed word_bits must be in [2, 32], got {word_bits}")
    elif not 1 <= word_bits <= 32:
        raise ValueError(f"unsigned word_bits must be in [1, 32], got {word_bits}")
    if not 0 <= frac_bits <= 64:
        raise ValueError(f"frac_bits must be in [0, 64], got {frac_bits}")
    if narrow and not signed:
        raise ValueError("narrow (symmetric) range is only defined for signed formats")
    if signed:
        kmax = (1 << (word_bits - 1)) - 1
        return (-kmax if narrow else -kmax - 1), kmax
    return 0, (1 << word_bits) - 1


def _round_to_int(q: Fraction, rounding: str) -> int:
    fl = q.numerator // q.denominator  # floor
    rem = q - fl
    if rem == 0:
        return fl
    half = Fraction(1, 2)
    if rounding == "nearest_even":
        return fl + 1 if (rem > half or (rem == half and fl & 1 == 1)) else fl
    if rounding == "nearest_away":
        if rem == half:
            return fl + 1 if q > 0 else fl
        return fl + 1 if rem > half else fl
    if rounding == "toward_zero":
        return fl + 1 if q < 0 else fl
    if rounding == "floor":
        return fl
    if rounding == "ceil":
        return fl + 1
    raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")


def fixed_encode(x, word_bits: int, frac_bits: int, signed: bool, narrow: bool = False,
                 rounding: str = "nearest_even") -> int:
    """Code (k mod 2**word_bits) of x (Fraction, int or float) rounded and clamped."""
    kmin, kmax = fixed_range(word_bits, frac_bits, signed, narrow)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if isinstance(x, Fraction):
        xv = x
    elif isinstance(x, int):
        xv = Fraction(int(x))
    else:
        xf = float(x)
        if math.isnan(xf):
            return 0
        if math.isinf(xf):
            return (kmax if xf > 0 else kmin) % (1 << word_bits)
        xv = Fraction(xf)
    k = _round_to_int(xv * (1 << frac_bits), rounding)
    k = min(max(k, kmin), kmax)
    return k % (1 << word_bits)


def fixed_decode(code: int, word_bits: int, frac_bits: int, signed: bool,
                 narrow: bool = False) -> Fraction:
    """Exact value of ``code``; ValueError for the unused code 2**(w-1) of a narrow format."""
    fixed_range(word_bits, frac_bits, signed, narrow)
    if not isinstance(code, int) or not 0 <= code < (1 << word_bits):
        raise ValueError(f"code must be an int in [0, {1 << word_bits}), got {code!r}")
    k = code
    if signed and code >= 1 << (word_bits - 1):
        if narrow and code == 1 << (word_bits - 1):
            raise ValueError(f"code {code} is unused in a narrow {word_bits}-bit format")
        k = code - (1 << word_bits)
    return Fraction(k, 1 << frac_bits)


def fixed_neighbors(x, word_bits: int, frac_bits: int, signed: bool,
                    narrow: bool = False) -> tuple[int, int]:
    """Codes ``(lo, hi)`` of the values just below-or-equal and just above-or-equal x (clamped)."""
    return (fixed_encode(x, word_bits, frac_bits, signed, narrow, "floor"),
            fixed_encode(x, word_bits, frac_bits, signed, narrow, "ceil"))
