"""Simulated low-precision layers: Linear, Conv1d/2d, ConvTranspose2d and Embedding.

`quantize_` turns a layer into its simulated twin by switching the module's class to a subclass
(``QuantLinear`` for ``nn.Linear`` …): parameters, buffers, hooks and state-dict names stay the
same objects, so an optimizer built before still trains them, and `dequantize_` switches back.

The forward of a simulated layer, per tensor role (each None = full precision)::

    x = q_input(x);  w = q_weight(weight);  b = q_bias(bias)          straight-through
    y = op(x, w, b)            accumulated in FP32 (or rounded to `accumulate` every K products)
    y = q_output(y), whose backward rounds the incoming gradient to `grad`

Weight-only simulation is exactly ``op(x, fmt.quantize(weight), bias)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import LearnedFormat, NumberFormat
from lowbit.simulate.fake_quant import fake_quantize
from lowbit.simulate.scaling import ScaleTracker

__all__ = ["RoleQuantizer", "StaticRange", "QuantLayerMixin", "QUANT_CLASSES", "SUPPORTED_LAYERS", "quant_class_for"]


class RoleQuantizer:
    """Quantizes one tensor role: format, rounding, optional power-of-two scale, seeded generator.

    Not an ``nn.Module`` on purpose: it holds no parameters or buffers, so a quantized model's
    ``state_dict`` keeps exactly the original keys.
    """

    def __init__(self, fmt: NumberFormat, rounding: str = "nearest_even", scaling: "str | int | None" = None,
                 every: "int | None" = None, history: int = 16, seed: "int | None" = None,
                 granularity: "Any" = None, range: "tuple[float, float] | None" = None):
        self.format, self.rounding = fmt, rounding
        self.absmax = scaling == "absmax"
        self.granularity = granularity
        self.static: "StaticRange | None" = None
        if scaling == "static":
            if range is None:
                raise ValueError(f"scaling='static' for {fmt} needs a calibrated range (lo, hi); "
                                 f"fill it with lowbit.calibrate_config(model, config, data)")
            self.static = StaticRange(fmt, *range)
        self.tracker = (None if scaling is None or self.absmax or self.static is not None
                        else ScaleTracker(fmt, scaling, every, history))
        #: a fitted format (binary, ternary, codebook) fitted per channel or group (of ``granularity``)
        self.per_channel_fit = (scaling is None and granularity is not None and granularity.kind != "tensor"
                                and isinstance(fmt, LearnedFormat))
        self.generator: "torch.Generator | None" = None
        if rounding == "stochastic" and seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def fit_granules(self) -> "dict[str, Any]":
        """``axis`` / ``group_size`` keywords of `LearnedFormat.encode_channels` for this role."""
        g = self.granularity
        return {"axis": g.axis, "group_size": g.group_size if g.kind == "group" else None}

    def current_format(self, x: "torch.Tensor | None" = None) -> NumberFormat:
        """The format with the scale in force (updated from ``x`` when given)."""
        if self.tracker is None:
            return self.format
        if x is not None:
            self.tracker.update(x)
        return self.tracker.format()

    def scale(self, x: torch.Tensor) -> "torch.Tensor | None":
        """The per-granule float scale for ``x`` under ``scaling='absmax'`` (None otherwise)."""
        if not self.absmax:
            return None
        from lowbit.quant.granularity import granule_amax

        return granule_amax(x.detach(), self.granularity).to(torch.float64 if x.dtype == torch.float64
                                                            else torch.float32) / self.format.max

    def __call__(self, x: torch.Tensor, backward: "RoleQuantizer | None" = None) -> torch.Tensor:
        if self.per_channel_fit:
            fmt = self.format
            y = _STE.apply(x, lambda t: fmt.quantize_channels(t, self.rounding, self.generator,  # type: ignore[attr-defined]
                                                              **self.fit_granules))
            return y if backward is None else _gradient_only(y, backward)
        if self.static is not None:
            static = self.static
            y = _STE.apply(x, lambda t: static.quantize(t, self.rounding, self.generator))
            return y if backward is None else _gradient_only(y, backward)
        if self.absmax:
            from lowbit.quant.granularity import quantize_with_scale

            s = self.scale(x)
            y = _STE.apply(x, lambda t: quantize_with_scale(t, self.format, s, None, self.granularity,
                                                           self.rounding, self.generator))
            return y if backward is None else _gradient_only(y, backward)
        fmt = self.current_format(x)
        if backward is None:
            return fake_quantize(x, fmt, None, self.rounding, self.generator)
        return fake_quantize(x, fmt, backward.format, self.rounding, self.generator,
                             backward_rounding=backward.rounding, backward_generator=backward.generator)

    def __repr__(self) -> str:
        scale = "" if self.tracker is None else f", scaling={self.tracker.rule!r}"
        if self.static is not None:
            scale = f", static range=({self.static.lo:g}, {self.static.hi:g})"
        if self.per_channel_fit:
            g = self.granularity
            scale = (f", fitted per channel (axis {g.axis})" if g.kind == "channel"
                     else f", fitted per group of {g.group_size} (axis {g.axis})")
        return f"RoleQuantizer({self.format}, {self.rounding}{scale})"


class StaticRange:
    """A fixed calibrated range (lo, hi) for a scalar format (rules in `lowbit.RoleConfig`).

    Unsigned integer formats: asymmetric affine (scale, zero point); other formats: a symmetric
    float scale max(|lo|, |hi|) / fmt.max (hi / fmt.max when the format is unsigned).

    >>> from lowbit.formats import parse_format
    >>> r = StaticRange(parse_format("uint8"), -1.0, 3.0)
    >>> round(r.scale, 6), r.zero_point
    (0.015686, 64)
    >>> StaticRange(parse_format("int8n"), -2.0, 1.0).quantize(torch.tensor([0.5, -3.0])).tolist()
    [0.5039370059967041, -2.0]
    """

    def __init__(self, fmt: NumberFormat, lo: float, hi: float) -> None:
        from lowbit.formats import IntegerFormat
        from lowbit.quant.affine import affine_qparams, qrange

        self.format, self.lo, self.hi = fmt, float(lo), float(hi)
        self.affine = isinstance(fmt, IntegerFormat) and not fmt.signed
        if self.affine:
            s, z = affine_qparams(torch.tensor(self.lo, dtype=torch.float64), torch.tensor(self.hi, dtype=torch.float64),
                                  bits=fmt.word_bits, symmetric=False, signed=False)
            self.scale, self.zero_point = float(s), int(z)
            self.qmin, self.qmax = qrange(fmt.word_bits, signed=False)
        else:
            from lowbit.quant.granularity import format_low

            signed = format_low(fmt) < 0
            amax = max(-min(self.lo, 0.0), max(self.hi, 0.0)) if signed else max(self.hi, 0.0)
            self.scale, self.zero_point = amax / float(fmt.max), 0
        self._scales: "dict[tuple[torch.dtype, torch.device], torch.Tensor]" = {}

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        from lowbit.quant.granularity import compute_dtype

        key = (x.dtype, x.device)
        if key not in self._scales:
            self._scales[key] = torch.tensor(self.scale, dtype=compute_dtype(x.dtype), device=x.device)
        return self._scales[key]

    def quantize(self, x: torch.Tensor, rounding: str = "nearest_even",
                 generator: "torch.Generator | None" = None) -> torch.Tensor:
        """x̂ for a floating tensor ``x`` (same dtype and shape); values beyond the range saturate.

        Symmetric rule: s · fmt.quantize(clamp(x / s, fmt's lowest, fmt.max)) — the clamp makes
        formats without saturation (``e4m3fn``: overflow → NaN) clip like integers do.
        """
        from lowbit.quant.affine import fake_quantize_affine
        from lowbit.quant.granularity import quantize_clipped

        if self.affine:
            return fake_quantize_affine(x, self._scale(x), self.zero_point, self.qmin, self.qmax, rounding, generator)
        return quantize_clipped(x, self.format, self._scale(x), rounding, generator)

class _STE(torch.autograd.Function):
    """Forward ``fn(x)``, backward the identity (straight through)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> "tuple[torch.Tensor, None]":
        return grad, None


def _gradient_only(x: torch.Tensor, grad: RoleQuantizer) -> torch.Tensor:
    """Identity forward; the incoming gradient is rounded to ``grad``'s format."""
    return fake_quantize(x, None, grad.format, "nearest_even", None,
                         backward_rounding=grad.rounding, backward_generator=grad.generator)


class QuantLayerMixin:
    """The simulated forward shared by every supported layer (see the module docstring)."""

    lowbit_roles: "dict[str, RoleQuantizer]"
    lowbit_accumulate: "tuple[NumberFormat, int] | None"
    lowbit_float_class: type
    _lowbit_weight_cache: "tuple[Any, torch.Tensor] | None"

    # -- role helpers ---------------------------------------------------------------------
    def _lowbit_q(self, role: str, t: "torch.Tensor | None") -> "torch.Tensor | None":
        q = self.lowbit_roles.get(role)
        return t if (q is None or t is None) else q(t)

    def _lowbit_weight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        q = self.lowbit_roles.get("weight")
        if q is None:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            self._lowbit_weight_cache = None
            return q(w)
        # inference: reuse the quantized weight while the weight is unchanged (and not stochastic)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cache = self._lowbit_weight_cache
        if cache is not None and cache[0] == key and q.rounding != "stochastic" and q.tracker is None:
            return cache[1]
        qw = q(w)
        self._lowbit_weight_cache = (key, qw)
        return qw

    def _lowbit_finish(self, y: torch.Tensor) -> torch.Tensor:
        out, grad = self.lowbit_roles.get("output"), self.lowbit_roles.get("grad")
        if out is not None:
            return out(y, backward=grad)
        if grad is not None:
            return _gradient_only(y, grad)
        return y

    def extra_repr(self) -> str:
        base = self.lowbit_float_class.extra_repr(self)  # type: ignore[arg-type]
        roles = ", ".join(f"{r}={q.format}" for r, q in self.lowbit_roles.items())
        acc = "" if self.lowbit_accumulate is None else f", accumulate={self.lowbit_accumulate[0]}/{self.lowbit_accumulate[1]}"
        return f"{base}, {roles}{acc}" if roles or acc else base


def _accumulate_chunks(products: "list[Callable[[], torch.Tensor]]", fmt: NumberFormat) -> torch.Tensor:
    """Running sum of partial products, rounded to ``fmt`` after every addition (straight-through)."""
    acc = fake_quantize(products[0](), fmt)
    for part in products[1:]:
        acc = fake_quantize(acc + fake_quantize(part(), fmt), fmt)
    return acc


class QuantLinear(QuantLayerMixin, nn.Linear):
    """Simulated ``nn.Linear``; ``accumulate_every`` counts products along in_features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_q("bias", self.bias)
        if self.lowbit_accumulate is None:
            y = F.linear(x, w, b)
        else:
            fmt, k = self.lowbit_accumulate
            parts = [lambda s=s: F.linear(x[..., s:s + k], w[:, s:s + k]) for s in range(0, w.shape[1], k)]
            y = _accumulate_chunks(parts, fmt)
            if b is not None:
                y = fake_quantize(y + b, fmt)
        return self._lowbit_finish(y)


class _QuantConvNd(QuantLayerMixin):
    """Convs: ``accumulate_every`` K → chunks of max(1, K // kernel_numel) input channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_q("bias", self.bias)  # type: ignore[attr-defined]
        if self.lowbit_accumulate is None:
            y = self._conv_forward(x, w, b)  # type: ignore[attr-defined]
        else:
            y = self._chunked(x, w, b)
        return self._lowbit_finish(y)

    def _chunked(self, x: torch.Tensor, w: torch.Tensor, b: "torch.Tensor | None") -> torch.Tensor:
        fmt, k = self.lowbit_accumulate  # type: ignore[misc]
        if self.groups != 1:  # type: ignore[attr-defined]
            raise ValueError("accumulate_every is supported for convolutions with groups=1")
        per = max(1, k // max(1, w[0, 0].numel()))
        cin = w.shape[1]
        parts = [lambda s=s: self._conv_forward(x[:, s:s + per], w[:, s:s + per], None)  # type: ignore[attr-defined]
                 for s in range(0, cin, per)]
        y = _accumulate_chunks(parts, fmt)
        if b is not None:
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = fake_quantize(y + b.reshape(shape), fmt)
        return y


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """Simulated ``nn.Conv1d``."""


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """Simulated ``nn.Conv2d``."""


class QuantConvTranspose2d(QuantLayerMixin, nn.ConvTranspose2d):
    """Simulated ``nn.ConvTranspose2d`` (FP32 accumulation only)."""

    def forward(self, x: torch.Tensor, output_size: "list[int] | None" = None) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_q("bias", self.bias)
        num_spatial_dims = 2
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, num_spatial_dims, self.dilation)
        y = F.conv_transpose2d(x, w, b, self.stride, self.padding, output_padding, self.groups, self.dilation)
        return self._lowbit_finish(y)


class QuantEmbedding(QuantLayerMixin, nn.Embedding):
    """Simulated ``nn.Embedding`` (its input is indices: only weight/output/grad roles apply)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.embedding(x, self._lowbit_weight(), self.padding_idx, self.max_norm, self.norm_type,
                        self.scale_grad_by_freq, self.sparse)
        return self._lowbit_finish(y)


#: float layer class -> its simulated class
QUANT_CLASSES: "dict[type, type]" = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Embedding: QuantEmbedding,
}
SUPPORTED_LAYERS = tuple(QUANT_CLASSES)
#: roles that do not apply to a layer type
INAPPLICABLE_ROLES: "dict[type, tuple[str, ...]]" = {nn.Embedding: ("input", "bias")}
#: layer types that can round partial sums (accumulate_every)
CHUNKED_ACCUMULATION = (nn.Linear, nn.Conv1d, nn.Conv2d)


def quant_class_for(cls: type) -> "type | None":
    """The simulated class for layer class ``cls``, or None if unsupported.

    Subclasses of a supported layer that keep its ``forward`` are supported too (a simulated
    subclass of the user's class is made once and cached); ones that override it are not.
    """
    if cls in QUANT_CLASSES:
        return QUANT_CLASSES[cls]
    for base, qcls in QUANT_CLASSES.items():
        if issubclass(cls, base) and cls.forward is base.forward and not issubclass(cls, QuantLayerMixin):
            return _derived(cls, qcls)
    return None


_DERIVED: "dict[type, type]" = {}


def _derived(cls: type, qcls: type) -> type:
    if cls not in _DERIVED:
        _DERIVED[cls] = type(f"Quant{cls.__name__}", (qcls, cls), {"__module__": __name__})
    return _DERIVED[cls]
