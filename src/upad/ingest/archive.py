"""Placing files in the archive and in quarantine: atomic, durable, never overwriting.

Layout (relative to the data root)::

    raw/<night>/<filename>                    registered raw frames
    quarantine/<YYYY-MM-DD>/<filename>        refused files (date of detection, UTC)
    quarantine/<YYYY-MM-DD>/<filename>.reason.txt

A file is written under a hidden temporary name in the destination directory
(``.<filename>.upad-tmp.<host>.<pid>.<token>``), flushed and ``fsync``-ed, then published with ``link(2)`` — which,
unlike ``rename(2)``, fails instead of replacing an existing file — and the directory is ``fsync``-ed. A crash
leaves either nothing or a complete file at the final name; at worst a temporary file, which
:func:`cleanup_stale_temps` removes later (its writer is dead).
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from upad._proc import pid_alive

__all__ = [
    "TEMP_MARK",
    "cleanup_stale_temps",
    "fsync_dir",
    "is_temp_name",
    "quarantine_destination",
    "raw_destination",
    "reason_path",
    "remove_source",
    "sha256_file",
    "store_bytes",
    "store_symlink",
    "write_reason",
]

TEMP_MARK = ".upad-tmp."
#: Temporary files of writers on other hosts (shared file systems) are removed after this many seconds.
FOREIGN_TEMP_MAX_AGE_S = 24 * 3600.0

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.upad-tmp\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]+)$")
#: Temporary files this process is writing right now (never cleaned up under its feet).
_ACTIVE_TEMPS: set[str] = set()


def raw_destination(root: Path, night: str, filename: str) -> Path:
    """``root/raw/<night>/<filename>``."""
    return Path(root) / "raw" / night / filename


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of ingest's temporary files."""
    return bool(_TEMP_RE.match(name))


def _temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{TEMP_MARK}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    """``fsync`` a directory so that a rename/link/unlink in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, dest: Path) -> None:
    """Give ``tmp`` the name ``dest`` without ever replacing an existing ``dest`` (FileExistsError)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError as exc:  # no hard links on this file system: check-then-rename (tiny race window)
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "file exists", str(dest)) from None
        os.rename(tmp, dest)
        return
    os.unlink(tmp)


def store_bytes(dest: Path, data: bytes | memoryview, *, mode: int | None = None) -> None:
    """Write ``data`` at ``dest`` atomically and durably.

    ``mode``: permission bits given to the file before it is published (default: what the umask leaves of 0666);
    they can only be narrowed by the umask, never widened.

    Raises
    ------
    FileExistsError
        If ``dest`` exists (it is never overwritten).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "file exists", str(dest))
    tmp = _temp_path(dest)
    _ACTIVE_TEMPS.add(tmp.name)
    try:
        with open(tmp, "xb") as fh:
            if mode is not None:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(fh.fileno(), mode & ~umask & 0o777)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, dest)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        _ACTIVE_TEMPS.discard(tmp.name)
    fsync_dir(dest.parent)


def store_symlink(dest: Path, target: Path) -> None:
    """Create ``dest`` as a symbolic link to the absolute ``target`` (atomic; FileExistsError if ``dest`` exists)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(target), dest)
    fsync_dir(dest.parent)


def remove_source(path: Path) -> None:
    """Remove an ingested source file (after the database commit) and make the removal durable."""
    path = Path(path)
    os.unlink(path)
    fsync_dir(path.parent)


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's content (following symbolic links)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _same_content(path: Path, size: int, sha: str) -> bool:
    try:
        return path.stat().st_size == size and sha256_file(path) == sha
    except OSError:
        return False


def _suffixed(filename: str, n: int) -> str:
    """``name.fits.fz`` → ``name~2.fits.fz`` (the n-th name of a clash)."""
    if n <= 1:
        return filename
    stem, dot, ext = filename.partition(".")
    return f"{stem}~{n}{dot}{ext}"


def quarantine_destination(root: Path, filename: str, *, sha256: str | None, size: int | None,
                           day: dt.date | None = None) -> tuple[Path, bool]:
    """Where a refused file goes: ``root/quarantine/<day>/<filename>``, suffixed ``~2``, ``~3`` … on a clash.

    Returns
    -------
    (path, exists)
        ``exists`` is True when an identical copy (same size and SHA-256) is already there (a re-run after a crash
        between the copy and the database insert): reuse it instead of copying again.
    """
    day = day or dt.datetime.now(dt.timezone.utc).date()
    directory = Path(root) / "quarantine" / day.isoformat()
    n = 1
    while True:
        candidate = directory / _suffixed(filename, n)
        if not os.path.lexists(candidate):
            return candidate, False
        if sha256 is not None and size is not None and _same_content(candidate, size, sha256):
            return candidate, True
        n += 1


def reason_path(path: Path) -> Path:
    """The ``<filename>.reason.txt`` sibling of a quarantined file."""
    return path.with_name(path.name + ".reason.txt")


def write_reason(path: Path, text: str) -> Path:
    """Write the reason file of a quarantined file (kept if it already exists)."""
    target = reason_path(path)
    try:
        store_bytes(target, text.encode("utf-8"))
    except FileExistsError:
        pass
    return target



def cleanup_stale_temps(directory: Path) -> list[Path]:
    """Remove ingest's temporary files left in ``directory`` by interrupted writers.

    A temporary file is stale when its writer (host and pid are in its name) is dead — or is this process and no
    longer writing it — or, for another host, when it is older than :data:`FOREIGN_TEMP_MAX_AGE_S`.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m:
            continue
        pid = int(m["pid"])
        if m["host"] == _HOST:
            if pid == os.getpid():
                stale = entry.name not in _ACTIVE_TEMPS
            else:
                stale = not pid_alive(pid)
        else:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_TEMP_MAX_AGE_S
            except OSError:
                stale = False
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed
