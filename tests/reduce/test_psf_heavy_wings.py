"""The PSF FWHM of frames with few PSF stars against the truth, for a heavy-winged (Moffat beta 2) and a light-winged
(Moffat beta 5) PSF at 1.0" seeing (FWHM 1.8 pixels of 0.55").

Stars of a sheared Moffat PSF are drawn by the simulator's renderer (pixel-integrated, random sub-pixel positions,
photon and sky noise) on 12 frames of 6 stars of S/N 60-300 (a mini frame's PSF stars at 1.0"), and
:func:`upad.reduce.psf.measure_psf` is given their positions and S/N. The frame's profile is a free mixture of Gaussian
widths: with the true shape the bench's beta-2 frames pin the FWHM to ~1 % (the true Moffat 2 % narrower or wider costs
chi^2 +10 to +220), but the free shape trades its core width against its wing and takes noise into a narrower or wider
core (it fits chi^2 13-14 better than the true shape, about its number of free shape parameters). A beta-2 Moffat
has ~8 % of its flux in Gaussian widths of 0.25-0.35 FWHM (its gamma distribution of 1/sigma^2), which the pixels
barely see, and the FWHM of such a frame scatters 1.4-2 times as much as a beta-5 one: the bench's Moffat 0.8" and
1.0" frames of beta ~2 at 0.957-0.961 of the truth (issue 10) are draws of that scatter, not a bias of the fit radius
(R = 2.5-12 FWHM: within 0.7 %), of the basis' range (up to 10 FWHM: within 0.2 %), of the normalisation (a +-1 e-
pedestal: within 0.2 %) or of the mixture's FWHM (noiseless stars: 1.002-1.003)."""
from __future__ import annotations

import numpy as np
import pytest

from upad.reduce.psf import measure_psf
from upad.sim.psf import PSFModel
from upad.sim.render import Sources, render, star_grid

SCALE = 0.55
SEEDS = range(1, 13)


def _frame(seed: int, beta: float, *, fwhm_arcsec: float = 1.0, n: int = 6, size: int = 512, sky: float = 66.0):
    rng = np.random.default_rng(seed)
    x, y, flux, snr = star_grid(rng, n, size, sky=sky, snr_range=(60.0, 300.0))
    psf = PSFModel(beta=beta, fwhm_centre=fwhm_arcsec, c_r2=0.0, c_x=0.0, c_y=0.0, g1_0=-0.03, g2_0=0.017, g_r=0.0,
                   nx=size, ny=size)
    img = np.zeros((size, size), np.float32)
    info = render(img, Sources.points(x, y, flux), psf, pixel_scale=SCALE, zones=1)
    img = (rng.poisson(np.maximum(img + sky, 0.0)) - sky).astype(np.float32)
    return img, x, y, flux, snr, float(np.median(info.fwhm_arcsec)) / SCALE


@pytest.fixture(scope="module")
def ratios():
    """FWHM / truth on the 12 frames, per beta."""
    out = {}
    for beta in (2.0, 5.0):
        r = []
        for seed in SEEDS:
            img, x, y, flux, snr, true_px = _frame(seed, beta)
            n = len(x)
            res = measure_psf(img, x + 0.02, y - 0.02, flux, snr, np.zeros(n, int), np.zeros(n, int),
                              np.full(n, 1.8), np.zeros(n), np.full(n, 1000.0), pixel_scale=SCALE)
            r.append(res.fwhm_px / true_px)
        out[beta] = np.asarray(r)
    return out


def test_few_star_fwhm_is_unbiased_for_heavy_and_light_wings(ratios):
    """The mean over the frames is within 1.5 % of the truth for both (measured: beta 2 -0.3 %, beta 5 -0.6 %), and
    the light-winged PSF's frames scatter by less than 2 % rms (1.3 %)."""
    for beta, r in ratios.items():
        assert abs(np.mean(r) - 1) < 0.015, (beta, r)
    assert np.sqrt(np.mean((ratios[5.0] - 1) ** 2)) < 0.02, ratios[5.0]


@pytest.mark.xfail(strict=True, reason="beta-2 frames of 6 stars scatter by 1.8 % rms (-3.0 to +2.6 %): the free "
                                       "profile's core-wing trade-off (issue 10, open)")
def test_few_star_fwhm_of_heavy_wings_is_as_precise_as_light_wings(ratios):
    """The 3 % goal on every frame needs ~1.5 % rms: the beta-2 frames scatter by 1.8 % rms (beta 5: 1.3 %)."""
    r = ratios[2.0]
    assert np.sqrt(np.mean((r - 1) ** 2)) < 0.015, r
