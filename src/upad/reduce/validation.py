"""Checks of a reduction against known answers and against the field's reference tools.

Used by the tests (``tests/reduce``) and the benchmark (``bench/bench_reduce.py``); nothing here runs in production.

* truth comparisons (arrays in, numbers out): :func:`astrometry_vs_truth`, :func:`photometry_vs_truth`,
  :func:`psf_vs_truth`, :func:`cosmics_vs_truth`, :func:`satellites_vs_truth`;
* SExtractor (Debian's ``source-extractor``): :func:`run_sextractor` runs it on a reduced image with our own
  parameter file, :func:`compare_with_sextractor` matches its catalog with ours;
* astroscrappy: :func:`run_astroscrappy` (L.A.Cosmic in C, the reference for the cosmic-ray step).
"""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from upad import maskbits as mb

__all__ = ["astrometry_vs_truth", "photometry_vs_truth", "psf_vs_truth", "cosmics_vs_truth", "satellites_vs_truth",
           "sextractor_binary", "run_sextractor", "compare_with_sextractor", "run_astroscrappy", "robust_std",
           "GOALS", "frame_truth", "frame_vs_truth", "true_zero_point_at_colour"]

SEXTRACTOR_PARAMS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO",
                     "FLUX_APER(3)", "FLUXERR_APER(3)", "FLUX_RADIUS", "FWHM_IMAGE", "FLAGS", "CLASS_STAR",
                     "ELLIPTICITY", "ISOAREA_IMAGE", "FLUX_MAX")


def robust_std(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


def _match(xa, ya, xb, yb, radius):
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([xb, yb]))
    d, i = tree.query(np.column_stack([xa, ya]), distance_upper_bound=radius)
    ok = np.isfinite(d)
    return ok, np.where(ok, i, 0)


