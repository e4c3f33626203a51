"""SWarp's CLIPPED combination: rejection of outliers, protection of bright stars, noise and weights."""
from __future__ import annotations

import numpy as np
import pytest

from upad import maskbits as mb
from upad.coadd.combine import CombineError, clipped_combine, combine_exposures, iter_combined_blocks
from upad.coadd.resample import ResampledExposure

from .helpers import gaussian_stars, src_to_dst

SKY_SIGMA = 5.0  # e- per pixel (sky-subtracted images, gain 1 e-/unit)


def _noisy(rng, n, shape, sigma=SKY_SIGMA, signal=None):
    base = np.zeros(shape) if signal is None else signal
    imgs = np.stack([base + rng.normal(0.0, sigma, shape) for _ in range(n)]).astype(np.float32)
    wts = np.full(imgs.shape, 1.0 / sigma ** 2, np.float32)
    return imgs, wts


def test_cosmic_ray_in_one_of_three_is_rejected():
    rng = np.random.default_rng(1)
    shape = (40, 40)
    imgs, wts = _noisy(rng, 3, shape)
    imgs[1, 20, 20] += 5000.0
    imgs[1, 20, 21] += 800.0
    res = clipped_combine(imgs, wts, None, gains=1.0, exptimes=[100.0, 100.0, 120.0])
    for x in (20, 21):
        assert res.rejected[20, x] == 1
        assert res.ninputs[20, x] == 2
        assert res.exptime[20, x] == pytest.approx(220.0)  # inputs 0 and 2
        # the coadd there is the mean of the two others: its residual is within noise
        sig = 1.0 / np.sqrt(res.weight[20, x])
        assert abs(res.image[20, x]) < 5.0 * sig
        assert res.image[20, x] == pytest.approx(0.5 * (imgs[0, 20, x] + imgs[2, 20, x]), rel=1e-5)
    assert res.n_rejected[1] >= 2
    # pure noise elsewhere: a 4-sigma rule (plus the Poisson term) rejects almost nothing
    assert res.rejected.sum() <= 2 + 3
    assert res.exptime.max() == pytest.approx(320.0)


def test_two_inputs_that_disagree_are_both_rejected():
    rng = np.random.default_rng(2)
    imgs, wts = _noisy(rng, 2, (20, 20))
    imgs[0, 5, 7] += 1000.0
    res = clipped_combine(imgs, wts, None, gains=1.0)
    assert res.weight[5, 7] == 0 and res.image[5, 7] == 0 and res.ninputs[5, 7] == 0
    assert res.rejected[5, 7] == 1
    assert res.n_rejected[0] >= 1 and res.n_rejected[1] >= 1
    # where they agree both are kept
    agree = np.ones((20, 20), bool)
    agree[5, 7] = False
    assert (res.ninputs[agree & (res.rejected == 0)] == 2).all()


@pytest.mark.parametrize("sigmas", [(1.6, 1.68, 1.76), (1.6, 1.76, 1.6)])
def test_bright_star_with_psf_differences_is_not_rejected(sigmas):
    """A star of peak S/N ~ 140 whose PSF width differs by 10 % between the inputs: its core differs by ~20 %
    between inputs, far beyond 4 sigma of the noise but within CLIP_AMPFRAC = 0.3 of the median."""
    rng = np.random.default_rng(3)
    shape = (41, 41)
    flux = 3e5
    stars = [gaussian_stars(shape, [20.2], [19.7], [flux], s) for s in sigmas]
    imgs = np.stack([s + rng.normal(0.0, SKY_SIGMA, shape) for s in stars]).astype(np.float32)
    wts = np.full(imgs.shape, 1.0 / SKY_SIGMA ** 2, np.float32)
    res = clipped_combine(imgs, wts, None, gains=1.0)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    core = np.hypot(xx - 20.2, yy - 19.7) < 4.0  # 2.5 sigma: 90 % of the flux
    assert res.rejected[core].sum() == 0
    assert res.ninputs[core].min() == 3
    if sigmas == (1.6, 1.68, 1.76):  # the median is the middle PSF: nothing at all is rejected
        assert res.rejected.sum() == 0
        assert res.image.sum() == pytest.approx(flux, rel=1e-3)
    else:  # one broader PSF among two sharp ones: its far wings (> 2.5 sigma) can go; the flux stays within 1 %
        assert res.image.sum() == pytest.approx(flux, rel=1e-2)
    # the tolerance is what protects the core: without the AMPFRAC term it is clipped
    strict = clipped_combine(imgs, wts, None, gains=1.0, clip_ampfrac=0.0)
    assert strict.rejected[core].sum() > 10


