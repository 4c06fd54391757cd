"""Row-tiled inference of a packed Linear: decode a tile of output rows, multiply it, next tile.

Without autograd, on the CPU with the numba decoders, a `PackedLinear` whose decoded float32
weight is larger than its ``tile_bytes`` (`TILE_BYTES` unless set per layer) runs its forward as
a sequence of tiles: rows ``r0:r1`` of the weight are decoded into this thread's staging buffer
(a tile of at most ``tile_bytes``), and ``addmm`` (``mm`` without a bias) writes
``y[:, r0:r1]`` from there, before the next tile overwrites it. The decoded tile is still in
the core's cache when the GEMM reads it, where a whole decoded weight larger than the cache
(2.4 MB for MiniLM's 1536x384) is written out to the next level and read back from it; and the
staging buffer stays one tile large. A weight that fits in one tile runs the untiled forward
(``F.linear`` of the whole decoded weight), through a plan of the same kind: one prepared decode
call and the GEMM, the fewest Python steps per forward.

Semantics, exactly:

- The decoded weight of every tile equals rows ``r0:r1`` of ``fmt.quantize(weight)`` bit for
  bit (the decoders are the untiled ones, given the tile's codes and side parameters).
- Each output element is one torch GEMM dot product over the whole input dimension, plus the
  bias: the same terms as ``F.linear(x, W, b)``. torch's CPU GEMM (MKL) may sum them in another
  order when a call covers fewer output columns, so the output can differ from the simulated
  layer's in the last bits: at most the float32 summation bound
  ``|y - y_exact| <= gamma_(K+1) * (sum_i |x_i * w_i| + |b|)`` (``gamma_n = n*u / (1 - n*u)``,
  ``u = 2**-24``) that any order meets. Set ``layer.tile_bytes = 0`` for outputs
  ``torch.equal`` to the simulated layer's (one GEMM over the whole weight).
- Used only for float32 inputs and weights whose input is contiguous with at least 2 dims,
  without an accumulation format or quire; anything else runs the untiled forward.

>>> import torch, lowbit as lb
>>> layer = lb.pack_(torch.nn.Linear(512, 1024, bias=False), "posit8_es2")  # 2 MB decoded: tiled
>>> with torch.no_grad():
...     y = layer(torch.randn(3, 512))
>>> eye = torch.eye(512)   # y = W^T: one nonzero product per output, exact in any order
>>> with torch.no_grad():
...     torch.equal(layer(eye), layer.packed_weight.decode().t())
True
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from lowbit.storage.decode import _DATA, _PAIR, _STAGING, _one_argument, _staging_views

if TYPE_CHECKING:
    from lowbit.storage.packed_layers import PackedLinear

__all__ = ["TILE_BYTES"]

#: Default bytes of one decoded tile (``PackedLinear.tile_bytes``): half of a 2 MB per-core L2
#: cache, so the tile, the codes and the GEMM's own buffers stay in it. Measured on MiniLM
#: (batch 1): 0.5 MB and 1 MB tiles run equally fast, 128 KB ones 7 % slower (more calls).
TILE_BYTES = 1 << 20

_PLANS = threading.local()


class _Tile(NamedTuple):
    kernel: Callable[..., Any]
    args: "tuple[Any, ...]"
    weight: torch.Tensor  # the staging buffer's (r1 - r0, cols) view the kernel fills
    r0: int
    r1: int
    weight_t: torch.Tensor  # weight.t(), the GEMM's operand
    bias: "torch.Tensor | None"  # the layer's bias[r0:r1] (a view), when it has a bias
    held: "tuple[Any, ...]" = ()  # the kernel's own arguments, read by address (`decode._one_argument`)


class _TilePlan(NamedTuple):
    """A layer's prepared tiles (empty: the layer is not tiled) and what they were made from."""

    table: Any
    codes: torch.Tensor
    buffer: "torch.Tensor | None"
    tile_bytes: int
    tiles: "tuple[_Tile, ...]"
    rows: int
    cols: int
    bias: "torch.Tensor | None" = None  # the bias parameter the tiles' bias views slice
    sizes: "tuple[int, ...]" = ()  # rows of each tile
    whole: bool = False  # one tile of every row, run as the untiled forward (F.linear)


def tiled_linear(layer: "PackedLinear", x: torch.Tensor, bias: "torch.Tensor | None") -> "torch.Tensor | None":
    """``F.linear(x, weight, bias)`` tile by tile (see the module docstring), or None where the
    untiled forward must run (the layer or the input does not qualify, or a kernel rejects the
    block scales: the reference decoder then says why)."""
    plan = _plan(layer)
    if plan is None or not plan.tiles:
        return None
    if plan.whole:  # the weight fits in one tile: the untiled forward, exactly
        tile = plan.tiles[0]
        if tile.kernel(*tile.args):
            return None
        return F.linear(x, tile.weight, bias)
    cols = plan.cols
    if x.dtype != torch.float32 or x.dim() < 2 or x.shape[-1] != cols or not x.is_contiguous() \
            or x.device.type != "cpu" or (bias is not None and (bias.dtype != torch.float32 or bias.dim() != 1)):
        return None
    # as few Python and torch steps per tile as can be: each one runs after the previous tile's
    # decode and GEMM swept the core's caches, and costs several microseconds there (measured:
    # a bias slice, an output slice and a transpose per tile cost 13 us, a 1536x384 layer 40 us)
    x2 = x.view(-1, cols)
    y = torch.empty(x2.shape[0], plan.rows, dtype=torch.float32)
    outs = y.split(plan.sizes, 1)
    own = bias is None or bias is plan.bias  # the layer's own bias: its tile views are prepared
    for tile, out in zip(plan.tiles, outs):
        if tile.kernel(*tile.args):
            return None
        if bias is None:
            torch.mm(x2, tile.weight_t, out=out)
        else:
            torch.addmm(tile.bias if own else bias[tile.r0:tile.r1], x2, tile.weight_t, out=out)
    return y.view(*x.shape[:-1], plan.rows)


