"""The PSF FWHM of frames with few PSF stars against the truth, for a heavy-winged (Moffat beta 2) and a light-winged
(Moffat beta 5) PSF at 1.0" seeing (FWHM 1.8 pixels of 0.55"), and the choice of the frame's radial profile.

Stars of a sheared Moffat PSF are drawn by the simulator's renderer (pixel-integrated, random sub-pixel positions,
photon and sky noise) on 12 frames of 6 stars of S/N 60-300 (a mini frame's PSF stars at 1.0"), and
:func:`upad.reduce.psf.measure_psf` is given their positions and S/N.

With the true shape the bench's beta-2 frames pin the FWHM to ~1 % (the true Moffat 2 % narrower or wider costs
chi^2 +10 to +220), but a free profile (a sparse mixture of Gaussians whose widths are then fitted freely) trades its
core width against its wing and takes the noise into a narrower or wider core: it fits chi^2 13-14 better than the
true shape, about its number of free parameters. A beta-2 Moffat has ~8 % of its flux in Gaussian widths of 0.25-0.35
FWHM (its gamma distribution of 1/sigma^2), which the pixels barely see, so its frames scattered 1.4-2 times as much as
beta-5 ones: the bench's Moffat 0.8" and 1.0" frames of beta ~2 at 0.957-0.961 of the truth (issue 10) were draws of
that scatter, not a bias of the fit radius (R = 2.5-12 FWHM: within 0.7 %), of the basis' range (widths up to 10 FWHM:
within 0.2 %), of the normalisation (a +-1 e- pedestal: within 0.2 %) or of the mixture's FWHM (noiseless stars:
1.002-1.003). The frame's profile is now also fitted with a smoothness prior on a dense grid of widths, and the free
one is kept only where its free widths earn their chi^2 (:func:`upad.reduce.psf.select_profile`)."""
from __future__ import annotations

import numpy as np
import pytest

from upad.reduce.psf import PsfConfig

from .helpers import measure_synthetic_psf, synthetic_psf_frame

SCALE = 0.55
SEEDS = range(1, 13)


def _frame(seed: int, beta: float, *, fwhm_arcsec: float = 1.0, n: int = 6, size: int = 512, sky: float = 66.0,
           **family):
    return synthetic_psf_frame(seed, fwhm_arcsec=fwhm_arcsec, beta=beta, g1=-0.03, g2=0.017, n=n, size=size, sky=sky,
                               scale=SCALE, snr_range=(60.0, 300.0), **family)


def _measure(img, x, y, flux, snr, config: PsfConfig = PsfConfig()):
    return measure_synthetic_psf(img, x, y, flux, snr, radius_guess=1.8, scale=SCALE, config=config)


@pytest.fixture(scope="module")
def ratios():
    """FWHM / truth on the 12 frames, per beta, with the profile chosen (``chosen``) and with the free profile always
    (``free``, ``profile_smoothness = 0``: what the pipeline did before)."""
    out = {"chosen": {}, "free": {}}
    for beta in (2.0, 5.0):
        frames = [_frame(seed, beta) for seed in SEEDS]
        for key, cfg in (("chosen", PsfConfig()), ("free", PsfConfig(profile_smoothness=0.0))):
            out[key][beta] = np.array([_measure(*f[:5], config=cfg).fwhm_px / f[5] for f in frames])
    return out


def _rms(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean((r - 1) ** 2)))


def test_few_star_fwhm_against_the_truth_for_heavy_and_light_wings(ratios):
    """Unbiased (mean within 1.5 %; measured beta 2 +0.3 %, beta 5 -0.3 %), and the frames scatter by less than 2 % rms
    for beta 2 (1.55 %) and 1 % for beta 5 (0.53 %)."""
    r = ratios["chosen"]
    for beta in r:
        assert abs(np.mean(r[beta]) - 1) < 0.015, (beta, r[beta])
    assert _rms(r[2.0]) < 0.02, r[2.0]
    assert _rms(r[5.0]) < 0.01, r[5.0]


def test_free_profile_of_few_stars_scatters_more(ratios):
    """What the choice of the profile corrects: the free profile alone scatters more (beta 2: 1.79 % rms against
    1.55 %, beta 5: 1.31 % against 0.53 %)."""
    for beta in (2.0, 5.0):
        assert _rms(ratios["free"][beta]) > 1.1 * _rms(ratios["chosen"][beta]), (beta, ratios)
    assert _rms(ratios["free"][5.0]) > 2.0 * _rms(ratios["chosen"][5.0]), ratios


@pytest.mark.xfail(strict=True, reason="beta-2 frames of 6 stars scatter by 1.55 % rms (worst -2.9 %), beta 5 by "
                                       "0.53 %: the 6 stars hardly see the profile's narrowest widths (issue 10, open)")
def test_few_star_fwhm_of_heavy_wings_is_as_precise_as_light_wings(ratios):
    """The 3 % goal on every frame at 2.5 sigma needs 1.2 % rms."""
    assert _rms(ratios["chosen"][2.0]) < 0.012, ratios["chosen"][2.0]


def test_double_gaussian_keeps_the_free_profile():
    """A double Gaussian (a core and a wing 2.2 times wider with 20 % of the flux: two distinct widths that the
    smoothness prior blurs, its FWHM 2-3 % low on the bench's frames) keeps the free profile, whose widths improve
    chi^2 by far more than 2 each, and its FWHM is within 1.5 % of the truth (25 stars at 0.8")."""
    img, x, y, flux, snr, true_px = _frame(3, 3.0, fwhm_arcsec=0.8, n=25, size=768, family="double_gaussian",
                                           dg_wing_fraction=0.2, dg_width_ratio=2.2)
    res = _measure(img, x, y, flux, snr)
    assert res.profile_choice["profile"] == "free", res.profile_choice
    assert res.profile_choice["dchi2"] > 4 * res.profile_choice["free_widths"], res.profile_choice
    assert abs(res.fwhm_px / true_px - 1) < 0.015, res.fwhm_px / true_px
