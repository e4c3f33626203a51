"""Verification of one raw file: is it a complete, intact, contract-conformant raw frame?

The checks run on the file's bytes, read once into memory (:func:`read_snapshot`), so that the checksum, the
verification, the quick-look QC and the archived copy all refer to exactly the same bytes. In order:

1. not empty, and a FITS file (``SIMPLE  =  T`` magic) — ``empty``, ``not_fits``;
2. the HDU structure, walked by this module from the raw 2880-byte blocks, independently of astropy's lazy loading:
   every header ends with ``END`` and every data unit announced by ``BITPIX``/``NAXISn``/``PCOUNT``/``GCOUNT`` is
   entirely in the file — ``truncated``, ``corrupt``;
3. ``CHECKSUM``/``DATASUM`` of every HDU that carries them — ``checksum``;
4. the image HDU(s): HDU 1 of an fpack file, the primary of a plain file, one per CCD for a multi-detector camera;
   ``BITPIX=16``, ``BZERO=32768``, ``BSCALE=1`` — ``wrong_dtype``;
5. the header translation (:mod:`upad.ingest.translate`) — ``missing_keys``, ``bad_value``, ``unknown_instrument``;
6. the image shape is one of the instrument's raw layouts — ``wrong_shape``;
7. a tile-compressed image cannot expand beyond what its header declares nor by more than
   ``ingest.limits.max_decompression_ratio`` (:func:`upad.ingest.limits.check_expansion`, decided before any
   pixel is decoded) — ``oversized``;
8. all pixels are decoded (decompressed) to the end — ``corrupt``.

Every refusal is an :class:`~upad.ingest.errors.IngestRejected` with a category and a reason saying what was wrong
and what to do.
"""
from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from upad.ingest.errors import IngestRejected
from upad.ingest.limits import DEFAULT_LIMITS, LimitsConfig, check_expansion
from upad.ingest.translate import DEFAULT_CONFIG, FrameMetadata, TranslationConfig, translate_header
from upad.instruments import get_instrument, section_to_fits

__all__ = [
    "HDUSpan",
    "VerifiedFrame",
    "fits_checksum",
    "merged_header",
    "read_snapshot",
    "scan_structure",
    "verify_bytes",
    "verify_file",
]

BLOCK = 2880
CARD = 80
_MAGIC = b"SIMPLE  ="



@dataclass(frozen=True)
class HDUSpan:
    """Where one HDU lies in the file (byte offsets) and the structural cards of its header.

    Attributes
    ----------
    index : int
        0 for the primary HDU.
    header_start, data_start : int
        Byte offsets of the header and of the data unit.
    data_size : int
        Bytes of data announced by the header (without the padding to 2880).
    padded_end : int
        Offset just after the padded data unit (start of the next HDU).
    cards : dict
        The header's keyword → raw value string (first occurrence; commentary cards left out).
    """

    index: int
    header_start: int
    data_start: int
    data_size: int
    padded_end: int
    cards: dict[str, str]

    def card_int(self, key: str, default: int = 0) -> int:
        text = self.cards.get(key)
        return default if text is None else int(text)

    def card_str(self, key: str) -> str | None:
        text = self.cards.get(key)
        if text is None:
            return None
        text = text.strip()
        return text[1:text.rfind("'")].strip() if text.startswith("'") else text


@dataclass
class VerifiedFrame:
    """A raw frame that passed verification.

    Attributes
    ----------
    metadata : FrameMetadata
        The translated header.
    header : astropy.io.fits.Header
        The exposure header: primary header merged with the (first) image HDU header.
    data : list of numpy.ndarray
        Pixel arrays in native-order ``uint16`` ADU, one per detector (one for T80Cam and mini).
    layout : str
        ``'readout'`` or ``'archived'``.
    naxis1, naxis2 : int
        Image size of one detector.
    hdus : list of HDUSpan
        The file's structure.
    checksum_verified : bool or None
        ``True`` when at least one CHECKSUM/DATASUM card was present and matched, ``None`` when none was present.
    n_detectors : int
        Number of detectors (image HDUs).
    notes : list of str
        Anomalies that do not prevent ingest.
    """

    metadata: FrameMetadata
    header: fits.Header
    data: list[np.ndarray]
    layout: str
    naxis1: int
    naxis2: int
    hdus: list[HDUSpan]
    checksum_verified: bool | None
    n_detectors: int = 1
    notes: list[str] = field(default_factory=list)


