"""Posit⟨n, es⟩ with an optional exponent bias (scale), per the 2022 Posit Standard.

Spec strings: ``posit8_es2``, ``posit16_es1``, ``posit6_es1_s-4`` (value = 2^-4 × posit value,
the "biased encoder" of the posit GAN paper). The standard fixes es = 2; lowbit allows
0 ≤ es ≤ 5 with the same rules. See docs/semantics.md.

Encoding builds the exact posit bit string of |x| (regime, exponent, fraction) in a 62-bit
integer plus a sticky bit and rounds that *bit string*: the rounding point between codes c and
c+1 is the (n+1)-bit posit 2c+1, which is the geometric, not the arithmetic, mean when exponent
bits are cut off. Everything is int64/float64 arithmetic on whole tensors.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import pow2
from lowbit.formats.base import ScalarFormat
from lowbit.formats.rounding import Rounding, round_up

__all__ = ["Posit"]

_LONG = 62  # width of the integer that holds the leading bits of the exact posit bit string


@dataclasses.dataclass(frozen=True, repr=False)
class Posit(ScalarFormat):
    """Posit⟨n, es⟩ scaled by 2^scale.

    >>> fmt = Posit(8, 2)
    >>> str(fmt), fmt.max, fmt.min_positive
    ('posit8_es2', 16777216.0, 5.960464477539063e-08)
    """

    n: int
    es: int
    scale: int = 0

    family = "posit"

    def __post_init__(self) -> None:
        for name in ("n", "es", "scale"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise FormatSpecError(f"posit {name} must be an int, got {getattr(self, name)!r}")
        if not 2 <= self.n <= 32:
            raise FormatSpecError(f"posit n={self.n} is out of range; allowed: 2 <= n <= 32")
        if not 0 <= self.es <= 5:
            raise FormatSpecError(f"posit es={self.es} is out of range; allowed: 0 <= es <= 5")
        span = (self.n - 2) << self.es
        limit = 1000 - span
        if abs(self.scale) > limit:
            raise FormatSpecError(
                f"posit scale={self.scale} puts {self.n}-bit es={self.es} values outside float64; "
                f"allowed: |scale| <= {limit}"
            )

    def __str__(self) -> str:
        base = f"posit{self.n}_es{self.es}"
        return base if self.scale == 0 else f"{base}_s{self.scale}"

    # ------------------------------------------------------------------ facts
    @property
    def bits(self) -> int:
        return self.n

    @property
    def useed_log2(self) -> int:
        """log2(useed) = 2^es."""
        return 1 << self.es

    @property
    def max(self) -> float:
        """maxpos = 2^scale · useed^(n−2)."""
        return float(2.0 ** (self.scale + ((self.n - 2) << self.es)))

    @property
    def min_positive(self) -> float:
        """minpos = 2^scale · useed^−(n−2)."""
        return float(2.0 ** (self.scale - ((self.n - 2) << self.es)))

    @property
    def nar_code(self) -> int:
        """The NaR (not a real) pattern, 1 followed by n−1 zeros."""
        return 1 << (self.n - 1)

    @functools.cached_property
    def _maxpos_magnitude(self) -> int:
        return (1 << (self.n - 1)) - 1

    # ------------------------------------------------------------------ codec
    def _decode_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        """Value of magnitude codes (the n−1 bits after a 0 sign bit); 0 decodes to 0."""
        nb = self.n - 1
        mask = (1 << nb) - 1
        first = ((mag >> (nb - 1)) & 1).bool()
        y = torch.where(first, ~mag & mask, mag)
        _, e = torch.frexp(y.to(torch.float64))  # highest set bit of y is e-1 (exact, y < 2^31)
        run = torch.where(y == 0, torch.full_like(mag, nb), nb - e.to(torch.int64))
        k = torch.where(first, run - 1, -run)
        rem_len = (nb - run - 1).clamp_min(0)
        rem = mag & ((1 << rem_len) - 1)
        exp_len = rem_len.clamp_max(self.es)
        frac_len = rem_len - exp_len
        ex = (rem >> frac_len) << (self.es - exp_len)
        frac = rem & ((1 << frac_len) - 1)
        significand = ((1 << frac_len) + frac).to(torch.float64)
        value = significand * pow2((k << self.es) + ex + self.scale - frac_len)
        return torch.where(mag == 0, torch.zeros_like(value), value)

    def _decode64(self, codes: torch.Tensor) -> torch.Tensor:
        n = self.n
        negative = ((codes >> (n - 1)) & 1).bool()
        mag = torch.where(negative, (1 << n) - codes, codes) & ((1 << (n - 1)) - 1)
        value = self._decode_magnitude(mag)
        value = torch.where(negative, -value, value)
        return torch.where(codes == self.nar_code, torch.full_like(value, float("nan")), value)

    def _encode64(self, x: torch.Tensor, mode: Rounding, u: "torch.Tensor | None" = None) -> torch.Tensor:
        n, es = self.n, self.es
        negative = torch.signbit(x)
        a = x.abs()
        special = ~torch.isfinite(x)
        zero = a == 0
        safe = torch.where(special | zero, torch.ones_like(a), a)

        mant, e = torch.frexp(safe)  # safe = mant · 2^e, mant in [0.5, 1)
        exponent = e.to(torch.int64) - 1 - self.scale  # exponent of the unscaled posit value
        fraction = (mant * 2.0**53).to(torch.int64) - (1 << 52)  # 52 fraction bits, exact
        k = exponent >> es  # regime (floor division)
        ex = exponent & ((1 << es) - 1)
        kmax = n - 2
        above = k > kmax
        below = k < -kmax
        k = k.clamp(-kmax, kmax)

        # Leading _LONG bits of the bit string regime|exponent|fraction, plus a sticky bit.
        regime_len = torch.where(k >= 0, k + 2, 1 - k)
        regime = torch.where(k >= 0, ((1 << (k + 1)) - 1) << 1, torch.ones_like(k))
        room = _LONG - regime_len
        tail = (ex << 52) | fraction
        cut = es + 52 - room
        body = torch.where(cut > 0, tail >> cut.clamp_min(0), tail << (-cut).clamp_min(0))
        sticky = (cut > 0) & ((tail & ((1 << cut.clamp_min(0)) - 1)) != 0)
        long = (regime << room) | body

        drop = _LONG - (n - 1)
        mag = long >> drop
        guard = ((long >> (drop - 1)) & 1).bool()
        rest = ((long & ((1 << (drop - 1)) - 1)) != 0) | sticky

        p_up = None
        if mode is Rounding.STOCHASTIC:
            lo = self._decode_magnitude(mag)
            hi = self._decode_magnitude((mag + 1).clamp_max(self._maxpos_magnitude))
            gap = hi - lo
            p_up = torch.where(gap > 0, (safe - lo) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
        up = round_up(
            mode,
            negative,
            odd=(mag & 1).bool(),
            above_half=guard & rest,
            at_half=guard & ~rest,
            inexact=guard | rest,
            p_up=p_up,
            u=u,
        )
        mag = (mag + up.to(torch.int64)).clamp(1, self._maxpos_magnitude)
        mag = torch.where(above, torch.full_like(mag, self._maxpos_magnitude), mag)
        mag = torch.where(below, torch.ones_like(mag), mag)

        codes = torch.where(negative, ((1 << n) - mag) & ((1 << n) - 1), mag)
        codes = torch.where(zero, torch.zeros_like(codes), codes)
        return torch.where(special, torch.full_like(codes, self.nar_code), codes)
