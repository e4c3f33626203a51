from __future__ import annotations

import pytest

from upad.sim import SimConfig, simulate
from upad.sim.truth import load_manifest

#: the default (independent) world; its photon-transfer / linearity sequences are left out (the simulator's tests of
#: them are in tests/calib/test_signature.py), so the dome flats are the 3 of a flat-field series per filter
SMALL = dict(n_bias=5, n_dark=2, n_dome_flats=3, n_sky_flats=3, n_dithers=2, cosmic_rate=20.0, n_ptc_pairs=0,
             n_linearity_flats=0)


@pytest.fixture(scope="session")
def night(tmp_path_factory):
    """One mini night: 2 tiles x (rSDSS, zSDSS) x 2 dithers plus calibrations, with a boosted cosmic-ray rate."""
    out = tmp_path_factory.mktemp("mini-night")
    res = simulate("mini", seed=7, out=out, nights=1, tiles=2, filters=["rSDSS", "zSDSS"],
                   config=SimConfig(**SMALL))
    return res, load_manifest(out)
