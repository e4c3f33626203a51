"""The survey tiling as data: pointings, their pixel grids, neighbours, footprints and tile ids.

A *tiling* covers the sky (or a band of it) with *pointings* of one camera. It is fixed by three numbers, the
instrument, the overlap and the grid margin (plus the id of the first pointing), and is the same whatever part of it
a survey uses: a footprint only selects pointings of the all-sky tiling, so a pointing keeps its id and its pixel
grid when the footprint grows.

Construction (declination bands, as survey tilings do):

* the sky is cut into ``n + 1`` declination bands of height ``s = 180° / n``: band ``k`` is centred on
  ``δ_k = −90° + k s``; bands 0 and ``n`` are the polar caps, one pointing each, centred on the pole;
* band ``k`` is cut in right ascension into ``m_k`` equal *cells*, centred on ``α = j · 360° / m_k``; each cell gets
  one pointing at its centre;
* ``m_k`` is the smallest number for which the whole cell, seen in the gnomonic (TAN) projection of its pointing,
  lies inside the camera field shrunk by half the overlap on every side. The test is made at the cell's corners and
  along its edges, so it holds at the band's edge farthest from the equator, where meridians converge (the cos δ
  effect) and where the cell's parallel bulges towards the pole in the tangent plane;
* ``n`` is the smallest that lets every band and the caps fit, tried up to a few more, keeping the one with the
  fewest pointings.

Every point of the sky lies in one cell; a cell lies inside its pointing's field with at least half the overlap to
spare, so every point is covered and the fields of two neighbours (cells that touch) overlap by at least
``overlap_arcmin`` across their common boundary. Margins are angles on the sky: the half overlap is enlarged by the
gnomonic scale at the field's corner (``1 / cos² θ``).

The *field* of a camera is the bounding box of its detectors in the focal plane (T80Cam: 9216 × 9232 pixels of
0.55″ = 1.408° × 1.410°; JPCam: the box around its 14 CCDs, which is larger than the area they cover); the pointing is
the centre of that box. A pointing's *pixel grid* (:func:`tile_grid`) is a TAN projection centred on the pointing
with the instrument's pixel scale and orientation (``CD = diag(cd_sign_x, cd_sign_y) · scale``, north up, east
left), covering the field plus ``grid_margin_arcmin`` on every side (room for dithers and pointing errors); at the
poles, where the orientation of a north-up exposure turns with its right ascension, a square that holds the field
at any rotation. All filters of a pointing share it.

Ids (the J-PLUS archive's, see ``docs/tiling.md``):

* a pointing's id is ``first_id`` plus its index in the all-sky tiling, counted band by band from the south polar
  cap, in increasing right ascension within a band; its name is ``TILE-%05d`` (what the simulator writes in
  ``OBJECT`` and ingest reads back as the frame's tile id); it is also the ``ref_tile_id`` of every filter there;
* a (pointing, filter) tile has ``tile_id = ref_tile_id * 100 + filter id``, the filter id being the one of the
  instrument's filter system (``instruments/data/filters_*.toml``: J-PLUS 1–12, J-PAS 1–60);
  :func:`split_tile_id` inverts it.

Everything here is pure computation; :mod:`upad.coadd.survey` stores tilings in the database.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from astropy.wcs import WCS

from upad.config import StepConfig, param
from upad.errors import UpadError
from upad.instruments import Instrument, get_filter_system, get_instrument

__all__ = [
    "ALGORITHM_VERSION",
    "FILTER_ID_BASE",
    "CameraField",
    "Pointing",
    "SkyBox",
    "SkyPolygon",
    "TilingConfig",
    "TilingGeometry",
    "camera_field",
    "filter_index",
    "generate_tiling",
    "grid_cards",
    "in_footprint",
    "locate",
    "neighbours",
    "on_grid",
    "grid_overlap",
    "pointing_by_id",
    "split_tile_id",
    "centred_grid",
    "tile_grid",
    "tile_id",
    "tile_name",
    "tiling_geometry",
    "tiling_key",
]

#: Version of the construction above: part of :func:`tiling_key`, so that a changed algorithm is never mistaken for
#: the tiling already stored.
ALGORITHM_VERSION = 1

#: ``tile_id = ref_tile_id * FILTER_ID_BASE + filter id``; filter ids must stay below it.
FILTER_ID_BASE = 100

#: Largest id a database ``INTEGER`` column holds.
_MAX_ID = 2**31 - 1

_EPS = 1e-9  # degrees: tolerance of the fit tests (rounding only)
_EDGE_SAMPLES = 17  # points per cell edge in the fit test (corners included; the extremes are at corners/middles)


@dataclass(frozen=True)
class TilingConfig(StepConfig):
    """Parameters of a survey tiling (``upad tiles generate`` options default to these)."""

    overlap_arcmin: float = param(3.0, bounds=(0.0, 60.0), unit="arcmin",
                                  doc="smallest overlap of the fields of neighbouring pointings, measured on the sky "
                                      "across the boundary of their cells (J-PLUS: a few arcminutes)")
    grid_margin_arcmin: float = param(1.0, bounds=(0.0, 60.0), unit="arcmin",
                                      doc="margin added on every side of the camera field to a tile's pixel grid, so "
                                          "that dithered exposures (~10 arcsec offsets) and pointing errors stay on "
                                          "the grid")
    first_id: int = param(1, bounds=(1, None),
                          doc="id of the first pointing of the all-sky tiling (the south polar cap); the others "
                              "follow band by band; raise it to keep clear of tile ids already in the database")
    exposures_per_filter: int = param(3, bounds=(1, 1000),
                                      doc="exposures planned per tile and filter (J-PLUS: 3 dithered exposures)")
    max_pointings: int = param(250_000, bounds=(1, None), critical=False,
                               doc="most pointings one `upad tiles generate` makes: a guard against the whole-sky "
                                   "tiling of a small camera (mini: 3.7 million); raise it knowingly")


_DEFAULTS = TilingConfig()


# ------------------------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraField:
    """The field of a camera: the bounding box of its detectors in the focal plane.

    Attributes
    ----------
    instrument : str
        Instrument key.
    nx, ny : int
        Size of the box in pixels (along the x axis, east–west, and the y axis, north–south).
    pixel_scale : float
        Arcsec per pixel.
    cd_sign_x, cd_sign_y : int
        Orientation of the pixel axes on the sky (the instrument's).
    """

    instrument: str
    nx: int
    ny: int
    pixel_scale: float
    cd_sign_x: int
    cd_sign_y: int

    @property
    def width_deg(self) -> float:
        """Field width (x axis), degrees of the tangent plane."""
        return self.nx * self.pixel_scale / 3600.0

    @property
    def height_deg(self) -> float:
        """Field height (y axis), degrees of the tangent plane."""
        return self.ny * self.pixel_scale / 3600.0


def _instrument(instrument: str | Instrument) -> Instrument:
    if isinstance(instrument, Instrument):
        return instrument
    try:
        return get_instrument(instrument)
    except KeyError as exc:
        raise UpadError(str(exc.args[0]), hint="pass one of the known instrument keys (e.g. --instrument t80cam)") \
            from None


def camera_field(instrument: str | Instrument) -> CameraField:
    """The field of ``instrument`` (a key such as ``"t80cam"`` or an :class:`~upad.instruments.Instrument`)."""
    inst = _instrument(instrument)
    ny, nx = inst.layout.active_shape
    x_lo = min(d.x0 for d in inst.detectors)
    y_lo = min(d.y0 for d in inst.detectors)
    x_hi = max(d.x0 + nx for d in inst.detectors)
    y_hi = max(d.y0 + ny for d in inst.detectors)
    return CameraField(instrument=inst.key, nx=x_hi - x_lo, ny=y_hi - y_lo, pixel_scale=float(inst.pixel_scale),
                       cd_sign_x=int(inst.cd_sign_x), cd_sign_y=int(inst.cd_sign_y))


def _to_tangent(ra0: Any, dec0: Any, ra: Any, dec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0), all in degrees (broadcast): ξ (east), η (north) in degrees of the
    tangent plane, and cos of the distance to the centre (≤ 0: the far hemisphere, not projectable)."""
    a = np.radians(np.asarray(ra, dtype=float) - ra0)
    d = np.radians(np.asarray(dec, dtype=float))
    d0 = np.radians(np.asarray(dec0, dtype=float))
    cosc = np.sin(d) * np.sin(d0) + np.cos(d) * np.cos(d0) * np.cos(a)
    safe = np.where(cosc > 0, cosc, 1.0)
    xi = np.cos(d) * np.sin(a) / safe
    eta = (np.sin(d) * np.cos(d0) - np.cos(d) * np.sin(d0) * np.cos(a)) / safe
    return np.degrees(xi), np.degrees(eta), cosc


def _fit_margins(field: CameraField, overlap_deg: float) -> tuple[float, float]:
    """Half width and half height (tangent-plane degrees) that a cell must fit in: the field less half the overlap,
    the overlap enlarged by the gnomonic scale at the field corner so that it holds as an angle on the sky."""
    w2, h2 = field.width_deg / 2, field.height_deg / 2
    theta = math.atan(math.radians(math.hypot(w2, h2)))
    m = overlap_deg / 2 / math.cos(theta) ** 2
    return w2 - m, h2 - m


def _cells_fit(dec0: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, half_dra: np.ndarray, hw: float,
               hh: float) -> np.ndarray:
    """Whether each band cell (centre dec0, dec limits, half width in RA, all degrees) lies inside |ξ| ≤ hw,
    |η| ≤ hh of its pointing's tangent plane. Tested on the four edges (a meridian is a straight line in the tangent
    plane, so |ξ| peaks at corners; along a parallel |η| peaks at a corner or the middle): ``_EDGE_SAMPLES`` points
    each."""
    t = np.linspace(-1.0, 1.0, _EDGE_SAMPLES)[None, :]
    d0, lo, hi, h = (np.asarray(v, dtype=float)[:, None] for v in (dec0, dlo, dhi, half_dra))
    ones = np.ones((d0.shape[0], t.shape[1]))
    dec_side = lo + (t + 1) / 2 * (hi - lo)
    ra = np.concatenate([t * h, t * h, h * ones, -h * ones], axis=1)
    dec = np.concatenate([lo * ones, hi * ones, dec_side, dec_side], axis=1)
    xi, eta, cosc = _to_tangent(0.0, d0, ra, dec)
    return ((cosc > 1e-12).all(axis=1) & (np.abs(xi) <= hw + _EPS).all(axis=1)
            & (np.abs(eta) <= hh + _EPS).all(axis=1))


def _band_counts(dec0: np.ndarray, dlo: np.ndarray, dhi: np.ndarray, hw: float, hh: float) -> np.ndarray | None:
    """Smallest number of cells (≥ 3) per band that fit (:func:`_cells_fit`); ``None`` if some band cannot fit at
    any number (its height leaves no room)."""
    far = np.minimum(np.maximum(np.abs(dlo), np.abs(dhi)), 89.999)
    hi = np.maximum(3, np.ceil(360.0 * np.cos(np.radians(far)) / (2 * hw))).astype(np.int64)
    ok = _cells_fit(dec0, dlo, dhi, 180.0 / hi, hw, hh)
    while not ok.all():
        hi = np.where(ok, hi, hi * 2)
        if hi.max() > 2**24:
            return None
        ok = _cells_fit(dec0, dlo, dhi, 180.0 / hi, hw, hh)
    lo = np.full_like(hi, 2)  # fewer than 3 cells are never used (a cell would span ≥ 180° of RA)
    while (hi - lo > 1).any():
        active = hi - lo > 1
        mid = (lo + hi) // 2
        fit = _cells_fit(dec0, dlo, dhi, 180.0 / mid, hw, hh)
        hi = np.where(active & fit, mid, hi)
        lo = np.where(active & ~fit, mid, lo)
    return hi


@dataclass(frozen=True)
class TilingGeometry:
    """The all-sky tiling of one camera for one overlap: the declination bands and their pointing counts.

    Band ``k`` (0 … ``n_steps``) is centred on ``−90 + k · step_deg``; bands 0 and ``n_steps`` are the polar caps.
    ``band_offset[k]`` is the all-sky index of the band's first pointing.
    """

    field: CameraField
    overlap_arcmin: float
    step_deg: float
    band_dec: tuple[float, ...]
    band_count: tuple[int, ...]
    band_offset: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return len(self.band_dec) - 1

    @property
    def n_pointings(self) -> int:
        """Pointings of the all-sky tiling."""
        return self.band_offset[-1] + self.band_count[-1]

    def band_limits(self, k: int) -> tuple[float, float]:
        """Declination limits of the cells of band ``k`` (degrees)."""
        d = self.band_dec[k]
        return max(-90.0, d - self.step_deg / 2), min(90.0, d + self.step_deg / 2)


@lru_cache(maxsize=32)
def _geometry(field: CameraField, overlap_arcmin: float) -> TilingGeometry:
    overlap = overlap_arcmin / 60.0
    hw, hh = _fit_margins(field, overlap)
    if hw <= 0 or hh <= 0:
        raise UpadError(f"an overlap of {overlap_arcmin:g} arcmin leaves no room in the {field.width_deg:.3f}° × "
                        f"{field.height_deg:.3f}° field of {field.instrument}",
                        hint=f"use an overlap well below {60 * min(field.width_deg, field.height_deg):.0f} arcmin")
    n0 = max(2, math.ceil(180.0 / (2 * hh)))
    best: tuple[int, np.ndarray, float] | None = None
    for n in range(n0, n0 + 8):
        step = 180.0 / n
        if math.degrees(math.tan(math.radians(step / 2))) > min(hw, hh) + _EPS:
            continue  # the polar cap would not fit in the field
        dec = -90.0 + step * np.arange(1, n)
        counts = _band_counts(dec, dec - step / 2, dec + step / 2, hw, hh)
        if counts is None:
            continue
        total = int(counts.sum()) + 2
        if best is None or total < int(best[1].sum()) + 2:
            best = (n, counts, step)
    if best is None:
        raise UpadError(f"no tiling of {field.instrument} with an overlap of {overlap_arcmin:g} arcmin could be built",
                        hint="use a smaller overlap")
    n, counts, step = best
    band_count = (1, *(int(c) for c in counts), 1)
    offsets = np.concatenate([[0], np.cumsum(band_count)[:-1]])
    return TilingGeometry(field=field, overlap_arcmin=float(overlap_arcmin), step_deg=step,
                          band_dec=tuple(float(-90.0 + step * k) for k in range(n + 1)),
                          band_count=band_count, band_offset=tuple(int(o) for o in offsets))


def tiling_geometry(instrument: str | Instrument, overlap_arcmin: float = _DEFAULTS.overlap_arcmin) -> TilingGeometry:
    """The all-sky tiling geometry of ``instrument`` for ``overlap_arcmin`` (computed once, then cached)."""
    return _geometry(camera_field(instrument), float(overlap_arcmin))


def tiling_key(instrument: str | Instrument, *, overlap_arcmin: float = _DEFAULTS.overlap_arcmin,
               grid_margin_arcmin: float = _DEFAULTS.grid_margin_arcmin, first_id: int = _DEFAULTS.first_id) -> str:
    """A readable key naming a tiling (what makes two tilings the same); stored with each pointing."""
    key = _instrument(instrument).key
    return (f"{key} overlap={float(overlap_arcmin):g}' margin={float(grid_margin_arcmin):g}' first_id={int(first_id)} "
            f"v{ALGORITHM_VERSION}")


# ------------------------------------------------------------------------------------------------------------------
# pointings
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pointing:
    """One pointing of a tiling: its id, centre, cell and pixel grid.

    Attributes
    ----------
    id : int
        Pointing id (the ``ref_tile_id`` of every filter observed there); ``tiles.id`` in the database.
    name : str
        ``TILE-%05d`` of the id (the ``OBJECT`` of its frames).
    ra, dec : float
        Centre, degrees (J2000).
    instrument : str
        Instrument key.
    naxis1, naxis2 : int
        Size of the pixel grid (x, y).
    pixel_scale : float
        Arcsec per pixel of the grid.
    cd_sign_x, cd_sign_y : int
        Orientation of the grid axes (the instrument's).
    band, index, band_size : int
        Declination band, position in the band, pointings in the band.
    dec_lo, dec_hi, ra_lo, ra_hi : float
        The cell of the sky this pointing is responsible for (``ra_lo`` may be negative and ``ra_hi`` above 360: the
        cell is ``ra ± (ra_hi − ra_lo) / 2`` modulo 360; the polar caps span 0–360).
    tiling : str
        :func:`tiling_key` of its tiling.
    """

    id: int
    name: str
    ra: float
    dec: float
    instrument: str
    naxis1: int
    naxis2: int
    pixel_scale: float
    cd_sign_x: int
    cd_sign_y: int
    band: int
    index: int
    band_size: int
    dec_lo: float
    dec_hi: float
    ra_lo: float
    ra_hi: float
    tiling: str

    @property
    def ref_tile_id(self) -> int:
        """The id shared by every filter of this pointing (= :attr:`id`)."""
        return self.id

    @property
    def is_cap(self) -> bool:
        """A polar cap (its cell is a disc around the pole)."""
        return self.band_size == 1

    @property
    def ra_half_width(self) -> float:
        """Half the cell's width in RA, degrees."""
        return (self.ra_hi - self.ra_lo) / 2


def tile_name(pointing_id: int) -> str:
    """``TILE-%05d``: the name of a pointing (the simulator's ``OBJECT``; ingest reads the trailing integer)."""
    return f"TILE-{int(pointing_id):05d}"


def _grid_size(field: CameraField, margin_arcmin: float, *, cap: bool = False) -> tuple[int, int]:
    """Grid size (x, y): the field plus the margin on every side; at a pole, where "north up" turns with the
    right ascension of each exposure, a square holding the field at any rotation."""
    pad = math.ceil(margin_arcmin * 60.0 / field.pixel_scale - 1e-9)
    if cap:
        side = math.ceil(math.hypot(field.nx, field.ny)) + 2 * pad
        return side, side
    return field.nx + 2 * pad, field.ny + 2 * pad


def _pointing(geom: TilingGeometry, k: int, j: int, *, margin_arcmin: float, first_id: int, key: str) -> Pointing:
    field = geom.field
    count = geom.band_count[k]
    nx, ny = _grid_size(field, margin_arcmin, cap=count == 1)
    dlo, dhi = geom.band_limits(k)
    pid = first_id + geom.band_offset[k] + j
    if count == 1:
        ra, ra_lo, ra_hi = 0.0, 0.0, 360.0
    else:
        ra = j * 360.0 / count
        ra_lo, ra_hi = ra - 180.0 / count, ra + 180.0 / count
    return Pointing(id=pid, name=tile_name(pid), ra=ra, dec=geom.band_dec[k], instrument=field.instrument,
                    naxis1=nx, naxis2=ny, pixel_scale=field.pixel_scale, cd_sign_x=field.cd_sign_x,
                    cd_sign_y=field.cd_sign_y, band=k, index=j, band_size=count, dec_lo=dlo, dec_hi=dhi,
                    ra_lo=ra_lo, ra_hi=ra_hi, tiling=key)


def _check_first_id(geom: TilingGeometry, first_id: int) -> None:
    if first_id < 1:
        raise UpadError(f"first_id must be >= 1, got {first_id}", hint="pointing ids start at 1 (--first-id)")
    last = first_id + geom.n_pointings - 1
    if last * FILTER_ID_BASE + FILTER_ID_BASE - 1 > _MAX_ID:
        raise UpadError(f"with first_id={first_id} the tile ids of the {geom.n_pointings} pointings of this tiling "
                        f"would exceed {_MAX_ID} (tile_id = pointing id × {FILTER_ID_BASE} + filter id)",
                        hint=f"use a first id below {(_MAX_ID // FILTER_ID_BASE) - geom.n_pointings}")


def _check_ranges(dec_range: tuple[float, float], ra_range: tuple[float, float] | None) -> None:
    dlo, dhi = (float(v) for v in dec_range)
    if not (-90.0 <= dlo < dhi <= 90.0):
        raise UpadError(f"declination range {dlo:g}..{dhi:g} is not a range within -90..90",
                        hint="give --dec-min below --dec-max, both between -90 and 90 degrees")
    if ra_range is not None:
        rlo, rhi = (float(v) for v in ra_range)
        if not (0.0 <= rlo <= 360.0 and 0.0 <= rhi <= 360.0) or rlo == rhi:
            raise UpadError(f"right-ascension range {rlo:g}..{rhi:g} is not a range within 0..360",
                            hint="give --ra-min and --ra-max in degrees, 0..360 (--ra-min above --ra-max wraps "
                                 "through 0, e.g. 330..30)")


def _ra_intervals(ra_range: tuple[float, float] | None) -> list[tuple[float, float]]:
    """RA range as intervals within [0, 360]; ``lo > hi`` wraps through 0."""
    if ra_range is None:
        return [(0.0, 360.0)]
    lo, hi = float(ra_range[0]), float(ra_range[1])
    return [(lo, hi)] if lo < hi else [(lo, 360.0), (0.0, hi)]


def _cells_meet_ra(centre: np.ndarray, half: np.ndarray, intervals: list[tuple[float, float]],
                   closed: bool = False) -> np.ndarray:
    """Whether RA cells ``centre ± half`` (degrees, may wrap) meet any interval (open, or closed if ``closed``)."""
    out = np.zeros(np.shape(centre), dtype=bool)
    for lo, hi in intervals:
        if hi - lo >= 360.0:
            return np.ones(np.shape(centre), dtype=bool)
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        dist = np.abs((np.asarray(centre) - mid + 180.0) % 360.0 - 180.0)
        out |= (dist <= half + rad + _EPS) if closed else (dist < half + rad - _EPS)
    return out


def generate_tiling(*, instrument: str | Instrument, overlap_arcmin: float = _DEFAULTS.overlap_arcmin,
                    grid_margin_arcmin: float = _DEFAULTS.grid_margin_arcmin,
                    dec_range: tuple[float, float] = (-90.0, 90.0), ra_range: tuple[float, float] | None = None,
                    first_id: int = _DEFAULTS.first_id, max_pointings: int | None = None) -> list[Pointing]:
    """The pointings of the all-sky tiling of ``instrument`` whose cell meets a declination band / RA range.

    Parameters
    ----------
    instrument : str or Instrument
        Camera (``"t80cam"``, ``"jpcam"``, ``"mini"`` …).
    overlap_arcmin : float
        Smallest overlap of neighbouring fields, arcmin (:class:`TilingConfig`).
    grid_margin_arcmin : float
        Margin of the pixel grid around the field, arcmin.
    dec_range : (float, float)
        Declination band, degrees; every point of it is covered by the pointings returned.
    ra_range : (float, float) or None
        Right-ascension range, degrees (``lo > hi`` wraps through 0); ``None``: all.
    first_id : int
        Id of the first pointing of the all-sky tiling; the ids of a band do not depend on the ranges.
    max_pointings : int or None
        Refuse (:class:`~upad.errors.UpadError`) to make more pointings than this; ``None``: no limit.

    Returns
    -------
    list of Pointing
        Ordered by id.
    """
    _check_ranges(dec_range, ra_range)
    geom = tiling_geometry(instrument, overlap_arcmin)
    _check_first_id(geom, int(first_id))
    key = tiling_key(instrument, overlap_arcmin=overlap_arcmin, grid_margin_arcmin=grid_margin_arcmin,
                     first_id=first_id)
    dmin, dmax = float(dec_range[0]), float(dec_range[1])
    intervals = _ra_intervals(ra_range)
    selected: list[tuple[int, np.ndarray]] = []
    for k in range(len(geom.band_dec)):
        dlo, dhi = geom.band_limits(k)
        if not (dlo < dmax and dhi > dmin):
            continue
        count = geom.band_count[k]
        if count == 1:
            js = np.array([0])
        else:
            centres = np.arange(count) * 360.0 / count
            js = np.flatnonzero(_cells_meet_ra(centres, np.full(count, 180.0 / count), intervals))
        selected.append((k, js))
    total = sum(len(js) for _, js in selected)
    if max_pointings is not None and total > max_pointings:
        raise UpadError(f"the footprint holds {total} pointings of {geom.field.instrument}, more than the limit of "
                        f"{max_pointings}",
                        hint="choose a smaller footprint (--dec-min/--dec-max/--ra-min/--ra-max), or raise the limit "
                             "(--max-pointings) knowingly")
    return [_pointing(geom, k, int(j), margin_arcmin=grid_margin_arcmin, first_id=int(first_id), key=key)
            for k, js in selected for j in js]


def locate(ra: Any, dec: Any, *, instrument: str | Instrument, overlap_arcmin: float = _DEFAULTS.overlap_arcmin,
           first_id: int = _DEFAULTS.first_id) -> np.ndarray:
    """Id of the pointing whose cell holds each (ra, dec) (degrees; arrays broadcast)."""
    geom = tiling_geometry(instrument, overlap_arcmin)
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    k = np.clip(np.rint((dec + 90.0) / geom.step_deg), 0, geom.n_steps).astype(np.int64)
    count = np.asarray(geom.band_count)[k]
    j = np.mod(np.rint(ra * count / 360.0), count).astype(np.int64)
    return first_id + np.asarray(geom.band_offset)[k] + j


def pointing_by_id(pointing_id: int, *, instrument: str | Instrument,
                   overlap_arcmin: float = _DEFAULTS.overlap_arcmin,
                   grid_margin_arcmin: float = _DEFAULTS.grid_margin_arcmin,
                   first_id: int = _DEFAULTS.first_id) -> Pointing:
    """The pointing of a tiling with id ``pointing_id``."""
    geom = tiling_geometry(instrument, overlap_arcmin)
    index = int(pointing_id) - int(first_id)
    if not 0 <= index < geom.n_pointings:
        raise UpadError(f"pointing {pointing_id} is not in this tiling (ids {first_id}..{first_id + geom.n_pointings - 1})",
                        hint="check the id and the tiling's first id")
    k = int(np.searchsorted(geom.band_offset, index, side="right")) - 1
    key = tiling_key(instrument, overlap_arcmin=overlap_arcmin, grid_margin_arcmin=grid_margin_arcmin,
                     first_id=first_id)
    return _pointing(geom, k, index - geom.band_offset[k], margin_arcmin=grid_margin_arcmin, first_id=int(first_id),
                     key=key)


# ------------------------------------------------------------------------------------------------------------------
# pixel grids
# ------------------------------------------------------------------------------------------------------------------

def grid_cards(pointing: Pointing) -> dict[str, Any]:
    """FITS WCS cards of a pointing's pixel grid (TAN, centred, 1-based ``CRPIX``), with ``NAXIS1``/``NAXIS2``."""
    s = pointing.pixel_scale / 3600.0
    return {
        "NAXIS1": pointing.naxis1, "NAXIS2": pointing.naxis2,
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": float(pointing.ra), "CRVAL2": float(pointing.dec),
        "CRPIX1": (pointing.naxis1 + 1) / 2.0, "CRPIX2": (pointing.naxis2 + 1) / 2.0,
        "CD1_1": pointing.cd_sign_x * s, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": pointing.cd_sign_y * s,
        "RADESYS": "ICRS",
    }


def centred_grid(ra: float, dec: float, *, pixel_scale: float, naxis1: int, naxis2: int, cd_sign_x: int = -1,
                 cd_sign_y: int = 1) -> WCS:
    """A TAN grid centred on ``(ra, dec)`` (degrees; 1-based ``CRPIX`` at the centre of ``naxis1 × naxis2``
    pixels) at ``pixel_scale`` (arcsec) with the camera's orientation: the cards of :func:`grid_cards`."""
    s = pixel_scale / 3600.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [float(ra), float(dec)]
    wcs.wcs.crpix = [(naxis1 + 1) / 2.0, (naxis2 + 1) / 2.0]
    wcs.wcs.cd = [[cd_sign_x * s, 0.0], [0.0, cd_sign_y * s]]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    wcs.pixel_shape = (int(naxis1), int(naxis2))
    return wcs


def tile_grid(pointing: Pointing) -> tuple[WCS, tuple[int, int]]:
    """The pixel grid every filter of ``pointing`` is coadded on: its WCS and the numpy shape ``(naxis2, naxis1)``."""
    wcs = centred_grid(pointing.ra, pointing.dec, pixel_scale=pointing.pixel_scale, naxis1=pointing.naxis1,
                       naxis2=pointing.naxis2, cd_sign_x=pointing.cd_sign_x, cd_sign_y=pointing.cd_sign_y)
    return wcs, (pointing.naxis2, pointing.naxis1)


def on_grid(pointing: Pointing, ra: Any, dec: Any) -> np.ndarray:
    """Whether each (ra, dec) (degrees) falls on ``pointing``'s pixel grid."""
    xi, eta, cosc = _to_tangent(pointing.ra, pointing.dec, ra, dec)
    half_x = pointing.naxis1 * pointing.pixel_scale / 7200.0
    half_y = pointing.naxis2 * pointing.pixel_scale / 7200.0
    return (cosc > 0) & (np.abs(xi) <= half_x) & (np.abs(eta) <= half_y)


# ------------------------------------------------------------------------------------------------------------------
# neighbours and footprints
# ------------------------------------------------------------------------------------------------------------------

def grid_overlap(wcs: WCS, shape: tuple[int, int], grid: WCS, grid_shape: tuple[int, int], *,
                 samples: int = 16) -> tuple[bool, float]:
    """Whether an image lands on a pixel grid, and how far apart their centres are (degrees).

    The image (``shape`` = (ny, nx), celestial ``wcs``) overlaps the grid (``grid_shape``) when its centre lies
    within 90° of the grid's (the hemisphere of its TAN projection) and its border, sampled at ``samples`` points per
    edge and mapped onto the grid through the sky, has a bounding box that meets the grid's pixels. The box test is
    conservative: a rotated image that only grazes a corner may pass (its pixels then fall outside the grid when
    resampled, and the coadd finds so).
    """
    ny, nx = (int(v) for v in shape)
    gy, gx = (int(v) for v in grid_shape)
    ra_c, dec_c = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    ra_g, dec_g = grid.pixel_to_world_values((gx - 1) / 2.0, (gy - 1) / 2.0)
    sep = float(_distance(ra_g, dec_g, ra_c, dec_c))
    if not np.isfinite(sep) or sep > 90.0:
        return False, sep
    xs = np.linspace(-0.5, nx - 0.5, samples)
    ys = np.linspace(-0.5, ny - 0.5, samples)
    bx = np.concatenate([xs, xs, np.full(samples, -0.5), np.full(samples, nx - 0.5)])
    by = np.concatenate([np.full(samples, -0.5), np.full(samples, ny - 0.5), ys, ys])
    ra, dec = wcs.pixel_to_world_values(bx, by)
    px, py = grid.world_to_pixel_values(ra, dec)
    ok = np.isfinite(px) & np.isfinite(py)
    if not ok.any():
        return False, sep
    px, py = px[ok], py[ok]
    meets = px.max() >= -0.5 and px.min() <= gx - 0.5 and py.max() >= -0.5 and py.min() <= gy - 0.5
    return bool(meets), sep


def _ra_touch(p: Pointing, q: Pointing) -> bool:
    if p.is_cap or q.is_cap:
        return True
    dist = abs((q.ra - p.ra + 180.0) % 360.0 - 180.0)
    return dist <= p.ra_half_width + q.ra_half_width + _EPS


def neighbours(pointing: Pointing, tiling: Iterable[Pointing]) -> list[Pointing]:
    """The pointings of ``tiling`` whose cell touches ``pointing``'s (along an edge or at a corner): those whose
    fields overlap it by at least the tiling's overlap. Ordered by id."""
    out = []
    for q in tiling:
        if q.id == pointing.id or q.tiling != pointing.tiling:
            continue
        if q.band == pointing.band:
            n = pointing.band_size
            if (q.index - pointing.index) % n in (1, n - 1):
                out.append(q)
        elif abs(q.band - pointing.band) == 1 and _ra_touch(pointing, q):
            out.append(q)
    return sorted(out, key=lambda q: q.id)


@dataclass(frozen=True)
class SkyBox:
    """A footprint given by ranges: declination ``dec_range`` and right ascension ``ra_range`` (degrees; ``lo > hi``
    wraps through 0; ``None``: all)."""

    dec_range: tuple[float, float] = (-90.0, 90.0)
    ra_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_ranges(self.dec_range, self.ra_range)


@dataclass(frozen=True)
class SkyPolygon:
    """A footprint given by the (ra, dec) vertices (degrees) of a spherical polygon with great-circle edges, smaller
    than a hemisphere."""

    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        verts = tuple((float(r), float(d)) for r, d in self.vertices)
        object.__setattr__(self, "vertices", verts)
        if len(verts) < 3:
            raise UpadError(f"a footprint polygon needs at least 3 vertices, got {len(verts)}",
                            hint="give the (ra, dec) corners in order, e.g. --polygon '10,0 40,0 40,20 10,20'")
        if any(not -90.0 <= d <= 90.0 for _, d in verts):
            raise UpadError("a footprint polygon vertex has a declination outside -90..90",
                            hint="give vertices as ra,dec in degrees")
        ra0, dec0 = self.centre
        _, _, cosc = _to_tangent(ra0, dec0, [v[0] for v in verts], [v[1] for v in verts])
        if (cosc <= 1e-6).any():
            raise UpadError("the footprint polygon reaches a hemisphere away from its centre",
                            hint="split it into smaller polygons or give RA/Dec ranges")

    @property
    def centre(self) -> tuple[float, float]:
        """The normalised mean of the vertices' unit vectors (ra, dec)."""
        r = np.radians([v[0] for v in self.vertices])
        d = np.radians([v[1] for v in self.vertices])
        x, y, z = (np.cos(d) * np.cos(r)).sum(), (np.cos(d) * np.sin(r)).sum(), np.sin(d).sum()
        if math.hypot(x, y, z) < 1e-9:
            raise UpadError("the footprint polygon's vertices surround the whole sphere",
                            hint="give a polygon smaller than a hemisphere")
        return math.degrees(math.atan2(y, x)) % 360.0, math.degrees(math.atan2(z, math.hypot(x, y)))

    def contains(self, ra: Any, dec: Any) -> np.ndarray:
        """Whether each (ra, dec) is inside (the gnomonic projection makes the edges straight lines)."""
        ra0, dec0 = self.centre
        px, py, pc = _to_tangent(ra0, dec0, ra, dec)
        vx, vy, _ = _to_tangent(ra0, dec0, [v[0] for v in self.vertices], [v[1] for v in self.vertices])
        px, py = np.atleast_1d(px), np.atleast_1d(py)
        inside = np.zeros(px.shape, dtype=bool)
        n = len(vx)
        for i in range(n):
            x1, y1, x2, y2 = vx[i], vy[i], vx[(i + 1) % n], vy[(i + 1) % n]
            crosses = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                xcross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (px < xcross)
        return inside & (np.atleast_1d(pc) > 0)


Footprint = SkyBox | SkyPolygon


def _as_footprint(footprint: Any) -> Footprint:
    if isinstance(footprint, (SkyBox, SkyPolygon)):
        return footprint
    if isinstance(footprint, Mapping):
        return SkyBox(dec_range=tuple(footprint.get("dec", (-90.0, 90.0))),  # type: ignore[arg-type]
                      ra_range=tuple(footprint["ra"]) if footprint.get("ra") is not None else None)  # type: ignore[arg-type]
    if isinstance(footprint, Sequence):
        return SkyPolygon(tuple(tuple(v) for v in footprint))  # type: ignore[arg-type]
    raise UpadError(f"not a footprint: {footprint!r}",
                    hint="give RA/Dec ranges ({'ra': (lo, hi), 'dec': (lo, hi)}) or a list of (ra, dec) vertices")


def _cell_samples(p: Pointing) -> tuple[np.ndarray, np.ndarray]:
    """Points on a cell's boundary and its centre (degrees)."""
    t = np.linspace(0.0, 1.0, 9)
    if p.is_cap:
        edge = p.dec_hi if p.dec > 0 else p.dec_lo
        ra = np.linspace(0.0, 360.0, 37)
        return np.append(ra, 0.0), np.append(np.full(ra.shape, edge), p.dec)
    ras = p.ra_lo + t * (p.ra_hi - p.ra_lo)
    decs = p.dec_lo + t * (p.dec_hi - p.dec_lo)
    ra = np.concatenate([ras, ras, np.full(t.shape, p.ra_lo), np.full(t.shape, p.ra_hi), [p.ra]])
    dec = np.concatenate([np.full(t.shape, p.dec_lo), np.full(t.shape, p.dec_hi), decs, decs, [p.dec]])
    return np.mod(ra, 360.0), dec


def _distance(ra0: Any, dec0: Any, ra: Any, dec: Any) -> np.ndarray:
    """Angular distance (degrees)."""
    r0, d0, r, d = (np.radians(np.asarray(v, dtype=float)) for v in (ra0, dec0, ra, dec))
    c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(r - r0)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _in_cell(p: Pointing, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ok = (dec >= p.dec_lo - _EPS) & (dec <= p.dec_hi + _EPS)
    if p.is_cap:
        return ok
    return ok & (np.abs((ra - p.ra + 180.0) % 360.0 - 180.0) <= p.ra_half_width + _EPS)


def in_footprint(pointings: Sequence[Pointing], footprint: Any) -> np.ndarray:
    """Which pointings belong to a footprint: those whose cell meets it.

    Parameters
    ----------
    pointings : sequence of Pointing
    footprint : SkyBox, SkyPolygon, mapping or sequence
        RA/Dec ranges (:class:`SkyBox`, or ``{"ra": (lo, hi), "dec": (lo, hi)}``) — the cell meets the box exactly;
        or the (ra, dec) vertices of a polygon (:class:`SkyPolygon`, or a list of pairs) — the cell meets it when a
        point of the cell's boundary (9 per edge) or its centre is inside the polygon, or a vertex of the polygon is
        inside the cell.

    Returns
    -------
    numpy.ndarray of bool
        One flag per pointing, in order.
    """
    fp = _as_footprint(footprint)
    out = np.zeros(len(pointings), dtype=bool)
    if isinstance(fp, SkyBox):
        dmin, dmax = fp.dec_range
        intervals = _ra_intervals(fp.ra_range)
        for i, p in enumerate(pointings):
            if not (p.dec_lo < dmax and p.dec_hi > dmin):
                continue
            out[i] = p.is_cap or bool(_cells_meet_ra(np.array([p.ra]), np.array([p.ra_half_width]), intervals)[0])
        return out
    vra = np.array([v[0] for v in fp.vertices]) % 360.0
    vdec = np.array([v[1] for v in fp.vertices])
    # only cells near the polygon can meet it: a cell lies inside its field, so inside its grid's half diagonal
    ra0, dec0 = fp.centre
    reach = float(np.max(_distance(ra0, dec0, vra, vdec)))
    pra = np.array([p.ra for p in pointings], dtype=float)
    pdec = np.array([p.dec for p in pointings], dtype=float)
    cell_radius = np.array([math.degrees(math.atan(math.radians(math.hypot(p.naxis1, p.naxis2) / 2 * p.pixel_scale
                                                                / 3600.0))) for p in pointings])
    dist = _distance(ra0, dec0, pra, pdec)
    for i in np.flatnonzero(dist <= reach + cell_radius + 1e-6):
        p = pointings[i]
        ra, dec = _cell_samples(p)
        out[i] = bool(fp.contains(ra, dec).any() or _in_cell(p, vra, vdec).any())
    return out


# ------------------------------------------------------------------------------------------------------------------
# tile ids
# ------------------------------------------------------------------------------------------------------------------

def filter_index(filter_name: str, *, instrument: str | Instrument) -> tuple[int, str]:
    """The id and canonical name of ``filter_name`` (a name or alias) in the instrument's filter system."""
    inst = _instrument(instrument)
    system = get_filter_system(inst.filter_system)
    f = system.lookup(filter_name)
    if f is None:
        raise UpadError(f"filter {filter_name!r} is not in the {system.system} filter system of {inst.key}",
                        hint=f"known filters: {', '.join(system.names)}")
    if not 1 <= f.id < FILTER_ID_BASE:
        raise UpadError(f"filter {f.name} has id {f.id}, outside 1..{FILTER_ID_BASE - 1}: tile ids cannot encode it",
                        hint=f"renumber the filters of filters_{system.system}.toml below {FILTER_ID_BASE}")
    return f.id, f.name


def tile_id(ref_tile_id: int, filter_name: str, *, instrument: str | Instrument) -> int:
    """The id of the (pointing, filter) tile: ``ref_tile_id * 100 + filter id`` (inverse: :func:`split_tile_id`)."""
    fid, _ = filter_index(filter_name, instrument=instrument)
    if int(ref_tile_id) < 1:
        raise UpadError(f"pointing id {ref_tile_id} is not positive", hint="pointing ids start at 1")
    return int(ref_tile_id) * FILTER_ID_BASE + fid


def split_tile_id(tile: int, *, instrument: str | Instrument) -> tuple[int, str]:
    """``(ref_tile_id, filter name)`` of a (pointing, filter) tile id."""
    inst = _instrument(instrument)
    ref, fid = divmod(int(tile), FILTER_ID_BASE)
    system = get_filter_system(inst.filter_system)
    for f in system.filters:
        if f.id == fid:
            if ref < 1:
                break
            return ref, f.name
    raise UpadError(f"{tile} is not a tile id of {inst.key}: pointing {ref}, filter id {fid} (known filter ids: "
                    f"{', '.join(str(f.id) for f in system.filters)})",
                    hint=f"a tile id is pointing id × {FILTER_ID_BASE} + filter id; `upad tiles list` shows them")
