"""Step ``coadd``: the coadd of one tile (survey pointing) in one filter, from its quality-selected reduced frames.

One unit per instrument, tile and filter. Planning follows the survey's tiling pipeline: the science frames of the
tile in the filter (from every night: a tile's exposures can be spread over nights) → their current reduced frames
→ the quality selection (the reduced frame's QC status, ``qc_accept``, and an optional regular expression on the raw
file name, ``select``). A unit is ready when none of the tile's frames in the filter is still to be reduced (a
reduction that failed for good does not hold it) and at least ``min_exposures`` frames are usable; otherwise it waits
with the reason. Flagging a frame invalid makes its coadd stale (the provenance graph) and the next pass plans the
tile again without it; a new good frame of a finished tile changes the unit's inputs and re-coadds it. The older
coadd stays, superseded.

The pixel grid is the tile's, not the inputs': a TAN projection centred on the pointing, at the instrument's pixel
scale, covering the field plus ``margin_arcsec`` — the same grid for every filter of the pointing, so that the
coadds of a pointing are registered at pixel level.

The worker (:mod:`upad.coadd.pipeline`) reads each reduced frame, subtracts its background, scales it to the coadd's
zero point, resamples it onto the grid, rejects outliers against the median with the noise model and combines the
survivors with inverse-variance weights.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from upad.config import StepConfig, param
from upad.db.models import Frame, Product, Tile
from upad.flow.queries import FRAME_COLUMNS, PLANNABLE_DATES, PlanContext
from upad.flow.step import Input, InputRef, Output, Step, Unit, register_step
from upad.reduce.detect import DetectConfig
from upad.reduce.psf import PsfConfig
from upad.reduce.steps import unit_key

__all__ = ["CoaddConfig", "Coadd", "tile_unit_key"]


@dataclass(frozen=True)
class CoaddConfig(StepConfig):
    """Parameters of the tile coadd."""

    qc_accept: tuple = param(("ok", "warn"), doc="QC statuses of the reduced frames a coadd may use ('ok': every "
                             "threshold met; 'warn': a threshold exceeded, e.g. seeing or depth)")
    select: str = param("", doc="regular expression on the raw file name: only matching exposures are coadded "
                        "(empty: all)")
    min_exposures: int = param(1, doc="fewest usable exposures for a coadd", bounds=(1, None))
    margin_arcsec: float = param(60.0, doc="the tile grid's margin beyond the camera field on each side (arcsec): "
                                 "dithers and pointing errors", bounds=(0.0, 3600.0))
    clip_sigma: float = param(4.0, doc="outlier rejection: CLIP_SIGMA of SWarp's CLIPPED rule", bounds=(1.0, 100.0))
    clip_ampfrac: float = param(0.3, doc="outlier rejection: CLIP_AMPFRAC of SWarp's CLIPPED rule (tolerates PSF "
                                "differences on bright stars)", bounds=(0.0, 10.0))
    zero_point: float = param(0.0, doc="AB zero point of the coadd (magnitude of 1 count); 0: the median of the "
                              "inputs' zero points", bounds=(0.0, 40.0))
    relative_astrometry: bool = param(True, doc="joint astrometry of the exposures against each other and the "
                                      "reference catalog: one affine correction of each exposure's WCS "
                                      "(upad.coadd.relative)")
    relative_photometry: bool = param(True, doc="relative photometric scaling from the stars the exposures have in "
                                      "common (offsets with a weighted mean of 0: the inputs' absolute zero point "
                                      "is carried)")
    relcal_min_stars: int = param(10, doc="fewest stars an exposure must share (with the others or the reference) "
                                  "to be corrected; below, it keeps its own WCS or zero point", bounds=(3, None))
    relcal_match_radius_arcsec: float = param(1.0, doc="match radius of the exposures' stars (arcsec)",
                                              bounds=(0.05, 10.0), unit="arcsec")
    relcal_min_snr: float = param(20.0, doc="fewest S/N (FLUX_APCOR) of the stars used by the joint fits",
                                  bounds=(3.0, None))
    relcal_clip_sigma: float = param(4.0, doc="rejection of outlying stars in the joint fits (robust sigmas)",
                                     bounds=(2.0, 100.0))
    reference_catalog: str = param("reference/refcat.fits", doc="reference star catalog of the joint astrometry "
                                   "(as the reduce step's; relative to the root)")
    block_rows: int = param(512, doc="output rows combined at a time (memory bound)", bounds=(16, 100000),
                            critical=False)
    detect: DetectConfig = DetectConfig()
    psf: PsfConfig = PsfConfig()


def tile_unit_key(instrument: str, tile_id: int, filter_name: str) -> str:
    """``INSTRUMENT/TILE-NNNNN/FILTER``."""
    return f"{instrument}/TILE-{int(tile_id):05d}/{filter_name}"


@register_step
class Coadd(Step):
    """The coadd of one tile in one filter."""

    name = "coadd"
    product_kind = "coadd"
    area = "coadds"
    memory_class = "large"
    config_class = CoaddConfig
    version = "0.1"
    description = "tile coadd: quality-selected reduced frames resampled onto the tile grid, outliers rejected " \
                  "against the median with the noise model, inverse-variance weighted mean"
    inputs = (Input("exposure", "reduced_frame", minimum="min_exposures", maximum=None,
                    doc="the usable current reduced frames of the tile in the filter"),)
    outputs = (Output("coadd", doc="FITS: SCI (counts at the coadd's zero point), WEIGHT (inverse variance), "
                                   "EXPMAP (s), NEXP, MASK (rejected artefacts and no-data bits)"),
               Output("psf", optional=True, doc="FITS: the coadd's PSF model (upad.io.products.write_psf: empirical "
                                                "PSF grids, FWHM and shear over the field, radial profile); absent "
                                                "when the coadd has too few stars"),
               Output("preview", optional=True, doc="PNG preview"))

    def plan(self, ctx: PlanContext, config: CoaddConfig) -> Iterable[Unit]:
        s = ctx.session
        pattern = re.compile(config.select) if config.select else None
        # the tiles touched by this pass (any frame of theirs in scope, valid or not: a flagged frame re-plans its
        # tile), then every science frame of those tiles, from every night
        tiles = {(f.instrument, f.tile_id) for f in ctx.frames("science", valid=None) if f.tile_id is not None}
        if not tiles:
            return
        frames: dict[tuple[str, int, str], list[Any]] = defaultdict(list)
        tile_ids = sorted({t for _, t in tiles})
        for i in range(0, len(tile_ids), 500):
            stmt = (select(*FRAME_COLUMNS).where(
                Frame.tile_id.in_(tile_ids[i:i + 500]), Frame.obs_type == "science", Frame.valid.is_(True),
                Frame.date_obs >= PLANNABLE_DATES[0], Frame.date_obs < PLANNABLE_DATES[1])
                .order_by(Frame.date_obs, Frame.id))
            for f in s.execute(stmt):
                if (f.instrument, f.tile_id) in tiles and f.filter:
                    frames[(f.instrument, f.tile_id, f.filter)].append(f)
        frame_ids = sorted({f.id for fs in frames.values() for f in fs})
        reduced: dict[int, tuple[int, str | None]] = {}
        for i in range(0, len(frame_ids), 500):
            chunk = set(frame_ids[i:i + 500])
            # reduced frames are few per frame (versions): select by the frame id in the unit's context
            stmt = select(Product.id, Product.context, Product.qc_status).where(
                Product.step == "reduce", Product.is_current.is_(True), Product.state == "complete",
                Product.is_bad.is_(False), Product.night.in_(sorted({f.night for fs in frames.values()
                                                                     for f in fs if f.id in chunk})))
            for pid, pctx, qc in s.execute(stmt):
                fid = int((pctx or {}).get("frame_id", -1))
                if fid in chunk:
                    reduced[fid] = (pid, qc)
        failed = ctx.failed_units("reduce")
        rows = {t.id: t for t in s.scalars(select(Tile).where(Tile.id.in_(tile_ids)))}
        centres = {i: (t.ra, t.dec) for i, t in rows.items()}
        for (inst, tile_id, filt), fs in sorted(frames.items()):
            key = tile_unit_key(inst, tile_id, filt)
            night = max(f.night for f in fs)
            context = {"night": night, "instrument": inst, "tile_id": int(tile_id), "filter": filt,
                       "n_frames": len(fs)}
            ra, dec = centres.get(tile_id, (None, None))
            if ra is None or dec is None:  # a tile without a registered centre: the mean pointing of its frames
                ras = [f.ra for f in fs if f.ra is not None]
                decs = [f.dec for f in fs if f.dec is not None]
                ra, dec = (sum(ras) / len(ras), sum(decs) / len(decs)) if ras and decs else (None, None)
            if ra is None:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"tile {tile_id} has no centre (no TILE row and no pointing in its frames' headers)")
                continue
            context.update({"tile_ra": float(ra), "tile_dec": float(dec)})
            row = rows.get(tile_id)
            if row is not None and row.naxis1 and row.naxis2 and row.pixel_scale:
                # the grid of a stored tiling (upad tiles generate): every filter of the pointing on it
                context["grid"] = {"naxis1": int(row.naxis1), "naxis2": int(row.naxis2),
                                   "pixel_scale": float(row.pixel_scale)}
            pending = [f for f in fs if f.id not in reduced and unit_key(f) not in failed]
            if pending:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"{len(pending)} of {len(fs)} exposures of tile {tile_id} in {filt} are not "
                                  f"reduced yet (e.g. {pending[0].filename})")
                continue
            usable, refused = [], []
            for f in fs:
                pid, qc = reduced.get(f.id, (None, None))
                if pid is None:
                    refused.append(f"{f.filename}: reduction failed")
                elif qc not in config.qc_accept:
                    refused.append(f"{f.filename}: QC {qc}")
                elif pattern is not None and not pattern.search(f.filename):
                    refused.append(f"{f.filename}: not selected by {config.select!r}")
                else:
                    usable.append(pid)
            context["refused"] = refused[:50]
            if len(usable) < config.min_exposures:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"{len(usable)} usable exposure(s) of tile {tile_id} in {filt} (needs "
                                  f"{config.min_exposures}): " + ("; ".join(refused[:3]) or "none"))
                continue
            yield Unit(key=key, inputs=[InputRef("product", p, "exposure") for p in sorted(usable)],
                       context=context, priority=160)

    def run(self, task: Any) -> Any:
        from upad.coadd.pipeline import run_coadd

        return run_coadd(self, task)
