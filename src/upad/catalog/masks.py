"""Tile masks: the tile area, bright-star halos and spikes, coadding artefacts (a pure algorithm, and its formats).

A tile mask is made once per pointing, on the pointing's pixel grid, from every filter's coadd:

- **area**: a pixel is in the tile area where every filter's exposure time is at least ``area_fraction`` of that
  filter's median exposure time over its covered pixels (outside: bit ``LOWEXP``);
- **bright stars**: a disc of radius ``R(m) = star_radius_arcsec * 10**(star_radius_growth * (star_mag_limit - m))``
  (at most ``star_radius_max_arcsec``) around every star brighter than ``star_mag_limit``, and diffraction spikes
  along the grid's axes of half-length ``spike_length_factor * R`` and width ``spike_width_arcsec`` (bit
  ``BRIGHT_STAR``), from the reference catalog and a user's bright-star file;
- **artefacts**: connected groups of at least ``artefact_min_pixels`` pixels that the coadd rejected in some input
  (residual satellite trails, ghosts), grown by ``artefact_grow_px`` (bit ``SATELLITE``).

The pixel mask (``int16``, the bits of :mod:`upad.maskbits`) is exact; the sky formats describe the same geometry:
the area as rectangles, strips of ``block_px`` rows whose sides follow the area to the pixel, the vetoes as caps
(discs) and rectangles. They are written as **mangle** polygon files (``.ply``, readable by ``pymangle``: an area
file and a veto file; a position is unmasked when it is in an area polygon and in no veto polygon) and as one
**MOC 2.0** (IVOA; ``mocpy``) of the unmasked area.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param

__all__ = ["TileMaskConfig", "TileMask", "tile_mask", "star_radius_arcsec", "write_mangle", "tile_moc",
           "VETO_BITS"]

#: The bits a tile mask sets; a position with any of them is masked.
VETO_BITS = mb.LOWEXP | mb.BRIGHT_STAR | mb.SATELLITE


@dataclass(frozen=True)
class TileMaskConfig(StepConfig):
    """Parameters of the tile masks."""

    area_fraction: float = param(0.5, doc="a pixel is in the tile area where every filter's exposure time is at "
                                          "least this fraction of that filter's median over its covered pixels",
                                 bounds=(0.01, 1.0))
    reference_catalog: str = param("reference/refcat.fits", doc="reference catalog whose bright stars (Gaia G) "
                                   "are masked (relative to the data root, or absolute); absent: none from it")
    star_catalog: str = param("", doc="a file of bright stars (columns ra, dec in deg and mag, or a Gaia extract; "
                                      "FITS, CSV, ECSV, Parquet), e.g. a Hipparcos/Tycho-2 extract for the stars "
                                      "too bright for Gaia; relative to the data root or absolute")
    star_mag_limit: float = param(14.0, doc="stars brighter than this are masked", bounds=(0.0, 25.0), unit="mag")
    star_radius_arcsec: float = param(12.0, doc="halo radius of a star at star_mag_limit", bounds=(0.1, 600.0),
                                      unit="arcsec")
    star_radius_growth: float = param(0.2, doc="log10 growth of the halo radius per magnitude brighter (0.2: "
                                               "x1.58 per magnitude)", bounds=(0.0, 1.0))
    star_radius_max_arcsec: float = param(600.0, doc="largest halo radius", bounds=(1.0, 3600.0), unit="arcsec")
    spike_length_factor: float = param(1.5, doc="half-length of the diffraction spikes in units of the halo radius "
                                                "(0: no spikes)", bounds=(0.0, 10.0))
    spike_width_arcsec: float = param(3.0, doc="full width of the diffraction spikes", bounds=(0.1, 60.0),
                                      unit="arcsec")
    artefact_min_pixels: int = param(30, doc="connected rejected pixels (the coadd's MASK) from this many on are "
                                             "masked as an artefact (residual trail, ghost)", bounds=(1, 10 ** 7))
    artefact_grow_px: int = param(3, doc="growth of the artefact masks", bounds=(0, 100), unit="pixel")
    block_px: int = param(16, doc="height of the pixel strips the area polygons are made of (mangle, MOC); their "
                                  "sides follow the area to the pixel", bounds=(1, 4096), unit="pixel")
    moc_order: int = param(15, doc="HEALPix order of the MOC (15: cells of 6.4 arcsec)", bounds=(8, 20))


def star_radius_arcsec(mag: np.ndarray, config: TileMaskConfig) -> np.ndarray:
    """Halo radius (arcsec) of stars of magnitude ``mag``."""
    r = config.star_radius_arcsec * 10 ** (config.star_radius_growth * (config.star_mag_limit - np.asarray(mag)))
    return np.minimum(r, config.star_radius_max_arcsec)


@dataclass
class TileMask:
    """A tile mask (see the module documentation)."""

    #: bit-coded pixel mask (int16) on the pointing's grid
    image: np.ndarray
    #: pixel area (deg^2)
    pixel_area_deg2: float
    #: area rectangles ``(x0, x1, y0, y1)`` (0-based pixel edges, x1/y1 exclusive)
    area_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: masked stars: ra, dec (deg), mag, radius (arcsec), x, y (0-based pixels)
    stars: dict[str, np.ndarray] = field(default_factory=dict)
    #: spike rectangles in pixel edges ``(x0, x1, y0, y1)``
    spikes: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: artefact bounding boxes in pixel edges ``(x0, x1, y0, y1)``
    artefacts: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: the artefact pixels as rectangles (strips of 2 rows) for the sky formats
    artefact_rects: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def area_deg2(self) -> float:
        """Area of the tile (in the exposure-fraction area)."""
        return float(np.count_nonzero((self.image & mb.LOWEXP) == 0)) * self.pixel_area_deg2

    @property
    def unmasked_deg2(self) -> float:
        """Area of the tile outside every veto."""
        return float(np.count_nonzero((self.image & VETO_BITS) == 0)) * self.pixel_area_deg2

    def summary(self) -> dict[str, Any]:
        return {"area_deg2": round(self.area_deg2, 6), "unmasked_deg2": round(self.unmasked_deg2, 6),
                "n_stars": int(len(self.stars.get("ra", []))), "n_artefacts": len(self.artefacts),
                "masked_fraction": {b: round(float(np.count_nonzero(self.image & getattr(mb, b))) / self.image.size,
                                             5) for b in ("LOWEXP", "BRIGHT_STAR", "SATELLITE")}}


def _disc(image: np.ndarray, x: float, y: float, r: float, bit: int) -> None:
    ny, nx = image.shape
    x0, x1 = max(int(math.floor(x - r)), 0), min(int(math.ceil(x + r)) + 1, nx)
    y0, y1 = max(int(math.floor(y - r)), 0), min(int(math.ceil(y + r)) + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    image[y0:y1, x0:x1] |= np.where(inside, bit, 0).astype(image.dtype)


def _box(image: np.ndarray, box: tuple[float, float, float, float], bit: int) -> None:
    ny, nx = image.shape
    x0, x1, y0, y1 = box
    # pixel centres inside the box's edges
    i0, i1 = max(int(math.ceil(x0 - 0.5)), 0), min(int(math.floor(x1 - 0.5)) + 1, nx)
    j0, j1 = max(int(math.ceil(y0 - 0.5)), 0), min(int(math.floor(y1 - 0.5)) + 1, ny)
    if i0 < i1 and j0 < j1:
        image[j0:j1, i0:i1] |= np.int16(bit)


def tile_mask(exptimes: Iterable[np.ndarray], rejected: Iterable[np.ndarray | None], *, wcs: Any, pixel_scale: float,
              stars: dict[str, np.ndarray] | None = None, config: TileMaskConfig = TileMaskConfig()) -> TileMask:
    """The tile mask of a pointing.

    Parameters
    ----------
    exptimes : iterable of ndarray
        Every filter's exposure-time map on the pointing's grid (s); read once, one at a time (a generator keeps
        one full-size map in memory).
    rejected : iterable of ndarray or None
        Every filter's map of pixels rejected in some input (the coadd's ``MASK``; nonzero = rejected); read once.
    wcs : astropy.wcs.WCS
        The grid's WCS.
    pixel_scale : float
        arcsec per pixel.
    stars : dict, optional
        ``ra``, ``dec`` (deg) and ``mag`` of the bright-star candidates (every star; the ones brighter than
        ``star_mag_limit`` are masked).
    config : TileMaskConfig

    Returns
    -------
    TileMask
    """
    from scipy import ndimage

    low = shape = None
    for e in exptimes:
        if shape is None:
            shape = e.shape
            low = np.zeros(shape, bool)
        elif e.shape != shape:
            raise ValueError(f"the exposure-time maps are on different grids ({e.shape} and {shape})")
        covered = e > 0
        if not covered.any():
            low[:] = True
            continue
        low |= e < config.area_fraction * float(np.median(e[covered]))
    if shape is None:
        raise ValueError("a tile mask needs at least one exposure-time map")
    image = np.zeros(shape, mb.MASK_DTYPE)
    image[low] |= np.int16(mb.LOWEXP)
    ny, nx = shape
    boxes = _rectangles(~low, config.block_px, majority=True)
    # bright stars
    star_out: dict[str, np.ndarray] = {k: np.zeros(0) for k in ("ra", "dec", "mag", "radius_arcsec", "x", "y")}
    spikes: list[tuple[float, float, float, float]] = []
    if stars is not None and len(stars.get("ra", [])):
        mag = np.asarray(stars["mag"], float)
        sel = np.isfinite(mag) & (mag < config.star_mag_limit)
        ra, dec, mag = np.asarray(stars["ra"], float)[sel], np.asarray(stars["dec"], float)[sel], mag[sel]
        rad = star_radius_arcsec(mag, config)
        x, y = wcs.all_world2pix(ra, dec, 0) if ra.size else (np.zeros(0), np.zeros(0))
        rpx = rad / pixel_scale
        reach = rpx * max(1.0, config.spike_length_factor)
        near = (x > -reach) & (x < nx + reach) & (y > -reach) & (y < ny + reach)
        star_out = {"ra": ra[near], "dec": dec[near], "mag": mag[near], "radius_arcsec": rad[near], "x": x[near],
                    "y": y[near]}
        half_w = 0.5 * config.spike_width_arcsec / pixel_scale
        for xs, ys, r in zip(star_out["x"], star_out["y"], rpx[near]):
            _disc(image, xs, ys, r, mb.BRIGHT_STAR)
            if config.spike_length_factor > 0:
                L = config.spike_length_factor * r
                for box in ((xs - L, xs + L, ys - half_w, ys + half_w), (xs - half_w, xs + half_w, ys - L, ys + L)):
                    spikes.append(tuple(float(v) for v in box))
                    _box(image, box, mb.BRIGHT_STAR)
    # artefacts: large connected groups of rejected pixels
    artefacts: list[tuple[int, int, int, int]] = []
    rej = np.zeros(shape, bool)
    for r in rejected:
        if r is not None:
            rej |= np.asarray(r) != 0
    if rej.any():
        lab, n = ndimage.label(rej, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel())
        g = config.artefact_grow_px
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or sizes[k] < config.artefact_min_pixels:
                continue
            ys, xs = sl
            x0, x1 = max(xs.start - g, 0), min(xs.stop + g, nx)
            y0, y1 = max(ys.start - g, 0), min(ys.stop + g, ny)
            part = lab[y0:y1, x0:x1] == k
            if g:
                part = ndimage.binary_dilation(part, iterations=g)
            image[y0:y1, x0:x1] |= np.where(part, mb.SATELLITE, 0).astype(image.dtype)
            box = (x0, x1, y0, y1)
            artefacts.append(box)
    art = np.zeros(shape, bool)
    for x0, x1, y0, y1 in artefacts:
        art[y0:y1, x0:x1] |= (image[y0:y1, x0:x1] & mb.SATELLITE) != 0
    return TileMask(image=image, pixel_area_deg2=(pixel_scale / 3600.0) ** 2, area_boxes=boxes, stars=star_out,
                    spikes=spikes, artefacts=artefacts,
                    artefact_rects=_rectangles(art, 2, majority=False) if artefacts else [])


def _rectangles(mask: np.ndarray, strip: int, *, majority: bool) -> list[tuple[int, int, int, int]]:
    """``mask`` as rectangles ``(x0, x1, y0, y1)``: strips of ``strip`` rows, in each the runs of columns that are
    set in most of its rows (``majority``) or in any (a cover)."""
    ny = mask.shape[0]
    out = []
    for y0 in range(0, ny, strip):
        y1 = min(y0 + strip, ny)
        cols = mask[y0:y1].mean(axis=0) > 0.5 if majority else mask[y0:y1].any(axis=0)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], cols, [False]]).astype(np.int8)))
        out += [(int(a), int(c), y0, y1) for a, c in zip(edges[::2], edges[1::2])]
    return out


# -- sky formats ---------------------------------------------------------------------------------------------------
def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def _box_corners(wcs: Any, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Sky corners (deg) of a pixel-edge box, counter-clockwise in pixels."""
    x0, x1, y0, y1 = box
    xs = np.array([x0, x1, x1, x0]) - 0.5
    ys = np.array([y0, y0, y1, y1]) - 0.5
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    return np.asarray(ra, float), np.asarray(dec, float)


