"""hypothesis strategies: float tensors and random valid spec strings (hypothesis is imported
where used: it is a test dependency, not a runtime one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def _st() -> Any:
    from hypothesis import strategies as st

    return st


def _bits_to_tensor(patterns: "list[int]", dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(patterns, dtype=torch.int32).to(torch.int16).view(dtype)


def float_tensors(
    dtype: torch.dtype = torch.float32,
    *,
    min_size: int = 0,
    max_size: int = 24,
    allow_nan: bool = True,
    allow_infinity: bool = True,
    min_value: "float | None" = None,
    max_value: "float | None" = None,
) -> Any:
    """1-D tensors of ``dtype`` values (any of float16, bfloat16, float32, float64).

    float16 and bfloat16 elements are drawn as raw 16-bit patterns, so every value (subnormals,
    ±0, ±inf, NaN) is reachable; ``min_value``/``max_value`` filter them.
    """
    st = _st()
    if dtype in (torch.float16, torch.bfloat16):

        def ok(t: torch.Tensor) -> bool:
            v = float(t)
            if math.isnan(v):
                return allow_nan
            if math.isinf(v) and not allow_infinity:
                return False
            if min_value is not None and v < min_value:
                return False
            if max_value is not None and v > max_value:
                return False
            return True

        elem = st.integers(0, 0xFFFF).map(lambda b: _bits_to_tensor([b], dtype)[0]).filter(ok)
        return st.lists(elem, min_size=min_size, max_size=max_size).map(
            lambda xs: torch.stack(xs) if xs else torch.empty(0, dtype=dtype)
        )
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"float_tensors: unsupported dtype {dtype}")
    width = 32 if dtype == torch.float32 else 64
    if width == 32:  # hypothesis wants bounds exact at the width: round them inward
        if min_value is not None:
            lo = np.float32(min_value)
            min_value = float(np.nextafter(lo, np.float32(np.inf)) if float(lo) < min_value else lo)
        if max_value is not None:
            hi = np.float32(max_value)
            max_value = float(np.nextafter(hi, np.float32(-np.inf)) if float(hi) > max_value else hi)
    elem = st.floats(
        width=width,
        allow_nan=allow_nan and min_value is None and max_value is None,
        allow_infinity=allow_infinity and (min_value is None or max_value is None),
        min_value=min_value,
        max_value=max_value,
    )
    return st.lists(elem, min_size=min_size, max_size=max_size).map(lambda xs: torch.tensor(xs, dtype=dtype))


def sorted_float_tensors(dtype: torch.dtype = torch.float32, **kwargs: Any) -> Any:
    """Ascending tensors of non-NaN values (for monotonicity checks)."""
    kwargs["allow_nan"] = False
    return float_tensors(dtype, **kwargs).map(lambda t: torch.sort(t).values)


def posit_specs() -> Any:
    """Random valid posit spec strings ``posit{n}_es{es}[_s{k}]``."""
    st = _st()

    @st.composite
    def build(draw: Any) -> str:
        n = draw(st.integers(2, 32))
        es = draw(st.integers(0, 5))
        limit = 1000 - ((n - 2) << es)
        s = draw(st.one_of(st.just(0), st.integers(-limit, limit)))
        return f"posit{n}_es{es}" + (f"_s{s}" if s else "")

    return build()


def minifloat_specs() -> Any:
    """Random valid minifloat spec strings ``e{E}m{M}[b{bias}][fn|fnuz|fnu][_sat]``.

    Biases are drawn so that every value stays inside float64's normal range.
    """
    st = _st()

    @st.composite
    def build(draw: Any) -> str:
        policy = draw(st.sampled_from(["", "fn", "fnuz", "fnu"]))
        lo_e = 2 if policy == "" else 1
        e = draw(st.integers(lo_e, 10))
        signed = policy != "fnu"
        max_m = min(23, 32 - e - int(signed))
        lo_m = 1 if policy == "" else 0
        m = draw(st.integers(lo_m, max_m))
        if policy == "fnu" and e == 1 and m == 0:
            e = 2
        if policy == "fn" and e == 1 and m == 0:
            m = 1
        # lowbit accepts |bias| <= 600; keep every value inside float64 (2^(2^E - 1 - bias) finite)
        bias = draw(st.one_of(st.none(), st.integers(max(-600, (1 << e) - 1000), 600)))
        sat = draw(st.booleans())
        return f"e{e}m{m}" + (f"b{bias}" if bias is not None else "") + policy + ("_sat" if sat else "")

    return build()


def fixed_specs() -> Any:
    """Random valid fixed-point spec strings ``[u]fixed{w}_f{f}``."""
    st = _st()

    @st.composite
    def build(draw: Any) -> str:
        unsigned = draw(st.booleans())
        w = draw(st.integers(1 if unsigned else 2, 32))
        f = draw(st.integers(0, 64))
        return f"{'u' if unsigned else ''}fixed{w}_f{f}"

    return build()


def integer_specs() -> Any:
    """Random valid integer spec strings ``int{b}``, ``uint{b}``, ``int{b}n``."""
    st = _st()

    @st.composite
    def build(draw: Any) -> str:
        kind = draw(st.sampled_from(["int", "uint", "intn"]))
        b = draw(st.integers(1 if kind == "uint" else 2, 32))
        return {"int": f"int{b}", "uint": f"uint{b}", "intn": f"int{b}n"}[kind]

    return build()


def any_specs() -> Any:
    """A random valid spec string of any scalar family."""
    st = _st()
    return st.one_of(posit_specs(), minifloat_specs(), fixed_specs(), integer_specs())
