"""Joint astrometry and relative photometry of a tile's exposures (upad.coadd.relative), against exact synthetic
truth: exposures whose WCS is off by a known shift (0.3″), rotation and scale, whose zero point is off by a known
±0.03 mag, noisy catalogs with outliers, stars with proper motions and a Gaia-like reference at 2016.0."""
from __future__ import annotations

import numpy as np
import pytest

from .helpers import SIP, tan_wcs
from upad.coadd.relative import (ExposureStars, ReferenceStars, centroid_error_arcsec, fold_affine_into_wcs,
                                 match_exposures, select_stars, solve_joint_astrometry, solve_relative_photometry,
                                 tan_deproject, tan_project)

SHAPE = (1200, 1200)
SCALE = 0.55  # arcsec/pixel
CENTRE = (150.0, 2.0)
FWHM = 1.1  # arcsec
REF_EPOCH = 2016.0


def _sky(rng, n=900):
    """Stars over the dithered area: positions at 2016.0, proper motions (mas/yr), AB magnitudes."""
    half = 0.55 * SHAPE[0] * SCALE / 3600.0 + 0.02
    xi = rng.uniform(-half, half, n)
    eta = rng.uniform(-half, half, n)
    ra, dec = tan_deproject(xi, eta, *CENTRE)
    pmra = rng.normal(0, 8.0, n)
    pmdec = rng.normal(-4.0, 8.0, n)
    mag = rng.uniform(15.5, 21.0, n)
    return {"ra": ra, "dec": dec, "pmra": pmra, "pmdec": pmdec, "mag": mag}


def _at(sky, epoch):
    dt = epoch - REF_EPOCH
    cosd = np.cos(np.radians(sky["dec"]))
    return sky["ra"] + dt * sky["pmra"] / 3.6e6 / cosd, sky["dec"] + dt * sky["pmdec"] / 3.6e6


