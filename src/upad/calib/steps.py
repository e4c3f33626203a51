"""The master-calibration steps of the processing flow (the adapters around the pure algorithms).

=====================  ==============  =========================================================================
step                   order           makes, per instrumental configuration and night
=====================  ==============  =========================================================================
``master_bias``        20              master bias (ADU) from the night's bias series
``master_dark``        22              dark current (e-/s) and hot-pixel map from the dark series
``master_flat``        25              normalised master flat per filter and flat type (dome, sky) + QC plots
``bad_pixel_mask``     30              bad-pixel mask from the master dark and the night's master flats
``master_fringe``      35              fringe map per fringing filter from dithered science frames
``master_illumination`` 38             illumination correction per filter and flat type from science frames
=====================  ==============  =========================================================================

``plan`` (scheduler side) comes from :func:`upad.calib.planning.planned_masters`: a unit is ready once its series
is complete and the masters it needs exist (looked up with :func:`upad.calib.lookup.find_master`); otherwise it
waits with a reason. ``run`` (worker side) reads the raw frames and input masters, reduces every frame to an
intermediate file in a scratch directory, screens the frames (exclusions recorded with their reasons), combines them
block-wise (:func:`upad.calib.combine.combine_stack`), and writes the master FITS file (image, ``ERR``
uncertainty, ``NCOMB`` number of frames combined, ...) and its QC plots into the staging directory.

Every master is valid over its night (``good_after`` = local noon of the night's date, ``good_until`` = the next
noon) and records its inputs, exclusions, statistics and QC in the product's meta.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from upad import __version__
from upad.calib import bias as biasmod
from upad.calib import bpm as bpmmod
from upad.calib import dark as darkmod
from upad.calib import flat as flatmod
from upad.calib import fringe as fringemod
from upad.calib import illumination as illummod
from upad.calib import qc
from upad.calib.combine import combine_stack
from upad.calib.config import (
    BadPixelConfig,
    MasterBiasConfig,
    MasterDarkConfig,
    MasterFlatConfig,
    MasterFringeConfig,
    MasterIllumConfig,
    isr_options,
)
from upad.calib.planning import KIND_OF, instrument_site, night_end, night_start, planned_masters
from upad.calib.rows import RowReader
from upad.config import StepConfig
from upad.flow.step import (
    DataError,
    OutputFile,
    ResolvedInput,
    Step,
    StepOutput,
    Task,
    Unit,
    register_step,
)
from upad.instruments import Instrument, get_instrument
from upad.io.image import read_image
from upad.io.raw import read_raw
from upad.reduce.isr import amp_grid, apply_gain, raw_shape_problem, run_isr

__all__ = [
    "BadPixelMask",
    "MasterBias",
    "MasterDark",
    "MasterFlat",
    "MasterFringe",
    "MasterIllumination",
    "read_master",
    "read_raw",
]


# ------------------------------------------------------------------------------------------------------ helpers
def read_master(path: str, ext: str | int = 0) -> np.ndarray:
    """An image extension of a master file as a native-endian array."""
    return read_image(path, ext)


def _instrument(meta: dict[str, Any]) -> Instrument:
    try:
        return get_instrument(meta["instrument"])
    except KeyError as exc:
        raise DataError(f"unknown instrument {meta.get('instrument')!r}: {exc}") from exc


def _frames(task: Task, role: str = "raw") -> list[ResolvedInput]:
    return sorted(task.inputs_by_role(role), key=lambda r: (r.meta.get("date_obs") or "", r.id))


def _product_input(task: Task, role: str, *, required: bool) -> ResolvedInput | None:
    found = task.inputs_by_role(role)
    if not found:
        if required:
            raise DataError(f"no {role} master among the inputs")
        return None
    return found[0]


def _file_of(res: ResolvedInput, role: str = "master") -> str:
    roles = res.meta.get("file_roles") or []
    for r, p in zip(roles, res.paths):
        if r == role:
            return p
    return res.paths[0]


def _validity(task: Task) -> tuple[dt.datetime, dt.datetime]:
    """A nightly master is valid over its night at its instrument's site (:mod:`upad.nights`)."""
    night, site = task.context["night"], instrument_site(task.context.get("instrument"))
    return night_start(night, site), night_end(night, site)


