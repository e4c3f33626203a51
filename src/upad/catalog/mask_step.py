"""Step ``tile_mask``: the tile mask of a pointing (:mod:`upad.catalog.masks`), before its catalogs.

One unit per pointing (``INSTRUMENT/TILE-NNNNN``), once every observed filter has its coadd (or failed for good).
Outputs: the bit-coded pixel mask on the pointing's grid (``mask``, FITS: ``TILEMASK`` image and the ``STARS`` masked),
the mangle polygons (``mangle_area``, ``mangle_veto``; ``pymangle``) and the MOC 2.0 of the unmasked area (``moc``).
The catalogs read the pixel mask: its bits enter every source's ``MASK_FLAGS``. A mask that covers the whole tile is
recorded with QC ``fail`` and its reason, and the pointing gets no catalogs.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.catalog.masks import TileMaskConfig, mangle_polygons, tile_mask, tile_moc, write_mangle
from upad.errors import DataError
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step

__all__ = ["TileMaskStep", "read_bright_stars", "read_tile_mask"]


def read_bright_stars(path: str | Path) -> dict[str, np.ndarray]:
    """A bright-star file: ``ra``, ``dec`` (deg) and a magnitude column (``mag``, ``phot_g_mean_mag``, ``Gmag``,
    ``Vmag``, ``Hpmag``, ``VTmag``; the first found), in any format astropy reads (FITS, CSV, ECSV, VOTable,
    Parquet)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise DataError(f"bright-star file {path} does not exist",
                        hint="set [steps.tile_mask] star_catalog to a file of ra, dec, mag (or leave it empty)")
    fmt = "parquet" if path.suffix.lower() == ".parquet" else ("ascii.csv" if path.suffix.lower() == ".csv"
                                                                 else None)
    t = Table.read(path, format=fmt) if fmt else Table.read(path)
    low = {c.lower(): c for c in t.colnames}

    def col(*names):
        for n in names:
            if n.lower() in low:
                c = t[low[n.lower()]]
                return np.asarray(c.filled(np.nan) if hasattr(c, "filled") else c, float)
        return None

    ra, dec = col("ra", "raj2000", "ra_icrs", "_raj2000"), col("dec", "dej2000", "de_icrs", "_dej2000")
    mag = col("mag", "phot_g_mean_mag", "gmag", "g", "vmag", "hpmag", "vtmag")
    if ra is None or dec is None or mag is None:
        raise DataError(f"bright-star file {path} needs ra, dec and a magnitude column (mag, phot_g_mean_mag, Gmag, "
                        f"Vmag, Hpmag or VTmag); it has {', '.join(t.colnames[:12])}")
    return {"ra": ra, "dec": dec, "mag": mag}


def read_tile_mask(src: Any) -> np.ndarray:
    """The pixel mask (int16) of a ``tile_mask`` product (``ResolvedInput`` or path)."""
    from astropy.io import fits

    from upad.io.products import file_of

    path = file_of(src, "mask") if not isinstance(src, (str, Path)) else src
    with fits.open(path) as hd:
        return np.asarray(hd["TILEMASK"].data, mb.MASK_DTYPE)


def _stars(task: Task, cfg: TileMaskConfig) -> tuple[dict[str, np.ndarray], list[str]]:
    from upad.errors import UpadError
    from upad.io.refcat import read_reference_catalog

    parts, notes = [], []
    if cfg.reference_catalog:
        path = Path(cfg.reference_catalog)
        path = path if path.is_absolute() else Path(task.root) / path
        try:
            ref = read_reference_catalog(path)
            g = np.asarray(ref["g"], float)
            if not np.isfinite(g).any():  # no Gaia G: the survey's r band
                g = np.asarray(ref["mag_rSDSS"], float) if "mag_rSDSS" in ref.colnames else g
            parts.append({"ra": np.asarray(ref["ra"], float), "dec": np.asarray(ref["dec"], float), "mag": g})
        except UpadError as exc:
            notes.append(f"no bright stars from the reference catalog ({exc.message})")
    if cfg.star_catalog:
        path = Path(cfg.star_catalog)
        parts.append(read_bright_stars(path if path.is_absolute() else Path(task.root) / path))
    if not parts:
        return {"ra": np.zeros(0), "dec": np.zeros(0), "mag": np.zeros(0)}, notes
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("ra", "dec", "mag")}
    if len(parts) > 1:  # a star in both: keep one (the brighter magnitude)
        from astropy.coordinates import SkyCoord

        c = SkyCoord(out["ra"], out["dec"], unit="deg")
        idx, d2d, _ = c.match_to_catalog_sky(c, nthneighbor=2)
        dup = (d2d.arcsec < 2.0) & (np.arange(len(idx)) > idx)
        out = {k: v[~dup] for k, v in out.items()}
    return out, notes


