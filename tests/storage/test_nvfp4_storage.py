"""NVFP4 and the other block-scaled formats stored: 4.5 bits per weight + 4 bytes per tensor,
load == quantize bit for bit, packed layers == simulation, the cost model == the file."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.quant import storage_bits
from lowbit.storage import PackedTensor

SPECS = ["nvfp4", "nvfp4_1l", "block16_e2m1fn_scale_posit8_es1_t", "block32_int4_scale_e8m0fnu"]


def _spiky(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * torch.exp2(torch.randint(-12, 12, shape, generator=g))
    x.view(-1)[:4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")], dtype=torch.float64)
    return x.to(dtype)


def test_a_million_weight_nvfp4_checkpoint_is_at_most_0_5625_bytes_per_weight_plus_1_kib(tmp_path):
    w = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "w.lb"
    lb.save({"w": w}, path, formats="nvfp4")
    size = os.path.getsize(path)
    assert size <= 0.5625 * w.numel() + 1024
    assert torch.equal(lb.load(path)["w"], lb.parse_format("nvfp4").quantize(w))
    # the cost model counts exactly what is stored: codes + block scales + the FP32 tensor scale
    bits = storage_bits("nvfp4", w)
    assert bits == w.numel() * 4 + (w.numel() // 16) * 8 + 32
    assert PackedTensor.from_tensor(w, "nvfp4").nbytes * 8 == bits
    assert bits // 8 < size <= bits // 8 + 1024  # the rest is the header


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_packed_tensor_decodes_to_quantize_bit_for_bit(spec, dtype):
    x = _spiky((6, 40), dtype)  # 40: a shorter last block
    p = PackedTensor.from_tensor(x, spec)
    want = lb.parse_format(spec).quantize(x)
    got = p.decode()
    assert got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert p.nbytes * 8 == storage_bits(spec, x)


@pytest.mark.parametrize("spec", SPECS)
def test_save_load_of_a_state_dict_is_quantize(spec, tmp_path):
    sd = {"a": torch.randn(8, 64), "b": torch.randn(3, 20).to(torch.bfloat16), "n": torch.tensor(3)}
    lb.save(sd, tmp_path / "x.lb", formats=spec)
    back = lb.load(tmp_path / "x.lb")
    fmt = lb.parse_format(spec)
    for k in ("a", "b"):
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], fmt.quantize(sd[k]))
    assert torch.equal(back["n"], sd["n"])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 8))


@pytest.mark.parametrize("spec", SPECS)
def test_quantize_pack_and_save_agree_with_weights_replaced_by_quantize(spec, tmp_path):
    fmt = lb.parse_format(spec)
    model = _model()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer in reference:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(fmt.quantize(layer.weight))
    x = torch.randn(5, 64)
    want = reference(x)
    simulated = lb.quantize_(copy.deepcopy(model), {"weight": spec})
    assert torch.equal(simulated(x), want)
    packed = lb.pack_(copy.deepcopy(model), spec)
    assert torch.equal(packed(x), want)
    lb.save(simulated, tmp_path / "m.lb")
    loaded = lb.load(tmp_path / "m.lb")
    for name in ("0.weight", "2.weight", "4.weight"):
        assert torch.equal(loaded[name], reference.state_dict()[name])


@pytest.mark.parametrize("spec", ["block16_e2m1fn_scale_e4m3fn_t_a1", "block8_int4_scale_e8m0fnu_a1"])
def test_conv_weights_with_blocks_along_input_channels_pack_and_load_exactly(spec, tmp_path):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 8, 3)
    fmt = lb.parse_format(spec)
    reference = copy.deepcopy(conv)
    with torch.no_grad():
        reference.weight.copy_(fmt.quantize(conv.weight))
    x = torch.randn(2, 32, 6, 6)
    packed = lb.pack_(nn.Sequential(copy.deepcopy(conv)), spec)
    assert torch.equal(packed(x), reference(x))
    lb.save({"w": conv.weight.detach()}, tmp_path / "c.lb", formats=spec)
    assert torch.equal(lb.load(tmp_path / "c.lb")["w"], reference.weight)
    assert PackedTensor.from_tensor(conv.weight.detach(), spec).nbytes * 8 == storage_bits(spec, conv.weight)
