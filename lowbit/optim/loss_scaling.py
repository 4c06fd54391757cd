"""Loss scaling for low-precision gradients: static, dynamic, and the posit-histogram rule.

Scaling the loss by S scales every gradient by S, which moves small gradients out of a format's
underflow (or, for posits, out of its inaccurate tails) while they are computed and rounded; the
optimizer then uses g_true = g_scaled / S. All scalers share one API::

    scaler = DynamicLossScaler()
    loss = model(x).pow(2).mean()
    scaler.scale(loss).backward()          # loss × S
    stepped = scaler.step(optimizer)       # check, unscale, step or skip, update S

``step(optimizer)`` checks the scaled gradients for overflow — a non-finite element, or with
``check_format`` an element whose magnitude exceeds ``check_format.max`` (it would saturate or
overflow in that format, e.g. e5m2 or posit8) — then skips the update on overflow, otherwise
unscales the gradients in place and steps, and finally updates S by the scaler's rule; it
returns whether the optimizer stepped. With a `LowPrecisionOptimizer` the unscaling happens inside
its step (``grad_scale=S``): the gradients are rounded to its grad format while still scaled, which
is the point of scaling them. ``unscale_(optimizer)`` unscales early (e.g. to clip gradients);
the gradients are then rounded after unscaling. ``loss_scale`` is the current S (``scale`` is the
method that multiplies a loss by it).

Rules (c = overflow in this step):

- `StaticLossScaler`: S is constant. Steps with overflow are still skipped.
- `DynamicLossScaler` (as ``torch.amp.GradScaler``): on overflow
  S ← max(S · backoff_factor, min_scale) and the clean-step counter resets; otherwise the counter
  increments and, when it reaches ``growth_interval``, S ← min(S · growth_factor, max_scale) and it
  resets.
- `PositHistogramLossScaler` (posit GAN paper, Ho et al., DATE 2021): every ``every`` steps (and
  after an overflow), histogram e = ⌊log2 |g_true|⌋ over all nonzero finite gradient elements in
  bins of ``bin_width`` binades, take the most populated bin (ties: the larger exponents) and its
  middle binade e* = w·j* + ⌊(w − 1)/2⌋, and set S = 2^(t − e*): the peak binade lands on
  [2^t, 2^(t+1)), the format's most accurate region. t = k for a posit scaled by 2^k
  (``posit8_es2`` → t = 0: posit fractions are longest for |x| near 1, whose regime is shortest);
  for a minifloat t = ⌊(emin + emax)/2⌋, the middle of its normal range (equal precision
  everywhere, most headroom both ways); other formats need ``target_log2``. S is clamped to
  [min_scale, max_scale]. If the histogram is empty (all zero or non-finite), S ← S / 2 on overflow
  and is kept otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowbit.formats import Minifloat, NumberFormat, Posit
from lowbit.formats.spec import as_format
from lowbit.optim.lowprec import LowPrecisionOptimizer
from lowbit.simulate.scaling import format_centre

__all__ = ["LossScaler", "StaticLossScaler", "DynamicLossScaler", "PositHistogramLossScaler"]


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_format(spec: Any) -> "NumberFormat | None":
    fmt = as_format(spec, "check_format", optional=True)
    if fmt is None:
        return None
    limit = getattr(fmt, "max", None)
    if not isinstance(limit, float) or not math.isfinite(limit):
        raise ValueError(f"check_format={str(fmt)!r} has no finite max; allowed: scalar formats (posit, minifloat, "
                         f"fixed point, integer)")
    return fmt


def _grad_params(optimizer: Any) -> list[torch.Tensor]:
    if isinstance(optimizer, LowPrecisionOptimizer):
        return optimizer.model_params
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return [p for group in optimizer.param_groups for p in group["params"]]


class LossScaler:
    """Common machinery; subclasses define the update rule in ``_update``."""

    def __init__(self, init_scale: float, *, check_format: "str | NumberFormat | None" = None) -> None:
        self._scale = _positive(init_scale, "init_scale")
        self.check_format = _check_format(check_format)
        self.steps = 0
        self.skipped_steps = 0
        self._unscaled_overflow: "bool | None" = None  # set by unscale_ until the next step

    # ----------------------------------------------------------------- public API
    @property
    def loss_scale(self) -> float:
        """The current scale S."""
        return self._scale

    def get_scale(self) -> float:
        """The current scale S (as ``torch.amp.GradScaler.get_scale``)."""
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss × S``."""
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
        return loss * self._scale

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Check the scaled gradients for overflow and divide them by S in place; returns overflow.

        Call at most once per step, between ``backward`` and `step`.
        """
        if self._unscaled_overflow is not None:
            raise RuntimeError("unscale_() was already called since the last step()")
        grads = self._grads(optimizer)
        overflow = self._overflow(grads)
        self._observe(grads, overflow)
        for g in grads:
            g.div_(self._scale)
        self._unscaled_overflow = overflow
        return overflow

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Step ``optimizer`` unless the gradients overflowed; update S. Returns whether it stepped."""
        if self._unscaled_overflow is not None:
            overflow, unscaled = self._unscaled_overflow, True
        else:
            grads = self._grads(optimizer)
            overflow, unscaled = self._overflow(grads), False
            self._observe(grads, overflow)
        self._unscaled_overflow = None
        if not overflow:
            if unscaled:
                optimizer.step()
            elif isinstance(optimizer, LowPrecisionOptimizer):
                optimizer.step(grad_scale=self._scale)
            else:
                for g in self._grads(optimizer):
                    g.div_(self._scale)
                optimizer.step()
        else:
            self.skipped_steps += 1
        self._update(overflow)
        self.steps += 1
        return not overflow

    def state_dict(self) -> dict[str, Any]:
        """The scale and counters."""
        return {"scale": self._scale, "steps": self.steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a dict made by `state_dict`."""
        self._scale = _positive(state_dict["scale"], "state_dict['scale']")
        self.steps = int(state_dict["steps"])
        self.skipped_steps = int(state_dict["skipped_steps"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self._scale}, check_format={self.check_format})"

    # ----------------------------------------------------------------- internals
    @staticmethod
    def _grads(optimizer: Any) -> list[torch.Tensor]:
        return [p.grad for p in _grad_params(optimizer) if p.grad is not None]

    def _overflow(self, grads: list[torch.Tensor]) -> bool:
        found = False
        for g in grads:
            limit = self.check_format.max if self.check_format is not None else float(torch.finfo(g.dtype).max)
            found = found or not bool((g.detach().abs() <= limit).all())  # NaN compares False
        return found

    def _observe(self, grads: list[torch.Tensor], overflow: bool) -> None:
        """See the scaled gradients before they are unscaled (for rules that need them)."""

    def _update(self, overflow: bool) -> None:
        """Update S after a step."""


class StaticLossScaler(LossScaler):
    """A constant loss scale S (steps with overflow are skipped).

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = torch.optim.SGD([w], lr=0.5)
    >>> scaler = StaticLossScaler(1024.0)
    >>> scaler.scale((w * 2).sum()).backward()
    >>> scaler.step(opt), w.grad.item(), w.item()
    (True, 2.0, 0.0)
    """

    def __init__(self, scale: float, *, check_format: "str | NumberFormat | None" = None) -> None:
        super().__init__(scale, check_format=check_format)


class DynamicLossScaler(LossScaler):
    """Grow S after ``growth_interval`` clean steps, back off (and skip the step) on overflow.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> scaler = DynamicLossScaler(init_scale=2.0**16, check_format="e5m2")
    >>> scaler.scale((w * 1.0).sum()).backward()   # grad 65536 > e5m2 max 57344
    >>> scaler.step(opt), scaler.loss_scale, w.item()
    (False, 32768.0, 1.0)
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        min_scale: float = 1.0,
        max_scale: float = 2.0**64,
        *,
        check_format: "str | NumberFormat | None" = None,
    ) -> None:
        super().__init__(init_scale, check_format=check_format)
        self.growth_factor = _positive(growth_factor, "growth_factor")
        if self.growth_factor <= 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        self.backoff_factor = _positive(backoff_factor, "backoff_factor")
        if self.backoff_factor >= 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be an int >= 1, got {growth_interval!r}")
        self.growth_interval = growth_interval
        self.min_scale = _positive(min_scale, "min_scale")
        self.max_scale = _positive(max_scale, "max_scale")
        if not self.min_scale <= self._scale <= self.max_scale:
            raise ValueError(f"init_scale={init_scale!r} must lie in [min_scale, max_scale] = "
                             f"[{self.min_scale}, {self.max_scale}]")
        self.clean_steps = 0

    def _update(self, overflow: bool) -> None:
        if overflow:
            self._scale = max(self._scale * self.backoff_factor, self.min_scale)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self._scale = min(self._scale * self.growth_factor, self.max_scale)
            self.clean_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Scale, counters and the clean-step counter."""
        return {**super().state_dict(), "clean_steps": self.clean_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a dict made by `state_dict`."""
        super().load_state_dict(state_dict)
        self.clean_steps = int(state_dict["clean_steps"])


