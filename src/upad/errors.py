"""Errors that reach users: each says what was wrong and what to do."""
from __future__ import annotations

import errno

#: errno values of I/O errors caused by the environment, not by the data: worth a retry with back-off and, once the
#: retries are spent, a ``blocked`` job that is tried again when the cause can have gone (a full or read-only disk, a
#: permission, a file system hiccup, an input that is not there yet). Corrupt or truncated data is never one of these.
TRANSIENT_ERRNO = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ENOSPC, errno.ESTALE,
                             errno.ECONNRESET, errno.ECONNREFUSED, errno.EINTR, errno.EROFS, errno.EDQUOT,
                             errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTCONN, errno.EHOSTDOWN,
                             errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ENOMEM})


class UpadError(Exception):
    """An error with a user-facing message and a hint on what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class TransientError(Exception):
    """A failure worth retrying (I/O hiccup, busy database, lost worker, an input not there yet)."""


class MissingInputError(UpadError, TransientError):
    """An input the configuration names is not there (yet): the reference catalog, a lookup table …

    ``path`` is what to wait for: a job that failed on it is tried again as soon as it exists.
    """

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class DataError(Exception):
    """A deterministic failure caused by the input data: recorded, never retried."""


class InputChangedError(DataError):
    """A raw file is not what was registered: its content changed after its SHA-256 was recorded.

    The job fails (it must never run under the old identity); the scheduler quarantines the file and flags the
    frame invalid, which re-plans every product built from it.
    """

    def __init__(self, message: str, *, frame_id: int, path: str, sha256: str) -> None:
        super().__init__(message)
        self.frame_id, self.path, self.sha256 = frame_id, path, sha256


def io_error(exc: BaseException, what: str) -> Exception:
    """The error to raise when reading ``what`` failed with ``exc``: a :class:`MissingInputError` for a file that is
    not there (it can appear: an unmounted archive), a :class:`TransientError` for another I/O error of the
    environment (see :data:`TRANSIENT_ERRNO`), a :class:`DataError` otherwise (a truncated or corrupt file)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return MissingInputError(f"cannot read {what}: it does not exist (will be tried again when it does)",
                                 path=exc.filename if isinstance(exc.filename, str) else None,
                                 hint="restore or mount the file, or flag the frame invalid (`upad flag`)")
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNO:
        return TransientError(f"cannot read {what} (will retry): {exc}")
    return DataError(f"cannot read {what}: {exc}")