def astrometry_vs_truth(wcs: Any, true_wcs: Any, shape: tuple[int, int], *, x: np.ndarray | None = None,
                        y: np.ndarray | None = None, dx: np.ndarray | None = None, dy: np.ndarray | None = None,
                        margin: float = 0.0) -> dict[str, float]:
    """Distance (pixels) between where the fitted WCS puts true sky positions and where their light lands.

    On a 32 x 32 grid over the image (``rms_grid_px``, ``max_grid_px``) the fitted and the true WCS are compared
    (the chief ray: no PSF). At given 0-based true positions ``x, y`` of point sources whose true PSF centres their
    light at ``x + dx, y + dy`` (the truth's ``psf_dx, psf_dy``; 0 if not given), ``rms_at_px``/``max_at_px``
    measure ``|WCS_fit^-1(sky_true) - (x + dx, y + dy)|`` — a WCS maps measured centroids to the sky, so it can only
    be asked to map a star's sky position to where the star's light is centred — and ``rms_at_chief_px``/
    ``max_at_chief_px`` the distance to the chief ray ``x, y`` itself (equal to the former when the PSF is
    centrosymmetric)."""
    ny, nx = shape
    gy, gx = np.mgrid[margin:ny - 1 - margin:32j, margin:nx - 1 - margin:32j]
    out: dict[str, float] = {}
    for name, (px, py) in {"grid": (gx.ravel(), gy.ravel()), "at": (x, y)}.items():
        if px is None:
            continue
        px, py = np.asarray(px, float), np.asarray(py, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = true_wcs.all_pix2world(px, py, 0)
            qx, qy = wcs.all_world2pix(ra, dec, 0)
        d = np.hypot(qx - px, qy - py)
        if name == "at":
            out["rms_at_chief_px"] = float(np.sqrt(np.mean(d ** 2)))
            out["max_at_chief_px"] = float(d.max())
            ox = np.zeros_like(px) if dx is None else np.asarray(dx, float)
            oy = np.zeros_like(py) if dy is None else np.asarray(dy, float)
            d = np.hypot(qx - px - ox, qy - py - oy)
        out[f"rms_{name}_px"] = float(np.sqrt(np.mean(d ** 2)))
        out[f"max_{name}_px"] = float(d.max())
    return out


def photometry_vs_truth(catalog: Any, truth_x: np.ndarray, truth_y: np.ndarray, truth_flux: np.ndarray, *,
                        usable: np.ndarray | None = None, flux_col: str = "FLUX_APCOR", snr_min: float = 100.0,
                        radius: float = 1.0, clean_flags: int = 1 | 2 | 4 | 8) -> dict[str, Any]:
    """Measured over true flux of matched sources with S/N above ``snr_min`` in ``flux_col`` (unflagged, no masked
    pixel): ``median``, robust ``scatter`` (1.4826 MAD) and ``n``; also the ``ratios``."""
    cat = catalog
    xw, yw = np.asarray(cat["XWIN_IMAGE"]) - 1, np.asarray(cat["YWIN_IMAGE"]) - 1
    tx, ty, tf = (np.asarray(a, float) for a in (truth_x, truth_y, truth_flux))
    sel = np.ones(len(tx), bool) if usable is None else np.asarray(usable, bool)
    ok, idx = _match(tx[sel], ty[sel], xw, yw, radius)
    f = np.asarray(cat[flux_col], float)
    fe = np.asarray(cat[flux_col.replace("FLUX_", "FLUXERR_")], float)
    good = ok & (f[idx] / np.maximum(fe[idx], 1e-30) > snr_min)
    good &= (np.asarray(cat["FLAGS"])[idx] & clean_flags) == 0
    good &= np.asarray(cat["IMAFLAGS_ISO"])[idx] == 0
    r = f[idx][good] / tf[sel][good]
    return {"n": int(good.sum()), "median": float(np.median(r)) if r.size else float("nan"),
            "scatter": robust_std(r), "ratios": r}


def psf_vs_truth(psf: Any, truth_x: np.ndarray, truth_y: np.ndarray, truth_fwhm_px: np.ndarray) -> dict[str, float]:
    """Model FWHM over true FWHM at the PSF stars' true positions (matched within a pixel)."""
    st = psf.stars
    u = st["used"]
    ok, idx = _match(st["x"][u], st["y"][u], np.asarray(truth_x, float), np.asarray(truth_y, float), 1.0)
    xs, ys = st["x"][u][ok], st["y"][u][ok]
    r_model = psf.model.fwhm_at(xs, ys) / np.asarray(truth_fwhm_px, float)[idx[ok]]
    r_star = st["fwhm"][u][ok] / np.asarray(truth_fwhm_px, float)[idx[ok]]
    return {"n": int(ok.sum()), "model_median": float(np.median(r_model)),
            "model_max_dev": float(np.max(np.abs(r_model - 1))), "star_median": float(np.median(r_star)),
            "star_scatter": robust_std(r_star)}


def cosmics_vs_truth(mask: np.ndarray, cr_x: np.ndarray, cr_y: np.ndarray, cr_e: np.ndarray, sigma: np.ndarray, *,
                     star_x: np.ndarray, star_y: np.ndarray, nsigma: float = 5.0,
                     exclude: np.ndarray | None = None, flags: np.ndarray | None = None) -> dict[str, Any]:
    """Completeness of the flags on injected cosmic-ray pixels above ``nsigma`` x the pixel noise ``sigma`` (2-D
    map), and false flags on star cores (the 3 x 3 pixels around each star's true centre that hold no cosmic-ray
    charge; ``exclude``: boolean map of pixels to leave out, e.g. satellite trails and saturated stars).

    ``flags`` is the boolean map of flagged pixels (default: ``COSMIC`` in ``mask``)."""
    ny, nx = mask.shape
    crm = ((mask & np.int16(mb.COSMIC)) != 0) if flags is None else np.asarray(flags, bool)
    cx, cy, ce = (np.asarray(a) for a in (cr_x, cr_y, cr_e))
    usable = (mask[cy, cx] & np.int16(mb.BAD | mb.SATURATED | mb.BLEED | mb.SATELLITE | mb.NODATA)) == 0
    if exclude is not None:
        usable &= ~exclude[cy, cx]
    sel = usable & (ce > nsigma * sigma[cy, cx])
    truth = np.zeros((ny, nx), bool)
    truth[cy, cx] = True
    core = np.zeros((ny, nx), bool)
    ix = np.round(np.asarray(star_x)).astype(int)
    iy = np.round(np.asarray(star_y)).astype(int)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)
            core[yy, xx] = True
    core &= ~truth
    if exclude is not None:
        core &= ~exclude
    n_core = int(core.sum())
    false_core = int((crm & core).sum())
    return {"n_injected": int(sel.sum()), "completeness": float(crm[cy[sel], cx[sel]].mean()) if sel.any() else 1.0,
            "n_core": n_core, "false_core": false_core, "false_core_rate": false_core / max(n_core, 1),
            "n_flagged": int(crm.sum()), "n_flagged_not_cr": int((crm & ~truth).sum())}


