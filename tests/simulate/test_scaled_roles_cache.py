"""Scaled roles in inference: the weight cache serves histogram / amax / fixed-scale / absmax
weights bit for bit as a fresh quantization would, and a frozen scale measures nothing per call."""

from __future__ import annotations

import copy
import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.kernels import amax as amax_module
from lowbit.schemes import power_of_two as scaling  # where the scale tracker looks its rules up
from lowbit.simulate import layers
from lowbit.simulate.scaling import histogram_exponent, scaled_format


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly the same values, NaNs in the same places (an overflowing e4m3fn weight is NaN)."""
    return (a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b))
            and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


class _EveryCallTracker:
    """The scaling rules written out as documented, measuring every call (no skipping, no cache)."""

    def __init__(self, fmt: str, rule: "str | int", every: "int | None", history: int) -> None:
        self.fmt, self.rule, self.every = lb.parse_format(fmt), rule, every
        self.calls, self.k, self.window = 0, 0, deque(maxlen=history)

    def update(self, x: torch.Tensor) -> int:
        if isinstance(self.rule, int):
            return self.rule
        if self.rule == "amax":
            finite = x[torch.isfinite(x)].abs()
            self.window.append(float(finite.max()) if finite.numel() else 0.0)
        if self.calls == 0 or (self.every is not None and self.calls % self.every == 0):
            if self.rule == "histogram":
                self.k = histogram_exponent(x, self.fmt)
            else:
                a = max(self.window)
                self.k = 0 if a == 0 else next(k for k in range(-200, 200) if a <= math.ldexp(self.fmt.max, k))
        self.calls += 1
        return self.k


# (format, scaling, every, history)
TRACKED = [
    ("posit8_es2", "histogram", None, 16),
    ("posit8_es2", "histogram", 1, 16),
    ("e4m3fn", "histogram", 3, 16),
    ("e4m3fn", "amax", None, 16),
    ("e4m3fn", "amax", 1, 16),
    ("e5m2", "amax", 4, 2),
    ("posit8_es1", "amax", 3, 16),
    ("posit8_es2", -2, None, 16),
]


def _edit(step: int, w: torch.Tensor, saved: torch.Tensor) -> None:
    """Weight writes that bump no version counter: scale, replace, restore an old value, negate a zero."""
    if step == 3:
        w.data.mul_(64.0)  # moves every histogram bin and amax
    elif step == 5:
        w.data.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(step)) / 100)
    elif step == 8:
        w.data.copy_(saved)  # bits seen before, maybe under another exponent
    elif step == 10:
        w.detach().numpy()[0, 0] = 0.0
    elif step == 11:
        w.detach().numpy()[0, 0] = -0.0


@pytest.mark.parametrize("spec,rule,every,history", TRACKED)
def test_cached_scaled_weight_forwards_equal_the_rule_measured_on_every_call(spec, rule, every, history):
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    role = {"format": spec, "scaling": rule, "every": every, "history": history}
    cached = lb.quantize_(copy.deepcopy(layer), {"weight": role}).eval()
    uncached = lb.quantize_(copy.deepcopy(layer), {"weight": role}).eval()  # read with grad: never cached
    oracle = _EveryCallTracker(spec, rule, every, history)
    w_c, w_u = cached.lowbit_float_tensor("weight"), uncached.lowbit_float_tensor("weight")
    saved = w_c.detach().clone()
    for step in range(14):
        _edit(step, w_c, saved)
        _edit(step, w_u, saved)
        x = torch.randn(5, 16)
        with torch.no_grad():
            got = cached(x)
        want_w = scaled_format(spec, oracle.update(w_c.detach())).quantize(w_c.detach())
        assert _identical(got, F.linear(x, want_w, cached.lowbit_float_tensor("bias").detach())), step
        with torch.enable_grad():
            assert _identical(uncached(x).detach(), got), step
        assert cached.lowbit_roles["weight"].tracker.exponent == oracle.k or isinstance(rule, int)
        counted = 0 if isinstance(rule, int) else step + 1  # a fixed exponent counts no calls
        assert cached.lowbit_roles["weight"].tracker.calls == uncached.lowbit_roles["weight"].tracker.calls == counted


@pytest.mark.parametrize("spec,rule,every,history", TRACKED)
def test_scaled_inputs_equal_the_rule_measured_on_every_call(spec, rule, every, history):
    torch.manual_seed(1)
    q = lb.quantize_(nn.Linear(16, 8), {"input": {"format": spec, "scaling": rule, "every": every,
                                                   "history": history}}).eval()
    oracle = _EveryCallTracker(spec, rule, every, history)
    for step in range(14):
        x = torch.randn(5, 16) * 4.0 ** (step % 5 - 2)
        x[0, step % 16] = (float("inf"), float("nan"), 1e4)[step % 3]
        with torch.no_grad():
            got = q(x)
        want = F.linear(scaled_format(spec, oracle.update(x)).quantize(x), q.lowbit_float_tensor("weight"),
                        q.lowbit_float_tensor("bias"))
        assert _identical(got, want), step


@pytest.mark.parametrize("granularity", [None, "channel", {"kind": "group", "axis": 1, "group_size": 4}])
def test_cached_absmax_weights_equal_a_fresh_quantization_after_every_edit(granularity):
    torch.manual_seed(2)
    role = {"format": "int4", "scaling": "absmax", "granularity": granularity}
    q = lb.quantize_(nn.Linear(16, 8), {"weight": role}).eval()
    w = q.lowbit_float_tensor("weight")
    saved = w.detach().clone()
    for step in range(14):
        _edit(step, w, saved)
        with torch.no_grad():
            got = q.weight
        fresh = q.lowbit_roles["weight"](w.detach().clone())
        assert torch.equal(got, fresh), step


def _count(monkeypatch, owner, name):
    calls = []
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_a_frozen_amax_input_computes_no_statistic_after_its_first_call(monkeypatch):
    amaxes = _count(monkeypatch, amax_module, "finite_amax")
    isfinite = _count(monkeypatch, torch, "isfinite")
    q = lb.quantize_(nn.Linear(16, 8), {"input": {"format": "e4m3fn", "scaling": "amax"}}).eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        first = q(x)
        for _ in range(9):
            assert torch.equal(q(x * 1.0), first)
    assert len(amaxes) == 1 and len(isfinite) == 0
    assert q.lowbit_roles["input"].tracker.calls == 10


# quantizations over two weight versions: one each, plus one where a refresh moved the exponent
# (every=3: the edit is seen at call 10 under the old exponent, the refresh of call 12 moves it)
@pytest.mark.parametrize("rule,every,quantized", [("histogram", None, 2), ("amax", None, 2), ("amax", 2, 2),
                                                  ("histogram", 3, 3), (4, None, 2)])
def test_a_scaled_weight_is_quantized_and_measured_once_per_weight_version(monkeypatch, rule, every, quantized):
    quantizations = _count(monkeypatch, layers.RoleQuantizer, "quantize_as")
    amaxes = _count(monkeypatch, amax_module, "finite_amax")
    histograms = _count(monkeypatch, scaling, "histogram_exponent")
    q = lb.quantize_(nn.Linear(16, 8), {"weight": {"format": "e4m3fn", "scaling": rule, "every": every}}).eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(10):
            q(x)
        assert len(quantizations) == 1
        assert len(amaxes) + len(histograms) == (0 if isinstance(rule, int) else 1)
        q.lowbit_float_tensor("weight").data.mul_(2.0)
        for _ in range(10):
            q(x)
    measured = 0 if isinstance(rule, int) else (1 if every is None else 2)  # a frozen scale never looks again
    assert len(amaxes) + len(histograms) == measured
    assert len(quantizations) == quantized


def test_a_frozen_scale_serves_the_new_weight_at_the_old_exponent():
    q = lb.quantize_(nn.Linear(4, 2), {"weight": {"format": "e4m3fn", "scaling": "amax"}}).eval()
    w = q.lowbit_float_tensor("weight")
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 2.0, 3.0, 400.0], [0.5, 0.25, 0.125, 0.0]]))
        _ = q.weight
        k = q.lowbit_roles["weight"].tracker.exponent
        w.mul_(8.0)  # would need k + 3; the scale is frozen
        assert _identical(q.weight, scaled_format("e4m3fn", k).quantize(w))
    assert k == 0


def test_an_amax_tracker_with_every_refreshes_at_the_right_calls_over_its_history_window():
    # amax of call i is 448 · 2^a[i]; every=3, history=2: refreshes at calls 0, 3, 6, 9 see the
    # amaxes of calls (0), (2, 3), (5, 6), (8, 9)
    a = [0, 5, -1, 2, 7, -3, 1, 9, 4, -2, 6]
    want = [0, 0, 0, 2, 2, 2, 1, 1, 1, 4, 4]
    q = lb.quantize_(nn.Linear(2, 1), {"input": {"format": "e4m3fn", "scaling": "amax", "every": 3, "history": 2}})
    tracker = q.lowbit_roles["input"].tracker
    got, measured = [], []
    for i, e in enumerate(a):
        measured.append(tracker.needs_statistic())
        with torch.no_grad():
            q(torch.tensor([[448.0 * 2.0**e, -1.0]]))
        got.append(tracker.exponent)
    assert got == want
    assert measured == [True, False, True, True, False, True, True, False, True, True, False]


def test_a_histogram_tracker_with_every_refreshes_its_cached_weight_at_the_right_calls():
    q = lb.quantize_(nn.Linear(4, 1), {"weight": {"format": "posit8_es2", "scaling": "histogram", "every": 2}}).eval()
    w = q.lowbit_float_tensor("weight")
    ks = []
    with torch.no_grad():
        for i in range(6):
            w.copy_(torch.full((1, 4), 2.0 ** (3 * i)))
            _ = q.weight
            ks.append(q.lowbit_roles["weight"].tracker.exponent)
    assert ks == [0, 0, 6, 6, 12, 12]
