"""Granularity of a scale (per tensor, channel, group): moved to `lowbit.formats.granularity`, the
lowest layer that needs it (simulate and quant both use it); every name stays importable from here."""

from lowbit.formats.granularity import *  # noqa: F401,F403
from lowbit.formats.granularity import __all__, _scalar_format  # noqa: F401
