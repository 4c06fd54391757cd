"""`finite_amax`: the largest finite |x| in one pass, equal to torch's filtered max bit for bit."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels import runtime
from lowbit.kernels.amax import finite_amax

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BACKENDS = ["numba", "reference"]


def _torch_amax(x: torch.Tensor) -> float:
    finite = x[torch.isfinite(x)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _specials(dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    vals = [0.0, -0.0, info.tiny, -info.tiny / 4, info.max, -info.max, float("inf"), float("-inf"), float("nan")]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_amax_equals_torchs_filtered_max_over_random_and_special_values(dtype, backend):
    g = torch.Generator().manual_seed(1)
    for n in (1, 7, (1 << 16) - 1, (1 << 16) + 3, 3 * (1 << 16) + 11):  # across the kernel's chunk boundaries
        x = (torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 4, (n,), generator=g)).to(dtype)
        at = torch.randint(0, n, (min(n, 20),), generator=g)
        x[at] = _specials(dtype).repeat(3)[: at.numel()]
        assert finite_amax(x, backend=backend) == _torch_amax(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_largest_finite_value_wins_even_beside_infinities_and_nans(dtype, backend):
    x = _specials(dtype)
    assert finite_amax(x, backend=backend) == float(torch.finfo(dtype).max)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_finite_element_or_no_element_gives_zero(backend):
    assert finite_amax(torch.tensor([float("nan"), float("inf"), float("-inf")]), backend=backend) == 0.0
    assert finite_amax(torch.empty(0, 3), backend=backend) == 0.0
    assert finite_amax(torch.tensor([-0.0]), backend=backend) == 0.0


def test_non_contiguous_and_grad_tracking_inputs_read_their_logical_elements():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    base[0, 1] = -1000.0  # outside the strided view below
    view = base[:, ::2].t()
    assert finite_amax(view, backend="numba") == _torch_amax(view) == 22.0
    w = torch.randn(5, 5, requires_grad=True)
    assert finite_amax(w, backend="numba") == _torch_amax(w.detach())


def test_the_result_does_not_depend_on_the_thread_count():
    x = torch.randn(1 << 18, generator=torch.Generator().manual_seed(3))
    with runtime.num_threads(1):
        one = finite_amax(x, backend="numba")
    with runtime.num_threads(2):
        two = finite_amax(x, backend="numba")
    assert one == two == _torch_amax(x)


def test_a_non_floating_argument_is_refused_naming_it():
    with pytest.raises(TypeError, match="x must be a floating torch.Tensor"):
        finite_amax(torch.arange(3))
    with pytest.raises(TypeError, match="x must be a floating torch.Tensor"):
        finite_amax([1.0, 2.0])  # type: ignore[arg-type]
