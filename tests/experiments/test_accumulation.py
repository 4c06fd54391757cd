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


GEN_KEYS = {"dataset", "model", "operands", "accumulator", "every", "variant", "samples", "image_max_err",
            "image_mean_err", "image_differ_share", "ssim", "psnr", "fid", "class_accuracy", "differ_share", "layers",
            "seconds"}


def test_quick_config_values():
    quick, full = accumulation.config(quick=True), accumulation.config()
    assert quick["datasets"] == ["mnist"] and quick["test_subset"] == 300
    assert full["datasets"] == ["mnist", "fashion-mnist"] and full["test_subset"] == 2000
    assert quick["generator"]["operands"] == ["posit8_es2"] and full["generator"]["operands"] is None
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
    differ = F.linear(x, w, b) != exact_linear(x, w, b)
    expected = int(differ.sum()) / differ.numel()
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


def test_products_per_rounding_counts_single_products_in_convolutions():
    assert accumulation.products_per_rounding(nn.Conv2d(6, 4, 5), 1) == (150, 1)
    assert accumulation.products_per_rounding(nn.Conv2d(6, 4, 5), 64) == (150, 64)
    assert accumulation.products_per_rounding(nn.Conv2d(6, 4, 5), None) == (150, 150)
    assert accumulation.products_per_rounding(nn.Linear(40, 3), 64) == (40, 40)
    # stride 2, 4×4 kernel, padding 1: 2×2 taps land on each output, per input channel
    assert accumulation.products_per_rounding(nn.ConvTranspose2d(32, 16, 4, 2, 1), 16) == (128, 16)
    assert accumulation.products_per_rounding(nn.ConvTranspose2d(8, 1, 3, 1, 1), None) == (72, 72)


def _tiny_generator(seed: int = 0) -> nn.Module:
    from lowbit.experiments import posit_gan

    g, _ = posit_gan.build_gan({**posit_gan.config(quick=True), "channels": [8, 4]}, 28, seed)
    return g.eval()


