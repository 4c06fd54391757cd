"""Simulated layers stay right under every way a weight can change or a model can travel:
writes that bump no version counter, parametrized roots, inference_mode, pickling, TorchScript."""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import lowbit as lb

INT4 = lb.parse_format("int4")


def _param(layer: nn.Module, name: str = "weight") -> nn.Parameter:
    return dict(layer.named_parameters())[name]


def _want(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, INT4.quantize(_param(layer).detach()), _param(layer, "bias").detach())


# ------------------------------------------------------------------ stale weight cache (writes without _version)
@pytest.mark.parametrize("write", ["data_mul", "data_copy", "numpy_view", "negative_zero"])
def test_inference_cache_never_serves_a_stale_weight(write: str) -> None:
    torch.manual_seed(0)
    q = lb.quantize_(nn.Linear(8, 4), {"weight": "int4"}).eval()
    x = torch.randn(3, 8)
    w = _param(q)
    with torch.no_grad():
        first = q(x)
        if write == "data_mul":
            w.data.mul_(3)
        elif write == "data_copy":
            w.data.copy_(torch.randn(4, 8))
        elif write == "numpy_view":
            w.detach().numpy()[:] *= -2
        else:  # -0.0 == 0.0 as values but not as bits (a minifloat keeps the sign of zero)
            w.data.zero_()
            q(x)
            w.data.neg_()
        second = q(x)
    assert torch.equal(second, _want(q, x))
    if write != "negative_zero":
        assert not torch.equal(first, second)


def test_inference_cache_of_a_weight_norm_layer_inside_a_container_follows_its_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(8, 4)), nn.ReLU())
    lb.quantize_(model, {"weight": "int4"})
    x = torch.randn(3, 8)
    with torch.no_grad():
        for trial in range(5):
            model[0].parametrizations.weight.original1.data.mul_(1.5)  # v: no version bump
            want = nn.functional.relu(nn.functional.linear(
                x, INT4.quantize(model[0].lowbit_float_tensor("weight")), model[0].bias))
            assert torch.equal(model(x), want), trial


def test_inference_cache_is_not_reused_after_an_in_place_write_into_the_returned_weight() -> None:
    q = lb.quantize_(nn.Linear(4, 4), {"weight": "int4"})
    with torch.no_grad():
        q.weight.mul_(0)  # writes into the quantized copy, not the Parameter
        assert torch.equal(q.weight, INT4.quantize(_param(q).detach()))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("write", ["mul_", "data_mul", "numpy_view", "data_copy"])
def test_writes_into_the_returned_weight_never_reach_later_forwards(write: str, mode: str) -> None:
    # .data and numpy views share the returned tensor's memory but not its version counter: the
    # cache must not have handed out its own tensor
    torch.manual_seed(0)
    q = lb.quantize_(nn.Linear(8, 4), {"weight": "int4"}).eval()
    x = torch.randn(3, 8)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        q(x)  # fills the cache
        returned = q.weight
        if write == "mul_":
            returned.mul_(3)
        elif write == "data_mul":
            returned.data.mul_(3)
        elif write == "numpy_view":
            returned.detach().numpy()[:] *= -2
        else:
            returned.data.copy_(torch.randn(4, 8))
        got = q(x)
        again = q(x)
    assert torch.equal(got, _want(q, x)) and torch.equal(again, _want(q, x))
    assert torch.equal(q.weight, INT4.quantize(_param(q).detach()))


def test_an_embedding_with_max_norm_renormalises_a_copy_never_the_cached_weight() -> None:
    # F.embedding(max_norm=...) rescales the looked-up rows of the weight it is given in place;
    # the layer's forward hands the other layers' forwards the cached tensor itself, but not this one
    torch.manual_seed(0)
    fmt = lb.parse_format("e4m3fn")
    q = lb.quantize_(nn.Embedding(10, 6, max_norm=0.5), {"weight": "e4m3fn"}).eval()
    idx = torch.tensor([[1, 2, 3], [3, 4, 9]])
    with torch.no_grad():
        q(idx)  # fills the cache
        for _ in range(2):
            got = q(idx)
            want = nn.functional.embedding(idx, fmt.quantize(_param(q).detach()), max_norm=0.5)
            assert torch.equal(got, want)
            assert torch.equal(q.weight, fmt.quantize(_param(q).detach()))  # the cache was not renormalised


@pytest.mark.parametrize("layer", ["linear", "conv", "embedding"])
def test_inference_forwards_through_the_cache_equal_a_fresh_quantization_after_each_edit(layer: str) -> None:
    torch.manual_seed(0)
    fmt = lb.parse_format("posit8_es2")
    if layer == "linear":
        float_layer, x = nn.Linear(8, 4), torch.randn(3, 8)
    elif layer == "conv":
        float_layer, x = nn.Conv2d(2, 3, 3), torch.randn(1, 2, 5, 5)
    else:
        float_layer, x = nn.Embedding(10, 4), torch.tensor([1, 5, 9])
    q = lb.quantize_(copy.deepcopy(float_layer), {"weight": "posit8_es2", "bias": "posit8_es2"}).eval()
    with torch.no_grad():
        for step in range(4):
            for name, p in q.named_parameters():
                getattr(float_layer, name).copy_(fmt.quantize(p.detach()))
            assert torch.equal(q(x), float_layer(x)), step
            assert torch.equal(q(x), float_layer(x)), step  # a cache hit
            _param(q).data.mul_(1.25)  # an edit that bumps no version counter


