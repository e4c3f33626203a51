#!/usr/bin/env python
"""Benchmark of incremental planning: readiness of a new night with 10⁶ frames already in the process database.

Usage::

    python bench/bench_planning.py [--frames 1000000] [--night-frames 250] [--db URL ...] [--json out.json]

For each database (SQLite in a temporary file always; PostgreSQL with ``--db postgresql://…`` or when
``UPAD_TEST_DATABASE_URL`` is set, in a schema of its own that is dropped afterwards):

1. the archive: ``--frames`` raw frames of the ``mini`` camera over ``frames / night-frames`` nights (per night 5
   biases, 5 darks, 3 dome flats in each of the 12 J-PLUS filters, the rest science frames in the 12 filters), already
   processed: per night a current master bias, dark, bad-pixel mask and 12 master flats, and a current reduced frame
   per science frame, each with its provenance record and its finished job (the provenance inputs of these old
   products are not written: planning never reads them). It is written with bulk inserts, and every built-in step's
   plan cursor is set as if the archive had been planned under the current configuration;
2. a new night is ingested (``--night-frames`` frames registered through the ORM, as ``upad ingest`` does, so the
   change journal records them);
3. **one planning pass** of a fresh scheduler over every built-in step (what ``upad run`` does first) is timed: the
   new night's masters become ready, its science frames wait for them with their reason. Then a second pass (nothing
   new: only the waiting units are examined again).

The goal is ≤ 1 s for the first pass on both databases. A full pass (``--full``) is timed too when asked, on a smaller
archive — it is what every pass cost before planning was incremental.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import func, insert, select, text

from upad.db import Database
from upad.db.models import Frame, Job, PlanCursor, Product, Provenance
from upad.flow.provenance import code_version
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.flow.step import all_steps
from upad.settings import Settings

FILTERS = ("uJAVA", "J0378", "J0395", "J0410", "J0430", "gSDSS", "J0515", "rSDSS", "J0660", "iSDSS", "J0861",
           "zSDSS")
START = dt.date(2015, 1, 1)


def _night(k: int) -> str:
    return (START + dt.timedelta(days=k)).isoformat()


def _frame_row(fid: int, night: str, seq: int, obs_type: str, filt: str | None, exptime: float) -> dict:
    d = dt.datetime.fromisoformat(night) + dt.timedelta(hours=20, seconds=60 * seq)
    name = f"mini-{d:%Y%m%dT%H%M%S}-{seq:04d}.fits.fz"
    return dict(id=fid, filename=name, path=f"raw/{night}/{name}", original_path="-", size_bytes=1,
                sha256=hashlib.sha256(name.encode()).hexdigest(), instrument="mini", telescope="JAST80",
                detector="mini", header_convention="OAJ", layout="readout", naxis1=1056, naxis2=1056, n_detectors=1,
                obs_type=obs_type, filter=filt, read_mode="MODE_5", exptime=exptime, date_obs=d, mjd=60000.0,
                night=night, object=None if obs_type != "science" else "TILE-00001", ra=120.0 if filt else None,
                dec=40.0 if filt else None, airmass=1.1, tile_id=None, header={}, state="ingested", valid=True,
                qc_status="ok", qc_reasons=[], ingested_at=d)


def _night_frames(night: str, first_id: int, n: int) -> list[dict]:
    rows, seq = [], 0
    for _ in range(5):
        rows.append(_frame_row(first_id + seq, night, seq, "bias", None, 0.0)); seq += 1
    for _ in range(5):
        rows.append(_frame_row(first_id + seq, night, seq, "dark", None, 60.0)); seq += 1
    for f in FILTERS:
        for _ in range(3):
            rows.append(_frame_row(first_id + seq, night, seq, "flat-dome", f, 5.0)); seq += 1
    while seq < n:
        rows.append(_frame_row(first_id + seq, night, seq, "science", FILTERS[seq % len(FILTERS)], 60.0)); seq += 1
    return rows


def populate(db: Database, n_frames: int, per_night: int) -> dict:
    """The processed archive, written with bulk inserts (see the module documentation)."""
    t0 = time.perf_counter()
    n_nights = max(1, n_frames // per_night)
    versions = {st.name: code_version(st.version) for st in all_steps()}
    fid, pid, jid = 1, 1, 1
    frames, provs, products, jobs = [], [], [], []
    now = dt.datetime(2026, 1, 1)

    def product(step: str, kind: str, key: str, night: str, ctx: dict, ga=None, gu=None) -> None:
        nonlocal pid, jid
        prov = hashlib.sha256(f"{step}/{key}".encode()).hexdigest()
        provs.append(dict(id=prov, step=step, unit_key=key, code_version=versions.get(step, "-"), config_hash="-",
                          config={}, context=ctx, created_at=now))
        products.append(dict(id=pid, provenance_id=prov, step=step, kind=kind, unit_key=key, state="complete",
                             is_current=True, created_at=now, job_id=jid, files=[], meta={}, context=ctx,
                             night=night, qc_status="ok", good_after=ga, good_until=gu, is_bad=False))
        jobs.append(dict(id=jid, provenance_id=prov, step=step, unit_key=key, state="done", memory_class="small",
                         priority=100, created_at=now, updated_at=now, n_failures=0, max_attempts=3, next_try_at=now,
                         product_id=pid))
        pid += 1
        jid += 1

    def flush(force: bool = False) -> None:
        if not force and len(frames) < 50_000:
            return
        with db.engine.begin() as conn:
            for table, rows in ((Frame, frames), (Provenance, provs), (Product, products), (Job, jobs)):
                for i in range(0, len(rows), 5000):
                    conn.execute(insert(table), rows[i:i + 5000])
        for rows in (frames, provs, products, jobs):
            rows.clear()

    base = {"instrument": "mini", "telescope": "JAST80", "detector": "mini", "layout": "readout",
            "read_mode": "MODE_5"}
    for k in range(n_nights):
        night = _night(k)
        ga = dt.datetime.fromisoformat(night) + dt.timedelta(hours=12)
        gu = ga + dt.timedelta(days=1)
        rows = _night_frames(night, fid, per_night)
        fid += len(rows)
        frames.extend(rows)
        prefix = "mini/MODE_5/readout"
        for kind, step in (("bias", "master_bias"), ("dark", "master_dark"), ("bpm", "bad_pixel_mask")):
            product(step, step, f"{prefix}/{night}", night, {**base, "night": night, "kind": kind}, ga, gu)
        for f in FILTERS:
            product("master_flat", "master_flat", f"{prefix}/{f}/dome/{night}", night,
                    {**base, "night": night, "kind": "flat", "filter": f, "flat_type": "dome"}, ga, gu)
        for r in rows:
            if r["obs_type"] == "science":
                product("reduce", "reduced_frame", f"{night}/{r['filename'].split('.')[0]}", night,
                        {"night": night, "filter": r["filter"], "frame_id": r["id"]})
        flush()
    flush(force=True)
    if db.backend == "postgresql":
        with db.engine.begin() as conn:
            for table in ("frames", "products", "jobs"):  # explicit ids were inserted: move the sequences on
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            for table in ("frames", "products", "provenance", "jobs"):
                conn.execute(text(f"ANALYZE {table}"))
    with db.session() as s:
        counts = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in (Frame, Product, Job)}
    return {"nights": n_nights, "rows": counts, "populate_s": round(time.perf_counter() - t0, 1),
            "next_frame_id": fid, "last_night": _night(n_nights - 1)}


def set_cursors(sched: Scheduler, db: Database) -> None:
    """Every step's plan cursor at the end of the journal, under the current configuration (as after a pass)."""
    with db.session() as s:
        for st in all_steps():
            s.merge(PlanCursor(step=st.name, change_id=0, config_hash=sched.config_for(st).hash(),
                               code_version=code_version(st.version)))


