"""binary / ternary / codebook weights fitted per output channel: simulation, checkpoints, packed layers.

Invariant: every path reproduces "each output channel's weights quantized alone with the format"
(a hand loop over rows of fmt.quantize), bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit as lb

SPECS = ["binary", "ternary", "codebook2", "codebook4"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():
        m[0].weight[4] = 0.0  # an all-zero output channel
    return m


def _rows(fmt: lb.NumberFormat, w: torch.Tensor) -> torch.Tensor:
    return torch.stack([fmt.quantize(w[c]) for c in range(w.shape[0])])


def _config(spec: str) -> dict:
    return {"weight": {"format": spec, "granularity": "channel"}}


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
    levels = {"binary": 1, "ternary": 1, "codebook2": 4, "codebook4": 16}[spec]
    packed_t = lb.load_packed(path)["0.weight"]
    assert packed_t.nbytes == -(-model[0].weight.numel() * fmt.bits // 8) + 6 * levels * 4  # codes + per-channel levels
    packed = lb.pack_(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(packed(x), want)
    rebuilt = lb.pack_(_model(), lb.load_packed(path))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), want)


@pytest.mark.parametrize("granularity, match", [
    ({"kind": "channel", "axis": 1}, "per tensor or per channel along axis 0"),
    ({"kind": "group", "axis": 1, "group_size": 2}, "per tensor or per channel along axis 0"),
])
def test_other_granularities_are_refused(granularity, match):
    with pytest.raises(ValueError, match=match):
        lb.QuantConfig.from_dict({"weight": {"format": "codebook4", "granularity": granularity}})
    with pytest.raises(ValueError, match="scalar element format"):
        lb.QuantConfig.from_dict({"weight": {"format": "codebook4", "scaling": "absmax", "granularity": "channel"}})


def test_config_round_trips_through_json():
    cfg = lb.QuantConfig.from_dict(_config("ternary"))
    assert lb.QuantConfig.from_json(cfg.to_json()) == cfg
