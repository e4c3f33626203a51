"""The master-calibration steps of the processing flow (the adapters around the pure algorithms).

========================  ===========================  ======================================================
step                      reads (declared)             makes, per instrumental configuration and night
========================  ===========================  ======================================================
``master_bias``           raw bias frames              master bias (ADU)
``master_dark``           raw darks, bias              dark current (e-/s) and hot-pixel map
``master_flat``           raw flats, bias, dark        normalised master flat per filter and flat type + QC plots
``bad_pixel_mask``        dark, the night's flats      bad-pixel mask
``master_fringe``         science frames, bias, dark,  fringe map per fringing filter
                          flat
``master_illumination``   science frames, bias, dark,  illumination correction per filter and flat type
                          flat
========================  ===========================  ======================================================

The order of the steps follows from what they read (``inputs``); nothing else orders them.

``plan`` (scheduler side) comes from :func:`upad.calib.planning.planned_masters`: a unit is ready once its series
is complete and the masters it needs exist (looked up with :func:`upad.calib.lookup.find_master`); otherwise it
waits with a reason.

``run`` (worker side) is the same for every master (:class:`MasterStep`, in the spirit of LCO BANZAI's calibration
makers): the series is set up (:meth:`MasterStep.series`: configuration, frames, instrument, raw layout, amplifier
sections and the input masters), then

1. **screen** the inputs (:meth:`~MasterStep.screen`): every frame is read, checked and reduced by the ISR
   (:mod:`upad.isr`) with the master's ISR configuration, measured (:meth:`~MasterStep.measure`, which may exclude
   it) and saved as an intermediate in a scratch directory; the series as a whole may exclude more frames
   (:meth:`~MasterStep.screen_series`); every exclusion is recorded with its reason, and too few usable frames stop
   the step;
2. **combine** them (:meth:`~MasterStep.combine`, block-wise with :func:`upad.calib.combine.combine_stack`);
3. **QC** the master (:meth:`~MasterStep.qc`: statistics, hot pixels, …);
4. **write** the master FITS file (:func:`upad.io.products.write_master`: image, ``ERR`` uncertainty, ``NCOMB``
   number of frames combined, … with the kind's header cards) and its QC plots into the staging directory;
5. **record** the product's meta (inputs, exclusions, statistics, QC), QC status and validity.

Every master is valid over its night (``good_after`` = local noon of the night's date, ``good_until`` = the next
noon).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from upad.calib import bias as biasmod
from upad.calib import bpm as bpmmod
from upad.calib import dark as darkmod
from upad.calib import flat as flatmod
from upad.calib import fringe as fringemod
from upad.calib import illumination as illummod
from upad.calib import qc
from upad.calib.combine import CombineResult, combine_stack
from upad.calib.config import (
    BadPixelConfig,
    MasterBiasConfig,
    MasterDarkConfig,
    MasterFlatConfig,
    MasterFringeConfig,
    MasterIllumConfig,
)
from upad.calib.planning import KIND_OF, instrument_site, night_end, night_start, planned_masters
from upad.calib.rows import RowReader
from upad.config import StepConfig
from upad.flow.queries import PlanContext
from upad.flow.step import (
    FRAME,
    DataError,
    Input,
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
from upad.instruments import AmpSection, Instrument, get_instrument
from upad.io.products import master_header, read_master, write_master
from upad.io.raw import read_raw
from upad.isr import IsrOptions, IsrResult, amp_grid, apply_gain, fit_fringe_scale, raw_shape_problem, run_isr

__all__ = [
    "BadPixelMask",
    "Master",
    "MasterBias",
    "MasterDark",
    "MasterFlat",
    "MasterFringe",
    "MasterIllumination",
    "MasterStep",
    "Series",
    "read_master",
    "read_raw",
]


# ------------------------------------------------------------------------------------------------------ helpers
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
    """The master's primary header (:func:`upad.io.products.master_header`) for this task."""
    ga, gu = _validity(task)
    return master_header(step=step.name, kind=KIND_OF[step.name], provenance_id=task.provenance_id,
                         unit_key=task.unit_key, context=task.context, n_inputs=n_inputs, n_used=n_used,
                         good_after=ga, good_until=gu, bunit=bunit, extra=extra)


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


def _signature_kwargs(task: Task) -> dict[str, Any]:
    """The measured instrument signature of the task's ``signature`` input as ``run_isr`` keywords (gains,
    linearity, crosstalk, saturation levels); empty without one (the instrument file's first guesses)."""
    found = task.inputs_by_role("signature")
    if not found:
        return {}
    from upad.io.products import read_signature

    return read_signature(found[0]).isr_kwargs()


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


def _enough(used: Sequence[Any], records: Sequence[dict[str, Any]], min_frames: int, what: str) -> None:
    if len(used) >= min_frames:
        return
    why = "; ".join(f"{r['filename']}: {r.get('reason')}" for r in records if r.get("status") == "excluded")
    raise DataError(f"only {len(used)} usable {what} frame(s) of {len(records)} (min_frames = {min_frames})"
                    + (f"; excluded: {why}" if why else ""))


def _exclude(rec: dict[str, Any], why: str) -> None:
    rec.update(status="excluded", reason=why)


