"""Resampling onto a tile grid: mapping accuracy, flux and position conservation, flatness, noise, masks."""
from __future__ import annotations

import numpy as np
import pytest

from upad import maskbits as mb
from upad.coadd import resample as rs
from upad.coadd.resample import ResampleConfig, plan_resample, resample

from .helpers import SIP, gaussian_stars, src_to_dst, tan_wcs

SRC_SHAPE = (200, 200)
DST_SHAPE = (210, 210)


def _wcs_pair(dst_scale: float = 0.56):
    """Exposure with SIP distortion; tile grid shifted by a fraction of a pixel, rotated 0.3°, other scale."""
    src = tan_wcs(SRC_SHAPE, sip=SIP)
    dst = tan_wcs(DST_SHAPE, crval=(150.0 + 0.3 / 3600, 2.0 - 0.2 / 3600), scale_arcsec=dst_scale, rot_deg=0.3)
    return src, dst


def _stars(seed: int = 1):
    rng = np.random.default_rng(seed)
    g = np.arange(20, 190, 30, dtype=float)
    xs = np.repeat(g, g.size) + rng.uniform(-0.5, 0.5, g.size ** 2)
    ys = np.tile(g, g.size) + rng.uniform(-0.5, 0.5, g.size ** 2)
    fl = rng.uniform(1e3, 1e5, g.size ** 2)
    return xs, ys, fl


def _measure(res, xs, ys, half: int = 12):
    """Flux (box sum) and first-moment centroid of each star in tile pixels."""
    y0, _, x0, _ = res.bbox
    out = []
    for x, y in zip(xs, ys):
        ix, iy = int(round(x)) - x0, int(round(y)) - y0
        sub = res.image[iy - half:iy + half + 1, ix - half:ix + half + 1].astype(np.float64)
        yy, xx = np.mgrid[iy - half:iy + half + 1, ix - half:ix + half + 1]
        f = sub.sum()
        out.append((f, (sub * xx).sum() / f + x0, (sub * yy).sum() / f + y0))
    return np.array(out)


def test_interpolated_mapping_within_a_thousandth_of_a_pixel():
    # a full-width wide-field distortion: ~4 px at the corners of a 2000 px exposure
    shape = (2000, 2000)
    sip = {("a", 2, 0): 8e-7, ("a", 0, 2): 6e-7, ("a", 1, 1): -5e-7, ("b", 2, 0): 4e-7, ("b", 1, 1): 7e-7,
           ("b", 0, 2): -9e-7, ("a", 3, 0): 2e-10, ("a", 1, 2): 3e-10, ("b", 0, 3): -2.5e-10, ("b", 2, 1): 1e-10}
    src = tan_wcs(shape, sip=sip)
    dst = tan_wcs((2100, 2100), crval=(150.01, 2.005), scale_arcsec=0.557, rot_deg=-0.7)
    plan = plan_resample(shape, src_wcs=src, dst_wcs=dst, dst_shape=(2100, 2100), config=ResampleConfig())
    y0, y1, x0, x1 = plan.bbox
    rng = np.random.default_rng(3)
    x = rng.uniform(x0, x1 - 1, 4000)
    y = rng.uniform(y0, y1 - 1, 4000)
    ue, ve = rs._dst_to_src(src.celestial, dst.celestial, x, y, 1e-10)
    ui = plan.u_spline(y, x, grid=False)
    vi = plan.v_spline(y, x, grid=False)
    inside = (ue > 0) & (ue < shape[1]) & (ve > 0) & (ve < shape[0])
    err = np.hypot(ui - ue, vi - ve)[inside]
    assert inside.sum() > 3000
    assert err.max() < 1e-3, err.max()
    # and the distortion is real: a TAN-only mapping would be off by pixels
    assert np.abs(ue - src.wcs_world2pix(*dst.all_pix2world(x, y, 0), 0)[0]).max() > 1.0


