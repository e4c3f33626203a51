"""File input/output: atomic writes, checksums, FITS helpers, previews, and the products' formats
(:mod:`upad.io.products`: a writer and a reader for every product kind)."""