def _perturbed(w, *, shift_arcsec, rot_arcsec, scale_ppm):
    """``w`` with its tangent point moved by ``shift_arcsec`` (east, north) and its CD rotated and scaled."""
    bad = w.deepcopy()
    ra, dec = tan_deproject(np.array([shift_arcsec[0] / 3600.0]), np.array([shift_arcsec[1] / 3600.0]),
                            *w.wcs.crval)
    bad.wcs.crval = [ra[0], dec[0]]
    t = np.radians(rot_arcsec / 3600.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * (1 + scale_ppm * 1e-6)
    bad.wcs.cd = rot @ w.wcs.cd
    bad.wcs.set()
    return bad


ERRORS = [  # (shift east, north ″), rotation ″, scale ppm, zero-point error (mag)
    ((0.30, 0.00), 15.0, 80.0, +0.03),
    ((-0.21, 0.21), -10.0, -60.0, -0.03),
    ((0.00, -0.30), 25.0, 0.0, +0.02),
    ((0.15, 0.26), -20.0, 120.0, -0.01),
]
DITHERS = [(0.0, 0.0), (60.0, 40.0), (-50.0, 55.0), (35.0, -60.0)]  # arcsec


def _exposures(seed=1, *, errors=ERRORS, dithers=DITHERS, outliers=0.03, sky=None, zp_true=30.0, epoch0=2026.1,
               epoch_step=0.01):
    """Synthetic exposures: ``(exposures, truth)`` with truth per exposure: true WCS, epoch, ZP error."""
    rng = np.random.default_rng(seed)
    sky = sky if sky is not None else _sky(rng)
    out, truth = [], []
    for k, ((sx, sy), rot, ppm, dzp) in enumerate(errors):
        dx, dy = dithers[k]
        c_ra, c_dec = tan_deproject(np.array([dx / 3600.0]), np.array([dy / 3600.0]), *CENTRE)
        true = tan_wcs(SHAPE, crval=(c_ra[0], c_dec[0]), scale_arcsec=SCALE, rot_deg=0.3,
                       sip={key: v * 0.25 for key, v in SIP.items()})
        epoch = epoch0 + epoch_step * k
        ra, dec = _at(sky, epoch)
        x, y = true.all_world2pix(ra, dec, 0)
        inside = (x > 5) & (y > 5) & (x < SHAPE[1] - 6) & (y < SHAPE[0] - 6)
        flux_true = 10 ** (-0.4 * (sky["mag"][inside] - zp_true))
        flux_err = np.sqrt(flux_true + 400.0 * 30)  # Poisson + sky in the aperture (counts = e-)
        flux = flux_true + rng.normal(0, 1, flux_true.size) * flux_err
        snr = flux_true / flux_err
        pos_err = centroid_error_arcsec(FWHM, snr)
        xo = x[inside] + rng.normal(0, 1, snr.size) * pos_err / SCALE
        yo = y[inside] + rng.normal(0, 1, snr.size) * pos_err / SCALE
        n_out = int(outliers * snr.size)
        bad = rng.choice(snr.size, n_out, replace=False)
        xo[bad] += rng.choice([-1, 1], n_out) * rng.uniform(0.4, 0.9, n_out) / SCALE  # within the match radius
        flux[rng.choice(snr.size, n_out, replace=False)] *= rng.choice([0.7, 1.35], n_out)  # variables, blends
        given = _perturbed(true, shift_arcsec=(sx, sy), rot_arcsec=rot, scale_ppm=ppm)
        out.append(ExposureStars(name=f"e{k}", wcs=given, x=xo, y=yo, flux=flux, flux_err=flux_err,
                                 zero_point=zp_true + dzp, pos_err_arcsec=pos_err, epoch=epoch,
                                 zero_point_err=0.01))
        truth.append({"wcs": true, "epoch": epoch, "dzp": dzp, "x": x[inside], "y": y[inside],
                      "ra": ra[inside], "dec": dec[inside]})
    return out, truth, sky


def _reference(sky, rng, *, mag_limit=19.5, err_mas=1.0, pm_err_mas=0.3, epoch=2026.1):
    """A Gaia-like reference at 2016.0 of the stars brighter than ``mag_limit``, propagated to ``epoch`` (its
    position errors grow with the proper-motion errors)."""
    sel = sky["mag"] < mag_limit
    n = int(sel.sum())
    cosd = np.cos(np.radians(sky["dec"][sel]))
    ra = sky["ra"][sel] + rng.normal(0, err_mas, n) / 3.6e6 / cosd
    dec = sky["dec"][sel] + rng.normal(0, err_mas, n) / 3.6e6
    pmra = sky["pmra"][sel] + rng.normal(0, pm_err_mas, n)
    pmdec = sky["pmdec"][sel] + rng.normal(0, pm_err_mas, n)
    dt = epoch - REF_EPOCH
    ra = ra + dt * pmra / 3.6e6 / cosd
    dec = dec + dt * pmdec / 3.6e6
    err = np.hypot(err_mas, dt * pm_err_mas) / 1e3
    return ReferenceStars(ra=ra, dec=dec, err_arcsec=np.full(n, err), pmra=pmra, pmdec=pmdec, epoch=epoch)


def _sky_err_mas(wcs, t):
    ra, dec = wcs.all_pix2world(t["x"], t["y"], 0)
    dra = (ra - t["ra"]) * np.cos(np.radians(t["dec"])) * 3.6e6
    ddec = (dec - t["dec"]) * 3.6e6
    return np.sqrt(np.mean(dra ** 2 + ddec ** 2))


def test_joint_astrometry_recovers_the_true_wcs_of_every_exposure():
    exposures, truth, sky = _exposures()
    ref = _reference(sky, np.random.default_rng(7))
    res = solve_joint_astrometry(exposures, ref, radius_arcsec=1.0, min_stars=10)
    assert res.anchored and res.n_reference > 100 and not res.reasons
    for e, t, a, err in zip(exposures, truth, res.exposures, ERRORS):
        before = _sky_err_mas(e.wcs, t)
        after = _sky_err_mas(a.wcs, t)
        print(f"{a.name}: {before:.1f} -> {after:.2f} mas rms at {len(t['x'])} stars; {a.n_stars} in the fit "
              f"({a.n_reference} reference), residual rms {a.rms_arcsec * 1e3:.1f} mas; fold {a.fold_residual_mas:.2e}"
              f" mas; rotation {a.rotation_arcsec:.2f}\" scale {a.scale_ppm:.1f} ppm")
        assert before > 250.0
        assert a.corrected and after <= 5.0, f"{a.name}: {after:.2f} mas rms against the truth"
        assert a.fold_residual_mas < 1.0
        # the correction undoes the perturbation: the opposite rotation and scale
        assert abs(a.rotation_arcsec + err[1]) < 1.0 and abs(a.scale_ppm + err[2]) < 15.0
        assert a.rms_arcsec < 0.05  # the outliers (0.4-0.9") are clipped
    # the reduced frames' own errors are not in the stars' residuals any more
    assert res.rms_arcsec < 0.05 and res.rms_reference_arcsec < 0.02


def test_exposures_years_apart_are_joined_with_the_proper_motions():
    rng = np.random.default_rng(20)
    sky = _sky(rng)
    sky["pmra"] *= 3.0  # 24 mas/yr rms: 0.14" over the 6 years between the first and the last exposure
    sky["pmdec"] *= 3.0
    exposures, truth, _ = _exposures(21, sky=sky, epoch0=2020.0, epoch_step=2.0)
    ref = _reference(sky, np.random.default_rng(22), epoch=2023.0)
    res = solve_joint_astrometry(exposures, ref)
    errs = [_sky_err_mas(a.wcs, t) for a, t in zip(res.exposures, truth)]
    static = ReferenceStars(ra=ref.ra, dec=ref.dec, err_arcsec=ref.err_arcsec, epoch=ref.epoch)  # motions unknown
    res0 = solve_joint_astrometry(exposures, static)
    print(f"epochs 2020-2026: {np.round(errs, 2)} mas rms; residuals {res.rms_arcsec * 1e3:.1f} mas with the "
          f"motions, {res0.rms_arcsec * 1e3:.1f} mas without")
    assert max(errs) <= 5.0
    assert res.rms_arcsec < 0.6 * res0.rms_arcsec


def test_two_filters_solved_apart_agree_through_the_reference():
    rng = np.random.default_rng(3)
    sky = _sky(rng)
    ref = _reference(sky, np.random.default_rng(8))
    errs_g = [((-0.1, 0.25), -5.0, 40.0, 0.0), ((0.28, -0.12), 12.0, -30.0, 0.0), ((0.0, 0.2), 0.0, 90.0, 0.0)]
    a, ta, _ = _exposures(4, sky=sky, errors=ERRORS[:3])
    b, tb, _ = _exposures(5, sky=sky, errors=errs_g)
    ra_ = solve_joint_astrometry(a, ref)
    rb_ = solve_joint_astrometry(b, ref)
    # the same sky point through exposure 0 of each filter (same true pointing): agreement at the mas level
    gx, gy = np.meshgrid(np.linspace(0, SHAPE[1] - 1, 7), np.linspace(0, SHAPE[0] - 1, 7))
    p = ta[0]["wcs"].all_pix2world(gx.ravel(), gy.ravel(), 0)
    xa, ya = ra_.exposures[0].wcs.all_world2pix(*p, 0)
    xb, yb = rb_.exposures[0].wcs.all_world2pix(*p, 0)
    d = np.hypot(xa - xb, ya - yb) * SCALE * 1e3
    print(f"filter A vs B: {np.sqrt(np.mean(d ** 2)):.2f} mas rms, before "
          f"{np.sqrt(np.mean(np.hypot(*np.subtract(a[0].wcs.all_world2pix(*p, 0), b[0].wcs.all_world2pix(*p, 0))) ** 2)) * SCALE * 1e3:.0f}")
    assert np.sqrt(np.mean(d ** 2)) < 5.0


def test_without_reference_the_mean_solution_is_kept():
    exposures, truth, sky = _exposures(2)
    res = solve_joint_astrometry(exposures, None)
    assert not res.anchored and any("internal solution" in r for r in res.reasons)
    assert all(a.corrected for a in res.exposures)
    # the exposures agree with each other: a star through two corrected WCSs lands at one position
    gx, gy = np.meshgrid(np.linspace(300, 900, 5), np.linspace(300, 900, 5))
    sky0 = truth[0]["wcs"].all_pix2world(gx.ravel(), gy.ravel(), 0)
    pos = [np.array(a.wcs.all_world2pix(*sky0, 0)) for a in res.exposures]
    true_pos = [np.array(t["wcs"].all_world2pix(*sky0, 0)) for t in truth]
    # relative positions: exposure k's mapping agrees with the truth up to one common affine (the gauge)
    rel = [(p - p[:, :1]) - (q - q[:, :1]) for p, q in zip(pos, true_pos)]
    spread = np.std(np.array(rel), axis=0) * SCALE * 1e3
    assert np.max(spread) < 10.0
    # the gauge: the mean correction is zero (at the tangent point of the fit, the mean pointing)
    shifts = []
    for e, a in zip(exposures, res.exposures):
        x, y = e.wcs.all_world2pix([CENTRE[0]], [CENTRE[1]], 0)
        ra, dec = a.wcs.all_pix2world(x, y, 0)
        shifts.append([(ra[0] - CENTRE[0]) * np.cos(np.radians(CENTRE[1])) * 3.6e6, (dec[0] - CENTRE[1]) * 3.6e6])
    mean = np.mean(shifts, axis=0)
    print(f"mean correction at the centre {mean} mas; corrections {np.round(shifts, 1).tolist()}")
    assert np.hypot(*mean) < 0.5 and np.max(np.hypot(*np.transpose(shifts))) > 100.0


def test_relative_photometry_recovers_the_zero_point_errors_and_keeps_their_mean():
    exposures, truth, _ = _exposures(6)
    res = solve_relative_photometry(exposures, radius_arcsec=1.0, min_stars=10)
    dzp = np.array([t["dzp"] for t in truth])
    w = np.array([1 / e.zero_point_err ** 2 for e in exposures])
    expected = -(dzp - np.sum(w * dzp) / np.sum(w))  # the anchor: the weighted mean offset is 0
    got = np.array([o.offset_mag for o in res.exposures])
    print("offsets", np.round(got, 4), "expected", np.round(expected, 4), "rms", round(res.rms_mag, 4),
          "stars", res.n_stars)
    assert np.max(np.abs(got - expected)) <= 0.002
    assert abs(np.sum(w * got)) < 1e-9
    assert all(o.reason is None and o.n_stars > 100 for o in res.exposures)
    assert all(0 < o.offset_err_mag < 0.002 for o in res.exposures)
    zps = [o.zero_point for o in res.exposures]
    assert res.zero_point == pytest.approx(np.median(zps))
    # the corrected zero points agree (the truth is 30 for all)
    assert np.ptp(zps) < 0.004


def test_unequal_zero_point_errors_weight_the_anchor():
    exposures, truth, _ = _exposures(9)
    for e, zerr in zip(exposures, (0.005, 0.02, 0.02, 0.04)):
        e.zero_point_err = zerr
    res = solve_relative_photometry(exposures)
    w = np.array([1 / e.zero_point_err ** 2 for e in exposures])
    got = np.array([o.offset_mag for o in res.exposures])
    dzp = np.array([t["dzp"] for t in truth])
    assert abs(np.sum(w * got)) < 1e-9
    assert np.max(np.abs(got - (-(dzp - np.sum(w * dzp) / np.sum(w))))) <= 0.002


def test_an_exposure_without_common_stars_keeps_its_own_solution():
    errors = ERRORS + [((0.2, 0.2), 0.0, 0.0, 0.05)]
    dithers = DITHERS + [(3000.0, 0.0)]  # 50' away: no star in common with the others
    rng = np.random.default_rng(10)
    near = _sky(rng)
    far = _sky(rng, 300)
    ra, dec = tan_project(far["ra"], far["dec"], *CENTRE)
    far["ra"], far["dec"] = tan_deproject(ra + 3000.0 / 3600.0, dec, *CENTRE)
    sky = {k: np.concatenate([near[k], far[k]]) for k in near}
    exposures, truth, sky = _exposures(10, errors=errors, dithers=dithers, sky=sky)
    assert len(exposures[4].x) > 100
    ref = _reference({k: v[:len(near["ra"])] for k, v in sky.items()}, np.random.default_rng(11))  # none there
    ast = solve_joint_astrometry(exposures, ref)
    pho = solve_relative_photometry(exposures)
    lone = ast.exposures[4]
    assert not lone.corrected and lone.wcs is exposures[4].wcs and "own solution kept" in lone.reason
    assert any(r.startswith("e4:") for r in ast.reasons)
    assert all(a.corrected and _sky_err_mas(a.wcs, t) <= 5.0 for a, t in zip(ast.exposures[:4], truth))
    p = pho.exposures[4]
    assert p.offset_mag == 0.0 and p.zero_point == exposures[4].zero_point and "own zero point kept" in p.reason
    dzp = np.array([t["dzp"] for t in truth[:4]])
    got = np.array([o.offset_mag for o in pho.exposures[:4]])
    assert np.max(np.abs(got + dzp - np.mean(dzp))) <= 0.002


def test_few_common_stars_are_refused_per_exposure():
    exposures, truth, sky = _exposures(12, errors=ERRORS[:3], dithers=DITHERS[:3])
    keep = np.arange(len(exposures[2].x)) < 5  # exposure 2 keeps 5 stars
    e = exposures[2]
    for k in ("x", "y", "flux", "flux_err", "pos_err_arcsec"):
        setattr(e, k, getattr(e, k)[keep])
    ast = solve_joint_astrometry(exposures, None, min_stars=10)
    pho = solve_relative_photometry(exposures, min_stars=10)
    assert not ast.exposures[2].corrected and "needs 10" in ast.exposures[2].reason
    assert ast.exposures[0].corrected and ast.exposures[1].corrected
    assert pho.exposures[2].offset_mag == 0.0 and "needs 10" in pho.exposures[2].reason
    d = pho.exposures[0].offset_mag - pho.exposures[1].offset_mag
    assert abs(d - (truth[1]["dzp"] - truth[0]["dzp"])) <= 0.002


def test_a_single_exposure():
    exposures, truth, sky = _exposures(13, errors=ERRORS[:1], dithers=DITHERS[:1])
    ref = _reference(sky, np.random.default_rng(14))
    ast = solve_joint_astrometry(exposures, ref)
    assert ast.exposures[0].corrected and _sky_err_mas(ast.exposures[0].wcs, truth[0]) <= 5.0  # on the reference
    pho = solve_relative_photometry(exposures)
    assert pho.exposures[0].offset_mag == 0.0 and "single exposure" in pho.exposures[0].reason
    assert pho.zero_point == exposures[0].zero_point
    none = solve_joint_astrometry(exposures, None)
    assert not none.exposures[0].corrected and none.exposures[0].reason
    empty = solve_joint_astrometry([], None)
    assert empty.exposures == [] and empty.reasons


def test_fold_of_an_affine_correction_is_exact_to_a_microarcsecond_level():
    w = tan_wcs((9200, 9200), crval=(210.0, 55.0), scale_arcsec=0.55, rot_deg=1.0,
                sip={key: v * 0.002 for key, v in SIP.items()})  # a J-PLUS-size field (1.4 deg), far north
    lin = np.array([[2e-5, -1e-4], [1.1e-4, -3e-5]])
    new, fold = fold_affine_into_wcs(w, centre=(210.3, 55.2), offset_arcsec=(0.8, -0.5), linear=lin, grid=11)
    # independent check on random pixels, not the lattice of the fit
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 9199, 500), rng.uniform(0, 9199, 500)
    ra, dec = w.all_pix2world(x, y, 0)
    xi, eta = tan_project(ra, dec, 210.3, 55.2)
    v = np.column_stack([xi, eta]) * 3600
    t = v + np.array([0.8, -0.5]) + v @ lin.T
    tra, tdec = tan_deproject(t[:, 0] / 3600, t[:, 1] / 3600, 210.3, 55.2)
    nra, ndec = new.all_pix2world(x, y, 0)
    d = np.hypot((nra - tra) * np.cos(np.radians(tdec)), ndec - tdec) * 3.6e6
    print(f"fold: {fold:.3e} mas on the lattice, {d.max():.3e} mas at random pixels")
    assert fold < 1.0 and d.max() < 1.0
    assert np.allclose(new.sip.a, w.sip.a) and np.allclose(new.wcs.crpix, w.wcs.crpix)


