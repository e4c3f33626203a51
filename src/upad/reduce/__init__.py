"""The daily pipeline: masks, cosmic rays, astrometry, photometry, QC of science frames.

The instrument-signature removal (overscan, trim and assembly, bias, non-linearity, gain, dark, flat, fringe) is
:mod:`upad.isr`, shared with the master calibrations (:mod:`upad.calib`).
"""
