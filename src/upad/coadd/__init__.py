"""Tile coadding: the survey tiling, and reduced exposures resampled onto a tile's pixel grid and combined.

- :mod:`upad.coadd.tiling` — the survey's pointings and their pixel grids (pure); :mod:`upad.coadd.survey` stores a
  tiling and reports the survey's progress.
- :mod:`upad.coadd.resample` puts one exposure on the tile grid with a flux-conserving Lanczos-3 kernel and
  :mod:`upad.coadd.combine` combines the resampled exposures with SWarp's CLIPPED rule and inverse-variance weights,
  block by block of rows (pure).
- :mod:`upad.coadd.step` (the ``coadd`` step: what a tile waits for) and :mod:`upad.coadd.pipeline` (its worker).
"""
