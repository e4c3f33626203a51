"""The process database: SQLAlchemy 2 models.

The database is the single source of truth of the processing: every raw frame with its metadata, state and quick-look
QC; every file that was refused (quarantine) and why; and every operation done on a frame (events). The processing
flow (products, provenance, jobs and attempts), tiles and releases are added by later migrations on top of these
tables: ``frames.id`` is the stable key every product's provenance refers to.

Times are naive ``datetime`` objects in UTC.

Schema changes go through Alembic migrations in ``upad/db/migrations`` (``upad db upgrade``), never through
``create_all``.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Current UTC time as a naive datetime (the database convention)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


#: Observation types (upad vocabulary; see docs/raw-format.md).
OBS_TYPES = ("bias", "dark", "flat-dome", "flat-sky", "science", "focus", "test", "unknown")

#: Frame states. ``ingested``: registered, archived and quick-look QC'd.
FRAME_STATES = ("ingested",)

#: Quick-look QC outcomes.
QC_STATUSES = ("ok", "warn", "fail")


class Tile(Base):
    """A survey pointing (the reference tile of all filters observed there): ``id`` is its ``ref_tile_id``.

    Ingest adds a row for the tile id of every science frame (id, name, the frame's position); ``upad tiles
    generate`` adds the pointings of a tiling (:mod:`upad.coadd.tiling`) with their pixel grid (revision 0006) —
    the grid columns stay empty on rows only ingest made.
    """

    __tablename__ = "tiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64))
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    instrument: Mapped[str | None] = mapped_column(String(32), doc="the camera of the tiling")
    naxis1: Mapped[int | None] = mapped_column(Integer, doc="pixel grid width (TAN, centred on ra/dec)")
    naxis2: Mapped[int | None] = mapped_column(Integer, doc="pixel grid height")
    pixel_scale: Mapped[float | None] = mapped_column(Float, doc="arcsec per pixel of the grid")
    tiling: Mapped[str | None] = mapped_column(String(160), doc="the tiling's key (upad.coadd.tiling.tiling_key)")
    in_footprint: Mapped[bool | None] = mapped_column(Boolean, doc="planned by the survey (in its footprint)")


class TileFilter(Base):
    """A tile: one filter of a pointing, planned by the survey (revision 0006).

    ``tile_id = ref_tile_id * 100 + filter id`` (:func:`upad.coadd.tiling.tile_id`).
    """

    __tablename__ = "tile_filters"

    tile_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ref_tile_id: Mapped[int] = mapped_column(ForeignKey("tiles.id"), index=True)
    filter: Mapped[str] = mapped_column(String(16))
    planned_exposures: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_tile_filters_ref_filter", "ref_tile_id", "filter", unique=True),)


class CoaddRequest(Base):
    """A request to coadd one tile in one filter now (``upad coadd``), honoured by the ``coadd`` step's planner
    (revision 0007).

    The request is data, not configuration: the step's ``select`` parameter is part of the configuration hash, a
    request's ``selection`` is not — it only changes the inputs of the one unit (and so its provenance id). A forced
    request makes the unit ready with the exposures usable now, even while others are still to be reduced or fewer
    than the planned exposures were observed. The latest request of a unit is honoured until it was served (a coadd
    job of the unit created after it is done) and an exposure of the tile was reduced since
    (:func:`upad.coadd.step.active_requests`).
    """

    __tablename__ = "coadd_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_key: Mapped[str] = mapped_column(String(255), index=True, doc="INSTRUMENT/TILE-NNNNN/FILTER")
    instrument: Mapped[str] = mapped_column(String(32))
    ref_tile_id: Mapped[int] = mapped_column(Integer, doc="the pointing (frames' tile id)")
    filter: Mapped[str] = mapped_column(String(16))
    selection: Mapped[str | None] = mapped_column(Text, doc="regular expression on the raw file name (None: all)")
    force: Mapped[bool] = mapped_column(Boolean, default=True,
                                        doc="ready with the usable exposures, whatever is pending or planned")
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    requested_by: Mapped[str | None] = mapped_column(String(255), doc="the command, user@host")
    served_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime, doc="when it was found served without a new job (the current coadd already had its inputs); "
                      "otherwise the first coadd job of the unit created after it that is done serves it")


class Frame(Base):
    """A registered raw frame: where it is, what it is, and its quick-look QC."""

    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(Text, doc="archive path, relative to the data root")
    original_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    # what it is (translated from the header)
    instrument: Mapped[str] = mapped_column(String(32), index=True)
    telescope: Mapped[str] = mapped_column(String(32))
    detector: Mapped[str | None] = mapped_column(String(64))
    header_convention: Mapped[str] = mapped_column(String(16))
    layout: Mapped[str] = mapped_column(String(16))
    naxis1: Mapped[int] = mapped_column(Integer)
    naxis2: Mapped[int] = mapped_column(Integer)
    n_detectors: Mapped[int] = mapped_column(Integer, default=1)
    obs_type: Mapped[str] = mapped_column(String(16), index=True)
    filter: Mapped[str | None] = mapped_column(String(16), index=True)
    read_mode: Mapped[str | None] = mapped_column(String(32))
    exptime: Mapped[float] = mapped_column(Float)
    date_obs: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    mjd: Mapped[float] = mapped_column(Float)
    night: Mapped[str] = mapped_column(String(10), index=True)
    object: Mapped[str | None] = mapped_column(String(80))
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    airmass: Mapped[float | None] = mapped_column(Float)
    tile_id: Mapped[int | None] = mapped_column(ForeignKey("tiles.id"), index=True)
    header: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="the full header as read: the primary header merged with the image extension's (fpack files keep "
                                                           "their keys in HDU 1)")

    # state
    state: Mapped[str] = mapped_column(String(16), default="ingested", index=True)
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    invalid_reason: Mapped[str | None] = mapped_column(Text)
    file_stat: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, doc="the archived file's size, mtime_ns, ctime_ns and inode when its SHA-256 was last verified: a job "
                  "re-hashes it before use only when they changed (revision 0005)")

    # quick-look QC
    qc_status: Mapped[str] = mapped_column(String(8), default="ok", index=True)
    qc_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    qc_bias: Mapped[list[Any] | None] = mapped_column(JSON, doc="per-amplifier overscan level, ADU")
    qc_sky_median: Mapped[float | None] = mapped_column(Float, doc="ADU (bias-subtracted when overscan exists)")
    qc_sky_noise: Mapped[float | None] = mapped_column(Float, doc="robust standard deviation, ADU")
    qc_saturated_fraction: Mapped[float | None] = mapped_column(Float)
    qc_fwhm: Mapped[float | None] = mapped_column(Float, doc="rough FWHM of point sources, arcsec")
    qc_n_sources: Mapped[int | None] = mapped_column(Integer)
    qc_seconds: Mapped[float | None] = mapped_column(Float, doc="time the quick-look QC took")

    tile: Mapped[Tile | None] = relationship()
    events: Mapped[list["FrameEvent"]] = relationship(back_populates="frame", order_by="FrameEvent.id")

    __table_args__ = (Index("ix_frames_night_type_filter", "night", "obs_type", "filter"),
                      Index("ix_frames_instrument_date", "instrument", "date_obs"))


class FrameEvent(Base):
    """One operation done on a frame (ingested, QC, flagged …): its processing history."""

    __tablename__ = "frame_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), index=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    frame: Mapped[Frame] = relationship(back_populates="events")


class QuarantinedFile(Base):
    """A file that ingest refused, with a human-readable reason."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), index=True)
    original_path: Mapped[str] = mapped_column(Text)
    quarantine_path: Mapped[str | None] = mapped_column(Text, doc="relative to the data root; None if not movable")
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    category: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)