@contextlib.contextmanager
def _scratch(task: Task) -> Iterator[Path]:
    """A scratch directory for intermediate files, removed afterwards."""
    d = Path(task.staging) / "scratch"
    d.mkdir(parents=True, exist_ok=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _save(scratch: Path, name: str, data: np.ndarray) -> Path:
    """Write an intermediate as an uncompressed ``.npy`` file (memory-mapped when combined)."""
    p = scratch / f"{name}.npy"
    np.save(p, np.ascontiguousarray(data, dtype=np.float32))
    return p


def _open(path: Path, mode: str = "r") -> np.ndarray:
    return np.load(path, mmap_mode=mode)


def _rows(paths: Iterable[Path]) -> list[RowReader]:
    """Row readers of intermediates for the block-wise combination (nothing stays mapped in memory)."""
    return [RowReader.from_npy(p) for p in paths]


def _header(task: Task, step: Step, *, bunit: str, n_inputs: int, n_used: int, extra: dict[str, Any] | None = None
            ) -> fits.Header:
    ctx = task.context
    ga, gu = _validity(task)
    h = fits.Header()
    h["UPADSTEP"] = (step.name, "upad step that made this file")
    h["UPADKIND"] = (KIND_OF[step.name], "kind of master calibration")
    h["UPADVER"] = (__version__, "upad version")
    h["PROVID"] = (task.provenance_id[:12], "short provenance id (full record in the db)")
    h["UNITKEY"] = (task.unit_key[:68], "unit of the step")
    for key, ck in (("INSTRUME", "instrument"), ("TELESCOP", "telescope"), ("DETECTOR", "detector"),
                    ("LAYOUT", "layout"), ("READMODE", "read_mode"), ("FILTER", "filter"),
                    ("FLATTYPE", "flat_type"), ("NIGHT", "night")):
        if ctx.get(ck) is not None:
            h[key] = str(ctx[ck])[:68]
    h["NINPUTS"] = (n_inputs, "input frames")
    h["NCOMBINE"] = (n_used, "frames combined (after exclusions)")
    h["GOODAFT"] = (ga.isoformat(timespec="seconds"), "validity start (UTC)")
    h["GOODUNT"] = (gu.isoformat(timespec="seconds"), "validity end (UTC, exclusive)")
    h["BUNIT"] = bunit
    h["DATE"] = (dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
                 "file creation (UTC)")
    for k, v in (extra or {}).items():
        h[k] = v
    return h


def _write_fits(path: Path, primary: np.ndarray, header: fits.Header,
                extensions: Sequence[tuple[str, np.ndarray, dict[str, Any] | None]] = ()) -> None:
    hdus: list[Any] = [fits.PrimaryHDU(primary, header=header)]
    for name, data, hdr in extensions:
        h = fits.Header()
        for k, v in (hdr or {}).items():
            h[k] = v
        hdus.append(fits.ImageHDU(data, header=h, name=name))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _frame_record(f: ResolvedInput) -> dict[str, Any]:
    return {"frame_id": f.id, "filename": f.meta.get("filename"), "date_obs": f.meta.get("date_obs"),
            "exptime": f.meta.get("exptime")}


def _check_frame(f: ResolvedInput, inst: Instrument, layout: str) -> tuple[np.ndarray | None, str | None]:
    """Read a raw input; ``(None, reason)`` when it cannot be used."""
    if f.meta.get("layout") != layout:
        return None, f"raw layout {f.meta.get('layout')!r} differs from the series' {layout!r}"
    try:
        _, raw = read_raw(f.paths[0])
    except DataError as exc:
        return None, f"unreadable: {exc}"
    why = raw_shape_problem(raw, inst, layout)
    return (None, why) if why else (raw, None)


def _read_noise_e(bias_in: ResolvedInput | None, inst: Instrument, read_mode: str | None) -> np.ndarray:
    """Read noise per amplifier (e-): measured in the master bias when available, else the instrument file's."""
    if bias_in is not None and bias_in.meta.get("read_noise_e"):
        return np.asarray(bias_in.meta["read_noise_e"], np.float64)
    try:
        factor = inst.read_mode(read_mode).read_noise_factor
    except KeyError:
        factor = 1.0
    return np.array([a.read_noise * factor for a in inst.detectors[0].amplifiers], np.float64)


def _zones(inst: Instrument) -> tuple[int, int, int]:
    return amp_grid(inst)


def _threads(cfg: Any) -> int | None:
    return int(cfg.threads) or None


def _plot(task: Task, step: Step, name: str, image: np.ndarray, *, title: str, unit: str = "",
          percent: bool = False, cells: int = 256) -> OutputFile:
    staged = task.stage(name)
    factor = max(1, int(np.ceil(max(image.shape) / cells)))
    qc.plot_map(staged, qc.bin_image(np.asarray(image, np.float32), factor), title=title, unit=unit,
                percent=percent)
    return OutputFile("qc_plot", str(staged), step.final_path(task, name))


def _bin_for_epochs(image: np.ndarray, cells: int = 64) -> np.ndarray:
    factor = max(1, int(np.ceil(max(image.shape) / cells)))
    return qc.bin_image(np.asarray(image, np.float32), factor, statistic="mean").astype(np.float32)


class _MasterStep(Step):
    """Shared parts of the master steps."""

    area = "calibration"
    memory_class = "medium"
    kind = ""

    def cfg(self, task: Task) -> Any:
        return self.config_class.from_mapping(task.config)

    def plan(self, session: Any, config: StepConfig) -> Iterable[Unit]:
        for pm in planned_masters(session, KIND_OF[self.name], config).values():
            yield pm.unit


# ------------------------------------------------------------------------------------------------------ bias
@register_step
class MasterBias(_MasterStep):
    """Master bias per instrument, read mode, raw layout and night."""

    name = "master_bias"
    product_kind = "master_bias"
    config_class = MasterBiasConfig
    version = "1.0"
    order = 20
    description = "overscan-corrected, sigma-clipped master bias (ADU) per night and read mode"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        sections = inst.amp_sections(layout)
        amps = biasmod.amp_slices(sections)
        gains = [a.gain for a in inst.detectors[0].amplifiers]
        opts = isr_options(cfg, to_electrons=False, linearize=False)
        # without an overscan (archived layout) the row profile of every frame is measured on its own data
        profile_from_data = sections[0].overscan_x is None
        profiles: dict[int, list[np.ndarray]] = {}
        records: list[dict[str, Any]] = []
        with _scratch(task) as scratch:
            kept, stats, paths = [], [], []
            for f in frames:
                rec = _frame_record(f)
                records.append(rec)
                raw, why = _check_frame(f, inst, layout)
                if why:
                    rec.update(status="excluded", reason=why)
                    continue
                res = run_isr(raw, inst, layout=layout, options=opts)
                st = biasmod.frame_stats(res.image, amps, saturated=res.saturated)
                rec.update(st.to_dict())
                if profile_from_data:
                    profiles[f.id] = biasmod.subtract_row_profiles(res.image, amps, order=cfg.overscan_order)
                paths.append(_save(scratch, f"bias-{f.id}", res.image))
                kept.append(rec)
                stats.append(st)
            reasons = biasmod.screen_series(stats, level_tol=cfg.level_tol, noise_ratio=cfg.noise_ratio,
                                            max_saturated=cfg.max_saturated, unit="ADU")
            used = []
            for rec, st, p, why in zip(kept, stats, paths, reasons):
                if why:
                    rec.update(status="excluded", reason=why)
                else:
                    rec["status"] = "used"
                    used.append((rec, st, p))
            _enough(used, records, cfg.min_frames, "bias")
            noise = np.array([st.noise for _, st, _ in used])  # (n, amps) ADU
            comb = combine_stack(_rows(p for _, _, p in used), method="mean", center="median", dev="model",
                                 read_var=noise ** 2, zones=_zones(inst), sigma_low=cfg.clip_low,
                                 sigma_high=cfg.clip_high, max_iters=cfg.clip_iters, memory_mb=cfg.memory_mb,
                                 threads=_threads(cfg))
        if profile_from_data:
            biasmod.add_row_profiles(comb.image, amps, [profiles[r["frame_id"]] for r, _, _ in used])
        rn_adu = np.median(noise, axis=0)
        stats_m = biasmod.master_stats(comb.image, amps, read_noise_adu=rn_adu, gains=gains, n_used=len(used))
        name = "master_bias.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="adu", n_inputs=len(frames), n_used=len(used),
                         extra={"OVERSCAN": ("none" if profile_from_data else cfg.overscan, "overscan method")})
        _write_fits(staged, comb.image, header, [("ERR", comb.error, {"BUNIT": "adu"}),
                                                 ("NCOMB", comb.n_used, None)])
        files = [OutputFile("master", str(staged), self.final_path(task, name)),
                 _plot(task, self, "master_bias.png", comb.image, title=f"master bias {task.unit_key}",
                       unit="ADU")]
        excluded = [r for r in records if r.get("status") == "excluded"]
        meta = {"kind": "bias", "unit": "adu", "n_inputs": len(frames), "n_used": len(used),
                "overscan_corrected": not profile_from_data,
                "row_profile": "from the data of each frame (no overscan)" if profile_from_data else "overscan",
                "inputs": records,
                "excluded": [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                             for r in excluded],
                "read_noise_adu": [round(float(v), 4) for v in rn_adu],
                "read_noise_e": [round(float(v) * g, 4) for v, g in zip(rn_adu, gains)],
                "stats": stats_m, "combine": comb.stats}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if excluded else "ok", good_after=ga,
                          good_until=gu)


