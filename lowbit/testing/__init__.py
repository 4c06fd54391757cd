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

import functools
import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

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
]

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


# ------------------------------------------------------------------------------ sweeps
def random_binade_floats(
    n: int, lo_exp: int, hi_exp: int, *, seed: int, dtype: Any = np.float64, signed: bool = True
) -> np.ndarray:
    """``n`` values m·2^e with e uniform in [lo_exp, hi_exp], m uniform in [1, 2), random sign.

    The mantissa is drawn in float64 and the product rounded once to ``dtype`` (so float32
    results carry full 24-bit random significands; values below dtype's normal range become
    its subnormals).
    """
    rng = np.random.default_rng(seed)
    m = rng.uniform(1.0, 2.0, n)
    e = rng.integers(lo_exp, hi_exp + 1, n)
    v = np.ldexp(m, e)
    if signed:
        v = v * rng.choice(np.array([-1.0, 1.0]), n)
    with np.errstate(all="ignore"):
        return v.astype(dtype)


def table_points(
    values: "torch.Tensor | np.ndarray", dtype: Any = np.float64, *, exact: bool = True
) -> dict[str, np.ndarray]:
    """Interesting inputs around a sorted table of representable values.

    Returns ``{"values", "midpoints", "above_midpoints", "below_midpoints"}``: the values, the
    arithmetic midpoints of adjacent values (asserted exact in ``dtype`` unless ``exact=False``,
    which rounds them to ``dtype`` instead), and the next ``dtype`` number above / below each
    midpoint.
    """
    v = _to_float64_numpy(values)
    v = v[np.isfinite(v)]
    v = np.unique(v)
    mids64 = (v[1:] + v[:-1]) / 2
    with np.errstate(all="ignore"):
        mids = mids64.astype(dtype)
        vals = v.astype(dtype)
    if exact and not np.array_equal(mids.astype(np.float64), mids64):
        raise ValueError(f"some midpoints are not exact in {np.dtype(dtype).name}")
    inf = np.array(np.inf, dtype=dtype)
    return {
        "values": vals,
        "midpoints": mids,
        "above_midpoints": np.nextafter(mids, inf),
        "below_midpoints": np.nextafter(mids, -inf),
    }


_NP_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_NP_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def random_float_patterns(n: int, dtype: torch.dtype, *, seed: int) -> torch.Tensor:
    """``n`` uniformly random bit patterns of ``dtype`` (float16/bfloat16/float32/float64) as a
    tensor: every class appears (±0, subnormals, ±inf, NaNs of both signs with payloads)."""
    width = torch.finfo(dtype).bits // 8
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, np.iinfo(_NP_UINT[width]).max, n, dtype=_NP_UINT[width], endpoint=True)
    signed = {2: np.int16, 4: np.int32, 8: np.int64}[width]
    return torch.from_numpy(raw.view(signed).copy()).view(dtype)


