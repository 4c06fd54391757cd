"""binary / ternary / codebook weights fitted per channel (any axis) or per group: simulation,
checkpoints, packed layers.

Invariant: every path reproduces "each channel's (group's) weights quantized alone with the format"
(a hand loop of fmt.quantize over slices), bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit as lb

SPECS = ["binary", "ternary", "codebook2", "codebook3", "codebook4", "codebook8"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():
        m[0].weight[4] = 0.0  # an all-zero output channel
    return m


def _rows(fmt: lb.NumberFormat, w: torch.Tensor) -> torch.Tensor:
    return torch.stack([fmt.quantize(w[c]) for c in range(w.shape[0])])


def _granules(fmt: lb.NumberFormat, w: torch.Tensor, granularity: dict) -> torch.Tensor:
    """The slow reference: every channel (``select``) or group (``narrow``) quantized alone."""
    axis = granularity.get("axis", 0) % w.dim()
    out = torch.empty_like(w)
    if granularity["kind"] == "channel":
        for i in range(w.shape[axis]):
            out.select(axis, i).copy_(fmt.quantize(w.select(axis, i).contiguous()))
        return out
    g = granularity["group_size"]
    lines = w.movedim(axis, -1).reshape(-1, w.shape[axis])
    done = torch.empty_like(lines)
    for r in range(lines.shape[0]):
        for j in range(0, lines.shape[1], g):
            done[r, j:j + g] = fmt.quantize(lines[r, j:j + g].contiguous())
    return done.reshape(w.movedim(axis, -1).shape).movedim(-1, axis)


def _config(spec: str, granularity: "dict | str" = "channel") -> dict:
    return {"weight": {"format": spec, "granularity": granularity}}


GRANULARITIES = [
    {"kind": "channel", "axis": 1},                      # per input channel
    {"kind": "channel", "axis": -1},                     # per kernel column / per input feature
    {"kind": "group", "axis": 1, "group_size": 3},       # groups of 3 input channels / features
    {"kind": "group", "axis": 0, "group_size": 2},       # groups of 2 output channels (6 and 5 → 5 fails, see below)
]


@pytest.mark.parametrize("spec", SPECS)
def test_simulation_equals_quantizing_each_channel_alone(spec):
    fmt = lb.parse_format(spec)
    model = _model()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(_rows(fmt, ref[i].weight))
    lb.quantize_(model, _config(spec))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("spec", SPECS)
def test_checkpoint_and_packed_layers_reproduce_the_simulation(spec, tmp_path):
    fmt = lb.parse_format(spec)
    model = lb.quantize_(_model(), _config(spec))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
    path = tmp_path / "m.lowbit"
    lb.save(model, path)
    loaded = lb.load(path)
    for i in (0, 3):
        w = model[i].weight.detach()
        assert torch.equal(loaded[f"{i}.weight"], _rows(fmt, w)), i
    levels = {"binary": 1, "ternary": 1, "codebook2": 4, "codebook3": 8, "codebook4": 16, "codebook8": 256}[spec]
    packed_t = lb.load_packed(path)["0.weight"]
    assert packed_t.nbytes == -(-model[0].weight.numel() * fmt.bits // 8) + 6 * levels * 4  # codes + per-channel levels
    packed = lb.pack_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(packed(x), want)
    rebuilt = lb.pack_(_model(), lb.load_packed(path))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), want)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("granularity", GRANULARITIES[:3])
def test_any_axis_and_groups_equal_quantizing_each_granule_alone(spec, granularity, tmp_path):
    fmt = lb.parse_format(spec)
    model = _model()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(_granules(fmt, ref[i].weight, granularity))
    lb.quantize_(model, _config(spec, granularity))
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(want, ref(x))
    path = tmp_path / "m.lowbit"
    lb.save(model, path)
    loaded = lb.load(path)
    for i in (0, 3):
        assert torch.equal(loaded[f"{i}.weight"], ref[i].weight), i
    packed = lb.pack_(copy.deepcopy(model))
    rebuilt = lb.pack_(_model(), lb.load_packed(path))
    with torch.no_grad():
        assert torch.equal(packed(x), want) and torch.equal(rebuilt(x), want)


def _backend_specs() -> "list[tuple[str, str]]":
    # the reference backend fits codebooks row by row (slow): three specs there, every spec with numba
    from lowbit.kernels import available_backends

    pairs = [("reference", s) for s in ("binary", "ternary", "codebook3")]
    return pairs + ([("numba", s) for s in SPECS] if "numba" in available_backends() else [])


@pytest.mark.parametrize("backend, spec", _backend_specs())
@pytest.mark.parametrize("granularity, runs", [
    ("channel", (True, True)),                                       # one table per output channel
    ({"kind": "group", "axis": -1, "group_size": 3}, (True, True)),  # groups along the last axis
    ({"kind": "group", "axis": 1, "group_size": 2}, (False, True)),  # conv: strided groups; linear: runs of 2
    ({"kind": "channel", "axis": 1}, (False, False)),                # strided granules
    ({"kind": "channel", "axis": -1}, (False, False)),               # per kernel column / input feature
    ({"kind": "group", "axis": 0, "group_size": 2}, (False, False)),  # groups of output channels (on a 6x4 linear)
])
def test_packed_layers_decode_with_one_table_per_granule(backend, spec, granularity, runs):
    # every granule decodes with its own value table: numba, one kernel call (contiguous runs of codes:
    # decode_runs_into; any other grid: decode_grid_into); reference, a torch gather per granule row.
    # Everywhere the weight equals the simulated one bit for bit.
    from lowbit.kernels import use_backend
    from lowbit.storage import _decode_numba

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 4))
    with torch.no_grad():
        model[0].weight[:, 1] = 0.0  # an all-zero input channel
    x = torch.randn(2, 4, 6, 6)
    with use_backend(backend):
        model = lb.quantize_(model, _config(spec, granularity))
        packed = lb.pack_(copy.deepcopy(model))
        for i in (0, 3):
            want = _granules(lb.parse_format(spec), model[i].weight.detach(), _granularity_dict(granularity))
            assert torch.equal(model[i]._lowbit_weight().detach(), want)
            assert torch.equal(packed[i].weight, want)
            with torch.no_grad():
                assert torch.equal(packed[i]._lowbit_weight(), want)
                assert torch.equal(packed[i]._lowbit_weight(), want)  # the prepared call
            table = packed[i]._table(torch.float32)
            assert table is not None and table.grid is not None
            assert (table.run > 0) == runs[0 if i == 0 else 1], i
            if backend == "numba":
                kernel = _decode_numba.decode_runs_into if table.run else _decode_numba.decode_grid_into
                assert table.fast is not None and table.fast[0] is kernel
            else:
                assert table.fast is None
            for dtype in (torch.float64, torch.bfloat16):
                assert torch.equal(packed[i].packed_weight.decode(dtype), want.double().to(dtype)), dtype
        with torch.no_grad():
            assert torch.equal(packed(x), model(x))


def _granularity_dict(granularity: "dict | str") -> dict:
    return {"kind": "channel", "axis": 0} if granularity == "channel" else granularity


def test_group_params_are_stored_one_per_group(tmp_path):
    fmt = lb.parse_format("codebook2")
    w = torch.randn(8, 64)
    enc = fmt.encode_channels(w, axis=1, group_size=16)
    assert enc.params["levels"].shape == (8, 4, 4)  # (rows, groups per row, 2^2 levels)
    assert torch.equal(fmt.decode_tensor(enc), _granules(fmt, w, {"kind": "group", "axis": 1, "group_size": 16}))
    model = lb.quantize_(nn.Sequential(nn.Linear(64, 8)), _config("codebook2", {"kind": "group", "axis": 1,
                                                                                  "group_size": 16}))
    lb.save(model, tmp_path / "g.lowbit")
    packed = lb.load_packed(tmp_path / "g.lowbit")["0.weight"]
    assert packed.nbytes == 8 * 64 * 2 // 8 + 8 * 4 * 4 * 4  # 2-bit codes + 32 groups x 4 float32 levels


def test_a_group_size_that_does_not_divide_the_axis_is_refused_before_any_change():
    model = _model()  # conv weight (6, 3, 3, 3), linear weight (5, 96): 2 does not divide 5
    with pytest.raises(ValueError, match=r"layer '3' role 'weight': group_size=2 does not divide the length 5"):
        lb.quantize_(model, _config("codebook2", GRANULARITIES[3]))
    assert type(model[0]) is nn.Conv2d  # nothing was converted
    with pytest.raises(ValueError, match=r"group_size=5 does not divide the length 64 of axis 1"):
        lb.parse_format("binary").encode_channels(torch.randn(2, 64), axis=1, group_size=5)
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        lb.parse_format("binary").encode_channels(torch.randn(2, 64), axis=2)


def test_absmax_scaling_is_refused_for_fitted_formats():
    with pytest.raises(ValueError, match="scalar element format"):
        lb.QuantConfig.from_dict({"weight": {"format": "codebook4", "scaling": "absmax", "granularity": "channel"}})


def test_config_round_trips_through_json():
    cfg = lb.QuantConfig.from_dict(_config("ternary"))
    assert lb.QuantConfig.from_json(cfg.to_json()) == cfg
