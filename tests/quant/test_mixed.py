"""allocate / Plan / pareto_front: never over budget, exact optimum, configs quantize_ and save accept."""

from __future__ import annotations

import copy
import functools
import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import lowbit as lb
from lowbit.errors import LowbitWarning
from lowbit.quant.mixed import Plan, allocate, pareto_front, uniform_plan
from lowbit.quant.sensitivity import (
    LayerInfo,
    SensitivityEntry,
    SensitivityReport,
    measure_config,
    sensitivity_scan,
)
from tests.quant.test_sensitivity import accuracy_on, digits_candidates, digits_model

LABELS = ("a", "b", "c", "d")


# ------------------------------------------------------------------ synthetic reports
@st.composite
def reports(draw, max_layers: int = 4):
    """Random layers (some unscanned), 1–4 candidates each from a shared label pool (so uniform
    plans exist often), bits 1–12 per weight plus a few bits of side parameters, any drop."""
    n = draw(st.integers(1, max_layers))
    layers, entries = [], []
    for i in range(n):
        numel = draw(st.integers(1, 120))
        scanned = i == 0 or draw(st.integers(0, 4)) > 0
        layers.append(LayerInfo(f"l{i}", ("Linear",), (numel,), draw(st.sampled_from([16, 32])), scanned))
        if not scanned:
            continue
        for label in draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=4, unique=True)):
            bits = numel * draw(st.integers(1, 12)) + draw(st.sampled_from([0, 0, 8, 40]))
            drop = draw(st.floats(-0.5, 5.0, allow_nan=False) | st.sampled_from([0.0, 0.002, 0.004]))
            error = draw(st.floats(0.0, 1.0))
            entries.append(SensitivityEntry(f"l{i}", label, label, 0.0, drop, numel, bits, error))
    return SensitivityReport("metric", "m", True, 1.0, tuple(layers), tuple(entries))


def _brute_force(report: SensitivityReport, count_unscanned: bool):
    """Every plan: (cost, fsum of drops, labels) — the oracle the allocator is checked against."""
    scanned = [name for name in report.scanned]
    fixed = sum(i.full_storage_bits for i in report.layers if not i.scanned and count_unscanned)
    numel = sum(i.numel for i in report.layers if i.scanned or count_unscanned)
    plans = []
    for combo in itertools.product(*(report.candidates(n) for n in scanned)):
        plans.append((fixed + sum(e.storage_bits for e in combo), math.fsum(e.drop for e in combo),
                      {e.layer: e.label for e in combo}))
    uniform = [label for label in LABELS if all(label in [e.label for e in report.candidates(n)] for n in scanned)]
    return plans, uniform, numel


