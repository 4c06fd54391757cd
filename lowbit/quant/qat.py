"""Quantization-aware training with a learnable step size (LSQ, Esser et al., ICLR 2020).

`LSQQuantizer` computes, per granule with learnable step s,

    x̂ = s · fmt.quantize(clamp(x / s, lo, hi))

for any lowbit scalar format (integer and fixed-point grids as in the paper; posits and
minifloats with the same learnable, not necessarily power-of-two, scale). [lo, hi] is the
format's finite range (−max … max, or fmt.min … max for integer grids, 0 … max unsigned). For
a saturating format (integers, fixed point, posits, ``_sat`` minifloats) this equals
``quantize_with_scale(x, fmt, s)`` bit for bit; for a non-saturating minifloat (e4m3fn, e5m2)
the clamp keeps overflow at ±max instead of NaN/inf.

Gradients (the LSQ estimator): x gets a straight-through gradient (1 inside [lo·s, hi·s], 0
outside); s gets ∂x̂/∂s = fmt.quantize(x/s) − x/s inside and lo or hi outside, multiplied by the
gradient scale g = 1/√(n · Q_P) (n: elements per granule; ``grad_scale=`` overrides).

Initialization (``init_from=`` or the first forward): integer / fixed-point grids use LSQ's
s₀ = 2 · mean|x| / √Q_P with Q_P = fmt.max; posits and minifloats put the mean magnitude on the
format's most accurate exponent c (`lowbit.simulate.scaling.format_centre`): s₀ = mean|x| / 2^c,
with Q_P = 2^c in g. A granule whose mean |x| is 0 (an all-zero channel) takes the whole
tensor's s₀ (1 if that is 0 too), so s is never 0. The forward pass uses |s| (at least the
smallest normal float32): an optimizer step that overshoots below 0 (Adam's steps do not shrink
with g) then mirrors back instead of silencing the channel for good.

`prepare_qat` registers an `LSQQuantizer` on the weight of every selected Linear/Conv layer with
``torch.nn.utils.parametrize`` (the model keeps its classes; the state dict gains
``parametrizations.weight.original`` and the step); `convert` bakes the quantized weights in
and removes the parametrizations, so each weight becomes exactly s · fmt.quantize(w / s) with
s = `LSQQuantizer.effective_step` (= the learned step while it stays positive). An ``input``
role in the config learns one step per layer input as well (LSQ quantizes activations too): a
submodule ``lowbit_input_lsq`` applied by a forward pre-hook, initialized from the first batch;
`convert` turns it into a static-range input role of `lowbit.quantize_` with the same numbers.

>>> import torch
>>> q = LSQQuantizer("int4", init_from=torch.tensor([0.5, -1.0, 2.0]))
>>> round(float(q.step.detach()), 4)                  # 2 · mean|x| / √7
0.8819
>>> q(torch.tensor([0.5, -1.0, 2.0])).detach().tolist() == [s * float(q.step.detach()) for s in (1.0, -1.0, 2.0)]
True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from lowbit.formats import NumberFormat
from lowbit.formats.fixed_point import _UniformGrid
from lowbit.formats.rounding import Rounding, check_rounding
from lowbit.quant.config import ROLES, LayerConfig, QuantConfig, RoleConfig, as_config, module_matches
from lowbit.quant.granularity import Granularity, _scalar_format, as_granularity, format_low
from lowbit.simulate.registry import layer_types
from lowbit.simulate.scaling import format_centre

__all__ = ["LSQQuantizer", "QAT_LAYERS", "prepare_qat", "convert", "lsq_quantizers"]

_TINY = float(torch.finfo(torch.float32).tiny)
#: layer types whose weights `prepare_qat` fake-quantizes
QAT_LAYERS: "tuple[type[nn.Module], ...]" = layer_types(qat=True)


class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``g`` (exact value, unlike the detach trick)."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return s.view_as(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> "tuple[torch.Tensor, None]":
        return grad * ctx.g, None


class _LSQFunction(torch.autograd.Function):
    """x̂ = s · fmt.quantize(clamp(x / s, lo, hi)) with the LSQ gradients, written out.

    Backward: ∂x̂/∂x = 1 inside the range, 0 outside (exactly, not (1/s)·s in floating point);
    ∂x̂/∂s = fmt.quantize(v) − v inside, the clamped value (lo or hi) outside, summed over the
    elements that share the step.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, fmt: NumberFormat, lo: float, hi: float,
                rounding: str, generator: "torch.Generator | None") -> torch.Tensor:
        v = x / s
        vc = torch.clamp(v, lo, hi)
        q = fmt.quantize(vc, rounding, generator)
        inside = (v >= lo) & (v <= hi)
        ctx.save_for_backward(inside, torch.where(inside, q - v, vc))
        ctx.s_shape = s.shape
        return q * s

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> "tuple[Any, ...]":
        inside, ds = ctx.saved_tensors
        gx = torch.where(inside, grad, torch.zeros_like(grad)) if ctx.needs_input_grad[0] else None
        gs = (grad * ds).sum_to_size(ctx.s_shape) if ctx.needs_input_grad[1] else None
        return gx, gs, None, None, None, None, None


