"""Calibration of simulated frames with the *pipeline's own* masters, and truth readers for the reduction tests.

The simulated night (with its biases, darks and twilight flats) is ingested and processed by upad's calibration steps
(master bias, dark, flat, bad-pixel mask, illumination) through the flow; each science frame is then corrected by the reduction
step's ISR (:func:`upad.isr.run_isr`, the reduction step's ISR options) with the masters the lookup selects for it. The
gains, read noise and non-linearity are what the pipeline uses (never the simulator's drawn values), so the reduction
tests run on frames calibrated as upad calibrates real ones; the truth is read only to judge the results.

The simulated camera (its flat, bias, dark, bad pixels, gains, non-linearity) depends only on the simulation seed and
the camera's :class:`~upad.sim.SimConfig` fields (:data:`CAMERA_FIELDS`), so one calibration night serves every night
of the same camera: :class:`CalibrationCache` simulates a calibration-only night (biases, darks, twilight flats, and a
photon-transfer / linearity sequence of dome flats for the instrument signature) per camera, builds its masters and
its measured signature (gains, read noise, non-linearity; the ISR and the noise model use them as the reduction step
does) with :func:`pipeline_calibration`, and :func:`calibrate` then looks up the masters of a
science frame of *another* simulated night of that camera in that calibration's database (the frame's configuration
from its own header). That the two nights share the camera is checked on the truth's camera maps
(:func:`camera_checksum`): a mismatch is an error, never a silent mis-calibration.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from upad.instruments import get_instrument
from upad.sim.truth import load_manifest


@dataclass
class CalibratedFrame:
    """A simulated science frame calibrated with the pipeline's masters, plus its truth."""

    image: np.ndarray            # e-, flat-fielded, float32
    saturated: np.ndarray        # bool, saturated as the ISR flags it
    flat: np.ndarray             # the pipeline's flat-field response (master flat x illumination)
    dark_e: np.ndarray           # dark charge subtracted (e-), from the master dark
    bpm: np.ndarray              # the pipeline's bad-pixel mask (bit codes)
    read_noise: list[float]      # e- per amplifier
    amp_regions: list            # AmpSection.active per amplifier
    header: fits.Header          # raw header (commanded TAN WCS, exposure time, filter)
    true_wcs: WCS
    record: dict                 # manifest entry
    objects: Table
    cosmics: Table
    satellite: Table | None
    saturation: Table | None
    star: np.ndarray | None = None  # OBJECTS rows that are stars (from the sky catalog)
    extra: dict = field(default_factory=dict)


def _truth_table(hd: fits.HDUList, name: str) -> Table | None:
    return Table(hd[name].data) if name in hd else None


def star_ids(out: Path, manifest: dict) -> np.ndarray:
    """Sky-catalog ids of the stars."""
    sky = Table.read(out / manifest["sky_catalog"], hdu="SKY")
    return np.asarray(sky["id"])[np.asarray(sky["type"]).astype(str) == "star"]


#: the calibration steps whose masters the reduction tests use
CALIB_STEPS = ("instrument_signature", "master_bias", "master_dark", "master_flat", "bad_pixel_mask",
               "master_illumination")


#: the simulator effects (:data:`upad.sim.config.EFFECTS`) that shape the camera or its calibration frames
CAMERA_EFFECTS = ("bias_drift", "read_noise", "gain_variation", "nonlinearity", "dark_current", "hot_pixels",
                  "bad_columns", "prnu", "vignetting", "illumination", "fringing", "crosstalk", "bias_structure",
                  "dead_pixels")
#: the SimConfig fields that shape the simulated camera (:func:`upad.sim.detector.make_camera`), its bias and its
#: calibration frames; with the seed and the instrument they key :class:`CalibrationCache`
CAMERA_FIELDS = ("start_date", "gain_scatter", "bias_night_sigma_adu", "bias_frame_sigma_adu", "bias_drift_adu",
                 "dark_current", "hot_pixel_fraction", "hot_pixel_rate", "n_bad_columns", "prnu_sigma", "prnu_smooth",
                 "vignetting_corner", "illumination_amplitude", "fringe_amplitude", "fringe_period_px",
                 "draw_signature", "read_noise_scatter", "full_well_scatter", "nonlinearity_scatter",
                 "crosstalk_scale", "bias_structure_adu", "dead_pixel_fraction", "bias_column_jitter_adu",
                 "sky_flat_level_adu", "sky_flat_gradient_range", "sky_flat_gradient_curvature",
                 "sky_flat_star_density")


