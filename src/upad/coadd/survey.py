"""The tiling in the database and the survey's progress (adapters around :mod:`upad.coadd.tiling`).

* :func:`store_tiling` writes the pointings of a tiling (``tiles``) and the tiles planned per filter
  (``tile_filters``). It is idempotent, adopts the rows ingest made for the tile ids of frames when they lie on the
  pointing of the same id, and refuses a different tiling over the one stored.
* :func:`list_tiles` lists them; :func:`survey_progress` counts per filter the tiles planned, observed (a valid
  science frame of the pointing in that filter), fully observed (as many valid frames as planned) and coadded (a
  current product of step ``coadd`` for the tile); :func:`plot_progress` draws the footprint coloured by completion.

A coadd product names its tile in its unit context: ``{"tile_id": T, "filter": F}`` with ``T`` the (pointing,
filter) tile id, or the pointing id (``ref_tile_id``, also accepted as ``{"ref_tile_id": R, "filter": F}``); a
product counts for the planned tile it names, whichever id it uses.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update

from upad.coadd.tiling import FILTER_ID_BASE, Pointing, filter_index, on_grid, tile_id
from upad.db import Database, Frame, Tile, TileFilter
from upad.errors import UpadError

__all__ = ["list_tiles", "plot_progress", "store_tiling", "survey_progress"]

_CHUNK = 2000  # rows per INSERT / IN (…) statement
_MEASURES = ("coadded", "observed", "complete")


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> list[Sequence[Any]]:
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def store_tiling(db: Database, pointings: Sequence[Pointing], *, filters: Sequence[str],
                 planned_exposures: int) -> dict[str, Any]:
    """Store ``pointings`` (all of one tiling) in the footprint, with a planned tile per filter.

    Parameters
    ----------
    db : Database
    pointings : sequence of Pointing
        From :func:`upad.coadd.tiling.generate_tiling` (already restricted to the footprint).
    filters : sequence of str
        Filter names or aliases of the instrument's filter system.
    planned_exposures : int
        Exposures planned per tile and filter.

    Returns
    -------
    dict
        ``tiling``, ``pointings`` (given), ``added``, ``adopted`` (ingest's rows that got their grid),
        ``flagged`` (stored pointings newly put in the footprint), ``unchanged``, ``tiles_added``,
        ``tiles_unchanged``, ``filters``.

    Raises
    ------
    UpadError
        Nothing to store; another tiling is stored; a tile id of ingested frames lies off the pointing of that id;
        a planned tile with another number of exposures. Nothing is written then.
    """
    if not pointings:
        raise UpadError("the footprint selects no pointing", hint="widen --dec-min/--dec-max/--ra-min/--ra-max or the "
                                                                  "polygon")
    keys = {p.tiling for p in pointings}
    if len(keys) != 1:
        raise UpadError(f"the pointings come from {len(keys)} tilings", hint="store one tiling at a time")
    key = keys.pop()
    instrument = pointings[0].instrument
    names = []
    for f in filters:
        _, name = filter_index(f, instrument=instrument)
        if name not in names:
            names.append(name)
    if not names:
        raise UpadError("no filter given", hint="give --filters, e.g. --filters rSDSS,gSDSS (default: all)")
    if planned_exposures < 1:
        raise UpadError(f"planned exposures must be >= 1, got {planned_exposures}", hint="e.g. --exposures 3")
    by_id = {p.id: p for p in pointings}
    with db.session() as s:
        other = s.execute(select(Tile.tiling, func.count()).where(Tile.tiling.is_not(None), Tile.tiling != key)
                          .group_by(Tile.tiling)).all()
        if other:
            old, n = other[0]
            raise UpadError(f"the database holds another tiling ({n} pointings of '{old}'); refusing to store "
                            f"'{key}' over it",
                            hint="re-run with the parameters of the stored tiling (`upad tiles list` shows its key) "
                                 "to extend its footprint; a different tiling needs a new database")
        existing: dict[int, Any] = {}
        for chunk in _chunks(sorted(by_id)):
            for row in s.execute(select(Tile.id, Tile.name, Tile.ra, Tile.dec, Tile.tiling, Tile.in_footprint)
                                 .where(Tile.id.in_(chunk))):
                existing[row.id] = row
        new_rows, adopt, flag, conflicts = [], [], [], []
        for pid, p in by_id.items():
            row = existing.get(pid)
            if row is None:
                new_rows.append(_tile_values(p))
            elif row.tiling == key:
                if not row.in_footprint:
                    flag.append(pid)
            elif row.ra is None or row.dec is None or bool(on_grid(p, row.ra, row.dec)):
                adopt.append(pid)
            else:
                conflicts.append((row, p))
        if conflicts:
            row, p = conflicts[0]
            max_id = s.scalar(select(func.max(Tile.id))) or 0
            raise UpadError(f"{len(conflicts)} tile id(s) of ingested frames lie off the pointing of the same id, "
                            f"e.g. tile {row.id} ({row.name}) at ra={row.ra:.4f} dec={row.dec:.4f}, while pointing "
                            f"{p.id} of this tiling is at ra={p.ra:.4f} dec={p.dec:.4f}",
                            hint=f"number the tiling past the ids in use (--first-id {max_id + 1}), or ingest "
                                 "frames whose OBJECT names the pointing they observe (TILE-%05d of its id)")
        planned: dict[int, Any] = {}
        for chunk in _chunks(sorted(by_id)):
            for row in s.execute(select(TileFilter.tile_id, TileFilter.ref_tile_id, TileFilter.filter,
                                        TileFilter.planned_exposures).where(TileFilter.ref_tile_id.in_(chunk))):
                planned[row.tile_id] = row
        tile_rows, clash = [], []
        for pid in sorted(by_id):
            for name in names:
                tid = tile_id(pid, name, instrument=instrument)
                row = planned.get(tid)
                if row is None:
                    tile_rows.append({"tile_id": tid, "ref_tile_id": pid, "filter": name,
                                      "planned_exposures": int(planned_exposures)})
                elif row.planned_exposures != planned_exposures:
                    clash.append(row)
        if clash:
            row = clash[0]
            raise UpadError(f"{len(clash)} tile(s) are planned with another number of exposures, e.g. tile "
                            f"{row.tile_id} ({row.filter} of pointing {row.ref_tile_id}): {row.planned_exposures}, "
                            f"not {planned_exposures}",
                            hint=f"re-run with --exposures {row.planned_exposures} (a stored plan is not changed)")
        for chunk in _chunks(new_rows):
            s.execute(insert(Tile), list(chunk))
        for pid in adopt:
            values = _tile_values(by_id[pid])
            values.pop("id")
            values.pop("created_at")
            s.execute(update(Tile).where(Tile.id == pid).values(**values))
        for chunk in _chunks(flag):
            s.execute(update(Tile).where(Tile.id.in_(list(chunk))).values(in_footprint=True))
        s.flush()
        for chunk in _chunks(tile_rows):
            s.execute(insert(TileFilter), list(chunk))
    return {"tiling": key, "instrument": instrument, "pointings": len(by_id), "added": len(new_rows),
            "adopted": len(adopt), "flagged": len(flag),
            "unchanged": len(by_id) - len(new_rows) - len(adopt) - len(flag),
            "tiles_added": len(tile_rows), "tiles_unchanged": len(by_id) * len(names) - len(tile_rows),
            "filters": names, "planned_exposures": int(planned_exposures)}


def _tile_values(p: Pointing) -> dict[str, Any]:
    from upad.db.models import utcnow

    return {"id": p.id, "name": p.name, "ra": float(p.ra), "dec": float(p.dec), "created_at": utcnow(),
            "instrument": p.instrument, "naxis1": int(p.naxis1), "naxis2": int(p.naxis2),
            "pixel_scale": float(p.pixel_scale), "tiling": p.tiling, "in_footprint": True}


def list_tiles(db: Database, *, footprint_only: bool = True, limit: int | None = None) -> list[dict[str, Any]]:
    """Pointings with their grid and planned tiles (``[{tile_id, filter, planned_exposures}]``), ordered by id;
    with ``footprint_only`` only those of the survey's footprint (else also ingest's rows without a grid)."""
    with db.session() as s:
        stmt = select(Tile).order_by(Tile.id)
        if footprint_only:
            stmt = stmt.where(Tile.in_footprint.is_(True))
        if limit is not None:
            stmt = stmt.limit(limit)
        tiles = list(s.scalars(stmt))
        ids = [t.id for t in tiles]
        plan: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for chunk in _chunks(ids):
            for row in s.execute(select(TileFilter).where(TileFilter.ref_tile_id.in_(list(chunk)))
                                 .order_by(TileFilter.tile_id)).scalars():
                plan[row.ref_tile_id].append({"tile_id": row.tile_id, "filter": row.filter,
                                              "planned_exposures": row.planned_exposures})
        return [{"id": t.id, "name": t.name, "ra": t.ra, "dec": t.dec, "instrument": t.instrument,
                 "naxis1": t.naxis1, "naxis2": t.naxis2, "pixel_scale": t.pixel_scale, "tiling": t.tiling,
                 "in_footprint": bool(t.in_footprint), "tiles": plan.get(t.id, [])} for t in tiles]


def _coadded_tiles(session: Any, plan: dict[tuple[int, str], int]) -> set[tuple[int, str]]:
    """(pointing, filter) of planned tiles that have a current, usable product of step ``coadd`` (not a QC
    failure)."""
    from upad.flow.queries import current_products

    by_tile_id = {tid: key for key, tid in plan.items()}
    done: set[tuple[int, str]] = set()
    for prod in current_products(session, step="coadd"):
        if prod.qc_status == "fail":  # a recorded failure (no frame overlaps, none usable): not a coadd
            continue
        ctx = prod.context or {}
        filt = ctx.get("filter")
        key = None
        if ctx.get("ref_tile_id") is not None:
            key = (int(ctx["ref_tile_id"]), str(filt))
        elif ctx.get("tile_id") is not None:
            tid = int(ctx["tile_id"])
            if tid in by_tile_id and (filt is None or by_tile_id[tid][1] == filt):
                key = by_tile_id[tid]
            else:
                key = (tid, str(filt))
        if key in plan:
            done.add(key)
    return done


def survey_progress(db: Database) -> dict[str, Any]:
    """Tiles planned, observed, fully observed and coadded per filter, and per pointing of the footprint.

    Returns
    -------
    dict
        ``tiling`` (keys stored), ``pointings`` (in the footprint), ``filters``: one row per filter with ``planned``,
        ``observed`` (≥ 1 valid science frame of the pointing in the filter), ``complete`` (as many valid frames as
        planned), ``coadded`` and the fractions; ``outside_plan``: valid science frames whose (tile, filter) is not
        planned (``tiles``, ``frames``); ``per_pointing``: ``[{id, ra, dec, planned, observed, complete,
        coadded}]`` (counts of filters).

    Raises
    ------
    UpadError
        No tiling is stored.
    """
    with db.session() as s:
        plan_rows = s.execute(
            select(TileFilter.ref_tile_id, TileFilter.filter, TileFilter.tile_id, TileFilter.planned_exposures)
            .join(Tile, Tile.id == TileFilter.ref_tile_id).where(Tile.in_footprint.is_(True))).all()
        if not plan_rows:
            raise UpadError("no survey plan in the database (no tiles in the footprint)",
                            hint="generate one: upad tiles generate --instrument t80cam [--dec-min … --ra-max …]")
        plan = {(r.ref_tile_id, r.filter): r.tile_id for r in plan_rows}
        needed = {(r.ref_tile_id, r.filter): r.planned_exposures for r in plan_rows}
        frames = s.execute(
            select(Frame.tile_id, Frame.filter, func.count()).where(
                Frame.valid.is_(True), Frame.obs_type == "science", Frame.tile_id.is_not(None),
                Frame.filter.is_not(None)).group_by(Frame.tile_id, Frame.filter)).all()
        coadded = _coadded_tiles(s, plan)
        pointings = s.execute(select(Tile.id, Tile.ra, Tile.dec, Tile.naxis1, Tile.naxis2, Tile.pixel_scale)
                              .where(Tile.in_footprint.is_(True)).order_by(Tile.id)).all()
        tilings = sorted(k for (k,) in s.execute(select(Tile.tiling).where(Tile.tiling.is_not(None)).distinct()))
        instruments = sorted(k for (k,) in s.execute(select(Tile.instrument).where(Tile.instrument.is_not(None))
                                                     .distinct()))
    observed: dict[tuple[int, str], int] = {}
    outside_tiles, outside_frames = set(), 0
    for tile, filt, n in frames:
        if (tile, filt) in plan:
            observed[(tile, filt)] = int(n)
        else:
            outside_tiles.add((tile, filt))
            outside_frames += int(n)
    per_filter: dict[str, Counter] = defaultdict(Counter)
    per_pointing: dict[int, Counter] = defaultdict(Counter)
    for key in plan:
        ref, filt = key
        flags = {"planned": True, "observed": key in observed,
                 "complete": observed.get(key, 0) >= needed[key], "coadded": key in coadded}
        for name, on in flags.items():
            per_filter[filt][name] += int(on)
            per_pointing[ref][name] += int(on)
    order = _filter_order(instruments, list(per_filter))
    rows = []
    for filt in order:
        c = per_filter[filt]
        rows.append({"filter": filt, "planned": c["planned"], "observed": c["observed"], "complete": c["complete"],
                     "coadded": c["coadded"], "observed_fraction": c["observed"] / c["planned"],
                     "complete_fraction": c["complete"] / c["planned"],
                     "coadded_fraction": c["coadded"] / c["planned"]})
    total = Counter()
    for c in per_filter.values():
        total.update(c)
    return {
        "tiling": tilings,
        "pointings": len(pointings),
        "filters": rows,
        "total": {k: total[k] for k in ("planned", "observed", "complete", "coadded")},
        "outside_plan": {"tiles": len(outside_tiles), "frames": outside_frames},
        "per_pointing": [{"id": p.id, "ra": p.ra, "dec": p.dec,
                          "size_deg": (max(p.naxis1 or 0, p.naxis2 or 0) * (p.pixel_scale or 0.0) / 3600.0),
                          **{k: per_pointing[p.id][k] for k in ("planned", "observed", "complete", "coadded")}}
                         for p in pointings],
    }


def _filter_order(instruments: Sequence[str], names: Sequence[str]) -> list[str]:
    """Filters in the order of their id in the instruments' filter system (J-PLUS: uJAVA … zSDSS), then by name."""
    def rank(name: str) -> int:
        for inst in instruments:
            try:
                return filter_index(name, instrument=inst)[0]
            except UpadError:
                continue
        return FILTER_ID_BASE

    return sorted(names, key=lambda f: (rank(f), f))


