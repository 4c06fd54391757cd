"""transformers' GPT2Model: the eager attention (divide by a tensor scale, causal ``where``, mask
add, softmax, dropout, ``matmul`` with V) is recognised — eager and sdpa give the same result
with every attention role set; GPT-2's Conv1D weight products are reported as escaped."""

from __future__ import annotations

import warnings

import pytest
import torch

import lowbit as lb

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2Model  # noqa: E402


def _gpt2(impl: str) -> GPT2Model:
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0,
                     attn_implementation=impl)
    return GPT2Model(cfg).eval()


def test_eager_and_sdpa_gpt2_agree_with_every_attention_role():
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    roles = dict.fromkeys(["q", "k", "v", "scores", "probs", "output"], "e4m3fn")
    outs, fp32 = {}, {}
    for impl in ("sdpa", "eager"):
        model = _gpt2(impl)
        with torch.no_grad():
            fp32[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
        lb.quantize_(model, {"attention": roles}, on_unsupported="ignore")
        with torch.no_grad():
            outs[impl] = model(input_ids=ids, attention_mask=mask).last_hidden_state
        with warnings.catch_warnings():  # Conv1D is a supported layer type: its products are not escapes
            warnings.simplefilter("error")
            report = lb.quantization_report(model)
        assert report.escaped_weight_ops == {}
        ops = report.fp32_ops
        assert "h.0.attn" not in ops  # no FP32 matmul / softmax left in the attention module
    # padded query rows are not attention outputs anyone reads (torch's own sdpa and eager differ there)
    torch.testing.assert_close(outs["sdpa"][:, 2:], outs["eager"][:, 2:], rtol=0, atol=2e-5)
    torch.testing.assert_close(outs["sdpa"][0], outs["eager"][0], rtol=0, atol=2e-5)
    assert (outs["eager"][0] - fp32["eager"][0]).abs().max() > 1e-3