def satellites_vs_truth(mask: np.ndarray, sx: np.ndarray, sy: np.ndarray, se: np.ndarray, sigma: np.ndarray, *,
                        nsigma: float = 2.0) -> dict[str, Any]:
    """Fraction of the trail pixels above ``nsigma`` x the pixel noise that are flagged ``SATELLITE``."""
    sm = (mask & np.int16(mb.SATELLITE)) != 0
    sx, sy, se = (np.asarray(a) for a in (sx, sy, se))
    sel = se > nsigma * sigma[sy, sx]
    return {"n": int(sel.sum()), "completeness": float(sm[sy[sel], sx[sel]].mean()) if sel.any() else 1.0,
            "n_flagged": int(sm.sum())}


# ------------------------------------------------------------------------------------------------ SExtractor
def sextractor_binary() -> str | None:
    """Path of SExtractor (Debian names it ``source-extractor``), or ``None``."""
    return shutil.which("source-extractor") or shutil.which("sex")


def run_sextractor(image: np.ndarray, *, weight: np.ndarray | None = None, pixel_scale: float,
                   aper_diameters_px: tuple[float, ...], thresh: float = 1.5, minarea: int = 5,
                   back_size: int = 128, workdir: str | Path | None = None, threads: int = 0,
                   measurement: np.ndarray | None = None, measurement_weight: np.ndarray | None = None,
                   gain: float = 1.0, extra_params: tuple[str, ...] = ()) -> tuple[Any, float]:
    """Run SExtractor on an image (e-) with our parameter file; returns its catalog (astropy Table) and the wall
    time of the run (s).

    The image is written as FITS (and the weight map as ``MAP_WEIGHT`` when given); ``GAIN`` is ``gain`` (1 e-/e-:
    the image is in electrons; 0: no Poisson term), the default 3x3 filter, SExtractor's own background
    (``BACK_SIZE``). With ``measurement`` (and ``measurement_weight``), SExtractor runs in dual mode
    (``source-extractor image.fits,measurement.fits``): detection on ``image``, photometry on ``measurement``.
    ``extra_params``: more output columns (e.g. ``FLUX_ISO``, ``FLUX_PETRO``).
    """
    from astropy.io import fits
    from astropy.table import Table

    exe = sextractor_binary()
    if exe is None:
        raise FileNotFoundError("SExtractor (source-extractor) is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="upad-sex-", dir=workdir))
    try:
        fits.PrimaryHDU(np.asarray(image, np.float32)).writeto(tmp / "image.fits")
        nap = len(aper_diameters_px)
        params = [p.replace("(3)", f"({nap})") for p in SEXTRACTOR_PARAMS] + list(extra_params)
        (tmp / "cat.param").write_text("\n".join(params) + "\n")
        images = str(tmp / "image.fits")
        if measurement is not None:
            fits.PrimaryHDU(np.asarray(measurement, np.float32)).writeto(tmp / "measurement.fits")
            images += "," + str(tmp / "measurement.fits")
        conv = Path("/usr/share/source-extractor/default.conv")
        if conv.exists():
            shutil.copy(conv, tmp / "default.conv")
        else:
            (tmp / "default.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
        args = [exe, images, "-c", "/dev/null", "-CATALOG_NAME", str(tmp / "cat.fits"),
                "-CATALOG_TYPE", "FITS_1.0", "-PARAMETERS_NAME", str(tmp / "cat.param"), "-FILTER", "Y",
                "-FILTER_NAME", str(tmp / "default.conv"), "-DETECT_THRESH", str(thresh), "-ANALYSIS_THRESH",
                str(thresh), "-DETECT_MINAREA", str(minarea), "-PHOT_APERTURES",
                ",".join(f"{d:.4f}" for d in aper_diameters_px), "-PHOT_AUTOPARAMS", "2.5,3.5", "-GAIN", str(gain),
                "-PIXEL_SCALE", str(pixel_scale), "-SATUR_LEVEL", "1e9", "-MAG_ZEROPOINT", "0.0", "-BACK_SIZE",
                str(back_size), "-BACK_FILTERSIZE", "3", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE",
                "-NTHREADS", str(threads), "-STARNNW_NAME", "/usr/share/source-extractor/default.nnw",
                "-MEMORY_BUFSIZE", "4096", "-MEMORY_OBJSTACK", "30000", "-MEMORY_PIXSTACK", "3000000"]
        if weight is not None:
            fits.PrimaryHDU(np.asarray(weight, np.float32)).writeto(tmp / "weight.fits")
            weights, types = str(tmp / "weight.fits"), "MAP_WEIGHT"
            if measurement is not None:
                mw = weight if measurement_weight is None else measurement_weight
                fits.PrimaryHDU(np.asarray(mw, np.float32)).writeto(tmp / "measurement_weight.fits")
                weights += "," + str(tmp / "measurement_weight.fits")
                types += ",MAP_WEIGHT"
            args += ["-WEIGHT_TYPE", types, "-WEIGHT_IMAGE", weights, "-WEIGHT_GAIN", "N"]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"SExtractor failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return Table.read(tmp / "cat.fits", hdu=1), dt
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_with_sextractor(ours: Any, theirs: Any, *, snr_min: float = 10.0, bright_snr: float = 100.0,
                            radius: float = 1.5, exclude: np.ndarray | None = None) -> dict[str, Any]:
    """Fraction of SExtractor's S/N > ``snr_min`` sources that we detected (within ``radius`` pixels), and the
    flux agreement (``FLUX_AUTO`` and the apertures) of the bright (S/N > ``bright_snr``), unflagged ones.

    ``exclude`` (boolean map) drops SExtractor sources on those pixels (e.g. masked trails)."""
    sx, sy = np.asarray(theirs["X_IMAGE"], float), np.asarray(theirs["Y_IMAGE"], float)
    ssnr = np.asarray(theirs["FLUX_AUTO"], float) / np.maximum(np.asarray(theirs["FLUXERR_AUTO"], float), 1e-30)
    sel = ssnr > snr_min
    if exclude is not None:
        ny, nx = exclude.shape
        ix = np.clip(np.round(sx - 1).astype(int), 0, nx - 1)
        iy = np.clip(np.round(sy - 1).astype(int), 0, ny - 1)
        sel &= ~exclude[iy, ix]
    ok, idx = _match(sx[sel], sy[sel], np.asarray(ours["X_IMAGE"], float), np.asarray(ours["Y_IMAGE"], float),
                     radius)
    found = float(ok.mean()) if sel.any() else 1.0
    sflags = np.asarray(theirs["FLAGS"])[sel]
    bright = ok & (ssnr[sel] > bright_snr) & (sflags == 0) & (np.asarray(ours["FLAGS"])[idx] == 0)
    out: dict[str, Any] = {"n_sextractor": int(sel.sum()), "found": found, "n_found": int(ok.sum()),
                           "n_bright": int(bright.sum()), "n_ours": len(ours)}
    fa = np.asarray(ours["FLUX_AUTO"], float)[idx][bright] / np.asarray(theirs["FLUX_AUTO"], float)[sel][bright]
    out["flux_auto_median"] = float(np.median(fa)) if fa.size else float("nan")
    out["flux_auto_scatter"] = robust_std(fa)
    ours_ap = np.asarray(ours["FLUX_APER"], float)
    th_ap = np.asarray(theirs["FLUX_APER"], float)
    k = min(ours_ap.shape[1], th_ap.shape[1]) if th_ap.ndim == 2 else 0
    for j in range(k):
        r = ours_ap[idx, j][bright] / th_ap[sel][bright, j]
        out[f"flux_aper{j}_median"] = float(np.median(r)) if r.size else float("nan")
        out[f"flux_aper{j}_scatter"] = robust_std(r)
    return out


def run_astroscrappy(image_e: np.ndarray, *, mask: np.ndarray | None = None, read_noise: float = 4.0,
                     background: np.ndarray | float | None = None, sepmed: bool = True) -> tuple[np.ndarray, float]:
    """astroscrappy (L.A.Cosmic) on an image in electrons (sky included: ``background`` is added back to a
    background-subtracted image); returns its cosmic-ray mask and the wall time (s). ``gain = 1`` (electrons)."""
    import astroscrappy

    data = np.asarray(image_e, np.float32)
    if background is not None:
        data = data + np.asarray(background, np.float32)
    t0 = time.perf_counter()
    crmask, _ = astroscrappy.detect_cosmics(data, inmask=mask, gain=1.0, readnoise=float(read_noise),
                                            satlevel=math.inf, sepmed=sepmed, cleantype="meanmask")
    return np.asarray(crmask, bool), time.perf_counter() - t0


# ------------------------------------------------------------------------------------- a written product vs the truth
#: the accuracy goals of the daily pipeline (BENCHMARKS.md, issue "the real sky")
GOALS: dict[str, float] = {"astrometry_rms_px": 0.05, "zp_mag": 0.01, "zp_mag_gaia": 0.02, "flux_median": 0.005,
                           "flux_scatter": 0.01, "fwhm": 0.03, "cr_completeness": 0.95, "cr_false_core": 1e-4,
                           "sat_completeness": 0.95}


def frame_truth(sim_out: Path, record: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """What the simulator knows of one science frame: true WCS, objects (with ``is_star`` and ``in_ref``), cosmic
    rays, trail pixels, and the manifest record (true zero point ``zp_e``, sky …)."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    with fits.open(Path(sim_out) / record["truth"]) as hd:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tw = WCS(hd[0].header, naxis=2)
        obj = Table(hd["OBJECTS"].data)
        cr = Table(hd["COSMICS"].data)
        sat = Table(hd["SATELLITE"].data) if "SATELLITE" in hd else None
    sky = Table.read(Path(sim_out) / manifest["sky_catalog"], hdu=1)
    ref = Table.read(Path(sim_out) / manifest["reference_catalog"], hdu=1)
    stars = np.asarray(sky["id"])[np.char.strip(np.asarray(sky["type"]).astype(str)) == "star"]
    ids = np.asarray(obj["id"])
    ref_ids = np.asarray(ref["truth_id"]) if "truth_id" in ref.colnames else np.zeros(0, ids.dtype)
    # the objects' true magnitudes through the camera's (mag) and the nominal (magnom) passband, and their colour
    row = {int(i): k for k, i in enumerate(np.asarray(sky["id"]))}
    rows = np.array([row.get(int(i), -1) for i in ids], int)
    filt = record.get("filter")
    mags: dict[str, np.ndarray] = {}
    for key, col in (("mag", f"mag_{filt}"), ("magnom", f"magnom_{filt}"), ("bp", "phot_bp_mean_mag"),
                     ("rp", "phot_rp_mean_mag")):
        if col in sky.colnames:
            v = np.asarray(sky[col], float)
            mags[key] = np.where(rows >= 0, v[np.maximum(rows, 0)], np.nan)
    # the scale with which the simulator turned every angular size (the PSF's FWHM, galaxy radii) into pixels: the
    # instrument's nominal one, not the true WCS's (which carries the plate-scale error)
    from upad.instruments import get_instrument

    try:
        render_scale = float(get_instrument(manifest["instrument"]).pixel_scale)
    except (KeyError, OSError, ValueError):  # an unknown instrument: the reduced header's scale is used instead
        render_scale = None
    return {"record": record, "wcs": tw, "objects": obj, "cosmics": cr, "trail": sat,
            "is_star": np.isin(ids, stars), "in_ref": np.isin(ids, ref_ids), "mags": mags,
            "pixel_scale": render_scale}


def true_zero_point_at_colour(truth: dict[str, Any], colour_ref: float | None) -> tuple[float, float]:
    """The true zero point of a frame in the pipeline's convention, and the offset from the AB one (mag).

    The simulator's ``zp_e`` is the AB zero point of the camera's real passband (the AB magnitude of 1 e-/s, exact
    for a flat-f_nu source). A zero point calibrated against reference magnitudes through the *nominal* passband
    and quoted at the reference colour ``colour_ref`` (BP-RP; ``ZPCOLREF``) predicts the counts of a star of that
    colour: it is ``zp_e + (nominal - real)`` magnitude of such a star. The offset is read off the frame's reference
    stars (a quadratic in BP-RP of their true nominal - real magnitudes, evaluated at ``colour_ref``); 0 without a
    colour reference (nominal zero point) or without the truth's magnitudes.
    """
    zp = float(truth["record"]["zp_e"])
    m = truth.get("mags", {})
    if colour_ref is None or not math.isfinite(colour_ref) or not {"mag", "magnom", "bp", "rp"} <= set(m):
        return zp, 0.0
    c = m["bp"] - m["rp"]
    d = m["magnom"] - m["mag"]
    ok = truth["is_star"] & truth["in_ref"] & np.asarray(truth["objects"]["in_image"], bool) & np.isfinite(c) \
        & np.isfinite(d)
    if ok.sum() < 5:
        return zp, 0.0
    off = float(np.polynomial.polynomial.polyval(colour_ref, np.polynomial.polynomial.polyfit(c[ok], d[ok], 2)))
    return zp + off, off


def _pixel_sigma(weight: np.ndarray | None, shape: tuple[int, int], fallback: float) -> np.ndarray:
    if weight is None:
        return np.full(shape, fallback, np.float32)
    with np.errstate(divide="ignore"):
        s = np.where(weight > 0, 1.0 / np.sqrt(np.where(weight > 0, weight, 1.0)), 0.0)
    return np.where(s > 0, s, fallback).astype(np.float32)


def frame_vs_truth(frame: Any, truth: dict[str, Any], *, goals: dict[str, float] | None = None,
                   zp_goal: float | None = None) -> dict[str, Any]:
    """Every accuracy figure of one reduced frame read back (:func:`upad.io.products.read_reduced_frame`) against
    its truth (:func:`frame_truth`).

    Returns a dict of sections — ``astrometry``, ``zero_point``, ``flux``, ``psf``, ``cosmics``, ``trails`` —
    each with its figures, its ``goal`` and ``pass``; sections that cannot be measured say why (``error``).
    ``zp_goal`` overrides the zero-point goal (0.02 mag with a Gaia G/BP/RP-only reference).
    """
    g = {**GOALS, **(goals or {})}
    zp_goal = g["zp_mag"] if zp_goal is None else zp_goal
    h, cat, obj, rec = frame.header, frame.catalog, truth["objects"], truth["record"]
    shape = frame.mask.shape
    ox, oy = np.asarray(obj["x"], float), np.asarray(obj["y"], float)
    usable = np.asarray(obj["in_image"], bool) & ~np.asarray(obj["saturated"], bool)
    star_ok = usable & truth["is_star"]
    out: dict[str, Any] = {}
    if cat is None or len(cat) == 0:
        return {"error": "no catalog", "qc": frame.qc.status if frame.qc else None}
    xw, yw = np.asarray(cat["XWIN_IMAGE"], float) - 1, np.asarray(cat["YWIN_IMAGE"], float) - 1
    snr = np.asarray(cat["FLUX_AUTO"], float) / np.maximum(np.asarray(cat["FLUXERR_AUTO"], float), 1e-30)
    sel = np.flatnonzero(star_ok)
    m, idx = _match(ox[sel], oy[sel], xw, yw, 1.0)
    sel, idx = sel[m], idx[m]
    clean = np.asarray(cat["FLAGS"])[idx] == 0
    if frame.wcs is not None and frame.wcs_solved:
        a_sel = truth["in_ref"][sel] & clean
        # where the true PSF centres each star's light (coma shifts it from the chief ray; 0 for symmetric PSFs)
        cols = obj.colnames
        pdx = np.asarray(obj["psf_dx"], float) if "psf_dx" in cols else np.zeros(len(ox))
        pdy = np.asarray(obj["psf_dy"], float) if "psf_dy" in cols else np.zeros(len(oy))
        at = astrometry_vs_truth(frame.wcs, truth["wcs"], shape, x=ox[sel][a_sel], y=oy[sel][a_sel],
                                 dx=pdx[sel][a_sel], dy=pdy[sel][a_sel])
        # what a user gets: the catalog's sky positions of the S/N > 100 reference stars against their true
        # positions (centroid noise and any PSF-asymmetry shift the fit did not absorb included)
        b = a_sel & (snr[idx] > 100)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            px, py = truth["wcs"].all_world2pix(np.asarray(cat["ALPHAWIN_J2000"], float)[idx][b],
                                                np.asarray(cat["DELTAWIN_J2000"], float)[idx][b], 0)
        d = np.hypot(px - ox[sel][b], py - oy[sel][b])
        cat_rms = float(np.sqrt(np.mean(d ** 2))) if d.size else float("nan")
        out["astrometry"] = {**at, "n_stars": int(a_sel.sum()), "catalog_rms_px": cat_rms,
                             "n_catalog": int(d.size), "goal": g["astrometry_rms_px"],
                             "pass": at["rms_at_px"] <= g["astrometry_rms_px"]}
    else:
        out["astrometry"] = {"pass": False, "error": "no astrometric solution"}
    if frame.zero_point_e_s is not None and rec.get("zp_e") is not None:
        # the truth in the pipeline's convention: at the frame's reference colour (ZPCOLREF) in the nominal system
        c0 = h.get("ZPCOLREF") if str(h.get("ZPSOURCE", "")).strip() in ("gaia", "survey") else None
        zp_true, off = true_zero_point_at_colour(truth, None if c0 is None else float(c0))
        d = float(frame.zero_point_e_s) - zp_true
        out["zero_point"] = {"diff_mag": d, "error": frame.zero_point_error, "goal": zp_goal,
                             "colour_ref": c0, "truth_colour_offset": off,
                             "diff_mag_ab": float(frame.zero_point_e_s) - float(rec["zp_e"]),
                             "pass": abs(d) <= zp_goal}
    else:
        out["zero_point"] = {"pass": False, "error": "no zero point"}
    if "FLUX_APCOR" in cat.colnames:
        ph = photometry_vs_truth(cat, ox, oy, obj["flux_e"], usable=star_ok)
        ph["ratios"] = [float(v) for v in ph["ratios"]]  # for pooling over frames
        out["flux"] = {**ph, "goal": f"|median-1| <= {g['flux_median']}, scatter <= {g['flux_scatter']}",
                       "pass": ph["n"] > 0 and abs(ph["median"] - 1) <= g["flux_median"]
                       and ph["scatter"] <= g["flux_scatter"]}
    else:
        out["flux"] = {"pass": False, "error": "no FLUX_APCOR column (no aperture correction)"}
    if frame.psf is not None and "fwhm_arcsec" in obj.colnames:
        # compared in pixels (the model's unit): the truth's FWHM over the scale the simulator drew it with; the
        # fitted WCS's scale differs from it by the true plate-scale error (1 % in the grid of conditions)
        scale = truth.get("pixel_scale") or float(abs(h.get("CD2_2", 0.0)) * 3600) or float(h.get("PIXSCALE", 0.55))
        b = clean & (snr[idx] > 50)
        tf = np.asarray(obj["fwhm_arcsec"], float)[sel][b] / scale
        r = np.asarray(frame.psf.fwhm_at(ox[sel][b], oy[sel][b]), float) / tf
        med = float(np.median(r)) if r.size else float("nan")
        out["psf"] = {"n_stars": int(b.sum()), "model_over_truth": med,
                      "truth_fwhm_arcsec": float(np.median(tf * scale)) if tf.size else float("nan"),
                      "goal": g["fwhm"], "pass": bool(r.size) and abs(med - 1) <= g["fwhm"]}
    else:
        out["psf"] = {"pass": False, "error": "no PSF model"}
    mask = frame.mask
    sigma = _pixel_sigma(frame.weight, shape, float(h.get("SKYRMS", 1.0) or 1.0))
    excl = (mask & np.int16(mb.SATELLITE | mb.SATURATED | mb.BLEED)) != 0
    cr = truth["cosmics"]
    if len(cr):
        c = cosmics_vs_truth(mask, cr["x"], cr["y"], cr["e"], sigma, star_x=ox[usable], star_y=oy[usable],
                             exclude=excl)
        out["cosmics"] = {**c, "goal": f">= {g['cr_completeness']}, false core < {g['cr_false_core']}",
                          "pass": c["completeness"] >= g["cr_completeness"]
                          and c["false_core_rate"] < g["cr_false_core"]}
    if truth["trail"] is not None and len(truth["trail"]):
        st = truth["trail"]
        s = satellites_vs_truth(mask, st["x"], st["y"], st["e"], sigma)
        out["trails"] = {**s, "goal": g["sat_completeness"], "pass": s["completeness"] >= g["sat_completeness"]}
    return out


def night_vs_truth(sim_out: Path, root: Path, *, executor: Any = None, steps: tuple[str, ...] | None = None,
                   zp_goal: float | None = None, config_toml: str | None = None) -> dict[str, Any]:
    """Run a simulated night through upad as a user would, and judge every reduced frame against the truth.

    The raw frames under ``sim_out/raw`` are ingested into a new data root ``root`` (SQLite), the simulation's
    reference catalog becomes the root's ``reference/refcat.fits``, and every step (or ``steps``) runs through the
    scheduler until idle — the masters and the instrument signature are the pipeline's own. Each science frame's
    current reduced product is read back (:func:`upad.io.products.read_reduced_frame`) and compared with its truth
    (:func:`frame_vs_truth`). ``config_toml``: the text of the root's ``upad.toml`` (default: none, every step's
    defaults).

    Returns
    -------
    dict
        ``frames``: one entry per science frame (file name, true seeing, QC status and reasons, figures);
        ``jobs``: job counts by state; ``failed``: the failed jobs with their errors.
    """
    import shutil

    from sqlalchemy import select

    from upad.db import Database
    from upad.db.models import Frame, Job, Product
    from upad.execution import InlineExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.io.products import read_reduced_frame
    from upad.settings import Settings
    from upad.sim.truth import load_manifest

    sim_out, root = Path(sim_out), Path(root)
    man = load_manifest(sim_out)
    url = f"sqlite:///{root / 'upad.sqlite'}"
    settings = Settings(root=root, db_url=url)
    settings.create_layout()
    if config_toml:
        (root / "upad.toml").write_text(config_toml)
    db = Database(url)
    try:
        db.upgrade()
        ingest_paths(db, settings, [sim_out / "raw"], mode="copy")
        shutil.copy2(sim_out / man["reference_catalog"], settings.path("reference", "refcat.fits"))
        ex = executor or InlineExecutor()
        opts = SchedulerOptions(poll_seconds=0.05, min_replan_seconds=0.0, **({"steps": steps} if steps else {}))
        counts = Scheduler(db, settings, ex, options=opts).run(until_idle=True)
        by_name = {Path(r["file"]).name: r for r in man["frames"] if r["kind"] == "science"}
        frames, failed = [], []
        with db.session() as s:
            for job in s.scalars(select(Job).where(Job.state == "failed")):
                failed.append({"step": job.step, "unit": job.unit_key,
                               "error": job.attempts[-1].error if job.attempts else None})
            rows = s.execute(select(Frame.id, Frame.filename).where(Frame.obs_type == "science")).all()
            for fid, name in rows:
                rec = by_name.get(name)
                prod = s.scalars(select(Product).where(Product.kind == "reduced_frame", Product.is_current.is_(True),
                                                       Product.context["frame_id"].as_integer() == fid)).first()
                entry: dict[str, Any] = {"file": name, "fwhm_arcsec": rec.get("fwhm_arcsec") if rec else None}
                if prod is None:
                    entry.update(qc="missing", reasons=["no reduced product"])
                else:
                    entry.update(qc=prod.qc_status, reasons=list((prod.meta or {}).get("qc_reasons", [])))
                    if rec is not None and any(f.get("role") == "catalog" for f in prod.files):
                        frame = read_reduced_frame(prod.files, root=root)
                        entry["figures"] = frame_vs_truth(frame, frame_truth(sim_out, rec, man), zp_goal=zp_goal)
                frames.append(entry)
        return {"frames": frames, "jobs": counts, "failed": failed}
    finally:
        db.dispose()
