"""Choosing the backend: ``backend=`` per call, `lowbit.kernels.use_backend` per context.

Which implementation ran is observed with spies on the numba launcher (`dispatch._run`) and on
the reference codec (``Posit._encode64`` / ``Posit._decode64``).  Tests that depend on the
default ("auto") run in a fresh `contextvars.Context`, so they hold even when the suite runs
under ``LOWBIT_TEST_BACKEND``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import torch

import lowbit as lb
from lowbit import kernels
from lowbit.formats.posit import Posit
from lowbit.kernels import BACKENDS, available_backends, dispatch, get_backend, resolve_backend, use_backend

pytestmark = pytest.mark.skipif("numba" not in available_backends(), reason="numba is not installed")

FMT = lb.parse_format("posit8_es2")
X = torch.linspace(-3, 3, 101)
CODES = torch.arange(256, dtype=torch.int64)
OPS = {
    "encode": lambda **kw: FMT.encode(X, **kw),
    "quantize": lambda **kw: FMT.quantize(X, **kw),
    "decode": lambda **kw: FMT.decode(CODES, **kw),
}


def _fresh(fn, *args):
    """Run fn in a new, empty context (every context variable at its default)."""
    return contextvars.Context().run(fn, *args)


@pytest.fixture
def ran(monkeypatch):
    """Counts of calls that reached the numba launcher and the reference codec."""
    for op in OPS.values():  # build the numba value tables first, so that only real calls count
        op(backend="numba")
    calls = {"numba": 0, "reference": 0}
    run = dispatch._run

    def spy_run(*args):
        calls["numba"] += 1
        return run(*args)

    monkeypatch.setattr(dispatch, "_run", spy_run)
    for name in ("_encode64", "_decode64"):
        original = getattr(Posit, name)

        def spy(self, *args, _original=original, **kwargs):
            calls["reference"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Posit, name, spy)

    def which(call):
        before = dict(calls)
        call()
        used = [b for b in calls if calls[b] > before[b]]
        assert len(used) == 1, f"expected exactly one backend to run, got {used}"
        return used[0]

    return which


# ---------------------------------------------------------------------------------- names
def test_backends_and_available_backends_name_auto_reference_and_numba():
    assert BACKENDS == ("auto", "reference", "numba")
    assert available_backends() == ("reference", "numba")


def test_default_backend_is_auto_in_a_fresh_context():
    assert _fresh(get_backend) == "auto"


@pytest.mark.parametrize("bad", ["", "cuda", "Numba", "torch", "numba ", 1, None])
def test_use_backend_with_an_invalid_name_raises_value_error_listing_the_allowed_ones(bad):
    before = get_backend()
    with pytest.raises(ValueError) as info:
        with use_backend(bad):
            pass
    msg = str(info.value)
    assert repr(bad) in msg and "auto, reference, numba" in msg
    assert get_backend() == before


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("bad", ["", "cuda", "Numba", "fast", 0])
def test_backend_argument_with_an_invalid_name_raises_value_error_listing_the_allowed_ones(op, bad):
    with pytest.raises(ValueError) as info:
        OPS[op](backend=bad)
    assert repr(bad) in str(info.value) and "auto, reference, numba" in str(info.value)


@pytest.mark.parametrize("spec,dtype", [("posit32_es2", torch.float32), ("posit8_es2", torch.float16),
                                        ("e4m3fn", torch.bfloat16)], ids=str)
def test_decode_rejects_an_invalid_backend_name_for_every_format_and_dtype(spec, dtype):
    with pytest.raises(ValueError, match="auto, reference, numba"):
        lb.parse_format(spec).decode(torch.zeros(2, dtype=torch.int64), dtype, backend="bogus")


# ---------------------------------------------------------------------------------- per call
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("backend,expected", [("reference", "reference"), ("numba", "numba"), ("auto", "numba")])
def test_backend_argument_runs_that_backend_and_auto_is_numba_on_cpu(ran, op, backend, expected):
    assert ran(lambda: OPS[op](backend=backend)) == expected


@pytest.mark.parametrize("op", list(OPS))
def test_no_backend_argument_in_a_fresh_context_means_auto_which_is_numba_on_cpu(ran, op):
    assert _fresh(ran, lambda: OPS[op]()) == "numba"


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("chosen,other", [("reference", "numba"), ("numba", "reference")])
def test_use_backend_picks_the_default_and_an_explicit_argument_overrides_it(ran, op, chosen, other):
    with use_backend(chosen):
        assert get_backend() == chosen
        assert ran(lambda: OPS[op]()) == chosen
        assert ran(lambda: OPS[op](backend=other)) == other


def test_use_backend_nests_and_restores_the_previous_choice_even_when_the_block_raises():
    def body():
        with use_backend("reference"):
            with pytest.raises(RuntimeError):
                with use_backend("numba"):
                    assert get_backend() == "numba"
                    raise RuntimeError("boom")
            assert get_backend() == "reference"
        return get_backend()

    assert _fresh(body) == "auto"


# ---------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("op", ["encode", "quantize"])
def test_backend_numba_on_a_meta_tensor_raises_value_error_naming_the_device(op):
    x = torch.empty(4, device="meta")
    with pytest.raises(ValueError, match="CPU tensors only.*'meta'"):
        getattr(FMT, op)(x, backend="numba")
    with use_backend("numba"), pytest.raises(ValueError, match="'meta'"):
        getattr(FMT, op)(x)


def test_decode_with_backend_numba_of_meta_codes_raises_value_error_naming_the_device():
    with pytest.raises(ValueError, match="CPU tensors only.*'meta'"):
        FMT.decode(torch.zeros(4, dtype=torch.uint8, device="meta"), backend="numba")


@pytest.mark.parametrize("spec,dtype", [("posit32_es2", torch.float32), ("posit8_es2", torch.float16)], ids=str)
def test_decode_with_backend_numba_of_non_cpu_codes_raises_value_error_for_every_format_and_dtype(spec, dtype):
    with pytest.raises(ValueError, match="CPU"):
        lb.parse_format(spec).decode(torch.zeros(4, dtype=torch.int64, device="meta"), dtype, backend="numba")


@pytest.mark.parametrize("device", ["meta", "cuda", "mps", "xpu"])
def test_auto_and_reference_resolve_to_the_reference_off_cpu_and_numba_is_refused(device):
    assert resolve_backend("auto", device) == "reference"
    assert resolve_backend("reference", device) == "reference"
    assert _fresh(resolve_backend, None, device) == "reference"
    with pytest.raises(ValueError, match=f"'{device}'"):
        resolve_backend("numba", device)
    assert resolve_backend("auto", "cpu") == "numba"


def test_auto_runs_the_reference_on_a_meta_tensor(ran):
    x = torch.empty(5, 3, device="meta")
    holder = {}
    assert ran(lambda: holder.setdefault("codes", FMT.encode(x, backend="auto"))) == "reference"
    codes = holder["codes"]
    assert codes.device.type == "meta" and codes.dtype == torch.uint8 and codes.shape == (5, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_tensors_refuse_numba_and_auto_runs_the_reference_with_the_cpu_bits():
    x = torch.randn(1000, device="cuda")
    with pytest.raises(ValueError, match="'cuda'"):
        FMT.quantize(x, backend="numba")
    got = FMT.quantize(x, backend="auto")
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu().view(torch.int32), FMT.quantize(x.cpu(), backend="numba").view(torch.int32))


# ---------------------------------------------------------------------------------- numba missing
def test_without_numba_only_the_reference_is_available_auto_uses_it_and_numba_is_refused(monkeypatch, ran):
    monkeypatch.setattr(kernels, "_numba_installed", lambda: False)
    monkeypatch.setattr(kernels.runtime, "_warned", set())
    assert available_backends() == ("reference",)
    with pytest.warns(lb.LowbitWarning, match="fast CPU kernels are off"):  # said once, then quiet
        assert resolve_backend("auto", "cpu") == "reference"
    with pytest.raises(ValueError, match="pip install numba"):
        with use_backend("numba"):
            pass
    with pytest.raises(ValueError, match="pip install numba"):
        FMT.quantize(X, backend="numba")
    assert _fresh(ran, lambda: FMT.quantize(X)) == "reference"


# ---------------------------------------------------------------------------------- threads, tasks
def test_a_thread_started_inside_use_backend_starts_with_auto_and_runs_numba(ran):
    seen = {}

    def worker():
        seen["backend"] = get_backend()
        seen["ran"] = ran(lambda: FMT.quantize(X))

    with use_backend("reference"):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert get_backend() == "reference"
    assert seen == {"backend": "auto", "ran": "numba"}


def test_use_backend_in_one_thread_does_not_change_another_threads_choice():
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with use_backend("numba"):
            seen["inside"] = get_backend()
            entered.set()
            release.wait(10)
        seen["after"] = get_backend()

    def main():
        with use_backend("reference"):
            t = threading.Thread(target=worker)
            t.start()
            assert entered.wait(10)
            seen["main_during"] = get_backend()
            release.set()
            t.join()
            seen["main_after"] = get_backend()

    _fresh(main)
    assert seen == {"inside": "numba", "after": "auto", "main_during": "reference", "main_after": "reference"}


def test_asyncio_tasks_inherit_the_creating_context_and_keep_their_own_changes():
    async def child():
        inherited = get_backend()
        with use_backend("numba"):
            await asyncio.sleep(0)
            inside = get_backend()
        return inherited, inside

    async def main():
        with use_backend("reference"):
            task = asyncio.create_task(child())  # copies the context: "reference"
            await asyncio.sleep(0)
            during = get_backend()
            result = await task
        return result, during, get_backend()

    assert _fresh(asyncio.run, main()) == (("reference", "numba"), "reference", "auto")
