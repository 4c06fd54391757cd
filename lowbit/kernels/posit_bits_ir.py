"""A posit's value rounded to a float32 / float16 / bfloat16 bit pattern, in 32-bit integer arithmetic.

numba types every arithmetic result on integers narrower than 64 bits as a 64-bit integer, so a
decode written in numba's integers runs on 64-bit vector lanes (8 per AVX-512 register). These
numba intrinsics emit the same steps as LLVM ``i32`` instructions, so that a loop over codes
vectorises on 32-bit lanes (measured in the cache, one thread: 0.43 ns per posit32_es2 code to
float32 instead of 0.72 through a float64 and a cast).

`float32_bits` (`float16_bits`, `bfloat16_bits`) of a code ``c`` of posit<n, es> times 2^scale
returns ``(bits, special)``: the output's bit pattern when the value rounds (to nearest, ties to
even) to a normal finite number of the output, with ``special`` = 0; else ``special`` = 1 and
``bits`` is meaningless (the value is beyond the output's largest finite number, where lowbit
saturates, or below its smallest normal: subnormal outputs and the never-flush-to-zero rule).
Zero decodes to +0 and NaR to the canonical quiet NaN; neither is special. The caller finishes
the few special elements exactly (`posit_decode_numba`). Requires 2 <= n <= 32, 0 <= es <= 6.

The fields are read as in `posit_decode_numba.posit_decode_value`: the regime's run length is a
count of leading zeros (of the word with a run of ones flipped to zeros, and its last bit set so
that the count is at most 31 for every code), then ``es`` exponent bits and the fraction at the
top of the word. The biased exponent and the fraction's top bits are one integer, so the
rounding increment carries into the exponent as IEEE rounding does.

>>> from numba import njit
>>> one = njit(lambda c: float32_bits(c, 17, 1, 0))(1 << 15)  # posit17_es1 code 0x8000: 1.0
>>> hex(one[0]), one[1]
('0x3f800000', 0)
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["bfloat16_bits", "float16_bits", "float32_bits", "or32"]

_I32 = ir.IntType(32)


def _const(v: int) -> ir.Constant:
    return ir.Constant(_I32, v & 0xFFFFFFFF)


def _codegen(man: int, bias: int, sign: int, nan: int) -> Any:
    """LLVM code of the element function for an output with ``man`` fraction bits and exponent bias
    ``bias`` (largest normal biased exponent 2·bias), sign bit ``sign`` and quiet NaN ``nan``."""
    cut = 32 - man  # fraction bits below the output's last one, in the 32-bit word

    def codegen(context: Any, b: ir.IRBuilder, sig: Any, args: Any) -> Any:
        c, n, es, scale = (context.cast(b, a, t, types.uint32) for a, t in zip(args, sig.args))
        nar = b.shl(_const(1), b.sub(n, _const(1)))
        neg = b.icmp_unsigned(">=", c, nar)
        mag = b.select(neg, b.sub(_const(0), c), c)  # two's complement magnitude: its low n-1 bits count
        t = b.shl(mag, b.sub(_const(33), n))  # the n-1 bits after the sign, at the top
        flipped = b.or_(b.xor(t, b.ashr(t, _const(31))), _const(1))  # a run of ones flipped to zeros
        run = b.ctlz(flipped, ir.Constant(ir.IntType(1), 0))  # <= 31
        k = b.select(b.icmp_signed("<", t, _const(0)), b.sub(run, _const(1)), b.sub(_const(0), run))
        rest = b.shl(b.shl(t, run), _const(1))  # exponent then fraction, at the top
        e = b.lshr(b.lshr(rest, _const(26)), b.sub(_const(6), es))
        frac = b.shl(rest, es)
        biased = b.add(b.add(b.shl(k, es), e), b.add(scale, _const(bias)))
        lsb = b.and_(b.lshr(frac, _const(cut)), _const(1))
        up = b.lshr(b.add(b.add(b.and_(frac, _const((1 << cut) - 1)), _const((1 << (cut - 1)) - 1)), lsb), _const(cut))
        bits = b.add(b.or_(b.shl(biased, _const(man)), b.lshr(frac, _const(cut))), up)  # the carry goes up
        outside = b.icmp_unsigned(">=", b.sub(biased, _const(1)), _const(2 * bias))  # not a normal exponent
        overflow = b.icmp_unsigned(">=", bits, _const((2 * bias + 1) << man))  # rounded up to the infinity
        special = b.and_(b.or_(outside, overflow), b.icmp_unsigned("!=", t, _const(0)))  # t == 0: zero, NaR
        bits = b.or_(bits, b.select(neg, _const(sign), _const(0)))
        bits = b.select(b.icmp_unsigned("==", c, nar), _const(nan), bits)
        bits = b.select(b.icmp_unsigned("==", c, _const(0)), _const(0), bits)
        return context.make_tuple(b, sig.return_type, [bits, b.zext(special, _I32)])

    return codegen


def _signature(*args: Any) -> Any:
    if not all(isinstance(a, types.Integer) for a in args):
        return None
    return types.UniTuple(types.uint32, 2)(*args)


@intrinsic
def float32_bits(typingctx: Any, c: Any, n: Any, es: Any, scale: Any) -> Any:
    """(float32 bits, special) of code c of posit<n, es> times 2^scale (see the module)."""
    return _signature(c, n, es, scale), _codegen(23, 127, 0x80000000, 0x7FC00000)


@intrinsic
def float16_bits(typingctx: Any, c: Any, n: Any, es: Any, scale: Any) -> Any:
    """(float16 bits in the low 16, special) of code c of posit<n, es> times 2^scale (see the module)."""
    return _signature(c, n, es, scale), _codegen(10, 15, 0x8000, 0x7E00)


@intrinsic
def bfloat16_bits(typingctx: Any, c: Any, n: Any, es: Any, scale: Any) -> Any:
    """(bfloat16 bits in the low 16, special) of code c of posit<n, es> times 2^scale (see the module)."""
    return _signature(c, n, es, scale), _codegen(7, 127, 0x8000, 0x7FC0)


@intrinsic
def or32(typingctx: Any, a: Any, b: Any) -> Any:
    """a | b of two uint32, as a uint32 (numba's ``|`` gives 64 bits, which halves a vectorised loop)."""
    if not (a == types.uint32 and b == types.uint32):
        return None

    def codegen(context: Any, builder: ir.IRBuilder, sig: Any, args: Any) -> Any:
        return builder.or_(args[0], args[1])

    return types.uint32(a, b), codegen
