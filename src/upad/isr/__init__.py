"""Instrument-signature removal (ISR): the pure array operations applied to every raw frame, shared by the master
calibrations (:mod:`upad.calib`) and the reduction of science frames (:mod:`upad.reduce`).

* :mod:`upad.isr.core` — overscan, trim and assembly, bias, non-linearity, gain, dark, flat, illumination and the
  saturation mask (:func:`run_isr`, numpy primitives and one compiled pass);
* :mod:`upad.isr.fringe` — the amplitude of a fringe map in a flat-fielded frame (:func:`fit_fringe`);
* :mod:`upad.isr.config` — :class:`IsrConfig`, the one nested ISR configuration of every step.

Nothing here reads files or touches a database, and nothing imports :mod:`upad.calib` or :mod:`upad.reduce`.
"""
from __future__ import annotations

from upad.isr.config import IsrConfig
from upad.isr.core import (
    ENGINES,
    HAVE_NUMBA,
    LINEARIZE_ITERATIONS,
    OVERSCAN_METHODS,
    IsrOptions,
    IsrResult,
    amp_grid,
    amp_index_map,
    apply_gain,
    assemble,
    divide_flat,
    linearize,
    linearize_poly,
    overscan_profile,
    overscan_row_levels,
    parallel_overscan_correct,
    raw_shape_problem,
    run_isr,
    saturation_mask,
    serial_overscan,
    subtract_dark,
)
from upad.isr.crosstalk import correct_crosstalk
from upad.isr.fringe import fit_fringe, fit_fringe_scale

__all__ = [
    "ENGINES",
    "HAVE_NUMBA",
    "LINEARIZE_ITERATIONS",
    "OVERSCAN_METHODS",
    "IsrConfig",
    "IsrOptions",
    "IsrResult",
    "amp_grid",
    "amp_index_map",
    "apply_gain",
    "assemble",
    "correct_crosstalk",
    "divide_flat",
    "fit_fringe",
    "fit_fringe_scale",
    "linearize",
    "linearize_poly",
    "overscan_profile",
    "overscan_row_levels",
    "parallel_overscan_correct",
    "raw_shape_problem",
    "run_isr",
    "saturation_mask",
    "serial_overscan",
    "subtract_dark",
]
