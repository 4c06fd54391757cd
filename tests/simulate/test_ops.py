"""Op-level simulation (lowbit.simulate.ops): attention, activation products, attribution, report.

References are written by hand here with ``fmt.quantize`` at the rounding points, einsum for the
products and torch.softmax, independent of the code under test.
"""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.errors import LowbitWarning
from lowbit.quant.opsim import trace_ops
from lowbit.simulate.ops import OpPlan, OpSimulation, scaled_dot_product_attention

FORMATS = ["e4m3fn", "posit8_es2"]


def _q(spec, x):
    return x if spec is None else lb.parse_format(spec).quantize(x)


def ref_attention(q, k, v, *, mask=None, causal=False, scale=None, gqa=False, fq=None, fk=None, fv=None, fs=None,
                  fp=None, fo=None, dropout=0.0, seed=None):
    """O = R_o(dropout(R_p(softmax(R_s(R_q(q)·R_k(k)ᵀ·scale) + mask))) · R_v(v)), by hand."""
    q, k, v = _q(fq, q), _q(fk, k), _q(fv, v)
    if gqa:
        r = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(r, -3), v.repeat_interleave(r, -3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = _q(fs, torch.einsum("...le,...se->...ls", q, k) * scale)
    L, S = s.shape[-2:]
    if causal:
        mask = torch.ones(L, S, dtype=torch.bool).tril()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    p = torch.softmax(s, -1)
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    p = _q(fp, p)
    if dropout:
        torch.manual_seed(seed)
        p = F.dropout(p, dropout, training=True)
    return _q(fo, torch.einsum("...ls,...se->...le", p, v))


def _qkv(shape_q=(2, 4, 5, 8), shape_kv=(2, 4, 6, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape_q, generator=g), torch.randn(shape_kv, generator=g), torch.randn(shape_kv, generator=g))


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- F.scaled_dot_product_attention
class TestScaledDotProductAttention:
    @pytest.mark.parametrize("spec", FORMATS)
    @pytest.mark.parametrize("masking", ["none", "causal", "bool", "float"])
    def test_every_role_rounds_where_the_formula_says(self, spec, masking):
        q, k, v = _qkv()
        kw, ref_kw = {}, {}
        if masking == "causal":
            kw, ref_kw = {"is_causal": True}, {"causal": True}
        elif masking == "bool":
            m = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.3
            m[2] = False  # a row with every key masked: zeros, as torch
            kw, ref_kw = {"attn_mask": m}, {"mask": m}
        elif masking == "float":
            m = torch.randn(2, 1, 5, 6)
            kw, ref_kw = {"attn_mask": m}, {"mask": m}
        roles = dict.fromkeys(["q", "k", "v", "scores", "probs", "output"], spec)
        out = scaled_dot_product_attention(q, k, v, roles=roles, **kw)
        ref = ref_attention(q, k, v, fq=spec, fk=spec, fv=spec, fs=spec, fp=spec, fo=spec, **ref_kw)
        _close(out, ref)
        assert torch.equal(out, _q(spec, out))  # the output is on the format's grid
        fp32 = F.scaled_dot_product_attention(q, k, v, **kw)
        assert not torch.allclose(out, fp32, atol=1e-3)
        if masking == "bool":
            assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
            assert torch.equal(fp32[:, :, 2], out[:, :, 2])

    def test_scale_and_gqa_behave_as_in_torch(self):
        q, _, _ = _qkv((1, 4, 5, 8))
        _, k, v = _qkv((1, 4, 5, 8), (1, 2, 6, 8), seed=3)
        out = scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True, roles={"scores": "e4m3fn"})
        _close(out, ref_attention(q, k, v, scale=0.3, gqa=True, fs="e4m3fn"))
        plain = scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True, roles={})
        _close(plain, F.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True))

    def test_dropout_applies_to_the_rounded_probabilities(self):
        q, k, v = _qkv()
        torch.manual_seed(7)
        out = scaled_dot_product_attention(q, k, v, dropout_p=0.3, roles={"probs": "e4m3fn"})
        ref = ref_attention(q, k, v, fp="e4m3fn", dropout=0.3, seed=7)
        _close(out, ref)
        rounded_after = ref_attention(q, k, v, dropout=0.3, seed=7, fp=None)
        assert not torch.allclose(out, rounded_after, atol=1e-4)

    def test_operand_roles_alone_run_torch_sdpa_on_rounded_operands(self):
        q, k, v = _qkv()
        out = scaled_dot_product_attention(q, k, v, roles={"q": "posit8_es2", "k": "posit8_es2", "v": "posit8_es2"})
        f = lb.parse_format("posit8_es2")
        assert torch.equal(out, F.scaled_dot_product_attention(f.quantize(q), f.quantize(k), f.quantize(v)))

    def test_bad_roles_and_arguments_are_named(self):
        q, k, v = _qkv()
        with pytest.raises(ValueError, match="allowed: q, k, v, scores, probs, output"):
            scaled_dot_product_attention(q, k, v, roles={"logits": "e4m3fn"})
        with pytest.raises(ValueError, match="either attn_mask or is_causal"):
            scaled_dot_product_attention(q, k, v, torch.zeros(5, 6), is_causal=True, roles={"probs": "e4m3fn"})
        with pytest.raises(ValueError, match="dropout_p"):
            scaled_dot_product_attention(q, k, v, dropout_p=2.0, roles={"probs": "e4m3fn"})


