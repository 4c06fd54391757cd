"""`pack_` / `unpack_`: walk a model and swap its supported layers for packed ones, and back;
`packed_state_dict` and `memory_footprint` of a model holding packed layers.

The layers themselves, and what a packed forward computes, are in `lowbit.storage.packed_layers`.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from lowbit.formats._float64 import check_float_dtype
from lowbit.formats.base import NumberFormat
from lowbit.formats.spec import parse_format
from lowbit.quant.config import pattern_matches
from lowbit.simulate.layers import QuantLayerMixin
from lowbit.simulate.registry import entries, entry_for, weight_format
from lowbit.storage.decode import _DATA
from lowbit.storage.packed import PackedTensor, pack_for_role
from lowbit.storage.packed_layers import PackedLayerMixin, _packed_class_for

__all__ = ["pack_", "unpack_", "packed_state_dict", "memory_footprint"]


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    cls = _float_class_of(module)
    return pattern_matches(pattern, name, [c.__name__ for c in cls.__mro__])


def _float_class_of(module: nn.Module) -> type:
    if isinstance(module, PackedLayerMixin):
        return module._float_class  # type: ignore[attr-defined,no-any-return]
    return getattr(module, "lowbit_float_class", type(module))


def _packable(module: nn.Module) -> bool:
    if isinstance(module, PackedLayerMixin):
        return False
    entry = entry_for(_float_class_of(module))
    return entry is not None and entry.packed is not None


def _packable_names() -> str:
    return ", ".join(e.name for e in entries() if e.packed is not None)


def _is_glob(pattern: str) -> bool:
    return pattern.startswith("type:") or any(c in pattern for c in "*?[")


def pack_(
    model: nn.Module,
    formats: Any = None,
    *,
    cache: bool = False,
    compute_dtype: "torch.dtype | None" = None,
) -> nn.Module:
    """Replace supported layers' weights by packed codes, in place; returns ``model``.

    ``formats``:

    - None: the layers simulated by `lowbit.quantize_` are packed in their weight formats
      (``lowbit.tensor_formats``); their other roles stay simulated (see the module docstring);
    - a spec string or `NumberFormat`: every supported layer (float or simulated);
    - ``{pattern: spec or None}``: module names (fnmatch patterns, ``"type:Conv2d"``, or a
      state-dict key ``"fc.weight"``; a container's name covers the layers inside it, as in
      `lowbit.quantize_`); the last matching entry wins, None leaves a layer as it
      is; simulated layers no entry matches keep their own weight format;
    - a packed state dict from `lowbit.load_packed` (``{key: PackedTensor or tensor}``): the
      layers it holds ``PackedTensor`` weights for are packed with exactly those codes (nothing
      is re-encoded), then every entry is loaded with ``load_state_dict`` (strict; a model built
      on the meta device takes the loaded tensors as they are, so no float weight is ever made).

    Supported layers: the `lowbit.simulate.registry` entries with a packed class, and their
    subclasses that keep the base ``forward`` (as for `lowbit.quantize_`). ``cache=True`` keeps each decoded
    weight after its first forward. ``compute_dtype`` (default: the weight's dtype) is the dtype
    weights decode to; the bias is cast to it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if compute_dtype is not None:
        compute_dtype = check_float_dtype(compute_dtype, "compute_dtype")
    state: "Mapping[str, Any] | None" = None
    if isinstance(formats, Mapping) and any(isinstance(v, torch.Tensor) for v in formats.values()):
        state = formats
        formats = _formats_of_state(state)
    plan = _plan(model, formats)
    if state is not None:
        _check_state_fits(model, state)  # before any layer changes: a failure leaves the model as it was
    made: dict[int, PackedTensor] = {}  # tied weights stay tied: one PackedTensor per Parameter
    for name, module, spec in plan:
        _pack_module(name, module, spec, made, cache, compute_dtype)
    if state is not None:
        # a skeleton built on the meta device takes the loaded tensors themselves (assign)
        meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        model.load_state_dict(dict(state), strict=True, assign=meta)
    return model


def _check_state_fits(model: nn.Module, state: Mapping[str, Any]) -> None:
    """ValueError (as strict ``load_state_dict`` would raise it later) when a packed state dict's keys
    or shapes do not fit ``model``; checked only while no layer of ``model`` is packed yet."""
    if any(isinstance(m, PackedLayerMixin) for m in model.modules()):
        return
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} in the state dict, {tuple(own[k].shape)} in the model"
             for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [text for text, found in ((f"missing keys {missing}", missing),
                                         (f"unexpected keys {unexpected}", unexpected),
                                         (f"shape mismatch: {'; '.join(wrong)}", wrong)) if found]
    if problems:
        raise ValueError("the packed state dict does not fit the model (nothing was changed): " + "; ".join(problems))


