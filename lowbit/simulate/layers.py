"""Simulated low-precision layers (the classes; which float layer maps to which: `lowbit.simulate.registry`).

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

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import LearnedFormat, NumberFormat
from lowbit.kernels.equality import same_bits
from lowbit.schemes.power_of_two import ScaleTracker
from lowbit.schemes.static import StaticRange
from lowbit.simulate.chunked import conv_running_sum, conv_transpose2d_running_sum
from lowbit.simulate.exact import exact_conv1d, exact_conv2d, exact_conv_transpose2d, exact_linear
from lowbit.simulate.fake_quant import fake_quantize, straight_through

if TYPE_CHECKING:
    from lowbit.schemes import Scheme

__all__ = ["RoleQuantizer", "StaticRange", "QuantLayerMixin", "QuantMultiheadAttention", "generic_forward"]


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

    @classmethod
    def from_scheme(cls, scheme: "Scheme", seed: "int | None" = None) -> "RoleQuantizer":
        """The role quantizer of a `lowbit.schemes.Scheme` (``seed``: its stochastic generator);
        its first call quantizes as ``scheme.quantize`` does, bit for bit.

        >>> from lowbit.schemes import Scheme
        >>> RoleQuantizer.from_scheme(Scheme.parse("int4+absmax_g2"))
        RoleQuantizer(int4, nearest_even)
        """
        from lowbit.schemes import Absmax, BlockScale, Fitted, NoScale, PowerOfTwo, Scheme, Static

        if not isinstance(scheme, Scheme):
            raise TypeError(f"scheme must be a lowbit.schemes.Scheme, got {type(scheme).__name__}")
        rule, mode = scheme.scale, scheme.rounding
        if isinstance(rule, (NoScale, BlockScale)):
            return cls(scheme.format, mode, seed=seed)
        if isinstance(rule, PowerOfTwo):
            return cls(scheme.element, mode, rule.rule, rule.every, rule.history, seed)
        if isinstance(rule, Absmax):
            return cls(scheme.element, mode, "absmax", seed=seed, granularity=rule.granularity)
        if isinstance(rule, Static):
            return cls(scheme.element, mode, "static", seed=seed, range=(rule.lo, rule.hi))
        assert isinstance(rule, Fitted)
        return cls(scheme.element, mode, seed=seed, granularity=rule.granularity)

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
        from lowbit.formats.granularity import granule_amax

        return granule_amax(x.detach(), self.granularity).to(torch.float64 if x.dtype == torch.float64
                                                            else torch.float32) / self.format.max

    def __call__(self, x: torch.Tensor, backward: "RoleQuantizer | None" = None) -> torch.Tensor:
        if self.per_channel_fit:
            fmt = self.format
            y = straight_through(x, lambda t: fmt.quantize_channels(t, self.rounding, self.generator,  # type: ignore[attr-defined]
                                                              **self.fit_granules))
            return y if backward is None else _gradient_only(y, backward)
        if self.static is not None:
            static = self.static
            y = straight_through(x, lambda t: static.quantize(t, self.rounding, self.generator))
            return y if backward is None else _gradient_only(y, backward)
        if self.absmax:
            from lowbit.formats.granularity import quantize_with_scale

            s = self.scale(x)
            y = straight_through(x, lambda t: quantize_with_scale(t, self.format, s, None, self.granularity,
                                                           self.rounding, self.generator))
            return y if backward is None else _gradient_only(y, backward)
        fmt = self.current_format(x)
        if backward is None:
            return self.quantize_as(x, fmt)
        return fake_quantize(x, fmt, backward.format, self.rounding, self.generator,
                             backward_rounding=backward.rounding, backward_generator=backward.generator)

    def quantize_as(self, x: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
        """``x`` quantized to ``fmt`` (this role's format at some scale) with this role's rounding,
        straight-through; the scale tracker is not consulted.

        >>> from lowbit.formats import parse_format
        >>> q = RoleQuantizer(parse_format("e4m3fn"), scaling="amax")
        >>> q.quantize_as(torch.tensor([900.0, 3.3]), q.tracker.fmt).tolist()  # no scale: 900 overflows
        [nan, 3.25]
        """
        return fake_quantize(x, fmt, None, self.rounding, self.generator)

    def __repr__(self) -> str:
        scale = "" if self.tracker is None else f", scaling={self.tracker.rule!r}"
        if self.static is not None:
            scale = f", static range=({self.static.lo:g}, {self.static.hi:g})"
        if self.per_channel_fit:
            g = self.granularity
            scale = (f", fitted per channel (axis {g.axis})" if g.kind == "channel"
                     else f", fitted per group of {g.group_size} (axis {g.axis})")
        return f"RoleQuantizer({self.format}, {self.rounding}{scale})"



def _gradient_only(x: torch.Tensor, grad: RoleQuantizer) -> torch.Tensor:
    """``x`` itself (no copy); the gradient flowing into it is rounded to ``grad``'s format (a
    tensor hook, which also sees the gradient of x's value before any later in-place change).

    >>> from lowbit.formats import parse_format
    >>> w = torch.tensor([1.0], requires_grad=True)
    >>> y = _gradient_only(w * 1, RoleQuantizer(parse_format("e5m2")))
    >>> (y * 0.3).sum().backward(); w.grad.tolist()  # 0.3 rounded to e5m2
    [0.3125]
    """
    if not x.requires_grad:  # nothing will flow back
        return x
    fmt, mode, generator = grad.format, grad.rounding, grad.generator
    x.register_hook(lambda g: fmt.quantize(g.contiguous(), mode, generator))
    return x


@dataclasses.dataclass
class _CachedWeight:
    """One inference-cache entry: the float tensor's bits, its quantized value (never handed out:
    readers get a copy), the tracker exponent it was quantized with and the tracker's statistic of it."""

    float_copy: torch.Tensor
    quantized: torch.Tensor
    exponent: "int | None" = None
    statistic: "int | float | None" = None