def _polygon_caps(ra: np.ndarray, dec: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Mangle caps (x, y, z, cm) of a convex spherical polygon: one great-circle cap per edge, oriented inwards."""
    v = _unit(ra, dec)
    centre = v.sum(0)
    centre /= np.linalg.norm(centre)
    caps = []
    for i in range(len(v)):
        n = np.cross(v[i], v[(i + 1) % len(v)])
        n /= np.linalg.norm(n)
        if n @ centre < 0:
            n = -n
        caps.append((float(n[0]), float(n[1]), float(n[2]), 1.0))
    return caps


def _polygon_area_sr(ra: np.ndarray, dec: np.ndarray) -> float:
    """Area (sr) of a small convex polygon (spherical excess of its triangles from the first vertex)."""
    v = _unit(ra, dec)
    area = 0.0
    for i in range(1, len(v) - 1):
        a, b, c = v[0], v[i], v[i + 1]
        num = abs(a @ np.cross(b, c))
        den = 1 + a @ b + b @ c + c @ a
        area += 2 * math.atan2(num, den)
    return area


def write_mangle(path: Any, polygons: list[tuple[list[tuple[float, float, float, float]], float]]) -> None:
    """Write mangle polygons (a list of ``(caps, area_sr)``; weight 1) to ``path`` (``.ply``)."""
    lines = [f"{len(polygons)} polygons"]
    for i, (caps, area) in enumerate(polygons):
        lines.append(f"polygon {i} ( {len(caps)} caps, 1 weight, 0 pixel, {area:.12g} str):")
        lines += [f" {x:.16f} {y:.16f} {z:.16f} {cm:.16g}" for x, y, z, cm in caps]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def mangle_polygons(mask: TileMask, wcs: Any) -> tuple[list, list]:
    """The area polygons and the veto polygons (discs, spikes, artefact boxes) of a tile mask, as mangle caps."""
    area = []
    for box in mask.area_boxes:
        ra, dec = _box_corners(wcs, box)
        area.append((_polygon_caps(ra, dec), _polygon_area_sr(ra, dec)))
    veto = []
    s = mask.stars
    for ra, dec, r in zip(s.get("ra", []), s.get("dec", []), s.get("radius_arcsec", [])):
        x = _unit(np.array(ra), np.array(dec))
        cm = 1.0 - math.cos(math.radians(r / 3600.0))
        veto.append(([(float(x[0]), float(x[1]), float(x[2]), cm)], 2 * math.pi * cm))
    for box in list(mask.spikes) + [tuple(float(v) for v in b) for b in mask.artefact_rects]:
        ra, dec = _box_corners(wcs, box)
        veto.append((_polygon_caps(ra, dec), _polygon_area_sr(ra, dec)))
    return area, veto


def tile_moc(mask: TileMask, wcs: Any, *, order: int) -> Any:
    """The MOC (mocpy) of the unmasked area: the area rectangles minus the star discs, spikes and artefact boxes."""
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude, SkyCoord
    from mocpy import MOC

    def polys(boxes):
        out = []
        for box in boxes:
            ra, dec = _box_corners(wcs, box)
            out.append(SkyCoord(ra, dec, unit="deg"))
        return out

    empty = MOC.from_depth29_ranges(order, np.zeros((0, 2), np.uint64))

    def union(mocs):
        mocs = list(mocs)
        return mocs[0].union(*mocs[1:]) if len(mocs) > 1 else (mocs[0] if mocs else empty)

    area = union(MOC.from_polygons(polys(mask.area_boxes), max_depth=order)) if mask.area_boxes else empty
    if len(area.to_depth29_ranges) == 0:
        return area
    veto = empty
    s = mask.stars
    if len(s.get("ra", [])):
        veto = veto.union(MOC.from_cones(Longitude(s["ra"], u.deg), Latitude(s["dec"], u.deg),
                                         radius=np.asarray(s["radius_arcsec"]) * u.arcsec, max_depth=order,
                                         union_strategy="large_cones"))
    boxes = list(mask.spikes) + [tuple(float(v) for v in b) for b in mask.artefact_rects]
    if boxes:
        veto = veto.union(union(MOC.from_polygons(polys(boxes), max_depth=order)))
    return area.difference(veto)