def every_float_pattern(dtype: torch.dtype) -> torch.Tensor:
    """All 65536 bit patterns of float16 or bfloat16, in pattern order."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"every_float_pattern: only 16-bit dtypes, got {dtype}")
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)


def unique_floats(x: np.ndarray) -> np.ndarray:
    """The distinct bit patterns of a float array (so -0.0 and +0.0 are both kept), in bit order."""
    x = np.ascontiguousarray(x)
    view = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
    return np.unique(x.view(view)).view(x.dtype)


# ------------------------------------------------------------------------------ hypothesis
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


def iter_chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``seq`` in consecutive slices of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


# ------------------------------------------------------------------------------ exact oracle
def exact_float64(q: Any) -> "float | None":
    """``q`` (Fraction, int or float) as the float64 of exactly the same value, or None when
    float64 cannot hold it exactly.  Floats (nan, ±inf, -0.0 included) pass through.

    >>> from fractions import Fraction
    >>> exact_float64(Fraction(3, 8)), exact_float64(Fraction(1, 3))
    (0.375, None)
    """
    from fractions import Fraction

    if isinstance(q, float):
        return q
    q = Fraction(q)
    try:
        f = q.numerator / q.denominator  # correctly rounded int / int division
    except OverflowError:
        return None
    return f if math.isfinite(f) and Fraction(f) == q else None


class Oracle:
    """The exact oracle of `lowbit.reference` for one scalar spec string, with batch helpers.

    The spec is parsed here, independently of `lowbit.formats` (posit, fixed point and integer
    specs by their grammar, minifloats by `lowbit.reference.minifloat_params`), so a parsing
    slip in lowbit cannot hide from a comparison.  Values are exact: ``decode`` gives a
    Fraction, or a float for nan / ±inf / -0.0 (posit NaR -> nan).

    >>> o = oracle_for("posit8_es2")
    >>> o.encode(0.3), o.decode(64), o.neighbors(0.3)
    (50, Fraction(1, 1), (49, 50))
    """

    _POSIT = r"posit(\d+)_es(\d+)(?:_s([+-]?\d+))?"
    _FIXED = r"(u?)fixed(\d+)_f(\d+)"
    _INTEGER = r"(u?)int(\d+)(n?)"

    def __init__(self, spec: str) -> None:
        import re

        from lowbit import reference as ref

        self.spec = spec
        self._ref = ref
        self._values: dict[int, float] = {}
        self.unused_codes: frozenset[int] = frozenset()
        if m := re.fullmatch(self._POSIT, spec):
            self.family = "posit"
            self._args: tuple[Any, ...] = (int(m[1]), int(m[2]), int(m[3] or 0))
            self.bits = int(m[1])
        elif m := re.fullmatch(self._FIXED, spec):
            self.family = "fixed"
            self._args = (int(m[2]), int(m[3]), not m[1], False)
            self.bits = int(m[2])
        elif m := re.fullmatch(self._INTEGER, spec):
            self.family = "fixed"
            self._args = (int(m[2]), 0, not m[1], bool(m[3]))
            self.bits = int(m[2])
            if m[3]:
                self.unused_codes = frozenset({1 << (self.bits - 1)})
        else:
            self.family = "minifloat"
            self._args = (ref.minifloat_params(spec),)
            self.bits = self._args[0].bits

    def __repr__(self) -> str:
        return f"oracle_for({self.spec!r})"

    # ---- scalars
    def encode(self, x: Any, rounding: str = "nearest_even") -> int:
        """Code of ``x`` (float, int or Fraction) in a deterministic rounding mode."""
        if self.family == "posit":
            return self._ref.posit_encode(x, *self._args, rounding=rounding)
        if self.family == "fixed":
            return self._ref.fixed_encode(x, *self._args, rounding=rounding)
        return self._ref.minifloat_encode(x, self._args[0], rounding)

    def decode(self, code: int) -> Any:
        """Exact value of ``code``: Fraction, or float nan / ±inf / -0.0."""
        if self.family == "posit":
            v = self._ref.posit_decode(code, *self._args)
            return math.nan if v is None else v
        if self.family == "fixed":
            return self._ref.fixed_decode(code, *self._args)
        return self._ref.minifloat_decode(code, self._args[0])

    def neighbors(self, x: Any) -> tuple[int, int]:
        """Codes ``(lo, hi)`` that a stochastic rounding of ``x`` may return."""
        if self.family == "posit":
            return self._ref.posit_neighbors(x, *self._args)
        if self.family == "fixed":
            return self._ref.fixed_neighbors(x, *self._args)
        return self._ref.minifloat_neighbors(x, self._args[0])

    def value_float64(self, code: int) -> float:
        """float64 of ``code``'s value; raises ValueError if float64 cannot hold it exactly."""
        f = self._values.get(code)
        if f is None:
            f = exact_float64(self.decode(code))
            if f is None:
                raise ValueError(f"{self.spec} code {code} has a value float64 cannot hold exactly")
            self._values[code] = f
        return f

    # ---- batches (numpy in, numpy out)
    def encode_many(self, xs: "np.ndarray | Sequence[float]", rounding: str = "nearest_even") -> np.ndarray:
        enc = self.encode
        return np.fromiter((enc(float(x), rounding) for x in np.asarray(xs).reshape(-1)), dtype=np.int64)

    def neighbors_many(self, xs: "np.ndarray | Sequence[float]") -> tuple[np.ndarray, np.ndarray]:
        nb = self.neighbors
        pairs = [nb(float(x)) for x in np.asarray(xs).reshape(-1)]
        arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def values_many(self, codes: "np.ndarray | Sequence[int]") -> np.ndarray:
        """Exact float64 values of ``codes`` (decoded once per distinct code)."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        distinct, inverse = np.unique(codes, return_inverse=True)
        table = np.array([self.value_float64(int(c)) for c in distinct], dtype=np.float64)
        return table[inverse.reshape(-1)]


def oracle_for(spec: str) -> Oracle:
    """The (cached) `Oracle` of a posit, minifloat, fixed point or integer spec string."""
    return _oracle_cached(spec)


@functools.lru_cache(maxsize=None)
def _oracle_cached(spec: str) -> Oracle:
    return Oracle(spec)
