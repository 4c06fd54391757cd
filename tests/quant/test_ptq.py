"""Static (calibrated) activation ranges and `calibrate_config`: the PTQ flow.

Invariants: a static role quantizes exactly by the documented affine / symmetric rule (checked
against a pure-Python oracle); calibrate_config records the same ranges an observer sees when fed
by hand; the calibrated config is plain data (JSON round trip) and bad input names itself.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.quant.observers import CalibrationError, KLObserver, MSEObserver
from lowbit.simulate.layers import StaticRange


def _round_half_even(q: Fraction) -> int:
    f = math.floor(q)
    d = q - f
    if d > Fraction(1, 2) or (d == Fraction(1, 2) and f % 2):
        return f + 1
    return f


def _oracle_int_symmetric(x: float, lo: float, hi: float, qmin: int, qmax: int) -> float:
    amax = max(-min(lo, 0.0), max(hi, 0.0))
    s = Fraction(float(torch.tensor(amax, dtype=torch.float64) / qmax))  # the float64 scale, exactly
    s32 = Fraction(float(torch.tensor(float(s), dtype=torch.float32)))
    q = min(max(_round_half_even(Fraction(float(torch.tensor(x) / float(s32))) ), qmin), qmax)
    return float(torch.tensor(float(q * s32), dtype=torch.float32))


def _oracle_uint_affine(x: float, lo: float, hi: float, bits: int) -> float:
    qmax = (1 << bits) - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = float(torch.tensor((hi - lo), dtype=torch.float64) / qmax)
    z = min(max(_round_half_even(Fraction(0) - Fraction(lo) / Fraction(s)), 0), qmax)
    s32 = float(torch.tensor(s, dtype=torch.float32))
    r = _round_half_even(Fraction(float(torch.tensor(x) / s32)))
    q = min(max(r + z, 0), qmax)
    return float(torch.tensor(float((q - z) * Fraction(s32)), dtype=torch.float32))


class TestStaticRangeRule:
    XS = torch.tensor([-5.0, -3.0, -1.2345, -0.01, 0.0, 0.004, 0.5, 1.0, 1.99, 2.0, 2.5, 7.0])

    @pytest.mark.parametrize("fmt,qmin,qmax", [("int8", -128, 127), ("int8n", -127, 127), ("int4", -8, 7)])
    @pytest.mark.parametrize("lo,hi", [(-3.0, 2.0), (0.0, 2.5), (-0.7, 0.1)])
    def test_signed_integer_is_symmetric(self, fmt, qmin, qmax, lo, hi):
        got = StaticRange(lb.parse_format(fmt), lo, hi).quantize(self.XS)
        want = [_oracle_int_symmetric(float(x), lo, hi, qmin, qmax) for x in self.XS]
        assert got.tolist() == want

    @pytest.mark.parametrize("bits", [8, 4])
    @pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 2.5), (-3.0, -1.0), (0.3, 0.9)])
    def test_unsigned_integer_is_asymmetric_with_a_zero_point(self, bits, lo, hi):
        got = StaticRange(lb.parse_format(f"uint{bits}"), lo, hi).quantize(self.XS)
        want = [_oracle_uint_affine(float(x), lo, hi, bits) for x in self.XS]
        assert got.tolist() == want
        assert float(StaticRange(lb.parse_format(f"uint{bits}"), lo, hi).quantize(torch.zeros(1))) == 0.0

    @pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "e5m2", "fixed8_f4", "posit6_es1"])
    def test_float_formats_use_amax_over_fmt_max(self, spec):
        fmt = lb.parse_format(spec)
        got = StaticRange(fmt, -3.0, 2.0).quantize(self.XS)
        s = torch.tensor(3.0 / float(fmt.max), dtype=torch.float32)
        low = float(getattr(fmt, "min", -fmt.max))
        want = fmt.quantize((self.XS / s).clamp(low, float(fmt.max))) * s  # saturates, never NaN
        assert torch.equal(got, want)
        assert not torch.isnan(got).any()

    def test_zero_range_gives_exact_zeros(self):
        for spec in ("int8", "uint8", "posit8_es2"):
            out = StaticRange(lb.parse_format(spec), 0.0, 0.0).quantize(self.XS)
            assert torch.equal(out, torch.zeros_like(self.XS)), spec
            assert not torch.isnan(out).any()

    def test_float64_input_stays_float64(self):
        x = self.XS.double()
        out = StaticRange(lb.parse_format("int8"), -3.0, 2.0).quantize(x)
        assert out.dtype == torch.float64


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _batches(n: int = 4) -> "list[torch.Tensor]":
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(6, 5, generator=gen) * (i + 1) for i in range(n)]


STATIC_INT8 = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
               "input": {"format": "int8", "scaling": "static"}}


class TestCalibrateConfig:
    def test_minmax_ranges_are_the_inputs_extremes(self):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, STATIC_INT8, data)
        x = torch.cat(data)
        with torch.no_grad():
            a = torch.cat([torch.relu(model[0](b)) for b in data])
        ranges = {p: lc.input.range for p, lc in cfg.layers}
        assert ranges == {"0": (float(x.min()), float(x.max())), "2": (float(a.min()), float(a.max()))}
        assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)  # model untouched

    def test_named_observer_matches_one_fed_by_hand(self):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, {"input": {"format": "int4", "scaling": "static"}}, data, observer="mse")
        obs = MSEObserver("int4")
        for b in data:
            obs.observe(b)
        lo, hi = obs.range()
        assert dict(cfg.layers)["0"].input.range == (float(lo), float(hi))
        cfg_kl = lb.calibrate_config(model, {"input": {"format": "int8", "scaling": "static"}}, data, observer="kl")
        kl = KLObserver(quant_bins=128)
        for b in data:
            kl.observe(b)
        assert dict(cfg_kl.layers)["0"].input.range == tuple(float(t) for t in kl.range())

    def test_quantize_with_calibrated_config_applies_the_fixed_range(self):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, {"input": {"format": "int8", "scaling": "static"}}, data)
        lo, hi = dict(cfg.layers)["0"].input.range
        probe = torch.randn(3, 5) * 10  # outside the calibrated range: saturates
        with torch.no_grad():
            ref_in = StaticRange(lb.parse_format("int8"), lo, hi).quantize(probe)
            ref = model[0](ref_in)
            lb.quantize_(model, cfg)
            got = model[0](probe)
        assert torch.equal(got, ref)
        # the range is fixed: a later, wider batch does not move it
        with torch.no_grad():
            assert torch.equal(model[0](probe), ref)

    def test_config_round_trips_through_json(self):
        cfg = lb.calibrate_config(_model(), STATIC_INT8, _batches())
        again = lb.QuantConfig.from_json(cfg.to_json())
        assert again == cfg
        assert json.loads(cfg.to_json())["layers"]["0"]["input"]["range"] == list(dict(cfg.layers)["0"].input.range)

    def test_existing_ranges_are_kept_unless_recalibrating(self):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, STATIC_INT8, data[:1])
        again = lb.calibrate_config(model, cfg, data)
        assert again == cfg
        fresh = lb.calibrate_config(model, cfg, data, recalibrate=True)
        assert dict(fresh.layers)["0"].input.range != dict(cfg.layers)["0"].input.range

    def test_per_role_observers_and_output_role(self):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, {"output": {"format": "int8", "scaling": "static"},
                                          "input": {"format": "int8", "scaling": "static"}}, data,
                                  observer={"input": "minmax", "output": "kl"})
        out_lo, out_hi = dict(cfg.layers)["2"].output.range
        assert out_lo == -out_hi  # the KL rule is symmetric
        in_lo, in_hi = dict(cfg.layers)["2"].input.range
        assert in_lo == 0.0  # post-ReLU, min-max

    def test_training_flag_restored_and_nothing_left_hooked(self):
        model = _model().train()
        lb.calibrate_config(model, STATIC_INT8, _batches())
        assert model.training
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model)

    def test_config_without_static_roles_is_returned_unchanged(self):
        cfg = lb.QuantConfig.from_dict({"weight": "posit8_es2"})
        assert lb.calibrate_config(_model(), cfg, []) is cfg


class TestBadInput:
    def test_static_without_range_is_refused_before_anything_changes(self):
        model = _model()
        with pytest.raises(CalibrationError, match="calibrate_config"):
            lb.quantize_(model, {"weight": "int8", "input": {"format": "int8", "scaling": "static"}})
        assert type(model[0]) is nn.Linear

    def test_static_on_weight_or_grad_is_refused(self):
        for role in ("weight", "grad", "bias"):
            with pytest.raises(ValueError, match=rf"scaling='static' applies to the roles input, output.*{role}"):
                lb.QuantConfig.from_dict({role: {"format": "int8", "scaling": "static"}})

    @pytest.mark.parametrize("bad", [[2.0, 1.0], [0.0], "0,1", [0.0, float("inf")], [0, "x"]])
    def test_bad_range(self, bad):
        with pytest.raises(ValueError, match="range="):
            lb.QuantConfig.from_dict({"input": {"format": "int8", "scaling": "static", "range": bad}})

    def test_range_needs_static_and_static_needs_a_scalar_format_per_tensor(self):
        with pytest.raises(ValueError, match="needs scaling='static'"):
            lb.QuantConfig.from_dict({"input": {"format": "int8", "scaling": "absmax", "range": [0, 1]}})
        with pytest.raises(ValueError, match="scalar element format"):
            lb.QuantConfig.from_dict({"input": {"format": "mxfp8_e4m3fn", "scaling": "static"}})
        with pytest.raises(ValueError, match="per tensor"):
            lb.QuantConfig.from_dict({"input": {"format": "int8", "scaling": "static", "granularity": "channel"}})

    def test_unknown_observer(self):
        with pytest.raises(ValueError, match=r"observer='entropy'; allowed: minmax, ema"):
            lb.calibrate_config(_model(), STATIC_INT8, _batches(), observer="entropy")
        with pytest.raises(TypeError, match="not a lowbit Observer"):
            lb.calibrate_config(_model(), STATIC_INT8, _batches(), observer=lambda fmt: 3)
        with pytest.raises(ValueError, match=r"unknown role\(s\) \['grad'\]"):
            lb.calibrate_config(_model(), STATIC_INT8, _batches(), observer={"grad": "kl"})

    def test_no_data_and_a_layer_that_never_ran(self):
        with pytest.raises(CalibrationError, match="saw no data"):
            lb.calibrate_config(_model(), STATIC_INT8, [])

        class TwoHeads(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(5, 2), nn.Linear(5, 2)

            def forward(self, x):
                return self.a(x)

        with pytest.warns(lb.LowbitWarning, match="never ran"), pytest.raises(CalibrationError, match=r"\bb\.input"):
            lb.calibrate_config(TwoHeads(), STATIC_INT8, _batches())


class TestUnsignedStaticObservers:
    """uint8 static roles use a zero point, so the symmetric rules must not clip negative inputs."""

    @pytest.mark.parametrize("observer", ["mse", "kl"])
    def test_negative_inputs_stay_in_range(self, observer):
        model, data = _model(), _batches()
        cfg = lb.calibrate_config(model, {"input": {"format": "uint8", "scaling": "static"}}, data, observer=observer)
        lo0, hi0 = dict(cfg.layers)["0"].input.range  # raw inputs: both signs
        assert lo0 < 0 < hi0 and lo0 == -hi0
        lo2, hi2 = dict(cfg.layers)["2"].input.range  # post-ReLU: nothing negative
        assert lo2 == 0.0 < hi2

    def test_mse_rule_is_the_signed_grids(self):
        from lowbit.quant.ptq import observer_for

        data = _batches()
        obs = observer_for("mse", lb.parse_format("uint8"))
        ref = MSEObserver("int8")
        for b in data:
            obs.observe(b)
            ref.observe(b)
        assert [float(v) for v in obs.range()] == [float(v) for v in ref.range()]
