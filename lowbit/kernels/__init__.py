"""Fast paths for encode / decode / quantize, with the torch reference as the fallback.

Backends:
- ``"reference"``: the vectorized torch code in `lowbit.formats` (any device, always there).
- ``"numba"``: fused, multi-threaded CPU kernels (`lowbit.kernels.numba_cpu`), compiled lazily on
  first use and cached on disk; bit-identical to the reference, stochastic rounding included.
- ``"auto"`` (default): numba for CPU tensors, else the reference. numba is a dependency of
  lowbit; if it cannot load, ``auto`` warns once (a `lowbit.LowbitWarning` naming the fix) and
  runs the reference on CPU tensors too.

Thread count and threading layer: see `lowbit.kernels.runtime` — kernels follow
``torch.get_num_threads()`` at each call unless `set_num_threads` / `num_threads` say otherwise,
and never change torch's own settings.

Choose per call with ``backend=`` or for a block of code with `use_backend` (a context variable,
so each thread and task keeps its own choice)::

    with lowbit.kernels.use_backend("reference"):
        fmt.quantize(x)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from lowbit.kernels.runtime import get_num_threads, num_threads, numba_problem, set_num_threads, warn_reference_fallback

__all__ = [
    "BACKENDS", "available_backends", "get_backend", "use_backend", "resolve_backend",
    "set_num_threads", "get_num_threads", "num_threads",
]

BACKENDS = ("auto", "reference", "numba")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("lowbit_backend", default="auto")


def _numba_installed() -> bool:
    """Whether the numba kernels load and compile here (numba is imported on the first call)."""
    return numba_problem() is None


def available_backends() -> tuple[str, ...]:
    """Backends usable on this machine (``reference`` always)."""
    return ("reference", "numba") if _numba_installed() else ("reference",)


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not a backend; allowed: {', '.join(BACKENDS)}")
    if name == "numba" and not _numba_installed():
        raise ValueError(
            f"backend='numba' cannot run: {numba_problem() or 'numba is not available'}; "
            "install it with `pip install numba` (or use backend='reference')"
        )
    return name


def get_backend() -> str:
    """The backend chosen for the current context (default ``"auto"``)."""
    return _current.get()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use backend ``name`` inside the ``with`` block (this thread / task only)."""
    token = _current.set(_check(name))
    try:
        yield
    finally:
        _current.reset(token)


def resolve_backend(backend: "str | None", device_type: str) -> str:
    """The concrete backend ("reference" or "numba") for a call on ``device_type`` tensors.

    An explicit ``backend="numba"`` on a non-CPU tensor raises ValueError; ``"auto"`` falls back
    to the reference there.
    """
    name = _check(backend) if backend is not None else _current.get()
    if name == "numba":
        if device_type != "cpu":
            raise ValueError(f"backend='numba' runs on CPU tensors only; this tensor is on {device_type!r}")
        return "numba"
    if name == "auto" and device_type == "cpu":
        if _numba_installed():
            return "numba"
        warn_reference_fallback()
    return "reference"


def _install() -> None:
    from lowbit.formats.base import install_accelerator
    from lowbit.formats.block import install_block_accelerator
    from lowbit.kernels import blocks, dispatch

    install_accelerator(dispatch)
    install_block_accelerator(blocks)


_install()