def _plan(layer: "PackedLinear") -> "_TilePlan | None":
    """This thread's tiles of ``layer`` (made on first use, remade when the layer's table, codes,
    ``tile_bytes`` or this thread's staging buffer changed)."""
    plans = getattr(_PLANS, "plans", None)
    if plans is None:
        plans = _PLANS.plans = weakref.WeakKeyDictionary()
    plan = plans.get(layer)
    tile_bytes = layer.tile_bytes
    if plan is not None and plan.table is layer._packed_table and plan.codes is layer._buffers[_DATA] \
            and plan.tile_bytes == tile_bytes and (plan.buffer is None or plan.buffer is _staging_buffer()):
        return plan
    plan = plans[layer] = _make_plan(layer, tile_bytes)
    return plan


def _staging_buffer() -> "torch.Tensor | None":
    return getattr(_STAGING, "bufs", {}).get(torch.float32)


def _make_plan(layer: "PackedLinear", tile_bytes: int) -> _TilePlan:
    shape = tuple(layer._packed_shape)
    data = layer._buffers[_DATA]
    rows, cols = shape if len(shape) == 2 else (0, 0)
    untiled = _TilePlan(layer._packed_table, data, None, tile_bytes, (), rows, cols)
    if len(shape) != 2 or not tile_bytes or not rows * cols or layer.compute_dtype != torch.float32 \
            or data.device.type != "cpu":
        return untiled
    scale = layer._buffers.get("weight_scale")
    lut = layer._table(scale.dtype if scale is not None else torch.float32)
    untiled = untiled._replace(table=layer._packed_table)
    if lut is None or lut.fast is None or lut.values.dtype != torch.float32:
        return untiled
    kernel, codes, bits, table, wide, use_wide, side, row = lut.fast
    align = _row_alignment(kernel.py_func.__name__, bits, cols, row, rows)
    if align is None:
        return untiled
    whole = rows * cols * 4 <= tile_bytes
    per = max(align, tile_bytes // (4 * cols) // align * align)
    count = math.ceil(rows / per)
    per = rows if whole else math.ceil(math.ceil(rows / count) / align) * align  # tiles of (nearly) equal size
    pair = _PAIR[4] if use_wide else None
    buf, (ints, pairs, floats) = _staging_views(per * cols, torch.float32, pair)
    bias = layer._parameters.get("bias")
    bias = bias if isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] == rows else None
    tiles = []
    for r0 in range(0, rows, per):
        r1 = min(rows, r0 + per)
        a, b = r0 * cols, r1 * cols
        part, part_row, part_table = _tile_side(kernel.py_func.__name__, side, row, table, bits, a, b, r0, r1, cols)
        args = (codes[a * bits // 8:(b * bits + 7) // 8], bits, part_table, wide, use_wide, part, part_row, b - a,
                ints, pairs, floats)
        with torch.inference_mode(False):  # plain views, usable inside and outside inference mode
            weight = buf[:b - a].view(r1 - r0, cols)
            part_bias = None if bias is None else bias.detach()[r0:r1]
            tile_kernel, call = _one_argument(kernel, args)
            tiles.append(_Tile(tile_kernel, call, weight, r0, r1, weight.t(), part_bias, args))
    return _TilePlan(layer._packed_table, data, buf, tile_bytes, tuple(tiles), rows, cols, bias,
                     tuple(t.r1 - t.r0 for t in tiles), whole)


def _row_alignment(kernel: str, bits: int, cols: int, row: Any, rows: int) -> "int | None":
    """Rows per tile must be a multiple of this (tiles start on a byte, a scale group or a run);
    None for decoders that are not tiled."""
    align = 8 // math.gcd(cols * bits, 8)  # every tile's codes start on a byte
    if kernel == "decode_lines_into":  # groups along the rows: whole groups per tile
        a_len, g, inner = row
        if a_len != rows or inner != cols:
            return None
        return math.lcm(align, g)
    if kernel == "decode_runs_into":  # one table per run of `row` codes: tiles start on a run
        return math.lcm(align, row // math.gcd(row, cols))
    if kernel in ("decode_into", "decode_blocks_into"):  # per-row / per-group scales, blocks along rows
        return align
    return None


def _tile_side(kernel: str, side: Any, row: Any, table: Any, bits: int, a: int, b: int, r0: int, r1: int, cols: int
               ) -> "tuple[Any, Any, Any]":
    """(side parameter, row argument, table) of the tile of codes ``a:b`` (rows ``r0:r1``)."""
    if kernel == "decode_into":
        if row <= 0 or side.size == 1:  # no scale, or one for the whole tensor
            return side, (row if row <= 0 else max(1, b - a)), table
        return side[a // row:-(-b // row)], row, table  # a scale per row / per group along the row
    if kernel == "decode_lines_into":
        _, g, inner = row
        return side[r0 // g * inner:r1 // g * inner], (r1 - r0, g, inner), table
    if kernel == "decode_runs_into":
        size = 1 << bits
        return side, row, table[a // row * size:-(-b // row) * size]
    codes, factors, valid, tensor_scale, k, products = side  # decode_blocks_into: a scale code per block of each row
    nb = -(-cols // k)
    return (codes[r0 * nb:r1 * nb], factors, valid, tensor_scale, k, products), row, table
