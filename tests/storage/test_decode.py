"""The decode engine: packed == simulated bit for bit (every format, backend, dtype); staging; tables."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.kernels import available_backends, use_backend
from lowbit.storage import (
    PackedTensor,
    pack_,
)
from tests.storage.packed_models import FORMATS, LAYERS, MORE_FORMATS, make_layer


class TestPackedEqualsSimulated:
    """A packed layer's output is torch.equal to the simulated layer's, for every layer type."""

    @pytest.mark.parametrize("spec", FORMATS)
    @pytest.mark.parametrize("kind", LAYERS)
    def test_every_layer_type(self, kind: str, spec: str) -> None:
        layer, x, cls = make_layer(kind)
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": spec})
        y_sim = sim(x)
        packed = pack_(copy.deepcopy(sim))
        assert type(packed) is cls and "weight" not in dict(packed.named_parameters())
        assert torch.equal(packed(x), y_sim)
        from_float = pack_(copy.deepcopy(layer), spec)  # a float layer with a spec: the same codes
        assert torch.equal(from_float(x), y_sim)

    @pytest.mark.parametrize("spec", MORE_FORMATS)
    def test_more_formats(self, spec: str) -> None:
        layer, x, _ = make_layer("conv2d")
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
        layer, x, _ = make_layer("linear")
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
        layer, x, _ = make_layer("linear")
        with torch.no_grad():
            layer.weight.mul_(1e-3)
        sim = lb.quantize_(copy.deepcopy(layer), {"weight": {"format": "posit6_es1", "scaling": "histogram"}})
        y = sim(x)
        packed = pack_(copy.deepcopy(sim))
        assert "_s" in str(packed.format) and torch.equal(packed(x), y)

    def test_embedding_row_decode_equals_full_decode(self) -> None:
        layer, idx, _ = make_layer("embedding")
        for spec in ["posit8_es2", "int4", "posit6_es1", "codebook4", "ternary"]:
            rows = pack_(copy.deepcopy(layer), spec)
            full = pack_(copy.deepcopy(layer), spec, cache=True)
            assert torch.equal(rows(idx), full(idx))
            assert torch.equal(rows(idx), nn.functional.embedding(idx, rows.packed_weight.decode()))

    def test_training_mode_gradients_reach_bias_and_input(self) -> None:
        layer, x, _ = make_layer("linear")
        packed = pack_(copy.deepcopy(layer), "e4m3fn").train()
        x = x.requires_grad_()
        packed(x).sum().backward()
        assert x.grad is not None and packed.bias.grad is not None


class TestStaging:
    """Without autograd a CPU forward decodes into a reused per-thread buffer, never a stale one."""

    def test_no_grad_forwards_decode_into_a_reused_staging_buffer(self) -> None:
        from lowbit.storage.decode import staging_nbytes

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
        # the no-grad forward keeps a prepared kernel call per layer (storage.decode._StagedPlan);
        # new codes, a dtype cast, the cache switched on, a larger layer growing the staging
        # buffer and another thread must each give the right weight, never a stale one
        import threading

        from lowbit.storage.decode import _STAGING

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
            big = pack_(nn.Conv1d(4096, 300, 1), fmt)  # decoded whole: grows this thread's staging buffer
            big(torch.zeros(1, 4096, 1))
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
