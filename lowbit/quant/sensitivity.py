"""Per-layer sensitivity to weight formats: quantize one layer at a time and measure the effect.

`sensitivity_scan` walks the model's quantizable layers (the layer types of
`lowbit.simulate.registry` that have a ``weight`` — the layers `lowbit.quantize_` simulates) and,
for every candidate weight format,
simulates *only that layer's weight* in the format (``quantize_`` with a config naming just that
layer), evaluates the model, and undoes it (``dequantize_``). Weight-only simulation never writes
the weights, so the model comes back exactly: same classes, same state dict, bit for bit.

Three kinds of metric, each reported with an *additive* ``drop`` that `lowbit.quant.mixed.allocate`
sums over layers to predict the effect of a whole per-layer plan (the usual independence proxy of
mixed-precision search: the effects of quantizing different layers are assumed to add up):

==============  ======================================  ==========================  ===============
metric          ``value`` with one layer quantized      ``drop`` (additive)         plan prediction
==============  ======================================  ==========================  ===============
callable        ``metric(model)``, higher is better     baseline − value            baseline − Σ drop
``"sqnr"``      output SQNR vs the float model, dB      noise power / signal power  −10·log10(Σ drop)
``"kl"``        KL(softmax float ‖ softmax quantized)   value                       Σ drop
==============  ======================================  ==========================  ===============

For SQNR the additive quantity is the noise power (independent errors add their powers), not the
dB value. ``"sqnr"`` and ``"kl"`` need ``data`` (a tensor of inputs, or an iterable of batches whose
first element is the input); the float model's outputs on it are the reference.

>>> import torch, lowbit as lb
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> report = sensitivity_scan(model, ["posit4_es1", "posit8_es1"], "sqnr", data=torch.randn(64, 8))
>>> [(e.layer, e.label, e.bits) for e in report.entries]
[('0', 'posit4_es1', 4.0), ('0', 'posit8_es1', 8.0), ('2', 'posit4_es1', 4.0), ('2', 'posit8_es1', 8.0)]
>>> four, eight = report.candidates("0")            # SQNR in dB: more bits, less noise
>>> eight.value > four.value > 0, eight.drop < four.drop, type(model[0]).__name__
(True, True, 'Linear')
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from lowbit.formats import NumberFormat
from lowbit.quant.config import RoleConfig, module_matches
from lowbit.quant.quantize import dequantize_, quantize_, tensor_formats
from lowbit.simulate.layers import QuantLayerMixin
from lowbit.simulate.registry import entry_for, layer_types, weight_format

__all__ = [
    "METRICS",
    "Candidate",
    "LayerInfo",
    "SensitivityEntry",
    "SensitivityReport",
    "sensitivity_scan",
    "measure_config",
    "quantizable_layers",
    "layer_pattern",
    "storage_bits",
]

#: Built-in data metrics (``metric=`` strings); a callable ``metric(model) -> float`` is the other kind.
METRICS = ("sqnr", "kl")
#: Label of the "full precision" candidate (``None``): the weight stays in its own dtype.
FULL = "full"


# ------------------------------------------------------------------ names and layers
def layer_pattern(name: str) -> str:
    """The `quantize_` layer pattern that matches exactly the module called ``name``.

    Patterns are `fnmatch` patterns, so ``[``, ``*`` and ``?`` in a name are escaped as one-character
    classes, and a name starting with ``type:`` (a class pattern) gets its first letter bracketed.

    >>> layer_pattern("features.0"), layer_pattern("blocks[1]*"), layer_pattern("type:x")
    ('features.0', 'blocks[[]1][*]', '[t]ype:x')
    """
    escaped = re.sub(r"([*?\[])", r"[\1]", name)
    return "[t]" + escaped[1:] if escaped.startswith("type:") else escaped


def quantizable_layers(model: nn.Module) -> "dict[str, nn.Module]":
    """``{name: module}`` for the layers whose weight `quantize_` can simulate, in model order.

    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 2))
    >>> list(quantizable_layers(model))
    ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = list(model.named_modules())
    out: dict[str, nn.Module] = {}
    for name, module in modules:
        entry = entry_for(getattr(module, "lowbit_float_class", type(module)))
        if entry is None or entry.config_key is not None:
            continue  # (a container root is not a layer; a supported root is, as for quantize_)
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            out[name] = module
    return out


