"""Affine integer quantization and scale choice for fixed point, posits and minifloats.

**Affine (scale / zero point) integer quantization**, as in Jacob et al. 2018 ("Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference") and the
quantization guides that follow it: a real value r is represented by an integer code q with

    r ≈ s · (q − z),      q = clamp(R(r / s) + z, qmin, qmax)

with R the rounding mode (nearest-even by default), s > 0 the scale and z the integer zero point
(the code of real 0, so 0 is always exact — zero padding and ReLU zeros stay exact).
`affine_qparams` derives (s, z) from an observed range [xmin, xmax]:

* the range is first widened to include 0: xmin ← min(xmin, 0), xmax ← max(xmax, 0);
* **symmetric**, signed: s = max(|xmin|, |xmax|) / qmax, z = 0;
  symmetric, unsigned ("scale only", e.g. after a ReLU): s = xmax / qmax, z = 0 (negative
  values saturate to 0);
* **asymmetric**: s = (xmax − xmin) / (qmax − qmin), z = clamp(round(qmin − xmin / s), qmin, qmax);
* a zero range (xmin = xmax = 0, e.g. an all-zero channel) gives s = 0 and z = clamp(0, qmin, qmax);
  every function here maps a zero scale to the value 0 (code z), never NaN.

Code ranges (`qrange`): signed b bits: −2^(b−1) … 2^(b−1) − 1; unsigned: 0 … 2^b − 1;
``narrow`` drops the lowest code (int8: −127 … 127, TF's narrow_range; uint8: 1 … 255).
Note the zero point is added *after* rounding (Jacob et al.), so ties round to even in r/s, not
in r/s + z.

**Fixed point** (`best_fraction_bits`, `quantize_fixed`): a Q-format word with f fraction bits is
the integer grid scaled by 2^−f, chosen per granule by the ``"amax"`` rule (the largest f with no
saturation) or the ``"mse"`` rule (the f, from the amax rule upward, with the least squared error
— trading clipping of outliers against resolution).

**Posits and minifloats** (`best_pow2_scale`, `best_es`): a power-of-two scale 2^k per granule,
x̂ = 2^k · fmt.quantize(x / 2^k) (exactly what `lowbit.simulate.scaling.scaled_format` does per
tensor), with k from the amax rule, the posit-GAN log2-histogram rule, or the least squared
error; and the posit es per layer by least squared error among candidates (Langroudi et al.).

>>> import torch
>>> s, z = affine_qparams(torch.tensor(-1.0), torch.tensor(3.0), bits=8, symmetric=False, signed=False)
>>> round(float(s), 6), int(z)
(0.015686, 64)
>>> x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
>>> q = quantize_affine(x, s, z, 0, 255); q.tolist()
[0, 64, 96, 255]
>>> torch.equal(dequantize_affine(q, s, z), fake_quantize_affine(x, s, z, 0, 255))
True
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from lowbit.formats import IntegerFormat, NumberFormat, Posit, ScalarFormat
from lowbit.formats._float64 import check_float_tensor, pow2
from lowbit.formats.rounding import Rounding
from lowbit.formats.granularity import (
    Granularity,
    _scalar_format,
    as_granularity,
    compute_dtype,
    granule_amax,
    quantize_with_scale,
)
from lowbit.simulate.registry import layer_types
from lowbit.simulate.scaling import format_centre

__all__ = [
    "qrange",
    "affine_qparams",
    "fake_quantize_affine",
    "quantize_affine",
    "dequantize_affine",
    "FRACTION_BITS_RULES",
    "best_fraction_bits",
    "quantize_fixed",
    "POW2_RULES",
    "best_pow2_scale",
    "pow2_scale",
    "posit_es_errors",
    "best_es",
    "best_es_per_layer",
]

from lowbit.formats.affine import (  # noqa: E402  (moved down a layer; the names stay here)
    affine_qparams,
    dequantize_affine,
    fake_quantize_affine,
    qrange,
    quantize_affine,
)


FRACTION_BITS_RULES = ("mse", "amax")


def _check_rule(rule: str, allowed: "tuple[str, ...]") -> None:
    if rule not in allowed:
        raise ValueError(f"rule={rule!r}; allowed: {', '.join(allowed)}")


def _amax_exponent(amax: torch.Tensor, limit: float) -> torch.Tensor:
    """Per granule, the smallest int k with amax ≤ 2^k · limit (0 where amax is 0), exactly."""
    a = amax.to(torch.float64)
    pos = a > 0
    safe = torch.where(pos, a, torch.ones_like(a))
    k = torch.ceil(torch.log2(safe / limit)).to(torch.int64).clamp(-1070, 1020)
    k = torch.where(safe > pow2(k) * limit, k + 1, k)           # guard log2's rounding, both ways
    k = torch.where(safe <= pow2(k - 1) * limit, k - 1, k)
    return torch.where(pos, k, torch.zeros_like(k))


def _scale_from_exponent(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    lo, hi = math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1
    if k.numel() and (int(k.min()) < lo or int(k.max()) > hi):
        raise ValueError(f"power-of-two scale exponents {int(k.min())}..{int(k.max())} leave {dtype}'s "
                         f"normal range (2^{lo}..2^{hi}); quantize in float64 or pick other scales")
    return pow2(k).to(dtype)


def pow2_scale(k: "int | torch.Tensor", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The exact scale tensor 2^k for integer exponents ``k`` (raises if 2^k leaves dtype's normal range).

    >>> pow2_scale(torch.tensor([-3, 0, 2])).tolist()
    [0.125, 1.0, 4.0]
    """
    kt = torch.as_tensor(k)
    if kt.dtype.is_floating_point or kt.dtype == torch.bool:
        raise TypeError(f"k must hold integer exponents, got {kt.dtype}")
    return _scale_from_exponent(kt.to(torch.int64), dtype)


