"""``out=`` that overlaps the input or requires grad, meta tensors, and the reference path's
chunks: both backends give the same, correct answer (or the same clear error).

The expected values always come from quantizing a separate copy of the input, so an ``out=``
that is written while it is still being read shows up as wrong bits.
"""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.formats import base
from lowbit.testing import assert_codes_equal, assert_same_bits

BACKENDS = ["numba", "reference"]
SPECS = ["posit8_es2", "posit32_es2", "e4m3fn", "e8m23", "fixed8_f4"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _data(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 4).to(dtype)


# ---------------------------------------------------------------------------------- overlapping out=
OVERLAPS = {
    # (input view, out view) of one buffer b
    "out one ahead": (lambda b: b[:-1], lambda b: b[1:]),
    "out one behind": (lambda b: b[1:], lambda b: b[:-1]),
    "out half ahead": (lambda b: b[: b.numel() // 2 + 7], lambda b: b[b.numel() // 2 - 7:][: b.numel() // 2 + 7]),
    "interleaved": (lambda b: b[0::2], lambda b: b[1::2]),
    "reversed 2-d": (lambda b: b[:-256].reshape(-1, 256), lambda b: b[256:].reshape(-1, 256)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "e8m23"])
@pytest.mark.parametrize("layout", list(OVERLAPS))
def test_out_overlapping_the_input_gives_the_values_of_a_separate_input(layout, spec, dtype, backend):
    fmt = lb.parse_format(spec)
    make_x, make_out = OVERLAPS[layout]
    b = _data(65536 + 256, dtype)
    x, out = make_x(b), make_out(b)
    want = fmt.quantize(x.clone(), backend="reference")
    got = fmt.quantize(x, out=out, backend=backend)
    assert got is out
    assert_same_bits(out, want, what=f"{layout} {spec} {dtype} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_out_equal_to_x_stays_in_place(dtype, backend):
    fmt = lb.parse_format("posit8_es2")
    x = _data(70_000, dtype)
    want = fmt.quantize(x.clone(), backend="reference")
    ptr = x.data_ptr()
    assert fmt.quantize(x, out=x, backend=backend) is x
    assert x.data_ptr() == ptr
    assert_same_bits(x, want)


# ---------------------------------------------------------------------------------- out= requiring grad
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_requiring_grad_is_refused_while_autograd_records_on_both_backends(backend):
    fmt = lb.parse_format("posit8_es2")
    x = _data(100, torch.float32)
    out = torch.zeros(100, requires_grad=True)
    with pytest.raises(ValueError, match="out must not require grad"):
        fmt.quantize(x, out=out, backend=backend)
    w = _data(100, torch.float32).requires_grad_()
    with pytest.raises(ValueError, match="out must not require grad"):
        fmt.quantize(w, out=w, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_requiring_grad_is_written_under_no_grad_on_both_backends(backend):
    fmt = lb.parse_format("posit8_es2")
    w = _data(70_000, torch.float32).requires_grad_()
    want = fmt.quantize(w.detach().clone(), backend="reference")
    with torch.no_grad():
        assert fmt.quantize(w, out=w, backend=backend) is w
    assert w.requires_grad and w.grad_fn is None
    assert_same_bits(w.detach(), want)
    other = torch.zeros(70_000, requires_grad=True)
    with torch.no_grad():
        fmt.quantize(w.detach(), out=other, backend=backend)
    assert_same_bits(other.detach(), want)


# ---------------------------------------------------------------------------------- meta tensors
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", SPECS)
def test_meta_tensors_give_meta_results_of_the_right_shape_and_dtype(spec, dtype):
    fmt = lb.parse_format(spec)
    x = torch.empty(3, 5, dtype=dtype, device="meta")
    for mode in ("nearest_even", "stochastic"):
        gen = torch.Generator().manual_seed(1) if mode == "stochastic" else None
        q = fmt.quantize(x, mode, gen)
        assert (q.device.type, q.shape, q.dtype) == ("meta", x.shape, dtype)
        out = torch.empty_like(x)
        assert fmt.quantize(x, mode, gen, out=out) is out
        codes = fmt.encode(x, mode, gen)
        assert (codes.device.type, codes.shape, codes.dtype) == ("meta", x.shape, fmt.code_dtype)
    values = fmt.decode(torch.empty(4, 2, dtype=torch.int64, device="meta"), dtype)
    assert (values.device.type, values.shape, values.dtype) == ("meta", (4, 2), dtype)


# ---------------------------------------------------------------------------------- reference chunks
@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(base, "REFERENCE_CHUNK", 1000)
    return 1000


@pytest.mark.parametrize("mode", ["nearest_even", "stochastic", "floor"])
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n", [999, 1000, 1001, 4500])
def test_the_chunked_reference_equals_the_one_pass_numba_kernel_across_chunk_boundaries(small_chunks, n, spec, mode):
    fmt = lb.parse_format(spec)
    for dtype in DTYPES:
        x = _data(n, dtype, seed=n)
        gen = (lambda: torch.Generator().manual_seed(5)) if mode == "stochastic" else (lambda: None)
        assert_same_bits(fmt.quantize(x, mode, gen(), backend="reference"),
                         fmt.quantize(x, mode, gen(), backend="numba"), x, what=f"{spec} {dtype} quantize")
        codes = fmt.encode(x, mode, gen(), backend="reference")
        assert_codes_equal(codes, fmt.encode(x, mode, gen(), backend="numba"), x)
        assert_same_bits(fmt.decode(codes, dtype, backend="reference"), fmt.decode(codes, dtype, backend="numba"))
        inplace = x.clone()
        fmt.quantize(inplace, mode, gen(), out=inplace, backend="reference")
        assert_same_bits(inplace, fmt.quantize(x, mode, gen(), backend="numba"))


def test_a_bad_code_in_a_later_chunk_is_still_refused(small_chunks):
    fmt = lb.parse_format("int8n")
    codes = torch.zeros(5000, dtype=torch.int64)
    codes[4321] = 128  # int8n does not use -128
    with pytest.raises(ValueError, match="got 128"):
        fmt.decode(codes, backend="reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("spec", ["nvfp4", "nvfp4_1l", "mxfp4_e2m1fn", "block16_posit8_es1_scale_e4m3fn", "nvfp4_r"])
@pytest.mark.parametrize("layout", list(OVERLAPS))
def test_block_format_out_overlapping_the_input_gives_the_values_of_a_separate_input(layout, spec, dtype):
    from lowbit.kernels import use_backend

    fmt = lb.parse_format(spec)
    make_x, make_out = OVERLAPS[layout]
    b = _data(65536 + 256, dtype)
    x, out = make_x(b), make_out(b)
    with use_backend("reference"):
        want = fmt.quantize(x.clone())
    got = fmt.quantize(x, out=out)  # the fused kernels (auto backend on the CPU)
    assert got is out
    assert_same_bits(out, want, what=f"{layout} {spec} {dtype}")
