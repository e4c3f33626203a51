"""Tile coadding: reduced exposures resampled onto a tile's pixel grid and combined with outlier rejection.

The algorithm core is pure (arrays in, arrays out): :mod:`upad.coadd.resample` puts one exposure on the tile grid
with a flux-conserving Lanczos-3 kernel, :mod:`upad.coadd.combine` combines the resampled exposures with SWarp's
CLIPPED rule and inverse-variance weights, block by block of rows.
"""
