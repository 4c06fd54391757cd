"""``accumulate_backward="quire"``: every gradient element of a quire layer (grad_input, grad_weight,
grad_bias) is one exact sum of exact products rounded once to float32, as the Fraction oracle
computes it; ``"fp32"`` (the default) is torch's FP32 gradient matmul."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.reference.quire import round_once
from lowbit.simulate.exact import exact_conv_transpose2d, exact_matmul
from tests.simulate.test_exact import assert_identical

SPEC = "posit8_es2"


def _spread(shape: "tuple[int, ...]", seed: int) -> torch.Tensor:
    """float32 values over ~2**±20 with both signs: FP32 sums of their products round, and cancel."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2.0 ** torch.randint(-20, 21, shape, generator=g).float()


def _round(products: "list[Fraction]") -> float:
    return float(round_once(sum(products, Fraction(0)), "float32"))


def _tensor(nested) -> torch.Tensor:
    return torch.tensor(nested, dtype=torch.float64).to(torch.float32)


def _linear_grads_oracle(x, w, g):
    """grad_x = g·w, grad_w = gᵀ·x, grad_b = Σ_i g, each element one exact sum rounded once."""
    xs, ws, gs = (t.double().tolist() for t in (x, w, g))
    m, k, n = len(xs), len(xs[0]), len(ws)
    f = Fraction
    gx = [[_round([f(gs[i][o]) * f(ws[o][c]) for o in range(n)]) for c in range(k)] for i in range(m)]
    gw = [[_round([f(gs[i][o]) * f(xs[i][c]) for i in range(m)]) for c in range(k)] for o in range(n)]
    gb = [_round([f(gs[i][o]) for i in range(m)]) for o in range(n)]
    return _tensor(gx), _tensor(gw), _tensor(gb)


def _quire_linear(backward: str) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    lb.quantize_(layer, {"weight": SPEC, "input": SPEC, "accumulate": "quire", "accumulate_backward": backward})
    return layer


def _linear_grads(backward: str):
    layer = _quire_linear(backward)
    x = lb.parse_format(SPEC).quantize(_spread((7, 12), 1)).requires_grad_(True)
    g = _spread((7, 5), 2)
    layer(x).backward(g)
    w = lb.parse_format(SPEC).quantize(layer.lowbit_float_tensor("weight"))
    return (x.grad, layer.lowbit_float_tensor("weight").grad, layer.lowbit_float_tensor("bias").grad), _linear_grads_oracle(x.detach(), w, g)


def test_linear_quire_backward_grads_equal_the_oracle_rounded_once():
    got, expected = _linear_grads("quire")
    for a, e in zip(got, expected):
        assert_identical(a, e)


def test_linear_fp32_backward_rounds_its_running_sums():
    got, expected = _linear_grads("fp32")  # torch's FP32 matmul: the sums of these spread values round
    assert not all(torch.equal(a, e) for a, e in zip(got, expected))


def _conv_grads_oracle(x, w, g, stride, padding, dilation, groups):
    """The conv2d's gradients by their definition: Fractions, one rounding per element."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    _, _, oh, ow = g.shape
    og = o // groups
    xs, ws, gs = x.double().tolist(), w.double().tolist(), g.double().tolist()
    f = Fraction
    dx = [[[[[] for _ in range(wd)] for _ in range(h)] for _ in range(c)] for _ in range(n)]
    dw = [[[[[] for _ in range(kw)] for _ in range(kh)] for _ in range(cg)] for _ in range(o)]
    for b in range(n):
        for oc in range(o):
            grp = oc // og
            for i in range(oh):
                for j in range(ow):
                    gv = f(gs[b][oc][i][j])
                    for ci in range(cg):
                        ch = grp * cg + ci
                        for u in range(kh):
                            for v in range(kw):
                                r, s = i * stride - padding + u * dilation, j * stride - padding + v * dilation
                                if 0 <= r < h and 0 <= s < wd:
                                    dx[b][ch][r][s].append(gv * f(ws[oc][ci][u][v]))
                                    dw[oc][ci][u][v].append(gv * f(xs[b][ch][r][s]))
    db = [_round([f(gs[b][oc][i][j]) for b in range(n) for i in range(oh) for j in range(ow)]) for oc in range(o)]

    def rounded(nested, depth):
        return [rounded(v, depth - 1) for v in nested] if depth else _round(nested)

    return _tensor(rounded(dx, 4)), _tensor(rounded(dw, 4)), _tensor(db)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 0, 2, 1)])
def test_conv2d_quire_backward_grads_equal_the_oracle_rounded_once(stride, padding, dilation, groups):
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    lb.quantize_(conv, {"weight": SPEC, "input": SPEC, "accumulate": "quire", "accumulate_backward": "quire"})
    x = lb.parse_format(SPEC).quantize(_spread((2, 4, 7, 6), 4)).requires_grad_(True)
    y = conv(x)
    g = _spread(tuple(y.shape), 5)
    y.backward(g)
    w = lb.parse_format(SPEC).quantize(conv.lowbit_float_tensor("weight"))
    expected = _conv_grads_oracle(x.detach(), w, g, stride, padding, dilation, groups)
    for a, e in zip((x.grad, conv.lowbit_float_tensor("weight").grad, conv.lowbit_float_tensor("bias").grad), expected):
        assert_identical(a, e)


def test_conv2d_fp32_backward_grad_input_rounds_its_running_sums():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    lb.quantize_(conv, {"weight": SPEC, "input": SPEC, "accumulate": "quire"})
    x = lb.parse_format(SPEC).quantize(_spread((2, 4, 7, 6), 4)).requires_grad_(True)
    y = conv(x)
    g = _spread(tuple(y.shape), 5)
    y.backward(g)
    w = lb.parse_format(SPEC).quantize(conv.lowbit_float_tensor("weight"))
    expected = _conv_grads_oracle(x.detach(), w, g, 1, 1, 1, 1)
    assert not torch.equal(x.grad, expected[0])


def test_conv_transpose2d_quire_backward_matches_the_adjoint_oracle():
    """The transposed conv is a conv of the spread input: its exact grads are the conv oracle's, re-indexed."""
    torch.manual_seed(6)
    layer = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    lb.quantize_(layer, {"weight": SPEC, "input": SPEC, "accumulate": "quire", "accumulate_backward": "quire"})
    x = lb.parse_format(SPEC).quantize(_spread((1, 3, 4, 3), 7)).requires_grad_(True)
    y = layer(x)
    g = _spread(tuple(y.shape), 8)
    y.backward(g)
    w = lb.parse_format(SPEC).quantize(layer.lowbit_float_tensor("weight"))
    # grad_x of a transposed conv is the forward conv of g with the same weight: exact, rounded once
    expected_gx = _conv_grads_oracle_forward(g, w, stride=2, padding=1)
    assert_identical(x.grad, expected_gx)


