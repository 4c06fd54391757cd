"""Fresh CPU tensors for kernel outputs, backed by transparent huge pages where Linux offers them.

The first write to a freshly allocated tensor faults its memory in one 4 KiB page at a time:
16,384 page faults for a 64 MB output, which on a 2-core benchmark machine took longer (≈15 ms)
than writing the same bytes (``torch.add(x, 0, out=y)``: ≈7 ms). `empty` returns a plain
``torch.empty`` tensor and asks the kernel (``madvise(MADV_HUGEPAGE)``) to back the 2 MiB-aligned
part of its memory with 2 MiB pages, so the kernel that fills it takes 512× fewer faults. That is
what torch's own CPU allocator does for every allocation when the user sets
``THP_MEM_ALLOC_ENABLE=1``; lowbit does it for its own large outputs only and changes no setting.

The tensor is an ordinary torch tensor (torch's allocator owns and frees its memory; it can be
resized, pickled, saved, written in place and used in autograd like any other). Where the advice
is not available (not Linux, transparent huge pages disabled, a small tensor) nothing is asked
and the tensor is the same ``torch.empty`` allocation.

Cost: with the kernel's default ``defrag`` setting (``madvise``) a huge-page fault may compact
memory first; measured here, the first few hundred MB of such outputs in a fresh process took
~110 ms per 64 MB instead of ~11-20 ms. ``LOWBIT_HUGE_PAGES=0`` turns the advice off.

>>> import torch
>>> t = empty((3, 4), torch.float32)
>>> t.shape, t.dtype, t.device.type
(torch.Size([3, 4]), torch.float32, 'cpu')
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from typing import Any, Sequence

import torch

__all__ = ["SWITCH", "HUGE_PAGE", "ADVISE_FROM", "advise_huge_pages", "empty"]

SWITCH = "LOWBIT_HUGE_PAGES"  # "0" in the environment (read once, at the first large output): no advice
HUGE_PAGE = 1 << 21  # bytes: the x86-64 / arm64 (4 KiB base pages) transparent huge page
ADVISE_FROM = 2 * HUGE_PAGE  # bytes; a smaller tensor holds at most one aligned huge page: not worth a call


@functools.lru_cache(maxsize=1)
def _madvise() -> "Any | None":
    """libc's madvise, or None where huge-page advice is not available."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if not sys.platform.startswith("linux") or advice is None or os.environ.get(SWITCH, "1") == "0":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask for huge pages under the 2 MiB-aligned part of CPU tensor ``t``'s bytes (only the part
    that lies inside them); True if the advice was taken. Meant for a tensor not yet written."""
    nbytes = t.numel() * t.element_size()
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu" or nbytes < ADVISE_FROM:
        return False
    start = t.data_ptr()
    lo = (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    hi = (start + nbytes) & ~(HUGE_PAGE - 1)
    return hi > lo and madvise(lo, hi - lo, mmap.MADV_HUGEPAGE) == 0


def empty(shape: "Sequence[int] | torch.Size", dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, huge-page backed when it is large (see the module)."""
    t = torch.empty(shape, dtype=dtype)
    advise_huge_pages(t)
    return t
