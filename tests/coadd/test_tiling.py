"""The survey tiling: full coverage, overlaps, plausible counts, grids that hold their field, ids."""
import math
import re

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from upad.coadd.tiling import (
    FILTER_ID_BASE,
    SkyBox,
    SkyPolygon,
    camera_field,
    filter_index,
    generate_tiling,
    in_footprint,
    locate,
    neighbours,
    pointing_by_id,
    split_tile_id,
    tile_grid,
    tile_id,
    tiling_geometry,
)
from upad.errors import UpadError
from upad.ingest.translate import TranslationConfig
from upad.instruments import get_filter_system

OVERLAP = 3.0  # arcmin


@pytest.fixture(scope="module")
def sky():
    return generate_tiling(instrument="t80cam", overlap_arcmin=OVERLAP)


# --- independent spherical geometry (not the module's) ---------------------------------------------------------

def _unit(ra, dec):
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def _gnomonic(ra0, dec0, ra, dec):
    """Standard coordinates (deg) of (ra, dec) about (ra0, dec0), and cos of the distance."""
    a = np.radians(np.asarray(ra) - ra0)
    d, d0 = np.radians(dec), math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return np.degrees(xi), np.degrees(eta), cosc


def _destination(ra, dec, dist_deg, bearing_deg):
    """The point ``dist_deg`` away from (ra, dec) towards ``bearing_deg`` (east of north)."""
    d, b, d1 = math.radians(dist_deg), math.radians(bearing_deg), math.radians(dec)
    d2 = math.asin(math.sin(d1) * math.cos(d) + math.cos(d1) * math.sin(d) * math.cos(b))
    r2 = math.radians(ra) + math.atan2(math.sin(b) * math.sin(d) * math.cos(d1),
                                       math.cos(d) - math.sin(d1) * math.sin(d2))
    return math.degrees(r2) % 360.0, math.degrees(d2)


def _in_field(p, field, ra, dec, shrink_deg=0.0):
    xi, eta, cosc = _gnomonic(p.ra, p.dec, ra, dec)
    return ((cosc > 0) & (np.abs(xi) <= field.width_deg / 2 - shrink_deg)
            & (np.abs(eta) <= field.height_deg / 2 - shrink_deg))


def _random_sphere(n, seed, dec_range=(-90, 90), ra_range=(0, 360)):
    rng = np.random.default_rng(seed)
    z = rng.uniform(math.sin(math.radians(dec_range[0])), math.sin(math.radians(dec_range[1])), n)
    return rng.uniform(*ra_range, n) % 360.0, np.degrees(np.arcsin(z))


def _covered(pointings, field, ra, dec):
    """Whether each point lies in the field of at least one pointing (KD-tree on unit vectors)."""
    tree = cKDTree(_unit(np.array([p.ra for p in pointings]), np.array([p.dec for p in pointings])))
    half_diag = math.degrees(math.atan(math.radians(math.hypot(field.width_deg, field.height_deg) / 2)))
    chord = 2 * math.sin(math.radians(half_diag) / 2) * 1.001
    out = np.zeros(len(ra), dtype=bool)
    for i, cands in enumerate(tree.query_ball_point(_unit(ra, dec), chord)):
        for c in cands:
            if _in_field(pointings[c], field, ra[i], dec[i]):
                out[i] = True
                break
    return out


# --- tests ---------------------------------------------------------------------------------------------------------

def test_full_sky_t80cam_covers_every_point(sky):
    field = camera_field("t80cam")
    ra, dec = _random_sphere(20_000, seed=20261205)
    # the poles and the RA seam are where a tiling breaks first
    ra = np.concatenate([ra, [0.0, 0.0, 359.9999, 180.0, 123.0]])
    dec = np.concatenate([dec, [90.0, -90.0, 0.0, 89.99, -89.5]])
    covered = _covered(sky, field, ra, dec)
    assert covered.all(), f"{(~covered).sum()} points uncovered, e.g. {ra[~covered][:3]}, {dec[~covered][:3]}"


