"""Instrument and filter descriptions.

Instruments and filter systems are *data* (TOML files in ``instruments/data``), not code. This module loads them
into small frozen dataclasses and derives the geometry every step needs: where each amplifier's data, prescan and
overscan sit in a raw frame of a given layout, and where the amplifier lands in the assembled (trimmed) image.

Two raw layouts exist for the same camera (see ``docs/raw-format.md``):

``readout``
    What the controller reads: every amplifier block carries ``prescan_x`` serial prescan columns, ``amp_nx`` data
    columns, ``overscan_x`` serial overscan columns and ``amp_ny`` data rows followed by ``overscan_y`` parallel
    overscan rows (T80Cam: 9648 x 9340).
``archived``
    The trimmed frame kept in the archive: data only (T80Cam: 9216 x 9232); the amplifier sections are given by
    ``HIERARCH <prefix> DET OUTn X/Y/NX/NY`` header cards.

Blocks of amplifiers in the upper row are read from the top (``flip_top_y``) and those in the right half from the
right (``flip_right_x``): their prescan and overscan sit on the mirrored side of the block. Data pixels are always
stored in their physical orientation, so the data region of a raw frame maps onto the assembled image without flips.

Every instrument file has a ``[site]`` table (name, longitude in degrees east-positive, latitude, height in metres,
IANA time zone): the observatory defines the observing nights of the instrument's frames (:mod:`upad.nights`).

Additional instruments can be described by dropping a TOML file of the same schema into a directory listed in the
``UPAD_INSTRUMENT_PATH`` environment variable; :func:`load_instrument` reads one file from any path.
"""
from __future__ import annotations

import datetime as dt
import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = [
    "Amplifier",
    "AmpSection",
    "Detector",
    "Filter",
    "FilterSystem",
    "Instrument",
    "Layout",
    "ReadMode",
    "Site",
    "available_instruments",
    "get_filter_system",
    "get_instrument",
    "load_instrument",
    "section_to_fits",
    "fits_to_section",
]

Slice2D = tuple[slice, slice]


@dataclass(frozen=True)
class Amplifier:
    """One readout amplifier (output) of a detector.

    Attributes
    ----------
    id : int
        1-based amplifier number, as in ``DET OUTn`` header cards.
    gain : float
        Gain in e-/ADU.
    read_noise : float
        Read noise in electrons at the reference read mode.
    full_well : float
        Saturation level in electrons.
    bias_level : float
        Nominal electronic offset in ADU.
    nonlinearity : tuple of float
        ``(c2, c3)`` with ``measured = linear + c2 * linear**2 + c3 * linear**3`` in bias-subtracted ADU.
    """

    id: int
    gain: float
    read_noise: float
    full_well: float
    bias_level: float
    nonlinearity: tuple[float, ...]


@dataclass(frozen=True)
class Detector:
    """One CCD: its amplifiers and its position in the focal plane (pixels)."""

    id: int
    name: str
    x0: int
    y0: int
    amplifiers: tuple[Amplifier, ...]


@dataclass(frozen=True)
class ReadMode:
    """A readout mode of the controller."""

    name: str
    speed: str
    read_noise_factor: float


@dataclass(frozen=True)
class Site:
    """The observatory of an instrument (the ``[site]`` table of its file).

    Attributes
    ----------
    name : str
        Observatory name.
    longitude : float
        Degrees, east positive (Javalambre −1.0164).
    latitude : float
        Degrees, north positive.
    height : float
        Metres above sea level.
    timezone : str
        IANA time-zone name (``'Europe/Madrid'``), for people; nights use local *mean* time from the longitude.
    """

    name: str
    longitude: float
    latitude: float
    height: float
    timezone: str


@dataclass(frozen=True)
class Layout:
    """Amplifier layout of one detector (same for every detector of an instrument)."""

    n_amp_x: int
    n_amp_y: int
    amp_nx: int
    amp_ny: int
    prescan_x: int
    overscan_x: int
    overscan_y: int
    flip_top_y: bool
    flip_right_x: bool
    layouts: tuple[str, ...]
    default_layout: str

    @property
    def active_shape(self) -> tuple[int, int]:
        """(ny, nx) of the assembled, trimmed image of one detector."""
        return (self.n_amp_y * self.amp_ny, self.n_amp_x * self.amp_nx)

    @property
    def block_shape(self) -> tuple[int, int]:
        """(ny, nx) of one amplifier block in the readout layout."""
        return (self.amp_ny + self.overscan_y, self.prescan_x + self.amp_nx + self.overscan_x)

    def raw_shape(self, layout: str) -> tuple[int, int]:
        """(ny, nx) of a raw frame of one detector in ``layout``."""
        if layout == "archived":
            return self.active_shape
        if layout == "readout":
            by, bx = self.block_shape
            return (self.n_amp_y * by, self.n_amp_x * bx)
        raise ValueError(f"unknown raw layout {layout!r}; expected one of {self.layouts}")


