"""Same seed -> byte-identical pixels, whatever the number of worker processes; another seed differs."""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from upad.sim import SimConfig, simulate

#: the default (independent) world, without its photon-transfer / linearity sequences: 4 frames are enough here
CFG = dict(n_bias=1, n_dark=0, n_dome_flats=1, n_sky_flats=0, n_dithers=2, n_ptc_pairs=0, n_linearity_flats=0)


def _pixels(res):
    out = []
    for p in res.raw_files:
        with fits.open(p) as hd:
            out.append(np.array(hd[1].data))
    return out


def test_same_seed_same_pixels_different_seed_differs(tmp_path):
    a = simulate("mini", seed=11, out=tmp_path / "a", tiles=1, filters=["zSDSS"], config=SimConfig(**CFG, workers=2))
    b = simulate("mini", seed=11, out=tmp_path / "b", tiles=1, filters=["zSDSS"], config=SimConfig(**CFG, workers=1))
    c = simulate("mini", seed=12, out=tmp_path / "c", tiles=1, filters=["zSDSS"], config=SimConfig(**CFG, workers=1))
    pa, pb, pc = _pixels(a), _pixels(b), _pixels(c)
    assert [p.name for p in a.raw_files] == [p.name for p in b.raw_files]
    assert len(pa) == 4
    for x, y in zip(pa, pb):
        assert np.array_equal(x, y)
    for x, z in zip(pa, pc):
        assert not np.array_equal(x, z)
    assert a.frames[-1]["zp_e"] == b.frames[-1]["zp_e"]
