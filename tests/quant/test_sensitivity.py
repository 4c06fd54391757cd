"""sensitivity_scan: one layer at a time, exact restore, metrics equal their definitions."""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import lowbit as lb
from lowbit.quant.sensitivity import (
    Candidate,
    SensitivityReport,
    layer_pattern,
    measure_config,
    quantizable_layers,
    sensitivity_scan,
    storage_bits,
)
from lowbit.simulate.scaling import histogram_exponent, scaled_format


# ------------------------------------------------------------------ the digits model (shared with test_mixed)
class DigitsNet(nn.Module):
    """Conv 8@3×3 stride 2 → FC 128-32 → FC 32-32 → FC 32-10 on 1×8×8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(128, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@functools.lru_cache(maxsize=None)
def _digits() -> "tuple[DigitsNet, torch.Tensor, torch.Tensor]":
    datasets = pytest.importorskip("sklearn.datasets", reason="the digits tests use scikit-learn's load_digits")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, held = perm[:1297], perm[1297:]
    x = (x - x[train].mean()) / x[train].std()
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine's thread count; faster when cores are shared
    try:
        for _ in range(60):  # full batch: under a second
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[train]), y[train]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x[held], y[held]


def digits_model() -> "tuple[DigitsNet, torch.Tensor, torch.Tensor]":
    """(trained model, held-out images, labels): 500 held-out digits; shared, so do not modify it."""
    return _digits()


def accuracy_on(images: torch.Tensor, labels: torch.Tensor):
    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(images).argmax(1) == labels).float().mean())

    return accuracy


def digits_candidates(name: str, module: nn.Module) -> list:
    """posit3..8_es1, e2m1fn … e4m3fn, and fixed<n>_f<f> (a power-of-two-scaled int<n>, per tensor),
    whose fraction bits fit the layer's largest weight; all fixed<n> variants share the label fixed<n>."""
    amax = float(module.weight.detach().abs().max())
    out: list = [f"posit{n}_es1" for n in range(3, 9)]
    out += [{"format": f"fixed{n}_f{n - 1 - math.ceil(math.log2(amax))}", "label": f"fixed{n}"} for n in range(3, 9)]
    out += ["e2m1fn", "e2m2fn", "e3m1fn", "e3m2fn", "e2m3fn", "e4m3fn"]
    return out


# ------------------------------------------------------------------ helpers
def _snapshot(model: nn.Module):
    state = {k: (v.dtype, v.shape, v.detach().clone().contiguous().reshape(-1).view(torch.uint8))
             for k, v in model.state_dict(keep_vars=True).items()}
    modules = [(name, type(m), m.training, sorted(m.__dict__)) for name, m in model.named_modules()]
    params = [id(p) for p in model.parameters()]
    return state, modules, params, sorted(model.__dict__)


def _assert_restored(model: nn.Module, snap) -> None:
    state, modules, params, attrs = _snapshot(model)
    assert state.keys() == snap[0].keys()
    for k, (dtype, shape, raw) in state.items():
        assert (dtype, shape) == snap[0][k][:2], k
        assert torch.equal(raw, snap[0][k][2]), f"{k} changed"  # bit for bit
    assert modules == snap[1]
    assert params == snap[2]
    assert attrs == snap[3]


def _hand_quantized(model: nn.Module, name: str, fmt: str) -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        w = ref.get_submodule(name).weight
        w.copy_(lb.parse_format(fmt).quantize(w))
    return ref


def _small_model() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4))