def _inputs_masters(task: Task, cfg: Any, *, need_flat: bool) -> dict[str, Any]:
    bias_in = _product_input(task, "bias", required=True)
    dark_in = _product_input(task, "dark", required=False) if getattr(cfg, "use_dark", True) else None
    flat_in = _product_input(task, "flat", required=need_flat) if need_flat else None
    out: dict[str, Any] = {"bias_in": bias_in, "dark_in": dark_in, "flat_in": flat_in,
                           "bias": read_master(bias_in),
                           "dark": read_master(dark_in) if dark_in else None,
                           "flat": read_master(flat_in) if flat_in else None}
    out["used_masters"] = {k: {"product": r.id, "provenance": r.meta.get("provenance_id", "")[:12],
                               "unit": r.meta.get("unit_key")}
                           for k, r in (("bias", bias_in), ("dark", dark_in), ("flat", flat_in)) if r is not None}
    return out


# ------------------------------------------------------------------------------------------------------ template
@dataclass
class Series:
    """What a master step works on: set up once (:meth:`MasterStep.series`), then read by every hook.

    Attributes
    ----------
    task, cfg
        The task and its typed configuration.
    frames : list of ResolvedInput
        The input frames (role ``raw``) by observation time; ``n_inputs`` of the header and meta.
    inst, layout, sections, amps
        The camera, the raw layout, its amplifier sections and their slices in the assembled image.
    masters : dict
        The input masters (arrays and their inputs: ``bias``, ``bias_in`` …), set by :meth:`MasterStep.inputs`.
    used_masters : dict or None
        The input masters as recorded in the meta (``masters``), when the step records them.
    records : list of dict
        One record per input frame (``status`` used / excluded, ``reason``, measurements), the meta's ``inputs``.
    files : list of OutputFile
        Files made on the way (per-frame QC plots), written after the master and before its plots.
    scratch : Path
        Directory of the intermediates (removed after the combination).
    work : dict
        What the step's hooks keep for the series (e.g. the bias row profiles).
    """

    task: Task
    cfg: Any
    frames: list[ResolvedInput]
    inst: Instrument | None = None
    layout: str | None = None
    sections: list[AmpSection] = field(default_factory=list)
    amps: list[Any] = field(default_factory=list)
    masters: dict[str, Any] = field(default_factory=dict)
    used_masters: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    files: list[OutputFile] = field(default_factory=list)
    scratch: Path | None = None
    n_inputs: int = 0
    work: dict[str, Any] = field(default_factory=dict)


@dataclass
class Master:
    """A combined master on its way to the archive.

    Attributes
    ----------
    image : ndarray
        The primary image.
    n_used : int
        Frames combined (``NCOMBINE``, meta ``n_used``).
    comb : CombineResult, optional
        The combination (``ERR``, ``NCOMB``, its statistics).
    extensions : list of (EXTNAME, data, cards)
        The FITS extensions after the primary image.
    cards : dict
        The kind's header cards.
    meta : dict
        The kind's meta entries (after the common ones).
    plots : list of (file name, image, keyword arguments of the map plot)
    work : dict
        What the hooks pass on to each other (not written).
    """

    image: np.ndarray
    n_used: int
    comb: CombineResult | None = None
    extensions: list[tuple[str, np.ndarray, dict[str, Any] | None]] = field(default_factory=list)
    cards: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    plots: list[tuple[str, np.ndarray, dict[str, Any]]] = field(default_factory=list)
    work: dict[str, Any] = field(default_factory=dict)


