"""The experiment runner and the flagship on a tiny configuration (digits, one width, one epoch)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.experiments import runner, weight_formats
from lowbit.formats import FixedPoint, IntegerFormat, Posit

TINY = {
    "datasets": ["digits"],
    "widths": [4],
    "epochs": {"digits": 2},
    "posit_scales": [-6, -4, -2, 0],
    "fixed_frac_bits": [2, 4, 6, 8],
    "minifloat_bias_offsets": [0, 2, 4],
    "threads": 1,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the tiny run uses scikit-learn's digits (`pip install scikit-learn`)")
    pytest.importorskip("matplotlib", reason="plots need matplotlib (`pip install 'lowbit[experiments]'`)")
    root = tmp_path_factory.mktemp("run")
    result = runner.run_experiment(
        "weight-formats", out_dir=root / "out", seed=5, overrides={**TINY, "cache": str(root / "cache")}, quiet=True
    )
    return result


class TestRunExperiment:
    def test_writes_json_csv_report_and_png(self, tiny_run):
        out = tiny_run.out_dir
        names = {p.name for p in tiny_run.files}
        assert {"results.json", "results.csv", "report.md", "accuracy_vs_bits.png"} <= names
        assert (out / "accuracy_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_results_json_records_config_versions_seed_rows(self, tiny_run):
        record = json.loads((tiny_run.out_dir / "results.json").read_text())
        assert record["experiment"] == "weight-formats" and record["seed"] == 5
        assert record["config"]["widths"] == [4] and record["config"]["seed"] == 5
        for lib in ("lowbit", "torch", "numpy", "python"):
            assert record["versions"][lib]
        rows = record["rows"]
        assert rows == tiny_run.rows
        families = {r["family"] for r in rows}
        assert families == {"fp32", *weight_formats.FAMILIES}
        for r in rows:
            assert 0.0 <= r["accuracy"] <= 1.0
        # one headline per family and width
        selected = [(r["family"], r["bits"]) for r in rows if r["selected"]]
        assert len(selected) == len(set(selected)) == 1 + len(weight_formats.FAMILIES)
        # posit: every es evaluated; minifloat: every split of 4 bits
        assert sorted(r["variant"] for r in rows if r["family"] == "posit") == ["es0", "es1", "es2", "es3"]
        assert sorted(r["variant"] for r in rows if r["family"] == "minifloat") == ["e1m2fn", "e2m1fn", "e3m0fn"]

    def test_memory_is_bits_times_weights(self, tiny_run):
        rows = tiny_run.rows
        numel = next(r for r in rows if r["family"] == "fp32")["weight_bytes"] // 4
        for r in rows:
            if r["family"] not in ("fp32", "int-per-channel"):
                assert r["weight_bytes"] == numel * 4 // 8
        channels = 16 + 32 + 10  # digits-cnn: one FP32 scale per output channel
        assert next(r for r in rows if r["family"] == "int-per-channel")["weight_bytes"] == numel // 2 + 4 * channels

    def test_csv_has_the_rows(self, tiny_run):
        with open(tiny_run.out_dir / "results.csv", newline="") as f:
            table = list(csv.DictReader(f))
        assert len(table) == len(tiny_run.rows)
        assert {"dataset", "family", "bits", "accuracy", "weight_bytes", "format"} <= set(table[0])

    def test_report_has_the_table(self, tiny_run):
        text = (tiny_run.out_dir / "report.md").read_text()
        assert "| bits |" in text and "accuracy_vs_bits.png" in text and "Against the paper" in text

    def test_same_seed_same_rows(self, tiny_run, tmp_path):
        again = runner.run_experiment(
            "weight-formats", out_dir=tmp_path, seed=5, overrides={**TINY, "cache": False}, quiet=True
        )
        assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in tiny_run.rows]


class TestErrors:
    def test_unknown_experiment_lists_the_names(self, tmp_path):
        with pytest.raises(LowbitError, match="unknown experiment 'nope'.*weight-formats"):
            runner.run_experiment("nope", out_dir=tmp_path)

    def test_unwritable_out_dir_says_how_to_fix(self, tmp_path):
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(LowbitError, match="cannot write to the output directory.*--out"):
            runner.run_experiment("weight-formats", out_dir=blocker / "sub")
        with pytest.raises(LowbitError, match="not a directory"):
            runner.run_experiment("weight-formats", out_dir=blocker)

    def test_unknown_config_key(self, tmp_path):
        pytest.importorskip("matplotlib")
        with pytest.raises(LowbitError, match="unknown config key 'widthz'"):
            runner.run_experiment("weight-formats", out_dir=tmp_path, overrides={"widthz": [4]})

    def test_list(self):
        names = [name for name, _ in runner.list_experiments()]
        assert names[0] == runner.FLAGSHIP == "weight-formats"


class TestSelection:
    """The per-layer choices are made on the weights by least squared error."""

    def test_best_per_layer_is_the_least_squared_error(self):
        g = torch.Generator().manual_seed(0)
        weights = {"a": torch.randn(500, generator=g) * 0.05, "b": torch.randn(500, generator=g) * 2.0}
        cands = [FixedPoint(4, f) for f in range(0, 10)]
        chosen = weight_formats._best_per_layer(weights, cands)
        for name, w in weights.items():
            errs = [float(((c.quantize(w) - w) ** 2).sum()) for c in cands]
            assert chosen[name] == cands[errs.index(min(errs))]
        assert chosen["a"].frac_bits > chosen["b"].frac_bits  # small weights get more fraction bits

    def test_posit_scale_candidates_are_posits(self):
        cands = weight_formats._posits(5, [0, 1], [-3, 0])
        assert [str(c) for c in cands] == ["posit5_es0_s-3", "posit5_es0", "posit5_es1_s-3", "posit5_es1"]
        assert all(isinstance(c, Posit) for c in cands)

    def test_minifloat_splits(self):
        assert [str(f) for f in weight_formats._minifloats(4)] == ["e1m2fn", "e2m1fn", "e3m0fn"]
        assert [str(f) for f in weight_formats._minifloats(8)][3:5] == ["e4m3fn", "e5m2fn"]

    def test_per_channel_int(self):
        w = torch.tensor([[0.5, -0.25, 0.1], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        q, specs, extra = weight_formats._per_channel_int({"w": w}, 4)
        assert specs == {"w": "int4n"}
        assert extra == 3 * 4
        qmax = IntegerFormat(4, narrow=True).max  # 7
        scale = torch.tensor([0.5, 2.0, 1.0]) / qmax
        assert torch.equal(q["w"], torch.round(w / scale[:, None]) * scale[:, None])
        assert q["w"][0, 0] == 0.5 and q["w"][1, 0] == -2.0  # each channel's max is exact


class TestMissingData:
    """A missing data set is skipped with a note; with none installed the run falls back to digits."""

    @pytest.fixture
    def no_fashion(self, monkeypatch, tmp_path):
        from lowbit.experiments import data

        data.load_fashion_mnist.cache_clear()
        monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "absent")
        yield
        data.load_fashion_mnist.cache_clear()

    def test_skipped_with_a_note(self, no_fashion, tmp_path):
        pytest.importorskip("sklearn")
        ctx = runner.RunContext(out_dir=tmp_path)
        loaded = weight_formats._load({"datasets": ["fashion-mnist", "digits"], "fallback": "digits"}, ctx)
        assert [d.name for d in loaded] == ["digits"]
        assert len(ctx.notes) == 1 and "fashion-mnist skipped" in ctx.notes[0]
        assert "apt-get install -y dataset-fashion-mnist" in ctx.notes[0]

    def test_fallback_to_digits(self, no_fashion, tmp_path):
        pytest.importorskip("sklearn")
        ctx = runner.RunContext(out_dir=tmp_path)
        loaded = weight_formats._load({"datasets": ["fashion-mnist"], "fallback": "digits"}, ctx)
        assert [d.name for d in loaded] == ["digits"]
        assert "ran on digits instead" in ctx.notes[-1]

    def test_nothing_installed_lists_every_install_command(self, no_fashion, tmp_path):
        from lowbit.errors import DataUnavailableError

        ctx = runner.RunContext(out_dir=tmp_path)
        with pytest.raises(DataUnavailableError, match=r"(?s)no data set available.*apt-get install"):
            weight_formats._load({"datasets": ["fashion-mnist"], "fallback": None}, ctx)
