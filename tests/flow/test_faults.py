"""Fault injection: environment faults end as blocked jobs that come back, never as lost or stuck work.

Each test injects one fault of the environment (a missing input, a full disk, a short write, a read-only archive, a
database outage, a raw file changed under the archive, absurd stored dates), lets the flow meet it, removes the
cause and checks: nothing lost (every unit ends with its product), nothing duplicated (one product per provenance,
no orphan file), nothing stuck (no job left queued, running or blocked once the cause is gone), and a clear reason
recorded where an operator looks (the job's error, the waiting unit's reason).
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import socket
import threading
import time

import pytest
from conftest import add_frames
from sqlalchemy import func, select
from test_scheduler import NIGHTS, check_archive, current_values, make

from upad.db.models import Attempt, Frame, Job, QuarantinedFile
from upad.errors import MissingInputError
from upad.flow.faults import classify, is_outage

def states(db) -> dict[str, int]:
    with db.session() as s:
        return dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())


def job_of(db, step: str, key: str) -> Job:
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.step == step, Job.unit_key == key)).one()
        job.attempts  # noqa: B018 - loaded while the session is open
        return job


def test_taxonomy_sorts_environment_from_data():
    from upad.errors import DataError, TransientError

    env = [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EROFS, "Read-only file system"),
           OSError(errno.EACCES, "Permission denied"), OSError("2880 requested and 1024 written"),
           TransientError("busy"), MemoryError(), ConnectionRefusedError(), TimeoutError()]
    data = [DataError("truncated"), ValueError("no stars"), OSError("buffer is too small for requested array"),
            KeyError("NAXIS"), ZeroDivisionError()]
    assert all(classify(e).transient and classify(e).category == "environment" for e in env)
    assert not any(classify(e).transient for e in data)
    missing = classify(MissingInputError("no refcat", path="/x/refcat.fits"))
    assert missing.transient and missing.waits_for == "/x/refcat.fits"
    gone = classify(FileNotFoundError(errno.ENOENT, "No such file or directory", "/archive/raw/a.fits"))
    assert gone.transient and gone.waits_for == "/archive/raw/a.fits"


def test_missing_input_blocks_names_the_reason_and_runs_once_it_is_there(flow_env):
    """A new user's reference catalog, an unmounted archive: the job is retried, then blocked with the path it
    waits for; the units built from it wait naming it (not a misleading "take calibration frames"); the next run
    with the file back completes everything."""
    settings, db = flow_env
    ids = add_frames(db, settings.root, 4, NIGHTS[:1])
    raw = settings.root / f"raw/{NIGHTS[0]}/toy-0000.fits"
    content = raw.read_bytes()
    raw.unlink()  # the input disappears (an archive disk not mounted)
    counts = make(settings, db).run(until_idle=True)
    assert counts["blocked"] == 1 and counts["retried"] == 2 and counts.get("failed", 0) == 0
    key = f"{NIGHTS[0]}/frame{ids[0]}"
    job = job_of(db, "toy_a", key)
    assert job.state == "blocked" and job.fault == "environment"
    assert job.waits_for == str(raw) and "toy-0000.fits" in job.error
    assert [a.transient for a in job.attempts] == [True, True, True]
    # the night's toy_b waits, naming the real cause
    report = make(settings, db).plan(dry_run=True)
    why = {u.unit.key: u.reason for u in report.units if u.step == "toy_b"}[NIGHTS[0]]
    assert f"toy_a {key} blocked" in why and "upad retry" in why
    # the cause goes: the next run picks the blocked job up by itself
    raw.write_bytes(content)
    counts = make(settings, db).run(until_idle=True)
    assert counts["requeued"] == 1 and counts["done"] == 1 + 1 + 4  # toy_a, toy_b, 4 toy_c
    assert states(db) == {"done": 9}
    check_archive(settings, db)


def test_a_daemon_runs_a_blocked_job_as_soon_as_the_file_it_waits_for_appears(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    raw = settings.root / f"raw/{NIGHTS[0]}/toy-0001.fits"
    content = raw.read_bytes()
    raw.unlink()
    sched = make(settings, db, replan_seconds=0.2, blocked_retry_seconds=None)

    def restore():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and states(db).get("blocked", 0) == 0:
            time.sleep(0.05)
        raw.write_bytes(content)

    t = threading.Thread(target=restore)
    t.start()
    counts = sched.run(until_idle=False, max_seconds=8)
    t.join()
    assert counts["blocked"] == 1 and counts["requeued"] == 1
    assert states(db) == {"done": 2 + 1 + 2}
    check_archive(settings, db)


@pytest.mark.parametrize("fault", ["enospc", "short_write", "erofs"])
def test_disk_full_short_write_and_read_only_block_then_retry(flow_env, fault):
    """A full disk (with or without errno) and a read-only archive are environment faults: the run ends with the
    jobs blocked (counted: `upad run` exits non-zero), `upad retry` queues them once the cause is fixed."""
    from click.testing import CliRunner

    from upad.cli.main import cli

    settings, db = flow_env
    add_frames(db, settings.root, 3, NIGHTS[:1])
    (settings.root / "upad.toml").write_text(f'[steps.toy_a]\nenv_fault = "{fault}"\n')
    cause = settings.root / "tmp" / "env-fault"
    cause.write_text("the disk is full")
    counts = make(settings, db).run(until_idle=True)
    assert counts["blocked"] == 3 and counts.get("failed", 0) == 0 and counts.get("done", 0) == 0
    with db.session() as s:
        errors = {j.error for j in s.scalars(select(Job).where(Job.step == "toy_a"))}
    expected = {"enospc": "No space left", "short_write": "requested and 1024 written",
                "erofs": "Read-only file system"}[fault]
    assert all(expected in e for e in errors)
    cause.unlink()  # the operator frees space / remounts read-write
    runner = CliRunner()
    args = ["--root", str(settings.root), "--db", db.url]
    out = runner.invoke(cli, ["retry", "--dry-run", *args])
    assert out.exit_code == 0 and "3 job(s) would be queued again" in out.output
    out = runner.invoke(cli, ["retry", "--step", "toy_a", *args])
    assert out.exit_code == 0, out.output
    assert states(db) == {"queued": 3}
    counts = make(settings, db).run(until_idle=True)
    assert states(db) == {"done": 3 + 1 + 3}
    check_archive(settings, db)


def test_a_run_of_some_steps_leaves_other_steps_blocked_jobs_alone_and_ends(flow_env):
    """`upad run --step S --until-idle` queues again only S's blocked jobs and ends when S is idle, however many
    jobs of other steps wait."""
    from upad.execution import InlineExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions

    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    (settings.root / "upad.toml").write_text('[steps.toy_b]\nenv_fault = "enospc"\n')
    (settings.root / "tmp" / "env-fault").write_text("the disk is full")
    make(settings, db).run(until_idle=True)
    assert states(db) == {"done": 2, "blocked": 1}
    only_a = Scheduler(db, settings, InlineExecutor(), options=SchedulerOptions(
        steps=("toy_a",), poll_seconds=0.05, min_replan_seconds=0.0, backoff_seconds=0.05))
    t0 = time.monotonic()
    counts = only_a.run(until_idle=True, max_seconds=30)
    assert time.monotonic() - t0 < 10 and counts.get("requeued", 0) == 0
    assert states(db) == {"done": 2, "blocked": 1}  # toy_b's job is not this run's to retry


def test_archive_that_cannot_take_the_products_leaves_no_half_registered_product(flow_env, monkeypatch):
    """The scheduler moves the staged files into the archive: when that fails (read-only, full) the moved files go
    back, the attempt counts as an environment failure, and no product or file is left half-registered."""
    import upad.flow.scheduler as scheduler_module

    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    real_replace = os.replace
    broken = {"on": True, "calls": 0}

    def replace(src, dst, *a, **kw):
        if broken["on"] and str(settings.root / "reduced") in str(dst):
            broken["calls"] += 1
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(scheduler_module.os, "replace", replace)
    counts = make(settings, db).run(until_idle=True)
    assert counts["blocked"] == 2 and broken["calls"] == 6
    assert not any((settings.root / "reduced").rglob("*.json"))
    broken["on"] = False
    counts = make(settings, db).run(until_idle=True)
    assert counts["requeued"] == 2
    assert states(db) == {"done": 2 + 1 + 2}
    check_archive(settings, db)


def test_no_new_job_starts_on_a_nearly_full_disk_and_the_run_resumes(flow_env, caplog):
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    events = []
    sched = make(settings, db, min_free_mb=1e12)  # more than any disk: "full"
    sched.on_event = lambda kind, info: events.append(kind)
    counts = sched.run(until_idle=False, max_seconds=1.5)
    assert counts["disk_pauses"] == 1 and events.count("disk_full") == 1
    assert states(db) == {"queued": 2}  # planned, none started, nothing lost
    assert "disk nearly full" in caplog.text
    counts = make(settings, db).run(until_idle=True)
    assert states(db) == {"done": 2 + 1 + 2}
    check_archive(settings, db)


def test_a_raw_file_replaced_after_registration_is_quarantined_never_processed(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 3, NIGHTS[:1])
    # the same content touched (a copy back, a chmod): verified by its hash, its new stat recorded, no alarm
    same = settings.root / f"raw/{NIGHTS[0]}/toy-0001.fits"
    os.utime(same, (time.time() + 5, time.time() + 5))
    # another content under the registered name (a file replaced in place in --mode link)
    changed = settings.root / f"raw/{NIGHTS[0]}/toy-0002.fits"
    changed.write_bytes(b"another exposure")
    with db.session() as s:
        stat_before = s.get(Frame, ids[1]).file_stat
    counts = make(settings, db).run(until_idle=True)
    assert counts["inputs_changed"] == 1
    with db.session() as s:
        frame = s.get(Frame, ids[2])
        assert not frame.valid and "changed after registration" in frame.invalid_reason
        q = s.scalars(select(QuarantinedFile).where(QuarantinedFile.category == "changed")).one()
        assert q.filename == "toy-0002.fits" and q.quarantine_path
        assert (settings.root / q.quarantine_path).read_bytes() == b"another exposure"
        assert s.get(Frame, ids[1]).valid and s.get(Frame, ids[1]).file_stat != stat_before
        assert not s.scalars(select(Job).where(Job.state == "failed")).all()  # nothing wrong with the job
        cancelled = s.scalars(select(Job).where(Job.state == "cancelled")).all()
        assert len(cancelled) == 1 and "InputChangedError" in cancelled[0].error
    assert not changed.exists()  # out of the archive: nothing can read it under the old identity
    # the night was built again without the changed frame: toy_b sums frames 1 and 2 only
    assert current_values(db, "toy_b") == {NIGHTS[0]: ids[0] + ids[1]}
    assert set(current_values(db, "toy_c")) == {f"{NIGHTS[0]}/frame{i}" for i in ids[:2]}


def test_absurd_stored_dates_never_crash_the_planner(flow_env):
    """Frames registered with a DATE-OBS of 9999-12-31 or 0001-01-01 (before ingest checked dates) are left out
    of planning and listed with the reason; the rest of the archive is processed."""
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    with db.session() as s:
        for k, when in enumerate((dt.datetime(9999, 12, 31, 1), dt.datetime(1, 1, 1, 1))):
            f = s.get(Frame, 1 + k)
            f.date_obs, f.night = when, when.date().isoformat()
    add_frames(db, settings.root, 2, NIGHTS[1:], start_id=10)
    report = make(settings, db).plan(dry_run=True)
    odd = {u.unit.key: u.reason for u in report.units if u.step == "(frames)"}
    assert set(odd) == {"toy-0000.fits", "toy-0001.fits"}
    assert "9999-12-31 is outside the dates upad plans" in odd["toy-0000.fits"]
    assert "0001-01-01" in odd["toy-0001.fits"]
    make(settings, db).run(until_idle=True)
    assert states(db) == {"done": 2 + 1 + 2}


# --------------------------------------------------------------------------------------- database outage (proxy)
class TcpProxy:
    """A local TCP proxy to the test's PostgreSQL server that can be stopped (every connection cut, new ones
    refused) and started again on the same port: a database outage as the scheduler sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.mark.postgres
