"""Per-group scales folded into the numba decode pass (decode_lines_into / decode_into), and block
formats on convolution weights: bit for bit the reference decode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.kernels import available_backends, use_backend
from lowbit.storage import pack_

pytestmark = pytest.mark.skipif("numba" not in available_backends(), reason="the fused decoders are numba's")

LAYERS = {
    "linear": lambda: nn.Linear(40, 48),
    "linear-odd": lambda: nn.Linear(37, 24),
    "conv2d": lambda: nn.Conv2d(8, 16, 3),
    "conv1x1": lambda: nn.Conv2d(24, 16, 1),
}
GROUPS = {
    "rows": ({"kind": "group", "group_size": 8}, "decode_lines_into"),
    "inputs": ({"kind": "group", "group_size": 4, "axis": 1}, None),  # runs of 4 codes, or lines (kxk conv)
}


@pytest.mark.parametrize("fmt", ["int4", "int3", "e2m3fn", "posit8_es2"])
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_group_scaled_decode_is_one_kernel_and_equals_the_reference(layer: str, group: str, fmt: str) -> None:
    torch.manual_seed(3)
    gran, kernel = GROUPS[group]
    module = LAYERS[layer]()
    if group == "inputs" and module.weight.shape[1] % 4:
        module = nn.Linear(36, 24)
    sim = lb.quantize_(copy.deepcopy(module), {"weight": {"format": fmt, "scaling": "absmax", "granularity": gran}})
    packed = pack_(copy.deepcopy(sim))
    fast = packed._table(torch.float32).fast
    assert fast is not None  # no separate torch multiply per forward
    expected = kernel or ("decode_into" if module.weight[0, 0].numel() == 1 else "decode_lines_into")
    assert fast[0].py_func.__name__ == expected
    with torch.no_grad():
        staged = packed._lowbit_weight().clone()
    with use_backend("reference"):
        reference = packed.packed_weight.decode()
    assert torch.equal(staged, reference)
    assert torch.equal(packed.weight, sim._lowbit_weight())


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4_e2m1fn", "mxfp8_e4m3fn", "mxint8"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_block_formats_on_conv_weights_equal_the_reference(fmt: str, kernel: int) -> None:
    # rows of 1, 3 or 5 codes (the last axis of a conv weight): shorter than a block, each row its own
    torch.manual_seed(4)
    sim = lb.quantize_(nn.Conv2d(12, 20, kernel, bias=False), {"weight": fmt})
    packed = pack_(copy.deepcopy(sim))
    with torch.no_grad():
        staged = packed._lowbit_weight().clone()
    with use_backend("reference"):
        reference = packed.packed_weight.decode()
    assert torch.equal(staged, reference)
    assert torch.equal(staged, sim._lowbit_weight())