def storage_bits(fmt: "NumberFormat | str | None", weight: torch.Tensor, *, scaling: Any = None,
                 granularity: Any = None, layer: "nn.Module | None" = None) -> int:
    """Exact storage, in bits, of ``weight`` held in ``fmt`` (None: in its own dtype), as `lowbit.save`
    stores it under a weight role with this ``scaling`` and ``granularity``.

    The one formula is `lowbit.schemes.Scheme.storage_bits` of the role's scheme: element codes (``numel · fmt.bits``) plus what the format fits to the tensor: a block format's
    shared scales (``scale_bits`` per block along the last axis), a codebook's levels, a binary or
    ternary scale (each at the size of the tensor `encode_tensor` returns; per channel or group,
    one set per granule, as `encode_channels` returns them), and ``scaling="absmax"``'s float32 scale
    per tensor / channel / group. Power-of-two scales (``posit8_es2_s-3``, ``"histogram"``,
    ``"amax"``) are part of the spec and cost nothing per tensor. ``layer``: the layer holding
    ``weight``: a block spec with ``_r`` runs along that layer's reduction
    (`lowbit.simulate.registry.weight_format`: a conv weight's blocks cover each output channel's
    I/groups · kernel values); a bare block spec along the weight's last axis.

    >>> w = torch.zeros(4, 64)
    >>> storage_bits("posit5_es1", w), storage_bits("mxfp4_e2m1fn", w), storage_bits(None, w)
    (1280, 1088, 8192)
    >>> storage_bits("nvfp4", w)   # 256 E2M1 codes + 16 E4M3 block scales + one FP32 tensor scale
    1184
    >>> storage_bits("int5", w, scaling="absmax", granularity="channel")  # + 4 float32 scales
    1408
    >>> storage_bits("codebook2", w, granularity={"kind": "group", "axis": 1, "group_size": 32})  # 8 x 4 levels
    1536
    >>> conv = torch.nn.Conv2d(64, 4, 1)                          # 4 x 64 weights, blocks of 32 per output channel
    >>> storage_bits("mxfp4_e2m1fn_r", conv.weight, layer=conv), storage_bits("mxfp4_e2m1fn", conv.weight, layer=conv)
    (1088, 3072)
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if fmt is None:
        return weight.numel() * weight.element_size() * 8
    from lowbit.schemes import Scheme

    if layer is not None:
        fmt = weight_format(layer, fmt)
    return Scheme.from_role(fmt, scaling=scaling, granularity=granularity).storage_bits(weight)


# ------------------------------------------------------------------ candidates
_ROLE_DEFAULTS = {"rounding": "nearest_even", "scaling": None, "every": None, "history": 16, "granularity": None}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate weight format: a label, the config value for the ``weight`` role, its RoleConfig.

    ``weight`` is what goes into ``config["layers"][name]["weight"]``: the canonical spec string,
    or a dict when options (rounding, scaling …) differ from the defaults; None = full precision.

    >>> Candidate.parse({"format": "fp8_e4m3fn", "scaling": "histogram"}).label
    'e4m3fn/scaling=histogram'
    >>> Candidate.parse("posit5_es1").weight, Candidate.parse(None).label
    ('posit5_es1', 'full')
    """

    label: str
    weight: "str | dict[str, Any] | None"
    role: "RoleConfig | None"

    @classmethod
    def parse(cls, value: Any, where: str = "candidate") -> "Candidate":
        """From a spec string, a NumberFormat, a RoleConfig dict / object, a Candidate, or None.

        A dict may carry a ``"label"``: the name of the option in reports and plans, shared by
        per-layer variants of one choice (``{"format": "fixed5_f3", "label": "fixed5"}`` on one
        layer, ``fixed5_f4`` on another), so that a plan using it everywhere counts as uniform.
        """
        if isinstance(value, Candidate):
            return value
        if value is None:
            return cls(FULL, None, None)
        label = None
        if isinstance(value, Mapping) and "label" in value:
            label = value["label"]
            if not isinstance(label, str) or not label:
                raise ValueError(f"{where}['label'] must be a non-empty string, got {label!r}")
            value = {k: v for k, v in value.items() if k != "label"}
        role = RoleConfig.parse(value, where)
        assert role is not None  # only None parses to None
        options = {k: v for k, v in role.to_dict().items() if k != "format" and v != _ROLE_DEFAULTS[k]}
        spec = str(role.format)
        if label is None:
            label = spec + "".join(f"/{k}={v}" for k, v in options.items())
        return cls(label, {"format": spec, **options} if options else spec, role)