@pytest.mark.parametrize("kernel, flux_tol, pos_tol", [
    ("cubicspline5", 1e-3, 0.01),
    # Lanczos-3 neither reproduces a linear gradient (up to 0.02 px per axis) nor keeps the sum of its weights over
    # an output grid of another scale constant (a flux ripple ~0.25 % per axis for a 1.8 % scale difference)
    ("lanczos3", 6e-3, 0.035),
])
def test_star_fluxes_and_centroids_conserved(kernel, flux_tol, pos_tol):
    src, dst = _wcs_pair()
    xs, ys, fl = _stars()
    img = gaussian_stars(SRC_SHAPE, xs, ys, fl, 1.6).astype(np.float32)
    res = resample(img, np.ones_like(img), None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, kernel=kernel)
    X, Y = src_to_dst(src, dst, xs, ys)
    m = _measure(res, X, Y)
    ferr = m[:, 0] / img.astype(np.float64).sum() * img.sum() / fl - 1.0
    perr = np.hypot(m[:, 1] - X, m[:, 2] - Y)
    assert np.abs(ferr).max() < flux_tol, np.abs(ferr).max()
    assert abs(np.mean(ferr)) < 1e-3  # no bias: the ripple averages out over phases
    assert perr.max() < pos_tol, perr.max()
    assert res.pixel_area_ratio == pytest.approx((0.56 / 0.55) ** 2, rel=5e-3)


def test_lanczos3_flux_exact_at_the_same_scale():
    # the tile grid at the exposure's scale (shift + rotation + distortion only): Lanczos-3 conserves flux < 0.1 %
    src, dst = _wcs_pair(dst_scale=0.55)
    xs, ys, fl = _stars(2)
    img = gaussian_stars(SRC_SHAPE, xs, ys, fl, 1.6)
    res = resample(img, np.ones_like(img), None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, kernel="lanczos3")
    X, Y = src_to_dst(src, dst, xs, ys)
    m = _measure(res, X, Y)
    assert np.abs(m[:, 0] / fl - 1.0).max() < 1e-3


@pytest.mark.parametrize("kernel", ["lanczos3", "cubicspline5"])
def test_flat_image_stays_flat(kernel):
    src, dst = _wcs_pair()
    img = np.full(SRC_SHAPE, 100.0, np.float32)
    res = resample(img, np.ones_like(img), None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, kernel=kernel)
    ok = res.weight > 0
    assert ok.sum() > 0.9 * SRC_SHAPE[0] * SRC_SHAPE[1] / (0.56 / 0.55) ** 2
    # flux per output pixel = surface brightness x pixel-area ratio, J from finite differences of the exact mapping
    y0, y1, x0, x1 = res.bbox
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    x, y = xx[ok], yy[ok]
    h = 1e-3
    s, d = src.celestial, dst.celestial
    u, v = rs._dst_to_src(s, d, x, y, 1e-10)
    ux, vx = rs._dst_to_src(s, d, x + h, y, 1e-10)
    uy, vy = rs._dst_to_src(s, d, x, y + h, 1e-10)
    jac = np.abs((ux - u) * (vy - v) - (uy - u) * (vx - v)) / h ** 2
    assert np.abs(res.image[ok] / (100.0 * jac) - 1.0).max() < 2e-5
    assert not (res.mask[ok] & mb.NODATA).any()
    assert (res.mask[~ok] & mb.NODATA).all()


def _low_k_power(a: np.ndarray, kmax: float) -> float:
    """Mean noise power at spatial frequencies 0 < |k| < kmax (cycles per pixel), normalised so that the mean over
    all frequencies is the pixel variance: the variance per pixel of a large aperture."""
    a = a - a.mean()
    p = np.abs(np.fft.fft2(a)) ** 2 / a.size
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1])[None, :]
    k = np.hypot(kx, ky)
    sel = (k > 0) & (k < kmax)
    return float(p[sel].mean())


@pytest.mark.parametrize("kernel", ["lanczos3", "cubicspline5"])
def test_noise_propagation_and_correlation(kernel):
    shape = (560, 560)
    src = tan_wcs(shape, sip=SIP)
    dst = tan_wcs(shape, crval=(150.0 + 0.3 / 3600, 2.0 - 0.2 / 3600), scale_arcsec=0.56, rot_deg=0.3)
    rng = np.random.default_rng(11)
    sigma = 2.0
    img = rng.normal(0.0, sigma, shape).astype(np.float32)
    wt = np.full(shape, 1.0 / sigma ** 2, np.float32)
    res = resample(img, wt, None, src_wcs=src, dst_wcs=dst, dst_shape=shape, kernel=kernel)
    inner = res.image[20:-20, 20:-20].astype(np.float64)
    winner = res.weight[20:-20, 20:-20]
    assert (winner > 0).all()
    propagated = float(np.mean(1.0 / winner))  # per-pixel variance from the weight map
    # the weight map gives the true pixel-to-pixel variance ...
    assert inner.var() == pytest.approx(propagated, rel=0.02)
    # ... and the naive variance the variance per pixel of large apertures (the noise power at low frequencies):
    # J sigma^2, by flux conservation
    naive = propagated / res.noise_ratio ** 2
    assert naive == pytest.approx(sigma ** 2 * res.pixel_area_ratio, rel=0.01)
    low_k = _low_k_power(inner, 0.05)
    assert low_k == pytest.approx(naive, rel=0.05)
    # the correction factor per-pixel sigma / naive sigma: < 1, resampling smooths the noise
    assert 0.75 < res.noise_ratio < 0.95
    print(f"{kernel}: noise_ratio (per-pixel sigma / naive sigma) = {res.noise_ratio:.4f}, measured "
          f"sqrt(var / low-k power) = {np.sqrt(inner.var() / low_k):.4f}")


