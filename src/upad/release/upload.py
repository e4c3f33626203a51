"""Step ``sciencedb_load``: the upload queue of the science database (:mod:`upad.db.science`).

One unit per pointing (``INSTRUMENT/TILE-NNNNN``). It waits until the pointing's catalogs are made (the dual-mode
catalog, and the single-mode catalog of every coadd with a PSF model; a catalog that failed for good does not hold it
back), then loads them with the images' properties (``tileimage``) in one transaction: the rows of the pointing's
previous load are deleted and the new ones inserted, so a rebuilt tile is reloaded and readers never see half a
pointing. The load is acknowledged twice: the science database's ``catalog_load`` row (with the provenance id of
this product) and this step's product in the process database (the receipt, with the rows loaded), which is what
the flow and ``upad sciencedb status`` read.

Where the science database is: ``[steps.sciencedb_load] url``, else the environment's ``UPAD_SCIENCE_DB_URL``,
else ``sqlite:///<data root>/science.sqlite``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update

from upad.config import StepConfig, param
from upad.db.science import CatalogColumn, ScienceDB, healpix_index
from upad.errors import DataError
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step

__all__ = ["SciencedbLoadConfig", "SciencedbLoad", "science_db_url", "load_pointing", "dual_rows", "single_rows"]

SCIENCE_DB_FILENAME = "science.sqlite"


@dataclass(frozen=True)
class SciencedbLoadConfig(StepConfig):
    """Parameters of the science database upload."""

    url: str = param("", doc="SQLAlchemy URL of the science database; empty: the environment's UPAD_SCIENCE_DB_URL, "
                             "else sqlite:///<data root>/science.sqlite", critical=False)
    detection_filter: str = param("rSDSS", doc="detection band of the dual-mode catalogs (as catalog_dual's)")
    point_source_class_star: float = param(0.9, doc="CLASS_STAR from which an object is in the point-source view "
                                                    "magabdualpointsources", bounds=(0.0, 1.0))
    overlap_match_arcsec: float = param(1.0, doc="objects of neighbouring pointings this close are one object (the "
                                                 "one nearer its tile's centre is the primary)", bounds=(0.05, 10.0),
                                        unit="arcsec")


def science_db_url(root: str | os.PathLike, configured: str = "") -> str:
    """The science database's URL: ``configured``, else ``UPAD_SCIENCE_DB_URL``, else an SQLite file in ``root``."""
    from pathlib import Path

    return configured or os.environ.get("UPAD_SCIENCE_DB_URL") or f"sqlite:///{Path(root) / SCIENCE_DB_FILENAME}"


def _columns(cat: Any, names: Iterable[str]) -> list[CatalogColumn]:
    return [CatalogColumn(n.lower(), np.asarray(cat[n]).dtype, str(cat[n].unit or "")) for n in names]


def dual_rows(cat: Any, *, tile_id: int, pointing_id: int, load_id: int, filter_ids: list[int]
              ) -> tuple[dict[str, np.ndarray], list[CatalogColumn], dict[str, np.ndarray], list[CatalogColumn]]:
    """A dual-mode catalog as rows of ``magabdualobj`` (scalar columns) and ``magabdualphot`` (its per-band array
    columns, one row per object and band, in the order of ``filter_ids``).

    Returns
    -------
    obj, obj_columns, phot, phot_columns
        Column arrays and the catalog columns of each table.
    """
    n = len(cat)
    nb = len(filter_ids)
    scalar = [c for c in cat.colnames if np.asarray(cat[c]).ndim == 1]
    banded = [c for c in cat.colnames if np.asarray(cat[c]).ndim == 2]
    for c in banded:
        if np.asarray(cat[c]).shape[1] != nb:
            raise DataError(f"dual catalog column {c} has {np.asarray(cat[c]).shape[1]} bands, the header's "
                            f"FILTERS {nb}")
    obj = {c.lower(): np.asarray(cat[c]) for c in scalar}
    obj.update(tile_id=np.full(n, tile_id, np.int64), pointing_id=np.full(n, pointing_id, np.int32),
               load_id=np.full(n, load_id, np.int32),
               hpx29=healpix_index(cat["ALPHA_J2000"], cat["DELTA_J2000"]))
    number = np.asarray(cat["NUMBER"])
    phot = {"tile_id": np.full(n * nb, tile_id, np.int64), "number": np.repeat(number, nb),
            "filter_id": np.tile(np.asarray(filter_ids, np.int32), n),
            "pointing_id": np.full(n * nb, pointing_id, np.int32), "load_id": np.full(n * nb, load_id, np.int32)}
    for c in banded:
        phot[c.lower()] = np.asarray(cat[c]).reshape(n * nb)  # row-major: object by object, bands in order
    return obj, _columns(cat, scalar), phot, _columns(cat, banded)