def test_the_scheduler_rides_out_a_database_outage(flow_env):
    """The database goes away for 5 s in the middle of a run (every connection cut, new ones refused) and comes
    back: the run finishes, every unit has exactly one product, the results that arrived meanwhile are recorded."""
    from sqlalchemy.engine import make_url

    from upad.db.session import Database

    settings, db = flow_env
    if db.backend != "postgresql":
        pytest.skip("the outage is injected through a TCP proxy to PostgreSQL (SQLite has no server)")
    url = make_url(db.url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    proxied = Database(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    add_frames(db, settings.root, 6, NIGHTS)
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.3\n[steps.toy_c]\nsleep = 0.3\n")
    events: list[str] = []
    sched = make(settings, proxied)
    sched.on_event = lambda kind, info: events.append(kind)

    def outage():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and states(db).get("done", 0) < 2:
            time.sleep(0.05)
        proxy.stop()
        time.sleep(5.0)
        proxy.start()

    t = threading.Thread(target=outage)
    t.start()
    try:
        counts = sched.run(until_idle=True, max_seconds=120)
    finally:
        t.join()
        proxy.stop()
        proxied.dispose()
    assert "db_outage" in events and "db_back" in events
    assert states(db) == {"done": 6 + 2 + 6}
    assert counts["done"] == 14
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Attempt).where(Attempt.state == "running")) == 0
    check_archive(settings, db)


