"""PSF-matching kernels (upad.catalog.homogenise) on noise-free PSF stamps of several families."""
from __future__ import annotations

import galsim
import numpy as np
import pytest

from upad.catalog.homogenise import degrade, matching_kernel, stamp_size

SCALE = 0.55


def _stamp(prof, n=41):
    a = prof.drawImage(nx=n, ny=n, scale=SCALE).array.astype(np.float64)
    return a / a.sum()


def _enclosed(a, r):
    n = a.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return a[np.hypot(xx, yy) < r].sum()


@pytest.mark.parametrize("source,target", [
    (galsim.Moffat(beta=3.0, fwhm=1.0), galsim.Kolmogorov(fwhm=1.5)),
    (galsim.Gaussian(fwhm=0.9), galsim.Moffat(beta=2.5, fwhm=1.3)),
    (galsim.Kolmogorov(fwhm=1.2), galsim.Moffat(beta=4.0, fwhm=1.25)),
])
def test_the_kernel_takes_the_source_psf_to_the_target(source, target):
    from scipy.signal import fftconvolve

    s, t = _stamp(source), _stamp(target)
    k = matching_kernel(s, t)
    assert k.sum() == pytest.approx(1.0)
    c = fftconvolve(s, k, mode="same")
    for r in (1.5, 2.5, 4.0, 8.0):
        assert _enclosed(c, r) == pytest.approx(_enclosed(t, r), abs=2e-3), r


def test_a_taper_changes_the_matched_profile_and_is_off_by_default():
    from scipy.signal import fftconvolve

    s, t = _stamp(galsim.Moffat(beta=3.0, fwhm=1.0)), _stamp(galsim.Kolmogorov(fwhm=1.5))
    tapered = fftconvolve(s, matching_kernel(s, t, taper=0.5), mode="same")
    plain = fftconvolve(s, matching_kernel(s, t), mode="same")
    assert abs(_enclosed(tapered, 2.0) - _enclosed(t, 2.0)) > 3 * abs(_enclosed(plain, 2.0) - _enclosed(t, 2.0))


def test_degrade_keeps_the_flux_and_the_no_data_pixels():
    rng = np.random.default_rng(1)
    img = np.zeros((120, 120), np.float32)
    img[60, 60] = 1000.0
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    valid = np.ones(img.shape, bool)
    valid[:, :10] = False
    k = _stamp(galsim.Gaussian(fwhm=1.0), 21)
    out = degrade(img, k, valid=valid)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out[40:80, 40:80].sum() == pytest.approx(img[40:80, 40:80].sum(), rel=1e-3)
    assert np.all(out[:, :10] == 0)


def test_bad_stamps_are_refused():
    with pytest.raises(ValueError, match="odd"):
        matching_kernel(np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="one shape"):
        matching_kernel(np.ones((5, 5)), np.ones((7, 7)))
    assert stamp_size(2.0) == 25 and stamp_size(4.0) % 2 == 1


def test_the_target_is_broader_than_every_band_whatever_the_profiles():
    """Two PSFs of one FWHM with different wings: both can be matched to the broadened target."""
    from scipy.signal import fftconvolve

    from upad.catalog.homogenise import target_psf

    class Model:  # the PSF model interface target_psf uses
        shape = (101, 101)

        def __init__(self, prof, fwhm):
            self.prof, self.fwhm = prof, fwhm

        def fwhm_at(self, x, y):
            return np.array([self.fwhm])

        def render(self, x, y, size):
            return self.prof.drawImage(nx=size, ny=size, scale=1.0).array

    a = Model(galsim.Moffat(beta=2.2, fwhm=2.4), 2.4)
    b = Model(galsim.Gaussian(fwhm=2.45), 2.45)
    target, fwhm = target_psf([a, b], broadening=1.1)
    assert fwhm == pytest.approx(2.695)
    n = target.shape[0]
    for m in (a, b):
        s = m.render(0, 0, n)
        s = s / s.sum()
        c = fftconvolve(s, matching_kernel(s, target), mode="same")
        for r in (1.5, 3.0, 6.0):
            assert _enclosed(c, r) == pytest.approx(_enclosed(target, r), abs=2e-3)
