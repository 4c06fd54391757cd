"""granularity="token": one dynamic absmax scale per row over the last dimension (activations).

Oracle: numpy float32 arithmetic step by step (s = amax/fmt.max, v = x/s, round to the grid
with numpy's round-half-even or ml_dtypes' cast, y = s·q), independent of lowbit's code.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.quant.granularity import Granularity, as_granularity, granule_amax, quantize_with_scale


def oracle(x: torch.Tensor, spec: str) -> torch.Tensor:
    a = x.numpy().astype(np.float32)
    rows = a.reshape(-1, a.shape[-1])
    out = np.empty_like(rows)
    fmax = np.float32(lb.parse_format(spec).max)
    for i, row in enumerate(rows):
        amax = np.float32(np.abs(row).max())
        if amax == 0:
            out[i] = 0
            continue
        s = np.float32(amax / fmax)
        v = (row / s).astype(np.float32)
        if spec == "int8":
            q = np.clip(np.rint(v), -128, 127).astype(np.float32)
        else:
            q = v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        out[i] = (q * s).astype(np.float32)
    return torch.from_numpy(out.reshape(a.shape))


def _x(shape=(2, 5, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 2, shape[-2]).unsqueeze(-1)  # rows of very different size
    x[0, 1] = 0.0  # an all-zero row: exact zeros
    return x


class TestGranularityToken:
    def test_shapes_and_statistics_are_per_row_over_the_last_axis(self):
        g = as_granularity("token")
        x = _x()
        assert g == Granularity.token() and str(g) == "token"
        assert g.stat_shape(x.shape) == (2, 5, 1) and g.num_granules(x.shape) == 10
        assert torch.equal(granule_amax(x, g), x.abs().amax(dim=-1, keepdim=True))
        assert torch.equal(g.flatten(x), x.reshape(10, 16))
        assert Granularity.from_dict(g.to_dict()) == g
        with pytest.raises(ValueError, match="0-d"):
            g.stat_shape(())

    @pytest.mark.parametrize("spec", ["int8", "e4m3fn"])
    def test_quantize_with_scale_matches_the_float32_oracle(self, spec):
        x = _x()
        g = Granularity.token()
        fmt = lb.parse_format(spec)
        y = quantize_with_scale(x, fmt, granule_amax(x, g) / fmt.max, granularity=g)
        assert torch.equal(y, oracle(x, spec))


class TestTokenRoles:
    @pytest.mark.parametrize("spec", ["int8", "e4m3fn"])
    def test_linear_input_per_token_equals_the_oracle(self, spec):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 4))
        x = _x()
        want = F.linear(oracle(x, spec), model[0].weight, model[0].bias)
        lb.quantize_(model, {"input": {"format": spec, "granularity": "token"}})
        with torch.no_grad():
            assert torch.equal(model(x), want)
        per_tensor = lb.quantize_(nn.Sequential(nn.Linear(16, 4)), {"input": {"format": spec, "scaling": "absmax"}})
        per_tensor.load_state_dict(model.state_dict())
        with torch.no_grad():  # small rows keep their precision only per token
            err_token = (model(x) - F.linear(x, model[0].weight, model[0].bias))[:, 0].abs().max()
            err_tensor = (per_tensor(x) - F.linear(x, model[0].weight, model[0].bias))[:, 0].abs().max()
        assert err_token < err_tensor

    def test_token_implies_absmax_and_rejects_other_scalings_and_weights(self):
        cfg = lb.QuantConfig.from_dict({"input": {"format": "int8", "granularity": "token"}})
        assert cfg.default.input.scaling == "absmax" and cfg.default.input.granularity.kind == "token"
        assert lb.QuantConfig.from_json(cfg.to_json()) == cfg
        with pytest.raises(ValueError, match="granularity 'token'.*scaling='histogram'"):
            lb.QuantConfig.from_dict({"input": {"format": "e4m3fn", "granularity": "token", "scaling": "histogram"}})
        with pytest.raises(ValueError, match="'weight'.*activation roles"):
            lb.QuantConfig.from_dict({"weight": {"format": "int8", "granularity": "token"}})

    def test_attention_roles_per_token(self):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, 5, 8, generator=g) * torch.logspace(-2, 1, 5).unsqueeze(-1) for _ in range(3))
        role = {"format": "int8", "granularity": "token"}

        class Sdpa(nn.Module):
            def forward(self, q, k, v):
                return F.scaled_dot_product_attention(q, k, v)

        class Eager(nn.Module):
            def forward(self, q, k, v):
                return torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v

        want = F.scaled_dot_product_attention(oracle(q, "int8"), oracle(k, "int8"), oracle(v, "int8"))
        for cls in (Sdpa, Eager):
            model = lb.quantize_(cls(), {"attention": {"q": role, "k": role, "v": role}}, on_unsupported="ignore")
            torch.testing.assert_close(model(q, k, v), want, rtol=1e-6, atol=1e-6)
