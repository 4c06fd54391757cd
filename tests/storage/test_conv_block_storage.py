"""Block formats on conv weights, stored: the simulated model (`quantize_`), the packed model
(`pack_`, both decode paths) and the checkpoint (`lb.save` of the quantized model, `lb.load`)
agree bit for bit, with the blocks along each output channel's reduction (`_r`); conv weights decode
through the one-call numba kernel and store one scale per block of that reduction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit as lb

PRESETS = ["mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp8_e4m3fn", "mxint8", "nvfp4", "nvfp4_1l"]


def _model(kind: str) -> "tuple[nn.Module, torch.Tensor]":
    torch.manual_seed(0)
    layers = {
        "conv1d": (nn.Conv1d(12, 8, 5), (1, 12, 9)),
        "conv2d": (nn.Conv2d(16, 8, 3, padding=1), (1, 16, 6, 6)),
        "conv2d_groups": (nn.Conv2d(16, 8, 3, groups=4), (1, 16, 6, 6)),
        "depthwise": (nn.Conv2d(8, 8, 5, groups=8, padding=2), (1, 8, 6, 6)),
        "pointwise": (nn.Conv2d(40, 6, 1), (1, 40, 4, 4)),
        "conv3d": (nn.Conv3d(4, 6, 3), (1, 4, 5, 5, 5)),
        "convT1d_groups": (nn.ConvTranspose1d(6, 4, 3, groups=2), (1, 6, 7)),
        "convT2d": (nn.ConvTranspose2d(8, 6, 3), (1, 8, 5, 5)),
        "convT2d_groups": (nn.ConvTranspose2d(8, 6, 3, groups=2), (1, 8, 5, 5)),
    }
    layer, shape = layers[kind]
    return nn.Sequential(layer), torch.randn(shape)


#: conv layers with a packed class (Conv3d, ConvTranspose1d: simulated and saved only)
PACKABLE = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
KINDS = ["conv1d", "conv2d", "conv2d_groups", "depthwise", "pointwise", "conv3d", "convT1d_groups", "convT2d",
         "convT2d_groups"]


def _reduction_oracle(layer: nn.Module, spec: str) -> torch.Tensor:
    """The weight with the format's last-axis rule on each output channel's reduction, gathered
    from the layer's definition."""
    w = layer.weight.detach()
    fmt = lb.parse_format(spec)
    out = torch.empty_like(w)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        per_in = w.shape[0] // g
        rows = [(slice(j * per_in, (j + 1) * per_in), c) for j in range(g) for c in range(w.shape[1])]
        q = fmt.quantize(torch.stack([w[i, c].reshape(-1) for i, c in rows]))
        for r, (i, c) in enumerate(rows):
            out[i, c] = q[r].reshape(out[i, c].shape)
    else:
        q = fmt.quantize(torch.stack([w[o].reshape(-1) for o in range(w.shape[0])]))
        for o in range(w.shape[0]):
            out[o] = q[o].reshape(w[o].shape)
    return out


@pytest.mark.parametrize("spec", PRESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_simulated_packed_and_saved_conv_weights_agree_bit_for_bit(spec, kind, tmp_path):
    model, x = _model(kind)
    want = _reduction_oracle(model[0], spec)
    sim = lb.quantize_(copy.deepcopy(model), {"weight": spec + "_r"})
    y = sim(x)
    if type(model[0]) in PACKABLE:
        packed = lb.pack_(copy.deepcopy(sim))
        assert torch.equal(packed[0].weight, want)
        assert torch.equal(packed(x), y)
        with torch.inference_mode():  # the staging path
            assert torch.equal(packed(x), y)
            assert torch.equal(packed(x), y)
        assert torch.equal(lb.pack_(copy.deepcopy(model), spec + "_r")(x), y)  # a float model with a spec: the same codes
    lb.save(sim, tmp_path / "m.lb")
    loaded = lb.load(tmp_path / "m.lb")
    assert torch.equal(loaded["0.weight"], want)


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "mxfp8_e4m3fn", "nvfp4", "nvfp4_1l", "mxfp6_e3m2fn"])
@pytest.mark.parametrize("kind", ["conv2d", "depthwise", "pointwise", "conv1d", "conv2d_groups"])
def test_conv_block_weights_decode_through_the_one_call_kernel(spec, kind):
    pytest.importorskip("numba")
    model, x = _model(kind)
    packed = lb.pack_(lb.quantize_(copy.deepcopy(model), {"weight": spec + "_r"}))
    with torch.inference_mode():
        packed(x)
    assert packed[0]._packed_table[1].fast[0].__name__ == "decode_blocks_into"


def test_a_pointwise_conv_stores_one_scale_per_block_of_its_input_channels():
    model, _ = _model("pointwise")  # [6, 40, 1, 1]: two blocks of 32 (the second of 8) per output channel
    packed = lb.pack_(lb.quantize_(copy.deepcopy(model), {"weight": "mxfp4_e2m1fn_r"}))
    assert packed[0].packed_nbytes == 6 * 40 // 2 + 6 * 2  # 4-bit codes + one E8M0 byte per block


def test_a_checkpoint_of_a_quantized_conv_names_the_layout_and_loads_packed(tmp_path):
    model, x = _model("convT2d_groups")
    sim = lb.quantize_(copy.deepcopy(model), {"weight": "nvfp4_r"})
    lb.save(sim, tmp_path / "m.lb")
    state = lb.load_packed(tmp_path / "m.lb")
    assert str(state["0.weight"].format) == "nvfp4_rt2"
    fresh = lb.pack_(copy.deepcopy(model), state)
    assert torch.equal(fresh(x), sim(x))


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "nvfp4", "mxfp8_e4m3fn"])
@pytest.mark.parametrize("kind", ["conv2d", "depthwise", "convT2d_groups"])
def test_the_torch_decode_path_agrees_with_the_simulation(spec, kind):
    from lowbit.kernels import use_backend

    model, x = _model(kind)
    sim = lb.quantize_(copy.deepcopy(model), {"weight": spec + "_r"})
    y = sim(x)
    with use_backend("reference"):
        packed = lb.pack_(copy.deepcopy(sim))
        assert torch.equal(packed[0].weight, _reduction_oracle(model[0], spec))
        with torch.inference_mode():
            assert torch.equal(packed(x), y)


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "nvfp4"])
@pytest.mark.parametrize("kind", ["conv2d", "pointwise", "convT2d_groups"])
def test_a_bare_block_spec_packs_and_saves_fmt_quantize_of_the_weight(spec, kind, tmp_path):
    model, x = _model(kind)
    want = lb.parse_format(spec).quantize(model[0].weight.detach())  # blocks along the last axis
    sim = lb.quantize_(copy.deepcopy(model), {"weight": spec})
    if type(model[0]) in PACKABLE:
        packed = lb.pack_(copy.deepcopy(sim))
        assert torch.equal(packed[0].weight, want)
        with torch.inference_mode():
            assert torch.equal(packed(x), sim(x))
    lb.save(sim, tmp_path / "m.lb")
    assert torch.equal(lb.load(tmp_path / "m.lb")["0.weight"], want)
