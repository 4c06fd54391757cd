"""The spec card of a format: every fact about it, computed from its parameters.

One source for ``lowbit info`` and ``fmt.card()``. Scalar formats list their value range and
special patterns; block formats (MX, BFP) their element format, block and scale rules; learned
formats (binary, ternary, codebook) the rule that fits their levels to each tensor.
"""

from __future__ import annotations

from typing import Any

from lowbit.formats.base import MAX_TABLE_BITS, NumberFormat, ScalarFormat
from lowbit.formats.block import BlockFloatingPoint, BlockFormat, MXFormat, PowerOfTwoBlocks
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat, _UniformGrid
from lowbit.formats.learned import BinaryFormat, Codebook, LearnedFormat, TernaryFormat
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.scaled_block import ScaledBlockFormat

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
    if getattr(fmt, "data_dependent", False):
        raise TypeError(f"count_values needs a scalar format; {fmt} is data dependent (levels fitted per tensor)")
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


def format_card(fmt: NumberFormat) -> "dict[str, Any]":
    """Facts about ``fmt`` as an ordered dict (keys are stable; values JSON-friendly)."""
    if isinstance(fmt, BlockFormat):
        return _block_card(fmt)
    if isinstance(fmt, ScaledBlockFormat):
        return _scaled_block_card(fmt)
    if isinstance(fmt, LearnedFormat):
        return _learned_card(fmt)
    if not isinstance(fmt, ScalarFormat):
        raise TypeError(f"format_card does not know {type(fmt).__name__}")
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


def _block_card(fmt: BlockFormat) -> "dict[str, Any]":
    k = fmt.block_size
    element = fmt.element_format
    card: dict[str, Any] = {"spec": str(fmt), "family": fmt.family, "bits": fmt.bits}
    if isinstance(fmt, MXFormat):
        name = "int8 (two's complement, implicit scale 2^-6)" if fmt.element == "int8" else str(element)
        card.update(
            layout=f"blocks of {k} {name} elements along the last axis + one 8-bit E8M0 scale per block",
            standard="OCP Microscaling (MX) v1.0",
            element=str(element),
            scale="E8M0 2^s, s = floor(log2(amax)) - emax_elem, clamped to [-127, 127]",
            special_values={
                "NaN scale": "0xff (s = 128): a block holding NaN or ±inf decodes to NaN",
                "zero block": "s = -127 (the E8M0 minimum), elements 0",
            },
        )
        if fmt.element == "int8":
            card["unused_code"] = "0x80 (decodes to -2 x scale; encoding clamps to -127/64)"
    elif isinstance(fmt, PowerOfTwoBlocks):
        card.update(
            layout=f"blocks of {k} {element} elements along the last axis + one 8-bit E8M0 scale per block",
            standard="the OCP MX v1.0 block rule over a non-MX element format",
            element=str(element),
            scale="E8M0 2^s, s = floor(log2(amax)) - emax_elem, clamped to [-127, 127]",
            special_values={
                "NaN scale": "0xff (s = 128): a block holding NaN or ±inf decodes to NaN",
                "zero block": "s = -127 (the E8M0 minimum), elements 0",
            },
        )
    else:
        assert isinstance(fmt, BlockFloatingPoint)
        card.update(
            layout=(
                f"blocks of {k} signed {fmt.bits}-bit integer elements along the last axis "
                f"+ one shared exponent per block (held in {fmt.scale_bits} bits)"
            ),
            standard="block floating point (QPyTorch block_quantize, ties to even, blocks along the last axis)",
            element=f"{element} (integers k in ±{(1 << (fmt.bits - 1)) - 1}, step 2^(e - {fmt.bits - 2}))",
            scale=f"2^e, e = floor(log2(amax)) unclamped ({fmt.exponent_min}..{fmt.exponent_max})",
            special_values={
                "NaN scale": f"e = {fmt.nan_exponent}: a block holding NaN or ±inf decodes to NaN",
                "zero block": f"e = {fmt.zero_block_exponent}, elements 0",
            },
        )
    card.update(
        block_size=k,
        block_axis=_axis_text(getattr(fmt, "axis", -1), getattr(fmt, "layout", None)),
        bits_per_element=fmt.bits_per_element,
        emax_elem=fmt.emax,
        element_max=fmt.element_max,
        overflow="saturate: elements are clamped to the element max",
        max=fmt.max,
        min_positive=fmt.min_positive,
        data_dependent=True,
        default_rounding="nearest_even (every mode applies to the element rounding)",
        params="scale_exponent: int16, shape x.shape[:-1] + (n_blocks,)",
    )
    return _laid(card, fmt)


def _axis_text(axis: int, layout: "Any" = None) -> str:
    short = "a shorter last block when the axis is not a multiple of the block size"
    if layout is not None and layout.kind != "last":
        return f"{layout.describe()} (a shorter last block per row; scales one row per output channel)"
    if axis == -1:
        return f"last ({short})"
    return f"{axis} ({short}; scales in the layout with axis {axis} moved last)"