def quantize_fixed(
    x: torch.Tensor,
    word_bits: int,
    frac_bits: "int | torch.Tensor",
    granularity: "Granularity | str | None" = None,
    signed: bool = True,
    rounding: "str | Rounding" = "nearest_even",
    generator: "torch.Generator | None" = None,
) -> torch.Tensor:
    """Fixed point with per-granule fraction bits: the ``word_bits`` integer grid × 2^−frac_bits.

    For a per-tensor ``frac_bits`` f in 0..64 this equals ``FixedPoint(word_bits, f, signed).quantize(x)``
    (bit for bit, as long as x / 2^−f stays normal); f may also be negative (a grid coarser than 1).

    >>> quantize_fixed(torch.tensor([[0.3, 9.0], [0.3, 9.0]]), 8, torch.tensor([[4], [1]]), "channel").tolist()
    [[0.3125, 7.9375], [0.5, 9.0]]
    """
    fmt = IntegerFormat(word_bits, signed)
    f = torch.as_tensor(frac_bits)
    scale = _scale_from_exponent(-f.to(torch.int64), compute_dtype(x.dtype))
    return quantize_with_scale(x, fmt, scale, None, granularity, rounding, generator)


def _squared_error(x: torch.Tensor, xq: torch.Tensor, g: Granularity) -> torch.Tensor:
    """Per granule Σ (xq − x)² in float64 over the finite x."""
    x64 = x.detach().to(torch.float64)
    e = (xq.to(torch.float64) - x64) ** 2
    e = torch.where(torch.isfinite(x64), e, torch.zeros_like(e))
    return g.reduce(e, "sum")


def best_fraction_bits(
    x: torch.Tensor,
    word_bits: int,
    granularity: "Granularity | str | None" = None,
    rule: str = "mse",
    signed: bool = True,
    search: "int | None" = None,
) -> torch.Tensor:
    """Fraction bits per granule (int64, `stat_shape`) for a ``word_bits`` fixed-point word.

    ``"amax"``: the largest f with max|x| ≤ kmax · 2^−f (no saturation; kmax = 2^(w−1) − 1, or
    2^w − 1 unsigned). ``"mse"``: among f_amax … f_amax + ``search`` (default ``word_bits``),
    the f with the least squared error Σ(quantize_fixed(x) − x)²; ties go to the smaller f.
    A granule without nonzero finite values gets f = 0.

    >>> x = torch.cat([torch.linspace(-1, 1, 2001), torch.tensor([8.0])])  # one outlier
    >>> int(best_fraction_bits(x, 8, rule="amax")), int(best_fraction_bits(x, 8, rule="mse"))
    (3, 4)
    """
    x = check_float_tensor(x)
    _check_rule(rule, FRACTION_BITS_RULES)
    g = as_granularity(granularity)
    fmt = IntegerFormat(word_bits, signed)
    f_amax = -_amax_exponent(granule_amax(x, g), float(fmt.k_max))
    if rule == "amax":
        return f_amax
    search = word_bits if search is None else search
    if isinstance(search, bool) or not isinstance(search, int) or search < 0:
        raise ValueError(f"search={search!r}; allowed: an int >= 0 (extra fraction bits to try)")
    best_f, best_e = f_amax, None
    for j in range(search + 1):
        f = f_amax + j
        e = _squared_error(x, quantize_fixed(x, word_bits, f, g, signed), g)
        if best_e is None:
            best_e = e
            continue
        better = e < best_e
        best_f = torch.where(better, f, best_f)
        best_e = torch.where(better, e, best_e)
    return best_f


