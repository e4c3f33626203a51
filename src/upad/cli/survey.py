"""``upad tiles`` and ``upad survey``: the survey tiling and footprint, and the survey's progress."""
from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from upad.cli.common import common_options, console, emit_json, json_option, stdout
from upad.coadd.tiling import SkyPolygon, TilingConfig, generate_tiling, in_footprint
from upad.config import ConfigError
from upad.db import open_database
from upad.errors import UpadError
from upad.instruments import available_instruments, get_filter_system, get_instrument
from upad.settings import Settings

_D = TilingConfig()


def _polygon(text: str) -> SkyPolygon:
    """``'ra,dec ra,dec …'`` (or ``;`` between vertices) → :class:`SkyPolygon`."""
    verts = []
    for item in text.replace(";", " ").split():
        try:
            ra, dec = (float(v) for v in item.split(","))
        except ValueError:
            raise UpadError(f"--polygon: {item!r} is not a vertex 'ra,dec'",
                            hint="give the vertices in degrees, e.g. --polygon '10,0 40,0 40,20 10,20'") from None
        verts.append((ra, dec))
    return SkyPolygon(tuple(verts))


def _filters(instrument: str, given: tuple[str, ...]) -> list[str]:
    names = [n.strip() for g in given for n in g.split(",") if n.strip()]
    if names:
        return names
    return get_filter_system(get_instrument(instrument).filter_system).names


@click.group("tiles")
def tiles_group() -> None:
    """The survey tiling: pointings with their pixel grid, and the tiles (pointing, filter) planned."""


@tiles_group.command("generate")
@common_options
@json_option
@click.option("--instrument", required=True, type=click.Choice(available_instruments(), case_sensitive=False),
              help="Camera whose field the pointings have.")
@click.option("--dec-min", type=float, default=-90.0, show_default=True, help="Footprint: lowest declination (deg).")
@click.option("--dec-max", type=float, default=90.0, show_default=True, help="Footprint: highest declination (deg).")
@click.option("--ra-min", type=float, default=None,
              help="Footprint: lowest right ascension (deg); with --ra-max; above --ra-max wraps through 0.")
@click.option("--ra-max", type=float, default=None, help="Footprint: highest right ascension (deg).")
@click.option("--polygon", default=None,
              help="Footprint: also inside this spherical polygon, vertices 'ra,dec ra,dec …' in degrees.")
@click.option("--overlap-arcmin", type=float, default=_D.overlap_arcmin, show_default=True,
              help="Smallest overlap of neighbouring fields (arcmin).")
@click.option("--grid-margin-arcmin", type=float, default=_D.grid_margin_arcmin, show_default=True,
              help="Margin of each tile's pixel grid around the camera field (arcmin).")
@click.option("--first-id", type=int, default=_D.first_id, show_default=True,
              help="Id of the first pointing of the all-sky tiling (raise it to keep clear of ids in use).")
@click.option("--filters", "filters", multiple=True,
              help="Filters planned per pointing (names or aliases, comma-separated or repeated); default: all of "
                   "the instrument's filter system.")
@click.option("--exposures", type=int, default=_D.exposures_per_filter, show_default=True,
              help="Exposures planned per tile and filter.")
@click.option("--max-pointings", type=int, default=_D.max_pointings, show_default=True,
              help="Refuse a footprint of more pointings than this (a whole-sky tiling of a small camera).")
@click.option("--dry-run", is_flag=True, help="Count the pointings and tiles; write nothing.")
def tiles_generate(settings: Settings, as_json: bool, instrument: str, dec_min: float, dec_max: float,
                   ra_min: float | None, ra_max: float | None, polygon: str | None, overlap_arcmin: float,
                   grid_margin_arcmin: float, first_id: int, filters: tuple[str, ...], exposures: int,
                   max_pointings: int, dry_run: bool) -> None:
    """Generate the tiling of INSTRUMENT over a footprint and store its pointings and planned tiles.

    The pointings are those of the all-sky tiling (declination bands, neighbours overlapping by at least
    --overlap-arcmin) whose cell meets the footprint: ids and grids do not depend on the footprint, so re-running
    with a larger footprint adds pointings. Re-running with the same parameters changes nothing; a different tiling
    over the one stored is refused.
    """
    from upad.coadd.survey import store_tiling

    if (ra_min is None) != (ra_max is None):
        raise UpadError("--ra-min and --ra-max go together", hint="give both (e.g. --ra-min 120 --ra-max 150) or "
                                                                  "neither")
    try:
        cfg = TilingConfig(overlap_arcmin=overlap_arcmin, grid_margin_arcmin=grid_margin_arcmin, first_id=first_id,
                           exposures_per_filter=exposures, max_pointings=max_pointings)
    except ConfigError as exc:
        opt = "--" + exc.name.replace("_", "-").replace("exposures-per-filter", "exposures")
        raise UpadError(f"{opt} {exc.problem}", hint=exc.hint) from None
    instrument = instrument.lower()
    ra_range = (ra_min, ra_max) if ra_min is not None else None
    pointings = generate_tiling(instrument=instrument, overlap_arcmin=cfg.overlap_arcmin,
                                grid_margin_arcmin=cfg.grid_margin_arcmin, dec_range=(dec_min, dec_max),
                                ra_range=ra_range, first_id=cfg.first_id, max_pointings=cfg.max_pointings)
    if polygon:
        flags = in_footprint(pointings, _polygon(polygon))
        pointings = [p for p, f in zip(pointings, flags) if f]
    names = _filters(instrument, filters)
    if dry_run:
        from upad.coadd.tiling import filter_index

        canon = list(dict.fromkeys(filter_index(f, instrument=instrument)[1] for f in names))
        out: dict[str, Any] = {"dry_run": True, "tiling": pointings[0].tiling if pointings else None,
                               "pointings": len(pointings), "tiles": len(pointings) * len(canon), "filters": canon}
    else:
        db = open_database(settings.db_url)
        try:
            out = store_tiling(db, pointings, filters=names, planned_exposures=cfg.exposures_per_filter)
        finally:
            db.dispose()
    if as_json:
        emit_json(out)
        return
    if dry_run:
        stdout.print(f"{out['pointings']} pointings, {out['tiles']} tiles in {len(out['filters'])} filters "
                     f"(tiling {out['tiling']}); nothing written (--dry-run)")
        return
    stdout.print(f"tiling [bold]{out['tiling']}[/]: {out['pointings']} pointings in the footprint — "
                 f"{out['added']} added, {out['adopted']} adopted from ingested tiles, {out['flagged']} put in the "
                 f"footprint, {out['unchanged']} unchanged; tiles (pointing, filter): {out['tiles_added']} added, "
                 f"{out['tiles_unchanged']} unchanged; filters {', '.join(out['filters'])}, "
                 f"{out['planned_exposures']} exposures each")


