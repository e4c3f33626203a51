"""Step ``coadd_registration``: the registration check across the filters of a pointing's coadds.

One unit per instrument and pointing (``INSTRUMENT/TILE-NNNNN``). It waits until every filter observed at the
pointing has a current coadd (a coadd that failed for good does not hold it back) and at least two exist; its inputs
are those coadds, so a re-coadd of any filter plans the check again. The worker finds the stars of each coadd
(:func:`upad.coadd.registration.star_centroids`, one coadd in memory at a time), measures every filter's median
offset from the reference filter (:func:`~upad.coadd.registration.registration_offsets`) and writes the table
``REGISTRATION``. QC is ``warn`` when a filter is off by more than ``max_offset_px`` (and by more than 3 times its
uncertainty) or could not be measured.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from upad.coadd.step import pointing_coadds
from upad.config import StepConfig, param
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step

__all__ = ["RegistrationConfig", "CoaddRegistration"]


@dataclass(frozen=True)
class RegistrationConfig(StepConfig):
    """Parameters of the registration check across filters."""

    reference_filter: str = param("rSDSS", doc="the filter the others are compared with (absent: the filter with "
                                  "the most stars)")
    min_snr: float = param(30.0, doc="faintest stars used (S/N in a 5 px radius aperture)", bounds=(5.0, 1e4))
    match_radius_px: float = param(1.5, doc="largest distance of a match (grid pixels)", bounds=(0.1, 10.0))
    min_stars: int = param(5, doc="fewest matched stars for a measured offset", bounds=(1, None))
    max_offset_px: float = param(0.02, doc="registration goal: largest median offset of a filter (grid pixels)",
                                 bounds=(0.0, 10.0))


@register_step
class CoaddRegistration(Step):
    """The registration check across the filters of one pointing."""

    name = "coadd_registration"
    product_kind = "coadd_registration"
    area = "coadds"
    memory_class = "large"
    config_class = RegistrationConfig
    version = "1.0"
    description = "registration check across filters: median star offset of each filter's coadd from the " \
                  "reference filter's, on the pointing's common grid"
    inputs = (Input("coadd", "coadd", minimum=2, maximum=None, doc="the current coadds of the pointing, one per "
                                                                   "filter"),)
    outputs = (Output("registration", doc="FITS table REGISTRATION: filter, n_stars, dx_px, dy_px, dx_err_px, "
                                          "dy_err_px, rms_px"),)

    def plan(self, ctx: PlanContext, config: RegistrationConfig) -> Iterable[Unit]:
        for pc in pointing_coadds(ctx):
            done, tid = pc.coadds, pc.tile_id
            context = {"instrument": pc.instrument, "tile_id": tid, "night": max(p.night for p in done.values()),
                       "filters": sorted(done)}
            if pc.waiting:
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"the coadds of {', '.join(pc.waiting)} of tile {tid} are not done yet")
                continue
            if len(done) < 2:
                yield Unit(key=pc.key, ready=False, context=context,
                           reason=f"tile {tid} has a coadd in {len(done)} filter(s): nothing to compare")
                continue
            yield Unit(key=pc.key, context=context, priority=170,
                       inputs=[InputRef("product", done[f].id, "coadd") for f in sorted(done)])

    def run(self, task: Task) -> StepOutput:
        from astropy.io import fits
        from astropy.table import Table

        from upad.coadd.registration import registration_offsets, star_centroids
        from upad.io.products import file_of

        cfg = task.config
        stars = {}
        for r in task.inputs_by_role("coadd"):
            filt = (r.meta.get("context") or {}).get("filter") or str(r.id)
            with fits.open(file_of(r, "coadd"), memmap=True) as hd:
                stars[filt] = star_centroids(hd["SCI"].data, hd["WEIGHT"].data, min_snr=cfg.min_snr)
        reference = cfg.reference_filter if cfg.reference_filter in stars else \
            max(stars, key=lambda f: len(stars[f]))
        offsets = registration_offsets(stars, reference=reference, match_radius_px=cfg.match_radius_px,
                                       min_stars=cfg.min_stars)
        reasons = []
        for o in offsets:
            if not math.isfinite(o.dx_px):
                reasons.append(f"{o.filter}: {o.n_stars} star(s) matched (needs {cfg.min_stars}), not measured")
                continue
            err = math.hypot(o.dx_err_px, o.dy_err_px)
            if o.offset_px > cfg.max_offset_px and o.offset_px > 3.0 * err:
                reasons.append(f"{o.filter}: offset {o.offset_px:.3f} px from {reference} (goal "
                               f"{cfg.max_offset_px} px; ±{err:.3f})")
        table = Table(rows=[(o.filter, o.n_stars, o.dx_px, o.dy_px, o.dx_err_px, o.dy_err_px, o.rms_px)
                            for o in offsets],
                      names=("filter", "n_stars", "dx_px", "dy_px", "dx_err_px", "dy_err_px", "rms_px"),
                      dtype=("U16", "i4", "f8", "f8", "f8", "f8", "f8"))
        for c in ("dx_px", "dy_px", "dx_err_px", "dy_err_px", "rms_px"):
            table[c].unit = "pix"
        hdu = fits.BinTableHDU(table, name="REGISTRATION")
        hdu.header["REFFILT"] = (reference, "the filter the others are compared with")
        hdu.header["REFNSTAR"] = (len(stars[reference]), "stars measured in the reference filter")
        hdu.header["TILE_ID"] = (int(task.context["tile_id"]), "survey pointing")
        hdu.header["UPADPROV"] = (task.provenance_id[:12], "provenance id of this product")
        name = f"registration_TILE-{int(task.context['tile_id']):05d}.fits"
        staged = task.stage(name)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(staged)
        finite = [o for o in offsets if math.isfinite(o.dx_px)]
        meta = {"reference_filter": reference, "qc_reasons": reasons,
                "offsets_px": {o.filter: [round(o.dx_px, 4), round(o.dy_px, 4), o.n_stars] for o in finite},
                "max_offset_px": round(max(o.offset_px for o in finite), 4) if finite else None}
        return StepOutput(files=[OutputFile("registration", str(staged), self.final_path(task, name))], meta=meta,
                          qc_status="warn" if reasons else "ok")
