"""Rounding modes and the one rounding decision every format shares.

Each format reduces rounding to the same question: the input's magnitude lies between a kept
("truncated") magnitude and the next one up, with some remainder; should the magnitude go up?
Formats differ only in how they find the truncated magnitude and classify the remainder
(`lowbit.formats.minifloat` does it on a scaled significand, `lowbit.formats.posit` on the bit
string); the decision below is common to all of them, so every family has the same six modes.
"""

from __future__ import annotations

import enum

import torch

__all__ = ["Rounding", "ROUNDING_MODES", "check_rounding", "round_up"]


class Rounding(str, enum.Enum):
    """The six rounding modes. Values are the strings accepted by ``rounding=``."""

    NEAREST_EVEN = "nearest_even"
    NEAREST_AWAY = "nearest_away"
    TOWARD_ZERO = "toward_zero"
    FLOOR = "floor"
    CEIL = "ceil"
    STOCHASTIC = "stochastic"

    def __str__(self) -> str:
        return self.value


ROUNDING_MODES: tuple[str, ...] = tuple(m.value for m in Rounding)


def check_rounding(rounding: "str | Rounding", generator: "torch.Generator | None" = None) -> Rounding:
    """Validate a ``rounding=`` argument (and its ``generator=``) and return the enum member.

    >>> check_rounding("floor")
    <Rounding.FLOOR: 'floor'>
    """
    try:
        mode = Rounding(rounding)
    except ValueError:
        raise ValueError(
            f"rounding={rounding!r} is not a rounding mode; allowed: {', '.join(ROUNDING_MODES)}"
        ) from None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return mode


def round_up(
    mode: Rounding,
    negative: torch.Tensor,
    odd: torch.Tensor,
    above_half: torch.Tensor,
    at_half: torch.Tensor,
    inexact: torch.Tensor,
    p_up: "torch.Tensor | None" = None,
    generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """Whether each magnitude is rounded *up* (away from zero) from its truncated value.

    negative: the input's sign; odd: the truncated magnitude's last kept digit is odd;
    above_half / at_half: the discarded remainder is more than / exactly half a unit;
    inexact: the remainder is nonzero; p_up: for stochastic rounding, the probability of
    rounding up (the remainder as a fraction of the gap to the next magnitude).
    """
    if mode is Rounding.NEAREST_EVEN:
        return above_half | (at_half & odd)
    if mode is Rounding.NEAREST_AWAY:
        return above_half | at_half
    if mode is Rounding.TOWARD_ZERO:
        return torch.zeros_like(inexact)
    if mode is Rounding.FLOOR:
        return inexact & negative
    if mode is Rounding.CEIL:
        return inexact & ~negative
    if p_up is None:
        raise ValueError("stochastic rounding needs p_up")
    u = torch.rand(p_up.shape, generator=generator, dtype=torch.float64, device=p_up.device)
    return u < p_up


def rounds_toward_zero(mode: Rounding, negative: torch.Tensor) -> torch.Tensor:
    """Where a directed mode rounds toward zero for that sign (IEEE 754 overflow rule)."""
    if mode is Rounding.TOWARD_ZERO:
        return torch.ones_like(negative)
    if mode is Rounding.FLOOR:
        return ~negative
    if mode is Rounding.CEIL:
        return negative.clone()
    return torch.zeros_like(negative)
