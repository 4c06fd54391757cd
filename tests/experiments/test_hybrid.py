"""The `hybrid` experiment (float weights + fixed-point activations) on a tiny digits configuration."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.experiments import hybrid, runner
from lowbit.formats import FixedPoint, Minifloat, parse_format

TINY = {
    "datasets": ["digits"],
    "weight_bits": [2, 4],
    "act_bits": [6, hybrid.FP32_ACT],
    "iso_points": [1.0, 0.5],
    "calibration_batches": 2,
    "calibration_batch_size": 64,
    "epochs": {"digits": 2},
    "threads": 1,
}
EVAL_KEYS = {"kind", "dataset", "model", "act_bits", "weights", "weight_bits", "accuracy", "drop_points",
             "weight_bytes", "weight_nrmse", "weight_formats", "act_formats"}
ISO_KEYS = {"kind", "dataset", "model", "act_bits", "tolerance_points", "reference", "reference_accuracy",
            "max_weight_bits", "float_bits", "fixed_bits", "savings", "paper_savings"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("hybrid")
    return runner.run_experiment("hybrid", out_dir=root / "out", seed=3,
                                 overrides={**TINY, "cache": str(root / "cache")}, quiet=True)


def test_registered():
    assert runner.EXPERIMENTS["hybrid"] == "lowbit.experiments.hybrid"
    assert runner.get_experiment("hybrid").NAME == "hybrid"


def test_files(tiny):
    names = {p.name for p in tiny.files}
    assert {"results.json", "results.csv", "report.md", "accuracy_vs_weight_bits.png", "iso_bits.png"} <= names
    for png in ("accuracy_vs_weight_bits.png", "iso_bits.png"):
        assert (tiny.out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tiny.out_dir / "results.json").read_text())
    assert record["rows"] == tiny.rows and record["seed"] == 3


def test_eval_rows(tiny):
    evals = [r for r in tiny.rows if r["kind"] == "eval"]
    assert all(set(r) == EVAL_KEYS for r in evals)
    # FP32; per activation width: FP32 weights (fixed-point widths only) + 2 families x 2 widths
    assert len(evals) == 1 + 1 + 2 * 2 * 2
    numel = next(r for r in evals if r["weights"] == "fp32")["weight_bytes"] / 4
    for r in evals:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["weight_bytes"] == numel * r["weight_bits"] / 8
        for spec in r["weight_formats"].values():
            fmt = parse_format(spec)
            assert fmt.bits == r["weight_bits"]
            assert isinstance(fmt, Minifloat if r["weights"] == "float" else FixedPoint)
        if r["act_bits"] == hybrid.FP32_ACT:
            assert r["act_formats"] == {}
        else:
            assert set(r["act_formats"]) == {"conv1", "conv2", "fc1"}
            assert all(parse_format(s).bits == r["act_bits"] for s in r["act_formats"].values())


def test_iso_rows_and_savings(tiny):
    iso = [r for r in tiny.rows if r["kind"] == "iso"]
    assert iso and all(set(r) == ISO_KEYS for r in iso)
    # 2 tolerances x (6-bit act: 2 references + FP32 act: 1 reference)
    assert len(iso) == 2 * 3
    evals = [r for r in tiny.rows if r["kind"] == "eval"]
    for r in iso:
        assert r["paper_savings"] == 0.36
        if r["float_bits"] is not None and r["fixed_bits"] is not None:
            assert r["savings"] == pytest.approx(1 - r["float_bits"] / r["fixed_bits"])
        else:
            assert r["savings"] is None
        for fam in hybrid.FAMILIES:
            pts = {e["weight_bits"]: e["accuracy"] for e in evals
                   if e["act_bits"] == r["act_bits"] and e["weights"] == fam}
            within = [b for b, a in pts.items() if 100 * (r["reference_accuracy"] - a) <= r["tolerance_points"] + 1e-9]
            assert r[f"{fam}_bits"] == (min(within) if within else None)


def test_report(tiny):
    text = (tiny.out_dir / "report.md").read_text()
    assert "Against the paper" in text and "36%" in text and "iso_bits.png" in text
    assert "arXiv:1703.03073" in text


def test_iso_bits_and_savings_helpers():
    assert hybrid.iso_bits({2: 0.1, 3: 0.985, 4: 0.99}, 0.99) == 3
    assert hybrid.iso_bits({2: 0.1, 3: 0.985}, 0.99, tolerance=0.2) is None
    assert hybrid.savings(7, 11) == pytest.approx(4 / 11)
    assert hybrid.savings(None, 4) is None and hybrid.savings(4, None) is None


def test_float_candidates_cover_the_range():
    w = torch.tensor([0.3, -0.02, 0.11, 0.0007])
    cfg = hybrid.config(quick=True)
    cands = hybrid.float_candidates(w, 5, cfg)
    assert {c.bits for c in cands} == {5}
    assert {c.exp_bits for c in cands} == {1, 2, 3, 4}
    # per split, at least one bias whose max covers max|w| and one that clips it
    for e in (1, 2, 3, 4):
        maxes = [c.max for c in cands if c.exp_bits == e]
        assert max(maxes) >= 0.3 > min(maxes)


def test_activation_formats_from_calibration():
    x = {"a": torch.linspace(-1.5, 1.5, 1001), "b": torch.full((10,), 100.0)}
    f = hybrid.activation_formats(x, 8, max_values=500, seed=1)
    assert f["a"] == FixedPoint(8, 6)  # 127 / 64 covers 1.5
    assert f["b"] == FixedPoint(8, 0)  # saturates rather than a negative fraction


def test_calibration_uses_training_images():
    from lowbit.experiments.data import load_digits
    from lowbit.experiments.models import build_model

    pytest.importorskip("sklearn")
    data = load_digits()
    torch.manual_seed(0)
    model = build_model("digits-cnn")
    cfg = {**hybrid.config(quick=True), "calibration_batches": 3, "calibration_batch_size": 16}
    inputs = hybrid.calibration_inputs(model, data, cfg)
    assert set(inputs) == {"conv1", "conv2", "fc1"}
    assert inputs["conv1"].shape == (48, 1, 8, 8)
    train = {tuple(t.flatten().tolist()) for t in data.train_images}
    assert all(tuple(t.flatten().tolist()) in train for t in inputs["conv1"])


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="families"):
        runner.run_experiment("hybrid", out_dir=tmp_path, overrides={**TINY, "families": ["posit"]}, quiet=True)
    with pytest.raises(ValueError, match="act_bits"):
        runner.run_experiment("hybrid", out_dir=tmp_path, overrides={**TINY, "act_bits": [1]}, quiet=True)
    with pytest.raises(LowbitError, match="unknown config key"):
        runner.run_experiment("hybrid", out_dir=tmp_path, overrides={"nope": 1}, quiet=True)
