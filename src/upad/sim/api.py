"""The public entry point: :func:`simulate` writes raw nights plus their truth."""
from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from upad import __version__
from upad.errors import UpadError
from upad.instruments import get_filter_system, get_instrument
from upad.sim import rng as R
from upad.sim.config import EFFECTS, SimConfig
from upad.sim.detector import make_camera
from upad.sim.headers import CONVENTIONS, build_header
from upad.sim.night import NightPlan, Survey, generate_frame, make_survey, plan_night
from upad.sim.schedule import ExposureSpec, radec_to_tangent
from upad.sim.sky import make_sky_catalog
from upad.sim.truth import (MANIFEST, make_reference_catalog, write_camera_truth, write_frame_truth,
                            write_reference_catalog, write_sky_catalog)
from upad.sim.writer import raw_hdulist, write_hdulist, write_json

SUPPORTED_INSTRUMENTS = ("t80cam", "mini")

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class SimulationResult:
    """What :func:`simulate` wrote (paths are absolute)."""

    out: Path
    manifest_path: Path
    raw_files: list[Path]
    truth_files: list[Path]
    sky_catalog: Path
    reference_catalog: Path
    camera_truth: dict[str, Path]
    frames: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0

    def of_kind(self, kind: str) -> list[dict]:
        """Manifest entries of one kind (``bias``, ``dark``, ``flat-dome``, ``flat-sky``, ``science``)."""
        return [f for f in self.frames if f["kind"] == kind]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.frames:
            out[f["kind"]] = out.get(f["kind"], 0) + 1
        return out


# state shared with forked workers
_STATE: dict = {}


def _file_names(plans: list[NightPlan], prefix: str, compress: bool) -> dict[tuple[int, int], str]:
    names: dict[tuple[int, int], str] = {}
    used: dict[str, int] = {}
    ext = ".fits.fz" if compress else ".fits"
    for p in plans:
        for s in p.exposures:
            stamp = s.date_obs[:19].replace("-", "").replace(":", "")
            used[stamp] = used.get(stamp, 0) + 1
            names[(p.index, s.seq)] = f"{prefix}-{stamp}-{used[stamp]:02d}{ext}"
    return names


def _do_frame(task: tuple[int, int]) -> dict:
    st = _STATE
    survey: Survey = st["survey"]
    plan: NightPlan = st["plans"][task[0]]
    spec: ExposureSpec = plan.exposures[task[1]]
    out: Path = st["out"]
    name = st["names"][task]
    frame = generate_frame(survey, st["camera"], st["sky"], plan, spec, threads=st["threads"])
    hdr = build_header(spec, instrument=survey.instrument, filters=survey.filters, layout=survey.layout,
                       convention=survey.convention, weather=plan.weather,
                       det_temp=-111.0 + 0.1 * math.sin(spec.seq))
    raw_rel = f"raw/{spec.night}/{name}"
    write_hdulist(out / raw_rel, raw_hdulist(frame.raw, hdr, compress=st["compress"]))
    stem = name.split(".")[0]
    truth_rel = f"truth/frames/{spec.night}/{stem}.fits"
    write_frame_truth(out, truth_rel, frame, raw_rel=raw_rel)
    rec = dict(frame.record)
    rec["file"] = raw_rel
    rec["truth"] = truth_rel
    return rec


def _resolve_filters(names, fs) -> tuple[str, ...]:
    out = []
    for n in names:
        f = fs.lookup(n)
        if f is None:
            raise UpadError(f"unknown filter {n!r}", hint=f"use J-PLUS names: {', '.join(fs.names)}")
        out.append(f.name)
    if len(set(out)) != len(out):
        raise UpadError(f"filter list has duplicates: {', '.join(out)}", hint="list each filter once")
    return tuple(out)


