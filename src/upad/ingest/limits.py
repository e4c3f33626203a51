"""What ingest accepts from a hostile or careless world: the ``[ingest.limits]`` parameters and the pure checks that
use them.

Pure checks (no I/O):

:func:`check_filename`
    a file name ingest can register: printable ASCII without path separators — ``bad_name``;
:func:`check_plausibility`
    a translated header that can be of its instrument: DATE-OBS within the instrument's service years and not in the
    future beyond a margin, EXPTIME finite and within the instrument's range, a read mode the instrument file
    lists — ``implausible``;
:func:`check_expansion`
    a tile-compressed image that cannot expand beyond what its header declares, nor by more than a ratio —
    ``oversized`` (decided from the headers and the tile table, with each tile inflated into a buffer no larger
    than the tile, before any image is allocated).

The adapters (:mod:`upad.ingest.service`: settle time, symbolic links) read the other parameters.
"""
from __future__ import annotations

import datetime as dt
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

from upad.config import StepConfig, param
from upad.ingest.errors import IngestRejected

__all__ = [
    "FOLLOW_SYMLINKS",
    "LimitsConfig",
    "DEFAULT_LIMITS",
    "check_expansion",
    "check_filename",
    "check_plausibility",
]

#: Symbolic-link policies of ``ingest.limits.follow_symlinks``.
FOLLOW_SYMLINKS = ("inside", "never")

#: Tile compressions whose codec output is not bounded by the tile size (a deflate stream says nothing of its
#: expanded length): their tiles are inflated under a cap by :func:`check_expansion`.
_DEFLATE = ("GZIP_1", "GZIP_2")

_BYTES = {"L": 1, "X": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}
_TFORM = re.compile(r"^\s*(\d*)\s*([LXBIJKAEDCMPQ])", re.IGNORECASE)


@dataclass(frozen=True)
class LimitsConfig(StepConfig):
    """Limits that protect ingest from incomplete, hostile or absurd input.

    Set in ``<root>/upad.toml`` under ``[ingest.limits]`` (``upad config show`` lists them as
    ``ingest.limits.<name>``). None of them changes a product: they decide what is taken, left or refused.
    """

    settle_s: float = param(2.0, doc="A file is taken only once its size and modification time have not changed "
                                     "for this long (move mode and --watch): a file still being written is left in "
                                     "place for a later pass, never quarantined nor removed", bounds=(0.0, 3600.0),
                            unit="s", critical=False)
    future_margin_days: float = param(1.0, doc="A DATE-OBS later than now (UTC) by more than this is refused as "
                                               "implausible (clock errors of the camera computer)",
                                      bounds=(0.0, 366.0), unit="d", critical=False)
    oldest_date: str = param("1990-01-01", doc="Earliest DATE-OBS accepted for an instrument whose description file "
                                               "declares no service_start (ISO date)", critical=False)
    max_exptime_s: float = param(86400.0, doc="Longest EXPTIME accepted for an instrument whose description file "
                                              "declares no max_exptime_s", bounds=(1.0, 1.0e6), unit="s",
                                 critical=False)
    max_decompression_ratio: float = param(200.0, doc="A tile-compressed image whose declared pixel bytes exceed "
                                                      "its compressed bytes by more than this factor is refused "
                                                      "before decompression (noisy raw frames compress 2-5x; a "
                                                      "constant 'bomb' thousands of times)",
                                           bounds=(2.0, 1.0e5), critical=False)
    follow_symlinks: str = param("inside", doc="Symbolic links in the incoming directories: 'inside' follows a link "
                                               "whose target (resolved) stays inside the directory given to ingest "
                                               "(for a file named explicitly: its own directory); 'never' refuses "
                                               "every link. A refused link is recorded, nothing is copied and the "
                                               "link is left in place", choices=FOLLOW_SYMLINKS, critical=False)

    def validate(self) -> None:
        super().validate()
        try:
            dt.date.fromisoformat(self.oldest_date)
            ok = True
        except (TypeError, ValueError):
            ok = False
        self.require(ok, "oldest_date", f"= {self.oldest_date!r} is not an ISO date",
                     hint="e.g. oldest_date = '1990-01-01'")

    @property
    def oldest(self) -> dt.date:
        return dt.date.fromisoformat(self.oldest_date)


DEFAULT_LIMITS = LimitsConfig()