def test_weight_and_variance_inputs_agree_and_blocks_do_not_matter():
    src, dst = _wcs_pair()
    rng = np.random.default_rng(5)
    img = rng.normal(10.0, 1.0, SRC_SHAPE).astype(np.float32)
    var = rng.uniform(0.5, 2.0, SRC_SHAPE).astype(np.float32)
    a = resample(img, 1.0 / var, None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    b = resample(img, var, None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, noise="variance", block_rows=7)
    assert a.bbox == b.bbox
    np.testing.assert_allclose(a.image, b.image, rtol=1e-6)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-5)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_masked_and_zero_weight_pixels_do_not_leak():
    src, dst = _wcs_pair()
    img = np.full(SRC_SHAPE, 50.0, np.float32)
    wt = np.ones(SRC_SHAPE, np.float32)
    mask = np.zeros(SRC_SHAPE, mb.MASK_DTYPE)
    img[100, 100] = 1e5  # a cosmic ray, flagged
    mask[100, 100] = mb.COSMIC
    img[60, 140] = -1e5  # a pixel without data (weight 0), not flagged
    wt[60, 140] = 0.0
    big_bad = (slice(150, 156), slice(40, 46))  # a 6x6 bad patch: the tile pixels over it have no data
    img[big_bad] = 3e4
    mask[big_bad] = mb.BAD
    res = resample(img, wt, mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    ok = res.weight > 0
    y0, _, x0, _ = res.bbox
    cj = res.pixel_area_ratio
    # renormalised over the good pixels: a flat image stays flat, nothing of the bad values leaks
    assert np.abs(res.image[ok] / (50.0 * cj) - 1.0).max() < 5e-3
    (cx,), (cy,) = src_to_dst(src, dst, [100.0], [100.0])
    ix, iy = int(round(cx)) - x0, int(round(cy)) - y0
    assert res.mask[iy, ix] & mb.COSMIC
    assert ((res.mask[iy - 3:iy + 4, ix - 3:ix + 4] & mb.COSMIC) != 0).sum() >= 4
    (px,), (py,) = src_to_dst(src, dst, [42.5], [152.5])
    jx, jy = int(round(px)) - x0, int(round(py)) - y0
    assert res.weight[jy, jx] == 0 and res.mask[jy, jx] & mb.NODATA and res.mask[jy, jx] & mb.BAD
    assert res.image[jy, jx] == 0
    # the bits appear only near the flagged pixels
    assert ((res.mask & mb.COSMIC) != 0).sum() < 40


def test_exposure_outside_the_tile_is_empty():
    src = tan_wcs(SRC_SHAPE, sip=SIP)
    dst = tan_wcs(DST_SHAPE, crval=(151.0, 2.0))
    img = np.ones(SRC_SHAPE, np.float32)
    res = resample(img, img, None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    assert res.empty and res.image.shape == (0, 0)


def test_partial_overlap_keeps_only_the_covered_box():
    src = tan_wcs(SRC_SHAPE, sip=SIP)
    # the tile's centre 80 px (0.55") east of the exposure's: the exposure covers the western part of the tile
    dst = tan_wcs(DST_SHAPE, crval=(150.0 + 80 * 0.55 / 3600, 2.0))
    img = np.ones(SRC_SHAPE, np.float32)
    res = resample(img, img, None, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    y0, y1, x0, x1 = res.bbox
    assert x0 > 60 and x1 == DST_SHAPE[1] and res.image.shape == (y1 - y0, x1 - x0)
    assert (res.weight > 0).any(axis=0).all()


@pytest.mark.parametrize("kernel, tol", [("lanczos3", 0.4), ("cubicspline5", 0.06)])
def test_agrees_with_reproject_on_a_smooth_image(kernel, tol):
    reproject = pytest.importorskip("reproject")
    src, dst = _wcs_pair()

    def smooth(x, y):  # 70 .. 330
        return (100.0 + 30.0 * np.sin(2 * np.pi * x / 47.0) * np.cos(2 * np.pi * y / 61.0)
                + 200.0 * np.exp(-((x - 90) ** 2 + (y - 110) ** 2) / (2 * 9.0 ** 2)))

    yy, xx = np.mgrid[0:SRC_SHAPE[0], 0:SRC_SHAPE[1]].astype(float)
    img = smooth(xx, yy)
    ref, _ = reproject.reproject_interp((img, src), dst, shape_out=DST_SHAPE, order="bicubic")
    res = resample(img.astype(np.float32), np.ones(SRC_SHAPE, np.float32), None, src_wcs=src, dst_wcs=dst,
                   dst_shape=DST_SHAPE, kernel=kernel)
    plan = plan_resample(SRC_SHAPE, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    y0, y1, x0, x1 = res.bbox
    u, v, jac = plan.coordinates(y0, y1)
    cols = slice(x0 - plan.bbox[2], x1 - plan.bbox[2])
    u, v, jac = u[:, cols], v[:, cols], jac[:, cols]
    ours = res.image / jac  # surface brightness, as reproject gives it
    refb = ref[y0:y1, x0:x1]
    good = (res.weight > 0) & np.isfinite(refb)
    good[:8] = good[-8:] = False
    good[:, :8] = good[:, -8:] = False
    assert good.sum() > 25000
    # reproject (a full cardinal spline) is exact to 1e-3 here; ours agrees within `tol` (Lanczos-3 loses ~0.1 %
    # at the peak of a sigma = 9 px bump; the truncated spline ~0.02 %): far below any image noise
    assert np.abs(refb - smooth(u, v))[good].max() < 1e-3
    assert np.abs(ours - refb)[good].max() < tol
    assert np.abs(ours - smooth(u, v))[good].max() < tol


def test_big_endian_fits_arrays_are_accepted():
    # astropy.io.fits returns big-endian arrays; the compiled kernels need native ones
    src, dst = _wcs_pair()
    rng = np.random.default_rng(8)
    img = rng.normal(5.0, 1.0, SRC_SHAPE).astype(np.float32)
    wt = np.ones(SRC_SHAPE, np.float32)
    mask = np.zeros(SRC_SHAPE, mb.MASK_DTYPE)
    mask[50, 50] = mb.BAD
    a = resample(img, wt, mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    b = resample(img.astype(">f4"), wt.astype(">f4"), mask.astype(">i2"), src_wcs=src, dst_wcs=dst,
                 dst_shape=DST_SHAPE)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


class _RecordingArray:
    """A read-only 2-D array that records the slices read from it (as a memory-mapped FITS image would be read)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.a[key]


def test_big_endian_inputs_are_read_by_windows_not_whole():
    # memory-mapped FITS data (big-endian) are converted to native order window by window: no call of
    # resample_rows reads the whole frame, and the result is that of native in-memory arrays
    src, dst = _wcs_pair()
    rng = np.random.default_rng(9)
    img = rng.normal(5.0, 1.0, SRC_SHAPE).astype(np.float32)
    wt = np.ones(SRC_SHAPE, np.float32)
    mask = np.zeros(SRC_SHAPE, mb.MASK_DTYPE)
    mask[60, 70] = mb.BAD
    plan = plan_resample(SRC_SHAPE, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE)
    ri, rw, rm = (_RecordingArray(x.astype(x.dtype.newbyteorder(">"))) for x in (img, wt, mask))
    y0, y1 = plan.bbox[:2]
    for r0 in range(y0, y1, 32):
        r1 = min(y1, r0 + 32)
        a = rs.resample_rows(plan, img, wt, mask, r0, r1)
        b = rs.resample_rows(plan, ri, rw, rm, r0, r1)
        for x, y in zip(a[:3], b[:3]):
            np.testing.assert_array_equal(x, y)
        assert a[4] > 0 and a[3:] == b[3:]
    for rec in (ri, rw, rm):
        rows = [k[0].indices(SRC_SHAPE[0]) for k in rec.reads]
        assert len(rows) >= SRC_SHAPE[0] // 32
        assert max(r1 - r0 for r0, r1, _ in rows) < SRC_SHAPE[0] // 2


def test_rotated_exposure_and_column_chunks(monkeypatch):
    # an exposure rotated by 90 degrees on the tile: output rows run along input columns
    src = tan_wcs(SRC_SHAPE, sip=SIP, rot_deg=90.0)
    dst = tan_wcs(DST_SHAPE, crval=(150.0 + 0.3 / 3600, 2.0 - 0.2 / 3600), scale_arcsec=0.55)
    xs, ys, fl = _stars(4)
    img = gaussian_stars(SRC_SHAPE, xs, ys, fl, 1.6).astype(np.float32)
    mask = np.zeros(SRC_SHAPE, mb.MASK_DTYPE)
    mask[10:14, 150] = mb.BAD
    ref = resample(img, np.ones_like(img), mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE,
                   kernel="cubicspline5")
    monkeypatch.setattr(rs, "_CHUNK_COLUMNS", 37)
    got = resample(img, np.ones_like(img), mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE,
                   kernel="cubicspline5", block_rows=19)
    np.testing.assert_array_equal(got.image, ref.image)
    np.testing.assert_array_equal(got.weight, ref.weight)
    np.testing.assert_array_equal(got.mask, ref.mask)
    X, Y = src_to_dst(src, dst, xs, ys)
    m = _measure(got, X, Y)
    assert np.abs(m[:, 0] / fl - 1.0).max() < 1e-3
    assert np.hypot(m[:, 1] - X, m[:, 2] - Y).max() < 0.01


@pytest.mark.parametrize("kernel", ["lanczos3", "cubicspline5"])
def test_fast_kernel_loop_equals_the_reference(kernel, monkeypatch):
    # the separable, unrolled kernel loop against the plain one (2-D weights tap by tap), on an exposure with
    # masked, zero-weight and non-finite pixels and one that runs off the tile: the same up to float rounding
    src, dst = _wcs_pair()
    xs, ys, fl = _stars(11)
    rng = np.random.default_rng(11)
    img = (gaussian_stars(SRC_SHAPE, xs, ys, fl, 1.5) + rng.normal(0.0, 3.0, SRC_SHAPE)).astype(np.float32)
    wt = rng.uniform(0.05, 0.15, SRC_SHAPE).astype(np.float32)
    mask = np.zeros(SRC_SHAPE, mb.MASK_DTYPE)
    mask[40:44, 80:83] = mb.BAD
    mask[120, 10:30] = mb.SATURATED
    wt[:, 150] = 0.0
    img[90, 90] = np.nan
    got = resample(img, wt, mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, kernel=kernel, block_rows=37)
    assert rs._KERNEL_LOOP[0] is rs._resample_block
    monkeypatch.setattr(rs, "_KERNEL_LOOP", [rs._resample_block_reference])
    ref = resample(img, wt, mask, src_wcs=src, dst_wcs=dst, dst_shape=DST_SHAPE, kernel=kernel, block_rows=37)
    assert got.bbox == ref.bbox
    np.testing.assert_array_equal(got.mask, ref.mask)
    np.testing.assert_array_equal(got.weight > 0, ref.weight > 0)
    good = ref.weight > 0
    assert good.sum() > 0.9 * good.size and (~good).sum() > 100
    scale = np.abs(ref.image[good]).max()
    assert np.abs(got.image - ref.image).max() <= 1e-5 * scale
    np.testing.assert_allclose(got.weight[good], ref.weight[good], rtol=1e-5)
    assert got.noise_ratio == pytest.approx(ref.noise_ratio, rel=1e-9)


@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos4", "cubicspline5"])
def test_kernel_transfer_is_what_interpolation_does_to_a_wave(kernel):
    """A cosine of wave number k sampled on the pixels and interpolated at random sub-pixel positions u with the
    kernel's weights comes out as ``A(k) cos(k u)`` plus an alias that averages out: ``A`` is the transfer function
    (the blur that resampling puts on an undersampled PSF)."""
    rng = np.random.default_rng(3)
    table = rs.kernel_table(kernel)
    a = rs.KERNELS[kernel][1]
    u = rng.uniform(50.0, 10050.0, 200_000)
    base = np.floor(u).astype(int)
    f = u - base
    w = table[np.round(f * (table.shape[0] - 1)).astype(int)]  # (n, 2a)
    taps = base[:, None] + np.arange(-a + 1, a + 1)[None, :]
    for k in (0.3, 1.1, 1.9, 2.6, 3.0):
        value = np.sum(w * np.cos(k * taps), axis=1)
        amp = 2 * np.mean(value * np.cos(k * u))  # projection on cos(k u); the alias is uncorrelated with it
        assert rs.kernel_transfer(kernel, np.array(k)) == pytest.approx(amp, abs=0.01), k
    assert float(rs.kernel_transfer(kernel, np.array(0.0))) == pytest.approx(1.0, abs=1e-9)
    # the high frequencies of an undersampled PSF are lost: half the amplitude at the Nyquist frequency
    assert float(rs.kernel_transfer(kernel, np.array(np.pi))) < 0.6
