"""Photometric calibration from the references users have (issue #10): a Gaia DR3-like extract (G, BP, RP) through
the packaged transformations, or survey-filter synthetic photometry; colour term, residual map, nominal fallback.

The simulated camera's passbands are shifted from the survey's nominal ones (``passband_shift_fraction``), so that
the camera's natural system has a true colour term against the reference; the stars move (proper motions) between
the catalog epoch 2016.0 and the night. Truth: the frame's ``zp_e`` (natural system) and the sky catalog's
magnitudes through the camera's (``mag_*``) and the nominal (``magnom_*``) passbands.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from upad.io.refcat import epoch_of, propagate_to_epoch, read_reference_catalog
from upad.reduce.photcal import calibrate_zero_point, gaia_to_survey, load_transformations
from upad.reduce.photometry import PhotometryConfig
from upad.reduce.qc import QC_BITS
from upad.sim import SimConfig, simulate
from upad.sim.truth import load_manifest

from .helpers import calibrate, reduce_calibrated, star_ids

FILTERS = ["gSDSS", "rSDSS", "J0660"]
#: a star-rich field (twice the default density) so that a 9.4' mini frame has ~30-60 calibration stars; the
#: survey-filter reference reaches G = 19 (a previous survey release rather than XP's 17.65)
SIM = dict(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=0, n_linearity_flats=0, n_dithers=3,
           workers=2, star_pm_sigma_masyr=6.0,
           passband_shift_fraction=0.05, refcat_synphot_limit=19.0, star_density_r21=7000.0, cosmic_rate=3.0,
           satellite_probability=0.0, ensure_satellite=False)


@pytest.fixture(scope="module")
def photcal_night(tmp_path_factory, own_calibration):
    out = Path(tmp_path_factory.mktemp("photcal"))
    # the independent world (drawn signature, PSF families, distortion beyond SIP 3), with the passband shift and
    # moving stars; it ran in the nominal world until the simulator's stamps stopped folding heavy wings inside and
    # the aperture fluxes lost the sky's mean above the background mesh's mode (blank_sky_level): gSDSS was then
    # +0.022 ... +0.036 mag (Gaia-only), +0.014 ... +0.030 (survey), the stars' fluxes 0.8-2.5 % high
    cfg = SimConfig(**SIM)
    simulate("mini", seed=11, out=out, nights=1, tiles=1, filters=FILTERS, config=cfg)
    cal = own_calibration.get(11, FILTERS, cfg)  # the pipeline's own masters of the same simulated camera
    man = load_manifest(out)
    sky = Table.read(out / man["sky_catalog"], hdu="SKY")
    ref = read_reference_catalog(out / man["reference_catalog"])
    gaia_only = ref.copy()
    gaia_only.remove_columns([c for c in gaia_only.colnames if c.startswith(("mag_", "magerr_"))])
    stars = star_ids(out, man)
    frames = []
    for rec in man["frames"]:
        if rec["kind"] != "science":
            continue
        c = calibrate(out, man, rec, cal=cal, stars=stars)
        ep = epoch_of(rec["date_obs"], rec["exptime"])
        frames.append({"rec": rec, "cal": c, "epoch": ep,
                       "survey": reduce_calibrated(c, propagate_to_epoch(ref, ep)),
                       "gaia": reduce_calibrated(c, propagate_to_epoch(gaia_only, ep))})
    return {"out": out, "manifest": man, "sky": sky, "ref": ref, "gaia_only": gaia_only, "frames": frames}


def _truth(night, frame, zp):
    """True zero point at the colour reference and true colour term over the stars the calibration used."""
    sky = night["sky"]
    row = {int(i): k for k, i in enumerate(sky["id"])}
    ids = np.asarray(night["ref"]["truth_id"])[zp.ref_index]
    rows = np.array([row[int(i)] for i in ids])
    f = frame["rec"]["filter"]
    col = np.asarray(sky["phot_bp_mean_mag"])[rows] - np.asarray(sky["phot_rp_mean_mag"])[rows]
    d = np.asarray(sky[f"mag_{f}"], float)[rows] - np.asarray(sky[f"magnom_{f}"], float)[rows]
    k_true, d0 = np.polyfit(col - zp.colour_ref, d, 1)
    return frame["rec"]["zp_e"] - d0, k_true


@pytest.mark.xfail(strict=True, reason="gSDSS frame 2 +0.0282 > 0.02 + 2 x 0.0036 (frames +0.019/+0.028/+0.022, mean "
                                       "+0.023 > 0.02): the transformation's gap (+0.011) and the calibration stars' "
                                       "FLUX_APCOR +0.7 ... +1.6 % high (issue 10, open)")
def test_gaia_only_reference_zero_point(photcal_night):
    """G/BP/RP only (a plain Gaia DR3 extract): every frame calibrated, zero point within 0.02 mag of the truth."""
    by_filter: dict[str, list[float]] = {}
    per_frame = []
    for fr in photcal_night["frames"]:
        r = fr["gaia"]
        z = r.zeropoint
        assert r.failure is None and z.source == "gaia", (fr["rec"]["file"], r.failure)
        assert z.n_stars >= 15
        zp_true, _ = _truth(photcal_night, fr, z)
        d = z.zp_e - zp_true
        by_filter.setdefault(fr["rec"]["filter"], []).append(d)
        # the transformation's systematic (0.01-0.02 in g and r here: the simulator's toy stars are not the
        # library's) plus the frame's own noise (~0.003)
        per_frame.append((fr["rec"]["filter"], round(float(d), 4), round(float(z.error), 4),
                          abs(d) < 0.02 + 2 * z.error))
        assert r.header["ZPSOURCE"] == "gaia" and "ZPCOLTRM" in r.header and "ZPMAP10" in r.header
        assert r.qc.status == "good", r.qc.reasons
        assert (np.asarray(r.catalog["MAG_APCOR"]) < 99).mean() > 0.5
    assert all(ok for *_, ok in per_frame), per_frame
    for f, d in by_filter.items():
        # measured (2026-12-05, main e2be936: the stamps holding the far wings, the wing extrapolated beyond 24"):
        # gSDSS +0.019, +0.028, +0.022; rSDSS -0.013, -0.010, -0.011 (the transformation's gap to the simulator's
        # stars, docs/calibration.md)
        assert abs(np.mean(d)) < 0.02, (f, d)


@pytest.mark.xfail(strict=True, reason="gSDSS frame 2 +0.0192 > 3 x 0.0045 + 0.005 (frames +0.013/+0.019/+0.013): "
                                       "the calibration stars' FLUX_APCOR +0.9 ... +1.5 % high (issue 10, open)")
def test_survey_reference_zero_point(photcal_night):
    """Survey-filter reference magnitudes (synthetic photometry) are used when present: 0.01 mag (rms over frames)."""
    diffs, per_frame = [], []
    for fr in photcal_night["frames"]:
        z = fr["survey"].zeropoint
        assert z.source == "survey"
        zp_true, _ = _truth(photcal_night, fr, z)
        diffs.append(z.zp_e - zp_true)
        assert z.error < 0.01
        # each frame within its uncertainty: a mini frame has ~40-60 stars with 0.015-0.03 mag reference errors
        # (measured 2026-12-05 on main e2be936: gSDSS +0.013, +0.019, +0.013; rSDSS -0.004, -0.002, +0.002). The fit
        # is linear in the stars' m_ref + 2.5 log F: gSDSS splits exactly into the fit and truth convention -0.0002,
        # the reference magnitudes' noise +0.003/+0.004/+0.001 (1 sigma 0.003, the same stars in the three frames)
        # and the stars' flux bias +0.010/+0.016/+0.012 (their weighted FLUX_APCOR / flux_e: +0.9/+1.5/+1.1 %): of
        # it the aperture correction's tail beyond 8" +0.004/+0.010/+0.009 (APCTAIL 1.0046/1.0389/1.0372, the
        # simulator's PSF 1.0006/1.0291/1.0284; the measured tail's error 0.4-0.6 % with 14-17 PSF stars), the 4"
        # sums less the blank-sky level +0.005/+0.001/+0.005, the 8"/4" ratio +0.001/+0.004/-0.002. rSDSS: reference
        # noise -0.005/-0.009/-0.005, fluxes +0.001/+0.007/+0.007 (each part through the fit's final linear operator)
        per_frame.append((fr["rec"]["filter"], round(float(diffs[-1]), 4), round(float(z.error), 4),
                          abs(diffs[-1]) < 3 * z.error + 0.005))
    assert all(ok for *_, ok in per_frame), per_frame
    assert abs(np.mean(diffs)) < 0.01 and np.sqrt(np.mean(np.square(diffs))) < 0.01, diffs


def test_colour_term_recovered(photcal_night):
    """The camera's colour term against the survey system, per filter (mean over the dithers), within 0.01."""
    by_filter: dict[str, list] = {}
    for fr in photcal_night["frames"]:
        z = fr["survey"].zeropoint
        assert z.colour_term_fitted
        _, k_true = _truth(photcal_night, fr, z)
        by_filter.setdefault(fr["rec"]["filter"], []).append((z.colour_term, z.colour_term_error, k_true))
    assert set(by_filter) == set(FILTERS)
    shifts = photcal_night["manifest"]["passband_shift_aa"]
    assert max(abs(shifts[f]) for f in FILTERS) > 5  # the camera really differs from the nominal passbands
    assert max(abs(np.mean([v[2] for v in vals])) for vals in by_filter.values()) > 0.01  # a real colour term
    for f, vals in by_filter.items():
        k, e, kt = (np.array(v) for v in zip(*vals))
        w = 1 / e ** 2
        k_mean = float(np.sum(w * k) / np.sum(w))
        assert abs(k_mean - kt.mean()) < 0.01, (f, k_mean, kt.mean())


