"""The scheduler: finds what is ready, creates jobs, dispatches them, records results, loops.

The database is the single source of truth. One loop iteration:

1. **reclaim** jobs whose lease expired (their scheduler or worker died) → re-queued, the attempt marked ``lost``;
2. **plan**: every step lists its units; a ready unit without a current product and without a job for its
   provenance id gets one (``INSERT … ON CONFLICT DO NOTHING``: two schedulers never create the same job twice);
3. **claim** queued jobs up to the executor's free capacity (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL,
   ``BEGIN IMMEDIATE`` on SQLite): the job becomes ``running`` under this scheduler's lease and gets an attempt;
4. **dispatch** the payloads to the executor; **heartbeat** (extend the leases of our running jobs);
5. **record** outcomes: the staged files are renamed into the archive and the product is registered in the same
   transaction that closes the job; failures are retried with backoff when transient, recorded otherwise.

Products are immutable: files live under a directory named by the short provenance id, so a new version never
overwrites an old one. Registering a new current product marks the products built from the one it supersedes as
stale, so the flow rebuilds them with the new input.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from upad._proc import pid_alive
from upad.config import StepConfig, load_config_document
from upad.db.models import (
    Attempt,
    FlowChange,
    Frame,
    Job,
    PlanCursor,
    PlanWaiting,
    Product,
    Provenance,
    ProvenanceInput,
    Run,
    utcnow,
)
from upad.db.session import Database
from upad.execution import Executor
from upad.flow.changes import record as record_changes
from upad.flow.faults import classify, is_outage
from upad.flow.invalidate import cascade_stale
from upad.flow.provenance import code_version, provenance_id, short
from upad.flow.queries import PLANNABLE_DATES, PlanContext, Scope, unplannable_frames
from upad.flow.step import FRAME, MEMORY_CLASSES, InputRef, Step, Unit, all_steps, step_configs
from upad.settings import Settings

log = logging.getLogger("upad.scheduler")

_CHUNK = 500


@dataclass
class SchedulerOptions:
    """How the scheduler behaves (not part of any product's provenance)."""

    lease_seconds: float = 60.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 0.5
    replan_seconds: float = 10.0
    min_replan_seconds: float = 1.0
    max_attempts: int = 3
    backoff_seconds: float = 2.0
    steps: Sequence[str] | None = None
    memory_budget_gb: float | None = None
    prefetch: int = 2
    #: journal entries of the last this-many seconds are read again at every pass (late commits)
    journal_overlap_seconds: float = 120.0
    #: plan every unit on the first pass of a run (``upad run --full-plan``)
    full_first_pass: bool = False
    #: journal entries read by every step are kept this long, then pruned
    journal_keep_days: float = 7.0
    #: a daemon queues its blocked jobs again this often (the cause may have gone); ``None``: only at a new run, when
    #: the file a job waits for appears, or by ``upad retry``
    blocked_retry_seconds: float | None = 900.0
    #: no new job starts while the data root's file system has less free space than this (MB); the run pauses, says
    #: why, and resumes when space is freed
    min_free_mb: float = 200.0
    #: how long the loop rides out an unreachable database (reconnecting with back-off) before it gives up (s)
    db_outage_seconds: float = 900.0


@dataclass
class PlannedUnit:
    step: str
    unit: Unit
    provenance_id: str | None
    status: str  # would-run | waiting | queued | running | done | failed | cancelled | current
    reason: str = ""


@dataclass
class PlanReport:
    units: list[PlannedUnit] = field(default_factory=list)
    created: int = 0
    scopes: dict[str, Scope] = field(default_factory=dict)

    def by_status(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for u in self.units:
            out[u.step][u.status] = out[u.step].get(u.status, 0) + 1
        return dict(out)


def _insert(session: Session, table: Any) -> Any:
    """A dialect insert that supports ``on_conflict_do_nothing``."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)



def _owner_dead(owner: str | None) -> bool:
    """True when a lease owner ``host:pid:token`` ran on this host and its process is gone."""
    if not owner:
        return False
    try:
        host, pid, _ = owner.rsplit(":", 2)
        return host == socket.gethostname() and not pid_alive(int(pid))
    except ValueError:
        return False


class Scheduler:
    """Drives the processing flow against one database with one executor."""

    def __init__(self, db: Database, settings: Settings, executor: Executor | None, *,
                 options: SchedulerOptions | None = None, run_name: str | None = None,
                 command: str = "upad run", on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.executor = executor
        self.options = options or SchedulerOptions()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.run_name = run_name
        self._given_name = run_name
        self.command = command
        self.run_id: int | None = None
        self.on_event = on_event or (lambda kind, info: None)
        self.user_config: dict[str, Any] = {}
        self._configs: dict[str, StepConfig] = {}
        self._config_mtime: float | None = None
        # modules that define the registered steps, so that any worker can import them
        self.plugins = sorted({type(st).__module__ for st in all_steps()})
        self._steps = [s for s in all_steps() if not self.options.steps or s.name in self.options.steps]
        if self.options.steps:
            unknown = set(self.options.steps) - {s.name for s in all_steps()}
            if unknown:
                from upad.errors import UpadError

                raise UpadError(f"unknown step(s) {sorted(unknown)}",
                                hint=f"known steps: {', '.join(s.name for s in all_steps())}")
        self._load_configs()
        self._last_prune = -1e9
        self._stop = False
        self._events: list[tuple[str, dict[str, Any]]] = []
        self.counts: Counter[str] = Counter()
        self._disk_paused = False
        self._recorded_steps: set[str] = set()  # steps with products recorded in this run (their final hook)

    # ------------------------------------------------------------------------------------------------------ runs
    def start_run(self) -> int:
        # a scheduler object may run several times (a second run gets its own name unless one was given)
        stamp = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%f}"[:-3]
        name = self._given_name or f"run-{stamp}-{self.owner.rsplit(':', 1)[1]}"
        with self.db.session() as s:
            run = Run(name=name, command=self.command, host=socket.gethostname(), pid=os.getpid(),
                      executor=self.executor.describe() if self.executor else "none", state="running")
            s.add(run)
            s.flush()
            self.run_id, self.run_name = run.id, name
        return self.run_id

    def end_run(self, state: str) -> None:
        if self.run_id is None:
            return
        with self.db.session() as s:
            run = s.get(Run, self.run_id)
            run.state, run.ended_at = state, utcnow()
            run.summary = dict(self.counts)

    # ------------------------------------------------------------------------------------------------ planning
    def config_for(self, step: Step) -> StepConfig:
        return self._configs[step.name]

    def _load_configs(self) -> None:
        """Read ``<root>/upad.toml`` and build every step's typed configuration (an error names the parameter)."""
        self.user_config = load_config_document(self.settings.root)
        self._configs = step_configs(self.user_config)
        self._config_mtime = _mtime(self.settings.root / "upad.toml")

    def reload_config(self) -> bool:
        """Re-read ``upad.toml`` when it changed since it was read (a daemon picks up a new configuration: jobs
        planned under the old one are re-planned, never run under their old provenance id). An invalid new file is
        reported and the configuration in use is kept."""
        if _mtime(self.settings.root / "upad.toml") == self._config_mtime:
            return False
        previous = (self.user_config, self._configs, self._config_mtime)
        try:
            self._load_configs()
        except Exception as exc:  # noqa: BLE001 - a daemon keeps running with the configuration it has
            self.user_config, self._configs, self._config_mtime = previous
            self._config_mtime = _mtime(self.settings.root / "upad.toml")
            log.error("upad.toml changed but is not valid, keeping the configuration in use: %s", exc)
            self.on_event("config_error", {"error": str(exc)})
            return False
        log.info("upad.toml changed: configuration reloaded")
        self.on_event("config_reloaded", {})
        return True

    @staticmethod
    def input_identities(s: Session, refs: Iterable[InputRef]) -> dict[tuple[str, int], str]:
        """Stable identities of inputs: a frame's SHA-256, a product's provenance id."""
        return {k: v[0] for k, v in Scheduler._input_info(s, refs).items()}

    @staticmethod
    def _input_info(s: Session, refs: Iterable[InputRef]) -> dict[tuple[str, int], tuple[str, str, str]]:
        """``(kind, id) -> (identity, input kind, why it is not usable or "")`` of every input."""
        refs = set(refs)
        frame_ids = sorted({r.id for r in refs if r.kind == "frame"})
        product_ids = sorted({r.id for r in refs if r.kind == "product"})
        out: dict[tuple[str, int], tuple[str, str, str]] = {}
        for chunk in _chunks(frame_ids):
            for i, sha, valid, name in s.execute(select(Frame.id, Frame.sha256, Frame.valid, Frame.filename)
                                                 .where(Frame.id.in_(chunk))):
                out[("frame", i)] = (sha, FRAME, "" if valid else f"frame {name} is flagged invalid")
        for chunk in _chunks(product_ids):
            for i, prov, kind, state, bad in s.execute(
                    select(Product.id, Product.provenance_id, Product.kind, Product.state, Product.is_bad)
                    .where(Product.id.in_(chunk))):
                why = (f"input product {i} ({kind}) is marked bad" if bad else
                       f"input product {i} ({kind}) is {state}" if state != "complete" else "")
                out[("product", i)] = (prov, kind, why)
        missing = [r for r in refs if (r.kind, r.id) not in out]
        if missing:
            raise ValueError(f"inputs that do not exist in the database: {sorted(missing)[:5]}")
        return out

    def _check_declared(self, step: Step, cfg: StepConfig, units: list[Unit],
                        info: dict[tuple[str, int], tuple[str, str, str]]) -> None:
        """Readiness from the step's declarations: roles and kinds as declared (else a declaration error), counts
        within the declared bounds and usable inputs (else the unit waits, with the reason)."""
        if not step.inputs:
            return
        declared = {c.name: c for c in step.inputs}
        for unit in units:
            if not unit.ready:
                continue
            counts: Counter[str] = Counter()
            problems: list[str] = []
            for ref in unit.inputs:
                conn = declared.get(ref.role)
                if conn is None:
                    raise ValueError(f"step {step.name!r} planned an input with role {ref.role!r} that it does not "
                                     f"declare (declared: {sorted(declared)})")
                ident, kind, why = info[(ref.kind, ref.id)]
                if kind != conn.kind:
                    raise ValueError(f"step {step.name!r}: input {ref.kind} {ref.id} of role {ref.role!r} is a "
                                     f"{kind}, the declaration says {conn.kind}")
                counts[ref.role] += 1
                if why:
                    problems.append(why)
            for conn in step.inputs:
                if not conn.enabled(cfg):
                    continue
                lo, hi = conn.bounds(cfg)
                n = counts.get(conn.name, 0)
                if n < lo:
                    problems.append(f"needs at least {lo} {conn.name} input(s) ({conn.kind}), has {n}")
                elif hi is not None and n > hi:
                    problems.append(f"takes at most {hi} {conn.name} input(s) ({conn.kind}), has {n}")
            if problems:
                unit.ready, unit.reason = False, "; ".join(problems[:3]) + (
                    f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")

    def _scope(self, s: Session, step: Step, cfg_hash: str, version: str, *, full: bool) -> tuple[Scope, int]:
        """The scope of this step's pass and the journal position it reads up to (see :mod:`upad.flow.changes`)."""
        upto = s.scalar(select(func.max(FlowChange.id))) or 0
        cursor = s.get(PlanCursor, step.name)
        if full:
            return Scope(full=True, reason="requested"), upto
        if cursor is None:
            return Scope(full=True, reason="first pass of the step"), upto
        if cursor.config_hash != cfg_hash or cursor.code_version != version:
            return Scope(full=True, reason="configuration or code version changed"), upto
        # changes since the cursor, and those of the last minutes again: a transaction that committed after a later
        # one (PostgreSQL sequences are not commit-ordered) is not missed
        horizon = utcnow() - dt.timedelta(seconds=self.options.journal_overlap_seconds)
        relevant = self._relevant_changes(step)
        changed = {n for (n,) in s.execute(select(FlowChange.night).distinct().where(
            FlowChange.id > cursor.change_id, relevant))}
        changed |= {n for (n,) in s.execute(select(FlowChange.night).distinct().where(
            FlowChange.time >= horizon, relevant))}
        if None in changed:
            return Scope(full=True, reason="a change without a night"), upto
        # waiting units are looked at again when a change happened within reach of their night (a new master can
        # serve the nights of its fallback window) or when their night is recent (a series completes with time)
        reach = self._reach()
        waiting = {n for (n,) in s.execute(select(PlanWaiting.night).distinct().where(PlanWaiting.step == step.name))}
        if None in waiting:
            return Scope(full=True, reason="a waiting unit without a night"), upto
        recent = (utcnow() - dt.timedelta(days=2)).date()
        near = {c for n in changed for c in _nights_around(n, reach)}
        nights = changed | {w for w in waiting if w in near or _as_date(w) >= recent}
        return Scope(full=False, nights=frozenset(nights)), upto

    def _relevant_changes(self, step: Step) -> Any:
        """The journal entries that can change a step's units, from its declarations: frames (if it reads raw
        frames), products of the steps whose kinds it reads, and its own products made stale or (un)marked bad. A
        step without declarations sees every change."""
        if not step.inputs:
            return true()
        kinds = {c.kind for c in step.inputs}
        makers = sorted({st.name for st in all_steps() if st.product_kind in kinds})
        conds = [and_(FlowChange.subject.in_(("product", "job")), FlowChange.step.in_(makers))] if makers else []
        if FRAME in kinds:
            conds.append(FlowChange.subject == "frame")
        conds.append(and_(FlowChange.subject == "product", FlowChange.step == step.name,
                          FlowChange.event.in_(("stale", "bad", "good"))))
        # a request for a unit of the step (e.g. ``upad coadd``): its night is planned again
        conds.append(and_(FlowChange.subject == "request", FlowChange.step == step.name))
        return or_(*conds)

    def _reach(self) -> int:
        """How many nights a lookup may reach from a unit's night (the widest fallback window configured)."""
        return max([int(getattr(c, "fallback_nights", 0) or 0) for c in self._configs.values()] or [0])

    def _remember(self, s: Session, step: Step, scope: Scope, units: list[Unit], planned: list[PlannedUnit],
                  upto: int, cfg_hash: str, version: str) -> None:
        """Record the step's waiting units of this pass and move its journal cursor."""
        stmt = delete(PlanWaiting).where(PlanWaiting.step == step.name)
        if not scope.full:
            nights = {str(u.context.get("night")) for u in units if u.context.get("night")} | set(scope.nights)
            stmt = stmt.where(PlanWaiting.night.in_(sorted(nights)))
        s.execute(stmt)
        now = utcnow()
        rows = {p.unit.key: {"step": step.name, "unit_key": p.unit.key, "since": now, "reason": p.reason[:2000],
                             "night": (str(p.unit.context.get("night"))[:10] if p.unit.context.get("night")
                                       else None)}
                for p in planned if p.status == "waiting"}
        for chunk in _chunks(list(rows.values())):
            s.execute(_insert(s, PlanWaiting).on_conflict_do_nothing(), chunk)
        cursor = s.get(PlanCursor, step.name)
        if cursor is None:
            s.add(PlanCursor(step=step.name, change_id=upto, config_hash=cfg_hash, code_version=version,
                             updated_at=now))
        else:  # ``upto`` was read at the start of the pass: everything up to it has been planned
            cursor.change_id = max(cursor.change_id, upto)
            cursor.config_hash, cursor.code_version, cursor.updated_at = cfg_hash, version, now

    def plan(self, *, dry_run: bool = False, force_steps: Iterable[str] = (), since: str | None = None,
             full: bool = False) -> PlanReport:
        """Plan every step and create jobs for the ready units that need one.

        A pass is incremental: each step plans only the nights touched by changes since its last pass (and the
        nights of its waiting units); its first pass, a new configuration or code version, ``full`` and
        ``dry_run`` (which lists everything and writes nothing) plan every unit.

        ``force_steps`` (``upad reprocess``): create jobs for units of these steps even when a current product
        exists, if the unit's provenance (inputs, configuration, code version) differs from the current product's.
        ``since`` restricts forced units to those whose ``context['night']`` (or ``date``) is on or after it.
        """
        self.reload_config()
        report = PlanReport()
        force = set(force_steps)
        for step in self._steps:
            cfg = self.config_for(step)
            version, cfg_hash = code_version(step.version), cfg.hash()
            with self.db.session() as s:
                s.info["upad_step_configs"] = self._configs  # what the other steps will build, for lookups
                scope, upto = self._scope(s, step, cfg_hash, version,
                                          full=full or dry_run or step.name in force)
                report.scopes[step.name] = scope
                units = list(step.plan(PlanContext(s, scope, step.name, reach=self._reach()), cfg))
                planned = self._plan_step(s, step, units, report, dry_run=dry_run, force=step.name in force,
                                          since=since)
                waiting_nights = {str(p.unit.context.get("night"))[:10] for p in planned
                                  if p.status == "waiting" and p.unit.context.get("night")}
                upstream = self._upstream_faults(s, step, waiting_nights)
                for p in planned:
                    lines = upstream.get(str(p.unit.context.get("night"))[:10]) if p.status == "waiting" else None
                    if lines:
                        p.reason = ("upstream job(s) " + "; ".join(lines) + " — fix the cause, then `upad retry`"
                                    + (f" (then: {p.reason})" if p.reason else ""))
                report.units.extend(planned)
                if not dry_run:
                    self._remember(s, step, scope, units, planned, upto, cfg_hash, version)
        with self.db.session() as s:
            odd = unplannable_frames(s)
        for row in odd:  # never planned (their dates would break the steps' date arithmetic): said, not hidden
            report.units.append(PlannedUnit(
                "(frames)", Unit(key=row.filename, context={"frame": row.id}), None, "waiting",
                f"DATE-OBS {row.date_obs.date().isoformat()} is outside the dates upad plans "
                f"({PLANNABLE_DATES[0]:%Y}–{PLANNABLE_DATES[1].year - 1}): fix the header and ingest it again, or "
                f"`upad flag {row.id} --reason ...`"))
        if not dry_run:
            self.prune_journal()
        return report

    def prune_journal(self, *, force: bool = False) -> int:
        """Drop journal entries every step has read and that are older than ``journal_keep_days`` (at most once an
        hour): the journal drives planning, the frames' history is in their events."""
        now = time.monotonic()
        if not force and now - self._last_prune < 3600.0:
            return 0
        self._last_prune = now
        with self.db.session() as s:
            read_by_all = s.scalar(select(func.min(PlanCursor.change_id)))
            if not read_by_all:
                return 0
            horizon = utcnow() - dt.timedelta(days=self.options.journal_keep_days)
            res = s.execute(delete(FlowChange).where(FlowChange.id <= read_by_all, FlowChange.time < horizon))
            return int(res.rowcount or 0)

    def _plan_step(self, s: Session, step: Step, units: list[Unit], report: PlanReport, *, dry_run: bool,
                   force: bool, since: str | None) -> list[PlannedUnit]:
        cfg = self.config_for(step)
        version = code_version(step.version)
        cfg_hash = cfg.hash()
        off = {c.name for c in step.inputs if not c.enabled(cfg)}
        if off:  # inputs of connections the configuration turns off do not enter the provenance
            for u in units:
                u.inputs = [r for r in u.inputs if r.role not in off]
        planned: list[PlannedUnit] = []
        info = self._input_info(s, (r for u in units if u.ready for r in u.inputs))
        self._check_declared(step, cfg, units, info)
        ident = {k: v[0] for k, v in info.items()}
        ready = [(u, provenance_id(step.name, version, cfg_hash, u.key, u.inputs, ident)) for u in units if u.ready]
        for u in units:
            if not u.ready:
                planned.append(PlannedUnit(step.name, u, None, "waiting", u.reason))
        if not ready:
            return planned
        # current products of these units, and jobs of these provenance ids
        keys = [u.key for u, _ in ready]
        current: dict[str, tuple[int, str, str, bool]] = {}
        for chunk in _chunks(keys):
            for pid, key, prov, state, p_cfg, p_version in s.execute(
                    select(Product.id, Product.unit_key, Product.provenance_id, Product.state,
                           Provenance.config_hash, Provenance.code_version)
                    .join(Provenance, Provenance.id == Product.provenance_id)
                    .where(Product.step == step.name, Product.unit_key.in_(chunk), Product.is_current.is_(True))):
                # same configuration and code: only the unit's inputs can make its provenance differ
                current[key] = (pid, prov, state, p_cfg == cfg_hash and p_version == version)
        jobs: dict[str, tuple[str, int | None]] = {}
        why: dict[str, str] = {}
        for chunk in _chunks([p for _, p in ready]):
            for prov, state, product_id, error, waits_for in s.execute(
                    select(Job.provenance_id, Job.state, Job.product_id, Job.error, Job.waits_for)
                    .where(Job.provenance_id.in_(chunk))):
                jobs[prov] = (state, product_id)
                if state in ("blocked", "failed") and (error or waits_for):
                    why[prov] = (error or "")[:500] + (f" — waits for {waits_for}" if waits_for else "")
        # units with a job still queued or running (for other inputs): one job per unit at a time; a queued job
        # planned under another configuration is cancelled and re-planned (never run under its old id)
        active: set[str] = set()
        prov_of = {u.key: p for u, p in ready}
        for chunk in _chunks(keys):
            for job_id, key, state, job_cfg, job_prov in s.execute(
                    select(Job.id, Job.unit_key, Job.state, Provenance.config_hash, Job.provenance_id)
                    .join(Provenance, Provenance.id == Job.provenance_id)
                    .where(Job.step == step.name, Job.unit_key.in_(chunk),
                           Job.state.in_(("queued", "running", "blocked")))):
                if state == "blocked":
                    # a blocked job for inputs or a configuration the unit no longer has is superseded
                    if job_prov != prov_of.get(key) and not dry_run:
                        job = s.get(Job, job_id)
                        job.state, job.updated_at = "cancelled", utcnow()
                        job.error = f"superseded while blocked (the unit's inputs or configuration changed): {job.error}"
                    continue
                if state == "queued" and job_cfg != cfg_hash and not dry_run:
                    self._cancel_for_config(s.get(Job, job_id), job_cfg, cfg_hash)
                    continue
                active.add(key)
        to_create: list[tuple[Unit, str]] = []
        for unit, prov in ready:
            cur = current.get(unit.key)
            job = jobs.get(prov)
            if cur is not None and cur[1] == prov:
                planned.append(PlannedUnit(step.name, unit, prov, "current"))
                continue
            if job is not None:
                state, product_id = job
                follows = cur is not None and step.rebuild_on_new_inputs and cur[3]
                if (state == "done" and product_id is not None and (cur is None or follows) and not dry_run
                        and not s.get(Product, product_id).is_bad):
                    # the unit's product exists but was made stale (e.g. its input was flagged and then unflagged):
                    # its inputs are valid again, so it becomes current again instead of being rebuilt (a step that
                    # follows its inputs: in place of the product made meanwhile without that input)
                    self._make_current(s, product_id, revive=True)
                    planned.append(PlannedUnit(step.name, unit, prov, "current", "revived"))
                    continue
                planned.append(PlannedUnit(step.name, unit, prov, state, why.get(prov, "")))
                continue
            if unit.key in active:
                planned.append(PlannedUnit(step.name, unit, prov, "waiting",
                                           "another job for this unit is queued or running"))
                continue
            if cur is not None:
                in_window = since is None or str(unit.context.get("night", unit.context.get("date", ""))) >= since
                follows = step.rebuild_on_new_inputs and cur[3]  # e.g. a tile coadd with a new exposure
                if not (force and in_window) and not follows:
                    planned.append(PlannedUnit(step.name, unit, prov, "current",
                                               "a current product exists (use `upad reprocess` to rebuild)"))
                    continue
            to_create.append((unit, prov))
            planned.append(PlannedUnit(step.name, unit, prov, "would-run"))
        if to_create and not dry_run:
            report.created += self._create_jobs(s, step, cfg, to_create)
        return planned

    def _cancel_for_config(self, job: Job, old_hash: str, new_hash: str) -> None:
        job.state, job.updated_at = "cancelled", utcnow()
        job.error = (f"configuration changed since it was planned (config {old_hash[:12]} -> {new_hash[:12]}): "
                     "re-planned under the new configuration")
        self.counts["cancelled_config"] += 1
        log.info("job %d (%s %s) cancelled: %s", job.id, job.step, job.unit_key, job.error)

    def _create_jobs(self, s: Session, step: Step, cfg: StepConfig, items: list[tuple[Unit, str]]) -> int:
        version = code_version(step.version)
        cfg_hash, critical = cfg.hash(), cfg.critical()  # once, not per unit
        now = utcnow()
        prov_rows, input_rows, job_rows = [], [], []
        for unit, prov in items:
            prov_rows.append({"id": prov, "step": step.name, "unit_key": unit.key, "code_version": version,
                              "config_hash": cfg_hash, "config": critical, "context": unit.context,
                              "created_at": now})
            for ref in set(unit.inputs):
                input_rows.append({"provenance_id": prov, "input_kind": ref.kind, "input_id": ref.id,
                                   "role": ref.role})
            job_rows.append({"provenance_id": prov, "step": step.name, "unit_key": unit.key, "state": "queued",
                             "memory_class": step.memory_class, "priority": unit.priority, "run_id": self.run_id,
                             "created_at": now, "updated_at": now, "n_failures": 0,
                             "max_attempts": self.options.max_attempts, "next_try_at": now})
        for chunk in _chunks(prov_rows):
            s.execute(_insert(s, Provenance).on_conflict_do_nothing(), chunk)
        for chunk in _chunks(input_rows):
            s.execute(_insert(s, ProvenanceInput).on_conflict_do_nothing(), chunk)
        created = 0
        for chunk in _chunks(job_rows):
            res = s.execute(_insert(s, Job).on_conflict_do_nothing().returning(Job.id), chunk)
            created += len(res.all())
        self.counts["jobs_created"] += created
        return created

    # --------------------------------------------------------------------------------------------- faults
    def requeue(self, *, states: Sequence[str] = ("blocked",), steps: Iterable[str] | None = None,
                only_present: bool = False, reason: str = "retry") -> list[int]:
        """Queue again the jobs in ``states`` (``blocked``; with ``failed``, deterministic failures too).

        Their failure count starts afresh (the retry budget is per cause); the attempts stay for the record. With
        ``only_present``, only blocked jobs whose missing input (``waits_for``) now exists. Returns the job ids.
        """
        allowed = {"blocked", "failed"}
        if not set(states) <= allowed:
            raise ValueError(f"only {sorted(allowed)} jobs can be queued again, not {sorted(set(states) - allowed)}")
        now = utcnow()
        ids: list[int] = []
        with self.db.session() as s:
            stmt = select(Job).where(Job.state.in_(tuple(states)))
            if steps:
                stmt = stmt.where(Job.step.in_(tuple(steps)))
            if only_present:
                stmt = stmt.where(Job.waits_for.is_not(None))
            for job in s.scalars(_lock(s, stmt, skip_locked=True)):
                if only_present and not Path(job.waits_for).exists():
                    continue
                job.state, job.n_failures, job.next_try_at, job.updated_at = "queued", 0, now, now
                job.error = f"queued again ({reason}); last error: {job.error}"
                job.waits_for = None
                ids.append(job.id)
        if ids:
            self.counts["requeued"] += len(ids)
            log.info("queued %d blocked or failed job(s) again: %s", len(ids), reason)
        return ids

    def _upstream_faults(self, s: Session, step: Step, nights: set[str]) -> dict[str, list[str]]:
        """Per night: the blocked or failed jobs of the steps whose products ``step`` reads (and whose unit has no
        current product), as short lines — the real reason a unit of ``step`` waits."""
        kinds = {c.kind for c in step.inputs}
        makers = sorted({st.name for st in all_steps() if st.product_kind in kinds and st.name != step.name})
        if not makers or not nights:
            return {}
        current = (select(Product.id).where(Product.step == Job.step, Product.unit_key == Job.unit_key,
                                            Product.is_current.is_(True)).exists())
        out: dict[str, list[str]] = defaultdict(list)
        rows = s.execute(select(Job.step, Job.unit_key, Job.state, Job.error, Provenance.context)
                         .join(Provenance, Provenance.id == Job.provenance_id)
                         .where(Job.step.in_(makers), Job.state.in_(("blocked", "failed")), ~current)
                         .order_by(Job.id.desc()).limit(2000))
        for mstep, key, state, error, ctx in rows:
            night = str((ctx or {}).get("night") or "")[:10]
            if night in nights and len(out[night]) < 3:
                out[night].append(f"{mstep} {key} {state}: {(error or '').splitlines()[0][:200] if error else '?'}")
        return dict(out)

    # --------------------------------------------------------------------------------------------- leases
    def reclaim(self) -> int:
        """Re-queue running jobs whose lease expired or whose scheduler process is gone (same host)."""
        now = utcnow()
        n = 0
        with self.db.session() as s:
            stmt = select(Job).where(Job.state == "running", Job.lease_owner != self.owner)
            for job in s.scalars(_lock(s, stmt)):
                expired = job.lease_expires_at is None or job.lease_expires_at < now
                if not (expired or _owner_dead(job.lease_owner)):
                    continue
                for att in job.attempts:
                    if att.state == "running":
                        att.state, att.ended_at, att.transient = "lost", now, True
                        att.error = f"lease of {job.lease_owner} expired or its process died; job re-queued"
                job.state, job.lease_owner, job.lease_expires_at = "queued", None, None
                job.next_try_at, job.updated_at = now, now
                n += 1
        if n:
            log.warning("re-queued %d job(s) whose scheduler or worker died", n)
            self.counts["reclaimed"] += n
        return n

    def heartbeat(self) -> None:
        now = utcnow()
        with self.db.session() as s:
            s.execute(update(Job).where(Job.lease_owner == self.owner, Job.state == "running")
                      .values(lease_expires_at=now + dt.timedelta(seconds=self.options.lease_seconds)))

    def cleanup_staging(self) -> list[Path]:
        """Remove staging directories of attempts that are not running (leftovers of a crash)."""
        staging_root = self.settings.path("tmp", "staging")
        if not staging_root.is_dir():
            return []
        with self.db.session() as s:
            running = {a for (a,) in s.execute(select(Attempt.id).where(Attempt.state == "running"))}
        removed = []
        for d in staging_root.iterdir():
            try:
                att = int(d.name.removeprefix("attempt-"))
            except ValueError:
                continue
            if att not in running:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        return removed

    # --------------------------------------------------------------------------------------------- claiming
    def claim(self, slots: int, inflight_memory_gb: float = 0.0) -> list[dict[str, Any]]:
        """Claim up to ``slots`` queued jobs for this scheduler and return their payloads."""
        if slots <= 0:
            return []
        self.reload_config()
        now = utcnow()
        budget = self.options.memory_budget_gb
        steps = [s.name for s in self._steps]
        with self.db.session() as s:
            stmt = (select(Job).where(Job.state == "queued", Job.next_try_at <= now, Job.step.in_(steps))
                    .order_by(Job.priority, Job.id).limit(slots))
            jobs = list(s.scalars(_lock(s, stmt, skip_locked=True)))
            # a job runs under the configuration recorded with its provenance, or not at all: one planned under
            # another configuration (upad.toml changed since) is cancelled, and the next pass re-plans its unit
            recorded = dict(s.execute(select(Provenance.id, Provenance.config_hash).where(
                Provenance.id.in_([j.provenance_id for j in jobs]))).all()) if jobs else {}
            kept = []
            hashes: dict[str, str] = {}
            for job in jobs:
                current_hash = hashes.get(job.step) or hashes.setdefault(
                    job.step, self.config_for(_step(job.step)).hash())
                if recorded.get(job.provenance_id) != current_hash:
                    self._cancel_for_config(job, recorded.get(job.provenance_id) or "?", current_hash)
                else:
                    kept.append(job)
            jobs = kept
            chosen: list[Job] = []
            mem = inflight_memory_gb
            for job in jobs:
                need = MEMORY_CLASSES.get(job.memory_class, 1.0)
                # within the memory budget, but a job always starts when nothing else is running
                if budget is not None and mem + need > budget and (chosen or inflight_memory_gb > 0):
                    continue
                mem += need
                chosen.append(job)
            if not chosen:
                return []
            lease_until = now + dt.timedelta(seconds=self.options.lease_seconds)
            attempts: list[Attempt] = []
            n_prev = dict(s.execute(select(Attempt.job_id, func.count()).where(
                Attempt.job_id.in_([j.id for j in chosen])).group_by(Attempt.job_id)).all())
            for job in chosen:
                job.state, job.lease_owner, job.lease_expires_at, job.updated_at = "running", self.owner, lease_until, now
                att = Attempt(job_id=job.id, number=n_prev.get(job.id, 0) + 1, run_id=self.run_id,
                              scheduler=self.owner, started_at=now, state="running")
                s.add(att)
                attempts.append(att)
            s.flush()
            payloads = self._payloads(s, chosen, attempts)
        self.counts["claimed"] += len(payloads)
        return payloads

    def _payloads(self, s: Session, jobs: list[Job], attempts: list[Attempt]) -> list[dict[str, Any]]:
        provs = [j.provenance_id for j in jobs]
        inputs: dict[str, list[ProvenanceInput]] = defaultdict(list)
        contexts: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(provs):
            for row in s.scalars(select(ProvenanceInput).where(ProvenanceInput.provenance_id.in_(chunk))):
                inputs[row.provenance_id].append(row)
            for pid, ctx in s.execute(select(Provenance.id, Provenance.context).where(Provenance.id.in_(chunk))):
                contexts[pid] = ctx
        frame_ids = {i.input_id for rows in inputs.values() for i in rows if i.input_kind == "frame"}
        product_ids = {i.input_id for rows in inputs.values() for i in rows if i.input_kind == "product"}
        frames = {f.id: f for chunk in _chunks(sorted(frame_ids))
                  for f in s.scalars(select(Frame).where(Frame.id.in_(chunk)))}
        products = {p.id: p for chunk in _chunks(sorted(product_ids))
                    for p in s.scalars(select(Product).where(Product.id.in_(chunk)))}
        root = self.settings.root
        payloads = []
        for job, att in zip(jobs, attempts):
            resolved = []
            for ref in sorted(inputs[job.provenance_id], key=lambda r: (r.role, r.input_kind, r.input_id)):
                if ref.input_kind == "frame":
                    f = frames[ref.input_id]
                    resolved.append({"kind": "frame", "id": f.id, "role": ref.role, "paths": [str(root / f.path)],
                                     "meta": frame_meta(f)})
                else:
                    p = products[ref.input_id]
                    resolved.append({"kind": "product", "id": p.id, "role": ref.role,
                                     "paths": [str(root / f["path"]) for f in p.files],
                                     "meta": {"step": p.step, "unit_key": p.unit_key, "provenance_id": p.provenance_id,
                                              "file_roles": [f["role"] for f in p.files], "context": p.context,
                                              "qc_status": p.qc_status, **p.meta}})
            step = next(st for st in all_steps() if st.name == job.step)
            payloads.append({
                "job_id": job.id, "attempt_id": att.id, "step": job.step, "unit_key": job.unit_key,
                "provenance_id": job.provenance_id, "context": contexts.get(job.provenance_id, {}),
                "config": self.config_for(step).as_dict(), "inputs": resolved, "root": str(root),
                "staging": str(self.settings.path("tmp", "staging", f"attempt-{att.id}")), "plugins": self.plugins,
                "memory_class": job.memory_class,
            })
        return payloads

    # --------------------------------------------------------------------------------------------- recording
    def record(self, outcomes: Sequence[dict[str, Any]]) -> None:
        """Turn worker outcomes into state (one transaction for the batch)."""
        if not outcomes:
            return
        now = utcnow()
        self._events = []  # a batch recorded again after an outage reports its events once
        with self.db.session() as s:
            jobs = {j.id: j for j in s.scalars(_lock(s, select(Job).where(
                Job.id.in_([o["job_id"] for o in outcomes]))))}
            atts = {a.id: a for a in s.scalars(select(Attempt).where(
                Attempt.id.in_([o["attempt_id"] for o in outcomes])))}
            for out in outcomes:
                job, att = jobs.get(out["job_id"]), atts.get(out["attempt_id"])
                if job is None or att is None:
                    continue
                att.ended_at, att.host, att.pid, att.worker = now, out.get("host"), out.get("pid"), out.get("worker")
                att.wall_seconds, att.peak_rss_mb = out.get("wall_seconds"), out.get("peak_rss_mb")
                att.log_excerpt = (out.get("log") or "")[-4000:] or None
                if job.state != "running" or job.lease_owner != self.owner or att.state != "running":
                    # our lease was lost (another scheduler re-queued the job): this result is not ours to record
                    att.state = "discarded"
                    att.error = "result discarded: the job was re-queued by another scheduler"
                    self._drop_staged(out)
                    self.counts["discarded"] += 1
                    continue
                for fid, stat in (out.get("verified") or {}).items():  # hashed again and unchanged
                    frame = s.get(Frame, int(fid))
                    if frame is not None:
                        frame.file_stat = stat
                if out.get("input_changed"):
                    self._quarantine_changed(s, out["input_changed"])
                if out.get("ok"):
                    self._register(s, job, att, out, now)
                else:
                    self._fail(s, job, att, out, now)
        # events go out after the commit: a listener may query the database
        events, self._events = self._events, []
        for kind, info in events:
            self.on_event(kind, info)
        done: dict[str, list[int]] = defaultdict(list)
        for kind, info in events:
            if kind == "done":
                done[info["step"]].append(int(info["product"]))
        self._after_recorded(done)
        self.on_event("recorded", {"n": len(outcomes)})

    def _after_recorded(self, done: dict[str, list[int]], *, final: bool = False) -> None:
        """Run the steps' :meth:`~upad.flow.step.Step.after_recorded` hooks; a failing hook is logged and
        counted (``hook_failures``), never raised: the products are recorded already."""
        for name, ids in done.items():
            if not final:
                self._recorded_steps.add(name)
            try:
                step = _step(name)
                step.after_recorded(db=self.db, settings=self.settings, config=self.config_for(step),
                                    product_ids=ids, final=final)
            except Exception as exc:  # noqa: BLE001 - a summary must never fail the products it summarises
                self.counts["hook_failures"] += 1
                log.warning("after recording %s products: %s failed (%s: %s); the products are recorded", name,
                            "the step's hook", type(exc).__name__, exc)
                self.on_event("hook_failed", {"step": name, "error": f"{type(exc).__name__}: {exc}"})

    def _register(self, s: Session, job: Job, att: Attempt, out: dict[str, Any], now: dt.datetime) -> None:
        root = self.settings.root
        files = []
        moved: list[tuple[Path, Path]] = []
        try:
            for f in out["files"]:
                final, staged = root / f["final"], Path(f["staged"])
                if not staged.exists() and final.is_file() and final.stat().st_size == f["size"]:
                    # moved by an earlier try of this record whose transaction did not commit (a database outage)
                    files.append({"role": f["role"], "path": f["final"], "sha256": f["sha256"], "size": f["size"]})
                    continue
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
                moved.append((final, staged))
                files.append({"role": f["role"], "path": f["final"], "sha256": f["sha256"], "size": f["size"]})
        except OSError as exc:
            # the archive cannot take the files (read-only, full, permissions): put back what was moved and record
            # a failure of the environment — retried, then blocked, never a lost or half-registered product
            for final, staged in moved:
                try:
                    os.replace(final, staged)
                except OSError:
                    final.unlink(missing_ok=True)
            fault = classify(exc)
            self._fail(s, job, att, {**out, "ok": False, "error": f"cannot archive the products: {exc}",
                                     "transient": fault.transient, "fault": fault.category,
                                     "waits_for": None}, now)
            return
        product = Product(provenance_id=job.provenance_id, step=job.step, kind=_step(job.step).product_kind,
                          unit_key=job.unit_key, state="complete", is_current=False, created_at=now, job_id=job.id,
                          attempt_id=att.id, run_id=self.run_id, files=files, meta=out.get("meta") or {},
                          context=(ctx := s.get(Provenance, job.provenance_id).context),
                          night=str(ctx["night"])[:10] if (ctx or {}).get("night") else None,
                          qc_status=out.get("qc_status"),
                          good_after=_parse_dt(out.get("good_after")), good_until=_parse_dt(out.get("good_until")))
        s.add(product)
        s.flush()
        job.state, job.product_id, job.error, job.updated_at = "done", product.id, None, now
        job.lease_owner, job.lease_expires_at = None, None
        att.state = "succeeded"
        invalid = self._invalid_inputs(s, job.provenance_id)
        if invalid:
            product.state, product.stale_reason = "stale", f"inputs became invalid while it ran: {invalid}"
        else:
            self._make_current(s, product.id)
        staging = Path(out["files"][0]["staged"]).parent if out["files"] else None
        if staging is not None:
            shutil.rmtree(self.settings.path("tmp", "staging", f"attempt-{att.id}"), ignore_errors=True)
        self.counts["done"] += 1
        self._events.append(("done", {"step": job.step, "unit": job.unit_key, "product": product.id}))

    def _make_current(self, s: Session, product_id: int, *, revive: bool = False) -> None:
        """Make ``product_id`` the current product of its unit; what was built from the one it replaces is stale."""
        product = s.get(Product, product_id)
        old = list(s.scalars(select(Product).where(Product.step == product.step, Product.unit_key == product.unit_key,
                                                   Product.is_current.is_(True), Product.id != product.id)))
        for p in old:
            p.is_current = False
        product.is_current, product.state = True, "complete"
        if revive:
            product.stale_reason = None
        if old:
            cascade_stale(s, [("product", p.id) for p in old],
                          reason=f"input superseded by product {product.id} ({short(product.provenance_id)})",
                          include_seeds=False)

    def _invalid_inputs(self, s: Session, prov: str) -> list[str]:
        rows = s.execute(select(ProvenanceInput.input_kind, ProvenanceInput.input_id)
                         .where(ProvenanceInput.provenance_id == prov)).all()
        frame_ids = [i for k, i in rows if k == "frame"]
        product_ids = [i for k, i in rows if k == "product"]
        bad = []
        if frame_ids:
            bad += [f"frame {i}" for (i,) in s.execute(select(Frame.id).where(Frame.id.in_(frame_ids),
                                                                                Frame.valid.is_(False)))]
        if product_ids:
            bad += [f"product {i}" for (i,) in s.execute(select(Product.id).where(
                Product.id.in_(product_ids), or_(Product.state != "complete", Product.is_bad.is_(True))))]
        return bad

    def _fail(self, s: Session, job: Job, att: Attempt, out: dict[str, Any], now: dt.datetime) -> None:
        transient = bool(out.get("transient"))
        att.state = "lost" if out.get("lost") else "failed"
        att.transient, att.error = transient, out.get("error")
        if out.get("traceback"):
            att.log_excerpt = ((att.log_excerpt or "") + "\n" + out["traceback"])[-4000:]
        job.n_failures += 1
        job.lease_owner, job.lease_expires_at, job.updated_at = None, None, now
        job.error = out.get("error")
        self._drop_staged(out, attempt_id=att.id)
        job.fault = out.get("fault") or ("environment" if transient else "data")
        job.waits_for = out.get("waits_for")
        if out.get("input_changed"):
            # not a failure of the job: its input was replaced under it, quarantined and flagged invalid
            # (_quarantine_changed) — the unit is planned again without it, like any job of an invalidated input
            job.state = "cancelled"
            self.counts["cancelled_input_changed"] += 1
            log.warning("job %d (%s %s) cancelled: %s", job.id, job.step, job.unit_key, job.error)
        elif transient and job.n_failures < job.max_attempts:
            delay = self.options.backoff_seconds * (2 ** (job.n_failures - 1))
            job.state, job.next_try_at = "queued", now + dt.timedelta(seconds=delay)
            self.counts["retried"] += 1
            log.warning("job %d (%s %s) failed transiently, retry in %.1fs: %s", job.id, job.step, job.unit_key,
                        delay, job.error)
        elif transient:
            # the environment, not the data, is wrong and the retries are spent: parked until the cause can have gone
            job.state = "blocked"
            self.counts["blocked"] += 1
            log.error("job %d (%s %s) blocked after %d attempts: %s — %s", job.id, job.step, job.unit_key,
                      job.n_failures, job.error, _unblock_hint(job.waits_for))
        else:
            job.state = "failed"
            self.counts["failed"] += 1
            # a unit that failed for good is journalled: a step grouping its step's products stops waiting for it
            night = (s.get(Provenance, job.provenance_id).context or {}).get("night")
            record_changes(s, "job", [job.id], event="failed", night=str(night)[:10] if night else None,
                           step=job.step)
            log.error("job %d (%s %s) failed: %s", job.id, job.step, job.unit_key, job.error)
        self._events.append(("cancelled" if job.state == "cancelled" else "failed",
                             {"step": job.step, "unit": job.unit_key, "error": job.error,
                              "retry": job.state == "queued", "state": job.state, "waits_for": job.waits_for}))

    def _quarantine_changed(self, s: Session, changed: list[dict[str, Any]]) -> None:
        """Raw files whose content changed after registration: moved out of the archive into the quarantine (in
        link mode, the link; the file it points to is the user's), recorded with the reason, and their frames
        flagged invalid — every product built from them is re-planned without them."""
        from upad.db.models import QuarantinedFile
        from upad.flow.invalidate import flag_frame
        from upad.ingest.archive import quarantine_destination, write_reason

        root = self.settings.root
        for item in changed:
            frame = s.get(Frame, int(item["frame_id"]))
            if frame is None or not frame.valid:
                continue
            reason = (f"raw file changed after registration: SHA-256 {item['sha256']} is not the registered "
                      f"{frame.sha256}; ingest the new file as a new frame")
            archived = root / frame.path
            dest, _ = quarantine_destination(root, frame.filename, sha256=None, size=None)
            moved: str | None = None
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(archived, dest)
                write_reason(dest, reason + "\n")
                moved = str(dest.relative_to(root))
            except OSError as exc:
                log.error("could not move the changed raw file %s to the quarantine: %s", archived, exc)
            s.add(QuarantinedFile(filename=frame.filename, original_path=str(archived), quarantine_path=moved,
                                  sha256=item["sha256"], size_bytes=None, category="changed",
                                  reason=reason))
            flag_frame(s, str(frame.id), invalid=True, reason=reason, who="scheduler")
            self.counts["inputs_changed"] += 1
            log.error("frame %s: %s", frame.filename, reason)

    def _drop_staged(self, out: dict[str, Any], attempt_id: int | None = None) -> None:
        att = attempt_id or out.get("attempt_id")
        if att is not None:
            shutil.rmtree(self.settings.path("tmp", "staging", f"attempt-{att}"), ignore_errors=True)

    # --------------------------------------------------------------------------------------------- the loop
    @property
    def _own_steps(self) -> list[str] | None:
        """The steps this scheduler runs when it was given some (``--step``), else ``None`` (every step)."""
        return [st.name for st in self._steps] if self.options.steps else None

    def pending(self) -> dict[str, int]:
        """Jobs that keep the flow busy: queued (ready now or later) and running (by any scheduler)."""
        with self.db.session() as s:
            stmt = select(Job.state, func.count()).where(Job.state.in_(("queued", "running")))
            if self.options.steps:  # a run of some steps is idle when their jobs are done, whatever others wait
                stmt = stmt.where(Job.step.in_(self._own_steps))
            rows = s.execute(stmt.group_by(Job.state)).all()
        return dict(rows)

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self, *, until_idle: bool = True, max_seconds: float | None = None) -> dict[str, int]:
        """Run the loop; with ``until_idle`` return when nothing is ready, queued or running.

        The loop rides out faults of its environment: an unreachable database (every database call of an iteration
        is tried again with back-off for up to ``db_outage_seconds``; results that arrive meanwhile are kept and
        recorded once it answers; leases keep their meaning — a job whose lease expired meanwhile was re-queued by
        another scheduler and our result for it is discarded), and a nearly full disk (no new job starts until
        ``min_free_mb`` are free again). Blocked jobs are queued again at the start (a new run: the cause can have
        gone), when the file they wait for appears, and every ``blocked_retry_seconds`` in a daemon.
        """
        if self.executor is None:
            raise ValueError("a scheduler without an executor can only plan")
        self.start_run()
        old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, self.request_stop)
            except ValueError:  # not in the main thread
                pass
        state = "interrupted"
        inflight: dict[Any, dict[str, Any]] = {}
        unrecorded: list[dict[str, Any]] = []
        t_start = time.monotonic()
        outage = _Outage(self.options.db_outage_seconds, self.on_event)
        try:
            self.reclaim()
            self.cleanup_staging()
            self.requeue(steps=self._own_steps, reason="a new run")
            next_plan = 0.0
            last_plan = -1e9
            next_beat = time.monotonic() + self.options.heartbeat_seconds
            next_unblock = time.monotonic() + (self.options.blocked_retry_seconds or float("inf"))
            dirty = True
            first_pass = True
            while not self._stop:
                now = time.monotonic()
                if max_seconds is not None and now - t_start > max_seconds:
                    break
                try:
                    if unrecorded:  # results that arrived while the database was away
                        self.record(unrecorded)
                        unrecorded = []
                        dirty = True
                    if (dirty and now - last_plan >= self.options.min_replan_seconds) or now >= next_plan:
                        self.requeue(steps=self._own_steps, only_present=True,
                                     reason="the missing input is there")
                        if not until_idle and now >= next_unblock:
                            self.requeue(steps=self._own_steps,
                                         reason=f"periodic retry ({self.options.blocked_retry_seconds:g} s)")
                            next_unblock = now + (self.options.blocked_retry_seconds or float("inf"))
                        created = self.plan(full=first_pass and self.options.full_first_pass).created
                        first_pass = False
                        last_plan, next_plan, dirty = now, now + self.options.replan_seconds, False
                        self.on_event("planned", {"created": created})
                    if now >= next_beat:
                        self.heartbeat()
                        self.reclaim()
                        next_beat = now + self.options.heartbeat_seconds
                    # keep the executor's queue one batch ahead, so that workers never wait for the scheduler
                    free = self.options.prefetch * self.executor.capacity - len(inflight)
                    if free > 0 and self._disk_ok():
                        mem = sum(MEMORY_CLASSES.get(p["memory_class"], 1.0) for p in inflight.values())
                        for payload in self.claim(free, mem):
                            inflight[self.executor.submit(payload)] = payload
                            self.on_event("started", {"step": payload["step"], "unit": payload["unit_key"]})
                    if not inflight:
                        pending = self.pending()
                        if until_idle and not pending and not dirty and not unrecorded:
                            # one last plan: results recorded since the last one may have made new units ready
                            if self.plan().created == 0:
                                state = "finished"
                                break
                            continue
                        time.sleep(min(self.options.poll_seconds, 0.2) if pending else self.options.poll_seconds)
                        outage.over()
                        continue
                    done = self.executor.wait(list(inflight), timeout=self.options.poll_seconds)
                    if done:
                        unrecorded.extend(self.executor.outcome(f, inflight.pop(f)) for f in done)
                        self.record(unrecorded)
                        unrecorded = []
                        dirty = True
                    outage.over()
                except Exception as exc:  # noqa: BLE001 - only an outage is ridden out, the rest is raised
                    if not is_outage(exc):
                        raise
                    outage.wait(exc)
                    self.db.engine.dispose()  # drop the dead connections: the next call reconnects
                    dirty = True
            if self._stop:
                # graceful stop: let running jobs finish and record them
                while inflight:
                    done = self.executor.wait(list(inflight), timeout=self.options.poll_seconds)
                    unrecorded.extend(self.executor.outcome(f, inflight.pop(f)) for f in done)
                    if unrecorded:
                        outage.retry(lambda: self.record(unrecorded))
                        unrecorded = []
                state = "stopped"
            elif unrecorded:
                outage.retry(lambda: self.record(unrecorded))
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self._recorded_steps:
                self._after_recorded({n: [] for n in sorted(self._recorded_steps)}, final=True)
                self._recorded_steps.clear()
            try:
                self.end_run(state)
                self.cleanup_staging()
            except Exception as exc:  # noqa: BLE001 - the run's end is recorded where the database answers
                if not is_outage(exc):
                    raise
                log.error("could not record the end of run %s (database unreachable): %s", self.run_name, exc)
        return dict(self.counts)

    def _disk_ok(self) -> bool:
        """Whether the data root's file system has room for new jobs (``min_free_mb``); says so once when not,
        and once when it has again."""
        try:
            free_mb = shutil.disk_usage(self.settings.root).free / 2**20
        except OSError:
            return True
        ok = free_mb >= self.options.min_free_mb
        if not ok and not self._disk_paused:
            log.error("disk nearly full: %.0f MB free under %s (< %.0f MB): no new job starts until space is freed",
                      free_mb, self.settings.root, self.options.min_free_mb)
            self.on_event("disk_full", {"free_mb": free_mb, "min_free_mb": self.options.min_free_mb})
            self.counts["disk_pauses"] += 1
        elif ok and self._disk_paused:
            log.warning("disk space back (%.0f MB free): resuming", free_mb)
            self.on_event("disk_ok", {"free_mb": free_mb})
            self.requeue(steps=self._own_steps, reason="disk space freed")
        self._disk_paused = not ok
        return ok


class _Outage:
    """Back-off while the database is unreachable; gives up after ``limit`` seconds with a clear error."""

    def __init__(self, limit: float, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.limit, self.on_event = limit, on_event
        self.since: float | None = None
        self.tries = 0
        self.outages = 0

    def wait(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self.tries = now, 0
            self.outages += 1
            log.error("database unreachable (%s): retrying with back-off for up to %.0f s",
                      str(exc).splitlines()[0][:200], self.limit)
            self.on_event("db_outage", {"error": str(exc).splitlines()[0][:200]})
        if now - self.since > self.limit:
            from upad.errors import UpadError

            raise UpadError(f"the database has been unreachable for {now - self.since:.0f} s: {exc}",
                            hint="check the database server (and its disk); `upad run` resumes where it stopped")
        time.sleep(min(30.0, 0.25 * 2 ** self.tries))
        self.tries += 1

    def over(self) -> None:
        if self.since is not None:
            log.warning("database reachable again after %.1f s", time.monotonic() - self.since)
            self.on_event("db_back", {"seconds": time.monotonic() - self.since})
            self.since = None

    def retry(self, fn: Callable[[], Any]) -> Any:
        while True:
            try:
                out = fn()
                self.over()
                return out
            except Exception as exc:  # noqa: BLE001
                if not is_outage(exc):
                    raise
                self.wait(exc)


def _unblock_hint(waits_for: str | None) -> str:
    if waits_for:
        return f"it runs again as soon as {waits_for} exists (or `upad retry`)"
    return "fix the cause; it runs again at the next `upad run` (or now: `upad retry`)"


def _as_date(night: str) -> dt.date:
    try:
        return dt.date.fromisoformat(night[:10])
    except ValueError:
        return dt.date.min


def _nights_around(night: str, reach: int) -> list[str]:
    d = _as_date(night)
    if d == dt.date.min:
        return [night]
    return [(d + dt.timedelta(days=k)).isoformat() for k in range(-reach - 1, reach + 2)]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def frame_meta(f: Frame) -> dict[str, Any]:
    """The metadata of a raw frame that workers see."""
    return {"filename": f.filename, "instrument": f.instrument, "layout": f.layout, "obs_type": f.obs_type,
            "filter": f.filter, "read_mode": f.read_mode, "exptime": f.exptime,
            "date_obs": f.date_obs.isoformat(), "mjd": f.mjd, "night": f.night, "ra": f.ra, "dec": f.dec,
            "airmass": f.airmass, "tile_id": f.tile_id, "object": f.object, "sha256": f.sha256,
            "naxis1": f.naxis1, "naxis2": f.naxis2, "file_stat": f.file_stat}


def _lock(s: Session, stmt: Any, *, skip_locked: bool = False) -> Any:
    """Row locks on PostgreSQL (SQLite serialises writers with BEGIN IMMEDIATE instead)."""
    if s.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=skip_locked)
    return stmt


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _parse_dt(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _step(name: str) -> Step:
    from upad.flow.step import get_step

    return get_step(name)