def _candidate_lists(layers: "dict[str, nn.Module]", candidates: Any) -> "dict[str, list[Candidate]]":
    """Per scanned layer, its candidates (see `sensitivity_scan` for the accepted forms)."""
    def parse_list(values: Any, where: str) -> "list[Candidate]":
        if isinstance(values, (str, NumberFormat, RoleConfig, Mapping)) or values is None:
            raise TypeError(f"{where} must be a list of candidate formats (spec strings, role dicts or None), "
                            f"got a single {type(values).__name__}")
        out: list[Candidate] = []
        for i, v in enumerate(values):
            c = Candidate.parse(v, f"{where}[{i}]")
            same = [o for o in out if o.label == c.label]
            if same and same[0].weight != c.weight:
                raise ValueError(f"{where}: label {c.label!r} names two different candidates "
                                 f"({same[0].weight!r} and {c.weight!r})")
            if not same:
                out.append(c)
        return out

    result: dict[str, list[Candidate]] = {}
    if callable(candidates) and not isinstance(candidates, (Mapping, str)):
        for name, module in layers.items():
            lst = parse_list(candidates(name, module), f"candidates({name!r}, …)")
            if lst:
                result[name] = lst
        return result
    if isinstance(candidates, Mapping):
        parsed = {p: parse_list(v, f"candidates[{p!r}]") for p, v in candidates.items()}
        for p in parsed:
            if not any(module_matches(p, name, module) for name, module in layers.items()):
                raise ValueError(f"candidates pattern {p!r} matches no quantizable layer; layers: {', '.join(layers)}")
        for name in layers:
            chosen = None
            for p, lst in parsed.items():  # the last matching pattern wins, as in QuantConfig
                if module_matches(p, name, layers[name]):
                    chosen = lst
            if chosen:
                result[name] = chosen
        return result
    if isinstance(candidates, (str, NumberFormat)) or not isinstance(candidates, Iterable):
        raise TypeError("candidates must be a list of formats, a {layer pattern: list} dict or a callable "
                        f"(name, module) -> list; got {type(candidates).__name__}")
    shared = parse_list(candidates, "candidates")
    return {name: list(shared) for name in layers} if shared else {}


# ------------------------------------------------------------------ evaluation
def _batches(data: Any) -> "list[Any]":
    if isinstance(data, (torch.Tensor, Mapping)):  # one batch (a dict: keyword inputs)
        return [data]
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError("data must be a tensor of inputs or an iterable of batches (a tensor, or a tuple/list "
                        f"whose first element is the input); got {type(data).__name__}")
    return list(data)


def _forward(model: nn.Module, batch: Any, forward: Any = None, output_key: Any = None) -> torch.Tensor:
    """The compared output of one batch (`lowbit.quant.calibration.call_model`, `select_output`)."""
    from lowbit.quant.calibration import call_model, select_output

    return select_output(call_model(model, batch, forward), output_key).detach().to(torch.float64)