# ---------------------------------------------------------------------- models
class SdpaBlock(nn.Module):
    """Attention by F.scaled_dot_product_attention (projections by Linear layers)."""

    def __init__(self, d=16, heads=2, causal=False):
        super().__init__()
        self.qkv, self.out, self.heads, self.causal = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, causal

    def heads_of(self, x):
        b, t, d = x.shape
        return self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def attend(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)

    def forward(self, x, mask=None):
        q, k, v = self.heads_of(x)
        o = self.attend(q, k, v, mask)
        return self.out(o.transpose(1, 2).reshape(x.shape))


class EagerBlock(SdpaBlock):
    """The same attention written out as transformers' eager implementations do."""

    def attend(self, q, k, v, mask):
        s = torch.matmul(q, k.transpose(2, 3)) * q.shape[-1] ** -0.5
        if self.causal:
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
            s = torch.where(keep, s, torch.tensor(float("-inf")))
        if mask is not None:
            s = s + mask
        p = F.softmax(s, dim=-1)
        p = F.dropout(p, 0.0, training=self.training)
        return torch.matmul(p, v)


def _pair(causal=False):
    torch.manual_seed(0)
    a = SdpaBlock(causal=causal)
    b = EagerBlock(causal=causal)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


ATTN_ALL = {"q": "e4m3fn", "k": "e4m3fn", "v": "e4m3fn", "scores": "posit8_es2", "probs": "e4m3fn",
            "output": "posit8_es2"}


