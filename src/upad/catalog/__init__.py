"""The catalog stage: single- and dual-mode catalogs of the tile coadds, PSF-homogenised photometry
(:mod:`upad.catalog.measure`, :mod:`upad.catalog.homogenise`)."""
