"""numba as lowbit runs it: loading, the threading layer, the thread count, and each launch.

- **Loading.** numba is a core dependency; it is imported on the first CPU call, not at
  ``import lowbit``. If it cannot load (missing, broken install), `numba_problem` says why and
  the ``auto`` backend warns once (`lowbit.LowbitWarning`, naming the fix) and runs the torch
  reference instead.
- **Threading layer.** lowbit selects numba's ``workqueue`` layer (built into numba) before the
  first parallel kernel runs, unless the user chose one with ``NUMBA_THREADING_LAYER`` or numba
  already started another. It loads no second OpenMP runtime next to torch's (numba's ``omp``
  layer overwrote torch's thread count and left its workers spinning), and its workers sleep on
  a condition variable once a kernel returns. It does not take launches from two Python threads
  at once, so those are serialised here.
- **Thread count.** Each launch uses `get_num_threads`: lowbit's own setting
  (`set_num_threads` / `num_threads`) if made, else ``torch.get_num_threads()`` at that call;
  launches of fewer than 2^15 elements run on one thread, table lookups of fewer than 2^21 on
  the calling thread (see `launch`). torch's settings are never changed.
- **Disk cache.** A truncated or corrupt numba cache entry is discarded and the kernel
  recompiled (with one warning), instead of failing every call.

>>> from lowbit.kernels import runtime
>>> with runtime.num_threads(1):
...     runtime.get_num_threads()
1
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lowbit.errors import LowbitWarning

__all__ = ["THREADING_LAYER", "numba_problem", "set_num_threads", "get_num_threads", "num_threads", "launch"]

THREADING_LAYER = "workqueue"
SERIAL_BELOW = 1 << 15  # elements; smaller launches run on one thread (waking workers costs more)
# a lookup (a kernel with a serial twin) reads a table at ~0.5 ns per element: below this many
# elements it runs on the calling thread. Waking workers costs ~30 µs on an idle machine and,
# with other processes on the cores, often milliseconds: measured there (2 cores, load 4.6), a
# 1.2M-element lookup took a median 1.5 ms on the calling thread and 4.0 ms on 2 workers
SERIAL_LOOKUPS_BELOW = 1 << 21

_FIX = "install it with `pip install 'numba>=0.59'` (a dependency of lowbit)"
_default_threads: "int | None" = None
_context_threads: contextvars.ContextVar["int | None"] = contextvars.ContextVar("lowbit_num_threads", default=None)
_launch_lock = threading.Lock()
_needs_lock: "bool | None" = None  # known after the first launch
_warned: set[str] = set()
_broken: "str | None" = None  # set when a kernel failed to compile


@functools.lru_cache(maxsize=1)
def _load() -> "tuple[Any, Any] | str":
    """(numba, lowbit.kernels.numba_cpu), or the reason they cannot load."""
    try:
        import numba
    except Exception as err:  # ImportError, or a broken install failing in its own import
        return f"numba cannot be imported ({type(err).__name__}: {err})"
    _choose_threading_layer(numba)
    try:
        from lowbit.kernels import numba_cpu
    except Exception as err:
        return f"lowbit's numba kernels cannot load ({type(err).__name__}: {err})"
    return numba, numba_cpu


_PACKAGE = Path(__file__).resolve().parent.parent
KERNEL_SOURCE_DIRS = ("kernels", "storage")  # every lowbit module with numba kernels lives here


def kernel_sources_digest(package: Path = _PACKAGE) -> bytes:
    """sha256 of the names and bytes of every module in lowbit's kernel directories."""
    digest = hashlib.sha256()
    for folder in KERNEL_SOURCE_DIRS:
        for path in sorted((package / folder).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def key_caches_on_kernel_sources() -> None:
    """Key every cached lowbit kernel on the sources of all kernel modules, not only its own file.

    numba's disk cache checks only the file that defines a kernel; lowbit's kernels inline helpers
    of other modules (blocks_numba uses numba_cpu's rounding and uniforms), so after an edit or an
    upgrade that changed only the helper's file, numba would load the old machine code and return
    wrong bits. lowbit puts its own locators (numba's, with the digest of every kernel module
    added to the source stamp) in front of numba's list, for files inside the lowbit package."""
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # numba ≥ 0.62 / older
    classes = getattr(impl, "_locator_classes", None)
    if classes is None or any(getattr(c, "lowbit_digest", None) for c in classes):
        return
    digest = kernel_sources_digest()
    root = str(_PACKAGE) + os.sep

    def keyed(base: Any) -> Any:
        class Keyed(base):  # type: ignore[misc, valid-type]
            lowbit_digest = digest

            @classmethod
            def from_function(cls, py_func: Any, py_file: str) -> Any:
                if not os.path.abspath(py_file).startswith(root):
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self) -> Any:
                return super().get_source_stamp(), digest

        Keyed.__name__ = Keyed.__qualname__ = f"LowbitKeyed{base.__name__}"
        return Keyed

    bases = [getattr(caching, name, None) for name in ("UserProvidedCacheLocator", "InTreeCacheLocator",
                                                      "UserWideCacheLocator", "_UserProvidedCacheLocator",
                                                      "_InTreeCacheLocator", "_UserWideCacheLocator")]
    ours = [keyed(c) for c in classes if c in bases]
    impl._locator_classes = ours + list(classes)


