"""File input/output: atomic writes, checksums, FITS helpers, previews."""
