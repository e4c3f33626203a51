"""Master calibrations: bias, dark, flat, fringe, illumination correction and bad-pixel mask; validity and lookup.

Layout of the package:

- pure algorithms, arrays in and results out (no I/O, no database): :mod:`~upad.calib.combine` (block-wise
  sigma-clipped combination), :mod:`~upad.calib.bias`, :mod:`~upad.calib.dark`, :mod:`~upad.calib.flat`,
  :mod:`~upad.calib.fringe`, :mod:`~upad.calib.illumination`, :mod:`~upad.calib.bpm`, :mod:`~upad.calib.qc`
  (statistics and plots) and :mod:`~upad.calib.epochs` (epoch breakpoints and their automatic proposal);
- selection, read-only: :mod:`~upad.calib.model` (frames, configurations, candidates as plain data),
  :mod:`~upad.calib.queries` (all the SQL, cached per session and scoped to a planning pass),
  :mod:`~upad.calib.rules` (the rules as pure functions), :mod:`~upad.calib.lookup` (which masters apply to a frame,
  and why) and :mod:`~upad.calib.planning` (which master units exist and whether they are ready); imports go one
  way, model ← queries, rules ← lookup ← planning; planning tells the lookup which masters are still to come
  (:func:`upad.calib.lookup.set_expected_source`), registered when this package is imported;
- :mod:`~upad.calib.steps`: the processing-flow steps that make the masters, on one template
  (:class:`~upad.calib.steps.MasterStep`: screen the inputs → combine → QC → write → record; the adapters: read
  files, call the algorithms, write FITS products with :mod:`upad.io.products` and QC plots);
- :mod:`~upad.calib.store`: the operator-declared epoch breakpoints (table ``calib_epochs``).

See ``docs/calibration.md`` for users.
"""
from upad.calib import planning as _planning  # noqa: E402,F401  (registers the lookup's "still to come" source)