def _enough(used: Sequence[Any], records: Sequence[dict[str, Any]], min_frames: int, what: str) -> None:
    if len(used) >= min_frames:
        return
    why = "; ".join(f"{r['filename']}: {r.get('reason')}" for r in records if r.get("status") == "excluded")
    raise DataError(f"only {len(used)} usable {what} frame(s) of {len(records)} (min_frames = {min_frames})"
                    + (f"; excluded: {why}" if why else ""))


# ------------------------------------------------------------------------------------------------------ dark
@register_step
class MasterDark(_MasterStep):
    """Dark current (e-/s) and hot pixels per instrument, read mode, raw layout and night."""

    name = "master_dark"
    product_kind = "master_dark"
    config_class = MasterDarkConfig
    version = "1.0"
    order = 22
    description = "dark current (e-/s) with its hot-pixel map"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        sections = inst.amp_sections(layout)
        amps = biasmod.amp_slices(sections)
        bias_in = _product_input(task, "bias", required=True)
        bias = read_master(_file_of(bias_in))
        bias_err = read_master(_file_of(bias_in), "ERR").astype(np.float32)
        apply_gain(bias_err, sections, [a.gain for a in inst.detectors[0].amplifiers])
        rn = _read_noise_e(bias_in, inst, task.context.get("read_mode"))
        opts = isr_options(cfg)
        records: list[dict[str, Any]] = []
        with _scratch(task) as scratch:
            kept, stats, paths, exptimes = [], [], [], []
            for f in frames:
                rec = _frame_record(f)
                records.append(rec)
                t = float(f.meta.get("exptime") or 0)
                if t <= 0:
                    rec.update(status="excluded", reason=f"exposure time {t} s: not a dark")
                    continue
                raw, why = _check_frame(f, inst, layout)
                if why:
                    rec.update(status="excluded", reason=why)
                    continue
                res = run_isr(raw, inst, layout=layout, options=opts, bias=bias)
                res.image /= np.float32(t)
                st = biasmod.frame_stats(res.image, amps, saturated=res.saturated)
                rec.update({"rate_median": [round(v, 6) for v in st.level],
                            "saturated_fraction": st.saturated_fraction})
                paths.append(_save(scratch, f"dark-{f.id}", res.image))
                kept.append(rec)
                stats.append(st)
                exptimes.append(t)
            reasons = biasmod.screen_series(stats, level_tol=cfg.level_tol, noise_ratio=cfg.noise_ratio,
                                            max_saturated=cfg.max_saturated, unit="e-/s")
            used = []
            for rec, p, t, why in zip(kept, paths, exptimes, reasons):
                if why:
                    rec.update(status="excluded", reason=why)
                else:
                    rec["status"] = "used"
                    used.append((rec, p, t))
            _enough(used, records, cfg.min_frames, "dark")
            ts = np.array([t for _, _, t in used])
            read_var, pois = darkmod.dark_noise_model(rn, ts)
            comb = combine_stack(_rows(p for _, p, _ in used), method="mean", center="median", dev="model",
                                 read_var=read_var, poisson=pois, zones=_zones(inst), sigma_low=cfg.clip_low,
                                 sigma_high=cfg.clip_high, max_iters=cfg.clip_iters, memory_mb=cfg.memory_mb,
                                 threads=_threads(cfg))
        err = darkmod.dark_error(comb.error, bias_err, float(ts.mean()))
        hot = darkmod.hot_pixels(comb.image, err, nsigma=cfg.hot_nsigma, min_excess=cfg.hot_min_excess)
        dstats = darkmod.dark_stats(comb.image, hot, err)
        name = "master_dark.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="electron/s", n_inputs=len(frames), n_used=len(used),
                         extra={"EXPTIME": (float(ts.sum()), "total exposure combined (s)")})
        _write_fits(staged, comb.image, header, [("ERR", err, {"BUNIT": "electron/s"}),
                                                 ("NCOMB", comb.n_used, None),
                                                 ("HOT", hot.astype(np.uint8),
                                                  {"COMMENT": f"1: hot pixel ({cfg.hot_nsigma} sigma)"})])
        files = [OutputFile("master", str(staged), self.final_path(task, name)),
                 _plot(task, self, "master_dark.png", comb.image, title=f"master dark {task.unit_key}",
                       unit="e-/s")]
        excluded = [r for r in records if r.get("status") == "excluded"]
        meta = {"kind": "dark", "unit": "electron/s", "n_inputs": len(frames), "n_used": len(used),
                "total_exptime": float(ts.sum()), "inputs": records,
                "excluded": [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                             for r in excluded],
                "read_noise_e": [round(float(v), 4) for v in rn], "stats": dstats, "combine": comb.stats}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if excluded else "ok", good_after=ga,
                          good_until=gu)