def ingest_night(db: Database, night: str, first_id: int, n: int) -> None:
    """Register a new night through the ORM (the change journal records every frame, as ``upad ingest`` does)."""
    rows = _night_frames(night, first_id, n)
    with db.session() as s:
        for r in rows:
            r.pop("id")
            s.add(Frame(**r))


def measure(db: Database, root: Path, n_frames: int, per_night: int, full: bool) -> dict:
    db.upgrade()
    info = populate(db, n_frames, per_night)
    settings = Settings(root=root, db_url=db.url)
    settings.create_layout()
    sched = Scheduler(db, settings, None, options=SchedulerOptions())
    set_cursors(sched, db)
    new_night = (dt.date.fromisoformat(info["last_night"]) + dt.timedelta(days=1)).isoformat()
    ingest_night(db, new_night, info["next_frame_id"], per_night)
    out = {**info, "db": db.backend, "new_night": new_night, "new_frames": per_night}
    t0 = time.perf_counter()
    sched = Scheduler(db, settings, None, options=SchedulerOptions())
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        report = prof.runcall(sched.plan)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    else:
        report = sched.plan()
    out["first_pass_s"] = round(time.perf_counter() - t0, 3)
    out["first_pass"] = {k: v for k, v in report.by_status().items()}
    out["jobs_created"] = report.created
    out["scopes"] = {k: v.describe() for k, v in report.scopes.items()}
    t0 = time.perf_counter()
    sched.plan()
    out["second_pass_s"] = round(time.perf_counter() - t0, 3)
    if full:
        t0 = time.perf_counter()
        sched.plan(full=True)
        out["full_pass_s"] = round(time.perf_counter() - t0, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames already in the archive")
    ap.add_argument("--night-frames", type=int, default=250, help="frames per night (and in the new night)")
    ap.add_argument("--db", action="append", default=[], help="a PostgreSQL URL (repeatable); SQLite always runs")
    ap.add_argument("--full", action="store_true", help="also time a full pass (slow on a large archive)")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    pg = args.db or ([os.environ["UPAD_TEST_DATABASE_URL"]] if os.environ.get("UPAD_TEST_DATABASE_URL") else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.sqlite'}")
        results.append(measure(db, Path(tmp) / "root-sqlite", args.frames, args.night_frames, args.full))
        db.dispose()
        for url in pg:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = Database(url)
            with admin.engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            sep = "&" if "?" in url else "?"
            db = Database(f"{url}{sep}options=-csearch_path%3D{schema}")
            try:
                results.append(measure(db, Path(tmp) / f"root-{schema}", args.frames, args.night_frames, args.full))
            finally:
                db.dispose()
                with admin.engine.begin() as conn:
                    conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()
    machine = f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=str))
    print(f"# planning benchmark on {machine}")
    print("| database | frames in archive | new night | first pass (s) | second pass (s) | jobs created |"
          + (" full pass (s) |" if args.full else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.full else ""))
    for r in results:
        print(f"| {r['db']} | {r['rows']['frames'] - r['new_frames']} | {r['new_frames']} frames | "
              f"{r['first_pass_s']} | {r['second_pass_s']} | {r['jobs_created']} |"
              + (f" {r['full_pass_s']} |" if args.full else ""))
    for r in results:
        print(f"{r['db']}: populate {r['populate_s']} s; scopes {r['scopes']}; first pass {r['first_pass']}")


if __name__ == "__main__":
    sys.exit(main())
