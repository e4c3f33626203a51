"""Reference catalogs: the simulator's, and real-looking Gaia/VizieR extracts in FITS, Parquet and CSV."""
import numpy as np
import pytest
from astropy.table import Table

from upad.errors import UpadError
from upad.io.refcat import in_cone, propagate_to_epoch, read_reference_catalog


@pytest.fixture(scope="module")
def sim_refcat(tmp_path_factory):
    from upad.sim import SimConfig, simulate

    # only the reference catalog is read: no calibration frames (nor the signature sequences)
    cfg = SimConfig(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=0, n_linearity_flats=0)
    res = simulate(instrument="mini", seed=11, out=tmp_path_factory.mktemp("sim"), nights=1, tiles=1,
                   filters=["rSDSS"], config=cfg)
    return res.reference_catalog


def test_reads_simulator_catalog(sim_refcat):
    cat = read_reference_catalog(sim_refcat, filters=["rSDSS"])
    assert len(cat) > 20
    assert {"ra", "dec", "ra_error", "pmra", "ref_epoch", "g", "mag_rSDSS"} <= set(cat.colnames)
    assert np.all((cat["dec"] > -90) & (cat["dec"] < 90))
    with pytest.raises(UpadError, match="no magnitudes for"):
        read_reference_catalog(sim_refcat, filters=["J0395x"])


def _gaia_like(n=50, seed=1):
    rng = np.random.default_rng(seed)
    return Table({"source_id": np.arange(n, dtype=np.int64) + 10**15, "ra": rng.uniform(10, 11, n),
                  "dec": rng.uniform(40, 41, n), "ra_error": rng.uniform(0.01, 0.5, n),
                  "dec_error": rng.uniform(0.01, 0.5, n), "pmra": rng.normal(0, 5, n), "pmdec": rng.normal(0, 5, n),
                  "ref_epoch": np.full(n, 2016.0), "phot_g_mean_mag": rng.uniform(12, 20, n)})


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".csv", ".ecsv"])
def test_reads_gaia_extracts(tmp_path, suffix):
    t = _gaia_like()
    path = tmp_path / f"gaia{suffix}"
    if suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        pq.write_table(pa.table({c: np.asarray(t[c]) for c in t.colnames}), path)
    elif suffix == ".csv":
        t.write(path, format="ascii.csv")
    else:
        t.write(path)
    cat = read_reference_catalog(path)
    assert len(cat) == 50
    assert np.allclose(cat["ra"], t["ra"]) and np.allclose(cat["g"], t["phot_g_mean_mag"])
    assert np.all(cat["source_id"] == t["source_id"])


def test_vizier_names_and_missing_positions(tmp_path):
    t = Table({"RA_ICRS": [10.0, 10.1], "DE_ICRS": [40.0, 40.1], "Gmag": [15.0, 16.0]})
    t.write(tmp_path / "viz.fits")
    cat = read_reference_catalog(tmp_path / "viz.fits")
    assert list(cat["dec"]) == [40.0, 40.1] and np.all(cat["pmra"] == 0) and np.all(cat["ref_epoch"] == 2016.0)
    Table({"x": [1.0]}).write(tmp_path / "bad.fits")
    with pytest.raises(UpadError, match="no ra column"):
        read_reference_catalog(tmp_path / "bad.fits")
    with pytest.raises(UpadError, match="does not exist"):
        read_reference_catalog(tmp_path / "nope.fits")


def test_proper_motion_and_cone():
    t = Table({"ra": [10.0], "dec": [60.0], "pmra": [3600.0], "pmdec": [-3600.0], "ref_epoch": [2016.0]})
    moved = propagate_to_epoch(t, 2026.0)
    # 10 yr × 3.6"/yr = 36" = 0.01 deg in dec; in ra divided by cos(dec) = 0.5
    assert moved["dec"][0] == pytest.approx(60.0 - 0.01)
    assert moved["ra"][0] == pytest.approx(10.0 + 0.02)
    cat = Table({"ra": [10.0, 10.5, 12.0], "dec": [0.0, 0.0, 0.0]})
    assert len(in_cone(cat, 10.0, 0.0, 0.6)) == 2


def test_position_errors_grow_with_the_proper_motion_errors():
    """Nine years after the catalog's epoch a 1 mas/yr proper-motion error is a 9 mas position error: the weights of
    the astrometric fit must know it."""
    t = Table({"ra": [10.0, 10.0], "dec": [0.0, 1.0], "pmra": [1.0, 0.0], "pmdec": [0.0, 1.0], "ref_epoch": [2016.0] * 2,
               "ra_error": [0.4, 0.03], "dec_error": [0.3, 0.03], "pmra_error": [1.0, 0.05],
               "pmdec_error": [0.8, 0.05]})
    moved = propagate_to_epoch(t, 2025.0)
    assert np.allclose(moved["ra_error"], np.hypot([0.4, 0.03], 9.0 * np.array([1.0, 0.05])))
    assert np.allclose(moved["dec_error"], np.hypot([0.3, 0.03], 9.0 * np.array([0.8, 0.05])))
    assert np.allclose(propagate_to_epoch(t, 2016.0)["ra_error"], t["ra_error"])  # at the catalog's epoch: as is
    no_pm_err = propagate_to_epoch(Table({c: t[c] for c in ("ra", "dec", "pmra", "pmdec", "ref_epoch", "ra_error")}),
                                   2025.0)
    assert np.allclose(no_pm_err["ra_error"], t["ra_error"])