# -- names ------------------------------------------------------------------------------------------------------------
def check_filename(name: str) -> None:
    """Refuse a file name the archive and the later steps cannot carry.

    The rule is *refuse, never rename*: a renamed frame would lose the link to the observatory's logs. Refused:
    control characters (newline, tab, DEL …: they break line-oriented listings such as ``upad frames``), non-ASCII
    characters (the contract names are ``<prefix>-<YYYYMMDDTHHMMSS>-<NN>.fits.fz``; accented or look-alike characters
    fail later tools), path separators (``/``, ``\\``), and names starting with ``-`` or ``.``. Nothing is copied:
    the file is left where it is, to be renamed by the operator.

    Raises
    ------
    IngestRejected
        ``bad_name``.
    """
    shown = name.encode("unicode_escape").decode("ascii")
    problems = []
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        problems.append("control characters (newline, tab …)")
    if any(ord(c) > 127 for c in name if not (ord(c) < 32 or ord(c) == 127)):
        problems.append("non-ASCII characters")
    if "/" in name or "\\" in name:
        problems.append("a path separator")
    if name.startswith(("-", ".")):
        problems.append(f"a leading {name[0]!r}")
    if problems:
        raise IngestRejected(
            "bad_name", f"the file name {shown!r} contains {', '.join(problems)}; it was not copied",
            hint="rename the file to printable ASCII (e.g. j02-20150811T013114-01.fits.fz) and ingest it again")


# -- header plausibility -------------------------------------------------------------------------------------------
def check_plausibility(metadata: Any, instrument: Any, *, now: dt.datetime,
                       config: LimitsConfig = DEFAULT_LIMITS) -> None:
    """Refuse a translated header whose values cannot be those of a real exposure of ``instrument``.

    Parameters
    ----------
    metadata : FrameMetadata
        The translated header (:func:`upad.ingest.translate.translate_header`).
    instrument : Instrument
        Its instrument (``service_start``, ``max_exptime_s`` and ``read_modes`` of its description file).
    now : datetime.datetime
        The present, naive UTC (passed in: the check is pure).
    config : LimitsConfig
        ``future_margin_days``; ``oldest_date`` and ``max_exptime_s`` for an instrument that declares no limits.

    Raises
    ------
    IngestRejected
        ``implausible``, listing every value refused.
    """
    bad: list[str] = []
    start = instrument.service_start or config.oldest
    where = (f"{instrument.name}'s service_start {start.isoformat()}" if instrument.service_start
             else f"ingest.limits.oldest_date {start.isoformat()} ({instrument.name} declares no service_start)")
    date_obs = metadata.date_obs
    if date_obs.date() < start:
        bad.append(f"DATE-OBS {date_obs.isoformat()} is before {where}")
    latest = now + dt.timedelta(days=config.future_margin_days)
    if date_obs > latest:
        bad.append(f"DATE-OBS {date_obs.isoformat()} is in the future (now {now.isoformat(timespec='seconds')} "
                   f"UTC, ingest.limits.future_margin_days = {config.future_margin_days:g})")
    longest = instrument.max_exptime_s or config.max_exptime_s
    exptime = metadata.exptime
    if not (isinstance(exptime, (int, float)) and math.isfinite(exptime) and 0.0 <= exptime <= longest):
        src = (f"{instrument.name}'s max_exptime_s" if instrument.max_exptime_s
               else "ingest.limits.max_exptime_s")
        bad.append(f"EXPTIME {exptime!r} s is outside 0 … {longest:g} s ({src})")
    mode = metadata.read_mode
    if mode is not None:
        known = [m.name for m in instrument.read_modes]
        if str(mode).strip().upper() not in {k.upper() for k in known}:
            bad.append(f"read mode {mode!r} is not one of {instrument.name}'s read modes ({', '.join(known)})")
    if bad:
        raise IngestRejected(
            "implausible", "; ".join(bad),
            hint="the header cannot describe a real exposure of this camera: fix the header (or the camera "
            "computer's clock), or the instrument description file if the camera changed, and ingest again")


# -- decompression bombs -------------------------------------------------------------------------------------------
def _card_int(cards: dict[str, str], key: str, default: int | None = None) -> int:
    text = cards.get(key)
    if text is None:
        if default is None:
            raise KeyError(key)
        return default
    return int(text.strip())


def _card_str(cards: dict[str, str], key: str) -> str:
    text = (cards.get(key) or "").strip()
    return text[1:text.rfind("'")].strip() if text.startswith("'") else text


def _columns(cards: dict[str, str]) -> list[tuple[str, str, int, int]]:
    """(TTYPE, format letter, offset in the row, repeat) of each column of a binary table header."""
    out = []
    offset = 0
    for i in range(1, _card_int(cards, "TFIELDS", 0) + 1):
        tform = _card_str(cards, f"TFORM{i}")
        m = _TFORM.match(tform)
        if not m:
            raise ValueError(f"TFORM{i} = {tform!r}")
        repeat = int(m[1]) if m[1] else 1
        letter = m[2].upper()
        size = (repeat + 7) // 8 if letter == "X" else repeat * _BYTES[letter]
        if letter in "PQ":
            size = min(repeat, 1) * _BYTES[letter]
        out.append((_card_str(cards, f"TTYPE{i}").upper(), letter, offset, repeat))
        offset += size
    return out