def _float_descriptor(cls: type, name: str) -> Any:
    """The float class's own descriptor for ``name`` (a parametrization's property), or None."""
    for klass in cls.__mro__:
        if name in vars(klass):
            desc = vars(klass)[name]
            return desc if hasattr(desc, "__get__") else None
    return None


def _tensor_property(name: str) -> property:
    """``module.<name>`` of a simulated layer: the quantized value of the float tensor ``name``.

    The Parameter itself stays in ``_parameters`` (state dict, optimizers, ``.to()``, hooks see
    it); every reader of the attribute (the layer's forward, ``F.multi_head_attention_forward``,
    torch's transformer fast path, user code) gets the quantized tensor, straight-through.
    """

    def get(self: "QuantLayerMixin") -> Any:
        return self._lowbit_read(name)

    def set_(self: "QuantLayerMixin", value: Any) -> None:  # what nn.Module.__setattr__ passes on
        desc = _float_descriptor(self.lowbit_float_class, name)
        if desc is not None and hasattr(desc, "__set__"):
            desc.__set__(self, value)
        else:
            self.__dict__[name] = value

    def delete(self: "QuantLayerMixin") -> None:
        desc = _float_descriptor(self.lowbit_float_class, name)
        if desc is not None and hasattr(desc, "__delete__"):
            desc.__delete__(self)
        else:
            del self.__dict__[name]

    return _QuantizedTensor(get, set_, delete, doc=f"The quantized ``{name}`` (the float Parameter: ``lowbit_float_tensor``).")


class _QuantizedTensor(property):
    """The property `_tensor_property` makes (a class of its own, so a forward can tell it from a
    property that shadows it, such as a parametrization's)."""


def _rebuild_quantized(float_cls: type, state: "dict[str, Any]") -> nn.Module:
    """Unpickle a simulated layer: the float class (importable by name) plus lowbit's state."""
    from lowbit.simulate.registry import quant_class_for

    module = float_cls.__new__(float_cls)
    module.__setstate__(state)
    qcls = quant_class_for(float_cls)
    if qcls is None:
        raise TypeError(f"cannot unpickle a simulated {float_cls.__name__}: not a supported layer type")
    module.__class__ = qcls
    module._lowbit_weight_cache = None  # type: ignore[attr-defined]
    return module


