"""numba as lowbit runs it (`lowbit.kernels.runtime`): fast by default, torch's thread settings left
alone, lowbit's own thread knob, a warning (never a silent slowdown) when the kernels cannot load
or compile, and recovery from a corrupt disk cache.

Whatever changes process-wide state (torch's thread count, a missing numba, a cache directory)
runs in a fresh Python subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import tomllib
import warnings
from pathlib import Path

import numba
import pytest
import torch

import lowbit as lb
from lowbit.kernels import runtime

ROOT = Path(__file__).resolve().parents[2]
FMT = lb.parse_format("posit8_es2")


def _python(code: str, env: "dict[str, str] | None" = None, timeout: float = 600) -> str:
    """Run ``code`` in a fresh interpreter from the repository root; its stdout (fails on rc != 0)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---------------------------------------------------------------------------------- fast by default
def test_numba_is_a_core_dependency_and_the_fast_extra_still_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.replace(" ", "").startswith("numba>=") for dep in project["dependencies"])
    assert "fast" in project["optional-dependencies"]


def test_a_cpu_tensor_runs_the_fused_kernel_by_default_in_a_fresh_process():
    out = _python("""
        import warnings; warnings.simplefilter("error")
        import torch, lowbit as lb
        from lowbit.kernels import dispatch, resolve_backend
        calls = []
        run = dispatch._run
        dispatch._run = lambda *a: calls.append(1) or run(*a)
        lb.parse_format("posit8_es2").quantize(torch.randn(1000, dtype=torch.float64))  # float32: a table is built first
        print(resolve_backend(None, "cpu"), len(calls))
    """)
    assert out.split() == ["numba", "1"]


def test_without_numba_auto_warns_once_naming_the_fix_and_gives_the_reference_bits():
    out = _python("""
        import sys, warnings, json
        sys.modules["numba"] = None  # `import numba` raises ImportError
        import torch, lowbit as lb
        x = torch.linspace(-3, 3, 1001)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = lb.parse_format("posit8_es2").quantize(x)
            second = lb.parse_format("e4m3fn").encode(x)
        ref = lb.parse_format("posit8_es2").quantize(x, backend="reference")
        try:
            lb.parse_format("posit8_es2").quantize(x, backend="numba")
            refused = ""
        except ValueError as err:
            refused = str(err)
        print(json.dumps({
            "warnings": [(w.category.__name__, str(w.message)) for w in caught],
            "same": bool(torch.equal(first.view(torch.int32), ref.view(torch.int32))),
            "available": lb.kernels.available_backends(), "refused": refused,
        }))
    """)
    result = json.loads(out)
    assert len(result["warnings"]) == 1, result["warnings"]
    category, message = result["warnings"][0]
    assert category == "LowbitWarning"
    assert "numba cannot be imported" in message and "pip install" in message
    assert result["same"]
    assert result["available"] == ["reference"]
    assert "numba cannot be imported" in result["refused"] and "pip install numba" in result["refused"]


