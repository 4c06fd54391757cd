"""The layer registry is the one list of supported layer types, and every tool reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.quant.calibration import CALIBRATED_LAYERS
from lowbit.quant.qat import QAT_LAYERS
from lowbit.simulate import registry
from lowbit.simulate.layers import QuantLayerMixin, generic_forward
from lowbit.storage.packed_layers import PACKED_CLASSES

PACKAGE = Path(lb.__file__).resolve().parent
_LAYER = r"(?:Linear|Conv[123]d|ConvTranspose[123]d|Embedding|MultiheadAttention|LayerNorm|RMSNorm|Conv1D)"
#: a hard-coded list of layer types: a tuple/dict of torch layer classes, or a prose list of names
LIST_PATTERNS = [
    re.compile(rf"nn\.{_LAYER}\s*[,:]\s*(?:#.*\n\s*)?nn\.{_LAYER}\b"),
    re.compile(rf"\b{_LAYER},\s*{_LAYER}\b"),
    re.compile(rf"\(\s*nn\.{_LAYER}\s*,\s*\)"),
    re.compile(rf"nn\.{_LAYER}\s*:\s*[\w.]+\s*,\s*nn\.{_LAYER}\s*:"),
]

#: files whose class tuples are about their own models, not about what lowbit supports
NOT_SUPPORT_LISTS = {
    "experiments/posit_gan.py": "DCGAN weight init of the GAN's own conv / linear layers",
    "experiments/models.py": "the experiment CNNs' weights (their models hold only Conv2d and Linear)",
    "experiments/hybrid.py": "calibration inputs of the experiment CNNs' conv / linear layers",
}


def test_no_supported_layer_list_outside_the_registry() -> None:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "simulate/registry.py" or rel in NOT_SUPPORT_LISTS:
            continue
        text = path.read_text()
        for pattern in LIST_PATTERNS:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(PACKAGE)}:{line}: {m.group(0)!r}")
    assert not hits, "layer lists outside lowbit/simulate/registry.py:\n" + "\n".join(hits)


def test_the_grep_finds_the_lists_it_is_meant_to_find() -> None:
    samples = ["_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)", "supported: Linear, Conv1d, Conv2d",
               "{nn.Linear: PackedLinear,\n nn.Conv1d: PackedConv1d}", "(nn.Linear,)"]
    for sample in samples:
        assert any(p.search(sample) for p in LIST_PATTERNS), sample


def test_every_tool_reads_its_layer_types_from_the_registry() -> None:
    assert QAT_LAYERS == registry.layer_types(qat=True) == (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    assert set(CALIBRATED_LAYERS) <= set(registry.layer_types(calibrated=True))  # + optional ones once loaded
    assert nn.Embedding not in CALIBRATED_LAYERS and nn.MultiheadAttention not in CALIBRATED_LAYERS
    assert set(PACKED_CLASSES) == {e.float_class for e in registry.entries() if e.packed is not None}
    assert registry.entry_for(nn.Linear).packed is PACKED_CLASSES[nn.Linear]
    assert registry.layer_types(chunked=True) == (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
    assert nn.LayerNorm not in registry.layer_types() and nn.LayerNorm in registry.layer_types(opt_in=True)


def test_old_table_names_are_computed_from_the_registry() -> None:
    from lowbit.simulate import layers

    assert layers.QUANT_CLASSES == {e.float_class: e.quant_class for e in registry.entries()}
    assert layers.SUPPORTED_LAYERS == tuple(layers.QUANT_CLASSES)
    assert layers.INAPPLICABLE_ROLES[nn.Embedding] == ("bias", "input")
    assert layers.CHUNKED_ACCUMULATION == (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
    assert layers.quant_class_for(nn.Linear) is layers.QuantLinear


def test_subclasses_keeping_forward_are_supported_and_overriding_ones_are_not() -> None:
    class Keeps(nn.Linear):
        pass

    class Overrides(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    qcls = registry.quant_class_for(Keeps)
    assert qcls is not None and issubclass(qcls, Keeps) and issubclass(qcls, QuantLayerMixin)
    assert registry.quant_class_for(Keeps) is qcls  # generated once
    assert registry.quant_class_for(Overrides) is None
    assert registry.entry_for(qcls) is registry.entry_for(nn.Linear)


def test_adding_a_layer_type_is_one_entry() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor([0.3, 1.7, -2.2]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    class QuantScale(QuantLayerMixin, Scale):
        forward = generic_forward

    entry = registry.register(registry.LayerEntry(Scale, QuantScale, {"gain": "weight"}, roles=("weight", "output")))
    try:
        model = nn.Sequential(Scale())
        lb.quantize_(model, {"weight": "int4", "input": "int4"})
        fmt = lb.parse_format("int4")
        x = torch.tensor([[0.5, 0.5, 0.5]])
        assert torch.equal(model(x), x * fmt.quantize(model[0].lowbit_float_tensor("gain")))
        assert list(lb.tensor_formats(model)) == ["0.gain"] and "input" not in model[0].lowbit_roles
    finally:
        registry._ENTRIES.pop(entry.float_class)


def test_a_bad_tensor_role_in_an_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="tensor roles must be 'weight' or 'bias'"):
        registry.register(registry.LayerEntry(nn.PReLU, QuantLayerMixin, {"weight": "input"}))


def test_unsupported_warning_names_the_supported_types_from_the_registry() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4))
    with pytest.warns(lb.LowbitWarning, match="supported: Linear, Conv1d, Conv2d, Conv3d, ConvTranspose1d"):
        lb.quantize_(model, {"weight": "int8"})
