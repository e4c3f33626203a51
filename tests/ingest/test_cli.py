"""The ``upad ingest`` and ``upad quarantine`` commands, and a real kill -9 in the middle of a batch."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from upad.db import Database, Frame, QuarantinedFile
from upad.settings import Settings

from .conftest import run_cli, temp_files
from .fitsmaker import RawSpec, make_batch, write_raw


def test_ingest_json_and_quarantine_listing(database, settings: Settings, incoming: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    make_batch(incoming, 2, n_stars=5)
    (incoming / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    args = ["--root", settings.root, "--db", settings.db_url]
    capsys.readouterr()
    assert run_cli(["ingest", incoming, *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["registered"] == 2 and out["counts"]["quarantined"] == 1
    assert out["exit_code"] == 0 and out["strict"] is False
    bad = [f for f in out["files"] if f["status"] == "quarantined"][0]
    assert bad["filename"] == "broken.fits" and bad["category"] == "truncated"

    assert run_cli(["quarantine", *args, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(q["filename"], q["category"]) for q in listed] == [("broken.fits", "truncated")]
    assert listed[0]["quarantine_path"].startswith("quarantine/")

    assert run_cli(["quarantine", *args]) == 0
    assert "broken.fits" in capsys.readouterr().out  # the listing is the answer: stdout

    assert run_cli(["ingest", incoming, *args, "--strict"]) == 1
    res = capsys.readouterr()
    assert "already_registered" in res.out  # the summary table (stdout)
    assert "broken.fits" in res.err  # the per-file progress (stderr)


def test_ingest_needs_an_initialised_root(tmp_path: Path, incoming: Path, capsys) -> None:
    make_batch(incoming, 1, n_stars=0)
    assert run_cli(["ingest", incoming, "--root", tmp_path / "nowhere"]) == 2
    assert "upad init" in capsys.readouterr().err


def test_ingest_missing_path_is_a_usage_error(database, settings: Settings, tmp_path: Path, capsys) -> None:
    assert run_cli(["ingest", tmp_path / "no-such-dir", "--root", settings.root, "--db", settings.db_url]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_watch_with_max_polls(database, settings: Settings, incoming: Path, capsys) -> None:
    f = write_raw(incoming, RawSpec(n_stars=5))
    old = f.stat().st_mtime - 60  # written a minute ago: settled (ingest.limits.settle_s)
    os.utime(f, (old, old))
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", settings.db_url, "--watch",
                    "--interval", "0.05", "--max-polls", "3"]) == 0
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Frame)) == 1
    assert "registered" in capsys.readouterr().err


# -- a real crash -------------------------------------------------------------------------------------------------------------
def _count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Frame))


def _kill_when(proc: subprocess.Popen, db: Database, n: int, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` once ``n`` frames are registered; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if _count(db) >= n:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        except Exception:  # the database may be busy for a moment
            pass
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("ingest made no progress")


def test_sigkill_mid_batch_then_rerun(database, settings: Settings, incoming: Path, tmp_path: Path) -> None:
    files = make_batch(incoming, 30, n_stars=10)
    truth = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    cmd = [sys.executable, "-m", "upad.cli.main", "ingest", str(incoming), "--root", str(settings.root),
           "--db", settings.db_url, "--mode", "move", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for target in (3, 12):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kills += _kill_when(proc, database, target)
        # after each kill: no half-registered frame — every row's archived file is complete
        with database.session() as s:
            for f in s.scalars(select(Frame)):
                assert hashlib.sha256((settings.root / f.path).read_bytes()).hexdigest() == f.sha256
        # nothing lost: every file is in the incoming directory or in the archive
        for name in truth:
            assert (incoming / name).exists() or (settings.root / "raw" / "2015-08-10" / name).exists()
    assert kills >= 1, "the batch finished before it could be killed"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"]["failed"] == 0 and report["counts"]["quarantined"] == 0
    with database.session() as s:
        rows = list(s.scalars(select(Frame)))
        assert s.scalar(select(func.count()).select_from(QuarantinedFile)) == 0
    assert sorted(r.filename for r in rows) == sorted(truth), "every file registered exactly once"
    for r in rows:
        assert r.sha256 == truth[r.filename]
        assert hashlib.sha256((settings.root / r.path).read_bytes()).hexdigest() == r.sha256
    assert list(incoming.iterdir()) == [], "move mode: every source removed once registered"
    assert temp_files(settings.root) == []