def test_moving_stars_need_the_exact_epoch(photcal_night):
    """The stars moved since 2016.0: the catalog propagated to the frame's exact epoch lands on the truth."""
    fr = photcal_night["frames"][0]
    obj = fr["cal"].objects
    ref = photcal_night["ref"]
    pos = {int(i): k for k, i in enumerate(obj["id"])}
    common = [(k, pos[int(t)]) for k, t in enumerate(ref["truth_id"]) if int(t) in pos]
    kr, ko = (np.array(v) for v in zip(*common))
    w = fr["cal"].true_wcs

    def offset(cat):
        x, y = w.all_world2pix(np.asarray(cat["ra"])[kr], np.asarray(cat["dec"])[kr], 0)
        return np.hypot(x - np.asarray(obj["x"])[ko], y - np.asarray(obj["y"])[ko])

    exact = offset(propagate_to_epoch(ref, fr["epoch"]))
    stale = offset(ref)
    assert np.median(exact) < 0.01  # pixels
    assert np.median(stale) > 5 * np.median(exact)


def test_no_photometric_reference_gives_nominal_zero_point(photcal_night):
    """A reference with positions only: astrometry and catalog as usual, nominal zero point, QC warning."""
    fr = photcal_night["frames"][0]
    ref = propagate_to_epoch(photcal_night["gaia_only"], fr["epoch"])
    bare = ref.copy()
    bare.remove_columns(["g", "bp", "rp"])
    nominal = fr["rec"]["zp_e"] + 0.3
    r = reduce_calibrated(fr["cal"], bare, nominal_zp_e=nominal)
    assert r.failure is None and r.astrometry is not None and r.catalog is not None
    assert r.zeropoint.source == "nominal" and r.zeropoint.zp_e == pytest.approx(nominal)
    assert r.qc.status == "bad" and r.qc.flag & QC_BITS["PHOTCAL"]
    assert any("no_reference" in s for s in r.qc.reasons)
    assert r.header["ZPSOURCE"] == "nominal" and "MAG_APCOR" in r.catalog.colnames