def simulate(instrument: str = "mini", seed: int = 1, out: Path | str = Path("sim-out"), nights: int = 1,
             tiles: int = 2, filters: list[str] | tuple[str, ...] | None = None, layout: str | None = None,
             convention: str = "oaj", compress: bool = True, config: SimConfig | None = None,
             progress: ProgressCallback | None = None) -> SimulationResult:
    """Simulate ``nights`` nights of raw data plus truth under ``out``.

    Parameters
    ----------
    instrument : ``'t80cam'`` or ``'mini'`` (JPCam is described but not simulated).
    seed : simulation seed; the same seed gives byte-identical pixel data.
    out : output folder (``raw/``, ``truth/``, ``reference/`` are created inside).
    nights : number of consecutive nights from ``config.start_date``.
    tiles : tiles (pointings) observed per night.
    filters : filters (J-PLUS names or T80S aliases); default ``config.filters``.
    layout : raw layout, ``'readout'`` (with overscans, default) or ``'archived'`` (trimmed).
    convention : header convention, ``'oaj'`` or ``'t80s'``.
    compress : write fpack-style RICE_1 ``.fits.fz`` (lossless) instead of plain ``.fits``.
    config : all other parameters (:class:`SimConfig`).
    progress : called as ``progress(done, total, description)`` after each frame.

    Returns
    -------
    SimulationResult
    """
    t0 = time.perf_counter()
    key = str(instrument).lower()
    if key == "jpcam":
        raise UpadError("JPCam is described but the simulator does not support it yet",
                        hint="simulate --instrument t80cam (same CCD and amplifier layout) or mini")
    if key not in SUPPORTED_INSTRUMENTS:
        raise UpadError(f"unknown instrument {instrument!r} for the simulator",
                        hint=f"use one of: {', '.join(SUPPORTED_INSTRUMENTS)}")
    inst = get_instrument(key)
    fs = get_filter_system(inst.filter_system)
    layout = layout or inst.layout.default_layout
    if layout not in inst.layout.layouts:
        raise UpadError(f"unknown raw layout {layout!r}", hint=f"use one of: {', '.join(inst.layout.layouts)}")
    if convention not in CONVENTIONS:
        raise UpadError(f"unknown header convention {convention!r}", hint="use 'oaj' or 't80s'")
    if nights < 1:
        raise UpadError(f"nights must be >= 1, got {nights}", hint="simulate at least one night")
    if tiles < 0:
        raise UpadError(f"tiles must be >= 0, got {tiles}", hint="use 0 for a calibration-only night")
    cfg = config or SimConfig()
    cfg = dataclasses.replace(cfg, filters=_resolve_filters(filters if filters else cfg.filters, fs))
    cfg = cfg.resolved(key)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    n_tiles_total = tiles if cfg.revisit else tiles * nights
    survey = make_survey(inst, fs, cfg, seed, layout, convention, n_tiles_total, tiles, nights)
    plans = []
    for n in range(nights):
        tl = list(range(tiles)) if cfg.revisit else list(range(n * tiles, (n + 1) * tiles))
        plans.append(plan_night(survey, n, tl))

    # truth sky over every tile + margins
    w, h = survey.field_size_deg
    ra0, dec0 = survey.field_centre
    margin = 4 * (cfg.pointing_error_arcsec or 0) / 3600 + 3 * cfg.dither_step_arcsec * cfg.n_dithers / 3600 + 0.02
    if survey.tile_radec:
        xi, eta = radec_to_tangent(ra0, dec0, np.array([t[0] for t in survey.tile_radec]),
                                   np.array([t[1] for t in survey.tile_radec]))
        hx, hy = np.abs(xi).max() + w / 2 + margin, np.abs(eta).max() + h / 2 + margin
    else:
        hx, hy = w / 2 + margin, h / 2 + margin
    sky = make_sky_catalog(R.rng_for(seed, R.SKY), centre=(ra0, dec0), half_size_deg=(float(hx), float(hy)),
                           filters=fs, cfg=cfg, bright_star_centres=list(survey.tile_radec),
                           bright_star_radius_deg=0.3 * min(w, h) / 2)
    camera = make_camera(inst, cfg, seed)
    used_filters = [fs[f] for f in cfg.filters]
    for f in used_filters:  # build fringe maps before forking so that workers share them
        camera.fringe(f)
    _ = camera.illum_dome
    cam_paths = write_camera_truth(out, camera, used_filters, compress=compress)
    sky_rel = write_sky_catalog(out, sky)
    ref = make_reference_catalog(R.rng_for(seed, R.REFCAT), sky, fs, mag_limit=cfg.refcat_mag_limit,
                                 synphot_limit=cfg.refcat_synphot_limit, mag_error=cfg.refcat_mag_error,
                                 survey_mags=cfg.refcat_survey_mags,
                                 synphot_error_faint=cfg.refcat_synphot_error_faint)
    ref_rel = write_reference_catalog(out, ref)

    names = _file_names(plans, inst.file_prefix, compress)
    tasks = [(p.index, s.seq) for p in plans for s in p.exposures]
    workers = cfg.workers if cfg.workers is not None else min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, len(tasks) or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    _STATE.clear()
    _STATE.update(survey=survey, plans=plans, camera=camera, sky=sky, out=out, names=names, compress=compress,
                  threads=threads)
    records: dict[tuple[int, int], dict] = {}
    total = len(tasks)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
                futs = {ex.submit(_do_frame, t): t for t in tasks}
                for i, fut in enumerate(as_completed(futs), 1):
                    records[futs[fut]] = fut.result()
                    if progress:
                        progress(i, total, records[futs[fut]]["file"])
        else:
            for i, t in enumerate(tasks, 1):
                records[t] = _do_frame(t)
                if progress:
                    progress(i, total, records[t]["file"])
    finally:
        _STATE.clear()
    frames = [records[t] for t in tasks]

    manifest = {
        "format": "upad-sim-truth", "version": 1, "upad_version": __version__,
        "instrument": inst.key, "seed": seed, "layout": layout, "convention": convention, "compressed": compress,
        "active_shape": list(inst.layout.active_shape), "raw_shape": list(inst.raw_shape(layout)),
        "pixel_convention": "0-based (x, y) in the assembled/trimmed image; pixel img[j, i] is centred on (x=i, y=j)",
        "flux_convention": "flux_e: total electrons of the object in the exposure at flat_sky = 1; flux_adu = "
                           "flux_e / true gain of the amplifier containing the object; zp_e: AB mag giving 1 e-/s, "
                           "zp_adu[k]: 1 ADU/s in amplifier k (both include extinction and transparency)",
        "config": cfg.to_dict(),
        "effects": {k: cfg.enabled(k) for k in EFFECTS},
        "camera": {**camera.manifest(), "maps": cam_paths},
        "nights": [p.conditions() for p in plans],
        "tiles": [{"tile_id": survey.tile_id(i), "ra": r, "dec": d} for i, (r, d) in enumerate(survey.tile_radec)],
        "field_centre": list(survey.field_centre),
        "sky_catalog": sky_rel, "reference_catalog": ref_rel,
        "passband_shift_aa": {k: round(v, 4) for k, v in (sky.passband_shift or {}).items()},
        "frames": frames,
    }
    write_json(out / MANIFEST, manifest)
    return SimulationResult(
        out=out, manifest_path=out / MANIFEST, raw_files=[out / f["file"] for f in frames],
        truth_files=[out / f["truth"] for f in frames], sky_catalog=out / sky_rel, reference_catalog=out / ref_rel,
        camera_truth={k: out / v for k, v in cam_paths.items()}, frames=frames,
        elapsed_s=time.perf_counter() - t0,
    )
