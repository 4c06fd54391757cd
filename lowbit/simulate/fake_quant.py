"""Fake quantization with a straight-through estimator (STE).

Forward: the tensor is rounded to the forward format. Backward: the incoming gradient passes
straight through (the rounding's derivative is taken as 1), rounded to the backward format when
one is given — QPyTorch's ``Quantizer(forward_number, backward_number)`` for any lowbit format.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats import NumberFormat, parse_format
from lowbit.formats.rounding import Rounding, check_rounding

__all__ = ["fake_quantize", "Quantizer", "FormatLike"]

FormatLike = "str | NumberFormat | None"


def _format(spec: Any, name: str) -> "NumberFormat | None":
    if spec is None:
        return None
    if isinstance(spec, (str, NumberFormat)):
        return parse_format(spec)
    raise TypeError(f"{name} must be a format spec string, a NumberFormat or None, got {type(spec).__name__}")


class _STEQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fwd: "NumberFormat | None", bwd: "NumberFormat | None",
                rounding: str, generator: "torch.Generator | None", bwd_rounding: str,
                bwd_generator: "torch.Generator | None") -> torch.Tensor:
        ctx.bwd, ctx.bwd_rounding, ctx.bwd_generator = bwd, bwd_rounding, bwd_generator
        if fwd is None:
            return x.clone()
        return fwd.quantize(x, rounding, generator)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if ctx.bwd is not None:
            grad = ctx.bwd.quantize(grad.contiguous(), ctx.bwd_rounding, ctx.bwd_generator)
        return grad, None, None, None, None, None, None


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
    fwd = _format(forward, "forward")
    bwd = _format(backward, "backward")
    mode = check_rounding(rounding, generator).value
    bwd_mode = check_rounding(backward_rounding if backward_rounding is not None else rounding,
                              backward_generator).value
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _STEQuantize.apply(x, fwd, bwd, mode, generator, bwd_mode, backward_generator)


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
        self.forward_format = _format(forward, "forward")
        self.backward_format = _format(backward, "backward")
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