def test_no_colour_overlap_is_a_recorded_outcome(photcal_night):
    """Reference stars all outside the transformation's colour range: nominal zero point with the reason."""
    fr = photcal_night["frames"][0]
    ref = propagate_to_epoch(photcal_night["gaia_only"], fr["epoch"])
    ref["bp"] = ref["bp"] + 4.0  # every star far redder than the validity range
    r = reduce_calibrated(fr["cal"], ref, nominal_zp_e=fr["rec"]["zp_e"])
    assert r.zeropoint.source == "nominal"
    assert any("no colour overlap" in s for s in r.qc.reasons), r.qc.reasons
    # without a nominal zero point the frame fails with the same reason
    r2 = reduce_calibrated(fr["cal"], ref)
    assert r2.failure is not None and r2.failure.reason == "no_reference"
    assert "no colour overlap" in r2.failure.message


def test_calibrate_zero_point_recovers_injected_terms():
    """Pure function: a known zero point, colour term and field gradient are recovered from noisy stars."""
    rng = np.random.default_rng(3)
    n = 300
    shape = (1000, 1200)
    x, y = rng.uniform(0, 1199, n), rng.uniform(0, 999, n)
    g = rng.uniform(14, 18, n)
    c = rng.uniform(0.3, 1.3, n)
    m_ref, valid, _ = gaia_to_survey(g, c, "rSDSS")
    assert valid.all()
    zp, k, gx = 23.5, 0.04, 0.03
    u = (x - 599.5) / 599.5
    m_inst = m_ref + k * (c - 1.0) + gx * u  # natural mag seen by the camera
    flux = 10 ** (-0.4 * (m_inst - zp)) * 30.0
    err = 0.005 * flux
    flux = flux + rng.normal(0, 1, n) * err
    cat = Table({"g": g, "bp": c + 0.5, "rp": np.full(n, 0.5)})
    idx = np.arange(n)
    z = calibrate_zero_point(flux, err, x, y, cat, det_index=idx, ref_index=idx, exptime=30.0,
                             filter_name="rSDSS", shape=shape, config=PhotometryConfig())
    assert z.source == "gaia"
    assert abs(z.zp_e - zp) < 0.003
    assert abs(z.colour_term - k) < 0.005
    # terms (0,0), (0,1), (1,0): the zero point falls by gx towards +u (the stars look fainter there)
    assert z.map_order == 1 and abs(z.map_coef[2] + gx) < 0.003 and abs(z.map_coef[1]) < 0.003


