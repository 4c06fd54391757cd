"""transformers' BertModel under quantize_: attention simulated at exactly the documented points
(sdpa and eager agree), calibration and the sensitivity scan with HF calling conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit as lb

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface, AttentionMaskInterface, BertConfig, BertModel  # noqa: E402
from transformers.masking_utils import eager_mask  # noqa: E402

FORMATS = ["e4m3fn", "posit8_es2"]
_REF_SPEC: "dict[str, str]" = {}


def _hand_written_attention(module, q, k, v, mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(R(q)·R(k)ᵀ·scaling + mask) rounded, times R(v) — by hand, with the format in _REF_SPEC."""
    f = lb.parse_format(_REF_SPEC["spec"])
    skip = _REF_SPEC.get("skip")
    r = {role: (lambda t: t) if role == skip else f.quantize for role in ("q", "k", "v", "probs")}
    s = torch.einsum("bhld,bhsd->bhls", r["q"](q), r["k"](k)) * scaling
    if mask is not None:
        s = s + mask
    p = r["probs"](torch.softmax(s, dim=-1))
    return torch.einsum("bhls,bhsd->bhld", p, r["v"](v)).transpose(1, 2).contiguous(), p


AttentionInterface.register("lowbit_hand_written", _hand_written_attention)
AttentionMaskInterface.register("lowbit_hand_written", eager_mask)


def _bert(impl: str) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=100, attn_implementation=impl)
    return BertModel(cfg).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # padding: a real attention mask reaches the attention
    return {"input_ids": ids, "attention_mask": mask}


class TestBertAttention:
    @pytest.mark.parametrize("spec", FORMATS)
    def test_sdpa_and_eager_equal_the_hand_written_rounding_and_each_other(self, spec):
        batch = _batch()
        ref_model = _bert("sdpa")
        with torch.no_grad():
            fp32 = ref_model(**batch).last_hidden_state
            _REF_SPEC.update(spec=spec, skip=None)
            ref_model.set_attn_implementation("lowbit_hand_written")
            ref = ref_model(**batch).last_hidden_state
            missing_one = {}  # the reference with one rounding point left out
            for role in ("q", "k", "v", "probs"):
                _REF_SPEC["skip"] = role
                missing_one[role] = ref_model(**batch).last_hidden_state
        outs = {}
        for impl in ("sdpa", "eager"):
            model = _bert(impl)
            lb.quantize_(model, {"attention": {"q": spec, "k": spec, "v": spec, "probs": spec}})
            with torch.no_grad():
                outs[impl] = model(**batch).last_hidden_state
            torch.testing.assert_close(outs[impl], ref, rtol=0, atol=2e-5)
            ops = lb.quantization_report(model).fp32_ops
            assert not any(n.endswith("attention.self") for n in ops)  # no FP32 attention op left
            assert ops["encoder.layer.0.attention.self.query"] == {"linear": 1}
        torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=0, atol=2e-5)
        assert (outs["sdpa"] - fp32).abs().max() > 1e-3  # the rounding is there
        for role, other in missing_one.items():  # the tolerance tells every rounding point apart
            assert (outs["sdpa"] - other).abs().max() > 10 * 2e-5, role

    def test_layer_pattern_selects_one_block(self):
        batch = _batch()
        full = _bert("eager")
        first = _bert("eager")
        spec = {"probs": "int4"}
        lb.quantize_(full, {"attention": spec})
        lb.quantize_(first, {"layers": {"encoder.layer.0.*": {"attention": spec}}})
        with torch.no_grad():
            a, b = full(**batch).last_hidden_state, first(**batch).last_hidden_state
            fp32 = _bert("eager")(**batch).last_hidden_state
        assert not torch.equal(a, b) and not torch.equal(b, fp32)
        ops = lb.quantization_report(first).fp32_ops
        assert ops["encoder.layer.1.attention.self"] == {"matmul": 2, "softmax": 1}
        assert "encoder.layer.0.attention.self" not in ops


