"""Fake quantization with a straight-through estimator (STE).

Forward: the tensor is rounded to the forward format. Backward: the incoming gradient passes
straight through (the rounding's derivative is taken as 1), rounded to the backward format when
one is given — QPyTorch's ``Quantizer(forward_number, backward_number)`` for any lowbit format.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from lowbit.formats import NumberFormat
from lowbit.formats.rounding import Rounding, check_rounding
from lowbit.formats.spec import as_format

__all__ = ["fake_quantize", "Quantizer", "FormatLike", "straight_through"]

FormatLike = "str | NumberFormat | None"


class _StraightThrough(torch.autograd.Function):
    """Forward ``forward(x)``; backward the incoming gradient, through ``backward`` when given (the
    rounding's derivative is taken as 1). lowbit's one straight-through estimator."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, forward_fn: Callable[[torch.Tensor], torch.Tensor],
                backward_fn: "Callable[[torch.Tensor], torch.Tensor] | None") -> torch.Tensor:
        ctx.backward_fn = backward_fn
        return forward_fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> "tuple[torch.Tensor, None, None]":
        if ctx.backward_fn is not None:
            grad = ctx.backward_fn(grad)
        return grad, None, None


def straight_through(
    x: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    backward: "Callable[[torch.Tensor], torch.Tensor] | None" = None,
) -> torch.Tensor:
    """``forward(x)`` with a straight-through gradient: the gradient reaching ``x`` is the incoming
    one, passed through ``backward`` when given (e.g. a rounding of the gradient), else unchanged.

    Every fake quantization in `lowbit.simulate` (and so in ``quantize_``) goes through it.

    >>> import torch
    >>> x = torch.tensor([0.3, 3.3], requires_grad=True)
    >>> y = straight_through(x, torch.round, backward=lambda g: 2 * g)
    >>> y.detach().tolist()
    [0.0, 3.0]
    >>> y.sum().backward(); x.grad.tolist()
    [2.0, 2.0]
    """
    return _StraightThrough.apply(x, forward, backward)


def fake_quantize(
    x: torch.Tensor,
    forward: "str | NumberFormat | None",
    backward: "str | NumberFormat | None" = None,
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
    *,
    backward_rounding: "str | Rounding | None" = None,
    backward_generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """Quantize ``x`` to ``forward`` with a straight-through gradient.

    The gradient flowing back is rounded to ``backward`` (None: full precision) with
    ``backward_rounding`` (default: the forward ``rounding``).

    >>> import torch, lowbit as lb
    >>> x = torch.tensor([0.3, 3.3], requires_grad=True)
    >>> y = lb.fake_quantize(x, "posit8_es2", backward="e5m2")
    >>> y.detach().tolist()
    [0.3125, 3.25]
    >>> (y * torch.tensor([0.1, 1.0])).sum().backward()
    >>> x.grad.tolist()  # 0.1 rounded to e5m2
    [0.09375, 1.0]
    """
    fwd = as_format(forward, "forward", optional=True)
    bwd = as_format(backward, "backward", optional=True)
    mode = check_rounding(rounding, generator).value
    bwd_mode = check_rounding(backward_rounding if backward_rounding is not None else rounding,
                              backward_generator).value
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if fwd is None:
        forward_fn: Callable[[torch.Tensor], torch.Tensor] = torch.clone
    else:
        def forward_fn(t: torch.Tensor) -> torch.Tensor:
            return fwd.quantize(t, mode, generator)
    backward_fn = None if bwd is None else (
        lambda g: bwd.quantize(g.contiguous(), bwd_mode, backward_generator))
    return straight_through(x, forward_fn, backward_fn)


class Quantizer(torch.nn.Module):
    """``fake_quantize`` as a module: ``Quantizer(forward="posit8_es2", backward="e5m2")``.

    >>> import torch, lowbit as lb
    >>> q = lb.Quantizer(forward="e4m3fn")
    >>> q(torch.tensor([0.3])).tolist()
    [0.3125]
    """

    def __init__(
        self,
        forward: "str | NumberFormat | None" = None,
        backward: "str | NumberFormat | None" = None,
        rounding: "str | Rounding" = "nearest_even",
        backward_rounding: "str | Rounding | None" = None,
        generator: "torch.Generator | None" = None,
        backward_generator: "torch.Generator | None" = None,
    ) -> None:
        super().__init__()
        self.forward_format = as_format(forward, "forward", optional=True)
        self.backward_format = as_format(backward, "backward", optional=True)
        self.rounding = check_rounding(rounding, generator).value
        self.backward_rounding = check_rounding(
            backward_rounding if backward_rounding is not None else rounding, backward_generator).value
        self.generator = generator
        self.backward_generator = backward_generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module API
        return fake_quantize(
            x, self.forward_format, self.backward_format, self.rounding, self.generator,
            backward_rounding=self.backward_rounding, backward_generator=self.backward_generator,
        )

    def extra_repr(self) -> str:
        parts = [f"forward={self.forward_format}", f"backward={self.backward_format}", f"rounding={self.rounding}"]
        if self.backward_rounding != self.rounding:
            parts.append(f"backward_rounding={self.backward_rounding}")
        return ", ".join(parts)