# ------------------------------------------------------------------ restore
class TestRestoresTheModelExactly:
    def test_after_a_scan_of_the_digits_model(self):
        model, images, labels = digits_model()
        snap = _snapshot(model)
        seen = []

        def metric(m):
            seen.append({k: str(v) for k, v in lb.tensor_formats(m).items()})
            return accuracy_on(images, labels)(m)

        report = sensitivity_scan(model, ["posit4_es1", {"format": "e3m2fn", "scaling": "histogram"}], metric)
        _assert_restored(model, snap)
        assert len(report.entries) == 8
        # the baseline call sees no quantized layer; every other call exactly one, the one scanned
        assert seen[0] == {}
        assert [list(s) for s in seen[1:]] == [[f"{n}.weight"] for n in ("conv1", "fc1", "fc2", "fc3") for _ in (0, 1)]

    def test_training_flags_come_back_after_sqnr_and_kl(self):
        model = _small_model().train()
        model[2].eval()  # a mixed state must come back as it was
        snap = _snapshot(model)
        for metric in ("sqnr", "kl"):
            sensitivity_scan(model, ["posit5_es1"], metric, data=torch.randn(16, 6))
            _assert_restored(model, snap)

    def test_when_the_metric_raises(self):
        model = _small_model()
        snap = _snapshot(model)
        calls = []

        def metric(m):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom")
            return 0.5

        with pytest.raises(RuntimeError, match="boom"):
            sensitivity_scan(model, ["posit5_es1", "e4m3fn"], metric)
        _assert_restored(model, snap)

    def test_a_model_with_requires_grad_and_buffers(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))
        snap = _snapshot(model)
        sensitivity_scan(model, ["int8", "e2m1fn"], "kl", data=torch.randn(5, 2, 4, 4))
        _assert_restored(model, snap)


# ------------------------------------------------------------------ values
class TestEntriesEqualTheirDefinitions:
    def test_callable_metric_value_and_drop(self):
        model, images, labels = digits_model()
        acc = accuracy_on(images, labels)
        report = sensitivity_scan(model, ["posit4_es1", "e2m1fn"], acc, layers=["fc1", "fc3"])
        assert report.kind == "metric" and report.higher_is_better and report.baseline == acc(model)
        for e in report.entries:
            want = acc(_hand_quantized(model, e.layer, e.label))
            assert e.value == want
            assert e.drop == report.baseline - want
            assert e.storage_bits == model.get_submodule(e.layer).weight.numel() * lb.parse_format(e.label).bits

    def test_sqnr_is_output_signal_over_noise_power_in_db(self):
        model, x = _small_model().eval(), torch.randn(40, 6)
        report = sensitivity_scan(model, ["posit4_es0", "e3m2fn"], "sqnr", data=[(x[:25], None), (x[25:], None)])
        with torch.no_grad():
            ref = model(x).double()
            for e in report.entries:
                out = _hand_quantized(model, e.layer, e.label)(x).double()
                ratio = float(((out - ref) ** 2).sum() / (ref ** 2).sum())
                assert e.drop == pytest.approx(ratio, rel=1e-12)
                assert e.value == pytest.approx(-10 * math.log10(ratio), rel=1e-12)
        assert report.baseline == math.inf and report.higher_is_better
        assert report.predict(sum(e.drop for e in report.entries[:1])) == pytest.approx(report.entries[0].value)

    def test_kl_is_batchmean_kl_of_softmax_outputs(self):
        model, x = _small_model().eval(), torch.randn(30, 6)
        report = sensitivity_scan(model, ["posit3_es1"], "kl", data=x)
        with torch.no_grad():
            p = torch.log_softmax(model(x).double(), -1)
            for e in report.entries:
                q = torch.log_softmax(_hand_quantized(model, e.layer, e.label)(x).double(), -1)
                want = float((p.exp() * (p - q)).sum(-1).mean())
                assert e.value == pytest.approx(want, rel=1e-12) and e.drop == e.value
        assert report.baseline == 0.0 and not report.higher_is_better

    def test_full_precision_candidate_costs_the_dtype_and_drops_nothing(self):
        model = _small_model()
        report = sensitivity_scan(model, [None, "posit8_es1"], "sqnr", data=torch.randn(4, 6))
        full = [e for e in report.entries if e.label == "full"]
        assert [(e.drop, e.value, e.bits) for e in full] == [(0.0, math.inf, 32.0)] * 2

    def test_weight_error_is_relative_squared_error_with_the_scale_in_force(self):
        model = _small_model()
        report = sensitivity_scan(model, ["posit4_es1", {"format": "posit4_es1", "scaling": "histogram"}],
                                  lambda m: 0.0, layers=["0"])
        w = model[0].weight.detach().double()
        plain, scaled = report.entries
        q = lb.parse_format("posit4_es1").quantize(w)
        assert plain.weight_error == pytest.approx(float(((q - w) ** 2).sum() / (w ** 2).sum()), rel=1e-12)
        q = scaled_format("posit4_es1", histogram_exponent(w, "posit4_es1")).quantize(w)
        assert scaled.weight_error == pytest.approx(float(((q - w) ** 2).sum() / (w ** 2).sum()), rel=1e-12)
        assert scaled.label == "posit4_es1/scaling=histogram"
        assert scaled.weight == {"format": "posit4_es1", "scaling": "histogram"}

    def test_measure_config_equals_the_hand_quantized_model(self):
        model, images, labels = digits_model()
        acc = accuracy_on(images, labels)
        want = acc(_hand_quantized(_hand_quantized(model, "fc1", "posit5_es1"), "fc2", "e2m2fn"))
        cfg = {"layers": {"fc1": {"weight": "posit5_es1"}, "fc2": {"weight": "e2m2fn"}}}
        assert measure_config(model, cfg, acc) == want


