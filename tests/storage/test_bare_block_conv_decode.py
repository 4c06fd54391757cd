"""Bare block specs on conv weights: blocks along the last axis (the kernel width), so a 1x1 conv
gets one scale per element and a 3x3 / 5x5 conv one per row of 3 / 5. Every decode path of a
packed layer (the staging kernel call under ``no_grad`` / ``inference_mode``, a weight of its own
under autograd, other compute dtypes, the torch backend) gives the reference decoder's bits, and
the one-scale-per-element kernel (`_decode_numba._decode_element_blocks`) equals a numpy float32
oracle on every scale code and every element code."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import lowbit as lb

SPECS = ["mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp8_e4m3fn", "mxint8", "nvfp4", "nvfp4_1l",
         "block16_e2m1fn_scale_posit8_es1_t", "block32_int4_scale_e8m0fnu"]
#: (out, in / groups, kh, kw), groups: last axis 1 (pointwise; an odd count), 3, 5 (depthwise,
#: grouped), and rows longer than a block with a shorter last one (33 = 32 + 1, 17 = 16 + 1)
CONVS = [((6, 40, 1, 1), 1), ((7, 5, 1, 1), 1), ((24, 1, 3, 3), 24), ((8, 2, 5, 5), 4), ((3, 2, 1, 33), 1),
         ((4, 3, 2, 17), 1)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of ``t`` (NaNs compare by their bits, not as unequal)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, NaN for NaN (the torch casts to 16 bits need not keep a NaN's sign and payload)."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(_bits(a.nan_to_num()), _bits(b.nan_to_num()))


def _conv(shape: "tuple[int, int, int, int]", groups: int, seed: int = 0) -> nn.Conv2d:
    """A conv of weight ``shape`` with weights over many binades: zeros, tiny (E8M0 scale code 0's
    range), huge, inf and NaN (NaN scales) among them."""
    out_ch, per_group, kh, kw = shape
    conv = nn.Conv2d(per_group * groups, out_ch, (kh, kw), groups=groups, bias=False)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * torch.exp2(torch.randint(-20, 20, shape, generator=g))
    flat = w.view(-1)
    flat[:6] = torch.tensor([0.0, -0.0, 3e-38, -1e-39, 1e37, -2.5], dtype=torch.float64)
    flat[-3:] = torch.tensor([float("inf"), float("nan"), 0.75], dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w.to(torch.float32))
    return conv


def _packed(spec: str, shape: "tuple[int, int, int, int]", groups: int) -> nn.Module:
    return lb.pack_(nn.Sequential(_conv(shape, groups)), spec)[0]


@pytest.mark.parametrize("shape,groups", CONVS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_decode_path_of_a_bare_block_conv_weight_gives_the_reference_bits(spec, shape, groups):
    layer = _packed(spec, shape, groups)
    reference = layer.packed_weight.decode(torch.float32)
    fmt = lb.parse_format(spec)
    assert torch.equal(_bits(reference), _bits(fmt.quantize(_conv(shape, groups).weight.detach())))
    assert torch.equal(_bits(layer.weight), _bits(reference))  # a tensor of its own (autograd)
    with torch.no_grad():  # the staging buffer, through the prepared kernel call (first and steady state)
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
    with torch.inference_mode():
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))


@pytest.mark.parametrize("shape,groups", CONVS)
@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "mxfp8_e4m3fn", "nvfp4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_compute_dtypes_decode_bare_block_conv_weights_to_the_reference_bits(spec, shape, groups, dtype):
    layer = _packed(spec, shape, groups).to(dtype)  # the torch decode path: element values times row factors
    reference = layer.packed_weight.decode(dtype)
    assert _same(layer.weight, reference)
    with torch.inference_mode():
        assert _same(layer._lowbit_weight(), reference)


@pytest.mark.parametrize("shape,groups", CONVS)
@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "mxfp8_e4m3fn", "nvfp4"])
def test_the_torch_backend_decodes_bare_block_conv_weights_to_the_reference_bits(spec, shape, groups):
    from lowbit.kernels import use_backend

    with use_backend("reference"):
        layer = _packed(spec, shape, groups)
        reference = layer.packed_weight.decode(torch.float32)
        assert torch.equal(_bits(layer.weight), _bits(reference))
        with torch.inference_mode():
            assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "nvfp4", "mxfp8_e4m3fn"])
def test_a_packed_pointwise_conv_with_a_bare_block_spec_runs_as_the_simulated_one(spec):
    conv = nn.Conv2d(48, 16, 1, bias=True)
    sim = lb.quantize_(nn.Sequential(copy.deepcopy(conv)), {"weight": spec})
    packed = lb.pack_(nn.Sequential(copy.deepcopy(conv)), spec)
    x = torch.randn(2, 48, 5, 5, generator=torch.Generator().manual_seed(3))
    y = sim(x)
    assert torch.equal(packed(x), y)
    with torch.inference_mode():
        assert torch.equal(packed(x), y)
        assert torch.equal(packed(x), y)


# -- the one-scale-per-element kernel against a numpy oracle --------------------------------------

def _e2m1_values() -> np.ndarray:
    mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    return np.concatenate([mags, -mags])


def _pow2_factors() -> np.ndarray:
    """2^(c - 127) for every E8M0 code c, NaN for 255 (float32; 2^-127 subnormal)."""
    f = np.ldexp(np.float64(1.0), np.arange(256) - 127)
    f[255] = np.nan
    return f.astype(np.float32)


def _kernel_arrays(bits: int, values: np.ndarray, elements: np.ndarray, n: int) -> "tuple[np.ndarray, ...]":
    """The packed codes, value table (int32 bits), 4-bit pair table, output (one element more:
    the kernel writes the first n only) and its int64 view that the decode kernels take."""
    from lowbit.storage.bitpack import pack_bits

    data = pack_bits(torch.from_numpy(elements), bits).numpy()
    wide = torch.from_numpy(values)[(torch.arange(256).unsqueeze(1) >> torch.tensor([0, 4])) & 15]
    wide = wide.contiguous().view(torch.int64).reshape(-1).numpy() if bits == 4 else np.zeros(1, np.int64)
    out = np.full(n + 1, 12345.0, dtype=np.float32)
    return data, values.view(np.int32), wide, out, out[: (n + 1) // 2 * 2].view(np.int64)


def _element_blocks(bits: int, values: np.ndarray, factors: np.ndarray, g: "float | None", n: int, seed: int = 0
                    ) -> "tuple[np.ndarray, np.ndarray]":
    """(kernel output, oracle) for ``n`` random element codes, each with its own random scale
    code (every code 0..255 among them)."""
    from lowbit.storage import _decode_numba as kernels

    rng = np.random.default_rng(seed)
    elements = rng.integers(0, 1 << bits, n)
    scales = rng.integers(0, 256, n).astype(np.uint8)
    scales[:256] = np.arange(256)
    data, table, wide, out, pairs = _kernel_arrays(bits, values, elements, n)
    scaled = g is not None
    kernels._decode_element_blocks(data, bits, table, wide, bits == 4, scales, factors,
                                   np.float32(g if scaled else 1.0), scaled, n, out.view(np.int32), pairs, out)
    assert out[n] == 12345.0
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN products are part of the oracle
        f = factors[scales] if g is None else np.float32(g) * factors[scales]
        return out[:n], values[elements] * f


@pytest.mark.parametrize("n", [1, 7, 256, 4096 * 2 + 3, 4096 * 3])  # odd counts; chunks and a shorter last one
@pytest.mark.parametrize("bits", [4, 8])
def test_one_scale_per_element_equals_value_times_its_factor_for_every_scale_code(bits, n):
    pytest.importorskip("numba")
    if bits == 4:
        values = _e2m1_values()
    else:  # every float32 e4m3fn value, NaN included
        values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    n = max(n, 256)  # every scale code at least once
    got, want = _element_blocks(bits, values, _pow2_factors(), None, n)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("bits", [4, 8])
def test_one_scale_per_element_reads_the_factor_table_where_it_is_not_two_to_the_code(bits):
    # the E8M0 shortcut forms 2^(c - 127) from the code's bits: only where the table says so.
    # Codes 0 and 255 are read from the table; one code changed in 1..254 turns the shortcut off
    pytest.importorskip("numba")
    values = _e2m1_values() if bits == 4 else torch.arange(256, dtype=torch.uint8).view(
        torch.float8_e5m2).to(torch.float32).numpy()
    for code, factor in ((0, 0.75), (255, 3.0), (200, 5.0), (1, -0.5)):
        factors = _pow2_factors()
        factors[code] = factor
        got, want = _element_blocks(bits, values, factors, None, 4096 + 5, seed=code)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), code


@pytest.mark.parametrize("bits", [4, 8])
def test_one_scale_per_element_with_a_tensor_scale_multiplies_it_into_each_factor_first(bits):
    # NVFP4: f = g · scale(c), then value · f (two float32 roundings, in that order)
    pytest.importorskip("numba")
    values = _e2m1_values() if bits == 4 else torch.arange(256, dtype=torch.uint8).view(
        torch.float8_e4m3fn).to(torch.float32).numpy()
    factors = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    for g in (1.0, 0.1, 3.7e-3, 448.0 * 6):
        got, want = _element_blocks(bits, values, factors, g, 4096 + 9, seed=int(g * 10))
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), g


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "nvfp4", "mxfp8_e4m3fn"])
@pytest.mark.parametrize("tile_bytes", [0, 1000])
def test_a_linear_with_one_input_feature_a_block_per_weight_decodes_to_the_reference_also_tiled(spec, tile_bytes):
    # rows of length 1 in a Linear too: decoded whole, or a tile of output rows at a time (odd
    # tiles: 1000 bytes = 250 float32 rows, 4099 rows)
    lin = nn.Linear(1, 4099)
    packed = lb.pack_(nn.Sequential(lin), spec)[0]
    packed.tile_bytes = tile_bytes
    reference = packed.packed_weight.decode(torch.float32)
    x = torch.randn(3, 1, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert torch.equal(packed(x), torch.nn.functional.linear(x, reference, packed.bias))
        assert torch.equal(_bits(packed._lowbit_weight()), _bits(reference))


@pytest.mark.parametrize("spec", ["nvfp4", "block16_e2m1fn_scale_posit8_es1_t", "mxfp4_e2m1fn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_scaled_block_linear_computing_in_another_dtype_decodes_the_reference(spec, dtype):
    # a scaled block format's element table is float32 for every compute dtype; the one-call kernel
    # writes float32 only, so a float16 / bfloat16 / float64 layer must not take it (it used to:
    # wrong weights, and memory written past its output)
    packed = lb.pack_(nn.Sequential(nn.Linear(64, 3000)), spec)[0].to(dtype)
    reference = packed.packed_weight.decode(dtype)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(7)).to(dtype)
    assert _same(packed.weight, reference)
    with torch.inference_mode():
        assert _same(packed._lowbit_weight(), reference)
        assert _same(packed(x), torch.nn.functional.linear(x, reference, packed.bias))


# -- rows no longer than a block (kxk convs, depthwise _r rows) against a numpy oracle --------------

def _short_rows(bits: int, values: np.ndarray, factors: np.ndarray, g: "float | None", length: int, rows: int,
                seed: int = 0) -> "tuple[np.ndarray, np.ndarray]":
    """(kernel output, oracle) of `_decode_numba._decode_short_rows` on ``rows`` random rows of
    ``length`` element codes, one random scale code per row (every code 0..255 among them when
    there are 256 rows or more)."""
    from lowbit.storage import _decode_numba as kernels

    rng = np.random.default_rng(seed)
    n = rows * length
    elements = rng.integers(0, 1 << bits, n)
    scales = rng.integers(0, 256, rows).astype(np.uint8)
    scales[: min(rows, 256)] = np.arange(min(rows, 256))
    data, table, wide, out, pairs = _kernel_arrays(bits, values, elements, n)
    scaled = g is not None
    kernels._decode_short_rows(data, bits, table, wide, scales, factors, np.float32(g if scaled else 1.0), scaled,
                               length, n, out.view(np.int32), pairs, out)
    assert out[n] == 12345.0
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN products are part of the oracle
        f = factors[scales] if g is None else np.float32(g) * factors[scales]
        return out[:n], values[elements] * np.repeat(f, length)


#: (row length, rows): the kernel widths 3 and 5 and the depthwise _r rows 9 and 25, over several
#: chunks (4096 codes) with a shorter last one and odd code counts; rows of 1, 2 and of a whole
#: MX block (32); a single row
SHORT_ROWS = [(3, 3001), (5, 1601), (9, 457), (25, 701), (1, 9001), (2, 4099), (32, 300), (5, 1)]


@pytest.mark.parametrize("length,rows", SHORT_ROWS)
@pytest.mark.parametrize("bits", [4, 8])
def test_short_rows_equal_value_times_their_rows_factor_for_every_scale_code(bits, length, rows):
    pytest.importorskip("numba")
    values = _e2m1_values() if bits == 4 else torch.arange(256, dtype=torch.uint8).view(
        torch.float8_e4m3fn).to(torch.float32).numpy()
    got, want = _short_rows(bits, values, _pow2_factors(), None, length, rows, seed=length)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("length,rows", [(3, 3001), (25, 701)])
@pytest.mark.parametrize("bits", [4, 8])
def test_short_rows_with_a_tensor_scale_multiply_it_into_each_factor_first(bits, length, rows):
    # NVFP4 on a depthwise conv: f = g · scale(c), then value · f (two float32 roundings, in that order)
    pytest.importorskip("numba")
    values = _e2m1_values() if bits == 4 else torch.arange(256, dtype=torch.uint8).view(
        torch.float8_e4m3fn).to(torch.float32).numpy()
    factors = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    for g in (0.1, 3.7e-3, 448.0 * 6):
        got, want = _short_rows(bits, values, factors, g, length, rows, seed=int(g * 10))
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), g


#: depthwise and stem-like weights larger than one decode chunk (4096 codes), odd code counts
LARGE_CONVS = [((601, 1, 3, 3), 601), ((301, 1, 5, 5), 301), ((33, 3, 3, 3), 1)]


@pytest.mark.parametrize("shape,groups", LARGE_CONVS)
@pytest.mark.parametrize("spec", SPECS + ["mxfp4_e2m1fn_r", "mxfp8_e4m3fn_r", "nvfp4_r"])
def test_large_kxk_conv_weights_decode_to_the_reference_bits_through_the_staging_kernel(spec, shape, groups):
    layer = _packed(spec, shape, groups)
    reference = layer.packed_weight.decode(torch.float32)
    with torch.inference_mode():
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
        assert torch.equal(_bits(layer._lowbit_weight()), _bits(reference))
    assert torch.equal(_bits(layer.weight), _bits(reference))
