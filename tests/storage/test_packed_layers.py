"""Packed layers: memory and cache, state dicts, copies and pickling."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.storage import (
    PackedTensor,
    memory_footprint,
    pack_,
    unpack_,
)
from tests.storage.packed_models import make_layer


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
        layer, x, _ = make_layer("linear")
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

    def test_tied_weights_stay_tied(self) -> None:
        emb, head = nn.Embedding(30, 8), nn.Linear(8, 30, bias=False)
        head.weight = emb.weight
        model = nn.ModuleDict({"emb": emb, "head": head})
        pack_(model, "posit8_es2")
        assert model["emb"].weight_packed.data_ptr() == model["head"].weight_packed.data_ptr()
        assert memory_footprint(model)["packed"] == 30 * 8
        unpack_(model)
        assert model["emb"].weight is model["head"].weight


class TestStateDict:
    def test_state_dict_round_trip_through_torch_weights_only(self, tmp_path: Path) -> None:
        layer, x, _ = make_layer("conv2d")
        packed = pack_(copy.deepcopy(layer), "mxfp4_e2m1fn")
        sd = packed.state_dict()
        assert {"weight_packed", "weight_param_scale_e8m0", "bias", "_extra_state"} <= set(sd)
        assert sd["weight_param_scale_e8m0"].dtype == torch.uint8  # one E8M0 byte per block
        assert "weight" not in sd
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        other = pack_(make_layer("conv2d")[0].requires_grad_(False), "posit8_es2")  # another format, re-shaped on load
        other.load_state_dict(torch.load(buf, weights_only=True))
        assert str(other.format) == "mxfp4_e2m1fn" and torch.equal(other(x), packed(x))

    def test_float_state_dict_is_requantized(self) -> None:
        layer, x, _ = make_layer("linear")
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
        layer, x, _ = make_layer("linear")
        packed = pack_(layer, "ternary")
        assert torch.equal(copy.deepcopy(packed)(x), packed(x))


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
