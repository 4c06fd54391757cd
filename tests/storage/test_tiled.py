"""Row-tiled inference of packed Linear layers (lowbit.storage.tiled): bit-exact decoded tiles,
outputs within the float32 summation bound, and the untiled fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.kernels import available_backends
from lowbit.storage import PackedLinear, pack_, tiled

pytestmark = pytest.mark.skipif("numba" not in available_backends(), reason="tiles need the numba decoders")

#: every decoder a tile can run: plain tables (8, 6, 4, 3 bits), scales per tensor / channel /
#: group (along the rows and along the inputs), fitted levels per channel, MX / NV block scales
SPECS = [
    "posit8_es2", "e4m3fn", "e3m2fn", "int3", "codebook4", "ternary", "posit16_es1",
    {"format": "int8", "scaling": "absmax", "granularity": "channel"},
    {"format": "e2m3fn", "scaling": "absmax"},
    {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "group_size": 8}},
    {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "group_size": 8, "axis": 1}},
    {"format": "codebook3", "granularity": "channel"},
    "mxfp4_e2m1fn", "mxfp8_e4m3fn", "mxint8", "nvfp4",
]
IDS = [s if isinstance(s, str) else f"{s['format']}-{s.get('granularity', 'tensor')}" for s in SPECS]


def _pair(spec: object, rows: int, cols: int, bias: bool = True, tile_bytes: int = 4096
          ) -> "tuple[nn.Module, PackedLinear]":
    """(simulated layer, packed copy) of a seeded Linear(cols, rows), tiles of ``tile_bytes``."""
    torch.manual_seed(rows * 1000 + cols)
    sim = lb.quantize_(nn.Linear(cols, rows, bias=bias), {"weight": spec})
    packed = pack_(copy.deepcopy(sim))
    packed.tile_bytes = tile_bytes
    return sim, packed


def _tile_count(layer: PackedLinear) -> int:
    plan = tiled._plan(layer)
    return 0 if plan is None else len(plan.tiles)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("shape", [(40, 96), (37, 61), (24, 80)])
def test_decoded_tiles_equal_the_simulated_weight_bit_for_bit(spec: object, shape: "tuple[int, int]") -> None:
    # y = I · Wᵀ has one nonzero product per output: exact in any summation order, so the output
    # is the decoded weight itself, tile by tile
    rows, cols = shape
    if isinstance(spec, dict) and isinstance(spec.get("granularity"), dict) and rows == 37:
        rows, cols = 56, 88  # groups of 8 must divide the grouped axis: odd only in the row count / 8
    sim, packed = _pair(spec, rows, cols, bias=False)
    with torch.no_grad():
        y = packed(torch.eye(cols))
        assert _tile_count(packed) >= 2
    assert torch.equal(y, sim._lowbit_weight().t())
    assert torch.equal(y, packed.packed_weight.decode().t())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5])
def test_tiled_output_is_within_the_float32_summation_bound(spec: object, batch: int) -> None:
    rows, cols = 72, 136
    sim, packed = _pair(spec, rows, cols)
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        y = packed(x)
        assert _tile_count(packed) >= 2
        w = sim._lowbit_weight().double()
        b = sim.bias.double()
    exact = x.double() @ w.t() + b  # products of float32s are exact in float64; the float64 sum's
    mass = x.double().abs() @ w.abs().t() + b.abs()  # own error is below 2^-40 of this mass
    u = 2.0 ** -24
    gamma = (cols + 1) * u / (1 - (cols + 1) * u)
    assert torch.all((y.double() - exact).abs() <= gamma * mass + 2.0 ** -40 * mass)


def test_batch_1_to_5_and_leading_dims_of_minilm_shapes_match_f_linear() -> None:
    # the shapes that run in the benchmark: every output as F.linear gives it (torch's GEMM sums
    # these the same way for a tile as for the whole weight; checked, not assumed elsewhere)
    sim, packed = _pair("posit8_es2", 1536, 384, tile_bytes=tiled.TILE_BYTES)
    for batch in range(1, 6):
        x = torch.randn(1, batch, 384)
        with torch.no_grad():
            assert torch.equal(packed(x), sim(x))
    assert _tile_count(packed) >= 2


def test_tile_bytes_zero_gives_outputs_equal_to_the_simulated_layer() -> None:
    sim, packed = _pair("int3", 72, 136, tile_bytes=0)
    x = torch.randn(3, 136)
    with torch.no_grad():
        assert torch.equal(packed(x), sim(x))
        assert _tile_count(packed) == 0


@pytest.mark.parametrize("make_input", [
    lambda: torch.randn(136, 4).t(),  # not contiguous
    lambda: torch.randn(136),  # 1-d
    lambda: torch.randn(3, 136, dtype=torch.float64),  # not float32
], ids=["non-contiguous", "1-d", "float64"])
def test_inputs_the_tiles_do_not_take_run_the_untiled_forward(make_input: object) -> None:
    sim, packed = _pair("posit8_es2", 72, 136)
    x = make_input()  # type: ignore[operator]
    if x.dtype == torch.float64:
        sim, packed = sim.double(), packed.double()
    with torch.no_grad():
        assert torch.equal(packed(x), sim(x))


def test_forwards_under_autograd_are_not_tiled_and_give_gradients() -> None:
    sim, packed = _pair("e4m3fn", 72, 136)
    x1, x2 = torch.randn(2, 136, requires_grad=True), None
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = sim(x1), packed(x2)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    y2.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def test_tiles_follow_new_codes_tile_sizes_and_other_roles() -> None:
    fmt = lb.parse_format("posit8_es2")
    first, second = nn.Linear(136, 72, bias=False), nn.Linear(136, 72, bias=False)
    packed = pack_(copy.deepcopy(first), fmt)
    packed.tile_bytes = 4096
    eye = torch.eye(136)
    with torch.no_grad():
        assert torch.equal(packed(eye), fmt.quantize(first.weight).t())
        packed.load_state_dict(second.state_dict())  # new codes: the tiles read them
        assert torch.equal(packed(eye), fmt.quantize(second.weight).t())
        count = _tile_count(packed)
        packed.tile_bytes = 16384  # larger tiles: a new plan
        assert torch.equal(packed(eye), fmt.quantize(second.weight).t())
        assert _tile_count(packed) < count
    # the input and output roles of a simulated layer stay applied around the tiles
    cfg = {"weight": "posit8_es2", "input": "e4m3fn", "output": "e5m2"}
    sim = lb.quantize_(nn.Linear(136, 72, bias=False), cfg)
    packed = pack_(copy.deepcopy(sim))
    packed.tile_bytes = 4096
    with torch.no_grad():
        assert torch.equal(packed(eye), lb.parse_format("e5m2").quantize(sim._lowbit_weight().t()))


def test_staging_stays_one_tile_large() -> None:
    import threading

    from lowbit.storage.decode import _STAGING

    sizes = []

    def run() -> None:  # a fresh thread: its own staging buffer, grown only by this layer's tiles
        _, packed = _pair("posit8_es2", 1024, 512, tile_bytes=tiled.TILE_BYTES)
        with torch.no_grad():
            packed(torch.randn(2, 512))
        sizes.append(_STAGING.bufs[torch.float32].numel() * 4)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert sizes and sizes[0] <= tiled.TILE_BYTES < 1024 * 512 * 4


def test_tile_rows_respect_byte_group_and_run_boundaries() -> None:
    # rows per tile: whole bytes of 3-bit codes (cols * 3 bits), whole groups of 8 rows, whole runs
    assert tiled._row_alignment("decode_into", 3, 37, 0, 100) == 8
    assert tiled._row_alignment("decode_lines_into", 4, 64, (96, 8, 64), 96) == 8
    assert tiled._row_alignment("decode_runs_into", 4, 10, 4, 30) == 2
    assert tiled._row_alignment("decode_grid_into", 4, 10, 0, 30) is None
    assert tiled._row_alignment("decode_lines_into", 8, 12, (24, 3, 12), 24) == 3


def test_tiles_read_the_bias_edited_in_place_and_a_replaced_bias() -> None:
    sim, packed = _pair("posit8_es2", 72, 136)
    x = torch.randn(2, 136, generator=torch.Generator().manual_seed(7))
    w = sim._lowbit_weight().detach()
    with torch.no_grad():
        packed(x)  # the tiles and their bias views are prepared here
        assert _tile_count(packed) >= 2
        packed.bias.add_(1.0)  # in place: the prepared views see it
        y = packed(x)
        assert torch.all((y - (x @ w.t() + packed.bias)).abs() < 1e-3)  # (a stale bias: off by 1)
        packed.bias = nn.Parameter(torch.full((72,), 100.0))  # a new parameter: not the prepared views
        y = packed(x)
    assert torch.all((y - (x @ w.t() + 100.0)).abs() < 1e-3)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_a_weight_that_fits_one_tile_runs_as_one_f_linear_equal_to_the_simulated_layer(spec: object) -> None:
    # one prepared decode call into the shared staging buffer, then F.linear of the whole weight:
    # torch.equal to the simulated layer; two layers take turns in the buffer, each reads its own codes
    first, packed_first = _pair(spec, 48, 64, tile_bytes=tiled.TILE_BYTES)
    second, packed_second = _pair(spec, 32, 64, tile_bytes=tiled.TILE_BYTES)  # other weights (seeded by shape)
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(1, batch, 64, generator=torch.Generator().manual_seed(batch))
            for sim, packed in ((first, packed_first), (second, packed_second), (first, packed_first)):
                assert torch.equal(packed(x), sim(x))
                plan = tiled._plan(packed)
                assert plan is not None and plan.whole and len(plan.tiles) == 1
