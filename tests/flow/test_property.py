"""Property test: random interleavings of new frames, job outcomes, flags and scheduler crashes never run a step
twice for the same inputs, never run two attempts of a job at once, and always converge to the right products."""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import tempfile
from pathlib import Path

from conftest import add_frames
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from upad.db import Database
from upad.db.models import Frame, Job, Product, utcnow
from upad.execution import Executor, lost_outcome
from upad.flow.invalidate import flag_frame
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.flow.worker import execute_task
from upad.settings import Settings

NIGHTS = ["2025-03-01", "2025-03-02"]


class ManualExecutor(Executor):
    """Holds submitted jobs until the test decides how each one ends."""

    name = "manual"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inflight: list[tuple[cf.Future, dict]] = []
        self.executions: list[str] = []

    @property
    def capacity(self) -> int:
        return 3

    def submit(self, payload):
        fut: cf.Future = cf.Future()
        # no job may start while another attempt of it is running, nor once its product exists
        assert all(p["job_id"] != payload["job_id"] for _, p in self.inflight)
        with self.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Product)
                            .where(Product.provenance_id == payload["provenance_id"])) == 0
        self.inflight.append((fut, payload))
        return fut

    def finish(self, index: int, how: str) -> None:
        fut, payload = self.inflight.pop(index % len(self.inflight))
        if how == "ok":
            self.executions.append(payload["provenance_id"])
            fut.set_result(execute_task(payload))
        elif how == "lost":
            fut.set_result(lost_outcome(payload, "worker process died: test"))
        else:
            fut.set_result({"job_id": payload["job_id"], "attempt_id": payload["attempt_id"], "ok": False,
                            "transient": how == "transient", "error": f"{how} failure", "log": ""})

    def wait(self, handles, timeout):
        return [h for h in handles if h.done()]

    def outcome(self, handle, payload):
        return handle.result()


actions = st.lists(st.one_of(
    st.tuples(st.just("tick"), st.integers(0, 0)),
    st.tuples(st.just("finish"), st.integers(0, 10), st.sampled_from(["ok", "ok", "ok", "transient", "fatal", "lost"])),
    st.tuples(st.just("crash"), st.integers(0, 0)),
    st.tuples(st.just("add"), st.integers(1, 2)),
    st.tuples(st.just("flag"), st.integers(0, 20)),
), min_size=5, max_size=40)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=actions)
def test_random_interleavings(toy_steps, ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = Database(f"sqlite:///{root / 'p.sqlite'}")
        db.upgrade()
        settings = Settings(root=root / "root", db_url=db.url)
        settings.create_layout()
        add_frames(db, settings.root, 3, NIGHTS)
        n_frames = 3
        options = SchedulerOptions(steps=("toy_a", "toy_b", "toy_c"), backoff_seconds=0.0, max_attempts=3)
        ex = ManualExecutor(db)
        sched = Scheduler(db, settings, ex, options=options)
        handles: dict[cf.Future, dict] = {}

        def record_done():
            done = [(f, p) for f, p in list(handles.items()) if f.done()]
            for f, _ in done:
                handles.pop(f)
            sched.record([ex.outcome(f, p) for f, p in done])

        for op in ops:
            kind = op[0]
            if kind == "tick":
                sched.reclaim()
                sched.plan()
                for payload in sched.claim(ex.capacity - len(ex.inflight)):
                    handles[ex.submit(payload)] = payload
            elif kind == "finish" and ex.inflight:
                ex.finish(op[1], op[2])
                record_done()
            elif kind == "crash":
                # the scheduler dies: in-flight work is never recorded; time passes beyond the leases
                ex.inflight.clear()
                handles.clear()
                with db.session() as s:
                    s.execute(update(Job).where(Job.state == "running")
                              .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
                sched = Scheduler(db, settings, ex, options=options)
            elif kind == "add":
                add_frames(db, settings.root, op[1], NIGHTS, start_id=100 + n_frames)
                n_frames += op[1]
            elif kind == "flag":
                with db.session() as s:
                    valid = [f for (f,) in s.execute(select(Frame.id).where(Frame.valid.is_(True)).order_by(Frame.id))]
                    if len(valid) > 2:
                        flag_frame(s, str(valid[op[1] % len(valid)]), invalid=True, reason="test")
            # invariants at every step
            with db.session() as s:
                current = s.execute(select(Product.step, Product.unit_key, func.count())
                                    .where(Product.is_current.is_(True))
                                    .group_by(Product.step, Product.unit_key)).all()
                assert all(n == 1 for *_, n in current)
            assert len(ex.executions) == len(set(ex.executions)), "a provenance was executed twice"

        # drain: everything finishes well (failed jobs stay failed); the result is consistent
        for _ in range(200):
            sched.reclaim()
            sched.plan()
            for payload in sched.claim(ex.capacity - len(ex.inflight)):
                handles[ex.submit(payload)] = payload
            if not ex.inflight:
                break
            while ex.inflight:
                ex.finish(0, "ok")
            record_done()
        assert not ex.inflight
        assert len(ex.executions) == len(set(ex.executions))
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(("queued", "running")))) == 0
            failed_units = {k for (k,) in s.execute(select(Job.unit_key).where(Job.state == "failed"))}
            a = {k: m["value"] for k, m in s.execute(select(Product.unit_key, Product.meta).where(
                Product.step == "toy_a", Product.is_current.is_(True)))}
            valid = {f: n for f, n in s.execute(select(Frame.id, Frame.night).where(Frame.valid.is_(True)))}
            # no current product is built from an invalid frame or a stale product, and values add up
            for prod in s.scalars(select(Product).where(Product.is_current.is_(True))):
                inputs = prod.provenance.inputs
                for ref in inputs:
                    if ref.input_kind == "frame":
                        assert ref.input_id in valid
                    else:
                        src = s.get(Product, ref.input_id)
                        assert src.state == "complete" and src.is_current
                if prod.step == "toy_b":
                    parts = [s.get(Product, r.input_id).meta["value"] for r in inputs]
                    assert prod.meta["value"] == sum(parts)
        # every valid frame has its toy_a unless its job failed for good
        for fid, night in valid.items():
            key = f"{night}/frame{fid}"
            assert key in a or key in failed_units
        db.dispose()