@dataclass(frozen=True)
class AmpSection:
    """Where one amplifier lives in a raw frame and in the assembled image.

    All regions are ``(slice_y, slice_x)`` tuples usable directly on numpy arrays. Overscan regions are ``None``
    in the archived layout.
    """

    index: int
    amplifier: Amplifier
    ix: int
    iy: int
    data: Slice2D
    active: Slice2D
    prescan: Slice2D | None
    overscan_x: Slice2D | None
    overscan_y: Slice2D | None
    read_flip_x: bool
    read_flip_y: bool


@dataclass(frozen=True)
class Instrument:
    """A camera on a telescope, loaded from its description file."""

    key: str
    name: str
    telescope: str
    telescope_header: str
    origin: str
    header_prefix: str
    detector_name: str
    file_prefix: str
    filter_system: str
    pixel_scale: float
    pixel_size_um: float
    focal_length_mm: float
    plate_scale: float
    cd_sign_x: int
    cd_sign_y: int
    adc_max: int
    bzero: int
    dark_current: float
    read_modes: tuple[ReadMode, ...]
    default_read_mode: str
    layout: Layout
    detectors: tuple[Detector, ...]
    site: Site
    #: First night the camera took data that may be ingested (its first light / commissioning, ``service_start`` in
    #: the file); ``None``: not declared (ingest then applies ``ingest.limits.oldest_date``).
    service_start: dt.date | None = None
    #: Longest exposure the camera can take, seconds (``max_exptime_s`` in the file); ``None``: not declared (ingest
    #: then applies ``ingest.limits.max_exptime_s``).
    max_exptime_s: float | None = None
    source: str = field(default="", compare=False)

    @property
    def n_amplifiers(self) -> int:
        return self.layout.n_amp_x * self.layout.n_amp_y

    def read_mode(self, name: str | None) -> ReadMode:
        """Return the read mode called ``name`` (default mode for ``None``)."""
        name = name or self.default_read_mode
        for mode in self.read_modes:
            if mode.name == name:
                return mode
        known = ", ".join(m.name for m in self.read_modes)
        raise KeyError(f"{self.name} has no read mode {name!r} (known: {known})")

    def raw_shape(self, layout: str | None = None) -> tuple[int, int]:
        return self.layout.raw_shape(layout or self.layout.default_layout)

    def amp_sections(self, layout: str | None = None, detector: int = 1) -> list[AmpSection]:
        """Geometry of every amplifier of ``detector`` for raw ``layout``.

        Amplifiers are numbered row by row from the lower left, ``id = iy * n_amp_x + ix + 1``.
        """
        lay = self.layout
        layout = layout or lay.default_layout
        if layout not in ("readout", "archived"):
            raise ValueError(f"unknown raw layout {layout!r}; expected 'readout' or 'archived'")
        det = self.detector(detector)
        by, bx = lay.block_shape
        out: list[AmpSection] = []
        for iy in range(lay.n_amp_y):
            for ix in range(lay.n_amp_x):
                k = iy * lay.n_amp_x + ix
                fy = lay.flip_top_y and iy >= lay.n_amp_y / 2
                fx = lay.flip_right_x and ix >= lay.n_amp_x / 2
                ay0, ax0 = iy * lay.amp_ny, ix * lay.amp_nx
                active = (slice(ay0, ay0 + lay.amp_ny), slice(ax0, ax0 + lay.amp_nx))
                if layout == "archived":
                    out.append(AmpSection(k, det.amplifiers[k], ix, iy, active, active, None, None, None, fx, fy))
                    continue
                y0, x0 = iy * by, ix * bx
                # columns: [prescan | data | overscan] read left to right, mirrored when read from the right
                if fx:
                    osx = (x0, x0 + lay.overscan_x)
                    dx = (osx[1], osx[1] + lay.amp_nx)
                    psx = (dx[1], dx[1] + lay.prescan_x)
                else:
                    psx = (x0, x0 + lay.prescan_x)
                    dx = (psx[1], psx[1] + lay.amp_nx)
                    osx = (dx[1], dx[1] + lay.overscan_x)
                # rows: data then parallel overscan, mirrored when read from the top
                if fy:
                    osy = (y0, y0 + lay.overscan_y)
                    dy = (osy[1], osy[1] + lay.amp_ny)
                else:
                    dy = (y0, y0 + lay.amp_ny)
                    osy = (dy[1], dy[1] + lay.overscan_y)
                data = (slice(*dy), slice(*dx))
                prescan = (slice(*dy), slice(*psx)) if lay.prescan_x else None
                overscan_x = (slice(*dy), slice(*osx)) if lay.overscan_x else None
                overscan_y = (slice(*osy), slice(*dx)) if lay.overscan_y else None
                out.append(AmpSection(k, det.amplifiers[k], ix, iy, data, active, prescan, overscan_x,
                                      overscan_y, fx, fy))
        return out

    def detector(self, det_id: int) -> Detector:
        for det in self.detectors:
            if det.id == det_id:
                return det
        raise KeyError(f"{self.name} has no detector {det_id}")


