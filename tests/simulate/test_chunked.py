"""``"accumulate": fmt, "accumulate_every": K`` on convolutions counts products: an independent
scalar oracle (numpy float32 products and chunk sums, ml_dtypes / numpy casts for the rounding to
the accumulator format) walks each output's products in the documented order and rounds every K."""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.simulate.chunked import conv_transpose_taps, running_sum

ROUND = {"e4m3fn": ml_dtypes.float8_e4m3fn, "bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def _round(v: np.float32, spec: str) -> np.float32:
    return np.float32(np.asarray(v, dtype=np.float32).astype(ROUND[spec]).astype(np.float32))


def _oracle_sum(products: "list[np.float32]", bias: "np.float32 | None", spec: str, every: int) -> np.float32:
    acc = None
    for s in range(0, len(products), every):
        part = products[s]
        for p in products[s + 1:s + every]:
            part = np.float32(part + p)
        q = _round(part, spec)
        acc = q if acc is None else _round(np.float32(acc + q), spec)
    if acc is None:
        acc = np.float32(0.0)
    return acc if bias is None else _round(np.float32(acc + bias), spec)


def conv2d_running_sum_oracle(x, w, b, stride, padding, dilation, spec, every):
    """x N×C×H×W, w O×C×kh×kw (numpy float32); products in the order c, i, j; padding taps are 0."""
    n, c_in, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow), dtype=np.float32)
    for idx in np.ndindex(n, o, oh, ow):
        b_, o_, y, x_ = idx
        prods = []
        for c in range(c_in):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = y * stride + i * dilation - padding, x_ * stride + j * dilation - padding
                    inside = 0 <= iy < h and 0 <= ix < wd
                    prods.append(np.float32(x[b_, c, iy, ix] * w[o_, c, i, j]) if inside else np.float32(0.0))
        out[idx] = _oracle_sum(prods, None if b is None else b[o_], spec, every)
    return out


def conv_transpose2d_running_sum_oracle(x, w, b, stride, padding, output_padding, dilation, spec, every):
    """x N×C×H×W, w C×O×kh×kw: an output's products are the taps (c, i, j) landing on it, a tap
    reading outside the input is 0; the stride's inserted zeros are not products."""
    n, c_in, h, wd = x.shape
    _, o, kh, kw = w.shape
    oh = (h - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1
    ow = (wd - 1) * stride - 2 * padding + dilation * (kw - 1) + output_padding + 1
    out = np.zeros((n, o, oh, ow), dtype=np.float32)
    for idx in np.ndindex(n, o, oh, ow):
        b_, o_, y, x_ = idx
        prods = []
        for c in range(c_in):
            for i in range(kh):
                if (y + padding - i * dilation) % stride:
                    continue
                for j in range(kw):
                    if (x_ + padding - j * dilation) % stride:
                        continue
                    iy, ix = (y + padding - i * dilation) // stride, (x_ + padding - j * dilation) // stride
                    inside = 0 <= iy < h and 0 <= ix < wd
                    prods.append(np.float32(x[b_, c, iy, ix] * w[c, o_, i, j]) if inside else np.float32(0.0))
        out[idx] = _oracle_sum(prods, None if b is None else b[o_], spec, every)
    return out


def _np(t: "torch.Tensor | None"):
    return None if t is None else t.detach().numpy()


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("spec", ["e4m3fn", "bf16", "fp16"])
@pytest.mark.parametrize("every", [1, 4, 9, 16, 1000])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv2d_rounds_the_running_sum_every_k_products_in_channel_row_column_order(spec, every, stride, padding,
                                                                                    dilation, grad):
    torch.manual_seed(every + 7 * stride + 3 * padding)
    conv = nn.Conv2d(3, 2, 3, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 3, 6, 5) * 4
    with torch.set_grad_enabled(grad):
        got = lb.quantize_(copy.deepcopy(conv), {"accumulate": spec, "accumulate_every": every})(x)
    assert got.requires_grad == grad
    want = conv2d_running_sum_oracle(x.numpy(), _np(conv.weight), _np(conv.bias), stride, padding, dilation, spec,
                                     every)
    assert torch.equal(got.detach(), torch.from_numpy(want))


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("spec", ["e4m3fn", "bf16"])
@pytest.mark.parametrize("every", [1, 3, 8, 64])
@pytest.mark.parametrize("stride,padding,output_padding,dilation,kernel",
                         [(2, 1, 0, 1, 4), (2, 0, 1, 1, 3), (1, 1, 0, 1, 3), (3, 1, 0, 2, 3), (2, 2, 0, 1, 2)])
def test_conv_transpose2d_rounds_every_k_of_the_products_landing_on_each_output(spec, every, stride, padding,
                                                                                output_padding, dilation, kernel, grad):
    torch.manual_seed(every + 5 * stride + padding)
    layer = nn.ConvTranspose2d(3, 2, kernel, stride=stride, padding=padding, output_padding=output_padding,
                               dilation=dilation)
    x = torch.randn(2, 3, 4, 3) * 4
    with torch.set_grad_enabled(grad):
        got = lb.quantize_(copy.deepcopy(layer), {"accumulate": spec, "accumulate_every": every})(x)
    want = conv_transpose2d_running_sum_oracle(x.numpy(), _np(layer.weight), _np(layer.bias), stride, padding,
                                               output_padding, dilation, spec, every)
    assert got.shape == layer(x).shape
    assert torch.equal(got.detach(), torch.from_numpy(want))


def test_conv1d_counts_products_as_the_conv2d_of_height_one():
    torch.manual_seed(3)
    c1 = nn.Conv1d(3, 4, 5, padding=2, padding_mode="circular")
    c2 = nn.Conv2d(3, 4, (1, 5))
    with torch.no_grad():
        c2.weight.copy_(c1.weight.unsqueeze(2))
        c2.bias.copy_(c1.bias)
    x = torch.randn(2, 3, 9) * 3
    cfg = {"accumulate": "e4m3fn", "accumulate_every": 4}
    x_padded = F.pad(x, (2, 2), mode="circular")  # circular padding values are real inputs, counted as taps
    got = lb.quantize_(c1, cfg)(x)
    want = lb.quantize_(c2, cfg)(x_padded.unsqueeze(2)).squeeze(2)
    assert torch.equal(got, want)


def test_every_k_at_least_the_reduction_rounds_only_the_total_and_the_bias():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5)
    got = lb.quantize_(copy.deepcopy(conv), {"accumulate": "bf16", "accumulate_every": 18})(x)
    w, b = conv.weight.detach(), conv.bias.detach()
    # 18 products per output: one chunk, its FP32 sum rounded once, then the bias added and rounded
    want = conv2d_running_sum_oracle(x.numpy(), w.numpy(), b.numpy(), 1, 1, 1, "bf16", 18)
    assert torch.equal(got.detach(), torch.from_numpy(want))
    assert torch.equal(got.detach(), torch.from_numpy(conv2d_running_sum_oracle(x.numpy(), w.numpy(), b.numpy(), 1, 1,
                                                                                 1, "bf16", 10**6)))