@contextlib.contextmanager
def _training_flags_kept(model: nn.Module) -> Iterator[None]:
    """Every module's ``training`` flag comes back as it was."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    with _training_flags_kept(model), torch.no_grad():
        model.eval()
        yield


class _Evaluator:
    """Evaluates the (possibly simulated) model with a callable metric or against float outputs."""

    def __init__(self, model: nn.Module, metric: Any, data: Any, forward: Any = None, output_key: Any = None):
        self.model = model
        self.forward, self.output_key = forward, output_key
        if isinstance(metric, str):
            if metric not in METRICS:
                raise ValueError(f"metric={metric!r}; allowed: a callable metric(model) -> float (higher is "
                                 f"better) or one of {', '.join(repr(m) for m in METRICS)} with data=")
            if data is None:
                raise ValueError(f"metric={metric!r} compares outputs with the float model's: pass data= "
                                 "(a tensor of inputs or an iterable of batches)")
            self.kind, self.name, self.higher_is_better = metric, metric, metric == "sqnr"
            self.batches = _batches(data)
            if not self.batches:
                raise ValueError("data= holds no batch")
            with _eval_mode(model):
                self.reference = [_forward(model, b, forward, output_key) for b in self.batches]
            self.baseline = math.inf if metric == "sqnr" else 0.0
        elif callable(metric):
            if data is not None or forward is not None or output_key is not None:
                raise ValueError("data=, forward= and output_key= are used with metric='sqnr' or 'kl' only; "
                                 "a callable metric(model) brings its own data")
            self.kind, self.higher_is_better = "metric", True
            self.name = getattr(metric, "__name__", type(metric).__name__)
            self.metric = metric
            self.baseline = self._call()
        else:
            raise TypeError(f"metric must be a callable metric(model) -> float or one of {', '.join(METRICS)}; "
                            f"got {type(metric).__name__}")

    def _call(self) -> float:
        value = self.metric(self.model)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric(model) must return a number, got {type(value).__name__}") from None
        if math.isnan(value):
            raise ValueError("metric(model) returned NaN")
        return value

    def evaluate(self) -> "tuple[float, float]":
        """(value, additive drop) of the model as it is now."""
        if self.kind == "metric":
            value = self._call()
            return value, self.baseline - value
        with _eval_mode(self.model):
            outputs = [_forward(self.model, b, self.forward, self.output_key) for b in self.batches]
        if self.kind == "sqnr":
            signal = sum(float((r * r).sum()) for r in self.reference)
            noise = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, self.reference))
            if math.isnan(noise):
                raise ValueError("the simulated model's outputs are not finite (NaN)")
            ratio = noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
            return sqnr_db(ratio), ratio
        total, rows = 0.0, 0
        for o, r in zip(outputs, self.reference):
            p_log = torch.log_softmax(r, dim=-1)
            q_log = torch.log_softmax(o, dim=-1)
            kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1)
            total += float(kl.sum())
            rows += kl.numel()
        value = max(total / max(rows, 1), 0.0)  # tiny negative sums are rounding noise
        if math.isnan(value):
            raise ValueError("the simulated model's outputs are not finite (NaN)")
        return value, value

    def measure(self, config: Any) -> "tuple[float, float]":
        """(value, drop) with ``config`` simulated; the model is left as it was."""
        try:
            quantize_(self.model, config, on_unsupported="ignore")
            return self.evaluate()
        finally:
            dequantize_(self.model)


def sqnr_db(noise_ratio: float) -> float:
    """SQNR in dB from the noise-to-signal power ratio (inf for 0).

    >>> sqnr_db(0.01), sqnr_db(0.0)
    (20.0, inf)
    """
    if noise_ratio <= 0:
        return math.inf
    if math.isinf(noise_ratio):
        return -math.inf
    return -10.0 * math.log10(noise_ratio)


def predict_value(kind: str, baseline: float, total_drop: float) -> float:
    """The metric a plan is predicted to reach from its summed drop (see the module table).

    >>> predict_value("metric", 0.98, 0.03), predict_value("sqnr", math.inf, 0.001), predict_value("kl", 0.0, 0.2)
    (0.95, 30.0, 0.2)
    """
    if kind == "sqnr":
        return sqnr_db(total_drop)
    if kind == "kl":
        return total_drop
    if kind == "metric":
        return baseline - total_drop
    raise ValueError(f"kind={kind!r}; allowed: 'metric', 'sqnr', 'kl'")


def _check_float_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, QuantLayerMixin) for m in model.modules()):
        raise ValueError("model is already quantized with lowbit.quantize_: pass the float model "
                         "(lowbit.dequantize_(model) first)")


def _single_layer_config(name: str, weight: Any) -> "dict[str, Any]":
    # the root module as the only layer: quantize_ does not match patterns against the root's
    # empty name, so its formats go in the default roles
    return {"weight": weight} if name == "" else {"layers": {layer_pattern(name): {"weight": weight}}}


def measure_config(model: nn.Module, config: Any, metric: Any, *, data: Any = None, forward: Any = None,
                   output_key: Any = None) -> float:
    """The metric of ``model`` with ``config`` simulated (`quantize_`), then the model is restored.

    ``metric``: a callable ``metric(model) -> float`` or ``"sqnr"`` / ``"kl"`` with ``data``
    (compared with the float model's outputs, see the module docstring); ``forward`` and
    ``output_key`` as in `sensitivity_scan`.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> measure_config(model, {"weight": "fp32"}, "sqnr", data=torch.ones(2, 4))
    inf
    """
    _check_float_model(model)
    evaluator = _Evaluator(model, metric, data, forward, output_key)
    return evaluator.measure(config)[0]


# ------------------------------------------------------------------ the report
@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer of the scanned model.

    ``types``: its class and base class names (to match ``type:`` patterns); ``full_bits``: bits
    per weight of its dtype; ``scanned``: whether the scan tried candidates on it.
    """

    name: str
    types: "tuple[str, ...]"
    shape: "tuple[int, ...]"
    full_bits: int
    scanned: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def full_storage_bits(self) -> int:
        return self.numel * self.full_bits

    def to_dict(self) -> "dict[str, Any]":
        return {"name": self.name, "types": list(self.types), "shape": list(self.shape),
                "full_bits": self.full_bits, "scanned": self.scanned}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "LayerInfo":
        return cls(str(d["name"]), tuple(d["types"]), tuple(int(s) for s in d["shape"]), int(d["full_bits"]),
                   bool(d["scanned"]))


@dataclasses.dataclass(frozen=True)
class SensitivityEntry:
    """One (layer, candidate) result of a scan.

    ``value``: the metric with only this layer's weight in this format; ``drop``: its additive
    loss (module docstring); ``storage_bits``: exact bits of the layer's weight in the format;
    ``weight_error``: ‖q(w) − w‖² / ‖w‖², a data-free measure of the rounding error.
    """

    layer: str
    label: str
    weight: "str | dict[str, Any] | None"
    value: float
    drop: float
    numel: int
    storage_bits: int
    weight_error: float

    @property
    def bits(self) -> float:
        """Bits per weight (storage_bits / numel)."""
        return self.storage_bits / self.numel if self.numel else 0.0

    @property
    def bytes(self) -> float:
        return self.storage_bits / 8

    def to_dict(self) -> "dict[str, Any]":
        return {"layer": self.layer, "label": self.label, "weight": self.weight, "value": self.value,
                "drop": self.drop, "numel": self.numel, "storage_bits": self.storage_bits,
                "weight_error": self.weight_error, "bits": self.bits}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "SensitivityEntry":
        return cls(str(d["layer"]), str(d["label"]), d["weight"], float(d["value"]), float(d["drop"]),
                   int(d["numel"]), int(d["storage_bits"]), float(d.get("weight_error", math.nan)))


@dataclasses.dataclass(frozen=True)
class SensitivityReport:
    """The result of `sensitivity_scan`: every (layer, candidate) entry, the layers, the baseline.

    ``kind``: ``"metric"`` (a callable, higher is better), ``"sqnr"`` or ``"kl"``; ``metric``: its
    display name; ``baseline``: the float model's metric (inf for SQNR, 0 for KL). ``layers``
    lists *every* quantizable layer of the model — the ones not scanned too, which the allocator
    counts at full precision.
    """

    kind: str
    metric: str
    higher_is_better: bool
    baseline: float
    layers: "tuple[LayerInfo, ...]"
    entries: "tuple[SensitivityEntry, ...]"

    def __post_init__(self) -> None:
        if self.kind not in ("metric",) + METRICS:
            raise ValueError(f"kind={self.kind!r}; allowed: 'metric', 'sqnr', 'kl'")
        names = [info.name for info in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("layers: duplicate layer names")
        seen: set[tuple[str, str]] = set()
        for e in self.entries:
            if e.layer not in names:
                raise ValueError(f"entry for layer {e.layer!r} which is not in layers")
            if (e.layer, e.label) in seen:
                raise ValueError(f"duplicate entry ({e.layer!r}, {e.label!r})")
            if math.isnan(e.drop) or e.storage_bits < 0:
                raise ValueError(f"entry ({e.layer!r}, {e.label!r}): drop must not be NaN and storage_bits >= 0")
            seen.add((e.layer, e.label))

    # -------------------------------------------------------------- views
    def layer(self, name: str) -> LayerInfo:
        """The `LayerInfo` of layer ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer {name!r}; layers: {', '.join(i.name for i in self.layers)}")

    def candidates(self, layer: str) -> "list[SensitivityEntry]":
        """The entries of one layer, in scan order."""
        self.layer(layer)
        return [e for e in self.entries if e.layer == layer]

    @property
    def scanned(self) -> "list[str]":
        return [i.name for i in self.layers if i.scanned]

    def predict(self, total_drop: float) -> float:
        """The metric predicted for a plan whose drops sum to ``total_drop``."""
        return predict_value(self.kind, self.baseline, total_drop)

    def rows(self) -> "list[dict[str, Any]]":
        """One JSON-able dict per entry (for a table or a plot)."""
        return [e.to_dict() for e in self.entries]

    def __str__(self) -> str:
        lines = [f"sensitivity ({self.metric}; baseline {self.baseline:.6g}; "
                 f"{'higher' if self.higher_is_better else 'lower'} is better)",
                 f"{'layer':<20} {'format':<28} {'bits':>6} {'value':>11} {'drop':>11}"]
        for e in self.entries:
            lines.append(f"{e.layer:<20} {e.label:<28} {e.bits:>6.3g} {e.value:>11.5g} {e.drop:>11.4g}")
        return "\n".join(lines)

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> "dict[str, Any]":
        return {"kind": self.kind, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "baseline": self.baseline, "layers": [i.to_dict() for i in self.layers],
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "SensitivityReport":
        return cls(str(d["kind"]), str(d["metric"]), bool(d["higher_is_better"]), float(d["baseline"]),
                   tuple(LayerInfo.from_dict(i) for i in d["layers"]),
                   tuple(SensitivityEntry.from_dict(e) for e in d["entries"]))

    def to_json(self, **kwargs: Any) -> str:
        """JSON text (inf/NaN written as ``Infinity``/``NaN``, as Python's json module does)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "SensitivityReport":
        return cls.from_dict(json.loads(text))


# ------------------------------------------------------------------ the scan
def _class_names(module: nn.Module) -> "tuple[str, ...]":
    cls = getattr(module, "lowbit_float_class", type(module))
    return tuple(c.__name__ for c in cls.__mro__ if c not in (object, nn.Module))


def _weight_error(model: nn.Module, name: str, weight: torch.Tensor, cand: Candidate) -> float:
    """‖q(w) − w‖² / ‖w‖² with the format (scale folded in) the simulated layer uses."""
    if cand.role is None:
        return 0.0
    fmt = tensor_formats(model).get(f"{name}.weight" if name else "weight")
    if fmt is None:
        return math.nan
    generator = torch.Generator().manual_seed(0) if cand.role.rounding == "stochastic" else None
    w = weight.detach()
    q = fmt.quantize(w, cand.role.rounding, generator).to(torch.float64)
    w64 = w.to(torch.float64)
    signal = float((w64 * w64).sum())
    noise = float(((q - w64) ** 2).sum())
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def sensitivity_scan(model: nn.Module, candidates: Any, metric: Any, *, layers: "Sequence[str] | None" = None,
                     data: Any = None, forward: Any = None, output_key: Any = None) -> SensitivityReport:
    """Quantize one layer's weight at a time to each candidate format and measure the metric.

    ``candidates``: a list of weight formats for every layer — spec strings (``"posit5_es1"``),
    role dicts (``{"format": "e3m2fn", "scaling": "histogram"}``) or None (full precision) — or
    ``{layer pattern: list}`` (the last matching pattern wins), or a callable
    ``(name, module) -> list`` (e.g. fixed-point fraction bits chosen from each weight's range).
    ``metric``: a callable ``metric(model) -> float``, higher is better (e.g. accuracy on
    calibration data), or ``"sqnr"`` / ``"kl"`` with ``data`` (see the module docstring).
    ``layers``: names or fnmatch patterns of the layers to scan (default: every quantizable one).
    ``forward(model, batch)`` runs one batch of ``data`` (default: ``model(**batch)`` for a dict
    batch, ``model(batch[0])`` for a tuple/list, else ``model(batch)`` — the same rule as
    `lowbit.calibrate_config`); ``output_key`` picks the compared tensor from a dict / ModelOutput
    / tuple output (a key, an index or a callable; default: the first tensor, e.g. ``logits``).

    The model must be a float model (not already quantized); it is restored exactly (classes,
    parameters, buffers, training flags), also when the metric raises. The metric should not
    change the model (e.g. update BatchNorm statistics in training mode): put it in eval mode.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> r = sensitivity_scan(model, [None, "int8"], lambda m: 1.0)
    >>> [(e.label, e.drop, e.storage_bits) for e in r.entries]
    [('full', 0.0, 256), ('int8', 0.0, 64)]
    """
    _check_float_model(model)
    all_layers = quantizable_layers(model)
    if not all_layers:
        raise ValueError("model has no quantizable layer (" + ", ".join(t.__name__ for t in layer_types(attribute="weight"))
                         + ")")
    if layers is None:
        selected = dict(all_layers)
    else:
        if isinstance(layers, str):
            layers = [layers]
        for p in layers:
            if not any(module_matches(p, n, m) for n, m in all_layers.items()):
                raise ValueError(f"layers: {p!r} matches no quantizable layer; layers: {', '.join(all_layers)}")
        selected = {n: m for n, m in all_layers.items() if any(module_matches(p, n, m) for p in layers)}
    per_layer = _candidate_lists(selected, candidates)
    if not per_layer:
        raise ValueError("candidates: no candidate format for any layer")

    entries: list[SensitivityEntry] = []
    with _training_flags_kept(model):
        evaluator = _Evaluator(model, metric, data, forward, output_key)
        for name, cands in per_layer.items():
            weight = all_layers[name].weight
            for cand in cands:
                if cand.role is None:
                    value, drop = evaluator.baseline, 0.0
                    error = 0.0
                else:
                    try:
                        quantize_(model, _single_layer_config(name, cand.weight), on_unsupported="ignore")
                        error = _weight_error(model, name, weight, cand)
                        value, drop = evaluator.evaluate()
                    except ValueError as err:
                        raise ValueError(f"layer {name!r}, candidate {cand.label}: {err}") from err
                    finally:
                        dequantize_(model)
                bits = (storage_bits(None, weight) if cand.role is None else
                        storage_bits(cand.role.format, weight, scaling=cand.role.scaling,
                                     granularity=cand.role.granularity, layer=all_layers[name]))
                entries.append(SensitivityEntry(name, cand.label, cand.weight, value, drop, weight.numel(),
                                                bits, error))
    infos = tuple(LayerInfo(n, _class_names(m), tuple(m.weight.shape), m.weight.element_size() * 8, n in per_layer)
                  for n, m in all_layers.items())
    return SensitivityReport(evaluator.kind, evaluator.name, evaluator.higher_is_better, evaluator.baseline,
                             infos, tuple(entries))