def single_rows(cat: Any, *, tile_id: int, pointing_id: int, load_id: int, filter_id: int
                ) -> tuple[dict[str, np.ndarray], list[CatalogColumn]]:
    """A single-mode catalog as rows of ``magabsingleobj``."""
    n = len(cat)
    names = [c for c in cat.colnames if np.asarray(cat[c]).ndim == 1]
    rows = {c.lower(): np.asarray(cat[c]) for c in names}
    rows.update(tile_id=np.full(n, tile_id, np.int64), pointing_id=np.full(n, pointing_id, np.int32),
                load_id=np.full(n, load_id, np.int32), filter_id=np.full(n, filter_id, np.int32),
                hpx29=healpix_index(cat["ALPHA_J2000"], cat["DELTA_J2000"]))
    return rows, _columns(cat, names)


def _read_catalog(path: str) -> tuple[Any, Any]:
    from astropy.io import fits
    from astropy.table import Table

    with fits.open(path) as hd:
        if "CATALOG" not in hd:
            raise DataError(f"{path}: no CATALOG table; is this a upad catalog?")
        header = hd["CATALOG"].header.copy()
    cat = Table.read(path, hdu="CATALOG")
    for c in ("NUMBER", "ALPHA_J2000", "DELTA_J2000"):
        if c not in cat.colnames:
            raise DataError(f"{path}: the catalog has no {c} column")
    return cat, header


def _image_row(info: dict[str, Any], filter_ids: dict[str, int], *, ref_tile_id: int | None, pointing_id: int,
               instrument: str, load_id: int) -> dict[str, Any]:
    """The ``tileimage`` row of one coadd (its SCI header, the single catalog's depth and completeness)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(info["path"], memmap=True) as hd:
        h = hd["SCI"].header
        ny, nx = int(h["NAXIS2"]), int(h["NAXIS1"])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = WCS(h).celestial.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]

    def num(key):
        v = h.get(key)
        return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None

    single = info.get("single") or {}

    def date(v):
        return dt.datetime.fromisoformat(v) if v else None

    return {"tile_id": int(info["tile_id"]), "filter_id": filter_ids[info["filter"]], "filter_name": info["filter"],
            "ref_tile_id": ref_tile_id, "pointing_id": pointing_id, "instrument": instrument,
            "name": f"{instrument}-{pointing_id:05d}-{info['filter']}", "ra": float(ra) % 360.0, "dec": float(dec),
            "date_first": date(info.get("date_first")), "date_last": date(info.get("date_last")),
            "ncombined": int(h.get("NCOMBINE", 0)), "exptime": num("EXPTIME"), "fwhm_arcsec": num("PSFFWHM"),
            "magzp": num("MAGZP"), "noisecor": num("NOISECOR"), "depth3arc5s": num("DEPTH5"),
            "depth3arc5s_blank": single.get("DEPTH5B"), "m50_point": single.get("M50PT"),
            "m90_point": single.get("M90PT"), "m50_ext": single.get("M50EX"), "m90_ext": single.get("M90EX"),
            "area_deg2": info.get("area_deg2"), "unmasked_deg2": info.get("unmasked_deg2"),
            "provenance_id": info.get("provenance_id"), "file_path": info.get("file"), "load_id": load_id}


def _filter_ids(instrument: str, names: Iterable[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Filter ids (the filter system's) of ``names`` and the ``filter`` rows of the whole system."""
    from upad.instruments import get_filter_system, get_instrument

    system = get_filter_system(get_instrument(instrument).filter_system)
    rows = [{"filter_id": int(f.id), "filter_name": f.name, "filter_system": system.system,
             "lambda_eff": float(f.cwl), "fwhm": float(f.fwhm), "position": i}
            for i, f in enumerate(system.filters)]
    ids = {}
    for n in names:
        f = system.lookup(n)
        if f is None:
            raise DataError(f"filter {n!r} is not in the {system.system} filter system of {instrument}")
        ids[n] = int(f.id)
    return ids, rows