def test_the_scheduler_rides_out_a_full_database_disk(flow_env):
    """SQLite's file cannot grow for 3 s in the middle of a run (``PRAGMA max_page_count`` at its current size: every
    write that needs a page fails with "database or disk is full", as on a full disk); then space comes back."""
    from sqlalchemy import event

    settings, db = flow_env
    if db.backend != "sqlite":
        pytest.skip("the full disk is injected through SQLite's max_page_count")
    add_frames(db, settings.root, 6, NIGHTS)
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.2\n[steps.toy_c]\nsleep = 0.2\n")
    full = {"on": False}

    @event.listens_for(db.engine, "begin")
    def limit(conn):  # runs after upad's BEGIN IMMEDIATE: caps the file at its present size while "full"
        if full["on"]:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        else:
            conn.exec_driver_sql("PRAGMA max_page_count = 1073741823")

    events: list[str] = []
    sched = make(settings, db)
    sched.on_event = lambda kind, info: events.append(kind)

    def fill():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(e == "done" for e in events):
            time.sleep(0.02)
        full["on"] = True
        time.sleep(3.0)
        full["on"] = False

    t = threading.Thread(target=fill)
    t.start()
    try:
        counts = sched.run(until_idle=True, max_seconds=120)
    finally:
        t.join()
        event.remove(db.engine, "begin", limit)
    assert "db_outage" in events and "db_back" in events
    assert states(db) == {"done": 6 + 2 + 6} and counts["done"] == 14
    check_archive(settings, db)


