"""Pack n-bit integer codes into a dense byte stream, and back.

Bit order ("lsb_first", the one lowbit checkpoints use): the codes form one little-endian bit
stream. Element ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, its bit ``j`` (bit 0 = least
significant) at stream bit ``i*bits + j``; stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``.
Equivalently the packed bytes are the little-endian bytes of the integer ``sum(c[i] << i*bits)``,
so 8-bit codes are their own bytes, 16-bit codes are little-endian uint16, two 4-bit codes
``[a, b]`` make the byte ``b << 4 | a``. Unused bits of the last byte are 0.

Tensors of any shape are flattened (the caller stores the shape). Both directions are
vectorized (this torch code is the reference; with numba installed a one-pass kernel from
`lowbit.storage._bitpack_numba` runs on CPU tensors instead, chosen as `lowbit.kernels` chooses):
``g = 8 / gcd(bits, 8)`` codes fill exactly ``bits*g/8`` bytes, so the stream is cut
into such groups and each byte (or code) of a group is built from the few codes (or bytes) that
overlap it, with a fixed, precomputed list of shifts: a constant number of whole-tensor torch ops
per width, no per-element Python.
"""

from __future__ import annotations

import functools
import math
import sys

import torch

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "BIT_ORDER", "MAX_PACK_BITS"]

#: The name of the bit order above, recorded in checkpoint headers.
BIT_ORDER = "lsb_first"
#: Widest code pack_bits accepts (lowbit's widest formats, posit32 and e8m23, have 32 bits).
MAX_PACK_BITS = 32
_LITTLE_ENDIAN = sys.byteorder == "little"


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take packed: ``ceil(numel * bits / 8)``.

    >>> packed_nbytes(3, 4), packed_nbytes(1000, 6)
    (2, 750)
    """
    _check_bits(bits)
    return (numel * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int, *, backend: "str | None" = None) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, values in ``[0, 2**bits)``) into a 1-D uint8 tensor.

    The result has ``ceil(codes.numel() * bits / 8)`` bytes, in the bit order described in the
    module docstring. ``bits`` may be 1..32. ``backend`` ("auto", "reference", "numba";
    default `lowbit.kernels.get_backend()`) picks the implementation; all give the same bytes.

    >>> pack_bits(torch.tensor([1, 2, 15]), 4).tolist()   # 0x21, 0x0f
    [33, 15]
    >>> pack_bits(torch.tensor([0x123]), 12).tolist()     # 0x23, 0x01
    [35, 1]
    """
    _check_bits(bits)
    codes = _check_codes(codes, bits)
    flat = codes.reshape(-1).contiguous()
    work = _work_dtype(bits)
    if bits == 8:
        return flat.to(torch.uint8, copy=True)
    if bits % 8 == 0 and _LITTLE_ENDIAN:
        # byte-aligned widths: the stream is the low bytes of each code, as the CPU stores them
        wide = flat.to(torch.int32 if bits < 32 else torch.int64)
        return wide.view(torch.uint8).view(-1, wide.element_size())[:, : bits // 8].reshape(-1)
    if _use_numba(backend, flat.device):
        out = torch.empty(packed_nbytes(flat.numel(), bits), dtype=torch.uint8)
        if flat.numel():
            _kernels().pack_into(flat.numpy(), bits, out.numpy())
        return out
    flat = flat.to(work)
    g, nb, plan = _pack_plan(bits)
    n = flat.numel()
    full, rem = divmod(n, g)
    out = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8, device=flat.device)
    if full:
        groups = flat[: full * g].view(full, g)
        _pack_groups(groups, plan, work, out[: full * nb].view(full, nb))
    if rem:
        tail = torch.zeros(1, g, dtype=work, device=flat.device)
        tail[0, :rem] = flat[full * g :]
        tail_bytes = torch.empty(1, nb, dtype=torch.uint8, device=flat.device)
        _pack_groups(tail, plan, work, tail_bytes)
        out[full * nb :] = tail_bytes.view(-1)[: out.numel() - full * nb]
    return out


