"""Tile coadding: tiling, resampling, combination."""
