"""The offline text corpora and the byte-level LM of the transformer experiment."""

from __future__ import annotations


import copy

import pytest
import torch

from lowbit.experiments.lm import LMConfig, TinyGPT, bits_per_byte
from lowbit.experiments.text import stdlib_bytes, stdlib_root, stdlib_sentences
from lowbit.experiments.transformer_formats import FORMATS, MODES, quant_config


class TestCorpora:
    def test_streams_have_the_asked_sizes_and_are_real_python_source(self):
        train, val = stdlib_bytes(max_train=50_000, max_val=5_000)
        assert (train.numel(), val.numel()) == (50_000, 5_000)
        assert train.dtype == torch.uint8
        assert b"def " in bytes(train.tolist()) and b"import" in bytes(val.tolist())

    def test_validation_text_is_not_in_the_training_stream(self):
        train, val = stdlib_bytes(max_train=400_000, max_val=20_000)
        probe = bytes(val[1000:1200].tolist())  # 200 bytes of a held-out file
        assert probe not in bytes(train.tolist())

    def test_sentences_are_distinct_deterministic_english(self):
        a, b = stdlib_sentences(64), stdlib_sentences.__wrapped__(64)
        assert a == b and len(set(a)) == 64
        assert all(40 <= len(s) <= 160 and s[0].isupper() and s.endswith(".") for s in a)
        assert stdlib_root().is_dir()


class TestTinyGPT:
    def test_prediction_at_t_does_not_see_later_bytes(self):
        torch.manual_seed(0)
        model = TinyGPT(LMConfig(d_model=32, n_heads=2, n_layers=2, context=16)).eval()
        ids = torch.randint(0, 256, (1, 16))
        changed = ids.clone()
        changed[0, 10:] = (changed[0, 10:] + 1) % 256
        with torch.no_grad():
            assert torch.equal(model(ids)[0, :10], model(changed)[0, :10])
            assert not torch.equal(model(ids)[0, 10:], model(changed)[0, 10:])

    def test_uniform_prediction_costs_eight_bits_per_byte(self):
        class Uniform(torch.nn.Module):
            def forward(self, ids):
                return torch.zeros(*ids.shape, 256)

        data = torch.randint(0, 256, (1000,), dtype=torch.uint8)
        assert bits_per_byte(Uniform(), data, context=32) == pytest.approx(8.0, abs=1e-5)  # float32 log-softmax


class TestConfigs:
    def test_every_format_and_mode_gives_a_valid_quant_config(self):
        from lowbit.quant.config import QuantConfig

        for label in FORMATS:
            for mode in MODES[:2]:  # the attention key is checked where op simulation is tested
                cfg = QuantConfig.from_dict(quant_config(label, mode))
                assert cfg.default.weight is not None
                assert (cfg.default.input is not None) == (mode != "weights")

    def test_every_format_and_mode_runs_on_a_transformer_whose_key_length_no_group_divides(self):
        """The full run's configs, attention included, on sequences of 29 bytes and heads of width
        64: per-group activation roles must not reach the attention scores (29 keys)."""
        from lowbit.quant import quantize_

        model = TinyGPT(LMConfig(d_model=128, n_heads=2, n_layers=1, context=32)).eval()
        x = torch.randint(0, 256, (2, 29), generator=torch.Generator().manual_seed(0))
        for label in FORMATS:
            for mode in MODES:
                m = copy.deepcopy(model)
                quantize_(m, quant_config(label, mode), on_unsupported="ignore")
                with torch.no_grad():
                    assert torch.isfinite(m(x)).all(), (label, mode)

    def test_unknown_label_or_mode_is_refused_by_name(self):
        with pytest.raises(ValueError, match="unknown format label"):
            quant_config("fp5", "weights")
        with pytest.raises(ValueError, match="allowed"):
            quant_config("bf16", "everything")