def load_pointing(sdb: ScienceDB, *, instrument: str, pointing_id: int, images: list[dict[str, Any]],
                  dual: str | None, singles: dict[str, str], provenance_id: str, detection_filter: str,
                  point_source_class_star: float = 0.9, match_arcsec: float = 1.0,
                  zero_points: dict[str, float] | None = None, zp_provenance: str | None = None,
                  code_version: str = "") -> dict[str, Any]:
    """Load one pointing's catalogs and images into the science database, replacing its previous load.

    Parameters
    ----------
    sdb : ScienceDB
    instrument, pointing_id
        The pointing.
    images : list of dict
        One per coadd: ``tile_id`` (its id), ``filter``, ``path`` (the coadd FITS), ``file`` (relative path),
        ``provenance_id``, ``date_first``/``date_last`` (ISO) and ``single`` (depth/completeness header values of
        its single-mode catalog).
    dual : str or None
        The dual-mode catalog's path (``None``: the pointing has none, e.g. no detection band).
    singles : dict
        Filter → single-mode catalog path.
    provenance_id : str
        This load's provenance id (recorded in ``catalog_load``).
    match_arcsec : float
        Objects of another pointing this close are the same object (tile overlaps: one primary each).
    zero_points : dict, optional
        Filter → the tile calibration's zero-point offset, applied to the loaded magnitudes (``tileimage.zp_offset``
        records it; :meth:`~upad.db.science.ScienceDB.apply_zero_point` replaces it later without re-measuring).

    Returns
    -------
    dict
        ``load_id``, rows per table, ``replaced`` (the earlier loads of the pointing whose rows were removed).
    """
    import upad

    by_filter = {im["filter"]: im for im in images}
    fids, filter_rows = _filter_ids(instrument, by_filter)
    dual_cat = _read_catalog(dual) if dual else None
    single_cats = {f: _read_catalog(p) for f, p in singles.items()}
    for f in single_cats:
        if f not in by_filter:
            raise DataError(f"a single-mode catalog of {f} but no {f} image among the inputs")
    ref = by_filter.get(detection_filter)
    ref_id = int(ref["tile_id"]) if ref else None
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    tl, tf, ti = sdb.table("catalog_load"), sdb.table("filter"), sdb.table("tileimage")
    out: dict[str, Any] = {}
    with sdb.engine.begin() as conn:
        sdb.lock_for_load(conn)
        have = set(conn.execute(select(tf.c.filter_id)).scalars())
        missing = [r for r in filter_rows if r["filter_id"] not in have]
        if missing:
            conn.execute(tf.insert(), missing)
        old = list(conn.execute(select(tl.c.load_id).where(tl.c.instrument == instrument,
                                                           tl.c.pointing_id == pointing_id,
                                                           tl.c.replaced_at.is_(None))).scalars())
        load_id = conn.execute(tl.insert().values(
            instrument=instrument, pointing_id=pointing_id, provenance_id=provenance_id, loaded_at=now,
            catalogs=json.dumps({"dual": dual is not None, "single": sorted(singles)}),
            code_version=code_version or upad.__version__).returning(tl.c.load_id)).scalar_one()
        if old:
            old_tiles = list(conn.execute(select(ti.c.tile_id).where(ti.c.load_id.in_(old))).scalars())
            for name in ("magabdualobj", "magabsingleobj"):
                sdb.forget_overlaps(conn, name, old_tiles)
            for name in ("magabdualobj", "magabdualphot", "magabsingleobj"):
                if sdb.has_table(name):
                    conn.execute(delete(sdb.table(name)).where(sdb.table(name).c.load_id.in_(old)))
            conn.execute(delete(ti).where(ti.c.load_id.in_(old)))
            conn.execute(update(tl).where(tl.c.load_id.in_(old)).values(replaced_at=now))
        conn.execute(ti.insert(), [_image_row(im, fids, ref_tile_id=ref_id, pointing_id=pointing_id,
                                              instrument=instrument, load_id=load_id) for im in images])
        n_dual = n_phot = n_single = 0
        if dual_cat is not None:
            cat, hdr = dual_cat
            if ref_id is None:
                raise DataError(f"a dual-mode catalog but no {detection_filter} image among the inputs")
            names = [s for s in str(hdr.get("FILTERS", "")).split(",") if s]
            unknown = [s for s in names if s not in fids]
            if unknown:
                raise DataError(f"{dual}: the dual catalog's FILTERS {unknown} have no image among the inputs")
            obj, obj_cols, phot, phot_cols = dual_rows(cat, tile_id=ref_id, pointing_id=pointing_id,
                                                       load_id=load_id, filter_ids=[fids[s] for s in names])
            sdb.ensure_catalog_table(conn, "magabdualobj", obj_cols)
            sdb.ensure_catalog_table(conn, "magabdualphot", phot_cols)
            n_dual = sdb.bulk_insert(conn, "magabdualobj", obj)
            n_phot = sdb.bulk_insert(conn, "magabdualphot", phot)
            sdb.ensure_point_source_view(conn, class_star=point_source_class_star)
        for f, (cat, _) in sorted(single_cats.items()):
            rows, cols = single_rows(cat, tile_id=int(by_filter[f]["tile_id"]), pointing_id=pointing_id,
                                     load_id=load_id, filter_id=fids[f])
            sdb.ensure_catalog_table(conn, "magabsingleobj", cols)
            n_single += sdb.bulk_insert(conn, "magabsingleobj", rows)
        for im in images:
            off = (zero_points or {}).get(im["filter"])
            if off is not None:
                sdb.apply_zero_point(conn, tile_id=int(im["tile_id"]), offset=float(off), provenance=zp_provenance)
        n_dup = {name: sdb.resolve_overlaps(conn, name, load_id, match_arcsec=match_arcsec)
                 for name in ("magabdualobj", "magabsingleobj") if sdb.has_table(name)}
        conn.execute(update(tl).where(tl.c.load_id == load_id).values(
            n_dual=n_dual, n_dual_phot=n_phot, n_single=n_single, n_images=len(images)))
        out.update(load_id=int(load_id), n_dual=n_dual, n_dual_phot=n_phot, n_single=n_single,
                   n_images=len(images), replaced=[int(x) for x in old], duplicates=n_dup,
                   zero_points={f: v for f, v in (zero_points or {}).items() if f in by_filter})
        # a load that lost a race with another load of the same pointing would leave two current loads
        current = conn.execute(select(func.count()).select_from(tl).where(
            tl.c.instrument == instrument, tl.c.pointing_id == pointing_id, tl.c.replaced_at.is_(None))).scalar()
        if current != 1:
            raise DataError(f"{current} current loads of {instrument} pointing {pointing_id}: another load ran at the "
                            "same time; this one is rolled back")
    return out