# ------------------------------------------------------------------ a supported root with children
def test_quantize_on_a_parametrized_root_layer_quantizes_it() -> None:
    torch.manual_seed(0)
    layer = parametrizations.weight_norm(nn.Linear(8, 4))
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = nn.functional.linear(x, INT4.quantize(layer.weight), layer.bias)
    lb.quantize_(layer, {"weight": "int4"})
    assert list(lb.quantization_report(layer).quantized) == [""]
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    layer(x).sum().backward()  # the gradient reaches the weight-norm parameters
    assert layer.parametrizations.weight.original1.grad is not None


# ------------------------------------------------------------------ inference_mode
def test_a_quantized_layer_runs_under_inference_mode_and_its_cache_serves_autograd_after() -> None:
    torch.manual_seed(0)
    q = lb.quantize_(nn.Linear(8, 4), {"weight": "int4"})
    x = torch.randn(3, 8)
    with torch.inference_mode():
        y = q(x)
        assert torch.equal(q(x), y)
    assert torch.equal(y, _want(q, x))
    q.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    q(xg).sum().backward()  # the weight cached under inference_mode is an ordinary tensor
    assert xg.grad is not None


def test_a_model_built_under_inference_mode_can_be_quantized_and_run() -> None:
    with torch.inference_mode():
        layer = nn.Linear(8, 4)
        lb.quantize_(layer, {"weight": "int4"})
        x = torch.randn(3, 8)
        assert torch.equal(layer(x), _want(layer, x))
        layer(x)


# ------------------------------------------------------------------ pickling, torch.save, TorchScript
_MODULE = textwrap.dedent('''
    from torch import nn

    class L2(nn.Linear):
        pass
''')


def test_pickled_quantized_subclass_round_trips_in_a_fresh_interpreter(tmp_path: Path) -> None:
    (tmp_path / "user_layers.py").write_text(_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import user_layers

        torch.manual_seed(0)
        model = nn.Sequential(user_layers.L2(8, 4), nn.ReLU(), nn.Linear(4, 2))
        lb.quantize_(model, {"weight": "posit8_es2", "input": "e5m2"})
        x = torch.randn(3, 8)
        with torch.no_grad():
            want = model(x)
        (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
        torch.save(model, tmp_path / "model.pt")
        torch.save((x, want), tmp_path / "io.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("user_layers", None)
    script = textwrap.dedent(f'''
        import pickle, sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        import lowbit as lb
        x, want = torch.load({str(tmp_path / "io.pt")!r})
        a = pickle.loads(open({str(tmp_path / "model.pkl")!r}, "rb").read())
        b = torch.load({str(tmp_path / "model.pt")!r}, weights_only=False)
        for m in (a, b):
            assert type(m[0]).__name__ == "QuantL2", type(m[0])
            assert m[0].lowbit_float_class.__name__ == "L2"
            with torch.no_grad():
                assert torch.equal(m(x), want)
            assert set(lb.tensor_formats(m)) == {{"0.weight", "2.weight"}}
            lb.dequantize_(m)
            assert type(m[0]).__name__ == "L2"
        print("ok")
    ''')
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_deepcopy_and_in_process_pickle_keep_a_quantized_model_working() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    lb.quantize_(model, {"weight": "posit4_es1", "rounding": "stochastic", "seed": 3})
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert type(copied[0]) is type(model[0])
        assert lb.tensor_formats(copied) == lb.tensor_formats(model)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_of_a_quantized_model_says_it_is_unsupported() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    lb.quantize_(model, {"weight": "int8"})
    with pytest.raises(TypeError, match="torch.jit.script is unsupported"):
        torch.jit.script(model)


# ------------------------------------------------------------------ writers of a simulated layer's weight
def test_fold_batchnorm_into_a_quantized_layer_writes_its_parameters() -> None:
    from lowbit.quant.bn_fold import fold_bn_into

    torch.manual_seed(0)
    layer, bn = nn.Linear(4, 3), nn.BatchNorm1d(3).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 4)
    with torch.no_grad():
        want = bn(layer(x))
    q = lb.quantize_(copy.deepcopy(layer), {"weight": "posit16_es1"})
    fold_bn_into(q, bn)
    lb.dequantize_(q)
    with torch.no_grad():
        assert torch.allclose(q(x), want, atol=1e-5)  # the fold reached the Parameters, not a quantized copy