class TestAttentionInModels:
    @pytest.mark.parametrize("causal", [False, True])
    def test_sdpa_and_eager_give_the_hand_written_result(self, causal):
        sdpa, eager = _pair(causal)
        x = torch.randn(2, 5, 16)
        mask = None if causal else torch.randn(2, 1, 5, 5)
        with torch.no_grad():
            q, k, v = sdpa.heads_of(x)
            o = ref_attention(q, k, v, mask=mask, causal=causal, fq="e4m3fn", fk="e4m3fn", fv="e4m3fn",
                              fs="posit8_es2", fp="e4m3fn", fo="posit8_es2")
            ref = sdpa.out(o.transpose(1, 2).reshape(x.shape))
        for model in (sdpa, eager):
            lb.quantize_(model, {"attention": ATTN_ALL})
            with torch.no_grad():
                _close(model(x, mask), ref)
            assert lb.quantization_report(model).fp32_ops == {"qkv": {"linear": 1}, "out": {"linear": 1}}

    def test_eager_products_that_are_not_attention_stay_full_precision_and_are_reported(self):
        class NotAttention(nn.Module):
            def forward(self, a, b):
                return torch.matmul(a, b).relu()

        model = nn.Sequential()
        model.add_module("inner", NotAttention())
        a, b = torch.randn(3, 4), torch.randn(4, 2)
        lb.quantize_(model.inner, {"attention": {"q": "int4"}})
        assert torch.equal(model.inner(a, b), torch.matmul(a, b).relu())
        assert lb.quantization_report(model.inner).fp32_ops == {"<model>": {"matmul": 1}}

    def test_softmax_and_dropout_in_child_modules_continue_the_pattern(self):
        class ChildSteps(nn.Module):  # GPT-2 style: nn.Dropout (and here nn.Softmax) submodules
            def __init__(self):
                super().__init__()
                self.soft, self.drop = nn.Softmax(dim=-1), nn.Dropout(0.3)

            def forward(self, q, k, v):
                return self.drop(self.soft(q @ k.transpose(-1, -2) * 8 ** -0.5)) @ v

        q, k, v = _qkv()
        model = lb.quantize_(ChildSteps().train(), {"attention": {"probs": "e4m3fn", "v": "e4m3fn",
                                                                  "output": "posit8_es2"}})
        torch.manual_seed(7)
        got = model(q, k, v)
        _close(got, ref_attention(q, k, v, fp="e4m3fn", fv="e4m3fn", fo="posit8_es2", dropout=0.3, seed=7))
        assert lb.quantization_report(model).fp32_ops == {}

    def test_layers_and_exclude_patterns_select_the_attention(self):
        torch.manual_seed(0)
        model = nn.ModuleDict({"a": SdpaBlock(), "b": SdpaBlock()})
        x = torch.randn(1, 4, 16)
        fp32 = {n: m(x) for n, m in model.items()}
        lb.quantize_(model, {"layers": {"a*": {"attention": {"probs": "int4"}}}})
        assert not torch.equal(model["a"](x), fp32["a"]) and torch.equal(model["b"](x), fp32["b"])
        lb.quantize_(model, {"attention": {"probs": "int4"}, "exclude": ["b"]})
        assert not torch.equal(model["a"](x), fp32["a"]) and torch.equal(model["b"](x), fp32["b"])
        report = lb.quantization_report(model)
        assert report.fp32_ops["b"] == {"scaled_dot_product_attention": 1}
        lb.dequantize_(model)
        assert torch.equal(model["a"](x), fp32["a"])

    def test_layer_entry_merges_roles_into_the_default(self):
        cfg = lb.QuantConfig.from_dict({"attention": {"q": "e4m3fn", "probs": "e4m3fn"},
                                        "layers": {"x": {"attention": {"probs": None}}, "y": {"attention": None}}})
        assert cfg.layers[0][1].attention.to_dict().keys() == {"q"}
        assert cfg.layers[1][1].attention is None
        with pytest.raises(ValueError, match="allowed: q, k, v, scores, probs, output"):
            lb.QuantConfig.from_dict({"attention": {"query": "e4m3fn"}})
        with pytest.raises(ValueError, match="allowed: a, b, output"):
            lb.QuantConfig.from_dict({"matmul": {"q": "e4m3fn"}})
        with pytest.raises(ValueError, match="static"):
            lb.QuantConfig.from_dict({"matmul": {"a": {"format": "int8", "scaling": "static", "range": [0, 1]}}})

    def test_grad_role_rounds_the_gradient_into_the_attention_output(self):
        q, k, v = (t.requires_grad_() for t in _qkv())

        class Attn(nn.Module):
            def forward(self, q, k, v):
                return F.scaled_dot_product_attention(q, k, v)

        model = lb.quantize_(Attn(), {"attention": {"probs": "e4m3fn"}, "grad": "e5m2"})
        upstream = torch.randn(2, 4, 5, 8)
        model(q, k, v).backward(upstream)
        # by hand: the gradient entering the output is upstream rounded to e5m2, then torch's autograd
        q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        ref = ref_attention(q2, k2, v2, fp=None)
        p = torch.softmax(torch.einsum("...le,...se->...ls", q2, k2) * 8 ** -0.5, -1)
        ref = torch.einsum("...ls,...se->...le", lb.fake_quantize(p, "e4m3fn"), v2)
        ref.backward(lb.parse_format("e5m2").quantize(upstream))
        for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
            _close(got, want)


