"""The `ptq` experiment (weights + calibrated activations) on a tiny digits configuration."""

from __future__ import annotations

import json

import pytest

from lowbit.experiments import ptq, runner

TINY = {
    "datasets": ["digits"],
    "schemes": ["int8 w/ch, int8 a", "int4 w/ch, int8 a"],
    "observers": ["minmax", "kl"],
    "calibration_images": 256,
    "calibration_batch_size": 128,
    "efficientnet": False,
    "epochs": {"digits": 4},
    "threads": 1,
}
KEYS = {"model", "dataset", "scheme", "observer", "weight", "weight_granularity", "activation", "top1",
        "drop_points", "calibration_images", "test_images"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("ptq")
    return runner.run_experiment("ptq", out_dir=root / "out", seed=2,
                                 overrides={**TINY, "cache": str(root / "cache")}, quiet=True)


def test_registered_and_listed():
    assert runner.EXPERIMENTS["ptq"] == "lowbit.experiments.ptq"
    assert any(name == "ptq" for name, _ in runner.list_experiments())


def test_rows_files_and_report(tiny):
    assert {p.name for p in tiny.files} >= {"results.json", "results.csv", "report.md", "ptq.png"}
    assert (tiny.out_dir / "ptq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = tiny.rows
    assert all(set(r) == KEYS for r in rows)
    assert [r["scheme"] for r in rows][0] == "fp32"
    assert len(rows) == 1 + 2 * 2
    fp32 = rows[0]["top1"]
    for r in rows[1:]:
        assert r["drop_points"] == pytest.approx(100 * (fp32 - r["top1"]))
        assert r["weight"] in ("int8", "int4") and r["activation"] == "int8" and r["weight_granularity"] == "channel"
    record = json.loads((tiny.out_dir / "results.json").read_text())
    assert record["rows"] == rows and record["seed"] == 2
    text = (tiny.out_dir / "report.md").read_text()
    assert "| int8 w/ch, int8 a |" in text and "bar" in text


def test_int8_ptq_is_close_to_fp32_even_on_digits(tiny):
    row = next(r for r in tiny.rows if r["scheme"] == "int8 w/ch, int8 a" and r["observer"] == "minmax")
    assert row["drop_points"] < 1.5  # 360 test digits: one image is 0.28 points


def test_quick_config_fits_the_time_budget_shape():
    quick, full = ptq.config(quick=True), ptq.config()
    assert quick["datasets"] == ["mnist"] and not quick["efficientnet"] and quick["test_subset"] == 4000
    assert full["efficientnet"] and set(full["schemes"]) == set(ptq.SCHEMES)
    assert ptq._observers("posit8 w/2^k, posit8 a/2^k", full) == ["log2"]
    assert "log2" not in ptq._observers("int8 w/ch, int8 a", full)
