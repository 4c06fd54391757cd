"""The numba kernels of float-scaled block formats (nvfp4, nvfp4_1l, block<k>_<el>_scale_<sc>[_t][_a<axis>])
give the torch reference's bits: quantize values bit for bit, encode codes, scale codes and tensor
scale exactly, on every input dtype, odd shapes, NaN/inf/zero blocks, tiny tensors and every
rounding mode (stochastic: the same generator seed gives the same bits and draws the same amount)."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.formats import ROUNDING_MODES
from lowbit.kernels import use_backend
from lowbit.testing import assert_codes_equal, assert_same_bits

pytestmark = pytest.mark.skipif("numba" not in lb.kernels.available_backends(), reason="numba is not installed")

SPECS = [
    "nvfp4", "nvfp4_1l",
    "block32_e2m1fn_scale_posit8_es1_t",     # posit scales
    "block16_int4_scale_e5m2",               # integer elements, a scale with inf
    "block8_posit8_es1_scale_e4m3fn_t",      # posit elements
    "block7_fixed8_f4_scale_e4m3fn",         # fixed-point elements, blocks of an odd size
    "block16_e3m2fn_scale_e8m23_t",          # float32 scales
    "block4_e2m3fn_scale_posit16_es1",       # 16-bit posit scales
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _both(fmt, op, x, *args, **kwargs):
    out = {}
    for backend in ("numba", "reference"):
        with use_backend(backend):
            out[backend] = getattr(fmt, op)(x, *args, **kwargs)
    return out["numba"], out["reference"]


def _assert_same_encoding(got, want, x):
    assert_codes_equal(got.codes, want.codes, x)
    assert list(got.params) == list(want.params)
    for name, value in want.params.items():
        if value.dtype.is_floating_point:
            assert_same_bits(got.params[name], value, what=name)
        else:
            assert got.params[name].dtype == value.dtype, name
            assert_codes_equal(got.params[name], value, what=name)


def _inputs(dtype: torch.dtype, shape=(6, 45), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * torch.exp(4 * torch.randn(shape, generator=g,
                                                                                         dtype=torch.float64))
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", SPECS)
def test_quantize_and_encode_give_the_reference_bits_for_every_input_dtype(spec, dtype):
    fmt = lb.parse_format(spec)
    x = _inputs(dtype)
    got, want = _both(fmt, "quantize", x)
    assert got.dtype == dtype
    assert_same_bits(got, want, x, what=f"{spec} {dtype}")
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)


@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 17), (2, 3, 33), (1, 16), (40, 1)], ids=str)
@pytest.mark.parametrize("spec", ["nvfp4", "block7_fixed8_f4_scale_e4m3fn", "block16_e2m1fn_scale_e4m3fn_t_a0"])
def test_odd_shapes_and_short_last_blocks_give_the_reference_bits(spec, shape):
    fmt = lb.parse_format(spec)
    x = _inputs(torch.float32, shape, seed=1)
    got, want = _both(fmt, "quantize", x)
    assert got.shape == x.shape
    assert_same_bits(got, want, x)
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l", "block32_e2m1fn_scale_posit8_es1_t"])
def test_nan_inf_and_zero_blocks_give_the_reference_bits(spec, dtype):
    fmt = lb.parse_format(spec)
    x = _inputs(dtype, (4, 64), seed=2)
    x[0, 3] = float("nan")
    x[1, 17] = float("inf")
    x[1, 40] = -float("inf")
    x[2, 16:32] = 0.0
    x[3, :] = -0.0
    got, want = _both(fmt, "quantize", x)
    assert_same_bits(got, want, x)
    assert bool(torch.isnan(got[0, :16]).all()) and bool(torch.isnan(got[1, 16:48]).all())
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)


def test_nonfinite_input_is_refused_on_the_fast_path_when_the_scale_has_no_nan():
    fmt = lb.parse_format("block16_e2m1fn_scale_e2m3fn")
    with use_backend("numba"), pytest.raises(ValueError, match="has no NaN"):
        fmt.quantize(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-30, 1e-36, 1e-40, 1e-44, 3e38])
@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l", "block16_e3m2fn_scale_e8m23_t"])
def test_tiny_and_huge_tensors_at_the_scale_limits_give_the_reference_bits(spec, scale, dtype):
    fmt = lb.parse_format(spec)
    x = (torch.randn(3, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * scale).to(dtype)
    got, want = _both(fmt, "quantize", x)
    assert_same_bits(got, want, x)
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)


def test_float64_inputs_beyond_float32_range_give_the_reference_bits():
    fmt = lb.parse_format("nvfp4")
    x = torch.tensor([[1e300, -3.0, 1e-300, 5e-324] + [2.0] * 12 + [4e38] * 16], dtype=torch.float64)
    got, want = _both(fmt, "quantize", x)
    assert_same_bits(got, want, x)
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)


@pytest.mark.parametrize("mode", ROUNDING_MODES)
@pytest.mark.parametrize("spec", ["nvfp4", "block8_posit8_es1_scale_e4m3fn_t", "block16_int4_scale_e5m2"])
def test_every_rounding_mode_gives_the_reference_bits_and_draws_the_same_amount(spec, mode):
    fmt = lb.parse_format(spec)
    x = _inputs(torch.float32, (5, 80), seed=4)
    gens = {b: torch.Generator().manual_seed(7) for b in ("numba", "reference")}
    for op in ("quantize", "encode_tensor"):
        res = {}
        for backend, gen in gens.items():
            with use_backend(backend):
                res[backend] = getattr(fmt, op)(x, mode, gen if mode == "stochastic" else None)
        if op == "quantize":
            assert_same_bits(res["numba"], res["reference"], x, what=f"{spec} {mode}")
        else:
            _assert_same_encoding(res["numba"], res["reference"], x)
    assert torch.equal(torch.rand(3, generator=gens["numba"]), torch.rand(3, generator=gens["reference"]))


def test_stochastic_bits_do_not_depend_on_the_thread_count():
    fmt = lb.parse_format("nvfp4")
    x = _inputs(torch.float32, (512, 256), seed=5)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with use_backend("numba"):
                results.append(fmt.quantize(x, "stochastic", torch.Generator().manual_seed(3)))
    finally:
        torch.set_num_threads(before)
    assert_same_bits(results[0], results[1], x)
    with use_backend("reference"):
        want = fmt.quantize(x, "stochastic", torch.Generator().manual_seed(3))
    assert_same_bits(results[0], want, x)


@pytest.mark.parametrize("kind", ["fresh", "in_place", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantize_out_gives_the_reference_bits_and_returns_out(dtype, kind):
    fmt = lb.parse_format("nvfp4")
    x = _inputs(dtype, (8, 48), seed=6)
    with use_backend("reference"):
        want = fmt.quantize(x)
    if kind == "in_place":
        out = x.clone()
        src = out
    elif kind == "strided":
        out = torch.empty(48, 8, dtype=dtype).t()
        src = x
    else:
        out = torch.empty_like(x)
        src = x
    with use_backend("numba"):
        got = fmt.quantize(src, out=out)
    assert got is out
    assert_same_bits(out, want, x)


def test_non_contiguous_input_gives_the_reference_bits():
    fmt = lb.parse_format("nvfp4")
    x = _inputs(torch.float32, (64, 40), seed=8).t()
    got, want = _both(fmt, "quantize", x)
    assert_same_bits(got, want, x)
    _assert_same_encoding(*_both(fmt, "encode_tensor", x), x)
