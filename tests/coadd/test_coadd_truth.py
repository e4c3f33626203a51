"""The tile coadd judged against the simulator's truth (issue 12 §2–§3): a mini pointing, 3 dithered rSDSS exposures
of different seeing and PSF families, with cosmic rays and a satellite trail, run through the whole flow (ingest, the
pipeline's own calibrations, reduction, coadd).

Every figure is judged against the truth, never against what the pipeline assumes:

* star fluxes: the coadd's aperture flux, corrected to total with the coadd's own PSF model (its enclosed fraction,
  the annulus' share of the PSF included), in counts at ``MAGZP``, against the truth AB magnitude of the survey's
  rSDSS passband (``magnom_rSDSS`` of the sky catalog, the system the zero points are calibrated in); against the
  camera's own shifted passband (``mag_rSDSS``) a strict xfail with its figure;
* positions: windowed centroids on the coadd, through the tile grid's WCS, against the truth's positions moved with
  their proper motions to the mean epoch of the exposures;
* artefacts: every injected cosmic-ray and satellite-trail pixel, placed on the tile grid through the exposure's true
  WCS, away from the light of the truth's objects;
* noise: blank 3″ apertures placed away from the truth's objects, against the noise the weight map and ``NOISECOR``
  state;
* PSF: the coadd's PSF model FWHM against the FWHM of the sum of the exposures' true PSF profiles (the simulator's
  own profile transforms at each position, mapped onto the grid through the true WCS, weighted with the coadd's
  inverse-variance weights).
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning
from sqlalchemy import select

from upad.db.models import Frame, Product
from upad.execution import LocalExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.ingest.service import ingest_paths
from upad.settings import Settings
from upad.sim import SimConfig, simulate

FILTER = "rSDSS"
PIXEL_SCALE = 0.55  # mini camera, arcsec/pixel (tests/coadd/test_coadd_step.py checks it)
#: varied seeing between the dithers (log-uniform per exposure), cosmic rays at several times the natural rate
SIM_CONFIG = dict(psf_seeing_draw_range=(0.9, 1.6), cosmic_rate=15.0)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    """One pointing, 3 dithers in rSDSS, simulated, ingested and run to the coadd (SQLite); the truth of each input."""
    from upad.db.session import Database

    sim_dir = tmp_path_factory.mktemp("coadd-truth-sim")
    simulate(instrument="mini", seed=11, out=sim_dir, nights=1, tiles=1, filters=[FILTER],
             config=SimConfig(**SIM_CONFIG))
    root = tmp_path_factory.mktemp("coadd-truth-root") / "root"
    settings = Settings(root=root, db_url=f"sqlite:///{root.parent / 'upad.sqlite'}")
    settings.create_layout()
    (root / "reference").mkdir(exist_ok=True)
    (root / "reference" / "refcat.fits").write_bytes((sim_dir / "reference" / "refcat.fits").read_bytes())
    db = Database(settings.db_url)
    db.upgrade()
    assert ingest_paths(db, settings, [sim_dir / "raw"], mode="copy").quarantined == 0
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(db, settings, ex, options=SchedulerOptions()).run()
    finally:
        ex.close()
    assert counts.get("failed", 0) == 0 and counts.get("blocked", 0) == 0, counts
    yield load_tile(sim_dir, settings, db)
    db.dispose()


def load_tile(sim_out, settings, db) -> dict:
    """The coadd of the flow's database (its images, header, files, meta), the truth sky and, per input, its
    manifest entry, reduced frame, truth tables and true WCS."""
    from upad.io.products import read_reduced_frame

    with db.session() as s:
        coadd = s.scalars(select(Product).where(Product.step == "coadd", Product.is_current.is_(True))).one()
        reduced = {r.context.get("frame_id"): r for r in s.scalars(
            select(Product).where(Product.step == "reduce", Product.is_current.is_(True)))}
        ids = dict(s.execute(select(Frame.filename, Frame.id)).all())
        files = {f["role"]: settings.root / f["path"] for f in coadd.files}
        meta, qc = dict(coadd.meta), coadd.qc_status
        inputs = []
        manifest = json.loads((sim_out / "truth" / "manifest.json").read_text())
        for t in manifest["frames"]:
            red = reduced.get(ids.get(t["file"].split("/")[-1]))
            if t["kind"] == "science" and red is not None:
                fr = read_reduced_frame({f["role"]: str(settings.root / f["path"]) for f in red.files}, psf=False)
                with fits.open(sim_out / t["truth"]) as th:
                    truth = {h.name: (h.data if h.name != "PRIMARY" else h.header) for h in th}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FITSFixedWarning)  # a header-only HDU's WCS
                    true_wcs = WCS(truth["PRIMARY"])
                inputs.append({"manifest": t, "frame": fr, "truth": truth, "true_wcs": true_wcs,
                               "psf_zones": int(manifest["config"]["psf_zones"])})
    with fits.open(files["coadd"]) as h:
        sci, weight, nexp = (h[k].data.astype(np.float64) for k in ("SCI", "WEIGHT", "NEXP"))
        header = h["SCI"].header
    with fits.open(sim_out / "truth" / "sky_catalog.fits") as h:
        sky = h["SKY"].data
    # the simulation holds what the test is about
    assert len(inputs) == 3
    assert sum(len(i["truth"].get("COSMICS", [])) for i in inputs) > 0, "no cosmic ray in the inputs"
    assert any("SATELLITE" in i["truth"] for i in inputs), "no satellite trail in the inputs"
    fw = [i["manifest"]["fwhm_arcsec"] for i in inputs]
    assert max(fw) / min(fw) > 1.15, f"the dithers' seeing is not varied: {fw}"
    return {"files": files, "meta": meta, "qc": qc, "sci": sci, "weight": weight, "nexp": nexp, "header": header,
            "grid": WCS(header), "inputs": inputs, "sky": sky}


# ------------------------------------------------------------------------------------------------ helpers
def _epoch(inputs) -> float:
    """Mean epoch (Julian year) of the exposures' mid-times."""
    jd = [Time(i["manifest"]["date_obs"], scale="utc").jd + i["manifest"]["exptime"] / 2 / 86400 for i in inputs]
    return 2000.0 + (float(np.mean(jd)) - 2451545.0) / 365.25


