"""Range observers for calibration: feed batches with ``observe(x)``, read ``range()``.

Every observer has ``observe(x)`` (call it once per batch, as often as needed), ``range()`` →
``(lo, hi)`` tensors and ``reset()``. Non-finite values (inf, NaN) are ignored; an observer that
saw no finite value raises `CalibrationError` from ``range()``.

=========================  =====================================================================
observer                   range
=========================  =====================================================================
`MinMaxObserver`           running min and max, per granule (any `Granularity`)
`EMAMinMaxObserver`        exponential moving average of each batch's min and max, per granule:
                           ``lo ← lo + momentum · (batch_min − lo)`` (first batch: its min)
`PercentileObserver`       the q-th and (100 − q)-th percentiles of a uniform random sample
                           (bounded reservoir, exact while all values fit; see below)
`MSEObserver`              symmetric clipping threshold t minimizing Σ (x̂ − x)² with
                           x̂ = s · fmt.quantize(x / s), s = t / fmt.max, over the sample
`KLObserver`               TensorRT entropy calibration: threshold minimizing KL(P ‖ Q) on a
                           2048-bin histogram of |x| (see `KLObserver`)
`Log2HistogramObserver`    the posit-GAN rule: power-of-two scale from the most populated
                           ⌊log2|x|⌋ bin (`lowbit.simulate.scaling.histogram_exponent`)
=========================  =====================================================================

MinMax and EMA observers return per-granule tensors (`Granularity.stat_shape`; 0-d per tensor);
the others observe whole tensors and return 0-d tensors.

**Bounded reservoir** (percentile and MSE observers): every value gets a random key from a
seeded generator and the ``capacity`` values with the smallest keys are kept — a uniform sample
without replacement of everything observed (whatever the batch sizes), in O(capacity) memory.
While at most ``capacity`` values were seen, the sample is all of them and the result is exact.
(The MSE observer also tracks the largest |x| exactly, for its candidate thresholds.)

>>> import torch
>>> obs = MinMaxObserver(Granularity.channel(1))
>>> obs.observe(torch.tensor([[1.0, -2.0], [3.0, 0.5]])); obs.observe(torch.tensor([[-1.0, 4.0]]))
>>> [t.tolist() for t in obs.range()]
[[[-1.0, -2.0]], [[3.0, 4.0]]]
>>> MinMaxObserver().range()
Traceback (most recent call last):
...
lowbit.quant.observers.CalibrationError: MinMaxObserver: observer saw no data; run calibration first ...
"""

from __future__ import annotations

import abc
import math

import torch

from lowbit.errors import LowbitError
from lowbit.formats import NumberFormat, ScalarFormat
from lowbit.formats.fixed_point import _UniformGrid
from lowbit.formats._float64 import check_float_tensor
from lowbit.quant.granularity import (
    Granularity,
    _scalar_format,
    as_granularity,
    format_low,
    granule_max,
    granule_min,
    quantize_clipped,
)
from lowbit.simulate.scaling import format_centre

__all__ = [
    "CalibrationError",
    "Observer",
    "MinMaxObserver",
    "EMAMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "KLObserver",
    "Log2HistogramObserver",
    "OBSERVERS",
]


class CalibrationError(LowbitError, RuntimeError):
    """Calibration state is missing or inconsistent (e.g. an observer that saw no data)."""


class Observer(abc.ABC):
    """Base class: ``observe(x)`` per batch, ``range()`` → (lo, hi), ``reset()``."""

    granularity: Granularity = Granularity()

    def __init__(self) -> None:
        self.reset()

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything observed."""

    @abc.abstractmethod
    def _observe(self, x: torch.Tensor) -> None: ...

    @abc.abstractmethod
    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]": ...

    @property
    def count(self) -> int:
        """Number of finite values observed since the last reset."""
        return self._count

    def observe(self, x: torch.Tensor) -> None:
        """Update the statistics with the finite values of ``x`` (detached; any float dtype)."""
        x = check_float_tensor(x).detach()
        n = int(torch.isfinite(x).sum())
        if n == 0:
            return
        self._observe(x)
        self._count += n

    def _require_data(self) -> None:
        if self._count == 0:
            raise CalibrationError(f"{type(self).__name__}: observer saw no data; run calibration first "
                                   f"(call observe(x) on some batches)")

    def range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        """(lo, hi) of the observed data under this observer's rule."""
        self._require_data()
        return self._range()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()}count={self._count})"

    def _params(self) -> str:
        return ""


