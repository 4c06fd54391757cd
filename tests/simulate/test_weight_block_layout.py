"""The registry's one decision on block formats (`lowbit.simulate.registry.weight_format`): a spec
with ``_r`` puts a conv weight's blocks along each output channel's reduction (I/groups x
kernel), a transposed conv's along its output channels' reduction (``_rt<groups>``), a Linear's
along its last axis; `quantize_` simulates exactly that. A bare spec keeps the last axis on
every layer (weight-only simulation == weights replaced by ``fmt.quantize(weight)``), and a
user's explicit axis or layout is kept."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.simulate.registry import weight_format

PRESETS = ["mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp8_e4m3fn", "mxint8", "nvfp4", "nvfp4_1l"]


def _layers() -> "dict[str, nn.Module]":
    torch.manual_seed(0)
    return {
        "conv1d": nn.Conv1d(12, 8, 5),
        "conv2d": nn.Conv2d(16, 8, 3),
        "conv2d_1x1": nn.Conv2d(40, 6, 1),
        "conv2d_groups": nn.Conv2d(16, 8, 3, groups=4),
        "depthwise": nn.Conv2d(8, 8, 5, groups=8),
        "conv3d": nn.Conv3d(4, 6, 3),
        "convT1d_groups": nn.ConvTranspose1d(6, 4, 3, groups=2),
        "convT2d": nn.ConvTranspose2d(8, 6, 3),
        "convT2d_groups": nn.ConvTranspose2d(8, 6, 3, groups=2),
        "convT3d": nn.ConvTranspose3d(4, 2, 2),
    }


def _reduction_rows(layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """Each output channel's reduction, gathered from the layer's definition (not the layout code)."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        per_in, per_out = w.shape[0] // g, w.shape[1]
        return torch.stack([w[j * per_in:(j + 1) * per_in, c].reshape(-1) for j in range(g) for c in range(per_out)])
    return torch.stack([w[o].reshape(-1) for o in range(w.shape[0])])


def _oracle(layer: nn.Module, spec: str) -> torch.Tensor:
    """The layer's weight with the format's last-axis rule run on its reduction rows."""
    w = layer.weight.detach()
    q = lb.parse_format(spec).quantize(_reduction_rows(layer, w))
    out = torch.empty_like(w)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        per_in, per_out = w.shape[0] // g, w.shape[1]
        for j in range(g):
            for c in range(per_out):
                out[j * per_in:(j + 1) * per_in, c] = q[j * per_out + c].reshape(out[j * per_in:(j + 1) * per_in, c].shape)
    else:
        for o in range(w.shape[0]):
            out[o] = q[o].reshape(w[o].shape)
    return out


@pytest.mark.parametrize("spec", PRESETS)
@pytest.mark.parametrize("kind", list(_layers()))
def test_quantize_simulates_r_block_formats_along_each_output_channels_reduction(spec, kind):
    layer = _layers()[kind]
    want = _oracle(layer, spec)
    q = lb.quantize_(nn.Sequential(copy.deepcopy(layer)), {"weight": spec + "_r"})
    fmt = lb.tensor_formats(q)["0.weight"]
    assert torch.equal(fmt.quantize(layer.weight.detach()), want)
    x = torch.randn((2, layer.in_channels) + (5,) * (layer.weight.dim() - 2))
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.weight.copy_(want)
    assert torch.equal(q(x), reference(x))


@pytest.mark.parametrize("kind, suffix", [("conv2d", "_r"), ("conv3d", "_r"), ("conv1d", "_r"),
                                          ("convT2d", "_rt1"), ("convT2d_groups", "_rt2")])
def test_weight_format_names_the_layers_reduction_layout(kind, suffix):
    layer = _layers()[kind]
    assert str(weight_format(layer, "mxfp4_e2m1fn_r")) == "mxfp4_e2m1fn" + suffix
    assert str(weight_format(layer, "nvfp4_r")) == "nvfp4" + suffix