def _conv_grads_oracle_forward(g, w, stride, padding):
    """conv2d(g, w) by definition (w as [C_out_of_transpose..]: w is [Cin, Cout, kh, kw]), one rounding."""
    n, co, h, wd = g.shape
    ci, _, kh, kw = w.shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    gs, ws = g.double().tolist(), w.double().tolist()
    f = Fraction
    out = [[[[_round([f(gs[b][o][i * stride - padding + u][j * stride - padding + v]) * f(ws[c][o][u][v])
                      for o in range(co) for u in range(kh) for v in range(kw)
                      if 0 <= i * stride - padding + u < h and 0 <= j * stride - padding + v < wd])
              for j in range(ow)] for i in range(oh)] for c in range(ci)] for b in range(n)]
    return _tensor(out)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 5, 4), (4, 6)), ((5, 4), (2, 4, 6)), ((2, 1, 3, 4), (3, 4, 2)),
                                             ((4,), (4, 3)), ((3, 4), (4,))])
def test_exact_matmul_quire_backward_sums_broadcast_batches_exactly(a_shape, b_shape):
    a = _spread(a_shape, 9).requires_grad_(True)
    b = _spread(b_shape, 10).requires_grad_(True)
    y = exact_matmul(a, b, backward="quire")
    g = _spread(tuple(y.shape), 11)
    y.backward(g)
    for t, name in ((a, "a"), (b, "b")):
        expected = _fraction_grad(a.detach(), b.detach(), g, name)
        assert_identical(t.grad, expected)


def _fraction_grad(a, b, g, wrt):
    """d(Σ g ⊙ (a @ b))/d(wrt) element by element in Fractions (finite differences are exact for a bilinear map)."""
    f = Fraction
    a64, b64, g64 = a.double(), b.double(), g.double()
    target = a if wrt == "a" else b
    flat = []
    for idx in range(target.numel()):
        basis = torch.zeros(target.numel(), dtype=torch.float64)
        basis[idx] = 1.0
        basis = basis.reshape(target.shape)
        y = torch.matmul(basis, b64) if wrt == "a" else torch.matmul(a64, basis)  # one term per output: exact
        terms = [f(gv) * f(yv) for gv, yv in zip(g64.reshape(-1).tolist(), y.reshape(-1).tolist()) if yv != 0]
        flat.append(_round(terms))
    return _tensor(flat).reshape(target.shape)


def test_accumulate_backward_config_round_trips_and_rejects_bad_values():
    cfg = lb.QuantConfig.from_dict({"accumulate": "quire", "accumulate_backward": "quire"})
    assert cfg.to_dict()["accumulate_backward"] == "quire"
    assert lb.QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert lb.QuantConfig.from_dict({"accumulate": "quire"}).default.accumulate_backward == "fp32"
    with pytest.raises(ValueError, match=r"accumulate_backward='bf16'; allowed: 'fp32', 'quire'"):
        lb.QuantConfig.from_dict({"accumulate": "quire", "accumulate_backward": "bf16"})
    with pytest.raises(ValueError, match="accumulate_backward='quire' needs accumulate='quire'"):
        lb.QuantConfig.from_dict({"accumulate": "bf16", "accumulate_backward": "quire"})


def test_exact_matmul_rejects_an_unknown_backward():
    with pytest.raises(ValueError, match=r"backward='fp16'; allowed: 'fp32', 'quire'"):
        exact_matmul(torch.ones(2, 2), torch.ones(2, 2), backward="fp16")
    with pytest.raises(ValueError, match=r"backward='x'; allowed"):
        exact_conv_transpose2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), backward="x")
