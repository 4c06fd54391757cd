"""The one table of supported layer types: what `quantize_`, `pack_`, calibration, QAT, the
sensitivity scan, the storage cost model and the report know about a layer.

Each `LayerEntry` names the float class, its simulated class, the roles that apply, which tensor
attributes are quantized under which role (``weight`` / ``bias``), the axis ``"channel"``
granularity means for its weights, and what else the tools may do with it. Adding a layer
type is one `register` call (plus its tests). Subclasses of a registered class that keep its
``forward`` are supported too (a simulated subclass is generated once); storage fills the
``packed`` slot of the entries it can pack (`register_packed`).

A block format (MX, NVFP4, BFP, ``block<k>_…``) spec with the suffix ``_r`` asks for blocks
along the reduction of each output, whatever the layer: `weight_format` gives a layer's weight
the entry's ``weight_blocks`` layout (a conv weight ``[O, I/groups, *kernel]``: each output
channel's I/groups · prod(kernel) products, ``_r``; a transposed conv's ``[I, O/groups,
*kernel]``: ``_rt<groups>``); a Linear weight's last axis already is its reduction. A bare spec
keeps its blocks along the last axis. This is the one place that decides it: `quantize_`
(simulation, PTQ, QAT), `pack_` and `lowbit.save` of the quantized model, the storage cost and
the sensitivity scan all read the format it returns.

transformers' ``Conv1D`` (GPT-2 family; weight ``[in, out]``, so channel axis 1) is registered
lazily, the first time a model holding one is looked at: transformers stays optional.

>>> import torch
>>> entry_for(torch.nn.Linear).tensors
{'weight': 'weight', 'bias': 'bias'}
>>> entry_for(torch.nn.Embedding).roles
('weight', 'output', 'grad')
>>> quant_class_for(torch.nn.GRU) is None
True
>>> str(weight_format(torch.nn.Conv2d(64, 32, 1), "mxfp4_e2m1fn_r")), str(weight_format(torch.nn.Linear(4, 4), "nvfp4_r"))
('mxfp4_e2m1fn_r', 'nvfp4_r')
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Mapping

from torch import nn

from lowbit.formats import BlockLayout, NumberFormat, parse_format
from lowbit.simulate import layers as L

__all__ = [
    "LayerEntry",
    "register",
    "register_packed",
    "entries",
    "entry_for",
    "quant_class_for",
    "layer_types",
    "is_supported",
    "weight_format",
    "FAST_PATH_LAYERS",
    "NESTED_TENSOR_LAYERS",
]

_ALL_ROLES = ("weight", "bias", "input", "output", "grad")


@dataclasses.dataclass
class LayerEntry:
    """One supported layer type.

    ``tensors``: ``{attribute: role}`` of the tensors quantized where they are read.
    ``roles``: the roles that apply (others in a config are skipped for this layer).
    ``channel_axis``: the axis ``"channel"`` granularity (axis 0 in a config) means for its weights.
    ``chunked``: ``accumulate_every`` applies. ``quire``: ``accumulate="quire"`` applies. ``qat``: `prepare_qat` handles it.
    ``calibrated``: its input / output are single tensors an observer can watch.
    ``escaped``: ``{child name: roles}`` of child layers whose forward the layer never calls (it
    reads their weights directly), so those roles cannot run. ``packed``: the packed class.
    ``config_key``: None for layers the config's plain roles cover; else the config key whose
    roles alone apply (normalization layers: ``"norm"``, opt-in).
    ``weight_blocks``: the `BlockLayout` block formats take on this layer's weight-role tensors
    (a function of the module; None: the last axis, a Linear's reduction). See `weight_format`.
    """

    float_class: type
    quant_class: type
    tensors: "Mapping[str, str]"
    roles: "tuple[str, ...]" = _ALL_ROLES
    channel_axis: int = 0
    chunked: bool = False
    quire: bool = False
    qat: bool = False
    calibrated: bool = True
    escaped: "Mapping[str, tuple[str, ...]]" = dataclasses.field(default_factory=dict)
    packed: "type | None" = None
    config_key: "str | None" = None
    weight_blocks: "Callable[[nn.Module], BlockLayout] | None" = None

    @property
    def name(self) -> str:
        """The float class's name (``"Linear"``)."""
        return self.float_class.__name__


_ENTRIES: "dict[type, LayerEntry]" = {}
_DERIVED: "dict[type, type]" = {}
#: (module, class name) of optional layer types registered the first time one is seen
_LAZY = {("transformers.pytorch_utils", "Conv1D")}


def register(entry: LayerEntry) -> LayerEntry:
    """Add (or replace) a layer type; installs a quantizing property per tensor attribute."""
    bad = [r for r in entry.tensors.values() if r not in ("weight", "bias")]
    if bad:
        raise ValueError(f"LayerEntry {entry.name}: tensor roles must be 'weight' or 'bias', got {bad}")
    for attr in entry.tensors:
        if not isinstance(vars(entry.quant_class).get(attr), property):
            setattr(entry.quant_class, attr, L._tensor_property(attr))
    _ENTRIES[entry.float_class] = entry
    return entry


def register_packed(float_class: type, packed_class: type) -> None:
    """Fill the ``packed`` slot of ``float_class``'s entry (called by `lowbit.storage`)."""
    _ENTRIES[float_class].packed = packed_class


def _load_lazy(cls: type) -> None:
    for klass in cls.__mro__:
        key = (klass.__module__, klass.__name__)
        if key in _LAZY and klass not in _ENTRIES:
            _LAZY.discard(key)
            if key == ("transformers.pytorch_utils", "Conv1D"):
                _register_conv1d(klass)


def entries() -> "tuple[LayerEntry, ...]":
    """Every registered entry (optional ones once their library is imported)."""
    if "transformers.pytorch_utils" in sys.modules:
        _load_lazy(sys.modules["transformers.pytorch_utils"].Conv1D)
    return tuple(_ENTRIES.values())


def entry_for(cls: type) -> "LayerEntry | None":
    """The entry of layer class ``cls`` (a float or simulated class, or a subclass of a
    registered class that keeps its ``forward``), or None if unsupported."""
    if issubclass(cls, L.QuantLayerMixin):  # a simulated class: look up its float class
        cls = next(c for c in cls.__mro__ if not issubclass(c, L.QuantLayerMixin) and c is not object)
    if cls not in _ENTRIES:
        _load_lazy(cls)
    if cls in _ENTRIES:
        return _ENTRIES[cls]
    for base, entry in _ENTRIES.items():
        if issubclass(cls, base) and cls.forward is base.forward:
            return entry
    return None


def quant_class_for(cls: type) -> "type | None":
    """The simulated class for layer class ``cls``, or None if unsupported.

    Subclasses of a supported layer that keep its ``forward`` are supported too (a simulated
    subclass of the user's class is made once and cached); ones that override it are not.
    """
    if isinstance(cls, type) and issubclass(cls, L.QuantLayerMixin):
        return None
    entry = entry_for(cls)
    if entry is None:
        return None
    if cls is entry.float_class:
        return entry.quant_class
    if cls not in _DERIVED:
        _DERIVED[cls] = type(f"Quant{cls.__name__}", (entry.quant_class, cls), {"__module__": L.__name__})
    return _DERIVED[cls]


def is_supported(module: nn.Module) -> bool:
    """Whether ``module`` (float or simulated) is of a supported layer type."""
    return entry_for(getattr(module, "lowbit_float_class", type(module))) is not None


def layer_types(*, role: "str | None" = None, chunked: "bool | None" = None, qat: "bool | None" = None,
                calibrated: "bool | None" = None, attribute: "str | None" = None,
                opt_in: bool = False) -> "tuple[type, ...]":
    """The float classes of the entries that have every asked property (entries under their own
    config key, such as normalization layers, only with ``opt_in=True``).

    >>> [c.__name__ for c in layer_types(chunked=True)]
    ['Linear', 'Conv1d', 'Conv2d', 'ConvTranspose2d']
    """
    out = []
    for e in entries():
        if e.config_key is not None and not opt_in:
            continue
        if ((role is None or role in e.roles) and (chunked is None or e.chunked == chunked)
                and (qat is None or e.qat == qat) and (calibrated is None or e.calibrated == calibrated)
                and (attribute is None or attribute in e.tensors)):
            out.append(e.float_class)
    return tuple(out)


def weight_format(module: nn.Module, fmt: "NumberFormat | str") -> NumberFormat:
    """The format ``module``'s weight-role tensors take under ``fmt``. A block format whose spec
    asks for blocks along each output's reduction (``_r``) gets the rows that are this layer's
    reduction (the entry's ``weight_blocks``: a conv weight's I/groups × kernel, ``_r``; a
    transposed conv's input channels of its group × kernel, ``_rt<groups>``; transformers'
    Conv1D, ``_rt1``). Every other format comes back unchanged: a bare block spec keeps its
    blocks along the weight's last axis, so weight-only simulation equals the model whose
    weights were replaced by ``fmt.quantize(weight)``; ``_a<axis>`` and ``_rt<g>`` are kept.

    >>> str(weight_format(nn.ConvTranspose2d(8, 6, 3, groups=2), "mxfp8_e4m3fn_r"))
    'mxfp8_e4m3fn_rt2'
    >>> str(weight_format(nn.Conv2d(64, 32, 3), "mxfp8_e4m3fn_r")), str(weight_format(nn.Conv2d(64, 32, 3), "nvfp4"))
    ('mxfp8_e4m3fn_r', 'nvfp4')
    >>> str(weight_format(nn.Conv2d(64, 32, 3), "block16_e2m1fn_scale_e4m3fn_a1"))  # the user's axis stays
    'block16_e2m1fn_scale_e4m3fn_a1'
    """
    fmt = parse_format(fmt)
    layout = getattr(fmt, "layout", None)
    if layout is None or layout.kind != "rows" or getattr(fmt, "axis", -1) != -1:
        return fmt
    entry = entry_for(getattr(module, "lowbit_float_class", type(module)))
    if entry is None or entry.weight_blocks is None:
        return fmt
    return dataclasses.replace(fmt, layout=entry.weight_blocks(module))  # type: ignore[type-var]


def _conv_rows(module: nn.Module) -> BlockLayout:
    """A conv weight [O, I/groups, *kernel]: each output channel's whole reduction."""
    return BlockLayout.rows()


def _conv_transpose_rows(module: nn.Module) -> BlockLayout:
    """A transposed-conv weight [I, O/groups, *kernel] (or transformers' Conv1D [in, out]): each
    output channel's reduction."""
    return BlockLayout.transposed_rows(int(getattr(module, "groups", 1)))


_WB = {"weight": "weight", "bias": "bias"}
register(LayerEntry(nn.Linear, L.QuantLinear, _WB, chunked=True, quire=True, qat=True))
register(LayerEntry(nn.Conv1d, L.QuantConv1d, _WB, chunked=True, quire=True, qat=True, weight_blocks=_conv_rows))
register(LayerEntry(nn.Conv2d, L.QuantConv2d, _WB, chunked=True, quire=True, qat=True, weight_blocks=_conv_rows))
register(LayerEntry(nn.Conv3d, L.QuantConv3d, _WB, qat=True, weight_blocks=_conv_rows))
# ConvTranspose weights are [in, out / groups, ...]: "channel" keeps meaning axis 0 (as stored);
# block formats run along each output channel's reduction (input channels of its group x kernel)
register(LayerEntry(nn.ConvTranspose1d, L.QuantConvTranspose1d, _WB, weight_blocks=_conv_transpose_rows))
register(LayerEntry(nn.ConvTranspose2d, L.QuantConvTranspose2d, _WB, chunked=True, quire=True,
                    weight_blocks=_conv_transpose_rows))
register(LayerEntry(nn.ConvTranspose3d, L.QuantConvTranspose3d, _WB, weight_blocks=_conv_transpose_rows))
register(LayerEntry(nn.Embedding, L.QuantEmbedding, {"weight": "weight"}, roles=("weight", "output", "grad"),
                    calibrated=False))
register(LayerEntry(
    nn.MultiheadAttention, L.QuantMultiheadAttention,
    {"in_proj_weight": "weight", "q_proj_weight": "weight", "k_proj_weight": "weight", "v_proj_weight": "weight",
     "in_proj_bias": "bias", "bias_k": "bias", "bias_v": "bias"},
    calibrated=False, escaped={"out_proj": ("input", "output", "grad")},
))

register(LayerEntry(nn.LayerNorm, L.QuantLayerNorm, _WB, calibrated=False, config_key="norm"))
register(LayerEntry(nn.RMSNorm, L.QuantRMSNorm, {"weight": "weight"}, calibrated=False, config_key="norm"))

#: layers with a fused eval fast path that skips their children's forwards (activation roles
#: inside them would not run): `quantize_` makes them take the ordinary path when needed
FAST_PATH_LAYERS: "tuple[type, ...]" = (nn.TransformerEncoderLayer,)
#: containers that turn their input into a nested tensor for that fast path (``use_nested_tensor``):
#: `quantize_` turns it off while activation roles inside need the ordinary path
NESTED_TENSOR_LAYERS: "tuple[type, ...]" = (nn.TransformerEncoder,)


def _register_conv1d(conv1d: type) -> None:
    qcls = type("QuantConv1D", (L.QuantLayerMixin, conv1d),
                {"forward": L.generic_forward, "__module__": L.__name__,
                 "__doc__": "Simulated transformers ``Conv1D`` (weight ``[in, out]``)."})
    # its weight [in, out] reduces over axis 0: block formats take the transposed rows (w.T)
    register(LayerEntry(conv1d, qcls, _WB, channel_axis=1, weight_blocks=_conv_transpose_rows))


def __getattr__(name: str) -> Any:
    # the tables older code imported, computed from the entries
    if name == "QUANT_CLASSES":
        return {e.float_class: e.quant_class for e in entries()}
    if name == "SUPPORTED_LAYERS":
        return tuple(e.float_class for e in entries())
    if name == "INAPPLICABLE_ROLES":
        return {e.float_class: tuple(r for r in _ALL_ROLES if r not in e.roles) for e in entries()
                if len(e.roles) < len(_ALL_ROLES)}
    if name == "CHUNKED_ACCUMULATION":
        return layer_types(chunked=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