def _formats_of_state(state: Mapping[str, Any]) -> "dict[str, PackedTensor]":
    out: dict[str, PackedTensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be str, got {key!r}")
        if isinstance(value, PackedTensor):
            if key != "weight" and not key.endswith(".weight"):
                raise ValueError(f"packed state dict: {key!r} holds a PackedTensor; only layer weights can be packed")
            out[key] = value
        elif not isinstance(value, torch.Tensor):
            raise TypeError(
                f"packed state dict value {key!r} must be a tensor or PackedTensor, got {type(value).__name__}"
            )
    return out


def _plan(model: nn.Module, formats: Any) -> "list[tuple[str, nn.Module, Any]]":
    """(name, module, spec) for every layer to pack; spec: (format, rounding, generator, scale) or a PackedTensor."""
    modules = list(model.named_modules())
    by_name = dict(modules)
    entries: "list[tuple[str, Any]]" = []
    default: Any = None
    if formats is None:
        pass
    elif isinstance(formats, (str, NumberFormat)):
        default = parse_format(formats)
    elif isinstance(formats, Mapping):
        for key, spec in formats.items():
            if not isinstance(key, str):
                raise TypeError(f"formats keys must be module names or patterns (str), got {key!r}")
            pattern = key
            if key not in by_name and (key == "weight" or key.endswith(".weight")) and key[:-7].rstrip(".") in by_name:
                pattern = key[:-7].rstrip(".")
            if spec is not None and not isinstance(spec, PackedTensor):
                try:
                    spec = parse_format(spec)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"formats[{key!r}]: {err}") from None
            matched = [n for n, m in modules if _matches(pattern, n, m)]
            if not matched:
                names = [n for n, _ in modules if n]
                raise ValueError(
                    f"formats names {key!r}, which matches no module of the model; module names: "
                    f"{', '.join(names[:30])}{' …' if len(names) > 30 else ''}"
                )
            if not _is_glob(pattern):
                module = by_name[pattern]
                if isinstance(module, PackedLayerMixin) and spec is not None:
                    raise ValueError(f"layer {pattern!r} is already packed ({module.format}); unpack_ it first")
                container = any(_packable(m) for m in module.modules())  # a name covers the layers inside it
                if not _packable(module) and spec is not None and (isinstance(spec, PackedTensor) or not container):
                    raise ValueError(
                        f"layer {pattern!r} ({type(module).__name__}) cannot be packed; supported: "
                        f"{_packable_names()} (and subclasses that keep their forward)"
                    )
            elif isinstance(spec, PackedTensor):
                raise ValueError(f"formats[{key!r}] is a PackedTensor; name one layer exactly, not a pattern")
            entries.append((pattern, spec))
    else:
        raise TypeError(
            "formats must be None, a spec string (e.g. 'posit8_es2'), a {layer pattern: spec or None} dict "
            f"or a packed state dict from lowbit.load_packed; got {type(formats).__name__}"
        )

    plan = []
    for name, module in modules:
        if not _packable(module):
            continue
        role = getattr(module, "lowbit_roles", {}).get("weight") if isinstance(module, QuantLayerMixin) else None
        chosen: Any = default
        explicit = False
        for pattern, spec in entries:
            if (name == pattern) if isinstance(spec, PackedTensor) else _matches(pattern, name, module):
                chosen, explicit = spec, True
        if chosen is None and not explicit and role is not None:
            first = role.tracker is not None and role.tracker.calls == 0  # as lowbit.tensor_formats does
            chosen = role.current_format(module._parameters["weight"] if first else None)
        if chosen is None:
            continue
        if isinstance(chosen, PackedTensor):
            plan.append((name, module, chosen))
        else:
            chosen = weight_format(module, chosen)  # a block spec with _r: the layer's reduction rows
            rounding = role.rounding if role is not None else "nearest_even"
            generator = role.generator if role is not None else None
            packed = None
            if role is not None and chosen == role.format:
                # float scales or per-channel fitted levels: pack exactly what the simulation computes
                packed = pack_for_role(role, module._parameters["weight"])
            if packed is not None:
                plan.append((name, module, packed))
            else:
                plan.append((name, module, (chosen, rounding, generator, None)))
    if formats is None and not plan:
        raise TypeError(
            f"pack_() got a {type(model).__name__} with no lowbit weight formats (not quantized with "
            "lowbit.quantize_); pass formats= (one spec such as 'posit8_es2', or {layer: spec})"
        )
    return plan