# ------------------------------------------------------------------------------------------------------ ISR for flats
def _reduce(task: Task, f: ResolvedInput, inst: Instrument, layout: str, cfg: Any, *, bias: np.ndarray,
            dark: np.ndarray | None, flat: np.ndarray | None = None) -> tuple[Any, str | None]:
    raw, why = _check_frame(f, inst, layout)
    if why:
        return None, why
    t = float(f.meta.get("exptime") or 0.0)
    res = run_isr(raw, inst, layout=layout, options=isr_options(cfg), bias=bias, dark=dark, exptime=t, flat=flat)
    return res, None


def _inputs_masters(task: Task, cfg: Any, *, need_flat: bool) -> dict[str, Any]:
    bias_in = _product_input(task, "bias", required=True)
    dark_in = _product_input(task, "dark", required=False) if getattr(cfg, "use_dark", True) else None
    flat_in = _product_input(task, "flat", required=need_flat) if need_flat else None
    out: dict[str, Any] = {"bias_in": bias_in, "dark_in": dark_in, "flat_in": flat_in,
                           "bias": read_master(_file_of(bias_in)),
                           "dark": read_master(_file_of(dark_in)) if dark_in else None,
                           "flat": read_master(_file_of(flat_in)) if flat_in else None}
    out["used_masters"] = {k: {"product": r.id, "provenance": r.meta.get("provenance_id", "")[:12],
                               "unit": r.meta.get("unit_key")}
                           for k, r in (("bias", bias_in), ("dark", dark_in), ("flat", flat_in)) if r is not None}
    return out