def test_every_point_is_deep_inside_the_field_of_its_cell(sky):
    """Each point lies in one cell (locate) whose pointing's field holds it with half the overlap to spare."""
    field = camera_field("t80cam")
    by_id = {p.id: p for p in sky}
    ra, dec = _random_sphere(5000, seed=7)
    ids = locate(ra, dec, instrument="t80cam", overlap_arcmin=OVERLAP)
    shrink = OVERLAP / 60 / 2
    bad = [i for i, pid in enumerate(ids) if not _in_field(by_id[int(pid)], field, ra[i], dec[i], shrink)]
    assert not bad
    assert all(int(locate(p.ra, p.dec, instrument="t80cam")) == p.id for p in sky[::97])


def _shared_boundary(p, q):
    """Sample points on the common boundary of two touching cells."""
    if q.band == p.band:
        sign = 1 if (q.index - p.index) % p.band_size == 1 else -1
        ra = p.ra + sign * p.ra_half_width
        return [(ra % 360, d) for d in np.linspace(p.dec_lo, p.dec_hi, 7)]
    edge = p.dec_hi if q.band > p.band else p.dec_lo
    if p.is_cap or q.is_cap:
        other = q if p.is_cap else p
        lo, hi = other.ra_lo, other.ra_hi
    else:
        qc = p.ra + ((q.ra - p.ra + 180) % 360 - 180)  # q's centre unwrapped next to p
        lo = max(p.ra_lo, qc - q.ra_half_width)
        hi = min(p.ra_hi, qc + q.ra_half_width)
        assert hi >= lo - 1e-9
    return [(r % 360, edge) for r in np.linspace(lo, max(lo, hi), 7)]