@pytest.mark.parametrize("n", [2, 4, 9])
def test_noise_of_equal_weight_coadd(n):
    rng = np.random.default_rng(10 + n)
    shape = (150, 150)
    imgs, wts = _noisy(rng, n, shape)
    res = clipped_combine(imgs, wts, None, gains=1.0)
    assert res.image.std() == pytest.approx(SKY_SIGMA / np.sqrt(n), rel=0.05)
    assert np.median(res.weight) == pytest.approx(n / SKY_SIGMA ** 2, rel=1e-6)
    # and the weight map predicts it
    assert res.image.std() == pytest.approx(np.median(1.0 / np.sqrt(res.weight[res.weight > 0])), rel=0.05)


def test_inverse_variance_weighting():
    # values that agree within the rule: the coadd is the inverse-variance weighted mean, the weight their sum
    imgs = np.array([10.0, 10.5, 11.0], np.float32)[:, None, None] * np.ones((3, 4, 4), np.float32)
    sig = np.array([1.0, 2.0, 3.0])
    wts = (1.0 / sig ** 2)[:, None, None].astype(np.float32) * np.ones((3, 4, 4), np.float32)
    res = clipped_combine(imgs, wts, None, gains=np.inf)
    w = 1.0 / sig ** 2
    assert res.image[0, 0] == pytest.approx((w * [10.0, 10.5, 11.0]).sum() / w.sum(), rel=1e-6)
    assert res.weight[0, 0] == pytest.approx(w.sum(), rel=1e-6)
    # statistically: unequal noise, the coadd's noise is 1/sqrt(sum w), better than the plain mean's
    rng = np.random.default_rng(4)
    shape = (200, 200)
    sigmas = [3.0, 6.0, 9.0]
    imgs = np.stack([rng.normal(0.0, s, shape) for s in sigmas]).astype(np.float32)
    wts = np.stack([np.full(shape, 1.0 / s ** 2) for s in sigmas]).astype(np.float32)
    res = clipped_combine(imgs, wts, None, gains=1.0)
    expect = 1.0 / np.sqrt(sum(1.0 / s ** 2 for s in sigmas))
    assert res.image.std() == pytest.approx(expect, rel=0.05)
    assert imgs.mean(axis=0).std() > 1.3 * expect


def test_single_input_zero_inputs_and_masked_inputs():
    rng = np.random.default_rng(5)
    imgs, wts = _noisy(rng, 3, (10, 10))
    masks = np.zeros(imgs.shape, mb.MASK_DTYPE)
    # pixel (1, 1): one valid input (the others without weight or masked) -> used as it is, even if far off
    imgs[0, 1, 1] = 1e4
    wts[1, 1, 1] = 0.0
    masks[2, 1, 1] = mb.SATURATED
    # pixel (2, 2): nothing valid
    wts[:, 2, 2] = 0.0
    # pixel (3, 3): a NaN input is not used
    imgs[1, 3, 3] = np.nan
    res = clipped_combine(imgs, wts, masks, gains=1.0, exptimes=[10.0, 20.0, 30.0])
    assert res.image[1, 1] == pytest.approx(1e4) and res.ninputs[1, 1] == 1 and res.rejected[1, 1] == 0
    assert res.exptime[1, 1] == pytest.approx(10.0)
    assert res.image[2, 2] == 0 and res.weight[2, 2] == 0 and res.ninputs[2, 2] == 0 and res.exptime[2, 2] == 0
    assert np.isfinite(res.image).all() and res.ninputs[3, 3] == 2
    # a SUSPECT bit is not a reason to drop the pixel
    masks[0, 4, 4] = mb.SUSPECT
    assert clipped_combine(imgs, wts, masks, gains=1.0).ninputs[4, 4] == 3


def test_inputs_are_checked():
    imgs = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(CombineError, match="gains"):
        clipped_combine(imgs, imgs + 1, None, gains=[1.0, 1.0, 1.0])
    with pytest.raises(CombineError, match="same shape"):
        clipped_combine(imgs, np.ones((2, 3, 4), np.float32), None, gains=1.0)
    with pytest.raises(CombineError, match="> 0"):
        clipped_combine(imgs, imgs + 1, None, gains=[1.0, 0.0])


