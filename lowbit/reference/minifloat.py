"""Exact scalar oracle for IEEE-style minifloats e{E}m{M} (docs/semantics.md, "Minifloat").

Values are Python ints / :class:`fractions.Fraction`; no floating-point arithmetic touches a
value.  Rounding is done once from the exact input: round-to-nearest-even (or the directed mode)
on the integer significand, with the exponent range unbounded above and the subnormal grid below;
the policy's overflow rule is then applied to the rounded result.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "MinifloatParams",
    "minifloat_params",
    "minifloat_decode",
    "minifloat_encode",
    "minifloat_neighbors",
    "ROUNDING_MODES",
    "POLICIES",
]

#: Deterministic rounding modes understood by :func:`minifloat_encode`.
ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "floor", "ceil")
#: Special-value policies: IEEE (inf + NaN), finite (fn), finite + unsigned zero (fnuz),
#: finite + unsigned (fnu).
POLICIES = ("ieee", "fn", "fnuz", "fnu")


@dataclass(frozen=True)
class MinifloatParams:
    """Parameters of one minifloat format.

    ``policy`` is one of ``"ieee"``, ``"fn"``, ``"fnuz"``, ``"fnu"``; ``saturate`` is the
    ``_sat`` suffix (overflowing finite values and +-inf become +-max).
    """

    exp_bits: int
    man_bits: int
    bias: int
    policy: str
    saturate: bool = False

    def __post_init__(self) -> None:
        for name in ("exp_bits", "man_bits", "bias"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if not 1 <= self.exp_bits <= 10:
            raise ValueError(f"exp_bits must be in [1, 10], got {self.exp_bits}")
        if not 0 <= self.man_bits <= 23:
            raise ValueError(f"man_bits must be in [0, 23], got {self.man_bits}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not isinstance(self.saturate, bool):
            raise ValueError(f"saturate must be a bool, got {self.saturate!r}")
        if self.bits > 32:
            raise ValueError(f"a minifloat has at most 32 bits, e{self.exp_bits}m{self.man_bits}"
                             f" ({self.policy}) has {self.bits}")

    # ---- layout -------------------------------------------------------------------------
    @property
    def signed(self) -> bool:
        return self.policy != "fnu"

    @property
    def bits(self) -> int:
        return self.exp_bits + self.man_bits + (1 if self.signed else 0)

    @property
    def sign_bit(self) -> int:
        """The sign mask (0 for the unsigned fnu policy)."""
        return (1 << (self.bits - 1)) if self.signed else 0

    @property
    def has_nan(self) -> bool:
        if self.policy == "ieee":
            return self.man_bits > 0
        if self.policy == "fn":
            return self.bits >= 8
        return True  # fnuz, fnu

    @property
    def has_inf(self) -> bool:
        return self.policy == "ieee"

    @property
    def max_magnitude_code(self) -> int:
        """Magnitude code (code without the sign bit) of the largest finite value."""
        all_ones = (1 << (self.exp_bits + self.man_bits)) - 1
        if self.policy == "ieee":
            return all_ones - (1 << self.man_bits)  # top field reserved
        if self.policy == "fn":
            return all_ones - 1 if self.has_nan else all_ones
        if self.policy == "fnuz":
            return all_ones
        return all_ones - 1  # fnu: all ones is NaN

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (fnu: of the smallest value)."""
        return -self.bias if self.policy == "fnu" else 1 - self.bias

    @property
    def max_value(self) -> Fraction:
        return _decode_magnitude(self.max_magnitude_code, self)

    def nan_code(self, negative: bool = False) -> int:
        """Canonical NaN code (sign copied where the format has a signed NaN)."""
        if not self.has_nan:
            raise ValueError(f"{self} has no NaN code")
        if self.policy == "ieee":
            top = ((1 << self.exp_bits) - 1) << self.man_bits
            code = top | (1 << (self.man_bits - 1))
            return code | (self.sign_bit if negative else 0)
        if self.policy == "fn":
            return ((1 << (self.bits - 1)) - 1) | (self.sign_bit if negative else 0)
        if self.policy == "fnuz":
            return self.sign_bit
        return (1 << self.bits) - 1  # fnu


_ALIASES = {"fp16": "e5m10", "bf16": "e8m7", "fp32": "e8m23"}
_GENERIC = re.compile(r"e(\d+)m(\d+)(?:b(-?\d+))?(fnuz|fnu|fn)?(_sat)?")


def _default_bias(exp_bits: int, policy: str) -> int:
    return (1 << (exp_bits - 1)) if policy == "fnuz" else (1 << (exp_bits - 1)) - 1


