"""Ideal calibration of simulated frames with the *truth* patterns, and truth readers for the reduction tests.

The ISR primitives (:mod:`upad.isr`) trim and assemble; the bias (per amplifier and readout row), the
non-linearity, the gains, the dark and the flat all come from the simulator's truth, so that the reduction
algorithms are tested on realistic calibrated images whose every pixel is known.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from upad.instruments import get_instrument
from upad import isr
from upad.sim.truth import read_map


@dataclass
class CalibratedFrame:
    """A simulated science frame calibrated with the truth, plus its truth."""

    image: np.ndarray            # e-, flat-fielded, float32
    saturated: np.ndarray        # bool, raw at the ADC maximum
    flat: np.ndarray             # truth flat_sky
    dark_e: np.ndarray           # dark charge subtracted (e-)
    bpm: np.ndarray              # truth bad-pixel mask (uint8 bits)
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


def calibrate(out: Path, manifest: dict, rec: dict, *, stars: np.ndarray | None = None) -> CalibratedFrame:
    """Calibrate one simulated frame with the truth (see the module documentation)."""
    inst = get_instrument(manifest["instrument"])
    cam = manifest["camera"]
    with fits.open(out / rec["file"]) as hd:
        hdu = hd[1] if len(hd) > 1 else hd[0]
        raw = np.asarray(hdu.data)
        header = hdu.header.copy()
    sections = inst.amp_sections(manifest["layout"])
    img, _ = isr.assemble(raw, sections, options=isr.IsrOptions(overscan="none"))
    saturated = isr.saturation_mask(raw, sections, level=float(inst.adc_max))
    with fits.open(out / rec["truth"]) as hd:
        bias_rows = np.asarray(hd["BIAS"].data, dtype=np.float64)
        true_hdr = hd[0].header
        objects = Table(hd["OBJECTS"].data)
        cosmics = Table(hd["COSMICS"].data)
        satellite = _truth_table(hd, "SATELLITE")
        saturation = _truth_table(hd, "SATURATION")
    for sec in sections:
        ny = sec.active[0].stop - sec.active[0].start
        local = np.arange(ny)
        r = (ny - 1 - local) if sec.read_flip_y else local
        img[sec.active] -= bias_rows[sec.index, r].astype(np.float32)[:, None]
    isr.linearize(img, sections, cam["nonlinearity_c2_c3"], iterations=4)
    isr.apply_gain(img, sections, cam["gain_true_e_per_adu"])
    dark_e = read_map(out / cam["maps"]["dark_rate"]).astype(np.float32) * np.float32(rec["exptime"])
    img -= dark_e
    flat = read_map(out / cam["maps"]["flat_sky"]).astype(np.float32)
    isr.divide_flat(img, flat)
    bpm = read_map(out / cam["maps"]["bpm"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tw = WCS(true_hdr, naxis=2)
    is_star = np.isin(np.asarray(objects["id"]), stars) if stars is not None else None
    return CalibratedFrame(image=img, saturated=saturated, flat=flat, dark_e=dark_e, bpm=bpm,
                           read_noise=list(cam["read_noise_e"]), amp_regions=[s.active for s in sections],
                           header=header, true_wcs=tw, record=rec, objects=objects, cosmics=cosmics,
                           satellite=satellite, saturation=saturation, star=is_star)


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
