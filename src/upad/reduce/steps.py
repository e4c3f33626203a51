"""Step ``reduce``: the daily pipeline's adapter for one science frame.

Readiness is exactly :func:`upad.calib.lookup.select_masters` (what ``upad calib lookup FRAME`` shows): the chosen
masters are the unit's inputs, so they are recorded in the reduced frame's provenance, and a frame whose required
masters are missing waits with the lookup's reason.

The run: overscan → bias → non-linearity → gain (e-) → dark → flat → illumination → fringe (scaled fit of the fringe
map) (:mod:`upad.isr`, with the same :class:`~upad.isr.config.IsrConfig` as the masters), then
:func:`upad.reduce.pipeline.reduce_frame` (masks, background and noise model, cosmetics, satellites, cosmic rays,
detection and photometry, astrometry, PSF, zero point, QC). Outputs (formats and readers: :mod:`upad.io.products`):
the reduced FITS (float32 image in electrons in HDU 1, the compressed bit-coded mask in HDU 2, the weight map in
HDU 3), the catalog (SExtractor column names), the PSF model, a preview and a QC plot; the QC status and reasons go
to the product's ``qc_status`` and ``meta``.

Bad input never stops the night. A raw file that cannot be read (truncated, corrupt), has the wrong shape, or holds
only zeros, NaNs or one constant gives a product without files whose QC is ``fail`` with the reason; a frame that
cannot be characterised (no sources, failed astrometry …) keeps its instrumentally corrected image and records the
failed QC with the reason code of :class:`~upad.reduce.errors.ReductionError`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from astropy.io import fits

from upad import maskbits
from upad.calib.config import LookupConfig
from upad.calib.lookup import select_masters
from upad.config import StepConfig, param
from upad.db.models import Frame
from upad.errors import DataError
from upad.flow.queries import PlanContext
from upad.flow.step import (
    FRAME,
    Input,
    InputRef,
    Output,
    OutputFile,
    PrerequisiteInput,
    ResolvedInput,
    Step,
    StepOutput,
    Task,
    Unit,
    register_step,
)
from upad.instruments import get_instrument
from upad.io.image import read_image
from upad.io.products import file_of, provenance_cards, write_catalog, write_isr_only, write_psf, write_reduced
from upad.io.raw import read_raw
from upad.io.refcat import in_cone, observation_epoch, propagate_to_epoch, read_reference_catalog
from upad.isr import fit_fringe, raw_shape_problem, run_isr
from upad.isr.config import IsrConfig
from upad.reduce.errors import ReductionError
from upad.reduce.pipeline import ReductionConfig, reduce_frame, validate_image
from upad.reduce.preview import write_previews
from upad.reduce.saturation import instrument_levels


@dataclass(frozen=True)
class ReduceConfig(LookupConfig, ReductionConfig):
    """The reduction step's parameters: the calibration lookup's, the ISR's (``isr``: the same nested
    :class:`~upad.isr.config.IsrConfig` as the master steps'), and every stage of
    :class:`~upad.reduce.pipeline.ReductionConfig` (nested tables ``[steps.reduce.cosmics]`` … in ``upad.toml``)."""

    reference_catalog: str = param("reference/refcat.fits", doc="Reference star catalog (FITS, Parquet, CSV; a "
                                   "Gaia extract or the simulator's), relative to the data root or absolute")
    isr: IsrConfig = param(IsrConfig(), doc="Instrument-signature removal (overscan, non-linearity, saturation): "
                                            "one nested table, the same for every step")
    fringe_correct: bool = param(True, doc="Subtract the scaled fringe map in filters that fringe")
    mask_compression: str = param("RICE_1", doc="Tile compression of the mask HDU",
                                  choices=("RICE_1", "PLIO_1", "GZIP_1", "HCOMPRESS_1"))

    def reduction_config(self) -> ReductionConfig:
        """The :class:`~upad.reduce.pipeline.ReductionConfig` part (what :func:`reduce_frame` takes)."""
        return ReductionConfig(**{f.name: getattr(self, f.name) for f in fields(ReductionConfig)})


#: The files of a reduced frame's product, in this order (``files[0]`` is the reduced image).
OUTPUT_ROLES = ("reduced", "catalog", "psf", "preview", "qc_plot")


def unit_key(frame: Frame) -> str:
    """The ``reduce`` unit of a science frame: ``NIGHT/STEM`` (the raw file name without extensions)."""
    return f"{frame.night}/{frame.filename.split('.')[0]}"


@register_step
class Reduce(Step):
    """Reduce one science frame with the masters the calibration lookup chooses."""

    name = "reduce"
    product_kind = "reduced_frame"
    area = "reduced"
    memory_class = "medium"
    config_class = ReduceConfig
    version = "1.2"  # 1.2: failed QC for bad input, CAL_<ROLE> header cards, compiled ISR
    description = "instrumental correction, variance and masks of a science frame"
    #: the masters are looked up by validity (:func:`upad.calib.lookup.select_masters`); which of them are required
    #: is the lookup's ``required`` parameter, so each is declared with ``minimum=0``
    inputs = (Input("raw", FRAME, doc="the science frame"),
              PrerequisiteInput("bias", "master_bias", minimum=0, doc="master bias (required by default)"),
              PrerequisiteInput("dark", "master_dark", minimum=0, doc="master dark"),
              PrerequisiteInput("flat", "master_flat", minimum=0, doc="master flat (required by default)"),
              PrerequisiteInput("illumination", "master_illumination", minimum=0,
                                doc="illumination correction made against the chosen flat's type"),
              PrerequisiteInput("fringe", "master_fringe", minimum=0, enabled_by="fringe_correct",
                                doc="fringe map (filters that fringe)"),
              PrerequisiteInput("bpm", "bad_pixel_mask", minimum=0, doc="bad-pixel mask"),
              PrerequisiteInput("signature", "instrument_signature", minimum=0,
                                doc="measured instrument signature (gains, read noise, non-linearity, crosstalk, "
                                    "saturation); the instrument file's first guesses without one"))
    outputs = tuple(Output(role, optional=True) for role in OUTPUT_ROLES)

    def cfg(self, task: Task) -> ReduceConfig:
        """The task's configuration as a :class:`ReduceConfig`."""
        if isinstance(task.config, StepConfig):
            return task.config  # type: ignore[return-value]
        return ReduceConfig.from_mapping(task.config, where="steps.reduce")

    def plan(self, ctx: PlanContext, config: ReduceConfig) -> Iterable[Unit]:
        for f in ctx.frames("science"):
            sel = select_masters(ctx.session, f, config)
            yield Unit(key=unit_key(f),
                       inputs=[InputRef("frame", f.id, "raw"), *sel.inputs()], ready=sel.ready, reason=sel.reason,
                       context={"night": f.night, "filter": f.filter, "frame_id": f.id, "masters": sel.record()})

    def run(self, task: Task) -> StepOutput:
        # the masters are read in two threads while the raw frame is decompressed (file reads and copies release
        # the GIL); whatever happens, no read outlives the job
        cfg = self.cfg(task)
        masters = {r.role: r for r in task.inputs if r.kind == "product"}
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="upad-read") as pool:
            pending = {kind: pool.submit(read_image, file_of(masters[kind], "master"), first_image=True,
                                         dtype=None if kind == "bpm" else np.float32)
                       for kind in ("bias", "dark", "flat", "illumination", "fringe", "bpm")
                       if kind in masters and (kind != "fringe" or cfg.fringe_correct)}
            try:
                return self._reduce(task, cfg, masters, pending)
            finally:
                for future in pending.values():  # not consumed (a bad raw frame, an error): drop them
                    future.cancel()

    def _reduce(self, task: Task, cfg: ReduceConfig, masters: dict[str, ResolvedInput],
                pending: dict[str, Any]) -> StepOutput:
        raw_in = task.input("raw")
        meta = raw_in.meta
        inst = get_instrument(meta["instrument"])
        lap = _Stopwatch()
        try:
            header, raw = read_raw(raw_in.paths[0], merged_header=True)
            why = raw_shape_problem(raw, inst, meta["layout"])
            if why:
                raise ReductionError("no_data", why, stage="read")
            # a frame of zeros or NaNs, or constant (a readout failure), is refused before any arithmetic
            validate_image(np.asarray(raw[::4, ::4], dtype=np.float32), min_valid_fraction=cfg.min_valid_fraction)
        except DataError as exc:
            # unreadable (truncated, corrupt) or empty: no image to keep; the failed QC and its reason are recorded
            # as the frame's product and the rest of the night goes on
            return StepOutput(meta={"qc": "failed", "qc_reasons": [_reason(exc, "unreadable")]}, qc_status="fail")
        lap("read_raw")

        def load(kind: str) -> np.ndarray | None:
            return pending.pop(kind).result() if kind in pending else None

        bias, dark, flat, illum = load("bias"), load("dark"), load("flat"), load("illumination")
        signature = None
        if "signature" in masters:  # the measured instrument signature (instrument file's first guesses without)
            from upad.io.products import read_signature

            signature = read_signature(masters["signature"])
        sig_kw = signature.isr_kwargs() if signature is not None else {}
        lap("read_masters")
        # every ISR option of the shared configuration, as the masters were made (overscan method, order, smoothing,
        # skipped columns, non-linearity, saturation level, engine)
        isr = run_isr(raw, inst, layout=meta["layout"], options=cfg.isr.options(to_electrons=True), bias=bias,
                      dark=dark, exptime=float(meta["exptime"]), flat=flat, illumination=illum, **sig_kw)
        del raw, bias
        lap("isr")
        image = isr.image
        notes = list(isr.notes)
        fringe_scale = None
        fringe = load("fringe")
        if fringe is not None and cfg.fringe_correct:
            fringe_scale = fit_fringe(image, fringe, exclude=isr.saturated)
            if fringe_scale is not None:
                image -= np.float32(fringe_scale[0] * fringe_scale[1]) * fringe
                fringe_scale = fringe_scale[0]
        del fringe
        # the flat-field response of every pixel, for the noise model (our own copies: updated in place)
        response = flat if flat is not None else np.ones_like(image)
        if illum is not None:
            response *= illum
        del illum
        sections = inst.amp_sections(meta["layout"])
        factor = inst.read_mode(meta.get("read_mode")).read_noise_factor if meta.get("read_mode") else 1.0
        amps = inst.detector(1).amplifiers
        read_noise = [amps[sec.index].read_noise * factor for sec in sections]
        if signature is not None and signature.qc.get("read_noise", {}).get("status") == "measured":
            read_noise = [float(signature.read_noise_e[sec.index]) for sec in sections]
        xt_mask = None
        if isr.crosstalk is not None and isr.crosstalk.any():
            xt_mask = np.zeros(image.shape, maskbits.MASK_DTYPE)
            xt_mask[isr.crosstalk] = maskbits.CROSSTALK
        bpm = load("bpm")  # integer bit codes of the bad-pixel mask
        if dark is not None:
            dark *= np.float32(meta["exptime"])  # the dark charge (e-), in place: the rate is not needed any more
        lap("fringe_and_maps")
        stem = meta["filename"].split(".")[0]
        # short ids in the headers (UPADPROV, RAWPROV — a raw frame's identity in provenance is its SHA-256 —,
        # CAL_BIAS …); the database keeps the whole record
        provenance = {"product": task.provenance_id[:12],
                      **({"raw": str(meta["sha256"])[:12]} if meta.get("sha256") else {}),
                      **{k: r.meta.get("provenance_id", "")[:12] for k, r in sorted(masters.items())}}
        out_header = _output_header(header, task, self, provenance, fringe_scale)
        reduction_cfg = cfg.reduction_config()
        try:
            epoch = frame_epoch(meta, header)
            refcat = _reference_catalog(task, cfg, header, inst, meta, epoch)
            exptime = float(meta["exptime"])
            gain = float(np.mean(sig_kw["gains"])) if "gains" in sig_kw else float(np.mean([a.gain for a in amps]))
            from upad.instruments import get_filter_system

            filt = get_filter_system(inst.filter_system).lookup(meta.get("filter") or "")
            nominal = filt.zp + 2.5 * np.log10(gain) if filt is not None else None
            frame = reduce_frame(image, wcs_guess=header, refcat=refcat, filter_name=meta.get("filter") or "",
                                 exptime=exptime, read_noise=read_noise, amp_regions=[s.active for s in sections],
                                 saturated=isr.saturated, bpm=bpm, flat=response, dark_e=dark, mask=xt_mask,
                                 pixel_scale=inst.pixel_scale, nominal_zp_e=nominal, config=reduction_cfg,
                                 saturation_e=instrument_levels(inst, sections), epoch=epoch)
            del dark
            lap("reduce_frame")
        except ReductionError as exc:
            # the frame cannot be characterised (no stars, failed astrometry, no data): keep the instrumentally
            # corrected frame and record the failed QC with its reason; the rest of the night goes on
            name = f"{stem}_red.fits"
            staged = task.stage(name)
            _write_isr_only(staged, image, isr.saturated, bpm, response, read_noise, sections, out_header, cfg)
            return StepOutput(files=[OutputFile("reduced", str(staged), self.final_path(task, name))],
                              meta={"qc": "failed", "qc_reasons": [_reason(exc, "error")], "notes": notes,
                                    "fringe_scale": fringe_scale},
                              qc_status="fail")
        files = []
        # the PNGs first: the reduced FITS is written last and byte-swaps the image and weight in place
        # (consume=True: no second copy of 2 x 340 MB on a T80Cam frame)
        preview, qc_plot = task.stage(f"{stem}_preview.png"), task.stage(f"{stem}_qc.png")
        written = write_previews(frame, preview, qc_plot, refcat=refcat)
        for role, path in (("preview", preview), ("qc_plot", qc_plot)):
            if path in written or path.exists():
                files.append(OutputFile(role, str(path), self.final_path(task, path.name)))
        lap("previews")
        for role, name, write in (
                ("catalog", f"{stem}_cat.fits", lambda p: write_catalog(p, frame.catalog, header=frame.header,
                                                                        provenance=provenance)),
                ("psf", f"{stem}_psf.fits", lambda p: write_psf(p, frame.psf, provenance=provenance)),
                ("reduced", f"{stem}_red.fits",
                 lambda p: write_reduced(p, frame, provenance=provenance, header=out_header,
                                         mask_compression=cfg.mask_compression, consume=True))):
            if role == "psf" and getattr(frame, "psf", None) is None:
                continue
            if role == "catalog" and frame.catalog is None:
                continue
            staged = task.stage(name)
            write(staged)
            files.append(OutputFile(role, str(staged), self.final_path(task, name)))
        lap("write_fits")
        files.sort(key=lambda f: OUTPUT_ROLES.index(f.role))  # the reduced image first, as consumers expect
        qc = frame.qc
        meta_out = {"qc_reasons": list(qc.reasons), "qc_flags": int(qc.flag), "qc_values": _jsonable(qc.values),
                    "stats": _jsonable(frame.stats), "notes": notes,
                    # seconds: the adapter's parts (read_raw … previews) and reduce_frame's stages
                    "timings": {**lap.laps, **{f"reduce_frame.{k}": v for k, v in _jsonable(frame.timings).items()}},
                    "fringe_scale": fringe_scale, "overscan_adu": isr.overscan_level,
                    "masters": {k: r.meta.get("provenance_id", "")[:12] for k, r in masters.items()}}
        # the database's QC vocabulary: good → ok, bad (a threshold failed) → warn, failed (not measurable) → fail
        status = {"good": "ok", "bad": "warn", "failed": "fail"}.get(qc.status, "fail")
        meta_out["qc"] = qc.status
        return StepOutput(files=files, meta=meta_out, qc_status=status)


