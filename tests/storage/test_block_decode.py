"""The one-call numba decode of packed block formats (`_decode_numba.decode_blocks_into`) against
the reference decoder: bit for bit, on odd shapes (rows split into a shorter last block, rows that
do not start on a byte), every block format, batch sizes 1..5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lowbit as lb
from lowbit.storage.packed_layers import PackedLinear

BLOCK_SPECS = ["mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp6_e2m3fn", "mxfp8_e4m3fn", "mxfp8_e5m2", "mxint8",
               "nvfp4", "nvfp4_1l"]
# (out, in): whole blocks; a shorter last block; odd rows (no row starts on a byte for 4/6 bits)
SHAPES = [(8, 64), (5, 48), (7, 33), (3, 17), (1, 1)]


def _packed(spec: str, out_features: int, in_features: int, seed: int = 0
            ) -> "tuple[torch.Tensor, torch.Tensor, PackedLinear]":
    """(float weight, bias, the layer packed in ``spec``)."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_features, in_features, generator=g) * torch.logspace(-3, 3, in_features))
    weight, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
    packed = lb.pack_(torch.nn.Sequential(lin), spec)[0]
    assert isinstance(packed, PackedLinear)
    return weight, bias, packed


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", BLOCK_SPECS)
def test_block_layer_uses_the_one_call_kernel_and_decodes_to_the_reference_bit_for_bit(spec, shape):
    weight, _, packed = _packed(spec, *shape)
    reference = packed.packed_weight.decode(torch.float32)
    assert torch.equal(reference, lb.parse_format(spec).quantize(weight))
    assert torch.equal(packed.weight, reference)
    with torch.no_grad():  # the staging path: a reused buffer, filled by one kernel call
        staged = packed._lowbit_weight().clone()
        assert torch.equal(packed._lowbit_weight(), reference)
    assert torch.equal(staged, reference)
    assert packed._packed_table[1].fast[0].__name__ == "decode_blocks_into"


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("spec", BLOCK_SPECS)
def test_packed_block_forward_equals_the_linear_of_the_quantized_weight(spec, batch):
    weight, bias, packed = _packed(spec, 9, 96, seed=batch)
    x = torch.randn(batch, 96, generator=torch.Generator().manual_seed(batch))
    expected = F.linear(x, lb.parse_format(spec).quantize(weight), bias)
    with torch.inference_mode():
        assert torch.equal(packed(x), expected)
    assert torch.equal(packed(x), expected)


def test_an_nvfp4_tensor_scale_edited_in_place_is_read_or_rejected():
    _, _, packed = _packed("nvfp4", 4, 32)
    with torch.no_grad():
        packed(torch.ones(1, 32))
        packed.weight_param_tensor_scale.mul_(2)  # read as it is: the decode doubles
        assert torch.equal(packed._lowbit_weight(), packed.packed_weight.decode(torch.float32))
        packed.weight_param_tensor_scale.fill_(-1.0)
        with pytest.raises(ValueError):
            packed(torch.ones(1, 32))