def test_neighbours_overlap_by_at_least_the_overlap(sky):
    field = camera_field("t80cam")
    geom = tiling_geometry("t80cam", OVERLAP)
    n = geom.n_steps
    bands = {0, 1, 2, n // 4, n // 2, n // 2 + 1, 3 * n // 4, n - 2, n - 1, n}
    subset = [p for p in sky if p.band in bands or p.band - 1 in bands or p.band + 1 in bands]
    checked = 0
    radius = OVERLAP / 60 / 2 * 0.999
    for p in (p for p in subset if p.band in bands):
        if p.band_size > 12 and p.index % 9:  # every 9th pointing of a long band is enough
            continue
        nbs = neighbours(p, subset)
        assert len({q.id for q in nbs}) == len(nbs) and p.id not in {q.id for q in nbs}
        assert len(nbs) >= (p.band_size if p.is_cap else 4)
        for q in nbs:
            assert p.id in {r.id for r in neighbours(q, subset)}  # symmetric
            for ra, dec in _shared_boundary(p, q):
                around = [_destination(ra, dec, radius, b) for b in range(0, 360, 30)]
                for r2, d2 in [(ra, dec), *around]:
                    assert _in_field(p, field, r2, d2) and _in_field(q, field, r2, d2), (p, q, ra, dec)
            checked += 1
    assert checked > 100


def test_number_of_pointings_is_plausible(sky):
    f = camera_field("t80cam")
    ideal = 41253.0 / ((f.width_deg - OVERLAP / 60) * (f.height_deg - OVERLAP / 60))
    assert abs(len(sky) - ideal) / ideal < 0.20
    assert len(sky) >= ideal  # a tiling with overlaps cannot beat the area bound
    assert len(sky) == tiling_geometry("t80cam", OVERLAP).n_pointings
    # a larger overlap needs more pointings
    assert tiling_geometry("t80cam", 10.0).n_pointings > len(sky)


def _exposure_wcs(ra, dec, nx, ny, scale, sx, sy):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.cd = [[sx * scale / 3600, 0], [0, sy * scale / 3600]]
    return w


@pytest.mark.parametrize("instrument", ["t80cam", "jpcam", "mini"])
def test_tile_grids_contain_their_field(instrument):
    """Dithered exposures (±20″, as the simulator's pattern) centred on a pointing fall inside its grid."""
    field = camera_field(instrument)
    geom = tiling_geometry(instrument, OVERLAP)
    n = geom.n_steps
    picks = [pointing_by_id(1 + geom.band_offset[k] + j, instrument=instrument, overlap_arcmin=OVERLAP)
             for k in (0, 1, n // 2, n // 2 + 3, n - 1, n) for j in (0, geom.band_count[k] - 1)]
    edge = np.linspace(0.5, 1.0, 9)
    for p in picks:
        grid, shape = tile_grid(p)
        assert shape == (p.naxis2, p.naxis1) and grid.pixel_shape == (p.naxis1, p.naxis2)
        assert p.naxis1 > field.nx and p.naxis2 > field.ny
        x0, y0 = grid.all_world2pix([[p.ra, p.dec]], 1)[0]
        assert abs(x0 - (p.naxis1 + 1) / 2) < 1e-6 and abs(y0 - (p.naxis2 + 1) / 2) < 1e-6
        for dx, dy in [(0, 0), (20, 20), (-20, 20), (20, -20), (-20, -20)]:
            xi, eta = dx / 3600, dy / 3600
            # the dithered centre, moved in the pointing's tangent plane
            w0 = _exposure_wcs(p.ra, p.dec, 1, 1, 1.0, 1, 1)
            ra_c, dec_c = w0.all_pix2world([[1 + xi * 3600, 1 + eta * 3600]], 1)[0]
            exp = _exposure_wcs(ra_c, dec_c, field.nx, field.ny, field.pixel_scale, field.cd_sign_x,
                                field.cd_sign_y)
            xs = np.concatenate([edge * field.nx, edge * field.nx, np.full(9, 0.5), np.full(9, field.nx + 0.5),
                                 [0.5, field.nx + 0.5]])
            ys = np.concatenate([np.full(9, 0.5), np.full(9, field.ny + 0.5), edge * field.ny, edge * field.ny,
                                 [field.ny + 0.5, 0.5]])
            world = exp.all_pix2world(np.column_stack([xs, ys]), 1)
            pix = grid.all_world2pix(world, 1)
            assert (pix[:, 0] >= 0.5).all() and (pix[:, 0] <= p.naxis1 + 0.5).all(), (p.id, dx, dy)
            assert (pix[:, 1] >= 0.5).all() and (pix[:, 1] <= p.naxis2 + 0.5).all(), (p.id, dx, dy)


def test_grid_does_not_depend_on_filter_or_footprint(sky):
    """A pointing of a band tiling is the all-sky one: same id, centre, grid."""
    by_id = {p.id: p for p in sky}
    band = generate_tiling(instrument="t80cam", overlap_arcmin=OVERLAP, dec_range=(10, 20), ra_range=(350, 10))
    assert band and all(by_id[p.id] == p for p in band)
    assert {round(p.ra) for p in band} & {0} and all(p.ra >= 340 or p.ra <= 20 for p in band)


def test_ids_unique_and_invertible(sky):
    ids = [p.id for p in sky]
    assert ids == list(range(1, len(sky) + 1))
    assert len({p.name for p in sky}) == len(sky)
    pattern = re.compile(TranslationConfig().tile_regex)
    for p in sky[::101]:
        assert p.ref_tile_id == p.id
        assert int(pattern.search(p.name).group(1)) == p.id  # ingest reads the name back to the id
        assert pointing_by_id(p.id, instrument="t80cam", overlap_arcmin=OVERLAP) == p
    filters = get_filter_system("jplus").names
    all_tiles = {tile_id(p.id, f, instrument="t80cam") for p in sky for f in filters}
    assert len(all_tiles) == len(sky) * len(filters)
    for p in sky[::53]:
        for f in filters:
            t = tile_id(p.id, f, instrument="t80cam")
            assert split_tile_id(t, instrument="t80cam") == (p.id, f)
    assert tile_id(12, "R", instrument="t80cam") == tile_id(12, "rSDSS", instrument="t80cam")  # S-PLUS alias
    assert filter_index("rSDSS", instrument="t80cam")[1] == "rSDSS"
    shifted = generate_tiling(instrument="t80cam", overlap_arcmin=OVERLAP, dec_range=(0, 2), first_id=100_001)
    plain = generate_tiling(instrument="t80cam", overlap_arcmin=OVERLAP, dec_range=(0, 2))
    assert [p.id - 100_000 for p in shifted] == [p.id for p in plain]


def test_band_of_mini_camera_is_covered():
    """A small field: only the band is generated (the all-sky mini tiling has millions of pointings)."""
    field = camera_field("mini")
    pts = generate_tiling(instrument="mini", overlap_arcmin=1.0, dec_range=(30, 31), ra_range=(359.5, 0.5))
    assert 50 < len(pts) < 200
    ra, dec = _random_sphere(3000, seed=3, dec_range=(30, 31), ra_range=(359.5, 360.5))
    assert _covered(pts, field, ra, dec).all()
    assert len({p.id for p in pts}) == len(pts)


def test_in_footprint_box_and_polygon(sky):
    box = SkyBox(dec_range=(-5, 5), ra_range=(30, 50))
    flags = in_footprint(sky, box)
    band = generate_tiling(instrument="t80cam", overlap_arcmin=OVERLAP, dec_range=(-5, 5), ra_range=(30, 50))
    assert {p.id for p, f in zip(sky, flags) if f} == {p.id for p in band}
    assert (in_footprint(sky, {"ra": (30, 50), "dec": (-5, 5)}) == flags).all()

    poly = SkyPolygon(((200, 20), (215, 20), (215, 32), (200, 26)))
    pflags = in_footprint(sky, poly)
    chosen = [p for p, f in zip(sky, pflags) if f]
    ra, dec = _random_sphere(4000, seed=11, dec_range=(19, 33), ra_range=(199, 216))
    inside = poly.contains(ra, dec)
    assert inside.sum() > 1000 and (~inside).sum() > 500
    ids = locate(ra[inside], dec[inside], instrument="t80cam", overlap_arcmin=OVERLAP)
    assert set(int(i) for i in ids) <= {p.id for p in chosen}  # every point of the polygon is in a chosen cell
    assert _covered(chosen, camera_field("t80cam"), ra[inside], dec[inside]).all()
    assert all(195 < p.ra < 220 and 18 < p.dec < 34 for p in chosen)
    # a polygon smaller than a cell still selects it
    tiny = in_footprint(sky, [(100.01, 0.01), (100.02, 0.01), (100.02, 0.02)])
    assert tiny.sum() == 1 and [p for p, f in zip(sky, tiny) if f][0].id == int(locate(100.015, 0.015,
                                                                                        instrument="t80cam"))


def test_errors_say_what_to_do():
    with pytest.raises(UpadError, match="no room") as exc:
        generate_tiling(instrument="mini", overlap_arcmin=20.0, dec_range=(0, 1))
    assert exc.value.hint
    with pytest.raises(UpadError, match="declination range"):
        generate_tiling(instrument="t80cam", dec_range=(10, 5))
    with pytest.raises(UpadError, match="right-ascension"):
        generate_tiling(instrument="t80cam", ra_range=(10, 10))
    with pytest.raises(UpadError, match="unknown instrument"):
        generate_tiling(instrument="nocam")
    with pytest.raises(UpadError, match="not in the jplus") as exc:
        tile_id(3, "Halpha", instrument="t80cam")
    assert "rSDSS" in exc.value.hint
    with pytest.raises(UpadError, match="not a tile id"):
        split_tile_id(1299, instrument="t80cam")  # filter id 99 does not exist
    with pytest.raises(UpadError, match="hemisphere"):
        SkyPolygon(((0, 0), (120, 0), (240, 0)))
    with pytest.raises(UpadError, match="not in this tiling"):
        pointing_by_id(10**7, instrument="t80cam")
    assert FILTER_ID_BASE > max(f.id for f in get_filter_system("jpas").filters)