class _Stopwatch:
    """``lap(name)`` records the seconds since the previous lap (or the start) under ``name``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def _reason(exc: Exception, default: str) -> str:
    """``"<reason code>: <message>"`` of a failure, as recorded in the product's ``qc_reasons``."""
    if isinstance(exc, ReductionError):
        return f"{exc.reason}: {exc.message}"
    return f"{default}: {exc}"


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _reference_catalog(task: Task, cfg: ReduceConfig, header: fits.Header, inst: Any, meta: dict[str, Any],
                       epoch: float) -> Any:
    from pathlib import Path

    path = Path(cfg.reference_catalog)
    if not path.is_absolute():
        path = Path(task.root) / path
    cat = read_reference_catalog(path)
    # proper motions to the exact epoch of the frame (its MJD), not to its year
    cat = propagate_to_epoch(cat, epoch)
    ny, nx = inst.layout.active_shape
    radius = 0.75 * np.hypot(nx, ny) * inst.pixel_scale / 3600.0 + 0.1
    ra, dec = meta.get("ra"), meta.get("dec")
    if ra is None or dec is None:
        ra, dec = header.get("CRVAL1"), header.get("CRVAL2")
    return in_cone(cat, float(ra), float(dec), radius)


def frame_epoch(meta: dict[str, Any], header: Any) -> float:
    """Julian epoch (yr) of the middle of a frame's exposure: from its MJD (frame record, else ``MJD-OBS``), else
    from ``DATE-OBS`` (:func:`upad.io.refcat.observation_epoch`); plus half the exposure time. 2016.0 (the reference
    epoch: no motion) when none is known or the date cannot be read."""
    epoch = observation_epoch(meta, header)
    return 2016.0 if epoch is None else epoch


