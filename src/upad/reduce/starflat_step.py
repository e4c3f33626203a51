"""Step ``star_flat``: the star flat of a night and filter — the check of the flat field and illumination correction
by the photometry of the same stars at different places on the detector (:mod:`upad.reduce.starflat`).

One unit per instrument, night and filter: ready when every valid science frame of the night in the filter has a
current reduced frame (or its reduction failed for good), with at least two of them. The worker reads the reduced
catalogs (stars: ``FLAGS == 0``, no flagged pixel, point-like, S/N above ``min_snr`` in ``FLUX_APCOR``), matches
them across exposures on the sky, reads the reference catalog's magnitudes of the matched stars (survey-filter
columns, else Gaia G/BP/RP through the packaged transformation) when the reference catalog is there, and fits the star
flat. The product is a FITS file: the map ``S`` (mag, ``STARFLAT``), the response map (``RESPONSE``, the
illumination-correction convention: divide a frame by it) and the per-exposure zero points (``EXPOSURES``), with
the coefficients and the QC figures in the header.

QC: ``warn`` when the map is measured (``constrained``) and its rms over the field is above ``warn_rms_mmag`` at
3 sigma or more — the flat field or the illumination correction of that night and filter is off by that much — and,
with no file, when too few stars are seen in two exposures for a fit (the reason says how many); ``fail`` when fewer
than two of the night's catalogs can be read; ``ok`` otherwise, including a map the dithers do not constrain (said in
the notes). Nothing depends on the product
yet: the tile calibration reads it.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from upad.config import param
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step
from upad.reduce.starflat import StarFlatConfig, fit_star_flat, match_exposures
from upad.reduce.steps import unit_key

__all__ = ["StarFlatStepConfig", "StarFlatStep", "star_flat_inputs"]


@dataclass(frozen=True)
class StarFlatStepConfig(StarFlatConfig):
    """Parameters of the star-flat step (the algorithm's and where the reference catalog is)."""

    reference_catalog: str = param("reference/refcat.fits", doc="reference star catalog (as the reduce step's); "
                                   "relative paths are relative to the data root; a missing file means no "
                                   "reference (the gradient is not measured)")
    min_frames: int = param(2, doc="fewest reduced frames of the night and filter", bounds=(2, None))


def star_flat_inputs(catalogs: list[Any], *, config: StarFlatConfig) -> dict[str, list[np.ndarray]]:
    """The stars of reduced catalogs for :func:`upad.reduce.starflat.fit_star_flat`: per catalog, 0-based
    ``x, y``, ``mag`` (instrumental, ``-2.5 log10 FLUX_APCOR``), ``magerr``, ``ra, dec`` and the star ``id``
    from :func:`~upad.reduce.starflat.match_exposures`."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for cat in catalogs:
        f = np.asarray(cat["FLUX_APCOR"], float)
        e = np.asarray(cat["FLUXERR_APCOR"], float)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = f / e
            sel = (np.asarray(cat["FLAGS"]) == 0) & (np.asarray(cat["IMAFLAGS_ISO"]) == 0) & (snr >= config.min_snr)
        sel &= np.asarray(cat["CLASS_STAR"], float) >= config.min_class_star
        out["x"].append(np.asarray(cat["XWIN_IMAGE"], float)[sel] - 1)
        out["y"].append(np.asarray(cat["YWIN_IMAGE"], float)[sel] - 1)
        out["mag"].append(-2.5 * np.log10(f[sel]))
        out["magerr"].append(1.0857 * e[sel] / f[sel])
        out["ra"].append(np.asarray(cat["ALPHAWIN_J2000"], float)[sel])
        out["dec"].append(np.asarray(cat["DELTAWIN_J2000"], float)[sel])
    out["id"] = match_exposures(out["ra"], out["dec"], radius_arcsec=config.match_radius_arcsec)
    return out


def reference_for_stars(refcat: Any, stars: dict[str, list[np.ndarray]], filter_name: str, *,
                        radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference magnitudes in ``filter_name`` of the matched stars: ``(star id, mag, error)``; the error includes
    the transformation's rms for Gaia-transformed magnitudes."""
    from scipy.spatial import cKDTree

    from upad.reduce.photcal import gaia_to_survey, reference_column, reference_columns

    ids = np.concatenate(stars["id"])
    ra, dec = np.concatenate(stars["ra"]), np.concatenate(stars["dec"])
    ok = ids >= 0
    uid, first = np.unique(ids[ok], return_index=True)
    sra, sdec = ra[ok][first], dec[ok][first]
    cols = reference_columns(refcat, filter_name)
    if cols["mag"] is not None:
        mag = cols["mag"]
        err = cols["magerr"] if cols["magerr"] is not None else np.full(mag.shape, 0.02)
    elif cols["g"] is not None and cols["bp"] is not None and cols["rp"] is not None:
        mag, _, rms = gaia_to_survey(cols["g"], cols["bp"] - cols["rp"], filter_name)
        err = np.full(mag.shape, rms if np.isfinite(rms) else np.nan)
    else:
        return np.zeros(0, int), np.zeros(0), np.zeros(0)
    rra, rdec = reference_column(refcat, "ra"), reference_column(refcat, "dec")

    def xyz(a, d):
        a, d = np.radians(a), np.radians(d)
        return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])

    if uid.size == 0 or rra is None or rdec is None or len(rra) == 0:
        return np.zeros(0, int), np.zeros(0), np.zeros(0)
    d, j = cKDTree(xyz(rra, rdec)).query(xyz(sra, sdec), distance_upper_bound=np.radians(radius_arcsec / 3600))
    hit = np.isfinite(d)
    j = np.where(hit, j, 0)
    m, e = np.asarray(mag, float)[j], np.asarray(err, float)[j]
    use = hit & np.isfinite(m) & np.isfinite(e) & (e > 0)
    return uid[use], m[use], e[use]


