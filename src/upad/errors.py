"""Errors that reach users: each says what was wrong and what to do."""
from __future__ import annotations

import errno

#: errno values of I/O errors worth a retry (a network file system hiccup, a full disk being cleaned …); others
#: (ENOENT on an input, EACCES …) are deterministic.
TRANSIENT_ERRNO = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ENOSPC, errno.ESTALE,
                             errno.ECONNRESET, errno.ECONNREFUSED, errno.EINTR})


class UpadError(Exception):
    """An error with a user-facing message and a hint on what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class TransientError(Exception):
    """A failure worth retrying (I/O hiccup, busy database, lost worker)."""


class DataError(Exception):
    """A deterministic failure caused by the input data: recorded, never retried."""


def io_error(exc: BaseException, what: str) -> Exception:
    """The error to raise when reading ``what`` failed with ``exc``: a :class:`TransientError` for an I/O error
    worth a retry (see :data:`TRANSIENT_ERRNO`), a :class:`DataError` otherwise (a truncated or corrupt file)."""
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNO:
        return TransientError(f"cannot read {what} (will retry): {exc}")
    return DataError(f"cannot read {what}: {exc}")
