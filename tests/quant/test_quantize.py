"""quantize_ / dequantize_: simulated layers equal the float model with hand-quantized tensors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.simulate.scaling import histogram_exponent, scaled_format

FORMATS = ["posit8_es2", "e4m3fn", "fixed8_f4", "int4", "posit6_es1_s-4", "e5m2"]


def _seed() -> None:
    torch.manual_seed(0)


def _layers() -> "dict[str, tuple[nn.Module, torch.Tensor]]":
    _seed()
    return {
        "linear": (nn.Linear(12, 5), torch.randn(7, 12)),
        "conv1d": (nn.Conv1d(3, 4, 3, padding=1), torch.randn(2, 3, 9)),
        "conv2d": (nn.Conv2d(3, 4, 3, stride=2), torch.randn(2, 3, 9, 9)),
        "convT2d": (nn.ConvTranspose2d(3, 4, 3, stride=2), torch.randn(2, 3, 5, 5)),
        "embedding": (nn.Embedding(11, 6), torch.randint(0, 11, (4, 5))),
    }


def _with_weights_quantized(layer: nn.Module, fmt: str, roles=("weight",)) -> nn.Module:
    ref = copy.deepcopy(layer)
    with torch.no_grad():
        for role in roles:
            t = getattr(ref, role, None)
            if t is not None:
                t.copy_(lb.parse_format(fmt).quantize(t))
    return ref


# ------------------------------------------------------------------ exactness per role
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(_layers()))
def test_weight_only_simulation_equals_the_model_with_quantized_weights(kind, fmt):
    layer, x = _layers()[kind]
    want = _with_weights_quantized(layer, fmt)(x)
    got = lb.quantize_(copy.deepcopy(layer), {"weight": fmt})(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "convT2d"])
def test_weight_and_bias_roles_equal_the_model_with_both_quantized(kind, fmt):
    layer, x = _layers()[kind]
    want = _with_weights_quantized(layer, fmt, ("weight", "bias"))(x)
    got = lb.quantize_(copy.deepcopy(layer), {"weight": fmt, "bias": fmt})(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "convT2d"])
def test_input_quantization_equals_the_float_layer_on_quantized_input(kind, fmt):
    layer, x = _layers()[kind]
    want = layer(lb.parse_format(fmt).quantize(x))
    got = lb.quantize_(copy.deepcopy(layer), {"input": fmt})(x)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", list(_layers()))
def test_output_role_rounds_the_layer_output(kind):
    layer, x = _layers()[kind]
    want = lb.parse_format("e4m3fn").quantize(layer(x))
    got = lb.quantize_(copy.deepcopy(layer), {"output": "e4m3fn"})(x)
    assert torch.equal(got, want)


def test_grad_role_rounds_the_gradient_flowing_into_the_layer_output():
    _seed()
    layer, x = nn.Linear(6, 4), torch.randn(3, 6, requires_grad=True)
    g = torch.randn(3, 4) * 0.37
    q = lb.quantize_(copy.deepcopy(layer), {"grad": "e5m2"})
    q(x).backward(g)
    gq = lb.parse_format("e5m2").quantize(g)
    assert torch.equal(x.grad, gq @ layer.weight.detach())
    params = dict(q.named_parameters())  # q.weight is the quantized value; the Parameter holds the grad
    assert torch.equal(params["weight"].grad, gq.T @ x.detach())
    assert torch.equal(params["bias"].grad, gq.sum(0))


def test_grad_role_rounds_the_gradient_of_an_output_an_inplace_relu_then_changes():
    _seed()
    layer, x = nn.Linear(6, 4), torch.randn(3, 6)
    g = torch.randn(3, 4) * 0.37
    q = lb.quantize_(copy.deepcopy(layer), {"grad": "e5m2"})
    y = q(x)
    nn.functional.relu(y, inplace=True).backward(g)
    gq = lb.parse_format("e5m2").quantize(g * (layer(x) > 0))  # the gradient into the pre-ReLU output
    assert torch.equal(q.lowbit_float_tensor("weight").grad, gq.T @ x)


def test_grad_role_adds_no_copy_and_no_autograd_node_to_the_forward():
    layer, x = nn.Linear(6, 4), torch.randn(3, 6)
    q = lb.quantize_(copy.deepcopy(layer), {"grad": "e5m2"})
    assert type(q(x).grad_fn) is type(layer(x).grad_fn)  # the layer's own node: no copy after it
    with torch.no_grad():
        assert torch.equal(q(x), layer(x))


def test_weight_gradient_passes_straight_through_the_weight_quantizer():
    _seed()
    layer, x = nn.Linear(6, 4), torch.randn(3, 6)
    q = lb.quantize_(copy.deepcopy(layer), {"weight": "posit8_es2"})
    g = torch.randn(3, 4)
    q(x).backward(g)
    assert torch.equal(q.lowbit_float_tensor("weight").grad, g.T @ x)


def test_excluded_layers_stay_exact_and_others_are_quantized():
    _seed()
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 8)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref[0].weight.copy_(lb.parse_format("int4").quantize(ref[0].weight))
    lb.quantize_(model, {"weight": "int4", "exclude": ["2"]})
    assert type(model[2]) is nn.Linear
    assert torch.equal(model(x), ref(x))


def test_per_layer_patterns_and_type_patterns_override_the_default_role_by_role():
    _seed()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    cfg = {"weight": "posit8_es2", "input": "e4m3fn",
           "layers": {"type:Linear": {"weight": "int8"}, "0": {"input": None}}}
    lb.quantize_(model, cfg)
    assert model[0].lowbit_roles["weight"].format == lb.parse_format("posit8_es2")
    assert "input" not in model[0].lowbit_roles
    assert model[2].lowbit_roles["weight"].format == lb.parse_format("int8")
    assert model[2].lowbit_roles["input"].format == lb.parse_format("e4m3fn")


# ------------------------------------------------------------------ identity of the model
def test_state_dict_keys_and_parameter_objects_are_unchanged_so_an_existing_optimizer_still_trains():
    _seed()
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    params = list(model.parameters())
    keys = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lb.quantize_(model, {"weight": "posit8_es2"})
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params))
    before = model[0].weight.detach().clone()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)


def test_requantize_reconfigures_and_dequantize_restores_the_float_layers():
    _seed()
    model = nn.Sequential(nn.Linear(4, 4))
    x = torch.randn(3, 4)
    want = model(x)
    lb.quantize_(model, {"weight": "posit8_es2"})
    lb.quantize_(model, {"weight": "int4"})
    assert torch.equal(model(x), _with_weights_quantized(nn.Sequential(copy.deepcopy(model[0])), "int4")(x))
    lb.dequantize_(model)
    assert type(model[0]) is nn.Linear and not hasattr(model[0], "lowbit_roles")
    assert torch.equal(model(x), want)


def test_a_subclass_that_keeps_forward_is_supported_and_one_that_overrides_it_is_reported():
    class MyLinear(nn.Linear):
        pass

    class Odd(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyLinear(4, 4), Odd(4, 4))
    with pytest.warns(lb.LowbitWarning, match=r"1 \(Odd\)"):
        lb.quantize_(model, {"weight": "e4m3fn"})
    assert isinstance(model[0], MyLinear) and hasattr(model[0], "lowbit_roles")
    assert lb.quantization_report(model).unsupported == {"1": "Odd"}


def test_unsupported_matrix_layers_are_named_in_a_warning_or_an_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4), nn.LayerNorm(4))
    with pytest.warns(lb.LowbitWarning, match=r"1 \(GRU\)"):
        lb.quantize_(model, {"weight": "e4m3fn"})
    report = lb.quantization_report(model)
    assert report.unsupported == {"1": "GRU"}  # LayerNorm: a supported layer, opt-in under "norm"
    with pytest.raises(ValueError, match="GRU"):
        lb.quantize_(model, {"weight": "e4m3fn"}, on_unsupported="raise")


def test_tensor_formats_lists_weight_and_bias_formats_by_state_dict_key():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    lb.quantize_(model, {"weight": "posit8_es2", "bias": "posit16_es1", "exclude": ["1"]})
    assert lb.tensor_formats(model) == {"0.weight": lb.parse_format("posit8_es2"),
                                        "0.bias": lb.parse_format("posit16_es1")}


# ------------------------------------------------------------------ config
def test_dict_and_typed_config_mean_the_same_and_round_trip_through_json():
    d = {"weight": "posit8_es2", "input": {"format": "e4m3fn", "scaling": "amax", "every": 10},
         "output": None, "grad": {"format": "e5m2", "rounding": "stochastic"}, "exclude": ["fc_out"],
         "layers": {"conv*": {"weight": "posit6_es1"}}, "seed": 3}
    cfg = lb.QuantConfig.from_dict(d)
    assert lb.QuantConfig.from_json(cfg.to_json()) == cfg
    assert lb.QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.default.grad.rounding == "stochastic" and cfg.default.input.scaling == "amax"
    assert cfg.layers[0][1].weight.format == lb.parse_format("posit6_es1")
    assert cfg.layers[0][1].input == cfg.default.input


@pytest.mark.parametrize("bad,names", [
    ({"weights": "posit8_es2"}, "weights"),
    ({"weight": "posit8"}, "posit8"),
    ({"weight": "posit9_es2x"}, "posit9_es2x"),
    ({"weight": {"format": "e4m3fn", "rounding": "up"}}, "'up'"),
    ({"weight": {"format": "int8", "scaling": "histogram"}}, "int8"),
    ({"layers": {"conv1": {"gradient": "e5m2"}}}, "gradient"),
])
def test_bad_configs_raise_errors_naming_the_bad_item(bad, names):
    with pytest.raises(ValueError, match=names):
        lb.quantize_(nn.Sequential(nn.Linear(2, 2)), bad)


def test_a_layer_pattern_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'fc_out'.*matches no module"):
        lb.quantize_(nn.Sequential(nn.Linear(2, 2)), {"weight": "int8", "exclude": ["fc_out"]})


# ------------------------------------------------------------------ rounding and scaling
def test_stochastic_rounding_in_training_is_reproducible_with_the_config_seed():
    def train(seed):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        lb.quantize_(model, {"weight": {"format": "posit8_es2", "rounding": "stochastic"},
                             "grad": {"format": "e5m2", "rounding": "stochastic"}, "seed": seed})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(99)  # the data; the rounding draws from the config's generators
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    assert torch.equal(train(1), train(1))
    assert not torch.equal(train(1), train(2))


def test_histogram_scaling_quantizes_weights_with_the_shifted_format():
    _seed()
    layer, x = nn.Linear(16, 4), torch.randn(3, 16)
    with torch.no_grad():
        layer.weight.mul_(1e-3)
    k = histogram_exponent(layer.weight, "posit8_es2")
    assert k < -5  # weights around 2^-10 move onto posit8's most accurate region
    want = nn.functional.linear(x, scaled_format("posit8_es2", k).quantize(layer.weight), layer.bias)
    q = lb.quantize_(copy.deepcopy(layer), {"weight": {"format": "posit8_es2", "scaling": "histogram"}})
    assert torch.equal(q(x), want)
    assert lb.tensor_formats(q)["weight"] == scaled_format("posit8_es2", k)


def test_fixed_and_amax_scaling():
    _seed()
    layer, x = nn.Linear(16, 4), torch.randn(3, 16) * 1000
    q = lb.quantize_(copy.deepcopy(layer), {"input": {"format": "e4m3fn", "scaling": 5}})
    assert torch.equal(q(x), layer(lb.parse_format("e4m3b2fn").quantize(x)))  # bias 7 - 5
    q = lb.quantize_(copy.deepcopy(layer), {"input": {"format": "e4m3fn", "scaling": "amax"}})
    amax = float(x.abs().max())
    k = next(k for k in range(-10, 20) if amax <= 448 * 2.0**k)
    assert torch.equal(q(x), layer(scaled_format("e4m3fn", k).quantize(x)))


# ------------------------------------------------------------------ accumulation
def test_low_precision_accumulation_rounds_the_running_sum_every_k_products():
    _seed()
    layer, x = nn.Linear(10, 3), torch.randn(4, 10)
    fmt = lb.parse_format("e5m10")
    q = lb.quantize_(copy.deepcopy(layer), {"accumulate": "e5m10", "accumulate_every": 4})
    w, b = layer.weight.detach(), layer.bias.detach()
    acc = fmt.quantize(x[:, 0:4] @ w[:, 0:4].T)
    for s in (4, 8):
        acc = fmt.quantize(acc + fmt.quantize(x[:, s:s + 4] @ w[:, s:s + 4].T))
    want = fmt.quantize(acc + b)
    assert torch.equal(q(x), want)


def test_conv_accumulation_counts_products_tap_by_tap():
    # integer operands below 2^5: every FP32 partial sum is exact in any order, so only the e5m10
    # roundings at the chunk boundaries (sums reach ~2^13, past e5m10's 11 bits) shape the result
    g = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(4, 2, 3, bias=False)
    x = torch.randint(-31, 32, (1, 4, 5, 5), generator=g).float()
    with torch.no_grad():
        layer.weight.copy_(torch.randint(-31, 32, (2, 4, 3, 3), generator=g).float())
    fmt = lb.parse_format("e5m10")
    w, conv = layer.weight.detach(), nn.functional.conv2d
    q = lb.quantize_(copy.deepcopy(layer), {"accumulate": "e5m10", "accumulate_every": 18})  # 2 channels of 3×3
    want = fmt.quantize(fmt.quantize(conv(x[:, :2], w[:, :2])) + fmt.quantize(conv(x[:, 2:], w[:, 2:])))
    assert torch.equal(q(x), want)
    q = lb.quantize_(copy.deepcopy(layer), {"accumulate": "e5m10", "accumulate_every": 3})  # one kernel row
    rows = [fmt.quantize(conv(x[:, c:c + 1, i:i + 3], w[:, c:c + 1, i:i + 1])) for c in range(4) for i in range(3)]
    acc = rows[0]
    for part in rows[1:]:
        acc = fmt.quantize(acc + part)
    assert torch.equal(q(x), acc)
    assert not torch.equal(acc, want)  # the rounding points matter


# ------------------------------------------------------------------ inference cache
def test_inference_reuses_the_quantized_weight_until_the_weight_changes():
    _seed()
    layer, x = nn.Linear(4, 4), torch.randn(2, 4)
    q = lb.quantize_(copy.deepcopy(layer), {"weight": "int4"})
    with torch.no_grad():
        first = q(x)
        q.lowbit_float_tensor("weight").mul_(2)
        second = q(x)
    assert torch.equal(second, nn.functional.linear(x, lb.parse_format("int4").quantize(q.lowbit_float_tensor("weight")),
                                                    q.bias))
    assert not torch.equal(first, second)


# ------------------------------------------------------------------ per-channel float scales
def test_absmax_per_channel_int8_weights_equal_a_row_by_row_reference():
    _seed()
    layer, x = nn.Linear(9, 5), torch.randn(3, 9)
    with torch.no_grad():
        layer.weight[2].zero_()  # an all-zero channel must stay 0, not NaN
    q = lb.quantize_(copy.deepcopy(layer), {"weight": {"format": "int8", "scaling": "absmax",
                                                       "granularity": "channel"}})
    rows = []
    for row in layer.weight.detach():
        s = row.abs().max() / 127
        rows.append(torch.zeros_like(row) if s == 0 else torch.round(row / s) * s)
    want = nn.functional.linear(x, torch.stack(rows), layer.bias)
    assert torch.equal(q(x), want)
    assert not torch.isnan(q(x)).any()


def test_absmax_per_tensor_on_activations_and_group_granularity():
    _seed()
    layer, x = nn.Linear(8, 3), torch.randn(4, 8) * 7
    q = lb.quantize_(copy.deepcopy(layer), {"input": {"format": "int4", "scaling": "absmax"}})
    s = x.abs().max() / 7
    assert torch.equal(q(x), layer(torch.round(x / s).clamp(-8, 7) * s))
    g = {"weight": {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "axis": 1, "group_size": 4}}}
    qg = lb.quantize_(copy.deepcopy(layer), g)
    w = layer.weight.detach().reshape(3, 2, 4)
    s = w.abs().amax(-1, keepdim=True) / 7
    want_w = (torch.round(w / s) * s).reshape(3, 8)
    assert torch.equal(qg(x), nn.functional.linear(x, want_w, layer.bias))


def test_granularity_without_absmax_is_refused():
    with pytest.raises(ValueError, match="granularity 'channel' needs scaling='absmax'"):
        lb.QuantConfig.from_dict({"weight": {"format": "int8", "granularity": "channel"}})


@pytest.mark.parametrize("granularity", ["tensor", "channel", {"kind": "group", "axis": 1, "group_size": 3}])
def test_save_and_load_of_an_absmax_scaled_model_give_the_simulated_weights(tmp_path, granularity):
    _seed()
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight[1].zero_()
    q = lb.quantize_(layer, {"weight": {"format": "int4", "scaling": "absmax", "granularity": granularity}})
    simulated = q.lowbit_roles["weight"](q.weight).detach()
    lb.save(q, tmp_path / "m.lowbit")
    loaded = lb.load(tmp_path / "m.lowbit")
    assert torch.equal(loaded["weight"], simulated)
    assert torch.equal(loaded["bias"], layer.bias.detach())
