"""`Scheme`: one frozen value for "how a tensor is scaled and quantized".

A scheme is an **element** format, a **scale rule** (`lowbit.schemes.rules`) and a **rounding**
mode. It delegates every computation to the one existing implementation of its rule (block
formats, `quantize_with_scale`, `StaticRange`, the power-of-two tracker), so a scheme quantizes
bit for bit as the role quantizer configured the same way does.

Spec strings: a plain or block format spec (``"posit8_es2"``, ``"nvfp4"``,
``"block32_e2m1fn_scale_posit8_es1_t"``), or ``"<element>+<rule>"`` with rule ``absmax``,
``absmax_c<axis>``, ``absmax_g<size>[_a<axis>]``, ``absmax_token``, ``pow2_histogram``,
``pow2_amax``, ``pow2_k<k>`` (each ``pow2`` optionally ``_h<history>_e<every>``),
``fitted_c<axis>``, ``fitted_g<size>[_a<axis>]``, ``static_<lo>_<hi>``; then optionally
``@<rounding>``.

>>> import torch
>>> s = Scheme.preset("nvfp4")
>>> str(s), s.storage_bits((4, 64))    # 256 E2M1 codes + 16 E4M3 scales + one FP32 scale
('nvfp4', 1184)
>>> Scheme.parse("int4+absmax_g128") == Scheme.preset("int4_g128")
True
>>> s = Scheme.parse("int8+absmax_c0")
>>> enc = s.encode(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
>>> enc.codes.tolist(), enc.scales["scale"].flatten().tolist()
([[64, 129], [127, 0]], [0.015748031437397003, 0.003937007859349251])
>>> s.decode(enc).tolist() == s.quantize(torch.tensor([[1.0, -2.0], [0.5, 0.0]])).tolist()
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping, NamedTuple

import torch

from lowbit.formats import LearnedFormat, NumberFormat, ScalarFormat, parse_format
from lowbit.formats.base import EncodedTensor
from lowbit.formats.block import BlockFormat
from lowbit.formats.fixed_point import IntegerFormat
from lowbit.formats.granularity import Granularity, compute_dtype, granule_amax, quantize_with_scale
from lowbit.formats.rounding import ROUNDING_MODES, check_rounding
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.schemes.rules import (
    RULE_NAMES,
    Absmax,
    BlockScale,
    Fitted,
    NoScale,
    PowerOfTwo,
    ScaleRule,
    Static,
    rule_from_dict,
)

__all__ = ["Scheme", "SchemeCodes", "PRESETS"]

#: named schemes: MX, NVFP4 and BFP are instances of the one block rule, int*_g* / int8_* of absmax
PRESETS: "dict[str, str]" = {
    "mxfp8": "mxfp8_e4m3fn", "mxfp8_e5m2": "mxfp8_e5m2", "mxfp6": "mxfp6_e3m2fn", "mxfp6_e2m3": "mxfp6_e2m3fn",
    "mxfp4": "mxfp4_e2m1fn", "mxint8": "mxint8", "nvfp4": "nvfp4", "nvfp4_1l": "nvfp4_1l", "bfp8": "bfp8_b16",
    "int4_g128": "int4+absmax_g128", "int4_g32": "int4+absmax_g32", "int8_channel": "int8+absmax_c0",
    "int8_token": "int8+absmax_token",
}


class SchemeCodes(NamedTuple):
    """What `Scheme.encode` returns: element ``codes`` (x's shape), the named ``scales`` tensors
    the rule fitted (block scales, per-granule scales, zero point, exponent k …), and the
    ``dtype`` `Scheme.decode` returns by default (x's)."""

    codes: torch.Tensor
    scales: "dict[str, torch.Tensor]"
    dtype: torch.dtype


_RULE_TYPES = (NoScale, PowerOfTwo, Absmax, Static, Fitted, BlockScale)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """Element format + scale rule + rounding (see the module docstring). Frozen and hashable.

    A block format given as the element (``Scheme("nvfp4")``) is split into its element and its
    `BlockScale`, so every block-scaled scheme is spelled one way.

    >>> Scheme("mxfp4_e2m1fn") == Scheme("e2m1fn", BlockScale("e8m0fnu", 32))
    True
    >>> Scheme.from_dict(Scheme.preset("int8_token").to_dict()) == Scheme.preset("int8_token")
    True
    """

    element: NumberFormat
    scale: ScaleRule = NoScale()
    rounding: str = "nearest_even"

    def __post_init__(self) -> None:
        el = self.element
        if isinstance(el, str):
            el = parse_format(el)
        if not isinstance(el, NumberFormat):
            raise TypeError(f"Scheme element must be a format spec string or a NumberFormat, got {type(el).__name__}")
        rule = self.scale
        if not isinstance(rule, _RULE_TYPES):
            raise TypeError(f"Scheme scale must be a scale rule ({', '.join(t.__name__ for t in _RULE_TYPES)}), "
                            f"got {type(rule).__name__}")
        if isinstance(el, (BlockFormat, ScaledBlockFormat)):
            if not isinstance(rule, NoScale):
                raise ValueError(f"Scheme element {el} is a block format, which fits its own scales; scale must be "
                                 f"NoScale(), got {rule}")
            el, rule = BlockScale.of(el)
        object.__setattr__(self, "element", el)
        object.__setattr__(self, "scale", rule)
        mode = self.rounding
        try:
            mode = check_rounding(mode).value
        except ValueError:
            raise ValueError(f"Scheme rounding={mode!r}; allowed: {', '.join(ROUNDING_MODES)}") from None
        object.__setattr__(self, "rounding", mode)
        self._check()

    def _check(self) -> None:
        el, rule = self.element, self.scale
        if isinstance(rule, PowerOfTwo) and el.family not in ("posit", "minifloat"):
            raise ValueError(f"Scheme scale PowerOfTwo applies to posit and minifloat elements, not {el} ({el.family})")
        if isinstance(rule, (Absmax, Static)) and (not isinstance(el, ScalarFormat) or el.data_dependent):
            raise ValueError(f"Scheme scale {type(rule).__name__} needs a scalar element format (posit, minifloat, "
                             f"fixed point, integer), not {el}")
        if isinstance(rule, Fitted) and not isinstance(el, LearnedFormat):
            raise ValueError(f"Scheme scale Fitted needs a learned element (binary, ternary, codebook<k>), not {el}")
        if isinstance(rule, BlockScale):
            if not isinstance(el, ScalarFormat):
                raise ValueError(f"Scheme scale BlockScale needs a scalar element format, not {el}")
            self.format  # builds (and so validates) the block format

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str) -> "Scheme":
        """A named scheme (`PRESETS`): ``"nvfp4"``, ``"mxfp4"``, ``"int4_g128"`` …

        >>> str(Scheme.preset("mxfp4")), str(Scheme.preset("int8_channel"))
        ('mxfp4_e2m1fn', 'int8+absmax_c0')
        """
        if name not in PRESETS:
            raise ValueError(f"Scheme preset name={name!r}; allowed: {', '.join(PRESETS)}")
        return cls.parse(PRESETS[name])

    @classmethod
    def from_role(cls, fmt: "NumberFormat | str", rounding: str = "nearest_even", scaling: "str | int | None" = None,
                  every: "int | None" = None, history: int = 16, granularity: "Any" = None,
                  range: "tuple[float, float] | None" = None) -> "Scheme":
        """The scheme of a role's options (the fields of `lowbit.RoleConfig`).

        >>> str(Scheme.from_role("int4", scaling="absmax", granularity=Granularity.group(32)))
        'int4+absmax_g32'
        """
        gran = granularity
        if isinstance(gran, (str, Mapping)):
            from lowbit.formats.granularity import as_granularity

            gran = as_granularity(gran)
        fmt = parse_format(fmt)
        rule: ScaleRule
        if scaling is None:
            fitted = gran is not None and gran.kind != "tensor" and isinstance(fmt, LearnedFormat)
            rule = Fitted(gran) if fitted else NoScale()
        elif scaling == "absmax":
            rule = Absmax(gran if gran is not None else Granularity())
        elif scaling == "static":
            if range is None:
                raise ValueError(f"scaling='static' for {fmt} needs a calibrated range (lo, hi)")
            rule = Static(*range)
        else:
            rule = PowerOfTwo(scaling, every, history)
        return cls(fmt, rule, rounding)

    # ------------------------------------------------------------------ facts
    @property
    def format(self) -> NumberFormat:
        """The `NumberFormat` that quantizes under this scheme: the block format of a `BlockScale`,
        the element shifted by a fixed k (``PowerOfTwo(k)``), else the element."""
        rule = self.scale
        if isinstance(rule, BlockScale):
            return rule.block_format(self.element)
        if isinstance(rule, PowerOfTwo) and isinstance(rule.rule, int):
            from lowbit.schemes.power_of_two import scaled_format

            return scaled_format(self.element, rule.rule)
        return self.element

    @property
    def bits(self) -> int:
        """Bits of one element code (scales come on top: see `storage_bits`)."""
        return int(self.element.bits)

    def storage_bits(self, shape: "torch.Size | tuple[int, ...] | torch.Tensor") -> int:
        """Exact bits of a tensor of ``shape`` as `lowbit.save` stores it under this scheme: element
        codes plus the scales (block scale codes, the FP32 tensor scale, float32 per-granule scales,
        fitted levels). Power-of-two scales are part of the spec and cost nothing per tensor. A
        learned element needs the tensor itself (its fitted levels): pass it instead of a shape.

        >>> Scheme.preset("mxfp4").storage_bits((4, 64)), Scheme.parse("int5+absmax_c0").storage_bits((4, 64))
        (1088, 1408)
        """
        t = shape if isinstance(shape, torch.Tensor) else None
        if t is None:
            if isinstance(shape, (str, bytes)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                          for d in shape):
                raise ValueError(f"shape={shape!r}; allowed: a tuple of ints >= 0 or a tensor")
            shape = tuple(shape)
        else:
            shape = tuple(t.shape)
        n = math.prod(shape)
        bits = n * self.bits
        rule, fmt = self.scale, self.format
        if isinstance(fmt, BlockFormat):
            bits += math.prod(fmt.scale_shape(shape)) * int(fmt.scale_bits)
        elif isinstance(fmt, ScaledBlockFormat):
            bits += fmt.side_bits(shape)
        elif isinstance(fmt, LearnedFormat):
            if t is None:
                raise ValueError(f"storage_bits of the learned element {fmt} needs the tensor (its fitted levels), "
                                 f"not only its shape {shape}")
            w = t.detach()
            if isinstance(rule, Fitted):
                g = rule.granularity
                enc = fmt.encode_channels(w, axis=g.axis, group_size=g.group_size if g.kind == "group" else None)
            else:
                enc = fmt.encode_tensor(w)
            bits += sum(p.numel() * p.element_size() * 8 for p in enc.params.values())
        if isinstance(rule, Absmax):  # a float32 scale per granule
            bits += 32 * rule.granularity.num_granules(shape)
        elif isinstance(rule, Static):  # a float32 scale (+ an int32 zero point for unsigned integers)
            bits += 64 if _affine(self.element) else 32
        return bits

    # ------------------------------------------------------------------ codec
    def quantize(self, x: torch.Tensor, generator: "torch.Generator | None" = None) -> torch.Tensor:
        """``x`` quantized under this scheme (same shape and dtype); scales are fitted to ``x``.

        >>> Scheme.parse("posit8_es2+pow2_k-3").quantize(torch.tensor([0.1])).tolist()
        [0.1015625]
        """
        rule, mode = self.scale, self.rounding
        check_rounding(mode, generator)
        if isinstance(rule, (NoScale, BlockScale)) or (isinstance(rule, PowerOfTwo) and isinstance(rule.rule, int)):
            return self.format.quantize(x, mode, generator)
        if isinstance(rule, PowerOfTwo):
            return self._tracked(x).quantize(x, mode, generator)
        if isinstance(rule, Absmax):
            return quantize_with_scale(x, self.element, self._absmax_scale(x), None, rule.granularity, mode, generator)
        if isinstance(rule, Static):
            return self._static().quantize(x, mode, generator)
        g = rule.granularity
        return self.element.quantize_channels(x, mode, generator, axis=g.axis,  # type: ignore[attr-defined,no-any-return]
                                              group_size=g.group_size if g.kind == "group" else None)

    def encode(self, x: torch.Tensor, generator: "torch.Generator | None" = None) -> SchemeCodes:
        """Element codes and the fitted scales of ``x``; `decode` gives back `quantize`'s values.

        >>> enc = Scheme.preset("nvfp4_1l").encode(torch.tensor([0.0, 1.0, 2.0, -12.0]))
        >>> enc.codes.tolist(), enc.scales["scale_codes"].tolist()
        ([0, 1, 2, 15], [64])
        """
        rule, mode = self.scale, self.rounding
        check_rounding(mode, generator)
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if isinstance(rule, (NoScale, BlockScale)) or (isinstance(rule, PowerOfTwo) and isinstance(rule.rule, int)):
            enc = self.format.encode_tensor(x, mode, generator)
            return SchemeCodes(enc.codes, dict(enc.params), x.dtype)
        if isinstance(rule, PowerOfTwo):
            fmt = self._tracked(x)
            k = _shift_of(self.element, fmt)
            enc = fmt.encode_tensor(x, mode, generator)
            return SchemeCodes(enc.codes, {**enc.params, "scale_exponent": torch.tensor(k)}, x.dtype)
        if isinstance(rule, Fitted):
            g = rule.granularity
            enc = self.element.encode_channels(x, mode, generator, axis=g.axis,  # type: ignore[attr-defined]
                                               group_size=g.group_size if g.kind == "group" else None)
            return SchemeCodes(enc.codes, dict(enc.params), x.dtype)
        cdt = compute_dtype(x.dtype)
        if isinstance(rule, Static):
            static = self._static()
            s = torch.tensor(static.scale, dtype=cdt, device=x.device)
            if static.affine:
                from lowbit.formats.affine import quantize_affine

                q = quantize_affine(x, s, static.zero_point, static.qmin, static.qmax, mode, generator)
                return SchemeCodes(q.to(self.element.code_dtype), {"scale": s, "zero_point": torch.tensor(
                    static.zero_point, dtype=torch.int32)}, x.dtype)
            from lowbit.formats.granularity import format_low

            safe = s if float(s) != 0 else torch.ones_like(s)
            v = (x.detach().to(cdt) / safe).clamp_(format_low(self.element), float(self.element.max))
            return SchemeCodes(self.element.encode(v, mode, generator), {"scale": s}, x.dtype)
        s = self._absmax_scale(x)
        full = rule.granularity.expand(s, x.shape)
        safe = torch.where(full == 0, torch.ones_like(full), full)
        codes = self.element.encode(x.detach().to(cdt) / safe, mode, generator)
        return SchemeCodes(codes, {"scale": s}, x.dtype)

    def decode(self, encoded: SchemeCodes, dtype: "torch.dtype | None" = None) -> torch.Tensor:
        """The values of `encode`'s result, as ``dtype`` (default: the encoded tensor's dtype)."""
        if not isinstance(encoded, SchemeCodes):
            raise TypeError(f"encoded must be the SchemeCodes that Scheme.encode returns, got {type(encoded).__name__}")
        codes, scales = encoded.codes, dict(encoded.scales)
        dtype = encoded.dtype if dtype is None else dtype
        rule = self.scale
        if isinstance(rule, (NoScale, BlockScale, Fitted)) or (isinstance(rule, PowerOfTwo) and isinstance(rule.rule, int)):
            fmt = self.format
            return fmt.decode_tensor(EncodedTensor(fmt, codes, scales), dtype)
        if isinstance(rule, PowerOfTwo):
            from lowbit.schemes.power_of_two import scaled_format

            k = _required(scales, "scale_exponent", self)
            fmt = scaled_format(self.element, int(scales.pop("scale_exponent")))
            del k
            return fmt.decode_tensor(EncodedTensor(fmt, codes, scales), dtype)
        cdt = compute_dtype(dtype)
        s = _required(scales, "scale", self).to(device=codes.device, dtype=cdt)
        if isinstance(rule, Static):
            if _affine(self.element):
                from lowbit.formats.affine import dequantize_affine

                return dequantize_affine(codes.to(torch.int64), s, _required(scales, "zero_point", self), dtype=dtype)
            y = self.element.decode(codes, cdt) * s
            return (torch.zeros_like(y) if float(s) == 0 else y).to(dtype)
        full = rule.granularity.expand(s, codes.shape)
        y = self.element.decode(codes, cdt) * full
        return torch.where(full == 0, torch.zeros_like(y), y).to(dtype)

    # ------------------------------------------------------------------ helpers
    def _tracked(self, x: torch.Tensor) -> NumberFormat:
        from lowbit.schemes.power_of_two import ScaleTracker

        rule = self.scale
        tracker = ScaleTracker(self.element, rule.rule, rule.every, rule.history)  # type: ignore[union-attr]
        tracker.update(x)
        return tracker.format()

    def _absmax_scale(self, x: torch.Tensor) -> torch.Tensor:
        g = self.scale.granularity  # type: ignore[union-attr]
        return granule_amax(x.detach(), g).to(compute_dtype(x.dtype)) / self.element.max

    def _static(self) -> Any:
        from lowbit.schemes.static import StaticRange

        return StaticRange(self.element, self.scale.lo, self.scale.hi)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ forms
    def to_dict(self) -> "dict[str, Any]":
        """JSON-able form; `from_dict` reads it back (equal scheme)."""
        return {"element": str(self.element), "scale": self.scale.to_dict(), "rounding": self.rounding}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "Scheme":
        if not isinstance(d, Mapping):
            raise TypeError(f"scheme must be a dict with 'element', 'scale', 'rounding', got {type(d).__name__}")
        unknown = set(d) - {"element", "scale", "rounding"}
        if unknown:
            raise ValueError(f"scheme: unknown key(s) {sorted(unknown)}; allowed: element, scale, rounding")
        if "element" not in d:
            raise ValueError("scheme: needs an 'element' (a format spec string such as 'int4')")
        scale = d.get("scale", {"rule": "none"})
        return cls(d["element"], rule_from_dict(scale), d.get("rounding", "nearest_even"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "Scheme":
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        rule = self.scale
        if isinstance(rule, (NoScale, BlockScale)):
            head = str(self.format)
        else:
            head = f"{self.element}+{_rule_token(rule)}"
        return head if self.rounding == "nearest_even" else f"{head}@{self.rounding}"

    @classmethod
    def parse(cls, spec: str) -> "Scheme":
        """The scheme of a spec string (the module docstring's grammar); ``str(Scheme.parse(s)) == s``
        for canonical ``s``.

        >>> str(Scheme.parse("uint8+static_-1.0_3.0@stochastic"))
        'uint8+static_-1.0_3.0@stochastic'
        """
        if not isinstance(spec, str):
            raise TypeError(f"spec must be a scheme spec string, got {type(spec).__name__}")
        body, _, rounding = spec.partition("@")
        rounding = rounding or "nearest_even"
        element, plus, token = body.partition("+")
        if not plus:
            return cls(element, NoScale(), rounding)
        return cls(element, _parse_rule(token, spec), rounding)


def _affine(element: NumberFormat) -> bool:
    return isinstance(element, IntegerFormat) and not element.signed


def _required(scales: "Mapping[str, torch.Tensor]", name: str, scheme: Scheme) -> torch.Tensor:
    if name not in scales:
        raise ValueError(f"encoded.scales lacks {name!r}, which {scheme} needs to decode; has {sorted(scales)}")
    return scales[name]


def _shift_of(element: NumberFormat, scaled: NumberFormat) -> int:
    """k with scaled = element shifted by 2^k."""
    if scaled == element:
        return 0
    if hasattr(element, "scale") and hasattr(scaled, "scale") and not hasattr(element, "bias"):
        return int(scaled.scale - element.scale)  # type: ignore[attr-defined]
    return int(element.bias - scaled.bias)  # type: ignore[attr-defined]


def _gran_token(g: Granularity, head: str) -> str:
    if g.kind == "tensor":
        return head
    if g.kind == "token":
        return f"{head}_token"
    if g.kind == "channel":
        return f"{head}_c{g.axis}"
    return f"{head}_g{g.group_size}" + ("" if g.axis == -1 else f"_a{g.axis}")


def _rule_token(rule: ScaleRule) -> str:
    if isinstance(rule, Absmax):
        return _gran_token(rule.granularity, "absmax")
    if isinstance(rule, Fitted):
        return _gran_token(rule.granularity, "fitted")
    if isinstance(rule, Static):
        return f"static_{rule.lo!r}_{rule.hi!r}"
    assert isinstance(rule, PowerOfTwo)
    tok = f"pow2_k{rule.rule}" if isinstance(rule.rule, int) else f"pow2_{rule.rule}"
    tok += "" if rule.history == 16 else f"_h{rule.history}"
    return tok + ("" if rule.every is None else f"_e{rule.every}")


_GRAN = re.compile(r"(absmax|fitted)(?:_(token)|_c(-?\d+)|_g(\d+)(?:_a(-?\d+))?)?")
_POW2 = re.compile(r"pow2_(histogram|amax|k-?\d+)(?:_h(\d+))?(?:_e(\d+))?")
_STATIC = re.compile(r"static_([^_]+)_([^_]+)")


def _parse_rule(token: str, spec: str) -> ScaleRule:
    m = _GRAN.fullmatch(token)
    if m:
        kind, tok, chan, size, axis = m.groups()
        if tok:
            g = Granularity.token()
        elif chan is not None:
            g = Granularity.channel(int(chan))
        elif size is not None:
            g = Granularity.group(int(size), -1 if axis is None else int(axis))
        else:
            g = Granularity()
        return Absmax(g) if kind == "absmax" else Fitted(g)
    m = _POW2.fullmatch(token)
    if m:
        r, h, e = m.groups()
        rule: "str | int" = int(r[1:]) if r.startswith("k") else r
        return PowerOfTwo(rule, None if e is None else int(e), 16 if h is None else int(h))
    m = _STATIC.fullmatch(token)
    if m:
        try:
            return Static(float(m.group(1)), float(m.group(2)))
        except ValueError:
            pass
    raise ValueError(
        f"scheme spec {spec!r}: scale rule {token!r} is not valid; allowed: absmax, absmax_c<axis>, "
        f"absmax_g<size>[_a<axis>], absmax_token, pow2_histogram, pow2_amax, pow2_k<k> (each pow2 optionally "
        f"_h<history>_e<every>), fitted_c<axis>, fitted_g<size>[_a<axis>], static_<lo>_<hi> (rules: {', '.join(RULE_NAMES)})"
    )




