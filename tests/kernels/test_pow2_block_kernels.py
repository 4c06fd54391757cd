"""The numba kernel of power-of-two block formats (MX, BFP, block<k>_<el>_scale_e8m0fnu[_a<axis>])
gives the torch reference's bits for float32 input: quantize values bit for bit (out= and in place
included), encode codes and scale exponents exactly, across NaN/inf/zero blocks, subnormal and
huge blocks, odd shapes and every rounding mode (stochastic: the same generator seed gives the
same bits on both backends). Other input dtypes run the reference (checked by the format tests)."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.formats import ROUNDING_MODES
from lowbit.kernels import use_backend
from lowbit.testing import assert_codes_equal, assert_same_bits

pytestmark = pytest.mark.skipif("numba" not in lb.kernels.available_backends(), reason="numba is not installed")

SPECS = [
    "mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp6_e2m3fn", "mxfp8_e4m3fn", "mxfp8_e5m2", "mxint8",
    "mxfp4_e2m1fn_b4",                      # a short block
    "bfp4_b2", "bfp8_b16",                  # block floating point: unclamped exponents, integer elements
    "block32_int4_scale_e8m0fnu",           # integer elements
    "block16_posit8_es2_scale_e8m0fnu",     # posit elements
    "block7_fixed8_f4_scale_e8m0fnu",       # fixed-point elements, blocks of an odd size
    "block4_e3m3_scale_e8m0fnu_a0",         # blocks along axis 0
]


def _inputs(seed: int = 0) -> "list[torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(9, 70, generator=g) * 10.0 ** torch.randint(-44, 38, (9, 1), generator=g).float()
    special = torch.tensor([1e-45, 3e38, -2e-40, float("nan"), 1.0, 0.0, -0.0, float("inf")] * 9)
    return [spread, spread[:, 3:50].T, torch.tensor(3.5), torch.zeros(40), special,
            torch.tensor([float("-inf"), 1.0, 2.0] * 20), torch.randn(3, 4, 33, generator=g)]


def _gen(mode: str) -> "torch.Generator | None":
    return torch.Generator().manual_seed(11) if mode == "stochastic" else None


# every rounding mode for one format of each element family (a kernel compiles per family x mode);
# round to nearest even for the rest
CASES = ([(spec, mode) for spec in ("mxfp4_e2m1fn", "mxint8") for mode in ROUNDING_MODES]
         + [("block16_posit8_es2_scale_e8m0fnu", mode) for mode in ("stochastic", "floor")]
         + [(spec, "nearest_even") for spec in SPECS])


@pytest.mark.parametrize("spec,mode", CASES)
def test_quantize_and_encode_of_float32_give_the_reference_bits(spec: str, mode: str) -> None:
    fmt = lb.parse_format(spec)
    for x in _inputs():
        with use_backend("reference"):
            want, want_enc = fmt.quantize(x, mode, _gen(mode)), fmt.encode_tensor(x, mode, _gen(mode))
        with use_backend("numba"):
            got, got_enc = fmt.quantize(x, mode, _gen(mode)), fmt.encode_tensor(x, mode, _gen(mode))
        assert_same_bits(got, want, what=f"{spec} {mode} quantize of shape {tuple(x.shape)}")
        assert_codes_equal(got_enc.codes, want_enc.codes, x)
        assert got_enc.codes.dtype == want_enc.codes.dtype
        s_got, s_want = got_enc.params["scale_exponent"], want_enc.params["scale_exponent"]
        assert s_got.dtype == s_want.dtype == torch.int16 and s_got.shape == s_want.shape
        assert_codes_equal(s_got, s_want, what="scale_exponent")


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn", "bfp8_b16", "block4_e3m3_scale_e8m0fnu_a0"])
def test_quantize_out_and_in_place_equal_the_allocating_result(spec: str) -> None:
    fmt = lb.parse_format(spec)
    x = _inputs(3)[0]
    want = fmt.quantize(x)
    out = torch.empty_like(x)
    assert fmt.quantize(x, out=out) is out
    assert_same_bits(out, want)
    y = x.clone()
    fmt.quantize(y, out=y)
    assert_same_bits(y, want)
    wide = torch.zeros(x.shape[0], x.shape[1] * 2)
    fmt.quantize(x, out=wide[:, ::2])  # a strided out
    assert_same_bits(wide[:, ::2], want)


def test_the_fast_path_runs_for_float32_on_the_numba_backend() -> None:
    from lowbit.kernels import blocks

    fmt = lb.parse_format("mxfp4_e2m1fn")
    x = torch.randn(4, 64)
    assert blocks.pow2_block_quantize(fmt, x, lb.formats.Rounding("nearest_even"), None, None) is not None
    assert blocks.pow2_block_quantize(fmt, x.double(), lb.formats.Rounding("nearest_even"), None, None) is None