def _output_header(header: fits.Header, task: Task, step: Step, provenance: dict[str, str],
                   fringe_scale: float | None) -> fits.Header:
    out = fits.Header()
    for key in ("OBJECT", "DATE-OBS", "EXPTIME", "FILTER", "AIRMASS", "RA", "DEC", "TELESCOP", "INSTRUME",
                "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        if key in header:
            out[key] = header[key]
    out["BUNIT"] = "electron"
    out["UPADSTEP"] = (f"{step.name} {step.version}", "upad step and version")
    out["RAWFILE"] = (task.input("raw").meta["filename"], "raw frame")
    out.update(provenance_cards(provenance))
    if fringe_scale is not None:
        out["FRNGSCAL"] = (fringe_scale, "fitted fringe amplitude")
    return out


def _write_isr_only(path: Any, image: np.ndarray, saturated: np.ndarray, bpm: np.ndarray | None,
                    response: np.ndarray, read_noise: list[float], sections: Any, header: fits.Header,
                    cfg: ReduceConfig) -> None:
    """The instrumentally corrected frame with its variance-based weight and basic mask (frames that fail QC)."""
    read_var = np.zeros_like(image)
    for sec, rn in zip(sections, read_noise):
        read_var[sec.active] = rn ** 2
    good_response = response > 0
    safe = np.where(good_response, response, 1.0).astype(np.float32)
    finite = np.isfinite(image)
    variance = (np.maximum(np.where(finite, image, 0), 0) * safe + read_var) / safe ** 2
    mask = maskbits.new_mask(image.shape)
    mask[saturated] |= maskbits.SATURATED
    if bpm is not None:
        mask[bpm > 0] |= maskbits.BAD
    mask[~finite | ~good_response] |= maskbits.NODATA
    weight = np.where((mask & maskbits.ZERO_WEIGHT) == 0, 1.0 / np.maximum(variance, 1e-12), 0.0).astype(np.float32)
    write_isr_only(path, image, mask, weight, header, mask_compression=cfg.mask_compression)


__all__ = ["Reduce", "ReduceConfig", "unit_key"]