def camera_checksum(out: Path, manifest: dict) -> str:
    """SHA-256 of a simulated night's camera truth: its pixel maps (flat, dark rate, bad pixels, dome illumination)
    and drawn gains, noise, non-linearity, bias levels and bad columns."""
    h = hashlib.sha256()
    cam = manifest["camera"]
    for name in ("flat_sky", "dark_rate", "bpm", "illum_dome"):
        with fits.open(out / cam["maps"][name]) as hd:
            data = next(x.data for x in hd if x.data is not None)
            h.update(name.encode())
            h.update(np.ascontiguousarray(data).tobytes())
    core = {k: v for k, v in cam.items() if k not in ("maps", "fringe_amplitude_rms")}
    h.update(json.dumps([manifest["instrument"], manifest["layout"], core], sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class PipelineCalibration:
    """A simulated night ingested and calibrated by upad (SQLite under ``root``); ``out`` is the simulated night and
    ``camera`` its :func:`camera_checksum`."""

    root: Path
    db: Any
    counts: dict
    out: Path | None = None
    camera: str | None = None
    filters: tuple = ()


def pipeline_calibration(out: Path, root: Path) -> PipelineCalibration:
    """Ingest the simulated night under ``out`` into a new data root and run the calibration steps on it."""
    from upad.db import Database
    from upad.execution import InlineExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.settings import Settings

    url = f"sqlite:///{root / 'upad.sqlite'}"
    settings = Settings(root=root, db_url=url)
    settings.create_layout()
    db = Database(url)
    db.upgrade()
    ingest_paths(db, settings, [out / "raw"], mode="copy")
    sched = Scheduler(db, settings, InlineExecutor(), options=SchedulerOptions(steps=CALIB_STEPS, poll_seconds=0.05,
                                                                   min_replan_seconds=0.0))
    counts = sched.run(until_idle=True)
    from sqlalchemy import select

    from upad.db.models import Product

    with db.session() as s:  # the filters with a master flat
        filters = tuple(sorted({p.context.get("filter") for p in s.scalars(select(Product).where(
            Product.kind == "master_flat", Product.is_current)) if p.context.get("filter")}))
    man = load_manifest(out)
    return PipelineCalibration(root=root, db=db, counts=counts, out=Path(out), camera=camera_checksum(out, man),
                               filters=filters)


def foreign_frame_info(path: Path, layout: str) -> Any:
    """The lookup's view (:class:`upad.calib.model.FrameInfo`) of a raw frame that is not in the calibration's
    database (a science frame of another simulated night), from its own header as ingestion reads it."""
    from upad.calib.model import FrameInfo
    from upad.ingest.translate import translate_header
    from upad.io.raw import read_raw

    header, _ = read_raw(str(path), merged_header=True)
    m = translate_header(header, path.name)
    return FrameInfo(-1, path.name, m.instrument, m.telescope, m.detector, layout, m.read_mode, m.obs_type, m.filter,
                     float(m.exptime), m.date_obs, m.night, m.ra, m.dec)


def _masters(cal: PipelineCalibration, filename: str, info: Any = None) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, Any]]:
    """The masters the lookup selects for the archived frame ``filename`` (or for the frame described by ``info``,
    a :class:`~upad.calib.model.FrameInfo`) (kind -> image), and the frame's layout, read mode and exposure time."""
    from sqlalchemy import select

    from upad.calib.lookup import select_masters
    from upad.db.models import Frame, Product
    from upad.io.image import read_image
    from upad.io.products import file_of
    from upad.reduce.steps import ReduceConfig

    with cal.db.session() as s:
        frame = info if info is not None else s.scalars(select(Frame).where(Frame.filename == filename)).one()
        # twilight flats: the dome flats of the calibration nights are the signature's photon-transfer and
        # linearity sequence (levels 300-62000 ADU), not a flat-field series
        sel = select_masters(s, frame, ReduceConfig(flat_types=("sky",)))
        assert sel.ready, f"{filename}: {sel.reason}"
        images = {}
        for kind, choice in sel.chosen.items():
            prod = s.get(Product, choice.product_id)
            path = file_of(prod.files, "master", root=cal.root)
            if kind == "signature":  # the measured gains, read noise, non-linearity, crosstalk, saturation
                from upad.io.products import read_signature

                images[kind] = read_signature(path)
                continue
            images[kind] = read_image(path, first_image=True, dtype=None if kind == "bpm" else np.float32)
        meta = {"layout": frame.layout, "read_mode": frame.read_mode, "exptime": frame.exptime}
    return images, meta


