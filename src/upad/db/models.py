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
    """A survey pointing (the reference tile of all filters observed there)."""

    __tablename__ = "tiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(64))
    ra: Mapped[float | None] = mapped_column(Float)
    dec: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


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
    header: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, doc="the full primary header, as read")

    # state
    state: Mapped[str] = mapped_column(String(16), default="ingested", index=True)
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    invalid_reason: Mapped[str | None] = mapped_column(Text)

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

    __table_args__ = (Index("ix_frames_night_type_filter", "night", "obs_type", "filter"),)


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