@dataclass(frozen=True)
class Filter:
    """One filter of a filter system. Wavelengths in Angstrom, magnitudes AB."""

    name: str
    id: int
    cwl: float
    fwhm: float
    alias: tuple[str, ...]
    zp: float
    sky: float
    exptime: float
    fringing: bool
    extinction: float


@dataclass(frozen=True)
class FilterSystem:
    """A named set of filters (J-PLUS, J-PAS)."""

    system: str
    reference_filter: str
    filters: tuple[Filter, ...]

    def __getitem__(self, name: str) -> Filter:
        f = self.lookup(name)
        if f is None:
            known = ", ".join(x.name for x in self.filters)
            raise KeyError(f"filter {name!r} is not in the {self.system} system (known: {known})")
        return f

    def lookup(self, name: str) -> Filter | None:
        """Find a filter by its name or one of its aliases (case-insensitive); ``None`` if unknown."""
        key = name.strip().lower()
        for f in self.filters:
            if f.name.lower() == key or key in (a.lower() for a in f.alias):
                return f
        return None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]


def _search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("UPAD_INSTRUMENT_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(str(resources.files("upad.instruments") / "data")))
    return dirs


def _find(filename: str) -> Path:
    for d in _search_dirs():
        p = d / filename
        if p.is_file():
            return p
    raise KeyError(filename)


def available_instruments() -> list[str]:
    """Keys of every instrument description found (``t80cam``, ``jpcam``, ``mini`` …)."""
    keys: set[str] = set()
    for d in _search_dirs():
        if d.is_dir():
            keys.update(p.stem for p in d.glob("*.toml") if not p.stem.startswith("filters_"))
    return sorted(keys)


@lru_cache(maxsize=None)
def get_instrument(key: str) -> Instrument:
    """Load the instrument description ``key`` (case-insensitive file stem, e.g. ``"t80cam"``)."""
    key = key.lower()
    try:
        path = _find(f"{key}.toml")
    except KeyError:
        raise KeyError(f"unknown instrument {key!r}; known: {', '.join(available_instruments())}") from None
    return load_instrument(path)


def _site(d: dict, path: Path) -> Site:
    site = d.get("site")
    keys = ("name", "longitude", "latitude", "height", "timezone")
    if not isinstance(site, dict) or any(k not in site for k in keys):
        raise ValueError(f"{path}: the instrument file needs a [site] table with {', '.join(keys)} (longitude in "
                         "degrees east-positive, height in metres, timezone an IANA name such as 'Europe/Madrid')")
    out = Site(name=str(site["name"]), longitude=float(site["longitude"]), latitude=float(site["latitude"]),
               height=float(site["height"]), timezone=str(site["timezone"]))
    if not -180.0 <= out.longitude <= 180.0 or not -90.0 <= out.latitude <= 90.0:
        raise ValueError(f"{path}: [site] longitude {out.longitude} / latitude {out.latitude} out of range "
                         "(longitude -180..180 east-positive, latitude -90..90)")
    return out


def _service_start(value: object, path: Path) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{path}: service_start = {value!r} is not a date (write e.g. service_start = 2015-01-01)") \
            from None


def _max_exptime(value: object, path: Path) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out = float("nan")
    if not out > 0 or out == float("inf"):
        raise ValueError(f"{path}: max_exptime_s = {value!r} must be a positive number of seconds")
    return out


def load_instrument(path: str | os.PathLike) -> Instrument:
    """Read an instrument description file (the schema of ``instruments/data/*.toml``) from any path.

    :func:`get_instrument` finds files by key; a file elsewhere becomes known by putting its directory in
    ``UPAD_INSTRUMENT_PATH``.

    Raises
    ------
    ValueError
        The file does not follow the schema (e.g. no ``[site]`` table).
    """
    path = Path(path)
    d = tomllib.loads(path.read_text())
    lay = d["layout"]
    layout = Layout(
        n_amp_x=lay["n_amp_x"], n_amp_y=lay["n_amp_y"], amp_nx=lay["amp_nx"], amp_ny=lay["amp_ny"],
        prescan_x=lay["prescan_x"], overscan_x=lay["overscan_x"], overscan_y=lay["overscan_y"],
        flip_top_y=lay["flip_top_y"], flip_right_x=lay["flip_right_x"], layouts=tuple(lay["layouts"]),
        default_layout=lay["default_layout"],
    )
    n_amp = layout.n_amp_x * layout.n_amp_y
    detectors = []
    for det in d["detector"]:
        amps = tuple(
            Amplifier(id=a["id"], gain=a["gain"], read_noise=a["read_noise"], full_well=a["full_well"],
                      bias_level=a["bias_level"], nonlinearity=tuple(a["nonlinearity"]))
            for a in det["amplifier"]
        )
        if len(amps) != n_amp:
            raise ValueError(f"{path}: detector {det['id']} lists {len(amps)} amplifiers, layout needs {n_amp}")
        detectors.append(Detector(id=det["id"], name=det["name"], x0=det["x0"], y0=det["y0"], amplifiers=amps))
    return Instrument(
        key=d["key"], name=d["name"], telescope=d["telescope"], telescope_header=d["telescope_header"],
        origin=d["origin"], header_prefix=d["header_prefix"], detector_name=d["detector_name"],
        file_prefix=d["file_prefix"], filter_system=d["filter_system"], pixel_scale=d["pixel_scale"],
        pixel_size_um=d["pixel_size_um"], focal_length_mm=d["focal_length_mm"], plate_scale=d["plate_scale"],
        cd_sign_x=d["cd_sign_x"], cd_sign_y=d["cd_sign_y"], adc_max=d["adc_max"], bzero=d["bzero"],
        dark_current=d["dark_current"],
        read_modes=tuple(ReadMode(**m) for m in d["read_modes"]), default_read_mode=d["default_read_mode"],
        layout=layout, detectors=tuple(detectors), site=_site(d, path),
        service_start=_service_start(d.get("service_start"), path),
        max_exptime_s=_max_exptime(d.get("max_exptime_s"), path), source=str(path),
    )


@lru_cache(maxsize=None)
def get_filter_system(system: str) -> FilterSystem:
    """Load a filter system (``"jplus"`` or ``"jpas"``)."""
    try:
        path = _find(f"filters_{system.lower()}.toml")
    except KeyError:
        raise KeyError(f"unknown filter system {system!r}; known: jplus, jpas") from None
    d = tomllib.loads(path.read_text())
    filters = tuple(
        Filter(name=f["name"], id=f["id"], cwl=f["cwl"], fwhm=f["fwhm"], alias=tuple(f["alias"]), zp=f["zp"],
               sky=f["sky"], exptime=f["exptime"], fringing=f["fringing"], extinction=f["extinction"])
        for f in d["filter"]
    )
    return FilterSystem(system=d["system"], reference_filter=d["reference_filter"], filters=filters)


def section_to_fits(region: Slice2D) -> str:
    """Numpy ``(slice_y, slice_x)`` → FITS section string ``'[x1:x2,y1:y2]'`` (1-based, inclusive)."""
    sy, sx = region
    return f"[{sx.start + 1}:{sx.stop},{sy.start + 1}:{sy.stop}]"


def fits_to_section(text: str) -> Slice2D:
    """FITS section string ``'[x1:x2,y1:y2]'`` → numpy ``(slice_y, slice_x)``."""
    body = text.strip().strip("[]")
    try:
        xs, ys = body.split(",")
        x1, x2 = (int(v) for v in xs.split(":"))
        y1, y2 = (int(v) for v in ys.split(":"))
    except ValueError:
        raise ValueError(f"malformed FITS section {text!r}; expected '[x1:x2,y1:y2]'") from None
    if x2 < x1 or y2 < y1:
        raise ValueError(f"reversed FITS section {text!r} is not supported")
    return (slice(y1 - 1, y2), slice(x1 - 1, x2))