def test_a_kernel_that_does_not_compile_falls_back_to_the_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(runtime, "_broken", None)
    monkeypatch.setattr(runtime, "_warned", set())

    @numba.njit
    def broken(x, out, *rest):
        out[0] = x.no_such_attribute  # a typing error: numba raises at the first call

    _, kernels = runtime.modules()
    monkeypatch.setattr(kernels, "posit_quantize_table", lambda *a: broken)
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)  # float32 may be served by a lookup table
    with pytest.raises(runtime.KernelUnavailable, match="does not compile"):
        FMT.quantize(x, backend="numba")
    with pytest.warns(lb.LowbitWarning, match="a kernel does not compile"):
        got = FMT.quantize(x)
    assert torch.equal(got, FMT.quantize(x, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FMT.quantize(x)  # once only


# ---------------------------------------------------------------------------------- threads
def test_a_lowbit_kernel_leaves_torchs_thread_count_and_uses_the_workqueue_layer():
    out = _python("""
        import torch
        torch.set_num_threads(1)
        import lowbit as lb, numba
        x = torch.randn(1 << 18)
        lb.parse_format("posit8_es2").quantize(x, backend="numba")
        lb.parse_format("e5m2").encode(x, "stochastic", backend="numba")
        print(torch.get_num_threads(), numba.threading_layer())
    """)
    assert out.split() == ["1", "workqueue"]


def test_a_threading_layer_the_user_chose_is_kept():
    out = _python("""
        import torch, lowbit as lb, numba
        lb.parse_format("posit8_es2").quantize(torch.randn(1 << 16), backend="numba")
        print(numba.threading_layer())
    """, env={"NUMBA_THREADING_LAYER": "omp"})
    assert out.split() == ["omp"]


@pytest.fixture
def threads_used(monkeypatch):
    """The threads each launch ran on, one entry per launch: the count lowbit asked numba for,
    or 1 for a lookup run as its serial twin on the calling thread (`numba_cpu.SERIAL`)."""
    seen: list[int] = []
    original = numba.set_num_threads

    def spy(n):
        seen.append(n)
        original(n)

    monkeypatch.setattr(numba, "set_num_threads", spy)
    _, kernels = runtime.modules()
    for parallel, serial in list(kernels.SERIAL.items()):
        def on_the_calling_thread(*args, _serial=serial):
            seen.append(1)
            return _serial(*args)

        monkeypatch.setitem(kernels.SERIAL, parallel, on_the_calling_thread)
    return seen


BIG = torch.randn(1 << 16)  # above runtime.SERIAL_BELOW


def test_kernels_follow_torch_get_num_threads_at_each_call(threads_used):
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            FMT.encode(BIG, backend="numba")
            assert threads_used[-1] == min(n, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)


def test_small_launches_run_on_one_thread(threads_used):
    FMT.quantize(torch.randn(runtime.SERIAL_BELOW - 1), backend="numba")  # a lookup
    assert threads_used[-1] == 1
    FMT.encode(torch.randn(runtime.SERIAL_BELOW - 1), backend="numba")  # an element kernel
    assert threads_used[-1] == 1


def test_one_thread_lookups_run_on_the_calling_thread_and_wake_no_worker(monkeypatch):
    _, kernels = runtime.modules()
    x = torch.randn(runtime.SERIAL_BELOW - 1)
    FMT.quantize(x, backend="numba")  # builds the lookup table first
    callers, parallel_launches = [], []
    for parallel, serial in list(kernels.SERIAL.items()):
        def spy(*args, _serial=serial):
            callers.append(threading.get_ident())
            return _serial(*args)

        monkeypatch.setitem(kernels.SERIAL, parallel, spy)
    monkeypatch.setattr(numba, "set_num_threads", lambda n: parallel_launches.append(n))
    got = FMT.quantize(x, backend="numba")
    with lb.kernels.num_threads(1):
        big = FMT.quantize(BIG, backend="numba")
    with lb.kernels.num_threads(2):  # a lookup below SERIAL_LOOKUPS_BELOW elements: still no worker
        FMT.quantize(BIG, backend="numba")
    assert callers == [threading.get_ident()] * 3 and parallel_launches == []
    assert torch.equal(got, FMT.quantize(x, backend="reference"))
    assert torch.equal(big, FMT.quantize(BIG, backend="reference"))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("extra", [0, 1, 7])
def test_lookups_in_chunks_round_every_element_as_the_reference(threads, extra, monkeypatch):
    _, kernels = runtime.modules()
    monkeypatch.setattr(runtime, "SERIAL_LOOKUPS_BELOW", runtime.SERIAL_BELOW)  # the parallel form runs too
    n = 4 * kernels.LOOKUP_CHUNK + extra * (kernels.LOOKUP_CHUNK + 1)  # ≥ 2^16: every table applies
    x = torch.randn(n) * torch.logspace(-12, 12, n)
    with lb.kernels.num_threads(threads):
        for fmt in (FMT, lb.parse_format("e5m2")):
            for dtype in (torch.float32, torch.bfloat16):
                want = fmt.quantize(x.to(dtype), "floor", backend="reference")
                assert torch.equal(fmt.quantize(x.to(dtype), "floor", backend="numba").view(torch.int16 if
                                   dtype == torch.bfloat16 else torch.int32),
                                   want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_lowbits_knob_overrides_torch_without_changing_torch(threads_used):
    torch_threads = torch.get_num_threads()
    with lb.kernels.num_threads(1):
        assert lb.kernels.get_num_threads() == 1
        FMT.quantize(BIG, backend="numba")
        assert threads_used[-1] == 1
    try:
        lb.kernels.set_num_threads(1)
        FMT.encode(BIG, backend="numba")
        assert threads_used[-1] == 1
        with lb.kernels.num_threads(2):  # the context wins over the process-wide setting
            assert lb.kernels.get_num_threads() == 2
    finally:
        lb.kernels.set_num_threads(None)
    assert lb.kernels.get_num_threads() == torch.get_num_threads() == torch_threads


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_the_thread_knob_refuses_anything_but_a_positive_int(bad):
    with pytest.raises(ValueError, match="positive int"):
        lb.kernels.set_num_threads(bad)
    with pytest.raises(ValueError, match="positive int"):
        with lb.kernels.num_threads(bad):
            pass


# ---------------------------------------------------------------------------------- disk cache
def test_a_truncated_or_corrupt_numba_cache_is_discarded_and_the_kernel_recompiled(tmp_path):
    code = """
        import json, warnings, torch, lowbit as lb
        fmt = lb.parse_format("posit8_es2")
        codes = torch.arange(256, dtype=torch.int64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fmt.decode(codes, backend="numba")
        want = fmt.decode(codes, backend="reference")
        print(json.dumps({"same": bool(torch.equal(got.view(torch.int32), want.view(torch.int32))),
                          "warnings": [str(w.message) for w in caught]}))
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = json.loads(_python(code, env))
    assert first == {"same": True, "warnings": []}
    files = [p for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc") and "table_decode" in p.name]
    assert any(p.suffix == ".nbc" for p in files) and any(p.suffix == ".nbi" for p in files)
    for damage in ("truncate data", "garbage index"):
        for p in files:
            if damage == "truncate data" and p.suffix == ".nbc":
                p.write_bytes(p.read_bytes()[:20])
            if damage == "garbage index" and p.suffix == ".nbi":
                p.write_bytes(b"garbage\n")
        result = json.loads(_python(code, env))
        assert result["same"], damage
        # numba itself may rebuild an index it cannot read; if the error reaches lowbit, one warning
        assert len(result["warnings"]) <= 1 and all("disk cache" in w for w in result["warnings"]), (damage, result)
        if damage == "truncate data":
            assert len(result["warnings"]) == 1, result
        again = json.loads(_python(code, env))  # the rewritten cache loads cleanly
        assert again == {"same": True, "warnings": []}, damage


def test_only_errors_raised_inside_numbas_cache_reader_count_as_a_corrupt_cache():
    def fails():
        raise ValueError("an ordinary error")

    with pytest.raises(ValueError) as info:
        fails()
    assert not runtime._raised_in_cache(info.value)
