"""Per-tensor power-of-two scales (exponent bias) for posits and minifloats.

Quantizing ``x`` with scale exponent k means ``2^k · fmt.quantize(x · 2^-k)``; since multiplying
by a power of two is exact, that is the same as quantizing to the format shifted by k
(`scaled_format`: posit scale + k, minifloat bias − k), which is what lowbit does — so a scaled
tensor is still an ordinary format with a spec string (``posit8_es2_s-3``) that storage records.

Rules for k:

* ``"histogram"`` (Ho et al., posit GAN): build the histogram of ⌊log2|x|⌋ over the nonzero
  finite values; c = the centre of its most populated bin; k = c − centre(fmt), where
  centre(fmt) is the exponent where the format is most accurate (posit: its scale, where the
  fraction field is longest; minifloat: the middle of its normal exponent range, rounded down:
  ⌊(emin + emax) / 2⌋). The same integer is the loss scalers' target binade.
* ``"amax"`` (FP8 training recipes, delayed scaling): a = the largest |x| over the last
  ``history`` observations; k = ⌈log2(a / fmt.max)⌉, the smallest k with a ≤ 2^k · fmt.max.
* an int: k fixed by the user.

>>> import torch
>>> scaled_format("posit8_es2", -3)
parse_format('posit8_es2_s-3')
>>> histogram_exponent(torch.tensor([0.01, 0.012, 0.013, 5.0]), "posit8_es2")
-7
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import torch

from lowbit.formats import Minifloat, NumberFormat, Posit, parse_format

__all__ = ["scaled_format", "format_centre", "histogram_exponent", "amax_exponent", "ScaleTracker"]


def scaled_format(fmt: "str | NumberFormat", k: int) -> NumberFormat:
    """The format whose values are 2^k × ``fmt``'s values (posit scale + k, minifloat bias − k)."""
    fmt = parse_format(fmt)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int exponent, got {type(k).__name__}")
    if k == 0:
        return fmt
    if isinstance(fmt, Posit):
        return dataclasses.replace(fmt, scale=fmt.scale + k)
    if isinstance(fmt, Minifloat):
        return dataclasses.replace(fmt, bias=fmt.bias - k)  # type: ignore[operator]
    raise ValueError(f"power-of-two scaling applies to posit and minifloat formats, not {fmt} ({fmt.family})")


def format_centre(fmt: "str | NumberFormat") -> int:
    """The exponent where ``fmt`` is most accurate (see the module docstring): the one rule used by
    histogram scaling, the observers, QAT's initial scale and the posit loss scaler.

    >>> format_centre("posit8_es2_s-3"), format_centre("e4m3fn"), format_centre("e5m2")
    (-3, 1, 0)
    """
    fmt = parse_format(fmt)
    if isinstance(fmt, Posit):
        return fmt.scale
    if isinstance(fmt, Minifloat):
        emax = math.frexp(fmt.max)[1] - 1  # exact ⌊log2 max⌋ (no log2 rounding)
        return (fmt.min_normal_exponent + emax) // 2
    raise ValueError(f"power-of-two scaling applies to posit and minifloat formats, not {fmt} ({fmt.family})")


def _log2_histogram(x: torch.Tensor) -> "tuple[int, torch.Tensor] | None":
    """(lo, counts): counts[i] = how many nonzero finite values of ``x`` have ⌊log2|v|⌋ = lo + i;
    None when there is none. float32 normals are binned by their exponent field in one pass (the
    field is ⌊log2|v|⌋ + 127 exactly); subnormals and other dtypes go through frexp (exact too)."""
    x = x.detach().reshape(-1)
    if x.dtype == torch.float32 and x.device.type == "cpu":
        field = (x.contiguous().view(torch.int32) >> 23) & 0xFF
        counts = torch.bincount(field, minlength=256)
        normal = counts[1:255]
        parts = [] if int(counts[0]) == 0 else [x[(field == 0) & (x != 0)]]
        if not parts or parts[0].numel() == 0:
            nz = torch.nonzero(normal)
            if nz.numel() == 0:
                return None
            first, last = int(nz[0]), int(nz[-1])
            return first + 1 - 127, normal[first:last + 1]
        sub = _frexp_exponents(parts[0])  # float32 subnormals: exponents -149..-127
        lo = int(sub.min())
        counts_all = torch.zeros(254 - 127 - lo + 1, dtype=torch.int64)
        counts_all.index_add_(0, sub - lo, torch.ones_like(sub))
        counts_all[1 - 127 - lo:] += normal
        nz = torch.nonzero(counts_all)
        return lo, counts_all[: int(nz[-1]) + 1]
    a = x[(x != 0) & torch.isfinite(x)]
    if a.numel() == 0:
        return None
    e = _frexp_exponents(a)
    lo = int(e.min())
    return lo, torch.bincount(e - lo)


def _frexp_exponents(a: torch.Tensor) -> torch.Tensor:
    """⌊log2|v|⌋ of nonzero finite values, exactly (frexp's mantissa is in [0.5, 1))."""
    if a.dtype not in (torch.float32, torch.float64):
        a = a.to(torch.float32)  # float16 / bfloat16 values are float32-exact
    return torch.frexp(a).exponent.to(torch.int64) - 1


