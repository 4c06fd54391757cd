"""Calibration: hooks feed observers the right tensors, ranges are fixed at exit, hooks go away."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.quant.calibration import calibrate, calibration
from lowbit.quant.granularity import Granularity
from lowbit.quant.observers import CalibrationError, KLObserver, MinMaxObserver


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 4) -> "list[torch.Tensor]":
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(6, 5, generator=gen) * (i + 1) for i in range(n)]


class TestCalibration:
    def test_input_output_weight_ranges_are_exact(self):
        model, data = _model(), _data()
        with calibration(model, roles=("input", "output", "weight")) as cal:
            for x in data:
                model(x)
        x = torch.cat(data)
        with torch.no_grad():  # batch by batch, as the model saw them (GEMM results depend on batch size)
            h = torch.cat([model[0](b) for b in data])
            a = torch.relu(h)
            y = torch.cat([model[2](torch.relu(model[0](b))) for b in data])
        expect = {"0": {"input": x, "output": h, "weight": model[0].weight.detach()},
                  "2": {"input": a, "output": y, "weight": model[2].weight.detach()}}
        assert set(cal.ranges) == {"0", "2"}
        for name, roles in expect.items():
            for role, t in roles.items():
                lo, hi = cal.ranges[name][role]
                assert float(lo) == float(t.min()) and float(hi) == float(t.max()), (name, role)

    def test_per_channel_observer_factory(self):
        model, data = _model(), _data()
        ranges = calibrate(model, data, observer=lambda: MinMaxObserver(Granularity.channel(1)))
        lo, hi = ranges["0"]["input"]
        x = torch.cat(data)
        assert torch.equal(lo, x.amin(0, keepdim=True)) and torch.equal(hi, x.amax(0, keepdim=True))

    def test_observers_per_role(self):
        model, data = _model(), _data()
        ranges = calibrate(model, data, roles=("input", "weight"),
                           observer={"input": lambda: KLObserver(bins=256, quant_bins=16), "weight": MinMaxObserver})
        lo, hi = ranges["0"]["input"]
        assert float(lo) == -float(hi) and 0 < float(hi) <= float(torch.cat(data).abs().max()) * 1.01
        with pytest.raises(ValueError, match=r"no factory for role\(s\) \['weight'\]"):
            calibration(model, roles=("input", "weight"), observer={"input": MinMaxObserver})

    def test_layer_observer_makes_each_layers_observers(self):
        # one observer per (layer, role) from a callable that sees the layer's name; None leaves
        # that role of that layer unobserved (calibrate_config uses this for format-aware observers)
        model, data = _model(), _data()
        made: "list[tuple[str, str]]" = []

        def layer_observer(name: str, role: str):
            made.append((name, role))
            if (name, role) == ("2", "output"):
                return None
            return MinMaxObserver(Granularity.channel(1)) if name == "0" else MinMaxObserver()

        with calibration(model, roles=("input", "output"), layer_observer=layer_observer) as cal:
            for x in data:
                model(x)
        assert sorted(made) == [("0", "input"), ("0", "output"), ("2", "input"), ("2", "output")]
        assert set(cal.ranges["0"]) == {"input", "output"} and set(cal.ranges["2"]) == {"input"}
        x = torch.cat(data)
        assert torch.equal(cal.ranges["0"]["input"][1], x.amax(0, keepdim=True))  # per channel
        assert cal.ranges["2"]["input"][1].dim() == 0  # per tensor
        with pytest.raises(TypeError, match=r"layer '0', role 'input' returned str"):
            calibration(model, layer_observer=lambda name, role: "minmax")
        with pytest.raises(TypeError, match="layer_observer must be a callable"):
            calibration(model, layer_observer="minmax")

    def test_quantized_layers_see_the_float_input(self):
        model, data = _model(), _data()
        ref = calibrate(model, data, roles=("input",))
        lb.quantize_(model, {"weight": "int4", "input": "int4"})
        assert type(model[0]).__name__ == "QuantLinear"
        got = calibrate(model, data, roles=("input",))
        assert set(got) == set(ref)
        assert all(torch.equal(a, b) for a, b in zip(got["0"]["input"], ref["0"]["input"]))
        # layer 2 sees relu(quantized layer 0's output) *before* its own int4 input rounding
        with torch.no_grad():
            a = torch.cat([torch.relu(model[0](b)) for b in data])
        lo, hi = got["2"]["input"]
        assert float(lo) == float(a.min()) and float(hi) == float(a.max())
        assert float(hi) != round(float(hi))

    def test_hooks_are_removed(self):
        model, data = _model(), _data()
        with calibration(model) as cal:
            model(data[0])
        before = cal.observers["0"]["input"].count
        model(data[1])
        assert cal.observers["0"]["input"].count == before
        assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks

    def test_hooks_are_removed_on_error_and_no_ranges_are_fixed(self):
        model, data = _model(), _data()
        with pytest.raises(RuntimeError, match="boom"):
            with calibration(model) as cal:
                model(data[0])
                raise RuntimeError("boom")
        assert not model[0]._forward_pre_hooks and cal.ranges == {}

    def test_no_data_is_a_clear_error(self):
        model = _model()
        with pytest.raises(CalibrationError, match="observer saw no data; run calibration first"):
            with calibration(model):
                pass
        with pytest.raises(CalibrationError, match="saw no data"):
            calibrate(model, [])

    def test_weight_only_needs_no_data(self):
        model = _model()
        with calibration(model, roles="weight") as cal:
            pass
        assert float(cal.ranges["2"]["weight"][1]) == float(model[2].weight.detach().max())

    def test_unseen_layer_warns_and_is_listed(self):
        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

            def forward(self, x):
                return self.used(x)

        model = Branchy()
        with pytest.warns(lb.LowbitWarning, match="1 layer\\(s\\) never ran.*unused"):
            with calibration(model) as cal:
                model(torch.ones(2, 3))
        assert cal.unseen == ["unused"] and set(cal.ranges) == {"used"}

    def test_calibrate_restores_mode_and_accepts_loader_batches(self):
        model, data = _model(), _data()
        model.train()
        seen = []
        model[0].register_forward_pre_hook(lambda m, a: seen.append((m.training, torch.is_grad_enabled())))
        ranges = calibrate(model, [(x, torch.zeros(6)) for x in data], max_batches=2)
        assert model.training and seen == [(False, False)] * 2
        x = torch.cat(data[:2])
        assert float(ranges["0"]["input"][1]) == float(x.max())

    def test_filter_and_validation(self):
        model = _model()
        ranges = calibrate(model, _data(), filter_fn=lambda name, m: name == "2")
        assert set(ranges) == {"2"}
        with pytest.raises(ValueError, match="roles=\\('grad',\\); allowed"):
            calibration(model, roles=("grad",))
        with pytest.raises(ValueError, match="no layer to calibrate"):
            calibration(nn.Sequential(nn.ReLU()))
        with pytest.raises(TypeError, match="calibration batch must be"):
            calibrate(model, [3])
