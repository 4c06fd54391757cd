"""The numba kernel that decodes codes with one value table per granule of any grid.

Invariant: ``decode_grid_into`` writes, for every element, the entry of its own granule's table
for its code — checked against numpy's ``ravel_multi_index`` over (index // block), for random
shapes of 1-4 axes, random grids dividing them and every code width 1-8.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbit.kernels import available_backends
from lowbit.storage.bitpack import pack_bits

pytestmark = pytest.mark.skipif("numba" not in available_backends(), reason="needs numba")


@st.composite
def _cases(draw):  # type: ignore[no-untyped-def]
    nd = draw(st.integers(1, 4))
    shape, grid = [], []
    for _ in range(nd):
        g = draw(st.integers(1, 4))
        block = draw(st.integers(1, 4))
        shape.append(g * block)
        grid.append(g)
    bits = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    return tuple(shape), tuple(grid), bits, seed


def _expected(codes: np.ndarray, tables: np.ndarray, shape, grid) -> np.ndarray:
    block = [n // g for n, g in zip(shape, grid)]
    index = np.indices(shape).reshape(len(shape), -1)
    granule = np.ravel_multi_index(tuple(index[d] // block[d] for d in range(len(shape))), grid)
    return tables[granule, codes]


@given(_cases())
def test_every_element_reads_its_own_granules_table(case) -> None:
    _check(*case)


@pytest.mark.parametrize("shape, grid", [((3, 8), (1, 8)), ((3, 5), (1, 5)), ((4, 6, 2), (2, 3, 1)), ((7,), (7,))])
@pytest.mark.parametrize("bits", [4, 3, 8])
def test_lines_of_even_and_odd_length(shape, grid, bits) -> None:
    # 4 bits and an even line length take the two-codes-per-byte path; the rest the bit reader
    _check(shape, grid, bits, seed=sum(shape) * bits)


def _check(shape, grid, bits, seed) -> None:
    import torch

    from lowbit.storage import _decode_numba as k

    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    codes = rng.integers(0, 1 << bits, size=n)
    tables = rng.integers(-(2**31), 2**31 - 1, size=(int(np.prod(grid)), 1 << bits)).astype(np.int32)
    data = pack_bits(torch.from_numpy(codes), bits).numpy()
    out = np.full(n, 7, dtype=np.int32)
    geom = k.grid_geometry(shape, grid, bits)
    k.decode_grid_into(data, bits, tables.reshape(-1), geom, False, np.zeros(1, np.float32), 0, n, out,
                       np.zeros(1, np.int64), np.zeros(1, np.float32))
    np.testing.assert_array_equal(out, _expected(codes, tables, shape, grid))


def test_the_geometry_names_each_index_share_of_the_table_offset() -> None:
    from lowbit.storage._decode_numba import grid_geometry

    # (4, 6) in a (2, 3) grid: blocks (2, 2); granule (r, c) -> table 3r + c, 16 entries each (4 bits)
    geom = grid_geometry((4, 6), (2, 3), 4).tolist()
    assert geom == [2, 4, 6, 0, 0, 48, 48, 0, 0, 16, 16, 32, 32]
