"""Shapes, strides, dtypes, out=, code dtypes and devices."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_codes_equal, assert_floats_identical

SPECS = ["posit8_es2", "posit16_es1", "e4m3fn", "e5m10", "e2m1fn", "fixed8_f4", "int8n", "posit32_es2", "e8m23"]


def _sample(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)


# ----------------------------------------------------------------------------- shapes
def test_zero_dim_tensor_gives_zero_dim_code_and_value():
    fmt = lb.parse_format("posit8_es2")
    x = torch.tensor(1.0)
    code = fmt.encode(x)
    assert code.shape == () and code.dtype == torch.uint8 and int(code) == 0x40
    q = fmt.quantize(torch.tensor(0.3))
    assert q.shape == () and q.dtype == torch.float32 and float(q) == 0.3125
    d = fmt.decode(torch.tensor(0x40))
    assert d.shape == () and float(d) == 1.0


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0, 2)], ids=str)
def test_empty_tensors_keep_their_shape_in_encode_decode_quantize(spec, shape):
    fmt = lb.parse_format(spec)
    x = torch.empty(shape)
    codes = fmt.encode(x)
    assert codes.shape == shape and codes.dtype == fmt.code_dtype
    assert fmt.quantize(x).shape == shape
    assert fmt.decode(codes).shape == shape


@pytest.mark.parametrize("spec", SPECS)
def test_three_d_tensor_equals_elementwise_flat_result(spec):
    fmt = lb.parse_format(spec)
    x = _sample((2, 3, 4))
    codes = fmt.encode(x)
    assert codes.shape == (2, 3, 4)
    assert_codes_equal(codes.reshape(-1), fmt.encode(x.reshape(-1)), x)
    assert_floats_identical(fmt.quantize(x).reshape(-1), fmt.quantize(x.reshape(-1)), x)
    assert_floats_identical(fmt.decode(codes).reshape(-1), fmt.decode(codes.reshape(-1)), x)


def test_known_values_in_a_3d_tensor():
    x = torch.tensor([[[0.3, 100.0], [-1e-9, 1.0]], [[-1.0, 2.0], [0.0, float("nan")]]])
    fmt = lb.parse_format("posit8_es2")
    # 0.3 -> 0.3125 (0x32), 100 -> 96 (0x6a), -1e-9 -> -minpos (0xff), 2 -> 0x48, NaN -> NaR (0x80)
    expected = torch.tensor([[[0x32, 0x6A], [0xFF, 0x40]], [[0xC0, 0x48], [0x00, 0x80]]])
    assert_codes_equal(fmt.encode(x), expected, x)


# ----------------------------------------------------------------------------- strides
def _noncontiguous_views():
    base = _sample((6, 8), seed=3)
    yield "transposed", base.t()
    yield "column_slice", base[:, ::2]
    yield "row_step", base[::3]
    yield "expanded", base[:1].expand(4, 8)
    yield "permuted_3d", _sample((2, 3, 4), seed=4).permute(2, 0, 1)
    yield "diagonal", base.diagonal()
    yield "unfold", _sample((20,), seed=5).unfold(0, 4, 3)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name,view", list(_noncontiguous_views()), ids=[n for n, _ in _noncontiguous_views()])
def test_non_contiguous_inputs_give_the_contiguous_result_and_are_not_modified(spec, name, view):
    fmt = lb.parse_format(spec)
    assert not view.is_contiguous()
    before = view.clone()
    dense = view.contiguous()
    assert_codes_equal(fmt.encode(view), fmt.encode(dense), dense)
    assert_floats_identical(fmt.quantize(view), fmt.quantize(dense), dense)
    assert_floats_identical(view, before)
    codes = fmt.encode(dense)
    codes_view = codes.t() if codes.dim() == 2 else codes
    assert_floats_identical(fmt.decode(codes_view), fmt.decode(codes_view.contiguous()))


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "spec,xs,want",
    [
        ("posit8_es2", [0.3, 100.0, -3.0], [0.3125, 96.0, -3.0]),
        ("e4m3fn", [0.3, 100.0, -3.0], [0.3125, 96.0, -3.0]),
        ("int8", [2.5, -100.25, 3.0], [2.0, -100.0, 3.0]),
        ("e2m1fn", [0.3, 100.0, -2.5], [0.5, 6.0, -2.0]),
    ],
)
def test_every_float_dtype_is_accepted_and_kept(dtype, spec, xs, want):
    fmt = lb.parse_format(spec)
    x = torch.tensor(xs, dtype=torch.float64).to(dtype)
    q = fmt.quantize(x)
    assert q.dtype == dtype
    assert_floats_identical(q, torch.tensor(want, dtype=torch.float64).to(dtype), x)


@pytest.mark.parametrize(
    "spec,dtype",
    [
        ("posit8_es2", torch.uint8), ("e4m3fn", torch.uint8), ("e2m1fn", torch.uint8), ("int4", torch.uint8),
        ("uint8", torch.uint8), ("posit9_es2", torch.int16), ("posit15_es1", torch.int16), ("fixed12_f4", torch.int16),
        ("e5m6", torch.int16), ("posit16_es1", torch.int32), ("e5m10", torch.int32), ("e8m7", torch.int32),
        ("fixed16_f8", torch.int32), ("posit31_es2", torch.int32), ("int31", torch.int32), ("posit32_es2", torch.int64),
        ("e8m23", torch.int64), ("int32", torch.int64), ("uint32", torch.int64),
    ],
)
def test_encode_returns_the_documented_code_dtype(spec, dtype):
    fmt = lb.parse_format(spec)
    x = torch.tensor([-1.5, 0.0, 1.0, 1e30, -1e30])
    codes = fmt.encode(x)
    assert codes.dtype == dtype
    c = codes.to(torch.int64)
    assert bool(((c >= 0) & (c < (1 << fmt.bits))).all()), "codes are unsigned bit patterns even in signed dtypes"


def test_high_codes_of_16_and_32_bit_formats_are_non_negative_in_their_code_dtype():
    assert int(lb.parse_format("posit16_es1").encode(torch.tensor([-1.0]))) == 0xC000
    assert int(lb.parse_format("posit32_es2").encode(torch.tensor([-1.0]))) == 0xC0000000
    assert int(lb.parse_format("e8m23").encode(torch.tensor([-1.0]))) == 0xBF800000
    assert int(lb.parse_format("e5m10").encode(torch.tensor([-1.0]))) == 0xBC00
    assert int(lb.parse_format("uint32").encode(torch.tensor([1e10], dtype=torch.float64))) == 0xFFFFFFFF


@pytest.mark.parametrize(
    "code_dtype",
    [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64],
    ids=str,
)
def test_decode_accepts_every_integer_dtype(code_dtype):
    fmt = lb.parse_format("posit8_es2")
    codes = torch.tensor([0, 0x40, 0x48, 0x7F], dtype=code_dtype)  # fits every integer dtype
    want = torch.tensor([0.0, 1.0, 2.0, 2.0**24])
    assert_floats_identical(fmt.decode(codes), want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_decode_dtype_argument_sets_the_result_dtype(dtype):
    fmt = lb.parse_format("e4m3fn")
    codes = torch.tensor([0x38, 0xB8, 0x7E, 0x01, 0x7F, 0x80], dtype=torch.uint8)
    got = fmt.decode(codes, dtype=dtype)
    assert got.dtype == dtype
    want = torch.tensor([1.0, -1.0, 448.0, 2.0**-9, float("nan"), -0.0], dtype=torch.float64).to(dtype)
    assert_floats_identical(got, want, codes)


def test_decode_to_float16_saturates_instead_of_overflowing_and_never_flushes_to_zero():
    # semantics.md, output precision: finite never becomes inf, nonzero never becomes 0
    fmt = lb.parse_format("posit16_es1")
    codes = torch.tensor([0x7FFF, 0x0001, 0x8001, 0xFFFF])  # ±maxpos = ±2^28, ±minpos = ±2^-28
    want = torch.tensor([65504.0, 2.0**-24, -65504.0, -(2.0**-24)], dtype=torch.float16)
    assert_floats_identical(fmt.decode(codes, dtype=torch.float16), want, codes)


def test_inputs_that_require_grad_are_accepted_and_left_alone():
    fmt = lb.parse_format("e4m3fn")
    x = torch.tensor([0.3, 100.0], requires_grad=True)
    assert_floats_identical(fmt.quantize(x).detach(), torch.tensor([0.3125, 96.0]))
    assert_codes_equal(fmt.encode(x), [0x2A, 0x6C])
    assert x.grad is None and x.requires_grad


def test_values_returns_a_fresh_tensor_each_call():
    fmt = lb.parse_format("e2m1fn")
    v = fmt.values()
    v.zero_()
    assert float(fmt.values()[-1]) == 6.0


# ----------------------------------------------------------------------------- out=
@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "int8"])
def test_out_argument_receives_the_result_and_is_returned(spec):
    fmt = lb.parse_format(spec)
    x = _sample((5, 7))
    out = torch.full_like(x, 123.0)
    res = fmt.quantize(x, out=out)
    assert res is out
    assert_floats_identical(out, fmt.quantize(x), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_out_equal_to_x_quantizes_in_place(dtype):
    fmt = lb.parse_format("posit8_es2")
    x = torch.tensor([0.3, 100.0, -1e-7, 1.0], dtype=dtype)  # -1e-7 is nonzero in float16 too
    ptr = x.data_ptr()
    res = fmt.quantize(x, out=x)
    assert res is x and x.data_ptr() == ptr
    want = torch.tensor([0.3125, 96.0, -(2.0**-24), 1.0], dtype=torch.float64).to(dtype)
    assert_floats_identical(x, want)


def test_out_may_be_a_non_contiguous_view_and_only_it_is_written():
    fmt = lb.parse_format("e4m3fn")
    x = torch.tensor([[0.3, 100.0], [3.3, -7.1]])
    big = torch.zeros(2, 4)
    out = big[:, ::2]
    fmt.quantize(x, out=out)
    assert_floats_identical(big, torch.tensor([[0.3125, 0.0, 96.0, 0.0], [3.25, 0.0, -7.0, 0.0]]))


def test_in_place_on_a_transposed_view_writes_through_to_the_base():
    fmt = lb.parse_format("int8")
    base = torch.tensor([[1.4, 2.6], [-3.5, 4.5]])
    view = base.t()
    fmt.quantize(view, out=view)
    assert_floats_identical(base, torch.tensor([[1.0, 3.0], [-4.0, 4.0]]))


# ----------------------------------------------------------------------------- devices
def test_results_stay_on_the_cpu():
    fmt = lb.parse_format("posit8_es2")
    x = _sample((4,))
    assert fmt.encode(x).device.type == "cpu"
    assert fmt.quantize(x).device.type == "cpu"
    assert fmt.decode(fmt.encode(x)).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "e5m10", "fixed8_f4"])
def test_cuda_tensors_stay_on_cuda_and_match_cpu_bit_for_bit(spec):
    fmt = lb.parse_format(spec)
    x = _sample((1000,))
    xc = x.cuda()
    codes = fmt.encode(xc)
    assert codes.device.type == "cuda"
    assert_codes_equal(codes.cpu(), fmt.encode(x), x)
    q = fmt.quantize(xc)
    assert q.device.type == "cuda"
    assert_floats_identical(q.cpu(), fmt.quantize(x), x)
    assert fmt.decode(codes).device.type == "cuda"