def _date_ranges(session: Any, coadd_ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """First and last exposure start (ISO) of the frames of each coadd (through the provenance of its inputs)."""
    from upad.db.models import Frame, Product, ProvenanceInput

    out: dict[int, tuple[str | None, str | None]] = {}
    for cid in coadd_ids:
        prov = session.get(Product, cid).provenance_id
        reduced = select(ProvenanceInput.input_id).where(ProvenanceInput.provenance_id == prov,
                                                         ProvenanceInput.input_kind == "product")
        red_prov = select(Product.provenance_id).where(Product.id.in_(reduced))
        frames = select(ProvenanceInput.input_id).where(ProvenanceInput.provenance_id.in_(red_prov),
                                                        ProvenanceInput.input_kind == "frame")
        lo, hi = session.execute(select(func.min(Frame.date_obs), func.max(Frame.date_obs)).where(
            Frame.id.in_(frames))).one()
        out[cid] = (lo.isoformat() if lo else None, hi.isoformat() if hi else None)
    return out


@register_step
class SciencedbLoad(Step):
    """The upload of one pointing's catalogs into the science database."""

    name = "sciencedb_load"
    product_kind = "sciencedb_load"
    area = "catalogs"
    memory_class = "medium"
    config_class = SciencedbLoadConfig
    version = "1.0"
    description = "upload queue: a pointing's catalogs and images loaded into the science database, replacing its " \
                  "previous load; the receipt acknowledges it"
    inputs = (Input("coadd", "coadd", minimum=1, maximum=None, doc="the current coadds of the pointing"),
              Input("dual", "catalog_dual", minimum=0, maximum=1, doc="the pointing's dual-mode catalog"),
              Input("single", "catalog_single", minimum=0, maximum=None, doc="the single-mode catalogs"),
              Input("tile_mask", "tile_mask", minimum=0, maximum=1, doc="the pointing's tile mask (its areas)"),
              Input("calibration", "tile_calibration", minimum=0, maximum=1,
                    doc="the tile calibration of the dual catalog (its zero points are applied)"))
    outputs = (Output("receipt", doc="JSON: what was loaded (load id, rows per table, catalogs' provenance ids)"),)

    def plan(self, ctx: PlanContext, config: SciencedbLoadConfig) -> Iterable[Unit]:
        from upad.coadd.step import made_from_coadds, pointing_coadds, pointing_products, tile_unit_key

        duals = pointing_products(ctx.session, "catalog_dual")
        singles = pointing_products(ctx.session, "catalog_single", by_filter=True)
        masks = pointing_products(ctx.session, "tile_mask")
        calibrations = pointing_products(ctx.session, "tile_calibration")
        failed_cal = ctx.failed_units("tile_calibration")
        failed_single = ctx.failed_units("catalog_single")
        failed_dual = ctx.failed_units("catalog_dual")
        for pc in pointing_coadds(ctx):
            inst, tid = pc.instrument, pc.tile_id
            context = {"instrument": inst, "tile_id": tid, "night": max(p.night for p in pc.coadds.values())}
            if pc.waiting:
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"the coadds of {', '.join(pc.waiting)} of tile {tid} are not done yet")
                continue
            with_psf = {f for f, p in pc.coadds.items() if any(x.get("role") == "psf" for x in (p.files or []))}
            coadd_ids = {p.id for p in pc.coadds.values()}
            dual = duals.get((inst, tid))
            mine = {f: singles[(inst, tid, f)] for f in pc.coadds if (inst, tid, f) in singles}
            made_from = made_from_coadds(ctx.session, [p.provenance_id for p in [dual, *mine.values()] if p])
            if dual is not None and not made_from.get(dual.provenance_id, set()) <= coadd_ids:
                dual = None  # made from a coadd that was rebuilt since: the new one is coming
            mine = {f: p for f, p in mine.items() if made_from.get(p.provenance_id) == {pc.coadds[f].id}}
            mask = masks.get((inst, tid))
            if mask is not None and made_from_coadds(ctx.session, [mask.provenance_id]).get(
                    mask.provenance_id, set()) != coadd_ids:
                mask = None  # made from coadds rebuilt since: the new one is coming
            # a tile mask that leaves nothing means no catalogs will come: the images alone are loaded
            nothing = mask is not None and mask.qc_status == "fail"
            pending = [] if nothing else sorted(f for f in with_psf if f not in mine
                                                and tile_unit_key(inst, tid, f) not in failed_single)
            need_dual = not nothing and config.detection_filter in with_psf and pc.key not in failed_dual
            if pending or (need_dual and dual is None):
                what = ([f"single-mode catalogs of {', '.join(pending)}"] if pending else []) + \
                       (["the dual-mode catalog"] if need_dual and dual is None else [])
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"tile {tid}: waiting for {' and '.join(what)}")
                continue
            inputs = [InputRef("product", p.id, "coadd") for _, p in sorted(pc.coadds.items())]
            if mask is not None:
                inputs.append(InputRef("product", mask.id, "tile_mask"))
            if dual is not None:
                inputs.append(InputRef("product", dual.id, "dual"))
                cal = calibrations.get((inst, tid))
                ok = cal is not None and made_from_coadds(ctx.session, [cal.provenance_id], role="dual").get(
                    cal.provenance_id) == {dual.id}
                if ok:
                    inputs.append(InputRef("product", cal.id, "calibration"))
                elif pc.key not in failed_cal:
                    yield Unit(key=pc.key, ready=False, context=context,
                               reason=f"tile {tid}: waiting for the tile calibration of its dual catalog")
                    continue
            inputs += [InputRef("product", p.id, "single") for _, p in sorted(mine.items())]
            dates = _date_ranges(ctx.session, [p.id for p in pc.coadds.values()])
            context["dates"] = {str(k): v for k, v in dates.items()}
            yield Unit(key=pc.key, context=context, priority=190, inputs=inputs)

    def run(self, task: Task) -> StepOutput:
        from upad.flow.provenance import code_version
        from upad.io.products import file_of

        cfg = task.config
        inst, tid = str(task.context["instrument"]), int(task.context["tile_id"])
        singles_in = {r.meta.get("context", {}).get("filter"): r for r in task.inputs_by_role("single")}
        singles = {f: file_of(r, "catalog") for f, r in singles_in.items()}
        coadds = [{"tile_id": r.id, "filter": (r.meta.get("context") or {}).get("filter"),
                   "path": file_of(r, "coadd"), "file": os.path.relpath(file_of(r, "coadd"), task.root),
                   "provenance_id": r.meta.get("provenance_id")} for r in task.inputs_by_role("coadd")]
        masks = task.inputs_by_role("tile_mask")
        images = image_infos(coadds, singles, task.context.get("dates") or {},
                             file_of(masks[0], "mask") if masks else None)
        duals = task.inputs_by_role("dual")
        dual = file_of(duals[0], "catalog") if duals else None
        cals = task.inputs_by_role("calibration")
        zero_points, zp_prov = None, None
        if cals:
            from upad.catalog.calibration import TileCalibration

            zero_points = TileCalibration.read(file_of(cals[0], "zeropoints")).offsets()
            zp_prov = cals[0].meta.get("provenance_id")
        url = science_db_url(task.root, cfg.url)
        sdb = ScienceDB(url)
        try:
            res = load_pointing(sdb, instrument=inst, pointing_id=tid, images=images, dual=dual, singles=singles,
                                zero_points=zero_points, zp_provenance=zp_prov,
                                provenance_id=task.provenance_id, detection_filter=cfg.detection_filter,
                                point_source_class_star=cfg.point_source_class_star,
                                match_arcsec=cfg.overlap_match_arcsec, code_version=code_version(self.version))
        finally:
            sdb.dispose()
        receipt = {"science_db": _safe_url(url), **res,
                   "catalogs": {"dual": duals[0].meta.get("provenance_id") if duals else None,
                                "single": {f: r.meta.get("provenance_id") for f, r in singles_in.items()}},
                   "images": {im["filter"]: im["tile_id"] for im in images}}
        staged = task.stage(f"sciencedb_load_TILE-{tid:05d}.json")
        staged.write_text(json.dumps(receipt, indent=1, sort_keys=True))
        reasons = [] if duals else ["no dual-mode catalog (no detection band): single-mode catalogs only"]
        return StepOutput(files=[OutputFile("receipt", str(staged), self.final_path(task, staged.name))],
                          meta={**receipt, "qc_reasons": reasons}, qc_status="warn" if reasons else "ok")


