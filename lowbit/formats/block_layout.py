"""Block layouts: which elements of a tensor share a block scale (block formats: MX, BFP, NVFP4,
``block<k>_…``).

A block format cuts the last axis of its *rows* into blocks of k. By default the rows are the
tensor's own last axis (a Linear weight ``[out, in]``: each output's reduction). A layout names
other rows, for weights whose reduction is not their last axis:

- ``BlockLayout.rows()`` — spec suffix ``_r``: row i is ``x[i]`` flattened, i.e. the rows of
  ``x.reshape(x.shape[0], -1)`` (a plain reshape of a contiguous tensor, no copy). For a conv
  weight ``[O, I/groups, *kernel]`` that is each output channel's whole reduction, the
  I/groups · prod(kernel) products that sum into one output value (the K axis of the im2col
  GEMM, in torch's memory order).
- ``BlockLayout.transposed_rows(g)`` — suffix ``_rt<g>``: the same for a transposed-conv weight
  ``[I, O/g, *kernel]`` with ``g`` groups, whose output channel ``o = j · O/g + c`` sums over the
  input channels of group j and the kernel: row o is ``x[j·I/g:(j+1)·I/g, c]`` flattened
  (input channel major, the kernel in stored order). Rows of
  ``x.unflatten(0, (g, I/g)).transpose(1, 2).reshape(O, -1)`` (a permuted copy).

Tensors of fewer than two dimensions have one row, their last axis, in every layout. The block
scales keep the rows' layout: shape ``(rows, n_blocks)``.

>>> import torch
>>> w = torch.arange(24.0).reshape(2, 3, 2, 2)           # a conv weight [O=2, I=3, 2, 2]
>>> BlockLayout.rows().to_rows(w).shape
torch.Size([2, 12])
>>> t = torch.arange(8.0).reshape(4, 1, 2)               # ConvTranspose1d(4, 2, 2, groups=2): [I=4, O/g=1, 2]
>>> BlockLayout.transposed_rows(2).to_rows(t).tolist()   # output 0: inputs 0-1; output 1: inputs 2-3
[[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
>>> str(BlockLayout.rows()), str(BlockLayout.transposed_rows(2)), str(BlockLayout())
('_r', '_rt2', '')
"""

from __future__ import annotations

import dataclasses
import math

import torch

from lowbit.errors import FormatSpecError

__all__ = ["BlockLayout", "LAST", "standard_strides"]

_KINDS = ("last", "rows", "transposed_rows")


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Which rows a block format cuts into blocks (see the module docstring).

    ``kind``: ``"last"`` (the last axis), ``"rows"`` (``x[i]`` flattened) or
    ``"transposed_rows"`` (a transposed-conv weight's reduction, ``groups`` groups).
    """

    kind: str = "last"
    groups: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise FormatSpecError(f"block layout kind={self.kind!r}; allowed: {', '.join(_KINDS)}")
        g = self.groups
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or (self.kind != "transposed_rows" and g != 1):
            raise FormatSpecError(f"block layout groups={g!r}; allowed: an int >= 1 (only for transposed_rows; "
                                  "1 otherwise)")

    @classmethod
    def rows(cls) -> "BlockLayout":
        """Blocks along each ``x[i]`` flattened (a conv weight's output-channel reduction)."""
        return cls("rows")

    @classmethod
    def transposed_rows(cls, groups: int = 1) -> "BlockLayout":
        """Blocks along each output channel's reduction of a transposed-conv weight with ``groups``."""
        return cls("transposed_rows", groups)

    @classmethod
    def from_suffix(cls, text: "str | None") -> "BlockLayout":
        """The layout of a spec suffix without its underscore: None or "" (last), ``r``, ``rt<g>``."""
        if not text:
            return LAST
        if text == "r":
            return cls.rows()
        if text.startswith("rt") and text[2:].isdigit() and len(text) <= 14:
            return cls.transposed_rows(int(text[2:]))
        raise FormatSpecError(f"block layout suffix _{text}; allowed: _r, _rt<groups>")

    def __str__(self) -> str:
        """The spec suffix: ``""``, ``"_r"`` or ``"_rt<g>"``."""
        return {"last": "", "rows": "_r"}.get(self.kind, f"_rt{self.groups}")

    def describe(self) -> str:
        """One line for format cards."""
        if self.kind == "rows":
            return "each x[i] flattened (a conv weight: each output channel's I/groups x kernel reduction)"
        if self.kind == "transposed_rows":
            return (f"each output channel's reduction of a transposed-conv weight [I, O/g, *kernel], g = {self.groups} "
                    "(input channels of its group x kernel)")
        return "last"

    # ------------------------------------------------------------------ geometry
    def moves(self, ndim: int) -> bool:
        """Whether the rows differ from the last axis for a tensor of ``ndim`` dimensions."""
        if self.kind == "last" or ndim < 2:
            return False
        return not (self.kind == "rows" and ndim == 2)

    def is_view(self) -> bool:
        """Whether the rows are a plain reshape (same memory order) of a contiguous tensor."""
        return self.kind != "transposed_rows"

    def rows_shape(self, shape: "torch.Size | tuple[int, ...]") -> "tuple[int, ...]":
        """Shape of the rows of a tensor of ``shape`` (ValueError when it does not fit)."""
        shape = tuple(shape)
        if not self.moves(len(shape)):
            return shape
        rest = math.prod(shape[2:])
        if self.kind == "rows":
            return shape[0], math.prod(shape[1:])
        g = self.groups
        if shape[0] % g:
            raise ValueError(f"block layout _rt{g}: axis 0 (input channels) of length {shape[0]} is not a multiple of "
                             f"groups={g} (tensor shape {shape})")
        return g * shape[1], shape[0] // g * rest

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as its rows (blocks run along the last axis of the result)."""
        if not self.moves(x.dim()):
            return x
        rows = self.rows_shape(x.shape)
        if self.kind == "rows":
            return x.reshape(rows)
        g = self.groups
        return x.unflatten(0, (g, x.shape[0] // g)).transpose(1, 2).reshape(rows)

    def from_rows(self, rows: torch.Tensor, shape: "torch.Size | tuple[int, ...]") -> torch.Tensor:
        """Inverse of `to_rows`: a tensor of ``shape`` (contiguous)."""
        shape = tuple(shape)
        if not self.moves(len(shape)):
            return rows.reshape(shape)
        if self.kind == "rows":
            return rows.reshape(shape)
        g = self.groups
        inner = (shape[0] // g,) + shape[2:]
        return standard_strides(rows.reshape((g, shape[1]) + inner).transpose(1, 2).reshape(shape))


def standard_strides(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides on every axis, size-1 axes included (a copy if it has other
    strides): torch calls a tensor with odd strides on a size-1 axis contiguous, but a convolution
    may then pick another memory format and sum in another order."""
    want, step = [], 1
    for n in reversed(t.shape):
        want.append(step)
        step *= max(n, 1)
    if tuple(reversed(want)) == t.stride():
        return t
    return t.clone(memory_format=torch.contiguous_format)


#: the default layout: blocks along the last axis
LAST = BlockLayout()
