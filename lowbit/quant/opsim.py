"""`quantize_`'s op-level part: a config's ``attention`` / ``matmul`` keys, resolved per module.

Every module of the model gets the config's default op roles, replaced role by role by the last
matching ``layers`` entry (the same patterns as for layers: a pattern that matches a container
covers every module inside it, so ``"encoder.layer.0.*"`` selects the attention of that block);
modules matched by ``exclude`` run their ops in full precision. The ``grad`` role of a module
with op roles rounds the gradient flowing back into those ops' outputs. The mechanism is
`lowbit.simulate.ops` (semantics there and in docs/semantics.md).

>>> import torch, lowbit as lb
>>> class Attn(torch.nn.Module):
...     def forward(self, q):
...         return torch.nn.functional.scaled_dot_product_attention(q, q, q)
>>> model = torch.nn.Sequential(Attn(), Attn())
>>> _ = lb.quantize_(model, {"attention": {"probs": "e4m3fn"}, "exclude": ["1"]})
>>> _ = model(torch.randn(1, 2, 4))
>>> lb.quantization_report(model).fp32_ops
{'1': {'scaled_dot_product_attention': 1}}
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from typing import Any, Iterator

from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.quant.config import OP_KEYS, LayerConfig, QuantConfig, RoleConfig, as_config, module_matches
from lowbit.simulate.layers import RoleQuantizer
from lowbit.simulate.ops import OpPlan, OpSimulation

__all__ = ["resolve_op_plans", "install_op_simulation", "remove_op_simulation", "trace_ops", "warn_escaped_ops"]

_ATTR = "lowbit_ops"


def _seed(seed: "int | None", name: str, role: str) -> "int | None":
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{name}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _quantizer(rc: RoleConfig, seed: "int | None") -> RoleQuantizer:
    return RoleQuantizer.from_scheme(rc.scheme, seed)


def _layer_config(cfg: QuantConfig, name: str, module: nn.Module) -> "LayerConfig | None":
    if name and any(module_matches(p, name, module) for p in cfg.exclude):
        return None
    layer = cfg.default
    if name:
        for pattern, override in cfg.layers:
            if module_matches(pattern, name, module):
                layer = override
    return layer


def resolve_op_plans(model: nn.Module, config: Any) -> "dict[str, OpPlan]":
    """``{module name: OpPlan}`` for every module whose config has attention or matmul roles."""
    cfg = as_config(config)
    plans: dict[str, OpPlan] = {}
    for name, module in model.named_modules():
        layer = _layer_config(cfg, name, module)
        if layer is None:
            continue
        kinds = {}
        for kind in OP_KEYS:
            op = getattr(layer, kind)
            if op is not None and not op.is_identity:
                kinds[kind] = {r: _quantizer(rc, _seed(cfg.seed, name, f"{kind}.{r}")) for r, rc in op.roles}
        if not kinds:
            continue
        grad = None if layer.grad is None else _quantizer(layer.grad, _seed(cfg.seed, name, "ops.grad"))
        plans[name] = OpPlan(kinds.get("attention"), kinds.get("matmul"), grad)
    return plans


def install_op_simulation(model: nn.Module, config: Any, *, only_if_configured: bool = False) -> "OpSimulation | None":
    """Hook op-level simulation (and the full-precision op count) into ``model``.

    The counts go live into ``model.lowbit_report`` (``fp32_ops``, ``escaped_weight_ops``) when
    the model has one. A previous installation is removed first. ``only_if_configured``: install
    nothing (and return None) when no module has attention / matmul roles — what `quantize_`
    does, because the op mode costs time on every op (LeNet-5 at batch 1: 1.2 → 9.9 ms) and keeps
    torch's fused eval fast path of transformer layers from running.
    """
    remove_op_simulation(model)
    plans = resolve_op_plans(model, config)
    if only_if_configured and not plans:
        return None
    sim = OpSimulation(plans).install(model)
    model.__dict__[_ATTR] = sim
    report = getattr(model, "lowbit_report", None)
    if report is not None:
        report.fp32_ops = sim.fp32_ops
        report.escaped_weight_ops = sim.escaped
        report.ops_traced = True
    return sim


def remove_op_simulation(model: nn.Module) -> None:
    """Undo `install_op_simulation` (nothing to do when it was not installed)."""
    sim = model.__dict__.pop(_ATTR, None)
    if sim is not None:
        sim.remove(model)


@contextlib.contextmanager
def trace_ops(model: nn.Module) -> Iterator[Any]:
    """Count, inside the ``with`` block, the ops that run in full precision in ``model``'s forwards
    (the report's ``fp32_ops`` / ``escaped_weight_ops``); yields the report.

    For a model quantized without ``attention`` / ``matmul`` roles (then `quantize_` leaves the op
    mode off, so nothing is counted); with op roles the counts are live already.

    >>> import torch, lowbit as lb
    >>> model = lb.quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Softmax(-1)), "e4m3fn")
    >>> with trace_ops(model) as report:
    ...     _ = model(torch.randn(2, 4))
    >>> report.fp32_ops
    {'1': {'softmax': 1}}
    """
    config = getattr(model, "lowbit_config", None)
    report = getattr(model, "lowbit_report", None)
    if config is None or report is None:
        raise ValueError("model has not been quantized with lowbit.quantize_")
    live = _ATTR in model.__dict__
    if not live:
        install_op_simulation(model, config)
    try:
        yield report
    finally:
        if not live:
            remove_op_simulation(model)


def warn_escaped_ops(report: Any) -> None:
    """One `LowbitWarning` per report naming the weight products that ran outside simulated layers."""
    escaped = getattr(report, "escaped_weight_ops", None)
    if not escaped or getattr(report, "_escaped_warned", False):
        return
    report._escaped_warned = True
    listed = ", ".join(f"{n} ({', '.join(f'{op}×{c}' for op, c in ops.items())})" for n, ops in escaped.items())
    warnings.warn(f"products with a weight matrix ran in full precision outside simulated layers: {listed}; "
                  f"these modules' weights are not simulated (unsupported layer types)", LowbitWarning, stacklevel=3)