# -- reading --------------------------------------------------------------------------------------------------------
def read_snapshot(path: str | os.PathLike) -> bytes:
    """Read a whole file into memory.

    Returns
    -------
    bytes
        The content (``b''`` for an empty file: :func:`verify_bytes` refuses it as ``empty``).

    Raises
    ------
    IngestRejected
        ``unreadable`` for a directory, a dangling symbolic link, a special file, missing permission or an I/O
        error.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise IngestRejected("unreadable", f"{p.name} is a symbolic link to {os.readlink(p)!r}, which does not "
                                 "exist", hint="fix or remove the link") from None
        raise IngestRejected("unreadable", f"{p} does not exist (removed while ingesting?)",
                             hint="check the path and ingest again") from None
    except OSError as exc:
        raise IngestRejected("unreadable", f"cannot stat {p.name}: {exc.strerror}",
                             hint="check the file system and permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise IngestRejected("unreadable", f"{p.name} is a directory, not a file",
                             hint="ingest the files inside it, or rename it")
    if not stat.S_ISREG(st.st_mode):
        raise IngestRejected("unreadable", f"{p.name} is not a regular file (a device, pipe or socket)",
                             hint="copy the data into a regular file")
    try:
        with open(p, "rb") as fh:
            buf = fh.read()
    except PermissionError:
        raise IngestRejected("unreadable", f"no permission to read {p.name}",
                             hint="fix the file permissions (chmod a+r) and ingest again") from None
    except OSError as exc:
        raise IngestRejected("unreadable", f"cannot read {p.name}: {exc.strerror or exc}",
                             hint="the disk or file system reports an error; copy the file again") from None
    return buf


def verify_file(path: str | os.PathLike, *, config: TranslationConfig = DEFAULT_CONFIG,
                limits: LimitsConfig = DEFAULT_LIMITS) -> VerifiedFrame:
    """Read and verify one file (see :func:`verify_bytes`)."""
    p = Path(path)
    return verify_bytes(read_snapshot(p), p.name, config=config, limits=limits)


# -- structure -------------------------------------------------------------------------------------------------------
def _sniff(buf: bytes) -> str:
    head = buf[:16]
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data (gunzip it first)"
    if head.startswith(b"BZh"):
        return "bzip2-compressed data (bunzip2 it first)"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.startswith(b"<"):
        return "an HTML/XML document (an error page from a download?)"
    sample = buf[:512]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "a text file"
    return "unknown binary data"


def _parse_header_block(buf: bytes, start: int, index: int) -> tuple[dict[str, str], int]:
    """Parse the header starting at ``start``; return (cards, offset of the data unit)."""
    cards: dict[str, str] = {}
    pos = start
    n = len(buf)
    while True:
        if pos + BLOCK > n:
            if pos >= n:
                raise IngestRejected(
                    "truncated", f"the file ends inside the header of HDU {index} (at byte {n}) before its END card",
                    hint="the copy is incomplete; copy the file again from the observatory")
            block = buf[pos:n]
        else:
            block = buf[pos:pos + BLOCK]
        for i in range(0, len(block) - CARD + 1, CARD):
            card = block[i:i + CARD]
            if any(b < 32 or b > 126 for b in card):
                raise IngestRejected(
                    "corrupt", f"header of HDU {index} holds non-ASCII bytes (card at byte {pos + i}): the header "
                    "is damaged", hint="copy the file again from the observatory; if it persists, report it")
            key = card[:8].decode("ascii").strip()
            if key == "END" and not card[8:].strip():
                if pos + BLOCK > n:
                    raise IngestRejected(
                        "truncated", f"the file ends inside the header block of HDU {index} (at byte {n})",
                        hint="the copy is incomplete; copy the file again from the observatory")
                return cards, pos + BLOCK
            if card[8:10] == b"= " and key and key not in cards:
                cards[key] = card[10:].decode("ascii").split(" /")[0].strip()
        if pos + BLOCK > n:
            raise IngestRejected(
                "truncated", f"the file ends inside the header of HDU {index} (at byte {n}) before its END card",
                hint="the copy is incomplete; copy the file again from the observatory")
        pos += BLOCK


def scan_structure(buf: bytes) -> list[HDUSpan]:
    """Walk the HDUs of a FITS file in memory from its raw blocks.

    Parameters
    ----------
    buf : bytes
        The whole file.

    Returns
    -------
    list of HDUSpan

    Raises
    ------
    IngestRejected
        ``empty``, ``not_fits``, ``truncated`` (the file ends before a header's END or before the end of the data
        it announces) or ``corrupt`` (a damaged header, or bytes after the last HDU that are not an extension).
    """
    if not buf:
        raise IngestRejected("empty", "the file is empty (0 bytes)",
                             hint="the transfer probably failed; copy the file again from the observatory")
    if not buf.startswith(_MAGIC):
        raise IngestRejected("not_fits", f"not a FITS file: it does not start with 'SIMPLE  =' but looks like "
                             f"{_sniff(buf)}", hint="only raw FITS frames (.fits, .fits.fz) can be ingested; "
                             "remove the file from the incoming directory")
    spans: list[HDUSpan] = []
    pos = 0
    n = len(buf)
    while pos < n:
        index = len(spans)
        if index > 0 and not buf.startswith(b"XTENSION=", pos):
            rest = buf[pos:]
            if not rest.strip(b"\0 "):
                break  # extra zero/blank padding after the last HDU is harmless
            raise IngestRejected(
                "corrupt", f"{n - pos} bytes after the last HDU (from byte {pos}) are not a FITS extension",
                hint="the file was damaged or concatenated with other data; copy it again from the observatory")
        cards, data_start = _parse_header_block(buf, pos, index)
        if index == 0 and cards.get("SIMPLE", "").strip() != "T":
            raise IngestRejected("not_fits", "SIMPLE is not T: the file does not declare itself standard FITS",
                                 hint="only standard FITS raw frames can be ingested")
        try:
            bitpix = int(cards["BITPIX"])
            naxis = int(cards["NAXIS"])
            dims = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
            pcount = int(cards.get("PCOUNT", "0"))
            gcount = int(cards.get("GCOUNT", "1"))
        except (KeyError, ValueError) as exc:
            raise IngestRejected("corrupt", f"header of HDU {index} lacks a valid mandatory card ({exc}): the FITS "
                                 "structure cannot be read", hint="copy the file again from the observatory") from None
        if bitpix not in (8, 16, 32, 64, -32, -64) or naxis < 0 or any(d < 0 for d in dims):
            raise IngestRejected("corrupt", f"header of HDU {index} has invalid BITPIX/NAXIS values",
                                 hint="copy the file again from the observatory")
        if naxis == 0:
            size = 0
        else:
            npix = math.prod(dims[1:]) if dims and dims[0] == 0 else math.prod(dims)  # random groups: NAXIS1 = 0
            size = abs(bitpix) // 8 * gcount * (pcount + npix)
        padded_end = data_start + -(-size // BLOCK) * BLOCK
        if data_start + size > n:
            raise IngestRejected(
                "truncated", f"the file is {n} bytes but HDU {index} announces data up to byte {data_start + size}: "
                f"{data_start + size - n} bytes are missing", hint="the copy is incomplete (interrupted transfer?); "
                "copy the file again from the observatory")
        spans.append(HDUSpan(index, pos, data_start, size, min(padded_end, n), cards))
        pos = padded_end
    return spans


# -- checksums ---------------------------------------------------------------------------------------------------------
def fits_checksum(data: bytes | memoryview, *, chunk_words: int = 1 << 22) -> int:
    """32-bit ones'-complement sum of big-endian words, as in the FITS checksum convention.

    ``data`` is zero-padded to a multiple of 4 bytes. The DATASUM card holds this sum of the data unit; the sum of
    a whole HDU with a valid CHECKSUM card is ``0xFFFFFFFF`` (negative zero).
    """
    mv = memoryview(data).cast("B")
    rem = len(mv) % 4
    total = 0
    body = len(mv) - rem
    step = chunk_words * 4
    for start in range(0, body, step):
        words = np.frombuffer(mv[start:min(start + step, body)], dtype=">u4")
        total += int(words.sum(dtype=np.uint64))
    if rem:
        total += int.from_bytes(bytes(mv[body:]) + b"\0" * (4 - rem), "big")
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _verify_checksums(buf: bytes, spans: list[HDUSpan]) -> bool | None:
    mv = memoryview(buf)
    checked = False
    for span in spans:
        datasum_card = span.card_str("DATASUM")
        checksum_card = span.card_str("CHECKSUM")
        if datasum_card is None and checksum_card is None:
            continue
        data_sum = fits_checksum(mv[span.data_start:span.padded_end])
        if datasum_card is not None and datasum_card != "":
            try:
                expected = int(datasum_card)
            except ValueError:
                raise IngestRejected("checksum", f"DATASUM of HDU {span.index} is not a number ({datasum_card!r})",
                                     hint="the header is damaged; copy the file again") from None
            if expected != data_sum:
                raise IngestRejected(
                    "checksum", f"DATASUM of HDU {span.index} is {expected} but its data sum to {data_sum}: the "
                    "pixel data changed after they were written", hint="copy the file again from the observatory")
            checked = True
        if checksum_card is not None and checksum_card != "" and set(checksum_card) != {"0"}:
            hdu_sum = fits_checksum(mv[span.header_start:span.padded_end])
            if hdu_sum != 0xFFFFFFFF:
                raise IngestRejected(
                    "checksum", f"CHECKSUM of HDU {span.index} does not match its bytes: the header or the data "
                    "changed after they were written", hint="copy the file again from the observatory")
            checked = True
    return True if checked else None


# -- headers -------------------------------------------------------------------------------------------------------------
def merged_header(primary: fits.Header, image: fits.Header | None) -> fits.Header:
    """The exposure header: the primary header updated with the cards of the image HDU header.

    fpack files keep every exposure key in the compressed image extension (HDU 1) and leave the primary empty;
    multi-detector files keep them in the primary and the per-CCD ones in each extension. Merging covers both.
    Structural cards of the image header (``XTENSION``, ``PCOUNT`` …) are kept as they are informative, except
    ``SIMPLE``/``EXTEND``.
    """
    out = primary.copy()
    if image is None:
        return out
    for card in image.cards:
        key = card.keyword
        if key in ("", "XTENSION", "SIMPLE", "EXTEND"):
            continue
        if key in ("COMMENT", "HISTORY") or key not in out:
            out.append(fits.Card.fromstring(card.image), bottom=True)
        else:
            try:
                out[key] = (card.value, card.comment)
            except Exception:  # unparsable value: keep the raw card
                del out[key]
                out.append(fits.Card.fromstring(card.image), bottom=True)
    return out


# -- the verifier ---------------------------------------------------------------------------------------------------------
def verify_bytes(buf: bytes, filename: str, *, config: TranslationConfig = DEFAULT_CONFIG,
                 limits: LimitsConfig = DEFAULT_LIMITS) -> VerifiedFrame:
    """Verify a raw frame held in memory and decode its pixels.

    Parameters
    ----------
    buf : bytes
        The whole file.
    filename : str
        Its name (used to tell fpack from plain files and in the translation's file-name check).
    config : TranslationConfig
        Passed to :func:`~upad.ingest.translate.translate_header`.
    limits : LimitsConfig
        ``max_decompression_ratio`` (:func:`~upad.ingest.limits.check_expansion`).

    Returns
    -------
    VerifiedFrame

    Raises
    ------
    IngestRejected
        With one of the categories of :data:`~upad.ingest.errors.CATEGORIES`.
    """
    spans = scan_structure(buf)
    checksum_ok = _verify_checksums(buf, spans)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(io.BytesIO(buf), mode="readonly", memmap=False, lazy_load_hdus=False,
                             checksum=False, uint=True, ignore_missing_simple=False)
        except Exception as exc:  # astropy raises many types on damaged files
            raise IngestRejected("corrupt", f"astropy cannot open the file: {type(exc).__name__}: {exc}",
                                 hint="copy the file again from the observatory") from None
    for w in caught:
        text = str(w.message)
        if "truncat" in text.lower():
            raise IngestRejected("truncated", f"the file is truncated ({text.strip()})",
                                 hint="the copy is incomplete; copy the file again from the observatory")
        notes.append(f"astropy: {text.strip().splitlines()[0]}")
    with hdul:
        if len(hdul) != len(spans):
            raise IngestRejected("corrupt", f"astropy reads {len(hdul)} HDUs where the file structure has "
                                 f"{len(spans)}", hint="copy the file again from the observatory")
        images = [h for h in hdul if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
                  and h.header.get("NAXIS", 0) == 2]
        if not images:
            where = "HDU 1 (a tile-compressed image)" if filename.endswith(".fz") else "the primary HDU"
            raise IngestRejected("wrong_shape", f"the file holds no 2-D image (expected in {where})",
                                 hint="raw frames must contain their pixels (docs/raw-format.md)")
        primary = hdul[0].header
        merged = merged_header(primary, images[0].header if images[0] is not hdul[0] else None)

        for hdu in images:
            _check_dtype(hdu)
        with warnings.catch_warnings(record=True) as caught:  # astropy warns on damaged cards it is asked for
            warnings.simplefilter("always")
            metadata = translate_header(merged, filename, config=config)
        notes += [f"astropy: {str(w.message).strip().splitlines()[0]}" for w in caught]
        inst = get_instrument(metadata.instrument)
        layout, naxis1, naxis2 = _check_shapes(images, inst, filename)
        for hdu in images:  # before any pixel is decoded: astropy inflates whole tiles, whatever they claim
            if isinstance(hdu, fits.CompImageHDU):
                index = hdul.index_of(hdu)
                span = spans[index]
                check_expansion(buf, cards=span.cards, data_start=span.data_start, data_size=span.data_size,
                                name=hdu.name or f"HDU {index}", config=limits)

        data = []
        for hdu in images:
            name = hdu.name or f"HDU {hdul.index_of(hdu)}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    arr = hdu.data
                    arr = np.ascontiguousarray(arr, dtype=np.uint16) if arr is not None else None
            except Exception as exc:
                raise IngestRejected("corrupt", f"the pixels of {name} cannot be decoded: {type(exc).__name__}: "
                                     f"{exc}", hint="the file is damaged; copy it again from the observatory") from None
            if arr is None or arr.shape != (naxis2, naxis1):
                raise IngestRejected("corrupt", f"the pixels of {name} decode to shape "
                                     f"{None if arr is None else arr.shape}, not {(naxis2, naxis1)}",
                                     hint="the file is damaged; copy it again from the observatory")
            data.append(arr)
    if len(buf) % BLOCK:
        notes.append(f"file size {len(buf)} is not a multiple of 2880 bytes (the final padding is missing)")
    notes += list(metadata.warnings)
    notes += _check_sections(metadata, inst, layout)
    return VerifiedFrame(metadata=metadata, header=merged, data=data, layout=layout, naxis1=naxis1, naxis2=naxis2,
                         hdus=spans, checksum_verified=checksum_ok, n_detectors=len(data), notes=notes)


def _check_dtype(hdu: Any) -> None:
    h = hdu.header
    bitpix = h.get("BITPIX")
    bzero = h.get("BZERO", 0)
    bscale = h.get("BSCALE", 1)
    name = hdu.name or "the image HDU"
    if bitpix != 16 or bzero != 32768 or bscale != 1:
        kind = {8: "8-bit integer", 16: "signed 16-bit", 32: "32-bit integer", 64: "64-bit integer",
                -32: "32-bit float", -64: "64-bit float"}.get(bitpix, f"BITPIX={bitpix}")
        raise IngestRejected(
            "wrong_dtype", f"{name} has BITPIX={bitpix}, BZERO={bzero}, BSCALE={bscale} ({kind} pixels); raw "
            "frames must be unsigned 16-bit ADU (BITPIX=16, BZERO=32768, BSCALE=1)",
            hint="this is not a raw frame as written by the camera (a processed or converted file?)")


def _check_shapes(images: list[Any], inst: Any, filename: str) -> tuple[str, int, int]:
    expected = {layout: inst.raw_shape(layout) for layout in inst.layout.layouts}
    n_det = len(inst.detectors)
    if len(images) != n_det:
        raise IngestRejected(
            "wrong_shape", f"{inst.name} has {n_det} detector(s) but the file holds {len(images)} image HDU(s)",
            hint="a multi-detector exposure needs one image extension per CCD (docs/raw-format.md)")
    layouts = []
    for hdu in images:
        ny, nx = hdu.header["NAXIS2"], hdu.header["NAXIS1"]
        found = [layout for layout, shape in expected.items() if shape == (ny, nx)]
        if not found:
            known = ", ".join(f"{layout} {s[1]} × {s[0]}" for layout, s in expected.items())
            raise IngestRejected(
                "wrong_shape", f"image is {nx} × {ny} (NAXIS1 × NAXIS2); {inst.name} raw frames are {known}",
                hint="a binned, windowed or processed frame cannot be ingested as raw")
        layouts.append((found[0], nx, ny))
    if len(set(layouts)) != 1:
        raise IngestRejected("wrong_shape", "the CCD extensions of the file have different shapes",
                             hint="every CCD of an exposure must be in the same layout")
    return layouts[0]


def _check_sections(metadata: FrameMetadata, inst: Any, layout: str) -> list[str]:
    """Compare header DATASEC/OVSCSEC with the instrument geometry (notes only: the description wins)."""
    if layout != "readout" or not metadata.amplifiers:
        return []
    secs = {s.amplifier.id: s for s in inst.amp_sections(layout)}
    out = []
    for amp in metadata.amplifiers:
        sec = secs.get(amp.id)
        if sec is None:
            continue
        for name, text, region in (("DATASEC", amp.datasec, sec.data), ("OVSCSEC", amp.overscan_x, sec.overscan_x)):
            if text and region is not None and text.replace(" ", "") != section_to_fits(region):
                out.append(f"header {name} of amplifier {amp.id} is {text} but the {inst.name} description says "
                           f"{section_to_fits(region)}: the description is used")
    return out