def test_matching_drops_ambiguous_groups_and_select_stars():
    from astropy.table import Table

    exposures, truth, sky = _exposures(15, errors=ERRORS[:2], dithers=DITHERS[:2])
    e = exposures[0]
    # a close pair in exposure 0: its group holds two detections of one exposure and is dropped
    e.x = np.append(e.x, e.x[0] + 0.5)
    e.y = np.append(e.y, e.y[0])
    for k in ("flux", "flux_err", "pos_err_arcsec"):
        setattr(e, k, np.append(getattr(e, k), getattr(e, k)[0]))
    m = match_exposures(exposures, radius_arcsec=1.0)
    assert not np.any((m.exposure == 0) & (m.index == 0))
    assert not np.any((m.exposure == 0) & (m.index == len(e.x) - 1))
    assert np.all(np.bincount(m.star * 2 + m.exposure) <= 1)
    cat = Table({"FLAGS": [0, 0, 4, 0, 0], "IMAFLAGS_ISO": [0, 0, 0, 8, 0], "CLASS_STAR": [0.9, 0.1, 0.9, 0.9, 0.9],
                 "FLUX_APCOR": [1e4, 1e4, 1e4, 1e4, 10.0], "FLUXERR_APCOR": [100.0, 100, 100, 100, 10],
                 "XWIN_IMAGE": [1.0, 2, 3, 4, 5], "YWIN_IMAGE": [1.0, 2, 3, 4, 5]})
    assert select_stars(cat).tolist() == [True, False, False, False, False]