def calibrate(out: Path, manifest: dict, rec: dict, *, cal: PipelineCalibration,
              stars: np.ndarray | None = None) -> CalibratedFrame:
    """Calibrate one simulated frame with the pipeline's masters (see the module documentation).

    ``cal`` is the calibration of the frame's own night, or of another simulated night of the same camera (then the
    masters are those the lookup selects for the frame's header; the cameras are compared first)."""
    from upad.io.raw import read_raw
    from upad.isr import run_isr
    from upad.reduce.steps import ReduceConfig

    inst = get_instrument(manifest["instrument"])
    path = out / rec["file"]
    info = None
    if cal.out is not None and Path(cal.out).resolve() != Path(out).resolve():
        mine = camera_checksum(out, manifest)
        if mine != cal.camera:
            raise AssertionError(f"{out} was simulated with another camera than the calibration night {cal.out} "
                                 "(seed or camera SimConfig fields differ): its masters do not apply")
        info = foreign_frame_info(path, manifest["layout"])
    header, raw = read_raw(str(path), merged_header=True)
    masters, meta = _masters(cal, path.name, info)
    if info is not None:  # a calibration night of the cache has every kind (no silent skip of a missing one)
        assert {"bias", "dark", "flat", "bpm"} <= set(masters), (path.name, sorted(masters))
    exptime = float(meta["exptime"])
    signature = masters.pop("signature", None)
    sig_kw = signature.isr_kwargs() if signature is not None else {}
    res = run_isr(raw, inst, layout=meta["layout"], options=ReduceConfig().isr.options(to_electrons=True),
                  bias=masters.get("bias"), dark=masters.get("dark"), exptime=exptime, flat=masters.get("flat"),
                  illumination=masters.get("illumination"), **sig_kw)
    sections = inst.amp_sections(meta["layout"])
    factor = inst.read_mode(meta["read_mode"]).read_noise_factor if meta.get("read_mode") else 1.0
    amps = inst.detector(1).amplifiers
    read_noise = [amps[sec.index].read_noise * factor for sec in sections]
    if signature is not None and signature.qc.get("read_noise", {}).get("status") == "measured":
        read_noise = [float(signature.read_noise_e[sec.index]) for sec in sections]  # as the reduction step
    flat = masters["flat"].copy()
    if "illumination" in masters:
        flat *= masters["illumination"]
    dark = masters.get("dark")
    dark_e = (dark * np.float32(exptime)) if dark is not None else np.zeros_like(res.image)
    bpm = masters.get("bpm")
    with fits.open(out / rec["truth"]) as hd:
        true_hdr = hd[0].header
        objects = Table(hd["OBJECTS"].data)
        cosmics = Table(hd["COSMICS"].data)
        satellite = _truth_table(hd, "SATELLITE")
        saturation = _truth_table(hd, "SATURATION")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tw = WCS(true_hdr, naxis=2)
    is_star = np.isin(np.asarray(objects["id"]), stars) if stars is not None else None
    return CalibratedFrame(image=res.image, saturated=res.saturated, flat=flat, dark_e=dark_e,
                           bpm=(np.asarray(bpm) if bpm is not None else np.zeros(res.image.shape, np.uint8)),
                           read_noise=read_noise,
                           amp_regions=[s.active for s in sections], header=header, true_wcs=tw, record=rec,
                           objects=objects, cosmics=cosmics, satellite=satellite, saturation=saturation,
                           star=is_star)


