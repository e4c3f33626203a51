"""The instrument-signature step: gain, read noise, non-linearity, crosstalk and saturation level per amplifier,
measured from the night's own frames (:mod:`upad.calib.signature`), as a master with validity like the others.

========================  ===========================================  ============================================
step                      reads (declared)                             makes, per instrumental configuration, night
========================  ===========================================  ============================================
``instrument_signature``  the dome flats of a photon-transfer /        the signature FITS file
                          linearity sequence (``raw``), the night's    (:func:`upad.io.products.write_signature`)
                          biases (``bias_raw``) and science frames     + the photon-transfer and linearity plots
                          (``science``)
========================  ===========================================  ============================================

The dome flats are sorted by exposure time: consecutive flats of one exposure time make the photon-transfer pairs;
one flat per exposure time of the groups of at most two make the linearity series (a group of three or more flats at
one exposure time is an ordinary flat series, whose lamp level need not follow the exposure time: used for the
pairs only). Flats are screened first as the master flat screens them (:func:`upad.calib.flat.saturation_problem`:
more than ``max_saturated`` of the pixels at the saturation level): an excluded flat is left out before the pairing
and recorded with its reason in the product's meta (``excluded``). Every quantity that cannot be measured (too few pairs, a short series, no saturated stars) falls back to
the instrument file's first guess; the reason is recorded in the product's meta (``qc``) and its QC is ``warn``.
The reduction (:mod:`upad.reduce.steps`) applies the measured quantities through :meth:`Signature.isr_kwargs`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from upad.calib.config import SignatureConfig
from upad.calib.flat import saturation_problem
from upad.calib.signature import signature_from_raw
from upad.calib.steps import MasterStep, _check_frame, _frame_record, _frames, _header, _instrument, _validity
from upad.flow.step import FRAME, DataError, Input, OutputFile, StepOutput, Task, register_step
from upad.io.products import write_signature
from upad.io.raw import read_raw
from upad.isr.core import saturation_mask

__all__ = ["InstrumentSignature", "split_sequence"]


def split_sequence(exptimes: list[float]) -> tuple[list[tuple[int, int]], list[int]]:
    """Indices of the flat pairs and of the linearity series among flats of these exposure times (in time order).

    Pairs: consecutive flats of one exposure time (two by two). Linearity: the first flat of every exposure time
    that has at most two flats.
    """
    groups: dict[float, list[int]] = defaultdict(list)
    for i, t in enumerate(exptimes):
        groups[round(float(t), 3)].append(i)
    pairs, series = [], []
    for t in sorted(groups):
        idx = groups[t]
        pairs += [(idx[j], idx[j + 1]) for j in range(0, len(idx) - 1, 2)]
        if len(idx) <= 2 and t > 0:
            series.append(idx[0])
    return pairs, series


@register_step
class InstrumentSignature(MasterStep):
    """Instrument signature per instrument, read mode, raw layout and night."""

    name = "instrument_signature"
    product_kind = "instrument_signature"
    config_class = SignatureConfig
    version = "1.0"
    memory_class = "medium"
    description = "gain, read noise, non-linearity, crosstalk and saturation per amplifier (measured)"
    inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None,
                    doc="the night's dome flats of a photon-transfer / linearity sequence"),
              Input("bias_raw", FRAME, minimum=0, maximum=None, doc="the night's bias frames (read noise)"),
              Input("science", FRAME, minimum=0, maximum=None, doc="the night's science frames (crosstalk)"))

    def run(self, task: Task) -> StepOutput:
        cfg = self.cfg(task)
        flats = _frames(task, "raw")
        if not flats:
            raise DataError("no dome flats among the inputs")
        inst = _instrument(flats[0].meta)
        layout = task.context["layout"]
        records: list[dict[str, Any]] = []

        isr_opt = cfg.isr.options(to_electrons=False, linearize=False)
        sat_level = isr_opt.saturation_adu if isr_opt.saturation_adu is not None else float(inst.adc_max)
        sections = inst.amp_sections(layout)

        def load(frames, *, screen: bool = False, keep: bool = False):
            out = []
            for f in frames:
                rec = _frame_record(f)
                records.append(rec)
                raw, why = _check_frame(f, inst, layout)
                if raw is not None and screen:  # the master flat's saturation screen (a flat clipped at the ADC
                    # maximum biases its pair's variance and its linearity point)
                    sat = float(saturation_mask(raw, sections, level=sat_level).mean())
                    rec["saturated_fraction"] = sat
                    why = saturation_problem(sat, max_saturated=cfg.max_saturated)
                    if why:
                        raw = None
                if raw is None:
                    rec.update(status="excluded", reason=why)
                    continue
                rec["status"] = "used"
                # checked (and screened): the frame is read again when the measurement uses it, one at a time
                # (a night's full-size flats and science frames are never all in memory)
                out.append((f, raw if keep else (lambda path=f.paths[0]: read_raw(path)[1])))
                del raw
            return out

        flat_raw = load(flats, screen=True)
        pairs_i, series_i = split_sequence([float(f.meta.get("exptime") or 0.0) for f, _ in flat_raw])
        biases = [r for _, r in load(_frames(task, "bias_raw"), keep=True)]
        science = [r for _, r in load(_frames(task, "science"))]
        sig = signature_from_raw(
            inst, layout, biases=biases,
            linearity=[(flat_raw[i][1], float(flat_raw[i][0].meta.get("exptime") or 0.0)) for i in series_i],
            ptc=[(flat_raw[a][1], flat_raw[b][1]) for a, b in pairs_i], science=science,
            options=isr_opt, min_pairs=cfg.min_pairs,
            min_linearity=cfg.min_linearity, min_source_adu=cfg.min_source_adu,
            min_crosstalk_weight=cfg.min_crosstalk_weight)
        name = f"{self.name}.fits"
        staged = task.stage(name)
        header = _header(task, self, bunit="", n_inputs=len(records),
                         n_used=sum(r.get("status") == "used" for r in records))
        write_signature(staged, sig, header)
        files = [OutputFile("master", str(staged), self.final_path(task, name))]
        meta = {"kind": "signature", "n_inputs": len(records), "n_pairs": len(pairs_i),
                "n_linearity": len(series_i), "inputs": records,
                "excluded": [r for r in records if r.get("status") == "excluded"],
                "gain": [round(float(v), 6) for v in sig.gain],
                "read_noise_e": [round(float(v), 4) for v in sig.read_noise_e],
                "read_noise_adu": [round(float(v), 4) for v in sig.read_noise_adu],
                "linearity": None if sig.linearity is None else np.asarray(sig.linearity).tolist(),
                "crosstalk": None if sig.crosstalk is None else np.asarray(sig.crosstalk).tolist(),
                "saturation_adu": None if sig.saturation_adu is None else [float(v) for v in sig.saturation_adu],
                "qc": {k: {kk: vv for kk, vv in q.items() if kk != "points"} for k, q in sig.qc.items()},
                "warnings": sig.warnings}
        ga, gu = _validity(task)
        return StepOutput(files=files, meta=meta, qc_status=sig.qc_status, good_after=ga, good_until=gu)
