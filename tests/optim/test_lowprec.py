"""LowPrecisionOptimizer: every step equals an independent reference loop that rounds the FP32
optimizer's grads, state and weights by hand; stochastic rounding is reproducible; master weights."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit as lb

STEPS = 5


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(6, 5, generator=g)), torch.nn.Parameter(torch.randn(6, generator=g) * 0.1)]


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=g), torch.randn(16, 6, generator=g)


def _loss(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w, b = params
    return ((x @ w.t() + b - y) ** 2).mean()


def _backward(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None
    _loss(params, *_data()).backward()


OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "rmsprop_centered": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05),
}


def _round_state_by_hand(opt: torch.optim.Optimizer, fmt: lb.NumberFormat) -> None:
    for p, st in opt.state.items():
        for name, v in st.items():
            if name != "step" and torch.is_tensor(v) and v.dtype.is_floating_point and v.shape == p.shape:
                st[name] = fmt.quantize(v)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_step_equals_rounded_fp32_update(name):
    grad_fmt, weight_fmt, state_fmt = (lb.parse_format(s) for s in ("e5m2", "posit16_es1", "posit16_es1"))
    params, ref = _params(), _params()
    opt = lb.LowPrecisionOptimizer(OPTIMIZERS[name](params), grad="e5m2", weight="posit16_es1",
                                   state="posit16_es1", weight_rounding="nearest_even")
    ref_opt = OPTIMIZERS[name](ref)
    for _ in range(STEPS):
        _backward(params)
        opt.step()
        # reference: plain FP32 optimizer, rounding done here by hand
        _backward(ref)
        with torch.no_grad():
            for p in ref:
                p.grad = grad_fmt.quantize(p.grad)
        ref_opt.step()
        _round_state_by_hand(ref_opt, state_fmt)
        with torch.no_grad():
            for p in ref:
                p.copy_(weight_fmt.quantize(p))
        for p, r in zip(params, ref):
            assert torch.equal(p, r)
            assert torch.equal(p.grad, r.grad)
        for p, r in zip(params, ref):
            for key, value in ref_opt.state[r].items():
                assert torch.equal(opt.state[p][key], value), key


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop_centered"])
def test_weights_only_equals_quantize_of_fp32_update(name):
    """One step from identical weights: W.quantize(FP32 optimizer's result), bit for bit."""
    fmt = lb.parse_format("posit8_es2")
    params, ref = _params(), _params()
    opt = lb.LowPrecisionOptimizer(OPTIMIZERS[name](params), weight=fmt, weight_rounding="nearest_even")
    ref_opt = OPTIMIZERS[name](ref)
    _backward(params)
    _backward(ref)
    opt.step()
    ref_opt.step()
    for p, r in zip(params, ref):
        assert torch.equal(p, fmt.quantize(r.detach()))


def test_named_state_tensors_are_exactly_in_their_formats():
    params = _params()
    fmts = {"exp_avg": lb.parse_format("posit16_es1"), "exp_avg_sq": lb.parse_format("e8m7")}
    opt = lb.LowPrecisionOptimizer(torch.optim.Adam(params, lr=0.01), state=fmts)
    for _ in range(STEPS):
        _backward(params)
        opt.step()
    for p in params:
        st = opt.state[p]
        for name, fmt in fmts.items():
            assert torch.equal(fmt.quantize(st[name]), st[name])
        assert not torch.equal(lb.parse_format("e8m7").quantize(st["exp_avg"]), st["exp_avg"])
        assert float(st["step"]) == STEPS


def test_step_counters_and_scalar_state_are_never_quantized():
    params, ref = _params(), _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.NAdam(params, lr=0.01), state="e2m1fn")  # max 6, coarse
    ref_opt = torch.optim.NAdam(ref, lr=0.01)
    for _ in range(9):
        _backward(params)
        opt.step()
    _backward(ref)
    ref_opt.step()
    for p in params:
        assert float(opt.state[p]["step"]) == 9.0  # 9 is not an e2m1fn value
        assert torch.equal(lb.parse_format("e2m1fn").quantize(opt.state[p]["exp_avg"]), opt.state[p]["exp_avg"])
    # mu_product (a scalar) after the first step equals the plain optimizer's
    opt2 = lb.LowPrecisionOptimizer(torch.optim.NAdam(_params(), lr=0.01), state="e2m1fn")
    ps = opt2.model_params
    _backward(ps)
    opt2.step()
    assert torch.equal(opt2.state[ps[0]]["mu_product"], ref_opt.state[ref[0]]["mu_product"])