def test_chunked_conv_layers_train_straight_through():
    torch.manual_seed(5)
    for layer in (nn.Conv2d(2, 3, 3, padding=1), nn.ConvTranspose2d(2, 3, 4, 2, 1)):
        ref = copy.deepcopy(layer)
        q = lb.quantize_(layer, {"accumulate": "bf16", "accumulate_every": 4})
        x1, x2 = torch.randn(2, 2, 5, 5, requires_grad=True), None
        x2 = x1.detach().clone().requires_grad_()
        q(x1).square().sum().backward()
        ref(x2).square().sum().backward()
        # straight-through: the gradient of the FP32 layer at the rounded output (not bit-equal: other order)
        assert torch.allclose(x1.grad, x2.grad, rtol=0.05, atol=0.05)
        assert torch.allclose(q.lowbit_float_tensor("weight").grad, ref.weight.grad, rtol=0.05, atol=0.1)


def test_grouped_chunked_convolutions_are_refused_with_the_reason():
    conv = lb.quantize_(nn.Conv2d(4, 4, 3, groups=2), {"accumulate": "bf16", "accumulate_every": 4})
    with pytest.raises(ValueError, match="groups=1"):
        conv(torch.randn(1, 4, 5, 5))
    convt = lb.quantize_(nn.ConvTranspose2d(4, 4, 3, groups=2), {"accumulate": "bf16", "accumulate_every": 4})
    with pytest.raises(ValueError, match="groups=1"):
        convt(torch.randn(1, 4, 5, 5))


def test_transposed_taps_per_phase_of_a_stride_two_4x4_kernel_are_two():
    assert conv_transpose_taps(7, 14, 4, 2, 1, 1) == [(0, [(1, 0), (3, -1)]), (1, [(0, 1), (2, 0)])]
    assert conv_transpose_taps(5, 9, 1, 2, 0, 1) == [(0, [(0, 0)]), (1, [])]  # odd outputs get no product


def test_running_sum_with_no_products_is_zero_and_bad_every_is_refused():
    like = torch.ones(1)
    assert torch.equal(running_sum([], lb.parse_format("bf16"), 2, (2, 3), like), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="every=0"):
        running_sum([(like, like)], lb.parse_format("bf16"), 0, (1,), like)


def test_packed_conv_transpose_uses_the_same_running_sum():
    from lowbit.storage import pack_

    torch.manual_seed(6)
    model = nn.Sequential(nn.ConvTranspose2d(3, 2, 4, 2, 1))
    cfg = {"weight": "posit8_es2", "accumulate": "e4m3fn", "accumulate_every": 4}
    sim = lb.quantize_(copy.deepcopy(model), cfg)
    packed = pack_(copy.deepcopy(sim))
    x = torch.randn(2, 3, 3, 3)
    with torch.no_grad():
        assert torch.equal(packed(x), sim(x))
        assert not torch.equal(sim(x), lb.quantize_(copy.deepcopy(model), {"weight": "posit8_es2"})(x))
