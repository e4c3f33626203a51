"""Tile photometric calibration: zero points of a pointing's coadds against the reference, zero-point maps and a
stellar-locus check across its filters (pure functions), and the step ``tile_calibration``.

Per filter, the dual-mode catalog's aperture-corrected total fluxes (``FLUX_APER_COR_6_0``, counts at the coadd's
``MAGZP``) of the unflagged stars matched to the reference catalog are fitted exactly as the daily pipeline fits a
frame (:func:`upad.reduce.photcal.calibrate_zero_point`: ``mag_<filter>`` synthetic photometry when the reference has
it, else Gaia G and BP−RP through the packaged transformation; colour term with a prior; a residual zero-point map of
order ``zp_map_order`` over the tile). The tile's **zero-point offset** is the fitted zero point minus the coadd's
``MAGZP``: what must be added to the catalog's magnitudes in that filter.

The **stellar-locus check** (three filters or more): the reference catalog's stars give the locus, the running median
of ``mag_X − mag_det`` against a principal colour (``gSDSS − iSDSS`` where both exist, else the bluest minus the
reddest filter other than the detection band); the pointing's point-like stars with good photometry (PSF-corrected
magnitudes) are compared with it, and the median residual per filter is the locus offset — an independent check of
the relative zero points (it needs no star-by-star match).

Zero points are stored with their provenance (the step's product) and re-appliable without re-measuring:
:func:`apply_zero_points` shifts a catalog's magnitudes, and the science database keeps the offset applied to each
image (``tileimage.zp_offset``) so that a new one replaces it in place (:meth:`upad.db.science.ScienceDB.apply_zero_point`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from upad.config import StepConfig, param
from upad.errors import DataError
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step
from upad.reduce.photometry import PhotometryConfig

__all__ = ["TileCalibrationConfig", "tile_zero_points", "stellar_locus_offsets", "apply_zero_points",
           "TileCalibration", "magnitude_columns"]


@dataclass(frozen=True)
class TileCalibrationConfig(StepConfig):
    """Parameters of the tile photometric calibration."""

    reference_catalog: str = param("reference/refcat.fits", doc="the photometric reference (as the reduce step's; "
                                   "relative to the data root, or absolute)")
    flux_column: str = param("APER_COR_6_0", doc="the catalog's total flux used (FLUX_<name>)")
    match_arcsec: float = param(1.0, doc="match radius of the catalog's stars to the reference", bounds=(0.05, 10.0),
                                unit="arcsec")
    locus_min_stars: int = param(30, doc="fewest reference stars (locus) and tile stars for the stellar-locus check",
                                 bounds=(5, None))
    locus_min_snr: float = param(50.0, doc="S/N of the tile stars used by the stellar-locus check (the principal "
                                           "colour's noise drags the locus median: at S/N 20 by 0.02 mag)",
                                 bounds=(3, None))
    locus_class_star: float = param(0.8, doc="CLASS_STAR of the tile stars used by the stellar-locus check",
                                    bounds=(0.0, 1.0))
    photometry: PhotometryConfig = PhotometryConfig()


def magnitude_columns(colnames: Iterable[str]) -> list[str]:
    """The magnitude columns a zero point shifts (``MAG_*`` but not ``MAG_ERR_*``)."""
    return [c for c in colnames if c.startswith("MAG_") and not c.startswith("MAG_ERR_")]


def tile_zero_points(cat: Any, refcat: Any, *, shape: tuple[int, int], config: TileCalibrationConfig
                     ) -> dict[str, dict[str, Any]]:
    """Zero-point offset, error, stars, colour term and map per filter of a dual-mode catalog.

    Parameters
    ----------
    cat : astropy.table.Table
        A dual-mode catalog (meta ``FILTERS`` and ``MAGZP``).
    refcat : astropy.table.Table
        The reference catalog (:func:`upad.io.refcat.read_reference_catalog`) over the pointing.
    shape : (ny, nx)
        The pointing's grid (coordinates of the maps).

    Returns
    -------
    dict
        Filter → ``offset`` (mag, to add to the catalog's magnitudes), ``error``, ``rms``, ``n_stars``, ``source``,
        ``colour_term``, ``map_order``, ``map_coef``, ``map_rms``, ``magzp`` (the coadd's), ``note``; a filter
        without a usable reference has ``offset`` None and the reason in ``note``.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from upad.reduce.errors import ReductionError
    from upad.reduce.photcal import calibrate_zero_point

    filters = [f for f in str(cat.meta.get("FILTERS", "")).split(",") if f]
    magzps = [float(v) for v in str(cat.meta.get("MAGZP", "")).split(",") if v]
    if not filters or len(magzps) != len(filters):
        raise DataError("the catalog's header has no FILTERS/MAGZP: is it a upad dual-mode catalog?")
    fcol = f"FLUX_{config.flux_column}"
    if fcol not in cat.colnames:
        raise DataError(f"the catalog has no {fcol} column (flux_column = {config.flux_column!r})")
    c = SkyCoord(np.asarray(cat["ALPHA_J2000"]), np.asarray(cat["DELTA_J2000"]), unit="deg")
    r = SkyCoord(np.asarray(refcat["ra"]), np.asarray(refcat["dec"]), unit="deg")
    idx, d2d, _ = c.match_to_catalog_sky(r)
    ok = d2d < config.match_arcsec * u.arcsec
    det_index, ref_index = np.flatnonzero(ok), idx[ok]
    x, y = np.asarray(cat["X_IMAGE"], float) - 1, np.asarray(cat["Y_IMAGE"], float) - 1
    out: dict[str, dict[str, Any]] = {}
    for j, (f, magzp) in enumerate(zip(filters, magzps)):
        flux = np.asarray(cat[fcol][:, j], float)
        err = np.asarray(cat[f"FLUXERR_{config.flux_column}"][:, j], float)
        good = (np.asarray(cat["FLAGS"][:, j]) == 0) & (np.asarray(cat["DET_FLAGS"]) == 0)
        try:
            zp = calibrate_zero_point(flux, err, x, y, refcat, det_index=det_index, ref_index=ref_index,
                                      exptime=1.0, filter_name=f, shape=shape, good=good,
                                      config=dataclasses.replace(config.photometry, zp_nominal_fallback=False))
        except ReductionError as exc:
            out[f] = {"offset": None, "magzp": magzp, "note": f"{exc.reason}: {exc.message}", "n_stars": 0}
            continue
        if zp.source == "nominal":
            out[f] = {"offset": None, "magzp": magzp, "note": zp.note, "n_stars": 0}
            continue
        out[f] = {"offset": round(zp.zp_e - magzp, 5), "error": round(zp.error, 5), "rms": round(zp.rms, 5),
                  "n_stars": int(zp.n_stars), "source": zp.source, "colour_term": round(zp.colour_term, 5),
                  "map_order": int(zp.map_order), "map_coef": [round(float(v), 6) for v in zp.map_coef],
                  "map_rms": round(zp.map_rms, 5), "magzp": magzp, "zp": round(zp.zp_e, 5), "note": zp.note}
    return out


def _running_median(xr: np.ndarray, yr: np.ndarray, x: np.ndarray, *, nbins: int = 12, min_n: int = 5
                    ) -> np.ndarray:
    """The running median of ``yr`` against ``xr`` (quantile bins), interpolated at ``x`` (NaN outside)."""
    edges = np.quantile(xr, np.linspace(0, 1, nbins + 1))
    centres, meds = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (xr >= lo) & (xr <= hi)
        if sel.sum() >= min_n:
            centres.append(float(np.median(xr[sel])))
            meds.append(float(np.median(yr[sel])))
    if len(centres) < 2:
        return np.full(len(x), np.nan)
    return np.interp(x, centres, meds, left=np.nan, right=np.nan)


def stellar_locus_offsets(cat: Any, refcat: Any, *, config: TileCalibrationConfig,
                          offsets: dict[str, float] | None = None) -> dict[str, Any]:
    """Median offset of the pointing's stellar colours ``X − det`` from the reference catalog's locus, per filter.

    Parameters
    ----------
    cat : astropy.table.Table
        A dual-mode catalog.
    refcat : astropy.table.Table
        The reference catalog with ``mag_<filter>`` columns (its stars draw the locus).
    offsets : dict, optional
        Zero-point offsets to apply to the catalog's magnitudes first (the calibrated colours are checked).

    Returns
    -------
    dict
        ``principal`` (the colour), ``filters`` → ``{"offset", "n"}``, or ``skipped`` with the reason.
    """
    filters = [f for f in str(cat.meta.get("FILTERS", "")).split(",") if f]
    det = str(cat.meta.get("DETFILT", ""))
    have = [f for f in filters if f"mag_{f}" in refcat.colnames]
    if len(filters) < 3 or det not in have or len(have) < 3:
        return {"skipped": f"the stellar-locus check needs three filters with reference magnitudes (this pointing: "
                           f"{', '.join(filters)}; the reference has {len(have)} of them, detection {det})"}
    if "gSDSS" in have and "iSDSS" in have:
        blue, red = "gSDSS", "iSDSS"
    else:
        others = [f for f in have if f != det]
        blue, red = others[0], others[-1]
    offsets = offsets or {}
    j = {f: k for k, f in enumerate(filters)}
    mag = {f: np.asarray(cat["MAG_PSFCOR"][:, j[f]], float) + (offsets.get(f) or 0.0) for f in filters}
    err = {f: np.asarray(cat["MAG_ERR_PSFCOR"][:, j[f]], float) for f in filters}
    star = (np.asarray(cat["CLASS_STAR"]) >= config.locus_class_star) & (np.asarray(cat["DET_FLAGS"]) == 0)
    for f in (blue, red, det):
        star &= (mag[f] < 50) & (err[f] < 1.0857 / config.locus_min_snr)
    ref = {f: np.asarray(refcat[f"mag_{f}"], float) for f in have}
    rgood = np.isfinite(ref[blue]) & np.isfinite(ref[red]) & np.isfinite(ref[det])
    if star.any():  # the locus of the same population: reference stars in the tile stars' range of magnitude
        lo, hi = np.percentile(mag[det][star], [2, 98])
        rgood &= (ref[det] >= lo) & (ref[det] <= hi)
    if rgood.sum() < config.locus_min_stars or star.sum() < config.locus_min_stars:
        return {"skipped": f"too few stars for the stellar locus ({int(rgood.sum())} reference, {int(star.sum())} "
                           f"in the tile; {config.locus_min_stars} needed)", "principal": f"{blue}-{red}"}
    pc_ref = ref[blue][rgood] - ref[red][rgood]
    pc = mag[blue] - mag[red]
    out: dict[str, Any] = {"principal": f"{blue}-{red}", "filters": {}}
    for f in have:
        if f == det:
            continue
        sel = star & (mag[f] < 50) & (err[f] < 1.0857 / config.locus_min_snr)
        locus = _running_median(pc_ref, (ref[f] - ref[det])[rgood], pc[sel])
        resid = (mag[f][sel] - mag[det][sel]) - locus
        resid = resid[np.isfinite(resid)]
        if resid.size >= config.locus_min_stars // 2:
            out["filters"][f] = {"offset": round(float(np.median(resid)), 4), "n": int(resid.size),
                                 "scatter": round(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 4)}
    return out


def apply_zero_points(cat: Any, offsets: dict[str, float]) -> Any:
    """A copy of a dual-mode catalog with each filter's magnitudes shifted by its zero-point offset (fluxes are
    unchanged; non-detections stay 99 and their upper limits in ``MAG_ERR_*`` move with the zero point; the header's
    ``MAGZP`` follows)."""
    out = cat.copy()
    filters = [f for f in str(cat.meta.get("FILTERS", "")).split(",") if f]
    d = np.array([offsets.get(f) or 0.0 for f in filters])
    for c in magnitude_columns(out.colnames):
        m = np.asarray(out[c], float)
        ecol = c.replace("MAG_", "MAG_ERR_", 1)
        measured = m < 50
        out[c] = np.where(measured, m + d[None, :], m).astype(out[c].dtype)
        if ecol in out.colnames:
            e = np.asarray(out[ecol], float)
            out[ecol] = np.where(~measured & (e > 0) & (e < 50), e + d[None, :], e).astype(out[ecol].dtype)
    zps = [float(v) for v in str(cat.meta.get("MAGZP", "")).split(",") if v]
    if len(zps) == len(filters):
        out.meta["MAGZP"] = ",".join(f"{z + dd:.4f}" for z, dd in zip(zps, d))
    return out


@dataclass
class TileCalibration:
    """What ``tile_calibration`` writes (``zeropoints_TILE-NNNNN.json``)."""

    tile_id: int
    zero_points: dict[str, dict[str, Any]]
    locus: dict[str, Any]

    def offsets(self) -> dict[str, float]:
        return {f: z["offset"] for f, z in self.zero_points.items() if z.get("offset") is not None}

    @classmethod
    def read(cls, path: str | Path) -> "TileCalibration":
        d = json.loads(Path(path).read_text())
        return cls(int(d["tile_id"]), d["zero_points"], d.get("locus", {}))


@register_step
class TileCalibrationStep(Step):
    """The photometric calibration of one pointing's coadds."""

    name = "tile_calibration"
    product_kind = "tile_calibration"
    area = "catalogs"
    memory_class = "small"
    config_class = TileCalibrationConfig
    version = "1.0"
    description = "tile photometric calibration: zero points against the reference, zero-point maps, stellar locus"
    inputs = (Input("dual", "catalog_dual", doc="the pointing's dual-mode catalog"),)
    outputs = (Output("zeropoints", doc="JSON: per filter the zero-point offset, error, stars, colour term and map; "
                                        "the stellar-locus offsets"),)

    def plan(self, ctx: PlanContext, config: TileCalibrationConfig) -> Iterable[Unit]:
        from upad.coadd.step import pointing_products

        for (inst, tid), p in sorted(pointing_products(ctx.session, "catalog_dual").items()):
            yield Unit(key=p.unit_key, context={"instrument": inst, "tile_id": tid, "night": p.night},
                       priority=188, inputs=[InputRef("product", p.id, "dual")])

    def run(self, task: Task) -> StepOutput:
        from astropy.table import Table

        from upad.io.products import file_of
        from upad.io.refcat import in_cone, read_reference_catalog

        cfg = task.config
        path = file_of(task.input("dual"), "catalog")
        cat = Table.read(path, hdu="CATALOG")  # its header cards are in cat.meta
        shape = (int(cat.meta.get("GRIDNY", 0)), int(cat.meta.get("GRIDNX", 0)))
        if not all(shape):
            x, y = np.asarray(cat["X_IMAGE"]), np.asarray(cat["Y_IMAGE"])
            shape = (int(np.ceil(y.max())) + 1, int(np.ceil(x.max())) + 1)
        ref_path = Path(cfg.reference_catalog)
        ref_path = ref_path if ref_path.is_absolute() else Path(task.root) / ref_path
        refcat = read_reference_catalog(ref_path)
        ra, dec = np.asarray(cat["ALPHA_J2000"]), np.asarray(cat["DELTA_J2000"])
        from upad.db.science import angular_distance_arcsec

        ra0, dec0 = float(np.median(ra)), float(np.median(dec))
        radius = float(angular_distance_arcsec(ra, dec, ra0, dec0).max()) / 3600.0 + 0.01
        refcat = in_cone(refcat, ra0, dec0, radius)
        zps = tile_zero_points(cat, refcat, shape=shape, config=cfg)
        offsets = {f: z["offset"] for f, z in zps.items() if z.get("offset") is not None}
        locus = stellar_locus_offsets(cat, refcat, config=cfg, offsets=offsets)
        tile = int(task.context["tile_id"])
        calib = {"tile_id": tile, "catalog_provenance": task.input("dual").meta.get("provenance_id"),
                 "reference_catalog": str(ref_path), "zero_points": zps, "locus": locus}
        staged = task.stage(f"zeropoints_TILE-{tile:05d}.json")
        staged.write_text(json.dumps(calib, indent=1, sort_keys=True))
        reasons = [f"{f}: no zero point ({z['note']})" for f, z in zps.items() if z.get("offset") is None]
        reasons += [f"{f}: the stellar locus is {v['offset']:+.3f} mag off" for f, v in
                    (locus.get("filters") or {}).items() if abs(v["offset"]) > 0.05]
        meta = {"offsets": offsets, "errors": {f: z.get("error") for f, z in zps.items()},
                "n_stars": {f: z.get("n_stars") for f, z in zps.items()},
                "locus": {f: v["offset"] for f, v in (locus.get("filters") or {}).items()},
                "locus_skipped": locus.get("skipped"), "qc_reasons": reasons}
        return StepOutput(files=[OutputFile("zeropoints", str(staged), self.final_path(task, staged.name))],
                          meta=meta, qc_status="warn" if reasons else "ok")
