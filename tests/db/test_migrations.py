"""The schema comes from Alembic migrations, upgrades in place keeping data, and matches the models."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from upad.db import Database
from upad.db.models import Base
from upad.db.session import _alembic_config
from upad.errors import UpadError


def _revisions(db: Database) -> list[str]:
    script = ScriptDirectory.from_config(_alembic_config(db.engine))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_models_match_migrations(database):
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_in_place_keeps_data(db_url):
    db = Database(db_url)
    first = _revisions(db)[0]
    db.upgrade(first)
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO frames (filename, path, original_path, size_bytes, sha256, ingested_at, instrument, "
            "telescope, header_convention, layout, naxis1, naxis2, n_detectors, obs_type, exptime, date_obs, mjd, "
            "night, header, state, valid, qc_status, qc_reasons) VALUES ('a.fits', 'raw/a.fits', '/in/a.fits', 10, "
            "'ab', '2025-01-01 00:00:00', 'mini', 'JAST80', 'OAJ', 'readout', 1056, 1056, 1, 'bias', 0, "
            "'2025-01-01 20:00:00', 60676.8, '2025-01-01', '{}', 'ingested', true, 'ok', '[]')"))
    db.upgrade()
    assert db.current_revision() == db.head_revision()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT filename FROM frames")).scalar_one() == "a.fits"
    db.check_schema()
    db.dispose()


def test_downgrade_then_upgrade(database):
    database.downgrade("base")
    assert database.current_revision() is None
    with pytest.raises(UpadError, match="upad init"):
        database.check_schema()
    database.upgrade()
    database.check_schema()


def test_outdated_schema_is_reported(db_url):
    db = Database(db_url)
    revs = _revisions(db)
    if len(revs) < 2:
        pytest.skip("only one schema revision exists")
    db.upgrade(revs[0])
    with pytest.raises(UpadError, match="upad db upgrade"):
        db.check_schema()
    db.dispose()


def test_sqlite_pragmas(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'p.sqlite'}")
    db.upgrade()
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()
