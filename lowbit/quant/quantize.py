"""`quantize_`: turn a model's layers into simulated low-precision layers, in place.

>>> import torch, lowbit as lb
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> _ = lb.quantize_(model, {"weight": "posit8_es2", "exclude": ["2"]})
>>> [type(m).__name__ for m in model]
['QuantLinear', 'ReLU', 'Linear']
>>> sorted(lb.tensor_formats(model).items())
[('0.weight', parse_format('posit8_es2'))]
>>> _ = lb.dequantize_(model); type(model[0]).__name__
'Linear'
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Any

import torch
from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.quant.observers import CalibrationError
from lowbit.formats import NumberFormat
from lowbit.quant.config import QUIRE, ROLES, LayerConfig, RoleConfig, as_config, module_matches
from lowbit.quant.granularity import Granularity
from lowbit.simulate.layers import QuantLayerMixin, RoleQuantizer
from lowbit.simulate.registry import (
    FAST_PATH_LAYERS,
    NESTED_TENSOR_LAYERS,
    LayerEntry,
    entries,
    entry_for,
    quant_class_for,
    weight_format,
)

__all__ = ["quantize_", "dequantize_", "tensor_formats", "tensor_scales", "QuantizationReport", "quantization_report"]

_ON_UNSUPPORTED = ("warn", "ignore", "raise")


@dataclasses.dataclass
class QuantizationReport:
    """What `quantize_` did: layer names quantized, excluded, and left alone as unsupported.

    ``escaped``: ``{layer name: roles}`` configured for a quantized layer that cannot run there
    (its parent reads its weights and never calls its forward, e.g. ``out_proj`` of a
    MultiheadAttention: input / output / grad); those roles are dropped and warned about.
    """

    quantized: "dict[str, LayerConfig]" = dataclasses.field(default_factory=dict)
    excluded: "list[str]" = dataclasses.field(default_factory=list)
    unsupported: "dict[str, str]" = dataclasses.field(default_factory=dict)  # name -> class name
    escaped: "dict[str, tuple[str, ...]]" = dataclasses.field(default_factory=dict)
    # op-level (lowbit.quant.opsim): ops that ran in full precision since quantize_, {module: {op: count}};
    # products with a weight matrix outside simulated layers are also listed apart
    fp32_ops: "dict[str, dict[str, int]]" = dataclasses.field(default_factory=dict)
    escaped_weight_ops: "dict[str, dict[str, int]]" = dataclasses.field(default_factory=dict)
    ops_traced: bool = False  # whether fp32_ops / escaped_weight_ops were counted (see quantization_report)

    def __str__(self) -> str:
        escaped = f", roles escaped in {len(self.escaped)}" if self.escaped else ""
        lines = [f"quantized {len(self.quantized)} layer(s), excluded {len(self.excluded)}, "
                 f"unsupported {len(self.unsupported)}{escaped}"]
        lines += [f"  unsupported: {n} ({c})" for n, c in self.unsupported.items()]
        lines += [f"  escaped: {n} ({', '.join(r)}: not applied)" for n, r in self.escaped.items()]
        lines += [f"  full precision ops: {n}: " + ", ".join(f"{op}×{c}" for op, c in ops.items())
                  for n, ops in self.fp32_ops.items()]
        return "\n".join(lines)


def _float_class(module: nn.Module) -> type:
    return getattr(module, "lowbit_float_class", type(module))


def _role_seed(seed: "int | None", name: str, role: str) -> "int | None":
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{name}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _own_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def quantize_(model: nn.Module, config: Any, *, on_unsupported: str = "warn") -> nn.Module:
    """Simulate ``config``'s formats in ``model``'s supported layers, in place; returns ``model``.

    ``config``: a `QuantConfig`, its plain-dict form or a spec string (weights only).
    Supported layers: the entries of `lowbit.simulate.registry`. Other leaf modules with
    parameters are reported (``model.lowbit_report``) and, for ``on_unsupported="warn"``, named
    in a `LowbitWarning` when any holds a matrix (≥ 2-d) weight; ``"raise"`` raises instead.
    Calling it again re-configures from the float layers; `dequantize_` undoes it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if on_unsupported not in _ON_UNSUPPORTED:
        raise ValueError(f"on_unsupported={on_unsupported!r}; allowed: {', '.join(_ON_UNSUPPORTED)}")
    cfg = as_config(config)
    plan = resolve_layers(model, cfg)
    for name, (module, _, layer) in plan.layers.items():  # check everything before changing anything
        for role in ROLES:
            rc = getattr(layer, role)
            if rc is not None and rc.scaling == "static" and rc.range is None:
                raise CalibrationError(f"layer {name!r} role {role!r}: scaling='static' has no calibrated range; "
                                       f"run cfg = lowbit.calibrate_config(model, config, data) first, or give "
                                       f"'range': [lo, hi]")
            entry = entry_for(type(module))
            for attr in [a for a, r in entry.tensors.items() if r == role] if entry is not None else ():
                param = _float_tensor(module, attr)
                if rc is not None and role == "weight" and isinstance(param, torch.Tensor):
                    try:  # a block axis / layout that does not fit the weight: say so now, not mid-forward
                        _check_blocks(weight_format(module, rc.format), param.shape)
                    except ValueError as err:
                        raise ValueError(f"layer {name!r} role {role!r}: {err}") from None
                if rc is not None and rc.granularity is not None and isinstance(param, torch.Tensor):
                    try:  # a channel axis or group size that does not fit the tensor: say so now, not mid-forward
                        _granularity(rc.granularity, entry, role).stat_shape(param.shape)
                    except ValueError as err:
                        raise ValueError(f"layer {name!r} role {role!r}: {err}") from None
    dequantize_(model)
    report = QuantizationReport(unsupported=dict(plan.unsupported), excluded=list(plan.excluded))
    for name, (module, qcls, layer) in plan.layers.items():
        _convert(module, qcls, layer, name, cfg.seed)
        report.quantized[name] = layer
    _drop_escaped_roles(model, report)
    _ordinary_path_where_needed(model)
    _report_unsupported(model, report, on_unsupported)
    model.lowbit_report = report  # type: ignore[assignment]
    model.lowbit_config = cfg  # type: ignore[assignment]
    from lowbit.quant.opsim import install_op_simulation

    install_op_simulation(model, cfg, only_if_configured=True)
    return model


