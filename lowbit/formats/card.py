"""The spec card of a format: every fact about it, computed from its parameters.

One source for ``lowbit info`` and ``fmt.card()``.
"""

from __future__ import annotations

from typing import Any

from lowbit.formats.base import MAX_TABLE_BITS, ScalarFormat
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat, _UniformGrid
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit

__all__ = ["format_card", "count_values"]


def count_values(fmt: ScalarFormat) -> int:
    """Number of distinct finite values (−0 and +0 count once), from the parameters."""
    if isinstance(fmt, Posit):
        return (1 << fmt.n) - 1  # every pattern but NaR
    if isinstance(fmt, _UniformGrid):
        return fmt.k_max - fmt.k_min + 1
    if isinstance(fmt, Minifloat):
        total = 1 << fmt.bits
        signs = 2 if fmt.signed else 1
        if fmt.policy == "ieee":
            total -= signs << fmt.man_bits  # the whole top binade: ±inf and NaNs
        elif fmt.has_nan:
            total -= signs if fmt.policy == "fn" else 1
        if fmt.has_negative_zero:
            total -= 1
        return total
    raise TypeError(f"count_values does not know {type(fmt).__name__}")


def _layout(fmt: ScalarFormat) -> str:
    if isinstance(fmt, Posit):
        return f"1 sign | regime (2..{fmt.n - 1} bits) | up to {fmt.es} exponent | rest fraction"
    if isinstance(fmt, Minifloat):
        sign = "1 sign | " if fmt.signed else ""
        return f"{sign}{fmt.exp_bits} exponent | {fmt.man_bits} mantissa"
    if isinstance(fmt, FixedPoint):
        sign = "two's complement" if fmt.signed else "unsigned"
        return f"{fmt.word_bits}-bit {sign} word, {fmt.frac_bits} fraction bits"
    assert isinstance(fmt, IntegerFormat)
    return f"{fmt.word_bits}-bit {'two' + chr(39) + 's complement' if fmt.signed else 'unsigned'} integer"


def format_card(fmt: ScalarFormat) -> "dict[str, Any]":
    """Facts about ``fmt`` as an ordered dict (keys are stable; values JSON-friendly)."""
    card: dict[str, Any] = {"spec": str(fmt), "family": fmt.family, "bits": fmt.bits, "layout": _layout(fmt)}
    if isinstance(fmt, Posit):
        card.update(
            standard="Posit Standard (2022) rules, any es",
            es=fmt.es,
            scale=fmt.scale,
            useed=f"2^{fmt.useed_log2}",
            special_values={"NaR": f"0x{fmt.nar_code:x}", "zero": "0x0"},
            nan_and_inf="NaN and ±inf encode to NaR; NaR decodes to NaN",
            subnormals="none (tapered precision)",
            overflow="saturate to ±maxpos; nonzero never rounds to 0 (±minpos)",
        )
    elif isinstance(fmt, Minifloat):
        specials: dict[str, str] = {}
        if fmt.has_inf:
            specials["+inf"] = f"0x{((1 << fmt.exp_bits) - 1) << fmt.man_bits:x}"
        if fmt.nan_code is not None:
            specials["NaN"] = f"0x{fmt.nan_code:x}"
        if fmt.has_negative_zero:
            specials["-0"] = f"0x{1 << (fmt.exp_bits + fmt.man_bits):x}"
        card.update(
            standard=fmt.standard,
            bias=fmt.bias,
            special_values=specials or {"none": "every pattern is a finite value"},
            subnormals="yes" if fmt.has_subnormals and fmt.man_bits else "no",
            min_normal=fmt.min_normal,
            overflow=fmt.overflow_policy,
        )
    else:
        assert isinstance(fmt, _UniformGrid)
        card.update(
            standard="uniform grid, saturating",
            step=fmt.step,
            min=fmt.min,
            special_values={"none": "NaN encodes as 0, ±inf as the range ends"},
            overflow="saturate",
        )
        if isinstance(fmt, IntegerFormat) and fmt.narrow:
            card["unused_code"] = f"0x{1 << (fmt.word_bits - 1):x}"
    card.update(max=fmt.max, min_positive=fmt.min_positive, num_values=count_values(fmt))
    card["default_rounding"] = "nearest_even"
    card["value_table"] = "available (values())" if fmt.bits <= MAX_TABLE_BITS else "too large to list"
    return card
