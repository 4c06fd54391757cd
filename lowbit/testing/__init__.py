"""Test helpers shared by lowbit's test-suite (and usable by anyone testing a format).

- ``ML_DTYPES_SPECS`` / ``TORCH_SPECS``: the independent reference dtypes (ml_dtypes, numpy,
  torch) and the lowbit spec each one must match bit for bit.
- ``assert_codes_equal`` / ``assert_floats_identical``: exact comparisons (no tolerances) that
  print the first mismatches with their inputs in hex.
- ``assert_same_bits``: float tensors identical bit for bit (NaN sign and payload included).
- ``random_binade_floats`` / ``table_points``: deterministic sweeps over binades and over a
  format's own value table (values, midpoints and their float neighbours);
  ``random_float_patterns`` / ``every_float_pattern``: raw bit patterns of a float dtype (NaN
  payloads, subnormals, ±inf included); ``unique_floats``: dedupe by bit pattern.
- ``Oracle`` / ``oracle_for``: the exact Fraction oracle of `lowbit.reference` for a spec string
  (parsed independently of `lowbit.formats`), with batch helpers; ``exact_float64``.
- hypothesis strategies: ``float_tensors``, ``sorted_float_tensors`` and the random valid spec
  strings ``posit_specs``, ``minifloat_specs``, ``fixed_specs``, ``integer_specs``, ``any_specs``.

This module imports only torch and numpy at import time; hypothesis and ml_dtypes are imported
where they are used (they are test dependencies, not runtime ones).

>>> import torch
>>> assert_floats_identical(torch.tensor([float("nan"), -0.0]), torch.tensor([float("nan"), -0.0]))
>>> ML_DTYPES_SPECS["float8_e4m3fn"]
'e4m3fn'
"""


from __future__ import annotations

from lowbit.testing.assertions import (
    assert_codes_equal,
    assert_floats_identical,
    assert_same_bits,
    float_bits,
    to_numpy_int64,
)
from lowbit.testing.oracle import Oracle, exact_float64, oracle_for
from lowbit.testing.references import FLOAT_DTYPES, ML_DTYPES_SPECS, TORCH_SPECS, code_view_dtype, ml_dtype
from lowbit.testing.strategies import (
    any_specs,
    fixed_specs,
    float_tensors,
    integer_specs,
    minifloat_specs,
    posit_specs,
    sorted_float_tensors,
)
from lowbit.testing.sweeps import (
    every_float_pattern,
    iter_chunks,
    random_binade_floats,
    random_float_patterns,
    table_points,
    unique_floats,
)

__all__ = [
    "ML_DTYPES_SPECS",
    "TORCH_SPECS",
    "FLOAT_DTYPES",
    "ml_dtype",
    "code_view_dtype",
    "to_numpy_int64",
    "assert_codes_equal",
    "assert_floats_identical",
    "assert_same_bits",
    "float_bits",
    "random_binade_floats",
    "random_float_patterns",
    "every_float_pattern",
    "unique_floats",
    "table_points",
    "Oracle",
    "oracle_for",
    "exact_float64",
    "float_tensors",
    "sorted_float_tensors",
    "posit_specs",
    "minifloat_specs",
    "fixed_specs",
    "integer_specs",
    "any_specs",
    "iter_chunks",
]
