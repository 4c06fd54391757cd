"""`lb.exact_matmul` and the exact layer forms equal the Fraction oracle rounded once, bit for bit."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import lowbit as lb
from lowbit.kernels import available_backends
from lowbit.reference.quire import exact_dot, oracle_matmul, round_once
from lowbit.simulate.exact import (
    exact_conv1d,
    exact_conv2d,
    exact_conv_transpose2d,
    exact_linear,
    exact_matmul,
)

BACKENDS = available_backends()
_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype and shape, NaN where expected is NaN, every other value bit for bit (zero signs too)."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    an, en = actual.isnan(), expected.isnan()
    assert torch.equal(an, en), (actual, expected)
    a = torch.where(an, torch.zeros_like(actual), actual).double()
    e = torch.where(en, torch.zeros_like(expected), expected).double()
    same = (a.view(torch.int64) == e.view(torch.int64))
    assert bool(same.all()), f"{int((~same).sum())} differ: got {a[~same][:5].tolist()} expected {e[~same][:5].tolist()}"


def oracle(a: torch.Tensor, b: torch.Tensor, target, dtype: torch.dtype, bias=None) -> torch.Tensor:
    out = oracle_matmul(a.double().tolist(), b.double().tolist(), target,
                        None if bias is None else bias.double().tolist(), n=b.shape[1])
    return torch.tensor(out, dtype=torch.float64).reshape(a.shape[0], b.shape[1]).to(dtype)


def format_values(spec: str, shape: tuple, seed: int) -> torch.Tensor:
    """Random values of a ≤ 16-bit format (every code equally likely, NaR / NaN / inf excluded)."""
    vals = lb.parse_format(spec).values()
    idx = torch.randint(0, len(vals), shape, generator=torch.Generator().manual_seed(seed))
    return vals[idx].to(torch.float32)


# ------------------------------------------------------------------------------ the examples
def test_cancelling_dot_products_are_exact_where_float_accumulation_gives_zero():
    a32, b32 = torch.tensor([3.2e7, 1, -1, 8e7]), torch.tensor([4e7, 1, -1, -1.6e7])
    assert torch.dot(a32, b32).item() == 0.0  # FP32 accumulation loses the 2
    assert exact_matmul(a32, b32).item() == 2.0
    a64 = torch.tensor([3.2e8, 1, -1, 8e8], dtype=torch.float64)
    b64 = torch.tensor([4e8, 1, -1, -1.6e8], dtype=torch.float64)
    assert torch.dot(a64, b64).item() == 0.0  # so does float64 here
    got = exact_matmul(a64, b64)
    assert got.dtype == torch.float64 and got.item() == 2.0


# ------------------------------------------------------------------------------ dtype results
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_full_exponent_range_rounds_once_to_the_result_dtype(backend, dtype):
    rng = np.random.default_rng(11)
    width = torch.finfo(dtype).bits
    npint = {16: np.int16, 32: np.int32, 64: np.int64}[width]
    raw = rng.integers(np.iinfo(npint).min, np.iinfo(npint).max, 6 * 9 + 9 * 5, dtype=np.int64).astype(npint)
    x = torch.from_numpy(raw).view(dtype)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    a, b = x[:54].reshape(6, 9), x[54:].reshape(9, 5)
    got = exact_matmul(a, b, backend=backend)
    assert_identical(got, oracle(a, b, _NAMES[dtype], dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_ties_and_sticky_bits_round_to_nearest_even(backend):
    # 1 + 2^-24 is a tie (-> 1); a 2^-80 below the tie's last bit breaks it upwards
    a = torch.tensor([[1.0, 2.0**-24, 0.0], [1.0, 2.0**-24, 2.0**-80], [1.0, 2.0**-24, -(2.0**-80)],
                      [1.0 + 2.0**-23, 2.0**-24, 0.0]])
    b = torch.ones(3, 1)
    got = exact_matmul(a, b, backend=backend)[:, 0].tolist()
    assert got == [1.0, 1.0 + 2.0**-23, 1.0, 1.0 + 2.0**-22]


def test_mixed_dtypes_round_to_the_result_type():
    a = torch.tensor([[1.0, 2.0**-30]], dtype=torch.float64)
    b = torch.tensor([[1.0], [1.0]], dtype=torch.float32)
    got = exact_matmul(a, b)
    assert got.dtype == torch.float64 and got.item() == 1.0 + 2.0**-30
    assert exact_matmul(a.float(), b.half()).dtype == torch.float32


# ------------------------------------------------------------------------------ format= rounding
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", ["posit8_es2", "posit16_es1", "e4m3fn", "e5m2", "int8", "fixed8_f4"])
def test_format_operands_round_once_to_the_format(backend, spec):
    fmt = lb.parse_format(spec)
    a, b = format_values(spec, (7, 33), 1), format_values(spec, (33, 6), 2)
    got = exact_matmul(a, b, spec, backend=backend)
    assert_identical(got, oracle(a, b, fmt, torch.float32))


@pytest.mark.parametrize("spec", ["posit8_es2", "posit16_es1", "e4m3fn"])
def test_result_just_past_a_format_tie_rounds_away_from_it(spec):
    # exact sum = tie + 2^-70: a float64 rounded to nearest would sit on the tie and round to even;
    # the once-rounded result is the upper neighbour.
    fmt = lb.parse_format(spec)
    vals = fmt.values()
    i = int((vals == 1.0).nonzero()) + {"posit8_es2": 0, "posit16_es1": 0, "e4m3fn": 0}[spec]
    lo, hi = float(vals[i]), float(vals[i + 1])  # 1 (even code) and its successor
    tie = (lo + hi) / 2
    a = torch.tensor([[tie, 2.0**-35]], dtype=torch.float64)
    b = torch.tensor([[1.0], [2.0**-35]], dtype=torch.float64)
    assert exact_matmul(a, b, spec).item() == hi
    assert exact_matmul(a, b - torch.tensor([[0.0], [2.0**-34]], dtype=torch.float64), spec).item() == lo
    assert fmt.quantize(torch.tensor(tie, dtype=torch.float64)).item() == lo  # the tie itself goes to even


def test_posit_results_never_round_to_zero_or_nar():
    fmt = lb.parse_format("posit8_es2")
    a = torch.tensor([[2.0**-100, 0.0], [2.0**100, 2.0**100]], dtype=torch.float64)
    b = torch.tensor([[2.0**-100], [1.0]], dtype=torch.float64)
    got = exact_matmul(a, b, fmt)
    assert got[:, 0].tolist() == [fmt.min_positive, fmt.max]


def test_specials_follow_ieee_then_the_format():
    inf, nan = math.inf, math.nan
    a = torch.tensor([[inf, 1.0], [inf, -inf], [1.0, 2.0], [nan, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    ieee = exact_matmul(a, b)
    assert ieee[0, 0].item() == inf and ieee[0, 1].isnan() and ieee[1].isnan().all() and ieee[3].isnan().all()
    assert ieee[2].tolist() == [3.0, 2.0]
    posit = exact_matmul(a, b, "posit8_es2")
    assert posit[:2].isnan().all() and posit[3].isnan().all() and posit[2].tolist() == [3.0, 2.0]  # NaR
    assert exact_matmul(a, b, "e4m3fn")[0, 0].isnan()  # e4m3fn has no inf: NaN
    assert exact_matmul(a, b, "e5m2")[0, 0].item() == inf
    assert exact_matmul(a, b, "int8")[0, 0].item() == 127.0  # fixed point saturates inf


def test_float64_output_dtype_carries_wide_formats():
    a = format_values("posit16_es1", (3, 20), 5).double()
    b = format_values("posit16_es1", (20, 2), 6).double()
    fmt = lb.parse_format("posit32_es2")
    got = exact_matmul(a, b, fmt, dtype=torch.float64)
    assert_identical(got, oracle(a, b, fmt, torch.float64))


# ------------------------------------------------------------------------------ hypothesis
_FORMATS = ["posit8_es2", "posit16_es1", "posit8_es0", "e4m3fn", "e5m2", "bf16", "fp16", "int8", "fixed16_f8"]


@given(st.integers(1, 5), st.integers(0, 12), st.integers(1, 4), st.integers(0, 2**32 - 1),
       st.sampled_from([None] + _FORMATS), st.sampled_from(["narrow", "wide", "float64"]))
def test_random_matmuls_equal_the_oracle(m, k, n, seed, spec, spread):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if spread == "float64" else torch.float32
    scale = {"narrow": 4.0, "wide": 60.0, "float64": 400.0}[spread]
    def draw(shape):
        mant = torch.randint(-(2**12), 2**12, shape, generator=g).to(dtype)
        exps = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
        return (mant * torch.exp2(exps.round()).to(dtype)).to(dtype)
    a, b = draw((m, k)), draw((k, n))
    fmt = None if spec is None else lb.parse_format(spec)
    got = exact_matmul(a, b, fmt)
    assert_identical(got, oracle(a, b, _NAMES[dtype] if fmt is None else fmt, dtype))


# ------------------------------------------------------------------------------ shapes
def test_shapes_and_broadcasting_follow_torch_matmul():
    g = torch.Generator().manual_seed(0)
    cases = [((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
             ((0, 4), (4, 3)), ((3, 0), (0, 2))]
    for sa, sb in cases:
        a = torch.randint(-9, 10, sa, generator=g).double()
        b = torch.randint(-9, 10, sb, generator=g).double()
        assert_identical(exact_matmul(a, b), torch.matmul(a, b) + 0.0)  # small ints: torch is exact too


def test_bad_arguments_are_named():
    x = torch.ones(2, 2)
    with pytest.raises(ValueError, match="format=.*scalar element formats"):
        exact_matmul(x, x, "mxfp8_e4m3fn")
    with pytest.raises(lb.FormatSpecError):
        exact_matmul(x, x, "posit99")
    with pytest.raises(ValueError, match="b must be a floating tensor"):
        exact_matmul(x, torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="cannot be multiplied"):
        exact_matmul(x, torch.ones(3, 2))
    with pytest.raises(ValueError, match="dtype must be one of"):
        exact_matmul(x, x, dtype=torch.int32)
    with pytest.raises(ValueError, match="do not fit dtype"):
        exact_matmul(torch.tensor([[1.0, 2.0**-26]]), torch.ones(2, 1), "posit32_es2")


# ------------------------------------------------------------------------------ layer forms
def test_exact_linear_adds_the_bias_exactly_before_the_one_rounding():
    x = torch.tensor([[2.0**30, 1.0, 1.0, 2.0**-20]])
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 1.0]])
    b = torch.tensor([-(2.0**30), -(2.0**30)])
    assert exact_linear(x, w, b).tolist() == [[2.0, -1.0 + 2.0**-20]]
    assert exact_linear(x, w, b, "posit8_es2").tolist() == [[2.0, -1.0]]
    assert exact_linear(x, w).tolist() == [[2.0**30, 2.0**30]]  # rounded once without the bias


@pytest.mark.parametrize("spec", [None, "posit8_es2", "e4m3fn"])
def test_exact_linear_equals_the_oracle(spec):
    src = "posit8_es2" if spec is None else spec
    x, w, b = format_values(src, (5, 24), 1), format_values(src, (7, 24), 2), format_values(src, (7,), 3)
    fmt = None if spec is None else lb.parse_format(spec)
    got = exact_linear(x, w, b, fmt)
    assert_identical(got, oracle(x, w.t(), "float32" if fmt is None else fmt, torch.float32, bias=b))


def conv2d_oracle(x, w, b, stride, padding, dilation, groups, target):
    """Direct definition of a zero-padded grouped conv2d, exact sums in Fractions, one rounding."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    xl, wl = x.double().tolist(), w.double().tolist()
    out = torch.zeros(n, o, oh, ow, dtype=torch.float64)
    for bn in range(n):
        for oc in range(o):
            gi = oc // (o // groups)
            for i in range(oh):
                for j in range(ow):
                    xs, ws = [], []
                    for ci in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                r, s = i * stride - padding + u * dilation, j * stride - padding + v * dilation
                                if 0 <= r < h and 0 <= s < wd:
                                    xs.append(xl[bn][gi * cg + ci][r][s])
                                    ws.append(wl[oc][ci][u][v])
                    if b is not None:
                        xs.append(1.0)
                        ws.append(float(b[oc]))
                    out[bn, oc, i, j] = round_once(exact_dot(xs, ws), target)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec,stride,padding,dilation,groups", [
    (None, 1, 0, 1, 1), ("posit8_es2", 2, 1, 1, 1), ("e4m3fn", 1, 2, 2, 2), ("posit16_es1", 1, 1, 1, 4)])
