"""Step ``coadd``: the coadd of one tile (survey pointing) in one filter, from its quality-selected reduced frames.

One unit per instrument, tile and filter. Planning follows the survey's tiling pipeline: the science frames of the
tile in the filter (from every night: a tile's exposures can be spread over nights) → their current reduced frames
→ the quality selection (the reduced frame's QC status, ``qc_accept``, and an optional regular expression on the raw
file name, ``select``). A unit is ready when the tile has been observed as often as the survey plans (the
``planned_exposures`` of its :class:`~upad.db.models.TileFilter` row, where the tiling is stored; a frame flagged
invalid was observed all the same), none of its frames
in the filter is still to be reduced (a reduction that failed for good does not hold it) and at least
``min_exposures`` frames are usable; otherwise it waits with the reason ("2 of 3 planned exposures observed").
Flagging a frame invalid makes its coadd stale (the provenance graph) and the next pass plans the tile again without
it; a new good frame of a finished tile changes the unit's inputs and re-coadds it (the step declares
``rebuild_on_new_inputs``). The older coadd stays, superseded.

A coadd request (``upad coadd TILE --filter F [--select REGEXP]``, a :class:`~upad.db.models.CoaddRequest` row) is
data the planner honours for its unit: its selection replaces ``select`` for that unit only (the configuration and
its hash are unchanged; the unit's inputs, hence its provenance, differ) and, forced, the unit is ready with the
exposures usable now. The latest request of a unit is honoured until it was served (a coadd job of the unit created
after it is done) and an exposure of the tile was reduced since; then the unit follows the configuration again and
re-coadds (a coadd forced while exposures were pending is redone with them; a selection stands until new data come).

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

from sqlalchemy import func, select

from upad.coadd.resample import KERNELS
from upad.config import StepConfig, param
from upad.db.models import CoaddRequest, Frame, Job, Product, Tile, TileFilter
from upad.flow.queries import FRAME_COLUMNS, PLANNABLE_DATES, PlanContext
from upad.flow.step import Input, InputRef, Output, Step, Unit, register_step
from upad.reduce.detect import DetectConfig
from upad.reduce.photometry import PhotometryConfig, require_apcor_aperture
from upad.reduce.psf import PsfConfig
from upad.reduce.steps import unit_key

__all__ = ["CoaddConfig", "Coadd", "active_requests", "tile_unit_key", "write_survey_progress"]


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
    resampling_kernel: str = param("lanczos3", doc="interpolation kernel of the resampling onto the tile grid "
                                   "(SWarp's RESAMPLING_TYPE; upad.coadd.resample.KERNELS): it broadens undersampled "
                                   "PSFs by a few per cent (docs/coadd.md)", choices=tuple(KERNELS))
    clip_sigma: float = param(4.0, doc="outlier rejection: CLIP_SIGMA of SWarp's CLIPPED rule", bounds=(1.0, 100.0))
    clip_ampfrac: float = param(0.3, doc="outlier rejection: CLIP_AMPFRAC of SWarp's CLIPPED rule (tolerates PSF "
                                "differences on bright stars)", bounds=(0.0, 10.0))
    clip_psf: float = param(1.0, doc="outlier rejection: each input may differ from the median by a further "
                            "|(FWHM_med/FWHM_i)^2 - 1| of its amplitude times this factor, for its PSF (keeps the "
                            "cores of bright stars under seeing differences; 0: SWarp's rule as is)",
                            bounds=(0.0, 10.0))
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
    progress_seconds: float = param(60.0, doc="the survey progress files under the data root (coadds/survey-"
                                    "progress.json and .png) are written again at most this often while coadds "
                                    "finish, and at the end of a run (s)", bounds=(0.0, 86400.0), critical=False)
    detect: DetectConfig = DetectConfig()
    psf: PsfConfig = PsfConfig()
    photometry: PhotometryConfig = PhotometryConfig()

    def validate(self) -> None:
        super().validate()
        require_apcor_aperture(self)


def tile_unit_key(instrument: str, tile_id: int, filter_name: str) -> str:
    """``INSTRUMENT/TILE-NNNNN/FILTER``."""
    return f"{instrument}/TILE-{int(tile_id):05d}/{filter_name}"


@dataclass
class PointingCoadds:
    """The current coadds of one pointing, for the steps that work on all its filters at once."""

    instrument: str
    tile_id: int
    #: filter → the current coadd product
    coadds: dict[str, Any]
    #: filters with valid science frames of the pointing
    observed: set[str]
    #: observed filters whose coadd is neither done nor failed for good
    waiting: list[str]

    @property
    def key(self) -> str:
        return f"{self.instrument}/TILE-{int(self.tile_id):05d}"


def pointing_coadds(ctx: PlanContext) -> list[PointingCoadds]:
    """The pointings with a current coadd in the plan's scope, each with all its current coadds (from every night:
    a pointing's filters may be finished on different nights) and the filters still waiting for one."""
    from upad.flow.queries import current_products

    s = ctx.session
    tiles = {((p.context or {}).get("instrument"), (p.context or {}).get("tile_id"))
             for p in ctx.current_products("coadd", step="coadd")}
    tiles = {t for t in tiles if t[0] and t[1] is not None}
    if not tiles:
        return []
    ids = sorted({int(t) for _, t in tiles})
    observed: dict[tuple[str, int], set[str]] = defaultdict(set)
    for i in range(0, len(ids), 500):
        for inst, tid, filt in s.execute(select(Frame.instrument, Frame.tile_id, Frame.filter).where(
                Frame.tile_id.in_(ids[i:i + 500]), Frame.obs_type == "science", Frame.valid.is_(True)).distinct()):
            if filt:
                observed[(inst, int(tid))].add(filt)
    by_tile: dict[tuple[str, int], dict[str, Any]] = defaultdict(dict)
    for p in current_products(s, "coadd", step="coadd"):
        c = p.context or {}
        key = (c.get("instrument"), c.get("tile_id"))
        if key in tiles:
            by_tile[key][c.get("filter")] = p
    failed = ctx.failed_units("coadd")
    out = []
    for (inst, tid), done in sorted(by_tile.items()):
        seen = observed.get((inst, int(tid)), set())
        waiting = sorted(f for f in seen - set(done) if tile_unit_key(inst, tid, f) not in failed)
        out.append(PointingCoadds(inst, int(tid), done, set(seen), waiting))
    return out


