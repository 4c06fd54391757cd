"""`lowbit run accumulation`: quire vs FP32 / bf16 / fp16 / operand-format accumulation, via quantize_ configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.experiments import accumulation, runner
from lowbit.formats import parse_format
from lowbit.simulate.exact import exact_linear

ROW_KEYS = {"dataset", "model", "operands", "accumulator", "every", "variant", "top1", "test_images", "logit_max_err",
            "logit_mean_err", "logit_argmax_changed", "differ_share", "layers", "seconds"}


def _e4m3fn_within(shape: "tuple[int, ...]", seed: int, lo: int, hi: int) -> torch.Tensor:
    """e4m3fn values of both signs with exponents in [lo, hi)."""
    g = torch.Generator().manual_seed(seed)
    mant = 1 + torch.randint(0, 8, shape, generator=g).float() / 8
    sign = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
    return sign * mant * 2.0 ** torch.randint(lo, hi, shape, generator=g).float()


def _one_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        model[0].weight.copy_(weight)
        model[0].bias.copy_(bias)
    return model


def test_quick_config_values():
    quick, full = accumulation.config(quick=True), accumulation.config()
    assert quick["datasets"] == ["mnist"] and quick["test_subset"] == 500
    assert full["datasets"] == ["mnist", "fashion-mnist"] and full["test_subset"] is None
    for cfg in (quick, full):
        assert cfg["operands"] == ["posit8_es2", "e4m3fn", "int8"]
        assert cfg["accumulators"] == ["fp32", "bf16", "fp16", "operand"] and cfg["every"] == [1, 16, 64]


def test_fp32_accumulation_of_e4m3fn_products_within_24_bits_equals_the_quire():
    # |x|, |w| in [2**-3, 2**3): every product and the bias are multiples of 2**-12 below 2**6,
    # so the 17-term sums fit float32's 24 bits and FP32 accumulation is exact in any order
    model = _one_linear(_e4m3fn_within((5, 16), 0, -3, 3), _e4m3fn_within((5,), 1, -3, 3))
    x = _e4m3fn_within((64, 16), 2, -3, 3)
    rows = accumulation.compare(model, "e4m3fn", [("fp32", None), ("operand", 1)], x, torch.zeros(64).long())
    fp32 = next(r for r in rows if r["accumulator"] == "fp32")
    assert fp32["layers"]["0"]["differ_share"] == 0.0 and fp32["logit_max_err"] == 0.0
    per_product = next(r for r in rows if r["accumulator"] == "e4m3fn")
    assert per_product["every"] == 1 and per_product["layers"]["0"]["products_per_rounding"] == 1
    assert per_product["layers"]["0"]["differ_share"] > 0.0 and per_product["logit_max_err"] > 0.0


def test_fp32_differ_share_counts_the_outputs_where_torch_and_the_exact_sum_disagree():
    g = torch.Generator().manual_seed(4)
    fmt = parse_format("posit8_es2")
    w = fmt.quantize(torch.randn(6, 40, generator=g) * 2.0 ** torch.randint(-12, 13, (6, 40), generator=g).float())
    x = fmt.quantize(torch.randn(50, 40, generator=g) * 2.0 ** torch.randint(-12, 13, (50, 40), generator=g).float())
    b = torch.randn(6, generator=g)
    model = _one_linear(w, b)
    rows = accumulation.compare(model, "posit8_es2", [("fp32", None)], x, torch.zeros(50).long())
    expected = (F.linear(x, w, b) != exact_linear(x, w, b)).float().mean().item()
    assert expected > 0.0  # spread exponents: FP32 running sums round
    assert rows[1]["layers"]["0"]["differ_share"] == pytest.approx(expected, abs=0)
    assert rows[0]["accumulator"] == "quire" and rows[0]["logit_max_err"] == 0.0


def test_bf16_accumulator_is_compared_with_the_exact_sum_rounded_once_to_bf16():
    # two products per output, each exact in bf16 (posit8 operands: <= 4 significant bits each), at
    # exponents ~6 apart: the running sum rounds once (the second addition), as the quire rounded to bf16
    fmt = parse_format("posit8_es2")
    model = _one_linear(torch.tensor([[1.75, 1.5 * 2**-6], [-1.25, 1.75 * 2**-5]]), torch.zeros(2))
    x = fmt.quantize(torch.randn(40, 2, generator=torch.Generator().manual_seed(5)))
    rows = accumulation.compare(model, "posit8_es2", [("bf16", 1)], x, torch.zeros(40).long())
    assert rows[1]["layers"]["0"]["differ_share"] == 0.0
    assert rows[1]["logit_max_err"] > 0.0  # vs the FP32-rounded quire the bf16 sums do differ


def test_variants_skip_an_int8_accumulator():
    cfg = accumulation.config(quick=True)
    assert ("operand", 1) not in accumulation._variants(cfg, "int8")
    assert ("operand", 1) in accumulation._variants(cfg, "posit8_es2")
    assert len(accumulation._variants(cfg, "e4m3fn")) == 1 + 3 * 3


def test_conv_products_per_rounding_follow_the_channel_chunks():
    conv = nn.Conv2d(6, 4, 5)
    assert accumulation._products_per_rounding(conv, 1) == 25
    assert accumulation._products_per_rounding(conv, 64) == 50
    assert accumulation._products_per_rounding(nn.Linear(40, 3), 16) == 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("accumulation")
    overrides = {"datasets": ["digits"], "operands": ["posit8_es2", "int8"], "accumulators": ["fp32", "operand"],
                 "every": [1], "test_subset": 60, "epochs": {"digits": 2}, "cache": str(root / "cache")}
    return runner.run_experiment("accumulation", out_dir=root / "out", seed=1, overrides=overrides, quiet=True)


def test_registered():
    assert runner.get_experiment("accumulation").NAME == "accumulation"


def test_run_writes_rows_csv_report_and_png(tiny):
    names = {p.name for p in tiny.files}
    assert {"results.json", "results.csv", "report.md", "accumulation_differ.png"} <= names
    assert (tiny.out_dir / "accumulation_differ.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tiny.out_dir / "results.json").read_text())
    assert record["rows"] == tiny.rows
    # posit8: quire, fp32, posit8/1; int8: quire, fp32 (no int8 accumulator)
    assert [(r["operands"], r["variant"]) for r in tiny.rows] == [
        ("posit8_es2", "quire"), ("posit8_es2", "fp32"), ("posit8_es2", "posit8_es2/1"),
        ("int8", "quire"), ("int8", "fp32")]
    for r in tiny.rows:
        assert set(r) == ROW_KEYS and r["test_images"] == 60 and 0.0 <= r["top1"] <= 1.0
        assert set(r["layers"]) == {"conv1", "conv2", "fc1"}
    report = (tiny.out_dir / "report.md").read_text()
    assert "Is FP32 accumulation as good as a quire?" in report and "posit8_es2/1" in report
