"""Prepared decode calls through one argument array (`lowbit.storage._plan_numba`): the staging
plans and Linear tiles of float32 layers call the one-argument twins, which write exactly what the
kernels write (and reject what they reject), and every other call is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lowbit as lb

pytest.importorskip("numba")

from lowbit.storage import _decode_numba as kernels
from lowbit.storage import _plan_numba as plans
from lowbit.storage.decode import _staged_plan
from lowbit.storage.tiled import _plan as tile_plan

TWINS = {plans.decode_into_at: kernels.decode_into, plans.decode_lines_at: kernels.decode_lines_into,
         plans.decode_blocks_at: kernels.decode_blocks_into}
#: weight spec -> the twin its float32 staging plan calls (per-group scales along the output
#: channels of a conv weight: groups of a leading axis, `decode_lines_into`)
SPECS = {
    "posit8_es2": plans.decode_into_at,
    "e4m3fn": plans.decode_into_at,
    "codebook4": plans.decode_into_at,
    "int8/channel": plans.decode_into_at,
    "int4/group8": plans.decode_lines_at,
    "mxfp4_e2m1fn": plans.decode_blocks_at,
    "mxfp8_e4m3fn": plans.decode_blocks_at,
    "nvfp4": plans.decode_blocks_at,
    "mxfp4_e2m1fn_r": plans.decode_blocks_at,
}
CONVS = {"pointwise": lambda: nn.Conv2d(24, 16, 1, bias=False),
         "depthwise": lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
         "dense 3x3": lambda: nn.Conv2d(5, 16, 3, bias=True)}


def _spec(label: str) -> object:
    if label == "int8/channel":
        return {"format": "int8", "scaling": "absmax", "granularity": "channel"}
    if label == "int4/group8":
        return {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "group_size": 8}}
    return label


def _packed(label: str, make) -> nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(make())
    lb.quantize_(model, {"weight": _spec(label)})
    return lb.pack_(model)[0]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("label", list(SPECS))
def test_a_float32_staging_plan_calls_its_one_argument_twin_and_decodes_the_reference_bits(label, conv):
    layer = _packed(label, CONVS[conv])
    reference = layer.packed_weight.decode(torch.float32)
    x = torch.randn(1, layer.in_channels, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        layer(x)
        plan = _staged_plan(layer)
        assert plan is not None and plan.kernel is SPECS[label] and len(plan.args) == 1
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
        assert torch.equal(layer(x), layer._conv_forward(x, reference, layer.bias))


@pytest.mark.parametrize("label", list(SPECS))
def test_the_twin_writes_exactly_what_its_kernel_writes(label):
    layer = _packed(label, CONVS["dense 3x3"])
    with torch.inference_mode():
        _packed(label, lambda: nn.Conv2d(16, 32, 3))._lowbit_weight()  # a staging buffer larger than the weight
        layer._lowbit_weight()
        plan = _staged_plan(layer)
        n = plan.weight.numel()
        assert plan.buffer.numel() > n
        plan.buffer[: n + 1].fill_(7.0)
        assert not plan.kernel(*plan.args)
        twin = plan.buffer[: n + 1].clone()
        plan.buffer[: n + 1].fill_(7.0)
        assert not TWINS[plan.kernel](*plan.held)
        assert torch.equal(_bits(twin), _bits(plan.buffer[: n + 1]))
        assert twin[n] == 7.0  # nothing past the weight


def test_the_blocks_twin_rejects_what_the_kernel_rejects_and_writes_nothing():
    # NVFP4's tensor scale is read on every call; one that is not finite and positive is rejected
    layer = _packed("nvfp4", CONVS["pointwise"])
    with torch.inference_mode():
        layer._lowbit_weight()
        plan = _staged_plan(layer)
        n = plan.weight.numel()
        layer.weight_param_tensor_scale.fill_(-1.0)
        plan.buffer[:n].fill_(7.0)
        assert plan.kernel(*plan.args) and TWINS[plan.kernel](*plan.held)
        assert bool((plan.buffer[:n] == 7.0).all())
        with pytest.raises(ValueError):
            layer(torch.ones(1, 24, 2, 2))


@pytest.mark.parametrize("label", ["posit8_es2", "int4/group8", "mxfp4_e2m1fn", "nvfp4"])
def test_linear_tiles_call_twins_and_run_as_the_reference_weight(label):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96))
    lb.quantize_(model, {"weight": _spec(label)})
    layer = lb.pack_(model)[0]
    layer.tile_bytes = 64 * 32 * 4  # three tiles of 32 rows
    reference = layer.packed_weight.decode(torch.float32)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    eye = torch.eye(64)  # one nonzero product per output: exact in any summation order
    with torch.inference_mode():
        layer(x)
        tiles = tile_plan(layer).tiles
        assert len(tiles) == 3 and all(t.kernel in TWINS and len(t.args) == 1 for t in tiles)
        assert torch.equal(layer(eye), reference.t() + layer.bias)


def _float32_args(n: int = 8) -> "tuple[object, ...]":
    data = np.arange(n, dtype=np.uint8)
    out = np.zeros(n, np.float32)
    return (data, 8, np.arange(256, dtype=np.float32).view(np.int32), np.zeros(1, np.int64), False,
            np.zeros(1, np.float32), 0, n, out.view(np.int32), out.view(np.int64), out)


def test_addressed_calls_decode_the_same_values_as_the_kernel():
    args = _float32_args()
    twin, (a,) = plans.addressed(kernels.decode_into, args)
    assert twin is plans.decode_into_at and a.dtype == np.int64
    assert not twin(a)
    assert args[-1].tolist() == list(range(8))


@pytest.mark.parametrize("change", ["float16 table", "strided codes", "bool row", "other kernel", "few arguments",
                                    "tuple side of decode_into"])
def test_addressed_leaves_calls_of_other_types_as_they_are(change):
    args = list(_float32_args())
    kernel = kernels.decode_into
    if change == "float16 table":
        args[2] = np.zeros(256, np.int16)
    elif change == "strided codes":
        args[0] = np.arange(16, dtype=np.uint8)[::2]
    elif change == "bool row":
        args[6] = True
    elif change == "other kernel":
        kernel = kernels.decode_runs_into
    elif change == "few arguments":
        args = args[:10]
    else:
        args[5] = (np.zeros(1, np.float32),)
    assert plans.addressed(kernel, tuple(args)) is None
