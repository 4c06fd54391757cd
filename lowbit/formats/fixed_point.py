"""Fixed point (``fixed8_f4``, ``ufixed8_f4``) and integer grids (``int4``, ``uint8``, ``int8n``).

Both are a uniform grid k · 2^(−f) with k in a saturating integer range; an integer format is the
grid with f = 0 (and optionally the narrow symmetric range). Codes are k in two's complement,
read as unsigned. NaN encodes as 0 and ±inf as the range ends (there is no NaN or inf pattern).
"""

from __future__ import annotations

import dataclasses

import torch

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import pow2
from lowbit.formats.base import ScalarFormat
from lowbit.formats.rounding import Rounding, round_up

__all__ = ["FixedPoint", "IntegerFormat"]


class _UniformGrid(ScalarFormat):
    """Shared codec of fixed point and integer formats."""

    word_bits: int
    frac_bits: int
    signed: bool
    narrow: bool

    @property
    def bits(self) -> int:
        return self.word_bits

    @property
    def k_min(self) -> int:
        if not self.signed:
            return 0
        return -(1 << (self.word_bits - 1)) + int(self.narrow)

    @property
    def k_max(self) -> int:
        return (1 << (self.word_bits - int(self.signed))) - 1

    @property
    def step(self) -> float:
        """Grid spacing 2^(−frac_bits)."""
        return float(2.0**-self.frac_bits)

    @property
    def max(self) -> float:
        return self.k_max * self.step

    @property
    def min(self) -> float:
        """Most negative value (0 for unsigned formats)."""
        return self.k_min * self.step

    @property
    def min_positive(self) -> float:
        return self.step

    @property
    def overflow_policy(self) -> str:
        return "saturate"

    def _invalid_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if self.narrow:
            return codes == (1 << (self.word_bits - 1))
        return super()._invalid_codes(codes)

    def _invalid_note(self) -> str:
        return f", except {1 << (self.word_bits - 1)} (unused in the narrow range)" if self.narrow else ""

    def _decode64(self, codes: torch.Tensor) -> torch.Tensor:
        w = self.word_bits
        k = codes
        if self.signed:
            k = torch.where(codes >= (1 << (w - 1)), codes - (1 << w), codes)
        return k.to(torch.float64) * pow2(torch.full_like(k, -self.frac_bits))

    def _encode64(self, x: torch.Tensor, mode: Rounding, u: "torch.Tensor | None" = None) -> torch.Tensor:
        negative = torch.signbit(x)
        nan = torch.isnan(x)
        bound = float(2.0 ** (self.word_bits + 1))
        # |x| · 2^f is exact (a power-of-two scaling up); clamping far outside the range is harmless
        scaled = torch.where(nan, torch.zeros_like(x), x.abs() * 2.0**self.frac_bits).clamp_max(bound)
        kept = torch.floor(scaled)
        rem = scaled - kept
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
        k = (kept + up.to(torch.float64)).to(torch.int64)
        k = torch.where(negative, -k, k).clamp(self.k_min, self.k_max)
        return k & ((1 << self.word_bits) - 1)


@dataclasses.dataclass(frozen=True, repr=False)
class FixedPoint(_UniformGrid):
    """Two's complement fixed point: ``word_bits`` bits, ``frac_bits`` of them fractional.

    >>> fmt = FixedPoint(8, 4)
    >>> str(fmt), fmt.max, fmt.min, fmt.min_positive
    ('fixed8_f4', 7.9375, -8.0, 0.0625)
    """

    word_bits: int
    frac_bits: int
    signed: bool = True

    family = "fixed"

    @property
    def narrow(self) -> bool:  # type: ignore[override]
        return False

    def __post_init__(self) -> None:
        _check_int("fixed point word_bits", self.word_bits, 1 + int(self.signed), 32)
        _check_int("fixed point frac_bits", self.frac_bits, 0, 64)

    def __str__(self) -> str:
        return f"{'' if self.signed else 'u'}fixed{self.word_bits}_f{self.frac_bits}"


@dataclasses.dataclass(frozen=True, repr=False)
class IntegerFormat(_UniformGrid):
    """An integer grid: ``int8`` (−128..127), ``uint8`` (0..255), ``int8n`` (−127..127).

    >>> fmt = IntegerFormat(4)
    >>> str(fmt), fmt.max, fmt.min
    ('int4', 7.0, -8.0)
    """

    word_bits: int
    signed: bool = True
    narrow: bool = False

    family = "integer"

    @property
    def frac_bits(self) -> int:  # type: ignore[override]
        return 0

    def __post_init__(self) -> None:
        _check_int("integer bits", self.word_bits, 1 + int(self.signed), 32)
        if self.narrow and not self.signed:
            raise FormatSpecError("the narrow range (suffix n) applies to signed integers only, e.g. int8n")

    def __str__(self) -> str:
        return f"{'' if self.signed else 'u'}int{self.word_bits}{'n' if self.narrow else ''}"


def _check_int(what: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FormatSpecError(f"{what}={value!r} is out of range; allowed: {lo}..{hi}")