class TestBudgetAndOptimality:
    @given(reports(), st.floats(-0.2, 1.2), st.booleans(), st.booleans())
    def test_never_over_budget_and_knapsack_le_greedy_le_uniform(self, report, t, count_unscanned, in_bytes):
        plans, uniform, numel = _brute_force(report, count_unscanned)
        lo, hi = min(p[0] for p in plans), max(p[0] for p in plans)
        budget = max(1, math.floor(lo + t * (hi - lo)))
        kwargs = {"budget_bytes": Fraction(budget, 8)} if in_bytes else {"avg_bits": Fraction(budget, numel)}
        if budget < lo:
            with pytest.raises(ValueError, match=f"minimum achievable budget is {lo / 8:g} bytes"):
                allocate(report, count_unscanned=count_unscanned, **kwargs)
            return
        exact = allocate(report, count_unscanned=count_unscanned, **kwargs)
        greedy = allocate(report, count_unscanned=count_unscanned, method="greedy", **kwargs)
        for plan in (exact, greedy):
            assert plan.budget_bits == budget
            assert plan.total_bits <= budget
            assert plan.total_bits == sum(c for c, _, f in plans if f == {k: v for k, v in plan.formats.items()
                                                                        if report.layer(k).scanned})
        optimum = min(loss for cost, loss, _ in plans if cost <= budget)
        assert exact.total_drop == pytest.approx(optimum, abs=1e-9)
        assert exact.total_drop <= greedy.total_drop
        for label in uniform:
            plan = uniform_plan(report, label, count_unscanned=count_unscanned)
            if plan.total_bits <= budget:
                assert greedy.total_drop <= plan.total_drop
        assert exact.predicted == 1.0 - exact.total_drop

    @given(reports(max_layers=3), st.floats(0.0, 1.0))
    def test_float_budgets_round_down_to_whole_bits(self, report, t):
        plans, _, numel = _brute_force(report, True)
        lo, hi = min(p[0] for p in plans), max(p[0] for p in plans)
        avg = (lo + t * (hi - lo)) / numel
        if math.floor(Fraction(avg) * numel) < lo:
            return
        plan = allocate(report, avg_bits=avg)
        assert plan.total_bits <= plan.budget_bits == math.floor(Fraction(avg) * numel)
        assert plan.avg_bits <= avg

    def test_below_the_cheapest_plan_names_the_minimum(self):
        report = _two_layer_report()
        with pytest.raises(ValueError, match=r"minimum achievable budget is 20 bytes \(4 bits/weight"):
            allocate(report, budget_bytes=19.9)
        with pytest.raises(ValueError, match=r"minimum achievable budget is 125 bytes .*keep_full"):
            allocate(report, avg_bits=4, keep_full=["b"])

    def test_state_cap_falls_back_to_greedy_with_a_warning(self):
        report = _two_layer_report()
        with pytest.warns(LowbitWarning, match="max_states=1"):
            plan = allocate(report, avg_bits=6, max_states=1)
        assert plan.method == "greedy (knapsack fallback)"
        assert plan.total_bits <= plan.budget_bits

    def test_ties_spend_the_budget_on_lower_weight_error(self):
        # every width scores the same drop: the plan takes the widest that fits, not the cheapest
        layers = (LayerInfo("a", ("Linear",), (10,), 32, True),)
        entries = tuple(SensitivityEntry("a", f"w{b}", f"int{b}", 1.0, 0.0, 10, 10 * b, 2.0 ** -b) for b in (4, 6, 8))
        report = SensitivityReport("metric", "acc", True, 1.0, layers, entries)
        assert allocate(report, avg_bits=7).formats == {"a": "w6"}
        assert allocate(report, avg_bits=8).formats == {"a": "w8"}
        assert allocate(report, avg_bits=8, method="greedy").formats == {"a": "w8"}


def _two_layer_report(kind: str = "metric") -> SensitivityReport:
    layers = (LayerInfo("a", ("Linear",), (10,), 32, True), LayerInfo("b", ("Conv2d",), (30,), 32, True))
    opts = {"a": [(4, 0.30), (6, 0.05), (8, 0.0)], "b": [(4, 0.02), (6, 0.01), (8, 0.0)]}
    entries = tuple(SensitivityEntry(n, f"int{b}", f"int{b}", 0.0, d, len_, len_ * b, 0.1 / b)
                    for n, len_ in (("a", 10), ("b", 30)) for b, d in opts[n])
    return SensitivityReport(kind, kind, kind != "kl", 0.9 if kind == "metric" else 0.0, layers, entries)


