"""Scaled-table decoding of Linear weights (lowbit.storage._block_rows_numba): block formats whose
rows span several blocks (one lookup per byte / element in tables of already-scaled values) and
8-bit codes with a scale per row or tensor, bit for bit the torch reference decoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.kernels import available_backends, use_backend
from lowbit.storage import pack_

pytestmark = pytest.mark.skipif("numba" not in available_backends(), reason="the fused decoders are numba's")

BLOCK_SPECS = ["mxfp4_e2m1fn", "nvfp4", "nvfp4_1l", "mxfp8_e4m3fn", "mxfp8_e5m2", "mxint8"]
# (out, in): whole blocks; a shorter last block (80 = 2 x 32 + 16; 40 = 2 x 16 + 8 and 32 + 8)
SHAPES = [(6, 96), (5, 80), (3, 40), (2, 1536)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)  # NaNs compare by their bits


def _packed_linear(spec: object, out_features: int, in_features: int, seed: int = 0) -> nn.Module:
    """A Linear packed in ``spec`` whose weights span 2^-12 .. 2^12 along each row (many scale codes)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_features, out_features)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_features, in_features, generator=g)
                         * torch.logspace(-12, 12, in_features, base=2.0)[torch.randperm(in_features, generator=g)])
    return pack_(copy.deepcopy(lb.quantize_(lin, {"weight": spec})))


def _reference(packed: nn.Module) -> torch.Tensor:
    with use_backend("reference"):
        return packed.packed_weight.decode(torch.float32)


