"""Layers with ``"accumulate": "quire"`` equal the Fraction oracle: the exact sum of the products of
the already-quantized operands and the bias, rounded once (to the output role's format, else float32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.reference.quire import exact_dot, oracle_matmul, round_once
from tests.simulate.test_exact import assert_identical, conv2d_oracle

SPEC = "posit8_es2"


def _layer_cfg(output: "str | None" = None) -> dict:
    cfg = {"weight": SPEC, "bias": SPEC, "input": SPEC, "accumulate": "quire"}
    if output is not None:
        cfg["output"] = output
    return cfg


def _q(t: torch.Tensor) -> torch.Tensor:
    return lb.parse_format(SPEC).quantize(t)


@pytest.mark.parametrize("output", [None, "posit8_es2", "e4m3fn"])
def test_linear_equals_the_oracle_rounded_once(output):
    torch.manual_seed(0)
    layer = nn.Linear(24, 5)
    x = torch.randn(6, 24) * 3
    lb.quantize_(layer, _layer_cfg(output))
    with torch.no_grad():
        got = layer(x)
    target = "float32" if output is None else lb.parse_format(output)
    xq, wq, bq = _q(x), _q(layer.lowbit_float_tensor("weight")), _q(layer.lowbit_float_tensor("bias"))
    expected = oracle_matmul(xq.double().tolist(), wq.double().t().tolist(), target, bq.double().tolist())
    assert_identical(got, torch.tensor(expected, dtype=torch.float64).to(torch.float32))


def test_linear_quire_differs_from_fp32_accumulation_where_float_sums_cancel():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4e7, 1.0, -1.0, -1.6e7]]))
    x = torch.tensor([[3.2e7, 1.0, -1.0, 8e7]])
    assert layer(x).item() == 0.0  # FP32 accumulation loses the 2
    lb.quantize_(layer, {"accumulate": "quire"})
    assert layer(x).item() == 2.0


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_conv2d_equals_the_oracle_rounded_once(stride, padding, groups):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, 4, 6, 5)
    lb.quantize_(conv, _layer_cfg())
    with torch.no_grad():
        got = conv(x)
    exp = conv2d_oracle(_q(x), _q(conv.lowbit_float_tensor("weight")), _q(conv.lowbit_float_tensor("bias")),
                        stride, padding, 1, groups, "float32")
    assert_identical(got, exp.to(torch.float32))


def test_conv1d_equals_the_oracle_rounded_once():
    torch.manual_seed(2)
    conv = nn.Conv1d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 7)
    lb.quantize_(conv, _layer_cfg())
    with torch.no_grad():
        got = conv(x)
    exp = conv2d_oracle(_q(x).unsqueeze(2), _q(conv.lowbit_float_tensor("weight")).unsqueeze(2),
                        _q(conv.lowbit_float_tensor("bias")), 1, 1, 1, 1, "float32")
    # conv2d_oracle pads both spatial axes by 1: keep the middle row (the unpadded height-1 input)
    assert_identical(got, exp[:, :, 1].to(torch.float32))


def test_conv_transpose2d_equals_the_oracle_rounded_once():
    torch.manual_seed(3)
    conv = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(1, 3, 3, 3)
    lb.quantize_(conv, _layer_cfg())
    with torch.no_grad():
        got = conv(x)
    xq, wq, bq = _q(x), _q(conv.lowbit_float_tensor("weight")), _q(conv.lowbit_float_tensor("bias"))
    # direct definition: out[o, p, q] = b[o] + sum over c, i, j, u, v with p = 2i - 1 + u, q = 2j - 1 + v
    exp = torch.zeros_like(got, dtype=torch.float64)
    for o in range(2):
        for p in range(got.shape[2]):
            for q in range(got.shape[3]):
                xs, ws = [1.0], [float(bq[o])]
                for c in range(3):
                    for i in range(3):
                        for j in range(3):
                            u, v = p + 1 - 2 * i, q + 1 - 2 * j
                            if 0 <= u < 3 and 0 <= v < 3:
                                xs.append(float(xq[0, c, i, j]))
                                ws.append(float(wq[c, o, u, v]))
                exp[0, o, p, q] = round_once(exact_dot(xs, ws), "float32")
    assert_identical(got, exp.to(torch.float32))


def test_training_through_a_quire_layer_passes_fp32_gradients():
    torch.manual_seed(4)
    layer = nn.Linear(8, 3)
    lb.quantize_(layer, {"weight": SPEC, "accumulate": "quire"})
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    w = _q(layer.lowbit_float_tensor("weight").detach())
    assert torch.equal(x.grad, torch.ones(5, 3) @ w)  # straight through the one rounding, FP32 matmul
    assert torch.equal(layer.lowbit_float_tensor("weight").grad, torch.ones(3, 5) @ x.detach())


def test_quire_config_round_trips_and_refuses_what_does_not_apply():
    cfg = lb.QuantConfig.from_dict({"weight": SPEC, "accumulate": "quire"})
    assert cfg.default.accumulate == "quire"
    assert lb.QuantConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="accumulate_every does not apply"):
        lb.QuantConfig.from_dict({"accumulate": "quire", "accumulate_every": 16})
    with pytest.raises(ValueError, match="accumulate='quire' is supported for Linear"):
        lb.quantize_(nn.Sequential(nn.Embedding(4, 3)), {"weight": SPEC, "accumulate": "quire"})
