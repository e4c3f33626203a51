"""The science database (:mod:`upad.db.science`) on SQLite and PostgreSQL: cone searches through the HEALPix
order-29 index are exact against a brute-force angular distance (at the poles, across RA 0/360, in dense and empty
sky), agree with q3c where PostgreSQL has it, and bad requests are refused with a reason."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from upad.db.science import (CatalogColumn, ScienceDB, angular_distance_arcsec, cone_ranges, healpix_index)
from upad.errors import DataError, UpadError

CENTRES = [(10.0, 20.0), (359.995, 0.3), (0.002, -0.2), (123.4, 89.99), (250.0, -89.995), (45.0, 60.0)]


def _sky(seed: int = 3):
    """Clusters of sources around awkward centres (poles, RA 0/360) plus a sparse all-sky sprinkle."""
    rng = np.random.default_rng(seed)
    ra, dec = [], []
    for r0, d0 in CENTRES:
        n = 3000
        # offsets of up to 0.2 deg, in a local tangent frame (so the cluster is round at the pole too)
        rho = 0.2 * np.sqrt(rng.uniform(0, 1, n))
        phi = rng.uniform(0, 2 * np.pi, n)
        from astropy.coordinates import SkyCoord
        import astropy.units as u

        c = SkyCoord(r0 * u.deg, d0 * u.deg).directional_offset_by(phi * u.rad, rho * u.deg)
        ra.append(c.ra.deg)
        dec.append(c.dec.deg)
    ra.append(rng.uniform(0, 360, 20000))
    dec.append(np.degrees(np.arcsin(rng.uniform(-1, 1, 20000))))
    return np.concatenate(ra), np.concatenate(dec)


@pytest.fixture
def science(db_url):
    sdb = ScienceDB(db_url)
    ra, dec = _sky()
    n = ra.size
    data = {"tile_id": np.full(n, 5, np.int64), "number": np.arange(1, n + 1, dtype=np.int32),
            "pointing_id": np.full(n, 1, np.int32), "load_id": np.ones(n, np.int32),
            "hpx29": healpix_index(ra, dec), "alpha_j2000": ra, "delta_j2000": dec,
            "class_star": np.random.default_rng(5).uniform(0, 1, n).astype(np.float32), "det_flags": (np.arange(n) % 8).astype(np.int16)}
    with sdb.engine.begin() as conn:
        sdb.ensure_catalog_table(conn, "magabdualobj", [CatalogColumn(k, v.dtype) for k, v in data.items()])
        assert sdb.bulk_insert(conn, "magabdualobj", data) == n
        sdb.ensure_point_source_view(conn, class_star=0.9)
    yield sdb, ra, dec
    sdb.dispose()


def test_the_healpix_index_is_nested_order_29():
    # the index of a position lies in the order-29 ranges of a tiny cone around it (mocpy's cover)
    for ra, dec in CENTRES:
        (i,) = healpix_index([ra], [dec])
        r = cone_ranges(ra, dec, 0.1 / 3600)
        assert 0 <= i < 12 * 4 ** 29 and np.any((r[:, 0] <= i) & (i < r[:, 1]))


@pytest.mark.parametrize("radius", [1.0, 60.0, 600.0])
def test_cone_searches_are_exact(science, radius):
    sdb, ra, dec = science
    for r0, d0 in CENTRES + [(200.0, -30.0)]:
        got = sdb.cone("magabdualobj", r0, d0, radius, columns=["number"])
        truth = np.flatnonzero(angular_distance_arcsec(ra, dec, r0, d0) <= radius) + 1
        assert sorted(np.asarray(got["number"]).tolist()) == truth.tolist(), (r0, d0, radius)
        assert np.all(np.diff(np.asarray(got["dist_arcsec"])) >= 0)  # nearest first
    near = sdb.cone("MagABDualObj", 10.0, 20.0, radius, limit=3)
    assert len(near) == min(3, len(sdb.cone("magabdualobj", 10.0, 20.0, radius)))


def test_the_point_source_view(science):
    sdb, ra, dec = science
    got = sdb.cone("magabdualpointsources", 10.0, 20.0, 600.0)
    assert len(got) > 10
    assert np.all(np.asarray(got["class_star"]) >= 0.9) and np.all((np.asarray(got["det_flags"]) & 6) == 0)
    allrows = sdb.cone("magabdualobj", 10.0, 20.0, 600.0)
    keep = (np.asarray(allrows["class_star"]) >= 0.9) & ((np.asarray(allrows["det_flags"]) & 6) == 0)
    assert len(got) == keep.sum()


def test_q3c_agrees_with_the_healpix_index(science):
    sdb, ra, dec = science
    if sdb.backend != "postgresql":
        pytest.skip("q3c is a PostgreSQL extension")
    with sdb.engine.connect() as conn:
        if sdb.q3c_schema(conn) is None:
            pytest.skip("q3c is not installed on this PostgreSQL (Debian: postgresql-15-q3c)")
        assert conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_magabdualobj_q3c'")).scalar()
    for r0, d0 in CENTRES:
        a = sdb.cone("magabdualobj", r0, d0, 300.0, columns=["number"], method="q3c")
        b = sdb.cone("magabdualobj", r0, d0, 300.0, columns=["number"], method="healpix")
        assert sorted(np.asarray(a["number"]).tolist()) == sorted(np.asarray(b["number"]).tolist())


def test_bad_requests_are_refused(science, db_url):
    sdb, _, _ = science
    with pytest.raises(UpadError, match="no cone search on"):
        sdb.cone("tileimage", 0, 0, 10)
    with pytest.raises(UpadError, match="no column"):
        sdb.cone("magabdualobj", 0, 0, 10, columns=["mag_nonsense"])
    with pytest.raises(ValueError, match="declination"):
        sdb.cone("magabdualobj", 0, 95, 10)
    with pytest.raises(ValueError, match="radius"):
        sdb.cone("magabdualobj", 0, 0, 0)
    with pytest.raises(UpadError, match="no magabsingleobj table yet"):
        sdb.cone("magabsingleobj", 0, 0, 10)
    # a catalog with other columns than the table's (other apertures) is refused with the remedy
    with sdb.engine.begin() as conn, pytest.raises(DataError, match="rebuild"):
        sdb.ensure_catalog_table(conn, "magabdualobj", [CatalogColumn("mag_aper_7_0", np.dtype("f4"))])
    # a database of another schema version is refused, an absent one is not created on request
    with sdb.engine.begin() as conn:
        conn.execute(text("UPDATE sciencedb_meta SET value = '0' WHERE key = 'schema_version'"))
    with pytest.raises(UpadError, match="schema version 0"):
        ScienceDB(db_url)


def test_an_absent_science_database_is_not_created_on_request(tmp_path):
    with pytest.raises(UpadError, match="no science database here"):
        ScienceDB(f"sqlite:///{tmp_path / 'none.sqlite'}", create=False)


def _pointing(sdb, conn, *, tile_id, load_id, centre, ra, dec, numbers):
    n = len(ra)
    conn.execute(sdb.table("tileimage").insert(), [{"tile_id": tile_id, "pointing_id": tile_id, "ra": centre[0],
                                                   "dec": centre[1], "load_id": load_id, "filter_name": "rSDSS"}])
    data = {"tile_id": np.full(n, tile_id, np.int64), "number": np.asarray(numbers, np.int32),
            "pointing_id": np.full(n, tile_id, np.int32), "load_id": np.full(n, load_id, np.int32),
            "hpx29": healpix_index(ra, dec), "alpha_j2000": np.asarray(ra, float), "delta_j2000": np.asarray(dec, float)}
    sdb.ensure_catalog_table(conn, "magabdualobj", [CatalogColumn(k, v.dtype) for k, v in data.items()])
    sdb.bulk_insert(conn, "magabdualobj", data)


def test_duplicates_in_tile_overlaps_have_one_primary(db_url):
    """Two pointings overlapping by 0.1 deg (and a third one on a corner): the objects seen by both are paired, the
    detection nearer its own tile's centre is the primary; reloading a pointing resolves the pairs again."""
    sdb = ScienceDB(db_url)
    rng = np.random.default_rng(9)
    sky_ra, sky_dec = rng.uniform(9.0, 11.4, 4000), rng.uniform(19.4, 20.6, 4000)  # the true objects
    tiles = {1: (9.6, 20.0), 2: (10.6, 20.0), 3: (11.2, 20.5)}  # half-widths 0.55 deg: 1-2 overlap 9.95-10.15

    def seen(tid):
        c = tiles[tid]
        inside = (np.abs(sky_ra - c[0]) * np.cos(np.radians(20)) < 0.55) & (np.abs(sky_dec - c[1]) < 0.55)
        idx = np.flatnonzero(inside)
        jitter = rng.normal(0, 0.1 / 3600, (2, idx.size))  # 0.1" measurement scatter
        return idx, sky_ra[idx] + jitter[0], sky_dec[idx] + jitter[1]

    views = {t: seen(t) for t in tiles}
    try:
        for load, tid in enumerate((1, 2, 3), start=1):
            idx, ra, dec = views[tid]
            with sdb.engine.begin() as conn:
                _pointing(sdb, conn, tile_id=tid, load_id=load, centre=tiles[tid], ra=ra, dec=dec, numbers=idx + 1)
                sdb.resolve_overlaps(conn, "magabdualobj", load)

        def check():
            with sdb.engine.connect() as conn:
                rows = conn.execute(text("SELECT tile_id, number, primary_flag, alpha_j2000, delta_j2000 FROM "
                                         "magabdualobj")).all()
            by_obj = {}
            for t, n, p, ra, dec in rows:
                by_obj.setdefault(n, []).append((t, p, ra, dec))
            multi = 0
            for n, dets in by_obj.items():
                assert sum(p for _, p, _, _ in dets) == 1, (n, dets)  # one primary per object
                if len(dets) > 1:
                    multi += 1
                    best = min(dets, key=lambda d: (angular_distance_arcsec(d[2], d[3], *tiles[d[0]]), d[0]))
                    assert best[1] == 1
            return multi, len(by_obj)

        multi, nobj = check()
        expected = sum(np.isin(views[a][0], views[b][0]).sum() for a, b in ((1, 2), (2, 3), (1, 3)))
        assert multi > 50 and nobj == len(set().union(*[set(v[0].tolist()) for v in views.values()]))
        with sdb.engine.connect() as conn:
            pairs = conn.execute(text("SELECT count(*) FROM duplicates")).scalar()
        assert pairs == 2 * expected  # both directions of every pair
        # pointing 2 is rebuilt: its rows and pairs go, its partners are primary again, then it comes back
        with sdb.engine.begin() as conn:
            sdb.forget_overlaps(conn, "magabdualobj", [2])
            conn.execute(text("DELETE FROM magabdualobj WHERE tile_id = 2"))
            conn.execute(text("DELETE FROM tileimage WHERE tile_id = 2"))
        with sdb.engine.connect() as conn:
            lost = conn.execute(text("SELECT count(*) FROM magabdualobj WHERE primary_flag = 0")).scalar()
            assert lost == np.isin(views[1][0], views[3][0]).sum()  # only the 1-3 corner pairs remain
        idx, ra, dec = views[2]
        with sdb.engine.begin() as conn:
            _pointing(sdb, conn, tile_id=2, load_id=4, centre=tiles[2], ra=ra, dec=dec, numbers=idx + 1)
            sdb.resolve_overlaps(conn, "magabdualobj", 4)
        assert check() == (multi, nobj)
    finally:
        sdb.dispose()
