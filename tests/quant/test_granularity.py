"""Granularity: shapes, per-granule statistics and quantize_with_scale against slow per-granule loops."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import lowbit as lb
from lowbit.quant.granularity import (
    Granularity,
    as_granularity,
    granule_amax,
    granule_max,
    granule_min,
    quantize_with_scale,
)
from lowbit.simulate.scaling import scaled_format

GRANULARITIES = [
    Granularity.tensor(),
    Granularity.channel(0),
    Granularity.channel(1),
    Granularity.channel(-1),
    Granularity.group(2, axis=-1),
    Granularity.group(3, axis=1),
    Granularity.group(2, axis=0),
]
SHAPE = (4, 6, 2)


def _granule_of(index: "tuple[int, ...]", g: Granularity, ndim: int) -> "tuple[int, ...]":
    """Independent statement of the layout: the stat_shape index an element of x belongs to."""
    if g.kind == "tensor":
        return ()
    a = g.axis % ndim
    if g.kind == "channel":
        return tuple(index[a] if i == a else 0 for i in range(ndim))
    return tuple(index[a] // g.group_size if i == a else index[i] for i in range(ndim))


def _granules(shape: "tuple[int, ...]", g: Granularity) -> "dict[tuple[int, ...], list[tuple[int, ...]]]":
    out: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for idx in itertools.product(*[range(n) for n in shape]):
        out.setdefault(_granule_of(idx, g, len(shape)), []).append(idx)
    return out


def _values(x: torch.Tensor, members: "list[tuple[int, ...]]") -> torch.Tensor:
    return torch.stack([x[idx] for idx in members])


class TestValidation:
    def test_bad_kind(self):
        with pytest.raises(ValueError, match="kind='row'.*tensor, channel, group"):
            Granularity("row")

    def test_group_size_rules(self):
        with pytest.raises(ValueError, match="group_size=0"):
            Granularity.group(0)
        with pytest.raises(ValueError, match="applies to kind='group' only"):
            Granularity("channel", 0, 4)
        with pytest.raises(ValueError, match="needs a size"):
            as_granularity("group")

    def test_group_size_must_divide(self):
        with pytest.raises(ValueError, match=r"group_size=5 does not divide the length 12"):
            Granularity.group(5).stat_shape((3, 12))

    def test_axis_out_of_range(self):
        with pytest.raises(ValueError, match=r"axis=3 is out of range for a 2-d tensor; allowed: -2..1"):
            granule_amax(torch.ones(2, 2), Granularity.channel(3))

    def test_json_round_trip(self):
        for g in GRANULARITIES:
            assert Granularity.from_dict(json.loads(json.dumps(g.to_dict()))) == g


class TestShapes:
    def test_stat_shapes(self):
        assert Granularity.tensor().stat_shape(SHAPE) == torch.Size([])
        assert Granularity.channel(1).stat_shape(SHAPE) == torch.Size([1, 6, 1])
        assert Granularity.channel(-1).stat_shape(SHAPE) == torch.Size([1, 1, 2])
        assert Granularity.group(3, axis=1).stat_shape(SHAPE) == torch.Size([4, 2, 2])

    @pytest.mark.parametrize("g", GRANULARITIES, ids=str)
    def test_expand_broadcasts_each_granule_to_its_members(self, g):
        stat = torch.arange(g.num_granules(SHAPE), dtype=torch.float32).reshape(g.stat_shape(SHAPE))
        full = torch.broadcast_to(g.expand(stat, SHAPE), SHAPE)
        for key, members in _granules(SHAPE, g).items():
            assert all(float(full[idx]) == float(stat[key]) for idx in members)

    def test_expand_rejects_wrong_shape(self):
        with pytest.raises(ValueError, match=r"expected shape \(1, 6, 1\)"):
            Granularity.channel(1).expand(torch.ones(4, 1, 1), SHAPE)


class TestStatistics:
    @pytest.mark.parametrize("g", GRANULARITIES, ids=str)
    def test_against_slow_loop(self, g):
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
        amax, lo, hi = granule_amax(x, g), granule_min(x, g), granule_max(x, g)
        assert amax.shape == lo.shape == hi.shape == g.stat_shape(SHAPE)
        for key, members in _granules(SHAPE, g).items():
            v = _values(x, members)
            assert float(amax[key]) == max(abs(float(t)) for t in v)
            assert float(lo[key]) == min(float(t) for t in v)
            assert float(hi[key]) == max(float(t) for t in v)

    def test_non_finite_values_are_ignored(self):
        x = torch.tensor([[1.0, float("inf"), -2.0], [float("nan"), float("nan"), float("nan")]])
        g = Granularity.channel(0)
        assert granule_amax(x, g).flatten().tolist() == [2.0, 0.0]
        assert granule_min(x, g).flatten().tolist() == [-2.0, 0.0]
        assert granule_max(x, g).flatten().tolist() == [1.0, 0.0]


FORMATS = ["int8", "int4", "uint8", "posit8_es2", "posit6_es1", "e4m3fn", "e5m2", "fixed8_f4"]


def _slow_quantize(x, fmt, scale, zp, g):
    """Per granule: (fmt.quantize(x / s + z) − z) · s in float32, one granule at a time."""
    fmt = lb.parse_format(fmt)
    out = torch.empty_like(x)
    for key, members in _granules(tuple(x.shape), g).items():
        v = _values(x, members)
        s = scale[key] if scale.dim() else scale
        y = v / s
        if zp is not None:
            z = zp[key] if zp.dim() else zp
            y = fmt.quantize(y + z) - z
        else:
            y = fmt.quantize(y)
        y = y * s
        for idx, val in zip(members, y):
            out[idx] = val
    return out


class TestQuantizeWithScale:
    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("g", GRANULARITIES, ids=str)
    def test_matches_slow_reference(self, fmt, g):
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(SHAPE, generator=gen) * 3
        scale = torch.rand(g.stat_shape(SHAPE), generator=gen) * 0.5 + 0.01
        got = quantize_with_scale(x, fmt, scale, granularity=g)
        assert torch.equal(got, _slow_quantize(x, fmt, scale, None, g))

    @pytest.mark.parametrize("g", GRANULARITIES, ids=str)
    def test_zero_point_matches_slow_reference(self, g):
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(SHAPE, generator=gen)
        scale = torch.rand(g.stat_shape(SHAPE), generator=gen) * 0.05 + 0.005
        zp = torch.randint(0, 256, g.stat_shape(SHAPE), generator=gen).to(torch.float32)
        got = quantize_with_scale(x, "uint8", scale, zp, granularity=g)
        assert torch.equal(got, _slow_quantize(x, "uint8", scale, zp, g))

    def test_power_of_two_scale_equals_scaled_format(self):
        x = torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 0.01
        for spec in ("posit8_es2", "e4m3fn", "e5m2"):
            for k in (-9, -3, 2):
                got = quantize_with_scale(x, spec, 2.0**k)
                assert torch.equal(got, scaled_format(spec, k).quantize(x)), (spec, k)

    def test_float64_is_computed_in_float64(self):
        x = torch.tensor([0.1, 1 / 3], dtype=torch.float64)
        s = torch.tensor(0.07, dtype=torch.float64)
        fmt = lb.parse_format("e4m3fn")
        assert torch.equal(quantize_with_scale(x, fmt, s), fmt.quantize(x / s) * s)

    def test_half_input_is_computed_in_float32(self):
        x = torch.randn(64, generator=torch.Generator().manual_seed(5)).to(torch.float16)
        s = torch.tensor(0.03)
        got = quantize_with_scale(x, "int8", s)
        assert got.dtype == torch.float16
        fmt = lb.parse_format("int8")
        assert torch.equal(got, (fmt.quantize(x.float() / s) * s).to(torch.float16))

    def test_zero_scale_gives_exact_zero_not_nan(self):
        # an all-zero output channel (as in EfficientNet-Lite0) has amax 0, so scale 0
        w = torch.randn(4, 3, 3, 3)
        w[2] = 0
        g = Granularity.channel(0)
        scale = granule_amax(w, g) / 127
        assert float(scale[2]) == 0
        q = quantize_with_scale(w, "int8", scale, granularity=g)
        assert not torch.isnan(q).any()
        assert torch.equal(q[2], torch.zeros_like(q[2])) and not torch.signbit(q[2]).any()
        # a zero scale on nonzero data: the grid collapses to {0}
        assert quantize_with_scale(torch.tensor([1.0, -5.0]), "posit8_es2", 0.0).tolist() == [0.0, 0.0]

    @pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
    def test_bad_scale_raises(self, bad):
        with pytest.raises(ValueError, match="scale must be finite and >= 0"):
            quantize_with_scale(torch.ones(3), "int8", bad)

    def test_data_dependent_format_is_refused(self):
        with pytest.raises(TypeError, match="scalar element format"):
            quantize_with_scale(torch.ones(32), "mxfp8_e4m3fn", 1.0)

    def test_stochastic_is_seeded(self):
        x = torch.randn(500, generator=torch.Generator().manual_seed(6))
        a = quantize_with_scale(x, "int4", 0.3, rounding="stochastic", generator=torch.Generator().manual_seed(9))
        b = quantize_with_scale(x, "int4", 0.3, rounding="stochastic", generator=torch.Generator().manual_seed(9))
        c = quantize_with_scale(x, "int4", 0.3, rounding="stochastic", generator=torch.Generator().manual_seed(10))
        assert torch.equal(a, b) and not torch.equal(a, c)
        # unbiased: the mean rounding error is far below the step
        assert abs(float((a - x.clamp(-2.4, 2.1)).mean())) < 0.03


class TestQuantizeClipped:
    """s · fmt.quantize(clamp(x / s, lowest, max)): quantize_with_scale for saturating formats, a clip otherwise."""

    @pytest.mark.parametrize("spec", ["int8", "int4", "uint4", "fixed8_f4", "posit8_es2", "e4m3fn_sat"])
    def test_equals_quantize_with_scale_for_saturating_formats(self, spec):
        from lowbit.quant import quantize_clipped

        x = torch.randn(500, generator=torch.Generator().manual_seed(3)) * 40
        for s in (0.01, 0.3, 2.0):
            assert torch.equal(quantize_clipped(x, spec, s), quantize_with_scale(x, spec, s)), (spec, s)

    def test_overflowing_formats_saturate_and_zero_scale_gives_zeros(self):
        from lowbit.quant import format_low, quantize_clipped

        x = torch.tensor([1e6, -1e6, 3.0, float("nan")])
        for spec in ("e4m3fn", "e5m2"):
            fmt = lb.parse_format(spec)
            got = quantize_clipped(x, fmt, 0.5)
            assert got[:3].tolist() == [fmt.max * 0.5, -fmt.max * 0.5, 3.0] and torch.isnan(got[3])
            assert format_low(fmt) == -fmt.max
        assert torch.equal(quantize_clipped(x[:3], "int8", 0.0), torch.zeros(3))
        assert format_low(lb.parse_format("int8")) == -128.0 and format_low(lb.parse_format("ufixed8_f4")) == 0.0