# ------------------------------------------------------------------------------------------------------------------
# The processing flow (schema revision 0002): runs, provenance, products, jobs and their attempts.
# ------------------------------------------------------------------------------------------------------------------

#: Product states: ``complete`` (usable), ``stale`` (an input was invalidated or superseded by a newer version).
PRODUCT_STATES = ("complete", "stale")

#: Job states. ``queued`` → ``running`` → ``done`` | ``failed``; ``cancelled`` when its inputs became invalid;
#: ``blocked`` when it failed for a cause in the environment and its retries are spent (:mod:`upad.flow.faults`):
#: queued again when the cause can have gone (a new run, the file it waits for, ``upad retry``).
JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "blocked")

#: Attempt states. ``lost``: the worker or scheduler died (lease expired) — the job was re-queued.
ATTEMPT_STATES = ("running", "succeeded", "failed", "lost", "discarded")


class Run(Base):
    """A named processing run (one ``upad run`` / ``upad reprocess`` invocation)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    command: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), default="running")
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Provenance(Base):
    """What a product is made of: step, code version, critical configuration and every input.

    ``id`` is the SHA-256 of {step, code version, configuration hash, unit key, sorted inputs}; the same inputs and
    configuration always give the same id, so a re-run finds its product already there.
    """

    __tablename__ = "provenance"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[str] = mapped_column(String(64), index=True)
    unit_key: Mapped[str] = mapped_column(String(255))
    code_version: Mapped[str] = mapped_column(String(32))
    config_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    inputs: Mapped[list["ProvenanceInput"]] = relationship(back_populates="provenance")

    __table_args__ = (Index("ix_provenance_step_unit", "step", "unit_key"),)


class ProvenanceInput(Base):
    """One input of a provenance record: a raw frame or another product, with its role (``raw``, ``bias`` …)."""

    __tablename__ = "provenance_inputs"

    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id", ondelete="CASCADE"), primary_key=True)
    input_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    input_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)

    provenance: Mapped[Provenance] = relationship(back_populates="inputs")

    __table_args__ = (Index("ix_provenance_inputs_input", "input_kind", "input_id"),)


class Product(Base):
    """An immutable product of a step (master calibration, reduced frame, catalog, coadd …)."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), unique=True)
    step: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    unit_key: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="complete", index=True)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    stale_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    job_id: Mapped[int | None] = mapped_column(Integer)
    attempt_id: Mapped[int | None] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(Integer)
    files: Mapped[list[Any]] = mapped_column(JSON, default=list, doc="[{role, path (relative to root), sha256, size}]")
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="statistics and QC values")
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="the unit's attributes (night, filter…)")
    night: Mapped[str | None] = mapped_column(String(10), doc="the unit's night (context['night']), for scoped queries")
    qc_status: Mapped[str | None] = mapped_column(String(8))
    good_after: Mapped[dt.datetime | None] = mapped_column(DateTime, doc="calibration validity start (UTC)")
    good_until: Mapped[dt.datetime | None] = mapped_column(DateTime, doc="calibration validity end (UTC)")
    is_bad: Mapped[bool] = mapped_column(Boolean, default=False)
    bad_reason: Mapped[str | None] = mapped_column(Text)

    provenance: Mapped[Provenance] = relationship()

    __table_args__ = (Index("ix_products_step_unit", "step", "unit_key"),
                      Index("ix_products_step_current", "step", "is_current"),
                      Index("ix_products_kind_night", "kind", "night"))


