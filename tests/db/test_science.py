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
