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


def _frame(x: torch.Tensor, fast: bool) -> "tuple[bool, int | None, int]":
    """(all finite, lowest lsb exponent of a finite nonzero value (None: there is none), highest top)."""
    if fast:
        finite, lo, top = _numba_kernels().frame(x.detach().contiguous().reshape(-1).numpy(), _chunks(x.numel()))
        return bool(finite), (int(lo) if top > -(1 << 20) else None), int(top)
    finite = bool(torch.isfinite(x).all())
    xf = x.to(torch.float64)
    if not finite:
        xf = torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf))
    m, e, top = _decompose(xf)
    nz = m != 0
    if not bool(nz.any()):
        return finite, None, 0
    return finite, int(e[nz].min()), int(top[nz].max())


def _chunks(n: int) -> int:
    return max(1, min(64, n >> 14))


def accumulator_plan(a: torch.Tensor, b: torch.Tensor) -> "dict[str, int] | None":
    """The exponent frame of a call on finite a [..., m, k], b [..., k, n]: ``lo_a``, ``lo_b``, ``lo``
    (the exact sum is a multiple of 2**lo) and ``bits`` (its width), or None if every product is 0."""
    _, lo_a, top_a = _frame(a, False)
    _, lo_b, top_b = _frame(b, False)
    return _plan(lo_a, top_a, lo_b, top_b, a.shape[-1])


def _plan(lo_a: "int | None", top_a: int, lo_b: "int | None", top_b: int, k: int) -> "dict[str, int] | None":
    if lo_a is None or lo_b is None:
        return None
    return {"lo_a": lo_a, "lo_b": lo_b, "lo": lo_a + lo_b,
            "bits": top_a + top_b - lo_a - lo_b + max(1, k).bit_length()}


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
    a, b = a.detach(), b.detach()
    g, m, k = a.shape
    n = b.shape[2]
    if a.dtype not in (torch.float32, torch.float64):
        a = a.to(torch.float32)  # float16 / bfloat16: exact
    if b.dtype not in (torch.float32, torch.float64):
        b = b.to(torch.float32)
    fast = resolve_backend(backend, a.device.type) == "numba"
    if g * m * n == 0:
        return torch.zeros((g, m, n), dtype=torch.float64, device=a.device)
    fin_a, lo_a, top_a = _frame(a, fast)
    fin_b, lo_b, top_b = _frame(b, fast)
    special = None
    if not (fin_a and fin_b):
        a, b = a.to(torch.float64), b.to(torch.float64)
        special = _specials(a, b)
        a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
        b = torch.where(torch.isfinite(b), b, torch.zeros_like(b))
    plan = _plan(lo_a, top_a, lo_b, top_b, k)
    if plan is None:
        out = torch.zeros((g, m, n), dtype=torch.float64, device=a.device)
    else:
        out = _finite_matmul(a, b, plan, odd, fast, path)
    if special is not None:
        nan, pinf, ninf = special
        out = torch.where(pinf, torch.full_like(out, torch.inf), out)
        out = torch.where(ninf, torch.full_like(out, -torch.inf), out)
        out = torch.where(nan, torch.full_like(out, torch.nan), out)
    return out


def _finite_matmul(a: torch.Tensor, b: torch.Tensor, plan: "dict[str, int]", odd: bool, fast: bool,
                   path: str) -> torch.Tensor:
    g, m, k = a.shape
    n = b.shape[2]
    bits, lo = plan["bits"], plan["lo"]
    if path == "auto":
        path = "float64" if bits <= 53 else "int64" if bits <= 62 else "limbs"
    elif (path == "float64" and bits > 53) or (path == "int64" and bits > 62):
        raise ValueError(f"path={path!r} cannot hold this call exactly: the sum needs {bits} bits")
    if path == "float64":
        if fast:
            kern = _numba_kernels()
            ai, bi = torch.empty(a.shape, dtype=torch.float64), torch.empty(b.shape, dtype=torch.float64)
            _run(kern.to_scaled_float64, a.contiguous().reshape(-1).numpy(), -plan["lo_a"], ai.reshape(-1).numpy())
            _run(kern.to_scaled_float64, b.contiguous().reshape(-1).numpy(), -plan["lo_b"], bi.reshape(-1).numpy())
        else:
            ai, bi = _scale(a, -plan["lo_a"]), _scale(b, -plan["lo_b"])
        s = torch.matmul(ai, bi)  # exact: all partial sums are integers below 2**53
        if -1074 <= lo and lo + bits <= 1024:  # s · 2**lo is a float64: no rounding at all
            return s.mul_(2.0**lo).add_(0.0)  # + 0.0: an exact zero is +0 on every path
        s = s.to(torch.int64)
    elif fast:
        kern = _numba_kernels()
        ai = torch.empty((g * m, k), dtype=torch.int64)
        bi = torch.empty((g, k, n), dtype=torch.int64)
        _run(kern.to_scaled_int64, a.contiguous().reshape(-1).numpy(), -plan["lo_a"], ai.reshape(-1).numpy())
        _run(kern.to_scaled_int64, b.contiguous().reshape(-1).numpy(), -plan["lo_b"], bi.reshape(-1).numpy())
        s = torch.empty((g * m, n), dtype=torch.int64)
        _run(kern.int_matmul, ai.numpy(), bi.numpy(), s.numpy())
    elif path == "int64":
        s = quire_torch.int_matmul(_scale(a, -plan["lo_a"]).to(torch.int64), _scale(b, -plan["lo_b"]).to(torch.int64))
    if path in ("float64", "int64"):
        s = s.reshape(-1)
        if fast:
            out = torch.empty(s.shape, dtype=torch.float64)
            _run(_numba_kernels().round_int64, s.numpy(), lo, odd, out.numpy())
        else:
            zero = torch.zeros_like(s, dtype=torch.bool)
            out = quire_torch.round_to_float64(s < 0, s.abs(), torch.full_like(s, lo), zero, odd)
        return out.reshape(g, m, n)
    ma, ea, _ = _decompose(a.to(torch.float64))
    mb, eb, _ = _decompose(b.to(torch.float64))
    if fast:
        out = torch.empty((g * m, n), dtype=torch.float64)
        nlimbs = bits // 30 + 7
        _run(_numba_kernels().limb_matmul, ma.reshape(g * m, k).numpy(), ea.reshape(g * m, k).numpy(),
             mb.transpose(1, 2).contiguous().numpy(), eb.transpose(1, 2).contiguous().numpy(),
             lo, nlimbs, odd, out.numpy())
        return out.reshape(g, m, n)
    return quire_torch.limb_matmul(ma, ea, mb, eb, lo, bits, odd)


def _scale(x: torch.Tensor, e: int) -> torch.Tensor:
    """x · 2**e in float64, exact when the result is an integer below 2**62 (2**e alone may overflow)."""
    y = x.to(torch.float64)
    if -1022 <= e <= 1023:
        return y * 2.0**e
    half = e // 2
    return y * 2.0**half * 2.0 ** (e - half)


def _run(kernel: Any, *args: Any) -> None:
    from lowbit.kernels.dispatch import _run as run

    run(kernel, *args)