# ---------------------------------------------------------------------- nn.MultiheadAttention
def _mha_reference(m, x, need_weights, spec, key_padding_mask=None):
    d, h = m.embed_dim, m.num_heads
    w, b = m.in_proj_weight, m.in_proj_bias
    q, k, v = (F.linear(x, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3))
    B, T, _ = x.shape
    q, k, v = (t.view(B, T, h, d // h).transpose(1, 2) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None:
        mask = torch.zeros(B, 1, 1, T).masked_fill(key_padding_mask.view(B, 1, 1, T), float("-inf"))
    o = ref_attention(q, k, v, mask=mask, fq=spec, fk=spec, fv=spec, fp=spec)
    return m.out_proj(o.transpose(1, 2).reshape(B, T, d))


class TestMultiheadAttention:
    @pytest.mark.parametrize("need_weights", [False, True])
    @pytest.mark.parametrize("spec", FORMATS)
    def test_attention_of_multihead_attention_is_simulated(self, need_weights, spec):
        torch.manual_seed(0)
        m = nn.MultiheadAttention(16, 4, batch_first=True).eval()
        x = torch.randn(2, 5, 16)
        kpm = torch.zeros(2, 5, dtype=torch.bool)
        kpm[1, 3:] = True
        fp32, _ = m(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
        holder = nn.Sequential(m)
        lb.quantize_(holder, {"attention": {"q": spec, "k": spec, "v": spec, "probs": spec}}, on_unsupported="ignore")
        with torch.no_grad():
            out, weights = m(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
            ref = _mha_reference(m, x, need_weights, spec, kpm)
        _close(out, ref)
        assert not torch.allclose(out, fp32, atol=1e-4)
        if need_weights:
            assert torch.equal(weights.sum(-1) > 0, torch.ones(2, 5, dtype=torch.bool))
        assert "multi_head_attention_forward" not in lb.quantization_report(holder).fp32_ops.get("0", {})

    def test_unconfigured_multihead_attention_is_counted_as_full_precision(self):
        m = nn.Sequential(nn.MultiheadAttention(8, 2))
        lb.quantize_(m, {"weight": "int8"}, on_unsupported="ignore")
        x = torch.randn(3, 1, 8)
        assert not lb.quantization_report(m).ops_traced  # no op roles: quantize_ leaves the op mode off
        with trace_ops(m):
            m[0](x, x, x)
        assert lb.quantization_report(m).fp32_ops["0"] == {"multi_head_attention_forward": 1}


# ---------------------------------------------------------------------- "matmul"
class Products(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, a, b):
        y = a @ b + torch.bmm(a, b) + torch.einsum("bij,bjk->bik", a, b) + torch.baddbmm(a, a, b)
        return y @ self.w  # a weight product: not an activation product


class TestMatmul:
    def test_activation_products_round_operands_and_output(self):
        model = Products()
        a, b = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
        lb.quantize_(model, {"matmul": {"a": "e4m3fn", "b": "posit8_es2", "output": "e5m2"}}, on_unsupported="ignore")
        ra, rb = _q("e4m3fn", a), _q("posit8_es2", b)
        o = lambda t: _q("e5m2", t)  # noqa: E731
        ref = (o(ra @ rb) + o(torch.bmm(ra, rb)) + o(torch.einsum("bij,bjk->bik", ra, rb))
               + o(torch.baddbmm(a, ra, rb))) @ model.w
        with torch.no_grad():
            _close(model(a, b), ref)
        with pytest.warns(LowbitWarning, match="weight matrix"):
            report = lb.quantization_report(model)
        assert report.fp32_ops == {"<model>": {"matmul": 1}}
        assert report.escaped_weight_ops == {"<model>": {"matmul": 1}}

    def test_escaped_weight_product_warns_once(self):
        model = Products()
        lb.quantize_(model, {"weight": "int8"}, on_unsupported="ignore")
        with trace_ops(model), torch.no_grad():
            model(torch.randn(2, 4, 4), torch.randn(2, 4, 4))
        with pytest.warns(LowbitWarning, match="weight matrix ran in full precision.*<model> \\(matmul×1\\)"):
            lb.quantization_report(model)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lb.quantization_report(model)

    def test_simulated_layers_own_products_are_not_reported(self):
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Softmax(-1))
        lb.quantize_(model, {"weight": "int8"})
        with trace_ops(model):
            model(torch.randn(2, 4))
            model(torch.randn(2, 4))
        assert lb.quantization_report(model).fp32_ops == {"1": {"layer_norm": 2}, "2": {"softmax": 2}}
        assert "full precision ops: 1: layer_norm×2" in str(lb.quantization_report(model))


# ---------------------------------------------------------------------- the machinery
class TestMachinery:
    def _model(self):
        torch.manual_seed(0)
        return nn.Sequential(SdpaBlock(), nn.Linear(16, 16))

    CFG = {"weight": "int8", "attention": {"probs": "e4m3fn", "q": "posit8_es2"}}

    def test_threads_copies_and_pickles_give_the_same_result(self):
        model = lb.quantize_(self._model(), self.CFG)
        x = torch.randn(2, 5, 16)
        want = model(x)
        results = {}

        def run(i):
            results[i] = model(x)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(r, want) for r in results.values())
        twin = copy.deepcopy(model)
        assert torch.equal(twin(x), want)
        assert lb.quantization_report(twin).fp32_ops == {}  # the twin's own counts

    def test_torch_compile_gives_the_same_result(self):
        model = lb.quantize_(self._model(), self.CFG)
        x = torch.randn(2, 5, 16)
        want = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dynamo's notes on graph breaks
            model.compile(backend="eager")  # in place
            got = model(x)
        torch._dynamo.reset()
        assert torch.equal(got, want)

    def test_an_exception_in_forward_leaves_no_mode_behind(self):
        class Boom(nn.Module):
            def forward(self, x):
                raise RuntimeError("boom")

        model = lb.quantize_(nn.Sequential(SdpaBlock(), Boom()), self.CFG)
        with pytest.raises(RuntimeError, match="boom"):
            model(torch.randn(1, 3, 16))
        assert not torch.overrides._is_torch_function_mode_enabled()
        model[0](torch.randn(1, 3, 16))  # the part that works still runs, and counts
        assert lb.quantization_report(model).fp32_ops == {}

    def test_a_submodule_called_alone_and_nested_models_are_simulated(self):
        inner = lb.quantize_(nn.Sequential(SdpaBlock()), {"attention": {"probs": "int4"}})
        outer = nn.Sequential(inner, nn.ReLU())
        x = torch.randn(1, 4, 16)
        via_outer, alone = outer(x), inner[0](x)
        with torch.no_grad():
            q, k, v = inner[0].heads_of(x)
            ref = inner[0].out(ref_attention(q, k, v, fp="int4").transpose(1, 2).reshape(x.shape))
        _close(alone, ref)
        _close(via_outer, torch.relu(ref))

    def test_backward_runs_outside_the_mode(self):
        model = lb.quantize_(self._model(), self.CFG)
        x = torch.randn(2, 5, 16, requires_grad=True)
        model(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert not torch.overrides._is_torch_function_mode_enabled()

    def test_op_plan_rejects_unknown_roles(self):
        with pytest.raises(ValueError, match="allowed: a, b, output"):
            OpPlan(matmul={"c": None})
        assert OpSimulation({}).fp32_ops == {}
