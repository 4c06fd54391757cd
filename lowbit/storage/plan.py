"""Storage plans for bare state dicts: which tensor gets which format (``lowbit pack``).

A model file without its code is only a state dict, so layers are known by name alone: the
module of ``"features.0.weight"`` is ``"features.0"``. A plan is either

- a `lowbit.QuantConfig`-style dict (only the ``weight`` and ``bias`` roles matter for storage;
  activation roles are simulation-only and ignored)::

      {"weight": "posit8_es2", "layers": {"classifier": {"weight": "e4m3fn"}}, "exclude": ["stem.*"]}

  The default weight format goes to every floating ``<module>.weight`` of 2 or more dimensions
  (Linear, Conv, Embedding weights; 1-d norm scales stay as they are); a ``layers`` entry
  (fnmatch pattern on the module name, the last match wins) applies whatever the tensor's
  dimension; ``exclude`` keeps modules in full precision. A role's ``scaling`` is honoured as
  `quantize_` simulates it (power-of-two scales fold into the spec; ``"absmax"`` stores a float
  scale per granule, 1 for an all-zero granule). The JSON of a `lowbit.quant.Plan` (the
  mixed-precision allocator's output) is read through its ``to_config()``;
- or a flat ``{name: spec or null}``: ``name`` is a state-dict key, or a module name / fnmatch
  pattern standing for its ``.weight``.

Every pattern must match something; errors name the entry.

>>> import torch
>>> sd = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.zeros(4), "bn.weight": torch.ones(4)}
>>> packed = pack_state_dict(sd, {"weight": "int4"})
>>> {k: str(v.format) if isinstance(v, PackedTensor) else None for k, v in packed.items()}
{'fc.weight': 'int4', 'fc.bias': None, 'bn.weight': None}
>>> {k: str(f) for k, f in plan_formats(sd, {"bn": "e4m3fn", "fc.bias": "bf16"}).items()}
{'bn.weight': 'e4m3fn', 'fc.bias': 'e8m7'}
"""

from __future__ import annotations

import collections
import fnmatch
import json
import os
from typing import Any, Mapping

import torch

from lowbit.errors import LowbitError
from lowbit.formats._float64 import FLOAT_DTYPES
from lowbit.formats.base import NumberFormat
from lowbit.formats.spec import parse_format
from lowbit.quant.config import pattern_matches
from lowbit.storage._container import META_KEY
from lowbit.storage.packed import PackedTensor, pack_for_role

__all__ = ["read_state_dict", "read_plan", "plan_formats", "pack_state_dict"]

_CONFIG_KEYS = frozenset(
    {"weight", "bias", "input", "output", "grad", "layers", "exclude", "seed", "version", "rounding",
     "accumulate", "accumulate_every", "accumulate_backward"}
)


def _is_lowbit_checkpoint(path: str) -> bool:
    """Whether ``path`` is a safetensors file whose metadata carries a lowbit header."""
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except Exception:  # not safetensors at all: the plain reader says why
        return False


