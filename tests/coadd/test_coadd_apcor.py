"""The coadd's aperture correction (its tail beyond the largest aperture from the inputs') and the pixels where an input
is missing (issue 12)."""
from __future__ import annotations

import numpy as np
import pytest

from upad.coadd.pipeline import inputs_tail
from upad.reduce.psf import moffat_enclosed


def test_inputs_tail_is_the_mixture_of_the_inputs_profiles():
    """Two inputs of unlike PSFs (a heavy Moffat wing and a light one) mixed with unequal shares of the flux: the
    mixture's total over its flux within the aperture, computed from the profiles, is what the inputs' tails give."""
    r_big = 5.45  # the 6" aperture's radius at 0.55"/pixel
    profiles = [(2.0, 1.8), (2.6, 4.5)]  # (FWHM px, beta)
    shares = np.array([0.3, 0.7])
    tails = [1.0 / float(moffat_enclosed(r_big, fw, b)) for fw, b in profiles]
    mixture_ee = sum(w * float(moffat_enclosed(r_big, fw, b)) for w, (fw, b) in zip(shares, profiles))
    assert tails[0] > 1.03 and tails[1] < 1.01  # unlike wings
    assert inputs_tail(shares * 7.0, tails) == pytest.approx(1.0 / mixture_ee, rel=1e-12)  # shares normalised
    # not the mean of the tails
    assert abs(inputs_tail(shares, tails) - float(np.dot(shares, tails))) > 1e-4


@pytest.mark.parametrize("shares,tails", [([], []), ([1.0], [1.02, 1.01]), ([0.0, 0.0], [1.01, 1.02]),
                                          ([1.0, np.nan], [1.01, 1.02]), ([1.0, 1.0], [1.01, 0.0])])
def test_inputs_tail_refuses_what_it_cannot_mix(shares, tails):
    with pytest.raises(ValueError):
        inputs_tail(shares, tails)


def test_incomplete_inputs_by_blocks_is_the_whole_image_filter():
    from scipy.ndimage import maximum_filter

    from upad.coadd.pipeline import incomplete_inputs

    rng = np.random.default_rng(2)
    nexp = rng.integers(0, 4, (203, 97)).astype(np.int16)
    rejected = (rng.random((203, 97)) < 0.01).astype(np.uint8)
    whole = (rejected > 0) | (nexp < maximum_filter(nexp, size=15))
    for rows in (1, 7, 16, 50, 1024):
        assert np.array_equal(incomplete_inputs(rejected, nexp, block_rows=rows), whole), rows
