"""Exact accumulation (the quire): matmul, linear and convolutions rounded once.

`exact_matmul(a, b, format=None)` is the exact sum over k of the exact products a_ik · b_kj,
rounded **once**: to ``format`` (a scalar lowbit format: posit, minifloat, fixed point, integer)
if given, else to the result dtype with round-to-nearest-even. The layer forms take what a layer
has (already-quantized input, weight, bias, an output format or None); the bias is added
exactly before the one rounding. docs/semantics.md, "The quire", states the rules.

Backward (training): straight through the final rounding; ``backward="fp32"`` (default) computes
the gradient matmuls as an ordinary matmul in the operands' dtype (FP32 for FP32 tensors),
``backward="quire"`` computes every gradient element (grad_input, grad_weight, grad_bias) as one
exact sum rounded once to the operand's dtype.

>>> import torch, lowbit as lb
>>> a = torch.tensor([3.2e7, 1.0, -1.0, 8e7])
>>> b = torch.tensor([4e7, 1.0, -1.0, -1.6e7])
>>> torch.dot(a, b).item(), lb.exact_matmul(a, b).item()
(0.0, 2.0)
>>> lb.exact_matmul(a.double() * 10, b.double() * 10).item() / 100   # float64 returns 0 here
2.0
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from lowbit.formats import NumberFormat, parse_format
from lowbit.formats.base import ScalarFormat

__all__ = ["exact_matmul", "exact_linear", "exact_conv1d", "exact_conv2d", "exact_conv_transpose2d"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: how the backward pass accumulates its gradient matmuls
BACKWARDS = ("fp32", "quire")
_DTYPE_FORMATS = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _check_format(format: "str | NumberFormat | None") -> "ScalarFormat | None":
    if format is None:
        return None
    fmt = parse_format(format) if isinstance(format, str) else format
    if not isinstance(fmt, ScalarFormat):
        raise ValueError(f"format={format!r} cannot round a quire: allowed are scalar element formats"
                         f" (posit, minifloat, fixed point, integer) or None (the result dtype)")
    return fmt


def _check_backward(backward: Any) -> str:
    if backward not in BACKWARDS:
        raise ValueError(f"backward={backward!r}; allowed: {', '.join(repr(b) for b in BACKWARDS)}")
    return backward


def _check_operand(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {got}")
    return x


def _round_quire(a3: torch.Tensor, b3: torch.Tensor, fmt: "ScalarFormat | None", dtype: torch.dtype,
                 backend: "str | None") -> torch.Tensor:
    """The exact [G, m, k] × [G, k, n] products summed and rounded once, as ``dtype``."""
    from lowbit.kernels.quire import quire_matmul

    if fmt is None and dtype == torch.float64:
        return quire_matmul(a3, b3, odd=False, backend=backend)
    # Round to odd at float64's 53 bits, then round that float64 once more to the target.
    # Exact for every target whose rounding boundaries (its values, the midpoints between
    # them, its overflow threshold) are float64 numbers with an even last significand bit,
    # i.e. need <= 52 significant bits, inside [2**-1073, 2**1023]: float32/16, bfloat16,
    # minifloats (<= 23 fraction bits), fixed point (<= 32-bit words), posits (n <= 32; the
    # boundary of two posits is an (n+1)-bit posit; |scale| keeps them inside 2**±1000).
    # Proof: if the exact sum x is a float64, RO(x) = x. Otherwise RO(x) is the odd float64 in
    # the open interval between the two neighbouring even float64s around x; no boundary lies
    # strictly inside that interval (boundaries are even float64s), so x and RO(x) round to the
    # same target value. Past the float64 range RO gives ±max float64, beyond every target's
    # overflow threshold, as x is; below it ±2**-1074, nonzero with x's sign, as posits need.
    y = quire_matmul(a3, b3, odd=True, backend=backend)
    target = fmt if fmt is not None else (None if dtype == torch.float32 else parse_format(_DTYPE_FORMATS[dtype]))
    if target is None:
        return y.to(torch.float32)  # torch's float64 -> float32 cast rounds once, nearest even
    y = target.quantize(y)
    out = y.to(dtype)
    if fmt is not None and dtype != torch.float64:
        bad = torch.isfinite(y) & (out.to(torch.float64) != y)
        if bool(bad.any()):
            raise ValueError(f"values of format {fmt} do not fit dtype {dtype}: pass dtype=torch.float64")
    return out


class _ExactMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, fmt: "ScalarFormat | None", dtype: torch.dtype,
                backend: "str | None", backward: str) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, b)
        ctx.backend, ctx.quire = backend, backward == "quire"
        return _exact_matmul(a, b, fmt, dtype, backend)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        a, b = ctx.saved_tensors
        if ctx.quire:
            ga, gb = _quire_grads(a, b, grad, ctx.needs_input_grad[:2], ctx.backend)
            return ga, gb, None, None, None, None
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(ctx.needs_input_grad[0])
            b_ = b.detach().requires_grad_(ctx.needs_input_grad[1])
            out = torch.matmul(a_, b_)
            wrt = [t for t in (a_, b_) if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wrt, grad.to(out.dtype)))
        ga = next(grads) if ctx.needs_input_grad[0] else None
        gb = next(grads) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None, None


def _reduced_product(left: torch.Tensor, right: torch.Tensor, batch: "tuple[int, ...]", shape: torch.Size,
                     dtype: torch.dtype, backend: "str | None") -> torch.Tensor:
    """``left @ right`` ([*batch, p, r] × [*batch, r, q]) summed exactly over the batch dims that a
    tensor of ``shape`` ([*bb, p, q]) broadcasts over, rounded once, reshaped to ``shape``."""
    nb = len(batch)
    own = (1,) * (nb - (len(shape) - 2)) + tuple(shape[:-2])
    reduced = [i for i in range(nb) if own[i] == 1 and batch[i] != 1]
    kept = [i for i in range(nb) if i not in reduced]
    sizes = [batch[i] for i in kept]
    p, q = left.shape[-2], right.shape[-1]
    if reduced:  # the reduced batch dims join the contraction axis r
        left = left.permute(*kept, nb, *reduced, nb + 1).reshape(*sizes, p, -1)
        right = right.permute(*kept, *reduced, nb, nb + 1).reshape(*sizes, -1, q)
    out = _exact_matmul(left, right, None, dtype, backend) if left.shape[-1] else left.new_zeros((*sizes, p, q))
    return out.reshape(shape).to(dtype)


def _quire_grads(a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor, needs: "tuple[bool, ...]",
                 backend: "str | None") -> "tuple[torch.Tensor | None, torch.Tensor | None]":
    """grad_a = grad · bᵀ and grad_b = aᵀ · grad, each element one exact sum rounded once."""
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    g = grad.unsqueeze(-1) if b.dim() == 1 else grad
    g = g.unsqueeze(-2) if a.dim() == 1 else g
    batch = tuple(torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    g = g.to(torch.promote_types(g.dtype, torch.promote_types(a.dtype, b.dtype))).expand(*batch, m, n)
    ga = gb = None
    if needs[0]:
        ga = _reduced_product(g, b2.expand(*batch, k, n).transpose(-1, -2), batch, a2.shape, a.dtype, backend)
        ga = ga.reshape(a.shape)
    if needs[1]:
        gb = _reduced_product(a2.expand(*batch, m, k).transpose(-1, -2), g, batch, b2.shape, b.dtype, backend)
        gb = gb.reshape(b.shape)
    return ga, gb


def _exact_matmul(a: torch.Tensor, b: torch.Tensor, fmt: "ScalarFormat | None", dtype: torch.dtype,
                  backend: "str | None") -> torch.Tensor:
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError(f"exact_matmul needs operands of at least 1 dimension, got shapes {tuple(a.shape)}"
                         f" and {tuple(b.shape)}")
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"exact_matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied"
                         f" ({a2.shape[-1]} != {b2.shape[-2]})")
    batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    m, k, n = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    groups = math.prod(batch)
    a3 = a2.expand(*batch, m, k).reshape(groups, m, k)
    b3 = b2.expand(*batch, k, n).reshape(groups, k, n)
    out = _round_quire(a3, b3, fmt, dtype, backend).reshape(*batch, m, n)
    if a.dim() == 1:
        out = out.squeeze(-2)
    if b.dim() == 1:
        out = out.squeeze(-1)
    return out


def exact_matmul(a: torch.Tensor, b: torch.Tensor, format: "str | NumberFormat | None" = None, *,
                 dtype: "torch.dtype | None" = None, backend: "str | None" = None,
                 backward: str = "fp32") -> torch.Tensor:
    """``a @ b`` (torch.matmul shapes and broadcasting) with exact accumulation, rounded once.

    The exact sum of the exact products, rounded once to ``format`` if given (posits by the posit
    standard, as ``fmt.quantize`` does), else to the result dtype ``torch.result_type(a, b)``
    with round-to-nearest-even, overflow to ±inf. NaN and inf follow IEEE (inf − inf, inf · 0 →
    NaN), then the format's own rule (posits: NaR). An empty sum is +0, as is an exact zero.
    ``dtype``: the output dtype (default: the result dtype); format values must fit it exactly.
    ``backend``: ``"numba"`` / ``"reference"`` / ``"auto"`` as in `lowbit.kernels`.
    Backward: straight through the rounding; ``backward="fp32"``: the gradients of ``torch.matmul``
    in the operands' dtype; ``backward="quire"``: each gradient element is one exact sum rounded
    once to its operand's dtype.

    >>> import torch, lowbit as lb
    >>> a = torch.tensor([[1.0, 2.0**-24, 2.0**-60]]); b = torch.ones(3, 1)
    >>> (a @ b).item(), lb.exact_matmul(a, b).item(), lb.exact_matmul(a, b, "posit8_es2").item()
    (1.0, 1.0000001192092896, 1.0)
    """
    _check_operand("a", a)
    _check_operand("b", b)
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    fmt = _check_format(format)
    _check_backward(backward)
    if dtype is None:
        dtype = torch.result_type(a, b)
    elif dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of float16, bfloat16, float32, float64, got {dtype}")
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _ExactMatmul.apply(a, b, fmt, dtype, backend, backward)
    return _exact_matmul(a, b, fmt, dtype, backend)


def exact_linear(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None" = None,
                 format: "str | NumberFormat | None" = None, *, backend: "str | None" = None,
                 backward: str = "fp32") -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with exact accumulation: exact(x·wᵀ + bias) rounded once.

    ``backward``: ``"fp32"`` or ``"quire"``, as in `exact_matmul`.

    >>> import torch, lowbit as lb
    >>> lb.simulate.exact.exact_linear(torch.tensor([[1e8, 1.0]]), torch.tensor([[1.0, 1.0]]),
    ...                                 torch.tensor([-1e8])).item()
    1.0
    """
    _check_operand("x", x)
    _check_operand("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-d [out_features, in_features], got shape {tuple(weight.shape)}")
    if bias is not None:
        _check_operand("bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        x = torch.cat([x, torch.ones_like(x[..., :1])], -1)
        wide = torch.promote_types(weight.dtype, bias.dtype)  # widening is exact; a narrowing cast would round b
        weight = torch.cat([weight.to(wide), bias.to(wide)[:, None]], 1)
    return exact_matmul(x, weight.t(), format, backend=backend, backward=backward)


def _pair(v: "int | Sequence[int]", name: str) -> "tuple[int, int]":
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= 0 for i in t):
        raise ValueError(f"{name} must be an int >= 0 or a pair of them, got {v!r}")
    return t  # type: ignore[return-value]


