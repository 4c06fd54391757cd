"""LSQ quantizer: forward values, the LSQ gradients, initialization; prepare → train → convert."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lowbit as lb
from lowbit.quant.granularity import Granularity, quantize_with_scale
from lowbit.quant.qat import LSQQuantizer, convert, lsq_quantizers, prepare_qat


def _x(shape=(6, 20), seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


class TestForward:
    @pytest.mark.parametrize("spec", ["int8", "int4", "uint4", "fixed8_f4", "posit8_es2", "posit6_es1", "e4m3fn_sat"])
    @pytest.mark.parametrize("g", [Granularity.tensor(), Granularity.channel(0), Granularity.group(5, axis=1)], ids=str)
    def test_equals_quantize_with_scale_for_saturating_formats(self, spec, g):
        x = _x(scale=2.0)
        q = LSQQuantizer(spec, g, init_from=x)
        with torch.no_grad():
            q.step.mul_(torch.rand(q.step.shape, generator=torch.Generator().manual_seed(1)) + 0.5)
        assert torch.equal(q(x), quantize_with_scale(x, spec, q.step.detach(), granularity=g))

    def test_non_saturating_format_clamps_to_max(self):
        q = LSQQuantizer("e4m3fn", init_from=torch.ones(4))
        s = float(q.step.detach())
        y = q(torch.tensor([1e9, -1e9, 1.0])).detach()
        assert y.tolist()[:2] == [448 * s, -448 * s] and not torch.isnan(y).any()

    def test_lazy_per_tensor_initialization(self):
        q = LSQQuantizer("int4")
        assert not bool(q.initialized)
        x = _x()
        q(x)
        assert bool(q.initialized)
        assert float(q.step.detach()) == pytest.approx(2 * float(x.abs().mean()) / math.sqrt(7), rel=1e-6)

    def test_per_channel_needs_an_example(self):
        with pytest.raises(ValueError, match="needs init_from"):
            LSQQuantizer("int4", "channel")


class TestInit:
    def test_lsq_rule_per_channel(self):
        x = _x()
        q = LSQQuantizer("int8", "channel", init_from=x)
        expect = 2 * x.abs().mean(1, keepdim=True) / math.sqrt(127)
        assert torch.allclose(q.step.detach(), expect, rtol=1e-6)

    def test_posit_rule_centres_the_mean_magnitude(self):
        x = _x(scale=0.01)
        q = LSQQuantizer("posit8_es2", init_from=x)  # posit centre is exponent 0: mean|x/s| = 1
        assert float(q.step.detach()) == pytest.approx(float(x.abs().mean()), rel=1e-6)

    def test_zero_channel_gets_a_positive_step(self):
        x = _x()
        x[2] = 0
        q = LSQQuantizer("int4", "channel", init_from=x)
        s = q.step.detach().flatten()
        assert bool((s > 0).all()) and float(s[2]) == pytest.approx(2 * float(x.abs().mean()) / math.sqrt(7), rel=1e-6)
        y = q(x)
        assert not torch.isnan(y).any() and torch.equal(y[2].detach(), torch.zeros(20))
        assert float(LSQQuantizer("int4", init_from=torch.zeros(5)).step.detach()) == 1.0


class TestGradients:
    @pytest.mark.parametrize("spec", ["int4", "posit6_es1"])
    def test_lsq_estimator(self, spec):
        x = torch.cat([_x((200,), seed=2), torch.tensor([1e5, -1e5])]).requires_grad_(True)
        q = LSQQuantizer(spec, init_from=x[:200])  # step from the bulk: the outliers fall outside
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        (q(x) * w).sum().backward()
        fmt = lb.parse_format(spec)
        s = q.step.detach()
        v = x.detach() / s
        lo, hi = q.lo, q.hi
        inside = (v >= lo) & (v <= hi)
        # x: straight through inside the range, zero outside
        assert torch.equal(x.grad, torch.where(inside, w, torch.zeros_like(w)))
        # s: fmt.quantize(v) - v inside, the clamp value outside, times g = 1/sqrt(n·Q_P)
        ds = torch.where(inside, fmt.quantize(v) - v, v.clamp(lo, hi))
        g = 1 / math.sqrt(x.numel() * q.qp)
        expect = g * float((w.double() * ds.double()).sum())
        assert float(q.step.grad) == pytest.approx(expect, rel=1e-5)
        assert not bool(inside.all())  # the outliers exercised the clipped branch

    def test_grad_scale_override(self):
        x = _x()
        a, b = LSQQuantizer("int4", init_from=x), LSQQuantizer("int4", init_from=x, grad_scale=1.0)
        a(x).sum().backward()
        b(x).sum().backward()
        g = 1 / math.sqrt(x.numel() * 7)
        assert float(a.step.grad) == pytest.approx(g * float(b.step.grad), rel=1e-5)


def _task(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen)
    teacher = torch.randn(8, 1, generator=gen)
    y = torch.tanh(x @ teacher) + 0.5 * torch.sin(2 * x[:, :1])
    return x, y


def _train(model, x, y, steps=120, lr=0.01):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class TestPrepareConvert:
    @pytest.mark.parametrize("spec", ["int4", "posit6_es1"])
    def test_tiny_model_trains_and_converts_exactly(self, spec):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        prepare_qat(model, spec)
        assert parametrize.is_parametrized(model[0], "weight")
        steps0 = {n: q.step.detach().clone() for n, q in lsq_quantizers(model).items()}
        x, y = _task()
        losses = _train(model, x, y)
        assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
        assert all(not torch.equal(q.step.detach(), steps0[n]) for n, q in lsq_quantizers(model).items())
        with torch.no_grad():
            before = model(x)
        fmt = lb.parse_format(spec)
        expect = {}
        for name, q in lsq_quantizers(model).items():
            w = model.get_submodule(name).parametrizations.weight.original.detach()
            s = q.step.detach().abs()
            expect[name] = fmt.quantize(w / s) * s  # independent: the definition, no clamp
        model, scales = convert(model, return_scales=True)
        assert not parametrize.is_parametrized(model[0]) and not parametrize.is_parametrized(model[2])
        for name, w in expect.items():
            assert torch.equal(model.get_submodule(name).weight.detach(), w)
            assert str(scales[name][0]) == spec and scales[name][2] == Granularity.channel(0)
        with torch.no_grad():
            assert torch.equal(model(x), before)
        assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}

    def test_config_patterns_and_exclude(self):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        prepare_qat(model, {"weight": "int8", "layers": {"1": {"weight": "int4"}}, "exclude": ["2"]},
                    granularity="tensor")
        qs = lsq_quantizers(model)
        assert sorted(qs) == ["0", "1"] and str(qs["1"].format) == "int4" and qs["0"].step.dim() == 0

    def test_composes_with_quantize_for_activations(self):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
        lb.quantize_(model, {"input": "e4m3fn"})
        prepare_qat(model, "int4")
        x, y = _task(1)
        losses = _train(model, x, y, steps=60)
        assert losses[-1] < losses[0]
        convert(model)
        assert type(model[0]).__name__ == "QuantLinear"

    def test_errors(self):
        model = nn.Sequential(nn.Linear(4, 4))
        with pytest.raises(ValueError, match="learns weight and input steps only.*output"):
            prepare_qat(model, {"weight": "int8", "output": "int8"})
        with pytest.raises(ValueError, match="input scaling='histogram' conflicts with LSQ"):
            prepare_qat(model, {"input": {"format": "posit8_es2", "scaling": "histogram"}})
        with pytest.raises(ValueError, match="conflicts with LSQ"):
            prepare_qat(model, {"weight": {"format": "posit8_es2", "scaling": "amax"}})
        with pytest.raises(ValueError, match="matches no module"):
            prepare_qat(model, {"weight": "int8", "exclude": ["nope"]})
        with pytest.raises(TypeError, match="scalar element format"):
            prepare_qat(model, "mxfp8_e4m3fn")
        prepare_qat(model, "int8")
        with pytest.raises(ValueError, match="already parametrized"):
            prepare_qat(model, "int8")
        q = nn.Sequential(nn.Linear(4, 4))
        lb.quantize_(q, "int8")
        with pytest.raises(ValueError, match="already quantizes its weight"):
            prepare_qat(q, "int4")


class TestInputSteps:
    """LSQ's activation steps: one learnable step per layer input, fixed as a static range by convert."""

    @pytest.mark.parametrize("spec", ["int8", "uint8", "int4", "posit8_es2", "e4m3fn"])
    def test_train_then_convert_gives_the_same_numbers(self, spec):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        prepare_qat(model, {"weight": "int4", "input": spec})
        steps = lsq_quantizers(model, "input")
        assert sorted(steps) == ["0", "2"] and all(q.step.dim() == 0 for q in steps.values())
        x, y = _task()
        first = steps["0"].initial_step(x)  # LSQ's init from the first batch
        losses = _train(model, x, y, steps=40)
        assert losses[-1] < losses[0]
        assert float(steps["0"].step.detach()) != float(first)  # the step learned
        probe = x * 3  # beyond the learned range too
        with torch.no_grad():
            before = model(probe)
            s = steps["2"].effective_step()
            fmt = lb.parse_format(spec)
            hidden = torch.relu(model[0](probe))
            lo = -float(fmt.max) if spec != "uint8" else 0.0
            if spec == "int8" or spec == "int4":
                lo = float(fmt.min)
            by_hand = fmt.quantize(torch.clamp(hidden / s, lo, float(fmt.max))) * s  # the LSQ definition
            assert torch.equal(model[2].lowbit_input_lsq(hidden), by_hand)
        model, scales = convert(model, return_scales=True)
        assert type(model[0]).__name__ == "QuantLinear" and not hasattr(model[0], "lowbit_input_lsq")
        assert not model[0]._forward_pre_hooks
        role = model[2].lowbit_layer_config.input
        assert role.scaling == "static" and role.range[1] == float(fmt.max) * float(s)
        assert str(scales["2:input"][0]) == str(fmt)
        with torch.no_grad():
            assert torch.equal(model(probe), before)

    def test_state_dict_carries_the_input_step(self):
        torch.manual_seed(0)
        a = nn.Sequential(nn.Linear(8, 4))
        prepare_qat(a, {"input": "int8"})
        x, _ = _task()
        a(x)
        with torch.no_grad():
            a[0].lowbit_input_lsq.step.mul_(1.5)
        sd = a.state_dict()
        assert "0.lowbit_input_lsq.step" in sd
        b = nn.Sequential(nn.Linear(8, 4))
        prepare_qat(b, {"input": "int8"})
        b.load_state_dict(sd)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))

    def test_convert_before_any_forward_is_refused(self):
        model = nn.Sequential(nn.Linear(4, 4))
        prepare_qat(model, {"input": "int8"})
        with pytest.raises(ValueError, match="never initialized"):
            convert(model)
        with pytest.raises(ValueError, match="already learns an input step"):
            prepare_qat(model, {"input": "int8"})
        with pytest.raises(ValueError, match="role='grad'"):
            lsq_quantizers(model, "grad")
