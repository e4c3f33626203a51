"""PSF families of the simulator: rendering against GalSim, the true (effective) FWHM, configuration."""
from __future__ import annotations

import math

import numpy as np
import pytest

from upad.errors import UpadError
from upad.sim import SimConfig
from upad.sim.psf import PSFModel, double_gaussian_sigma, draw_psf_model
from upad.sim.render import ZonePSF, _OpticsOTF, effective_fwhm, render_batch


def _galsim_stamp(obj, N, cx, cy):
    return obj.drawImage(nx=N, ny=N, scale=1.0, offset=(cx - (N - 1) / 2, cy - (N - 1) / 2)).array


def test_kolmogorov_optics_render_matches_galsim():
    import galsim

    ab = [0, 0, 0, 0, 0.1, 0.05, -0.03, 0.06, 0.04, 0, 0, 0.03]
    lod = 0.6e-6 / 0.83 * 206264.806 / 0.55
    z = ZonePSF("kolmogorov_optics", 2.0, 0.03, -0.02, otf=_OpticsOTF(lod, ab, 0.35))
    N = 64
    st = render_batch(N, z.kimage(N), np.array([1e5]), np.array([31.3], np.float32), np.array([32.1], np.float32))[0]
    obj = galsim.Convolve(galsim.Kolmogorov(fwhm=2.0).shear(g1=0.03, g2=-0.02),
                          galsim.OpticalPSF(lam_over_diam=lod, aberrations=ab, obscuration=0.35)).withFlux(1e5)
    ref = _galsim_stamp(obj, N, 31.3, 32.1)
    assert np.abs(st - ref).max() < 0.01 * ref.max()
    # the effective FWHM against GalSim's profile drawn without the pixel on a fine grid
    h = 2.0 / 40
    im = obj.drawImage(nx=800, ny=800, scale=h, method="no_pixel").array
    ref_fwhm = 2 * math.sqrt((im >= im.max() / 2).sum() * h * h / math.pi)
    assert effective_fwhm(z.profile_k, 2.0) == pytest.approx(ref_fwhm, rel=0.005)


def test_double_gaussian_render_and_fwhm():
    import galsim

    f, r, fw = 0.2, 2.2, 1.3
    s1 = float(double_gaussian_sigma(fw, f, r))
    z = ZonePSF("double_gaussian", fw, 0.02, 0.01, dg_wing_fraction=f, dg_width_ratio=r)
    N = 32
    st = render_batch(N, z.kimage(N), np.array([1e4]), np.array([15.6], np.float32), np.array([15.2], np.float32))[0]
    obj = galsim.Add([galsim.Gaussian(sigma=s1, flux=1 - f), galsim.Gaussian(sigma=r * s1, flux=f)])
    ref = _galsim_stamp(obj.shear(g1=0.02, g2=0.01).withFlux(1e4), N, 15.6, 15.2)
    assert np.abs(st - ref).max() < 2e-3 * ref.max()
    assert effective_fwhm(z.profile_k, fw) == pytest.approx(fw, rel=1e-3)
    # a sheared Moffat: the effective FWHM is that of the round profile
    zm = ZonePSF("moffat", 1.7, 0.05, -0.03, beta=2.5)
    assert effective_fwhm(zm.profile_k, 1.7) == pytest.approx(1.7, rel=1e-3)


def test_family_selection_and_seeing_overrides():
    rng = np.random.default_rng(3)
    cfg = SimConfig(psf_family="double_gaussian", psf_field_bump=0.05)
    m = draw_psf_model(rng, fwhm_centre=1.0, shape=(100, 100), cfg=cfg, rng_family=np.random.default_rng(4))
    assert m.family == "double_gaussian" and 0.1 <= m.dg_wing_fraction <= 0.3 and abs(m.bump_amp) == 0.05
    d = m.to_dict()
    assert d["model"] == "double_gaussian"
    # the bump: not a low-order polynomial (a quadratic fit leaves residuals)
    x, y = np.meshgrid(np.linspace(0, 99, 25), np.linspace(0, 99, 25))
    fw = m.at(x.ravel(), y.ravel())[0]
    u, v = m.uv(x.ravel(), y.ravel())
    A = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    res = fw - A @ np.linalg.lstsq(A, fw, rcond=None)[0]
    assert res.std() > 0.002
    cm = SimConfig(psf_family="moffat", psf_beta_range=(2.0, 5.0))
    betas = {draw_psf_model(rng, fwhm_centre=1.0, shape=(10, 10), cfg=cm,
                            rng_family=np.random.default_rng(k)).beta for k in range(5)}
    assert len(betas) == 5 and all(2.0 <= b <= 5.0 for b in betas)
    # the nominal world: plain Moffat of psf_beta, no extra draws
    m0 = draw_psf_model(np.random.default_rng(1), fwhm_centre=1.0, shape=(10, 10), cfg=SimConfig.nominal())
    assert m0.family == "moffat" and m0.beta == 3.0 and m0.bump_amp == 0.0
    assert isinstance(m0, PSFModel)
    with pytest.raises(UpadError):
        SimConfig(psf_family="airy")


