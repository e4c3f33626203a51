"""``upad init`` and ``upad db``: create the data root and the database, migrate the schema."""
from __future__ import annotations

import click

from upad.cli.common import common_options, console, emit_json, json_option
from upad.db import Database
from upad.settings import ARCHIVE_DIRS, Settings


@click.command("init")
@common_options
@json_option
def init(settings: Settings, as_json: bool) -> None:
    """Create the data root (archive layout) and the process database.

    Safe to run again: existing directories and data are kept, and an existing database is upgraded in place to the
    current schema.
    """
    settings.create_layout()
    db = Database(settings.db_url)
    before = db.current_revision()
    db.upgrade()
    after = db.current_revision()
    db.dispose()
    info = {"root": str(settings.root), "db": db.engine.url.render_as_string(hide_password=True),
            "areas": list(ARCHIVE_DIRS), "schema_before": before, "schema": after}
    if as_json:
        emit_json(info)
        return
    console.print(f"[green]data root[/] {settings.root}  ({', '.join(ARCHIVE_DIRS)})")
    state = "created" if before is None else ("upgraded" if before != after else "up to date")
    console.print(f"[green]database[/]  {info['db']}  schema {after} ({state})")


@click.group("db")
def db_group() -> None:
    """Inspect and migrate the process database schema."""


@db_group.command("upgrade")
@common_options
@click.option("--revision", default="head", show_default=True, help="Target schema revision.")
@json_option
def db_upgrade(settings: Settings, revision: str, as_json: bool) -> None:
    """Migrate the database schema in place (data are kept)."""
    db = Database(settings.db_url)
    before = db.current_revision()
    db.upgrade(revision)
    info = {"db": repr(db), "before": before, "after": db.current_revision()}
    db.dispose()
    if as_json:
        emit_json(info)
    else:
        console.print(f"schema {info['before']} → {info['after']}")


@db_group.command("current")
@common_options
@json_option
def db_current(settings: Settings, as_json: bool) -> None:
    """Show the schema revision of the database and the one this upad expects."""
    db = Database(settings.db_url)
    info = {"db": repr(db), "current": db.current_revision(), "expected": db.head_revision()}
    db.dispose()
    if as_json:
        emit_json(info)
    else:
        console.print(f"{info['db']}: schema {info['current']} (this upad expects {info['expected']})")


COMMANDS = [init, db_group]
