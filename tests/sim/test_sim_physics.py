"""Science quantities in the raw data agree with the truth."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from upad.instruments import get_instrument
from upad.sim.truth import read_map

from .helpers import electrons, linearize, nonlinear_deviation, read_raw

INST = get_instrument("mini")


def frames(man, kind, filt=None):
    return [f for f in man["frames"] if f["kind"] == kind and (filt is None or f["filter"] == filt)]


def assembled(raw):
    asm = np.zeros(INST.layout.active_shape)
    for sec in INST.amp_sections("readout"):
        asm[sec.active] = raw[sec.data]
    return asm


def test_bias_overscan_matches_truth(night):
    res, man = night
    for rec in frames(man, "bias"):
        raw, _ = read_raw(res.out / rec["file"])
        with fits.open(res.out / rec["truth"]) as hd:
            bias_rows = np.array(hd["BIAS"].data, dtype=float)
        for sec in INST.amp_sections("readout"):
            k = sec.index
            ron_adu = man["camera"]["read_noise_e"][k] / man["camera"]["gain_true_e_per_adu"][k]
            sig = np.hypot(ron_adu, 0.29)
            os_ = raw[sec.overscan_x]
            # the overscan over the data rows has the same bias as the data rows
            assert os_.mean() == pytest.approx(rec["bias"]["mean_data_adu"][k], abs=5 * sig / np.sqrt(os_.size))
            # drift: overscan row means follow the truth bias rows
            ny = os_.shape[0]
            r = (ny - 1 - np.arange(ny)) if sec.read_flip_y else np.arange(ny)
            resid = os_.mean(axis=1) - bias_rows[k, r]
            assert abs(resid.mean()) < 5 * sig / np.sqrt(os_.size)
            assert resid.std() < 1.3 * sig / np.sqrt(os_.shape[1])
            # and the data rows carry the same bias
            data = raw[sec.data]
            med_rows = np.median(data, axis=1)
            assert np.median(med_rows - bias_rows[k, r]) == pytest.approx(0, abs=0.5)
    levels = frames(man, "bias")[0]["bias"]["level_adu"]
    assert np.ptp(levels) > 100  # per-amplifier biases from the instrument file


def test_ideal_calibration_recovers_star_fluxes_and_positions(night):
    res, man = night
    bpm = read_map(res.out / man["camera"]["maps"]["bpm"])
    checked = 0
    for rec in frames(man, "science", "rSDSS"):
        img = electrons(res.out, man, rec)
        sky = rec["sky_e"] + man["camera"]["dark_current_e_per_s"] * rec["exptime"]
        obj = Table.read(res.out / rec["truth"], hdu="OBJECTS")
        stars = obj[obj["in_image"] & ~obj["saturated"] & (obj["flux_e"] > 3e4) & (obj["flux_e"] < 4e5)]
        ny, nx = img.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        for s in stars:
            x, y = s["x"], s["y"]
            r_ap = 4 * s["fwhm_arcsec"] / 0.55
            if not (r_ap + 2 < x < nx - r_ap - 3 and r_ap + 2 < y < ny - r_ap - 3):
                continue
            near = np.hypot(obj["x"] - x, obj["y"] - y)
            if np.any((near > 0.1) & (near < 3 * r_ap) & (obj["flux_e"] > 0.003 * s["flux_e"])):
                continue
            sl = (slice(int(y - r_ap - 2), int(y + r_ap + 3)), slice(int(x - r_ap - 2), int(x + r_ap + 3)))
            if bpm[sl].any():
                continue
            d2 = (xx[sl] - x) ** 2 + (yy[sl] - y) ** 2
            ap = d2 <= r_ap ** 2
            cut = img[sl] - sky
            flux = cut[ap].sum()
            noise = np.sqrt(abs(flux) + ap.sum() * (sky + 20))
            assert flux == pytest.approx(s["flux_e"], abs=max(0.03 * s["flux_e"], 5 * noise)), dict(s)
            # the centroid sits at the truth position (0-based convention)
            w = np.clip(cut, 0, None) * (d2 <= (1.5 * s["fwhm_arcsec"] / 0.55) ** 2)
            cx = (w * xx[sl]).sum() / w.sum()
            cy = (w * yy[sl]).sum() / w.sum()
            assert abs(cx - x) < 0.1 and abs(cy - y) < 0.1
            # flux_adu uses the true gain of the object's amplifier
            k = int(s["amp"]) - 1
            assert s["flux_adu"] == pytest.approx(s["flux_e"] / man["camera"]["gain_true_e_per_adu"][k])
            checked += 1
    assert checked >= 3


def test_sky_level_matches_truth(night):
    res, man = night
    for rec in frames(man, "science"):
        img = electrons(res.out, man, rec, bias_from="overscan")
        dark = man["camera"]["dark_current_e_per_s"] * rec["exptime"]
        med = np.median(img) - dark
        # faint objects raise the median a little
        assert rec["sky_e"] - 1.0 < med < rec["sky_e"] * 1.03 + 2.0
        assert rec["sky_adu"][0] == pytest.approx(rec["sky_e"] / man["camera"]["gain_true_e_per_adu"][0])


def test_saturated_stars_hit_adc_and_bleed(night):
    res, man = night
    seen = 0

    def run(mask, c):
        lo = hi = c
        while lo > 0 and mask[lo - 1]:
            lo -= 1
        while hi < len(mask) - 1 and mask[hi + 1]:
            hi += 1
        return hi - lo + 1

    for rec in frames(man, "science"):
        obj = Table.read(res.out / rec["truth"], hdu="OBJECTS")
        sat = Table.read(res.out / rec["truth"], hdu="SATURATION")
        raw, _ = read_raw(res.out / rec["file"])
        asm = assembled(raw)
        for s in obj[obj["in_image"] & (obj["peak_e"] > 4e5)]:
            ix, iy = int(round(s["x"])), int(round(s["y"]))
            if not (5 < ix < 1019 and 40 < iy < 984):
                continue
            assert s["saturated"]
            assert asm[iy, ix] == 65535
            # the saturated run through the centre is much longer along the column (bleed) than along the row
            assert run(asm[:, ix] == 65535, iy) >= run(asm[iy, :] == 65535, ix) + 4
            bled = sat[(sat["kind"] == 2) & (sat["x"] == ix)]
            assert len(bled) > 0 and bled["e"].sum() > 0
            adc = sat[sat["kind"] == 1]
            assert np.all(asm[adc["y"], adc["x"]] == 65535)
            seen += 1
    assert seen >= 2


def test_cosmic_ray_pixels_are_elevated(night):
    res, man = night
    n = 0
    for rec in frames(man, "dark") + frames(man, "bias"):
        cr = Table.read(res.out / rec["truth"], hdu="COSMICS")
        asm = assembled(read_raw(res.out / rec["file"])[0])
        for p in cr[cr["e"] > 300]:
            y, x = int(p["y"]), int(p["x"])
            local = np.median(asm[max(0, y - 5):y + 6, max(0, x - 5):x + 6])
            # at least half the deposit (neighbouring tracks only add), read noise is ~4 ADU
            assert asm[y, x] - local > 0.5 * p["e"] / 0.95 - 20
            n += 1
        expect = 20.0 * 1024 ** 2 * 1e-6 * (rec["exptime"] + 6) / 60  # rate x area x time
        assert abs(rec["n_cosmic_events"] - expect) < 5 * np.sqrt(expect) + 2
    assert n > 20


def test_satellite_trail_present_and_elevated(night):
    res, man = night
    with_sat = [f for f in frames(man, "science") if f["satellite"]]
    assert len(with_sat) >= 1
    rec = with_sat[0]
    tr = Table.read(res.out / rec["truth"], hdu="SATELLITE")
    img = electrons(res.out, man, rec)
    core = tr[tr["e"] > 0.5 * tr["e"].max()]
    assert len(core) > 500  # crosses the frame
    assert np.median(img[core["y"], core["x"]]) - np.median(img) > 0.3 * np.median(core["e"])


def test_fringes_only_in_red_filters(night):
    res, man = night
    maps = man["camera"]["maps"]
    assert "fringe_zSDSS" in maps and "fringe_rSDSS" not in maps
    fr = read_map(res.out / maps["fringe_zSDSS"]).astype(np.float64)
    assert 0.015 < fr.std() < 0.04
    corr = {}
    for filt in ("rSDSS", "zSDSS"):
        vals = []
        for rec in frames(man, "science", filt):
            assert (rec["fringe_amplitude_rms"] > 0) == (filt == "zSDSS")
            img = electrons(res.out, man, rec)
            resid = img / rec["sky_e"] - 1
            good = np.abs(resid - np.median(resid)) < 5 * (fr.std() + 1 / np.sqrt(rec["sky_e"]))
            vals.append(np.corrcoef(resid[good], fr[good])[0, 1])
        corr[filt] = np.mean(vals)
    assert corr["zSDSS"] > 0.2
    assert abs(corr["rSDSS"]) < 0.05


def test_dome_flats_carry_the_illumination_term_sky_flats_do_not(night):
    res, man = night
    illum = read_map(res.out / man["camera"]["maps"]["illum_dome"]).astype(np.float64)
    assert np.ptp(illum) > 0.005

    def stack(kind):
        ims = []
        for rec in frames(man, kind, "rSDSS"):
            img = electrons(res.out, man, rec, bias_from="overscan")
            if kind == "flat-sky":  # the twilight sky's own gradient, as recorded (tested below)
                img /= _twilight(rec["twilight_gradient"], img.shape)
            ims.append(img / np.median(img))
        return np.median(ims, axis=0)

    def smooth(a, b=32):
        ny, nx = a.shape
        return a.reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))

    dome = smooth(stack("flat-dome"))
    sky = smooth(stack("flat-sky"))
    ill = smooth(illum / illum.mean())
    assert np.corrcoef(dome.ravel(), ill.ravel())[0, 1] > 0.9
    assert np.std(sky / np.median(sky)) < 0.3 * np.std(ill)


def _twilight(t: dict, shape) -> np.ndarray:
    """The recorded twilight sky of a flat (manifest ``twilight_gradient``, its formula)."""
    ny, nx = shape
    u = np.linspace(-1, 1, nx)[None, :]
    v = np.linspace(-1, 1, ny)[:, None]
    lin = t["gx"] * u + t["gy"] * v
    span = abs(t["gx"]) + abs(t["gy"])
    return 1 + lin + t["curvature"] * 2 * span * ((lin / span) ** 2 - 1 / 3)


def test_sky_flats_brighten_towards_the_sun(night):
    """The twilight gradient is in the pixels as recorded, 1-6 % peak to peak, rising towards the Sun's position
    angle (astropy's Sun, the frame's true WCS)."""
    import astropy.units as au
    from astropy.coordinates import SkyCoord, get_sun
    from astropy.time import Time

    res, man = night
    flats = frames(man, "flat-sky")
    assert flats
    for rec in flats:
        t = rec["twilight_gradient"]
        assert 0.009 <= t["peak_to_peak"] <= 0.066
        img = electrons(res.out, man, rec, bias_from="overscan")
        ny, nx = img.shape
        b = 32
        cells = np.median(img.reshape(ny // b, b, nx // b, b).transpose(0, 2, 1, 3).reshape(ny // b, nx // b, -1),
                          axis=2)
        cells /= cells.mean()
        v, u = np.meshgrid(np.linspace(-1, 1, ny // b), np.linspace(-1, 1, nx // b), indexing="ij")
        A = np.stack([np.ones(u.size), u.ravel(), v.ravel()], axis=1)
        _, gx, gy = np.linalg.lstsq(A, cells.ravel(), rcond=None)[0]
        assert gx == pytest.approx(t["gx"], abs=0.001) and gy == pytest.approx(t["gy"], abs=0.001)
        # direction: towards the Sun, seen from the pointing, through the true WCS
        with fits.open(res.out / rec["truth"]) as hd:
            w = WCS(hd[0].header)
        mid = Time(rec["date_obs"], scale="utc") + rec["exptime"] / 2 * au.s
        centre = w.pixel_to_world((nx - 1) / 2, (ny - 1) / 2)
        sun = get_sun(mid)  # geocentric direction (GCRS; not ICRS: the Sun seen from the barycentre)
        pa = centre.position_angle(SkyCoord(sun.ra, sun.dec)).to_value("deg")
        step = centre.directional_offset_by(pa * au.deg, 30 * au.arcsec)
        x1, y1 = w.world_to_pixel(step)
        want = np.degrees(np.arctan2(y1 - (ny - 1) / 2, x1 - (nx - 1) / 2))
        got = np.degrees(np.arctan2(gy / (ny - 1), gx / (nx - 1)))
        assert abs((got - want + 180) % 360 - 180) < 3.0, (got, want)


def test_gain_and_nonlinearity_in_dome_flats(night):
    res, man = night
    rec = frames(man, "flat-dome")[0]
    raw, _ = read_raw(res.out / rec["file"])
    flat = read_map(res.out / man["camera"]["maps"]["flat_sky"]).astype(np.float64)
    illum = read_map(res.out / man["camera"]["maps"]["illum_dome"]).astype(np.float64)
    n_amp = len(rec["level_adu"])
    xtalk = man["camera"]["signature"].get("crosstalk", np.zeros((n_amp, n_amp)))
    for sec in INST.amp_sections("readout"):
        k = sec.index
        meas = raw[sec.data] - raw[sec.overscan_x].mean(axis=1)[:, None]
        # crosstalk (a drawn signature): C[k][j] times the other amplifiers' (measured) levels
        xt = sum(c * lv * (1 + nonlinear_deviation(lv, man["camera"], j))
                 for j, (c, lv) in enumerate(zip(xtalk[k], rec["level_adu"])))
        lin = linearize(meas - xt, man["camera"], k)
        resp = flat[sec.active] * illum[sec.active]
        good = resp > 0.8
        assert np.median(lin[good] / resp[good]) == pytest.approx(rec["level_adu"][k], rel=0.002)
        # without inverting the non-linearity the level is measurably off (by the camera's true deviation)
        off = np.median((meas - xt)[good] / resp[good]) / rec["level_adu"][k] - 1
        want = nonlinear_deviation(rec["level_adu"][k], man["camera"], k)
        assert abs(want) > 1e-4
        assert off == pytest.approx(want, rel=0.3)


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_truth_wcs_maps_catalog_to_pixels(night):
    res, man = night
    sky = Table.read(res.sky_catalog, hdu="SKY")
    by_id = {int(i): k for k, i in enumerate(sky["id"])}
    for rec in frames(man, "science")[:3]:
        with fits.open(res.out / rec["truth"]) as hd:
            w = WCS(hd[0].header)
            obj = Table(hd["OBJECTS"].data)
        assert w.sip is not None
        k = np.array([by_id[int(i)] for i in obj["id"]])
        # the stars moved from the catalog's epoch (2016.0) to the frame's
        epoch = 2000.0 + (Time(rec["date_obs"], scale="utc").jd + rec["exptime"] / 2 / 86400 - 2451545.0) / 365.25
        cosd = np.cos(np.radians(sky["dec"][k]))
        ra = sky["ra"][k] + (epoch - 2016.0) * sky["pmra"][k] / 3.6e6 / cosd
        dec = sky["dec"][k] + (epoch - 2016.0) * sky["pmdec"][k] / 3.6e6
        x, y = w.world_to_pixel_values(ra, dec)
        assert np.max(np.hypot(x - obj["x"], y - obj["y"])) < 1e-3
        # the header WCS (commanded pointing, no distortion) is off by the pointing error
        _, h = read_raw(res.out / rec["file"])
        xn, yn = WCS(h, naxis=2).world_to_pixel_values(sky["ra"][k], sky["dec"][k])
        off = np.hypot(*rec["wcs"]["pointing_error_arcsec"]) / 0.55
        assert np.median(np.hypot(xn - x, yn - y)) == pytest.approx(off, rel=0.1, abs=3.0)


def test_reference_catalog_covers_tiles_and_agrees_with_truth(night):
    res, man = night
    ref = Table.read(res.reference_catalog)
    sky = Table.read(res.sky_catalog, hdu="SKY")
    half = 1024 * 0.55 / 3600 / 2
    for t in man["tiles"]:
        cos = np.cos(np.radians(t["dec"]))
        inside = (np.abs((ref["ra"] - t["ra"]) * cos) < half) & (np.abs(ref["dec"] - t["dec"]) < half)
        assert inside.sum() > 20
        assert ref["ra"].min() < t["ra"] - half / cos and ref["ra"].max() > t["ra"] + half / cos
        assert ref["dec"].min() < t["dec"] - half and ref["dec"].max() > t["dec"] + half
    k = np.searchsorted(sky["id"], ref["truth_id"])
    assert set(sky["type"][k]) == {"star"}
    dra = (ref["ra"] - sky["ra"][k]) * np.cos(np.radians(sky["dec"][k])) * 3.6e6 / ref["ra_error"]
    ddec = (ref["dec"] - sky["dec"][k]) * 3.6e6 / ref["dec_error"]
    assert 0.85 < np.std(dra) < 1.15 and 0.85 < np.std(ddec) < 1.15
    assert ref["ra_error"].max() < 5
    mag_r = np.ma.filled(ref["mag_rSDSS"], np.nan).astype(float)
    has = np.isfinite(mag_r)
    assert has.sum() > 10 and (~has).sum() > 10 and np.all(ref["phot_g_mean_mag"][has] < 17.7)
    dm = mag_r[has] - np.asarray(sky["mag_rSDSS"][k][has], float)
    assert 0.008 < np.std(dm) < 0.022 and abs(np.mean(dm)) < 0.01
    assert ref["phot_g_mean_mag"].max() <= 20.55


@pytest.fixture(scope="module")
def moonlit_scattered(tmp_path_factory):
    """zSDSS science frames under the Moon, with scattered light and fringes that do not follow the sky."""
    from upad.sim import SimConfig, simulate
    from upad.sim.truth import load_manifest

    out = tmp_path_factory.mktemp("moon-night")
    cfg = SimConfig(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=0, n_linearity_flats=0,
                    n_dithers=3, moon_gradient=0.06,
                    moon_brightening_mag=1.0, scattered_light_fraction=0.2, fringe_frame_sigma=0.3,
                    disabled=("cosmics", "satellites"))
    res = simulate("mini", seed=13, out=out, nights=1, tiles=1, filters=["zSDSS"], config=cfg)
    return res, load_manifest(out)


def test_moonlight_scattered_light_and_fringe_variation_in_science_frames(moonlit_scattered):
    res, man = moonlit_scattered
    scat = read_map(res.out / man["camera"]["maps"]["scattered_light"]).astype(np.float64)
    fringe = read_map(res.out / man["camera"]["maps"]["fringe_zSDSS"]).astype(np.float64)
    assert scat.max() == pytest.approx(1.0) and np.ptp(scat) > 0.5
    scales = []
    for rec in frames(man, "science", "zSDSS"):
        img = electrons(res.out, man, rec)
        ny, nx = img.shape
        g = rec["sky_gradient"]
        assert g["peak_to_peak"] == pytest.approx(0.06, rel=0.11)
        u = np.linspace(-1, 1, nx)[None, :]
        v = np.linspace(-1, 1, ny)[:, None]
        sky = rec["sky_e"] * (1 + g["gx"] * u + g["gy"] * v)
        extra = img - sky
        b = 32
        cells = np.median(extra.reshape(ny // b, b, nx // b, b).transpose(0, 2, 1, 3).reshape(ny // b, nx // b, -1),
                          axis=2)
        smap = scat.reshape(ny // b, b, nx // b, b).mean(axis=(1, 3))
        # what is left of the sky beyond the moonlit gradient is the scattered glow, at its recorded level
        slope = np.polyfit(smap.ravel(), cells.ravel(), 1)[0]
        assert slope == pytest.approx(rec["scattered_light_peak_e"], rel=0.03)
        # the fringes: their amplitude is the recorded frame scale, not the sky's
        from scipy import ndimage

        resid = extra - rec["scattered_light_peak_e"] * scat
        objects = ndimage.maximum_filter(resid > 4 * np.sqrt(rec["sky_e"]), size=11)  # stars and galaxies out
        bpm = read_map(res.out / man["camera"]["maps"]["bpm"])
        ok = ~objects & (bpm == 0)  # dead pixels (response ~0) out too
        scale = float(np.sum(resid[ok] * fringe[ok]) / np.sum(fringe[ok] ** 2)) / rec["sky_e"]
        assert scale == pytest.approx(rec["fringe_scale"], abs=0.03)
        scales.append(rec["fringe_scale"])
    assert np.ptp(scales) > 0.05  # the fringes did vary from frame to frame relative to the sky