def histogram_exponent(x: torch.Tensor, fmt: "str | NumberFormat") -> int:
    """k that moves the most populated ⌊log2|x|⌋ bin onto the format's most accurate exponent.

    Ties between bins go to the larger exponent (fewer values saturate). A tensor with no
    nonzero finite value gives 0.
    """
    hist = _log2_histogram(x)
    if hist is None:
        return 0
    lo, counts = hist
    top = int(counts.max())
    mode = lo + int(torch.nonzero(counts == top).max())
    centre = mode + 0.5  # the bin [2^mode, 2^(mode+1)) is centred at 2^(mode + 1/2) in log2
    return int(math.floor(centre - format_centre(fmt)))


def amax_exponent(amax: float, fmt: "str | NumberFormat") -> int:
    """The smallest k with ``amax ≤ 2^k · fmt.max`` (0 for amax 0 or non-finite)."""
    fmt = parse_format(fmt)
    if not (amax > 0 and math.isfinite(amax)):
        return 0
    k = math.ceil(math.log2(amax / fmt.max))
    while amax > math.ldexp(fmt.max, k):  # guard log2's rounding
        k += 1
    while k > -1000 and amax <= math.ldexp(fmt.max, k - 1):
        k -= 1
    return k


class ScaleTracker:
    """Chooses and remembers one tensor's scale exponent under a rule (see the module docstring).

    ``update(x)`` is called on every quantization; it recomputes k on the first call and then
    every ``every`` calls (None: never again); ``"amax"`` keeps the last ``history`` amaxes.

    A call reads ``x`` only when its statistic can still matter (`needs_statistic`): never for a
    fixed int, only on the first call when ``every`` is None (the scale is then frozen), and for
    ``"amax"`` with ``every`` only the calls within ``history`` calls of the next refresh. The
    exponents are the same as if every call were measured.

    >>> t = ScaleTracker(parse_format("e4m3fn"), "amax")
    >>> t.update(torch.tensor([100.0, -800.0])), t.frozen, t.needs_statistic()
    (1, True, False)
    """

    def __init__(self, fmt: NumberFormat, rule: "str | int", every: "int | None" = None, history: int = 16):
        if not (rule in ("histogram", "amax") or (isinstance(rule, int) and not isinstance(rule, bool))):
            raise ValueError(f"rule={rule!r}; allowed: 'histogram', 'amax' or an int exponent")
        format_centre(fmt)  # validates the family
        self.fmt, self.rule, self.every = fmt, rule, every
        self.calls = 0
        self.exponent: int = rule if isinstance(rule, int) else 0
        self._amax: deque[float] = deque(maxlen=history)
        self._formats: dict[int, NumberFormat] = {}

    @property
    def frozen(self) -> bool:
        """Whether the exponent can no longer change (a fixed int, or ``every=None`` after the first call)."""
        return isinstance(self.rule, int) or (self.every is None and self.calls > 0)

    def needs_statistic(self) -> bool:
        """Whether the next `update` reads its tensor (else `advance` (None) gives the same result)."""
        if isinstance(self.rule, int):
            return False
        if self.calls == 0:
            return True
        if self.every is None:
            return False
        to_refresh = -self.calls % self.every  # calls until the next refresh (0: this one)
        if self.rule == "histogram":
            return to_refresh == 0
        return to_refresh < (self._amax.maxlen or 0)  # this amax is inside that refresh's window

    def statistic(self, x: torch.Tensor) -> "int | float":
        """What the rule measures of ``x``: its histogram exponent, or its largest finite |x|."""
        if self.rule == "histogram":
            return histogram_exponent(x, self.fmt)
        from lowbit.kernels.amax import finite_amax

        return finite_amax(x)

    def advance(self, statistic: "int | float | None") -> int:
        """Count one call whose tensor had ``statistic`` (None when `needs_statistic` was False);
        return the exponent to quantize it with."""
        if isinstance(self.rule, int):
            return self.rule
        if self.rule == "amax":
            # an amax no refresh will see is kept as a placeholder: the window still counts calls
            self._amax.append(0.0 if statistic is None else float(statistic))
        refresh = self.calls == 0 or (self.every is not None and self.calls % self.every == 0)
        self.calls += 1
        if refresh:
            if statistic is None:
                raise ValueError(f"call {self.calls} of a {self.rule!r} tracker refreshes its scale: it needs the statistic")
            if self.rule == "histogram":
                self.exponent = int(statistic)
            else:
                self.exponent = amax_exponent(max(self._amax), self.fmt)
        return self.exponent

    def update(self, x: torch.Tensor) -> int:
        """Observe ``x``; return the exponent to quantize it with."""
        return self.advance(self.statistic(x) if self.needs_statistic() else None)

    def format(self) -> NumberFormat:
        """The format with the current scale applied."""
        fmt = self._formats.get(self.exponent)
        if fmt is None:
            fmt = self._formats[self.exponent] = scaled_format(self.fmt, self.exponent)
        return fmt
