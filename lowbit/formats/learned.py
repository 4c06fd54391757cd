"""Data-dependent formats whose levels are fitted to the tensor they quantize.

- ``binary`` (XNOR-Net, Rastegari et al. 2016): x -> sign(x) · mean|x|, with sign(0) = +
  (−0 too). Code bit 1 = negative. ``params = {"scale": s}``.
- ``ternary`` (Ternary Weight Networks, Li et al. 2016): threshold Δ = 0.7 · mean|x|;
  α = mean of |x| over the elements with |x| > Δ; x -> α·sign(x) where |x| > Δ, else 0.
  Codes are 2-bit two's complement: 0 -> 0, 1 -> +α, 3 -> −α (2 is unused).
  ``params = {"scale": α}``. An all-zero tensor gives α = 0 (all zeros, no NaN).
- ``codebook<k>`` (k-means, as Deep Compression, Han et al. 2016), 1 <= k <= 8: at most 2^k
  levels. Lloyd's algorithm in one dimension on the sorted values, from the linear
  initialisation (2^k levels evenly spaced from min to max, which Deep Compression found best),
  until the assignment stops changing (at most `Codebook.MAX_ITERATIONS` steps). When it has
  converged with empty clusters while some point is not represented exactly, one empty level is
  moved onto the point farthest from its level and the iteration resumes, so a tensor with at
  most 2^k distinct values is normally reproduced exactly. Those iterations use float64 means;
  they are then finished exactly (`Codebook._settle`): levels = the exact means of the clusters
  rounded into the parameter precision, values reassigned to the nearest of those levels (a tie
  to the lower one), repeated until nothing moves — so every value's level is its nearest and
  every level the mean of its values. Codes index ``params["levels"]``, 2^k sorted levels of
  which the used ones come first (fewer distinct clusters: the largest level repeats as padding).

Every mean is exact (a vectorized exact sum of the float64 values, then one division as a
fraction) and rounded once, to nearest even, into x's precision (float16 / bfloat16 / float32 /
float64; parameters are stored as float64 for float64 inputs, else as float32, which holds the
narrower ones exactly). So ``quantize(x)`` is exactly ``sign(x) · mean|x|`` in x's dtype for
binary — a float64 input is never pushed through float32 — and so on.

NaN or ±inf in x raise ValueError (a fitted level would be meaningless). Rounding modes other
than ``"nearest_even"`` are not meaningful here (each element goes to its level by a rule) and
raise ValueError; ``generator`` is accepted and unused.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import ClassVar, Mapping

import numpy as np
import torch

from lowbit.errors import FormatSpecError
from lowbit.formats._float64 import check_float_dtype, check_float_tensor, round_float64_to
from lowbit.formats.base import EncodedTensor, NumberFormat
from lowbit.formats.granules import from_granule_rows, granule_grid, to_granule_rows
from lowbit.formats.block import _unpack
from lowbit.formats.rounding import Rounding

__all__ = ["LearnedFormat", "BinaryFormat", "TernaryFormat", "Codebook", "exact_sums", "round_fraction"]

# dtype: (mantissa bits, min normal exponent) of the precision fitted parameters are rounded to
_PARAM_PRECISION: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (10, -14),
    torch.bfloat16: (7, -126),
    torch.float32: (23, -126),
    torch.float64: (52, -1022),
}
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype fitted parameters are stored in for inputs of ``dtype``: float64 for float64
    inputs (never pushed through float32), float32 otherwise (it holds float16 / bfloat16 levels
    exactly)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def exact_sums(values: torch.Tensor, groups: "torch.Tensor | None" = None, n_groups: int = 1) -> list[Fraction]:
    """Exact sums of finite float64 ``values`` per group (``groups``: int64 ids in [0, n_groups)).

    Vectorized: each value is an integer significand times a power of two; significands are
    split in two 26/27-bit halves and summed in int64 per (group, exponent), which is exact for
    up to 2^36 values per bucket; the few buckets are then combined with Python integers.

    >>> total = exact_sums(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64))[0]
    >>> total == Fraction(0.1) + Fraction(0.2) - Fraction(0.3) != 0
    True
    """
    v = values.reshape(-1)
    if v.numel() == 0:
        return [Fraction(0)] * n_groups
    mant, exp = torch.frexp(v)
    m = (mant * 2.0**53).to(torch.int64)  # exact: |mant| in [0.5, 1), or 0 for zeros
    e = exp.to(torch.int64) - 53
    e = torch.where(m == 0, e.max(), e)  # zeros add nothing: keep them out of the exponent span
    e0 = int(e.min())
    span = int(e.max()) - e0 + 1
    key = e - e0
    if groups is not None:
        key = key + groups.reshape(-1).to(torch.int64) * span
    hi = m >> 26  # floor shift: m = hi·2^26 + lo with 0 <= lo < 2^26
    lo = m - (hi << 26)
    size = n_groups * span
    s_hi = torch.zeros(size, dtype=torch.int64, device=v.device).index_add_(0, key, hi)
    s_lo = torch.zeros(size, dtype=torch.int64, device=v.device).index_add_(0, key, lo)
    used = torch.nonzero((s_hi != 0) | (s_lo != 0)).reshape(-1)  # an all-zero bucket adds nothing
    totals = [0] * n_groups
    for k, h, low in zip(used.tolist(), s_hi[used].tolist(), s_lo[used].tolist()):
        grp, off = divmod(k, span)
        totals[grp] += ((h << 26) + low) << off
    unit = Fraction(2) ** e0
    return [t * unit for t in totals]


def round_fraction(q: Fraction, man_bits: int, min_exponent: int) -> float:
    """``q`` rounded once, to nearest even, to a binary format with ``man_bits`` fraction bits and
    smallest normal exponent ``min_exponent`` (subnormals below it; no upper limit).

    >>> round_fraction(Fraction(1, 3), 23, -126) == float(torch.tensor(1 / 3, dtype=torch.float32))
    True
    """
    if q == 0:
        return 0.0
    a = abs(q)
    num, den = a.numerator, a.denominator
    e = num.bit_length() - den.bit_length()  # 2^(e-1) < a < 2^(e+1)
    if (num << max(0, -e)) < (den << max(0, e)):  # a < 2^e
        e -= 1
    quantum = max(e, min_exponent) - man_bits
    n2, d2 = (num, den << quantum) if quantum >= 0 else (num << -quantum, den)
    k, r = divmod(n2, d2)
    if 2 * r > d2 or (2 * r == d2 and k & 1):
        k += 1
    return math.copysign(math.ldexp(k, quantum), q)


class LearnedFormat(NumberFormat):
    """Shared checks and codec of the formats fitted per tensor (binary, ternary, codebook).

    Per channel or group: `encode_channels` fits one set of parameters per index of an axis (per
    output channel of a weight) or per group of contiguous elements along an axis; the
    parameters then gain leading granule dimensions and ``decode_tensor`` reads every form.
    """

    data_dependent = True
    #: each fitted parameter's number of dimensions when fitted per tensor
    PARAM_NDIM: "ClassVar[dict[str, int]]" = {}

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8

    def _check(self, x: torch.Tensor, rounding: "str | Rounding", generator: "torch.Generator | None") -> torch.Tensor:
        x = check_float_tensor(x)
        if rounding not in (Rounding.NEAREST_EVEN, Rounding.NEAREST_EVEN.value):
            raise ValueError(
                f"rounding={rounding!r} is not supported by {self}, whose levels are fitted to the data; "
                "allowed: 'nearest_even'"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        x64 = x.detach().to(torch.float64).reshape(-1)
        if not bool(torch.isfinite(x64).all()):
            raise ValueError(
                f"x contains NaN or ±inf; {self} fits its levels to the data and cannot represent them "
                "(replace or mask non-finite values first)"
            )
        return x64

    def _param(self, q: Fraction, dtype: torch.dtype) -> float:
        """An exact mean rounded once into the parameter precision for inputs of ``dtype``."""
        man, emin = _PARAM_PRECISION.get(dtype, _PARAM_PRECISION[torch.float32])
        v = round_fraction(q, man, emin)
        if abs(v) > _FLOAT32_MAX and _param_dtype(dtype) == torch.float32:
            raise ValueError(
                f"{self}: a fitted level ({float(q):.6g}) exceeds float32's range, in which the parameters are "
                "stored; scale the tensor down first"
            )
        return v

    def encode_tensor(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> EncodedTensor:
        """Codes (uint8, shape of ``x``) plus the fitted ``params`` (float64 tensors for a float64
        ``x``, float32 otherwise)."""
        x64 = self._check(x, rounding, generator)
        codes, params = self._fit(x64, x.dtype)
        return EncodedTensor(self, codes.to(torch.uint8).reshape(x.shape), params)

    def _fit(self, x64: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        raise NotImplementedError

    def _levels_of(self, codes: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
        """float64 value of each (validated, int64) code."""
        raise NotImplementedError

    def encode_channels(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        *,
        axis: int = 0,
        group_size: "int | None" = None,
    ) -> EncodedTensor:
        """Codes of ``x`` with the levels fitted separately per granule: per index of ``axis`` (per
        channel), or per ``group_size`` contiguous elements along ``axis`` (per group).

        Each parameter gains leading dimensions, one entry per granule: per channel along axis 0
        one dimension of size ``x.shape[0]`` (binary/ternary ``scale``: (C,); codebook ``levels``:
        (C, 2^k)); otherwise the granule grid, ``x.shape`` with ``axis`` reduced to 1 (channel)
        or to ``x.shape[axis] // group_size`` (group), e.g. (C_out, C_in // 32) for groups of 32
        along axis 1 of a Linear weight. ``decode_tensor`` reads every form. Fitting runs once per
        granule, so many small groups cost time (k-means per group for codebooks).

        >>> import torch
        >>> w = torch.tensor([[1.0, -3.0], [0.25, 0.5]])
        >>> enc = BinaryFormat().encode_channels(w)
        >>> enc.params["scale"].tolist(), BinaryFormat().decode_tensor(enc).tolist()
        ([2.0, 0.375], [[2.0, -2.0], [0.375, 0.375]])
        >>> enc = BinaryFormat().encode_channels(w, axis=1)       # per column
        >>> enc.params["scale"].tolist(), BinaryFormat().decode_tensor(enc).tolist()
        ([[0.625, 1.75]], [[0.625, -1.75], [0.625, 1.75]])
        """
        x = check_float_tensor(x)
        if x.dim() == 0:
            raise ValueError(f"{self}: per-channel or per-group fitting needs a tensor with at least one dimension")
        grid = granule_grid(tuple(x.shape), axis, group_size)
        legacy = group_size is None and grid == (x.shape[0],) + (1,) * (x.dim() - 1)  # (C,) leading params
        lead = (x.shape[0],) if legacy else grid
        if x.numel() == 0:
            empty = self.encode_tensor(x.new_zeros(0), rounding, generator)
            params = {k: v.new_zeros((*lead, *v.shape)) for k, v in empty.params.items()}
            return EncodedTensor(self, torch.zeros(x.shape, dtype=torch.uint8, device=x.device), params)
        x64 = self._check(x, rounding, generator).reshape(x.shape)
        codes, fitted = self._fit_rows(to_granule_rows(x64, grid), x.dtype)
        codes = from_granule_rows(codes.to(torch.uint8), tuple(x.shape), grid)
        params = {k: v.reshape(*lead, *v.shape[1:]) for k, v in fitted.items()}
        return EncodedTensor(self, codes, params)

    def _fit_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        """`_fit` of every row of ``rows`` (G, b) on its own: codes (G, b) and each parameter
        with a leading dimension G. One `_fit` per row unless a format does all rows at once."""
        parts = [self._fit(rows[g], dtype) for g in range(rows.shape[0])]
        return (torch.stack([c for c, _ in parts]),
                {k: torch.stack([p[k] for _, p in parts]) for k in parts[0][1]})

    def quantize_channels(
        self,
        x: torch.Tensor,
        rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
        *,
        axis: int = 0,
        group_size: "int | None" = None,
    ) -> torch.Tensor:
        """``x`` with levels fitted per channel or group (see `encode_channels`), in x's dtype."""
        return self.decode_tensor(self.encode_channels(x, rounding, generator, axis=axis, group_size=group_size),
                                  x.dtype)

    def per_channel(self, encoded: "EncodedTensor | Mapping[str, torch.Tensor]") -> bool:
        """Whether ``encoded`` (or its ``params``) holds parameters fitted per channel or group
        (leading granule dimensions), rather than once for the whole tensor."""
        params = encoded.params if isinstance(encoded, EncodedTensor) else encoded
        return any(isinstance(t, torch.Tensor) and k in self.PARAM_NDIM and t.dim() > self.PARAM_NDIM[k]
                   for k, t in params.items())

    def decode_tensor(self, encoded: EncodedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The fitted level of every code, as ``dtype`` (per-tensor or per-channel parameters)."""
        (codes,) = _unpack(self, encoded)
        dtype = check_float_dtype(dtype)
        flat = codes.reshape(-1).to(torch.int64)
        bad = (flat < 0) | (flat >= (1 << self.bits)) | self._unused(flat)
        if bool(bad.any()):
            raise ValueError(f"codes of {self} must be in {self._code_note()}; got {int(flat[bad][0])}")
        if self.per_channel(encoded):
            return round_float64_to(self._channel_values(codes, encoded), dtype).reshape(codes.shape)
        return round_float64_to(self._levels_of(flat, encoded), dtype).reshape(codes.shape)

    def _channel_values(self, codes: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
        """float64 values for per-granule parameters: a table of every code per granule, gathered."""
        if codes.dim() == 0:
            raise ValueError(f"per-channel params of {self} need codes with at least one dimension")
        shape = tuple(codes.shape)
        if codes.numel() == 0:
            self.granule_grid_of(encoded.params, shape)  # still checked
            return torch.zeros(shape, dtype=torch.float64, device=codes.device)
        grid, tables = self.tables_per_granule(encoded.params, shape)
        rows = to_granule_rows(codes, grid).to(torch.int64)
        return from_granule_rows(tables.to(codes.device).gather(1, rows), shape, grid)

    def tables_per_granule(self, params: "Mapping[str, torch.Tensor]", shape: "tuple[int, ...]"
                           ) -> "tuple[tuple[int, ...], torch.Tensor]":
        """The granule grid of per-channel / per-group ``params`` for codes of ``shape`` and every
        code's float64 value per granule, (G, 2^bits), granules row-major over the grid."""
        grid = self.granule_grid_of(params, shape)
        n = math.prod(grid)
        flat = {k: v.reshape(n, *v.shape[v.dim() - self.PARAM_NDIM[k]:]) for k, v in params.items()
                if k in self.PARAM_NDIM}
        return grid, self.granule_tables(flat)

    def granule_grid_of(self, params: "Mapping[str, torch.Tensor]", shape: "tuple[int, ...]") -> "tuple[int, ...]":
        """The granule grid (see `lowbit.formats.granules`) that per-channel / per-group ``params`` imply for
        codes of ``shape``; ValueError if they do not fit it."""
        shape = tuple(shape)
        grid = None
        for k, want in self.PARAM_NDIM.items():
            t = params.get(k)
            lead = None if not isinstance(t, torch.Tensor) or t.dim() <= want else tuple(t.shape[: t.dim() - want])
            g = None
            if lead is not None and len(lead) == 1 and len(shape) >= 1 and lead[0] == shape[0]:
                g = lead + (1,) * (len(shape) - 1)  # one entry per index of axis 0
            elif lead is not None and len(lead) == len(shape) and all(
                    (p > 0 and n % p == 0) or n == p == 0 for n, p in zip(shape, lead)):
                g = lead  # a granule grid
            if g is None or (grid is not None and g != grid):
                got = None if not isinstance(t, torch.Tensor) else tuple(t.shape)
                raise ValueError(f"encoded.params[{k!r}] of {self} must hold one entry per channel or group: leading "
                                 f"dimension {shape[0]}, or a grid dividing the codes' shape {shape}, then "
                                 f"{want} parameter dimension(s); got shape {got}")
            grid = g
        assert grid is not None
        return grid

    def granule_tables(self, params: "Mapping[str, torch.Tensor]") -> torch.Tensor:
        """Every code's float64 value for each of G granules (NaN for unused codes): shape (G, 2^bits).

        ``params``: each parameter with one leading dimension of size G (per-granule fits flattened).
        Exactly the values ``decode_tensor`` gives granule by granule, computed for all at once.
        """
        raise NotImplementedError

    def _unused(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(codes, dtype=torch.bool)

    def _code_note(self) -> str:
        return f"[0, {(1 << self.bits) - 1}]"


def _scalar_param(encoded: EncodedTensor, name: str, fmt: NumberFormat) -> float:
    t = encoded.params[name] if name in encoded.params else None
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or not t.dtype.is_floating_point:
        raise ValueError(f"encoded.params[{name!r}] of {fmt} must be a one-element float tensor")
    v = float(t.reshape(()))
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"encoded.params[{name!r}] of {fmt} must be finite and >= 0; got {v}")
    return v


def _granule_scales(params: "Mapping[str, torch.Tensor]", fmt: NumberFormat) -> torch.Tensor:
    """The per-granule ``scale`` parameter as float64 (G,), checked as `_scalar_param` checks one."""
    t = params.get("scale")
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.dtype.is_floating_point:
        raise ValueError(f"encoded.params['scale'] of {fmt} must hold one float per channel or group")
    s = t.to(torch.float64)
    bad = ~torch.isfinite(s) | (s < 0)
    if bool(bad.any()):
        raise ValueError(f"encoded.params['scale'] of {fmt} must be finite and >= 0; got {float(s[bad][0])}")
    return s


@dataclasses.dataclass(frozen=True, repr=False)
class BinaryFormat(LearnedFormat):
    """``binary``: x -> sign(x) · mean|x| per tensor (XNOR-Net); code 1 = negative.

    >>> import torch
    >>> BinaryFormat().quantize(torch.tensor([0.5, -1.0, 0.0, 2.5])).tolist()
    [1.0, -1.0, 1.0, 1.0]
    """

    family = "binary"
    PARAM_NDIM = {"scale": 0}

    def __str__(self) -> str:
        return "binary"

    @property
    def bits(self) -> int:
        return 1

    def _fit(self, x64: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        n = x64.numel()
        scale = self._param(exact_sums(x64.abs())[0] / n, dtype) if n else 0.0
        codes = (x64 < 0).to(torch.int64)
        return codes, {"scale": torch.tensor(scale, dtype=_param_dtype(dtype), device=x64.device)}

    def _fit_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        g, n = rows.shape
        ids = torch.arange(g, device=rows.device).repeat_interleave(n)
        sums = exact_sums(rows.abs().reshape(-1), ids, g)
        scale = [self._param(s / n, dtype) for s in sums] if n else [0.0] * g
        return (rows < 0).to(torch.int64), {"scale": torch.tensor(scale, dtype=_param_dtype(dtype), device=rows.device)}

    def _levels_of(self, codes: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
        s = _scalar_param(encoded, "scale", self)
        pos = torch.full(codes.shape, s, dtype=torch.float64, device=codes.device)
        return torch.where(codes == 1, -pos, pos)

    def granule_tables(self, params: "Mapping[str, torch.Tensor]") -> torch.Tensor:  # noqa: D102
        s = _granule_scales(params, self)
        return torch.stack([s, -s], 1)


@dataclasses.dataclass(frozen=True, repr=False)
class TernaryFormat(LearnedFormat):
    """``ternary``: {−α, 0, α} with threshold Δ = 0.7 · mean|x| (Ternary Weight Networks).

    >>> import torch
    >>> TernaryFormat().quantize(torch.tensor([0.1, -2.0, 1.0, 0.9])).tolist()  # Δ = 0.7, α = 1.3
    [0.0, -1.2999999523162842, 1.2999999523162842, 1.2999999523162842]
    """

    family = "ternary"
    PARAM_NDIM = {"scale": 0}
    #: Δ = THRESHOLD · mean|x|, exactly (0.7 as the fraction 7/10).
    THRESHOLD = Fraction(7, 10)

    def __str__(self) -> str:
        return "ternary"

    @property
    def bits(self) -> int:
        return 2

    def threshold(self, x: torch.Tensor) -> Fraction:
        """The exact threshold Δ = 0.7 · mean|x| of a (finite) tensor."""
        x64 = self._check(x, "nearest_even", None)
        return self.THRESHOLD * exact_sums(x64.abs())[0] / max(x64.numel(), 1)

    def _fit(self, x64: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        a = x64.abs()
        delta = self.THRESHOLD * exact_sums(a)[0] / max(a.numel(), 1)
        t = float(delta)  # |x| > Δ  <=>  |x| > (the largest float64 <= Δ)
        if Fraction(t) > delta:
            t = math.nextafter(t, -math.inf)
        big = a > t
        count = int(big.sum())
        alpha = self._param(exact_sums(a[big])[0] / count, dtype) if count else 0.0
        codes = torch.where(big, torch.where(x64 < 0, 3, 1), 0).to(torch.int64)
        return codes, {"scale": torch.tensor(alpha, dtype=_param_dtype(dtype), device=x64.device)}

    def _fit_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        g, n = rows.shape
        a = rows.abs()
        ids = torch.arange(g, device=rows.device).repeat_interleave(n).reshape(g, n)
        thresholds = []
        for s in exact_sums(a.reshape(-1), ids.reshape(-1), g):  # as `_fit`, row by row
            delta = self.THRESHOLD * s / max(n, 1)
            t = float(delta)
            thresholds.append(math.nextafter(t, -math.inf) if Fraction(t) > delta else t)
        big = a > torch.tensor(thresholds, dtype=torch.float64, device=rows.device).reshape(g, 1)
        counts = big.sum(1).tolist()
        sums = exact_sums(a[big], ids[big], g)
        alpha = [self._param(s / c, dtype) if c else 0.0 for s, c in zip(sums, counts)]
        codes = torch.where(big, torch.where(rows < 0, 3, 1), 0).to(torch.int64)
        return codes, {"scale": torch.tensor(alpha, dtype=_param_dtype(dtype), device=rows.device)}

    def _unused(self, codes: torch.Tensor) -> torch.Tensor:
        return codes == 2

    def _code_note(self) -> str:
        return "{0, 1, 3} (0 -> 0, 1 -> +α, 3 -> −α)"

    def _levels_of(self, codes: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
        s = _scalar_param(encoded, "scale", self)
        pos = torch.full(codes.shape, s, dtype=torch.float64, device=codes.device)
        return torch.where(codes == 0, torch.zeros_like(pos), torch.where(codes == 3, -pos, pos))

    def granule_tables(self, params: "Mapping[str, torch.Tensor]") -> torch.Tensor:  # noqa: D102
        s = _granule_scales(params, self)
        return torch.stack([torch.zeros_like(s), s, torch.full_like(s, float("nan")), -s], 1)


def _used_bounds(bounds: torch.Tensor) -> torch.Tensor:
    """Cluster boundaries with the empty clusters dropped (``bounds``: K+1 non-decreasing ends).

    >>> _used_bounds(torch.tensor([0, 2, 2, 5, 5])).tolist()
    [0, 2, 5]
    """
    keep = torch.ones(bounds.numel(), dtype=torch.bool, device=bounds.device)
    keep[1:] = bounds[1:] > bounds[:-1]
    return bounds[keep]


@dataclasses.dataclass(frozen=True, repr=False)
class Codebook(LearnedFormat):
    """``codebook<k>``: at most 2^k levels fitted by k-means (linear init, Lloyd iterations).

    >>> import torch
    >>> x = torch.tensor([0.0, 0.1, 0.2, 5.0, 5.5, 9.0])
    >>> Codebook(1).quantize(x).tolist()  # two clusters: {0, 0.1, 0.2} and {5, 5.5, 9}
    [0.10000000149011612, 0.10000000149011612, 0.10000000149011612, 6.5, 6.5, 6.5]
    >>> Codebook(2).quantize(x).tolist() == x.tolist()  # 4 levels for 6 values: not exact
    False
    """

    index_bits: int

    family = "codebook"
    PARAM_NDIM = {"levels": 1}
    #: Upper bound on the float64 Lloyd steps (each is O(2^k · log n) on the sorted values);
    #: heavy-tailed data (x³ of a normal sample) can need a few thousand.
    MAX_ITERATIONS = 20_000

    def __post_init__(self) -> None:
        k = self.index_bits
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 8:
            raise FormatSpecError(f"codebook index_bits={k!r} is out of range; allowed: 1..8")

    def __str__(self) -> str:
        return f"codebook{self.index_bits}"

    @property
    def bits(self) -> int:
        return self.index_bits

    @property
    def num_levels(self) -> int:
        return 1 << self.index_bits

    def initial_levels(self, x: torch.Tensor) -> torch.Tensor:
        """The linear initialisation: 2^k float64 levels evenly spaced from min(x) to max(x)."""
        x64 = x.detach().to(torch.float64).reshape(-1)
        if x64.numel() == 0:
            return torch.zeros(self.num_levels, dtype=torch.float64, device=x64.device)
        return self._linear(x64.min(), x64.max())

    def _linear(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        t = torch.arange(self.num_levels, dtype=torch.float64, device=lo.device) / (self.num_levels - 1)
        levels = lo * (1 - t) + hi * t  # no overflow for any finite lo, hi
        levels[-1] = hi
        return levels

    def _fit(self, x64: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        K, n, dev = self.num_levels, x64.numel(), x64.device
        if n == 0:
            return torch.zeros(0, dtype=torch.int64, device=dev), {
                "levels": torch.zeros(K, dtype=_param_dtype(dtype), device=dev)
            }
        xs, order = torch.sort(x64)
        cs = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), torch.cumsum(xs, 0)])
        levels = self._linear(xs[0], xs[-1])
        bounds = self._assign(xs, levels)
        prev: "torch.Tensor | None" = None
        for _ in range(self.MAX_ITERATIONS):
            counts = bounds[1:] - bounds[:-1]
            if prev is not None and torch.equal(bounds, prev):
                if not self._reseed(xs, bounds, counts, levels):
                    break
                prev = None
            else:
                prev = bounds
                means = (cs[bounds[1:]] - cs[bounds[:-1]]) / counts.clamp_min(1)  # approximate; exact at the end
                levels = torch.sort(torch.where(counts > 0, means, levels)).values
            bounds = self._assign(xs, levels)
        # the final clusters: contiguous runs of the sorted values (empty ones dropped), settled
        used_bounds, fitted = self._settle(xs, _used_bounds(bounds), dtype)
        sizes = used_bounds[1:] - used_bounds[:-1]
        cluster_sorted = torch.repeat_interleave(torch.arange(sizes.numel(), device=dev), sizes)
        fitted += [fitted[-1]] * (K - sizes.numel())
        codes = torch.empty(n, dtype=torch.int64, device=dev)
        codes[order] = cluster_sorted
        return codes, {"levels": torch.tensor(fitted, dtype=_param_dtype(dtype), device=dev)}

    #: Upper bound on the exact steps of `_settle` (normally 0 or 1 are needed).
    MAX_SETTLE_STEPS = 50

    def _settle(self, xs: torch.Tensor, used_bounds: torch.Tensor, dtype: torch.dtype,
                fitted: "list[float] | None" = None) -> "tuple[torch.Tensor, list[float]]":
        """Lloyd's iterations, finished exactly: the levels are the exact means of the clusters
        (``used_bounds``: boundaries of the non-empty clusters in the sorted values ``xs``)
        rounded into the parameter precision (``fitted``, when already computed), and the values
        are assigned again to the nearest of *those* levels; repeated until nothing moves. So
        every value's level is its nearest (a tie goes to the lower one) and every level the mean
        of its values — a k-means fixed point in the precision the levels are stored in.
        (The float64 iterations before it use approximate means, and stop at `MAX_ITERATIONS`.)
        """
        for _ in range(self.MAX_SETTLE_STEPS):
            if fitted is None:
                fitted = self._exact_means(xs, used_bounds, dtype)
            again = _used_bounds(self._assign(xs, torch.tensor(fitted, dtype=torch.float64, device=xs.device)))
            if torch.equal(again, used_bounds):
                return used_bounds, fitted
            used_bounds, fitted = again, None
        return used_bounds, fitted if fitted is not None else self._exact_means(xs, used_bounds, dtype)

    def _exact_means(self, xs: torch.Tensor, used_bounds: torch.Tensor, dtype: torch.dtype) -> "list[float]":
        sizes = used_bounds[1:] - used_bounds[:-1]
        ids = torch.repeat_interleave(torch.arange(sizes.numel(), device=xs.device), sizes)
        sums = exact_sums(xs, ids, sizes.numel())
        return [self._param(t / c, dtype) for t, c in zip(sums, sizes.tolist())]

    def _fit_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> "tuple[torch.Tensor, dict[str, torch.Tensor]]":
        # all rows at once when the numba kernel runs Lloyd's iterations (step for step as `_fit`);
        # the exact cluster means of every row then come from one grouped exact sum
        from lowbit.formats import base

        g, n = rows.shape
        K = self.num_levels
        acc = base._accelerator
        xs, order = torch.sort(rows, dim=1)
        bounds = None if acc is None or g == 0 or n == 0 else acc.codebook_bounds(xs, K, self.MAX_ITERATIONS)
        if bounds is None:
            return super()._fit_rows(rows, dtype)
        counts = bounds[:, 1:] - bounds[:, :-1]  # (G, K)
        used = counts > 0
        rank = torch.cumsum(used.to(torch.int64), 1) - 1
        positions = torch.arange(n).expand(g, n).contiguous()
        level_of = torch.searchsorted(bounds[:, 1:].contiguous(), positions, right=True)
        cluster_sorted = rank.gather(1, level_of)  # (G, n): the used cluster of each sorted value
        sums = exact_sums(xs.reshape(-1), (cluster_sorted + torch.arange(g).reshape(g, 1) * K).reshape(-1), g * K)
        fitted = [[self._param(sums[r * K + c] / size, dtype) for c, size in enumerate(s for s, u in zip(cnt, use) if u)]
                  for r, (cnt, use) in enumerate(zip(counts.tolist(), used.tolist()))]
        # finished as `_fit` finishes every row (`_settle`): one batched check that each value's
        # nearest fitted level (unused slots at +inf, a tie to the lower one, as `_assign`) is its
        # own; the rare rows where one is not settle one by one
        final = torch.full((g, K), math.inf, dtype=torch.float64)
        final[torch.arange(K) < used.sum(1, keepdim=True)] = torch.tensor([v for f in fitted for v in f],
                                                                          dtype=torch.float64)
        ends = torch.searchsorted(xs.contiguous(), final[:, :-1] * 0.5 + final[:, 1:] * 0.5, right=True)
        moved = (torch.searchsorted(ends, positions, right=True) != cluster_sorted).any(1)
        for r in torch.nonzero(moved).reshape(-1).tolist():
            settled, fitted[r] = self._settle(xs[r], _used_bounds(bounds[r]), dtype, fitted[r])
            cluster_sorted[r] = torch.repeat_interleave(torch.arange(settled.numel() - 1), settled[1:] - settled[:-1])
        levels = [f + [f[-1]] * (K - len(f)) for f in fitted]
        codes = torch.empty_like(cluster_sorted).scatter_(1, order, cluster_sorted)
        return codes, {"levels": torch.tensor(levels, dtype=_param_dtype(dtype))}

    @staticmethod
    def _assign(xs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Cluster boundaries in the sorted values: nearest level, a tie goes to the lower one."""
        mids = levels[:-1] * 0.5 + levels[1:] * 0.5
        if xs.device.type == "cpu":  # numpy's binary search is ~100x faster than torch's here
            ends = torch.from_numpy(np.searchsorted(xs.numpy(), mids.numpy(), side="right").astype(np.int64))
        else:
            ends = torch.searchsorted(xs, mids, right=True)
        edge = torch.tensor([0, xs.numel()], dtype=ends.dtype, device=xs.device)
        return torch.cat([edge[:1], ends, edge[1:]])

    @staticmethod
    def _reseed(xs: torch.Tensor, bounds: torch.Tensor, counts: torch.Tensor, levels: torch.Tensor) -> bool:
        """Move one empty level (in place) onto the point farthest from its level; False if none."""
        empty = torch.nonzero(counts == 0).reshape(-1)
        if empty.numel() == 0:
            return False
        full = counts > 0
        first = xs[bounds[:-1].clamp_max(xs.numel() - 1)]
        last = xs[(bounds[1:] - 1).clamp_min(0)]
        err = torch.stack([(first - levels).abs(), (last - levels).abs()])
        # a cluster of equal values is exact (its exact mean, taken at the end, is the value), even
        # where its float64 running mean is off by an ulp: reseeding there would cycle
        err = torch.where(full & (first != last), err, torch.zeros_like(err))
        worst = int(torch.argmax(err.reshape(-1)))  # first maximum: deterministic
        if float(err.reshape(-1)[worst]) == 0:
            return False
        side, c = divmod(worst, levels.numel())
        levels[int(empty[0])] = (first if side == 0 else last)[c]
        levels.copy_(torch.sort(levels).values)
        return True

    def _levels_of(self, codes: torch.Tensor, encoded: EncodedTensor) -> torch.Tensor:
        levels = encoded.params.get("levels")
        if not isinstance(levels, torch.Tensor) or tuple(levels.shape) != (self.num_levels,):
            raise ValueError(f"encoded.params['levels'] of {self} must be a tensor of shape ({self.num_levels},)")
        lv = levels.to(device=codes.device, dtype=torch.float64)
        if not bool(torch.isfinite(lv).all()):
            raise ValueError(f"encoded.params['levels'] of {self} must be finite")
        return lv[codes]

    def granule_tables(self, params: "Mapping[str, torch.Tensor]") -> torch.Tensor:  # noqa: D102
        levels = params.get("levels")
        if not isinstance(levels, torch.Tensor) or levels.dim() != 2 or levels.shape[1] != self.num_levels \
                or not levels.dtype.is_floating_point:
            got = None if not isinstance(levels, torch.Tensor) else tuple(levels.shape)
            raise ValueError(f"encoded.params['levels'] of {self} must hold {self.num_levels} float levels per "
                             f"channel or group; got shape {got}")
        lv = levels.to(torch.float64)
        if not bool(torch.isfinite(lv).all()):
            raise ValueError(f"encoded.params['levels'] of {self} must be finite")
        return lv