def test_exact_conv2d_equals_the_oracle(backend, spec, stride, padding, dilation, groups):
    src = "posit8_es2" if spec is None else spec
    x = format_values(src, (2, 4, 7, 6), 1)
    w = format_values(src, (8, 4 // groups, 3, 3), 2)
    b = format_values(src, (8,), 3)
    fmt = None if spec is None else lb.parse_format(spec)
    got = exact_conv2d(x, w, b, stride, padding, dilation, groups, fmt, backend=backend)
    exp = conv2d_oracle(x, w, b, stride, padding, dilation, groups, "float32" if fmt is None else fmt)
    assert_identical(got, exp.to(torch.float32))


def test_exact_convolutions_match_torch_where_torch_is_exact():
    # small integers: every partial sum is exact in float64, so torch's result is the exact one
    g = torch.Generator().manual_seed(9)
    ints = lambda *s: torch.randint(-8, 9, s, generator=g).double()  # noqa: E731
    x, w, b = ints(2, 4, 9, 8), ints(6, 2, 3, 2), ints(6)
    assert_identical(exact_conv2d(x, w, b, 2, 1, 1, 2), F.conv2d(x, w, b, 2, 1, 1, 2))
    w4 = ints(6, 4, 3, 3)
    assert_identical(exact_conv2d(x, w4, None, padding="same"), F.conv2d(x, w4, None, padding="same"))
    assert_identical(exact_conv2d(x, w4, b, padding="valid"), F.conv2d(x, w4, b, padding="valid"))
    assert_identical(exact_conv2d(x[0], w4, b), F.conv2d(x[0], w4, b))  # unbatched
    x1, w1 = ints(3, 4, 11), ints(6, 2, 3)
    assert_identical(exact_conv1d(x1, w1, b, 2, 1, 2, 2), F.conv1d(x1, w1, b, 2, 1, 2, 2))
    for stride, padding, out_pad, groups, dil in [(1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 0, 2, 2), (2, 0, 1, 4, 1)]:
        wt = ints(4, 3 if groups < 4 else 1, 3, 2)
        bt = ints(wt.shape[1] * groups)
        exp = F.conv_transpose2d(x, wt, bt, stride, padding, out_pad, groups, dil)
        assert_identical(exact_conv_transpose2d(x, wt, bt, stride, padding, out_pad, groups, dil), exp)


def test_exact_conv_transpose2d_rounds_once_to_the_format():
    x = format_values("posit8_es2", (1, 2, 4, 4), 4)
    w = format_values("posit8_es2", (2, 3, 3, 3), 5)
    b = format_values("posit8_es2", (3,), 6)
    fmt = lb.parse_format("posit8_es2")
    got = exact_conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, format=fmt)
    # direct definition: y[o, i*s - p + u, j*s - p + v] += x[c, i, j] · w[c, o, u, v]
    xl, wl = x.double().tolist(), w.double().tolist()
    terms: dict = {}
    for c in range(2):
        for i in range(4):
            for j in range(4):
                for o in range(3):
                    for u in range(3):
                        for v in range(3):
                            key = (o, 2 * i - 1 + u, 2 * j - 1 + v)
                            terms.setdefault(key, []).append((xl[0][c][i][j], wl[c][o][u][v]))
    exp = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    for o in range(3):
        for r in range(8):
            for s in range(8):
                pairs = terms.get((o, r, s), []) + [(float(b[o]), 1.0)]
                exp[0, o, r, s] = round_once(exact_dot([p[0] for p in pairs], [p[1] for p in pairs]), fmt)
    assert_identical(got, exp.to(torch.float32))


# ------------------------------------------------------------------------------ autograd
def test_backward_gives_the_gradients_of_an_fp32_matmul():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, requires_grad=True)
    w = torch.randn(3, 6, generator=g, requires_grad=True)
    b = torch.randn(3, generator=g, requires_grad=True)
    up = torch.randn(4, 3, generator=g)
    (exact_linear(x, w, b, "posit8_es2") * up).sum().backward()
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    (F.linear(x2, w2, b2) * up).sum().backward()
    for got, exp in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(got, exp, rtol=1e-6, atol=1e-6)  # the same FP32 math, other summation order
    a = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    bm = torch.randn(4, 5, generator=g)
    exact_matmul(a, bm).sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(2, 3, 5) @ bm.t())


