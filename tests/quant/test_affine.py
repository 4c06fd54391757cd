"""Affine integer quantization formulas, fixed-point fraction bits, power-of-two scales and es choice."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.formats import FixedPoint, Posit
from lowbit.quant.affine import (
    affine_qparams,
    best_es,
    best_es_per_layer,
    best_fraction_bits,
    best_pow2_scale,
    dequantize_affine,
    fake_quantize_affine,
    posit_es_errors,
    pow2_scale,
    qrange,
    quantize_affine,
    quantize_fixed,
)
from lowbit.quant.granularity import Granularity, quantize_with_scale
from lowbit.simulate.scaling import amax_exponent, histogram_exponent, scaled_format


def _rows(x: torch.Tensor, g: Granularity) -> "list[torch.Tensor]":
    """Granules of a 2-d tensor, in stat_shape order (independent of Granularity.flatten)."""
    if g.kind == "tensor":
        return [x.reshape(-1)]
    if g.kind == "channel":
        return [x[i] for i in range(x.shape[0])] if g.axis % 2 == 0 else [x[:, j] for j in range(x.shape[1])]
    assert g.axis % 2 == 1
    n = g.group_size
    return [x[i, j * n:(j + 1) * n] for i in range(x.shape[0]) for j in range(x.shape[1] // n)]


class TestQParams:
    def test_qrange(self):
        assert qrange(8) == (-128, 127)
        assert qrange(8, narrow=True) == (-127, 127)
        assert qrange(8, signed=False) == (0, 255)
        assert qrange(4) == (-8, 7)
        with pytest.raises(ValueError, match="bits=1"):
            qrange(1)

    def test_symmetric_signed(self):
        s, z = affine_qparams(-3.0, 1.0, bits=8)
        assert float(s) == float(np.float32(3.0) / np.float32(127)) and int(z) == 0

    def test_symmetric_unsigned_uses_the_positive_side(self):
        s, z = affine_qparams(-3.0, 2.0, bits=8, symmetric=True, signed=False)
        assert float(s) == float(np.float32(2.0) / np.float32(255)) and int(z) == 0

    def test_asymmetric_formula(self):
        s, z = affine_qparams(-1.0, 3.0, bits=8, symmetric=False, signed=False)
        s_ref = np.float32(4.0) / np.float32(255)
        assert float(s) == float(s_ref)
        assert int(z) == round(0 - float(np.float32(-1.0) / s_ref))  # round(63.75) = 64

    def test_range_is_widened_to_include_zero(self):
        s, z = affine_qparams(1.0, 3.0, symmetric=False, signed=False)
        assert int(z) == 0 and float(s) == float(np.float32(3.0) / np.float32(255))
        s, z = affine_qparams(-3.0, -1.0, symmetric=False, signed=False)
        assert int(z) == 255
        s, z = affine_qparams(-3.0, -1.0, symmetric=False, signed=True)
        assert int(z) == 127

    def test_zero_range_gives_zero_scale(self):
        s, z = affine_qparams(torch.zeros(3), torch.zeros(3), symmetric=False, signed=False, narrow=True)
        assert s.tolist() == [0.0] * 3 and z.tolist() == [1] * 3
        s, z = affine_qparams(0.0, 0.0)
        assert float(s) == 0 and int(z) == 0

    def test_per_granule_tensors(self):
        x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
        g = Granularity.channel(0)
        lo, hi = lb.quant.granule_min(x, g), lb.quant.granule_max(x, g)
        s, z = affine_qparams(lo, hi, 8, symmetric=False)
        assert s.shape == z.shape == (5, 1) and z.dtype == torch.int64
        for i in range(5):
            si, zi = affine_qparams(float(lo[i]), float(hi[i]), 8, symmetric=False)
            assert float(s[i]) == float(si) and int(z[i]) == int(zi)

    def test_errors(self):
        with pytest.raises(ValueError, match="xmin must be <= xmax"):
            affine_qparams(2.0, 1.0)
        with pytest.raises(ValueError, match="xmax must be finite"):
            affine_qparams(0.0, float("inf"))


def _ref_round(v: float, mode: str) -> int:
    if mode == "nearest_even":
        return round(v)  # Python's round is half to even
    if mode == "nearest_away":
        return int(math.copysign(math.floor(abs(v) + 0.5), v))
    if mode == "toward_zero":
        return math.trunc(v)
    if mode == "floor":
        return math.floor(v)
    return math.ceil(v)


def _ref_fake(x: torch.Tensor, s: float, z: int, qmin: int, qmax: int, mode: str) -> torch.Tensor:
    s32 = np.float32(s)
    out = []
    for v in x.tolist():
        q = min(max(_ref_round(float(np.float32(v) / s32), mode) + z, qmin), qmax)
        out.append(np.float32(q - z) * s32)
    return torch.tensor(np.array(out, dtype=np.float32))


class TestFakeQuantizeAffine:
    @pytest.mark.parametrize("mode", ["nearest_even", "nearest_away", "toward_zero", "floor", "ceil"])
    def test_matches_scalar_reference(self, mode):
        x = torch.cat([torch.randn(300, generator=torch.Generator().manual_seed(1)) * 2,
                       torch.tensor([0.25, 0.75, -0.25, -1.25, 100.0, -100.0])])  # ties at s = 0.5
        for s, z, qmin, qmax in [(0.5, 0, -128, 127), (0.037, 13, 0, 255), (0.5, 3, 0, 15)]:
            got = fake_quantize_affine(x, s, z, qmin, qmax, rounding=mode)
            assert torch.equal(got, _ref_fake(x, s, z, qmin, qmax, mode)), (s, z, mode)

    def test_codes_round_trip_exactly(self):
        x = torch.randn(1000, generator=torch.Generator().manual_seed(2)) * 3
        s, z = affine_qparams(x.min(), x.max(), 8, symmetric=False, signed=False)
        q = quantize_affine(x, s, z, 0, 255, dtype=torch.uint8)
        assert q.dtype == torch.uint8
        assert torch.equal(dequantize_affine(q, s, z), fake_quantize_affine(x, s, z, 0, 255))

    def test_symmetric_equals_quantize_with_scale(self):
        x = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 3
        s, z = affine_qparams(x.min(), x.max(), 8)
        assert torch.equal(fake_quantize_affine(x, s, z, -128, 127), quantize_with_scale(x, "int8", s))

    def test_per_channel_and_group(self):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(4))
        for g in (Granularity.channel(0), Granularity.channel(1), Granularity.group(4, axis=1)):
            s, z = affine_qparams(lb.quant.granule_min(x, g), lb.quant.granule_max(x, g), 4, symmetric=False)
            got = fake_quantize_affine(x, s, z, -8, 7, granularity=g)
            for row_x, row_q, si, zi in zip(_rows(x, g), _rows(got, g), s.reshape(-1), z.reshape(-1)):
                assert torch.equal(row_q, _ref_fake(row_x, float(si), int(zi), -8, 7, "nearest_even"))

    def test_zero_scale(self):
        x = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
        s, z = affine_qparams(lb.quant.granule_min(x, "channel"), lb.quant.granule_max(x, "channel"),
                              8, symmetric=False, signed=False)
        assert float(s[0]) == 0
        y = fake_quantize_affine(x, s, z, 0, 255)
        assert not torch.isnan(y).any() and y[0].tolist() == [0.0, 0.0]
        q = quantize_affine(x, s, z, 0, 255)
        assert q[0].tolist() == [int(z[0])] * 2

    def test_dtype_errors(self):
        with pytest.raises(ValueError, match="do not fit dtype=torch.int8"):
            quantize_affine(torch.ones(2), 1.0, 0, 0, 255, dtype=torch.int8)
        with pytest.raises(TypeError, match="integer dtype"):
            quantize_affine(torch.ones(2), 1.0, 0, 0, 255, dtype=torch.float32)


class TestFixedPoint:
    @pytest.mark.parametrize("signed", [True, False])
    def test_quantize_fixed_equals_fixed_point_format(self, signed):
        x = torch.randn(2000, generator=torch.Generator().manual_seed(5)) * 10
        for w, f in itertools.product((4, 8, 12), range(0, 11)):
            assert torch.equal(quantize_fixed(x, w, f, signed=signed), FixedPoint(w, f, signed).quantize(x)), (w, f)

    def test_amax_rule_is_the_largest_fraction_without_saturation(self):
        x = torch.randn(8, 50, generator=torch.Generator().manual_seed(6)) * torch.logspace(-3, 2, 8).unsqueeze(1)
        g = Granularity.channel(0)
        f = best_fraction_bits(x, 8, g, rule="amax")
        for row, fi in zip(x, f.reshape(-1).tolist()):
            amax = float(row.abs().max())
            ok = [k for k in range(-20, 40) if amax <= 127 * 2.0**-k]
            assert fi == max(ok)

    def test_mse_rule_against_brute_force(self):
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(6, 400, generator=gen) * 0.5
        x[1, 3] = 9.0  # an outlier: mse clips it, amax does not
        g = Granularity.channel(0)
        f = best_fraction_bits(x, 6, g, rule="mse", search=6)
        f_amax = best_fraction_bits(x, 6, g, rule="amax")
        for row, fi, fa in zip(x, f.reshape(-1).tolist(), f_amax.reshape(-1).tolist()):
            errs = {k: float(((FixedPoint(6, k).quantize(row).double() - row.double()) ** 2).sum())
                    for k in range(fa, fa + 7)}
            assert fi == min(errs, key=lambda k: (errs[k], k))
        assert int(f[1]) > int(f_amax[1])

    def test_zero_channel(self):
        x = torch.zeros(2, 5)
        x[1] = 1.0
        assert best_fraction_bits(x, 8, "channel", rule="amax").flatten().tolist() == [0, 6]
        assert best_fraction_bits(x, 8, "channel", rule="mse").flatten().tolist() == [0, 6]


class TestPow2Scale:
    def test_pow2_scale_exact(self):
        assert pow2_scale(torch.tensor([-126, -3, 0, 127])).tolist() == [2.0**-126, 0.125, 1.0, 2.0**127]
        with pytest.raises(ValueError, match="normal range"):
            pow2_scale(torch.tensor([-127]))

    @pytest.mark.parametrize("spec", ["posit8_es2", "posit6_es1", "e4m3fn", "e5m2"])
    def test_amax_and_histogram_rules_match_scaling_module_per_granule(self, spec):
        x = torch.randn(5, 64, generator=torch.Generator().manual_seed(8)) * torch.logspace(-4, 1, 5).unsqueeze(1)
        g = Granularity.channel(0)
        ka = best_pow2_scale(x, spec, g, rule="amax").reshape(-1).tolist()
        kh = best_pow2_scale(x, spec, g, rule="histogram").reshape(-1).tolist()
        assert ka == [amax_exponent(float(r.abs().max()), spec) for r in x]
        assert kh == [histogram_exponent(r, spec) for r in x]

    def test_histogram_rule_per_group(self):
        x = torch.randn(3, 32, generator=torch.Generator().manual_seed(9)) * 0.01
        g = Granularity.group(8, axis=1)
        kh = best_pow2_scale(x, "posit8_es2", g, rule="histogram")
        assert kh.shape == (3, 4)
        assert kh.reshape(-1).tolist() == [histogram_exponent(r, "posit8_es2") for r in _rows(x, g)]

    @pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "int8"])
    def test_mse_rule_against_brute_force_with_scaled_formats(self, spec):
        gen = torch.Generator().manual_seed(10)
        x = torch.randn(4, 256, generator=gen) * torch.tensor([[1e-3], [0.1], [1.0], [30.0]])
        g = Granularity.channel(0)
        k = best_pow2_scale(x, spec, g, rule="mse", search=(3, 10))
        k_amax = best_pow2_scale(x, spec, g, rule="amax")
        fmt = lb.parse_format(spec)
        for row, ki, ka in zip(x, k.reshape(-1).tolist(), k_amax.reshape(-1).tolist()):
            def err(kk):
                xq = (scaled_format(fmt, kk).quantize(row) if fmt.family != "integer"
                      else fmt.quantize(row / 2.0**kk) * 2.0**kk)
                return float(((xq.double() - row.double()) ** 2).sum())
            cands = sorted(range(ka - 3, ka + 11), key=lambda kk: (abs(kk - ka), -kk))
            errs = {kk: err(kk) for kk in cands}
            best = min(errs.values())
            assert ki == next(kk for kk in cands if errs[kk] == best)

    def test_mse_rule_beats_amax_for_posits(self):
        x = torch.randn(4096, generator=torch.Generator().manual_seed(11)) * 0.05
        errs = {}
        for rule in ("amax", "histogram", "mse"):
            k = best_pow2_scale(x, "posit8_es2", rule=rule)
            errs[rule] = float(((quantize_with_scale(x, "posit8_es2", pow2_scale(k)) - x) ** 2).mean())
        assert errs["mse"] <= errs["histogram"] and errs["mse"] < errs["amax"] / 10

    def test_zero_granule_gets_zero(self):
        x = torch.zeros(2, 4)
        x[1] = 3.0
        for rule in ("amax", "histogram", "mse"):
            assert int(best_pow2_scale(x, "e4m3fn", "channel", rule=rule)[0]) == 0

    def test_bad_rule(self):
        with pytest.raises(ValueError, match="rule='max'; allowed: mse, amax, histogram"):
            best_pow2_scale(torch.ones(3), "e4m3fn", rule="max")


class TestEs:
    def test_best_es_is_the_argmin_of_mse(self):
        gen = torch.Generator().manual_seed(12)
        for sigma in (1e-3, 0.05, 1.0, 200.0):
            x = torch.randn(2048, generator=gen) * sigma
            errs = {es: float(((Posit(8, es).quantize(x).double() - x.double()) ** 2).mean()) for es in range(4)}
            assert best_es(x, 8) == min(errs, key=lambda es: (errs[es], es))
            got = posit_es_errors(x, 8)
            assert all(math.isclose(got[es], errs[es], rel_tol=1e-12) for es in errs)

    def test_wide_data_prefers_larger_es(self):
        gen = torch.Generator().manual_seed(13)
        narrow = torch.randn(4096, generator=gen) * 0.5
        wide = torch.exp(torch.randn(4096, generator=gen) * 6)
        assert best_es(narrow, 8) < best_es(wide, 8)

    def test_per_layer(self):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Conv1d(1, 2, 3))
        with torch.no_grad():
            model[0].weight.mul_(1e-3)
        plan = best_es_per_layer(model, 8)
        assert set(plan) == {"0", "2"}
        assert plan["0"] == best_es(model[0].weight, 8)
        assert plan["2"] == best_es(model[2].weight, 8)


def test_a_python_float_scale_is_rounded_once_into_the_compute_dtype():
    # float64 inputs compute in float64: a Python-float scale must not pass through float32 first
    from lowbit.quant import dequantize_affine, fake_quantize_affine, quantize_affine

    x64 = torch.tensor([0.3, 1.0, -2.7], dtype=torch.float64)
    s64 = torch.tensor(0.1, dtype=torch.float64)
    assert torch.equal(fake_quantize_affine(x64, 0.1, 0, -128, 127), fake_quantize_affine(x64, s64, 0, -128, 127))
    assert fake_quantize_affine(x64, 0.1, 0, -128, 127).tolist() == [3 * 0.1, 10 * 0.1, -27 * 0.1]
    q = quantize_affine(x64, 0.1, 0, -128, 127)
    assert torch.equal(dequantize_affine(q, 0.1, 0, dtype=torch.float64), dequantize_affine(q, s64, 0, dtype=torch.float64))
    x32 = x64.float()  # float32 inputs: the scale rounded once to float32, as before
    assert torch.equal(fake_quantize_affine(x32, 0.1, 0, -128, 127),
                       fake_quantize_affine(x32, torch.tensor(0.1, dtype=torch.float32), 0, -128, 127))
