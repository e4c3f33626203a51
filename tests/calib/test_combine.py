"""The block-wise sigma-clipped combination: both kernels, memory-mapped inputs, noise model, ccdproc agreement."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from upad.calib.combine import HAVE_NUMBA, combine_block, combine_stack


def stack(n=9, shape=(60, 80), sigma=5.0, seed=2):
    rng = np.random.default_rng(seed)
    st = (100 + sigma * rng.standard_normal((n,) + shape)).astype(np.float32)
    st[1, 10, 10] += 500  # a cosmic ray
    st[2, 20:23, 5] = np.nan  # masked pixels
    return st


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("dev", ["std", "mad", "model"])
@pytest.mark.parametrize("method", ["mean", "median"])
def test_numba_and_numpy_kernels_agree(dev, method):
    st = stack()
    rv = np.tile(np.array([25.0, 16.0, 36.0, 25.0])[None, :], (st.shape[0], 1))  # per frame and zone (4 zones)
    kw = dict(dev=dev, method=method, zones=(30, 40, 2), read_var=rv if dev == "model" else None, max_iters=5)
    a = combine_block(st, engine="numba", **kw)
    b = combine_block(st, engine="numpy", **kw)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    assert (a[2] == b[2]).all() and a[3:] == b[3:]


def test_noise_model_rejects_a_cosmic_ray_among_three_frames():
    st = stack(n=3)
    with_std = combine_block(st, dev="std")
    with_model = combine_block(st, dev="model", read_var=25.0)
    # with 3 values a sample standard deviation can never reject (the outlier inflates it); the noise model does
    assert with_std[2][10, 10] == 3 and with_std[0][10, 10] > 200
    assert with_model[2][10, 10] == 2 and abs(with_model[0][10, 10] - 100) < 15
    assert with_model[2][21, 5] == 2 and np.isfinite(with_model[0][21, 5])  # the NaN is masked, not propagated


def test_blocks_memory_maps_and_scales(tmp_path):
    st = stack(n=6, shape=(101, 64))
    one = combine_stack(list(st), block_rows=101, dev="model", read_var=25.0)
    paths = []
    for i, frame in enumerate(st):
        p = tmp_path / f"f{i}.fits"
        fits.PrimaryHDU(frame * (i + 1)).writeto(p)  # big-endian on disk, scaled by i + 1
        paths.append(p)
    hduls = [fits.open(p, memmap=True) for p in paths]
    try:
        blocks = combine_stack([h[0].data for h in hduls], scales=np.arange(1, 7), block_rows=7, dev="model",
                               read_var=25.0)
    finally:
        for h in hduls:
            h.close()
    assert blocks.stats["blocks"] == 15
    np.testing.assert_allclose(blocks.image, one.image, rtol=1e-5)
    assert (blocks.n_used == one.n_used).all()
    small = combine_stack(list(st), memory_mb=0.02)
    assert small.stats["block_rows"] < 101 and small.stats["blocks"] > 1


def test_uncertainty_matches_the_scatter():
    rng = np.random.default_rng(5)
    st = (1000 + 10 * rng.standard_normal((12, 200, 200))).astype(np.float32)
    for dev, kw in (("std", {}), ("model", {"read_var": 100.0})):
        res = combine_stack(list(st), dev=dev, **kw)
        expected = 10 / np.sqrt(12)
        assert np.median(res.error) == pytest.approx(expected, rel=0.05)
        assert res.image.std() == pytest.approx(expected, rel=0.05)
        assert res.stats["rejected_fraction"] < 0.01


def test_min_keep_and_empty_pixels():
    st = np.full((4, 3, 3), np.nan, np.float32)
    st[:, 0, 0] = [1, 1, 1, 50]
    res = combine_stack(list(st), dev="mad", min_keep=4)
    assert res.n_used[0, 0] == 4  # rejection would leave fewer than min_keep values
    assert res.n_used[1, 1] == 0 and np.isnan(res.image[1, 1])
    with pytest.raises(ValueError, match="noise model"):
        combine_stack(list(st), dev="model")
    with pytest.raises(ValueError, match="shape"):
        combine_stack([st[0], st[0, :2]])


def test_same_answer_as_ccdproc():
    ccdproc = pytest.importorskip("ccdproc")
    from astropy.nddata import CCDData

    st = stack(n=8, shape=(40, 50)).astype(np.float64)
    st[np.isnan(st)] = 100.0
    ccds = [CCDData(f, unit="adu") for f in st]
    ref = ccdproc.combine(ccds, method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                          sigma_clip_high_thresh=3, sigma_clip_func="median", sigma_clip_dev_func="std")
    ours = combine_stack(list(st.astype(np.float32)), center="median", dev="std", max_iters=1)
    np.testing.assert_allclose(ours.image, ref.data, rtol=1e-5)


def test_row_readers_read_files_without_mapping_them(tmp_path):
    from upad.calib.rows import RowReader

    st = stack(n=3, shape=(50, 40))
    readers = []
    for i, frame in enumerate(st):
        if i == 0:
            p = tmp_path / "f0.npy"
            np.save(p, frame)
            readers.append(RowReader.from_npy(p))
        else:
            p = tmp_path / f"f{i}.fits"
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame, name="SCI")]).writeto(p)
            readers.append(RowReader.from_fits(p, "SCI"))
    np.testing.assert_array_equal(readers[1][10:13], st[1][10:13])
    res = combine_stack(readers, block_rows=7, dev="model", read_var=25.0)
    ref = combine_stack(list(st), dev="model", read_var=25.0)
    np.testing.assert_array_equal(res.image, ref.image)
    with pytest.raises(TypeError, match="contiguous"):
        readers[0][::2]
    p = tmp_path / "c.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(st[0])]).writeto(p)
    with pytest.raises(ValueError, match="compressed"):
        RowReader.from_fits(p, 1)
    p = tmp_path / "t.npy"
    np.save(p, st[0])
    p.write_bytes(p.read_bytes()[:-400])
    with pytest.raises(OSError, match="truncated"):
        RowReader.from_npy(p)[40:50]
