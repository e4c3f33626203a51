"""The simulator's Gaia-like reference catalog: G/BP/RP through the Gaia passbands, astrometry at 2016.0, moving
stars, survey-filter synthetic photometry switchable, camera passbands shifted from the nominal ones."""
import numpy as np
import pytest
from astropy.table import Table

from upad.sim import SimConfig, simulate
from upad.sim.seds import gaia_passbands, star_mag_table, interp_table
from upad.sim.truth import load_manifest

CFG = dict(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=0, n_linearity_flats=0, n_dithers=1,
           workers=1, cosmic_rate=0.0, satellite_probability=0.0, ensure_satellite=False)


@pytest.fixture(scope="module")
def gaia_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("gaia")
    simulate("mini", seed=4, out=out, tiles=1, filters=["gSDSS", "rSDSS"],
             config=SimConfig(**CFG, star_pm_sigma_masyr=6.0, passband_shift_fraction=0.02,
                              refcat_survey_mags=False))
    man = load_manifest(out)
    return out, man, Table.read(out / man["reference_catalog"]), Table.read(out / man["sky_catalog"], hdu="SKY")


def test_gaia_columns_and_no_survey_mags(gaia_sim):
    out, man, ref, sky = gaia_sim
    for c in ("phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "parallax", "parallax_error", "pmra",
              "pmdec", "pmra_error", "pmdec_error", "ref_epoch"):
        assert c in ref.colnames, c
    assert not [c for c in ref.colnames if c.startswith("mag_")]  # a plain Gaia extract
    assert np.all(ref["ref_epoch"] == 2016.0)
    # the stars' proper motions: a few mas/yr, errors smaller for bright stars
    assert 2.0 < np.std(ref["pmra"]) < 20.0
    bright = ref["phot_g_mean_mag"] < 16
    assert np.median(ref["pmra_error"][bright]) < np.median(ref["pmra_error"][~bright])


def test_gaia_colours_follow_temperature(gaia_sim):
    """BP-RP decreases with T_eff (through the real passbands) and G lies between BP and RP for solar stars."""
    out, man, ref, sky = gaia_sim
    star = np.asarray(sky["type"]).astype(str) == "star"
    t = np.asarray(sky["teff"])[star]
    c = np.asarray(sky["phot_bp_mean_mag"])[star] - np.asarray(sky["phot_rp_mean_mag"])[star]
    order = np.argsort(t)
    assert np.all(np.diff(c[order]) <= 1e-6)
    grid, tab = star_mag_table({})
    sun = interp_table(5800.0, grid, tab["gaia:BP"]) - interp_table(5800.0, grid, tab["gaia:RP"])
    assert 0.6 < sun < 1.1  # Vega system: the Sun has BP-RP = 0.82
    assert set(gaia_passbands()) == {"G", "BP", "RP"}


def test_passband_shift_gives_a_colour_term(gaia_sim):
    """The camera's magnitudes differ from the nominal passbands' by a colour-dependent amount."""
    out, man, ref, sky = gaia_sim
    star = np.asarray(sky["type"]).astype(str) == "star"
    c = (np.asarray(sky["phot_bp_mean_mag"]) - np.asarray(sky["phot_rp_mean_mag"]))[star]
    shift = man["passband_shift_aa"]
    assert set(shift) >= {"gSDSS", "rSDSS"} and any(abs(v) > 1 for v in shift.values())
    for f in ("gSDSS", "rSDSS"):
        d = (np.asarray(sky[f"mag_{f}"]) - np.asarray(sky[f"magnom_{f}"]))[star]
        slope = np.polyfit(c, d, 1)[0]
        assert abs(slope) > 1e-4 and np.sign(slope) == -np.sign(shift[f]), (f, slope, shift[f])