class QuantLayerMixin:
    """The simulated forward shared by every supported layer (see the module docstring).

    Each quantized tensor attribute (``weight``, ``bias``, ``in_proj_weight`` …) is a property
    that returns the quantized value (see `_tensor_property`); ``lowbit_float_tensor(name)``
    returns the float Parameter.
    """

    lowbit_roles: "dict[str, RoleQuantizer]"
    #: tensor attribute name -> the quantizer of its role (weight or bias)
    lowbit_tensor_roles: "dict[str, RoleQuantizer]"
    lowbit_accumulate: "tuple[NumberFormat, int] | None"
    lowbit_float_class: type
    _lowbit_weight_cache: "dict[str, _CachedWeight] | None"

    # -- role helpers ---------------------------------------------------------------------
    def _lowbit_q(self, role: str, t: "torch.Tensor | None") -> "torch.Tensor | None":
        q = self.lowbit_roles.get(role)
        return t if (q is None or t is None) else q(t)

    def lowbit_float_tensor(self, name: str) -> Any:
        """The float (unquantized) tensor behind the attribute ``name``: a Parameter, a plain
        tensor attribute, or a parametrization's value."""
        d = self.__dict__
        params = d["_parameters"]
        if name in params:
            return params[name]
        if name in d:
            return d[name]
        desc = _float_descriptor(d.get("lowbit_float_class", type(self)), name)
        if desc is not None:
            return desc.__get__(self, type(self))
        return nn.Module.__getattr__(self, name)  # type: ignore[arg-type]

    def _lowbit_read(self, name: str, shared: bool = False) -> Any:
        """The quantized value of the float tensor ``name`` (see the class doc). An inference read
        returns a copy of the cached tensor, or with ``shared`` the cached tensor itself: for
        lowbit's own forwards, which only hand it to torch's functional ops (they never write
        into a weight), so a batch-1 forward saves writing a fresh copy of every weight."""
        raw = self.lowbit_float_tensor(name)
        roles = self.__dict__.get("lowbit_tensor_roles")
        if roles is None:  # set by quantize_; a layer restored without it quantizes its weight / bias roles
            roles = {r: q for r, q in self.__dict__.get("lowbit_roles", {}).items() if r in ("weight", "bias")}
        q = roles.get(name)
        if q is None or raw is None:
            return raw
        if q.rounding == "stochastic" or (torch.is_grad_enabled() and raw.requires_grad):
            return q(raw)
        # inference: reuse the quantized tensor while the float one holds the same bits (and, for
        # a scale tracker, the exponent in force is the one it was quantized with). The check
        # compares bit patterns with a stored copy: writes through .data, numpy views or under
        # inference_mode change no version counter, so only the values themselves are a safe key
        cache = self.__dict__.get("_lowbit_weight_cache")
        hit = None if cache is None else cache.get(name)
        if hit is not None and not same_bits(raw, hit.float_copy):
            hit = None
        tracker, exponent = q.tracker, None
        statistic = None if hit is None else hit.statistic
        if tracker is not None:  # the tracker counts this read as a call, exactly as q(raw) would
            if statistic is None and tracker.needs_statistic():
                statistic = tracker.statistic(raw)  # on a hit: of the cached bits, kept for later refreshes
                if hit is not None:
                    hit.statistic = statistic
            exponent = tracker.advance(statistic)
            if hit is not None and hit.exponent == exponent:
                return hit.quantized if shared else hit.quantized.clone()
        elif hit is not None:
            return hit.quantized if shared else hit.quantized.clone()
        outside = torch.is_inference_mode_enabled() and not raw.is_inference()
        with torch.inference_mode(False) if outside else contextlib.nullcontext(), torch.no_grad():
            # a cache filled under inference_mode must still serve forwards that autograd records
            ref = raw.detach().clone() if hit is None else hit.float_copy
            qw = q(raw.detach()) if tracker is None else q.quantize_as(raw.detach(), tracker.format())
        if cache is None:
            cache = self.__dict__["_lowbit_weight_cache"] = {}
        # readers get a copy: a write into it through .data or a numpy view bumps no version
        # counter, so the cached tensor itself must never be shared
        cache[name] = _CachedWeight(ref, qw, exponent, statistic)
        return qw if shared else qw.clone()

    def _lowbit_forward_tensor(self, name: str) -> Any:
        """``getattr(self, name)`` for the layer's own forward: the cached tensor itself at
        inference where the attribute is lowbit's property (not, e.g., a parametrization's)."""
        if isinstance(getattr(type(self), name, None), _QuantizedTensor):
            return self._lowbit_read(name, shared=True)
        return getattr(self, name)

    def _lowbit_weight(self) -> torch.Tensor:
        return self._lowbit_forward_tensor("weight")  # type: ignore[no-any-return]

    def _lowbit_bias(self) -> "torch.Tensor | None":
        return self._lowbit_forward_tensor("bias")  # type: ignore[no-any-return]

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

    # -- pickling, deepcopy, TorchScript ----------------------------------------------------------
    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickled as the float class (importable by name, unlike a generated QuantMyLinear) plus
        # lowbit's state; unpickling switches the class again. The weight cache is not kept.
        state = {k: v for k, v in self.__dict__.items() if k != "_lowbit_weight_cache"}
        return (_rebuild_quantized, (self.lowbit_float_class, state))

    def __prepare_scriptable__(self) -> Any:
        raise TypeError(f"torch.jit.script is unsupported for lowbit's simulated layers ({type(self).__name__}: "
                        f"its quantization runs outside TorchScript); script the float model "
                        f"(lowbit.dequantize_(model)) instead")