class MasterStep(Step):
    """A master calibration: :meth:`run` is the fixed sequence *screen the inputs → combine → QC → write → record*
    (module documentation); a master implements the hooks.

    Hooks: :meth:`read_inputs` (read the input masters), :meth:`precheck` (refuse a frame before reading it),
    :meth:`isr` (how a frame is reduced), :meth:`measure` (one reduced frame → an item to combine, or an exclusion),
    :meth:`screen_series` (exclusions that need the whole series), :meth:`combine` (the used items → a
    :class:`Master`), :meth:`qc` (statistics of the master); class attributes ``bunit`` (``BUNIT``), ``unit``
    (meta ``unit``), ``what`` (the frames, in messages) and ``record_masters`` (whether the meta records the
    input masters).
    """

    area = "calibration"
    memory_class = "medium"
    bunit = ""
    unit = ""
    what = "input"
    record_masters = False

    def cfg(self, task: Task) -> Any:
        """The task's configuration as this step's typed configuration."""
        if isinstance(task.config, StepConfig):
            return task.config
        return self.config_class.from_mapping(task.config)

    outputs = (Output("master", doc="the master FITS file"),
               Output("qc_plot", doc="QC plots (PNG)", optional=True))

    def plan(self, ctx: PlanContext, config: StepConfig) -> Iterable[Unit]:
        for pm in planned_masters(ctx.session, KIND_OF[self.name], config).values():
            yield pm.unit

    # -------------------------------------------------------------------------------------------- the sequence
    def run(self, task: Task) -> StepOutput:
        s = self.series(task)
        with _scratch(task) as s.scratch:
            used = self.screen(s)
            master = self.combine(s, used)
        self.qc(s, master)
        files = self.write(s, master)
        return self.record(s, master, files)

    def series(self, task: Task) -> Series:
        """The series setup: configuration, frames, instrument, layout, sections, input masters."""
        cfg = self.cfg(task)
        frames = _frames(task)
        inst = _instrument(frames[0].meta)
        layout = task.context["layout"]
        sections = inst.amp_sections(layout)
        s = Series(task=task, cfg=cfg, frames=frames, inst=inst, layout=layout, sections=sections,
                   amps=biasmod.amp_slices(sections), n_inputs=len(frames))
        self.read_inputs(s)
        return s

    def reduce_frame(self, s: Series, f: ResolvedInput, rec: dict[str, Any]) -> IsrResult | None:
        """One input frame read, checked and reduced by the ISR; ``None`` (the reason in ``rec``) when it cannot
        be used."""
        why = self.precheck(s, f)
        if why:
            _exclude(rec, why)
            return None
        raw, why = _check_frame(f, s.inst, s.layout)
        if why:
            _exclude(rec, why)
            return None
        options, maps = self.isr(s, f)
        return run_isr(raw, s.inst, layout=s.layout, options=options, **maps)

    def screen(self, s: Series) -> list[Any]:
        """Screen the inputs: every frame recorded, reduced and measured (or excluded with its reason), then the
        series screened; the items to combine. Too few of them is a DataError."""
        items = []
        for f in s.frames:
            rec = _frame_record(f)
            s.records.append(rec)
            res = self.reduce_frame(s, f, rec)
            if res is None:
                continue
            item = self.measure(s, f, rec, res)
            del res  # one reduced frame in memory at a time
            if item is not None:
                items.append(item)
        used = self.screen_series(s, items)
        _enough(used, s.records, s.cfg.min_frames, self.what_frames(s))
        return used

    def write(self, s: Series, m: Master) -> list[OutputFile]:
        """The master FITS file (first), the files made on the way, the master's plots."""
        task = s.task
        name = f"{self.name}.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit=self.bunit, n_inputs=s.n_inputs, n_used=m.n_used, extra=m.cards)
        write_master(staged, m.image, header, m.extensions)
        files = [OutputFile("master", str(staged), self.final_path(task, name)), *s.files]
        for png, image, kw in m.plots:
            files.append(_plot(task, self, png, image, **kw))
        return files

    def record(self, s: Series, m: Master, files: list[OutputFile]) -> StepOutput:
        meta = self.meta(s, m)
        ga, gu = _validity(s.task)
        return StepOutput(files=files, meta=meta, qc_status=self.qc_status(s, m), good_after=ga, good_until=gu)

    # -------------------------------------------------------------------------------------------- the hooks
    def read_inputs(self, s: Series) -> None:
        """Read the input masters into ``s.masters`` (none by default)."""

    def precheck(self, s: Series, f: ResolvedInput) -> str | None:
        """Why a frame is refused before it is read (``None``: read it)."""
        return None

    def isr(self, s: Series, f: ResolvedInput) -> tuple[IsrOptions, dict[str, Any]]:
        """The ISR options and calibration maps (``run_isr`` keywords) of a frame: bias, dark and flat of the
        series, with the frame's exposure time."""
        t = float(f.meta.get("exptime") or 0.0)
        m = s.masters
        if "signature" not in s.work:
            s.work["signature"] = _signature_kwargs(s.task)
        return s.cfg.isr.options(), {"bias": m["bias"], "dark": m["dark"], "exptime": t, "flat": m.get("flat"),
                                     **s.work["signature"]}

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        """One reduced frame → the item to combine, or ``None`` (then ``rec`` says why it is excluded)."""
        raise NotImplementedError

    def screen_series(self, s: Series, items: list[Any]) -> list[Any]:
        """The items kept after the exclusions that need the whole series (all of them by default)."""
        return items

    def what_frames(self, s: Series) -> str:
        return self.what

    def combine(self, s: Series, used: list[Any]) -> Master:
        raise NotImplementedError

    def qc(self, s: Series, m: Master) -> None:
        """Statistics and QC of the master (into ``m.meta``, ``m.cards``); nothing by default."""

    def excluded(self, s: Series) -> list[dict[str, Any]]:
        return [{"frame_id": r["frame_id"], "filename": r["filename"], "reason": r["reason"]}
                for r in s.records if r.get("status") == "excluded"]

    def meta(self, s: Series, m: Master) -> dict[str, Any]:
        """The product's meta: kind, unit, inputs and exclusions, then the kind's own entries."""
        meta: dict[str, Any] = {"kind": KIND_OF[self.name], "unit": self.unit, "n_inputs": s.n_inputs,
                                "n_used": m.n_used, "inputs": s.records}
        if self.record_masters:
            meta["masters"] = s.used_masters
        meta["excluded"] = self.excluded(s)
        meta.update(m.meta)
        return meta

    def qc_status(self, s: Series, m: Master) -> str:
        return "warn" if any(r.get("status") == "excluded" for r in s.records) else "ok"

    # -------------------------------------------------------------------------------------------- shared parts
    def screen_stats(self, s: Series, items: list[Any], stats: list[Any], *, unit: str) -> list[Any]:
        """Bias and dark series: frames whose level, noise or saturation departs from the series' are
        excluded (:func:`upad.calib.bias.screen_series`); the others are used."""
        cfg = s.cfg
        reasons = biasmod.screen_series(stats, level_tol=cfg.level_tol, noise_ratio=cfg.noise_ratio,
                                        max_saturated=cfg.max_saturated, unit=unit)
        used = []
        for item, why in zip(items, reasons):
            if why:
                _exclude(item[0], why)
            else:
                item[0]["status"] = "used"
                used.append(item)
        return used

    def stack(self, s: Series, paths: Iterable[Path], **model: Any) -> CombineResult:
        """Combine intermediates with the configuration's rejection (``model``: the noise model and the
        ``combine_stack`` options of the kind)."""
        cfg = s.cfg
        return combine_stack(_rows(paths), method=model.pop("method", "mean"), center="median", dev="model",
                             sigma_low=cfg.clip_low, sigma_high=cfg.clip_high, max_iters=cfg.clip_iters,
                             memory_mb=cfg.memory_mb, threads=_threads(cfg), **model)