def minifloat_params(name: str) -> MinifloatParams:
    """Parse a minifloat name: ``e{E}m{M}[b{bias}][fn|fnuz|fnu][_sat]`` (or fp16/bf16/fp32)."""
    if not isinstance(name, str):
        raise ValueError(f"minifloat name must be a str, got {name!r}")
    base, sat = (name[:-4], True) if name.endswith("_sat") else (name, False)
    base = _ALIASES.get(base, base)
    m = _GENERIC.fullmatch(base)
    if m is None or m.group(5) is not None:
        raise ValueError(
            f"not a minifloat name: {name!r}; expected e<E>m<M>[b<bias>][fn|fnuz|fnu][_sat],"
            f" e.g. e4m3fn, e5m2, e4m3b11fnuz, e8m0fnu, e5m2_sat"
        )
    exp_bits, man_bits = int(m.group(1)), int(m.group(2))
    policy = m.group(4) or "ieee"
    bias = int(m.group(3)) if m.group(3) is not None else _default_bias(exp_bits, policy)
    return MinifloatParams(exp_bits, man_bits, bias, policy, sat)


def _as_params(p) -> MinifloatParams:
    return minifloat_params(p) if isinstance(p, str) else p


def _to_exact(x) -> Fraction | float:
    """x as an exact Fraction; non-finite floats and -0.0 are returned as floats."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(int(x))
    xf = float(x)
    if math.isnan(xf) or math.isinf(xf) or (xf == 0.0 and math.copysign(1.0, xf) < 0):
        return xf
    return Fraction(xf)


def _floor_log2(num: int, den: int) -> int:
    """The integer E with 2**E <= num/den < 2**(E + 1), for num, den > 0."""
    e = num.bit_length() - den.bit_length()
    if e >= 0:
        if num < (den << e):
            e -= 1
    elif (num << -e) < den:
        e -= 1
    return e


def _pow2(e: int) -> Fraction:
    return Fraction(1 << e) if e >= 0 else Fraction(1, 1 << -e)


def _decode_magnitude(mag: int, p: MinifloatParams) -> Fraction:
    """Value of a finite magnitude code (no specials check)."""
    field = mag >> p.man_bits
    mant = mag & ((1 << p.man_bits) - 1)
    if field == 0 and p.policy != "fnu":  # subnormal
        return Fraction(mant) * _pow2(1 - p.bias - p.man_bits)
    return Fraction((1 << p.man_bits) + mant) * _pow2(field - p.bias - p.man_bits)


def minifloat_decode(code: int, p) -> Fraction | float:
    """Exact value of ``code``: a Fraction, or the float nan / inf / -inf / -0.0."""
    p = _as_params(p)
    if not isinstance(code, int) or not 0 <= code < (1 << p.bits):
        raise ValueError(f"code must be an int in [0, {1 << p.bits}), got {code!r}")
    negative = p.signed and bool(code & p.sign_bit)
    mag = code & ~p.sign_bit if p.signed else code
    all_ones = (1 << (p.exp_bits + p.man_bits)) - 1
    if p.policy == "ieee" and (mag >> p.man_bits) == (1 << p.exp_bits) - 1:
        if mag & ((1 << p.man_bits) - 1):
            return math.nan
        return -math.inf if negative else math.inf
    if p.policy == "fn" and p.has_nan and mag == all_ones:
        return math.nan
    if p.policy == "fnuz" and code == p.sign_bit:
        return math.nan
    if p.policy == "fnu" and mag == all_ones:
        return math.nan
    if mag == 0 and p.policy != "fnu":
        return -0.0 if negative else Fraction(0)
    v = _decode_magnitude(mag, p)
    return -v if negative else v


def _round_to_magnitude_code(num: int, den: int, p: MinifloatParams, up_mode) -> int:
    """Round num/den > 0 onto the grid with unbounded exponent above and the subnormal grid
    below (fnu: values below the smallest must be handled by the caller); return the magnitude
    code of the result, which may exceed ``p.max_magnitude_code`` (overflow, checked by the
    caller) because the exponent field is allowed to grow past the format's top field.

    ``up_mode(kept, twice_rem_vs_ulp)`` decides whether to round the integer significand up;
    its second argument is the sign of 2*remainder - ulp (-1, 0, +1), remainder nonzero.
    """
    e = max(_floor_log2(num, den), p.emin)
    # integer significand: q = value / 2**(e - M) = a / b; kept in [0, 2**(M+1))
    shift = p.man_bits - e
    a, b = (num << shift, den) if shift >= 0 else (num, den << -shift)
    kept, r = divmod(a, b)
    if r != 0:
        c = 2 * r - b
        if up_mode(kept, (c > 0) - (c < 0)):
            kept += 1
    if kept == 1 << (p.man_bits + 1):  # carried into the next binade
        kept >>= 1
        e += 1
    if kept < 1 << p.man_bits:  # subnormal or zero (only at e == emin)
        return kept
    field = e - p.emin + (0 if p.policy == "fnu" else 1)  # = e + bias
    return (field << p.man_bits) | (kept - (1 << p.man_bits))


def minifloat_encode(x, p, rounding: str = "nearest_even") -> int:
    """Code of x (Fraction, int or float incl. nan, +-inf, -0.0) rounded to the minifloat ``p``.

    ``p`` is a :class:`MinifloatParams` or a name understood by :func:`minifloat_params`.
    """
    p = _as_params(p)
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    xv = _to_exact(x)
    sign = p.sign_bit

    # ---- non-finite input and zero ------------------------------------------------------
    if isinstance(xv, float) and math.isnan(xv):
        neg = math.copysign(1.0, xv) < 0
        if p.has_nan:
            return p.nan_code(neg)
        if p.policy == "fn":  # fn formats without NaN, as ml_dtypes: +NaN -> the code of -0, -NaN -> of +0
            return 0 if neg else sign
        raise ValueError(f"{p} (IEEE policy with no mantissa bits) has no NaN code")
    if p.policy == "fnu":
        if isinstance(xv, float):  # +-inf, -0.0
            if xv == math.inf and p.saturate:
                return p.max_magnitude_code
            return p.nan_code()
        if xv <= 0:
            return p.nan_code()
    if isinstance(xv, float) and xv == 0.0:  # -0.0
        return 0 if p.policy == "fnuz" else sign
    negative = xv < 0
    sign_of_x = sign if negative else 0
    if isinstance(xv, float):  # +-inf
        if p.saturate:
            return sign_of_x | p.max_magnitude_code
        if p.policy == "ieee":
            return sign_of_x | (((1 << p.exp_bits) - 1) << p.man_bits)
        if p.has_nan:
            return p.nan_code(negative)
        return sign_of_x | p.max_magnitude_code  # fn without NaN
    if xv == 0:
        return 0

    # ---- finite nonzero: round once on the unbounded-above grid -------------------------
    num, den = abs(xv.numerator), xv.denominator
    if rounding == "nearest_even":
        def up(kept, cmp_half):
            return cmp_half > 0 or (cmp_half == 0 and kept & 1 == 1)
    elif rounding == "nearest_away":
        def up(kept, cmp_half):
            return cmp_half >= 0
    elif rounding == "toward_zero":
        def up(kept, cmp_half):
            return False
    elif rounding == "floor":
        def up(kept, cmp_half):
            return negative
    else:  # ceil
        def up(kept, cmp_half):
            return not negative

    if p.policy == "fnu" and _floor_log2(num, den) < p.emin:
        return 0  # no zero, no subnormals: tiny positives become the smallest value
    mag = _round_to_magnitude_code(num, den, p, up)

    if mag == 0:
        return 0 if p.policy == "fnuz" else sign_of_x
    if mag > p.max_magnitude_code:  # overflow rule on the rounded result
        toward_zero = (rounding == "toward_zero"
                       or (rounding == "floor" and not negative)
                       or (rounding == "ceil" and negative))
        if p.saturate or toward_zero:  # IEEE 754 7.4, applied to every policy
            return sign_of_x | p.max_magnitude_code
        if p.policy == "ieee":
            return sign_of_x | (((1 << p.exp_bits) - 1) << p.man_bits)
        if p.has_nan:
            return p.nan_code(negative)
        return sign_of_x | p.max_magnitude_code  # fn without NaN saturates
    return sign_of_x | mag


def minifloat_neighbors(x, p) -> tuple[int, int]:
    """Codes ``(lo, hi)`` of the values just below-or-equal and just above-or-equal x.

    They are the ``floor`` and ``ceil`` encodings, so they follow the policy's overflow,
    signed-zero and saturation rules (e.g. an IEEE value above max gives ``(max, +inf)``,
    e8m0fnu values below the smallest give ``(smallest, smallest)``).  A stochastic rounding of
    x must return one of the two codes.
    """
    p = _as_params(p)
    return (minifloat_encode(x, p, "floor"), minifloat_encode(x, p, "ceil"))
