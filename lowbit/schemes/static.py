"""A fixed calibrated range (lo, hi) as a scale: symmetric float scale, or scale and zero point for
unsigned integer formats (the ``"static"`` rule of `lowbit.RoleConfig`; also importable from
`lowbit.simulate.layers`)."""

from __future__ import annotations

import torch

from lowbit.formats import NumberFormat

__all__ = ["StaticRange"]


class StaticRange:
    """A fixed calibrated range (lo, hi) for a scalar format (rules in `lowbit.RoleConfig`).

    Unsigned integer formats: asymmetric affine (scale, zero point); other formats: a symmetric
    float scale max(|lo|, |hi|) / fmt.max (hi / fmt.max when the format is unsigned).

    >>> from lowbit.formats import parse_format
    >>> r = StaticRange(parse_format("uint8"), -1.0, 3.0)
    >>> round(r.scale, 6), r.zero_point
    (0.015686, 64)
    >>> StaticRange(parse_format("int8n"), -2.0, 1.0).quantize(torch.tensor([0.5, -3.0])).tolist()
    [0.5039370059967041, -2.0]
    """

    def __init__(self, fmt: NumberFormat, lo: float, hi: float) -> None:
        from lowbit.formats import IntegerFormat
        from lowbit.formats.affine import affine_qparams, qrange

        self.format, self.lo, self.hi = fmt, float(lo), float(hi)
        self.affine = isinstance(fmt, IntegerFormat) and not fmt.signed
        if self.affine:
            s, z = affine_qparams(torch.tensor(self.lo, dtype=torch.float64), torch.tensor(self.hi, dtype=torch.float64),
                                  bits=fmt.word_bits, symmetric=False, signed=False)
            self.scale, self.zero_point = float(s), int(z)
            self.qmin, self.qmax = qrange(fmt.word_bits, signed=False)
        else:
            from lowbit.formats.granularity import format_low

            signed = format_low(fmt) < 0
            amax = max(-min(self.lo, 0.0), max(self.hi, 0.0)) if signed else max(self.hi, 0.0)
            self.scale, self.zero_point = amax / float(fmt.max), 0
        self._scales: "dict[tuple[torch.dtype, torch.device], torch.Tensor]" = {}

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        from lowbit.formats.granularity import compute_dtype

        key = (x.dtype, x.device)
        if key not in self._scales:
            self._scales[key] = torch.tensor(self.scale, dtype=compute_dtype(x.dtype), device=x.device)
        return self._scales[key]

    def quantize(self, x: torch.Tensor, rounding: str = "nearest_even",
                 generator: "torch.Generator | None" = None) -> torch.Tensor:
        """x̂ for a floating tensor ``x`` (same dtype and shape); values beyond the range saturate.

        Symmetric rule: s · fmt.quantize(clamp(x / s, fmt's lowest, fmt.max)) — the clamp makes
        formats without saturation (``e4m3fn``: overflow → NaN) clip like integers do.
        """
        from lowbit.formats.affine import fake_quantize_affine
        from lowbit.formats.granularity import quantize_clipped

        if self.affine:
            return fake_quantize_affine(x, self._scale(x), self.zero_point, self.qmin, self.qmax, rounding, generator)
        return quantize_clipped(x, self.format, self._scale(x), rounding, generator)
