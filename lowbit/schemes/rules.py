"""Scale rules of a `lowbit.schemes.Scheme`: small frozen values saying how a tensor's scale is chosen.

- `NoScale`: the element format alone (a learned format fits its levels per tensor).
- `PowerOfTwo`: one per-tensor scale 2^k (``"histogram"``, ``"amax"`` or a fixed int k), folded
  into the format (`lowbit.schemes.power_of_two`).
- `Absmax`: a float scale per granule, amax / element max (tensor / channel / group / token).
- `Static`: a fixed calibrated range (lo, hi): symmetric, or scale + zero point for unsigned ints.
- `Fitted`: a learned format's levels fitted per channel or group.
- `BlockScale`: the one block rule — a ``scale``-format scale per ``block_size`` values along
  ``axis``, optionally under a per-tensor FP32 scale. MX, BFP and NVFP4 are instances of it.

>>> BlockScale("e4m3fn", 16, tensor_scale=True).to_dict()["scale"]
'e4m3fn'
>>> rule_from_dict(Absmax(Granularity.group(128, axis=-1)).to_dict()) == Absmax(Granularity.group(128, axis=-1))
True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Union

from lowbit.formats import BlockLayout, NumberFormat, parse_format
from lowbit.formats.block import MAX_BLOCK_SIZE, MX_ELEMENTS, BlockFloatingPoint, MXFormat, PowerOfTwoBlocks
from lowbit.formats.fixed_point import FixedPoint
from lowbit.formats.granularity import Granularity, as_granularity
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.scaled_block import ScaledBlockFormat

__all__ = ["NoScale", "PowerOfTwo", "Absmax", "Static", "Fitted", "BlockScale", "ScaleRule", "RULE_NAMES",
           "rule_from_dict", "POWER_OF_TWO_RULES", "E8M0", "BFP_EXPONENT"]

#: the scale format of OCP MX's power-of-two block rule
E8M0 = "e8m0fnu"
#: block floating point's shared exponent: 16 bits, unclamped (QPyTorch's rule)
BFP_EXPONENT = "exp16"
POWER_OF_TWO_RULES = ("histogram", "amax")


@dataclasses.dataclass(frozen=True)
class NoScale:
    """No scale: the element format quantizes the tensor as it is."""

    name = "none"

    def to_dict(self) -> "dict[str, Any]":
        return {"rule": self.name}


@dataclasses.dataclass(frozen=True)
class PowerOfTwo:
    """A per-tensor power-of-two scale 2^k: ``rule`` ``"histogram"``, ``"amax"`` (largest |x| over
    the last ``history`` observations) or an int k; ``every``: refresh every k calls (None: once)."""

    rule: "str | int" = "histogram"
    every: "int | None" = None
    history: int = 16
    name = "pow2"

    def __post_init__(self) -> None:
        r = self.rule
        if isinstance(r, bool) or not (isinstance(r, int) or r in POWER_OF_TWO_RULES):
            raise ValueError(f"PowerOfTwo rule={r!r}; allowed: 'histogram', 'amax' or an int exponent k")
        e = self.every
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise ValueError(f"PowerOfTwo every={e!r}; allowed: None (once) or an int >= 1")
        h = self.history
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(f"PowerOfTwo history={h!r}; allowed: an int >= 1")

    def to_dict(self) -> "dict[str, Any]":
        return {"rule": self.name, "k": self.rule, "every": self.every, "history": self.history}


@dataclasses.dataclass(frozen=True)
class Absmax:
    """A float scale per granule of ``granularity``: amax / element max (an all-zero granule: 0)."""

    granularity: Granularity = Granularity()
    name = "absmax"

    def __post_init__(self) -> None:
        if not isinstance(self.granularity, Granularity):
            raise TypeError(f"Absmax granularity must be a Granularity, got {type(self.granularity).__name__}")

    def to_dict(self) -> "dict[str, Any]":
        return {"rule": self.name, "granularity": self.granularity.to_dict()}


@dataclasses.dataclass(frozen=True)
class Static:
    """A fixed range (lo, hi): unsigned integer elements take scale + zero point, the others a
    symmetric scale max(|lo|, |hi|) / element max (see `lowbit.schemes.static.StaticRange`)."""

    lo: float
    hi: float
    name = "static"

    def __post_init__(self) -> None:
        for what in ("lo", "hi"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"Static {what}={v!r}; allowed: a finite number")
            object.__setattr__(self, what, float(v))
        if self.lo > self.hi:
            raise ValueError(f"Static range ({self.lo}, {self.hi}): lo must be <= hi")

    def to_dict(self) -> "dict[str, Any]":
        return {"rule": self.name, "lo": self.lo, "hi": self.hi}


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A learned element format (binary, ternary, codebook) fitted per channel or group."""

    granularity: Granularity
    name = "fitted"

    def __post_init__(self) -> None:
        g = self.granularity
        if not isinstance(g, Granularity) or g.kind not in ("channel", "group"):
            raise ValueError(f"Fitted granularity={g!r}; allowed: a 'channel' or 'group' Granularity")

    def to_dict(self) -> "dict[str, Any]":
        return {"rule": self.name, "granularity": self.granularity.to_dict()}


