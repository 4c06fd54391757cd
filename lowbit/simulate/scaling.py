"""Per-tensor power-of-two scales: the rules live in `lowbit.schemes.power_of_two` (the layer every
scale rule lives in); this module keeps its names importable from `lowbit.simulate.scaling`."""

from __future__ import annotations

from lowbit.schemes.power_of_two import (ScaleTracker, amax_exponent, format_centre, histogram_exponent,
                                         scaled_format)

__all__ = ["scaled_format", "format_centre", "histogram_exponent", "amax_exponent", "ScaleTracker"]