class Job(Base):
    """Work to make one product: at most one job per provenance id, ever."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), unique=True)
    step: Mapped[str] = mapped_column(String(64))
    unit_key: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    memory_class: Mapped[str] = mapped_column(String(16), default="small")
    priority: Mapped[int] = mapped_column(Integer, default=100)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    n_failures: Mapped[int] = mapped_column(Integer, default=0, doc="failed or worker-lost attempts (count toward max_attempts)")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    next_try_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    fault: Mapped[str | None] = mapped_column(String(16), doc="environment | data: the last failure's category")
    waits_for: Mapped[str | None] = mapped_column(Text, doc="a blocked job's missing input: queued when it exists")
    product_id: Mapped[int | None] = mapped_column(Integer)

    attempts: Mapped[list["Attempt"]] = relationship(back_populates="job", order_by="Attempt.number")

    __table_args__ = (Index("ix_jobs_state_next", "state", "next_try_at"), Index("ix_jobs_step_state", "step", "state"),
                      Index("ix_jobs_step_unit", "step", "unit_key"))


class Attempt(Base):
    """One execution of a job on a worker."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(Integer)
    scheduler: Mapped[str] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    worker: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), default="running")
    transient: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    log_excerpt: Mapped[str | None] = mapped_column(Text)
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="attempts")


# ------------------------------------------------------------------------------------------------------------------
# Calibration epochs (schema revision 0003)
# ------------------------------------------------------------------------------------------------------------------


class CalibEpoch(Base):
    """An epoch breakpoint: from ``time`` on, calibrations of the kinds listed are not shared with before."""

    __tablename__ = "calib_epochs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, index=True, doc="UTC, naive")
    instrument: Mapped[str | None] = mapped_column(String(32), doc="None: every instrument")
    filter: Mapped[str | None] = mapped_column(String(16), doc="None: every filter")
    kinds: Mapped[list[Any]] = mapped_column(JSON, default=list, doc="empty: every kind")
    reason: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="operator", doc="operator | proposed")
    metric: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    retracted_reason: Mapped[str | None] = mapped_column(Text)


# ------------------------------------------------------------------------------------------------------------------
# Incremental planning (schema revision 0004): what changed, how far each step has planned, which units wait
# ------------------------------------------------------------------------------------------------------------------
class FlowChange(Base):
    """One change that can make units of a step ready or obsolete: a frame registered or (in)validated, a product
    registered, made current, stale or bad. Written by the session hook of :mod:`upad.flow.changes`; the scheduler
    re-plans only the nights these changes touch."""

    __tablename__ = "flow_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    subject: Mapped[str] = mapped_column(String(16), doc="frame | product | job (failed for good)")
    subject_id: Mapped[int] = mapped_column(Integer)
    step: Mapped[str | None] = mapped_column(String(64), doc="the product's step (None for frames)")
    night: Mapped[str | None] = mapped_column(String(10), doc="the frame's or the product's night")
    event: Mapped[str] = mapped_column(String(16), doc="new | valid | invalid | current | stale | bad | good | failed")


class PlanCursor(Base):
    """How far a step's planning has read the change journal, and under which configuration and code version."""

    __tablename__ = "plan_cursors"

    step: Mapped[str] = mapped_column(String(64), primary_key=True)
    change_id: Mapped[int] = mapped_column(Integer, default=0)
    config_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PlanWaiting(Base):
    """A unit that was waiting at the last planning pass: re-examined at every pass (its reason may be time)."""

    __tablename__ = "plan_waiting"

    step: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    night: Mapped[str | None] = mapped_column(String(10), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    since: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
