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
