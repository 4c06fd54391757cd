"""The quire: exact batched matmul of float tensors, rounded once to float64.

`quire_matmul(a, b, odd)` takes a [G, m, k] and b [G, k, n] of any float dtype and returns the
float64 tensor of  round(sum_k a[g,i,k] · b[g,k,j])  where the sum of the exact products is
exact and ``round`` is nearest-even (``odd=False``) or round-to-odd (``odd=True``, the exact
input of a second rounding to a narrower format; docs/semantics.md, "The quire").

The accumulator is sized per call from the exponents present: every finite nonzero operand is
m · 2**e with an odd integer m; with ``lo`` the smallest such e and ``top`` the largest
exponent of a leading bit, the exact sum is an integer multiple of 2**(lo_a + lo_b) of at most
``top_a + top_b - lo_a - lo_b + bit_length(k)`` bits. Then, per call:

- ``"float64"`` path, sum width <= 53 bits: the operands, scaled to integers, are exact float64
  and so is every partial sum of ``torch.matmul`` in float64 (any order, FMA or not), since
  all of them are integers below 2**53: BLAS speed, any device;
- ``"int64"`` path, <= 62 bits: int64 multiply-add (numba kernel, or torch);
- ``"limbs"``: a Kulisch accumulator of 30-bit limbs (numba) / 24-bit limbs (torch) as wide
  as the call needs (float32 operands: up to ~600 bits, float64: ~4300 bits).

NaN / inf follow IEEE: a NaN product (NaN operand, inf · 0) or products of both infinite signs
give NaN, else an infinite product gives that inf.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from lowbit.kernels import quire_torch, resolve_backend

__all__ = ["quire_matmul", "PATHS", "accumulator_plan"]

#: accumulation paths, cheapest first ("auto" picks the cheapest exact one)
PATHS = ("auto", "float64", "int64", "limbs")


@functools.lru_cache(maxsize=1)
def _numba_kernels() -> Any:
    from lowbit.kernels import quire_numba

    return quire_numba


def _decompose(x: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """(m, e, top) with x = m · 2**e, m an odd int64 (0 for x = 0), top = exponent above the leading bit."""
    mant, top = torch.frexp(x)
    m = (mant * 2.0**53).to(torch.int64)
    low = m & (-m)
    tz = torch.frexp(low.to(torch.float64))[1].to(torch.int64) - 1
    tz = torch.where(m == 0, torch.zeros_like(tz), tz)
    return m >> tz, top.to(torch.int64) - 53 + tz, top.to(torch.int64)


def accumulator_plan(a: torch.Tensor, b: torch.Tensor) -> "dict[str, int] | None":
    """The exponent frame of a call: ``lo`` (grid of the exact sum), ``bits`` (its width), or None if
    every product is 0. a, b: finite float64 [G, m, k], [G, k, n]."""
    ma, ea, ta = _decompose(a)
    mb, eb, tb = _decompose(b)
    nza, nzb = ma != 0, mb != 0
    if not bool(nza.any()) or not bool(nzb.any()):
        return None
    lo_a, lo_b = int(ea[nza].min()), int(eb[nzb].min())
    top = int(ta[nza].max()) + int(tb[nzb].max())
    k = a.shape[-1]
    return {"lo_a": lo_a, "lo_b": lo_b, "lo": lo_a + lo_b, "bits": top - lo_a - lo_b + max(1, k).bit_length()}


def _specials(a: torch.Tensor, b: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """Masks [G, m, n] of outputs whose IEEE sum is NaN, +inf, -inf (a, b float64)."""
    f = torch.float64
    nan_a, nan_b = a.isnan(), b.isnan()
    pinf_a, ninf_a, pinf_b, ninf_b = a == torch.inf, a == -torch.inf, b == torch.inf, b == -torch.inf
    inf_a, inf_b = pinf_a | ninf_a, pinf_b | ninf_b
    zero_a, zero_b = a == 0, b == 0
    pos_a, neg_a, pos_b, neg_b = a > 0, a < 0, b > 0, b < 0

    def mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.to(f), y.to(f)) > 0

    ones_a, ones_b = torch.ones_like(a, dtype=f), torch.ones_like(b, dtype=f)
    nan = mm(nan_a, ones_b) | mm(ones_a, nan_b) | mm(inf_a, zero_b) | mm(zero_a, inf_b)
    pinf = mm(pinf_a, pos_b) | mm(ninf_a, neg_b) | mm(pos_a, pinf_b) | mm(neg_a, ninf_b)
    ninf = mm(pinf_a, neg_b) | mm(ninf_a, pos_b) | mm(pos_a, ninf_b) | mm(neg_a, pinf_b)
    return nan | (pinf & ninf), pinf & ~nan & ~ninf, ninf & ~nan & ~pinf


def quire_matmul(a: torch.Tensor, b: torch.Tensor, odd: bool = False, backend: "str | None" = None,
                 path: str = "auto") -> torch.Tensor:
    """Exact [G, m, k] × [G, k, n] matmul rounded once to float64 (nearest even, or to odd).

    ``path``: ``"auto"`` (cheapest exact path), or force ``"float64"`` / ``"int64"`` / ``"limbs"``
    (ValueError if the forced path cannot hold this call exactly).
    """
    if path not in PATHS:
        raise ValueError(f"path={path!r} is not an accumulation path; allowed: {', '.join(PATHS)}")
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"quire_matmul needs [G, m, k] and [G, k, n], got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    g, m, k = a.shape
    n = b.shape[2]
    finite = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    if not finite:
        nan, pinf, ninf = _specials(a, b)
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    out = _finite_matmul(a, b, odd, backend, path) if m * n * g else a.new_zeros((g, m, n))
    if not finite:
        out = torch.where(pinf, torch.full_like(out, torch.inf), out)
        out = torch.where(ninf, torch.full_like(out, -torch.inf), out)
        out = torch.where(nan, torch.full_like(out, torch.nan), out)
    return out


def _finite_matmul(a: torch.Tensor, b: torch.Tensor, odd: bool, backend: "str | None", path: str) -> torch.Tensor:
    g, m, k = a.shape
    n = b.shape[2]
    plan = accumulator_plan(a, b)
    if plan is None:
        return a.new_zeros((g, m, n))
    bits = plan["bits"]
    if path == "auto":
        path = "float64" if bits <= 53 else "int64" if bits <= 62 else "limbs"
    elif (path == "float64" and bits > 53) or (path == "int64" and bits > 62):
        raise ValueError(f"path={path!r} cannot hold this call exactly: the sum needs {bits} bits")
    fast = resolve_backend(backend, a.device.type) == "numba"
    if path in ("float64", "int64"):
        ai, bi = _scale(a, -plan["lo_a"]), _scale(b, -plan["lo_b"])
        if path == "float64":
            s = torch.matmul(ai, bi).to(torch.int64)
        elif fast:
            s = torch.empty((g * m, n), dtype=torch.int64)
            _run(_numba_kernels().int_matmul, ai.to(torch.int64).reshape(g * m, k).numpy(),
                 bi.to(torch.int64).contiguous().numpy(), s.numpy())
        else:
            s = quire_torch.int_matmul(ai.to(torch.int64), bi.to(torch.int64))
        s = s.reshape(-1)
        if fast:
            out = torch.empty(s.shape, dtype=torch.float64)
            _run(_numba_kernels().round_int64, s.numpy(), plan["lo"], odd, out.numpy())
        else:
            zero = torch.zeros_like(s, dtype=torch.bool)
            out = quire_torch.round_to_float64(s < 0, s.abs(), torch.full_like(s, plan["lo"]), zero, odd)
        return out.reshape(g, m, n)
    ma, ea, _ = _decompose(a)
    mb, eb, _ = _decompose(b)
    if fast:
        out = torch.empty((g * m, n), dtype=torch.float64)
        nlimbs = bits // 30 + 7
        _run(_numba_kernels().limb_matmul, ma.reshape(g * m, k).numpy(), ea.reshape(g * m, k).numpy(),
             mb.transpose(1, 2).contiguous().numpy(), eb.transpose(1, 2).contiguous().numpy(),
             plan["lo"], nlimbs, odd, out.numpy())
        return out.reshape(g, m, n)
    return quire_torch.limb_matmul(ma, ea, mb, eb, plan["lo"], bits, odd)


def _scale(x: torch.Tensor, e: int) -> torch.Tensor:
    """x · 2**e, exact when the result is an integer below 2**62 (two factors: 2**e alone may overflow)."""
    half = e // 2
    return x * 2.0**half * 2.0 ** (e - half)


def _run(kernel: Any, *args: Any) -> None:
    from lowbit.kernels.dispatch import _run as run

    run(kernel, *args)
