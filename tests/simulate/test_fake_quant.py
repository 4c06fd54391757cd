"""fake_quantize / Quantizer: forward equals fmt.quantize, gradients pass straight through
(rounded to the backward format when one is given)."""

from __future__ import annotations

import pytest
import torch

import lowbit as lb
from lowbit.testing import assert_floats_identical

SPECS = ["posit8_es2", "posit16_es1", "e4m3fn", "e5m2", "e2m1fn", "fixed8_f4", "int8"]


def _wide(n: int = 4096, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.exp2(torch.randint(-12, 12, (n,), generator=g).float())


@pytest.mark.parametrize("spec", SPECS)
def test_forward_equals_format_quantize(spec):
    x = _wide().requires_grad_()
    y = lb.fake_quantize(x, spec)
    assert_floats_identical(y.detach(), lb.parse_format(spec).quantize(x.detach()))


@pytest.mark.parametrize("spec", SPECS)
def test_backward_without_format_is_identity(spec):
    x = _wide().requires_grad_()
    g = _wide(seed=1)
    lb.fake_quantize(x, spec).backward(g)
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("bwd", ["e5m2", "posit8_es2", "e4m3fn_sat"])
def test_backward_gradient_is_rounded_to_backward_format(bwd):
    x = _wide().requires_grad_()
    g = _wide(seed=2)
    lb.fake_quantize(x, "posit8_es2", backward=bwd).backward(g)
    assert_floats_identical(x.grad, lb.parse_format(bwd).quantize(g))


def test_backward_rounding_defaults_to_forward_rounding_and_can_differ():
    x = _wide().requires_grad_()
    g = _wide(seed=3)
    lb.fake_quantize(x, "e4m3fn", backward="e5m2", rounding="toward_zero").backward(g)
    assert torch.equal(x.grad, lb.parse_format("e5m2").quantize(g, "toward_zero"))
    x.grad = None
    lb.fake_quantize(x, "e4m3fn", backward="e5m2", backward_rounding="ceil").backward(g)
    assert torch.equal(x.grad, lb.parse_format("e5m2").quantize(g, "ceil"))


def test_stochastic_backward_is_reproducible_with_a_seeded_generator():
    x = _wide().requires_grad_()
    g = _wide(seed=4)
    grads = []
    for _ in range(2):
        x.grad = None
        gen = torch.Generator().manual_seed(7)
        lb.fake_quantize(x, "e4m3fn", backward="e5m2", backward_rounding="stochastic",
                         backward_generator=gen).backward(g)
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert not torch.equal(grads[0], lb.parse_format("e5m2").quantize(g))  # not plain nearest


def test_none_forward_is_identity_with_quantized_gradient():
    x = _wide().requires_grad_()
    g = _wide(seed=5)
    y = lb.fake_quantize(x, None, backward="e5m2")
    assert torch.equal(y.detach(), x.detach())
    y.backward(g)
    assert torch.equal(x.grad, lb.parse_format("e5m2").quantize(g))


def test_quantizer_module_matches_function_and_keeps_dtype():
    q = lb.Quantizer(forward="posit8_es2", backward="e5m2")
    x = _wide().to(torch.bfloat16).requires_grad_()
    y = q(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.detach(), lb.parse_format("posit8_es2").quantize(x.detach()))
    g = _wide(seed=6).to(torch.bfloat16)
    y.backward(g)
    assert torch.equal(x.grad, lb.parse_format("e5m2").quantize(g))
    assert "forward=posit8_es2" in repr(q) and "backward=e5m2" in repr(q)


def test_bad_arguments_name_the_problem():
    with pytest.raises(lb.FormatSpecError):
        lb.fake_quantize(torch.ones(2), "posit8")
    with pytest.raises(ValueError, match="rounding"):
        lb.fake_quantize(torch.ones(2), "e4m3fn", rounding="up")
    with pytest.raises(TypeError, match="backward"):
        lb.fake_quantize(torch.ones(2), "e4m3fn", backward=8)
    with pytest.raises(TypeError, match="x"):
        lb.fake_quantize(torch.ones(2, dtype=torch.int32), "e4m3fn")


# ---------------------------------------------------------------- one straight-through estimator
def _role_cases():
    from lowbit.formats.granularity import as_granularity
    from lowbit.simulate.layers import RoleQuantizer

    fmt = lb.parse_format
    return {
        "plain": RoleQuantizer(fmt("posit8_es2")),
        "amax": RoleQuantizer(fmt("e4m3fn"), scaling="amax"),
        "absmax_channel": RoleQuantizer(fmt("int4"), scaling="absmax", granularity=as_granularity("channel")),
        "static": RoleQuantizer(fmt("int8"), scaling="static", range=(-3.0, 5.0)),
        "fitted_per_channel": RoleQuantizer(fmt("codebook2"), granularity=as_granularity("channel")),
    }


@pytest.mark.parametrize("case", ["plain", "amax", "absmax_channel", "static", "fitted_per_channel"])
def test_every_role_quantizer_passes_the_gradient_straight_through(case):
    q = _role_cases()[case]
    x = _wide(24 * 16, seed=8).reshape(24, 16).requires_grad_()
    g = _wide(24 * 16, seed=9).reshape(24, 16)
    y = q(x)
    assert not torch.equal(y.detach(), x.detach())  # the forward did round
    y.backward(g)
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("case", ["plain", "absmax_channel", "static", "fitted_per_channel"])
def test_the_grad_role_rounds_the_straight_through_gradient(case):
    from lowbit.simulate.layers import RoleQuantizer

    q = _role_cases()[case]
    grad = RoleQuantizer(lb.parse_format("e5m2"))
    x = _wide(24 * 16, seed=10).reshape(24, 16).requires_grad_()
    g = _wide(24 * 16, seed=11).reshape(24, 16)
    q(x, backward=grad).backward(g)
    assert torch.equal(x.grad, lb.parse_format("e5m2").quantize(g))


def test_straight_through_applies_forward_and_backward_functions():
    from lowbit.simulate.fake_quant import straight_through

    x = _wide(seed=12).requires_grad_()
    g = _wide(seed=13)
    fmt = lb.parse_format("posit6_es1")
    y = straight_through(x, fmt.quantize, lambda t: fmt.quantize(t, "toward_zero"))
    assert torch.equal(y.detach(), fmt.quantize(x.detach()))
    y.backward(g)
    assert torch.equal(x.grad, fmt.quantize(g, "toward_zero"))
    x.grad = None
    straight_through(x, torch.round).backward(g)
    assert torch.equal(x.grad, g)
