"""Declared wiring: step order and readiness from the declarations, incremental planning, typed configuration
recorded with the job's provenance (a job is re-planned when its configuration changed, never run under its old id)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
from conftest import add_frames
from sqlalchemy import select

from upad.config import StepConfig, param
from upad.db.models import FlowChange, Frame, Job, PlanWaiting, Product
from upad.execution import InlineExecutor
from upad.flow.invalidate import flag_frame
from upad.flow.queries import PlanContext
from upad.flow.scheduler import PlanReport, Scheduler, SchedulerOptions
from upad.flow.step import (
    FRAME,
    Input,
    InputRef,
    Output,
    PrerequisiteInput,
    Step,
    StepOutput,
    Unit,
    step_order,
)

NIGHTS = ["2025-03-01", "2025-03-02"]
TOY = ("toy_a", "toy_b", "toy_c")


def make(settings, db, steps=TOY, **opts):
    options = SchedulerOptions(steps=steps, poll_seconds=0.05, min_replan_seconds=0.0, backoff_seconds=0.05, **opts)
    return Scheduler(db, settings, InlineExecutor(), options=options)


# ------------------------------------------------------------------------------------------------- declarations
def _step(name, kind, inputs=(), cls_plan=None):
    attrs = {"name": name, "product_kind": kind, "inputs": tuple(inputs), "outputs": (Output("x"),),
             "plan": cls_plan or (lambda self, ctx, config: []), "run": lambda self, task: StepOutput()}
    return type(f"S_{name}", (Step,), attrs)()


def test_step_order_follows_the_declarations_not_the_names():
    a = _step("zz_first", "k1", [Input("raw", FRAME)])
    b = _step("mm_second", "k2", [PrerequisiteInput("cal", "k1")])
    c = _step("aa_third", "k3", [Input("x", "k2"), Input("y", "k1", minimum=0)])
    assert [s.name for s in step_order([c, b, a])] == ["zz_first", "mm_second", "aa_third"]
    # the built-in steps: the reduction after every master it reads, the bad-pixel mask after darks and flats
    from upad.flow.step import all_steps

    names = [s.name for s in all_steps()]
    for before, after in [("master_bias", "master_dark"), ("master_dark", "master_flat"),
                          ("master_flat", "bad_pixel_mask"), ("master_flat", "master_fringe"),
                          ("master_illumination", "reduce"), ("bad_pixel_mask", "reduce")]:
        assert names.index(before) < names.index(after)


def test_a_cycle_in_the_declarations_is_an_error():
    a = _step("a", "ka", [Input("x", "kb")])
    b = _step("b", "kb", [Input("x", "ka")])
    with pytest.raises(ValueError, match="cycle"):
        step_order([a, b])


@dataclass(frozen=True)
class _OnOff(StepConfig):
    use_extra: bool = param(True, doc="use the extra input")
    n_min: int = param(2, doc="fewest frames", bounds=(0, 100))


def test_readiness_counts_kinds_and_switches_from_declarations(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 3, NIGHTS[:1])

    def plan(self, ctx, config):
        frames = ctx.frames()
        yield Unit(key="all", inputs=[InputRef("frame", f.id, "raw") for f in frames], context={"night": NIGHTS[0]})
        yield Unit(key="one", inputs=[InputRef("frame", frames[0].id, "raw"), InputRef("frame", frames[1].id,
                                                                                        "extra")],
                   context={"night": NIGHTS[0]})

    step = _step("wired", "wired_kind", [Input("raw", FRAME, minimum="n_min", maximum=None),
                                         Input("extra", FRAME, minimum=0, enabled_by="use_extra")], plan)
    type(step).config_class = _OnOff
    sched = make(settings, db, steps=())
    cfg = sched._configs["wired"] = _OnOff()
    with db.session() as s:
        units = list(step.plan(PlanContext(s), cfg))
        planned = {p.unit.key: p for p in sched._plan_step(s, step, units, PlanReport(), dry_run=True,
                                                            force=False, since=None)}
    assert planned["all"].status == "would-run"
    assert planned["one"].status == "waiting"
    assert "needs at least 2 raw input(s) (raw_frame), has 1" in planned["one"].reason
    # a switched-off connection drops its inputs (they do not enter the provenance)
    with db.session() as s:
        units = list(step.plan(PlanContext(s), cfg))
        sched._configs["wired"] = _OnOff(use_extra=False, n_min=1)
        planned = {p.unit.key: p for p in sched._plan_step(s, step, units, PlanReport(), dry_run=True,
                                                            force=False, since=None)}
    assert planned["one"].status == "would-run"
    assert [r.role for r in planned["one"].unit.inputs] == ["raw"]
    # an invalid frame makes its unit wait, with the reason
    with db.session() as s:
        flag_frame(s, str(ids[0]), invalid=True, reason="test")
    units = [Unit(key="bad", inputs=[InputRef("frame", i, "raw") for i in ids], context={"night": NIGHTS[0]})]
    with db.session() as s:
        planned = sched._plan_step(s, step, units, PlanReport(), dry_run=True, force=False, since=None)
    assert planned[0].status == "waiting" and "flagged invalid" in planned[0].reason


def test_an_undeclared_role_is_a_declaration_error(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 1, NIGHTS[:1])
    step = _step("undeclared", "u_kind", [Input("raw", FRAME)])
    sched = make(settings, db, steps=())
    sched._configs["undeclared"] = StepConfig()
    with db.session() as s:
        fid = s.scalar(select(Frame.id))
        with pytest.raises(ValueError, match="does not declare"):
            sched._plan_step(s, step, [Unit(key="k", inputs=[InputRef("frame", fid, "oops")])], PlanReport(),
                             dry_run=True, force=False, since=None)


# ------------------------------------------------------------------------------------------------- incremental
def test_planning_is_incremental_by_night(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 6, NIGHTS)
    sched = make(settings, db, journal_overlap_seconds=0.0)  # no re-reading of the last minutes' changes
    sched.run(until_idle=True)
    first = sched.plan()
    assert all(not sc.full for sc in first.scopes.values()), first.scopes
    assert first.units == [] or all(u.status != "would-run" for u in first.units)
    # a new night: the next pass looks at that night only, and makes its products
    add_frames(db, settings.root, 3, ["2025-03-05"], start_id=100)
    report = sched.plan()
    assert report.scopes["toy_a"].nights == frozenset({"2025-03-05"})
    assert {u.unit.context["night"] for u in report.units} == {"2025-03-05"}
    assert report.by_status()["toy_a"] == {"would-run": 3}
    sched.run(until_idle=True)
    with db.session() as s:
        nights = {p.context["night"] for p in s.scalars(select(Product).where(Product.step == "toy_c",
                                                                             Product.is_current.is_(True)))}
        assert nights == {*NIGHTS, "2025-03-05"}
        assert s.scalar(select(PlanWaiting).where(PlanWaiting.step.in_(TOY))) is None
    # flagging a frame journals it: its night is re-planned and its products rebuilt without it
    with db.session() as s:
        fid = s.scalar(select(Product.context).where(Product.step == "toy_a", Product.is_current.is_(True))
                       .order_by(Product.id))["frame"]
        flag_frame(s, str(fid), invalid=True, reason="test")
        assert s.scalar(select(FlowChange).where(FlowChange.subject == "frame", FlowChange.subject_id == fid,
                                                 FlowChange.event == "invalid")) is not None
    report = sched.plan()
    assert report.scopes["toy_b"].nights == frozenset({NIGHTS[0]})
    assert report.by_status()["toy_b"] == {"would-run": 1}


def test_dry_run_plans_everything_and_writes_nothing(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 4, NIGHTS)
    sched = make(settings, db)
    sched.run(until_idle=True)
    report = sched.plan(dry_run=True)
    assert report.scopes["toy_a"].full
    assert report.by_status()["toy_a"] == {"current": 4}


# ------------------------------------------------------------------------------------------------- configuration
def test_a_job_planned_under_another_configuration_is_replanned(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    toml = settings.root / "upad.toml"
    toml.write_text("[steps.toy_a]\nscale = 1\n")
    planner = make(settings, db, steps=("toy_a",))
    assert planner.plan().created == 2
    with db.session() as s:
        old = {j.id: j.provenance_id for j in s.scalars(select(Job))}
    # the configuration changes before the jobs run: they are cancelled, never run under their old id
    toml.write_text("[steps.toy_a]\nscale = 7\n")
    os.utime(toml, (time.time() + 5, time.time() + 5))
    runner = make(settings, db, steps=("toy_a",))
    runner.run(until_idle=True)
    with db.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        for jid in old:
            assert jobs[jid].state == "cancelled"
            assert "configuration changed" in jobs[jid].error
        done = [j for j in jobs.values() if j.state == "done"]
        assert len(done) == 2 and not {j.provenance_id for j in done} & set(old.values())
        values = [p.meta["value"] for p in s.scalars(select(Product).where(Product.step == "toy_a"))]
        frames = [p.context["frame"] for p in s.scalars(select(Product).where(Product.step == "toy_a"))]
    assert sorted(values) == sorted(7 * f for f in frames)
    # the same scheduler object: the file changes between planning and claiming
    toml.write_text("[steps.toy_a]\nscale = 9\n")
    os.utime(toml, (time.time() + 10, time.time() + 10))
    payloads = planner.claim(10)
    assert payloads == []
    with db.session() as s:
        assert s.scalar(select(Job).where(Job.state == "queued")) is None


def test_a_non_critical_change_keeps_jobs_and_ids(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    toml = settings.root / "upad.toml"
    planner = make(settings, db, steps=("toy_a",))
    planner.plan()
    toml.write_text("[steps.toy_a]\nsleep = 0.01\n")  # not critical
    runner = make(settings, db, steps=("toy_a",))
    runner.run(until_idle=True)
    with db.session() as s:
        assert {j.state for j in s.scalars(select(Job))} == {"done"}


def test_the_journal_is_pruned_once_read(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 4, NIGHTS)
    sched = make(settings, db, journal_keep_days=0.0)
    sched.run(until_idle=True)
    with db.session() as s:
        n_before = s.query(FlowChange).count()
    assert n_before > 0
    assert sched.prune_journal(force=True) > 0
    with db.session() as s:
        assert s.query(FlowChange).count() < n_before
    # planning goes on from the cursors: a new night is still picked up
    add_frames(db, settings.root, 2, ["2025-03-07"], start_id=50)
    assert sched.plan().by_status()["toy_a"] == {"would-run": 2}