def generic_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """The float layer's own forward between the input and output roles (its weights are
    quantized where they are read)."""
    x = self._lowbit_q("input", x)
    return self._lowbit_finish(self.lowbit_float_class.forward(self, x, *args, **kwargs))


def _accumulate_chunks(products: "list[Callable[[], torch.Tensor]]", fmt: NumberFormat) -> torch.Tensor:
    """Running sum of partial products, rounded to ``fmt`` after every addition (straight-through)."""
    acc = fake_quantize(products[0](), fmt)
    for part in products[1:]:
        acc = fake_quantize(acc + fake_quantize(part(), fmt), fmt)
    return acc


def _quire_format(layer: Any) -> "NumberFormat | None":
    """What ``accumulate="quire"`` rounds to: the output role's format when the role is a plain
    nearest-even format (its own quantization is then the identity), else None (the dtype)."""
    out = layer.lowbit_roles.get("output")
    if (out is None or out.tracker is not None or out.absmax or out.static is not None or out.per_channel_fit
            or out.rounding != "nearest_even"):
        return None
    return out.format


def _is_quire(layer: Any) -> bool:
    return layer.lowbit_accumulate is not None and layer.lowbit_accumulate[0] == "quire"


def _quire_backward(layer: Any) -> str:
    """How a quire layer's backward accumulates: ``"fp32"`` or ``"quire"`` (config ``accumulate_backward``)."""
    return layer.lowbit_accumulate[1] or "fp32"


class QuantLinear(QuantLayerMixin, nn.Linear):
    """Simulated ``nn.Linear``; ``accumulate_every`` counts products along in_features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_bias()
        if _is_quire(self):
            y = exact_linear(x, w, b, _quire_format(self), backward=_quire_backward(self))
        elif self.lowbit_accumulate is None:
            y = F.linear(x, w, b)
        else:
            fmt, k = self.lowbit_accumulate
            parts = [lambda s=s: F.linear(x[..., s:s + k], w[:, s:s + k]) for s in range(0, w.shape[1], k)]
            y = _accumulate_chunks(parts, fmt)
            if b is not None:
                y = fake_quantize(y + b, fmt)
        return self._lowbit_finish(y)


class _QuantConvNd(QuantLayerMixin):
    """Convs: ``accumulate_every`` K counts products tap by tap (`lowbit.simulate.chunked`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_bias()  # type: ignore[attr-defined]
        if _is_quire(self):
            y = self._quire(x, w, b)
        elif self.lowbit_accumulate is None:
            y = self._conv_forward(x, w, b)  # type: ignore[attr-defined]
        else:
            y = self._chunked(x, w, b)
        return self._lowbit_finish(y)

    def _quire(self, x: torch.Tensor, w: torch.Tensor, b: "torch.Tensor | None") -> torch.Tensor:
        padding: Any = self.padding  # type: ignore[attr-defined]
        if self.padding_mode != "zeros":  # type: ignore[attr-defined]
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)  # type: ignore[attr-defined]
            padding = 0
        conv = exact_conv1d if w.dim() == 3 else exact_conv2d
        if w.dim() == 3 and not isinstance(padding, str):
            padding = padding[0]
        args = (self.stride, padding, self.dilation) if w.dim() == 4 else (  # type: ignore[attr-defined]
            self.stride[0], padding, self.dilation[0])  # type: ignore[attr-defined]
        return conv(x, w, b, *args, self.groups, _quire_format(self),  # type: ignore[attr-defined]
                    backward=_quire_backward(self))

    def _chunked(self, x: torch.Tensor, w: torch.Tensor, b: "torch.Tensor | None") -> torch.Tensor:
        fmt, k = self.lowbit_accumulate  # type: ignore[misc]
        if self.groups != 1:  # type: ignore[attr-defined]
            raise ValueError("accumulate_every is supported for convolutions with groups=1")
        mode = self.padding_mode if self.padding_mode != "zeros" else "constant"  # type: ignore[attr-defined]
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)  # type: ignore[attr-defined]
        y = conv_running_sum(x, w, self.stride, self.dilation, fmt, k)  # type: ignore[attr-defined]
        return _add_bias(y, b, fmt)