# ---------------------------------------------------------------------- posits and minifloats
POW2_RULES = ("mse", "amax", "histogram")


def _histogram_exponents(x: torch.Tensor, fmt: ScalarFormat, g: Granularity) -> torch.Tensor:
    """The posit-GAN rule of `lowbit.simulate.scaling.histogram_exponent`, per granule, vectorized."""
    flat = g.flatten(x.detach()).to(torch.float64).abs()
    ok = torch.isfinite(flat) & (flat > 0)
    safe = torch.where(ok, flat, torch.ones_like(flat))
    _, e = torch.frexp(safe)
    e = e.to(torch.int64) - 1  # floor(log2|x|), exact
    ngran = flat.shape[0]
    out = torch.zeros(ngran, dtype=torch.int64)
    if bool(ok.any()):
        lo, hi = int(e[ok].min()), int(e[ok].max())
        nb = hi - lo + 1
        gid = torch.arange(ngran).unsqueeze(1).expand_as(e)
        idx = (gid * nb + (e - lo))[ok]
        counts = torch.bincount(idx, minlength=ngran * nb).view(ngran, nb)
        mode = lo + (nb - 1 - counts.flip(1).argmax(1))  # ties go to the larger exponent
        k = torch.floor(mode.to(torch.float64) + 0.5 - format_centre(fmt)).to(torch.int64)
        out = torch.where(ok.any(1), k, out)
    return out.reshape(g.stat_shape(x.shape))


def _dynamic_range_binades(fmt: ScalarFormat) -> int:
    return min(64, max(1, math.ceil(math.log2(fmt.max / fmt.min_positive))))


def _search_window(search: "int | tuple[int, int] | None", fmt: ScalarFormat) -> "tuple[int, int]":
    if search is None:
        return fmt.bits, _dynamic_range_binades(fmt)
    pair = (search, search) if isinstance(search, int) and not isinstance(search, bool) else search
    if not (isinstance(pair, tuple) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)):
        raise ValueError(f"search={search!r}; allowed: None, an int >= 0, or a pair (down, up) of ints >= 0")
    return pair


