"""numba when it is installed, plain Python otherwise (same results, much slower: tests and tiny images only).

Kernels are compiled with ``cache=True`` so that a worker process pays the compilation once per machine, and with
``nogil=True`` so that they can run beside other threads.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:  # pragma: no cover - exercised where numba is installed
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True

    def set_threads(n: int | None) -> None:
        """Use ``n`` threads in parallel kernels (``None``: all cores)."""
        numba.set_num_threads(int(n) if n else numba.config.NUMBA_NUM_THREADS)

    def get_threads() -> int:
        return int(numba.get_num_threads())

except ImportError:  # pragma: no cover - fallback
    HAVE_NUMBA = False
    prange = range

    def njit(*args: Any, **kwargs: Any) -> Callable:
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

    def set_threads(n: int | None) -> None:
        return None

    def get_threads() -> int:
        return 1



@njit(cache=True, nogil=True)
def sorted_median(buf, n):  # pragma: no cover - compiled
    """Median of ``buf[:n]``, sorting it in place (insertion sort: for the few tens of values of a pixel's stack or
    neighbourhood); the mean of the two middle values for an even ``n``."""
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    h = n // 2
    if n % 2 == 1:
        return buf[h]
    return 0.5 * (buf[h - 1] + buf[h])


__all__ = ["HAVE_NUMBA", "get_threads", "njit", "prange", "set_threads", "sorted_median"]