def image_infos(coadds: list[dict[str, Any]], singles: dict[str, str], dates: dict[str, Any],
                mask: str | None) -> list[dict[str, Any]]:
    """The ``images`` of :func:`load_pointing`: each coadd (``tile_id``, ``filter``, ``path``, ``file``,
    ``provenance_id``) with its exposure dates (``dates``: product id → first, last), its single-mode catalog's
    depth and completeness (``singles``: filter → path) and the tile mask's areas (``mask``: its path)."""
    areas: dict[str, Any] = {}
    if mask:
        from astropy.io import fits

        with fits.open(mask) as hd:
            areas = {"area_deg2": hd["TILEMASK"].header.get("AREA"),
                     "unmasked_deg2": hd["TILEMASK"].header.get("UNMASKED")}
    out = []
    for c in coadds:
        first, last = dates.get(str(c["tile_id"])) or (None, None)
        single = _single_header(singles[c["filter"]]) if c["filter"] in singles else {}
        out.append({**c, "date_first": first, "date_last": last, "single": single, **areas})
    return out


def _single_header(path: str) -> dict[str, Any]:
    from astropy.io import fits

    with fits.open(path) as hd:
        h = hd["CATALOG"].header
        return {k: float(h[k]) for k in ("DEPTH5B", "M50PT", "M90PT", "M50EX", "M90EX") if k in h}


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def configured_url(settings: Any, override: str | None = None) -> str:
    """The science database URL a command uses: ``override``, else ``[steps.sciencedb_load] url`` of the root's
    ``upad.toml``, else the environment's ``UPAD_SCIENCE_DB_URL``, else the root's SQLite file."""
    from upad.config import load_config_document, step_values

    if override:
        return override
    values = step_values(load_config_document(settings.root), SciencedbLoad.name, SciencedbLoadConfig)
    return science_db_url(settings.root, SciencedbLoadConfig.from_mapping(values).url)


