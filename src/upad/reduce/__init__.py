"""The daily pipeline: instrument-signature removal (ISR), masks, cosmic rays, astrometry, photometry, QC.

:mod:`upad.reduce.isr` holds the pure ISR primitives (overscan, trim and assembly, bias, non-linearity, gain, dark,
flat) shared by the master calibrations (:mod:`upad.calib`) and the reduction of science frames.
"""