def best_pow2_scale(
    x: torch.Tensor,
    fmt: "str | NumberFormat",
    granularity: "Granularity | str | None" = None,
    rule: str = "mse",
    search: "int | tuple[int, int] | None" = None,
) -> torch.Tensor:
    """Scale exponents k per granule (int64, `stat_shape`) for x̂ = 2^k · fmt.quantize(x / 2^k).

    ``"amax"``: the smallest k with max|x| ≤ 2^k · fmt.max (nothing saturates).
    ``"histogram"``: the posit-GAN rule (most populated ⌊log2|x|⌋ bin moved onto the format's
    most accurate exponent, see `lowbit.simulate.scaling`). ``"mse"``: the k with the least
    squared error among k_amax − down … k_amax + up, ``search=(down, up)`` (default: down =
    fmt.bits, since below k_amax only a uniform grid gains — resolution for clipping; up = the
    format's dynamic range log2(max / min_positive) in binades, at most 64, since above k_amax a
    posit moves the bulk of x towards its accurate centre). Ties go to the candidate nearest
    k_amax (the larger one first). Candidates whose 2^k leaves the compute dtype's normal range
    are skipped. Granules without nonzero finite values get k = 0. Quantize with
    ``quantize_with_scale(x, fmt, pow2_scale(k), granularity=...)``.

    >>> x = torch.tensor([0.01, 0.012, 0.013, 5.0])
    >>> [int(best_pow2_scale(x, "posit8_es2", rule=r)) for r in ("amax", "histogram", "mse")]
    [-21, -7, -5]
    >>> int(best_pow2_scale(torch.cat([torch.linspace(-1, 1, 2001), torch.tensor([8.0])]), "int8", rule="mse"))
    -4
    """
    x = check_float_tensor(x)
    f = _scalar_format(fmt)
    _check_rule(rule, POW2_RULES)
    g = as_granularity(granularity)
    if rule == "histogram":
        return _histogram_exponents(x, f, g)
    k_amax = _amax_exponent(granule_amax(x, g), f.max)
    if rule == "amax":
        return k_amax
    down, up = _search_window(search, f)
    cdt = compute_dtype(x.dtype)
    info = torch.finfo(cdt)
    k_lo, k_hi = math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1
    offsets = [0] + [j for i in range(1, max(down, up) + 1) for j in (i, -i) if -down <= j <= up]
    best_k, best_e = k_amax, None
    for j in offsets:
        k = k_amax + j
        valid = (k >= k_lo) & (k <= k_hi)
        if not bool(valid.any()):
            continue
        k_safe = torch.where(valid, k, torch.zeros_like(k))
        e = _squared_error(x, quantize_with_scale(x, f, _scale_from_exponent(k_safe, cdt), None, g), g)
        e = torch.where(valid, e, torch.full_like(e, math.inf))
        if best_e is None:
            best_k, best_e = torch.where(valid, k, best_k), e
            continue
        better = e < best_e
        best_k = torch.where(better, k, best_k)
        best_e = torch.where(better, e, best_e)
    return best_k


def posit_es_errors(
    x: torch.Tensor,
    n: int,
    candidates: "Iterable[int]" = (0, 1, 2, 3),
    scaling: "str | None" = None,
    granularity: "Granularity | str | None" = None,
) -> "dict[int, float]":
    """Mean squared error of quantizing ``x`` to posit⟨n, es⟩ for each candidate es.

    ``scaling``: None (no scale) or a `best_pow2_scale` rule applied per ``granularity`` first.
    """
    x = check_float_tensor(x)
    cands = list(candidates)
    if not cands:
        raise ValueError("candidates must name at least one es")
    if scaling is not None:
        _check_rule(scaling, POW2_RULES)
    g = as_granularity(granularity)
    finite = torch.isfinite(x.detach())
    count = max(1, int(finite.sum()))
    out: dict[int, float] = {}
    for es in cands:
        fmt = Posit(n, es)
        if scaling is None:
            xq = fmt.quantize(x)
        else:
            k = best_pow2_scale(x, fmt, g, scaling)
            xq = quantize_with_scale(x, fmt, _scale_from_exponent(k, compute_dtype(x.dtype)), None, g)
        out[es] = float(_squared_error(x, xq, Granularity()).sum()) / count
    return out


def best_es(
    x: torch.Tensor,
    n: int,
    candidates: "Iterable[int]" = (0, 1, 2, 3),
    scaling: "str | None" = None,
    granularity: "Granularity | str | None" = None,
) -> int:
    """The es among ``candidates`` whose posit⟨n, es⟩ quantizes ``x`` with the least MSE.

    Ties go to the first candidate listed. See `posit_es_errors` for ``scaling``.

    >>> torch.manual_seed(0); w = 0.05 * torch.randn(4096)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> best_es(w, 8), best_es(w, 8, scaling="mse")
    (2, 0)
    """
    errors = posit_es_errors(x, n, candidates, scaling, granularity)
    return min(errors, key=lambda es: (errors[es], list(errors).index(es)))


def best_es_per_layer(
    model: nn.Module,
    n: int,
    candidates: "Iterable[int]" = (0, 1, 2, 3),
    scaling: "str | None" = None,
) -> "dict[str, int]":
    """``{layer name: best_es(layer.weight, n, ...)}`` for every supported layer with a ``weight``
    (`lowbit.simulate.registry`).

    The result plugs into a per-layer config: ``{"layers": {name: {"weight": f"posit{n}_es{es}"}}}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cands = tuple(candidates)
    return {name: best_es(m.weight, n, cands, scaling)
            for name, m in model.named_modules() if isinstance(m, layer_types(attribute="weight"))}
