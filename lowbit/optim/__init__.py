"""Low-precision training: an optimizer wrapper that rounds grads, state and weights; loss scaling."""

from lowbit.optim.loss_scaling import DynamicLossScaler, LossScaler, PositHistogramLossScaler, StaticLossScaler
from lowbit.optim.lowprec import COUNTER_STATE_NAMES, LowPrecisionOptimizer

__all__ = [
    "LowPrecisionOptimizer",
    "COUNTER_STATE_NAMES",
    "LossScaler",
    "StaticLossScaler",
    "DynamicLossScaler",
    "PositHistogramLossScaler",
]
