"""lowbit: low-precision number formats for deep learning, bit-exact and PyTorch-native.

>>> import torch, lowbit as lb
>>> fmt = lb.parse_format("posit8_es2")
>>> fmt.encode(torch.tensor([1.0, -1.0]))
tensor([ 64, 192], dtype=torch.uint8)
"""

from lowbit.errors import CheckpointError, FormatSpecError, LowbitError, LowbitWarning
from lowbit.formats import (
    ROUNDING_MODES,
    BinaryFormat,
    BlockFloatingPoint,
    BlockFormat,
    Codebook,
    EncodedTensor,
    Explanation,
    FixedPoint,
    IntegerFormat,
    LearnedFormat,
    Minifloat,
    MXFormat,
    NumberFormat,
    Posit,
    Rounding,
    ScalarFormat,
    TernaryFormat,
    explain,
    parse_format,
)

from lowbit import kernels  # installs the fast paths
from lowbit.simulate.exact import exact_matmul
from lowbit.simulate import PositSigmoid, PositTanh, Quantizer, fake_quantize, posit_sigmoid, posit_tanh
from lowbit.optim import DynamicLossScaler, LowPrecisionOptimizer, PositHistogramLossScaler, StaticLossScaler
from lowbit.quant import (
    LayerConfig,
    QuantConfig,
    RoleConfig,
    dequantize_,
    quantization_report,
    quantize_,
    tensor_formats,
    tensor_scales,
)
from lowbit.quant import Granularity, allocate, calibrate, calibrate_config, fold_batchnorm, sensitivity_scan
from lowbit.storage import PackedTensor, load, load_packed, pack_, save, unpack_

__version__ = "0.1.0"

__all__ = [
    "save",
    "load",
    "load_packed",
    "pack_",
    "unpack_",
    "PackedTensor",
    "__version__",
    "LowbitError",
    "FormatSpecError",
    "CheckpointError",
    "LowbitWarning",
    "quantize_",
    "dequantize_",
    "tensor_formats",
    "tensor_scales",
    "Granularity",
    "calibrate",
    "calibrate_config",
    "fold_batchnorm",
    "sensitivity_scan",
    "allocate",
    "quantization_report",
    "QuantConfig",
    "LayerConfig",
    "RoleConfig",
    "NumberFormat",
    "ScalarFormat",
    "Posit",
    "Minifloat",
    "FixedPoint",
    "IntegerFormat",
    "BlockFormat",
    "MXFormat",
    "BlockFloatingPoint",
    "LearnedFormat",
    "BinaryFormat",
    "TernaryFormat",
    "Codebook",
    "EncodedTensor",
    "Rounding",
    "ROUNDING_MODES",
    "parse_format",
    "explain",
    "Explanation",
    "kernels",
    "fake_quantize",
    "exact_matmul",
    "Quantizer",
    "posit_sigmoid",
    "posit_tanh",
    "PositSigmoid",
    "PositTanh",
    "LowPrecisionOptimizer",
    "StaticLossScaler",
    "DynamicLossScaler",
    "PositHistogramLossScaler",
]