def _pack_module(
    name: str,
    module: nn.Module,
    spec: Any,
    made: "dict[int, PackedTensor]",
    cache: bool,
    compute_dtype: "torch.dtype | None",
) -> None:
    from torch.nn.utils import parametrize

    label = name or "<model>"
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(
            f"layer {label!r}: its weight is parametrized (lowbit.prepare_qat?); bake it in first "
            "(lowbit.quant.convert) and pack the result"
        )
    weight = module._parameters.get("weight")
    if weight is None:
        raise ValueError(f"layer {label!r} has no weight parameter to pack")
    if isinstance(spec, PackedTensor):
        packed = spec
        if packed.shape != weight.shape:
            raise ValueError(
                f"layer {label!r}: packed weight of shape {tuple(packed.shape)} does not fit the layer's "
                f"weight of shape {tuple(weight.shape)}"
            )
    elif id(weight) in made and made[id(weight)].format == spec[0] and spec[3] is None:
        packed = made[id(weight)]
    else:
        fmt, rounding, generator, scale = spec
        if weight.is_meta:
            raise ValueError(f"layer {label!r}: its weight is on the meta device; there is nothing to encode")
        try:
            packed = PackedTensor.from_tensor(weight.detach(), fmt, rounding, generator=generator)
        except (ValueError, TypeError) as err:
            raise type(err)(f"layer {label!r}: cannot pack its weight in {fmt}: {err}") from None
        made[id(weight)] = packed
    roles = getattr(module, "lowbit_roles", None) if isinstance(module, QuantLayerMixin) else None
    prior = (type(module), roles, bool(weight.requires_grad))
    float_cls = _float_class_of(module)
    device = weight.device if not weight.is_meta else None
    del module._parameters["weight"]
    for attr in ("_lowbit_weight_cache",):  # the simulated layer's quantized copy: not needed any more
        module.__dict__.pop(attr, None)
    module.__class__ = _packed_class_for(float_cls)
    assert isinstance(module, PackedLayerMixin)
    module.lowbit_roles = {r: q for r, q in (roles or {}).items() if r != "weight"}
    if not isinstance(roles, dict):
        module.lowbit_accumulate = None
    module._packed_prior = prior
    module.cache = bool(cache)
    module._packed_table = None
    module._packed_decoded = None
    module._set_packed(packed, device)
    module.compute_dtype = compute_dtype or packed.dtype
    bias = module._parameters.get("bias")
    if compute_dtype is not None and bias is not None and bias.dtype != compute_dtype:
        bias.data = bias.data.to(compute_dtype)


def unpack_(model: nn.Module) -> nn.Module:
    """Undo `pack_`, in place: every packed layer gets back the class it had (float, or simulated
    with the roles it had) and a float weight Parameter holding the decoded values, in the
    layer's ``compute_dtype`` (the original weight's dtype unless `pack_` or a ``.to(dtype)``
    changed it, as it changed the bias). Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    restored: dict[int, nn.Parameter] = {}
    for module in list(model.modules()):
        if not isinstance(module, PackedLayerMixin):
            continue
        prior_cls, roles, requires_grad = module._packed_prior
        data = module._buffers[_DATA]
        key = data.data_ptr()
        if key in restored and restored[key].shape == module._packed_shape:
            param = restored[key]
        else:
            param = nn.Parameter(module.packed_weight.decode(module.compute_dtype).to(data.device),
                                 requires_grad=requires_grad)
            restored[key] = param
        for k in module._packed_keys():
            del module._buffers[k]
        for attr in ("_packed_format", "_packed_shape", "_packed_dtype", "_packed_axis", "_packed_group_size", "_packed_params",
                     "_packed_decoded", "_packed_table", "_packed_prior", "cache", "compute_dtype"):
            module.__dict__.pop(attr, None)
        module.__class__ = prior_cls
        module.register_parameter("weight", param)
        if roles is not None:
            module.lowbit_roles = roles  # type: ignore[assignment]
            module._lowbit_weight_cache = None  # type: ignore[assignment]
        else:
            for attr in ("lowbit_roles", "lowbit_accumulate"):
                module.__dict__.pop(attr, None)
    return model


# ------------------------------------------------------------------------------ state and memory
def packed_state_dict(model: nn.Module) -> "collections.OrderedDict[str, Any]":
    """``model.state_dict()`` with each packed layer's buffers folded back into one
    ``"<layer>.weight": PackedTensor`` entry (what `lowbit.save` stores and `lowbit.load_packed`
    gives back)."""
    packed = {name: m for name, m in model.named_modules() if isinstance(m, PackedLayerMixin)}
    out: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
    for key, value in model.state_dict().items():
        owner, _, local = key.rpartition(".")
        if owner in packed:
            layer = packed[owner]
            wkey = f"{owner}.weight" if owner else "weight"
            if wkey not in out:
                out[wkey] = layer.packed_weight
            if local == "_extra_state" or local in layer._packed_keys():
                continue
        out[key] = value
    return out


def memory_footprint(model: nn.Module) -> "dict[str, int]":
    """Resident bytes of a model's tensors, each storage counted once.

    ``packed``: packed weights (codes + side parameters + scales); ``cache``: decoded weights
    held by packed layers' caches; ``float``: every other parameter and buffer (float weights,
    biases, norms); ``total``: their sum.
    """
    seen: set[tuple[int, int]] = set()

    def size(t: torch.Tensor) -> int:
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() == 0 or key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    packed = cache = other = 0
    for module in model.modules():
        if isinstance(module, PackedLayerMixin):
            packed += sum(size(module._buffers[k]) for k in module._packed_keys())
            if module._packed_decoded is not None:
                cache += size(module._packed_decoded)
            keys = set(module._packed_keys())
            tensors: Iterator[torch.Tensor] = (b for k, b in module._buffers.items() if b is not None and k not in keys)
        else:
            tensors = (b for b in module._buffers.values() if b is not None)
        other += sum(size(t) for t in tensors)
        other += sum(size(p) for p in module._parameters.values() if p is not None)
    return {"packed": packed, "cache": cache, "float": other, "total": packed + cache + other}
