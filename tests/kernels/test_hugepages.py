"""Kernel outputs backed by transparent huge pages (`lowbit.kernels.hugepages`) are ordinary
torch tensors: saved, loaded, pickled, resized, written in place and used in autograd like any
other, and the advice really reaches the kernel (Linux's /proc/self/smaps shows it)."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import pytest
import torch

import lowbit as lb
from lowbit.kernels import hugepages
from lowbit.testing import assert_same_bits

BIG = (3 * hugepages.HUGE_PAGE) // 4 + 1000  # float32 elements: just over 3 huge pages of bytes


def _thp_mode() -> "str | None":
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text.split("[")[1].split("]")[0]


needs_thp = pytest.mark.skipif(not sys.platform.startswith("linux") or _thp_mode() in (None, "never"),
                               reason="transparent huge pages are not available here")


def _vm_flags(address: int) -> "list[str]":
    """The VmFlags of the mapping holding ``address`` (Linux /proc/self/smaps)."""
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            current = lo <= address < hi
        elif head == "VmFlags:" and current:
            return line.split()[1:]
    raise AssertionError(f"no mapping holds 0x{address:x}")


def _inside(t: torch.Tensor) -> int:
    """An address in the 2 MiB-aligned part of t's bytes."""
    return (t.data_ptr() + hugepages.HUGE_PAGE - 1) & ~(hugepages.HUGE_PAGE - 1)


@needs_thp
def test_a_large_output_is_advised_to_use_huge_pages():
    t = hugepages.empty((BIG,), torch.float32)
    assert hugepages.advise_huge_pages(t)
    assert "hg" in _vm_flags(_inside(t))


@needs_thp
@pytest.mark.parametrize("spec", ["posit8_es2", "e4m3fn", "int8", "posit32_es2"])
def test_allocating_quantize_and_decode_return_huge_page_backed_tensors(spec):
    fmt = lb.parse_format(spec)
    x = torch.randn(BIG, generator=torch.Generator().manual_seed(0))
    y = fmt.quantize(x, backend="numba")
    assert "hg" in _vm_flags(_inside(y))
    assert_same_bits(y, fmt.quantize(x, backend="reference"))
    codes = fmt.encode(x, backend="numba")
    if codes.numel() * codes.element_size() >= hugepages.ADVISE_FROM:  # 8-bit codes are too small here
        assert "hg" in _vm_flags(_inside(codes))
    values = fmt.decode(codes, backend="numba")
    assert "hg" in _vm_flags(_inside(values))
    assert_same_bits(values, y)


def test_a_small_tensor_gets_no_advice():
    t = hugepages.empty((100,), torch.float32)
    assert not hugepages.advise_huge_pages(t)
    assert t.shape == (100,) and t.dtype == torch.float32


def test_without_madvise_the_output_is_a_plain_empty_tensor(monkeypatch):
    monkeypatch.setattr(hugepages, "_madvise", lambda: None)
    t = hugepages.empty((BIG,), torch.float64)
    assert not hugepages.advise_huge_pages(t)
    assert t.shape == (BIG,) and t.dtype == torch.float64 and t.is_contiguous()


def test_the_tensor_saves_loads_and_pickles_like_any_other():
    t = hugepages.empty((BIG,), torch.float32)
    t.copy_(torch.randn(BIG, generator=torch.Generator().manual_seed(1)))
    buffer = io.BytesIO()
    torch.save({"t": t}, buffer)
    buffer.seek(0)
    assert_same_bits(torch.load(buffer)["t"], t)
    assert_same_bits(pickle.loads(pickle.dumps(t)), t)


def test_the_tensor_resizes_and_is_written_in_place():
    t = hugepages.empty((BIG,), torch.float32)
    t.fill_(2.0)
    t.mul_(3.0)
    assert bool((t == 6.0).all())
    t.resize_(BIG * 2)  # grows: torch moves the data to a new allocation
    assert bool((t[:BIG] == 6.0).all())
    t[BIG:] = 1.0
    t.resize_(10)
    assert t.tolist() == [6.0] * 10
    del t  # freed by torch's allocator


def test_the_tensor_takes_part_in_autograd():
    w = hugepages.empty((BIG,), torch.float32).fill_(0.5).requires_grad_()
    (w * w).sum().backward()
    assert w.grad is not None and bool((w.grad == 1.0).all())


def test_quantize_into_a_huge_page_output_gives_the_same_bits_as_a_plain_one():
    fmt = lb.parse_format("e5m2")
    x = torch.randn(BIG, generator=torch.Generator().manual_seed(2))
    plain = torch.empty_like(x)
    fmt.quantize(x, out=plain, backend="numba")
    assert_same_bits(fmt.quantize(x, backend="numba"), plain)


def test_the_environment_switch_turns_the_advice_off(monkeypatch):
    import torch

    from lowbit.kernels import hugepages

    hugepages._madvise.cache_clear()
    monkeypatch.setenv(hugepages.SWITCH, "0")
    try:
        assert hugepages._madvise() is None
        assert not hugepages.advise_huge_pages(torch.empty(4 * hugepages.HUGE_PAGE // 4, dtype=torch.float32))
    finally:
        hugepages._madvise.cache_clear()