def _scaled_block_card(fmt: ScaledBlockFormat) -> "dict[str, Any]":
    k, el, sc = fmt.block_size, fmt.element, fmt.scale
    nvfp4 = str(fmt).startswith("nvfp4")
    two = fmt.tensor_scale
    tensor = " + one FP32 scale per tensor" if two else ""
    divided = f"amax / {fmt.element_max:g}" + (" / g" if two else "")
    rule = f"s = round_{sc}(clamp({divided}, {fmt.scale_floor!r}, {fmt.scale_max:g}))"
    card: dict[str, Any] = {
        "spec": str(fmt),
        "family": fmt.family,
        "bits": fmt.bits,
        "layout": f"blocks of {k} {el} elements along the last axis + one {sc.bits}-bit {sc} scale per block{tensor}",
        "standard": ("NVIDIA NVFP4, numerics of torchao's reference (nvfp4_quantize)" if nvfp4
                     else "the NVFP4 block rule (torchao's numerics) with other element / scale formats"),
        "element": str(el),
        "scale": rule + " in float32 (scales of all-zero blocks: the lower clamp)",
        "elements": (f"round_{el}(clamp(x * r, -{fmt.element_max:g}, {fmt.element_max:g})), r = "
                     + ("(1 / g) / s" if two else "1 / s") + " (float32 reciprocal, then a product)"),
    }
    if two:
        card["tensor_scale"] = (f"g = max(amax_tensor / {fmt.tensor_scale_divisor:g}, {fmt.tensor_scale_floor!r}) "
                                "(float32; the floor keeps (1/g)/s finite)")
    card.update(
        decode="element * " + ("(g * s)" if two else "s") + " in float32, then cast to the output dtype",
        special_values={
            "NaN scale": f"a block holding NaN or ±inf gets {sc}'s NaN code and decodes to NaN",
            "zero block": f"scale {fmt.scale_floor!r}, elements 0",
        },
        block_size=k,
        block_axis=_axis_text(fmt.axis, fmt.layout),
        bits_per_element=fmt.bits_per_element,
        bits_per_tensor=32 if two else 0,
        element_max=fmt.element_max,
        overflow=("saturate: elements are clamped to the element max"
                  + ("" if two else f"; |x| > {fmt.max:g} saturates")),
        max=fmt.max if not two else "element max x scale max x g (g set from each tensor)",
        min_positive=fmt.min_positive if not two else "element min x scale min x g",
        inputs=("float32 / bfloat16 as torchao; float16 via float32; float64: scales from float32 amax, "
                "x * r and the element rounding in float64"),
        data_dependent=True,
        default_rounding="nearest_even (every mode applies to the element rounding)",
        params=(f"scale_codes: {sc} codes, shape x.shape[:-1] + (n_blocks,)"
                + ("; tensor_scale: float32 0-d" if two else "")),
    )
    return _laid(card, fmt)


def _laid(card: "dict[str, Any]", fmt: NumberFormat) -> "dict[str, Any]":
    """A block card whose blocks run along other rows than the last axis says so throughout."""
    layout = getattr(fmt, "layout", None)
    if (layout is None or layout.kind == "last") and getattr(fmt, "axis", -1) == -1:
        return card
    card["layout"] = card["layout"].replace("along the last axis", "along the rows of the block axis")
    card["params"] = card["params"].replace("x.shape[:-1]", "rows.shape[:-1] (the rows of the block axis)")
    return card


_LEARNED_FACTS = {
    BinaryFormat: (
        "1 bit per element (1 = negative) + one float32 scale per tensor",
        "XNOR-Net (Rastegari et al. 2016)",
        "x -> sign(x) * mean|x|, sign(0) = +",
        "scale: float32 scalar",
    ),
    TernaryFormat: (
        "2-bit two's complement code per element (0, 1 = +a, 3 = -a; 2 unused) + one float32 scale per tensor",
        "Ternary Weight Networks (Li et al. 2016)",
        "threshold d = 0.7 * mean|x|; a = mean of |x| over |x| > d; x -> a * sign(x) where |x| > d, else 0",
        "scale: float32 scalar (a)",
    ),
    Codebook: (
        "{bits}-bit index per element + a table of 2^{bits} float32 levels per tensor",
        "k-means (Deep Compression, Han et al. 2016)",
        "at most 2^{bits} levels: Lloyd iterations from levels evenly spaced between min and max; "
        "levels are the exact means of their clusters",
        "levels: float32, shape (2^{bits},), sorted; unused entries repeat the largest level",
    ),
}


def _learned_card(fmt: LearnedFormat) -> "dict[str, Any]":
    layout, standard, rule, params = (t.format(bits=fmt.bits) for t in _LEARNED_FACTS[type(fmt)])
    return {
        "spec": str(fmt),
        "family": fmt.family,
        "bits": fmt.bits,
        "layout": layout,
        "standard": standard,
        "rule": rule,
        "params": params,
        "max_levels": 1 << fmt.bits if isinstance(fmt, Codebook) else (2 if isinstance(fmt, BinaryFormat) else 3),
        "precision": "means are exact, rounded once to x's dtype (float64 inputs keep float64 levels)",
        "nan_and_inf": "ValueError: the levels cannot be fitted to non-finite values",
        "data_dependent": True,
        "default_rounding": "nearest_even (the only mode)",
    }
