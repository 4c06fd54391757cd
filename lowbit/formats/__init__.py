"""Number formats: posit, minifloat, fixed point, integer, block (MX, BFP, NVFP4, scaled blocks), learned; spec strings; cards."""

from lowbit.formats.base import EncodedTensor, NumberFormat, ScalarFormat
from lowbit.formats.bitfields import Explanation, explain
from lowbit.formats.block import BlockFloatingPoint, BlockFormat, MXFormat, PowerOfTwoBlocks
from lowbit.formats.block_layout import BlockLayout
from lowbit.formats.card import count_values, format_card
from lowbit.formats.fixed_point import FixedPoint, IntegerFormat
from lowbit.formats.learned import BinaryFormat, Codebook, LearnedFormat, TernaryFormat
from lowbit.formats.minifloat import Minifloat
from lowbit.formats.posit import Posit
from lowbit.formats.scaled_block import ScaledBlockFormat
from lowbit.formats.rounding import ROUNDING_MODES, Rounding
from lowbit.formats.spec import PRESETS, VALID_FORMS, block_format, parse_format

__all__ = [
    "NumberFormat",
    "EncodedTensor",
    "ScalarFormat",
    "Posit",
    "Minifloat",
    "FixedPoint",
    "IntegerFormat",
    "BlockFormat",
    "MXFormat",
    "BlockFloatingPoint",
    "PowerOfTwoBlocks",
    "BlockLayout",
    "ScaledBlockFormat",
    "LearnedFormat",
    "BinaryFormat",
    "TernaryFormat",
    "Codebook",
    "Rounding",
    "ROUNDING_MODES",
    "parse_format",
    "block_format",
    "PRESETS",
    "VALID_FORMS",
    "format_card",
    "count_values",
    "explain",
    "Explanation",
]
