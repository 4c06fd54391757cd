"""MultiheadAttention, Transformer layers and transformers' Conv1D: weights quantized where read.

Bar: the quantized module equals the same module whose weights were replaced by
``fmt.quantize(w)``, bit for bit, in train, eval and eval + no_grad (torch's fused fast path).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.errors import LowbitWarning

FMT = lb.parse_format("posit4_es1")


def _weights_replaced(model: nn.Module, fmt: lb.NumberFormat = FMT, skip: str = "norm") -> nn.Module:
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("weight") and skip not in name:
                p.copy_(fmt.quantize(p))
    return ref


def _run(model: nn.Module, mode: str, *xs: torch.Tensor) -> torch.Tensor:
    model.train(mode == "train")
    with torch.no_grad() if mode == "eval_no_grad" else torch.enable_grad():
        y = model(*xs)
    return y[0] if isinstance(y, tuple) else y


def _check_equal(make, n_inputs: int, mode: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    model = make()
    ref = _weights_replaced(model)
    q = lb.quantize_(copy.deepcopy(model), {"weight": str(FMT)})
    x = torch.randn(4, 6, 16) if batch_first else torch.randn(6, 4, 16)
    xs = (x,) * n_inputs if n_inputs != 2 else (x, torch.randn_like(x))
    want = _run(ref, mode, *xs)
    got = _run(q, mode, *xs)
    assert torch.equal(got, want)
    assert not torch.equal(got, _run(model, mode, *xs))  # the weights really are quantized


MODES = ["train", "eval", "eval_no_grad"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_weights_equal_the_weight_replaced_module(mode: str, batch_first: bool) -> None:
    _check_equal(lambda: nn.MultiheadAttention(16, 2, batch_first=batch_first), 3, mode, batch_first)


@pytest.mark.parametrize("mode", MODES)
def test_multihead_attention_with_separate_kdim_vdim_quantizes_q_k_v_proj_weights(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True)
    assert model.in_proj_weight is None
    ref = _weights_replaced(model)
    q = lb.quantize_(copy.deepcopy(model), {"weight": str(FMT)})
    xs = (torch.randn(3, 5, 16), torch.randn(3, 7, 8), torch.randn(3, 7, 12))
    assert torch.equal(_run(q, mode, *xs), _run(ref, mode, *xs))
    formats = lb.tensor_formats(q)
    assert {k for k in formats} == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_equals_the_weight_replaced_layer(mode: str, batch_first: bool, norm_first: bool) -> None:
    _check_equal(lambda: nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first,
                                                    norm_first=norm_first), 1, mode, batch_first)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder_layer_equals_the_weight_replaced_layer(mode: str, batch_first: bool, norm_first: bool) -> None:
    _check_equal(lambda: nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first,
                                                    norm_first=norm_first), 2, mode, batch_first)


def test_multihead_attention_bias_role_quantizes_in_proj_and_out_proj_biases() -> None:
    torch.manual_seed(0)
    model = nn.MultiheadAttention(16, 2, add_bias_kv=True)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(FMT.quantize(p))
    q = lb.quantize_(copy.deepcopy(model), {"weight": str(FMT), "bias": str(FMT)})
    x = torch.randn(5, 3, 16)
    for mode in MODES:
        assert torch.equal(_run(q, mode, x, x, x), _run(ref, mode, x, x, x))


def test_multihead_attention_input_and_output_roles_apply_and_out_proj_roles_are_reported_escaped() -> None:
    torch.manual_seed(0)
    model = nn.MultiheadAttention(16, 2, batch_first=True)
    e5m2 = lb.parse_format("e5m2")
    with pytest.warns(LowbitWarning, match="out_proj: input, output"):
        q = lb.quantize_(copy.deepcopy(model), {"input": "e5m2", "output": "e5m2"})
    report = lb.quantization_report(q)
    assert report.escaped == {"out_proj": ("input", "output")}
    assert "escaped: out_proj" in str(report)
    assert "input" not in q.out_proj.lowbit_roles and "output" not in q.out_proj.lowbit_roles
    x = torch.randn(3, 5, 16)
    for mode in MODES:
        model.train(mode == "train")
        with torch.no_grad() if mode == "eval_no_grad" else torch.enable_grad():
            xq = e5m2.quantize(x)
            want = e5m2.quantize(model(xq, xq, xq)[0])
        assert torch.equal(_run(q, mode, x, x, x), want)


@pytest.mark.parametrize("batch_first", [False, True])
def test_activation_roles_inside_an_encoder_layer_take_the_ordinary_path_in_eval_no_grad(batch_first: bool) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    cfg = {"layers": {"linear1": {"output": "e4m3fn"}}}
    q = lb.quantize_(copy.deepcopy(layer), cfg)
    x = torch.randn(4, 6, 16)
    ref = copy.deepcopy(layer).eval()  # the float layer with linear1's output rounded by a hook
    ref.linear1.register_forward_hook(lambda m, i, o: lb.parse_format("e4m3fn").quantize(o))
    q.eval()
    with torch.no_grad():
        got, want, plain = q(x), ref(x), layer.eval()(x)
    assert torch.equal(got, want)
    assert not torch.equal(got, plain)
    lb.dequantize_(q)
    assert len(q._forward_pre_hooks) == 0


def test_quantized_tensors_keep_state_dict_parameters_and_optimizer_valid() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0)
    params_before = [id(p) for p in layer.parameters()]
    keys_before = list(layer.state_dict())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    q = lb.quantize_(layer, {"weight": str(FMT)})
    assert [id(p) for p in q.parameters()] == params_before and list(q.state_dict()) == keys_before
    raw = q.self_attn.lowbit_float_tensor("in_proj_weight")
    assert isinstance(raw, nn.Parameter) and torch.equal(q.self_attn.in_proj_weight, FMT.quantize(raw.detach()))
    before = raw.detach().clone()
    q(torch.randn(6, 4, 16)).sum().backward()
    opt.step()
    assert not torch.equal(raw.detach(), before)  # the straight-through gradient reached the Parameter
    q2 = copy.deepcopy(q)
    assert type(q2.self_attn) is type(q.self_attn) and torch.equal(q2.self_attn.in_proj_weight, q.self_attn.in_proj_weight)
    q2.load_state_dict(_weights_replaced(layer).state_dict())
    q2.requires_grad_(False)
    assert not any(p.requires_grad for p in q2.parameters())
    q2.to(torch.float64)
    assert q2.self_attn.in_proj_weight.dtype == torch.float64
    lb.dequantize_(q2)
    assert type(q2.self_attn) is nn.MultiheadAttention and isinstance(q2.self_attn.in_proj_weight, nn.Parameter)


@pytest.mark.parametrize("cfg", ["posit8_es2", {"weight": {"format": "int8", "scaling": "absmax",
                                                           "granularity": "channel"}}])
def test_save_load_and_pack_of_an_encoder_layer_agree_with_the_simulation(cfg, tmp_path) -> None:
    torch.manual_seed(0)
    q = lb.quantize_(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval(), cfg)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = q(x)
    lb.save(q, tmp_path / "layer.lbt")
    loaded = lb.load(tmp_path / "layer.lbt")
    for key in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
        module, _, attr = key.rpartition(".")
        assert torch.equal(loaded[key], getattr(q.get_submodule(module), attr).detach()), key
    lb.pack_(q)  # out_proj / linear1 / linear2 packed; MultiheadAttention's own in_proj stays simulated
    assert type(q.self_attn.out_proj).__name__ == "PackedNonDynamicallyQuantizableLinear"
    with torch.no_grad():
        assert torch.equal(q(x), want)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_transformer_encoder_with_a_padding_mask_in_eval_no_grad() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=True).eval()
    x, mask = torch.randn(3, 6, 16), torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4:] = True
    q = lb.quantize_(copy.deepcopy(enc), {"weight": str(FMT)})  # nested-tensor fast path: weights read there
    with torch.no_grad():
        assert torch.equal(q(x, src_key_padding_mask=mask), _weights_replaced(enc)(x, src_key_padding_mask=mask))

    e5m2 = lb.parse_format("e5m2")
    ref = copy.deepcopy(enc)  # the float model with every Linear / attention input rounded by a hook
    ref.use_nested_tensor = False
    for name, m in ref.named_modules():
        if isinstance(m, (nn.Linear, nn.MultiheadAttention)) and not name.endswith("out_proj"):
            m.register_forward_pre_hook(lambda m, args: tuple(e5m2.quantize(a) for a in args[:1]) * (
                3 if isinstance(m, nn.MultiheadAttention) else 1) + args[3 if isinstance(m, nn.MultiheadAttention) else 1:])
    with pytest.warns(LowbitWarning, match="out_proj"):
        q = lb.quantize_(copy.deepcopy(enc), {"input": "e5m2"})
    assert q.use_nested_tensor is False  # the ordinary path, so the input roles run
    with torch.no_grad():
        assert torch.equal(q(x, src_key_padding_mask=mask), ref(x, src_key_padding_mask=mask))
    lb.dequantize_(q)
    assert q.use_nested_tensor is True


# ------------------------------------------------------------------ transformers' Conv1D (GPT-2)
transformers = pytest.importorskip("transformers")


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()


def test_gpt2_conv1d_layers_are_quantized_and_equal_the_weight_replaced_model() -> None:
    from transformers.pytorch_utils import Conv1D

    fmt = lb.parse_format("posit8_es2")
    model = _gpt2()
    convs = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for n in convs:
            ref.get_submodule(n).weight.copy_(fmt.quantize(ref.get_submodule(n).weight))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowbitWarning)
        q = lb.quantize_(copy.deepcopy(model), {"weight": "posit8_es2", "exclude": ["wte", "wpe"]})
    report = lb.quantization_report(q)
    assert sorted(report.quantized) == sorted(convs) and len(convs) == 8
    assert report.unsupported == {}
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(q(ids).last_hidden_state, ref(ids).last_hidden_state)
        assert not torch.equal(q(ids).last_hidden_state, model(ids).last_hidden_state)


def test_conv1d_per_channel_absmax_scales_its_output_channels_on_axis_1() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(6, 10)  # weight [in=10, out=6]
    with torch.no_grad():
        layer.weight.mul_(torch.logspace(-3, 0, 6))  # very different output channels
    cfg = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"}}
    q = lb.quantize_(copy.deepcopy(layer), cfg)
    w = layer.weight.detach()
    scale = w.abs().amax(dim=0, keepdim=True) / 127
    want = lb.parse_format("int8").quantize(w / scale) * scale
    assert torch.equal(q.weight, want)
    assert lb.tensor_scales(q)["weight"].shape == (1, 6)
    x = torch.randn(3, 10)
    assert torch.equal(q(x), torch.addmm(layer.bias, x, want))


# ------------------------------------------------------------------ normalization layers: opt-in "norm" key
def test_norm_roles_are_opt_in_and_plain_roles_leave_norms_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.RMSNorm(8))
    with torch.no_grad():
        for m in model[1:]:
            m.weight.copy_(torch.randn(8))
    q = lb.quantize_(copy.deepcopy(model), {"weight": "posit4_es1", "input": "e5m2"})
    report = lb.quantization_report(q)
    assert list(report.quantized) == ["0"] and report.unsupported == {}
    assert type(q[1]) is nn.LayerNorm and type(q[2]) is nn.RMSNorm

    q = lb.quantize_(copy.deepcopy(model), {"norm": {"weight": "posit4_es1", "input": "e5m2"}})
    assert sorted(lb.quantization_report(q).quantized) == ["1", "2"]
    ref = _weights_replaced(model, skip="0.")
    e5m2 = lb.parse_format("e5m2")
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = ref[2](e5m2.quantize(ref[1](e5m2.quantize(ref[0](x)))))
        assert torch.equal(q(x), want)
    assert set(lb.tensor_formats(q)) == {"1.weight", "2.weight"}


def test_norm_key_round_trips_through_json_and_old_configs_still_load() -> None:
    cfg = lb.QuantConfig.from_dict({"weight": "int8", "norm": {"weight": "e4m3fn"}})
    assert lb.QuantConfig.from_json(cfg.to_json()) == cfg and str(cfg.norm.weight.format) == "e4m3fn"
    old = lb.QuantConfig.from_dict({"weight": "int8", "version": 1})
    assert "norm" not in old.to_dict() and old.norm.is_identity
    with pytest.raises(ValueError, match="config\\['norm'\\]"):
        lb.QuantConfig.from_dict({"norm": {"weights": "int8"}})


def test_calibration_hooks_gpt2_conv1d_layers_by_default() -> None:
    from lowbit.quant.calibration import Calibration

    model = _gpt2()
    cal = Calibration(model, roles=("input",))
    assert sum(".attn.c_attn" in n or ".mlp.c_fc" in n for n in cal.layers) == 4
