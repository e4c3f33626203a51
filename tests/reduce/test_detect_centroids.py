"""Windowed centroids (XWIN_IMAGE) of undersampled stars against the truth: no snapping to the pixel grid."""
from __future__ import annotations

import numpy as np
import pytest

from upad.reduce.detect import DetectConfig, detect_sources


def _field(fwhm_px: float, *, n_side: int = 12, flux: float = 2.0e5, sky_sigma: float = 5.0, seed: int = 3):
    """Moffat stars (GalSim, pixel-integrated) at random sub-pixel phases on a grid, with background noise."""
    galsim = pytest.importorskip("galsim")
    rng = np.random.default_rng(seed)
    step = 24
    size = n_side * step
    img = np.zeros((size, size))
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm_px)
    xs, ys = [], []
    for j in range(n_side):
        for i in range(n_side):
            x0, y0 = step * i + step / 2 + rng.uniform(-0.5, 0.5), step * j + step / 2 + rng.uniform(-0.5, 0.5)
            ix, iy = int(round(x0)), int(round(y0))
            stamp = psf.drawImage(nx=15, ny=15, scale=1.0, offset=(x0 - ix, y0 - iy)).array * flux
            img[iy - 7:iy + 8, ix - 7:ix + 8] += stamp
            xs.append(x0)
            ys.append(y0)
    img = img + rng.normal(0.0, sky_sigma, img.shape)
    var = np.full(img.shape, sky_sigma ** 2, np.float32)
    return img.astype(np.float32), var, np.array(xs), np.array(ys)


def _errors(fwhm_px: float, config: DetectConfig = DetectConfig()) -> np.ndarray:
    img, var, tx, ty = _field(fwhm_px)
    cat = detect_sources(img, var, np.zeros(img.shape, np.int16), pixel_scale=0.55, config=config).catalog
    xw, yw = np.asarray(cat["XWIN_IMAGE"]) - 1, np.asarray(cat["YWIN_IMAGE"]) - 1
    d = np.hypot(xw[None, :] - tx[:, None], yw[None, :] - ty[:, None])
    j = np.argmin(d, axis=1)
    assert np.all(d[np.arange(len(tx)), j] < 1.0)  # every star found
    return np.column_stack([xw[j] - tx, yw[j] - ty])


@pytest.mark.parametrize("fwhm_px", [1.1, 1.45])
def test_undersampled_windowed_centroids_against_the_truth(fwhm_px):
    """0.6" and 0.8" seeing at 0.55"/px (bright stars): SExtractor's window (sigma = FWHM / 2.35, narrower than a
    pixel) errs by 0.11 and 0.026 px rms with the sub-pixel phase; the window of at least 1.2 px by 0.014 and
    0.005 px."""
    err = _errors(fwhm_px)
    rms = float(np.sqrt(np.mean(err ** 2)))
    assert rms < 0.02, rms
    assert abs(float(np.mean(err[:, 0]))) < 0.005 and abs(float(np.mean(err[:, 1]))) < 0.005
    sextractor_like = float(np.sqrt(np.mean(_errors(fwhm_px, DetectConfig(win_sigma_min_px=0.0)) ** 2)))
    assert rms < 0.25 * sextractor_like, (rms, sextractor_like)


def test_well_sampled_centroids_unchanged_by_the_window_floor():
    """At 2" seeing (FWHM 3.6 px) the window is SExtractor's (wider than the floor): the floor changes nothing."""
    a = _errors(3.6)
    b = _errors(3.6, DetectConfig(win_sigma_min_px=0.0))
    assert np.allclose(a, b, atol=1e-6)
    assert float(np.sqrt(np.mean(a ** 2))) < 0.02
