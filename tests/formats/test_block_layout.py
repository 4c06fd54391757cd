"""Block layouts (`lowbit.formats.BlockLayout`, spec suffixes ``_r`` / ``_rt<g>``): the blocks of
a block format run along a conv weight's reduction rows. Checked against an oracle written
here with explicit loops over output channels (each row gathered element by element), then the
format's own last-axis rule on the stacked rows, compared with ``torch.equal``."""

from __future__ import annotations

import re

import pytest
import torch

import lowbit as lb
from lowbit.errors import FormatSpecError
from lowbit.formats import BlockLayout

PRESETS = ["mxfp4_e2m1fn", "mxfp6_e3m2fn", "mxfp8_e4m3fn", "mxint8", "nvfp4", "nvfp4_1l"]
OTHERS = ["bfp8_b16", "block16_e2m1fn_scale_posit8_es1_t", "block8_int4_scale_e8m0fnu", "mxfp4_e2m1fn_b16"]


def _conv_rows_oracle(w: torch.Tensor) -> "list[torch.Tensor]":
    """Row o: every element of w[o] in memory order (I/groups, then the kernel)."""
    return [torch.stack([w[o][idx] for idx in _indices(w.shape[1:])]) for o in range(w.shape[0])]


def _transposed_rows_oracle(w: torch.Tensor, groups: int) -> "tuple[list[torch.Tensor], list]":
    """A transposed-conv weight [I, O/g, *k]: output channel j*O/g + c sums over the input
    channels i of group j and the kernel; row = those elements, input channel major."""
    per_group = w.shape[0] // groups
    rows, where = [], []
    for j in range(groups):
        for c in range(w.shape[1]):
            idx = [(i, c, *k) for i in range(j * per_group, (j + 1) * per_group) for k in _indices(w.shape[2:])]
            rows.append(torch.stack([w[i] for i in idx]))
            where.append(idx)
    return rows, where


def _indices(shape: "tuple[int, ...]") -> "list[tuple[int, ...]]":
    out: "list[tuple[int, ...]]" = [()]
    for n in shape:
        out = [t + (i,) for t in out for i in range(n)]
    return out


def _conv_oracle(fmt: lb.NumberFormat, w: torch.Tensor) -> torch.Tensor:
    rows = torch.stack(_conv_rows_oracle(w))
    q = fmt.quantize(rows)
    out = torch.empty_like(w)
    for o in range(w.shape[0]):
        for j, idx in enumerate(_indices(w.shape[1:])):
            out[o][idx] = q[o, j]
    return out


def _transposed_oracle(fmt: lb.NumberFormat, w: torch.Tensor, groups: int) -> torch.Tensor:
    rows, where = _transposed_rows_oracle(w, groups)
    q = fmt.quantize(torch.stack(rows))
    out = torch.empty_like(w)
    for r, idx in enumerate(where):
        for j, i in enumerate(idx):
            out[i] = q[r, j]
    return out


