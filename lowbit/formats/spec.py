"""Spec strings: parse one, print the canonical one.

One spelling per format (``str(fmt)``); aliases such as ``fp16`` or ``fp8_e4m3fn`` parse to the
same object and print back canonically. Ambiguous names (``posit8``: es=0 in SoftPosit but es=2
in the 2022 standard) are refused with the spellings to use instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Callable

from lowbit.errors import FormatSpecError
from lowbit.formats.base import NumberFormat, ScalarFormat
from lowbit.formats.block import (
    DEFAULT_BLOCK_SIZE,
    MAX_BLOCK_SIZE,
    MX_ELEMENTS,
    BlockFloatingPoint,
    MXFormat,
    PowerOfTwoBlocks,
)
from lowbit.formats.block_layout import LAST, BlockLayout
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat
from lowbit.formats.learned import BinaryFormat, Codebook, TernaryFormat
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.scaled_block import NVFP4, NVFP4_1L, ScaledBlockFormat

__all__ = ["parse_format", "as_format", "block_format", "VALID_FORMS", "PRESETS", "ALIASES"]

VALID_FORMS = (
    "posit<n>_es<es>[_s<k>]  (2 <= n <= 32, 0 <= es <= 5; e.g. posit8_es2, posit6_es1_s-4)",
    "e<E>m<M>[b<bias>][fn|fnuz|fnu][_sat]  (minifloat; e.g. e4m3fn, e5m2, e4m3b11fnuz, e8m0fnu, e2m1fn, e6m1)",
    "fp32 | fp16 | bf16 | fp8_<minifloat> | fp6_<minifloat> | fp4_<minifloat>  (aliases)",
    "fixed<w>_f<f> | ufixed<w>_f<f>  (fixed point; e.g. fixed8_f4)",
    "int<b> | uint<b> | int<b>n  (integer grid; e.g. int8, uint4, int8n)",
    "mxfp8_e4m3fn | mxfp8_e5m2 | mxfp6_e3m2fn | mxfp6_e2m3fn | mxfp4_e2m1fn | mxint8, each [_b<k>]  "
    f"(OCP MX v1.0: shared E8M0 scale per block of k along the last axis, 1 <= k <= {MAX_BLOCK_SIZE}, "
    f"default {DEFAULT_BLOCK_SIZE})",
    "bfp<bits>_b<k>  (block floating point: signed <bits>-bit elements, 2 <= bits <= 16, one exponent per "
    "block of k along the last axis; e.g. bfp8_b16)",
    "nvfp4 | nvfp4_1l  (NVFP4: e2m1fn elements, an e4m3fn scale per 16 along the last axis, under one FP32 "
    "scale per tensor = amax / (448 * 6); _1l: the block scales only)",
    "block<k>_<element>_scale_<scale>[_t][_a<axis>]  (the one block rule: one <scale>-format scale per block of "
    f"k along the last axis (or <axis>), 1 <= k <= {MAX_BLOCK_SIZE}, over signed scalar <element> codes (<= 16 bits); "
    "_t adds an FP32 per-tensor scale. Scale e8m0fnu: the OCP MX rule 2^(floor(log2 amax) - emax_elem) "
    "(MX elements print as their mxfp* / mxint8 spec); any other minifloat with mantissa bits or posit (ue4m3 = e4m3fn): NVFP4's rule "
    "s = amax / element_max rounded to the scale format; e.g. block16_e2m1fn_scale_posit8_es1, "
    "block32_int4_scale_e8m0fnu, block16_e3m2fn_scale_e4m3fn_t)",
    "any block spec above + _r | _rt<g>  (block layout: blocks along each x[i] flattened, a conv weight's "
    "output-channel reduction; _rt<g>: a transposed-conv weight's [I, O/g, ...] reduction with g groups; "
    "quantize_ resolves _r per layer: a transposed conv gets _rt<groups>; e.g. mxfp4_e2m1fn_r, nvfp4_rt2)",
    "binary | ternary | codebook<k>  (fitted to each tensor: sign·mean|x|; {-a, 0, a} with threshold "
    "0.7·mean|x|; k-means with at most 2^k levels, 1 <= k <= 8)",
)

ALIASES: dict[str, str] = {
    "fp32": "e8m23",
    "float32": "e8m23",
    "float": "e8m23",
    "fp16": "e5m10",
    "float16": "e5m10",
    "half": "e5m10",
    "bf16": "e8m7",
    "bfloat16": "e8m7",
    "e8m0": "e8m0fnu",
}

# Named presets shown by `lowbit formats` (every one parses; tests check that).
PRESETS: dict[str, tuple[str, ...]] = {
    "posit": ("posit8_es0", "posit8_es2", "posit16_es1", "posit16_es2", "posit32_es2", "posit6_es1_s-4"),
    "minifloat": (
        "e8m23", "e5m10", "e8m7", "e4m3fn", "e4m3", "e4m3fnuz", "e4m3b11fnuz", "e5m2", "e5m2fnuz",
        "e3m4", "e3m2fn", "e2m3fn", "e2m1fn", "e8m0fnu", "e4m3fn_sat",
    ),
    # power-of-two (log) quantization: sign + exponent, no mantissa — 0 and ±2^k only
    "power-of-two": ("e3m0fn", "e4m0fn", "e2m0fn"),
    "fixed": ("fixed8_f4", "fixed16_f8", "ufixed8_f4"),
    "integer": ("int8", "int8n", "uint8", "int4", "uint4"),
    "block": (
        "mxfp8_e4m3fn", "mxfp8_e5m2", "mxfp6_e3m2fn", "mxfp6_e2m3fn", "mxfp4_e2m1fn", "mxint8", "bfp8_b16",
        "nvfp4", "nvfp4_1l", "block16_e2m1fn_scale_posit8_es1", "block32_int4_scale_e8m0fnu",
    ),
    "learned": ("binary", "ternary", "codebook2", "codebook4"),
}

_POSIT = re.compile(r"posit(\d+)_es(\d+)(?:_s([+-]?\d+))?")
_MINIFLOAT = re.compile(r"e(\d+)m(\d+)(?:b([+-]?\d+))?(fnuz|fnu|fn)?(_sat)?")
_FIXED = re.compile(r"(u?)fixed(\d+)_f(\d+)")
_INTEGER = re.compile(r"(u?)int(\d+)(n?)")
_PREFIXED = re.compile(r"(?:fp|float)(4|6|8)_(.+)")
_MAX_DIGITS = 12  # no parameter of any format needs more; longer numbers are refused before int()
#: the optional block-layout suffix of block specs (`BlockLayout`: _r, _rt<groups>)
_LAYOUT = r"(?:_(?P<layout>r|rt\d+))?"
_MX = re.compile(r"mx(?:fp(\d+)_([a-z0-9]+)|int(\d+))(?:_b(\d+))?" + _LAYOUT)
_BFP = re.compile(r"bfp(\d+)_b(\d+)" + _LAYOUT)
_LEARNED = re.compile(r"binary|ternary|codebook(\d+)")
_NVFP4 = re.compile(r"nvfp4(_1l)?" + _LAYOUT)
_SCALED_BLOCK = re.compile(r"block(\d+)_(.+?)_scale_(.+?)(_t)?(?:_a([+-]?\d+))?" + _LAYOUT)
#: spellings of a block scale format that are not format specs of their own
_SCALE_ALIASES = {"ue4m3": "e4m3fn", "ue8m0": "e8m0fnu"}
_E8M0 = Minifloat(8, 0, policy="fnu")
_MX_SPELLINGS = ", ".join(
    "mxint8" if split is None else f"mxfp{1 + split[0] + split[1]}_{name}" for name, split in MX_ELEMENTS.items()
)


def _posit(m: re.Match[str]) -> NumberFormat:
    return Posit(int(m[1]), int(m[2]), int(m[3] or 0))


def _minifloat(m: re.Match[str]) -> NumberFormat:
    policy = m[4] or "ieee"
    bias = int(m[3]) if m[3] is not None else None
    return Minifloat(int(m[1]), int(m[2]), policy=policy, bias=bias, saturate=bool(m[5]))


def _fixed(m: re.Match[str]) -> NumberFormat:
    return FixedPoint(int(m[2]), int(m[3]), signed=not m[1])


def _integer(m: re.Match[str]) -> NumberFormat:
    return IntegerFormat(int(m[2]), signed=not m[1], narrow=bool(m[3]))


def _layout(m: re.Match[str]) -> BlockLayout:
    return BlockLayout.from_suffix(m["layout"])


def _mx(m: re.Match[str]) -> NumberFormat:
    block = int(m[4]) if m[4] is not None else DEFAULT_BLOCK_SIZE
    if m[3] is not None:
        if m[3] != "8":
            raise FormatSpecError(
                f"OCP MX v1.0 has one integer element type, int8 (mxint8), not int{m[3]}; "
                f"for other widths use block floating point bfp{m[3]}_b<k>"
            )
        return MXFormat("int8", block, _layout(m))
    element = m[2]
    if element not in MX_ELEMENTS or element == "int8":
        raise FormatSpecError(f"{element!r} is not an OCP MX element type; the MX formats are {_MX_SPELLINGS}")
    fmt = MXFormat(element, block, _layout(m))
    if int(m[1]) != fmt.bits:
        raise FormatSpecError(f"{element} elements have {fmt.bits} bits: write {fmt}")
    return fmt


def _bfp(m: re.Match[str]) -> NumberFormat:
    return BlockFloatingPoint(int(m[1]), int(m[2]), _layout(m))


def _learned(m: re.Match[str]) -> NumberFormat:
    if m[0] == "binary":
        return BinaryFormat()
    if m[0] == "ternary":
        return TernaryFormat()
    return Codebook(int(m[1]))


def _nvfp4(m: re.Match[str]) -> NumberFormat:
    fmt = NVFP4_1L if m[1] else NVFP4
    return fmt if m["layout"] is None else dataclasses.replace(fmt, layout=_layout(m))


def _scalar_part(text: str, what: str) -> ScalarFormat:
    try:
        fmt = parse_format(_SCALE_ALIASES.get(text, text) if what == "scale" else text)
    except FormatSpecError:
        raise FormatSpecError(f"the block {what} {text!r} is not a format spec") from None
    if not isinstance(fmt, ScalarFormat):
        raise FormatSpecError(f"the block {what} must be a scalar format (posit, minifloat, fixed, int), got {fmt}")
    return fmt


def block_format(element: "str | NumberFormat", scale: "str | NumberFormat", block_size: int,
                 tensor_scale: bool = False, axis: int = -1, layout: BlockLayout = LAST) -> NumberFormat:
    """The block format of ``element`` codes with one ``scale``-format scale per ``block_size``.

    An ``e8m0fnu`` scale takes the OCP MX rule (`MXFormat` for MX element types, else
    `PowerOfTwoBlocks`); any other scale format NVFP4's rule (`ScaledBlockFormat`). ``axis``: the
    axis the blocks run along (-1, the last, as MX and NVFP4; MX formats have no other);
    ``layout``: other rows they run along (`BlockLayout`: a conv weight's reduction).

    >>> str(block_format("e2m1fn", "e4m3fn", 16, tensor_scale=True)), str(block_format("e4m3fn", "e8m0fnu", 32))
    ('nvfp4', 'mxfp8_e4m3fn')
    """
    el = _scalar_part(element, "element") if isinstance(element, str) else element
    sc = _scalar_part(scale, "scale") if isinstance(scale, str) else scale
    if isinstance(sc, Minifloat) and sc == _E8M0:
        if tensor_scale:
            raise FormatSpecError("a per-tensor scale (_t) needs a block scale format with mantissa bits, not e8m0fnu")
        if isinstance(el, Minifloat) and str(el) in MX_ELEMENTS:
            if axis != -1:
                raise FormatSpecError(f"OCP MX blocks run along the last axis; axis={axis!r} is not offered for "
                                      f"{MXFormat(str(el), block_size)}")
            return MXFormat(str(el), block_size, layout)
        return PowerOfTwoBlocks(el, block_size, axis, layout)  # type: ignore[arg-type]
    return ScaledBlockFormat(el, sc, block_size, tensor_scale, axis, layout)  # type: ignore[arg-type]


def _scaled_block(m: re.Match[str]) -> NumberFormat:
    return block_format(m[2], m[3], int(m[1]), tensor_scale=bool(m[4]), axis=int(m[5]) if m[5] else -1,
                        layout=_layout(m))


_GRAMMAR: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], NumberFormat]], ...] = (
    (_POSIT, _posit),
    (_MINIFLOAT, _minifloat),
    (_FIXED, _fixed),
    (_INTEGER, _integer),
    (_MX, _mx),
    (_BFP, _bfp),
    (_LEARNED, _learned),
    (_NVFP4, _nvfp4),
    (_SCALED_BLOCK, _scaled_block),
)


def parse_format(spec: "str | NumberFormat") -> NumberFormat:
    """Parse a format spec string (a NumberFormat passes through unchanged).

    >>> str(parse_format("fp8_e4m3fn")), str(parse_format("posit6_es1_s-4"))
    ('e4m3fn', 'posit6_es1_s-4')

    Raises FormatSpecError (a ValueError) naming the valid forms and the closest preset.
    """
    if isinstance(spec, NumberFormat):
        return spec
    if not isinstance(spec, str):
        raise FormatSpecError(f"format spec must be a string such as 'posit8_es2', got {type(spec).__name__}")
    text = spec.strip().lower()
    _check_characters(spec, text)
    text = ALIASES.get(text, text)
    prefixed = _PREFIXED.fullmatch(text)
    if prefixed:
        text = prefixed[2]
    for pattern, build in _GRAMMAR:
        m = pattern.fullmatch(text)
        if m:
            try:
                fmt = build(m)
                if prefixed:
                    _check_prefix_width(int(prefixed[1]), fmt)
                return fmt
            except FormatSpecError as err:
                forms = "\n  ".join(VALID_FORMS)
                raise FormatSpecError(f"bad format spec {spec!r}: {err}\nValid forms:\n  {forms}") from None
    raise FormatSpecError(_unknown_message(spec, text))


def as_format(spec: Any, argument: str, *, optional: bool = False) -> "NumberFormat | None":
    """``spec`` (a spec string or a NumberFormat; None when ``optional``) as a NumberFormat, for an
    API argument named ``argument``: every error names the argument and what it allows.

    >>> str(as_format("fp8_e4m3fn", "forward")), as_format(None, "backward", optional=True)
    ('e4m3fn', None)
    >>> as_format(8, "grad", optional=True)
    Traceback (most recent call last):
    ...
    TypeError: grad must be a format spec string (e.g. 'posit8_es2'), a NumberFormat or None, got int
    """
    if spec is None and optional:
        return None
    if not isinstance(spec, (str, NumberFormat)):
        allowed = ("a format spec string (e.g. 'posit8_es2'), a NumberFormat or None" if optional
                   else "a format spec string (e.g. 'posit8_es2') or a NumberFormat")
        raise TypeError(f"{argument} must be {allowed}, got {type(spec).__name__}")
    try:
        return parse_format(spec)
    except FormatSpecError as err:
        raise FormatSpecError(f"{argument}: {err}") from None


def _check_characters(spec: str, text: str) -> None:
    """Specs are ASCII (no other scripts' digits) and their numbers short enough to be parameters."""
    forms = "\n  ".join(VALID_FORMS)
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise FormatSpecError(
            f"bad format spec {spec!r}: specs are ASCII letters, digits 0-9, '_', '+' and '-'; "
            f"found {bad!r} (U+{ord(bad):04X})\nValid forms:\n  {forms}"
        )
    long = re.search(rf"[0-9]{{{_MAX_DIGITS + 1},}}", text)
    if long:
        raise FormatSpecError(
            f"bad format spec {spec[:40]!r}...: a number of {len(long[0])} digits; format parameters have at most "
            f"{_MAX_DIGITS}\nValid forms:\n  {forms}"
        )


def _check_prefix_width(width: int, fmt: NumberFormat) -> None:
    """``fp<w>_<minifloat>`` names a <w>-bit minifloat: the width must be the format's."""
    if not isinstance(fmt, Minifloat):
        raise FormatSpecError(f"the fp{width}_ prefix names a minifloat (e.g. fp8_e4m3fn); write {fmt} without it")
    if fmt.bits != width:
        raise FormatSpecError(f"{fmt} has {fmt.bits} bits, not {width}: write {fmt} or fp{fmt.bits}_{fmt}")


def _unknown_message(spec: str, text: str) -> str:
    hint = ""
    m = re.fullmatch(r"posit(\d+)", text)
    if m:
        n = m[1]
        hint = (
            f" 'posit{n}' is ambiguous (es=0 in SoftPosit, es=2 in the 2022 Posit Standard): "
            f"write posit{n}_es2 or posit{n}_es0."
        )
    elif text in ("fp8", "float8", "e4m3fn_", "fp6", "fp4"):
        hint = " Name the split, e.g. e4m3fn or e5m2 (fp8), e3m2fn or e2m3fn (fp6), e2m1fn (fp4)."
    elif re.fullmatch(r"mx(fp\d*|int\d*)?(_.*)?", text):
        hint = f" The OCP MX formats are {_MX_SPELLINGS}, each with an optional block size _b<k>."
    elif re.fullmatch(r"bfp\d*(_.*)?", text):
        hint = " Block floating point names its element bits and block size, e.g. bfp8_b16."
    elif text.startswith(("nvfp", "block")):
        hint = (" NVFP4 is nvfp4 (two levels) or nvfp4_1l (block scales only); other block-scaled formats are "
                "block<k>_<element>_scale_<scale>[_t], e.g. block16_e2m1fn_scale_e4m3fn_t.")
    elif text.startswith("codebook"):
        hint = " Write codebook<k> with 1 <= k <= 8 index bits, e.g. codebook4."
    else:
        known = [p for group in PRESETS.values() for p in group] + list(ALIASES)
        close = difflib.get_close_matches(text, known, n=3, cutoff=0.5)
        if close:
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?"
    forms = "\n  ".join(VALID_FORMS)
    return f"unknown format spec {spec!r}.{hint}\nValid forms:\n  {forms}"
