"""The histogram rule's statistic: ⌊log2|v|⌋ of every nonzero finite value, binned exactly.

The oracle is Python's own exact integer arithmetic on each value (`fractions.Fraction`), so the
float32 exponent-field path, its subnormal branch and the frexp path of other dtypes are all
checked against something that is not lowbit's code.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest
import torch

from lowbit.simulate.scaling import format_centre, histogram_exponent


def _floor_log2(v: float) -> int:
    f = abs(Fraction(v))
    e = f.numerator.bit_length() - f.denominator.bit_length()
    return e if Fraction(2) ** e <= f else e - 1


def _oracle(x: torch.Tensor, fmt: str) -> int:
    bins = Counter(_floor_log2(v) for v in x.double().tolist() if v != 0 and math.isfinite(v))
    if not bins:
        return 0
    top = max(bins.values())
    mode = max(e for e, c in bins.items() if c == top)
    return math.floor(mode + 0.5 - format_centre(fmt))


def _cases(dtype: torch.dtype) -> "list[torch.Tensor]":
    g = torch.Generator().manual_seed(7)
    cases = [(torch.randn(3000, generator=g, dtype=torch.float64) * s).to(dtype)
             for s in (1e-44, 1e-41, 1e-38, 1e-6, 1.0, 1e20, 1e37)]
    cases += [torch.tensor([0.0, float("inf"), -float("inf"), float("nan")], dtype=dtype),
              torch.tensor([], dtype=dtype), torch.zeros(5, dtype=dtype)]
    if dtype == torch.float32:  # subnormals outnumbering normals, and the tie rule across the boundary
        cases += [torch.tensor([1e-45] * 5 + [1.0] * 3), torch.tensor([1.2e-38, 1.1e-38, 2.0, 3.0]),
                  torch.tensor([-3.4e38] * 3 + [1e-45] * 3)]
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["posit8_es2", "e4m3fn", "e5m2"])
def test_histogram_exponent_equals_the_exact_floor_log2_histogram(dtype: torch.dtype, fmt: str) -> None:
    for x in _cases(dtype):
        assert histogram_exponent(x, fmt) == _oracle(x, fmt), (x, fmt)


def test_histogram_exponent_reads_non_contiguous_and_multi_dimensional_tensors() -> None:
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)) * 1e-3
    assert histogram_exponent(x.T, "posit8_es2") == _oracle(x.reshape(-1), "posit8_es2")
    assert histogram_exponent(x[:, ::3], "e4m3fn") == _oracle(x[:, ::3].reshape(-1), "e4m3fn")
