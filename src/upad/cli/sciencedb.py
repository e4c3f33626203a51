"""``upad sciencedb``: the science database (the loaded catalogs): what is loaded, cone searches, a rebuild."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from upad.cli.common import common_options, console, emit_json, json_option, stdout
from upad.errors import UpadError
from upad.settings import Settings

_URL_HELP = ("Science database URL. Env UPAD_SCIENCE_DB_URL; default [steps.sciencedb_load] url of the root's "
             "upad.toml, else sqlite:///ROOT/science.sqlite.")


@click.group("sciencedb")
def sciencedb() -> None:
    """The science database: the catalogs loaded for queries (docs/science-database.md).

    The pipeline loads a pointing's catalogs when they are all made (step sciencedb_load) and reloads them when the
    tile is rebuilt; these commands inspect it, search it and rebuild it.
    """


def _open(settings: Settings, url: str | None, *, create: bool = False):
    from upad.db.science import ScienceDB
    from upad.release.upload import configured_url

    return ScienceDB(configured_url(settings, url), create=create)


@sciencedb.command("status")
@common_options
@json_option
@click.option("--science-db", "url", envvar="UPAD_SCIENCE_DB_URL", default=None, help=_URL_HELP)
def status(settings: Settings, as_json: bool, url: str | None) -> None:
    """Rows per table, and every pointing's current load with its acknowledgement in the process database."""
    from sqlalchemy import select, text

    from upad.db import open_database
    from upad.db.models import Product

    sdb = _open(settings, url)
    try:
        counts = sdb.counts()
        with sdb.engine.connect() as conn:
            loads = [dict(r._mapping) for r in conn.execute(text(
                "SELECT load_id, instrument, pointing_id, provenance_id, n_dual, n_single, n_images, loaded_at "
                "FROM catalog_load WHERE replaced_at IS NULL ORDER BY pointing_id"))]
    finally:
        sdb.dispose()
    db = open_database(settings.db_url)
    with db.session() as s:
        acks = {p.provenance_id: p for p in s.scalars(select(Product).where(Product.step == "sciencedb_load"))}
    db.dispose()
    for r in loads:
        p = acks.get(r["provenance_id"])
        r["acknowledged"] = p is not None
        r["current"] = bool(p is not None and p.is_current)
    if as_json:
        emit_json({"counts": counts, "loads": loads})
        return
    stdout.print("rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    t = Table(title=f"{len(loads)} pointings loaded")
    for c in ("pointing", "load", "dual", "single", "images", "loaded at", "acknowledged"):
        t.add_column(c)
    for r in loads:
        ack = "yes" if r["current"] else ("superseded" if r["acknowledged"] else "[red]no[/]")
        t.add_row(f"{r['instrument']}/{r['pointing_id']}", str(r["load_id"]), str(r["n_dual"]), str(r["n_single"]),
                  str(r["n_images"]), str(r["loaded_at"])[:19], ack)
    stdout.print(t)


@sciencedb.command("cone")
@common_options
@json_option
@click.argument("ra", type=float)
@click.argument("dec", type=float)
@click.argument("radius", type=click.FloatRange(min=0, min_open=True))
@click.option("--table", default="magabdualobj", show_default=True,
              type=click.Choice(["magabdualobj", "magabsingleobj", "magabdualpointsources"], case_sensitive=False))
@click.option("--columns", default="tile_id,number,alpha_j2000,delta_j2000,class_star", show_default=True,
              help="Comma-separated columns.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the rows to this file "
              "(format from the extension: .fits, .vot, .csv, .ecsv).")
@click.option("--science-db", "url", envvar="UPAD_SCIENCE_DB_URL", default=None, help=_URL_HELP)
def cone(settings: Settings, as_json: bool, ra: float, dec: float, radius: float, table: str, columns: str,
         limit: int, out: str | None, url: str | None) -> None:
    """Objects within RADIUS arcsec of (RA, DEC) degrees, nearest first."""
    sdb = _open(settings, url)
    try:
        rows = sdb.cone(table, ra, dec, radius, columns=[c.strip() for c in columns.split(",") if c.strip()],
                        limit=limit)
    except ValueError as exc:
        raise UpadError(str(exc), hint="RA and DEC in degrees, RADIUS in arcsec") from None
    finally:
        sdb.dispose()
    if out:
        fmt = {".vot": "votable", ".xml": "votable", ".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}.get(
            Path(out).suffix.lower())
        rows.write(out, format=fmt, overwrite=True)
        console.print(f"{len(rows)} rows written to {out}")
        return
    if as_json:
        emit_json([dict(zip(rows.colnames, map(_py, r))) for r in rows])
        return
    t = Table(title=f"{len(rows)} rows of {table} within {radius:g}\" of ({ra:g}, {dec:g})")
    for c in rows.colnames:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:.6g}" if isinstance(v, float) else str(v) for v in map(_py, r)])
    stdout.print(t)