@tiles_group.command("list")
@common_options
@json_option
@click.option("--all", "all_tiles", is_flag=True,
              help="Also tiles outside the footprint (made by ingest for frames' tile ids, without a grid).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many pointings.")
def tiles_list(settings: Settings, as_json: bool, all_tiles: bool, limit: int | None) -> None:
    """List the pointings (ref_tile_id, centre, pixel grid) with their planned tiles (tile_id per filter)."""
    from upad.coadd.survey import list_tiles

    db = open_database(settings.db_url)
    try:
        rows = list_tiles(db, footprint_only=not all_tiles, limit=limit)
    finally:
        db.dispose()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no tiles" + ("" if all_tiles else " in the footprint")
                      + "; generate a tiling with `upad tiles generate --instrument t80cam`")
        return
    keys = sorted({r["tiling"] for r in rows if r["tiling"]})
    table = Table(title=f"{len(rows)} pointings" + (f" — tiling {', '.join(keys)}" if keys else ""))
    for col in ("id", "name", "ra", "dec", "grid", "footprint", "tiles"):
        table.add_column(col, justify="right" if col in ("id", "ra", "dec") else "left")
    for r in rows:
        grid = (f"{r['naxis1']}×{r['naxis2']} @ {r['pixel_scale']:g}\"" if r["naxis1"] else "-")
        tiles = r["tiles"]
        span = (f"{len(tiles)}: {tiles[0]['tile_id']}..{tiles[-1]['tile_id']}" if tiles else "-")
        table.add_row(str(r["id"]), r["name"], "-" if r["ra"] is None else f"{r['ra']:.4f}",
                      "-" if r["dec"] is None else f"{r['dec']:.4f}", grid, "yes" if r["in_footprint"] else "no",
                      span)
    stdout.print(table)


@click.group("survey")
def survey_group() -> None:
    """The survey as a whole: its progress over the footprint."""


@survey_group.command("progress")
@common_options
@json_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also draw the footprint coloured by completion into this PNG file.")
@click.option("--plot-measure", type=click.Choice(["coadded", "observed", "complete"]), default="coadded",
              show_default=True, help="What completion the plot colours: filters coadded, observed (≥ 1 valid "
                                      "frame) or complete (all planned exposures).")
@click.option("--per-pointing", is_flag=True, help="With --json: also the counts of every pointing (large for a "
                                                   "whole-sky footprint).")
def survey_progress_cmd(settings: Settings, as_json: bool, plot_path: str | None, plot_measure: str,
                        per_pointing: bool) -> None:
    """Per filter: tiles planned (in the footprint), observed (a valid science frame), complete (all planned
    exposures valid) and coadded (a current product of step coadd)."""
    from upad.coadd.survey import plot_progress, survey_progress

    db = open_database(settings.db_url)
    try:
        prog = survey_progress(db)
    finally:
        db.dispose()
    if plot_path:
        prog["plot"] = str(plot_progress(prog, plot_path, measure=plot_measure))
    if as_json:
        if not per_pointing:
            prog.pop("per_pointing")
        emit_json(prog)
        return
    table = Table(title=f"survey progress — {prog['pointings']} pointings ({', '.join(prog['tiling'])})")
    for col in ("filter", "planned", "observed", "complete", "coadded", "coadded %"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for r in [*prog["filters"], {"filter": "all", **prog["total"],
                                 "coadded_fraction": prog["total"]["coadded"] / max(1, prog["total"]["planned"])}]:
        table.add_row(r["filter"], str(r["planned"]), str(r["observed"]), str(r["complete"]), str(r["coadded"]),
                      f"{100 * r['coadded_fraction']:.1f}")
    stdout.print(table)
    out = prog["outside_plan"]
    if out["tiles"]:
        console.print(f"{out['frames']} valid science frames of {out['tiles']} (tile, filter) outside the plan "
                      "(their OBJECT names no planned pointing, or the filter is not planned there)")
    if plot_path:
        console.print(f"plot written to {prog['plot']}")


COMMANDS = (tiles_group, survey_group)
