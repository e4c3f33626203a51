"""Calibration of simulated frames with the *pipeline's own* masters, and truth readers for the reduction tests.

The simulated night (with its biases, darks and twilight flats) is ingested and processed by upad's calibration steps
(master bias, dark, flat, bad-pixel mask, illumination) through the flow; each science frame is then corrected by the reduction
step's ISR (:func:`upad.isr.run_isr`, the reduction step's ISR options) with the masters the lookup selects for it. The
gains, read noise and non-linearity are what the pipeline uses (never the simulator's drawn values), so the reduction
tests run on frames calibrated as upad calibrates real ones; the truth is read only to judge the results.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from upad.instruments import get_instrument


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
CALIB_STEPS = ("master_bias", "master_dark", "master_flat", "bad_pixel_mask", "master_illumination")


@dataclass
class PipelineCalibration:
    """A simulated night ingested and calibrated by upad (SQLite under ``root``)."""

    root: Path
    db: Any
    counts: dict


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
    return PipelineCalibration(root=root, db=db, counts=counts)


def _masters(cal: PipelineCalibration, filename: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The masters the lookup selects for the archived frame ``filename`` (kind -> image), and the frame's row."""
    from sqlalchemy import select

    from upad.calib.lookup import select_masters
    from upad.db.models import Frame, Product
    from upad.io.image import read_image
    from upad.io.products import file_of
    from upad.reduce.steps import ReduceConfig

    with cal.db.session() as s:
        frame = s.scalars(select(Frame).where(Frame.filename == filename)).one()
        sel = select_masters(s, frame, ReduceConfig())
        assert sel.ready, f"{filename}: {sel.reason}"
        images = {}
        for kind, choice in sel.chosen.items():
            prod = s.get(Product, choice.product_id)
            path = file_of(prod.files, "master", root=cal.root)
            images[kind] = read_image(path, first_image=True, dtype=None if kind == "bpm" else np.float32)
        meta = {"layout": frame.layout, "read_mode": frame.read_mode, "exptime": frame.exptime}
    return images, meta


def calibrate(out: Path, manifest: dict, rec: dict, *, cal: PipelineCalibration,
              stars: np.ndarray | None = None) -> CalibratedFrame:
    """Calibrate one simulated frame with the pipeline's masters (see the module documentation)."""
    from upad.io.raw import read_raw
    from upad.isr import run_isr
    from upad.reduce.steps import ReduceConfig

    inst = get_instrument(manifest["instrument"])
    path = out / rec["file"]
    header, raw = read_raw(str(path), merged_header=True)
    masters, meta = _masters(cal, path.name)
    exptime = float(meta["exptime"])
    res = run_isr(raw, inst, layout=meta["layout"], options=ReduceConfig().isr.options(to_electrons=True),
                  bias=masters.get("bias"), dark=masters.get("dark"), exptime=exptime, flat=masters.get("flat"),
                  illumination=masters.get("illumination"))
    sections = inst.amp_sections(meta["layout"])
    factor = inst.read_mode(meta["read_mode"]).read_noise_factor if meta.get("read_mode") else 1.0
    amps = inst.detector(1).amplifiers
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
                           read_noise=[amps[sec.index].read_noise * factor for sec in sections],
                           amp_regions=[s.active for s in sections], header=header, true_wcs=tw, record=rec,
                           objects=objects, cosmics=cosmics, satellite=satellite, saturation=saturation,
                           star=is_star)


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
