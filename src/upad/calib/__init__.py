"""Master calibrations: bias, dark, flat, fringe, illumination correction and bad-pixel mask; validity and lookup.

Layout of the package:

- pure algorithms, arrays in and results out (no I/O, no database): :mod:`~upad.calib.combine` (block-wise
  sigma-clipped combination), :mod:`~upad.calib.bias`, :mod:`~upad.calib.dark`, :mod:`~upad.calib.flat`,
  :mod:`~upad.calib.fringe`, :mod:`~upad.calib.illumination`, :mod:`~upad.calib.bpm`, :mod:`~upad.calib.qc`
  (statistics and plots) and :mod:`~upad.calib.epochs` (epoch breakpoints and their automatic proposal);
- database side (read-only, run by the scheduler): :mod:`~upad.calib.planning` (which calibration series exist and
  whether they are complete) and :mod:`~upad.calib.lookup` (which masters apply to a frame, and why);
- :mod:`~upad.calib.steps`: the processing-flow steps that make the masters, on one template
  (:class:`~upad.calib.steps.MasterStep`: screen the inputs → combine → QC → write → record; the adapters: read
  files, call the algorithms, write FITS products with :mod:`upad.io.products` and QC plots);
- :mod:`~upad.calib.store`: the operator-declared epoch breakpoints (table ``calib_epochs``).

See ``docs/calibration.md`` for users.
"""