# ------------------------------------------------------------------ layers and names
class TestLayers:
    def test_every_supported_layer_type_is_scanned(self):
        torch.manual_seed(0)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(10, 4)
                self.c1 = nn.Conv1d(4, 4, 3, padding=1)
                self.up = nn.ConvTranspose2d(4, 2, 2)
                self.norm = nn.LayerNorm(2)

            def forward(self, idx):
                h = self.c1(self.emb(idx).transpose(1, 2))  # (N, 4, L)
                return self.norm(self.up(h.unsqueeze(-1)).flatten(2).transpose(1, 2))

        model = Net()
        report = sensitivity_scan(model, ["posit6_es1"], "sqnr", data=torch.randint(0, 10, (3, 5)))
        assert report.scanned == ["emb", "c1", "up"]
        assert [i.types[0] for i in report.layers] == ["Embedding", "Conv1d", "ConvTranspose2d"]
        assert all(0 < e.value < math.inf for e in report.entries)

    def test_layers_selects_and_the_rest_are_listed_unscanned(self):
        model, _, _ = digits_model()
        report = sensitivity_scan(model, ["posit5_es1"], lambda m: 1.0, layers=["fc*"])
        assert report.scanned == ["fc1", "fc2", "fc3"]
        assert [(i.name, i.scanned, i.numel) for i in report.layers][0] == ("conv1", False, 72)
        with pytest.raises(ValueError, match="'nope' matches no quantizable layer"):
            sensitivity_scan(model, ["posit5_es1"], lambda m: 1.0, layers=["nope"])

    def test_names_with_fnmatch_characters(self):
        torch.manual_seed(0)
        inner = nn.ModuleDict({"a[0]": nn.Linear(3, 3), "a0": nn.Linear(3, 3), "b*": nn.Linear(3, 3),
                               "type:Linear": nn.Linear(3, 3)})

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.d = inner

            def forward(self, x):
                for m in self.d.values():
                    x = m(x)
                return x

        model = Net()
        seen = []

        def metric(m):
            seen.append(sorted(lb.tensor_formats(m)))
            return 0.0

        sensitivity_scan(model, ["int8"], metric)
        assert seen[1:] == [[f"d.{n}.weight"] for n in ("a[0]", "a0", "b*", "type:Linear")]

    def test_a_model_that_is_one_layer(self):
        model = nn.Linear(5, 3)
        report = sensitivity_scan(model, ["posit5_es1"], "sqnr", data=torch.randn(4, 5))
        assert [e.layer for e in report.entries] == [""]
        assert type(model) is nn.Linear

    @given(st.text(alphabet="ab[]*?!:type.-", min_size=1, max_size=8), st.text(alphabet="ab[]*?!:type.-", max_size=8))
    def test_layer_pattern_matches_only_its_name(self, name, other):
        pattern = layer_pattern(name)
        assert fnmatch.fnmatchcase(name, pattern)
        assert fnmatch.fnmatchcase(other, pattern) == (other == name)
        assert not pattern.startswith("type:")

    def test_quantizable_layers_skips_unsupported_and_the_root_of_a_container(self):
        model = nn.Sequential(nn.Linear(2, 2), nn.GRU(2, 2), nn.BatchNorm1d(2))
        assert list(quantizable_layers(model)) == ["0"]


