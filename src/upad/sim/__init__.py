"""The survey simulator: raw nights as the observatory writes them, plus the truth behind them.

``upad.sim`` never imports the pipeline (ingest, calib, reduce, db, flow): the truth it writes must
stay independent of the code it checks. It reads only the instrument and filter descriptions.

Entry points: :func:`simulate` (whole nights on disk), :class:`SimConfig` (every parameter) and
:func:`upad.sim.truth.load_manifest`. See ``docs/simulator.md``.
"""
from __future__ import annotations

from upad.sim.api import SUPPORTED_INSTRUMENTS, SimulationResult, simulate
from upad.sim.config import EFFECTS, NOMINAL_WORLD, SimConfig
from upad.sim.truth import load_manifest

__all__ = ["EFFECTS", "NOMINAL_WORLD", "SUPPORTED_INSTRUMENTS", "SimConfig", "SimulationResult", "load_manifest",
           "simulate"]
