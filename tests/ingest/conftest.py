"""Fixtures of the ingest tests: a data root with its archive layout on top of the shared ``database`` fixture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from upad.settings import Settings


@pytest.fixture
def settings(tmp_path: Path, database) -> Settings:
    """A data root (archive layout created) whose database is the migrated ``database`` (SQLite or PostgreSQL)."""
    s = Settings(root=tmp_path / "root", db_url=database.url)
    s.create_layout()
    return s


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    d = tmp_path / "incoming"
    d.mkdir()
    return d


def run_cli(args: list[str]) -> int:
    """Run ``upad`` in-process through :func:`upad.cli.main.main`; return its exit status."""
    from upad.cli.main import main

    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # commands that exit with a status raise SystemExit
        return int(exc.code or 0)


def temp_files(root: Path) -> list[Path]:
    """Ingest's temporary files left anywhere under ``root``."""
    from upad.ingest.archive import is_temp_name

    return [Path(d, f) for d, _, files in os.walk(root) for f in files if is_temp_name(f)]
