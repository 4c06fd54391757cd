"""The `mixed-precision` experiment (sensitivity, allocation, Pareto front) on a tiny digits configuration."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.experiments import mixed_precision as mp
from lowbit.experiments import runner
from lowbit.formats import parse_format

TINY = {
    "datasets": ["digits"],
    "widths": [3, 5],
    "budgets": [3.0, 4.0, 5.0],
    "verify": 1,
    "calibration_images": 128,
    "epochs": {"digits": 2},
    "threads": 1,
    "bar_repeats": 1,
}
LAYERS = {"conv1": (16, 9), "conv2": (32, 144), "fc1": (10, 128)}  # digits-cnn: out channels, fan-in
POINT_KEYS = {"dataset", "model", "kind", "name", "family", "bits", "budget_avg_bits", "avg_bits", "total_bits",
              "budget_bits", "total_bytes", "scale_bits", "predicted_kl", "verified_kl", "plans_checked",
              "accuracy", "test_kl", "drop_points", "pareto", "method", "formats", "specs"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("mixed")
    return runner.run_experiment("mixed-precision", out_dir=root / "out", seed=1,
                                 overrides={**TINY, "cache": str(root / "cache")}, quiet=True)


def test_registered():
    assert runner.EXPERIMENTS["mixed-precision"] == "lowbit.experiments.mixed_precision"


def test_files(tiny):
    names = {p.name for p in tiny.files}
    assert {"results.json", "results.csv", "report.md", "pareto.png", "sensitivity.png"} <= names
    assert (tiny.out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tiny.out_dir / "results.json").read_text())["rows"] == tiny.rows


def test_sensitivity_rows(tiny):
    sens = [r for r in tiny.rows if r["kind"] == "sensitivity"]
    assert len(sens) == len(LAYERS) * len(mp.FAMILIES) * len(TINY["widths"])
    for r in sens:
        assert r["kl"] >= 0 and r["layer"] in LAYERS
        assert parse_format(r["format"]).bits == r["bits"]
        out_ch, fan_in = LAYERS[r["layer"]]
        scales = 32 * out_ch if r["family"] == "int/ch" else 0  # FP32 per-channel scales are counted
        assert r["storage_bits"] == out_ch * fan_in * r["bits"] + scales


def test_plans_within_budget_and_uniform_points(tiny):
    points = [r for r in tiny.rows if r["kind"] in ("plan", "uniform", "full")]
    assert all(set(r) == POINT_KEYS for r in points)
    plans = [r for r in points if r["kind"] == "plan"]
    assert [r["budget_avg_bits"] for r in plans] == TINY["budgets"]
    numel = sum(o * f for o, f in LAYERS.values())
    for r in plans:
        assert r["total_bits"] <= r["budget_bits"] == r["budget_avg_bits"] * numel
        assert r["avg_bits"] <= r["budget_avg_bits"]
        assert set(r["formats"]) == set(LAYERS) and r["plans_checked"] >= 1
    uniform = [r for r in points if r["kind"] == "uniform"]
    assert len(uniform) == len(mp.FAMILIES) * len(TINY["widths"])
    for r in uniform:
        channels = sum(o for o, _ in LAYERS.values())
        extra = 32 * channels if r["family"] == "int/ch" else 0
        assert r["total_bits"] == numel * r["bits"] + extra and r["scale_bits"] == extra
        assert 0 <= r["accuracy"] <= 1 and r["test_kl"] >= 0


def test_pareto_flags(tiny):
    points = [r for r in tiny.rows if r["kind"] in ("plan", "uniform", "full")]

    def dominated(p):
        return any(o is not p and o["total_bits"] <= p["total_bits"] and o["accuracy"] >= p["accuracy"]
                   and (o["total_bits"] < p["total_bits"] or o["accuracy"] > p["accuracy"]) for o in points)

    assert any(r["pareto"] for r in points)
    assert all(r["pareto"] == (not dominated(r)) for r in points)


def test_bar_row(tiny):
    bar = [r for r in tiny.rows if r["kind"] == "bar"]
    assert len(bar) == 1
    bar = bar[0]
    plan = next(r for r in tiny.rows if r["kind"] == "plan" and r["budget_avg_bits"] == 5.0)
    uniform5 = [r for r in tiny.rows if r["kind"] == "uniform" and r["bits"] == 5]
    assert bar["plan_accuracy"] == plan["accuracy"]
    assert bar["uniform_accuracy"] == max(r["accuracy"] for r in uniform5)
    assert bar["plan_ge_uniform"] == (plan["accuracy"] >= bar["uniform_accuracy"])
    assert bar["plan_within_budget"] is True
    a, b = bar["only_plan_right"], bar["only_uniform_right"]
    n_test = 500  # digits test split
    assert a - b == round((bar["plan_accuracy"] - bar["uniform_accuracy"]) * n_test)
    assert 0 < bar["sign_test_p"] <= 1
    assert mp.sign_test(3, 3) == 1.0 and mp.sign_test(0, 0) == 1.0
    text = (tiny.out_dir / "report.md").read_text()
    assert "The bar at 5 bits" in text and "pareto.png" in text


def test_bar_across_seeds(tiny):
    trials = [r for r in tiny.rows if r["kind"] == "bar_trial"]
    assert [t["seed"] for t in trials] == [1, 2]  # the run's seed, then bar_repeats more
    main = trials[0]
    plan = next(r for r in tiny.rows if r["kind"] == "plan" and r["budget_avg_bits"] == 5.0)
    uniform5 = {r["name"]: r for r in tiny.rows if r["kind"] == "uniform" and r["bits"] == 5}
    # the run's own model: the same plan and the same uniform points as the sweep measured
    assert main["plan_formats"] == plan["formats"] and main["plan_accuracy"] == plan["accuracy"]
    assert main["plan"]["test_kl"] == pytest.approx(plan["test_kl"], rel=1e-9)
    assert set(main["uniform"]) == set(uniform5)
    for name, u in main["uniform"].items():
        assert u["accuracy"] == uniform5[name]["accuracy"]
    n_test = 500
    for t in trials:
        assert t["plan"]["within_budget"] and t["plan"]["avg_bits"] <= 5.0
        us = t["uniform"]
        assert t["chosen_uniform"] == min(us, key=lambda k: (us[k]["calib_kl"], k))
        assert t["best_accuracy"] == max(u["accuracy"] for u in us.values())
        assert t["chosen_accuracy"] == us[t["chosen_uniform"]]["accuracy"]
        a, b = t["only_plan_right_vs_chosen"], t["only_chosen_right"]
        assert a - b == round((t["plan_accuracy"] - t["chosen_accuracy"]) * n_test)
        assert 0 <= t["fp32_accuracy"] <= 1
        a, b = t["only_fp32_right_vs_best"], t["only_best_right_vs_fp32"]
        assert a - b == round((t["fp32_accuracy"] - t["best_accuracy"]) * n_test)
    assert trials[1]["fp32_accuracy"] != trials[0]["fp32_accuracy"] or trials[1]["plan"] != trials[0]["plan"]
    summary = [r for r in tiny.rows if r["kind"] == "bar_summary"]
    assert len(summary) == 1 and summary[0]["seeds"] == [1, 2]
    s = summary[0]
    assert s["pooled_vs_chosen"] == [sum(t["only_plan_right_vs_chosen"] for t in trials),
                                     sum(t["only_chosen_right"] for t in trials)]
    assert s["wins_vs_best"] + s["ties_vs_best"] + s["losses_vs_best"] == 2
    assert s["fp32_losses_vs_best"] == sum(t["fp32_accuracy"] < t["best_accuracy"] for t in trials)
    assert s["fp32_wins_vs_best"] + s["fp32_ties_vs_best"] + s["fp32_losses_vs_best"] == 2
    assert s["fp32_pooled_vs_best"] == [sum(t["only_fp32_right_vs_best"] for t in trials),
                                        sum(t["only_best_right_vs_fp32"] for t in trials)]
    assert s["mean_plan_accuracy"] == pytest.approx(sum(t["plan_accuracy"] for t in trials) / 2)
    text = (tiny.out_dir / "report.md").read_text()
    assert "trained model(s)" in text and "FP32 itself vs the best uniform format on test" in text


def test_family_candidates():
    w = torch.randn(8, 20) * 0.1
    cfg = mp.config(quick=True)
    for fam in mp.FAMILIES:
        c = mp.family_candidate(fam, 4, w, cfg)
        assert parse_format(c["format"]).bits == 4
        assert c["label"] == ("int4/ch" if fam == "int/ch" else f"{fam}4")
    assert mp.family_candidate("int/ch", 4, w, cfg)["granularity"] == "channel"
    with pytest.raises(ValueError, match="unknown family"):
        mp.family_candidate("nope", 4, w, cfg)