def _py(v):
    return v.item() if hasattr(v, "item") else v


@sciencedb.command("export")
@common_options
@json_option
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--table", "tables", multiple=True, help="A table to export (repeatable; default: filter, tileimage, "
              "the catalog tables and duplicates).")
@click.option("--pointing", "pointings", type=int, multiple=True, help="Only these pointings (repeatable).")
@click.option("--science-db", "url", envvar="UPAD_SCIENCE_DB_URL", default=None, help=_URL_HELP)
def export(settings: Settings, as_json: bool, out_dir: str, tables: tuple[str, ...], pointings: tuple[int, ...],
           url: str | None) -> None:
    """Write tables of the science database as Parquet files OUT_DIR/<table>.parquet (with their SHA-256)."""
    from upad.release.export import export_parquet

    sdb = _open(settings, url)
    try:
        unknown = [t for t in tables if not sdb.has_table(t)]
        if unknown:
            raise UpadError(f"the science database has no table {', '.join(unknown)}",
                            hint="`upad sciencedb status` lists the tables and their rows")
        res = export_parquet(sdb, out_dir, tables=tuple(t.lower() for t in tables) or None,
                             where={"pointing_id": list(pointings)} if pointings else None)
    finally:
        sdb.dispose()
    if as_json:
        emit_json(res)
        return
    for name, r in res.items():
        stdout.print(f"{name:16s} {r['rows']:>10d} rows  {r['path']}  sha256 {r['sha256'][:16]}")


@sciencedb.command("rebuild")
@common_options
@json_option
@click.option("--science-db", "url", envvar="UPAD_SCIENCE_DB_URL", default=None, help=_URL_HELP)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rebuild(settings: Settings, as_json: bool, url: str | None, yes: bool) -> None:
    """Drop the science database's tables and load every pointing again from its current catalogs (after a schema
    change, or catalogs made with other columns)."""
    from sqlalchemy import MetaData

    from upad.cli.common import progress
    from upad.db import open_database
    from upad.db.science import ScienceDB
    from upad.release.upload import configured_url, reload_all

    target = configured_url(settings, url)
    if not yes and not click.confirm(f"drop every table of {target} and load the catalogs again?"):
        raise click.Abort()
    from upad.db.session import make_engine

    engine = make_engine(target)
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("DROP VIEW IF EXISTS magabdualpointsources"))
        md = MetaData()
        md.reflect(conn)
        md.drop_all(conn)
    engine.dispose()
    ScienceDB(target).dispose()
    db = open_database(settings.db_url)
    try:
        with progress(disable=as_json) as bar:
            task = bar.add_task("loading", total=None)
            results = reload_all(db, settings, target, progress=lambda: bar.advance(task))
    finally:
        db.dispose()
    if as_json:
        emit_json(results)
        return
    bad = [r for r in results if "error" in r]
    console.print(f"{len(results) - len(bad)} pointings loaded into {target}" + (f", {len(bad)} failed:" if bad
                                                                                 else ""))
    for r in bad:
        console.print(f"  {r['unit']}: {r['error']}", soft_wrap=True)


COMMANDS = (sciencedb,)