def _add_bias(y: torch.Tensor, b: "torch.Tensor | None", fmt: NumberFormat) -> torch.Tensor:
    """The bias added to a chunked running sum (channel axis 1), rounded once more."""
    if b is None:
        return y
    return fake_quantize(y + b.reshape((1, -1) + (1,) * (y.dim() - 2)), fmt)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """Simulated ``nn.Conv1d``."""


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """Simulated ``nn.Conv2d``."""


class QuantConvTranspose2d(QuantLayerMixin, nn.ConvTranspose2d):
    """Simulated ``nn.ConvTranspose2d`` (FP32 accumulation, the quire, or ``accumulate_every``)."""

    def forward(self, x: torch.Tensor, output_size: "list[int] | None" = None) -> torch.Tensor:  # noqa: D102
        x = self._lowbit_q("input", x)
        w, b = self._lowbit_weight(), self._lowbit_bias()
        num_spatial_dims = 2
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, num_spatial_dims, self.dilation)
        if _is_quire(self):
            y = exact_conv_transpose2d(x, w, b, self.stride, self.padding, output_padding, self.groups, self.dilation,
                                       _quire_format(self), backward=_quire_backward(self))
        elif self.lowbit_accumulate is not None:
            fmt, k = self.lowbit_accumulate
            if self.groups != 1:
                raise ValueError("accumulate_every is supported for convolutions with groups=1")
            y = _add_bias(conv_transpose2d_running_sum(x, w, self.stride, self.padding, output_padding, self.dilation,
                                                       fmt, k), b, fmt)
        else:
            y = F.conv_transpose2d(x, w, b, self.stride, self.padding, output_padding, self.groups, self.dilation)
        return self._lowbit_finish(y)


class QuantEmbedding(QuantLayerMixin, nn.Embedding):
    """Simulated ``nn.Embedding`` (its input is indices: only weight/output/grad roles apply)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        # max_norm renormalises rows of the weight in place: hand it a copy, never the cached tensor
        w = self._lowbit_weight() if self.max_norm is None else self.weight
        y = F.embedding(x, w, self.padding_idx, self.max_norm, self.norm_type,
                        self.scale_grad_by_freq, self.sparse)
        return self._lowbit_finish(y)


class QuantConv3d(QuantLayerMixin, nn.Conv3d):
    """Simulated ``nn.Conv3d`` (FP32 accumulation only)."""

    forward = generic_forward


class QuantConvTranspose1d(QuantLayerMixin, nn.ConvTranspose1d):
    """Simulated ``nn.ConvTranspose1d`` (FP32 accumulation only)."""

    forward = generic_forward


class QuantConvTranspose3d(QuantLayerMixin, nn.ConvTranspose3d):
    """Simulated ``nn.ConvTranspose3d`` (FP32 accumulation only)."""

    forward = generic_forward


class QuantLayerNorm(QuantLayerMixin, nn.LayerNorm):
    """Simulated ``nn.LayerNorm`` (roles from the config's opt-in ``"norm"`` key)."""

    forward = generic_forward


class QuantRMSNorm(QuantLayerMixin, nn.RMSNorm):
    """Simulated ``nn.RMSNorm`` (roles from the config's opt-in ``"norm"`` key)."""

    forward = generic_forward


class QuantMultiheadAttention(QuantLayerMixin, nn.MultiheadAttention):
    """Simulated ``nn.MultiheadAttention``.

    Weight role: ``in_proj_weight`` (or ``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight``
    when kdim / vdim differ); bias role: ``in_proj_bias``, ``bias_k``, ``bias_v``. ``out_proj`` is
    a Linear of its own (quantized as one); MultiheadAttention reads its weight and bias, so its
    input / output / grad roles never run (`quantize_` reports them as escaped). Input role:
    query, key and value (the same tensor once when they are one); output role: the attention
    output (not the returned weights).
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # noqa: D102
                *args: Any, **kwargs: Any) -> "tuple[torch.Tensor, torch.Tensor | None]":
        q = self.lowbit_roles.get("input")
        if q is not None:  # keep `query is key is value` (MHA's packed projection and fast path test it)
            qq = q(query)
            qk = qq if key is query else q(key)
            value = qq if value is query else (qk if value is key else q(value))
            query, key = qq, qk
        out, weights = nn.MultiheadAttention.forward(self, query, key, value, *args, **kwargs)
        return self._lowbit_finish(out), weights


def __getattr__(name: str) -> Any:
    # the layer tables live in lowbit.simulate.registry; these names stay importable from here
    if name in ("QUANT_CLASSES", "SUPPORTED_LAYERS", "INAPPLICABLE_ROLES", "CHUNKED_ACCUMULATION", "quant_class_for"):
        from lowbit.simulate import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