def test_exact_sums_are_exact_while_their_fraction_sum_checks_out():
    # the oracle itself: Fraction sums of float products, one rounding (checked against math.fsum,
    # which is correctly rounded for sums of floats, on products that are exact floats)
    rng = np.random.default_rng(2)
    for _ in range(50):
        xs = (rng.integers(-2**20, 2**20, 30) * 2.0 ** rng.integers(-40, 40, 30)).tolist()
        ys = (2.0 ** rng.integers(-40, 40, 30)).tolist()
        assert round_once(exact_dot(xs, ys), "float64") == math.fsum(x * y for x, y in zip(xs, ys))
    assert exact_dot([], []) == Fraction(0)


def test_conv_backward_gives_the_gradients_of_an_fp32_convolution():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 7, 6, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    up = torch.randn(2, 6, 4, 3, generator=g)
    (exact_conv2d(x, w, b, 2, 1, 1, 2, "e4m3fn") * up).sum().backward()
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    (F.conv2d(x2, w2, b2, 2, 1, 1, 2) * up).sum().backward()
    for got, exp in ((x.grad, x2.grad), (w.grad, w2.grad), (b.grad, b2.grad)):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)  # the same FP32 math, other summation order


def test_a_wider_bias_is_not_rounded_to_the_weight_dtype():
    x = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    w = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    b = torch.tensor([2.0**-20])  # not a bfloat16 value next to 2
    y = exact_linear(x, w, b)
    assert y.dtype == torch.float32 and y.item() == 2.0 + 2.0**-20
    yc = exact_conv2d(x.reshape(1, 2, 1, 1), w.reshape(1, 2, 1, 1), b)
    assert yc.dtype == torch.float32 and yc.item() == 2.0 + 2.0**-20