def test_outage_errors_are_told_from_statement_errors():
    from sqlalchemy.exc import OperationalError, ProgrammingError

    class Orig(Exception):
        pass

    assert is_outage(OperationalError("SELECT 1", {}, Orig("connection refused")))
    assert is_outage(OperationalError("COMMIT", {}, Orig("database or disk is full")))
    assert not is_outage(ProgrammingError("SELECT x", {}, Orig('column "x" does not exist')))
    assert not is_outage(OperationalError("SELECT 1", {}, Orig("near \"SELEC\": syntax error")))


def test_a_products_missing_file_blocks_but_a_missing_picture_does_not(tmp_path):
    """Input verification: every file a step reads must be there (MissingInputError with its path: the job waits);
    a product's previews and QC plots are for people, and their absence holds nothing back."""
    from upad.errors import MissingInputError
    from upad.flow.worker import verify_inputs

    data, png = tmp_path / "x_red.fits", tmp_path / "x.png"
    data.write_bytes(b"data")
    item = {"kind": "product", "id": 7, "role": "exposure", "paths": [str(data), str(png)],
            "meta": {"step": "reduce", "unit_key": "u", "file_roles": ["reduced", "preview"]}}
    assert verify_inputs([item]) == {}  # the preview is missing: no matter
    data.unlink()
    with pytest.raises(MissingInputError) as exc:
        verify_inputs([item])
    assert exc.value.path == str(data) and "x_red.fits" in str(exc.value)