# ------------------------------------------------------------------------------------------------------ bias
@register_step
class MasterBias(MasterStep):
    """Master bias per instrument, read mode, raw layout and night."""

    name = "master_bias"
    product_kind = "master_bias"
    config_class = MasterBiasConfig
    version = "1.0"
    description = "overscan-corrected, sigma-clipped master bias (ADU) per night and read mode"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None, doc="the night's bias frames"),)
    bunit = unit = "adu"
    what = "bias"

    def read_inputs(self, s: Series) -> None:
        # without an overscan (archived layout) the row profile of every frame is measured on its own data
        s.work.update(profile_from_data=s.sections[0].overscan_x is None, profiles={})

    def isr(self, s: Series, f: ResolvedInput) -> tuple[IsrOptions, dict[str, Any]]:
        return s.cfg.isr.options(to_electrons=False, linearize=False), {}

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        st = biasmod.frame_stats(res.image, s.amps, saturated=res.saturated)
        rec.update(st.to_dict())
        if s.work["profile_from_data"]:
            s.work["profiles"][f.id] = biasmod.subtract_row_profiles(res.image, s.amps,
                                                                     order=s.cfg.isr.overscan_order)
        return rec, st, _save(s.scratch, f"bias-{f.id}", res.image)

    def screen_series(self, s: Series, items: list[Any]) -> list[Any]:
        return self.screen_stats(s, items, [st for _, st, _ in items], unit="ADU")

    def combine(self, s: Series, used: list[Any]) -> Master:
        noise = np.array([st.noise for _, st, _ in used])  # (n, amps) ADU
        comb = self.stack(s, (p for _, _, p in used), read_var=noise ** 2, zones=_zones(s.inst))
        if s.work["profile_from_data"]:
            profiles = s.work["profiles"]
            biasmod.add_row_profiles(comb.image, s.amps, [profiles[r["frame_id"]] for r, _, _ in used])
        m = Master(comb.image, len(used), comb,
                   extensions=[("ERR", comb.error, {"BUNIT": "adu"}), ("NCOMB", comb.n_used, None)])
        m.work["read_noise_adu"] = np.median(noise, axis=0)
        return m

    def qc(self, s: Series, m: Master) -> None:
        from_data = s.work["profile_from_data"]
        gains = [a.gain for a in s.inst.detectors[0].amplifiers]
        rn_adu = m.work["read_noise_adu"]
        m.cards["OVERSCAN"] = ("none" if from_data else s.cfg.isr.overscan, "overscan method")
        m.plots.append(("master_bias.png", m.image, {"title": f"master bias {s.task.unit_key}", "unit": "ADU"}))
        m.meta.update({
            "overscan_corrected": not from_data,
            "row_profile": "from the data of each frame (no overscan)" if from_data else "overscan",
            "read_noise_adu": [round(float(v), 4) for v in rn_adu],
            "read_noise_e": [round(float(v) * g, 4) for v, g in zip(rn_adu, gains)],
            "stats": biasmod.master_stats(m.image, s.amps, read_noise_adu=rn_adu, gains=gains, n_used=m.n_used),
            "combine": m.comb.stats})


# ------------------------------------------------------------------------------------------------------ dark
@register_step
class MasterDark(MasterStep):
    """Dark current (e-/s) and hot pixels per instrument, read mode, raw layout and night."""

    name = "master_dark"
    product_kind = "master_dark"
    config_class = MasterDarkConfig
    version = "1.0"
    description = "dark current (e-/s) with its hot-pixel map"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None, doc="the night's dark frames"),
              PrerequisiteInput("bias", "master_bias", doc="master bias valid at the series"),
              PrerequisiteInput("signature", "instrument_signature", minimum=0,
                                doc="measured instrument signature, when one applies"))
    bunit = unit = "electron/s"
    what = "dark"

    def read_inputs(self, s: Series) -> None:
        bias_in = _product_input(s.task, "bias", required=True)
        bias_err = read_master(bias_in, "ERR").astype(np.float32)
        apply_gain(bias_err, s.sections, [a.gain for a in s.inst.detectors[0].amplifiers])
        s.masters.update(bias=read_master(bias_in), bias_err=bias_err,
                         read_noise_e=_read_noise_e(bias_in, s.inst, s.task.context.get("read_mode")))

    def precheck(self, s: Series, f: ResolvedInput) -> str | None:
        t = float(f.meta.get("exptime") or 0)
        return f"exposure time {t} s: not a dark" if t <= 0 else None

    def isr(self, s: Series, f: ResolvedInput) -> tuple[IsrOptions, dict[str, Any]]:
        if "signature" not in s.work:
            s.work["signature"] = _signature_kwargs(s.task)
        return s.cfg.isr.options(), {"bias": s.masters["bias"], **s.work["signature"]}

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        t = float(f.meta.get("exptime") or 0)
        res.image /= np.float32(t)
        st = biasmod.frame_stats(res.image, s.amps, saturated=res.saturated)
        rec.update({"rate_median": [round(v, 6) for v in st.level], "saturated_fraction": st.saturated_fraction})
        return rec, st, _save(s.scratch, f"dark-{f.id}", res.image), t

    def screen_series(self, s: Series, items: list[Any]) -> list[Any]:
        return self.screen_stats(s, items, [st for _, st, _, _ in items], unit="e-/s")

    def combine(self, s: Series, used: list[Any]) -> Master:
        ts = np.array([t for _, _, _, t in used])
        read_var, pois = darkmod.dark_noise_model(s.masters["read_noise_e"], ts)
        comb = self.stack(s, (p for _, _, p, _ in used), read_var=read_var, poisson=pois, zones=_zones(s.inst))
        m = Master(comb.image, len(used), comb)
        m.work["exptimes"] = ts
        return m

    def qc(self, s: Series, m: Master) -> None:
        cfg, comb, ts = s.cfg, m.comb, m.work["exptimes"]
        err = darkmod.dark_error(comb.error, s.masters["bias_err"], float(ts.mean()))
        hot = darkmod.hot_pixels(comb.image, err, nsigma=cfg.hot_nsigma, min_excess=cfg.hot_min_excess)
        m.cards["EXPTIME"] = (float(ts.sum()), "total exposure combined (s)")
        m.extensions = [("ERR", err, {"BUNIT": "electron/s"}), ("NCOMB", comb.n_used, None),
                        ("HOT", hot.astype(np.uint8), {"COMMENT": f"1: hot pixel ({cfg.hot_nsigma} sigma)"})]
        m.plots.append(("master_dark.png", m.image, {"title": f"master dark {s.task.unit_key}", "unit": "e-/s"}))
        m.meta.update({"total_exptime": float(ts.sum()),
                       "read_noise_e": [round(float(v), 4) for v in s.masters["read_noise_e"]],
                       "stats": darkmod.dark_stats(comb.image, hot, err), "combine": comb.stats})



