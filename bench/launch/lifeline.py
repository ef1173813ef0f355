"""A cell's child process dies with its parent, also when the parent is killed with SIGKILL.

Otherwise a killed ``matrix --launcher process`` leaves its worker running (reparented to
init), holding device memory while the resumed matrix measures. On Linux the child asks the
kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or where that
call fails, a daemon thread polls the parent's pid. Either way a parent that died before the
child got here is caught by comparing the parent pid with the one the launcher passed down.

This module imports nothing heavy: the worker arms it before it imports torch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "VIPERBENCH_PARENT_PID"  # set by the launcher to its own pid: the child never outlives it
PR_SET_PDEATHSIG = 1


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    _die()


def die_with_parent(parent: int | None = None, *, kernel: bool = True, interval: float = 0.2) -> str:
    """Arm this process to die with ``parent`` (default: ``$VIPERBENCH_PARENT_PID``, else the current parent).

    The kernel's death signal fires when the parent *thread* that started this process ends: the
    launchers start workers from the thread that waits for them. Returns ``"kernel"`` or ``"poll"``.
    """
    if parent is None:
        parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    how = "kernel" if kernel and _pdeathsig() else "poll"
    if os.getppid() != parent:  # the parent is gone already (died before the signal was armed)
        _die()
    if how == "poll":
        threading.Thread(target=_poll, args=(parent, interval), name="viperbench-lifeline", daemon=True).start()
    return how
