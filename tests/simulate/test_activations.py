"""Posit fast sigmoid / tanh: hand-typed codes, the bit trick recomputed with Python ints and
decoded by the Fraction oracle, exhaustive error bounds over every code and every real input."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import pytest
import torch

import lowbit as lb
from lowbit.reference import posit_decode, posit_encode
from lowbit.simulate import sigmoid_codes

# (input value, input code, sigmoid code, sigmoid value) for posit8_es0, typed by hand
POSIT8_ES0_TABLE = [
    (0.0, 0x00, 0x20, 0.5),
    (1.0, 0x40, 0x30, 0.75),
    (-1.0, 0xC0, 0x10, 0.25),
    (2.0, 0x60, 0x38, 0.875),
    (-2.0, 0xA0, 0x08, 0.125),
    (0.5, 0x20, 0x28, 0.625),
    (-0.5, 0xE0, 0x18, 0.375),
    (64.0, 0x7F, 0x3F, 0.984375),  # maxpos
    (-64.0, 0x81, 0x00, 0.0),
    (1 / 64, 0x01, 0x20, 0.5),  # minpos
    (3.0, 0x68, 0x3A, 0.90625),
]

# Maximum absolute errors documented in lowbit.simulate.activations (6 decimals)
DOCUMENTED = {
    # (function, n): (over every finite code, over every real input)
    ("sigmoid", 8): (0.060664, 0.062606),
    ("sigmoid", 16): (0.049000, 0.049008),
    ("tanh", 8): (0.101079, 0.102731),
    ("tanh", 16): (0.097924, 0.097932),
    ("naive_tanh", 8): (0.121328, 0.123299),
    ("naive_tanh", 16): (0.098001, 0.098008),
}


# ----------------------------------------------------------------------------- independent model
def _trick(code: int, n: int) -> int:
    """The bit trick with Python ints; NaR stays NaR."""
    sign = 1 << (n - 1)
    return sign if code == sign else (code ^ sign) >> 2


def _value(code: int, n: int) -> Fraction:
    v = posit_decode(code, n, 0)
    assert v is not None
    return v


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def _expected_sigmoid(code: int, n: int) -> Fraction:
    return _value(_trick(code, n), n)


def _expected_tanh(code: int, n: int, *, naive: bool = False) -> Fraction:
    q = _value(code, n)
    if naive:  # 2·σ̃(2q) − 1, each operation rounded to the posit
        s = _expected_sigmoid(posit_encode(2 * q, n, 0), n)
        return _value(posit_encode(2 * s - 1, n, 0), n)
    u = posit_encode(-2 * abs(q), n, 0)
    t = 1 - 2 * _expected_sigmoid(u, n)
    return -t if q < 0 else t


def _finite_codes(n: int) -> list[int]:
    return [c for c in range(1 << n) if c != 1 << (n - 1)]


def _interval(code: int, n: int) -> tuple[float, float]:
    """Closure of the real inputs that round to ``code`` (bounded by the (n+1)-bit posits)."""
    if code == 0:
        return 0.0, 0.0
    neg = code >> (n - 1)
    mag = (1 << n) - code if neg else code
    lo = 0.0 if mag == 1 else float(_value(2 * mag - 1, n + 1))
    hi = math.inf if mag == (1 << (n - 1)) - 1 else float(_value(2 * mag + 1, n + 1))
    return (-hi, -lo) if neg else (lo, hi)


def _f(name: str, x: float) -> float:
    return _sigmoid(x) if name == "sigmoid" else math.tanh(x)


@functools.lru_cache(maxsize=None)
def _max_errors(name: str, n: int) -> tuple[float, float]:
    func = "sigmoid" if name == "sigmoid" else "tanh"
    worst_code = worst_real = 0.0
    for c in _finite_codes(n):
        y = float(_expected_sigmoid(c, n) if name == "sigmoid" else _expected_tanh(c, n, naive=name == "naive_tanh"))
        worst_code = max(worst_code, abs(y - _f(func, float(_value(c, n)))))
        lo, hi = _interval(c, n)
        worst_real = max(worst_real, abs(y - _f(func, lo)), abs(y - _f(func, hi)))
    return worst_code, worst_real


def _all_values(n: int) -> tuple[torch.Tensor, list[int]]:
    codes = _finite_codes(n)
    return torch.tensor([float(_value(c, n)) for c in codes], dtype=torch.float64), codes


# ----------------------------------------------------------------------------- sigmoid
@pytest.mark.parametrize(("x", "code", "sig_code", "sig_value"), POSIT8_ES0_TABLE)
def test_posit8_es0_hand_typed_codes(x, code, sig_code, sig_value):
    fmt = lb.parse_format("posit8_es0")
    assert int(fmt.encode(torch.tensor([x]))[0]) == code
    assert int(sigmoid_codes(torch.tensor([code]), fmt)[0]) == sig_code
    assert lb.posit_sigmoid(torch.tensor([x]), fmt).item() == sig_value


def test_nar_stays_nar():
    assert sigmoid_codes(torch.tensor([0x80]), "posit8_es0").tolist() == [0x80]
    assert sigmoid_codes(torch.tensor([0x8000]), "posit16_es0").tolist() == [0x8000]
    x = torch.tensor([float("nan"), float("inf"), -float("inf")])
    assert torch.isnan(lb.posit_sigmoid(x)).all() and torch.isnan(lb.posit_tanh(x)).all()


@pytest.mark.parametrize("n", [8, 16])
def test_bit_trick_on_every_code_matches_python_ints(n):
    codes = torch.arange(1 << n)
    expected = torch.tensor([_trick(c, n) for c in range(1 << n)])
    assert torch.equal(sigmoid_codes(codes, f"posit{n}_es0").to(torch.int64), expected)


@pytest.mark.parametrize("n", [8, 16])
def test_sigmoid_of_every_code_matches_the_fraction_oracle(n):
    x, codes = _all_values(n)
    expected = torch.tensor([float(_expected_sigmoid(c, n)) for c in codes], dtype=torch.float64)
    y = lb.posit_sigmoid(x, f"posit{n}_es0")
    assert torch.equal(y, expected)
    assert torch.equal(lb.posit_sigmoid(x.float(), f"posit{n}_es0"), expected.float())  # exact in fp32


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "naive_tanh"])
@pytest.mark.parametrize("n", [8, 16])
def test_max_errors_are_the_documented_figures(name, n):
    worst_code, worst_real = _max_errors(name, n)
    doc_code, doc_real = DOCUMENTED[(name, n)]
    assert abs(worst_code - doc_code) < 5e-7 and abs(worst_real - doc_real) < 5e-7
    assert worst_code <= worst_real


@pytest.mark.parametrize("n", [8, 16])
def test_symmetric_tanh_beats_the_naive_form(n):
    assert DOCUMENTED[("tanh", n)][0] < DOCUMENTED[("naive_tanh", n)][0]
    assert _max_errors("tanh", n)[0] < _max_errors("naive_tanh", n)[0]


@pytest.mark.parametrize("n", [8, 16])
def test_sigmoid_error_over_real_inputs_is_bounded(n):
    """Random real inputs (not on the grid) stay within the documented bound."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(20000, generator=g, dtype=torch.float64) * torch.exp2(torch.randint(-6, 7, (20000,), generator=g))
    for name, fn, ref in (("sigmoid", lb.posit_sigmoid, torch.sigmoid), ("tanh", lb.posit_tanh, torch.tanh)):
        err = (fn(x, f"posit{n}_es0") - ref(x)).abs().max().item()
        assert err <= DOCUMENTED[(name, n)][1] + 5e-7