# ------------------------------------------------------------------ candidates
class TestCandidates:
    def test_forms_and_labels(self):
        assert Candidate.parse("fp8_e4m3fn").weight == "e4m3fn"
        c = Candidate.parse({"format": "posit6_es1", "rounding": "toward_zero"})
        assert c.label == "posit6_es1/rounding=toward_zero"
        assert c.weight == {"format": "posit6_es1", "rounding": "toward_zero"}
        c = Candidate.parse({"format": "fixed5_f4", "label": "fixed5"})
        assert (c.label, c.weight) == ("fixed5", "fixed5_f4")

    def test_per_layer_mapping_last_match_wins(self):
        model, _, _ = digits_model()
        report = sensitivity_scan(model, {"*": ["posit5_es1"], "fc3": ["posit8_es1", None]}, lambda m: 1.0)
        assert [e.label for e in report.candidates("fc2")] == ["posit5_es1"]
        assert [e.label for e in report.candidates("fc3")] == ["posit8_es1", "full"]

    def test_callable_per_layer(self):
        model, _, _ = digits_model()
        report = sensitivity_scan(model, digits_candidates, lambda m: 1.0, layers=["conv1"])
        fixed = [e for e in report.candidates("conv1") if e.label.startswith("fixed")]
        assert [e.label for e in fixed] == [f"fixed{n}" for n in range(3, 9)]
        assert all(lb.parse_format(e.weight).max >= model.conv1.weight.abs().max() for e in fixed)

    @pytest.mark.parametrize("candidates, error, match", [
        ("posit8_es2", TypeError, "candidates must be a list"),
        ({"fc": "int8"}, TypeError, "list of candidate formats"),
        (["posit8"], ValueError, "posit8"),
        ([{"format": "int4", "label": "x"}, {"format": "int5", "label": "x"}], ValueError, "label 'x' names two"),
        ({"nope": ["int8"]}, ValueError, "'nope' matches no quantizable layer"),
        ([{"format": "int4", "label": ""}], ValueError, "non-empty string"),
        (42, TypeError, "candidates must be"),
        ([], ValueError, "no candidate format"),
    ])
    def test_bad_candidates(self, candidates, error, match):
        with pytest.raises(error, match=match):
            sensitivity_scan(_small_model(), candidates, lambda m: 1.0)


# ------------------------------------------------------------------ errors
class TestErrors:
    def test_metric_arguments(self):
        model = _small_model()
        with pytest.raises(ValueError, match="allowed: a callable .* 'sqnr', 'kl'"):
            sensitivity_scan(model, ["int8"], "mse", data=torch.randn(2, 6))
        with pytest.raises(ValueError, match="pass data="):
            sensitivity_scan(model, ["int8"], "kl")
        with pytest.raises(ValueError, match="callable metric"):
            sensitivity_scan(model, ["int8"], lambda m: 1.0, data=torch.randn(2, 6))
        with pytest.raises(TypeError, match="must return a number"):
            sensitivity_scan(model, ["int8"], lambda m: "high")
        with pytest.raises(ValueError, match="NaN"):
            sensitivity_scan(model, ["int8"], lambda m: math.nan)
        with pytest.raises(TypeError, match="metric must be"):
            sensitivity_scan(model, ["int8"], 3)

    def test_already_quantized_model(self):
        model = lb.quantize_(_small_model(), {"weight": "int8"})
        with pytest.raises(ValueError, match="already quantized"):
            sensitivity_scan(model, ["int8"], lambda m: 1.0)

    def test_no_quantizable_layer(self):
        with pytest.raises(ValueError, match="no quantizable layer"):
            sensitivity_scan(nn.Sequential(nn.ReLU()), ["int8"], lambda m: 1.0)


