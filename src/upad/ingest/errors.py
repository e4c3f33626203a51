"""Why ingest refuses a file: the quarantine categories and the exception that carries them."""
from __future__ import annotations

from upad.errors import UpadError

__all__ = ["CATEGORIES", "IngestRejected"]

#: Quarantine categories: what each one means (shown to users by ``upad quarantine`` and in ``docs/ingest.md``).
CATEGORIES: dict[str, str] = {
    "not_fits": "the file is not a FITS file (it does not start with 'SIMPLE  =   T')",
    "empty": "the file has no bytes",
    "truncated": "the file ends before the end of the data its headers announce (an incomplete copy)",
    "corrupt": "the FITS structure or the (compressed) pixel data cannot be decoded",
    "checksum": "a CHECKSUM or DATASUM card does not match the bytes of its HDU",
    "wrong_shape": "the image size is none of the instrument's raw layouts, or image HDUs are missing",
    "wrong_dtype": "the pixels are not unsigned 16-bit ADU (BITPIX=16, BZERO=32768, BSCALE=1)",
    "missing_keys": "header keys that ingest needs are missing",
    "bad_value": "a header value cannot be interpreted (date, coordinates, exposure time, filter …)",
    "unreadable": "the path cannot be read (a directory, a dangling symbolic link, no permission, I/O error)",
    "unknown_instrument": "INSTRUME names no instrument upad knows",
    "conflict": "a different file with the same name is already registered or archived",
    "implausible": "a header value is readable but impossible for the instrument: DATE-OBS outside its service years "
                   "or in the future, EXPTIME outside its range, a read mode its description file does not list",
    "oversized": "the compressed pixels would expand beyond what the header declares or beyond "
                 "ingest.limits.max_decompression_ratio (a decompression bomb): refused before decompressing",
    "unsafe_link": "a symbolic link whose target lies outside the incoming directory (or any link, with "
                   "ingest.limits.follow_symlinks = 'never'): not followed, nothing copied, the link left in place",
    "bad_name": "the file name holds control characters (newline …), non-ASCII characters or a path separator: "
                "nothing copied, the file left in place to be renamed",
}


class IngestRejected(UpadError):
    """A file that ingest refuses, with its quarantine category and a human-readable reason.

    Parameters
    ----------
    category : str
        One of :data:`CATEGORIES`.
    reason : str
        What was wrong, in words an observer understands.
    hint : str, optional
        What to do about it.
    """

    def __init__(self, category: str, reason: str, *, hint: str | None = None) -> None:
        if category not in CATEGORIES:
            raise ValueError(f"unknown quarantine category {category!r}; expected one of {sorted(CATEGORIES)}")
        super().__init__(reason, hint=hint)
        self.category = category
        self.reason = reason

    @property
    def full_reason(self) -> str:
        """The reason followed by the hint (what is stored in the quarantine table)."""
        return self.reason if not self.hint else f"{self.reason} — {self.hint}"

    def __repr__(self) -> str:
        return f"IngestRejected({self.category!r}, {self.reason!r})"