@dataclasses.dataclass
class ResolvedLayers:
    """Which layer gets which `LayerConfig` under a config (what `quantize_` would do)."""

    layers: "dict[str, tuple[nn.Module, type, LayerConfig]]" = dataclasses.field(default_factory=dict)
    unsupported: "dict[str, str]" = dataclasses.field(default_factory=dict)
    excluded: "list[str]" = dataclasses.field(default_factory=list)


def resolve_layers(model: nn.Module, config: Any) -> ResolvedLayers:
    """Match ``config``'s patterns against ``model`` without changing it.

    ``layers``: ``{name: (module, simulated class, LayerConfig)}`` for every supported layer
    that gets a non-identity config. A pattern that matches no module raises ValueError.
    """
    cfg = as_config(config)
    modules = list(model.named_modules())
    for pattern in [p for p, _ in cfg.layers] + list(cfg.exclude):
        if not any(module_matches(pattern, n, m) for n, m in modules if n):
            names = [n for n, _ in modules if n]
            raise ValueError(f"layer pattern {pattern!r} matches no module of the model; "
                             f"module names: {', '.join(names[:30])}{' …' if len(names) > 30 else ''}")
    out = ResolvedLayers()
    for name, module in modules:
        qcls = quant_class_for(_float_class(module))
        if qcls is None and not name and len(modules) > 1:
            continue  # a container root (a supported root with children, e.g. parametrized, is kept)
        if qcls is None:
            if _own_params(module) and not list(module.children()):
                out.unsupported[name or "<model>"] = type(module).__name__
            continue
        if any(module_matches(p, name, module) for p in cfg.exclude):
            out.excluded.append(name)
            continue
        if entry_for(_float_class(module)).config_key is not None:  # type: ignore[union-attr]
            layer = cfg.norm  # opt-in roles under their own key (plain roles and overrides: not)
        else:
            layer = cfg.default
            for pattern, override in cfg.layers:
                if module_matches(pattern, name, module):
                    layer = override
        if layer.is_identity:
            continue
        out.layers[name] = (module, qcls, layer)
    return out


def _float_tensor(module: nn.Module, attr: str) -> Any:
    if isinstance(module, QuantLayerMixin):
        return module.lowbit_float_tensor(attr)
    return getattr(module, attr, None)


def _granularity(g: "Granularity | None", entry: LayerEntry, role: str) -> "Granularity | None":
    """A weight's ``"channel"`` granularity on axis 0 means the layer's channel axis (transformers'
    Conv1D keeps its output channels on axis 1)."""
    if g is not None and role == "weight" and g.kind == "channel" and g.axis == 0 and entry.channel_axis != 0:
        return Granularity.channel(entry.channel_axis)
    return g


def _check_blocks(fmt: NumberFormat, shape: "torch.Size") -> None:
    """ValueError when a block format's axis or layout does not fit a weight of ``shape``."""
    scale_shape = getattr(fmt, "scale_shape", None)
    if scale_shape is not None:
        scale_shape(shape)