def _zoom_ra(ra: np.ndarray) -> tuple[np.ndarray, float] | None:
    """RA unwrapped around the footprint's circular mean and its span, or ``None`` when it spans > 150°."""
    if ra.size == 0:
        return None
    mean = float(np.degrees(np.arctan2(np.sin(np.radians(ra)).mean(), np.cos(np.radians(ra)).mean())))
    un = mean + ((ra - mean + 180.0) % 360.0 - 180.0)
    span = float(un.max() - un.min())
    return (un, span) if span <= 150.0 else None


def plot_progress(progress: dict[str, Any], path: str | os.PathLike, *, measure: str = "coadded") -> Path:
    """Draw the footprint, each pointing coloured by the fraction of its planned filters that are ``measure``
    (``coadded``, ``observed`` or ``complete``); written atomically as a PNG at ``path``.

    A footprint within 150° of RA and 70° of declination (and away from the poles) is drawn on a plain RA/Dec map,
    each pointing as its field (a rectangle of the grid's size, widened by 1/cos δ); a larger one on an Aitoff
    projection of the whole sky, each pointing as a square marker.
    """
    if measure not in _MEASURES:
        raise UpadError(f"unknown progress measure {measure!r}", hint=f"use one of {', '.join(_MEASURES)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise UpadError(f"cannot write the plot {path}: its directory does not exist",
                        hint="create the directory or give another --plot path")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    pts = progress["per_pointing"]
    ra = np.array([p["ra"] for p in pts], dtype=float)
    dec = np.array([p["dec"] for p in pts], dtype=float)
    frac = np.array([p[measure] / p["planned"] if p["planned"] else 0.0 for p in pts])
    size_deg = np.array([p["size_deg"] or 1.0 for p in pts])
    zoom = _zoom_ra(ra)
    if zoom is not None and (dec.max() - dec.min() > 70.0 or np.abs(dec).max() > 80.0):
        zoom = None
    fig = plt.figure(figsize=(11, 6.4), dpi=110)
    try:
        cmap = plt.get_cmap("viridis")
        norm = matplotlib.colors.Normalize(vmin=0.0, vmax=1.0)
        if zoom is not None:
            ax = fig.add_subplot(111)
            un, _ = zoom
            widths = size_deg / np.cos(np.radians(np.clip(dec, -89.0, 89.0)))
            rects = [Rectangle((x - w / 2, y - h / 2), w, h) for x, y, w, h in zip(un, dec, widths, size_deg)]
            coll = PatchCollection(rects, cmap=cmap, norm=norm, edgecolor="white", linewidth=0.3, alpha=0.85)
            coll.set_array(frac)
            ax.add_collection(coll)
            pad = float(size_deg.max())
            ax.set_xlim(float((un + widths / 2).max()) + pad, float((un - widths / 2).min()) - pad)  # RA to the left
            ax.set_ylim(float(dec.min()) - pad, float(dec.max()) + pad)
            ax.set_aspect(1.0 / max(0.05, float(np.cos(np.radians(np.clip(np.median(dec), -85, 85))))))
            ax.set_xlabel("right ascension (deg)")
            ax.set_ylabel("declination (deg)")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v % 360:g}"))
            ax.grid(True, alpha=0.3)
            mappable = coll
        else:
            ax = fig.add_subplot(111, projection="aitoff")
            x = -np.radians(((ra + 180.0) % 360.0) - 180.0)  # RA grows to the left, as on the sky
            pts_per_deg = 0.8 * 11 * 72 / 360.0  # the map spans ~80 % of the figure width
            sizes = np.clip((1.5 * size_deg * pts_per_deg) ** 2, 1.0, None)  # squares tilt near the limb: overdraw
            mappable = ax.scatter(x, np.radians(dec), c=frac, s=sizes, marker="s", cmap=cmap, norm=norm,
                                  linewidths=0)
            ax.grid(True, alpha=0.4)
            ticks = np.arange(-150, 181, 30)
            ax.set_xticks(np.radians(ticks))
            ax.set_xticklabels([f"{(-t) % 360:d}°" for t in ticks], fontsize=7)
        cb = fig.colorbar(mappable, ax=ax, orientation="horizontal", pad=0.12 if zoom is not None else 0.06,
                          fraction=0.05, shrink=0.6)
        cb.set_label(f"fraction of the planned filters {measure}")
        tot = progress["total"]
        fig.suptitle(f"survey progress: {progress['pointings']} pointings, {tot['planned']} tiles planned, "
                     f"{tot['observed']} observed, {tot['complete']} fully observed, {tot['coadded']} coadded",
                     fontsize=10)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