def read_state_dict(path: "str | os.PathLike[str]") -> "dict[str, torch.Tensor]":
    """The state dict in ``path``: a ``torch.save`` file (read with ``weights_only=True``: never
    arbitrary pickle), a plain safetensors file, or a lowbit checkpoint (its decoded values, read by
    `lowbit.load`, which verifies every checksum). Raises `LowbitError` saying what is wrong."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise LowbitError(f"{where}: {'not a regular file' if os.path.exists(where) else 'no such file'}")
    with open(where, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        try:
            obj = torch.load(where, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for foreign files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LowbitError(
                f"{where}: cannot read it as a weights-only torch state dict ({first}); save the model's "
                "state_dict() with torch.save, not the model object"
            ) from None
    elif _is_lowbit_checkpoint(where):
        # a lowbit checkpoint: its decoded values (checksums verified), to be packed again
        from lowbit.storage.checkpoint import load

        obj = load(where)
    else:
        try:
            from safetensors.torch import load_file

            obj = load_file(where)
        except Exception as err:
            raise LowbitError(
                f"{where}: not a model file (neither a torch.save state dict nor a safetensors file: {err})"
            ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise LowbitError(f"{where}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LowbitError(f"{where}: expected a state dict of tensors; entry {bad[0]!r} is not a tensor")
    return dict(obj)


def read_plan(path: "str | os.PathLike[str]") -> "dict[str, Any]":
    """The JSON object in ``path`` (a plan); `LowbitError` for a missing file or bad JSON."""
    where = os.fspath(path)
    if not os.path.isfile(where):
        what = "not a regular file" if os.path.exists(where) else "no such file"
        raise LowbitError(f"{where}: {what} (the plan)")
    try:
        with open(where, encoding="utf-8") as f:
            plan = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise LowbitError(f"{where}: the plan is not valid JSON: {err}") from None
    if not isinstance(plan, dict):
        raise LowbitError(f"{where}: the plan must be a JSON object, got {type(plan).__name__}")
    return plan


def _modules(state: Mapping[str, Any]) -> "set[str]":
    names = set()
    for key in state:
        parts = key.split(".")[:-1]
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def plan_formats(state: Mapping[str, torch.Tensor], plan: Mapping[str, Any]) -> "dict[str, Any]":
    """``{key: NumberFormat}`` (or a ready `PackedTensor` for scaled roles) for the tensors of
    ``state`` that ``plan`` quantizes (see the module docstring)."""
    if not isinstance(plan, Mapping):
        raise LowbitError(f"the plan must be a JSON object, got {type(plan).__name__}")
    if isinstance(plan.get("layers"), list) and "kind" in plan:  # a lowbit.quant.Plan
        from lowbit.quant.mixed import Plan

        try:
            plan = Plan.from_dict(plan).to_config()
        except (KeyError, TypeError, ValueError) as err:
            raise LowbitError(f"bad plan: not a valid lowbit.quant.Plan: {err}") from None
    if set(plan) & _CONFIG_KEYS:
        return _config_formats(state, plan)
    return _flat_formats(state, plan)


def _floating(state: Mapping[str, torch.Tensor], key: str) -> bool:
    v = state.get(key)
    return isinstance(v, torch.Tensor) and v.dtype in FLOAT_DTYPES


def _flat_formats(state: Mapping[str, torch.Tensor], plan: Mapping[str, Any]) -> "dict[str, NumberFormat]":
    out: dict[str, NumberFormat] = {}
    modules = _modules(state)
    for name, spec in plan.items():
        fmt = _parse_spec(spec, f"plan[{name!r}]")
        keys = [k for k in state if fnmatch.fnmatchcase(k, name)]
        if not keys:
            keys = [f"{m}.weight" for m in sorted(modules) if pattern_matches(name, m, ()) and f"{m}.weight" in state]
        if not keys:
            raise LowbitError(f"bad plan: {name!r} matches no tensor or layer (with a .weight) of the state dict")
        for key in keys:
            if fmt is None:
                out.pop(key, None)
                continue
            if not _floating(state, key):
                raise LowbitError(
                    f"bad plan: {name!r} names {key!r}, a {state[key].dtype} tensor; only float tensors take a format"
                )
            out[key] = fmt
    return out


def _config_formats(state: Mapping[str, torch.Tensor], plan: Mapping[str, Any]) -> "dict[str, Any]":
    from lowbit.quant.config import QuantConfig

    try:
        cfg = QuantConfig.from_dict(dict(plan))
    except (ValueError, TypeError) as err:
        raise LowbitError(f"bad plan: {err}") from None
    modules = _modules(state)
    for pattern in [p for p, _ in cfg.layers] + list(cfg.exclude):
        if pattern.startswith("type:"):
            raise LowbitError(f"bad plan: pattern {pattern!r}: a bare state dict has no layer types; name the layers")
        if not any(pattern_matches(pattern, m, ()) for m in modules):
            raise LowbitError(f"bad plan: layer pattern {pattern!r} matches no layer of the state dict")
    out: dict[str, Any] = {}
    for key in state:
        module, _, role = key.rpartition(".")
        if role not in ("weight", "bias") or not _floating(state, key):
            continue
        if any(pattern_matches(p, module, ()) for p in cfg.exclude):
            continue
        layer, explicit = cfg.default, False
        for pattern, override in cfg.layers:
            if pattern_matches(pattern, module, ()):
                layer, explicit = override, True
        weight = state.get(f"{module}.weight" if module else "weight")
        if not explicit and (weight is None or weight.dim() < 2):
            continue  # the default applies to Linear / Conv / Embedding layers only
        rc = getattr(layer, role)
        if rc is not None:
            out[key] = _stored(state[key], rc, key)
    return out


def _stored(t: torch.Tensor, rc: Any, key: str) -> Any:
    """The format (power-of-two scale folded in) or a scaled PackedTensor for role config ``rc``."""
    if rc.scaling is None and rc.granularity is None:
        return rc.format
    from lowbit.simulate.layers import RoleQuantizer

    q = RoleQuantizer.from_scheme(rc.scheme)
    try:
        packed = pack_for_role(q, t)
    except ValueError as err:
        raise LowbitError(f"bad plan: {key!r}: {err}") from None
    return packed if packed is not None else q.current_format(t)


def _parse_spec(spec: Any, where: str) -> "NumberFormat | None":
    if spec is None:
        return None
    try:
        return parse_format(spec)
    except (ValueError, TypeError) as err:
        raise LowbitError(f"bad plan: {where}: {err}") from None


def pack_state_dict(
    state: Mapping[str, torch.Tensor], plan: Mapping[str, Any]
) -> "collections.OrderedDict[str, torch.Tensor | PackedTensor]":
    """``state`` with the tensors ``plan`` quantizes replaced by `PackedTensor` s (in order);
    ready for `lowbit.save`."""
    formats = plan_formats(state, plan)
    out: "collections.OrderedDict[str, torch.Tensor | PackedTensor]" = collections.OrderedDict()
    for key, value in state.items():
        spec = formats.get(key)
        if spec is None:
            out[key] = value
        elif isinstance(spec, PackedTensor):
            out[key] = spec
        else:
            try:
                out[key] = PackedTensor.from_tensor(value, spec)
            except ValueError as err:
                raise LowbitError(f"cannot store {key!r} in {spec}: {err}") from None
    return out
