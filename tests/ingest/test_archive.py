"""Atomic, never-overwriting placement of files, quarantine names and stale temporary files."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from upad.ingest import archive


def test_store_bytes_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "2015-08-10" / "a.fits.fz"
    archive.store_bytes(dest, b"first")
    assert dest.read_bytes() == b"first"
    with pytest.raises(FileExistsError):
        archive.store_bytes(dest, b"second")
    assert dest.read_bytes() == b"first"
    assert os.listdir(dest.parent) == ["a.fits.fz"]  # no temporary file left


def test_store_bytes_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "a.fits"

    def killed(tmp, final):  # the process dies after the fsync, before the link
        raise KeyboardInterrupt

    monkeypatch.setattr(archive, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        archive.store_bytes(dest, b"data")
    assert os.listdir(tmp_path) == []  # neither the final name nor the temporary file (a SIGKILL may leave that)


def test_store_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src.fits"
    src.write_bytes(b"x")
    dest = tmp_path / "raw" / "src.fits"
    archive.store_symlink(dest, src)
    assert dest.is_symlink() and dest.read_bytes() == b"x" and os.readlink(dest) == str(src)
    with pytest.raises(FileExistsError):
        archive.store_symlink(dest, src)


def _temp_name(final: str, host: str, pid: int) -> str:
    return f".{final}{archive.TEMP_MARK}{host}.{pid}.abcd1234"


def test_cleanup_stale_temps(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = archive._HOST
    names = {
        "dead": _temp_name("a.fits", host, dead.pid),
        "mine_inactive": _temp_name("b.fits", host, os.getpid()),
        "other_live": _temp_name("c.fits", host, os.getppid()),
        "foreign_old": _temp_name("d.fits", "elsewhere", 1),
        "foreign_new": _temp_name("e.fits", "elsewhere", 2),
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "keep.fits").write_bytes(b"real")
    old = time.time() - archive.FOREIGN_TEMP_MAX_AGE_S - 60
    os.utime(tmp_path / names["foreign_old"], (old, old))
    removed = {p.name for p in archive.cleanup_stale_temps(tmp_path)}
    assert removed == {names["dead"], names["mine_inactive"], names["foreign_old"]}
    assert sorted(os.listdir(tmp_path)) == sorted(["keep.fits", names["other_live"], names["foreign_new"]])


def test_quarantine_destination_suffixes_and_reuse(tmp_path: Path) -> None:
    day = dt.date(2026, 1, 2)
    first, exists = archive.quarantine_destination(tmp_path, "x.fits.fz", sha256="s", size=1, day=day)
    assert first == tmp_path / "quarantine" / "2026-01-02" / "x.fits.fz" and not exists
    archive.store_bytes(first, b"A")
    sha_b = archive.hashlib.sha256(b"B").hexdigest()
    second, exists = archive.quarantine_destination(tmp_path, "x.fits.fz", sha256=sha_b, size=1, day=day)
    assert second.name == "x~2.fits.fz" and not exists
    archive.store_bytes(second, b"B")
    again, exists = archive.quarantine_destination(tmp_path, "x.fits.fz", sha256=sha_b, size=1, day=day)
    assert again == second and exists  # an identical copy is reused, not copied a third time


def test_reason_file(tmp_path: Path) -> None:
    target = tmp_path / "x.fits"
    path = archive.write_reason(target, "because")
    assert path.name == "x.fits.reason.txt" and path.read_text() == "because"
    archive.write_reason(target, "other")  # kept, never overwritten
    assert path.read_text() == "because"
