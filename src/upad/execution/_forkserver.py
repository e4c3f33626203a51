"""Preloaded in the local pool's forkserver process only: make it die with the scheduler.

With ``PR_SET_PDEATHSIG`` the forkserver gets SIGKILL when the scheduler that started it dies (even by SIGKILL);
its pool workers, which set the same on themselves, follow. No orphan worker keeps running or holds files open.
"""
from __future__ import annotations

import os
import signal
import sys


def _die_with_parent() -> None:
    if "multiprocessing.forkserver" not in sys.modules:  # never change the scheduler process itself
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the scheduler died before we could ask: leave now
        os._exit(0)


_die_with_parent()
