"""Loss scalers: overflow skips the step and backs off, growth after the interval, format-aware
overflow, exact unscaling, and the posit-histogram rule's power of two on crafted gradients."""

from __future__ import annotations

import math

import pytest
import torch

import lowbit as lb


def _setup(lr: float = 0.5) -> tuple[torch.nn.Parameter, torch.optim.SGD]:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    return w, torch.optim.SGD([w], lr=lr, momentum=0.9)


def _backward(scaler, w: torch.Tensor, coeff: torch.Tensor) -> None:
    w.grad = None
    scaler.scale((w * coeff).sum()).backward()  # true gradient: coeff


def test_dynamic_overflow_skips_step_and_backs_off():
    w, opt = _setup()
    scaler = lb.DynamicLossScaler(init_scale=2.0**10, growth_interval=3)
    _backward(scaler, w, torch.tensor([1.0, 1.0, 1.0]))
    assert scaler.step(opt) and scaler.clean_steps == 1
    before = w.detach().clone()
    momentum = opt.state[w]["momentum_buffer"].clone()
    _backward(scaler, w, torch.tensor([1.0, float("inf"), 1.0]))
    assert scaler.step(opt) is False
    assert torch.equal(w.detach(), before) and torch.equal(opt.state[w]["momentum_buffer"], momentum)
    assert scaler.loss_scale == 2.0**9 and scaler.clean_steps == 0
    assert scaler.skipped_steps == 1 and scaler.steps == 2
    _backward(scaler, w, torch.tensor([float("nan"), 1.0, 1.0]))
    assert scaler.step(opt) is False and scaler.loss_scale == 2.0**8


def test_dynamic_grows_after_interval_of_clean_steps():
    w, opt = _setup()
    scaler = lb.DynamicLossScaler(init_scale=4.0, growth_factor=2.0, growth_interval=3)
    scales = []
    for _ in range(7):
        _backward(scaler, w, torch.tensor([0.1, 0.2, 0.3]))
        assert scaler.step(opt)
        scales.append(scaler.loss_scale)
    assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 16.0, 16.0]


def test_dynamic_scale_is_clamped():
    w, opt = _setup()
    scaler = lb.DynamicLossScaler(init_scale=4.0, min_scale=2.0, max_scale=8.0, growth_interval=1)
    for _ in range(3):
        _backward(scaler, w, torch.tensor([math.inf, 0.0, 0.0]))
        scaler.step(opt)
    assert scaler.loss_scale == 2.0
    for _ in range(5):
        _backward(scaler, w, torch.ones(3))
        scaler.step(opt)
    assert scaler.loss_scale == 8.0


@pytest.mark.parametrize("spec", ["e5m2", "posit8_es2"])
def test_format_aware_overflow(spec):
    fmax = lb.parse_format(spec).max
    w, opt = _setup()
    scaler = lb.DynamicLossScaler(init_scale=1.0, check_format=spec)
    _backward(scaler, w, torch.tensor([fmax, -fmax, 0.0]))  # at max: representable, no overflow
    assert scaler.step(opt)
    _backward(scaler, w, torch.tensor([fmax * 1.01, 0.0, 0.0]))  # finite in fp32, beyond the format
    assert scaler.step(opt) is False
    assert scaler.loss_scale == 1.0  # backed off to 0.5, clamped at min_scale=1.0
    plain = lb.DynamicLossScaler(init_scale=1.0)
    _backward(plain, w, torch.tensor([fmax * 1.01, 0.0, 0.0]))
    assert plain.step(opt)


def test_unscaled_gradients_and_update_are_exact():
    w, opt = _setup(lr=0.25)
    ref, ref_opt = _setup(lr=0.25)
    scaler = lb.StaticLossScaler(2.0**12)
    coeff = torch.tensor([0.1, -3.0, 1e-4])
    for _ in range(3):
        _backward(scaler, w, coeff)
        assert scaler.step(opt)
        assert torch.equal(w.grad, coeff)
        ref.grad = coeff.clone()
        ref_opt.step()
    assert torch.equal(w, ref) and scaler.loss_scale == 2.0**12