def test_packaged_transformations_are_documented():
    """Every J-PLUS filter has a transformation with a validity range and an rms, as docs/calibration.md says."""
    tr = load_transformations("jplus")
    assert tr["colour"] == "BP-RP" and len(tr["filters"]) == 12
    for f, t in tr["filters"].items():
        assert t["colour_min"] < 0.2 and t["colour_max"] > 1.2, f
        assert 0 <= t["rms"] < 0.2
    _, valid, _ = gaia_to_survey(np.array([15.0, 15.0]), np.array([0.8, 3.5]), "rSDSS")
    assert valid.tolist() == [True, False]


def test_previews_of_gaia_and_nominal_calibrations(photcal_night, tmp_path):
    """The QC figure plots the reference of whichever route calibrated the frame (and none for a nominal one)."""
    from upad.reduce.preview import write_previews

    fr = photcal_night["frames"][0]
    ref = propagate_to_epoch(photcal_night["gaia_only"], fr["epoch"])
    written = write_previews(fr["gaia"], tmp_path / "g.png", tmp_path / "g_qc.png", refcat=ref)
    assert (tmp_path / "g_qc.png") in written or (tmp_path / "g_qc.png").exists()
    bare = ref.copy()
    bare.remove_columns(["g", "bp", "rp"])
    r = reduce_calibrated(fr["cal"], bare, nominal_zp_e=fr["rec"]["zp_e"])
    write_previews(r, tmp_path / "n.png", tmp_path / "n_qc.png", refcat=bare)
    assert (tmp_path / "n_qc.png").exists()


def test_packaged_transformations_reproduce_from_the_library():
    """The packaged file is what upad.reduce.photcal_derive derives (no hand edits, no drift)."""
    from upad.reduce.photcal_derive import derive_transformations

    new = derive_transformations("jplus")
    old = load_transformations("jplus")
    for f, t in old["filters"].items():
        assert np.allclose(new["filters"][f]["coef"], t["coef"], atol=2e-6), f
        assert new["filters"][f]["rms"] == pytest.approx(t["rms"], abs=1e-5)
