#!/usr/bin/env python
"""Benchmark of the processing flow: scheduler overhead per job, and local pool vs Dask LocalCluster throughput.

Usage::

    python bench/bench_scheduler.py [--jobs 10000] [--pool-jobs 2000] [--real-jobs 40] [--workers 2]

* overhead: N trivial jobs (a step that writes nothing) through the in-process executor on SQLite; the time per job
  is all scheduler work (planning, provenance, claiming, recording) since the jobs themselves do nothing;
* throughput: trivial jobs and "real-size" jobs (a sigma-clipped mean of 5 frames of 2048 × 2048 float32, ≈ the work
  of one block of a master calibration) on the local process pool and on a Dask LocalCluster with the same number
  of workers; the ratio local/Dask is reported.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from upad.config import StepConfig, param
from upad.db import Database
from upad.db.models import Frame
from upad.execution import InlineExecutor, LocalExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.flow.step import FRAME, Input, InputRef, Output, OutputFile, Step, StepOutput, Unit, register_step
from upad.settings import Settings


@dataclass(frozen=True)
class BenchConfig(StepConfig):
    size: int = param(0, doc="Side of the frames combined by a job (0: a trivial job)", bounds=(0, 8192))


@register_step
class BenchStep(Step):
    name = "bench_job"
    product_kind = "bench"
    area = "tmp"
    config_class = BenchConfig
    inputs = (Input("raw", FRAME),)
    outputs = (Output("mean", optional=True),)

    def plan(self, ctx, config):
        for f in ctx.frames(valid=None):
            yield Unit(key=f"{f.night}/{f.id}", inputs=[InputRef("frame", f.id, "raw")], context={"night": f.night})

    def run(self, task):
        size = task.config.size
        if not size:
            return StepOutput(meta={"ok": True})
        rng = np.random.default_rng(task.job_id)
        stack = rng.normal(100.0, 5.0, (5, size, size)).astype(np.float32)
        med = np.median(stack, axis=0)
        std = 1.4826 * np.median(np.abs(stack - med), axis=0)
        good = np.abs(stack - med) < 3 * std
        mean = np.where(good, stack, 0).sum(axis=0) / np.maximum(good.sum(axis=0), 1)
        out = task.stage("mean.npy")
        np.save(out, mean.astype(np.float32))
        return StepOutput(files=[OutputFile("mean", str(out), self.final_path(task, "mean.npy"))],
                          meta={"mean": float(mean.mean())})


def setup(tmp: Path, n: int, size: int) -> tuple[Settings, Database]:
    db = Database(f"sqlite:///{tmp / 'bench.sqlite'}")
    db.upgrade()
    settings = Settings(root=tmp / "root", db_url=db.url)
    settings.create_layout()
    (settings.root / "upad.toml").write_text(f"[steps.bench_job]\nsize = {size}\n")
    t0 = dt.datetime(2025, 3, 1, 20)
    rows = [dict(filename=f"b{k:06d}.fits", path=f"raw/b{k:06d}.fits", original_path="-", size_bytes=0,
                 sha256=f"{k:064x}", instrument="mini", telescope="JAST80", header_convention="OAJ", layout="readout",
                 naxis1=1, naxis2=1, n_detectors=1, obs_type="bias", exptime=0.0, date_obs=t0 + dt.timedelta(seconds=k),
                 mjd=60735.0, night="2025-03-01", header={}, state="ingested", valid=True, qc_status="ok",
                 qc_reasons=[]) for k in range(n)]
    with db.engine.begin() as conn:
        for i in range(0, n, 1000):
            conn.execute(insert(Frame), rows[i:i + 1000])
    return settings, db


def run_once(n: int, size: int, executor_kind: str, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings, db = setup(Path(tmp), n, size)
        if executor_kind == "inline":
            ex = InlineExecutor()
        elif executor_kind == "local":
            ex = LocalExecutor(workers)
        else:
            from upad.execution.dask import DaskExecutor

            ex = DaskExecutor(workers=workers)
        sched = Scheduler(db, settings, ex, options=SchedulerOptions(steps=["bench_job"], poll_seconds=0.05))
        t0 = time.perf_counter()
        counts = sched.run(until_idle=True)
        wall = time.perf_counter() - t0
        ex.close()
        db.dispose()
    assert counts.get("done") == n, counts
    return {"executor": executor_kind, "jobs": n, "size": size, "workers": workers, "wall_s": round(wall, 2),
            "ms_per_job": round(1000 * wall / n, 2), "jobs_per_s": round(n / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000, help="trivial jobs for the overhead measurement")
    ap.add_argument("--pool-jobs", type=int, default=2000, help="trivial jobs for local vs Dask")
    ap.add_argument("--real-jobs", type=int, default=40, help="real-size jobs for local vs Dask")
    ap.add_argument("--real-size", type=int, default=2048, help="frame side of a real-size job")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [run_once(args.jobs, 0, "inline", 1)]
    for size, n in ((0, args.pool_jobs), (args.real_size, args.real_jobs)):
        for kind in ("local", "dask"):
            results.append(run_once(n, size, kind, args.workers))
    machine = f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"# scheduler benchmark on {machine}")
    print("| executor | jobs | job size | workers | wall (s) | ms/job | jobs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        size = "trivial" if not r["size"] else f"5×{r['size']}² clipped mean"
        print(f"| {r['executor']} | {r['jobs']} | {size} | {r['workers']} | {r['wall_s']} | {r['ms_per_job']} | "
              f"{r['jobs_per_s']} |")
    loc = {r["size"]: r for r in results if r["executor"] == "local"}
    dsk = {r["size"]: r for r in results if r["executor"] == "dask"}
    for size in loc:
        print(f"local pool / Dask wall-time ratio ({'trivial' if not size else 'real-size'} jobs): "
              f"{loc[size]['wall_s'] / dsk[size]['wall_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