def test_static_scaler_skips_nonfinite_steps():
    w, opt = _setup()
    scaler = lb.StaticLossScaler(8.0)
    _backward(scaler, w, torch.tensor([1.0, float("inf"), 0.0]))
    assert scaler.step(opt) is False and scaler.loss_scale == 8.0 and torch.equal(w, torch.tensor([1.0, 2.0, 3.0]))


def test_low_precision_optimizer_rounds_the_scaled_gradients():
    fmt = lb.parse_format("posit8_es2")
    coeff = torch.tensor([3e-6, 1.7e-5, 0.3, -2.1e-4])
    w = torch.nn.Parameter(torch.zeros(4))
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=1.0), grad=fmt)
    scaler = lb.StaticLossScaler(2.0**14)
    _backward(scaler, w, coeff)
    assert scaler.step(opt)
    expected = -(fmt.quantize(coeff * 2.0**14) / 2.0**14)
    assert torch.equal(w.detach(), expected)
    assert not torch.equal(expected, -fmt.quantize(coeff))


@pytest.mark.parametrize("master", [False, True])
def test_scalers_use_the_model_gradients_of_a_master_weight_optimizer(master):
    w = torch.nn.Parameter(torch.ones(3))
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=1.0), weight="posit16_es1", master_weights=master,
                                   weight_rounding="nearest_even")
    scaler = lb.DynamicLossScaler(init_scale=2.0**8)
    _backward(scaler, w, torch.tensor([1.0, float("inf"), 1.0]))
    assert scaler.step(opt) is False and torch.equal(w, torch.ones(3))
    _backward(scaler, w, torch.tensor([0.25, 0.5, 0.125]))
    assert scaler.step(opt)
    assert torch.equal(w.detach(), torch.tensor([0.75, 0.5, 0.875]))


def test_unscale_then_clip_then_step():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = lb.DynamicLossScaler(init_scale=2.0**10)
    _backward(scaler, w, torch.tensor([3.0, 4.0, 0.0]))
    assert scaler.unscale_(opt) is False
    assert torch.equal(w.grad, torch.tensor([3.0, 4.0, 0.0]))
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_([w], 1.0)
    assert scaler.step(opt)
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 0.6, 2.0 - 0.8, 3.0]))


