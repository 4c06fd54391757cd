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
        lb.parse_format("posit8_es2").quantize(torch.randn(1000))
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
    x = torch.linspace(-3, 3, 101)
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
    """The thread counts lowbit asked numba for, one per launch."""
    seen: list[int] = []
    original = numba.set_num_threads

    def spy(n):
        seen.append(n)
        original(n)

    monkeypatch.setattr(numba, "set_num_threads", spy)
    return seen


BIG = torch.randn(1 << 16)  # above runtime.SERIAL_BELOW


def test_kernels_follow_torch_get_num_threads_at_each_call(threads_used):
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            FMT.quantize(BIG, backend="numba")
            assert threads_used[-1] == min(n, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(before)


def test_small_launches_run_on_one_thread(threads_used):
    FMT.quantize(torch.randn(runtime.SERIAL_BELOW - 1), backend="numba")
    assert threads_used[-1] == 1


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