def test_exact_epoch_and_gaia_photometry_columns(tmp_path):
    """Mid-exposure Julian epoch (not the year) and the Gaia archive's G/BP/RP, parallax and error columns."""
    from upad.io.refcat import epoch_of

    ep = epoch_of("2025-09-01T22:00:00", 600.0)
    # JD 2451545.0 is J2000.0; the middle of the exposure, 2025-09-01T22:05 UTC, is 9375.4201 days later
    assert ep == pytest.approx(2000.0 + 9375.4201 / 365.25, abs=1e-5)
    assert epoch_of("2025-09-01T22:00:00") < ep
    with pytest.raises(UpadError, match="observation date"):
        epoch_of("not a date")
    t = _gaia_like()
    t["phot_bp_mean_mag"] = t["phot_g_mean_mag"] + 0.4
    t["phot_rp_mean_mag"] = t["phot_g_mean_mag"] - 0.5
    t["parallax"] = np.full(len(t), 1.5)
    t["pmra_error"] = np.full(len(t), 0.1)
    t["mag_rSDSS"] = t["phot_g_mean_mag"] + 0.1
    t["magerr_rSDSS"] = np.full(len(t), 0.02)
    t.write(tmp_path / "g.fits")
    cat = read_reference_catalog(tmp_path / "g.fits", filters=["rSDSS"])
    assert np.allclose(cat["bp"] - cat["rp"], 0.9) and np.all(cat["parallax"] == 1.5)
    assert np.all(cat["pmra_error"] == 0.1) and np.all(cat["magerr_rSDSS"] == 0.02)
    moved = propagate_to_epoch(cat, 2026.0)
    assert np.allclose((moved["dec"] - cat["dec"]) * 3.6e6, 10.0 * cat["pmdec"])


def test_gaiaxpy_jplus_synthetic_photometry(tmp_path):
    """GaiaXPy's J-PLUS system columns become mag_<filter> with errors from the flux errors."""
    t = _gaia_like(5)
    t["Jplus_gJPLUS_mag"] = np.full(5, 16.0)
    t["Jplus_gJPLUS_flux"] = np.full(5, 1.0e-16)
    t["Jplus_gJPLUS_flux_error"] = np.full(5, 2.0e-18)
    t["Jplus_J0660_mag"] = np.full(5, 15.5)
    t.write(tmp_path / "xp.fits")
    cat = read_reference_catalog(tmp_path / "xp.fits", filters=["gSDSS", "J0660"])
    assert np.all(cat["mag_gSDSS"] == 16.0) and np.allclose(cat["magerr_gSDSS"], 1.0857 * 0.02)
    assert np.all(cat["mag_J0660"] == 15.5) and "magerr_J0660" not in cat.colnames


def test_observation_epoch_and_catalog_at_epoch():
    """A frame's mid-exposure epoch from its MJD or date (None when unknown), and a catalog moved to it only when it
    has proper motions and is at another epoch."""
    from astropy.io import fits
    from astropy.time import Time

    from upad.io.refcat import at_epoch, observation_epoch

    h = fits.Header()
    h["DATE-OBS"] = "2025-10-30T03:00:00"
    h["EXPTIME"] = 600.0
    want = Time("2025-10-30T03:05:00", scale="utc").jyear
    assert observation_epoch({}, h) == pytest.approx(want, abs=1e-7)
    assert observation_epoch({"mjd": Time("2025-10-30T03:00:00").mjd, "exptime": 600.0}) == pytest.approx(want,
                                                                                                      abs=1e-7)
    h["MJD-OBS"] = Time("2025-10-30T03:00:00").mjd + 1.0  # the MJD wins over the date
    assert observation_epoch({}, h) == pytest.approx(want + 1 / 365.25, abs=1e-7)
    assert observation_epoch({}, fits.Header()) is None and observation_epoch({"date_obs": "not a date"}) is None
    cat = Table({"ra": [150.0, 150.1], "dec": [0.0, 0.1], "pmra": [1000.0, 0.0], "pmdec": [-500.0, 0.0],
                 "ref_epoch": [2016.0, 2016.0]})
    moved, ok = at_epoch(cat, 2026.0)
    assert ok and np.allclose(moved["ref_epoch"], 2026.0) and (moved["ra"][0] - 150.0) * 3600 == pytest.approx(10.0)
    again, ok = at_epoch(moved, 2026.0)
    assert not ok and again is moved  # already there
    assert at_epoch(cat, None) == (cat, False)  # no date known: as given
    static = {"ra": np.array([150.0]), "dec": np.array([0.0])}
    assert at_epoch(static, 2026.0) == (static, False)  # no motions: the positions are taken as at the epoch
    mapping = {k: np.asarray(cat[k]) for k in cat.colnames}
    m, ok = at_epoch(mapping, 2026.0)
    assert ok and np.allclose(m["dec"], moved["dec"])