def reload_all(db: Any, settings: Any, url: str, *, progress: Any = None) -> list[dict[str, Any]]:
    """Load every pointing of the current ``sciencedb_load`` products again, from their own inputs (after the
    science database was emptied or rebuilt). Per pointing: the load's result, or its error (the others go on)."""
    from upad.config import load_config_document, step_values
    from upad.db.models import Product

    cfg = SciencedbLoadConfig.from_mapping(step_values(load_config_document(settings.root), SciencedbLoad.name,
                                                       SciencedbLoadConfig))
    with db.session() as s:
        loads = list(s.scalars(select(Product).where(Product.step == SciencedbLoad.name,
                                                     Product.is_current.is_(True)).order_by(Product.id)))
        plan = []
        for p in loads:
            ins: dict[str, list[Any]] = {}
            for i in p.provenance.inputs:
                if i.input_kind == "product":
                    ins.setdefault(i.role, []).append(s.get(Product, i.input_id))
            plan.append((p, ins))
    sdb = ScienceDB(url)
    out = []
    try:
        for p, ins in plan:
            ctx = p.context or {}

            def path(prod, role):
                return str(settings.root / next(f["path"] for f in prod.files if f["role"] == role))

            singles = {q.context.get("filter"): path(q, "catalog") for q in ins.get("single", [])}
            coadds = [{"tile_id": c.id, "filter": c.context.get("filter"), "path": path(c, "coadd"),
                       "file": next(f["path"] for f in c.files if f["role"] == "coadd"),
                       "provenance_id": c.provenance_id} for c in ins.get("coadd", [])]
            masks = ins.get("tile_mask") or []
            try:
                images = image_infos(coadds, singles, ctx.get("dates") or {},
                                     path(masks[0], "mask") if masks else None)
                cal = ins.get("calibration") or []
                zps = None
                if cal:
                    from upad.catalog.calibration import TileCalibration

                    zps = TileCalibration.read(path(cal[0], "zeropoints")).offsets()
                res = load_pointing(sdb, instrument=ctx["instrument"], pointing_id=int(ctx["tile_id"]),
                                    zero_points=zps, zp_provenance=cal[0].provenance_id if cal else None,
                                    images=images, dual=path(ins["dual"][0], "catalog") if ins.get("dual") else None,
                                    singles=singles,
                                    provenance_id=p.provenance_id, detection_filter=cfg.detection_filter,
                                    point_source_class_star=cfg.point_source_class_star,
                                    match_arcsec=cfg.overlap_match_arcsec)
                out.append({"unit": p.unit_key, **res})
            except (DataError, OSError, KeyError, StopIteration) as exc:
                out.append({"unit": p.unit_key, "error": f"{type(exc).__name__}: {exc}"})
            if progress is not None:
                progress()
    finally:
        sdb.dispose()
    return out
