"""Exact scalar oracle for posit<n, es> with scale s (docs/semantics.md, "Posit").

Everything here is computed with Python ints and :class:`fractions.Fraction`; no floating-point
arithmetic touches a value.  Encoding follows the 2022 Posit Standard literally: the exact value's
infinite posit bit string (regime, ``es`` exponent bits, fraction) is built and cut to the ``n - 1``
magnitude bits of the word, with the cut-off part acting as guard and sticky information.  Hence
the rounding point between magnitude codes ``c`` and ``c + 1`` is the value of the ``(n + 1)``-bit
code ``2c + 1``, which is the geometric (not arithmetic) mean where exponent bits are cut.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["posit_decode", "posit_encode", "posit_neighbors", "ROUNDING_MODES"]

#: Deterministic rounding modes understood by :func:`posit_encode`.
ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")


def _check_params(n: int, es: int, scale: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 32:
        raise ValueError(f"posit width n must be an int in [2, 32], got {n!r}")
    if not isinstance(es, int) or isinstance(es, bool) or not 0 <= es <= 5:
        raise ValueError(f"posit es must be an int in [0, 5], got {es!r}")
    if not isinstance(scale, int) or isinstance(scale, bool):
        raise ValueError(f"posit scale must be an int, got {scale!r}")


def _to_exact(x) -> Fraction | float:
    """Return x as an exact Fraction, or as the float nan / inf / -inf for non-finite input."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):  # includes bool
        return Fraction(int(x))
    xf = float(x)  # Python float, numpy floating scalars: all exact conversions to double
    if math.isnan(xf) or math.isinf(xf):
        return xf
    return Fraction(xf)


def _floor_log2(num: int, den: int) -> int:
    """The integer E with 2**E <= num/den < 2**(E + 1), for num, den > 0."""
    e = num.bit_length() - den.bit_length()
    # now 2**(e-1) < num/den < 2**(e+1); fix up to the exact floor
    if e >= 0:
        if num < (den << e):
            e -= 1
    elif (num << -e) < den:
        e -= 1
    return e


def _ratio_times_pow2(num: int, den: int, e: int) -> Fraction:
    """The Fraction num/den * 2**e."""
    return Fraction(num << e, den) if e >= 0 else Fraction(num, den << -e)


def posit_decode(code: int, n: int, es: int, scale: int = 0) -> Fraction | None:
    """Exact value of a posit<n, es> code (times 2**scale); ``None`` for NaR."""
    _check_params(n, es, scale)
    if not isinstance(code, int) or not 0 <= code < (1 << n):
        raise ValueError(f"posit{n} code must be an int in [0, {1 << n}), got {code!r}")
    if code == 0:
        return Fraction(0)
    if code == 1 << (n - 1):
        return None
    negative = code >> (n - 1) == 1
    mag = ((1 << n) - code) if negative else code
    nbits = n - 1  # magnitude bits after the sign
    first = (mag >> (nbits - 1)) & 1
    run = 0
    while run < nbits and ((mag >> (nbits - 1 - run)) & 1) == first:
        run += 1
    k = run - 1 if first == 1 else -run
    rest_len = max(nbits - run - 1, 0)  # bits after the regime's terminating bit
    rest = mag & ((1 << rest_len) - 1)
    if rest_len >= es:
        e = rest >> (rest_len - es)
        frac_len = rest_len - es
        frac = rest & ((1 << frac_len) - 1)
    else:  # exponent bits cut off by the word end read as 0
        e = rest << (es - rest_len)
        frac_len = 0
        frac = 0
    exponent = k * (1 << es) + e + scale
    value = _ratio_times_pow2((1 << frac_len) + frac, 1, exponent - frac_len)
    return -value if negative else value


def _round_magnitude(num: int, den: int, n: int, es: int, negative: bool, rounding: str) -> int:
    """Magnitude code of the value num/den > 0 (scale already removed), before saturation.

    The exact infinite posit bit string of the value (regime, es exponent bits, fraction) is
    read as the number  pos = (head + fraction) * 2**(n - 1 - head_len),  i.e. in units of the
    last of the n - 1 magnitude bits of the word: its integer part is the truncated magnitude
    code, its fractional part the cut-off bits (first = guard, rest = sticky), which the
    rounding mode turns into the kept code.  All integer arithmetic: pos = p / q exactly.
    """
    big_e = _floor_log2(num, den)
    k = big_e >> es  # floor division by 2**es
    if k >= n - 1:  # value >= useed**(n-1) > maxpos: saturates (caller clamps), skip huge ints
        return 1 << (n - 1)
    if k < -(n - 1):  # value < useed**-(n-1) < minpos: saturates (caller clamps)
        return 0
    e = big_e - (k << es)
    if k >= 0:
        regime_len = k + 2
        regime = ((1 << (k + 1)) - 1) << 1  # k + 1 ones then a zero
    else:
        regime_len = -k + 1
        regime = 1  # -k zeros then a one
    head = (regime << es) | e  # regime_len + es bits
    shift = (n - 1) - (regime_len + es)
    # significand a/b = value / 2**big_e in [1, 2); fraction = (a - b) / b
    a, b = (num, den << big_e) if big_e >= 0 else (num << -big_e, den)
    p, q = head * b + a - b, b
    if shift >= 0:
        p <<= shift
    else:
        q <<= -shift
    kept, r = divmod(p, q)
    if r == 0:
        return kept
    if rounding == "nearest_even":
        up = 2 * r > q or (2 * r == q and kept & 1 == 1)
    elif rounding == "nearest_away":
        up = 2 * r >= q
    elif rounding == "toward_zero":
        up = False
    elif rounding == "floor":
        up = negative
    elif rounding == "ceil":
        up = not negative
    else:  # pragma: no cover - checked by the caller
        raise AssertionError(rounding)
    return kept + 1 if up else kept


def posit_encode(x, n: int, es: int, scale: int = 0, rounding: str = "nearest_even") -> int:
    """Code of x (Fraction, int or float) rounded to posit<n, es> with scale ``scale``.

    NaN and +-inf give NaR; +-0 gives 0; a nonzero finite value never becomes 0 or NaR
    (it saturates to +-minpos / +-maxpos), in every rounding mode.
    """
    _check_params(n, es, scale)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    nar = 1 << (n - 1)
    xv = _to_exact(x)
    if isinstance(xv, float):  # nan or +-inf
        return nar
    if xv == 0:
        return 0
    negative = xv < 0
    num, den = abs(xv.numerator), xv.denominator
    if scale >= 0:
        den <<= scale
    else:
        num <<= -scale
    mag = _round_magnitude(num, den, n, es, negative, rounding)
    maxmag = (1 << (n - 1)) - 1
    mag = min(max(mag, 1), maxmag)  # saturation: never 0, never NaR
    return ((1 << n) - mag) if negative else mag


def posit_neighbors(x, n: int, es: int, scale: int = 0) -> tuple[int, int]:
    """Codes ``(lo, hi)`` of the posits just below-or-equal and just above-or-equal x.

    Both follow the saturation rule (they are the ``floor`` and ``ceil`` encodings), so for
    |x| > maxpos both are +-maxpos and for 0 < |x| < minpos both are +-minpos; for an exactly
    representable x, ``lo == hi``.  NaN / +-inf give ``(NaR, NaR)``.  A stochastic rounding of x
    must return one of the two codes.
    """
    return (posit_encode(x, n, es, scale, "floor"), posit_encode(x, n, es, scale, "ceil"))
