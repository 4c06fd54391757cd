"""IEEE-style minifloats of any exponent/mantissa split: FP32, FP16, BF16, FP8, FP6, FP4, E8M0.

Spec strings ``e{E}m{M}[b{bias}][fn|fnuz|fnu][_sat]``: ``e4m3fn``, ``e5m2``, ``e4m3b11fnuz``,
``e8m0fnu``, ``e2m1fn``, ``e5m10`` (= fp16), ``e8m7`` (= bf16), ``e8m23`` (= fp32), custom
``e6m1``. The suffix names the special-value policy exactly as ml_dtypes and torch do; ``_sat``
asks for saturating overflow. See docs/semantics.md for every rule.

Rounding is done on float64 with an exact power-of-two scaling: |x| / 2^(e−M) is an exact
float64 whose integer part is the kept significand, so every mode is an integer rounding of it.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import exponent_of, pow2
from lowbit.formats.base import ScalarFormat
from lowbit.formats.rounding import Rounding, round_up, rounds_toward_zero

__all__ = ["Minifloat", "POLICIES"]

POLICIES = ("ieee", "fn", "fnuz", "fnu")
_POLICY_SUFFIX = {"ieee": "", "fn": "fn", "fnuz": "fnuz", "fnu": "fnu"}
_STANDARD = {
    "ieee": "IEEE 754-style: top exponent holds ±inf and NaN",
    "fn": "finite (OCP OFP8 / OCP MX): no infinities",
    "fnuz": "finite, unsigned zero (Graphcore/AMD): no infinities, no −0, NaN = 0x80…",
    "fnu": "finite, unsigned (OCP MX E8M0 scale): no sign, no zero, no subnormals",
}


def default_bias(exp_bits: int, policy: str) -> int:
    """IEEE bias 2^(E−1)−1; fnuz formats use 2^(E−1) (as ml_dtypes)."""
    return (1 << (exp_bits - 1)) if policy == "fnuz" else (1 << (exp_bits - 1)) - 1


@dataclasses.dataclass(frozen=True, repr=False)
class Minifloat(ScalarFormat):
    """A binary floating-point format with ``exp_bits`` exponent and ``man_bits`` mantissa bits.

    >>> fmt = Minifloat(4, 3, policy="fn")
    >>> str(fmt), fmt.max, fmt.min_positive, fmt.bits
    ('e4m3fn', 448.0, 0.001953125, 8)

    ``saturate`` is the spec's ``_sat`` option: overflow clamps to ±max instead of going to ±inf /
    NaN. Formats with neither (``e3m2fn``, ``e2m3fn``, ``e2m1fn``) saturate without it; what a
    format does is `overflow_policy`:

    >>> Minifloat(2, 1, policy="fn").saturate, Minifloat(2, 1, policy="fn").overflow_policy
    (False, 'saturate')
    """

    exp_bits: int
    man_bits: int
    policy: str = "ieee"
    bias: "int | None" = None
    saturate: bool = False

    family = "minifloat"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise FormatSpecError(f"minifloat policy={self.policy!r} is not valid; allowed: {', '.join(POLICIES)}")
        for name in ("exp_bits", "man_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise FormatSpecError(f"minifloat {name} must be an int, got {v!r}")
        if not 1 <= self.exp_bits <= 10:
            raise FormatSpecError(f"minifloat exp_bits={self.exp_bits} is out of range; allowed: 1..10")
        if not 0 <= self.man_bits <= 23:
            raise FormatSpecError(f"minifloat man_bits={self.man_bits} is out of range; allowed: 0..23")
        if self.bits > 32:
            raise FormatSpecError(f"minifloat e{self.exp_bits}m{self.man_bits} has {self.bits} bits; allowed: at most 32")
        if self.policy == "ieee" and (self.exp_bits < 2 or self.man_bits < 1):
            raise FormatSpecError(
                f"IEEE-style e{self.exp_bits}m{self.man_bits} needs exp_bits >= 2 and man_bits >= 1 "
                "(its top exponent holds inf and NaN); use the fn/fnuz/fnu suffix"
            )
        if self.bias is None:
            object.__setattr__(self, "bias", default_bias(self.exp_bits, self.policy))
        top = (1 << self.exp_bits) - 1
        lo, hi = top - 1000, 1000 - self.man_bits  # keep every value and rounding point inside float64
        if not isinstance(self.bias, int) or isinstance(self.bias, bool) or not lo <= self.bias <= hi:
            raise FormatSpecError(
                f"minifloat bias={self.bias!r} puts e{self.exp_bits}m{self.man_bits} values outside float64; "
                f"allowed: an int in {lo}..{hi}"
            )
        if self.max_code_magnitude <= 0:
            raise FormatSpecError(f"minifloat {self} has no finite nonzero value")

    def __str__(self) -> str:
        s = f"e{self.exp_bits}m{self.man_bits}"
        if self.bias != default_bias(self.exp_bits, self.policy):
            s += f"b{self.bias}"
        s += _POLICY_SUFFIX[self.policy]
        return s + ("_sat" if self.saturate else "")

    # ------------------------------------------------------------------ facts
    @property
    def signed(self) -> bool:
        return self.policy != "fnu"

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def has_inf(self) -> bool:
        return self.policy == "ieee"

    @property
    def has_nan(self) -> bool:
        """fn formats below 8 bits (FP6, FP4) have no NaN, as in OCP MX and ml_dtypes."""
        return not (self.policy == "fn" and self.bits < 8)

    @property
    def has_subnormals(self) -> bool:
        return self.policy != "fnu"

    @property
    def has_negative_zero(self) -> bool:
        return self.policy in ("ieee", "fn")

    @property
    def min_normal_exponent(self) -> int:
        """Exponent of the smallest normal value (2^(1−bias), or 2^(−bias) for fnu)."""
        return (0 if self.policy == "fnu" else 1) - self.bias  # type: ignore[operator]

    @functools.cached_property
    def max_code_magnitude(self) -> int:
        """Magnitude bits (exponent|mantissa) of the largest finite value."""
        m, e = self.man_bits, self.exp_bits
        if self.policy == "ieee":
            return (((1 << e) - 2) << m) | ((1 << m) - 1)
        if self.policy in ("fnuz",) or not self.has_nan:
            return (1 << (e + m)) - 1
        return (1 << (e + m)) - 2  # fn ≥ 8 bits and fnu: all ones is NaN

    @functools.cached_property
    def max(self) -> float:  # type: ignore[override]
        return float(self._decode_magnitude(torch.tensor([self.max_code_magnitude]))[0])

    @functools.cached_property
    def min_positive(self) -> float:  # type: ignore[override]
        if self.has_subnormals and self.man_bits > 0:
            return float(2.0 ** (self.min_normal_exponent - self.man_bits))
        return float(2.0**self.min_normal_exponent)

    @property
    def min_normal(self) -> float:
        return float(2.0**self.min_normal_exponent)

    @property
    def overflow_policy(self) -> str:
        """What a finite value beyond max becomes under round-to-nearest."""
        if self.saturate or not (self.has_inf or self.has_nan):
            return "saturate"
        return "inf" if self.has_inf else "nan"

    @property
    def standard(self) -> str:
        return _STANDARD[self.policy]

    @functools.cached_property
    def nan_code(self) -> "int | None":
        """The canonical (positive) NaN pattern, or None."""
        e, m = self.exp_bits, self.man_bits
        if not self.has_nan:
            return None
        if self.policy == "ieee":
            return (((1 << e) - 1) << m) | (1 << (m - 1))
        if self.policy == "fnuz":
            return 1 << (e + m)
        return (1 << (e + m)) - 1

    # ------------------------------------------------------------------ codec
    def _decode_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        m = self.man_bits
        field = mag >> m
        mant = mag & ((1 << m) - 1)
        emin = self.min_normal_exponent
        normal = ((1 << m) + mant).to(torch.float64) * pow2(field - self.bias - m)
        if not self.has_subnormals:
            return normal
        subnormal = mant.to(torch.float64) * pow2(torch.full_like(mant, emin - m))
        return torch.where(field == 0, subnormal, normal)

    def _decode64(self, codes: torch.Tensor) -> torch.Tensor:
        e, m = self.exp_bits, self.man_bits
        mag = codes & ((1 << (e + m)) - 1)
        value = self._decode_magnitude(mag)
        if self.signed:
            value = torch.where(((codes >> (e + m)) & 1).bool(), -value, value)
        nan = torch.full_like(value, float("nan"))
        if self.policy == "ieee":
            top = (mag >> m) == (1 << e) - 1
            inf = torch.copysign(torch.full_like(value, float("inf")), value)
            value = torch.where(top, torch.where((mag & ((1 << m) - 1)) == 0, inf, nan), value)
        elif self.policy == "fnuz":
            value = torch.where(codes == self.nan_code, nan, value)
        elif self.has_nan:
            value = torch.where(mag == (1 << (e + m)) - 1, nan, value)
        return value

    def _encode64(self, x: torch.Tensor, mode: Rounding, u: "torch.Tensor | None" = None) -> torch.Tensor:
        e, m = self.exp_bits, self.man_bits
        negative = torch.signbit(x)
        a = x.abs()
        nan_in = torch.isnan(x)
        inf_in = torch.isinf(x)
        finite_nonzero = torch.isfinite(x) & (a > 0)
        safe = torch.where(finite_nonzero, a, torch.ones_like(a))

        # Round |x| to the grid of its binade (subnormal grid below the normal range).
        emin = self.min_normal_exponent
        qexp = exponent_of(safe).clamp_min(emin) - m
        scaled = safe * pow2(-qexp)  # exact
        kept = torch.floor(scaled)
        rem = scaled - kept  # exact
        up = round_up(
            mode,
            negative,
            odd=torch.fmod(kept, 2) == 1,
            above_half=rem > 0.5,
            at_half=rem == 0.5,
            inexact=rem > 0,
            p_up=rem,
            u=u,
        )
        rounded = (kept + up.to(torch.float64)) * pow2(qexp)
        rounded = torch.where(finite_nonzero, rounded, torch.zeros_like(rounded))
        if not self.has_subnormals:  # no zero: anything below the smallest value saturates to it
            rounded = torch.where(finite_nonzero, rounded.clamp_min(self.min_positive), rounded)

        overflow = rounded > self.max
        to_max = overflow & (rounds_toward_zero(mode, negative) | (self.overflow_policy == "saturate"))
        mag = self._magnitude_code(torch.where(overflow, torch.full_like(rounded, self.max), rounded))
        make_nan = nan_in.clone()
        make_inf = torch.zeros_like(nan_in)
        if self.overflow_policy == "saturate" or not (self.has_inf or self.has_nan):
            mag = torch.where(inf_in, torch.full_like(mag, self.max_code_magnitude), mag)
        elif self.has_inf:
            make_inf = inf_in | (overflow & ~to_max)
        else:
            make_nan = make_nan | inf_in | (overflow & ~to_max)
        if self.policy == "fnu":
            make_nan = make_nan | (x <= 0) | negative  # zero and negatives are not representable

        if self.signed:
            sign = negative.to(torch.int64) << (e + m)
            if not self.has_negative_zero:
                sign = torch.where(mag == 0, torch.zeros_like(sign), sign)
            codes = sign | mag
        else:
            codes = mag
        if self.has_inf:
            inf_code = ((1 << e) - 1) << m
            codes = torch.where(make_inf, (negative.to(torch.int64) << (e + m)) | inf_code, codes)
        if self.has_nan:
            nan_code = self.nan_code
            if self.policy in ("ieee", "fn"):  # signed NaNs: keep the input's sign, as ml_dtypes
                nan_codes = (negative.to(torch.int64) << (e + m)) | nan_code
            else:
                nan_codes = torch.full_like(codes, nan_code)
            codes = torch.where(make_nan, nan_codes, codes)
        else:  # no NaN pattern, as ml_dtypes: +NaN encodes as -0 and -NaN as +0 (the sign flips)
            codes = torch.where(nan_in, torch.where(negative, torch.zeros_like(codes),
                                                    torch.full_like(codes, 1 << (e + m))), codes)
        return codes

    def _magnitude_code(self, v: torch.Tensor) -> torch.Tensor:
        """exponent|mantissa bits of nonnegative representable float64 values (0 → 0)."""
        m = self.man_bits
        emin = self.min_normal_exponent
        positive = v > 0
        safe = torch.where(positive, v, torch.ones_like(v))
        exp = exponent_of(safe)
        if self.has_subnormals:
            sub = exp < emin
            mant_sub = (safe * pow2(torch.full_like(exp, m - emin))).to(torch.int64)
        else:
            sub = torch.zeros_like(positive)
            mant_sub = torch.zeros_like(exp)
        mant_norm = (safe * pow2(m - exp)).to(torch.int64) - (1 << m)
        field = exp + self.bias
        mag = torch.where(sub, mant_sub, (field << m) | mant_norm)
        return torch.where(positive, mag, torch.zeros_like(mag))
