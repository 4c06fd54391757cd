"""The `training` experiment on a tiny configuration: every format trains, rows and plot are written."""

from __future__ import annotations

import json

import pytest

from lowbit.experiments import runner

pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits")
pytest.importorskip("matplotlib", reason="plots need matplotlib")


def test_tiny_training_run_writes_one_row_per_format_and_a_plot(tmp_path):
    result = runner.run_experiment(
        "training", quick=True, out_dir=tmp_path / "out", seed=3,
        overrides={"epochs": 1, "configs": {"fp32": None, "posit8_es2": {"weight": "posit8_es2", "input": "posit8_es2",
                                                                        "grad": "posit8_es2"}}},
        quiet=True)
    doc = json.loads((result.out_dir / "results.json").read_text())
    rows = doc["rows"]
    assert [r["config"] for r in rows] == ["fp32", "posit8_es2"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in rows)
    assert rows[1]["drop_vs_fp32_points"] == pytest.approx(100 * (rows[0]["top1"] - rows[1]["top1"]))
    assert rows[0]["top1"] > 0.5  # one epoch on digits already learns
    assert (result.out_dir / "training_top1.png").stat().st_size > 1000
    assert "posit8_es2 training is" in (result.out_dir / "report.md").read_text()


def test_step_times_warm_up_every_model_then_interleave_them():
    import torch
    from torch import nn

    from lowbit.experiments.lowprec_training import step_times

    calls = []
    models = {}
    for name in ("fp32", "posit8", "fp8"):
        m = nn.Linear(4, 3)
        m.register_forward_hook(lambda mod, args, out, name=name: calls.append(name))
        models[name] = m
    batch = torch.randn(8, 4), torch.randint(0, 3, (8,))
    times = step_times(models, batch, steps=4, warmup=2)
    assert calls == ["fp32", "posit8", "fp8"] * (2 + 4)  # warm-up rounds, then one timed step each in turn
    assert {k: len(v) for k, v in times.items()} == {"fp32": 4, "posit8": 4, "fp8": 4}
    assert all(t > 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        step_times(models, batch, steps=0)


def test_time_ratio_is_of_median_interleaved_steps(tmp_path):
    result = runner.run_experiment(
        "training", quick=True, out_dir=tmp_path / "out", seed=3,
        overrides={"epochs": 1, "timing_steps": 3, "timing_warmup_steps": 1,
                   "configs": {"fp32": None, "e5m10": {"weight": "e5m10"}}},
        quiet=True)
    rows = result.rows
    assert rows[0]["time_vs_fp32"] == 1.0
    assert rows[1]["time_vs_fp32"] == pytest.approx(rows[1]["step_ms_median"] / rows[0]["step_ms_median"])
    assert all(r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"] for r in rows)
    assert "median of 3 training steps" in (result.out_dir / "report.md").read_text()
