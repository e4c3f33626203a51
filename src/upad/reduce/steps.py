"""Step ``reduce``: the daily pipeline's adapter for one science frame.

Readiness is exactly :func:`upad.calib.lookup.select_masters` (what ``upad calib lookup FRAME`` shows): the chosen
masters are the unit's inputs, so they are recorded in the reduced frame's provenance, and a frame whose required
masters are missing waits with the lookup's reason.

This version does the instrumental correction and the masks that come from it:
overscan → bias → non-linearity → gain (e-) → dark → flat → illumination → fringe (scaled fit of the fringe map),
a variance map from the noise model (read noise, Poisson, flat), the bit-coded mask from the bad-pixel mask,
saturation and pixels without data, and the reduced FITS file: the float32 image (electrons) in HDU 1, the
RICE-compressed mask in HDU 2, the weight map (1/variance, 0 where unusable) in HDU 3.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from sqlalchemy import select

from upad import maskbits
from upad.calib.config import LookupConfig
from upad.calib.fringe import fit_fringe_scale
from upad.calib.lookup import select_masters
from upad.config import param
from upad.db.models import Frame
from upad.flow.step import DataError, InputRef, OutputFile, ResolvedInput, Step, StepOutput, Task, Unit, register_step
from upad.instruments import get_instrument
from upad.reduce.isr import IsrOptions, run_isr


@dataclass(frozen=True)
class ReduceConfig(LookupConfig):
    overscan: str = param("poly", doc="Overscan estimator: 'poly', 'rows', 'mean' or 'none'",
                          choices=("poly", "rows", "mean", "none"))
    overscan_order: int = param(3, doc="Order of the overscan polynomial ('poly')", bounds=(0, 10))
    linearize: bool = param(True, doc="Correct the non-linearity with the instrument file's [c2, c3]")
    fringe_correct: bool = param(True, doc="Subtract the scaled fringe map in filters that fringe")
    vignetted_below: float = param(0.5, doc="Flat response below which a pixel is flagged VIGNETTED",
                                   bounds=(0.0, 1.0))
    mask_compression: str = param("RICE_1", doc="Tile compression of the mask HDU",
                                  choices=("RICE_1", "PLIO_1", "GZIP_1", "HCOMPRESS_1"))


def _master_path(res: ResolvedInput) -> str:
    roles = res.meta.get("file_roles") or []
    return res.paths[roles.index("master")] if "master" in roles else res.paths[0]


def _read_image(path: str, ext: int | str = 0) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        hdu = hdul[ext]
        if hdu.data is None and ext == 0 and len(hdul) > 1:
            hdu = hdul[1]
        return np.asarray(hdu.data, dtype=np.float32)


def _read_raw(path: str) -> tuple[fits.Header, np.ndarray]:
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header.copy()
        for hdu in hdul:
            if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                header.update({k: v for k, v in hdu.header.items()
                               if k not in ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND",
                                            "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "CHECKSUM", "DATASUM", "")})
                return header, np.asarray(hdu.data)
    raise DataError(f"{path} has no 2-D image")


def fit_fringe(image: np.ndarray, fringe: np.ndarray, *, exclude: np.ndarray | None = None,
               clip: float = 4.0) -> tuple[float, float] | None:
    """Robust amplitude of the fringe map in a flat-fielded frame: ``(a, background)`` such that
    ``image - a * background * fringe`` is fringe-free, or ``None`` when the frame has no usable sky.

    Sources, saturated pixels and pixels without data are left out of the least-squares fit (pixels further than
    ``clip`` robust sigmas from the sky), otherwise stars and trails drag the amplitude away.
    """
    finite = np.isfinite(image) & np.isfinite(fringe)
    if exclude is not None:
        finite &= ~exclude
    sample = image[finite][::7]
    if sample.size < 100:
        return None
    background = float(np.median(sample))
    if background <= 0:
        return None
    x = image / background - 1.0
    sigma = 1.4826 * float(np.median(np.abs(x[finite][::7] - np.median(x[finite][::7]))))
    use = finite & (np.abs(x) < clip * max(sigma, 1e-6))
    x = np.where(use, x, np.nan).astype(np.float32)
    return fit_fringe_scale(x, np.where(use, fringe, np.nan).astype(np.float32)), background


@register_step
class Reduce(Step):
    """Reduce one science frame with the masters the calibration lookup chooses."""

    name = "reduce"
    product_kind = "reduced_frame"
    area = "reduced"
    memory_class = "medium"
    config_class = ReduceConfig
    version = "0.2"
    order = 50
    description = "instrumental correction, variance and masks of a science frame"

    def plan(self, session: Any, config: ReduceConfig) -> Iterable[Unit]:
        for f in session.scalars(select(Frame).where(Frame.obs_type == "science", Frame.valid.is_(True))
                                 .order_by(Frame.date_obs)):
            sel = select_masters(session, f, config)
            yield Unit(key=f"{f.night}/{f.filename.split('.')[0]}",
                       inputs=[InputRef("frame", f.id, "raw"), *sel.inputs()], ready=sel.ready, reason=sel.reason,
                       context={"night": f.night, "filter": f.filter, "frame_id": f.id, "masters": sel.record()})

    def run(self, task: Task) -> StepOutput:
        cfg = task.config
        raw_in = task.input("raw")
        meta = raw_in.meta
        inst = get_instrument(meta["instrument"])
        header, raw = _read_raw(raw_in.paths[0])
        masters = {r.role: r for r in task.inputs if r.kind == "product"}

        def load(kind: str) -> np.ndarray | None:
            return _read_image(_master_path(masters[kind])) if kind in masters else None

        bias, dark, flat = load("bias"), load("dark"), load("flat")
        options = IsrOptions(overscan=cfg["overscan"], overscan_order=cfg["overscan_order"],
                             linearize=cfg["linearize"], to_electrons=True)
        isr = run_isr(raw, inst, layout=meta["layout"], options=options, bias=bias, dark=dark,
                      exptime=float(meta["exptime"]), flat=flat)
        image = isr.image
        notes = list(isr.notes)
        illum = load("illumination")
        if illum is not None:
            image /= np.where(illum > 0, illum, 1.0).astype(np.float32)
        fringe_scale = None
        fringe = load("fringe")
        if fringe is not None and cfg["fringe_correct"]:
            fringe_scale = fit_fringe(image, fringe, exclude=isr.saturated)
            if fringe_scale is not None:
                image -= np.float32(fringe_scale[0] * fringe_scale[1]) * fringe
                fringe_scale = fringe_scale[0]
        # noise model: electrons collected before the flat, plus read noise, scaled by the flat
        amps = inst.detector(1).amplifiers
        read_var = np.zeros_like(image)
        for sec in inst.amp_sections(meta["layout"]):
            read_var[sec.active] = amps[sec.index].read_noise ** 2
        response = flat if flat is not None else np.ones_like(image)
        if illum is not None:
            response = response * illum
        good_response = response > 0
        safe = np.where(good_response, response, 1.0).astype(np.float32)
        variance = (np.maximum(image, 0) * safe + read_var) / safe ** 2
        mask = maskbits.new_mask(image.shape)
        mask[isr.saturated] |= maskbits.SATURATED
        bpm = load("bpm")
        if bpm is not None:
            mask[bpm > 0] |= maskbits.BAD
        mask[~np.isfinite(image) | ~good_response] |= maskbits.NODATA
        if flat is not None:
            mask[(flat < cfg["vignetted_below"]) & good_response] |= maskbits.VIGNETTED
        weight = np.where((mask & maskbits.ZERO_WEIGHT) == 0, 1.0 / np.maximum(variance, 1e-12), 0.0)
        weight = weight.astype(np.float32)
        image = np.where(np.isfinite(image), image, 0.0).astype(np.float32)
        # the reduced file
        out_header = fits.Header()
        for key in ("OBJECT", "DATE-OBS", "EXPTIME", "FILTER", "AIRMASS", "RA", "DEC", "TELESCOP", "INSTRUME"):
            if key in header:
                out_header[key] = header[key]
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
            if key in header:
                out_header[key] = header[key]
        out_header["BUNIT"] = "electron"
        out_header["UPADPROV"] = (task.provenance_id[:12], "upad provenance id (short)")
        out_header["UPADSTEP"] = (f"{self.name} {self.version}", "upad step and version")
        out_header["RAWFILE"] = (meta["filename"], "raw frame")
        for kind, res in sorted(masters.items()):
            out_header[f"CAL_{kind[:4].upper()}"] = (res.meta.get("provenance_id", "")[:12], f"master {kind}")
        if fringe_scale is not None:
            out_header["FRNGSCAL"] = (fringe_scale, "fitted fringe amplitude")
        mask_header = fits.Header()
        for key, (bit, comment) in maskbits.header_cards().items():
            mask_header[key if len(key) <= 8 else f"HIERARCH {key}"] = (bit, comment)
        stem = meta["filename"].split(".")[0]
        name = f"{stem}_red.fits"
        staged = task.stage(name)
        fits.HDUList([
            fits.PrimaryHDU(),
            fits.ImageHDU(image, header=out_header, name="SCI"),
            fits.CompImageHDU(mask.astype(maskbits.MASK_DTYPE), header=mask_header, name="MASK",
                              compression_type=cfg["mask_compression"]),
            fits.ImageHDU(weight, name="WEIGHT"),
        ]).writeto(staged, checksum=True)
        good = (mask & maskbits.UNUSABLE) == 0
        sky = float(np.median(image[good][::7])) if good.any() else float("nan")
        stats = {"sky_e": sky, "masked_fraction": float(1 - good.mean()),
                 "saturated_pixels": int(isr.saturated.sum()), "overscan_adu": isr.overscan_level,
                 "fringe_scale": fringe_scale, "notes": notes,
                 "masters": {k: r.meta.get("provenance_id", "")[:12] for k, r in masters.items()}}
        return StepOutput(files=[OutputFile("reduced", str(staged), self.final_path(task, name))], meta=stats,
                          qc_status="ok")


__all__ = ["Reduce", "ReduceConfig"]
