"""Engines, sessions and schema migrations of the process database.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on; PostgreSQL uses the same
models and migrations. The schema is managed by Alembic only: :meth:`Database.upgrade` brings an existing database
to the current revision in place, keeping its data.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from upad.errors import UpadError

#: SQLite busy timeout (milliseconds): how long a writer waits for another one before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI objects
    # Let SQLAlchemy drive transactions (pysqlite's own BEGIN handling breaks SAVEPOINTs and locking).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_on_begin(conn) -> None:  # noqa: ANN001
    # BEGIN IMMEDIATE takes the write lock up front: a single writer at a time, waiting up to the busy timeout,
    # instead of failing on lock upgrade mid-transaction.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` with upad's connection settings."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UpadError(f"cannot parse database URL {url!r}",
                        hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DBNAME") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if parsed.drivername == "postgresql":  # prefer psycopg 3, which upad depends on
        parsed = parsed.set(drivername="postgresql+psycopg")
    # a connection attempt to a database that does not answer fails after a bounded time (the scheduler rides out
    # an outage by reconnecting with back-off, it must not hang in connect), unless the URL sets its own
    args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    return create_engine(parsed, pool_pre_ping=True, connect_args=args)


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("upad.db") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


class Database:
    """A handle on one upad process database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        from upad.flow.changes import install

        install()  # every flush journals the frame and product changes that drive incremental planning

    @property
    def backend(self) -> str:
        return self.engine.url.get_backend_name()

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    # -- schema --------------------------------------------------------------------------------------------------
    def head_revision(self) -> str:
        """The schema revision this code expects."""
        return ScriptDirectory.from_config(_alembic_config(self.engine)).get_current_head()

    def current_revision(self) -> str | None:
        """The schema revision the database is at (``None`` for an empty database)."""
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise UpadError(f"cannot connect to the database {self!r}: {exc.orig}",
                            hint="check --db / UPAD_DB_URL and that the server is running") from None

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of an SQLite database (``None`` for other backends or in-memory)."""
        if self.backend != "sqlite" or self.engine.url.database in (None, "", ":memory:"):
            return None
        return Path(self.engine.url.database)

    def exists(self) -> bool:
        """Whether the database is there at all (an SQLite file that exists; a server database is assumed to)."""
        path = self.sqlite_path
        return path is None or path.exists()

    def upgrade(self, revision: str = "head") -> None:
        """Create or upgrade the schema in place (keeps the data)."""
        if self.sqlite_path is not None:
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        cfg = _alembic_config(self.engine)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def downgrade(self, revision: str) -> None:
        """Downgrade the schema (used by migration tests)."""
        cfg = _alembic_config(self.engine)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def check_schema(self) -> None:
        """Raise a helpful :class:`UpadError` unless the schema is at the expected revision."""
        if not self.exists():
            raise UpadError(f"no upad database at {self!r}", hint="run `upad init` (with the same --root/--db)")
        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return
        if current is None:
            raise UpadError(f"no upad database at {self!r}", hint="run `upad init` (with the same --root/--db)")
        raise UpadError(f"the database schema is at revision {current}, this upad expects {head}",
                        hint="run `upad db upgrade` to migrate it in place (data are kept)")

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    # -- sessions ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessionmaker() as sess, sess.begin():
            yield sess

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, check: bool = True) -> Database:
    """Open the database at ``url``; with ``check``, require its schema to be current."""
    db = Database(url)
    if check:
        db.check_schema()
    return db