def exact_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None" = None,
                 stride: "int | Sequence[int]" = 1, padding: "int | Sequence[int] | str" = 0,
                 dilation: "int | Sequence[int]" = 1, groups: int = 1, format: "str | NumberFormat | None" = None,
                 *, backend: "str | None" = None, backward: str = "fp32") -> torch.Tensor:
    """``F.conv2d`` (zero padding) with exact accumulation, bias included, rounded once.

    Built on im2col (strided slices) into one `exact_matmul` per call; ``padding`` may be ints or ``"valid"`` /
    ``"same"`` (as torch: stride 1 only for "same"). ``backward="quire"``: grad_weight and grad_bias are
    the matmul's exact gradients, grad_input an exact transposed convolution of the gradient, each
    element rounded once.
    """
    _check_backward(backward)
    _check_operand("x", x)
    _check_operand("weight", weight)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"exact_conv2d needs x [N, C, H, W] and weight [O, C/groups, kh, kw], got"
                         f" {tuple(x.shape)} and {tuple(weight.shape)}")
    out_ch, cin_g, kh, kw = weight.shape
    if not isinstance(groups, int) or groups < 1 or x.shape[1] != cin_g * groups or out_ch % groups:
        raise ValueError(f"groups={groups!r} does not fit x channels {x.shape[1]} and weight {tuple(weight.shape)}")
    st, dl = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pd = (0, 0)
        elif padding == "same":
            if st != (1, 1):
                raise ValueError("padding='same' needs stride=1 (as in torch)")
            th, tw = dl[0] * (kh - 1), dl[1] * (kw - 1)
            x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
            pd = (0, 0)
        else:
            raise ValueError(f"padding must be ints, 'valid' or 'same', got {padding!r}")
    else:
        pd = _pair(padding, "padding")
    if pd != (0, 0):
        x = F.pad(x, (pd[1], pd[1], pd[0], pd[0]))
    n, _, h, w = x.shape
    oh = (h - dl[0] * (kh - 1) - 1) // st[0] + 1
    ow = (w - dl[1] * (kw - 1) - 1) // st[1] + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"exact_conv2d: the (padded) input {h}x{w} is smaller than the kernel's reach")
    quire_dx = backward == "quire" and torch.is_grad_enabled() and x.requires_grad
    xp = x
    if quire_dx:  # im2col's backward would add kh·kw rounded terms: grad_input comes from _ExactConvInputGrad
        x = x.detach()
    # im2col by strided slices, written once into [groups, C/groups · kh · kw (+ 1 for the bias), N · oh · ow]
    kk, rows = kh * kw, cin_g * kh * kw
    wm = weight.reshape(groups, out_ch // groups, rows)
    cols = x.new_empty((groups, rows + (bias is not None), n * oh * ow))
    grid = cols[:, :rows].unflatten(1, (cin_g, kk)).unflatten(3, (n, oh, ow))  # [G, C/G, kk, N, oh, ow]
    for u in range(kh):
        for v in range(kw):
            patch = x[:, :, u * dl[0]: u * dl[0] + st[0] * (oh - 1) + 1: st[0],
                      v * dl[1]: v * dl[1] + st[1] * (ow - 1) + 1: st[1]]  # [N, C, oh, ow]
            grid[:, :, u * kw + v] = patch.transpose(0, 1).unflatten(0, (groups, cin_g))
    if bias is not None:
        _check_operand("bias", bias)
        if bias.shape != (out_ch,):
            raise ValueError(f"bias must have shape ({out_ch},), got {tuple(bias.shape)}")
        cols[:, rows] = 1.0
        wide = torch.promote_types(wm.dtype, bias.dtype)  # widening is exact; a narrowing cast would round b
        wm = torch.cat([wm.to(wide), bias.to(wide).reshape(groups, -1, 1)], 2)
    y = exact_matmul(wm, cols, format, backend=backend, backward=backward)  # [G, O/G, N·oh·ow]
    y = y.reshape(out_ch, n, oh, ow).transpose(0, 1).contiguous()
    if quire_dx:
        y = _ExactConvInputGrad.apply(y, xp, weight.detach(), st, dl, groups, backend)
    return y.squeeze(0) if unbatched else y


class _ExactConvInputGrad(torch.autograd.Function):
    """Identity on a convolution's output whose backward adds the exact grad_input of its (padded) input."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: "tuple[int, int]",
                dilation: "tuple[int, int]", groups: int, backend: "str | None") -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.x_shape, ctx.x_dtype, ctx.args = x.shape, x.dtype, (stride, dilation, groups, backend)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        stride, dilation, groups, backend = ctx.args
        h, w = ctx.x_shape[-2:]
        oh, ow = grad.shape[-2:]
        kh, kw = weight.shape[-2:]
        extra = (h - ((oh - 1) * stride[0] + dilation[0] * (kh - 1) + 1),
                 w - ((ow - 1) * stride[1] + dilation[1] * (kw - 1) + 1))  # rows / cols no window reached
        gw = weight.to(torch.promote_types(weight.dtype, grad.dtype))
        gx = exact_conv_transpose2d(grad.to(gw.dtype), gw, None, stride, 0, extra, groups, dilation, backend=backend)
        return grad, gx.to(ctx.x_dtype), None, None, None, None, None


def exact_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None" = None, stride: int = 1,
                 padding: "int | str" = 0, dilation: int = 1, groups: int = 1,
                 format: "str | NumberFormat | None" = None, *, backend: "str | None" = None,
                 backward: str = "fp32") -> torch.Tensor:
    """``F.conv1d`` (zero padding) with exact accumulation, bias included, rounded once (``backward``: as
    `exact_conv2d`)."""
    _check_operand("x", x)
    _check_operand("weight", weight)
    if weight.dim() != 3 or x.dim() not in (2, 3):
        raise ValueError(f"exact_conv1d needs x [N, C, L] and weight [O, C/groups, k], got {tuple(x.shape)}"
                         f" and {tuple(weight.shape)}")
    pad: "Any" = padding if isinstance(padding, str) else (0, padding)
    y = exact_conv2d(x.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, stride), pad, (1, dilation), groups,
                     format, backend=backend, backward=backward)
    return y.squeeze(-2)


def exact_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: "torch.Tensor | None" = None,
                           stride: "int | Sequence[int]" = 1, padding: "int | Sequence[int]" = 0,
                           output_padding: "int | Sequence[int]" = 0, groups: int = 1,
                           dilation: "int | Sequence[int]" = 1, format: "str | NumberFormat | None" = None,
                           *, backend: "str | None" = None, backward: str = "fp32") -> torch.Tensor:
    """``F.conv_transpose2d`` with exact accumulation, bias included, rounded once.

    The input is spread with stride − 1 zeros, padded by dilation·(k − 1) − padding
    (+ output_padding at the end), and correlated with the flipped, transposed weight; the
    inserted zeros add exact zero products, so the sum is the transposed convolution's exactly.
    """
    _check_operand("x", x)
    _check_operand("weight", weight)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"exact_conv_transpose2d needs x [N, C, H, W] and weight [C, O/groups, kh, kw], got"
                         f" {tuple(x.shape)} and {tuple(weight.shape)}")
    cin, cout_g, kh, kw = weight.shape
    if not isinstance(groups, int) or groups < 1 or x.shape[1] != cin or cin % groups:
        raise ValueError(f"groups={groups!r} does not fit x channels {x.shape[1]} and weight {tuple(weight.shape)}")
    st, pd = _pair(stride, "stride"), _pair(padding, "padding")
    op, dl = _pair(output_padding, "output_padding"), _pair(dilation, "dilation")
    n, c, h, w = x.shape
    if st != (1, 1):
        spread = x.new_zeros((n, c, (h - 1) * st[0] + 1, (w - 1) * st[1] + 1))
        spread[:, :, ::st[0], ::st[1]] = x
        x = spread
    ph, pw = dl[0] * (kh - 1) - pd[0], dl[1] * (kw - 1) - pd[1]
    x = F.pad(x, (pw, pw + op[1], ph, ph + op[0]))  # negative pads crop
    cin_g = cin // groups
    wt = weight.reshape(groups, cin_g, cout_g, kh, kw).transpose(1, 2).flip(-1, -2)
    wt = wt.reshape(groups * cout_g, cin_g, kh, kw)
    y = exact_conv2d(x, wt, bias, 1, 0, dl, groups, format, backend=backend, backward=backward)
    return y.squeeze(0) if unbatched else y