def check_expansion(buf: bytes | memoryview, *, cards: dict[str, str], data_start: int, data_size: int,
                    name: str, config: LimitsConfig = DEFAULT_LIMITS) -> int:
    """Bound the decompression of one tile-compressed image HDU, before its image is allocated.

    The declared image is ``ZNAXIS1 × ZNAXIS2 × … × |ZBITPIX|/8`` bytes. It is refused when it exceeds the HDU's
    compressed bytes (table and heap) by more than ``config.max_decompression_ratio``, when the tile table has not
    one row per tile of ``ZTILEn``, or — for deflate tiles (``GZIP_1``/``GZIP_2``), whose streams can claim any
    length — when a tile inflates beyond its own ``ZTILEn`` pixels: each tile is inflated into a buffer capped at
    the tile's size + 1 byte, so a lying tile costs at most one tile of memory.

    Parameters
    ----------
    buf : bytes
        The whole file.
    cards : dict
        The HDU's header cards (:class:`upad.ingest.verify.HDUSpan`).
    data_start, data_size : int
        Where the HDU's data (table and heap) lies in ``buf``.
    name : str
        How to name the HDU in the reason.

    Returns
    -------
    int
        The declared image size, bytes.

    Raises
    ------
    IngestRejected
        ``oversized``.
    """
    hint = ("a genuine raw frame never compresses this well nor lies about its tiles; delete the file (it may be a "
            "decompression bomb) or ask the observatory for a fresh copy")
    try:
        naxis = _card_int(cards, "ZNAXIS")
        dims = [_card_int(cards, f"ZNAXIS{i}") for i in range(1, naxis + 1)]
        zbitpix = _card_int(cards, "ZBITPIX")
        tiles = [_card_int(cards, f"ZTILE{i}", dims[0] if i == 1 else 1) for i in range(1, naxis + 1)]
        nrows = _card_int(cards, "NAXIS2")
        row_bytes = _card_int(cards, "NAXIS1")
        theap = _card_int(cards, "THEAP", row_bytes * nrows)
        cmptype = _card_str(cards, "ZCMPTYPE").upper()
        columns = _columns(cards)
    except (KeyError, ValueError) as exc:
        raise IngestRejected("corrupt", f"the tile-compression cards of {name} cannot be read ({exc})",
                             hint="copy the file again from the observatory") from None
    if any(d < 0 for d in dims) or any(t < 1 for t in tiles) or zbitpix not in (8, 16, 32, 64, -32, -64):
        raise IngestRejected("corrupt", f"{name} declares invalid ZNAXISn/ZTILEn/ZBITPIX values",
                             hint="copy the file again from the observatory")
    pixel_bytes = abs(zbitpix) // 8
    declared = math.prod(dims) * pixel_bytes
    compressed = max(data_size, 1)
    ratio = declared / compressed
    if ratio > config.max_decompression_ratio:
        raise IngestRejected(
            "oversized", f"{name} declares {declared} bytes of pixels in {data_size} compressed bytes (ratio "
            f"{ratio:.0f}, more than ingest.limits.max_decompression_ratio = {config.max_decompression_ratio:g}); "
            "it was not decompressed", hint=hint)
    n_tiles = math.prod(-(-d // t) for d, t in zip(dims, tiles))
    if n_tiles != nrows:
        raise IngestRejected(
            "oversized", f"{name} has {nrows} compressed tiles where ZNAXISn/ZTILEn declare {n_tiles}; it was not "
            "decompressed", hint=hint)
    if cmptype not in _DEFLATE:
        return declared  # RICE, HCOMPRESS, PLIO: the codecs write exactly one tile
    mv = memoryview(buf)
    heap = data_start + theap
    end = data_start + data_size
    grid = [-(-d // t) for d, t in zip(dims, tiles)]
    for col_name, letter, offset, _repeat in columns:
        if letter not in "PQ" or col_name not in ("COMPRESSED_DATA", "GZIP_COMPRESSED_DATA"):
            continue
        width = 4 if letter == "P" else 8
        for row in range(nrows):
            at = data_start + row * row_bytes + offset
            count = int.from_bytes(mv[at:at + width], "big", signed=True)
            where = int.from_bytes(mv[at + width:at + 2 * width], "big", signed=True)
            if count == 0:
                continue
            if count < 0 or where < 0 or heap + where + count > end:
                raise IngestRejected("corrupt", f"tile {row + 1} of {name} points outside the file's heap",
                                     hint="copy the file again from the observatory")
            # the tile's pixels (edge tiles are smaller)
            idx, npix = row, 1
            for g, d, t in zip(grid, dims, tiles):
                k = idx % g
                idx //= g
                npix *= min(t, d - k * t)
            limit = npix * pixel_bytes
            inflater = zlib.decompressobj(47)  # zlib or gzip header, detected
            try:
                out = inflater.decompress(mv[heap + where:heap + where + count], limit + 1)
            except zlib.error as exc:
                raise IngestRejected("corrupt", f"tile {row + 1} of {name} is not a valid deflate stream ({exc})",
                                     hint="copy the file again from the observatory") from None
            if len(out) > limit:
                raise IngestRejected(
                    "oversized", f"tile {row + 1} of {name} inflates beyond its {limit} declared bytes "
                    f"(ZTILEn × |ZBITPIX|/8) from {count} compressed bytes; the file was not decompressed",
                    hint=hint)
            del out
    return declared