class LSQQuantizer(nn.Module):
    """Fake quantization with a learnable per-granule step size (see the module docstring).

    ``fmt``: a scalar format (``"int4"``, ``"posit8_es2"`` …); ``granularity``: per tensor
    (default), per channel or per group; ``init_from``: a tensor to initialize the step from now
    (required for channel/group granularity, since the step's shape depends on it; per tensor,
    the first forward initializes it otherwise). ``grad_scale``: override g.

    >>> q = LSQQuantizer("int8", "channel", init_from=torch.randn(4, 3))
    >>> tuple(q.step.shape)
    (4, 1)
    """

    def __init__(
        self,
        fmt: "str | NumberFormat" = "int8",
        granularity: "Granularity | str | None" = None,
        init_from: "torch.Tensor | None" = None,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        grad_scale: "float | None" = None,
    ) -> None:
        super().__init__()
        self.format = _scalar_format(fmt)
        self.granularity = as_granularity(granularity)
        self.rounding = check_rounding(rounding, generator).value
        self.generator = generator
        if grad_scale is not None and (isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float))
                                       or not grad_scale > 0):
            raise ValueError(f"grad_scale={grad_scale!r}; allowed: None (LSQ's 1/sqrt(n·Q_P)) or a number > 0")
        self.grad_scale = grad_scale
        self.lo, self.hi = format_low(self.format), float(self.format.max)
        if isinstance(self.format, _UniformGrid):
            self.qp = float(self.format.max)
            self._uniform = True
        else:
            self.qp = 2.0 ** format_centre(self.format)
            self._uniform = False
        self.register_buffer("initialized", torch.tensor(False))
        if init_from is not None:
            self.step = nn.Parameter(self.initial_step(init_from))
            self.initialized.fill_(True)
        elif self.granularity.kind == "tensor":
            self.step = nn.Parameter(torch.ones(()))
        else:
            raise ValueError(f"LSQQuantizer with granularity {self.granularity} needs init_from= (a tensor like "
                             f"the ones it will quantize) to size its per-granule step")

    def initial_step(self, x: torch.Tensor) -> torch.Tensor:
        """The initial step for ``x`` per granule (module docstring), float32, `stat_shape`."""
        a = x.detach().abs().to(torch.float32)
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        g = self.granularity
        n = a.numel() / max(1, g.num_granules(x.shape))
        mean = g.reduce(a, "sum") / n
        whole = a.mean() if a.numel() else torch.zeros(())
        factor = (2.0 / math.sqrt(self.qp)) if self._uniform else (1.0 / self.qp)
        s = mean * factor
        fallback = whole * factor
        fallback = torch.where(fallback > 0, fallback, torch.ones_like(fallback))
        return torch.where(s > 0, s, fallback).clone()

    def _g(self, x: torch.Tensor) -> float:
        if self.grad_scale is not None:
            return float(self.grad_scale)
        n = x.numel() / max(1, self.granularity.num_granules(x.shape))
        return 1.0 / math.sqrt(max(n, 1.0) * self.qp)

    def scale(self, shape: "torch.Size | tuple[int, ...]") -> torch.Tensor:
        """The effective step, broadcastable to ``shape`` (detached)."""
        return self.granularity.expand(self.effective_step(), torch.Size(shape))

    def effective_step(self) -> torch.Tensor:
        """|step|, at least the smallest normal float32: the step the forward pass uses (detached)."""
        return self.step.detach().abs().clamp_min(_TINY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module API
        if not bool(self.initialized):
            with torch.no_grad():
                self.step.copy_(self.initial_step(x).to(self.step.dtype))
                self.initialized.fill_(True)
        s = _GradScale.apply(self.step, self._g(x)).abs().clamp_min(_TINY)
        s = self.granularity.expand(s, x.shape)
        return _LSQFunction.apply(x, s, self.format, self.lo, self.hi, self.rounding, self.generator)

    def extra_repr(self) -> str:
        return f"{self.format}, {self.granularity}, rounding={self.rounding}"


# ---------------------------------------------------------------------- prepare / convert
def _layer_config(cfg: Any, name: str, module: nn.Module) -> "LayerConfig | None":
    if any(module_matches(p, name, module) for p in cfg.exclude):
        return None
    layer = cfg.default
    for pattern, override in cfg.layers:
        if module_matches(pattern, name, module):
            layer = override
    return layer


def prepare_qat(
    model: nn.Module,
    config: Any,
    granularity: "Granularity | str | None" = "channel",
    *,
    layers: "tuple[type[nn.Module], ...]" = QAT_LAYERS,
) -> nn.Module:
    """Fake-quantize the weights of ``model``'s Linear/Conv layers with learnable LSQ steps, in place.

    ``config``: what `lowbit.quantize_` accepts (a spec string = weights, a dict, a `QuantConfig`);
    only the ``weight`` role (format and rounding), ``layers`` overrides and ``exclude`` are used
    here — other roles raise ValueError (quantize activations with `lowbit.quantize_`, which
    composes with this: its layers read the parametrized weight). ``granularity`` applies to
    every weight (default: per output channel, axis 0). Returns ``model``; train it, then `convert`.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> _ = prepare_qat(model, "int4")
    >>> sorted(lsq_quantizers(model)), tuple(lsq_quantizers(model)["0"].step.shape)
    (['0'], (3, 1))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = as_config(config)
    g = as_granularity(granularity)
    modules = list(model.named_modules())
    for pattern in [p for p, _ in cfg.layers] + list(cfg.exclude):
        if not any(module_matches(pattern, n, m) for n, m in modules if n):
            raise ValueError(f"layer pattern {pattern!r} matches no module of the model")
    for name, module in modules:
        if not isinstance(module, layers):
            continue
        layer = _layer_config(cfg, name, module)
        if layer is None:
            continue
        other = [r for r in ROLES if r not in ("weight", "input") and getattr(layer, r) is not None]
        if other or layer.accumulate is not None:
            raise ValueError(f"prepare_qat learns weight and input steps only; layer {name!r} also configures "
                             f"{other + (['accumulate'] if layer.accumulate is not None else [])} — "
                             f"simulate those with lowbit.quantize_ (it composes with prepare_qat)")
        for role in ("weight", "input"):
            rc = getattr(layer, role)
            if rc is not None and rc.scaling is not None:
                raise ValueError(f"layer {name!r}: {role} scaling={rc.scaling!r} conflicts with LSQ's learnable step; "
                                 f"leave scaling None for prepare_qat")
            if rc is not None and role in getattr(module, "lowbit_roles", {}):
                raise ValueError(f"layer {name!r} already quantizes its {role} (lowbit.quantize_); "
                                 f"call prepare_qat on a model without a {role} role")
        if layer.input is not None:
            if hasattr(module, INPUT_LSQ):
                raise ValueError(f"layer {name!r} already learns an input step (prepare_qat twice?)")
            q_in = LSQQuantizer(layer.input.format, None, rounding=layer.input.rounding)
            q_in.to(module.weight.device)
            module.add_module(INPUT_LSQ, q_in)
            module._lowbit_input_lsq_hook = module.register_forward_pre_hook(_quantize_input)  # type: ignore[assignment]
        rc = layer.weight
        if rc is None:
            continue
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"layer {name!r}: its weight is already parametrized (prepare_qat twice?)")
        quantizer = LSQQuantizer(rc.format, g, init_from=module.weight, rounding=rc.rounding)
        quantizer.to(module.weight.device)
        parametrize.register_parametrization(module, "weight", quantizer)
    return model


#: attribute name of a layer's input LSQQuantizer (a submodule: its step is in the state dict)
INPUT_LSQ = "lowbit_input_lsq"


def _quantize_input(module: nn.Module, args: "tuple[Any, ...]") -> "tuple[Any, ...] | None":
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].dtype.is_floating_point:
        return None
    return (getattr(module, INPUT_LSQ)(args[0]), *args[1:])


def lsq_quantizers(model: nn.Module, role: str = "weight") -> "dict[str, LSQQuantizer]":
    """``{layer name: its LSQQuantizer}`` for ``role`` ``"weight"`` or ``"input"`` in a model
    prepared by `prepare_qat`."""
    if role not in ("weight", "input"):
        raise ValueError(f"role={role!r}; allowed: 'weight', 'input'")
    out: dict[str, LSQQuantizer] = {}
    for name, module in model.named_modules():
        if role == "input":
            q = getattr(module, INPUT_LSQ, None)
            if isinstance(q, LSQQuantizer):
                out[name] = q
            continue
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:  # type: ignore[index,union-attr]
                if isinstance(p, LSQQuantizer):
                    out[name] = p
    return out


def convert(model: nn.Module, return_scales: bool = False) -> Any:
    """Bake every LSQ-quantized weight in (w ← s · fmt.quantize(w / s)) and remove the parametrizations;
    fix every learned input step as a static range.

    In place; the weight keeps its Parameter object. A layer with a learned input step s becomes a
    `lowbit.quantize_` layer whose input role is ``scaling="static"`` with range (−max·s, max·s)
    (0 … max·s for unsigned integers) — the same numbers the LSQ forward produced, bit for bit;
    its other simulated roles are kept, its weight role dropped (the weight is baked). Returns
    ``model``, or ``(model, scales)`` with ``scales = {layer: (format, step tensor, granularity)}``
    (input steps under ``"<layer>:input"``) when ``return_scales``.
    """
    scales = {}
    for name, q in lsq_quantizers(model).items():
        module = model.get_submodule(name) if name else model
        scales[name] = (q.format, q.effective_step().clone(), q.granularity)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for name, q in lsq_quantizers(model, "input").items():
        module = model.get_submodule(name) if name else model
        if not bool(q.initialized):
            raise ValueError(f"layer {name!r}: its input step was never initialized (no forward pass ran "
                             f"since prepare_qat); train or run a batch before convert")
        s = float(q.effective_step())
        scales[f"{name}:input"] = (q.format, q.effective_step().clone(), q.granularity)
        module._lowbit_input_lsq_hook.remove()  # type: ignore[union-attr]
        del module._lowbit_input_lsq_hook
        delattr(module, INPUT_LSQ)
        signed = q.lo < 0
        lo = -float(q.format.max) * s if signed else 0.0
        role = RoleConfig(q.format, q.rounding, "static", range=(lo, float(q.format.max) * s))
        previous = getattr(module, "lowbit_layer_config", None)
        layer = dataclasses.replace(previous, input=role, weight=None) if previous is not None else LayerConfig(input=role)
        from lowbit.quant.quantize import quantize_

        quantize_(module, QuantConfig(layer), on_unsupported="ignore")
    return (model, scales) if return_scales else model
