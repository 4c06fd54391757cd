"""Process helpers shared by the layers that clean up after a killed process (a small utility at the bottom)."""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` may be a live process of this machine (False only when it surely is not).

    Used to tell a temporary file or directory left by a killed process (safe to remove) from one
    another process is still writing.

    >>> pid_alive(os.getpid())
    True
    """
    if pid == os.getpid():
        return True
    if pid <= 0:
        return True  # not a process id we can ask about: leave its file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # PermissionError: someone else's live process
        return True
    return True