def _crafted_grads() -> torch.Tensor:
    # 60 elements in binade 2^-12, 50 in 2^-11, 80 in 2^-5, a few elsewhere
    g = torch.cat([
        torch.full((60,), 1.25 * 2.0**-12),
        torch.full((50,), -1.5 * 2.0**-11),
        torch.full((80,), 1.0625 * 2.0**-5),
        torch.tensor([3.0, 0.0, -0.75]),
    ])
    return g[torch.randperm(g.numel(), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize(("spec", "bin_width", "target", "peak"), [
    ("posit8_es2", 1, 0, -5),
    ("posit8_es2", 2, 0, -12),  # bins [-12, -11] (110) beat [-6, -5] (80); middle binade -12
    ("posit8_es2", 3, 0, -11),  # bin [-12, -10] (110); middle binade -11
    ("posit16_es1_s-4", 1, -4, -5),  # scaled posit: accurate region around 2^-4
    ("posit6_es1_s-4", 2, -4, -12),
    ("e5m2", 1, 0, -5),  # emin -14, emax 15 -> t = 0
    ("e4m3fn", 1, 1, -5),  # emin -6, emax 8 -> t = 1
])
def test_histogram_rule_picks_the_documented_power_of_two(spec, bin_width, target, peak):
    w = torch.nn.Parameter(torch.zeros(_crafted_grads().numel()))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = lb.PositHistogramLossScaler(spec, bin_width=bin_width, every=4)
    assert scaler.target_log2 == target
    w.grad = _crafted_grads()
    assert scaler.step(opt)
    assert scaler.last_peak_log2 == peak
    assert scaler.loss_scale == 2.0 ** (target - peak)


def test_histogram_measures_true_gradients_every_k_steps():
    w = torch.nn.Parameter(torch.zeros(_crafted_grads().numel()))
    opt = torch.optim.SGD([w], lr=0.0)
    scaler = lb.PositHistogramLossScaler("posit8_es2", every=3, init_scale=1.0)
    scales = []
    for step in range(7):
        g = _crafted_grads() * (2.0**-4 if step >= 4 else 1.0)  # gradients shrink 16x from step 4
        w.grad = g * scaler.loss_scale  # what backward of the scaled loss gives
        assert scaler.step(opt)
        scales.append(scaler.loss_scale)
    # recomputed at steps 0, 3, 6 only; the peak binade of g is 2^-5, then 2^-9
    assert scales == [2.0**5, 2.0**5, 2.0**5, 2.0**5, 2.0**5, 2.0**5, 2.0**9]


def test_histogram_ties_go_to_larger_exponents_and_overflow_remeasures():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = lb.PositHistogramLossScaler("posit8_es2", every=100)
    w.grad = torch.tensor([2.0**-8, 2.0**-8, 2.0**3, 2.0**3])
    scaler.step(opt)
    assert scaler.loss_scale == 2.0**-3
    w.grad = torch.tensor([2.0**-8, float("inf"), 2.0**-8, 1.0]) * scaler.loss_scale
    before = w.detach().clone()
    assert scaler.step(opt) is False and torch.equal(w.detach(), before)
    assert scaler.loss_scale == 2.0**8  # re-measured from the finite part at once
    w.grad = torch.full((4,), float("nan"))
    assert scaler.step(opt) is False and scaler.loss_scale == 2.0**7  # nothing finite: halve


def test_scaler_state_dict_round_trip():
    w, opt = _setup()
    scaler = lb.DynamicLossScaler(init_scale=64.0, growth_interval=5)
    for coeff in ([1.0, 1.0, 1.0], [math.inf, 0.0, 0.0], [1.0, 2.0, 3.0]):
        _backward(scaler, w, torch.tensor(coeff))
        scaler.step(opt)
    sd = scaler.state_dict()
    assert sd == {"scale": 32.0, "steps": 3, "skipped_steps": 1, "clean_steps": 1}
    other = lb.DynamicLossScaler(growth_interval=5)
    other.load_state_dict(sd)
    assert other.state_dict() == sd and other.loss_scale == 32.0 == other.get_scale()


def test_scale_multiplies_the_loss():
    scaler = lb.StaticLossScaler(8.0)
    assert scaler.scale(torch.tensor(1.5)).item() == 12.0
    with pytest.raises(TypeError, match="loss must be a torch.Tensor"):
        scaler.scale(1.5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="init_scale must be a positive finite number"):
        lb.DynamicLossScaler(init_scale=0.0)
    with pytest.raises(ValueError, match="growth_factor must be > 1"):
        lb.DynamicLossScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match=r"backoff_factor must be in \(0, 1\)"):
        lb.DynamicLossScaler(backoff_factor=1.5)
    with pytest.raises(ValueError, match="growth_interval must be an int >= 1"):
        lb.DynamicLossScaler(growth_interval=0)
    with pytest.raises(ValueError, match=r"init_scale=0.5 must lie in \[min_scale, max_scale\]"):
        lb.DynamicLossScaler(init_scale=0.5)
    with pytest.raises(TypeError, match="check_format must be a format spec"):
        lb.StaticLossScaler(1.0, check_format=5)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        lb.PositHistogramLossScaler(every=0)
    with pytest.raises(ValueError, match="pass target_log2"):
        lb.PositHistogramLossScaler("int8")
    assert lb.PositHistogramLossScaler("int8", target_log2=3).target_log2 == 3
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        lb.StaticLossScaler(1.0).step(object())