class TestCalibrationAndSensitivityConventions:
    STATIC = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
              "input": {"format": "int8", "scaling": "static"}}

    def test_embedding_and_linear_model_calibrates(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
        data = [torch.randint(0, 10, (3, 5)) for _ in range(2)]
        cfg = lb.calibrate_config(model, self.STATIC, data)
        layers = dict(cfg.layers)
        assert layers["0"].input is None  # indices: no input range, the role does not apply
        hidden = torch.cat([model[0](x) for x in data]).detach()
        assert layers["1"].input.range == (float(hidden.min()), float(hidden.max()))
        lb.quantize_(model, cfg)
        assert model(data[0]).shape == (3, 5, 4)

    def test_embedding_output_role_is_calibrated(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 4))
        data = [torch.randint(0, 10, (3, 5))]
        cfg = lb.calibrate_config(model, {"output": {"format": "int8", "scaling": "static"}}, data)
        emb = model[0](data[0]).detach()
        assert dict(cfg.layers)["0"].output.range == (float(emb.min()), float(emb.max()))

    def test_bert_calibrates_with_dict_batches_and_runs(self):
        model = _bert("sdpa")
        batches = [_batch(), _batch()]
        cfg = lb.calibrate_config(model, self.STATIC, batches)
        layers = dict(cfg.layers)
        assert layers["embeddings.word_embeddings"].input is None
        assert layers["encoder.layer.0.attention.self.query"].input.range is not None
        calls = []
        same = lb.calibrate_config(model, self.STATIC, batches,
                                   forward=lambda m, b: calls.append(1) or m(**b))
        assert same == cfg and len(calls) == 2
        lb.quantize_(model, cfg)
        with torch.no_grad():
            assert torch.isfinite(model(**_batch()).last_hidden_state).all()

    def test_sensitivity_scan_on_a_model_returning_a_dict(self):
        class DictModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return {"loss": None, "logits": self.fc(x), "extra": torch.zeros(1)}

        torch.manual_seed(0)
        model = DictModel()
        x = torch.randn(16, 4)
        report = lb.sensitivity_scan(model, ["int4"], "sqnr", data=x)
        (entry,) = report.entries
        with torch.no_grad():
            y = model.fc(x)
            q = torch.nn.functional.linear(x, lb.parse_format("int4").quantize(model.fc.weight), model.fc.bias)
        noise = float(((q - y).double() ** 2).sum() / (y.double() ** 2).sum())
        assert entry.drop == pytest.approx(noise, rel=1e-9)
        by_key = lb.sensitivity_scan(model, ["int4"], "sqnr", data=x, output_key="logits")
        by_fn = lb.sensitivity_scan(model, ["int4"], "sqnr", data=x, output_key=lambda out: out["logits"])
        assert by_key.entries == report.entries == by_fn.entries
        with pytest.raises(KeyError, match="output_key='nope'.*logits"):
            lb.sensitivity_scan(model, ["int4"], "sqnr", data=x, output_key="nope")
        with pytest.raises(ValueError, match="forward= and output_key= are used with metric"):
            lb.sensitivity_scan(model, ["int4"], lambda m: 1.0, output_key="logits")

    def test_sensitivity_scan_on_bert_with_dict_batches(self):
        model = _bert("sdpa")
        report = lb.sensitivity_scan(model, ["int4"], "kl", data=[_batch()],
                                     layers=["encoder.layer.0.attention.self.query"])
        assert [e.layer for e in report.entries] == ["encoder.layer.0.attention.self.query"]
        assert report.entries[0].value > 0
        seen = []
        again = lb.sensitivity_scan(model, ["int4"], "kl", data=[_batch()],
                                    layers=["encoder.layer.0.attention.self.query"],
                                    forward=lambda m, b: seen.append(1) or m(**b))
        assert again.entries == report.entries and seen