# ---------------------------------------------------------------------- min-max
class MinMaxObserver(Observer):
    """Running minimum and maximum per granule.

    A later batch whose per-granule shape differs (e.g. a different channel count) raises
    `CalibrationError`.
    """

    def __init__(self, granularity: "Granularity | str | None" = None) -> None:
        self.granularity = as_granularity(granularity)
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._lo: "torch.Tensor | None" = None
        self._hi: "torch.Tensor | None" = None

    def _batch(self, x: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
        lo, hi = granule_min(x, self.granularity), granule_max(x, self.granularity)
        if self._lo is not None and lo.shape != self._lo.shape:
            raise CalibrationError(f"{type(self).__name__}: per-granule statistics of shape {tuple(lo.shape)} "
                                   f"do not match the earlier {tuple(self._lo.shape)} (granularity "
                                   f"{self.granularity}, batch shape {tuple(x.shape)})")
        # granules without finite values come back as 0; mask them so they do not pull the range to 0
        finite = torch.isfinite(x)
        has = self.granularity.reduce(finite.to(torch.float32), "amax") > 0
        return (torch.where(has, lo, torch.full_like(lo, math.inf)),
                torch.where(has, hi, torch.full_like(hi, -math.inf)))

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._batch(x)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = torch.minimum(self._lo, lo), torch.maximum(self._hi, hi)

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        assert self._lo is not None and self._hi is not None
        lo, hi = self._lo, self._hi
        never = torch.isinf(lo)  # a granule that never had a finite value
        return (torch.where(never, torch.zeros_like(lo), lo), torch.where(never, torch.zeros_like(hi), hi))

    def _params(self) -> str:
        return f"{self.granularity}, "


def _ema(old: torch.Tensor, new: torch.Tensor, m: float) -> torch.Tensor:
    """old + m·(new − old); a granule seen for the first time takes ``new``; one absent keeps ``old``."""
    return torch.where(torch.isinf(old), new, torch.where(torch.isinf(new), old, old + m * (new - old)))


class EMAMinMaxObserver(MinMaxObserver):
    """Exponential moving average of the per-batch min and max (``momentum``: weight of the new batch).

    ``lo ← lo + momentum · (batch_min − lo)``, likewise ``hi``; the first batch sets them.

    >>> obs = EMAMinMaxObserver(momentum=0.5)
    >>> for b in ([0.0, 1.0], [0.0, 3.0]): obs.observe(torch.tensor(b))
    >>> float(obs.range()[1])
    2.0
    """

    def __init__(self, momentum: float = 0.01, granularity: "Granularity | str | None" = None) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum={momentum!r}; allowed: a number in (0, 1] (the new batch's weight)")
        self.momentum = float(momentum)
        super().__init__(granularity)

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = self._batch(x)
        if self._lo is None or self._hi is None:
            self._lo, self._hi = lo, hi
            return
        m = self.momentum
        self._lo, self._hi = _ema(self._lo, lo, m), _ema(self._hi, hi, m)

    def _params(self) -> str:
        return f"momentum={self.momentum}, {self.granularity}, "


# ---------------------------------------------------------------------- sampled observers
class _Reservoir:
    """A uniform sample without replacement of all values seen (smallest random keys win)."""

    def __init__(self, capacity: int, seed: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity={capacity!r}; allowed: an int >= 1 (values kept for the sample)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r}; allowed: an int")
        self.capacity, self.seed = capacity, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.values = torch.empty(0, dtype=torch.float64)
        self.keys = torch.empty(0, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        v = x.reshape(-1).to(device="cpu", dtype=torch.float64)
        v = v[torch.isfinite(v)]
        keys = torch.rand(v.numel(), generator=self.generator, dtype=torch.float64)
        values, keys = torch.cat([self.values, v]), torch.cat([self.keys, keys])
        if values.numel() > self.capacity:
            keep = torch.topk(keys, self.capacity, largest=False, sorted=False).indices
            values, keys = values[keep], keys[keep]
        self.values, self.keys = values, keys


class PercentileObserver(Observer):
    """Percentile range: ``lo`` = the (100 − q)-th, ``hi`` = the q-th percentile of the values.

    ``q`` in percent (50 < q ≤ 100). ``symmetric=True``: t = q-th percentile of |x|, range (−t, t).
    Percentiles interpolate linearly between order statistics (``torch.quantile``) of the
    reservoir sample (module docstring): exact while at most ``capacity`` values were seen.

    >>> obs = PercentileObserver(90.0)
    >>> obs.observe(torch.arange(11.0))
    >>> [float(t) for t in obs.range()]
    [1.0, 9.0]
    """

    def __init__(self, q: float = 99.99, symmetric: bool = False, capacity: int = 1 << 20, seed: int = 0) -> None:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 50 < q <= 100:
            raise ValueError(f"q={q!r}; allowed: a percentage in (50, 100]")
        self.q, self.symmetric = float(q), bool(symmetric)
        self._capacity, self._seed = capacity, seed
        _Reservoir(capacity, seed)  # validate now
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._sample = _Reservoir(self._capacity, self._seed)

    def _observe(self, x: torch.Tensor) -> None:
        self._sample.add(x)

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        v = self._sample.values
        p = self.q / 100
        if self.symmetric:
            t = torch.quantile(v.abs(), p)
            return (-t).to(torch.float32), t.to(torch.float32)
        return torch.quantile(v, 1 - p).to(torch.float32), torch.quantile(v, p).to(torch.float32)

    def _params(self) -> str:
        return f"q={self.q}, symmetric={self.symmetric}, "


def _quantize_scaled(v: torch.Tensor, fmt: ScalarFormat, s: float) -> torch.Tensor:
    """``v`` clipped to ±t = ±s · fmt.max and quantized with scale s, for float64 ``v``:
    s · fmt.quantize(clamp(v / s, lowest, max)).

    For saturating formats that is ``quantize_with_scale(v, fmt, s)``; the clamp makes formats
    that overflow to NaN/inf (``e4m3fn``, ``e5m2``) clip like the others, as a clipping threshold
    means. Uniform grids take a pure-torch shortcut: fmt.quantize(y) is clamp(round(y · 2^f),
    kmin, kmax) · 2^−f, and torch.round rounds half to even, so it gives the same bits (tests
    check it) at a fraction of the cost of the general codec.
    """
    if isinstance(fmt, _UniformGrid) and s > 0:
        up = 2.0 ** fmt.frac_bits
        t = v / s
        if up != 1.0:
            t.mul_(up)  # exact: a power of two
        t.round_().clamp_(fmt.k_min, fmt.k_max)
        if up != 1.0:
            t.div_(up)
        return t.mul_(s)
    return quantize_clipped(v, fmt, s)


class MSEObserver(Observer):
    """Clipping threshold t minimizing the quantization error Σ (s · fmt.quantize(x / s) − x)², s = t / fmt.max.

    Candidates: t = amax · i / ``num_candidates`` for i = 1 … num_candidates (amax = the largest
    |x| seen, tracked exactly); the error is measured on the reservoir sample (module docstring).
    Ties go to the larger t. Signed formats give (−t, t); unsigned ones (uint8, ufixed, e8m0fnu)
    give (0, t) with t searched over the positive values. ``scale()`` returns s = t / fmt.max —
    for ``int8`` the symmetric affine scale of `lowbit.quant.affine.affine_qparams`.

    >>> obs = MSEObserver("int4")
    >>> obs.observe(torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([20.0])]))
    >>> round(float(obs.range()[1]), 3)
    6.2
    """

    def __init__(self, fmt: "str | NumberFormat" = "int8", num_candidates: int = 100,
                 capacity: int = 1 << 20, seed: int = 0) -> None:
        self.format = _scalar_format(fmt)
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates={num_candidates!r}; allowed: an int >= 1")
        self.num_candidates = num_candidates
        self._low = format_low(self.format)
        self._capacity, self._seed = capacity, seed
        _Reservoir(capacity, seed)
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._sample = _Reservoir(self._capacity, self._seed)
        self._amax = 0.0

    def _observe(self, x: torch.Tensor) -> None:
        finite = x[torch.isfinite(x)]
        top = finite if self._low < 0 else finite.clamp_min(0)
        self._amax = max(self._amax, float(top.abs().max()))
        self._sample.add(x)

    def errors(self) -> "tuple[torch.Tensor, torch.Tensor]":
        """(candidate thresholds, their summed squared errors on the sample), float64."""
        self._require_data()
        v = self._sample.values
        ts = torch.tensor([self._amax * i / self.num_candidates for i in range(1, self.num_candidates + 1)],
                          dtype=torch.float64)
        errs = torch.empty_like(ts)
        for i, t in enumerate(ts.tolist()):
            d = _quantize_scaled(v, self.format, t / self.format.max).sub_(v)
            errs[i] = torch.dot(d, d)
        return ts, errs

    def _threshold(self) -> float:
        if self._amax == 0:
            return 0.0
        ts, errs = self.errors()
        best = int((errs == errs.min()).nonzero().max())  # ties: the larger threshold
        return float(ts[best])

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        t = torch.tensor(self._threshold(), dtype=torch.float32)
        return (-t if self._low < 0 else torch.zeros_like(t)), t

    def scale(self) -> torch.Tensor:
        """s = t / fmt.max, the scale with which x̂ = s · fmt.quantize(x / s)."""
        return self.range()[1] / self.format.max

    def _params(self) -> str:
        return f"{self.format}, "


def _smooth_rows(p: torch.Tensor, valid: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Per row: zero entries (inside ``valid``) get eps, taken evenly from the nonzero ones."""
    zero = valid & (p == 0)
    nonzero = valid & (p != 0)
    nz = nonzero.sum(1, keepdim=True).to(p.dtype)
    take = eps * zero.sum(1, keepdim=True).to(p.dtype) / nz.clamp_min(1)
    return p + eps * zero.to(p.dtype) - take * nonzero.to(p.dtype)


def _kl_rows(hist: torch.Tensor, ks: torch.Tensor, nq: int) -> torch.Tensor:
    """KL(P_i ‖ Q_i) for every number of kept bins i in ``ks`` (see `KLObserver`), vectorized."""
    total = hist.sum()
    hist = hist[: int(ks.max())]  # columns beyond the largest i only hold outliers
    nb = hist.numel()
    b = torch.arange(nb)
    i = ks.unsqueeze(1)
    valid = b < i                                                     # [rows, bins]
    sliced = torch.where(valid, hist, torch.zeros((), dtype=hist.dtype))
    p = sliced.clone()
    outliers = total - sliced.sum(1)
    p.scatter_add_(1, (ks - 1).unsqueeze(1), outliers.unsqueeze(1))   # beyond-threshold mass → last kept bin
    grp = torch.where(valid, (b // (i // nq)).clamp_max(nq - 1), torch.full_like(valid, nq, dtype=torch.int64))
    nonzero = (sliced != 0).to(hist.dtype)
    qsum = torch.zeros(ks.numel(), nq + 1, dtype=hist.dtype).scatter_add_(1, grp, sliced)
    qnz = torch.zeros(ks.numel(), nq + 1, dtype=hist.dtype).scatter_add_(1, grp, nonzero)
    q = torch.where(sliced != 0, qsum.gather(1, grp) / qnz.gather(1, grp).clamp_min(1), torch.zeros_like(sliced))
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)
    p, q = _smooth_rows(p, valid), _smooth_rows(q, valid)
    pos = valid & (p > 0)
    bad = (pos & (q <= 0)).any(1)
    terms = torch.where(pos, p * torch.log(torch.where(pos, p, 1.0) / torch.where(pos & (q > 0), q, 1.0)),
                        torch.zeros_like(p))
    return torch.where(bad, torch.full_like(outliers, math.inf), terms.sum(1))


class KLObserver(Observer):
    """TensorRT-style entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017).

    Collects a histogram of |x| with ``bins`` (2048) equal bins over [0, B). B is set by the first
    batch with a nonzero value (B = its max|x|, widened by an ulp); when a later batch exceeds B, the bin width
    doubles as often as needed and adjacent pairs of bins are merged (exact: edges stay aligned).
    ``range()`` then tries every i = ``start_bin`` … ``bins`` kept bins:

    * P = the first i bins, with all counts beyond them (the outliers) added to bin i − 1;
    * Q = the first i bins merged into ``quant_bins`` (128: the magnitudes of int8) equal groups
      (the last group takes the remainder), each group's count spread evenly over its nonzero bins
      (empty bins stay empty), then expanded back to i bins;
    * P and Q are normalized and smoothed (a zero entry gets ε = 1e-4, taken evenly from the nonzero
      entries, as in MXNet/TVM's implementation) and KL(P ‖ Q) = Σ P log(P / Q) is computed.

    The threshold t is the upper edge of the best i (i · width); ties go to the larger i. Range
    (−t, t). ``flatten_zero_bin`` (default): before the search, bin 0's count is replaced by bin
    1's, as NVIDIA's pytorch-quantization entropy calibrator does — the spike of exact zeros a
    ReLU leaves in bin 0 otherwise dominates P and drags t far below the bulk (measured on
    EfficientNet-Lite0's ReLU6 inputs: t ≈ 0.75 instead of ≈ 6, every prediction wrong).
    """

    def __init__(self, bins: int = 2048, quant_bins: int = 128, start_bin: "int | None" = None,
                 flatten_zero_bin: bool = True) -> None:
        for name, v in (("bins", bins), ("quant_bins", quant_bins)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}; allowed: an int >= 1")
        if quant_bins > bins or bins % 2:
            raise ValueError(f"bins={bins}, quant_bins={quant_bins}; allowed: an even bins >= quant_bins")
        start = quant_bins if start_bin is None else start_bin
        if isinstance(start, bool) or not isinstance(start, int) or not quant_bins <= start <= bins:
            raise ValueError(f"start_bin={start_bin!r}; allowed: an int in {quant_bins}..{bins}")
        self.bins, self.quant_bins, self.start_bin = bins, quant_bins, start
        self.flatten_zero_bin = bool(flatten_zero_bin)
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._hist: "torch.Tensor | None" = None
        self._width = 0.0
        self._zeros = 0  # zeros seen before the width is known

    @property
    def histogram(self) -> "tuple[torch.Tensor, float]":
        """(counts of |x| per bin as float64, bin width); bin b covers [b·width, (b+1)·width)."""
        if self._hist is None:
            return torch.zeros(self.bins, dtype=torch.float64), 0.0
        return self._hist.clone(), self._width

    def _observe(self, x: torch.Tensor) -> None:
        a = x.detach().abs().reshape(-1).to(device="cpu", dtype=torch.float64)
        a = a[torch.isfinite(a)]
        amax = float(a.max())
        if self._hist is None:
            if amax == 0:
                self._zeros += a.numel()
                return
            # one ulp wider than amax / bins, so that amax falls inside the last bin rather than on its
            # upper edge (which would make later pair merges disagree with direct binning)
            self._width = math.nextafter(amax / self.bins, math.inf)
            self._hist = torch.zeros(self.bins, dtype=torch.float64)
            self._hist[0] += self._zeros
        assert self._hist is not None
        while amax > self._width * self.bins:  # grow: double the width, merge adjacent pairs
            self._hist = torch.cat([self._hist.view(-1, 2).sum(1), torch.zeros(self.bins // 2, dtype=torch.float64)])
            self._width *= 2
        idx = torch.floor(a / self._width).to(torch.int64).clamp_(0, self.bins - 1)
        self._hist += torch.bincount(idx, minlength=self.bins).to(torch.float64)

    def divergences(self) -> "tuple[torch.Tensor, torch.Tensor]":
        """(thresholds i · width for i = start_bin … bins, KL(P ‖ Q) for each), float64."""
        self._require_data()
        hist, width = self.histogram
        if self.flatten_zero_bin and hist.numel() > 1:
            hist[0] = hist[1]
        ks = torch.arange(self.start_bin, self.bins + 1)
        kls = torch.cat([_kl_rows(hist, ks[c:c + 128], self.quant_bins) for c in range(0, ks.numel(), 128)])
        return ks.to(torch.float64) * width, kls

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        if self._hist is None:  # only zeros seen
            z = torch.zeros((), dtype=torch.float32)
            return z, z.clone()
        ts, kls = self.divergences()
        best = int((kls == kls.min()).nonzero().max())
        t = torch.tensor(float(ts[best]), dtype=torch.float32)
        return -t, t

    def _params(self) -> str:
        return f"bins={self.bins}, quant_bins={self.quant_bins}, "


class Log2HistogramObserver(Observer):
    """The posit-GAN rule over all batches: a histogram of ⌊log2|x|⌋ of the nonzero finite values.

    ``exponent()`` is the scale exponent k of `lowbit.simulate.scaling.histogram_exponent` applied
    to everything observed (the most populated bin, ties to the larger exponent, moved onto
    ``fmt``'s most accurate exponent); ``range()`` is (−2^k · fmt.max, 2^k · fmt.max) (lo = 0 for
    unsigned formats) and ``format()`` the scaled format (posit scale + k / minifloat bias − k).

    >>> obs = Log2HistogramObserver("posit8_es2")
    >>> obs.observe(torch.tensor([0.01, 0.012])); obs.observe(torch.tensor([0.013, 5.0]))
    >>> obs.exponent(), str(obs.format())
    (-7, 'posit8_es2_s-7')
    """

    _LO, _HI = -1100, 1100  # covers every float64 exponent

    def __init__(self, fmt: "str | NumberFormat" = "posit8_es2") -> None:
        self.format_ = _scalar_format(fmt)
        format_centre(self.format_)  # posit and minifloat only
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._counts = torch.zeros(self._HI - self._LO + 1, dtype=torch.int64)

    def _observe(self, x: torch.Tensor) -> None:
        a = x.detach().abs().reshape(-1).to(device="cpu", dtype=torch.float64)
        a = a[torch.isfinite(a) & (a > 0)]
        if a.numel() == 0:
            return
        _, e = torch.frexp(a)
        self._counts += torch.bincount(e.to(torch.int64) - 1 - self._LO, minlength=self._counts.numel())

    def exponent(self) -> int:
        """The scale exponent k (0 if only zeros were seen)."""
        self._require_data()
        if int(self._counts.sum()) == 0:
            return 0
        top = int(self._counts.max())
        mode = self._LO + int(torch.nonzero(self._counts == top).max())
        return int(math.floor(mode + 0.5 - format_centre(self.format_)))

    def format(self) -> NumberFormat:
        """The observed format with the scale 2^k applied."""
        from lowbit.simulate.scaling import scaled_format

        return scaled_format(self.format_, self.exponent())

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        k = self.exponent()
        hi = torch.tensor(math.ldexp(self.format_.max, k), dtype=torch.float32)
        lo = torch.tensor(math.ldexp(format_low(self.format_), k), dtype=torch.float32)
        return lo, hi

    def _params(self) -> str:
        return f"{self.format_}, "


#: observer classes by short name
OBSERVERS: "dict[str, type[Observer]]" = {
    "minmax": MinMaxObserver,
    "ema": EMAMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "kl": KLObserver,
    "log2": Log2HistogramObserver,
}