# ------------------------------------------------------------------------------------------------------ flat
@register_step
class MasterFlat(_MasterStep):
    """Master flat per instrument, read mode, raw layout, filter, flat type (dome, sky) and night."""

    name = "master_flat"
    product_kind = "master_flat"
    config_class = MasterFlatConfig
    version = "1.0"
    order = 25
    description = "normalised master flat per filter (dome / twilight) with flat-field stability QC"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        flat_type = task.context.get("flat_type", "dome")
        sections = inst.amp_sections(layout)
        amps = biasmod.amp_slices(sections)
        m = _inputs_masters(task, cfg, need_flat=False)
        rn = _read_noise_e(m["bias_in"], inst, task.context.get("read_mode"))
        mean_gain = float(np.mean([a.gain for a in inst.detectors[0].amplifiers]))
        records: list[dict[str, Any]] = []
        files: list[OutputFile] = []
        with _scratch(task) as scratch:
            cand = []  # (rec, path, level_e)
            for f in frames:
                rec = _frame_record(f)
                records.append(rec)
                res, why = _reduce(task, f, inst, layout, cfg, bias=m["bias"], dark=m["dark"])
                if why:
                    rec.update(status="excluded", reason=why)
                    continue
                img = res.image
                level = flatmod.flat_level(img, saturated=res.saturated)
                sat = float(res.saturated.mean())
                level_adu = level / mean_gain
                rec.update({"level_e": round(level, 2), "level_adu": round(level_adu, 2),
                            "saturated_fraction": sat})
                why = None
                if sat > cfg.max_saturated:
                    why = (f"saturated: {sat:.2%} of the pixels at the ADC maximum (limit {cfg.max_saturated:.2%})")
                elif not np.isfinite(level) or level_adu < cfg.min_level:
                    why = f"underexposed: level {level_adu:.0f} ADU < min_level {cfg.min_level:.0f} ADU"
                elif level_adu > cfg.max_level:
                    why = f"overexposed: level {level_adu:.0f} ADU > max_level {cfg.max_level:.0f} ADU"
                if why:
                    rec.update(status="excluded", reason=why)
                    continue
                img /= np.float32(level)
                img[res.saturated] = np.nan
                cand.append((rec, _save(scratch, f"flat-{f.id}", img), level))
                del res, img
            _enough(cand, records, cfg.min_frames, f"{flat_type} flat")
            zones = _zones(inst)

            def combine(items: Sequence[tuple[dict[str, Any], Path, float]], *, method: str = "mean") -> Any:
                levels = np.array([lv for _, _, lv in items])
                read_var, pois = flatmod.flat_noise_model(rn, levels)
                return combine_stack(_rows(p for _, p, _ in items), method=method, center="median", dev="model",
                                     read_var=read_var, poisson=pois, zones=zones, sigma_low=cfg.clip_low,
                                     sigma_high=cfg.clip_high, max_iters=cfg.clip_iters, memory_mb=cfg.memory_mb,
                                     threads=_threads(cfg))

            star_masks: dict[int, int] = {}
            if flat_type == "sky":
                # stars: found in each flat against a median of all, then masked (NaN) before the final combination
                ref = combine(cand, method="median").image
                for rec, p, _ in cand:
                    arr = _open(p, "r+")
                    mask = flatmod.sky_source_mask(np.asarray(arr), ref, nsigma=cfg.star_nsigma,
                                                   grow_px=cfg.star_grow)
                    arr[mask] = np.nan
                    arr.flush()
                    del arr
                    rec["masked_star_pixels"] = int(mask.sum())
                    star_masks[rec["frame_id"]] = int(mask.sum())
                del ref
            used = list(cand)
            comb = combine(used)
            med = flatmod.normalise(comb.image)
            comb.error /= np.float32(med)
            # flat-field stability: every flat against the master; out-of-tolerance flats are excluded
            qc_rows = self._qc(used, comb.image, cfg)
            bad = [(item, row) for item, row in zip(used, qc_rows) if row["reason"]]
            if bad:
                for (rec, _, _), row in bad:
                    rec.update(status="excluded", reason=row["reason"])
                used = [item for item, row in zip(used, qc_rows) if not row["reason"]]
                _enough(used, records, cfg.min_frames, f"{flat_type} flat (within QC tolerance)")
                comb = combine(used)
                med = flatmod.normalise(comb.image)
                comb.error /= np.float32(med)
                qc_rows = self._qc(cand, comb.image, cfg)
            for (rec, _, _), row in zip(cand, qc_rows):
                rec["qc"] = row["stats"]
                if rec.get("status") != "excluded":
                    rec["status"] = "used"
                if cfg.qc_plots:
                    stem = str(rec["filename"]).split(".")[0]
                    pname = f"qc/{stem}_residual.png"
                    staged_png = task.stage(pname)
                    status = "used" if rec["status"] == "used" else f"excluded: {rec.get('reason', '')[:60]}"
                    qc.plot_flat_residual(staged_png, row["map"], row["counts"], row["edges"],
                                          title=f"{rec['filename']} vs master {task.unit_key}",
                                          rms=row["stats"]["rms"], gradient=row["stats"]["gradient"], status=status)
                    files.append(OutputFile("qc_plot", str(staged_png), self.final_path(task, pname)))
        master = comb.image
        gain_ratio = flatmod.amp_means(master, amps)
        name = "master_flat.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="", n_inputs=len(frames), n_used=len(used),
                         extra={"NORMMED": (med, "median of the combination (normalised flats)")})
        binned = _bin_for_epochs(master)
        _write_fits(staged, master, header, [("ERR", comb.error, None), ("NCOMB", comb.n_used, None),
                                             ("BIN", binned, {"COMMENT": "binned master (epoch comparisons)"})])
        files.insert(0, OutputFile("master", str(staged), self.final_path(task, name)))
        files.append(_plot(task, self, "master_flat.png", master, title=f"master flat {task.unit_key}",
                           unit="relative response"))
        excluded = [r for r in records if r.get("status") == "excluded"]
        used_qc = [r["qc"] for r in records if r.get("status") == "used" and "qc" in r]
        summary = {"rms_median": float(np.median([q["rms"] for q in used_qc])) if used_qc else None,
                   "rms_max": float(np.max([q["rms"] for q in used_qc])) if used_qc else None,
                   "gradient_max": float(np.max([q["gradient"] for q in used_qc])) if used_qc else None,
                   "rms_limit": cfg.qc_rms_max, "gradient_limit": cfg.qc_gradient_max}
        meta = {"kind": "flat", "flat_type": flat_type, "unit": "", "n_inputs": len(frames), "n_used": len(used),
                "inputs": records, "masters": m["used_masters"],
                "excluded": [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                             for r in excluded],
                "amp_response": gain_ratio, "normalisation": med, "qc": summary,
                "stats": qc.robust_stats(master), "combine": comb.stats}
        if m["dark"] is None:
            meta["notes"] = ["no master dark was available: dark current not subtracted"]
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if excluded else "ok", good_after=ga,
                          good_until=gu)

    @staticmethod
    def _qc(items: Sequence[tuple[dict[str, Any], Path, float]], master: np.ndarray, cfg: Any) -> list[dict[str, Any]]:
        rows = []
        for rec, p, _ in items:
            res = flatmod.residual_qc(np.asarray(_open(p)), master, cells=cfg.qc_cells)
            why = None
            if not np.isfinite(res.rms) or res.rms > cfg.qc_rms_max:
                why = f"flat-field QC: rms residual {res.rms:.3%} > {cfg.qc_rms_max:.3%}"
            elif not np.isfinite(res.gradient) or res.gradient > cfg.qc_gradient_max:
                why = (f"flat-field QC: large-scale gradient {res.gradient:.3%} peak to peak > "
                       f"{cfg.qc_gradient_max:.3%}")
            rows.append({"reason": why, "stats": res.to_dict(), "map": res.residual_map, "counts": res.hist_counts,
                         "edges": res.hist_edges})
        return rows