def refcat_at_frame(refcat: Any, c: CalibratedFrame) -> Any:
    """The reference catalog with its positions moved to the frame's epoch (its record's MJD plus half the exposure),
    as :func:`upad.reduce.pipeline.reduce_frame` and the reduce step do: for the tests that call
    :func:`upad.reduce.astrometry.solve_astrometry` directly, which takes positions at the frame's epoch."""
    from upad.io.refcat import at_epoch, observation_epoch

    return at_epoch(refcat, observation_epoch(c.record, c.header))[0]


def reduce_calibrated(c: CalibratedFrame, refcat, **kwargs):
    """Run :func:`upad.reduce.pipeline.reduce_frame` on a copy of a calibrated frame."""
    from upad.reduce.pipeline import reduce_frame

    return reduce_frame(c.image.copy(), wcs_guess=c.header, refcat=refcat, filter_name=c.record["filter"],
                        exptime=float(c.record["exptime"]), read_noise=c.read_noise, amp_regions=c.amp_regions,
                        saturated=c.saturated, bpm=c.bpm > 0, flat=c.flat, dark_e=c.dark_e, **kwargs)


def pixel_sigma(frame) -> np.ndarray:
    """Noise of every pixel (e-) from a reduced frame's weight map (the sky noise where the weight is 0)."""
    w = frame.weight
    with np.errstate(divide="ignore"):
        s = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), frame.stats["noise_model_sigma_e"])
    return s.astype(np.float32)


def camera_key(instrument: str, seed: int, config: Any) -> tuple:
    """What makes two simulated nights share a camera: instrument, seed and the camera's SimConfig fields."""
    fields = tuple((f, repr(getattr(config, f))) for f in CAMERA_FIELDS)
    off = tuple(sorted(e for e in config.disabled if e in CAMERA_EFFECTS))
    return (instrument, int(seed), fields, off)


#: the calibration-only night of a camera: enough biases, darks and twilight flats for every master kind
CALIBRATION_NIGHT = dict(n_bias=5, n_dark=3, n_dome_flats=0, n_sky_flats=8, n_ptc_pairs=5, n_linearity_flats=8,
                         workers=2)


class CalibrationCache:
    """The pipeline's own masters per simulated camera, built once per test session.

    :meth:`get` returns the :class:`PipelineCalibration` of a calibration-only night (:data:`CALIBRATION_NIGHT`:
    biases, darks and twilight flats in the filters asked) simulated with the seed and the camera fields of a test's
    configuration. The filters are part of the key (a night with other filters has other twilight flats, so other
    masters): a test gets the same masters whichever tests ran before it. :func:`calibrate` checks, per frame, that
    the night calibrated shares the camera."""

    def __init__(self, tmp_path_factory: Any) -> None:
        self._tmp = tmp_path_factory
        self._cals: dict[tuple, list[PipelineCalibration]] = {}

    def get(self, seed: int, filters: list[str] | tuple[str, ...], config: Any, *,
            instrument: str = "mini") -> PipelineCalibration:
        from upad.sim import simulate

        want = set(filters)
        key = (*camera_key(instrument, seed, config), tuple(sorted(want)))
        for cal in self._cals.get(key, []):
            return cal
        n = sum(len(v) for v in self._cals.values())
        out = self._tmp.mktemp(f"owncal{n}-seed{seed}")
        # the night's own conditions are the simulator's defaults: only the camera comes from the test's
        # configuration, so that the masters do not depend on which test asked first
        from upad.sim import SimConfig

        cfg = SimConfig(**{f: getattr(config, f) for f in CAMERA_FIELDS},
                        disabled=tuple(e for e in config.disabled if e in CAMERA_EFFECTS), **CALIBRATION_NIGHT)
        simulate(instrument, seed=seed, out=out / "sim", nights=1, tiles=0, filters=sorted(want), config=cfg)
        (out / "root").mkdir()
        cal = pipeline_calibration(out / "sim", out / "root")
        assert set(cal.filters) == want, (cal.filters, want)
        self._cals.setdefault(key, []).append(cal)
        return cal

    def close(self) -> None:
        for cals in self._cals.values():
            for cal in cals:
                cal.db.dispose()