# ------------------------------------------------------------------------------------------------------ flat
@register_step
class MasterFlat(MasterStep):
    """Master flat per instrument, read mode, raw layout, filter, flat type (dome, sky) and night."""

    name = "master_flat"
    product_kind = "master_flat"
    config_class = MasterFlatConfig
    version = "1.0"
    description = "normalised master flat per filter (dome / twilight) with flat-field stability QC"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None,
                    doc="the night's flats of one filter and type"),
              PrerequisiteInput("bias", "master_bias", doc="master bias valid at the series"),
              PrerequisiteInput("dark", "master_dark", minimum=0, enabled_by="use_dark",
                                doc="master dark, when one applies"),
              PrerequisiteInput("signature", "instrument_signature", minimum=0,
                                doc="measured instrument signature, when one applies"))
    record_masters = True

    def read_inputs(self, s: Series) -> None:
        s.masters.update(_inputs_masters(s.task, s.cfg, need_flat=False))
        s.used_masters = s.masters["used_masters"]
        s.masters["read_noise_e"] = _read_noise_e(s.masters["bias_in"], s.inst, s.task.context.get("read_mode"))
        s.work["mean_gain"] = float(np.mean([a.gain for a in s.inst.detectors[0].amplifiers]))

    def what_frames(self, s: Series) -> str:
        return f"{self._flat_type(s)} flat"

    @staticmethod
    def _flat_type(s: Series) -> str:
        return s.task.context.get("flat_type", "dome")

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        cfg = s.cfg
        img = res.image
        level = flatmod.flat_level(img, saturated=res.saturated)
        sat = float(res.saturated.mean())
        level_adu = level / s.work["mean_gain"]
        rec.update({"level_e": round(level, 2), "level_adu": round(level_adu, 2), "saturated_fraction": sat})
        why = flatmod.saturation_problem(sat, max_saturated=cfg.max_saturated)
        if why is None and (not np.isfinite(level) or level_adu < cfg.min_level):
            why = f"underexposed: level {level_adu:.0f} ADU < min_level {cfg.min_level:.0f} ADU"
        elif why is None and level_adu > cfg.max_level:
            why = f"overexposed: level {level_adu:.0f} ADU > max_level {cfg.max_level:.0f} ADU"
        if why:
            _exclude(rec, why)
            return None
        img /= np.float32(level)
        img[res.saturated] = np.nan
        if self._flat_type(s) in cfg.gradient_flat_types:
            # the twilight sky's own gradient, different in every flat: fitted and divided out before anything
            # compares the flats (star masks, combination, flat-field QC)
            try:
                grad = flatmod.fit_gradient(img, cells=cfg.qc_cells, order=cfg.gradient_order,
                                             model_order=cfg.gradient_model_order, amps=s.amps)
            except ValueError as exc:
                _exclude(rec, f"gradient fit failed: {exc}")
                return None
            rec["gradient_removed"] = grad.to_dict()
            if not grad.peak_to_peak <= cfg.gradient_max:
                _exclude(rec, f"sky not smooth: fitted gradient {grad.peak_to_peak:.2%} peak to peak > "
                              f"gradient_max {cfg.gradient_max:.2%}")
                return None
            flatmod.divide_surface(img, grad)
        return rec, _save(s.scratch, f"flat-{f.id}", img), level

    def _stack(self, s: Series, items: Sequence[tuple[dict[str, Any], Path, float]], *,
               method: str = "mean") -> CombineResult:
        levels = np.array([lv for _, _, lv in items])
        read_var, pois = flatmod.flat_noise_model(s.masters["read_noise_e"], levels)
        return self.stack(s, (p for _, p, _ in items), method=method, read_var=read_var, poisson=pois,
                          zones=_zones(s.inst))

    def _normalised(self, s: Series, items: Sequence[tuple[dict[str, Any], Path, float]]) -> tuple[Any, float]:
        comb = self._stack(s, items)
        med = flatmod.normalise(comb.image)
        comb.error /= np.float32(med)
        return comb, med

    def combine(self, s: Series, used: list[Any]) -> Master:
        cfg, task = s.cfg, s.task
        cand = used
        if self._flat_type(s) == "sky":
            # stars: found in each flat against a median of all, then masked (NaN) before the final combination
            ref = self._stack(s, cand, method="median").image
            for rec, p, _ in cand:
                arr = _open(p, "r+")
                mask = flatmod.sky_source_mask(np.asarray(arr), ref, nsigma=cfg.star_nsigma, grow_px=cfg.star_grow)
                arr[mask] = np.nan
                arr.flush()
                del arr
                rec["masked_star_pixels"] = int(mask.sum())
            del ref
        used = list(cand)
        comb, med = self._normalised(s, used)
        # flat-field stability: every flat against the master; out-of-tolerance flats are excluded
        qc_rows = self._residual_qc(used, comb.image, cfg)
        bad = [(item, row) for item, row in zip(used, qc_rows) if row["reason"]]
        if bad:
            for (rec, _, _), row in bad:
                _exclude(rec, row["reason"])
            used = [item for item, row in zip(used, qc_rows) if not row["reason"]]
            _enough(used, s.records, cfg.min_frames, f"{self._flat_type(s)} flat (within QC tolerance)")
            comb, med = self._normalised(s, used)
            qc_rows = self._residual_qc(cand, comb.image, cfg)
        for (rec, _, _), row in zip(cand, qc_rows):
            rec["qc"] = row["stats"]
            if rec.get("status") != "excluded":
                rec["status"] = "used"
            if cfg.qc_plots:
                stem = str(rec["filename"]).split(".")[0]
                pname = f"qc/{stem}_residual.png"
                staged_png = task.stage(pname)
                status = "used" if rec["status"] == "used" else f"excluded: {rec.get('reason', '')[:60]}"
                removed = rec.get("gradient_removed")
                title = f"{rec['filename']} vs master {task.unit_key}" + (
                    f" (gradient {removed['peak_to_peak']:.2%} removed)" if removed else "")
                qc.plot_flat_residual(staged_png, row["map"], row["counts"], row["edges"], title=title,
                                      rms=row["stats"]["rms"], gradient=row["stats"]["gradient"], status=status)
                s.files.append(OutputFile("qc_plot", str(staged_png), self.final_path(task, pname)))
        m = Master(comb.image, len(used), comb)
        m.work["normalisation"] = med
        return m

    def qc(self, s: Series, m: Master) -> None:
        cfg, master, med = s.cfg, m.image, m.work["normalisation"]
        m.cards["NORMMED"] = (med, "median of the combination (normalised flats)")
        m.extensions = [("ERR", m.comb.error, None), ("NCOMB", m.comb.n_used, None),
                        ("BIN", _bin_for_epochs(master), {"COMMENT": "binned master (epoch comparisons)"})]
        m.plots.append(("master_flat.png", master, {"title": f"master flat {s.task.unit_key}",
                                                     "unit": "relative response"}))
        used_qc = [r["qc"] for r in s.records if r.get("status") == "used" and "qc" in r]
        summary = {"rms_median": float(np.median([q["rms"] for q in used_qc])) if used_qc else None,
                   "rms_max": float(np.max([q["rms"] for q in used_qc])) if used_qc else None,
                   "gradient_max": float(np.max([q["gradient"] for q in used_qc])) if used_qc else None,
                   "rms_limit": cfg.qc_rms_max, "gradient_limit": cfg.qc_gradient_max}
        removed = [r["gradient_removed"]["peak_to_peak"] for r in s.records
                   if r.get("status") == "used" and "gradient_removed" in r]
        if removed:
            summary.update({"gradient_removed": True, "gradient_order": cfg.gradient_order,
                            "removed_gradient_min": float(np.min(removed)),
                            "removed_gradient_max": float(np.max(removed))})
            m.cards["GRADORD"] = (cfg.gradient_order, "per-flat gradient removed (Legendre degree)")
        m.meta.update({"flat_type": self._flat_type(s), "amp_response": flatmod.amp_means(master, s.amps),
                       "normalisation": med, "qc": summary, "stats": qc.robust_stats(master),
                       "combine": m.comb.stats})
        if s.masters["dark"] is None:
            m.meta["notes"] = ["no master dark was available: dark current not subtracted"]

    @staticmethod
    def _residual_qc(items: Sequence[tuple[dict[str, Any], Path, float]], master: np.ndarray,
                     cfg: Any) -> list[dict[str, Any]]:
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
class BadPixelMask(MasterStep):
    """Bad-pixel mask per instrument, read mode, raw layout and night, from the master dark and master flats.

    On the same template, with masters as its inputs instead of a series of frames: *screen* finds the master dark
    and flats, *combine* flags the hot, dead and low-response pixels and the bad columns.
    """

    name = "bad_pixel_mask"
    product_kind = "bad_pixel_mask"
    config_class = BadPixelConfig
    version = "1.0"
    memory_class = "small"
    description = "hot, dead and low-response pixels and bad columns (uint8 bits)"
    inputs = (PrerequisiteInput("dark", "master_dark", minimum=0, doc="the master dark valid at the night"),
              Input("flat", "master_flat", minimum=0, maximum=None, doc="every master flat of the night"))

    def series(self, task: Task) -> Series:
        return Series(task=task, cfg=self.cfg(task), frames=[], n_inputs=len(task.inputs))

    def screen(self, s: Series) -> list[Any]:
        dark_in = _product_input(s.task, "dark", required=False)
        flat_ins = s.task.inputs_by_role("flat")
        if dark_in is None and not flat_ins:
            raise DataError("a bad-pixel mask needs a master dark or master flats; none among the inputs")
        s.masters.update(dark_in=dark_in, flat_ins=flat_ins)
        s.work["notes"] = []
        return [r for r in (dark_in, *flat_ins) if r is not None]

    def combine(self, s: Series, used: list[Any]) -> Master:
        cfg, dark_in, flat_ins, notes = s.cfg, s.masters["dark_in"], s.masters["flat_ins"], s.work["notes"]
        hot = dead = low = None
        shape = None
        if dark_in is not None:
            rate = read_master(dark_in)
            err = read_master(dark_in, "ERR")
            hot = darkmod.hot_pixels(rate, err, nsigma=cfg.hot_nsigma, min_excess=cfg.hot_min_excess)
            shape = rate.shape
            del rate, err
        else:
            notes.append("no master dark: hot pixels not detected")
        if flat_ins:
            flats = [read_master(fi) for fi in flat_ins]
            dead, low = bpmmod.flat_defects(flats, box=cfg.response_box, dead_below=cfg.dead_below,
                                            low_below=cfg.low_below)
            shape = flats[0].shape
            del flats
        else:
            notes.append("no master flat: dead and low-response pixels not detected")
        bpm = bpmmod.combine_mask(hot=hot, dead=dead, low=low, min_run=cfg.column_min_run,
                                  max_gap=cfg.column_max_gap, shape=shape)
        return Master(bpm, s.n_inputs)

    def qc(self, s: Series, m: Master) -> None:
        st = bpmmod.bpm_stats(m.image)
        m.cards.update({f"BIT{bit}": name_.upper()[:68] for name_, bit in bpmmod.BITS.items()})
        m.plots.append(("bad_pixel_mask.png", (m.image > 0).astype(np.float32),
                        {"title": f"bad pixels {s.task.unit_key} ({st['total']})", "unit": "fraction flagged"}))
        m.meta["stats"] = st

    def meta(self, s: Series, m: Master) -> dict[str, Any]:
        dark_in, flat_ins = s.masters["dark_in"], s.masters["flat_ins"]
        return {"kind": "bpm", "bits": bpmmod.BITS, "stats": m.meta["stats"], "notes": s.work["notes"],
                "inputs": {"dark": dark_in.id if dark_in else None, "flats": [fi.id for fi in flat_ins]}}

    def qc_status(self, s: Series, m: Master) -> str:
        return "warn" if s.work["notes"] else "ok"


