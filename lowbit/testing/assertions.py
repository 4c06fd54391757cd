"""Exact comparisons (no tolerances) that print the first mismatches with their inputs in hex.

>>> import torch
>>> assert_floats_identical(torch.tensor([float("nan"), -0.0]), torch.tensor([float("nan"), -0.0]))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def to_numpy_int64(a: "torch.Tensor | np.ndarray | Sequence[int]") -> np.ndarray:
    """Integer codes as an int64 numpy array (torch tensors of any integer dtype included)."""
    if isinstance(a, torch.Tensor):
        if a.dtype.is_floating_point or a.dtype == torch.bool:
            raise TypeError(f"codes must be integers, got {a.dtype}")
        return a.detach().cpu().to(torch.int64).numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


def _to_float64_numpy(a: "torch.Tensor | np.ndarray | Sequence[float]") -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(a)
    with np.errstate(all="ignore"):
        return arr.astype(np.float64)


def _describe(inputs: Any, idx: np.ndarray) -> list[str]:
    if inputs is None:
        return ["?"] * len(idx)
    x = _to_float64_numpy(inputs).reshape(-1)
    out = []
    for i in idx:
        v = float(x[i])
        out.append(("-nan" if np.signbit(x[i]) else "+nan") if v != v else f"{v!r} ({v.hex()})")
    return out


def assert_codes_equal(
    actual: Any, expected: Any, inputs: Any = None, *, what: str = "codes", limit: int = 8
) -> None:
    """Integer bit patterns equal element for element (shapes must match exactly).

    ``inputs`` (same number of elements) is only used to describe mismatches.
    """
    a = to_numpy_int64(actual)
    e = to_numpy_int64(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    a, e = a.reshape(-1), e.reshape(-1)
    bad = np.nonzero(a != e)[0]
    if bad.size:
        shown = bad[:limit]
        rows = [
            f"  [{i}] input {d}: got {a[i]} (0x{a[i]:x}), expected {e[i]} (0x{e[i]:x})"
            for i, d in zip(shown, _describe(inputs, shown))
        ]
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ:\n" + "\n".join(rows))


def assert_floats_identical(
    actual: Any, expected: Any, inputs: Any = None, *, what: str = "values", limit: int = 8
) -> None:
    """Float values identical: NaN matches NaN (any payload), -0.0 differs from +0.0, no tolerance.

    Both sides are compared as float64 (every float16/bfloat16/float32 value converts exactly).
    If both are torch tensors their dtypes must match too.
    """
    if isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    a = _to_float64_numpy(actual)
    e = _to_float64_numpy(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    a, e = a.reshape(-1), e.reshape(-1)
    both_nan = np.isnan(a) & np.isnan(e)
    same = (a == e) & (np.signbit(a) == np.signbit(e))
    bad = np.nonzero(~(both_nan | same))[0]
    if bad.size:
        shown = bad[:limit]
        rows = [
            f"  [{i}] input {d}: got {a[i]!r} ({float(a[i]).hex()}), expected {e[i]!r} ({float(e[i]).hex()})"
            for i, d in zip(shown, _describe(inputs, shown))
        ]
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ:\n" + "\n".join(rows))


_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def float_bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float16/bfloat16/float32/float64 tensor, as a same-width int tensor."""
    if t.dtype not in _INT_VIEW:
        raise TypeError(f"float_bits: unsupported dtype {t.dtype}")
    return t.detach().cpu().contiguous().view(_INT_VIEW[t.dtype])


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, inputs: Any = None, *,
                     what: str = "values", limit: int = 8) -> None:
    """Float tensors identical bit for bit: same dtype, shape, and every bit pattern equal
    (the sign and payload of NaNs and the sign of zeros included; no tolerance).

    >>> assert_same_bits(torch.tensor([-0.0, 1.5]), torch.tensor([-0.0, 1.5]))
    """
    assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), what
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = float_bits(actual).reshape(-1).to(torch.int64).numpy()
    e = float_bits(expected).reshape(-1).to(torch.int64).numpy()
    bad = np.nonzero(a != e)[0]
    if bad.size:
        width = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}[actual.dtype]
        mask = (1 << width) - 1
        av = actual.detach().cpu().reshape(-1).to(torch.float64).numpy()
        ev = expected.detach().cpu().reshape(-1).to(torch.float64).numpy()
        shown = bad[:limit]
        rows = [
            f"  [{i}] input {d}: got {av[i]!r} (bits 0x{int(a[i]) & mask:x}), "
            f"expected {ev[i]!r} (bits 0x{int(e[i]) & mask:x})"
            for i, d in zip(shown, _describe(inputs, shown))
        ]
        raise AssertionError(f"{what}: {bad.size} of {a.size} differ in their bits:\n" + "\n".join(rows))