# ------------------------------------------------------------------ storage, JSON
class TestStorageAndJSON:
    def test_storage_bits_counts_codes_and_fitted_parameters(self):
        w = torch.randn(3, 70)
        assert storage_bits("posit6_es1", w) == 210 * 6
        assert storage_bits("mxfp6_e3m2fn", w) == 210 * 6 + 3 * 3 * 8      # 3 blocks of <= 32 per row, E8M0
        assert storage_bits("bfp8_b16", w) == 210 * 8 + 3 * 5 * 16
        assert storage_bits("codebook3", w) == 210 * 3 + 8 * 32          # 8 float32 levels
        assert storage_bits("ternary", w) == 210 * 2 + 32
        assert storage_bits(None, w.half()) == 210 * 16

    @pytest.mark.parametrize("candidate", [
        "posit6_es1", "mxfp4_e2m1fn", "codebook3", "ternary",
        {"format": "int5", "scaling": "absmax"},
        {"format": "int5", "scaling": "absmax", "granularity": "channel"},
        {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "axis": 1, "group_size": 4}},
        {"format": "e2m3fn", "scaling": "absmax", "granularity": {"kind": "channel", "axis": 1}},
        {"format": "codebook4", "granularity": "channel"},
        {"format": "ternary", "granularity": {"kind": "group", "axis": 1, "group_size": 8}},
        {"format": "binary", "granularity": {"kind": "channel", "axis": 1}},
        {"format": "posit8_es2", "scaling": "histogram"},
    ])
    def test_a_scanned_candidate_costs_what_save_stores(self, candidate, tmp_path):
        # the allocator's budget is only honest if the scan counts what lowbit.save writes: per-channel
        # / per-group float scales and levels included (they used to be left out)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 8))
        report = sensitivity_scan(model, [candidate], "kl", data=torch.randn(4, 64))
        (entry,) = report.entries
        lb.quantize_(model, {"weight": candidate})
        lb.save(model, tmp_path / "m.lowbit")
        stored = lb.load_packed(tmp_path / "m.lowbit")["0.weight"]
        assert entry.storage_bits == 8 * stored.nbytes

    def test_the_allocator_refuses_a_budget_the_scales_do_not_fit(self):
        model = nn.Sequential(nn.Linear(64, 8))
        cand = {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "axis": 1, "group_size": 4}}
        report = sensitivity_scan(model, [cand], "kl", data=torch.randn(4, 64))
        with pytest.raises(ValueError, match="below the cheapest plan"):
            lb.quant.allocate(report, avg_bits=4)  # 4-bit codes + a float32 scale per 4 weights = 12 bits/weight
        assert lb.quant.allocate(report, avg_bits=12).avg_bits == 12

    def test_report_round_trips_through_json(self):
        model = _small_model()
        report = sensitivity_scan(model, [None, "posit5_es1", {"format": "e3m2fn", "scaling": "amax"}], "sqnr",
                                  data=torch.randn(8, 6))
        text = report.to_json()
        assert SensitivityReport.from_json(text) == report
        rows = report.rows()
        assert len(rows) == 6 and json.loads(json.dumps(rows))[1]["label"] == "posit5_es1"
        assert "posit5_es1" in str(report)