# ------------------------------------------------------------------------------------------------------ bpm
@register_step
class BadPixelMask(_MasterStep):
    """Bad-pixel mask per instrument, read mode, raw layout and night, from the master dark and master flats."""

    name = "bad_pixel_mask"
    product_kind = "bad_pixel_mask"
    config_class = BadPixelConfig
    version = "1.0"
    order = 30
    memory_class = "small"
    description = "hot, dead and low-response pixels and bad columns (uint8 bits)"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        dark_in = _product_input(task, "dark", required=False)
        flat_ins = task.inputs_by_role("flat")
        if dark_in is None and not flat_ins:
            raise DataError("a bad-pixel mask needs a master dark or master flats; none among the inputs")
        hot = dead = low = None
        shape = None
        notes = []
        if dark_in is not None:
            rate = read_master(_file_of(dark_in))
            err = read_master(_file_of(dark_in), "ERR")
            hot = darkmod.hot_pixels(rate, err, nsigma=cfg.hot_nsigma, min_excess=cfg.hot_min_excess)
            shape = rate.shape
            del rate, err
        else:
            notes.append("no master dark: hot pixels not detected")
        if flat_ins:
            flats = [read_master(_file_of(fi)) for fi in flat_ins]
            dead, low = bpmmod.flat_defects(flats, box=cfg.response_box, dead_below=cfg.dead_below,
                                            low_below=cfg.low_below)
            shape = flats[0].shape
            del flats
        else:
            notes.append("no master flat: dead and low-response pixels not detected")
        bpm = bpmmod.combine_mask(hot=hot, dead=dead, low=low, min_run=cfg.column_min_run,
                                  max_gap=cfg.column_max_gap, shape=shape)
        st = bpmmod.bpm_stats(bpm)
        name = "bad_pixel_mask.fits"
        staged = task.stage(name)
        extra = {f"BIT{bit}": name_.upper()[:68] for name_, bit in bpmmod.BITS.items()}
        header = _header(task, self, bunit="", n_inputs=len(task.inputs), n_used=len(task.inputs), extra=extra)
        _write_fits(staged, bpm, header)
        files = [OutputFile("master", str(staged), self.final_path(task, name)),
                 _plot(task, self, "bad_pixel_mask.png", (bpm > 0).astype(np.float32),
                       title=f"bad pixels {task.unit_key} ({st['total']})", unit="fraction flagged")]
        meta = {"kind": "bpm", "bits": bpmmod.BITS, "stats": st, "notes": notes,
                "inputs": {"dark": dark_in.id if dark_in else None, "flats": [fi.id for fi in flat_ins]}}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if notes else "ok", good_after=ga, good_until=gu)