def _sky_at(sky, epoch: float):
    """Truth ra, dec (deg) moved from the catalog epoch 2016.0 to ``epoch`` with the proper motions."""
    dt = epoch - 2016.0
    ra, dec = np.asarray(sky["ra"], float), np.asarray(sky["dec"], float)
    pmra = np.nan_to_num(np.asarray(sky["pmra"], float)) if "pmra" in sky.names else 0.0
    pmdec = np.nan_to_num(np.asarray(sky["pmdec"], float)) if "pmdec" in sky.names else 0.0
    return ra + dt * pmra / 3.6e6 / np.cos(np.radians(dec)), dec + dt * pmdec / 3.6e6


def _object_light(t, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Upper bound of the truth's objects' light (coadd pixel units: ``x, y`` on the grid, counts at MAGZP) at grid
    positions: each object as a Moffat of beta 1.5 (a wing heavier than any simulated PSF's) as wide as the widest
    input PSF combined with twice its half-light radius."""
    from scipy.spatial import cKDTree

    sky, grid, zp = t["sky"], t["grid"], t["header"]["MAGZP"]
    ra, dec = _sky_at(sky, _epoch(t["inputs"]))
    ox, oy = grid.world_to_pixel_values(ra, dec)
    flux = 10 ** (-0.4 * (np.asarray(sky[f"mag_{FILTER}"], float) - zp))
    fwhm = max(i["manifest"]["fwhm_arcsec"] for i in t["inputs"]) / PIXEL_SCALE * 1.1
    fw = np.hypot(fwhm, 2 * np.nan_to_num(np.asarray(sky["hlr_arcsec"], float)) / PIXEL_SCALE)
    beta = 1.5
    alpha = fw / (2 * math.sqrt(2 ** (1 / beta) - 1))
    tree = cKDTree(np.c_[ox, oy])
    out = np.zeros(len(x))
    for k, nb in enumerate(tree.query_ball_point(np.c_[x, y], r=60.0)):
        nb = np.asarray(nb, int)
        if nb.size:
            r2 = (ox[nb] - x[k]) ** 2 + (oy[nb] - y[k]) ** 2
            out[k] = np.sum(flux[nb] * (beta - 1) / (math.pi * alpha[nb] ** 2) * (1 + r2 / alpha[nb] ** 2) ** -beta)
    return out


def _sigma(t) -> np.ndarray:
    w = t["weight"]
    return np.where(w > 0, 1 / np.sqrt(np.maximum(w, 1e-30)), np.inf)


def _full_depth(t, pad: int = 12) -> np.ndarray:
    """Grid pixels that every input covers, ``pad`` pixels from any that it does not."""
    from scipy.ndimage import minimum_filter

    return minimum_filter(t["nexp"], size=2 * pad + 1) >= len(t["inputs"])


def _covered_by_all(t, x: np.ndarray, y: np.ndarray, pad: float) -> np.ndarray:
    """Grid positions that every input's image covers, ``pad`` pixels from its edges (through the true WCS; NEXP
    counts the inputs that survive the rejection, fewer at bright stars' cores)."""
    ra, dec = t["grid"].pixel_to_world_values(x, y)
    ok = np.ones(len(x), bool)
    for i in t["inputs"]:
        ix, iy = i["true_wcs"].world_to_pixel_values(ra, dec)
        ny, nx = i["frame"].image.shape
        ok &= (ix > pad) & (iy > pad) & (ix < nx - 1 - pad) & (iy < ny - 1 - pad)
    return ok


def _stars(t, *, min_snr: float = 100.0):
    """Isolated, unsaturated truth stars of S/N > ``min_snr`` (from the truth flux and the coadd's stated noise in
    a 3-FWHM aperture) that every input covers: (ids, grid x, grid y, truth mag)."""
    from scipy.spatial import cKDTree

    sky, grid, zp = t["sky"], t["grid"], t["header"]["MAGZP"]
    ra, dec = _sky_at(sky, _epoch(t["inputs"]))
    x, y = grid.world_to_pixel_values(ra, dec)
    mag = np.asarray(sky[f"mag_{FILTER}"], float)
    fwhm = t["header"]["PSFFWHM"] / PIXEL_SCALE
    r = 3 * fwhm
    noise = math.sqrt(math.pi) * r * float(np.median(_sigma(t)[t["weight"] > 0])) * t["header"]["NOISECOR"]
    snr = 10 ** (-0.4 * (mag - zp)) / noise
    deep = _covered_by_all(t, x, y, pad=8 * fwhm + 2)
    sat = set()
    for i in t["inputs"]:
        obj = i["truth"]["OBJECTS"]
        sat |= {int(v) for v in obj["id"][obj["saturated"]]}
    tree = cKDTree(np.c_[x, y])
    crowded = np.array([any(mag[j] < mag[k] + 7 for j in nb if j != k)
                        for k, nb in enumerate(tree.query_ball_point(np.c_[x, y], r=8 * fwhm))])
    sel = (np.char.strip(np.asarray(sky["type"]).astype(str)) == "star") & (snr > min_snr) & deep & ~crowded
    sel &= ~np.isin(np.asarray(sky["id"]), list(sat))
    return np.asarray(sky["id"])[sel], x[sel], y[sel], mag[sel]


# ------------------------------------------------------------------------------------------------ tests
def test_the_coadd_has_a_psf_model(tile):
    from upad.io.products import read_psf

    assert tile["qc"] == "ok", tile["meta"]
    assert "psf" in tile["files"]
    model = read_psf(tile["files"]["psf"])
    h = tile["header"]
    assert h["PSFNSTAR"] >= 5 and h["PSFFWMIN"] <= h["PSFFWHM"] <= h["PSFFWMAX"]
    assert tile["meta"]["psf_fwhm_arcsec"] == pytest.approx(h["PSFFWHM"], abs=1e-3)
    assert model.shape == tile["sci"].shape
    ny, nx = model.shape
    assert float(model.fwhm_at(nx / 2, ny / 2)[0]) * PIXEL_SCALE == pytest.approx(h["PSFFWHM"], rel=0.1)


def _true_combined_fwhm(t, gx: float, gy: float) -> float:
    """Effective FWHM (pixels of the grid) of the inputs' true PSFs at grid position ``(gx, gy)`` combined with the
    coadd's weights: each the simulator's profile transform of its zone, mapped onto the grid through the true WCS."""
    from upad.sim.psf import PSFModel
    from upad.sim.render import effective_fwhm, zone_psfs

    zp = t["header"]["MAGZP"]
    ra, dec = t["grid"].pixel_to_world_values(gx, gy)
    parts = []
    for i in t["inputs"]:
        m, fr, tw = i["manifest"], i["frame"], i["true_wcs"]
        ix, iy = (float(v) for v in tw.world_to_pixel_values(ra, dec))
        ny, nx = fr.image.shape
        zones = i["psf_zones"]
        fields = {k: v for k, v in m["psf"].items() if k in PSFModel.__dataclass_fields__}
        psf = PSFModel(**fields)
        kx_, ky_ = (min(max(int(ix / nx * zones), 0), zones - 1), min(max(int(iy / ny * zones), 0), zones - 1))
        zc, zr = (kx_ + 0.5) * nx / zones - 0.5, (ky_ + 0.5) * ny / zones - 0.5
        z = zone_psfs(psf, np.array([zc]), np.array([zr]), PIXEL_SCALE)[0]
        # Jacobian d(input pixel) / d(grid pixel) through the true WCS
        eps = 1.0
        pts = np.array([[gx, gy], [gx + eps, gy], [gx, gy + eps]])
        r_, d_ = t["grid"].pixel_to_world_values(pts[:, 0], pts[:, 1])
        px, py = tw.world_to_pixel_values(r_, d_)
        J = np.array([[px[1] - px[0], px[2] - px[0]], [py[1] - py[0], py[2] - py[0]]]) / eps
        # the weight of this input at the position: its reduced weight map (a median over a box) scaled to MAGZP
        s = 10 ** (0.4 * (zp - float(fr.zero_point)))
        jx, jy = int(round(ix)), int(round(iy))
        box = np.asarray(fr.weight)[max(jy - 10, 0):jy + 11, max(jx - 10, 0):jx + 11]
        w = float(np.median(box[box > 0])) / s ** 2 if np.any(box > 0) else 0.0
        parts.append((w, z, np.linalg.inv(J).T))
    wsum = sum(p[0] for p in parts)

    def profile_k(kx, ky):
        out = 0.0
        for w, z, jit in parts:
            # PSF_grid(x) = |J| PSF_input(J x)  <=>  F_grid(k) = F_input(J^-T k)
            kx2 = jit[0, 0] * kx + jit[0, 1] * ky
            ky2 = jit[1, 0] * kx + jit[1, 1] * ky
            out = out + w / wsum * z.profile_k(kx2, ky2)
        return out

    guess = float(np.mean([p[1].true_fwhm_px for p in parts]))
    return effective_fwhm(profile_k, guess)


@pytest.mark.xfail(strict=True, reason="open (issue 12): the coadd PSF model is +3.7 % wider than the truth-weighted "
                   "combination of the inputs (range over the field +0.3 … +6.4 %, 21 PSF stars), the same with the "
                   "joint relative calibration off; Lanczos-3 resampling accounts for +0.3 %, the inputs' own PSF "
                   "models are within 0.4 % of their truth: the remaining ~3 % is not explained")
def test_psf_fwhm_against_the_truth_weighted_combination(tile):
    from upad.io.products import read_psf

    model = read_psf(tile["files"]["psf"])
    ny, nx = tile["sci"].shape
    gy, gx = (v.ravel() for v in np.mgrid[0:ny - 1:7j, 0:nx - 1:7j])
    keep = _covered_by_all(tile, gx, gy, pad=40)
    pts = list(zip(gx[keep].tolist(), gy[keep].tolist()))
    assert len(pts) >= 9
    true = np.array([_true_combined_fwhm(tile, x, y) for x, y in pts])
    meas = np.array([float(model.fwhm_at(x, y)[0]) for x, y in pts])
    ratio = meas / true
    print(f"coadd PSF FWHM / truth-weighted combination of the true PSFs at {len(pts)} positions: median "
          f"{np.median(ratio):.4f}, range {ratio.min():.4f}-{ratio.max():.4f}; truth {np.median(true) * PIXEL_SCALE:.3f}"
          f"\" (inputs {[round(i['manifest']['fwhm_arcsec'], 3) for i in tile['inputs']]}), PSFFWHM "
          f"{tile['header']['PSFFWHM']:.3f}\"")
    assert abs(np.median(ratio) - 1) <= 0.03


def _flux_ratios(tile, column: str) -> tuple[np.ndarray, float]:
    """Coadd flux / truth flux (``column`` of the sky catalog at MAGZP) of the isolated S/N > 100 stars: a 3-FWHM
    aperture less a 5-8 FWHM annulus, divided by the coadd PSF model's share of that (its enclosed fraction in the
    aperture less the aperture's area times its mean in the annulus)."""
    import sep

    from upad.io.products import read_psf

    model = read_psf(tile["files"]["psf"])
    zp = tile["header"]["MAGZP"]
    ids, x, y, _ = _stars(tile)
    assert len(ids) >= 10, f"too few isolated S/N > 100 stars: {len(ids)}"
    sky_ids = np.asarray(tile["sky"]["id"])
    order = np.argsort(sky_ids)
    mag = np.asarray(tile["sky"][column], float)[order[np.searchsorted(sky_ids[order], ids)]]
    fwhm = tile["header"]["PSFFWHM"] / PIXEL_SCALE
    r, r_in, r_out = 3 * fwhm, 5 * fwhm, 8 * fwhm
    f, _, _ = sep.sum_circle(np.ascontiguousarray(tile["sci"]), x, y, r, bkgann=(r_in, r_out), subpix=5)
    ee = np.array([model.enclosed_fraction(r, xx, yy) - r * r / (r_out ** 2 - r_in ** 2) * (
        model.enclosed_fraction(r_out, xx, yy) - model.enclosed_fraction(r_in, xx, yy)) for xx, yy in zip(x, y)])
    ratio = (f / ee) / 10 ** (-0.4 * (mag - zp))
    print(f"{len(ids)} stars S/N > 100 against {column}: coadd flux / truth median {np.median(ratio):.4f}, scatter "
          f"{1.4826 * np.median(np.abs(ratio - np.median(ratio))):.4f} (aperture {2 * r * PIXEL_SCALE:.2f}\", "
          f"enclosed fraction {np.median(ee):.4f})")
    return ratio, float(np.median(ratio))


def test_star_fluxes_against_the_truth(tile):
    """Against the truth magnitudes of the survey's rSDSS passband (``magnom_``): the system of the reference
    catalog's survey-filter magnitudes that the reduction calibrates its zero points on, hence MAGZP's."""
    ratio, med = _flux_ratios(tile, f"magnom_{FILTER}")
    scatter = float(1.4826 * np.median(np.abs(ratio - med)))
    assert abs(med - 1) <= 0.005, f"coadd/truth flux median {med:.4f}"
    assert scatter <= 0.01, f"coadd/truth flux scatter {scatter:.4f}"


@pytest.mark.xfail(strict=True, reason="main e97f216: median +1.11 %, scatter 1.08 % against the camera's own "
                   "passband magnitudes (mag_rSDSS; 0.00 % and 0.56 % against the survey passband's): the simulated "
                   "camera passband is shifted from the nominal one (passband_shift_fraction) and the reduction "
                   "calibrates on the reference's nominal-passband magnitudes without a colour term")
def test_star_fluxes_against_the_camera_passband_truth(tile):
    ratio, med = _flux_ratios(tile, f"mag_{FILTER}")
    scatter = float(1.4826 * np.median(np.abs(ratio - med)))
    assert abs(med - 1) <= 0.005 and scatter <= 0.01, f"median {med:.4f}, scatter {scatter:.4f}"


def test_star_positions_against_the_truth(tile):
    import sep

    ids, x, y, _ = _stars(tile)
    fwhm = tile["header"]["PSFFWHM"] / PIXEL_SCALE
    cx, cy, flag = sep.winpos(np.ascontiguousarray(tile["sci"]), x, y, fwhm / 2.3548)
    ok = flag == 0
    ra, dec = tile["grid"].pixel_to_world_values(cx[ok], cy[ok])
    tra, tdec = tile["grid"].pixel_to_world_values(x[ok], y[ok])
    dra = (ra - tra) * np.cos(np.radians(tdec)) * 3600
    ddec = (dec - tdec) * 3600
    rms = float(np.sqrt(np.mean(dra ** 2 + ddec ** 2)))
    print(f"{int(ok.sum())} stars S/N > 100: positions against the truth (epoch {_epoch(tile['inputs']):.3f}) "
          f"{rms:.4f}\" rms (per axis {np.sqrt(np.mean(dra ** 2)):.4f}\", {np.sqrt(np.mean(ddec ** 2)):.4f}\"; "
          f"mean {dra.mean():+.4f}\", {ddec.mean():+.4f}\")")
    assert ok.sum() >= 10
    assert rms <= 0.02, f"coadd positions {rms:.4f}\" rms from the truth"


def test_no_cosmic_ray_or_trail_survives(tile):
    sci, sig, grid = tile["sci"], _sigma(tile), tile["grid"]
    ny, nx = sci.shape
    worst: dict[str, float] = {}
    counted: dict[str, int] = {}
    for i in tile["inputs"]:
        tw = i["true_wcs"]
        for kind in ("COSMICS", "SATELLITE"):
            tab = i["truth"].get(kind)
            if tab is None or len(tab) == 0:
                continue
            ra, dec = tw.pixel_to_world_values(np.asarray(tab["x"], float), np.asarray(tab["y"], float))
            gx, gy = grid.world_to_pixel_values(ra, dec)
            ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
            ok = (ix >= 1) & (iy >= 1) & (ix < nx - 1) & (iy < ny - 1)
            ix, iy = ix[ok], iy[ok]
            ok = np.isfinite(sig[iy, ix])
            # away from the truth's objects: their light there is below half the coadd's pixel noise
            ok &= _object_light(tile, ix.astype(float), iy.astype(float)) < 0.5 * sig[iy, ix]
            ix, iy = ix[ok], iy[ok]
            z = np.max([sci[iy + dy, ix + dx] / sig[iy + dy, ix + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                       axis=0) if ix.size else np.zeros(0)
            counted[kind] = counted.get(kind, 0) + int(ix.size)
            worst[kind] = max(worst.get(kind, -np.inf), float(z.max()) if z.size else -np.inf)
    print(f"artefact pixels away from objects: {counted}; worst 3x3 maximum in the coadd {worst} sigma")
    assert counted.get("COSMICS", 0) > 20 and counted.get("SATELLITE", 0) > 20, counted
    assert worst["COSMICS"] < 5.0 and worst["SATELLITE"] < 5.0, worst


def test_blank_aperture_noise_as_stated(tile):
    import sep

    sci, weight = tile["sci"], tile["weight"]
    ny, nx = sci.shape
    rng = np.random.default_rng(5)
    xs, ys = rng.uniform(30, nx - 30, 6000), rng.uniform(30, ny - 30, 6000)
    deep = _full_depth(tile, pad=6)[ys.astype(int), xs.astype(int)]
    xs, ys = xs[deep], ys[deep]
    r = 1.5 / PIXEL_SCALE
    sig = _sigma(tile)
    # blank: the truth's objects put less than a tenth of the pixel noise anywhere within the aperture
    light = np.max([_object_light(tile, xs + dx, ys + dy) for dx, dy in
                    [(0, 0), (r, 0), (-r, 0), (0, r), (0, -r)]], axis=0)
    blank = light < 0.1 * sig[ys.astype(int), xs.astype(int)]
    xs, ys = xs[blank], ys[blank]
    assert len(xs) >= 300, f"too few blank apertures: {len(xs)}"
    ap, _, _ = sep.sum_circle(np.ascontiguousarray(sci), xs, ys, r, subpix=5)
    measured = float(1.4826 * np.median(np.abs(ap - np.median(ap))))
    w = weight[ys.astype(int), xs.astype(int)]
    stated = float(np.median(np.sqrt(math.pi * r * r / w))) * tile["header"]["NOISECOR"]
    # what the inputs give: the same sky apertures on each input (scaled to MAGZP), combined with the coadd's weights
    from upad.coadd.pipeline import prepare_exposure

    zp = tile["header"]["MAGZP"]
    ra, dec = tile["grid"].pixel_to_world_values(xs, ys)
    ra1, dec1 = tile["grid"].pixel_to_world_values(xs + 1, ys)
    num = den = 0.0
    for i in tile["inputs"]:
        ex = prepare_exposure(i["frame"], zero_point=zp, name="input", product_id=0)
        ix, iy = i["true_wcs"].world_to_pixel_values(ra, dec)
        jx, jy = i["true_wcs"].world_to_pixel_values(ra1, dec1)
        r_i = r * float(np.median(np.hypot(jx - ix, jy - iy)))  # the same aperture on the sky
        a_i, _, _ = sep.sum_circle(np.ascontiguousarray(ex.image, dtype=np.float64), ix, iy, r_i, subpix=5)
        s_i = float(1.4826 * np.median(np.abs(a_i - np.median(a_i))))
        w_i = float(np.median(ex.weight[np.round(iy).astype(int), np.round(ix).astype(int)]))
        num += (w_i * s_i) ** 2
        den += w_i
    expected = math.sqrt(num) / den
    print(f"{len(xs)} blank 3\" apertures: scatter {measured:.2f} counts; stated (WEIGHT, NOISECOR "
          f"{tile['header']['NOISECOR']:.3f}) {stated:.2f}: {measured / stated - 1:+.2%}; from the inputs' blank "
          f"apertures with the coadd's weights {expected:.2f}: {measured / expected - 1:+.2%}")
    assert abs(measured / stated - 1) <= 0.05
    assert abs(measured / expected - 1) <= 0.05