def test_truth_records_the_effective_fwhm(tmp_path):
    from astropy.table import Table

    from upad.sim import simulate
    from upad.sim.truth import load_manifest

    cfg = SimConfig(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_dithers=1, workers=1, n_ptc_pairs=0,
                    n_linearity_flats=0, psf_family="kolmogorov_optics", psf_seeing_draw_range=(0.5, 2.5),
                    satellite_probability=0.0, ensure_satellite=False, disabled=("cosmics",))
    simulate("mini", seed=2, out=tmp_path, nights=1, tiles=1, filters=["rSDSS"], config=cfg)
    man = load_manifest(tmp_path)
    rec = [r for r in man["frames"] if r["kind"] == "science"][0]
    ob = Table.read(tmp_path / rec["truth"], hdu="OBJECTS")
    atm = rec["psf"]["fwhm_centre"]
    assert 0.5 <= atm <= 2.5 and rec["psf"]["family"] == "kolmogorov_optics"
    fw = np.asarray(ob["fwhm_arcsec"])
    # optics broaden the atmosphere's FWHM, and the FWHM varies over the field
    assert np.median(fw) > atm and fw.std() > 0


def _windowed_centroid(img: np.ndarray, x0: float, y0: float) -> tuple[float, float]:
    """SExtractor's windowed centroid on a noiseless stamp (window sigma = 2 r50 / 2.3548, r50 about x0, y0)."""
    yy, xx = np.indices(img.shape, dtype=float)
    r = np.hypot(xx - x0, yy - y0).ravel()
    o = np.argsort(r)
    cum = np.cumsum(img.ravel()[o])
    s2 = (2 * r[o][np.searchsorted(cum, 0.5 * cum[-1])] / 2.3548) ** 2
    x, y = x0, y0
    for _ in range(500):
        w = img * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / s2)
        ex, ey = (w * (xx - x)).sum() / w.sum(), (w * (yy - y)).sum() / w.sum()
        x, y = x + 2 * ex, y + 2 * ey
        if abs(ex) + abs(ey) < 1e-9:
            break
    return x, y


def test_truth_centroid_offset_is_where_the_drawn_light_is_centred():
    from upad.sim.render import centroid_offset, profile_grid

    # coma (z7, z8) shifts the light of a star from its position; a well-sampled star (FWHM 4 px) drawn by the
    # renderer has its windowed centroid where centroid_offset says, and a centrosymmetric family has none
    lod = 0.62e-6 / 0.83 * 206264.806 / 0.55
    z = ZonePSF("kolmogorov_optics", 3.5, 0.02, -0.01,
                otf=_OpticsOTF(lod, [0, 0, 0, 0, 0.05, 0.03, 0.02, 0.07, -0.05, 0, 0, 0.02], 0.35))
    grid = profile_grid(z.profile_k, z.fwhm_px)
    dx, dy, mx, my = centroid_offset(*grid)
    N, cx, cy = 96, 47.3, 48.6
    st = render_batch(N, z.kimage(N), np.array([1.0]), np.array([cx], np.float32), np.array([cy], np.float32))[0]
    wx, wy = _windowed_centroid(st.astype(float), cx, cy)
    assert math.hypot(dx, dy) > 0.05 and math.hypot(mx, my) > 0.05
    assert wx - cx == pytest.approx(dx, abs=0.004) and wy - cy == pytest.approx(dy, abs=0.004)
    zm = ZonePSF("moffat", 2.5, 0.05, -0.03, beta=2.5)
    assert centroid_offset(*profile_grid(zm.profile_k, 2.5)) == (0.0, 0.0, 0.0, 0.0)
    st = render_batch(N, zm.kimage(N), np.array([1.0]), np.array([cx], np.float32), np.array([cy], np.float32))[0]
    wx, wy = _windowed_centroid(st.astype(float), cx, cy)
    assert abs(wx - cx) < 2e-3 and abs(wy - cy) < 2e-3
