"""Posit fast sigmoid and tanh: Gustafson's bit trick for es = 0 posits.

**Sigmoid.** For an n-bit posit with es = 0 and code ``c`` (the two's-complement bit pattern read
as an unsigned integer), flipping the sign bit and shifting right by two, logically,

    sigmoid_code(c) = (c XOR 2^(n-1)) >> 2

gives the code of an approximation of 1 / (1 + e^-x) (Gustafson & Yonemoto, "Beating floating
point at its own game", 2017, §2.2; SoftPosit / cppPosit ``pseudosigmoid``; Deep Positron;
Cococcioni et al., Sensors 20(5):1515, 2020). Why it works: es = 0 posits in [0, 1] form a
uniform grid (value = code / 2^(n-2)), and the flipped-and-shifted code is a piecewise-linear
curve through σ(0) = 1/2 with σ̃(x) → 0 and → 1 at the ends. The result is in [0, 1).
It is not exactly symmetric: the shift truncates, so σ̃(x) + σ̃(−x) = 1 − 2^-(n-2) whenever
the input code is not a multiple of 4 (and exactly 1 otherwise).

*NaR.* The raw trick sends NaR (``1 << (n-1)``) to code 0, i.e. sigmoid(NaR) = 0. lowbit keeps
the Posit Standard's rule that a function of NaR is NaR instead: NaR maps to NaR and decodes to
NaN. Since NaN and ±inf inputs encode to NaR, they give NaN (torch.sigmoid(inf) would be 1).

**Tanh.** tanh(x) = 2·σ(2x) − 1. Evaluated naively on the bit trick, the positive half uses the
coarse upper half of σ̃ and inherits its truncation bias: the result is not odd, and for
x ≥ maxpos/2 it stops at 1 − 2^-(n-3) instead of 1. lowbit implements the symmetric form of
Cococcioni, Rossi, Ruffaldi & Saponara (ApplePies 2019; Sensors 2020, "FastTanh", cppPosit
``fastTanh``), which evaluates the sigmoid only at non-positive arguments:

    tanh̃(x) = sign(q) · (1 − 2·σ̃(−2|q|)),    q = x rounded to the posit

Each step is a correctly rounded posit operation: −2|q| is rounded to the posit (doubling can
drop a fraction bit — always an exact tie, and which neighbour wins never changes σ̃'s truncated
code — or saturate at maxpos); σ̃ is the bit trick; 2s and 1 − 2s are *exact*
because σ̃(−2|q|) ∈ [0, 1/2] lies on the uniform grid 2^-(n-2) of es = 0 posits in [0, 1]. So
tanh̃ is exactly odd, tanh̃(0) = 0, |tanh̃| ≤ 1 with tanh̃(±maxpos) = ±1, and its maximum error is
lower than the naive form's (posit8: 0.1011 vs 0.1213).

**Measured maximum absolute errors** (float64 reference, computed exhaustively; the tests
recompute them independently with Python integers and Fractions and assert these figures):

=============  =========================  ==============================
format         over every finite code     over every real input
=============  =========================  ==============================
sigmoid p8     0.060664  (at x = 3.375)   0.062606
sigmoid p16    0.049000  (at x ≈ 3.3999)  0.049008
tanh p8        0.101079  (at x = 1.78125) 0.102731   (naive 2σ̃(2x)−1: 0.121328 / 0.123299)
tanh p16       0.097924  (at x ≈ 1.7003)  0.097932   (naive: 0.098001 / 0.098008)
=============  =========================  ==============================

"Every real input" is the supremum over all x of |f̃(round(x)) − f(x)|, taken over each code's
rounding interval (bounded by the (n+1)-bit posits between codes; inputs beyond maxpos
saturate). For comparison, rounding the exact sigmoid to posit8_es0 errs by at most 0.015625.
The error is the trick's own (it tends to ≈ 0.049 for large n), not the format's.

**Gradient.** ``PositSigmoid`` / ``posit_sigmoid`` and ``PositTanh`` / ``posit_tanh`` back-propagate
the *exact* derivative at the unquantized input, σ(x)(1 − σ(x)) and 1 − tanh(x)², computed with
torch.sigmoid / torch.tanh: the forward approximation is piecewise constant, so its own derivative
is useless, and the exact derivative is the usual straight-through choice.

**Other formats.** The trick relies on es = 0 (uniform grid in [0, 1], regime-only scaling) and
on an unscaled posit; es ≠ 0, a ``_s<k>`` scale or n < 3 raise ValueError.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats import NumberFormat, Posit, parse_format
from lowbit.formats._float64 import check_float_tensor, round_float64_to

__all__ = ["sigmoid_codes", "posit_sigmoid", "posit_tanh", "PositSigmoid", "PositTanh"]


def _bit_trick_format(fmt: Any, name: str = "fmt") -> Posit:
    if not isinstance(fmt, (str, NumberFormat)):
        raise TypeError(f"{name} must be a posit spec string like 'posit8_es0' or a Posit, got {type(fmt).__name__}")
    parsed = parse_format(fmt)
    if not isinstance(parsed, Posit) or parsed.es != 0 or parsed.scale != 0 or parsed.n < 3:
        raise ValueError(
            f"{name}={str(parsed)!r} does not support the posit sigmoid bit trick; allowed: unscaled posits "
            f"with es=0 and 3 <= n <= 32, e.g. 'posit8_es0' or 'posit16_es0' (the trick needs es=0)"
        )
    return parsed


def sigmoid_codes(codes: torch.Tensor, fmt: "str | NumberFormat" = "posit8_es0") -> torch.Tensor:
    """The bit trick on codes: ``(c XOR 2^(n-1)) >> 2``, with NaR kept as NaR.

    ``codes``: integer tensor of ``fmt`` bit patterns (as ``fmt.encode`` returns them).
    Returns codes of ``fmt.code_dtype``.

    >>> import torch
    >>> sigmoid_codes(torch.tensor([0x00, 0x40, 0xC0, 0x7F, 0x80]), "posit8_es0").tolist()
    [32, 48, 16, 63, 128]
    """
    p = _bit_trick_format(fmt)
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point or codes.dtype.is_complex \
            or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer torch.Tensor of {p} bit patterns")
    c = codes.to(torch.int64)
    if c.numel() and bool(((c < 0) | (c >= (1 << p.n))).any()):
        raise ValueError(f"codes must be {p.n}-bit patterns of {p} (integers in [0, {(1 << p.n) - 1}])")
    sign = p.nar_code
    out = torch.where(c == sign, c, (c ^ sign) >> 2)  # c ^ sign >= 0, so >> is a logical shift
    return out.to(p.code_dtype)


def _sigmoid64(p: Posit, x: torch.Tensor) -> torch.Tensor:
    return p.decode(sigmoid_codes(p.encode(x), p), torch.float64)


def _tanh64(p: Posit, x: torch.Tensor) -> torch.Tensor:
    q = p.quantize(x.detach().to(torch.float64))
    u = p.quantize(-2.0 * q.abs())  # one posit rounding: the doubling
    t = 1.0 - 2.0 * _sigmoid64(p, u)  # exact: σ̃(u) ∈ [0, 1/2] sits on the uniform grid 2^-(n-2)
    return torch.where(q < 0, -t, t)  # q == 0 gives t == 0; NaR propagates as NaN


class _PositSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: Posit) -> torch.Tensor:
        ctx.save_for_backward(x)
        return p.decode(sigmoid_codes(p.encode(x), p), x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 - s), None


class _PositTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: Posit) -> torch.Tensor:
        ctx.save_for_backward(x)
        return round_float64_to(_tanh64(p, x), x.dtype)  # a posit value, rounded once into x's dtype

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (x,) = ctx.saved_tensors
        t = torch.tanh(x)
        return grad * (1 - t * t), None


def posit_sigmoid(x: torch.Tensor, fmt: "str | NumberFormat" = "posit8_es0") -> torch.Tensor:
    """Fast sigmoid: round ``x`` to ``fmt`` (nearest even), apply the bit trick, decode.

    Returns a tensor of x's dtype. Backward uses the exact derivative σ(x)(1 − σ(x)).

    >>> import torch
    >>> posit_sigmoid(torch.tensor([0.0, 1.0, -1.0, 2.0, 100.0])).tolist()
    [0.5, 0.75, 0.25, 0.875, 0.984375]
    """
    p = _bit_trick_format(fmt)
    check_float_tensor(x)
    return _PositSigmoid.apply(x, p)


def posit_tanh(x: torch.Tensor, fmt: "str | NumberFormat" = "posit8_es0") -> torch.Tensor:
    """Fast tanh: ``sign(q)·(1 − 2·σ̃(−2|q|))`` with q = x rounded to ``fmt`` (see module docs).

    Returns a tensor of x's dtype. Backward uses the exact derivative 1 − tanh(x)².

    >>> import torch
    >>> posit_tanh(torch.tensor([0.0, 0.5, -0.5, 1.0, 100.0])).tolist()
    [0.0, 0.5, -0.5, 0.75, 1.0]
    """
    p = _bit_trick_format(fmt)
    check_float_tensor(x)
    return _PositTanh.apply(x, p)


class PositSigmoid(torch.nn.Module):
    """`posit_sigmoid` as a module.

    >>> import torch
    >>> PositSigmoid("posit16_es0")(torch.tensor([0.0])).tolist()
    [0.5]
    """

    def __init__(self, fmt: "str | NumberFormat" = "posit8_es0") -> None:
        super().__init__()
        self.format = _bit_trick_format(fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module API
        return posit_sigmoid(x, self.format)

    def extra_repr(self) -> str:
        return f"fmt={self.format}"


class PositTanh(torch.nn.Module):
    """`posit_tanh` as a module.

    >>> import torch
    >>> PositTanh("posit8_es0")(torch.tensor([-100.0])).tolist()
    [-1.0]
    """

    def __init__(self, fmt: "str | NumberFormat" = "posit8_es0") -> None:
        super().__init__()
        self.format = _bit_trick_format(fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module API
        return posit_tanh(x, self.format)

    def extra_repr(self) -> str:
        return f"fmt={self.format}"
