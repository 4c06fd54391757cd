"""Torch reference of the quire (any device): exact integer accumulation, exact rounding.

The same arithmetic as `lowbit.kernels.quire_numba`, vectorised with int64 tensors so it runs
wherever torch does (CUDA included): slower, chunked over k, but exact. Used for non-CPU
tensors, when numba is missing, or with ``backend="reference"``.
"""

from __future__ import annotations

import torch

__all__ = ["bit_length", "round_to_float64", "int_matmul", "limb_matmul"]

_DIGIT = 24  # bits per limb of the reference accumulator
_PIECE = 18  # bits per significand piece (pieces multiply to < 2**36)
_CHUNK_ELEMENTS = 1 << 22


def bit_length(t: torch.Tensor) -> torch.Tensor:
    """Number of bits of each int64 in t (0 <= t < 2**63), as int64."""
    bl = torch.frexp(t.to(torch.float64))[1].to(torch.int64)  # may be one too high after rounding
    too_high = (bl > 0) & ((t >> (bl - 1).clamp_min(0)) == 0)
    return torch.where(too_high, bl - 1, bl)


def round_to_float64(neg: torch.Tensor, t: torch.Tensor, e: torch.Tensor, sticky: torch.Tensor,
                     odd: bool) -> torch.Tensor:
    """(-1)**neg · (t + δ) · 2**e rounded once to float64, elementwise.

    ``t``: int64 in [0, 2**62); ``sticky``: a δ in (0, 1) was cut off (only when t has 62 bits).
    ``odd``: round to odd (past the range: ±max), else to nearest even (past the range: ±inf).
    """
    bl = bit_length(t)
    msb = e + bl - 1
    kept = torch.where(msb >= -1022, torch.full_like(msb, 53), msb + 1075)
    drop = bl - kept
    d = drop.clamp(1, 62)
    q0 = t >> d
    rem = t & ((torch.ones_like(d) << d) - 1)
    half = torch.ones_like(d) << (d - 1)
    if odd:
        q = q0 | ((rem != 0) | sticky).to(torch.int64)
    else:
        up = (rem > half) | ((rem == half) & (sticky | ((q0 & 1) == 1)))
        q = q0 + up.to(torch.int64)
    q = torch.where(drop <= 0, t, q)
    q = torch.where(drop >= 63, torch.full_like(q, 1 if odd else 0), q)
    qe = torch.where(drop <= 0, e, e + drop)
    v = q.to(torch.float64) * torch.pow(torch.full_like(qe, 2, dtype=torch.float64), qe.to(torch.float64))
    if odd:
        big = (q != 0) & (qe + bit_length(q) - 1 > 1023)
        v = torch.where(big, torch.full_like(v, torch.finfo(torch.float64).max), v)
    v = torch.where(t == 0, torch.zeros_like(v), v)
    return torch.where(neg, -v, v)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int64 batched matmul [G, m, k] × [G, k, n] (the caller checks it cannot overflow)."""
    g, m, k = a.shape
    n = b.shape[2]
    out = torch.zeros((g, m, n), dtype=torch.int64, device=a.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, g * m * n))
    for s in range(0, k, step):
        out += (a[:, :, s:s + step, None] * b[:, None, s:s + step, :]).sum(2)
    return out


def limb_matmul(ma: torch.Tensor, ea: torch.Tensor, mb: torch.Tensor, eb: torch.Tensor, bottom: int,
                bits: int, odd: bool) -> torch.Tensor:
    """Exact sum over k of ma·2**ea · mb·2**eb ([G,m,k] × [G,k,n]), rounded once to float64.

    Significands (|m| < 2**53) are cut into 18-bit pieces; each piece product (< 2**36) is
    shifted into place and scattered, as three 24-bit digits, into int64 limbs (room for 2**39
    additions each). ``bits`` bounds the width of the exact sum above 2**bottom.
    """
    g, m, k = ma.shape
    n = mb.shape[2]
    nl = bits // _DIGIT + 6
    dev = ma.device
    limbs = torch.zeros((g, m, n, nl), dtype=torch.int64, device=dev)
    sa, sb = torch.sign(ma), torch.sign(mb)
    aa, ab = ma.abs(), mb.abs()
    mask_p, mask_d = (1 << _PIECE) - 1, (1 << _DIGIT) - 1
    step = max(1, _CHUNK_ELEMENTS // max(1, g * m * n))
    for s in range(0, k, step):
        sl = slice(s, s + step)
        sign = (sa[:, :, sl, None] * sb[:, None, sl, :]).permute(0, 1, 3, 2)  # [g, m, n, kc]
        pos0 = (ea[:, :, sl, None] + eb[:, None, sl, :]).permute(0, 1, 3, 2) - bottom
        pos0 = pos0.clamp_min(0)  # only zero products lie below bottom; they add 0 anywhere
        for i in range(3):
            pa = (aa[:, :, sl] >> (_PIECE * i)) & mask_p
            for j in range(3):
                pb = (ab[:, sl, :] >> (_PIECE * j)) & mask_p
                prod = (pa[:, :, :, None] * pb[:, None, :, :]).permute(0, 1, 3, 2) * sign
                pos = pos0 + _PIECE * (i + j)
                q, r = pos // _DIGIT, pos % _DIGIT
                mag = prod.abs() << r  # < 2**60
                sg = torch.sign(prod)
                for d in range(3):
                    digit = (mag >> (_DIGIT * d)) & mask_d
                    limbs.scatter_add_(3, (q + d).clamp_max(nl - 1), digit * sg)
    return _limbs_to_float64(limbs, bottom, odd)


def _normalize(limbs: torch.Tensor) -> None:
    for i in range(limbs.shape[-1] - 1):
        c = limbs[..., i] >> _DIGIT
        limbs[..., i] -= c << _DIGIT
        limbs[..., i + 1] += c


def _limbs_to_float64(limbs: torch.Tensor, bottom: int, odd: bool) -> torch.Tensor:
    _normalize(limbs)
    neg = limbs[..., -1] < 0
    limbs = torch.where(neg[..., None], -limbs, limbs)
    _normalize(limbs)
    nl = limbs.shape[-1]
    idx = torch.arange(nl, device=limbs.device)
    nonzero = limbs != 0
    h = torch.where(nonzero, idx, torch.full_like(idx, -1)).amax(-1)  # top nonzero limb (-1: zero)
    hc = h.clamp_min(0)
    top = limbs.gather(-1, hc[..., None])[..., 0]
    bl = bit_length(top)
    t = torch.zeros_like(top)
    sticky = torch.zeros_like(neg)
    for d in range(4):
        li = hc - d
        limb = torch.where(li >= 0, limbs.gather(-1, li.clamp_min(0)[..., None])[..., 0], torch.zeros_like(top))
        sh = 62 - bl - _DIGIT * d
        left = limb << sh.clamp_min(0)
        right = limb >> (-sh).clamp(0, 62)
        lost = limb & ((torch.ones_like(sh) << (-sh).clamp(0, 62)) - 1)
        t = t + torch.where(sh >= 0, left, right)
        sticky |= (sh < 0) & (lost != 0)
    below = torch.cumsum(nonzero.to(torch.int64), -1)  # nonzero limbs at index <= i
    under = hc - 4
    sticky |= (under >= 0) & (below.gather(-1, under.clamp_min(0)[..., None])[..., 0] > 0)
    e = bottom + _DIGIT * hc + bl - 62
    small = (_DIGIT * hc + bl) <= 62  # the whole sum fits in t exactly: keep it as an integer
    exact_t = torch.zeros_like(top)
    for i in range(min(nl, 3)):
        exact_t = exact_t + (limbs[..., i] << (_DIGIT * i))
    t = torch.where(small, exact_t, t)
    e = torch.where(small, torch.full_like(e, bottom), e)
    sticky = sticky & ~small
    return round_to_float64(neg, t, e, sticky, odd)
