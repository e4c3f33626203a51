"""Pure pieces: renderer vs GalSim, switches, bleeding, schedule, CLI."""
from __future__ import annotations

from datetime import date

import math

import numpy as np
import pytest
from astropy.io import fits

from upad.instruments import get_instrument
from upad.sim import EFFECTS, SimConfig, load_manifest, simulate
from upad.sim.detector import bleed
from upad.sim.psf import moffat_alpha
from upad.sim.render import Sources, draw_with_galsim, psf_kimage, render, render_batch
from upad.sim.schedule import airmass, isot, night_times


@pytest.mark.parametrize("n,hlr,g1,g2", [(0.0, 0, 0, 0), (1.0, 1.5, 0.3, -0.1), (4.0, 2.5, -0.2, 0.2),
                                         (1.5, 0.6, 0.0, 0.35)])
def test_renderer_matches_galsim(n, hlr, g1, g2):
    N, fwhm, beta = 48, 2.3, 3.0
    pk = psf_kimage(N, float(moffat_alpha(fwhm, beta)), 0.03, -0.02, beta)
    cx, cy = np.array([23.7], np.float32), np.array([24.2], np.float32)
    if n:
        ours = render_batch(N, pk, np.array([1e4]), cx, cy, n=n, hlr_px=np.array([hlr]), g1=np.array([g1]),
                            g2=np.array([g2]))[0]
    else:
        ours = render_batch(N, pk, np.array([1e4]), cx, cy)[0]
    ref = draw_with_galsim(N, 1e4, 23.7, 24.2, fwhm_px=fwhm, beta=beta, psf_g1=0.03, psf_g2=-0.02, n=n, hlr_px=hlr,
                           g1=g1, g2=g2)
    assert ours.sum() == pytest.approx(1e4, rel=1e-4)
    assert np.abs(ours - ref).max() < 2e-3 * ref.max()



@pytest.mark.parametrize("flux", [3e3, 1e4, 1e5, 1e6])
def test_heavy_moffat_wing_is_not_folded_into_the_stamp(flux):
    """A beta-2 Moffat star keeps its wing where the profile puts it: the light beyond the stamp wraps around inside
    it (flux conserved), so the stamp must leave little there (with the per-pixel rule alone a star of 10^4 e- put
    0.8 % of its flux into the ring 8-16 px). Checked: the enclosed flux at the 8", 16" and 30" apertures, and the
    folded light's surface brightness (the 0.02 e-/pixel of ``wrap_threshold``) in the ring 20-30 px."""
    from upad.sim.psf import PSFModel

    scale, beta = 0.55, 2.0
    fwhm = 1.0 / scale
    psf = PSFModel(beta=beta, fwhm_centre=1.0, c_r2=0, c_x=0, c_y=0, g1_0=0, g2_0=0, g_r=0, nx=300, ny=300)
    img = np.zeros((300, 300), np.float32)
    render(img, Sources.points(np.array([150.3]), np.array([149.6]), np.array([flux])), psf, pixel_scale=scale)
    yy, xx = np.mgrid[0:300, 0:300]
    r = np.hypot(xx - 150.3, yy - 149.6)
    a = moffat_alpha(fwhm, beta)
    assert img.sum() == pytest.approx(flux, rel=1e-4)
    for rad in (7.27, 14.5, 27.0):  # 8, 16 and 30 arcsec apertures
        ee = 1.0 - (1.0 + (rad / a) ** 2) ** (1.0 - beta)
        # the folded light is spread over the stamp: a fraction of it, at most 0.03 e-/pixel, lies inside
        assert img[r <= rad].sum() == pytest.approx(ee * flux, abs=max(0.0015 * flux, 0.03 * math.pi * rad ** 2)), rad
    ring = (r >= 20) & (r < 30)
    true_sb = flux * (beta - 1) / (math.pi * a * a) * (1 + (r[ring] / a) ** 2) ** (-beta)
    assert abs(float(np.mean(img[ring] - true_sb))) < 0.03