def _takes_the_row_path(packed: nn.Module) -> bool:
    from lowbit.storage._block_rows_numba import block_rows_apply

    _, _, bits, _, _, _, blocks, length = packed._table(torch.float32).fast
    return bool(block_rows_apply(bits, blocks[4], length, packed._packed_shape.numel(), blocks[5]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", BLOCK_SPECS)
def test_block_rows_decode_to_the_reference_bit_for_bit(spec: str, shape: "tuple[int, int]") -> None:
    packed = _packed_linear(spec, *shape)
    assert _takes_the_row_path(packed)
    reference = _reference(packed)
    assert torch.equal(packed.weight, reference)
    with torch.no_grad():  # the staging buffer, twice (the second call reuses the prepared call)
        assert torch.equal(packed._lowbit_weight(), reference)
        assert torch.equal(packed._lowbit_weight(), reference)


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4_e2m1fn", "mxfp8_e4m3fn"])
def test_block_rows_forward_equals_the_linear_of_the_quantized_weight(spec: str) -> None:
    torch.manual_seed(5)
    lin = nn.Linear(384, 24)
    expected_weight = lb.parse_format(spec).quantize(lin.weight.detach())
    packed = pack_(copy.deepcopy(lin), spec)
    packed.tile_bytes = 0
    x = torch.randn(3, 384)
    with torch.inference_mode():
        assert torch.equal(packed(x), torch.nn.functional.linear(x, expected_weight, lin.bias))


def test_nvfp4_rows_use_the_tensor_scale_times_the_block_scale_rounded_first() -> None:
    # the reference multiplies each element by fl(g · s), not fl(fl(e · s) · g): a tensor scale with
    # a long significand makes the two differ, and the decode must follow the reference
    packed = _packed_linear("nvfp4", 8, 64, seed=1)
    g = 1.0 + 2.0 ** -23 * 4093
    with torch.no_grad():
        packed.weight_param_tensor_scale.fill_(1.0)
        unit = _reference(packed)  # e · s, exact (2 and 4 significant bits)
        packed.weight_param_tensor_scale.fill_(g)
        reference = _reference(packed)
        decoded = packed._lowbit_weight()
    assert not torch.equal(reference, unit * torch.tensor(g, dtype=torch.float32))  # the orders differ here
    assert torch.equal(decoded, reference)


def test_a_nan_block_scale_decodes_its_block_to_nan_as_the_reference() -> None:
    packed = _packed_linear("mxfp4_e2m1fn", 4, 96)
    with torch.no_grad():
        packed.weight_param_scale_e8m0.view(-1)[5] = 255  # the NaN scale: row 1, block 2
        reference = _reference(packed)
        assert torch.isnan(reference[1, 64:96]).all() and not torch.isnan(reference[1, :64]).any()
        assert torch.equal(_bits(packed._lowbit_weight()), _bits(reference))


def test_nan_and_negative_nvfp4_block_scales_decode_as_the_reference() -> None:
    packed = _packed_linear("nvfp4", 4, 64)
    assert _takes_the_row_path(packed)
    with torch.no_grad():
        packed.weight_param_scale_codes.view(-1)[6] = 0x7F  # E4M3 NaN: row 1, block 2
        packed.weight_param_scale_codes.view(-1)[9] |= 0x80  # a negative scale: row 2, block 1
        reference = _reference(packed)
        assert torch.isnan(reference[1, 32:48]).all() and (reference[2, 16:32] * packed.weight[2, 16:32] >= 0).all()
        assert torch.equal(_bits(packed._lowbit_weight()), _bits(reference))


@pytest.mark.parametrize("tensor_scale", [0.0, -2.0, float("inf"), float("nan")])
def test_a_tensor_scale_that_is_not_finite_and_positive_is_rejected(tensor_scale: float) -> None:
    packed = _packed_linear("nvfp4", 4, 64)
    with torch.no_grad():
        packed.weight_param_tensor_scale.fill_(tensor_scale)
        with pytest.raises(ValueError, match="scale"):
            packed(torch.ones(1, 64))


INT8_CHANNEL = {"format": "int8", "scaling": "absmax", "granularity": "channel"}
INT8_TENSOR = {"format": "int8", "scaling": "absmax"}


@pytest.mark.parametrize("spec", [INT8_CHANNEL, INT8_TENSOR, {"format": "e4m3fn", "scaling": "absmax",
                                                             "granularity": "channel"}])
@pytest.mark.parametrize("shape", [(5, 256), (3, 300), (4, 1536), (7, 255)])
def test_8_bit_codes_with_row_scales_decode_to_the_reference_bit_for_bit(spec: object, shape: "tuple[int, int]"
                                                                         ) -> None:
    from lowbit.storage._block_rows_numba import MIN_SCALED_ROW, scaled_rows_apply

    torch.manual_seed(shape[1])
    sim = lb.quantize_(nn.Linear(shape[1], shape[0]), {"weight": spec})
    with torch.no_grad():  # channels of very different magnitudes: every row its own scale
        sim.weight.mul_(torch.logspace(-6, 6, shape[0], base=2.0).reshape(-1, 1))
    packed = pack_(copy.deepcopy(sim))
    _, _, bits, _, _, _, _, row = packed._table(torch.float32).fast
    assert bool(scaled_rows_apply(bits, row, shape[0] * shape[1])) == (row >= MIN_SCALED_ROW)
    expected = sim._lowbit_weight()
    assert torch.equal(_reference(packed), expected)
    assert torch.equal(packed.weight, expected)
    with torch.no_grad():
        assert torch.equal(packed._lowbit_weight(), expected)
        assert torch.equal(packed._lowbit_weight(), expected)


def test_scaled_rows_kernel_multiplies_each_row_by_its_own_scale() -> None:
    from lowbit.storage._block_rows_numba import decode_scaled_rows

    values = np.arange(256, dtype=np.float32) - 128.0
    data = np.arange(2 * 300, dtype=np.int64).astype(np.uint8)
    scale = np.array([0.1, 3.0], dtype=np.float32)
    out = np.empty(600, dtype=np.float32)
    decode_scaled_rows(data, values.view(np.int32), scale, 300, 600, out.view(np.int32))
    expected = values[data] * np.repeat(scale, 300)  # float32 products
    assert np.array_equal(out.view(np.int32), expected.view(np.int32))


@pytest.mark.parametrize("spec", ["mxfp8_e4m3fn", "mxfp4_e2m1fn"])
def test_a_scale_code_the_format_rejects_is_reported_only_where_a_block_uses_it(spec: str) -> None:
    # the usual E8M0 scales accept all 256 codes; a format that accepts fewer marks them in ``valid``:
    # the kernel must then report a used one (True: the caller runs the reference decoder, which raises)
    from lowbit.storage._decode_numba import decode_blocks_into

    packed = _packed_linear(spec, 4, 96)
    _, data, bits, table, wide, use_wide, blocks, length = packed._table(torch.float32).fast
    codes, factors, valid, tensor_scale, k, products = blocks
    out = torch.empty(4 * 96)
    views = (out.view(torch.int32).numpy(), out.view(torch.int64).numpy(), out.numpy())

    def decode(accepted: np.ndarray) -> bool:
        return bool(decode_blocks_into(data, bits, table, wide, use_wide,
                                       (codes, factors, accepted, tensor_scale, k, products), length, 4 * 96, *views))

    used = set(codes.tolist())
    unused = valid.copy()
    unused[next(c for c in range(256) if c not in used)] = 0
    assert not decode(unused)
    assert torch.equal(out.view(4, 96), _reference(packed))
    rejected = valid.copy()
    rejected[int(codes[5])] = 0
    assert decode(rejected)
