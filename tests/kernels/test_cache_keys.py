"""numba's disk cache keys a kernel on its own file only; lowbit keys every cached kernel on the
sources of all its kernel modules, so editing a shared helper can never leave stale machine code."""

from __future__ import annotations

import shutil

import pytest

from lowbit.kernels import runtime

pytestmark = pytest.mark.skipif(runtime.numba_problem() is not None, reason="numba does not load")


def test_digest_changes_when_any_kernel_module_changes(tmp_path):
    package = tmp_path / "lowbit"
    for folder in runtime.KERNEL_SOURCE_DIRS:
        shutil.copytree(runtime._PACKAGE / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__"))
    before = runtime.kernel_sources_digest(package)
    assert before == runtime.kernel_sources_digest()  # the copy has the same sources
    helper = package / "kernels" / "numba_cpu.py"
    helper.write_text(helper.read_text() + "\n# a changed helper\n")
    assert runtime.kernel_sources_digest(package) != before
    (package / "storage" / "new_module.py").write_text("X = 1\n")
    assert len({before, runtime.kernel_sources_digest(package)}) == 2


@pytest.mark.parametrize("module, kernel", [("lowbit.kernels.numba_cpu", "table_lookup32"),
                                            ("lowbit.kernels.blocks_numba", "block_amax"),
                                            ("lowbit.storage._decode_numba", "lut_decode_into")])
def test_every_lowbit_kernel_cache_is_keyed_on_all_kernel_sources(module, kernel):
    import importlib

    dispatcher = getattr(importlib.import_module(module), kernel)
    stamp = dispatcher._cache._impl.locator.get_source_stamp()
    assert stamp[1] == runtime.kernel_sources_digest()


def test_functions_outside_lowbit_keep_numba_s_own_locators():
    from numba import njit

    @njit(cache=True)
    def outside(x):  # defined in this test file, outside the package
        return x + 1

    assert not hasattr(outside._cache._impl.locator, "lowbit_digest")