def wcs_vs_truth_at_stars(wcs: WCS, c: CalibratedFrame, shape: tuple[int, int], xw: np.ndarray,
                          yw: np.ndarray) -> dict[str, float]:
    """The fitted WCS against the true one at the true stars matched (within 1 pixel) to the measured centroids
    ``xw, yw`` (0-based), judged where each star's light is centred (truth ``x + psf_dx, y + psf_dy``), as
    :func:`upad.reduce.validation.frame_vs_truth` does: coma shifts a star's centroid from the chief ray, and a WCS
    maps measured centroids to the sky, so it can only be asked to put a star's sky position where its light is."""
    from scipy.spatial import cKDTree

    from upad.reduce.validation import astrometry_vs_truth

    obj = c.objects
    ox, oy = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    cols = obj.colnames
    pdx = np.asarray(obj["psf_dx"], float) if "psf_dx" in cols else np.zeros(len(ox))
    pdy = np.asarray(obj["psf_dy"], float) if "psf_dy" in cols else np.zeros(len(oy))
    d, i = cKDTree(np.column_stack([ox + pdx, oy + pdy])).query(np.column_stack([xw, yw]), distance_upper_bound=1.0)
    ok = np.isfinite(d)
    i = i[ok]
    return {**astrometry_vs_truth(wcs, c.true_wcs, shape, x=ox[i], y=oy[i], dx=pdx[i], dy=pdy[i]),
            "n_at": int(ok.sum())}


def synthetic_psf_frame(seed: int, *, fwhm_arcsec: float, beta: float, g1: float, g2: float, n: int, size: int,
                        sky: float, scale: float = 0.55, snr_range: tuple[float, float] = (50.0, 400.0),
                        **family: Any) -> tuple[np.ndarray, ...]:
    """A sky-subtracted frame of ``n`` point sources drawn by the simulator's renderer (a PSF of the given family,
    FWHM and shear, uniform over the field) with Poisson noise: ``img, x, y, flux, snr, true FWHM (px)``."""
    from upad.sim.psf import PSFModel
    from upad.sim.render import Sources, render, star_grid

    rng = np.random.default_rng(seed)
    x, y, flux, snr = star_grid(rng, n, size, sky=sky, snr_range=snr_range)
    psf = PSFModel(beta=beta, fwhm_centre=fwhm_arcsec, c_r2=0.0, c_x=0.0, c_y=0.0, g1_0=g1, g2_0=g2, g_r=0.0,
                   nx=size, ny=size, **family)
    img = np.zeros((size, size), np.float32)
    info = render(img, Sources.points(x, y, flux), psf, pixel_scale=scale, zones=1)
    img = (rng.poisson(np.maximum(img + sky, 0.0)) - sky).astype(np.float32)
    return img, x, y, flux, snr, float(np.median(info.fwhm_arcsec)) / scale


def measure_synthetic_psf(img: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, snr: np.ndarray, *,
                          radius_guess: float, scale: float = 0.55, config: Any = None) -> Any:
    """:func:`upad.reduce.psf.measure_psf` on a :func:`synthetic_psf_frame` (positions off by a few 0.01 px, as a
    detection's are; ``radius_guess``: the flux radius given for every star, pixels)."""
    from upad.reduce.psf import PsfConfig, measure_psf

    n = len(x)
    return measure_psf(img, x + 0.02, y - 0.02, flux, snr, np.zeros(n, int), np.zeros(n, int),
                       np.full(n, radius_guess), np.zeros(n), np.full(n, 1000.0), pixel_scale=scale,
                       config=config or PsfConfig())