# ------------------------------------------------------------------------------------------------------ science-based
class _ScienceMaster(MasterStep):
    """Masters made from the night's science frames (reduced with bias, dark and flat): the sky background of
    every frame is measured with its sources masked."""

    what = "science"
    record_masters = True

    def read_inputs(self, s: Series) -> None:
        s.masters.update(_inputs_masters(s.task, s.cfg, need_flat=True))
        s.used_masters = s.masters["used_masters"]

    @staticmethod
    def sky(s: Series, res: IsrResult, *, halo_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The sky background of a reduced frame with its sources (and, ``halo_px`` > 0, the halos of its saturated
        stars: :func:`upad.calib.fringe.halo_mask`) masked, and the mask."""
        cfg, img = s.cfg, res.image
        halos = fringemod.halo_mask(res.saturated, radius_px=halo_px)
        bkg, _ = fringemod.sky_background(img, res.saturated | halos, box=cfg.background_box)
        mask = fringemod.source_mask(img, bkg, nsigma=cfg.source_nsigma, grow_px=cfg.source_grow,
                                     saturated=res.saturated) | halos
        bkg, _ = fringemod.sky_background(img, mask, box=cfg.background_box)
        return bkg, mask


@register_step
class MasterFringe(_ScienceMaster):
    """Fringe map per instrument, read mode, raw layout, fringing filter and night."""

    name = "master_fringe"
    product_kind = "master_fringe"
    config_class = MasterFringeConfig
    version = "1.0"
    description = "fringe map (fraction of the sky) from dithered science frames"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None,
                    doc="the night's science frames in the filter"),
              PrerequisiteInput("bias", "master_bias", doc="master bias valid at the series"), PrerequisiteInput("dark", "master_dark", minimum=0, doc="master dark, when one applies"),
              PrerequisiteInput("flat", "master_flat", doc="master flat of the filter"),
              PrerequisiteInput("signature", "instrument_signature", minimum=0,
                                doc="measured instrument signature, when one applies"))
    unit = "fraction of sky"

    def read_inputs(self, s: Series) -> None:
        super().read_inputs(s)
        s.masters["read_noise_e"] = _read_noise_e(s.masters["bias_in"], s.inst, s.task.context.get("read_mode"))

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        bkg, mask = self.sky(s, res)
        sky = float(np.nanmedian(bkg[::4, ::4]))
        if not sky > 0:
            _exclude(rec, f"no sky background (median {sky:.1f} e-)")
            return None
        norm = fringemod.normalised_frame(res.image, bkg, mask)
        rec.update(status="used", sky_e=round(sky, 2), masked_fraction=round(float(mask.mean()), 4))
        return rec, _save(s.scratch, f"fringe-{rec['frame_id']}", norm), sky

    def combine(self, s: Series, used: list[Any]) -> Master:
        cfg = s.cfg
        skies = np.array([sk for _, _, sk in used])
        rv = (skies + float(np.median(s.masters["read_noise_e"])) ** 2) / skies ** 2
        comb = self.stack(s, (p for _, p, _ in used), read_var=rv)
        fringe = fringemod.smooth_nan(comb.image, cfg.smooth_px)
        fringe[~np.isfinite(fringe)] = 0.0
        fringe -= np.float32(np.median(fringe[::2, ::2]))
        for rec, p, _ in used:
            rec["fitted_scale"] = round(fit_fringe_scale(np.asarray(_open(p)), fringe), 4)
        return Master(fringe, len(used), comb)

    def qc(self, s: Series, m: Master) -> None:
        cfg, comb = s.cfg, m.comb
        err = comb.error
        if cfg.smooth_px > 0:
            err = err / np.float32(2 * np.sqrt(np.pi) * cfg.smooth_px)
        amp = qc.robust_stats(m.image)
        m.cards["FRNGRMS"] = (round(amp["std"], 6), "rms of the fringe map (fraction of sky)")
        m.extensions = [("ERR", err, {"COMMENT": "approximate after smoothing"}), ("NCOMB", comb.n_used, None)]
        m.plots.append(("master_fringe.png", m.image, {"title": f"fringe map {s.task.unit_key}", "unit": "% of sky",
                                                       "percent": True, "cells": 512}))
        m.meta.update({"rms": round(amp["std"], 6), "robust_rms": round(amp["robust_std"], 6),
                       "combine": comb.stats})


@register_step
class MasterIllumination(_ScienceMaster):
    """Illumination correction per instrument, read mode, raw layout, filter, flat type and night."""

    name = "master_illumination"
    product_kind = "master_illumination"
    config_class = MasterIllumConfig
    version = "1.0"
    description = "illumination correction (smooth sky response after flat-fielding) from science frames"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None,
                    doc="the night's science frames in the filter"),
              PrerequisiteInput("bias", "master_bias", doc="master bias valid at the series"), PrerequisiteInput("dark", "master_dark", minimum=0, doc="master dark, when one applies"),
              PrerequisiteInput("flat", "master_flat", doc="master flat of the filter and flat type"),
              PrerequisiteInput("signature", "instrument_signature", minimum=0,
                                doc="measured instrument signature, when one applies"))

    def read_inputs(self, s: Series) -> None:
        super().read_inputs(s)
        shape = s.inst.layout.active_shape
        s.work.update(shape=shape, cell=illummod.cell_size(shape, s.cfg.cells))

    def measure(self, s: Series, f: ResolvedInput, rec: dict[str, Any], res: IsrResult) -> Any:
        bkg, mask = self.sky(s, res, halo_px=s.cfg.halo_radius_px)
        try:
            grid = illummod.background_grid(bkg, cell=s.work["cell"])
        except ValueError as exc:
            _exclude(rec, str(exc))
            return None
        # cells mostly masked hold the mesh's interpolation, not a measurement: the other frames' (dithered) decide
        grid[qc.bin_image(mask.astype(np.float32), s.work["cell"], statistic="mean") > 0.5] = np.nan
        p2p, angle = illummod.sky_gradient(grid)
        rec.update(sky_e=round(float(np.nanmedian(bkg[::4, ::4])), 2), masked_fraction=round(float(mask.mean()), 4),
                   sky_gradient=round(p2p, 6), sky_gradient_angle_deg=round(angle, 2))
        if not p2p <= s.cfg.max_sky_gradient:
            _exclude(rec, f"sky gradient {p2p:.2%} peak to peak > max_sky_gradient {s.cfg.max_sky_gradient:.2%} "
                          "(moonlight or twilight: not a reference of the response)")
            return None
        rec["status"] = "used"
        return rec, grid

    def combine(self, s: Series, used: list[Any]) -> Master:
        cfg, shape, cell = s.cfg, s.work["shape"], s.work["cell"]
        combined = illummod.combine_grids([g for _, g in used])
        coef, info = illummod.fit_surface(combined, shape=shape, cell=cell, order=cfg.order)
        icor = illummod.evaluate_surface(coef, shape, cfg.order)
        # per-frame agreement with the fit (binned, normalised), for QC
        model_grid = qc.bin_image(icor, cell)
        for rec, g in used:
            ratio = g / model_grid
            rec["rms_vs_fit"] = round(float(np.nanstd(ratio / np.nanmedian(ratio))), 6)
        m = Master(icor, len(used))
        m.work.update(combined=combined, coef=coef, info=info)
        return m

    def qc(self, s: Series, m: Master) -> None:
        cfg, icor, info, combined = s.cfg, m.image, m.work["info"], m.work["combined"]
        err = np.full(icor.shape, np.float32(info["rms"] / np.sqrt(max(m.n_used, 1))), np.float32)
        p2p = float(icor.max() - icor.min())
        m.cards.update({"ICORORD": (cfg.order, "Legendre total degree"),
                        "ICORP2P": (round(p2p, 6), "peak to peak of the map"),
                        "COMMENT": "flat-fielded science / this map = illumination-corrected"})
        binned = (combined / np.nanmean(combined)).astype(np.float32)
        m.extensions = [("ERR", err, {"COMMENT": "fit rms / sqrt(frames), per cell"}),
                        ("BIN", _bin_for_epochs(icor), {"COMMENT": "binned map"}),
                        ("DATA", binned, {"COMMENT": "combined normalised background cells"})]
        m.plots.append(("master_illumination.png", icor, {"title": f"illumination {s.task.unit_key}",
                                                          "unit": "relative sky (%)", "percent": True}))
        m.meta.update({"flat_type": s.task.context.get("flat_type"), "order": cfg.order,
                       "cell_px": s.work["cell"], "fit": info, "peak_to_peak": round(p2p, 6),
                       "coefficients": [float(c) for c in m.work["coef"]]})
