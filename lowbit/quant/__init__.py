"""Model-level quantization: configs, `quantize_` / `dequantize_`, per-tensor format maps."""

from lowbit.quant.config import ROLES, LayerConfig, QuantConfig, RoleConfig, as_config
from lowbit.quant.quantize import (
    QuantizationReport,
    dequantize_,
    quantization_report,
    quantize_,
    tensor_formats,
)

__all__ = [
    "ROLES",
    "RoleConfig",
    "LayerConfig",
    "QuantConfig",
    "as_config",
    "quantize_",
    "dequantize_",
    "tensor_formats",
    "quantization_report",
    "QuantizationReport",
]