def _weight(shape: "tuple[int, ...]", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # magnitudes spread over many binades, so blocks get different scales
    return torch.randn(shape, generator=g) * torch.exp2(torch.randint(-6, 6, shape, generator=g).float())


CONV_SHAPES = [(8, 16, 3, 3), (6, 1, 5, 5), (4, 3, 7), (5, 4, 2, 3, 3), (3, 40, 1, 1)]


@pytest.mark.parametrize("spec", PRESETS + OTHERS)
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_rows_layout_equals_the_last_axis_rule_on_each_output_channels_flattened_reduction(spec, shape):
    fmt = lb.parse_format(spec + "_r")
    last = lb.parse_format(spec)
    w = _weight(shape)
    assert torch.equal(fmt.quantize(w), _conv_oracle(last, w))
    enc = fmt.encode_tensor(w)
    assert enc.codes.shape == w.shape and torch.equal(fmt.decode_tensor(enc), fmt.quantize(w))
    rows = shape[0], w[0].numel()
    assert fmt.scale_shape(w.shape) == last.scale_shape(rows)


@pytest.mark.parametrize("spec", PRESETS + OTHERS)
@pytest.mark.parametrize("shape, groups", [((6, 4, 3, 3), 2), ((6, 4, 3, 3), 1), ((4, 1, 3), 4), ((6, 2, 2, 2, 2), 3)])
def test_transposed_rows_layout_equals_the_last_axis_rule_on_each_output_channels_reduction(spec, shape, groups):
    fmt = lb.parse_format(f"{spec}_rt{groups}")
    w = _weight(shape, 1)
    assert torch.equal(fmt.quantize(w), _transposed_oracle(lb.parse_format(spec), w, groups))
    enc = fmt.encode_tensor(w)
    assert enc.codes.shape == w.shape and torch.equal(fmt.decode_tensor(enc), fmt.quantize(w))


def test_the_old_last_axis_layout_differs_from_the_rows_layout_on_conv_weights():
    # the mutation check of the layout itself: blocks along the kernel width would pass the oracle only by accident
    w = _weight((8, 16, 3, 3))
    for spec in PRESETS:
        assert not torch.equal(lb.parse_format(spec).quantize(w), _conv_oracle(lb.parse_format(spec), w)), spec


@pytest.mark.parametrize("spec", ["mxfp8_e4m3fn_r", "nvfp4_rt2"])
def test_quantize_into_out_and_in_place_equal_the_allocating_quantize(spec):
    fmt = lb.parse_format(spec)
    w = _weight((6, 8, 3, 3))
    want = fmt.quantize(w)
    out = torch.empty_like(w)
    assert fmt.quantize(w, out=out) is out and torch.equal(out, want)
    x = w.clone()
    fmt.quantize(x, out=x)
    assert torch.equal(x, want)


def test_stochastic_rounding_with_a_seed_is_the_last_axis_rule_on_the_rows():
    w = _weight((4, 8, 3, 3))
    a = lb.parse_format("mxfp4_e2m1fn_r").quantize(w, "stochastic", torch.Generator().manual_seed(3))
    b = lb.parse_format("mxfp4_e2m1fn").quantize(w.reshape(4, -1), "stochastic", torch.Generator().manual_seed(3))
    assert torch.equal(a, b.reshape(w.shape))


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn_r", "nvfp4_rt2", "nvfp4_r"])
def test_tensors_of_fewer_than_two_dims_and_linear_weights_keep_the_last_axis(spec):
    fmt = lb.parse_format(spec)
    last = lb.parse_format(spec.rsplit("_r", 1)[0])
    for x in (_weight((40,)), torch.tensor(3.0)):
        assert torch.equal(fmt.quantize(x), last.quantize(x))
    if "_rt" not in spec:  # a 2-d [out, in] weight: its rows are its last axis
        x = _weight((4, 40))
        assert torch.equal(fmt.quantize(x), last.quantize(x))


@pytest.mark.parametrize("spec", ["mxfp4_e2m1fn_r", "mxint8_b16_rt4", "nvfp4_r", "nvfp4_1l_rt2", "bfp8_b16_r",
                                  "block16_e2m1fn_scale_posit8_es1_t_r", "block32_int4_scale_e8m0fnu_rt3"])
def test_layout_specs_print_back_canonically(spec):
    fmt = lb.parse_format(spec)
    assert str(fmt) == spec and lb.parse_format(str(fmt)) == fmt
    assert fmt != lb.parse_format(re.sub(r"_rt?\d*$", "", spec))


@pytest.mark.parametrize("spec, message", [
    ("mxfp4_e2m1fn_rt0", "groups=0"),
    ("nvfp4_rx", "_r | _rt<g>"),
    ("block16_e2m1fn_scale_e4m3fn_a1_r", "give one of them"),
])
def test_bad_layout_specs_say_what_is_allowed(spec, message):
    with pytest.raises(FormatSpecError, match=re.escape(message)):
        lb.parse_format(spec)


def test_a_transposed_layout_whose_groups_do_not_divide_the_input_channels_is_refused():
    with pytest.raises(ValueError, match=re.escape("not a multiple of groups=4")):
        lb.parse_format("mxfp4_e2m1fn_rt4").quantize(torch.ones(6, 2, 3))


def test_block_layout_values_validate_their_fields():
    with pytest.raises(FormatSpecError, match="kind"):
        BlockLayout("diagonal")
    with pytest.raises(FormatSpecError, match="groups"):
        BlockLayout("rows", 2)
    assert BlockLayout.from_suffix("rt3") == BlockLayout.transposed_rows(3)


def test_format_card_names_the_layout():
    from lowbit.formats import format_card

    card = format_card(lb.parse_format("mxfp4_e2m1fn_r"))
    assert "output channel" in str(card["block_axis"])
