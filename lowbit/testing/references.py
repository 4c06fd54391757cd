"""The independent reference dtypes (ml_dtypes, numpy, torch) and the lowbit spec each one
must match bit for bit.

>>> ML_DTYPES_SPECS["float8_e4m3fn"]
'e4m3fn'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ml_dtypes type name (or "float16" for numpy's IEEE half) -> the lowbit spec with the same bits.
ML_DTYPES_SPECS: dict[str, str] = {
    "float8_e4m3fn": "e4m3fn",
    "float8_e4m3": "e4m3",
    "float8_e4m3fnuz": "e4m3fnuz",
    "float8_e4m3b11fnuz": "e4m3b11fnuz",
    "float8_e5m2": "e5m2",
    "float8_e5m2fnuz": "e5m2fnuz",
    "float8_e3m4": "e3m4",
    "float6_e3m2fn": "e3m2fn",
    "float6_e2m3fn": "e2m3fn",
    "float4_e2m1fn": "e2m1fn",
    "float8_e8m0fnu": "e8m0fnu",
    "bfloat16": "e8m7",
    "float16": "e5m10",  # numpy.float16
}

# torch dtype -> lowbit spec that torch's float32 -> dtype cast equals (torch's e4m3fn saturates).
TORCH_SPECS: dict[torch.dtype, str] = {
    torch.float8_e4m3fn: "e4m3fn_sat",
    torch.float8_e5m2: "e5m2",
    torch.float8_e4m3fnuz: "e4m3fnuz",
    torch.float8_e5m2fnuz: "e5m2fnuz",
    torch.float16: "e5m10",
    torch.bfloat16: "e8m7",
}


def ml_dtype(name: str) -> Any:
    """The numpy scalar type of an ``ML_DTYPES_SPECS`` key (numpy.float16 for "float16")."""
    if name == "float16":
        return np.float16
    import ml_dtypes

    return getattr(ml_dtypes, name)


def code_view_dtype(bits: int) -> Any:
    """The unsigned numpy dtype whose items hold a ``bits``-bit pattern."""
    if bits <= 8:
        return np.uint8
    if bits <= 16:
        return np.uint16
    if bits <= 32:
        return np.uint32
    return np.uint64