# ------------------------------------------------------------------ semantics
class TestSemantics:
    def test_wider_first_or_last_layer_is_a_choice_not_a_rule(self):
        sensitive = _two_layer_report()
        assert allocate(sensitive, avg_bits=5).formats == {"a": "int8", "b": "int4"}
        flipped = SensitivityReport("metric", "m", True, 0.9, sensitive.layers, tuple(
            SensitivityEntry(e.layer, e.label, e.weight, 0.0, 0.3 if (e.layer, e.label) == ("b", "int4") else 0.001,
                             e.numel, e.storage_bits, 0.0) for e in sensitive.entries))
        assert allocate(flipped, avg_bits=5.5).formats["a"] == "int4"

    def test_keep_full_and_unscanned_layers_count_at_full_size(self):
        report = _two_layer_report()
        plan = allocate(report, avg_bits=16, keep_full=["a"])
        assert plan.formats == {"a": "full", "b": "int8"}
        assert [x.source for x in plan.layers] == ["keep_full", "allocated"]
        assert plan.total_bits == 10 * 32 + 30 * 8
        unscanned = SensitivityReport("metric", "m", True, 0.9, (report.layers[0], _unscanned(report.layers[1])),
                                      tuple(e for e in report.entries if e.layer == "a"))
        counted = allocate(unscanned, avg_bits=30)
        assert counted.formats == {"a": "int8", "b": "full"} and counted.numel == 40
        assert counted.budget_bits == 30 * 40
        alone = allocate(unscanned, avg_bits=6, count_unscanned=False)
        assert alone.formats == {"a": "int6"} and alone.budget_bits == 60
        assert alone.to_config() == {"layers": {"a": {"weight": "int6"}}}

    def test_predictions_per_metric_kind(self):
        for kind, want in [("metric", 0.9 - 0.02), ("kl", 0.02), ("sqnr", -10 * math.log10(0.02))]:
            plan = allocate(_two_layer_report(kind), avg_bits=5)
            assert plan.formats == {"a": "int8", "b": "int4"}  # 80 + 120 bits: exactly the budget of 5 × 40
            assert plan.predicted == pytest.approx(want)

    def test_json_round_trip(self):
        plan = allocate(_two_layer_report(), avg_bits=5)
        again = Plan.from_json(plan.to_json())
        assert again == plan and again.to_config() == plan.to_config()
        assert "int8" in str(plan) and plan.row()["formats"] == plan.formats

    @pytest.mark.parametrize("kwargs, error, match", [
        ({}, ValueError, "exactly one of budget_bytes"),
        ({"avg_bits": 5, "budget_bytes": 10}, ValueError, "exactly one"),
        ({"avg_bits": -1}, ValueError, "avg_bits=-1; allowed: a finite number > 0"),
        ({"avg_bits": math.inf}, ValueError, "finite"),
        ({"avg_bits": "5"}, TypeError, "avg_bits must be a number"),
        ({"avg_bits": 5, "method": "dp"}, ValueError, "method='dp'; allowed: 'knapsack', 'greedy'"),
        ({"avg_bits": 5, "verify": -1}, ValueError, "verify=-1"),
        ({"avg_bits": 5, "max_states": 0}, ValueError, "max_states=0"),
        ({"avg_bits": 5, "metric": "kl"}, ValueError, "both model= and metric="),
        ({"avg_bits": 5, "keep_full": ["zz"]}, ValueError, "keep_full: 'zz' matches no layer"),
    ])
    def test_bad_arguments(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            allocate(_two_layer_report(), **kwargs)

    def test_bad_report_and_uniform_label(self):
        with pytest.raises(TypeError, match="SensitivityReport"):
            allocate({"entries": []}, avg_bits=4)
        with pytest.raises(ValueError, match="label 'int5' is not a candidate of every allocated layer"):
            uniform_plan(_two_layer_report(), "int5")


def _unscanned(info: LayerInfo) -> LayerInfo:
    return LayerInfo(info.name, info.types, info.shape, info.full_bits, False)


# ------------------------------------------------------------------ configs on a real model
class TestConfig:
    def _plan(self, avg_bits: float = 5, **kwargs) -> "tuple[nn.Module, Plan]":
        model, images, _ = digits_model()
        report = _digits_report()
        return model, allocate(report, avg_bits=avg_bits, **kwargs)

    def test_quantize_accepts_it_and_simulates_exactly_the_plan(self):
        model, plan = self._plan()
        q = lb.quantize_(copy.deepcopy(model), plan.to_config())
        formats = {k: str(v) for k, v in lb.tensor_formats(q).items()}
        want = {f"{x.name}.weight": x.weight for x in plan.layers}
        assert formats == want
        images = digits_model()[1]
        hand = copy.deepcopy(model)
        with torch.no_grad():
            for x in plan.layers:
                w = hand.get_submodule(x.name).weight
                w.copy_(lb.parse_format(x.weight).quantize(w))
            assert torch.equal(q(images), hand(images))

    def test_save_stores_the_plan_formats(self, tmp_path):
        model, plan = self._plan()
        q = lb.quantize_(copy.deepcopy(model), plan.to_config())
        path = tmp_path / "plan.safetensors"
        lb.save(q, path)
        loaded = lb.load(path)
        for x in plan.layers:
            w = model.get_submodule(x.name).weight
            assert torch.equal(loaded[f"{x.name}.weight"], lb.parse_format(x.weight).quantize(w))
        full = tmp_path / "full.safetensors"
        lb.save(model.state_dict(), full)
        assert path.stat().st_size < full.stat().st_size

    def test_base_roles_are_kept_and_exclusions_checked(self):
        model, plan = self._plan(keep_full=["conv1"])
        base = {"input": "e4m3fn", "layers": {"fc*": {"output": "e5m2"}, "fc3": {"weight": "int8"}},
                "exclude": ["conv1"]}
        cfg = plan.to_config(base)
        q = lb.quantize_(copy.deepcopy(model), cfg)
        assert type(q.conv1) is nn.Conv2d  # excluded by base, kept full by the plan
        for name in ("fc1", "fc2", "fc3"):
            roles = q.get_submodule(name).lowbit_roles
            # the plan's weight wins over base's (fc3: int8)
            assert str(roles["weight"].format) == plan.to_config()["layers"][name]["weight"]
            assert str(roles["input"].format) == "e4m3fn"
        # base's own semantics: the last matching entry ("fc3") replaces "fc*" entirely
        assert str(q.fc1.lowbit_roles["output"].format) == "e5m2" and "output" not in q.fc3.lowbit_roles
        clash = self._plan()[1]
        with pytest.raises(ValueError, match="base excludes layer\\(s\\) 'conv1' that the plan quantizes"):
            clash.to_config(base)

    def test_names_that_are_fnmatch_patterns(self):
        torch.manual_seed(0)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.d = nn.ModuleDict({"a[0]": nn.Linear(4, 4), "a0": nn.Linear(4, 4), "b*": nn.Linear(4, 4)})

            def forward(self, x):
                for m in self.d.values():
                    x = m(x)
                return x

        model, x = Net(), torch.randn(32, 4)
        report = sensitivity_scan(model, ["posit4_es1", "posit8_es1"], "sqnr", data=x)
        plan = allocate(report, avg_bits=6)
        cfg = plan.to_config()
        assert set(cfg["layers"]) == {"d.a[[]0]", "d.a0", "d.b[*]"}
        q = lb.quantize_(model, cfg)
        got = {k: str(v) for k, v in lb.tensor_formats(q).items()}
        assert got == {f"{k}.weight": v for k, v in plan.formats.items()}

    def test_a_model_that_is_one_layer(self):
        model = nn.Linear(6, 3)
        report = sensitivity_scan(model, ["posit4_es1", "posit6_es1"], "sqnr", data=torch.randn(8, 6))
        plan = allocate(report, avg_bits=6)
        assert plan.to_config() == {"weight": "posit6_es1"}
        assert str(lb.tensor_formats(lb.quantize_(model, plan.to_config()))["weight"]) == "posit6_es1"


# ------------------------------------------------------------------ the bar, on the digits model
@functools.lru_cache(maxsize=None)
def _digits_report() -> SensitivityReport:
    model, images, _ = digits_model()
    return sensitivity_scan(model, digits_candidates, "sqnr", data=images[:250])


def _uniform_accuracies(bits: int) -> "dict[str, float]":
    """Each uniform `bits`-bit candidate applied by hand (fixed<n>: per-layer fraction bits)."""
    model, images, labels = digits_model()
    acc = accuracy_on(images, labels)
    out = {}
    for spec in ["posit%d_es1" % bits, "e2m1fn", "e2m2fn", "e3m1fn", "e3m2fn", "e2m3fn", "e4m3fn"]:
        if lb.parse_format(spec).bits == bits:
            out[spec] = acc(lb.quantize_(copy.deepcopy(model), {"weight": spec}))
    layers = {}
    for name in ("conv1", "fc1", "fc2", "fc3"):
        module = model.get_submodule(name)
        layers[name] = {"weight": next(c["format"] for c in digits_candidates(name, module)
                                       if isinstance(c, dict) and c["label"] == f"fixed{bits}")}
    out[f"fixed{bits}"] = acc(lb.quantize_(copy.deepcopy(model), {"layers": layers}))
    return out


class TestDigitsBar:
    @pytest.mark.parametrize("bits", [4, 5, 6])
    def test_verified_plan_is_at_least_as_accurate_as_every_uniform_format(self, bits):
        model, images, labels = digits_model()
        acc = accuracy_on(images, labels)
        plan = allocate(_digits_report(), avg_bits=bits, model=model, metric=acc)
        numel = sum(m.weight.numel() for m in (model.conv1, model.fc1, model.fc2, model.fc3))
        assert plan.total_bits <= bits * numel and plan.numel == numel
        measured = acc(lb.quantize_(copy.deepcopy(model), plan.to_config()))
        assert measured == plan.measured
        uniform = _uniform_accuracies(bits)
        assert len(uniform) >= 2
        assert measured >= max(uniform.values()), (plan.formats, uniform)
        assert plan.checked >= len(uniform) and plan.method == "knapsack, verified"

    def test_verification_minimises_a_lower_is_better_metric(self):
        model, images, _ = digits_model()
        plan = allocate(_digits_report(), avg_bits=5, model=model, metric="kl", data=images, verify=3)
        for label in ("posit5_es1", "fixed5", "e3m1fn"):
            u = uniform_plan(_digits_report(), label)
            assert plan.measured <= measure_config(model, u.to_config(), "kl", data=images)


class TestParetoFront:
    def test_rows_from_a_report(self):
        model, images, labels = digits_model()
        acc = accuracy_on(images, labels)
        report = _digits_report()
        rows = pareto_front(report, model, acc, avg_bits=[4, 5], uniform=["posit4_es1", "fixed5"])
        assert [r["kind"] for r in rows].count("plan") == 2 and [r["kind"] for r in rows].count("uniform") == 2
        assert rows[-1]["kind"] == "full" and rows[-1]["measured"] == acc(model) and rows[-1]["avg_bits"] == 32
        assert [r["total_bytes"] for r in rows] == sorted(r["total_bytes"] for r in rows)
        for r in rows:
            if r["kind"] == "plan":
                assert r["avg_bits"] <= r["budget_avg_bits"]
                plan = allocate(report, avg_bits=r["budget_avg_bits"])
                assert r["formats"] == plan.formats and r["predicted"] == plan.predicted
                assert r["measured"] == measure_config(model, plan.to_config(), acc)
            dominated = any(o["total_bytes"] <= r["total_bytes"] and o["measured"] >= r["measured"]
                            and (o["total_bytes"] < r["total_bytes"] or o["measured"] > r["measured"])
                            for o in rows if o is not r)
            assert r["pareto"] == (not dominated)
            assert r["predicted_metric"] == "sqnr" and r["measured_metric"] == "accuracy"

    def test_default_sweep_and_plans_source(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        x = torch.randn(64, 8)
        report = sensitivity_scan(model, ["posit3_es1", "posit5_es1", "posit8_es1"], "sqnr", data=x)
        rows = pareto_front(report, model, "sqnr", data=x)
        budgets = [r["budget_avg_bits"] for r in rows if r["kind"] == "plan"]
        assert budgets == [3, 4, 5, 6, 7, 8]
        assert {r["name"] for r in rows if r["kind"] == "uniform"} == {"posit3_es1", "posit5_es1", "posit8_es1"}
        plans = [allocate(report, avg_bits=b) for b in (4, 6)]
        rows = pareto_front(plans, model, "sqnr", data=x)
        assert [r["kind"] for r in rows] == ["plan", "plan"]
        assert all(math.isfinite(r["measured"]) for r in rows)
        with pytest.raises(ValueError, match="uniform= needs a SensitivityReport"):
            pareto_front(plans, model, "sqnr", data=x, uniform=["posit3_es1"])
