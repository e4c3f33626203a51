"""The steps that come with upad, imported in data-flow order (each module registers its steps)."""
from __future__ import annotations

import importlib

#: Modules that define built-in steps; a module not written yet is skipped.
STEP_MODULES = (
    "upad.ingest.preview",
    "upad.calib.steps",
    "upad.calib.signature_step",
    "upad.reduce.steps",
    "upad.reduce.night_step",
    "upad.reduce.starflat_step",
    "upad.coadd.step",
    "upad.coadd.registration_step",
    "upad.catalog.mask_step",
    "upad.catalog.step",
    "upad.catalog.calibration",
    "upad.release.upload",
)

for _mod in STEP_MODULES:
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _mod.startswith(exc.name):
            raise