def unpack_bits(
    packed: torch.Tensor,
    bits: int,
    numel: int,
    dtype: "torch.dtype | None" = None,
    *,
    backend: "str | None" = None,
) -> torch.Tensor:
    """The ``numel`` codes packed by ``pack_bits(codes, bits)``, as a 1-D integer tensor.

    ``packed`` must be a uint8 tensor of exactly ``ceil(numel * bits / 8)`` bytes. ``dtype``
    defaults to the smallest integer dtype holding ``[0, 2**bits)`` (uint8 up to 8 bits, int16
    up to 15, int32 up to 31, int64 for 32: what ``fmt.encode`` returns); any wider integer
    dtype may be asked for. ``backend`` as for `pack_bits`.

    >>> unpack_bits(torch.tensor([33, 15], dtype=torch.uint8), 4, 3).tolist()
    [1, 2, 15]
    """
    _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"packed must be a torch.uint8 tensor (from pack_bits), got {got}")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise ValueError(f"numel must be a non-negative int (the number of packed codes), got {numel!r}")
    expected = packed_nbytes(numel, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"packed must hold exactly ceil(numel * bits / 8) = {expected} bytes for numel={numel}, "
            f"bits={bits}; got {packed.numel()}"
        )
    work = _work_dtype(bits)
    out_dtype = work if dtype is None else dtype
    if out_dtype.is_floating_point or out_dtype.is_complex or out_dtype == torch.bool:
        raise TypeError(f"dtype must be an integer torch dtype, got {out_dtype}")
    if torch.iinfo(out_dtype).max < (1 << bits) - 1:
        raise ValueError(f"dtype={out_dtype} cannot hold {bits}-bit codes; use {work} or wider")
    flat = packed.reshape(-1).contiguous()
    if bits == 8:
        return flat.clone() if out_dtype == torch.uint8 else flat.to(out_dtype)
    if bits % 8 == 0 and _LITTLE_ENDIAN:
        wide = torch.zeros(numel, 4 if bits < 32 else 8, dtype=torch.uint8, device=flat.device)
        wide[:, : bits // 8] = flat.view(numel, bits // 8)
        codes = wide.view(torch.int32 if bits < 32 else torch.int64).view(-1)
        return codes if codes.dtype == out_dtype else codes.to(out_dtype)
    if _use_numba(backend, flat.device):
        codes = torch.empty(numel, dtype=work)
        if numel:
            _kernels().unpack_into(flat.numpy(), bits, codes.numpy())
        return codes if out_dtype == work else codes.to(out_dtype)
    g, nb, plan = _unpack_plan(bits)
    full, rem = divmod(numel, g)
    out = torch.empty(numel, dtype=work, device=flat.device)
    if full:
        _unpack_groups(flat[: full * nb].view(full, nb), plan, bits, work, out[: full * g].view(full, g))
    if rem:
        tail = torch.zeros(1, nb, dtype=torch.uint8, device=flat.device)
        tail_bytes = flat[full * nb :]
        tail[0, : tail_bytes.numel()] = tail_bytes
        codes = torch.empty(1, g, dtype=work, device=flat.device)
        _unpack_groups(tail, plan, bits, work, codes)
        out[full * g :] = codes.view(-1)[:rem]
    return out if out_dtype == work else out.to(out_dtype)


# --------------------------------------------------------------------------- internals
def _use_numba(backend: "str | None", device: torch.device) -> bool:
    from lowbit.kernels import resolve_backend

    return resolve_backend(backend, device.type) == "numba"


@functools.lru_cache(maxsize=1)
def _kernels():  # type: ignore[no-untyped-def]
    from lowbit.storage import _bitpack_numba

    return _bitpack_numba


def _check_bits(bits: object) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_PACK_BITS:
        raise ValueError(f"bits must be an int in 1..{MAX_PACK_BITS}, got {bits!r}")


def _check_codes(codes: object, bits: int) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be an integer torch.Tensor, got {type(codes).__name__}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must have an integer dtype, got {codes.dtype}")
    if codes.numel() == 0 or (codes.dtype == torch.uint8 and bits >= 8):
        return codes
    lo, hi = torch.aminmax(codes)
    lo_i, hi_i = int(lo), int(hi)
    if lo_i < 0 or hi_i >= (1 << bits):
        raise ValueError(
            f"codes must be integers in [0, 2**bits) = [0, {(1 << bits) - 1}] for bits={bits}; "
            f"got values from {lo_i} to {hi_i}"
        )
    return codes


def _work_dtype(bits: int) -> torch.dtype:
    # the smallest signed dtype whose left shifts keep every code bit: shifts that overflow it
    # only push out bits above the code's width, and those are masked off
    if bits <= 8:
        return torch.uint8
    if bits <= 15:
        return torch.int16
    if bits <= 31:
        return torch.int32
    return torch.int64


def _terms(bits: int) -> tuple[int, int, list[list[tuple[int, int]]]]:
    """Group size g, bytes per group nb, and for each byte b the codes j overlapping it with
    ``lo = j*bits - 8*b``: code j's bit 0 sits at bit ``lo`` of byte b (negative: below it)."""
    g = 8 // math.gcd(bits, 8)
    nb = bits * g // 8
    per_byte = [[(j, j * bits - 8 * b) for j in range(g) if -bits < j * bits - 8 * b < 8] for b in range(nb)]
    return g, nb, per_byte


@functools.lru_cache(maxsize=None)
def _pack_plan(bits: int) -> tuple[int, int, tuple[tuple[tuple[int, int], ...], ...]]:
    g, nb, per_byte = _terms(bits)
    return g, nb, tuple(tuple(t) for t in per_byte)


@functools.lru_cache(maxsize=None)
def _unpack_plan(bits: int) -> tuple[int, int, tuple[tuple[tuple[int, int], ...], ...]]:
    g, nb, per_byte = _terms(bits)
    per_code = [[(b, lo) for b in range(nb) for (j2, lo) in per_byte[b] if j2 == j] for j in range(g)]
    return g, nb, tuple(tuple(t) for t in per_code)


def _shift(x: torch.Tensor, left: int) -> torch.Tensor:
    if left > 0:
        return torch.bitwise_left_shift(x, left)
    if left < 0:
        return torch.bitwise_right_shift(x, -left)
    return x


def _pack_groups(groups: torch.Tensor, plan: tuple, work: torch.dtype, out: torch.Tensor) -> None:
    """groups: (G, g) codes in ``work`` dtype; out: (G, nb) uint8 view to fill."""
    for b, terms in enumerate(plan):
        acc: "torch.Tensor | None" = None
        for j, lo in terms:
            part = _shift(groups[:, j], lo)
            acc = part if acc is None else acc | part
        assert acc is not None  # every byte of a group overlaps at least one code
        if work != torch.uint8:
            acc = acc & 0xFF
        out[:, b] = acc


def _unpack_groups(data: torch.Tensor, plan: tuple, bits: int, work: torch.dtype, out: torch.Tensor) -> None:
    """data: (G, nb) uint8; out: (G, g) codes in ``work`` dtype to fill."""
    cols = [data[:, b] if work == torch.uint8 else data[:, b].to(work) for b in range(data.shape[1])]
    mask = (1 << bits) - 1
    for j, terms in enumerate(plan):
        acc: "torch.Tensor | None" = None
        for b, lo in terms:
            part = _shift(cols[b], -lo)
            acc = part if acc is None else acc | part
        assert acc is not None  # every code overlaps at least one byte
        out[:, j] = acc & mask