def pointing_products(session: Any, step: str, *, by_filter: bool = False) -> dict[tuple, Any]:
    """The current usable products of ``step`` keyed by ``(instrument, tile_id)`` (``by_filter``: and filter), from
    every night (a pointing's products need not be in the planning pass's nights)."""
    from upad.flow.queries import current_products

    out = {}
    for p in current_products(session, step, step=step):
        c = p.context or {}
        key = (c.get("instrument"), c.get("tile_id")) + ((c.get("filter"),) if by_filter else ())
        out[key] = p
    return out


def made_from_coadds(session: Any, provenance_ids: list[str], *, role: str = "coadd") -> dict[str, set[int]]:
    """The product ids each provenance record (of a pointing's product) was made from in ``role`` (the coadds)."""
    from upad.db.models import ProvenanceInput

    out: dict[str, set[int]] = {}
    if provenance_ids:
        for prov, pid in session.execute(select(ProvenanceInput.provenance_id, ProvenanceInput.input_id).where(
                ProvenanceInput.provenance_id.in_(provenance_ids), ProvenanceInput.role == role)):
            out.setdefault(prov, set()).add(int(pid))
    return out


@register_step
class Coadd(Step):
    """The coadd of one tile in one filter."""

    name = "coadd"
    product_kind = "coadd"
    area = "coadds"
    memory_class = "large"
    config_class = CoaddConfig
    version = "0.3"  # 0.3: the aperture correction (tail from the inputs), RESAMPK
    rebuild_on_new_inputs = True
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
        observed: dict[tuple[str, int, str], int] = defaultdict(int)  # flagged ones too: they were taken
        tile_ids = sorted({t for _, t in tiles})
        for i in range(0, len(tile_ids), 500):
            stmt = (select(*FRAME_COLUMNS).where(
                Frame.tile_id.in_(tile_ids[i:i + 500]), Frame.obs_type == "science",
                Frame.date_obs >= PLANNABLE_DATES[0], Frame.date_obs < PLANNABLE_DATES[1])
                .order_by(Frame.date_obs, Frame.id))
            for f in s.execute(stmt):
                if (f.instrument, f.tile_id) in tiles and f.filter:
                    observed[(f.instrument, f.tile_id, f.filter)] += 1
                    if f.valid:
                        frames[(f.instrument, f.tile_id, f.filter)].append(f)
        frame_ids = sorted({f.id for fs in frames.values() for f in fs})
        reduced: dict[int, tuple[int, str | None]] = {}
        reduced_at: dict[int, Any] = {}
        for i in range(0, len(frame_ids), 500):
            chunk = set(frame_ids[i:i + 500])
            # reduced frames are few per frame (versions): select by the frame id in the unit's context
            stmt = select(Product.id, Product.context, Product.qc_status, Product.created_at).where(
                Product.step == "reduce", Product.is_current.is_(True), Product.state == "complete",
                Product.is_bad.is_(False), Product.night.in_(sorted({f.night for fs in frames.values()
                                                                     for f in fs if f.id in chunk})))
            for pid, pctx, qc, created in s.execute(stmt):
                fid = int((pctx or {}).get("frame_id", -1))
                if fid in chunk:
                    reduced[fid] = (pid, qc)
                    reduced_at[fid] = created
        failed = ctx.failed_units("reduce")
        rows = {t.id: t for t in s.scalars(select(Tile).where(Tile.id.in_(tile_ids)))}
        centres = {i: (t.ra, t.dec) for i, t in rows.items()}
        planned = {(r.ref_tile_id, r.filter): int(r.planned_exposures) for r in s.execute(
            select(TileFilter.ref_tile_id, TileFilter.filter, TileFilter.planned_exposures)
            .where(TileFilter.ref_tile_id.in_(tile_ids)))}
        requests = active_requests(s, [tile_unit_key(i, t, f) for i, t, f in frames])
        for (inst, tile_id, filt), fs in sorted(frames.items()):
            key = tile_unit_key(inst, tile_id, filt)
            night = max(f.night for f in fs)
            context = {"night": night, "instrument": inst, "tile_id": int(tile_id), "filter": filt,
                       "n_frames": len(fs)}
            req, served_at = requests.get(key, (None, None))
            if req is not None and served_at is not None and any(
                    reduced_at.get(f.id) is not None and reduced_at[f.id] > served_at for f in fs):
                req = None  # served, and an exposure was reduced since: the unit follows the configuration again
            unit_pattern, unit_select, forced = pattern, config.select, False
            if req is not None:
                forced = bool(req.force)
                if req.selection is not None:  # None: the configuration's ``select``
                    unit_select = req.selection
                try:
                    unit_pattern = re.compile(unit_select) if unit_select else None
                except re.error as exc:  # written by hand into the table: said, never raised in the planner
                    yield Unit(key=key, ready=False, context=context,
                               reason=f"coadd request {req.id}: invalid selection {unit_select!r} ({exc}): "
                                      "`upad coadd` it again with a valid --select")
                    continue
                context.update({"request_id": int(req.id), "selection": unit_select, "forced": forced})
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
            n_planned = planned.get((tile_id, filt))
            n_observed = observed[(inst, tile_id, filt)]
            if n_planned is not None and n_observed < n_planned and not forced:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"{n_observed} of {n_planned} planned exposures observed (tile {tile_id} in {filt}; "
                                  f"`upad coadd {tile_id} --filter {filt}` coadds what there is now)")
                continue
            pending = [f for f in fs if f.id not in reduced and unit_key(f) not in failed]
            pending_ids = {f.id for f in pending}
            if pending and not forced:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"{len(pending)} of {len(fs)} exposures of tile {tile_id} in {filt} are not "
                                  f"reduced yet (e.g. {pending[0].filename})")
                continue
            usable, refused = [], []
            for f in fs:
                pid, qc = reduced.get(f.id, (None, None))
                if pid is None:
                    refused.append(f"{f.filename}: " + ("not reduced yet" if f.id in pending_ids else "reduction failed"))
                elif qc not in config.qc_accept:
                    refused.append(f"{f.filename}: QC {qc}")
                elif unit_pattern is not None and not unit_pattern.search(f.filename):
                    refused.append(f"{f.filename}: not selected by {unit_select!r}")
                else:
                    usable.append(pid)
            context["refused"] = refused[:50]
            if len(usable) < config.min_exposures:
                yield Unit(key=key, ready=False, context=context,
                           reason=f"{len(usable)} usable exposure(s) of tile {tile_id} in {filt} (needs "
                                  f"{config.min_exposures}): " + ("; ".join(refused[:3]) or "none"))
                continue
            yield Unit(key=key, inputs=[InputRef("product", p, "exposure") for p in sorted(usable)],
                       context=context, priority=170 if forced else 160)

    #: when the survey progress files were last written (time.monotonic), and whether coadds finished since
    _progress_written: float = -1e18
    _progress_due: bool = False

    def after_recorded(self, *, db: Any, settings: Any, config: Any, product_ids: list[int],
                       final: bool = False) -> None:
        """The survey progress updated as tiles finish: ``coadds/survey-progress.json`` and ``.png`` under the data
        root (:func:`write_survey_progress`), at most every ``progress_seconds`` and at the end of a run."""
        import time

        if product_ids:
            self._progress_due = True
        now = time.monotonic()
        if not self._progress_due or (not final and now - self._progress_written < config.progress_seconds):
            return
        self._progress_due = False
        self._progress_written = now
        write_survey_progress(db, settings.root)

    def run(self, task: Any) -> Any:
        from upad.coadd.pipeline import run_coadd

        return run_coadd(self, task)