def test_blocks_over_partial_exposures_equal_the_full_stack():
    rng = np.random.default_rng(6)
    shape = (60, 50)
    full, wts = _noisy(rng, 3, shape)
    full[0, 30, 30] += 3000.0
    boxes = [(0, 60, 0, 50), (5, 52, 3, 47), (10, 60, 0, 40)]
    exps, fw = [], np.zeros_like(wts)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        fw[i, y0:y1, x0:x1] = wts[i, y0:y1, x0:x1]
        exps.append(ResampledExposure(full[i, y0:y1, x0:x1].copy(), wts[i, y0:y1, x0:x1].copy(),
                                      np.zeros((y1 - y0, x1 - x0), mb.MASK_DTYPE), (y0, y1, x0, x1), shape))
    exps.append(ResampledExposure(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32),
                                  np.zeros((0, 0), mb.MASK_DTYPE), (0, 0, 0, 0), shape))  # no overlap
    ref = clipped_combine(full, fw, None, gains=[1.0, 1.0, 1.0], exptimes=[1.0, 2.0, 3.0])
    got = combine_exposures(exps, shape, gains=[1.0, 1.0, 1.0, 1.0], exptimes=[1.0, 2.0, 3.0, 4.0], block_rows=7)
    np.testing.assert_array_equal(got.image, ref.image)
    np.testing.assert_array_equal(got.weight, ref.weight)
    np.testing.assert_array_equal(got.exptime, ref.exptime)
    np.testing.assert_array_equal(got.ninputs, ref.ninputs)
    np.testing.assert_array_equal(got.rejected, ref.rejected)
    assert got.n_rejected.tolist() == ref.n_rejected.tolist() + [0]
    assert got.rejected[30, 30] == 1 and got.n_rejected[0] >= 1
    blocks = list(iter_combined_blocks(exps, shape, gains=1.0, block_rows=25))
    assert [(a, b) for a, b, _ in blocks] == [(0, 25), (25, 50), (50, 60)]


def test_streamed_resample_and_combine_equals_the_two_steps():
    from upad.coadd.combine import InputExposure, iter_resampled_combined_blocks
    from upad.coadd.resample import resample

    from .helpers import SIP, tan_wcs

    rng = np.random.default_rng(7)
    shape, tile = (120, 130), (140, 140)
    dst = tan_wcs(tile, scale_arcsec=0.55)
    exps = []
    for dx, dy in [(0.0, 0.0), (10.0, -4.0), (-6.0, 9.0)]:  # dithers in arcsec
        w = tan_wcs(shape, crval=(150.0 + dx / 3600, 2.0 + dy / 3600), sip=SIP, rot_deg=0.1)
        img = rng.normal(0.0, SKY_SIGMA, shape).astype(np.float32)
        exps.append(InputExposure(img, np.full(shape, 1 / SKY_SIGMA ** 2, np.float32),
                                  np.zeros(shape, mb.MASK_DTYPE), w))
    exps[1].image[60, 60] += 4000.0  # a cosmic ray, not flagged
    far = tan_wcs(shape, crval=(152.0, 2.0))
    exps.append(InputExposure(exps[0].image, exps[0].noise, None, far))  # no overlap
    gains, times = [1.0] * 4, [30.0, 30.0, 30.0, 30.0]
    res = [resample(e.image, e.noise, e.mask, src_wcs=e.wcs, dst_wcs=dst, dst_shape=tile) for e in exps]
    ref = combine_exposures(res, tile, gains=gains, exptimes=times)
    img = np.zeros(tile, np.float32)
    wt = np.zeros(tile, np.float32)
    rej = np.zeros(tile, np.uint8)
    n_rej = np.zeros(4, np.int64)
    sums = np.zeros((4, 2))
    for r0, r1, blk, s in iter_resampled_combined_blocks(exps, dst_wcs=dst, dst_shape=tile, gains=gains,
                                                         exptimes=times, block_rows=16):
        img[r0:r1], wt[r0:r1], rej[r0:r1] = blk.image, blk.weight, blk.rejected
        n_rej += blk.n_rejected
        sums += np.array(s)
    np.testing.assert_allclose(img, ref.image, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(wt, ref.weight, rtol=1e-6)
    np.testing.assert_array_equal(rej, ref.rejected)
    assert n_rej.tolist() == ref.n_rejected.tolist() and n_rej[1] >= 1 and n_rej[3] == 0
    for e, (s, n) in zip(res[:3], sums[:3]):
        assert np.sqrt(s / n) == pytest.approx(e.noise_ratio, rel=1e-9)
    # the cosmic ray is gone: the coadd around it is within noise (< 5 sigma), the pixels around it were rejected
    (cx,), (cy,) = src_to_dst(exps[1].wcs, dst, [60.0], [60.0])
    box = (slice(int(cy) - 2, int(cy) + 4), slice(int(cx) - 2, int(cx) + 4))
    assert (np.abs(ref.image[box]) * np.sqrt(ref.weight[box])).max() < 5.0
    assert ref.rejected[box].sum() >= 4
    assert (np.abs(ref.image) * np.sqrt(ref.weight)).max() < 6.0  # nowhere a trace of it