# ----------------------------------------------------------------------------- tanh
@pytest.mark.parametrize("n", [8, 16])
def test_tanh_of_every_code_matches_the_independent_model(n):
    x, codes = _all_values(n)
    expected = torch.tensor([float(_expected_tanh(c, n)) for c in codes], dtype=torch.float64)
    assert torch.equal(lb.posit_tanh(x, f"posit{n}_es0"), expected)


@pytest.mark.parametrize("n", [8, 16])
def test_tanh_is_odd_bounded_and_exact_at_the_ends(n):
    fmt = f"posit{n}_es0"
    x, _ = _all_values(n)
    y = lb.posit_tanh(x, fmt)
    assert torch.equal(lb.posit_tanh(-x, fmt), -y)
    assert y.abs().max().item() == 1.0
    maxpos = 2.0 ** (n - 2)
    assert lb.posit_tanh(torch.tensor([0.0, maxpos, -maxpos, 1e30]), fmt).tolist() == [0.0, 1.0, -1.0, 1.0]
    assert torch.equal(lb.parse_format(fmt).quantize(y), y)  # results are posits


# ----------------------------------------------------------------------------- autograd, modules, dtypes
def test_backward_uses_the_exact_derivatives():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    g = torch.rand(101, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lb.posit_sigmoid(x).backward(g)
    (expected,) = torch.autograd.grad(torch.sigmoid(x), x, g)
    assert torch.allclose(x.grad, expected, rtol=1e-12, atol=0)
    x.grad = None
    lb.posit_tanh(x, "posit16_es0").backward(g)
    (expected,) = torch.autograd.grad(torch.tanh(x), x, g)
    assert torch.allclose(x.grad, expected, rtol=1e-12, atol=1e-15)


def test_modules_match_the_functions():
    x = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 4
    assert torch.equal(lb.PositSigmoid("posit16_es0")(x), lb.posit_sigmoid(x, "posit16_es0"))
    assert torch.equal(lb.PositTanh()(x), lb.posit_tanh(x, "posit8_es0"))
    assert repr(lb.PositTanh("posit16_es0")) == "PositTanh(fmt=posit16_es0)"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_keeps_the_input_dtype_rounding_once(dtype):
    x = torch.linspace(-5, 5, 257, dtype=torch.float64).to(dtype)
    for fn in (lb.posit_sigmoid, lb.posit_tanh):
        y = fn(x, "posit16_es0")
        assert y.dtype == dtype
        # posit16_es0 results are exact in float32, so float32 -> dtype is the one rounding
        assert torch.equal(y, fn(x.double(), "posit16_es0").float().to(dtype))


@pytest.mark.parametrize("spec", ["posit8_es2", "posit16_es1", "posit8_es0_s-2", "posit2_es0", "e4m3fn"])
def test_formats_without_the_trick_are_refused(spec):
    with pytest.raises(ValueError, match="es=0"):
        lb.posit_sigmoid(torch.zeros(1), spec)
    with pytest.raises(ValueError, match="es=0"):
        lb.PositTanh(spec)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="fmt must be a posit spec string"):
        lb.posit_sigmoid(torch.zeros(1), 8)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        lb.posit_tanh([0.0])
    with pytest.raises(TypeError, match="codes must be an integer torch.Tensor"):
        sigmoid_codes(torch.zeros(2), "posit8_es0")
    with pytest.raises(ValueError, match=r"codes must be 8-bit patterns"):
        sigmoid_codes(torch.tensor([256]), "posit8_es0")