# ------------------------------------------------------------------------------------------------------ science-based
def _science_frames(task: Task, inst: Instrument, layout: str, cfg: Any, m: dict[str, Any]) -> Iterator[
        tuple[dict[str, Any], Any]]:
    """Reduce (bias, dark, flat) every science input; yield ``(record, isr result or None)``."""
    for f in _frames(task):
        rec = _frame_record(f)
        res, why = _reduce(task, f, inst, layout, cfg, bias=m["bias"], dark=m["dark"], flat=m["flat"])
        if why:
            rec.update(status="excluded", reason=why)
        yield rec, res


@register_step
class MasterFringe(_MasterStep):
    """Fringe map per instrument, read mode, raw layout, fringing filter and night."""

    name = "master_fringe"
    product_kind = "master_fringe"
    config_class = MasterFringeConfig
    version = "1.0"
    order = 35
    description = "fringe map (fraction of the sky) from dithered science frames"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        m = _inputs_masters(task, cfg, need_flat=True)
        rn = _read_noise_e(m["bias_in"], inst, task.context.get("read_mode"))
        records: list[dict[str, Any]] = []
        with _scratch(task) as scratch:
            used = []
            for rec, res in _science_frames(task, inst, layout, cfg, m):
                records.append(rec)
                if res is None:
                    continue
                img = res.image
                bkg, _ = fringemod.sky_background(img, res.saturated, box=cfg.background_box)
                mask = fringemod.source_mask(img, bkg, nsigma=cfg.source_nsigma, grow_px=cfg.source_grow,
                                             saturated=res.saturated)
                bkg, _ = fringemod.sky_background(img, mask, box=cfg.background_box)
                sky = float(np.nanmedian(bkg[::4, ::4]))
                if not sky > 0:
                    rec.update(status="excluded", reason=f"no sky background (median {sky:.1f} e-)")
                    continue
                norm = fringemod.normalised_frame(img, bkg, mask)
                rec.update(status="used", sky_e=round(sky, 2), masked_fraction=round(float(mask.mean()), 4))
                used.append((rec, _save(scratch, f"fringe-{rec['frame_id']}", norm), sky))
            _enough(used, records, cfg.min_frames, "science")
            skies = np.array([s for _, _, s in used])
            rv = (skies + float(np.median(rn)) ** 2) / skies ** 2
            comb = combine_stack(_rows(p for _, p, _ in used), method="mean", center="median", dev="model",
                                 read_var=rv, sigma_low=cfg.clip_low, sigma_high=cfg.clip_high,
                                 max_iters=cfg.clip_iters, memory_mb=cfg.memory_mb, threads=_threads(cfg))
            fringe = fringemod.smooth_nan(comb.image, cfg.smooth_px)
            fringe[~np.isfinite(fringe)] = 0.0
            fringe -= np.float32(np.median(fringe[::2, ::2]))
            for rec, p, _ in used:
                rec["fitted_scale"] = round(fringemod.fit_fringe_scale(np.asarray(_open(p)), fringe), 4)
        err = comb.error
        if cfg.smooth_px > 0:
            err = err / np.float32(2 * np.sqrt(np.pi) * cfg.smooth_px)
        amp = qc.robust_stats(fringe)
        name = "master_fringe.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="", n_inputs=len(frames), n_used=len(used),
                         extra={"FRNGRMS": (round(amp["std"], 6), "rms of the fringe map (fraction of sky)")})
        _write_fits(staged, fringe, header, [("ERR", err, {"COMMENT": "approximate after smoothing"}),
                                             ("NCOMB", comb.n_used, None)])
        files = [OutputFile("master", str(staged), self.final_path(task, name)),
                 _plot(task, self, "master_fringe.png", fringe, title=f"fringe map {task.unit_key}",
                       unit="% of sky", percent=True, cells=512)]
        excluded = [r for r in records if r.get("status") == "excluded"]
        meta = {"kind": "fringe", "unit": "fraction of sky", "n_inputs": len(frames), "n_used": len(used),
                "inputs": records, "masters": m["used_masters"],
                "excluded": [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                             for r in excluded],
                "rms": round(amp["std"], 6), "robust_rms": round(amp["robust_std"], 6), "combine": comb.stats}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if excluded else "ok", good_after=ga,
                          good_until=gu)