@pytest.mark.parametrize("spec", PRESETS)
@pytest.mark.parametrize("kind", ["conv2d", "conv2d_1x1", "convT2d_groups"])
def test_a_bare_block_spec_simulates_the_weight_replaced_by_fmt_quantize(spec, kind):
    layer = _layers()[kind]
    assert str(weight_format(layer, spec)) == spec
    q = lb.quantize_(nn.Sequential(copy.deepcopy(layer)), {"weight": spec})
    reference = copy.deepcopy(layer)
    with torch.no_grad():
        reference.weight.copy_(lb.parse_format(spec).quantize(layer.weight.detach()))
    x = torch.randn((2, layer.in_channels) + (5,) * (layer.weight.dim() - 2))
    assert torch.equal(q(x), reference(x))


def test_linear_weights_scalar_formats_and_explicit_layouts_are_left_alone():
    conv = nn.Conv2d(16, 8, 3)
    assert str(weight_format(nn.Linear(64, 8), "mxfp4_e2m1fn")) == "mxfp4_e2m1fn"
    assert str(weight_format(conv, "posit8_es2")) == "posit8_es2"
    assert str(weight_format(conv, "block16_e2m1fn_scale_e4m3fn_t_a1")) == "block16_e2m1fn_scale_e4m3fn_t_a1"
    assert str(weight_format(conv, "nvfp4_rt2")) == "nvfp4_rt2"


def test_an_explicit_axis_is_simulated_as_given():
    layer = _layers()["conv2d"]
    spec = "block16_e2m1fn_scale_e4m3fn_a1"
    q = lb.quantize_(nn.Sequential(copy.deepcopy(layer)), {"weight": spec})
    w = layer.weight.detach()
    want = lb.parse_format("nvfp4_1l").quantize(w.movedim(1, -1)).movedim(-1, 1)
    assert torch.equal(q[0].lowbit_roles["weight"](w), want)


def test_an_axis_that_does_not_fit_the_weight_is_refused_before_anything_changes():
    model = nn.Sequential(nn.Conv2d(16, 8, 3))
    with pytest.raises(ValueError, match=re.escape("layer '0' role 'weight': axis=5 is out of range")):
        lb.quantize_(model, {"weight": "block16_e2m1fn_scale_e4m3fn_a5"})
    assert type(model[0]) is nn.Conv2d
    with pytest.raises(ValueError, match=re.escape("not a multiple of groups=3")):
        lb.quantize_(nn.Sequential(nn.ConvTranspose2d(8, 6, 3)), {"weight": "mxfp4_e2m1fn_rt3"})


def test_storage_bits_of_a_conv_weight_count_one_scale_per_block_of_its_reduction():
    from lowbit.quant.sensitivity import storage_bits

    conv = nn.Conv2d(64, 32, 1)  # 1x1: blocks along the 64 input channels, 2 per output channel
    assert storage_bits("mxfp4_e2m1fn_r", conv.weight, layer=conv) == 32 * 64 * 4 + 32 * 2 * 8
    assert storage_bits("mxfp4_e2m1fn", conv.weight, layer=conv) == 32 * 64 * (4 + 8)  # last axis: 1 per block
    dw = nn.Conv2d(32, 32, 3, groups=32)  # depthwise: 9 values per output channel, one block
    assert storage_bits("nvfp4_r", dw.weight, layer=dw) == 32 * 9 * 4 + 32 * 8 + 32


def test_transformers_conv1d_weights_take_blocks_along_their_input_axis():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(6, 64)  # weight [in=64, out=6]: output j sums over w[:, j]
    w = layer.weight.detach()
    q = lb.quantize_(nn.Sequential(copy.deepcopy(layer)), {"weight": "mxfp4_e2m1fn_r"})
    assert str(lb.tensor_formats(q)["0.weight"]) == "mxfp4_e2m1fn_rt1"
    want = lb.parse_format("mxfp4_e2m1fn").quantize(w.T.contiguous()).T
    x = torch.randn(3, 64)
    assert torch.equal(q(x), torch.addmm(layer.bias, x, want))