def _target_log2(fmt: NumberFormat) -> "int | None":
    return format_centre(fmt) if isinstance(fmt, (Posit, Minifloat)) else None


class PositHistogramLossScaler(LossScaler):
    """Choose S = 2^(t − e*) so the peak of the log2|grad| histogram sits in fmt's accurate region.

    See the module docs for the rule. ``every``: recompute S every that many steps (the first step
    included; S is ``init_scale`` until then). ``bin_width``: histogram bin width in binades.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> scaler = PositHistogramLossScaler("posit8_es2", every=10)
    >>> w.grad = torch.tensor([2.0**-10, 1.5 * 2.0**-10, 3.0])   # peak binade: [2^-10, 2^-9)
    >>> scaler.step(opt), scaler.loss_scale == 2.0**10
    (True, True)
    """

    def __init__(
        self,
        fmt: "str | NumberFormat" = "posit8_es2",
        *,
        every: int = 100,
        bin_width: int = 1,
        init_scale: float = 1.0,
        target_log2: "int | None" = None,
        min_scale: float = 2.0**-64,
        max_scale: float = 2.0**64,
        check_format: "str | NumberFormat | None" = None,
    ) -> None:
        super().__init__(init_scale, check_format=check_format)
        self.format = as_format(fmt, "fmt")
        for name, value in (("every", every), ("bin_width", bin_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.every = every
        self.bin_width = bin_width
        if target_log2 is None:
            target_log2 = _target_log2(self.format)
            if target_log2 is None:
                raise ValueError(f"fmt={str(self.format)!r} has no built-in accurate region; pass target_log2 "
                                 f"(posits and minifloats have one)")
        elif isinstance(target_log2, bool) or not isinstance(target_log2, int):
            raise TypeError(f"target_log2 must be an int or None, got {target_log2!r}")
        self.target_log2 = target_log2
        self.min_scale = _positive(min_scale, "min_scale")
        self.max_scale = _positive(max_scale, "max_scale")
        if self.min_scale > self.max_scale:
            raise ValueError(f"min_scale={min_scale!r} must be <= max_scale={max_scale!r}")
        self._pending: "float | None" = None  # the scale chosen from this step's histogram
        self.last_peak_log2: "int | None" = None

    def histogram(self, grads: list[torch.Tensor], scale: float = 1.0) -> "tuple[torch.Tensor, torch.Tensor]":
        """(exponents e, counts) of ⌊log2 |g / scale|⌋ over nonzero finite elements, e ascending."""
        exps = []
        for g in grads:
            a = g.detach().abs().to(torch.float64).reshape(-1) / scale
            a = a[torch.isfinite(a) & (a > 0)]
            exps.append(torch.frexp(a)[1].to(torch.int64) - 1)
        e = torch.cat(exps) if exps else torch.zeros(0, dtype=torch.int64)
        return torch.unique(e, return_counts=True)

    def choose_scale(self, grads: list[torch.Tensor], scale: float = 1.0) -> "float | None":
        """The rule's S for gradients ``grads`` that currently hold ``scale`` × the true gradient.

        None if there is no nonzero finite element.
        """
        e, counts = self.histogram(grads, scale)
        if e.numel() == 0:
            return None
        w = self.bin_width
        bins, inverse = torch.unique(torch.div(e, w, rounding_mode="floor"), return_inverse=True)
        per_bin = torch.zeros(bins.numel(), dtype=torch.int64).index_add_(0, inverse, counts)
        peak = int(bins[(per_bin == per_bin.max()).nonzero().max()])  # ties: the larger exponents
        self.last_peak_log2 = peak * w + (w - 1) // 2
        return min(max(2.0 ** (self.target_log2 - self.last_peak_log2), self.min_scale), self.max_scale)

    def _observe(self, grads: list[torch.Tensor], overflow: bool) -> None:
        self._pending = None
        if overflow or self.steps % self.every == 0:
            chosen = self.choose_scale(grads, self._scale)
            self._pending = chosen if chosen is not None else (self._scale * 0.5 if overflow else self._scale)
            self._pending = min(max(self._pending, self.min_scale), self.max_scale)

    def _update(self, overflow: bool) -> None:
        if self._pending is not None:
            self._scale = self._pending
        self._pending = None