def test_unknown_state_name_lists_the_optimizers_state_names():
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1, momentum=0.9), state={"exp_avg": "e5m2"})
    _backward(params)
    with pytest.raises(ValueError, match=r"exp_avg.*momentum_buffer"):
        opt.step()


def test_naming_the_step_counter_is_refused():
    with pytest.raises(ValueError, match="step counters are never quantized"):
        lb.LowPrecisionOptimizer(torch.optim.Adam(_params()), state={"step": "e5m2"})


def _train(seed: int, *, master: bool = False, steps: int = STEPS) -> list[torch.Tensor]:
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.Adam(params, lr=0.01), grad="e4m3fn", weight="posit8_es2",
                                   state="posit16_es1", grad_rounding="stochastic", state_rounding="stochastic",
                                   master_weights=master, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        _backward(params)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("master", [False, True])
def test_seeded_stochastic_rounding_is_bit_reproducible(master):
    a, b, c = _train(3, master=master), _train(3, master=master), _train(4, master=master)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))
    fmt = lb.parse_format("posit8_es2")
    assert all(torch.equal(fmt.quantize(x), x) for x in a)


def test_stochastic_weight_rounding_is_unbiased_where_nearest_stalls():
    """Updates of a tenth of an ulp: nearest rounding never moves, stochastic moves on average."""
    fmt = lb.parse_format("posit8_es2")
    w0 = torch.full((20000,), 1.0)
    runs = {}
    for mode in ("nearest_even", "stochastic"):
        w = torch.nn.Parameter(w0.clone())
        opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=1.0), weight=fmt, weight_rounding=mode,
                                       generator=torch.Generator().manual_seed(0))
        w.grad = torch.full_like(w, 0.00625)  # ulp of posit8_es2 just below 1 is 0.0625
        opt.step()
        runs[mode] = w.detach()
    assert torch.equal(runs["nearest_even"], w0)
    assert set(runs["stochastic"].unique().tolist()) == {0.9375, 1.0}
    assert abs(runs["stochastic"].mean().item() - (1.0 - 0.00625)) < 5e-4


def test_master_weights_follow_the_reference_recipe():
    """Masters take FP32 steps on grads computed at the quantized weights; params = W(master)."""
    fmt = lb.parse_format("posit8_es2")
    lr = 0.05
    params = _params()
    masters = [p.detach().clone() for p in params]
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=lr), weight=fmt, master_weights=True,
                                   weight_rounding="nearest_even")
    for p, m in zip(params, masters):
        assert torch.equal(p, fmt.quantize(m))  # quantized at construction
    for _ in range(STEPS):
        _backward(params)
        opt.step()
        q = [fmt.quantize(m).requires_grad_() for m in masters]
        _loss(q, *_data()).backward()
        masters = [m.add(qi.grad, alpha=-lr) for m, qi in zip(masters, q)]  # as SGD computes it
        for p, m in zip(params, masters):
            assert torch.equal(opt.master_of(p), m)
            assert torch.equal(p, fmt.quantize(m))
    assert opt.param_groups[0]["params"][0] is opt.master_of(params[0])


def test_master_weights_accumulate_updates_below_half_an_ulp():
    fmt = "posit8_es2"
    results = {}
    for master in (False, True):
        w = torch.nn.Parameter(torch.ones(4))
        opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=1.0), weight=fmt, master_weights=master,
                                       weight_rounding="nearest_even")
        for _ in range(10):
            w.grad = torch.full_like(w, 0.01)  # each step moves 1.0 by a sixth of an ulp
            opt.step()
        results[master] = w.detach().clone()
    assert torch.equal(results[False], torch.ones(4))  # stalls
    assert torch.equal(results[True], torch.full((4,), 0.875))  # master 0.9 -> posit8_es2 0.875


def test_master_weights_of_half_precision_params_are_float32():
    w = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=0.1), weight="e4m3fn", master_weights=True)
    assert opt.master_of(w).dtype == torch.float32 and w.dtype == torch.bfloat16
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.master_of(w).grad.dtype == torch.float32
    assert torch.equal(lb.parse_format("e4m3fn").quantize(w), w)