@register_step
class MasterIllumination(_MasterStep):
    """Illumination correction per instrument, read mode, raw layout, filter, flat type and night."""

    name = "master_illumination"
    product_kind = "master_illumination"
    config_class = MasterIllumConfig
    version = "1.0"
    order = 38
    description = "illumination correction (smooth sky response after flat-fielding) from science frames"

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        m = _inputs_masters(task, cfg, need_flat=True)
        shape = inst.layout.active_shape
        cell = illummod.cell_size(shape, cfg.cells)
        records: list[dict[str, Any]] = []
        grids = []
        for rec, res in _science_frames(task, inst, layout, cfg, m):
            records.append(rec)
            if res is None:
                continue
            img = res.image
            bkg, _ = fringemod.sky_background(img, res.saturated, box=cfg.background_box)
            mask = fringemod.source_mask(img, bkg, nsigma=cfg.source_nsigma, grow_px=cfg.source_grow,
                                         saturated=res.saturated)
            bkg, _ = fringemod.sky_background(img, mask, box=cfg.background_box)
            try:
                grid = illummod.background_grid(bkg, cell=cell)
            except ValueError as exc:
                rec.update(status="excluded", reason=str(exc))
                continue
            rec.update(status="used", sky_e=round(float(np.nanmedian(bkg[::4, ::4])), 2),
                       masked_fraction=round(float(mask.mean()), 4))
            grids.append(grid)
        used = [r for r in records if r.get("status") == "used"]
        _enough(used, records, cfg.min_frames, "science")
        combined = illummod.combine_grids(grids)
        coef, info = illummod.fit_surface(combined, shape=shape, cell=cell, order=cfg.order)
        icor = illummod.evaluate_surface(coef, shape, cfg.order)
        # per-frame agreement with the fit (binned, normalised), for QC
        model_grid = qc.bin_image(icor, cell)
        for rec, g in zip(used, grids):
            ratio = g / model_grid
            rec["rms_vs_fit"] = round(float(np.nanstd(ratio / np.nanmedian(ratio))), 6)
        err = np.full(shape, np.float32(info["rms"] / np.sqrt(max(len(used), 1))), np.float32)
        p2p = float(icor.max() - icor.min())
        name = "master_illumination.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="", n_inputs=len(frames), n_used=len(used),
                         extra={"ICORORD": (cfg.order, "Legendre total degree"),
                                "ICORP2P": (round(p2p, 6), "peak to peak of the map"),
                                "COMMENT": "flat-fielded science / this map = illumination-corrected"})
        binned = (combined / np.nanmean(combined)).astype(np.float32)
        _write_fits(staged, icor, header, [("ERR", err, {"COMMENT": "fit rms / sqrt(frames), per cell"}),
                                           ("BIN", _bin_for_epochs(icor), {"COMMENT": "binned map"}),
                                           ("DATA", binned, {"COMMENT": "combined normalised background cells"})])
        files = [OutputFile("master", str(staged), self.final_path(task, name)),
                 _plot(task, self, "master_illumination.png", icor, title=f"illumination {task.unit_key}",
                       unit="relative sky (%)", percent=True)]
        excluded = [r for r in records if r.get("status") == "excluded"]
        meta = {"kind": "illumination", "flat_type": task.context.get("flat_type"), "unit": "",
                "n_inputs": len(frames), "n_used": len(used), "inputs": records, "masters": m["used_masters"],
                "excluded": [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                             for r in excluded],
                "order": cfg.order, "cell_px": cell, "fit": info, "peak_to_peak": round(p2p, 6),
                "coefficients": [float(c) for c in coef]}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status="warn" if excluded else "ok", good_after=ga,
                          good_until=gu)
