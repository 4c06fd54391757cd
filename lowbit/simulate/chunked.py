"""Low-precision accumulation of convolutions: the running sum rounded every K products.

`quantize_` with ``"accumulate": fmt, "accumulate_every": K`` makes a layer sum its products in
the layer's reduction order and round the running sum to ``fmt`` every K products, the same rule
for every chunked layer::

    acc = R(chunk_1);  acc = R(acc + R(chunk_2));  ...;  y = R(acc + bias)

where ``R`` is ``fmt``'s nearest-even rounding (straight-through in training) and ``chunk_m`` is
the sum, in FP32, of the next K products (fewer in the last chunk). The products of one output
element, in order:

- Linear: ``x[k] · w[o, k]`` for k = 0 … in_features − 1 (each chunk one ``F.linear``);
- Conv1d / Conv2d (groups = 1): one product per kernel tap, in the weight's own order —
  input channel, then kernel row, then kernel column (``w[o].flatten()``); a tap on the padding
  is a product with 0 and counts (as in a hardware MAC array fed the padded input). K = 1 rounds
  after every product, K ≥ C·kh·kw only at the end. Each chunk's FP32 sum adds its products in
  that order.
- ConvTranspose2d (groups = 1): the taps (c, i, j) that land on the output element — those with
  ``y + padding − i·dilation`` a multiple of the stride (and the same for the column), in the
  order c, i, j; a tap that would read outside the input counts as a product with 0 (the
  transposed convolution's border, as a convolution's padding). The zeros a stride spreads
  between input pixels are not products: each output of a stride-2, 4×4 transposed convolution
  has C·2·2 products.

>>> import torch
>>> from lowbit.formats import parse_format
>>> x = torch.tensor([[[[1.0, 2.0 ** -4], [2.0 ** -4, 2.0 ** -4]]]])  # 1 channel, 2×2; w = 1
>>> [float(conv_running_sum(x, torch.ones(1, 1, 2, 2), (1, 1), (1, 1), parse_format("e4m3fn"), k)) for k in (1, 4)]
[1.0, 1.25]

K = 1: 1 + 1/16 = 1.0625 rounds (tie, to even) back to 1 three times; K = 4: 1.1875 rounds once, to 1.25.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence

import torch

from lowbit.formats import NumberFormat
from lowbit.simulate.fake_quant import fake_quantize

__all__ = ["running_sum", "conv_running_sum", "conv_transpose2d_running_sum", "conv_transpose_taps"]


def running_sum(products: "Iterable[tuple[torch.Tensor, torch.Tensor]]", fmt: NumberFormat, every: int,
                shape: "Sequence[int]", like: torch.Tensor) -> torch.Tensor:
    """Sum the products ``a · b`` of the ``(a, b)`` pairs in order, rounding to ``fmt`` every ``every``.

    Every product is an FP32 multiplication (``a * b``, broadcast to ``shape``); each chunk of
    ``every`` products is summed in FP32 left to right, rounded to ``fmt`` and added to the running
    sum, which is rounded again (straight-through in training). No products: zeros of ``shape``
    (dtype and device of ``like``). Without autograd it works in place (the same operations, the
    same bits, three buffers).

    >>> from lowbit.formats import parse_format
    >>> one = torch.ones(1)
    >>> ps = [(torch.tensor([v]), one) for v in (1.0, 2.0 ** -4, 2.0 ** -4)]
    >>> [running_sum(ps, parse_format("e4m3fn"), k, (1,), one).item() for k in (1, 3)]
    [1.0, 1.125]
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every={every!r}; allowed: an int >= 1")
    products = list(products)
    if not products:
        return like.new_zeros(tuple(shape))
    if torch.is_grad_enabled() and any(t.requires_grad for pair in products for t in pair):
        return _running_sum_autograd(products, fmt, every)
    part = like.new_empty(tuple(shape))
    buf = torch.empty_like(part)
    acc: "torch.Tensor | None" = None
    for s in range(0, len(products), every):
        torch.mul(*products[s], out=part)
        for a, b in products[s + 1:s + every]:
            part.add_(torch.mul(a, b, out=buf))
        fmt.quantize(part, out=part)
        if acc is None:
            acc, part = part, buf  # the first chunk's buffer becomes the running sum
            buf = torch.empty_like(acc)
        else:
            fmt.quantize(acc.add_(part), out=acc)
    assert acc is not None
    return acc


def _running_sum_autograd(products: "list[tuple[torch.Tensor, torch.Tensor]]", fmt: NumberFormat,
                          every: int) -> torch.Tensor:
    acc: "torch.Tensor | None" = None
    for s in range(0, len(products), every):
        a, b = products[s]
        part = a * b
        for a, b in products[s + 1:s + every]:
            part = part + a * b
        q = fake_quantize(part, fmt)
        acc = q if acc is None else fake_quantize(acc + q, fmt)
    assert acc is not None
    return acc