@register_step
class StarFlatStep(Step):
    """The star flat of one night and filter."""

    name = "star_flat"
    product_kind = "star_flat"
    area = "reduced"
    memory_class = "small"
    config_class = StarFlatStepConfig
    version = "1.0"
    description = "photometric response over the detector from the same stars in dithered exposures (a check " \
                  "of the flat field and the illumination correction)"
    inputs = (Input("reduced", "reduced_frame", minimum="min_frames", maximum=None,
                    doc="every current reduced frame of the night in the filter"),)
    outputs = (Output("star_flat", optional=True,
                      doc="FITS: STARFLAT (mag), RESPONSE (divide a frame by it), EXPOSURES table (none when too few "
                          "stars are in common)"),)

    def plan(self, ctx: PlanContext, config: StarFlatStepConfig) -> Iterable[Unit]:
        groups: dict[tuple[str, str, str], dict[int, Any]] = defaultdict(dict)
        for f in ctx.frames("science"):
            if f.filter:
                groups[(f.instrument, f.night, f.filter)][f.id] = f
        nights = {k[1] for k in groups}
        done: dict[int, int] = {}
        for p in ctx.current_products("reduced_frame", nights=nights):
            fid = int((p.context or {}).get("frame_id", -1))
            done[fid] = p.id
        failed = ctx.failed_units("reduce")
        for (inst, night, filt), frames in sorted(groups.items()):
            key = f"{inst}/{night}/{filt}"
            ctx_ = {"night": night, "filter": filt, "instrument": inst, "n_frames": len(frames)}
            pending = [f for f in frames.values() if f.id not in done and unit_key(f) not in failed]
            if pending:
                yield Unit(key=key, ready=False, context=ctx_,
                           reason=f"{len(pending)} of {len(frames)} science frames of night {night} in {filt} "
                                  "are not reduced yet")
                continue
            got = sorted(done[i] for i in frames if i in done)
            if len(got) < config.min_frames:
                yield Unit(key=key, ready=False, context=ctx_,
                           reason=f"{len(got)} reduced frame(s) of night {night} in {filt}: a star flat needs "
                                  f"{config.min_frames} (dithered exposures of the same field)")
                continue
            yield Unit(key=key, inputs=[InputRef("product", i, "reduced") for i in got], context=ctx_,
                       priority=140)

    def run(self, task: Task) -> StepOutput:
        from upad.io.products import file_of, read_catalog, write_star_flat
        from upad.io.refcat import read_reference_catalog

        cfg: StarFlatStepConfig = task.config
        ctx = task.context
        catalogs, names, shapes = [], [], set()
        for r in task.inputs_by_role("reduced"):
            try:
                cat = read_catalog(file_of(r, "catalog"))
            except Exception as exc:  # noqa: BLE001 - one unreadable catalog is left out, with its reason
                names.append((str(r.meta.get("unit_key", r.id)), f"unreadable catalog: {exc}"))
                continue
            if len(cat) == 0 or "FLUX_APCOR" not in cat.colnames:
                names.append((str(r.meta.get("unit_key", r.id)), "no calibrated catalog"))
                continue
            catalogs.append(cat)
            names.append((str(r.meta.get("unit_key", r.id)), ""))
            ny, nx = cat.meta.get("NAXIS2"), cat.meta.get("NAXIS1")
            if ny and nx:
                shapes.add((int(ny), int(nx)))
        shape = self._shape(task, shapes)
        notes: list[str] = [f"{n}: {why}" for n, why in names if why]
        meta: dict[str, Any] = {"night": ctx["night"], "filter": ctx["filter"], "n_catalogs": len(catalogs)}
        if len(catalogs) < 2:
            meta["qc_reasons"] = [f"{len(catalogs)} usable catalog(s): no star flat"] + notes
            return StepOutput(meta=meta, qc_status="fail")
        stars = star_flat_inputs(catalogs, config=cfg)
        reference = None
        path = Path(cfg.reference_catalog)
        if not path.is_absolute():
            path = Path(task.root) / path
        if path.exists():
            try:
                reference = reference_for_stars(read_reference_catalog(path), stars, ctx["filter"],
                                                radius_arcsec=cfg.match_radius_arcsec)
            except Exception as exc:  # noqa: BLE001 - the star flat goes on without the gradient
                notes.append(f"reference catalog {path} not usable: {exc}")
        else:
            notes.append(f"no reference catalog at {path}")
        try:
            sf = fit_star_flat(stars["x"], stars["y"], stars["mag"], stars["magerr"], stars["id"], shape=shape,
                               reference=reference, config=cfg)
        except ValueError as exc:  # too few stars in common: nothing wrong with the night, nothing measured either
            meta["qc_reasons"] = [f"no star flat: {exc}"] + notes
            return StepOutput(meta=meta, qc_status="warn")
        notes += sf.notes
        name = f"star_flat_{ctx['night']}_{ctx['filter']}.fits"
        staged = task.stage(name)
        write_star_flat(staged, sf, exposures=[n for n, why in names if not why], cells=cfg.grid_cells,
                        provenance=task.provenance_id[:12])
        significant = sf.constrained and sf.rms_mag * 1000 > cfg.warn_rms_mmag and sf.significance >= 3
        reasons = [f"star flat rms {sf.rms_mag * 1000:.1f} ± {sf.error_mag * 1000:.1f} mmag over the field: the "
                   "flat field / illumination correction is off by that much"] if significant else []
        meta.update({"rms_mmag": round(sf.rms_mag * 1000, 2), "error_mmag": round(sf.error_mag * 1000, 2),
                     "ptp_mmag": round(sf.ptp_mag * 1000, 2), "n_stars": sf.n_stars, "n_obs": sf.n_obs,
                     "n_reference": sf.n_reference, "constrained": bool(sf.constrained),
                     "rms_obs_mmag": round(sf.rms_obs * 1000, 2), "qc_reasons": reasons, "notes": notes})
        return StepOutput(files=[OutputFile("star_flat", str(staged), self.final_path(task, name))], meta=meta,
                          qc_status="warn" if significant else "ok")

    @staticmethod
    def _shape(task: Task, shapes: set[tuple[int, int]]) -> tuple[int, int]:
        if len(shapes) == 1:
            return next(iter(shapes))
        from upad.instruments import get_instrument

        return tuple(get_instrument(task.context["instrument"]).layout.active_shape)