def test_bleed_conserves_charge_and_runs_along_columns():
    img = np.full((200, 50), 100.0, np.float32)
    img[100, 20] = 1.0e6
    total = img.sum(dtype=np.float64)
    fw = np.array([[1e5, 1e5], [1e5, 1e5]])
    pl = bleed(img, fw, 25)
    assert img.sum(dtype=np.float64) == pytest.approx(total, rel=1e-6)
    assert img.max() <= 1e5 + 1
    assert np.all(pl.x == 20)
    # 9e5 e- of excess: 4.5 pixels each way -> 1 + 4 + 4 full pixels and two half-filled ones
    assert (img[:, 20] >= 1e5 - 1).sum() == 9
    assert img[95, 20] == pytest.approx(50500, rel=1e-5) and img[105, 20] == pytest.approx(50500, rel=1e-5)
    assert np.all(img[:, 19] == 100)


def test_no_effects_gives_an_ideal_camera(tmp_path):
    cfg = SimConfig(n_bias=1, n_dark=0, n_dome_flats=1, n_sky_flats=0, n_dithers=1, disabled=tuple(EFFECTS))
    res = simulate("mini", seed=3, out=tmp_path, tiles=1, filters=["rSDSS"], config=cfg)
    inst = get_instrument("mini")
    with fits.open(res.raw_files[0]) as hd:
        bias = np.array(hd[1].data)
    for sec in inst.amp_sections("readout"):
        block = bias[sec.data[0], sec.prescan[1].start:sec.overscan_x[1].stop] if not sec.read_flip_x else \
            bias[sec.data[0], sec.overscan_x[1].start:sec.prescan[1].stop]
        vals = np.unique(block)
        assert len(vals) == 1 and vals[0] == round(res.frames[0]["bias"]["level_adu"][sec.index])
    dome = res.of_kind("flat-dome")[0]
    with fits.open(res.out / dome["file"]) as hd:
        d = np.array(hd[1].data, dtype=float)
    for sec in inst.amp_sections("readout"):
        v = d[sec.data] - round(dome["bias"]["level_adu"][sec.index])
        assert np.ptp(v) <= 1 and v.mean() == pytest.approx(dome["level_adu"][sec.index], abs=1.01)
    sci = res.of_kind("science")[0]
    assert sci["n_cosmic_events"] == 0 and not sci["satellite"]
    assert sci["wcs"]["pointing_error_arcsec"] == [0.0, 0.0]


def test_schedule_is_astronomical():
    t = night_times(date(2025, 6, 21))
    # midsummer at Javalambre: sunset ~19:35 UTC, astronomical night ~5.5 h
    assert isot(t.sunset).startswith("2025-06-21T19:")
    assert 4.5 < (t.dawn_18 - t.dusk_18) * 24 < 6.5
    assert airmass(90.0) == pytest.approx(1.0, abs=1e-3) and airmass(30.0) == pytest.approx(1.995, abs=0.01)


def test_cli_simulate(tmp_path):
    from upad.cli.main import main
    rc = main(["simulate", "--out", str(tmp_path / "o"), "--tiles", "1", "--filters", "rSDSS", "--json",
               "--set", "n_bias=1", "--set", "n_dark=0", "--set", "n_dome_flats=0", "--set", "n_sky_flats=0",
               "--set", "n_dithers=1", "--disable", "cosmics,satellites", "--no-compress", "--nominal-world"])
    assert rc == 0
    files = sorted((tmp_path / "o" / "raw").rglob("*.fits"))
    assert len(files) == 2  # the nominal world has no photon-transfer / linearity sequence
    man = load_manifest(tmp_path / "o")
    assert man["config"]["draw_signature"] is False and man["config"]["psf_family"] == "moffat"
    assert not man["camera"]["signature"]["drawn"]
    assert main(["simulate", "--instrument", "jpcam", "--out", str(tmp_path / "j")]) == 2
    assert main(["simulate", "--out", str(tmp_path / "k"), "--set", "nonsense=1"]) == 2