def _choose_threading_layer(numba: Any) -> None:
    if os.environ.get("NUMBA_THREADING_LAYER") or numba.config.THREADING_LAYER not in ("default", ""):
        return  # the user's choice
    try:
        numba.threading_layer()
        return  # another library already started numba's threads: its layer stays
    except ValueError:  # "threading layer is not initialized": nothing launched yet
        numba.config.THREADING_LAYER = THREADING_LAYER


def numba_problem() -> "str | None":
    """Why the numba kernels cannot run here, or None when they can.

    >>> numba_problem() is None
    True
    """
    loaded = _load()
    if isinstance(loaded, str):
        return loaded
    return _broken


def modules() -> tuple[Any, Any]:
    """(numba, lowbit.kernels.numba_cpu); only call when `numba_problem` is None."""
    loaded = _load()
    assert not isinstance(loaded, str), loaded
    return loaded


def warn_once(key: str, message: str) -> None:
    """One `LowbitWarning` per ``key`` per process."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, LowbitWarning, stacklevel=4)


def warn_reference_fallback() -> None:
    """Say (once) that CPU tensors run the slow torch reference because numba cannot run."""
    problem = numba_problem() or "numba is not available"
    warn_once(
        "fallback",
        f"lowbit's fast CPU kernels are off: {problem}. CPU tensors run the torch reference path "
        f"instead, bit for bit the same but 10-30x slower; to fix it, {_FIX}.",
    )


# ------------------------------------------------------------------------------ thread count
def _check_threads(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int (threads per kernel), got {n!r}")
    return n


def set_num_threads(n: "int | None") -> None:
    """Threads lowbit's CPU kernels use from now on, in every thread (None: follow torch again).

    Unlike `torch.set_num_threads` this changes nothing outside lowbit.

    >>> set_num_threads(1); get_num_threads()
    1
    >>> set_num_threads(None)
    """
    global _default_threads
    _default_threads = None if n is None else _check_threads(n)


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Use ``n`` threads for lowbit's CPU kernels inside the ``with`` block (this thread / task)."""
    token = _context_threads.set(_check_threads(n))
    try:
        yield
    finally:
        _context_threads.reset(token)


def get_num_threads() -> int:
    """Threads the next kernel may use: `num_threads` / `set_num_threads` if set, else
    ``torch.get_num_threads()`` (capped by numba's pool, ``NUMBA_NUM_THREADS``, at launch)."""
    n = _context_threads.get()
    if n is None:
        n = _default_threads
    return n if n is not None else torch.get_num_threads()


# ------------------------------------------------------------------------------ launching
class KernelUnavailable(RuntimeError):
    """A kernel could not be compiled; the caller falls back to the reference (or re-raises)."""


def launch(kernel: Callable[..., Any], *args: Any) -> Any:
    """Run a parallel kernel with `get_num_threads` threads (one below `SERIAL_BELOW` elements).

    A lookup kernel with a serial twin (``numba_cpu.SERIAL``: the same loop without ``prange``)
    runs that twin on the calling thread below `SERIAL_LOOKUPS_BELOW` elements or when it gets
    one thread: no worker is woken and no lock taken. Its work is its first argument (the
    others are tables)."""
    global _needs_lock
    numba, kernels = modules()
    serial = kernels.SERIAL.get(kernel)
    if serial is not None:
        size, below = args[0].size, SERIAL_LOOKUPS_BELOW
    else:
        size, below = max((getattr(a, "size", 0) for a in args), default=0), SERIAL_BELOW
    threads = 1 if size < below else max(1, min(get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if threads == 1 and serial is not None:
        return _call(numba, serial, args)
    if _needs_lock is False:
        numba.set_num_threads(threads)  # numba's count is per calling thread
        return _call(numba, kernel, args)
    with _launch_lock:
        numba.set_num_threads(threads)
        result = _call(numba, kernel, args)
        _needs_lock = numba.threading_layer() == "workqueue"
    return result


def _call(numba: Any, kernel: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    global _broken
    try:
        return kernel(*args)
    except numba.core.errors.NumbaError as err:  # the kernel does not compile on this machine
        name = getattr(getattr(kernel, "py_func", kernel), "__qualname__", "?")
        _broken = f"a kernel does not compile ({name}: {type(err).__name__}: {str(err).splitlines()[0]})"
        raise KernelUnavailable(_broken) from err
    except Exception as err:
        cache = getattr(kernel, "_cache", None)
        if cache is None or not _raised_in_cache(err):
            raise
        problem = type(err).__name__
    # a truncated or corrupt cache entry: empty this kernel's cache index, compile afresh
    warn_once(
        "cache",
        f"numba's disk cache of a lowbit kernel was unreadable ({problem}); discarded it and recompiled "
        f"(cache directory: {getattr(cache, '_cache_path', '?')}).",
    )
    cache.flush()
    return kernel(*args)


def _raised_in_cache(err: BaseException) -> bool:
    """Whether ``err`` came from reading numba's on-disk cache."""
    frames = traceback.extract_tb(err.__traceback__)
    return any(f.filename.replace("\\", "/").endswith("numba/core/caching.py") for f in frames)
