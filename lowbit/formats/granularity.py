"""Granularity of a scale: per tensor, per channel (any axis) or per group, and quantizing with it.

(Also importable as `lowbit.quant.granularity`.)

A `Granularity` splits a tensor into *granules*, each of which gets its own scale (and zero point):

* ``"tensor"``: one granule, the whole tensor. Statistics are 0-d tensors.
* ``"channel"``: one granule per index along ``axis`` (all other axes reduced). Statistics have
  x's number of dimensions with size 1 everywhere except ``axis`` ("keepdim" shape), so they
  broadcast against x directly.
* ``"group"``: contiguous groups of ``group_size`` elements along ``axis``, one set of groups for
  every position on the other axes (the GPTQ/AWQ convention: a ``[out, in]`` weight with groups
  of 128 along ``in`` has ``[out, in/128]`` scales). Statistics have x's shape with ``axis``
  shrunk to the number of groups; `Granularity.expand` repeats them to x's shape.
* ``"token"``: one granule per row over the last dimension (every position on the other axes:
  a token's features), the usual dynamic LLM activation recipe. Statistics have x's shape with
  the last axis shrunk to 1 (``axis`` is ignored).

Statistics (`granule_amax`, `granule_min`, `granule_max`) are taken over the *finite* values of
each granule; a granule without any finite value gives 0.

`quantize_with_scale` computes, per granule with scale s and zero point z,

    x̂ = (fmt.quantize(x / s + z) − z) · s

in float32 (float64 when x is float64; see `compute_dtype`) and returns x̂ in x's dtype.
**Zero scale:** a granule whose scale is exactly 0 (e.g. an all-zero channel, which
EfficientNet-Lite0 has, so its amax is 0) quantizes to exactly +0.0 — the limit of
s·fmt.quantize(x/s) as s → 0 for a saturating format — and never to NaN. A negative, NaN or
infinite scale raises ValueError.

>>> import torch
>>> from lowbit.formats import IntegerFormat
>>> w = torch.tensor([[1.0, -2.0, 0.5, 0.25], [0.0, 0.0, 0.0, 0.0]])
>>> g = Granularity.channel(axis=0)
>>> granule_amax(w, g).tolist()
[[2.0], [0.0]]
>>> quantize_with_scale(w, IntegerFormat(8), granule_amax(w, g) / 127, granularity=g)[1].tolist()
[0.0, 0.0, 0.0, 0.0]
>>> Granularity.group(2, axis=-1).stat_shape(w.shape)
torch.Size([2, 2])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from lowbit.formats import NumberFormat, ScalarFormat, parse_format
from lowbit.formats._float64 import check_float_tensor
from lowbit.formats.granules import granule_grid, normalize_axis
from lowbit.formats.rounding import Rounding, check_rounding

__all__ = [
    "format_low",
    "quantize_clipped",
    "GRANULARITY_KINDS",
    "Granularity",
    "as_granularity",
    "compute_dtype",
    "granule_amax",
    "granule_min",
    "granule_max",
    "granule_minmax",
    "quantize_with_scale",
    "check_scale",
    "expand_to",
]

GRANULARITY_KINDS = ("tensor", "channel", "group", "token")


@dataclasses.dataclass(frozen=True)
class Granularity:
    """How a tensor is split into granules that share a scale (see the module docstring).

    ``kind``: ``"tensor"``, ``"channel"``, ``"group"`` or ``"token"``; ``axis``: the channel / group
    axis (any int, negative counts from the end; ignored for ``"tensor"`` and ``"token"``, whose
    rows always run over the last axis); ``group_size``: the number of
    contiguous elements per group along ``axis`` (``"group"`` only).

    >>> Granularity.channel(1)
    Granularity(kind='channel', axis=1, group_size=None)
    >>> Granularity.from_dict(Granularity.group(32).to_dict()) == Granularity.group(32)
    True
    """

    kind: str = "tensor"
    axis: int = 0
    group_size: "int | None" = None

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITY_KINDS:
            raise ValueError(f"granularity kind={self.kind!r}; allowed: {', '.join(GRANULARITY_KINDS)}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"granularity axis must be an int, got {self.axis!r}")
        if self.kind == "group":
            gs = self.group_size
            if isinstance(gs, bool) or not isinstance(gs, int) or gs < 1:
                raise ValueError(f"granularity group_size={gs!r}; allowed: an int >= 1 for kind='group'")
        elif self.group_size is not None:
            raise ValueError(f"granularity group_size={self.group_size!r} applies to kind='group' only; "
                             f"kind={self.kind!r} takes group_size=None")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def tensor(cls) -> "Granularity":
        """One granule: the whole tensor."""
        return cls("tensor")

    @classmethod
    def channel(cls, axis: int = 0) -> "Granularity":
        """One granule per index along ``axis`` (0: a Linear/Conv weight's output channels)."""
        return cls("channel", axis)

    @classmethod
    def group(cls, group_size: int, axis: int = -1) -> "Granularity":
        """Contiguous groups of ``group_size`` elements along ``axis``."""
        return cls("group", axis, group_size)

    @classmethod
    def token(cls) -> "Granularity":
        """One granule per row over the last dimension (per token of an activation).

        >>> Granularity.token().stat_shape((2, 5, 8))
        torch.Size([2, 5, 1])
        """
        return cls("token")

    def to_dict(self) -> "dict[str, Any]":
        """JSON-able form; `from_dict` reads it back."""
        return {"kind": self.kind, "axis": self.axis, "group_size": self.group_size}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "Granularity":
        unknown = set(d) - {"kind", "axis", "group_size"}
        if unknown:
            raise ValueError(f"granularity: unknown key(s) {sorted(unknown)}; allowed: kind, axis, group_size")
        return cls(d.get("kind", "tensor"), d.get("axis", 0), d.get("group_size"))

    # ------------------------------------------------------------------ shapes
    def _axis(self, ndim: int) -> int:
        if ndim == 0:
            raise ValueError(f"granularity {self.kind!r} needs a tensor with at least 1 dimension, got a 0-d tensor")
        return normalize_axis(self.axis, ndim)

    def _groups(self, shape: torch.Size) -> "tuple[int, int]":
        a = self._axis(len(shape))
        return a, granule_grid(shape, self.axis, self.group_size)[a]

    def stat_shape(self, shape: "torch.Size | tuple[int, ...]") -> torch.Size:
        """Shape of the per-granule statistics (and scales) of a tensor of ``shape``."""
        shape = torch.Size(shape)
        if self.kind == "tensor":
            return torch.Size([])
        if self.kind == "token":
            self._axis(len(shape))
            return shape[:-1] + (1,)
        self._axis(len(shape))
        return torch.Size(granule_grid(shape, self.axis, self.group_size if self.kind == "group" else None))

    def num_granules(self, shape: "torch.Size | tuple[int, ...]") -> int:
        """How many granules a tensor of ``shape`` has."""
        return int(torch.Size(self.stat_shape(shape)).numel())

    def reduce(self, x: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce ``x`` per granule with ``op`` in ``"amax"``, ``"amin"``, ``"sum"`` (shape: `stat_shape`).

        Non-finite values are not filtered here (see `granule_amax` for the statistics).
        """
        if op not in ("amax", "amin", "sum"):
            raise ValueError(f"op={op!r}; allowed: amax, amin, sum")
        fn = getattr(torch, op)
        if self.kind == "tensor":
            return fn(x) if x.numel() else torch.zeros((), dtype=x.dtype, device=x.device)
        if self.kind == "token":
            self._axis(x.dim())
            if x.shape[-1] == 0:
                return torch.zeros(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)
            return fn(x, dim=-1, keepdim=True)
        if self.kind == "channel":
            a = self._axis(x.dim())
            dims = [i for i in range(x.dim()) if i != a]
            return fn(x, dim=dims, keepdim=True) if dims else x.clone()
        a, ngroups = self._groups(x.shape)
        grouped = x.reshape(x.shape[:a] + (ngroups, self.group_size) + x.shape[a + 1:])
        return fn(grouped, dim=a + 1)

    def expand(self, stat: torch.Tensor, shape: "torch.Size | tuple[int, ...]") -> torch.Tensor:
        """A per-granule tensor (`stat_shape`, or anything broadcastable to it) broadcastable to ``shape``.

        For ``"tensor"`` and ``"channel"`` that is ``stat`` itself; for ``"group"`` every
        statistic is repeated ``group_size`` times along ``axis``.
        """
        want = self.stat_shape(shape)
        if stat.numel() == 1:
            stat = stat.reshape(())  # one number: the same for every granule
        try:
            ok = torch.broadcast_shapes(stat.shape, want) == want
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"per-granule tensor of shape {tuple(stat.shape)} does not fit granularity "
                             f"{self.kind!r} (axis={self.axis}) of a tensor of shape {tuple(shape)}; "
                             f"expected shape {tuple(want)} (or broadcastable to it)")
        if self.kind != "group":
            return stat
        a = self._axis(len(shape))
        stat = stat.expand(want)
        return stat.repeat_interleave(self.group_size, dim=a)  # type: ignore[arg-type]

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a ``[granules, elements]`` view/copy; granule i is element i of the flattened `stat_shape`."""
        if self.kind == "tensor":
            return x.reshape(1, -1)
        if self.kind == "token":
            self._axis(x.dim())
            return x.reshape(-1, x.shape[-1])
        if self.kind == "channel":
            a = self._axis(x.dim())
            return x.movedim(a, 0).reshape(x.shape[a], -1)
        a, ngroups = self._groups(x.shape)
        grouped = x.reshape(x.shape[:a] + (ngroups, self.group_size) + x.shape[a + 1:])
        return grouped.movedim(a + 1, -1).reshape(-1, self.group_size)

    def __str__(self) -> str:
        if self.kind in ("tensor", "token"):
            return self.kind
        if self.kind == "channel":
            return f"channel(axis={self.axis})"
        return f"group({self.group_size}, axis={self.axis})"


def as_granularity(value: "Granularity | str | Mapping[str, Any] | None") -> Granularity:
    """A `Granularity` from itself, None (per tensor), ``"tensor"``, ``"channel"`` (axis 0), ``"token"``
    (rows over the last axis) or a dict.

    >>> as_granularity("channel")
    Granularity(kind='channel', axis=0, group_size=None)
    """
    if value is None:
        return Granularity()
    if isinstance(value, Granularity):
        return value
    if isinstance(value, str):
        if value == "group":
            raise ValueError("granularity 'group' needs a size: use Granularity.group(size, axis)")
        return Granularity(value)
    if isinstance(value, Mapping):
        return Granularity.from_dict(value)
    raise TypeError(f"granularity must be a Granularity, 'tensor', 'channel', a dict or None; "
                    f"got {type(value).__name__}")


# ---------------------------------------------------------------------- statistics
def _finite_fill(x: torch.Tensor, fill: float) -> torch.Tensor:
    finite = torch.isfinite(x)
    return x if bool(finite.all()) else torch.where(finite, x, torch.full_like(x, fill))


def granule_amax(x: torch.Tensor, granularity: "Granularity | str | None" = None) -> torch.Tensor:
    """Largest |x| over the finite values of each granule (0 for a granule without any).

    >>> granule_amax(torch.tensor([[1.0, -3.0], [float("inf"), 2.0]]), "channel").tolist()
    [[3.0], [2.0]]
    """
    x = check_float_tensor(x)
    g = as_granularity(granularity)
    return g.reduce(_finite_fill(x.detach().abs(), 0.0), "amax")


def granule_min(x: torch.Tensor, granularity: "Granularity | str | None" = None) -> torch.Tensor:
    """Smallest finite value of each granule (0 for a granule without any).

    >>> granule_min(torch.tensor([[1.0, -3.0], [4.0, 2.0]]), "channel").tolist()
    [[-3.0], [2.0]]
    """
    x = check_float_tensor(x)
    g = as_granularity(granularity)
    m = g.reduce(_finite_fill(x.detach(), float("inf")), "amin")
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def granule_max(x: torch.Tensor, granularity: "Granularity | str | None" = None) -> torch.Tensor:
    """Largest finite value of each granule (0 for a granule without any).

    >>> granule_max(torch.tensor([[1.0, -3.0], [-4.0, -2.0]]), "channel").tolist()
    [[1.0], [-2.0]]
    """
    x = check_float_tensor(x)
    g = as_granularity(granularity)
    m = g.reduce(_finite_fill(x.detach(), float("-inf")), "amax")
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def granule_minmax(
    x: torch.Tensor, granularity: "Granularity | str | None" = None
) -> "tuple[torch.Tensor, torch.Tensor]":
    """``(granule_min(x), granule_max(x))``."""
    return granule_min(x, granularity), granule_max(x, granularity)


# ---------------------------------------------------------------------- quantization
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype `quantize_with_scale` computes in: float64 for float64 input, else float32.

    float16/bfloat16 inputs are widened so that x/s + z does not overflow or lose the small
    values a scale is meant to bring into range; the result is rounded back once at the end.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scalar_format(fmt: "str | NumberFormat") -> ScalarFormat:
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(f, ScalarFormat):
        raise TypeError(f"fmt must be a scalar element format (posit, minifloat, fixed point, integer), "
                        f"got {f} ({type(f).__name__}); block and learned formats fit their own scales")
    return f


def _as_tensor(value: "float | torch.Tensor", name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor(float(value), dtype=dtype, device=device)


def expand_to(granularity: "Granularity | str | None", t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` ready to broadcast against ``shape``: via `Granularity.expand`, or as is for None.

    With ``granularity=None`` any tensor that broadcasts to ``shape`` is accepted (a number, a
    per-channel keepdim tensor, ...); a named granularity checks ``t`` against its `stat_shape`.
    """
    if granularity is not None:
        return as_granularity(granularity).expand(t, shape)
    try:
        ok = torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"per-granule tensor of shape {tuple(t.shape)} does not broadcast to the tensor's shape "
                         f"{tuple(shape)}; pass granularity= for per-group scales")
    return t


def check_scale(scale: torch.Tensor, name: str = "scale") -> None:
    """Raise ValueError unless every scale is finite and ≥ 0."""
    bad = ~torch.isfinite(scale) | (scale < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and >= 0 (0 quantizes a granule to 0); got {float(scale[bad][0])}")


def format_low(fmt: NumberFormat) -> float:
    """The lowest finite value of a scalar format: ``fmt.min`` for grids (int8: −128), −max for
    signed floats and posits, 0 for unsigned formats.

    >>> format_low(_scalar_format("int8")), format_low(_scalar_format("e4m3fn")), format_low(_scalar_format("uint4"))
    (-128.0, -448.0, 0.0)
    """
    low = getattr(fmt, "min", None)
    if isinstance(low, (int, float)):
        return float(low)
    return -float(fmt.max) if getattr(fmt, "signed", True) else 0.0  # type: ignore[attr-defined]


def quantize_clipped(
    x: torch.Tensor,
    fmt: "str | NumberFormat",
    scale: "float | torch.Tensor",
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """x̂ = s · fmt.quantize(clamp(x / s, lowest, max)) with one scale s, in `compute_dtype`; x's dtype.

    The clip at the format's range makes formats that overflow to NaN or inf (``e4m3fn``,
    ``e5m2``) saturate like the others — what a clipping threshold s · fmt.max means. For
    saturating formats it equals `quantize_with_scale`. s = 0 gives exact zeros.

    >>> quantize_clipped(torch.tensor([1.0, 500.0, -9e3]), "e4m3fn", 1.0).tolist()
    [1.0, 448.0, -448.0]
    """
    x = check_float_tensor(x)
    f = _scalar_format(fmt)
    cdt = compute_dtype(x.dtype)
    s = _as_tensor(scale, "scale", cdt, x.device)
    check_scale(s)
    if not bool((s != 0).all()):
        return torch.zeros_like(x)
    v = (x.detach().to(cdt) / s).clamp_(format_low(f), float(f.max))
    return (f.quantize(v, rounding, generator) * s).to(x.dtype)


def quantize_with_scale(
    x: torch.Tensor,
    fmt: "str | NumberFormat",
    scale: "float | torch.Tensor",
    zero_point: "float | torch.Tensor | None" = None,
    granularity: "Granularity | str | None" = None,
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """x̂ = (fmt.quantize(x / scale + zero_point) − zero_point) · scale, per granule.

    ``scale`` and ``zero_point``: per-granule tensors of ``granularity`` (its `stat_shape`, or
    anything broadcastable to it, e.g. a number); with ``granularity=None``, anything that
    broadcasts to x (numbers, keepdim per-channel tensors). Arithmetic is in `compute_dtype` (float32, float64 for
    float64 x); the result has x's dtype. A zero scale gives exactly 0 for its granule (see the
    module docstring). Not differentiable (use `lowbit.quant.qat.LSQQuantizer` for training).

    >>> import torch
    >>> x = torch.tensor([0.30, -1.0, 2.6])
    >>> quantize_with_scale(x, "int4", 0.25).tolist()     # int4 grid × 0.25: −2 … 1.75
    [0.25, -1.0, 1.75]
    >>> quantize_with_scale(x, "uint4", 0.25, zero_point=8).tolist()  # same grid, shifted codes
    [0.25, -1.0, 1.75]
    """
    x = check_float_tensor(x)
    f = _scalar_format(fmt)
    check_rounding(rounding, generator)
    cdt = compute_dtype(x.dtype)
    s = expand_to(granularity, _as_tensor(scale, "scale", cdt, x.device), x.shape)
    check_scale(s)
    zero = s == 0
    safe = torch.where(zero, torch.ones_like(s), s) if bool(zero.any()) else s
    xc = x.detach().to(cdt)
    v = xc / safe
    z = None
    if zero_point is not None:
        z = expand_to(granularity, _as_tensor(zero_point, "zero_point", cdt, x.device), x.shape)
        v = v + z
    q = f.quantize(v, rounding, generator)
    if z is not None:
        q = q - z
    y = q * safe
    if safe is not s:
        y = torch.where(zero, torch.zeros_like(y), y)
    return y.to(x.dtype)
