"""The fault taxonomy of the flow: what a failed attempt says about its cause.

A job fails for one of two kinds of reasons, and they are treated differently:

``environment`` (transient)
    The machine, not the data, was wrong: a full disk (``ENOSPC``, or a short write that carries no errno), a
    read-only or unwritable archive (``EROFS``, ``EACCES``), a file system or network hiccup, an input that is not
    there yet (the reference catalog of a new installation, an unmounted archive), the database unreachable, memory
    exhausted. The attempt is retried with back-off; once its retries are spent the job is parked as ``blocked``
    with the reason, and tried again when the cause can have gone: at the next ``upad run``, as soon as the missing
    file exists, periodically in a daemon, or by ``upad retry``.
``data`` (permanent)
    The input itself is bad (a :class:`~upad.errors.DataError`: truncated, corrupt, no stars …) or the code met a
    case it cannot handle (any other exception): running it again gives the same result. The job is ``failed``;
    ``upad retry --failed`` runs it again after a fix.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from upad.errors import TRANSIENT_ERRNO, DataError, MissingInputError, TransientError

#: fault categories recorded with a failed attempt
CATEGORIES = ("environment", "data")

# numpy/astropy report a short write (a full disk) as "N requested and M written", without an errno
_SHORT_WRITE = re.compile(r"requested and \d+ written|No space left|Disk quota exceeded|Read-only file system",
                          re.IGNORECASE)


@dataclass(frozen=True)
class Fault:
    """How a failure is treated.

    Attributes
    ----------
    transient
        Whether the cause lies in the environment (retried, then ``blocked``) rather than in the data (``failed``).
    category
        ``"environment"`` or ``"data"``.
    waits_for
        A path whose appearance can remove the cause (a missing input), or ``None``.
    """

    transient: bool
    category: str
    waits_for: str | None = None


def classify(exc: BaseException) -> Fault:
    """The fault a failed attempt's exception stands for (see the module documentation)."""
    if isinstance(exc, MissingInputError):
        return Fault(True, "environment", exc.path)
    if isinstance(exc, DataError):
        return Fault(False, "data")
    if isinstance(exc, TransientError):
        return Fault(True, "environment")
    if isinstance(exc, (TimeoutError, ConnectionError, MemoryError)):
        return Fault(True, "environment")
    if isinstance(exc, sqlite3.OperationalError):
        return Fault("locked" in str(exc) or "disk" in str(exc) or "unable to open" in str(exc), "environment")
    if isinstance(exc, OSError):
        if exc.errno in TRANSIENT_ERRNO:
            path = exc.filename if exc.errno == 2 and isinstance(exc.filename, str) else None
            return Fault(True, "environment", path)
        if exc.errno is None and _SHORT_WRITE.search(str(exc)):
            return Fault(True, "environment")
        return Fault(False, "data")
    if is_outage(exc):  # the database refused or dropped the connection, or its disk is full
        return Fault(True, "environment")
    return Fault(False, "data")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying (with back-off) rather than recorded as a deterministic failure."""
    return classify(exc).transient


def is_outage(exc: BaseException) -> bool:
    """Whether a database error means the database is unreachable or out of space (ride it out), not that a
    statement is wrong (a bug: raise it)."""
    try:
        from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    text = str(exc.orig if getattr(exc, "orig", None) is not None else exc).lower()
    return any(k in text for k in (
        "could not connect", "connection refused", "server closed the connection", "terminating connection",
        "connection reset", "connection is closed", "connection already closed", "could not receive data",
        "could not send data", "ssl syscall", "no connection to the server", "timeout expired", "eof detected",
        "database is locked", "database or disk is full", "disk i/o error", "unable to open database",
        "no space left", "the database system is starting up", "the database system is shutting down",
        "cannot connect now", "server conn crashed", "lost synchronization"))