@dataclasses.dataclass(frozen=True)
class BlockScale:
    """The one block rule: a ``scale``-format scale per ``block_size`` values along ``axis``,
    optionally under a per-tensor FP32 scale (``tensor_scale``).

    ``scale``: ``"e8m0fnu"`` (OCP MX's power-of-two rule: `MXFormat` for MX element types,
    `PowerOfTwoBlocks` otherwise), ``"exp16"`` (block floating point's unclamped 16-bit exponent,
    elements ``fixed<b>_f<b-2>``) or any minifloat with mantissa bits / posit spec (NVFP4's rule,
    `ScaledBlockFormat`).

    >>> str(BlockScale("e4m3fn", 16, tensor_scale=True).block_format(parse_format("e2m1fn")))
    'nvfp4'
    >>> BlockScale.of(parse_format("mxfp4_e2m1fn"))
    (parse_format('e2m1fn'), BlockScale(scale='e8m0fnu', block_size=32, axis=-1, tensor_scale=False, layout=''))
    >>> BlockScale.of(parse_format("nvfp4_r"))[1].layout     # a conv weight's reduction rows (`BlockLayout`)
    'r'
    """

    scale: str
    block_size: int
    axis: int = -1
    tensor_scale: bool = False
    #: the block layout's spec suffix without its underscore: "" (the last axis / ``axis``), "r", "rt<g>"
    layout: str = ""
    name = "block"

    def __post_init__(self) -> None:
        k = self.block_size
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_BLOCK_SIZE:
            raise ValueError(f"BlockScale block_size={k!r}; allowed: an int in 1..{MAX_BLOCK_SIZE}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ValueError(f"BlockScale axis={self.axis!r}; allowed: an int (-1: the last axis)")
        if not isinstance(self.tensor_scale, bool):
            raise ValueError(f"BlockScale tensor_scale={self.tensor_scale!r}; allowed: True or False")
        sc = self.scale
        if isinstance(sc, NumberFormat):
            sc = str(sc)
        if not isinstance(sc, str):
            raise ValueError(f"BlockScale scale={sc!r}; allowed: '{E8M0}', '{BFP_EXPONENT}' or a minifloat/posit spec")
        if sc != BFP_EXPONENT:
            try:
                sc = str(parse_format(sc))
            except ValueError as err:
                raise ValueError(f"BlockScale scale={sc!r}: {err}; allowed: '{E8M0}', '{BFP_EXPONENT}' or a "
                                 "minifloat/posit spec") from None
        object.__setattr__(self, "scale", sc)
        if sc in (E8M0, BFP_EXPONENT) and self.tensor_scale:
            raise ValueError(f"BlockScale tensor_scale=True needs a float scale format (e4m3fn …), not {sc!r}")
        if sc == BFP_EXPONENT and self.axis != -1:
            raise ValueError(f"BlockScale scale={BFP_EXPONENT!r} runs along the last axis only; axis={self.axis}")
        if not isinstance(self.layout, str):
            raise ValueError(f"BlockScale layout={self.layout!r}; allowed: '', 'r', 'rt<groups>'")
        try:
            BlockLayout.from_suffix(self.layout)
        except ValueError as err:
            raise ValueError(f"BlockScale layout={self.layout!r}: {err}") from None

    def to_dict(self) -> "dict[str, Any]":
        d = {"rule": self.name, "scale": self.scale, "block_size": self.block_size, "axis": self.axis,
             "tensor_scale": self.tensor_scale}
        return d if not self.layout else {**d, "layout": self.layout}

    def block_format(self, element: NumberFormat) -> NumberFormat:
        """The block `NumberFormat` of ``element`` codes under this rule (the implementation used)."""
        k, axis, layout = self.block_size, self.axis, BlockLayout.from_suffix(self.layout)
        if self.scale == BFP_EXPONENT:
            if not (isinstance(element, FixedPoint) and element.signed and element.frac_bits == element.bits - 2):
                raise ValueError(f"element={element} with scale={BFP_EXPONENT!r} (block floating point); allowed: "
                                 "fixed<b>_f<b-2> elements (fixed8_f6 …)")
            return BlockFloatingPoint(element.bits, k, layout)
        if self.scale == E8M0:
            mx = _mx_element(element)
            if mx is not None:
                if axis != -1:
                    raise ValueError(f"OCP MX element {element} blocks run along the last axis; axis={axis} "
                                     "is not allowed with it")
                return MXFormat(mx, k, layout)
            return PowerOfTwoBlocks(element, k, axis, layout)  # type: ignore[arg-type]
        return ScaledBlockFormat(element, parse_format(self.scale), k, self.tensor_scale, axis,  # type: ignore[arg-type]
                                 layout)

    @classmethod
    def of(cls, fmt: NumberFormat) -> "tuple[NumberFormat, BlockScale]":
        """(element, rule) of an existing block format (the inverse of `block_format`)."""
        layout = str(getattr(fmt, "layout", "")).lstrip("_")
        if isinstance(fmt, MXFormat):
            return fmt.element_format, cls(E8M0, fmt.block_size, layout=layout)
        if isinstance(fmt, BlockFloatingPoint):
            return fmt.element_format, cls(BFP_EXPONENT, fmt.block_size, layout=layout)
        if isinstance(fmt, PowerOfTwoBlocks):
            return fmt.element, cls(E8M0, fmt.block_size, fmt.axis, layout=layout)
        if isinstance(fmt, ScaledBlockFormat):
            return fmt.element, cls(str(fmt.scale), fmt.block_size, fmt.axis, fmt.tensor_scale, layout)
        raise ValueError(f"{fmt} is not a block format")


def _mx_element(element: NumberFormat) -> "str | None":
    """The OCP MX element name of ``element`` (None: not an MX element type)."""
    if isinstance(element, Minifloat) and str(element) in MX_ELEMENTS:
        return str(element)
    if element == MXFormat("int8").element_format:
        return "int8"
    return None


ScaleRule = Union[NoScale, PowerOfTwo, Absmax, Static, Fitted, BlockScale]
RULES: "dict[str, type]" = {r.name: r for r in (NoScale, PowerOfTwo, Absmax, Static, Fitted, BlockScale)}
RULE_NAMES = tuple(RULES)


def rule_from_dict(d: "Mapping[str, Any]") -> ScaleRule:
    """The rule of a ``to_dict()`` mapping; errors name the key and the allowed values."""
    if not isinstance(d, Mapping):
        raise TypeError(f"scale must be a dict with a 'rule' key, got {type(d).__name__}")
    name = d.get("rule")
    if name not in RULES:
        raise ValueError(f"scale rule={name!r}; allowed: {', '.join(RULE_NAMES)}")
    body = {k: v for k, v in d.items() if k != "rule"}
    if name == "pow2":
        body = {"rule" if k == "k" else k: v for k, v in body.items()}
    fields = {f.name for f in dataclasses.fields(RULES[name])}
    unknown = set(body) - fields - ({"k"} if name == "pow2" else set())
    if unknown:
        raise ValueError(f"scale rule {name!r}: unknown key(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(sorted('k' if f == 'rule' else f for f in fields))}")
    if "granularity" in body:
        body["granularity"] = as_granularity(body["granularity"])
    return RULES[name](**body)  # type: ignore[no-any-return]
