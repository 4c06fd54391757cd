"""Layer patterns: one rule everywhere a config names layers.

Invariant: a pattern that names a container covers every layer inside it — in `quantize_`
(``exclude`` and ``layers``), `prepare_qat`, `pack_`, `save` of a state dict with a config,
`sensitivity_scan(layers=...)` and `allocate(keep_full=...)` — and never a sibling whose name
merely starts with the same letters.
"""

from __future__ import annotations

import torch
from torch import nn

import lowbit as lb
from lowbit.quant import allocate, prepare_qat, sensitivity_scan
from lowbit.quant.config import pattern_matches


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("block", nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8))))
    m.add_module("blocks", nn.Linear(8, 8))  # a sibling sharing the prefix "block"
    m.add_module("head", nn.Linear(8, 4))
    return m


def test_the_rule():
    assert pattern_matches("block", "block.1.0", ["Linear"])
    assert not pattern_matches("block", "blocks", ["Linear"])
    assert pattern_matches("block.*", "block.0", ["Linear"]) and not pattern_matches("block.*", "block", ["Sequential"])
    assert pattern_matches("a[0]", "a[0].fc", ["Linear"])  # a name with fnmatch characters, taken literally
    assert pattern_matches("type:Linear", "x", ["Linear", "Module"]) and not pattern_matches("type:Lin*", "x", ["Linear"])


def test_quantize_exclude_and_layers_cover_a_containers_layers():
    m = lb.quantize_(_model(), {"weight": "e2m1fn", "exclude": ["block"]})
    report = lb.quantization_report(m)
    assert sorted(report.excluded) == ["block.0", "block.1.0"] and sorted(report.quantized) == ["blocks", "head"]
    m = lb.quantize_(_model(), {"weight": "e2m1fn", "layers": {"block": {"weight": "posit8_es2"}}})
    formats = {k: str(v) for k, v in lb.tensor_formats(m).items()}
    assert formats == {"block.0.weight": "posit8_es2", "block.1.0.weight": "posit8_es2",
                       "blocks.weight": "e2m1fn", "head.weight": "e2m1fn"}


def test_prepare_qat_exclude_covers_a_containers_layers():
    m = prepare_qat(_model(), {"weight": "int4", "exclude": ["block"]})
    parametrized = sorted(n for n, mod in m.named_modules() if hasattr(mod, "parametrizations"))
    assert parametrized == ["blocks", "head"]


def test_pack_a_container_by_name():
    m = lb.pack_(_model(), {"block": "int4"})
    packed = sorted(n for n, mod in m.named_modules() if isinstance(mod, lb.storage.PackedLayerMixin))
    assert packed == ["block.0", "block.1.0"]


def test_lowbit_pack_plans_exclude_a_container(tmp_path):
    # the plans of `lowbit pack` (a quantize_-style config applied to a bare state dict)
    from lowbit.storage.plan import pack_state_dict

    state = _model().state_dict()
    packed = pack_state_dict(state, {"weight": "int4", "exclude": ["block"]})
    path = tmp_path / "m.lowbit"
    lb.save(packed, path)
    loaded = lb.load(path)
    for key in ("block.0.weight", "block.1.0.weight"):
        assert torch.equal(loaded[key], state[key]), key  # full precision
    fmt = lb.parse_format("int4")
    for key in ("blocks.weight", "head.weight"):
        assert torch.equal(loaded[key], fmt.quantize(state[key])), key
    flat = pack_state_dict(state, {"block": "int4"})  # the flat form: a module name for its .weight
    assert sorted(k for k, v in flat.items() if isinstance(v, lb.PackedTensor)) == ["block.0.weight", "block.1.0.weight"]


def test_scan_and_allocate_name_a_container():
    model, x = _model(), torch.randn(16, 8)
    report = sensitivity_scan(model, ["posit4_es1", "posit8_es1"], "sqnr", data=x, layers=["block"])
    assert sorted({e.layer for e in report.entries}) == ["block.0", "block.1.0"]
    full = sensitivity_scan(model, ["posit4_es1", "posit8_es1"], "sqnr", data=x)
    plan = allocate(full, avg_bits=24, keep_full=["block"])
    kept = sorted(layer.name for layer in plan.layers if layer.weight is None)
    assert kept == ["block.0", "block.1.0"]