def active_requests(session: Any, unit_keys: Iterable[str]) -> dict[str, tuple[CoaddRequest, Any]]:
    """The latest coadd request of each of ``unit_keys`` that has one, with when it was served (its ``served_at``,
    or the creation time of the first coadd job of the unit created at or after it that is done; ``None`` while it
    is not).

    The planner honours a request until it was served and an exposure of the unit was reduced after that: a forced
    coadd made while exposures were pending is redone with them, a selection stands until new data comes."""
    keys = sorted(set(unit_keys))
    out: dict[str, tuple[CoaddRequest, Any]] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        latest = (select(CoaddRequest.unit_key, func.max(CoaddRequest.id).label("id"))
                  .where(CoaddRequest.unit_key.in_(chunk)).group_by(CoaddRequest.unit_key).subquery())
        for req in session.scalars(select(CoaddRequest).join(latest, latest.c.id == CoaddRequest.id)):
            served = req.served_at or session.scalar(select(func.min(Job.created_at)).where(
                Job.step == "coadd", Job.unit_key == req.unit_key, Job.state == "done",
                Job.created_at >= req.requested_at))
            out[req.unit_key] = (req, served)
    return out


#: the survey progress files, relative to the data root (written by :func:`write_survey_progress`)
PROGRESS_JSON = "coadds/survey-progress.json"
PROGRESS_PNG = "coadds/survey-progress.png"


def write_survey_progress(db: Any, root: Any) -> dict[str, str] | None:
    """Write the survey progress (:func:`upad.coadd.survey.survey_progress`, with the per-pointing counts) as JSON
    and its plot (coloured by the fraction of filters coadded) as PNG under the data ``root``, each atomically;
    ``None`` (nothing written) when no tiling is stored."""
    import json
    import os
    from pathlib import Path

    from upad.coadd.survey import plot_progress, survey_progress
    from upad.errors import UpadError

    try:
        prog = survey_progress(db)
    except UpadError:  # no survey plan (no `upad tiles generate`): nothing to draw
        return None
    root = Path(root)
    js, png = root / PROGRESS_JSON, root / PROGRESS_PNG
    js.parent.mkdir(parents=True, exist_ok=True)
    plot_progress(prog, png, measure="coadded")
    tmp = js.with_name(f".{js.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({**prog, "plot": PROGRESS_PNG}, indent=1, default=str))
    os.replace(tmp, js)
    return {"json": str(js), "png": str(png)}