def _drop_escaped_roles(model: nn.Module, report: QuantizationReport) -> None:
    """Roles of a child layer whose forward its parent never calls cannot run: drop, report, warn."""
    for parent_name, parent in model.named_modules():
        entry = entry_for(_float_class(parent))
        for child_name, roles in (entry.escaped.items() if entry is not None else ()):
            child = getattr(parent, child_name, None)
            if not isinstance(child, QuantLayerMixin):
                continue
            gone = tuple(r for r in roles if r in child.lowbit_roles)
            if gone:
                for r in gone:
                    del child.lowbit_roles[r]
                report.escaped[f"{parent_name}.{child_name}" if parent_name else child_name] = gone
    if report.escaped:
        warnings.warn("quantize_ cannot apply these roles (the parent layer reads the weights and never calls "
                      "the layer's forward): " + "; ".join(f"{n}: {', '.join(r)}" for n, r in report.escaped.items()),
                      LowbitWarning, stacklevel=3)


def _ordinary_path(module: nn.Module, args: Any) -> None:
    """A no-op forward pre-hook: its presence turns off torch's fused fast path of the layer."""
    return None


def _ordinary_path_where_needed(model: nn.Module) -> None:
    """A fused fast path (TransformerEncoderLayer in eval) skips the forwards of the layers inside
    it and with them their activation roles: give such layers the ordinary path."""
    for module in model.modules():
        if not isinstance(module, FAST_PATH_LAYERS + NESTED_TENSOR_LAYERS):
            continue
        active = any(isinstance(m, QuantLayerMixin) and any(r not in ("weight", "bias") for r in m.lowbit_roles)
                     for m in module.modules())
        if not active:
            continue
        if isinstance(module, NESTED_TENSOR_LAYERS) and "_lowbit_use_nested_tensor" not in module.__dict__:
            module._lowbit_use_nested_tensor = module.use_nested_tensor  # type: ignore[assignment]
            module.use_nested_tensor = False  # type: ignore[assignment]
        if isinstance(module, FAST_PATH_LAYERS) and _ordinary_path not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_ordinary_path)


def _report_unsupported(model: nn.Module, report: QuantizationReport, on_unsupported: str) -> None:
    matrices = {n: c for n, c in report.unsupported.items()
                if any(p.dim() >= 2 for p in (model if n == "<model>" else model.get_submodule(n)).parameters(recurse=False))}
    if not matrices or on_unsupported == "ignore":
        return
    message = ("quantize_ left these layers in full precision (unsupported type): "
               + ", ".join(f"{n} ({c})" for n, c in matrices.items())
               + "; supported: " + ", ".join(e.name for e in entries()))
    if on_unsupported == "raise":
        raise ValueError(message)
    warnings.warn(message, LowbitWarning, stacklevel=3)


def _convert(module: nn.Module, qcls: type, layer: LayerConfig, name: str, seed: "int | None") -> None:
    float_cls = type(module)
    entry = entry_for(float_cls)
    assert entry is not None
    if layer.accumulate is not None and layer.accumulate_every is not None and not entry.chunked:
        raise ValueError(f"layer {name!r} ({float_cls.__name__}): accumulate_every is supported for "
                         + ", ".join(e.name for e in entries() if e.chunked))
    roles: dict[str, RoleQuantizer] = {}
    tensor_roles: dict[str, RoleQuantizer] = {}
    for role in ROLES:
        rc: "RoleConfig | None" = getattr(layer, role)
        # roles that do not apply (an Embedding's input is indices) are skipped, not errors: the
        # model-wide default usually names an input format for every layer
        if rc is None or role not in entry.roles:
            continue

        def make(key: str, rc: RoleConfig = rc, role: str = role) -> RoleQuantizer:
            # a block spec with _r on a weight: the layer's reduction rows (the registry decides)
            fmt = weight_format(module, rc.format) if role == "weight" else rc.format
            return RoleQuantizer(fmt, rc.rounding, rc.scaling, rc.every, rc.history,
                                 _role_seed(seed, name, key), _granularity(rc.granularity, entry, role), rc.range)

        # one quantizer per tensor (a scale tracker or generator of its own); the role's name is
        # the one its first tensor attribute (weight, bias) uses
        attrs = [a for a, r in entry.tensors.items() if r == role]
        for attr in attrs:
            tensor_roles[attr] = make(role if attr == role or attr == attrs[0] else f"{role}/{attr}")
        roles[role] = tensor_roles[attrs[0]] if attrs else make(role)
    module.lowbit_float_class = float_cls  # type: ignore[attr-defined]
    module.__class__ = qcls
    module.lowbit_roles = roles  # type: ignore[assignment]
    module.lowbit_tensor_roles = tensor_roles  # type: ignore[assignment]
    module.lowbit_layer_config = layer  # type: ignore[assignment]
    module._lowbit_weight_cache = None  # type: ignore[assignment]
    acc = None
    if layer.accumulate == QUIRE:
        if not entry.quire:
            raise ValueError(f"layer {name!r} ({float_cls.__name__}): accumulate='quire' is supported for "
                             + ", ".join(e.name for e in entries() if e.quire))
        acc = (QUIRE, layer.accumulate_backward)
    elif layer.accumulate is not None:
        acc = (layer.accumulate, layer.accumulate_every or _reduction_length(module))
    module.lowbit_accumulate = acc  # type: ignore[assignment]


