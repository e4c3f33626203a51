"""The star flat through the flow: a night whose master flat is a dome flat with an illumination pattern the night
sky does not have, and no illumination correction (``build_flat_types = []``), so the reduced frames keep the
pattern. The ``star_flat`` step, from the same stars in five exposures dithered by 3′ and a plain Gaia reference,
must find it: its map against the simulator's true dome illumination, and its QC warns.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from upad.io.products import read_star_flat

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_conditions as B  # noqa: E402

SIM = {**B.BASE, **B.WORLD, "psf_family": "moffat", "psf_beta_range": (2.0, 5.0), "psf_seeing_arcsec": 1.0,
       # dome flats only (with their illumination pattern), 5 exposures dithered by 3', a low-latitude star density
       "n_dome_flats": 5, "n_sky_flats": 0, "n_dithers": 5, "dither_step_arcsec": 180.0,
       "illumination_amplitude": 0.05, "star_density_r21": 40000.0,
       # a PSF whose width varies over the field changes the photometry over the field too (the aperture
       # correction follows a polynomial): left out here so that the truth to compare with is the illumination
       "psf_field_bump": 0.0}
TOML = "[steps.master_illumination]\nbuild_flat_types = []\n\n[steps.star_flat]\nmin_snr = 30.0\n"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from sqlalchemy import select

    from upad.db import Database
    from upad.db.models import Product
    from upad.reduce.validation import night_vs_truth
    from upad.sim import SimConfig, simulate
    from upad.sim.truth import load_manifest

    work = tmp_path_factory.mktemp("starflat")
    simulate("mini", seed=5, out=work / "sim", nights=1, tiles=1, filters=["rSDSS"], config=SimConfig(**SIM))
    res = night_vs_truth(work / "sim", work / "root", config_toml=TOML)
    db = Database(f"sqlite:///{work / 'root' / 'upad.sqlite'}")
    try:
        with db.session() as s:
            prods = [(p.qc_status, dict(p.meta or {}), [f["path"] for f in p.files])
                     for p in s.scalars(select(Product).where(Product.kind == "star_flat"))]
            illum = s.scalars(select(Product).where(Product.kind == "master_illumination")).all()
            assert not illum, "the illumination correction was configured off"
    finally:
        db.dispose()
    return {"res": res, "products": prods, "manifest": load_manifest(work / "sim"), "root": work / "root"}


def test_the_star_flat_finds_the_uncorrected_dome_illumination(night):
    assert not night["res"]["failed"], night["res"]["failed"]
    assert all(f["qc"] in ("ok", "warn") for f in night["res"]["frames"])
    assert len(night["products"]) == 1
    status, meta, paths = night["products"][0]
    assert meta["constrained"] and meta["n_reference"] > 50 and meta["n_stars"] > 100, meta
    with fits.open(night["root"] / paths[0]) as h:
        s = h["STARFLAT"].data.astype(float)
        resp = h["RESPONSE"].data.astype(float)
    sf = read_star_flat(night["root"] / paths[0])
    err = sf.error_mag
    assert len(sf.exposures) == 5 and sf.constrained
    np.testing.assert_allclose(sf.grid(s.shape[0])[2], s, atol=1e-5)  # the reader gives back the map
    man = night["manifest"]
    c = man["camera"]["illumination_coeffs"]
    ny, nx = man["active_shape"]
    n = s.shape[0]
    gx, gy = np.meshgrid((np.arange(n) + 0.5) * nx / n - 0.5, (np.arange(n) + 0.5) * ny / n - 0.5)
    u, v = 2 * gx / (nx - 1) - 1, 2 * gy / (ny - 1) - 1
    p = 1 + c[0] * u + c[1] * v + c[2] * (u * u - 1 / 3) + c[3] * (v * v - 1 / 3) + c[4] * u * v
    truth = 2.5 * np.log10(p)  # flat-fielded by a flat that holds p: stars look fainter where p is high
    diff = (s - s.mean()) - (truth - truth.mean())
    assert np.std(truth) > 0.007
    # recovered within its own stated uncertainty (plus 1 mmag) and to better than a third of the pattern
    assert np.std(diff) <= min(2 * err + 0.001, np.std(truth) / 3), (np.std(diff), err, np.std(truth))
    # the reduced frames respond as 1 / p: the response map (divide a frame by it) follows that
    assert np.corrcoef(resp.ravel(), 1 / p.ravel())[0, 1] > 0.9
    # and the QC says the flat field of that night and filter is off
    assert status == "warn" and meta["qc_reasons"] and "star flat rms" in meta["qc_reasons"][0], meta