@register_step
class TileMaskStep(Step):
    """The tile mask of one pointing."""

    name = "tile_mask"
    product_kind = "tile_mask"
    area = "catalogs"
    memory_class = "large"
    config_class = TileMaskConfig
    version = "1.0"
    description = "tile mask of a pointing: exposure-fraction area, bright-star halos and spikes, coadding " \
                  "artefacts; pixel mask, mangle polygons and MOC"
    inputs = (Input("coadd", "coadd", minimum=1, maximum=None, doc="the current coadds of the pointing"),)
    outputs = (Output("mask", doc="FITS: TILEMASK (int16 mask bits LOWEXP, BRIGHT_STAR, SATELLITE on the "
                                  "pointing's grid; AREA and UNMASKED in deg2), STARS (the masked stars)"),
               Output("mangle_area", doc="mangle polygons of the tile area (.ply, pymangle)"),
               Output("mangle_veto", doc="mangle polygons of the vetoes: star discs, spikes, artefacts (.ply)"),
               Output("moc", doc="MOC 2.0 FITS of the unmasked area (mocpy)"))

    def plan(self, ctx: PlanContext, config: TileMaskConfig) -> Iterable[Unit]:
        from upad.coadd.step import pointing_coadds

        for pc in pointing_coadds(ctx):
            context = {"instrument": pc.instrument, "tile_id": pc.tile_id,
                       "night": max(p.night for p in pc.coadds.values()), "filters": sorted(pc.coadds)}
            if pc.waiting:
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"the coadds of {', '.join(pc.waiting)} of tile {pc.tile_id} are not done yet")
                continue
            yield Unit(key=pc.key, context=context, priority=178,
                       inputs=[InputRef("product", p.id, "coadd") for _, p in sorted(pc.coadds.items())])

    def run(self, task: Task) -> StepOutput:
        from astropy.io import fits
        from astropy.table import Table
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        from upad.io.products import file_of

        cfg = task.config
        paths = [file_of(r, "coadd") for r in task.inputs_by_role("coadd")]
        with fits.open(paths[0], memmap=True) as hd:
            wcs = WCS(hd["SCI"].header).celestial

        def planes(hdu: str):  # one full-size map in memory at a time
            for p in paths:
                with fits.open(p, memmap=True) as hd:
                    if hdu == "EXPMAP" and hdu not in hd:
                        raise DataError(f"{p}: no EXPMAP; is this a upad coadd?")
                    yield np.asarray(hd[hdu].data, np.float32 if hdu == "EXPMAP" else None) if hdu in hd else None

        scale = float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0
        stars, notes = _stars(task, cfg)
        mask = tile_mask(planes("EXPMAP"), planes("MASK"), wcs=wcs, pixel_scale=scale, stars=stars, config=cfg)
        tile = int(task.context["tile_id"])
        summary = mask.summary()
        stem = f"tilemask_TILE-{tile:05d}"
        # the pixel mask (lossless RICE) and the masked stars
        hdr = wcs.to_header()
        hdr["TILE_ID"] = (tile, "survey pointing")
        hdr["AREA"] = (summary["area_deg2"], "[deg2] tile area (exposure fraction)")
        hdr["UNMASKED"] = (summary["unmasked_deg2"], "[deg2] area outside every veto")
        hdr["AREAFRAC"] = (cfg.area_fraction, "exposure fraction of the tile area")
        hdr["UPADPROV"] = (task.provenance_id[:12], "provenance id of this product")
        for k, (bit, doc) in mb.header_cards().items():
            hdr[k if len(k) <= 8 else f"HIERARCH {k}"] = (bit, doc)
        stars_t = Table({k: np.asarray(v) for k, v in mask.stars.items()})
        for c in ("ra", "dec"):
            stars_t[c].unit = "deg"
        stars_t["radius_arcsec"].unit = "arcsec"
        fpath = task.stage(f"{stem}.fits")
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(mask.image, header=hdr, name="TILEMASK",
                                                           compression_type="RICE_1"),
                      fits.BinTableHDU(stars_t, name="STARS")]).writeto(fpath)
        area, veto = mangle_polygons(mask, wcs)
        apath, vpath = task.stage(f"{stem}_area.ply"), task.stage(f"{stem}_veto.ply")
        write_mangle(apath, area)
        write_mangle(vpath, veto)
        moc = tile_moc(mask, wcs, order=cfg.moc_order)
        mpath = task.stage(f"{stem}_moc.fits")
        moc.save(str(mpath), format="fits", overwrite=True)
        moc_area = float(moc.sky_fraction) * 4 * math.pi * (180 / math.pi) ** 2
        files = [OutputFile(role, str(p), self.final_path(task, p.name))
                 for role, p in (("mask", fpath), ("mangle_area", apath), ("mangle_veto", vpath), ("moc", mpath))]
        reasons = list(notes)
        status = "ok"
        if summary["unmasked_deg2"] <= 0:
            status = "fail"
            reasons.insert(0, f"the masks cover the whole tile (area {summary['area_deg2']:.4f} deg2: "
                              f"{summary['masked_fraction']}); no catalogs are made")
        meta = {**summary, "moc_area_deg2": round(moc_area, 6), "mangle_polygons": [len(area), len(veto)],
                "qc_reasons": reasons}
        return StepOutput(files=files, meta=meta, qc_status=status if status == "fail" else
                          ("warn" if reasons else "ok"))
