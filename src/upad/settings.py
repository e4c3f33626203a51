"""Where upad keeps its data and its database.

Every command takes ``--root DIR`` (env ``UPAD_ROOT``, default ``./upad-data``) and ``--db URL`` (env ``UPAD_DB_URL``,
default an SQLite file inside the root).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "./upad-data"
DB_FILENAME = "upad.sqlite"

#: Sub-directories of a data root, in data-flow order.
ARCHIVE_DIRS: tuple[str, ...] = (
    "raw",
    "reference",
    "calibration",
    "reduced",
    "coadds",
    "catalogs",
    "releases",
    "quarantine",
    "previews",
    "logs",
    "tmp",
)


@dataclass(frozen=True)
class Settings:
    """Resolved location of the data root and the database URL."""

    root: Path
    db_url: str

    @classmethod
    def resolve(cls, root: str | os.PathLike | None = None, db_url: str | None = None) -> "Settings":
        """Resolve ``root`` and ``db_url`` from arguments, then environment, then defaults."""
        root_path = Path(root or os.environ.get("UPAD_ROOT") or DEFAULT_ROOT).expanduser().resolve()
        url = db_url or os.environ.get("UPAD_DB_URL") or f"sqlite:///{root_path / DB_FILENAME}"
        return cls(root=root_path, db_url=url)

    def path(self, area: str, *parts: str) -> Path:
        """Path inside one of the archive areas (``raw``, ``calibration`` …)."""
        if area not in ARCHIVE_DIRS:
            raise ValueError(f"unknown archive area {area!r}; expected one of {ARCHIVE_DIRS}")
        return self.root.joinpath(area, *parts)

    def create_layout(self) -> None:
        """Create the data root and its archive areas (idempotent)."""
        for area in ARCHIVE_DIRS:
            (self.root / area).mkdir(parents=True, exist_ok=True)