def test_grad_scale_rounds_the_scaled_gradient_then_unscales():
    fmt = lb.parse_format("posit8_es2")
    g = torch.tensor([3e-5, 0.3, 7.0, -1e-3])
    for scale in (1.0, 1024.0):
        w = torch.nn.Parameter(torch.zeros(4))
        opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=1.0), grad=fmt)
        w.grad = g * scale
        opt.step(grad_scale=scale)
        assert torch.equal(w.detach(), -(fmt.quantize(g * scale) / scale))
    assert not torch.equal(fmt.quantize(g * 1024) / 1024, fmt.quantize(g))  # the scale matters


def test_lr_scheduler_drives_the_wrapped_optimizer():
    params, ref = _params(), _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), weight="posit16_es1",
                                   weight_rounding="nearest_even")
    ref_opt = torch.optim.SGD(ref, lr=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    fmt = lb.parse_format("posit16_es1")
    for _ in range(STEPS):
        _backward(params)
        opt.step()
        sched.step()
        _backward(ref)
        ref_opt.step()
        ref_sched.step()
        with torch.no_grad():
            for r in ref:
                r.copy_(fmt.quantize(r))
        assert opt.optimizer.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == 0.1 * 0.5**2
    assert all(torch.equal(p, r) for p, r in zip(params, ref))


def test_step_hooks_run_once_per_step():
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1))
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    _backward(params)
    opt.step()
    assert seen == ["pre", "post"]


@pytest.mark.parametrize("master", [False, True])
def test_state_dict_round_trip_resumes_bit_identically(master):
    def make(params):
        return lb.LowPrecisionOptimizer(torch.optim.Adam(params, lr=0.01), weight="posit8_es2", state="e5m2",
                                        master_weights=master, generator=torch.Generator().manual_seed(11))

    params = _params()
    opt = make(params)
    for _ in range(3):
        _backward(params)
        opt.step()
    saved_opt = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    assert ("lowbit" in saved_opt) and (saved_opt["lowbit"]["master_weights"] is not None) == master
    for _ in range(3):
        _backward(params)
        opt.step()

    params2 = _params(seed=99)
    opt2 = make(params2)
    with torch.no_grad():
        for p, s in zip(params2, saved_params):
            p.copy_(s)
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        _backward(params2)
        opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(params, params2))


def test_add_param_group_and_zero_grad_cover_masters():
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params[:1], lr=0.1), weight="posit8_es2", master_weights=True,
                                   weight_rounding="nearest_even")
    opt.add_param_group({"params": params[1:], "lr": 0.2})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.2
    assert opt.model_params == params
    before = opt.master_of(params[1]).clone()
    _backward(params)
    grad = params[1].grad.clone()
    opt.step()
    assert torch.equal(opt.master_of(params[1]), before.add(grad, alpha=-0.2))
    opt.zero_grad()
    assert all(p.grad is None and opt.master_of(p).grad is None for p in params)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params[:1]})


def test_params_without_grad_are_left_alone():
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), weight="posit8_es2")
    before = params[1].detach().clone()  # not a posit8_es2 value
    _backward(params)
    params[1].grad = None
    opt.step()
    assert torch.equal(params[1], before)
    assert torch.equal(lb.parse_format("posit8_es2").quantize(params[0]), params[0])


def test_bad_arguments_are_named():
    params = _params()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        lb.LowPrecisionOptimizer(params)
    with pytest.raises(TypeError, match="grad must be a format spec"):
        lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), grad=8)
    with pytest.raises(lb.FormatSpecError):
        lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), weight="posit8")
    with pytest.raises(ValueError, match="weight_rounding: rounding='up' is not a rounding mode"):
        lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), weight_rounding="up")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), generator=0)
    with pytest.raises(TypeError, match="state dict keys"):
        lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), state={0: "e5m2"})
    with pytest.raises(TypeError, match=r"state\['exp_avg'\] must be a format spec"):
        lb.LowPrecisionOptimizer(torch.optim.Adam(params), state={"exp_avg": 1.5})
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1))
    with pytest.raises(TypeError, match="already a LowPrecisionOptimizer"):
        lb.LowPrecisionOptimizer(opt)
    with pytest.raises(ValueError, match="grad_scale must be a positive number"):
        opt.step(grad_scale=0.0)


def test_closure_is_evaluated_once_and_its_loss_returned():
    params = _params()
    opt = lb.LowPrecisionOptimizer(torch.optim.SGD(params, lr=0.1), grad="e5m2")
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _loss(params, *_data())
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and torch.is_tensor(loss)
    assert torch.equal(lb.parse_format("e5m2").quantize(params[0].grad), params[0].grad)
