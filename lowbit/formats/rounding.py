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

__all__ = ["Rounding", "ROUNDING_MODES", "check_rounding", "round_up", "draw_seed", "uniform_stream", "uniforms_at"]


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
    u: "torch.Tensor | None" = None,
) -> torch.Tensor:
    """Whether each magnitude is rounded *up* (away from zero) from its truncated value.

    negative: the input's sign; odd: the truncated magnitude's last kept digit is odd;
    above_half / at_half: the discarded remainder is more than / exactly half a unit;
    inexact: the remainder is nonzero; p_up: for stochastic rounding, the probability of
    rounding up (the remainder as a fraction of the gap to the next magnitude); u: the uniform
    numbers in [0, 1) of `uniform_stream` (round up where u < p_up).
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
    if p_up is None or u is None:
        raise ValueError("stochastic rounding needs p_up and u")
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


# ---------------------------------------------------------------- stochastic rounding stream
# Stochastic rounding draws one 64-bit seed from the caller's torch.Generator; then elements 2m
# and 2m + 1 (in row-major order) take the high and the low 32 bits of
# h_m = splitmix64(seed + (m + 1)·φ) as their uniforms u = bits · 2^-32 (one hash serves two
# elements). The stream is counter based, so the torch reference and the fast kernels produce the
# same bits for the same generator state, whatever the device, thread count or chunking. Round up
# where u < p: the probability of rounding up is p rounded up to a multiple of 2^-32.
_PHI = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def draw_seed(generator: "torch.Generator | None") -> int:
    """One seed from ``generator`` (or torch's default generator); advances its state."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 1 << 62, (1,), generator=generator, dtype=torch.int64, device=device))


def _shift_right_logical(z: torch.Tensor, s: int) -> torch.Tensor:
    return (z >> s) & ((1 << (64 - s)) - 1)


def uniform_stream(seed: int, start: int, count: int, device: "torch.device | str" = "cpu") -> torch.Tensor:
    """Uniforms u_start … u_(start+count−1) in [0, 1), float64, multiples of 2^-32."""
    return uniforms_at(seed, torch.arange(start, start + count, dtype=torch.int64, device=device))


def uniforms_at(seed: int, index: torch.Tensor) -> torch.Tensor:
    """The uniforms u_i of the stream of ``seed`` at the int64 element indices ``index``.

    >>> bool(torch.equal(uniforms_at(7, torch.tensor([2, 0])), uniform_stream(7, 0, 3)[[2, 0]]))
    True
    """
    z = seed + ((index >> 1) + 1) * _PHI  # int64 arithmetic wraps mod 2^64 like the uint64 original
    z = (z ^ _shift_right_logical(z, 30)) * _MIX1
    z = (z ^ _shift_right_logical(z, 27)) * _MIX2
    z = z ^ _shift_right_logical(z, 31)
    half = torch.where((index & 1) == 0, _shift_right_logical(z, 32), z & 0xFFFFFFFF)
    return half.to(torch.float64) * 2.0**-32
