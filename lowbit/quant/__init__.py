"""Model-level quantization: configs, `quantize_` / `dequantize_`, per-tensor format maps."""

from lowbit.quant.affine import (
    affine_qparams,
    best_es,
    best_es_per_layer,
    best_fraction_bits,
    best_pow2_scale,
    dequantize_affine,
    fake_quantize_affine,
    pow2_scale,
    qrange,
    quantize_affine,
    quantize_fixed,
)
from lowbit.quant.bn_fold import find_foldable, fold_batchnorm
from lowbit.quant.calibration import Calibration, calibrate, calibration
from lowbit.quant.config import ROLES, LayerConfig, QuantConfig, RoleConfig, as_config
from lowbit.quant.granularity import (
    Granularity,
    format_low,
    granule_amax,
    granule_max,
    granule_min,
    granule_minmax,
    quantize_clipped,
    quantize_with_scale,
)
from lowbit.quant.observers import (
    CalibrationError,
    EMAMinMaxObserver,
    KLObserver,
    Log2HistogramObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)
from lowbit.quant.mixed import Plan, PlanLayer, allocate, pareto_front, uniform_plan
from lowbit.quant.ptq import calibrate_config, observer_for
from lowbit.quant.qat import LSQQuantizer, convert, lsq_quantizers, prepare_qat
from lowbit.quant.quantize import (
    QuantizationReport,
    dequantize_,
    quantization_report,
    quantize_,
    tensor_formats,
    tensor_scales,
)
from lowbit.quant.sensitivity import (
    SensitivityEntry,
    SensitivityReport,
    measure_config,
    sensitivity_scan,
    storage_bits,
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
    "tensor_scales",
    "quantization_report",
    "calibrate_config",
    "observer_for",
    "QuantizationReport",
    # granularity and scales
    "Granularity",
    "granule_amax",
    "granule_min",
    "granule_max",
    "granule_minmax",
    "quantize_with_scale",
    "quantize_clipped",
    "format_low",
    # affine integer quantization, fixed-point / power-of-two scale and es choice
    "qrange",
    "affine_qparams",
    "fake_quantize_affine",
    "quantize_affine",
    "dequantize_affine",
    "best_fraction_bits",
    "quantize_fixed",
    "best_pow2_scale",
    "pow2_scale",
    "best_es",
    "best_es_per_layer",
    # observers and calibration
    "Observer",
    "MinMaxObserver",
    "EMAMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "KLObserver",
    "Log2HistogramObserver",
    "CalibrationError",
    "Calibration",
    "calibration",
    "calibrate",
    # batch-norm folding
    "fold_batchnorm",
    "find_foldable",
    # QAT
    "LSQQuantizer",
    "prepare_qat",
    "convert",
    "lsq_quantizers",
    # sensitivity and mixed precision
    "sensitivity_scan",
    "SensitivityReport",
    "SensitivityEntry",
    "measure_config",
    "storage_bits",
    "allocate",
    "Plan",
    "PlanLayer",
    "uniform_plan",
    "pareto_front",
]