def _reduction_length(module: nn.Module) -> int:
    """Without accumulate_every, the whole dot product is one chunk: only the output is rounded."""
    w = getattr(module, "weight")
    return int(w[0].numel()) if w.dim() > 1 else 1


_ATTRS = ("lowbit_float_class", "lowbit_roles", "lowbit_tensor_roles", "lowbit_layer_config", "_lowbit_weight_cache",
          "lowbit_accumulate")


def dequantize_(model: nn.Module) -> nn.Module:
    """Undo `quantize_`: every simulated layer gets its float class back (weights untouched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if isinstance(module, QuantLayerMixin):
            module.__class__ = module.lowbit_float_class
            for attr in _ATTRS:
                module.__dict__.pop(attr, None)
        for key in [k for k, h in module._forward_pre_hooks.items() if h is _ordinary_path]:
            del module._forward_pre_hooks[key]
        if "_lowbit_use_nested_tensor" in module.__dict__:
            module.use_nested_tensor = module.__dict__.pop("_lowbit_use_nested_tensor")
    from lowbit.quant.opsim import remove_op_simulation
    remove_op_simulation(model)
    for attr in ("lowbit_report", "lowbit_config"):
        model.__dict__.pop(attr, None)
    return model


def tensor_formats(model: nn.Module) -> "dict[str, NumberFormat | None]":
    """``{state_dict key: format}`` for the weights (and biases) a quantized model simulates.

    Power-of-two scales in force are folded in (``posit8_es2_s-3``). Keys not listed are stored
    in full precision by `lowbit.save`.
    """
    out: dict[str, NumberFormat | None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayerMixin):
            continue
        prefix = f"{name}." if name else ""
        for attr, q in _tensor_roles(module).items():
            t = module.lowbit_float_tensor(attr)
            if t is None:
                continue
            out[prefix + attr] = q.current_format(t if q.tracker is not None and q.tracker.calls == 0 else None)
    return out


def tensor_scales(model: nn.Module) -> "dict[str, torch.Tensor]":
    """``{state_dict key: float scale}`` for weights (and biases) simulated with ``scaling='absmax'``.

    Each scale broadcasts to its tensor (per channel: keepdim shape; per group: expanded along
    the grouped axis); the simulated tensor is ``scale · fmt.quantize(w / scale)``. A zero scale
    (an all-zero granule) is reported as 1, which quantizes that granule to the same zeros.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayerMixin):
            continue
        prefix = f"{name}." if name else ""
        for attr, q in _tensor_roles(module).items():
            t = module.lowbit_float_tensor(attr)
            if t is None or not q.absmax:
                continue
            scale = q.scale(t)
            gran = q.granularity
            if gran is not None and gran.kind == "group":
                axis = gran.axis % t.dim()
                scale = scale.repeat_interleave(gran.group_size, dim=axis)
            out[prefix + attr] = torch.where(scale == 0, torch.ones_like(scale), scale)
    return out


def _tensor_roles(module: QuantLayerMixin) -> "dict[str, RoleQuantizer]":
    """``{tensor attribute: quantizer}`` (from the roles alone for layers quantized before
    ``lowbit_tensor_roles`` existed, e.g. restored by `unpack_`)."""
    roles = module.__dict__.get("lowbit_tensor_roles")
    if roles is None:
        roles = {r: q for r, q in module.lowbit_roles.items() if r in ("weight", "bias")}
    return roles


def quantization_report(model: nn.Module) -> QuantizationReport:
    """The report of the last `quantize_` on ``model``.

    ``fp32_ops`` / ``escaped_weight_ops`` count the ops that ran in full precision: live when the
    config has ``attention`` / ``matmul`` roles (the op mode is on then), else counted inside
    ``with lowbit.quant.opsim.trace_ops(model): ...`` (``ops_traced`` says whether either ran).
    """
    report = getattr(model, "lowbit_report", None)
    if report is None:
        raise ValueError("model has not been quantized with lowbit.quantize_")
    from lowbit.quant.opsim import warn_escaped_ops
    warn_escaped_ops(report)
    return report

