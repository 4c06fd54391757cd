"""`same_bits`: equal bit patterns (not equal values), whichever path (memcmp or torch) runs."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels.equality import same_bits

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", [0, 1, 4097, -1])
def test_one_flipped_bit_anywhere_makes_tensors_differ(dtype: torch.dtype, where: int) -> None:
    a = torch.randn(3 * 4099, generator=torch.Generator().manual_seed(0)).to(dtype)
    b = a.clone()
    assert same_bits(a, b)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    b.view(ints)[where] ^= 1  # the lowest bit of one element
    assert not same_bits(a, b) and not same_bits(b, a)


def test_signed_zeros_differ_and_identical_nans_agree() -> None:
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    nan = torch.tensor([float("nan")])
    assert same_bits(nan, nan.clone())
    other_payload = nan.clone()
    other_payload.view(torch.int32)[0] += 1
    assert not same_bits(nan, other_payload)


def test_shape_dtype_and_non_float_tensors_never_match() -> None:
    a = torch.arange(6, dtype=torch.float32)
    assert not same_bits(a, a.reshape(2, 3))
    assert not same_bits(a, a.double())
    assert not same_bits(a.int(), a.int())
    assert same_bits(torch.empty(0), torch.empty(0))


def test_strided_negated_and_conjugated_views_compare_their_values_bits() -> None:
    base = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    assert same_bits(base.t(), base.t().contiguous())  # strided: the torch path
    assert not same_bits(base.t(), base.contiguous())
    z = torch.randn(5, dtype=torch.complex64)
    assert not same_bits(z.conj(), z)  # complex: not a float tensor
    neg = torch.randn(6)._neg_view()
    assert same_bits(neg, neg.clone()) and not same_bits(neg, -neg.clone())