def conv_running_sum(x: torch.Tensor, w: torch.Tensor, stride: "Sequence[int]", dilation: "Sequence[int]",
                     fmt: NumberFormat, every: int) -> torch.Tensor:
    """A groups = 1 convolution (1-d or 2-d) of the already padded ``x`` with ``w``, without bias,
    its products summed tap by tap (channel, kernel row, kernel column) and rounded every ``every``.

    ``x``: N × C × spatial, ``w``: O × C × kernel, ``stride`` / ``dilation`` one int per spatial dim.
    """
    spatial = w.dim() - 2
    if x.dim() != w.dim() or x.shape[1] != w.shape[1] or spatial not in (1, 2):
        raise ValueError(f"conv_running_sum needs x N×C×spatial and w O×C×kernel (1 or 2 spatial dims, equal C), "
                         f"got {tuple(x.shape)} and {tuple(w.shape)}")
    kernel = w.shape[2:]
    out = [(x.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(spatial)]
    if min(out) < 1:
        raise ValueError(f"input {tuple(x.shape)} (padded) is smaller than the dilated kernel {tuple(kernel)}")
    if spatial == 1:  # as a 2-d convolution of height 1
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, dilation = (1, stride[0]), (1, dilation[0])
    # the taps' windows, contiguous, in the weight's order (c, i, j): N × C·kh·kw × L
    cols = torch.nn.functional.unfold(x, tuple(w.shape[2:]), dilation=tuple(dilation), stride=tuple(stride))
    wr = w.reshape(w.shape[0], -1)
    taps = [(cols[:, r:r + 1], wr[:, r].reshape(1, -1, 1)) for r in range(wr.shape[1])]
    y = running_sum(taps, fmt, every, (x.shape[0], w.shape[0], cols.shape[2]), x)
    return y.reshape(x.shape[0], w.shape[0], *out)


def conv_transpose_taps(size_in: int, size_out: int, kernel: int, stride: int, padding: int,
                        dilation: int) -> "list[tuple[int, list[tuple[int, int]]]]":
    """For each output phase r (outputs r, r + stride, …): the kernel indices i that land on it and
    the input offset of each (output r + stride·t reads input t + offset).

    >>> conv_transpose_taps(7, 14, 4, 2, 1, 1)
    [(0, [(1, 0), (3, -1)]), (1, [(0, 1), (2, 0)])]
    """
    phases = []
    for r in range(min(stride, size_out)):
        taps = [(i, (r + padding - i * dilation) // stride) for i in range(kernel)
                if (r + padding - i * dilation) % stride == 0]
        phases.append((r, taps))
    return phases


def conv_transpose2d_running_sum(x: torch.Tensor, w: torch.Tensor, stride: "Sequence[int]", padding: "Sequence[int]",
                                 output_padding: "Sequence[int]", dilation: "Sequence[int]", fmt: NumberFormat,
                                 every: int) -> torch.Tensor:
    """A groups = 1 transposed 2-d convolution without bias (``w``: C × O × kh × kw), each output's
    products (the taps landing on it, order c, i, j) summed and rounded every ``every`` products."""
    if x.dim() != 4 or w.dim() != 4 or x.shape[1] != w.shape[0]:
        raise ValueError(f"conv_transpose2d_running_sum needs x N×C×H×W and w C×O×kh×kw, got {tuple(x.shape)} "
                         f"and {tuple(w.shape)}")
    n, c_in, h, wd = x.shape
    sizes = [(s - 1) * st - 2 * p + dl * (k - 1) + op + 1
             for s, st, p, dl, k, op in zip((h, wd), stride, padding, dilation, w.shape[2:], output_padding)]
    out = x.new_zeros(n, w.shape[1], *sizes)
    rows = conv_transpose_taps(h, sizes[0], w.shape[2], stride[0], padding[0], dilation[0])
    cols = conv_transpose_taps(wd, sizes[1], w.shape[3], stride[1], padding[1], dilation[1])
    for (ry, row_taps), (rx, col_taps) in itertools.product(rows, cols):
        ty, tx = -(-(sizes[0] - ry) // stride[0]), -(-(sizes[1] - rx) // stride[1])
        offs_y, offs_x = [o for _, o in row_taps], [o for _, o in col_taps]
        # zero-pad x so every tap's window t + offset (t < ty) is inside: reads outside give 0
        lo_y, lo_x = max([0] + [-o for o in offs_y]), max([0] + [-o for o in offs_x])
        hi_y, hi_x = max([0] + [o + ty - h for o in offs_y]), max([0] + [o + tx - wd for o in offs_x])
        xp = torch.nn.functional.pad(x, (lo_x, hi_x, lo_y, hi_y))

        def tap(c: int, i: int, oy: int, j: int, ox: int, xp: torch.Tensor = xp, ty: int = ty, tx: int = tx,
                lo_y: int = lo_y, lo_x: int = lo_x) -> "tuple[torch.Tensor, torch.Tensor]":
            return (xp[:, c:c + 1, lo_y + oy:lo_y + oy + ty, lo_x + ox:lo_x + ox + tx],
                    w[c, :, i, j].reshape(1, -1, 1, 1))

        taps = (tap(c, i, oy, j, ox) for c in range(c_in) for i, oy in row_taps for j, ox in col_taps)
        out[:, :, ry::stride[0], rx::stride[1]] = running_sum(taps, fmt, every, (n, w.shape[1], ty, tx), x)
    return out
