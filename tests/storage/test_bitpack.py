"""pack_bits / unpack_bits: documented bit order, round trips at every width, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lowbit.formats.base import code_dtype_for
from lowbit.storage.bitpack import BIT_ORDER, MAX_PACK_BITS, pack_bits, packed_nbytes, unpack_bits


try:
    import numba  # noqa: F401

    BACKENDS = ["reference", "numba"]
except ImportError:  # the fast path is optional
    BACKENDS = ["reference", pytest.param("numba", marks=pytest.mark.skip(reason="numba is not installed"))]


def numpy_pack(codes: list[int], bits: int) -> list[int]:
    """Independent oracle: every code as `bits` bits LSB first, one stream, numpy packbits."""
    c = np.asarray(codes, dtype=np.uint64).reshape(-1, 1)
    stream = ((c >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little").tolist()


class TestBitOrder:
    """Hand-typed streams: element i at stream bits [i*bits, (i+1)*bits), least significant first."""

    @pytest.mark.parametrize(
        "bits, codes, expected",
        [
            (1, [1, 0, 1, 1, 0, 0, 0, 0, 1], [0x0D, 0x01]),
            (2, [3, 0, 1, 2], [0x93]),
            (3, [1, 2, 3, 4, 5, 6, 7, 0], [0xD1, 0x58, 0x1F]),
            (4, [1, 2, 15], [0x21, 0x0F]),
            (5, [1, 1], [0x21, 0x00]),
            (5, [31, 31, 31], [0xFF, 0x7F]),
            (6, [63, 0, 1, 2], [0x3F, 0x10, 0x08]),
            (7, [0x7F, 0x00, 0x01], [0x7F, 0x40, 0x00]),
            (8, [0, 255, 17], [0x00, 0xFF, 0x11]),
            (9, [0x1FF, 0x001], [0xFF, 0x03, 0x00]),
            (12, [0xABC, 0x123], [0xBC, 0x3A, 0x12]),
            (13, [0x1FFF, 0], [0xFF, 0x1F, 0x00, 0x00]),
            (16, [0x1234, 0xFFFF], [0x34, 0x12, 0xFF, 0xFF]),
            (24, [0x0A0B0C], [0x0C, 0x0B, 0x0A]),
            (32, [0xDEADBEEF], [0xEF, 0xBE, 0xAD, 0xDE]),
        ],
    )
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_hand_typed_bytes(self, bits: int, codes: list[int], expected: list[int], backend: str) -> None:
        packed = pack_bits(torch.tensor(codes, dtype=torch.int64), bits, backend=backend)
        assert packed.dtype == torch.uint8
        assert packed.tolist() == expected
        assert unpack_bits(packed, bits, len(codes), backend=backend).tolist() == codes

    def test_bit_order_name(self) -> None:
        assert BIT_ORDER == "lsb_first"

    def test_unused_bits_of_last_byte_are_zero(self) -> None:
        assert pack_bits(torch.tensor([7]), 3).tolist() == [0x07]
        assert pack_bits(torch.tensor([0x7FF]), 11).tolist() == [0xFF, 0x07]


class TestRoundTrip:
    """unpack_bits(pack_bits(c)) == c, and the bytes match an independent numpy packer."""

    @pytest.mark.parametrize("backend", BACKENDS)
    @given(
        st.integers(1, MAX_PACK_BITS).flatmap(
            lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1), max_size=80))
        )
    )
    def test_hypothesis_any_width(self, backend: str, case: tuple[int, list[int]]) -> None:
        bits, codes = case
        packed = pack_bits(torch.tensor(codes, dtype=torch.int64), bits, backend=backend)
        assert packed.numel() == packed_nbytes(len(codes), bits) == (len(codes) * bits + 7) // 8
        assert packed.tolist() == numpy_pack(codes, bits)
        assert unpack_bits(packed, bits, len(codes), backend=backend).to(torch.int64).tolist() == codes

    @pytest.mark.parametrize("bits", range(1, MAX_PACK_BITS + 1))
    @pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 1000, 4099])
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_every_width_and_tail(self, bits: int, n: int, backend: str) -> None:
        g = torch.Generator().manual_seed(bits * 10007 + n)
        codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.int64)
        if n:  # the extremes of the range
            codes[0] = (1 << bits) - 1
            codes[-1] = 0 if n > 1 else codes[-1]
        packed = pack_bits(codes, bits, backend=backend)
        assert packed.tolist() == numpy_pack(codes.tolist(), bits)
        back = unpack_bits(packed, bits, n, backend=backend)
        assert back.dtype == code_dtype_for(bits)  # what fmt.encode returns
        assert torch.equal(back.to(torch.int64), codes)

    @pytest.mark.parametrize(
        "bits, dtype",
        [(1, torch.uint8), (8, torch.uint8), (9, torch.int16), (15, torch.int16), (16, torch.int32),
         (31, torch.int32), (32, torch.int64)],
    )
    def test_default_unpack_dtype_is_the_code_dtype(self, bits: int, dtype: torch.dtype) -> None:
        assert unpack_bits(pack_bits(torch.tensor([1]), bits), bits, 1).dtype == dtype

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_unpack_to_wider_dtype(self, backend: str) -> None:
        codes = torch.tensor([5, 0, 7, 3])
        back = unpack_bits(pack_bits(codes, 3), 3, 4, dtype=torch.int64, backend=backend)
        assert back.dtype == torch.int64 and back.tolist() == [5, 0, 7, 3]

    def test_unknown_backend(self) -> None:
        with pytest.raises(ValueError, match="backend"):
            pack_bits(torch.tensor([1]), 3, backend="cuda-magic")

    @pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_any_integer_input_dtype_and_shape(self, dtype: torch.dtype, backend: str) -> None:
        codes = torch.arange(24, dtype=dtype).reshape(2, 3, 4) % 16
        packed = pack_bits(codes, 4, backend=backend)
        assert packed.tolist() == numpy_pack(codes.reshape(-1).tolist(), 4)
        back = unpack_bits(packed, 4, 24, backend=backend)
        assert torch.equal(back.to(torch.int64), codes.reshape(-1).to(torch.int64))

    @pytest.mark.parametrize("bits", [3, 8, 12, 16, 32])
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_non_contiguous_inputs(self, bits: int, backend: str) -> None:
        codes = torch.randint(0, 1 << bits, (40,), dtype=torch.int64)
        strided = codes[::2]
        packed = pack_bits(strided, bits, backend=backend)
        assert packed.tolist() == numpy_pack(strided.tolist(), bits)
        spaced = torch.zeros(2 * packed.numel(), dtype=torch.uint8)
        spaced[::2] = packed
        assert torch.equal(unpack_bits(spaced[::2], bits, 20, backend=backend).to(torch.int64), strided)
        grid = codes.reshape(5, 8).t()
        assert pack_bits(grid, bits, backend=backend).tolist() == numpy_pack(grid.reshape(-1).tolist(), bits)

    def test_pack_does_not_alias_or_modify_input(self) -> None:
        codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
        packed = pack_bits(codes, 8)
        packed[0] = 99
        assert codes.tolist() == [1, 2, 3]
        codes6 = torch.tensor([1, 2, 3, 4, 5])
        pack_bits(codes6, 6)
        assert codes6.tolist() == [1, 2, 3, 4, 5]


class TestErrors:
    @pytest.mark.parametrize("bits", [0, -1, 33, 64, True, 4.0, "4"])
    def test_bad_bits(self, bits: object) -> None:
        with pytest.raises(ValueError, match=r"bits must be an int in 1\.\.32"):
            pack_bits(torch.tensor([0]), bits)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"bits must be an int in 1\.\.32"):
            unpack_bits(torch.zeros(1, dtype=torch.uint8), bits, 1)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bits, bad", [(4, 16), (4, -1), (1, 2), (16, 65536), (32, 1 << 32)])
    def test_codes_out_of_range(self, bits: int, bad: int) -> None:
        with pytest.raises(ValueError, match=rf"codes must be integers in \[0, 2\*\*bits\) = \[0, {(1 << bits) - 1}\]"):
            pack_bits(torch.tensor([0, bad], dtype=torch.int64), bits)

    def test_codes_must_be_integers(self) -> None:
        with pytest.raises(TypeError, match="codes must have an integer dtype"):
            pack_bits(torch.tensor([1.0]), 4)
        with pytest.raises(TypeError, match="codes must be an integer torch.Tensor"):
            pack_bits([1, 2], 4)  # type: ignore[arg-type]

    def test_unpack_wrong_length(self) -> None:
        with pytest.raises(ValueError, match=r"exactly ceil\(numel \* bits / 8\) = 2 bytes"):
            unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 3)

    def test_unpack_needs_uint8(self) -> None:
        with pytest.raises(TypeError, match="packed must be a torch.uint8 tensor"):
            unpack_bits(torch.zeros(2, dtype=torch.int8), 4, 3)

    def test_unpack_dtype_too_narrow(self) -> None:
        with pytest.raises(ValueError, match="cannot hold 9-bit codes"):
            unpack_bits(torch.zeros(2, dtype=torch.uint8), 9, 1, dtype=torch.uint8)

    @pytest.mark.parametrize("numel", [-1, 1.5, None])
    def test_unpack_bad_numel(self, numel: object) -> None:
        with pytest.raises(ValueError, match="numel must be a non-negative int"):
            unpack_bits(torch.zeros(0, dtype=torch.uint8), 4, numel)  # type: ignore[arg-type]