def test_generator_rows_compare_images_and_layers_with_the_quire():
    g = _tiny_generator()
    z, y = torch.randn(12, 64, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 10
    rows, images = accumulation.compare_generator(g, "posit8_es2", [("fp32", None), ("operand", 1)], z, y,
                                                  quality=lambda im: {"fid": 0.0, "class_accuracy": 0.0}, batch=5)
    assert [r["variant"] for r in rows] == ["quire", "fp32", "posit8_es2/1"]
    for r in rows:
        assert set(r) | {"dataset", "model"} == GEN_KEYS and r["samples"] == 12
        assert set(r["layers"]) == {"fc", "up1", "up2"}
    quire, fp32, per_product = rows
    assert quire["image_max_err"] == 0.0 and quire["ssim"] == 1.0 and quire["psnr"] is None
    # the quire generator is the exact sums rounded once: compare its images with exact layers by hand
    with torch.no_grad():
        want = accumulation._quantized(g, accumulation.variant_config("posit8_es2", "quire", None))(z, y)
    assert torch.equal(images["quire"], want)
    assert per_product["image_max_err"] > 0 and per_product["layers"]["up1"]["products_per_rounding"] == 1
    assert per_product["layers"]["up1"]["products"] == 8 * 4 and per_product["ssim"] < 1.0
    err = (images["posit8_es2/1"] - images["quire"]).abs()
    assert per_product["image_max_err"] == float(err.max())
    assert per_product["image_differ_share"] == float((images["posit8_es2/1"] != images["quire"]).float().mean())


def test_generator_fp32_share_counts_the_transposed_conv_outputs_torch_rounds_differently():
    from lowbit.simulate.exact import exact_conv_transpose2d

    g = _tiny_generator(3)
    z, y = torch.randn(20, 64, generator=torch.Generator().manual_seed(2)), torch.arange(20) % 10
    # int8 with absmax scales: operands with 24-bit significands, so FP32 running sums do round
    rows, _ = accumulation.compare_generator(g, "int8", [("fp32", None)], z, y)
    q = accumulation._quantized(g, accumulation.variant_config("int8", "quire", None))
    feed = {}
    hook = q.up1.register_forward_hook(lambda m, a, o: feed.update(x=a[0]))
    with torch.no_grad():
        q(z, y)
        hook.remove()
        x, w = q.up1._lowbit_q("input", feed["x"]), q.up1.weight  # the operands as the layer quantizes them
        differ = F.conv_transpose2d(x, w, None, 2, 1) != exact_conv_transpose2d(x, w, None, 2, 1)
    assert int(differ.sum()) > 0
    assert rows[1]["layers"]["up1"]["differ_share"] == int(differ.sum()) / differ.numel()


def test_batches_give_the_same_rows_as_one_pass():
    g = _tiny_generator(4)
    z, y = torch.randn(9, 64, generator=torch.Generator().manual_seed(5)), torch.arange(9) % 10
    one, _ = accumulation.compare_generator(g, "e4m3fn", [("bf16", 4)], z, y, batch=100)
    many, _ = accumulation.compare_generator(g, "e4m3fn", [("bf16", 4)], z, y, batch=2)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in one]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in many]
    with pytest.raises(ValueError, match="batch=0"):
        accumulation.compare_generator(g, "e4m3fn", [], z, y, batch=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("accumulation")
    overrides = {"datasets": ["digits"], "operands": ["posit8_es2", "int8"], "accumulators": ["fp32", "operand"],
                 "every": [1], "test_subset": 60, "epochs": {"digits": 2}, "cache": str(root / "cache"),
                 "generator": {"samples": 30, "operands": ["posit8_es2"], "iterations": 3, "batch_size": 16,
                               "channels": [8, 4]}}
    return runner.run_experiment("accumulation", out_dir=root / "out", seed=1, overrides=overrides, quiet=True)


def test_registered():
    assert runner.get_experiment("accumulation").NAME == "accumulation"


def test_run_writes_rows_csv_report_and_png(tiny):
    names = {p.name for p in tiny.files}
    assert {"results.json", "results.csv", "report.md", "accumulation_differ.png", "accumulation_generator.png"} <= names
    for png in ("accumulation_differ.png", "accumulation_generator.png"):
        assert (tiny.out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tiny.out_dir / "results.json").read_text())
    assert record["rows"] == tiny.rows
    # posit8: quire, fp32, posit8/1; int8: quire, fp32 (no int8 accumulator); the generator: posit8 only
    assert [(r["model"], r["operands"], r["variant"]) for r in tiny.rows] == [
        ("DigitsCNN", "posit8_es2", "quire"), ("DigitsCNN", "posit8_es2", "fp32"),
        ("DigitsCNN", "posit8_es2", "posit8_es2/1"), ("DigitsCNN", "int8", "quire"), ("DigitsCNN", "int8", "fp32"),
        ("Generator", "posit8_es2", "quire"), ("Generator", "posit8_es2", "fp32"),
        ("Generator", "posit8_es2", "posit8_es2/1")]
    for r in tiny.rows[:5]:
        assert set(r) == ROW_KEYS and r["test_images"] == 60 and 0.0 <= r["top1"] <= 1.0
        assert set(r["layers"]) == {"conv1", "conv2", "fc1"}
    for r in tiny.rows[5:]:
        assert set(r) == GEN_KEYS and r["samples"] == 30 and r["dataset"] == "digits"
        assert set(r["layers"]) == {"fc", "up1", "up2"} and r["fid"] >= 0 and 0.0 <= r["class_accuracy"] <= 1.0
    assert record["info"]["generator"]["iterations"] == 3 and not record["info"]["generator"]["cached"]
    report = (tiny.out_dir / "report.md").read_text()
    assert "Is FP32 accumulation as good as a quire?" in report and "posit8_es2/1" in report
    assert "The posit GAN's generator" in report and "digits Generator, posit8_es2:" in report


def test_a_second_run_loads_the_cached_generator(tiny, tmp_path):
    overrides = {"datasets": ["digits"], "operands": ["posit8_es2"], "accumulators": ["fp32"], "every": [1],
                 "test_subset": 20, "epochs": {"digits": 2}, "cache": str(tiny.out_dir.parent / "cache"),
                 "generator": {"samples": 30, "operands": ["posit8_es2"], "iterations": 3, "batch_size": 16,
                               "channels": [8, 4]}}
    again = runner.run_experiment("accumulation", out_dir=tmp_path, seed=1, overrides=overrides, quiet=True)
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["info"]["generator"]["cached"]
    first = [r for r in tiny.rows if r["model"] == "Generator" and r["variant"] in ("quire", "fp32")]
    second = [r for r in again.rows if r["model"] == "Generator"]
    assert [r["image_max_err"] for r in first] == [r["image_max_err"] for r in second]
    assert [r["fid"] for r in first] == [r["fid"] for r in second]  # the same weights, the same images
