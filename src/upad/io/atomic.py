"""Atomic files: written under a temporary name in the target directory, then renamed.

A reader (or a crash) never sees a half-written product: either the old state or the complete new file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Temporary files carry this marker so that cleanup can recognise (and remove) leftovers of a crash.
TMP_MARKER = ".upad-tmp-"

_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's content, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_stat(path: str | os.PathLike) -> dict[str, int]:
    """What changes when a file's content may have: size, mtime, ctime (which no user can set back) and inode (a
    replacement by rename), of the file a path (or its symbolic link) leads to. A job hashes a raw frame again only
    when these differ from those recorded with its SHA-256 (:func:`upad.flow.worker.verify_inputs`)."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (after a rename) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success it is renamed to ``final``, on error removed.

    Examples
    --------
    >>> with atomic_path(out / "master_bias.fits") as tmp:     # doctest: +SKIP
    ...     hdul.writeto(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{final.name}{TMP_MARKER}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def remove_tmp_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by a crash under ``directory`` (recursively); return what was removed."""
    removed = []
    for p in Path(directory).rglob(f"*{TMP_MARKER}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
