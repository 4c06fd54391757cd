"""Explain a value in a format: its bit pattern, the fields, the value it rounds to.

``lowbit explain -5.75 fp32`` → ``1 10000001 01110000000000000000000``; posits show
sign/regime/exponent/fraction; integers show sign-magnitude, ones' and two's complement.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lowbit.formats.base import ScalarFormat
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat, _UniformGrid
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.rounding import Rounding

__all__ = ["Field", "Explanation", "explain", "fields_of"]


@dataclasses.dataclass(frozen=True)
class Field:
    """One bit field of a code: its name, its bits (as a 0/1 string) and what they mean."""

    name: str
    bits: str
    meaning: str
    in_pattern: bool = True


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What ``explain`` found: the input, its code and fields, the value it rounds to."""

    fmt: str
    value: float
    rounding: str
    code: int
    bits: int
    fields: tuple[Field, ...]
    rounded: float
    encodings: tuple[tuple[str, str], ...] = ()

    @property
    def pattern(self) -> str:
        """The code's bits split into fields by spaces, e.g. ``1 10000001 0111…``."""
        return " ".join(f.bits for f in self.fields if f.bits and f.in_pattern)

    @property
    def error(self) -> float:
        """rounded − value (NaN when either is not finite)."""
        if math.isfinite(self.rounded) and math.isfinite(self.value):
            return self.rounded - self.value
        return math.nan

    @property
    def relative_error(self) -> float:
        if self.value == 0 or not math.isfinite(self.error):
            return 0.0 if self.error == 0 else math.nan
        return abs(self.error) / abs(self.value)

    def __str__(self) -> str:
        lines = [
            f"{self.value!r} in {self.fmt} (rounding {self.rounding})",
            f"  bits      {self.pattern}   (code {self.code} = 0x{self.code:0{(self.bits + 3) // 4}x})",
        ]
        width = max(len(f.name) for f in self.fields)
        bwidth = max(len(f.bits) for f in self.fields)
        lines += [f"  {f.name:<{width}}  {f.bits:<{bwidth}}  {f.meaning}" for f in self.fields]
        for name, bits in self.encodings:
            lines.append(f"  {name:<22} {bits}")
        lines.append(f"  rounds to {self.rounded!r}")
        if math.isfinite(self.error):
            lines.append(f"  error     {self.error:+.6g} (relative {self.relative_error:.3g})")
        return "\n".join(lines)


def _bin(v: int, width: int) -> str:
    return format(v, f"0{width}b") if width > 0 else ""


def fields_of(fmt: ScalarFormat, code: int) -> tuple[Field, ...]:
    """Split ``code`` into the named fields of ``fmt``."""
    if isinstance(fmt, Posit):
        return _posit_fields(fmt, code)
    if isinstance(fmt, Minifloat):
        return _minifloat_fields(fmt, code)
    if isinstance(fmt, _UniformGrid):
        return _grid_fields(fmt, code)
    raise TypeError(f"fields_of does not know {type(fmt).__name__}")


def _posit_fields(fmt: Posit, code: int) -> tuple[Field, ...]:
    n, es = fmt.n, fmt.es
    if code == 0:
        return (Field("zero", _bin(code, n), "0"),)
    if code == fmt.nar_code:
        return (Field("NaR", _bin(code, n), "not a real (NaN/±inf encode here)"),)
    negative = code >> (n - 1)
    mag = ((1 << n) - code) & ((1 << (n - 1)) - 1) if negative else code
    body = _bin(mag, n - 1)
    first = body[0]
    run = len(body) - len(body.lstrip(first))
    k = run - 1 if first == "1" else -run
    regime = body[: run + 1]
    rest = body[run + 1 :]
    exp_bits, frac_bits = rest[:es], rest[es:]
    e = int(exp_bits or "0", 2) << (es - len(exp_bits))
    frac = int(frac_bits or "0", 2)
    significand = 1 + frac / (1 << len(frac_bits)) if frac_bits else 1.0
    scale = f" · 2^{fmt.scale} (scale)" if fmt.scale else ""
    fields = [Field("sign", str(negative), "−" if negative else "+")]
    if negative:
        raw = _bin(code, n)[1:]
        fields.append(Field("body", raw, f"negative: two's complement of the code gives magnitude {body}"))
    fields += [
        Field("regime", regime, f"run of {run} {first}'s → k = {k} → useed^{k} = 2^{k << es}", not negative),
        Field("exponent", exp_bits, f"e = {e}" + (" (cut bits read as 0)" if len(exp_bits) < es else ""), not negative),
        Field("fraction", frac_bits, f"1 + {frac}/{1 << len(frac_bits)} = {significand!r}", not negative),
        Field("value", "", f"{'−' if negative else '+'}2^({k}·{1 << es} + {e}) × {significand!r}{scale}"),
    ]
    return tuple(fields)


def _minifloat_fields(fmt: Minifloat, code: int) -> tuple[Field, ...]:
    e, m = fmt.exp_bits, fmt.man_bits
    value = float(fmt.decode(torch.tensor([code]), torch.float64)[0])
    fields = []
    if fmt.signed:
        sign = (code >> (e + m)) & 1
        fields.append(Field("sign", str(sign), "−" if sign else "+"))
    field = (code >> m) & ((1 << e) - 1)
    mant = code & ((1 << m) - 1)
    if math.isnan(value) or math.isinf(value):
        meaning = "special: " + ("NaN" if math.isnan(value) else "infinity")
        fields.append(Field("exponent", _bin(field, e), meaning))
        fields.append(Field("mantissa", _bin(mant, m), ""))
        return tuple(fields)
    if field == 0 and fmt.has_subnormals:
        fields.append(Field("exponent", _bin(field, e), f"subnormal: 2^{fmt.min_normal_exponent}"))
        fields.append(Field("mantissa", _bin(mant, m), f"0 + {mant}/{1 << m} = {mant / (1 << m)!r}"))
    else:
        fields.append(Field("exponent", _bin(field, e), f"{field} − bias {fmt.bias} = {field - fmt.bias}"))
        fields.append(Field("mantissa", _bin(mant, m), f"1 + {mant}/{1 << m} = {1 + mant / (1 << m)!r}"))
    return tuple(fields)


def _grid_fields(fmt: _UniformGrid, code: int) -> tuple[Field, ...]:
    w, f = fmt.word_bits, fmt.frac_bits
    k = code - (1 << w) if fmt.signed and code >= (1 << (w - 1)) else code
    bits = _bin(code, w)
    if isinstance(fmt, FixedPoint) and f > 0:
        shown = bits[: w - f] + "." + bits[w - f :] if f <= w else "." + "0" * (f - w) + bits
        return (Field("word", bits, f"k = {k} → {k} × 2^-{f}; binary point: {shown}"),)
    return (Field("word", bits, f"k = {k}" + (" (two's complement)" if fmt.signed else "")),)


def _integer_encodings(fmt: IntegerFormat, k: int) -> tuple[tuple[str, str], ...]:
    w = fmt.word_bits
    if not fmt.signed:
        return (("unsigned binary", _bin(k, w)),)
    mag = abs(k)
    fits_sm = mag < (1 << (w - 1))
    sign_magnitude = (("1" if k < 0 else "0") + _bin(mag, w - 1)) if fits_sm else "n/a (out of range)"
    ones = (_bin(((1 << w) - 1) ^ mag, w) if k < 0 else _bin(k, w)) if fits_sm else "n/a (out of range)"
    twos = _bin(k & ((1 << w) - 1), w)
    return (("sign-magnitude", sign_magnitude), ("ones' complement", ones), ("two's complement", twos))


def explain(value: float, fmt: ScalarFormat, rounding: "str | Rounding" = "nearest_even") -> Explanation:
    """Encode one value and describe the result.

    >>> from lowbit import parse_format
    >>> explain(-5.75, parse_format("fp32")).pattern
    '1 10000001 01110000000000000000000'
    >>> explain(-5, parse_format("int8")).encodings[2]
    ("two's complement", '11111011')
    """
    x = torch.tensor([float(value)], dtype=torch.float64)
    code = int(fmt.encode(x, rounding=rounding)[0])
    rounded = float(fmt.decode(torch.tensor([code]), torch.float64)[0])
    encodings: tuple[tuple[str, str], ...] = ()
    if isinstance(fmt, IntegerFormat):
        encodings = _integer_encodings(fmt, int(rounded))
    return Explanation(
        fmt=str(fmt),
        value=float(value),
        rounding=str(Rounding(rounding)),
        code=code,
        bits=fmt.bits,
        fields=fields_of(fmt, code),
        rounded=rounded,
        encodings=encodings,
    )
