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
           "sextractor_binary", "run_sextractor", "compare_with_sextractor", "run_astroscrappy", "robust_std"]

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
                        y: np.ndarray | None = None, margin: float = 0.0) -> dict[str, float]:
    """Distance (pixels) between where the fitted and the true WCS put the same sky positions: on a 32 x 32 grid
    over the image (``rms_grid_px``, ``max_grid_px``) and at given 0-based positions (``rms_at_px``)."""
    ny, nx = shape
    gy, gx = np.mgrid[margin:ny - 1 - margin:32j, margin:nx - 1 - margin:32j]
    out: dict[str, float] = {}
    for name, (px, py) in {"grid": (gx.ravel(), gy.ravel()), "at": (x, y)}.items():
        if px is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = true_wcs.all_pix2world(np.asarray(px, float), np.asarray(py, float), 0)
            qx, qy = wcs.all_world2pix(ra, dec, 0)
        d = np.hypot(qx - px, qy - py)
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
                   aper_diameters_px: tuple[float, float, float], thresh: float = 1.5, minarea: int = 5,
                   back_size: int = 128, workdir: str | Path | None = None, threads: int = 0) -> tuple[Any, float]:
    """Run SExtractor on an image (e-) with our parameter file; returns its catalog (astropy Table) and the wall
    time of the run (s).

    The image is written as FITS (and the weight map as ``MAP_WEIGHT`` when given); ``GAIN`` is 1 e-/e-
    (the image is in electrons), the default 3x3 filter, SExtractor's own background (``BACK_SIZE``).
    """
    from astropy.io import fits
    from astropy.table import Table

    exe = sextractor_binary()
    if exe is None:
        raise FileNotFoundError("SExtractor (source-extractor) is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="upad-sex-", dir=workdir))
    try:
        fits.PrimaryHDU(np.asarray(image, np.float32)).writeto(tmp / "image.fits")
        (tmp / "cat.param").write_text("\n".join(SEXTRACTOR_PARAMS) + "\n")
        conv = Path("/usr/share/source-extractor/default.conv")
        if conv.exists():
            shutil.copy(conv, tmp / "default.conv")
        else:
            (tmp / "default.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
        args = [exe, str(tmp / "image.fits"), "-c", "/dev/null", "-CATALOG_NAME", str(tmp / "cat.fits"),
                "-CATALOG_TYPE", "FITS_1.0", "-PARAMETERS_NAME", str(tmp / "cat.param"), "-FILTER", "Y",
                "-FILTER_NAME", str(tmp / "default.conv"), "-DETECT_THRESH", str(thresh), "-ANALYSIS_THRESH",
                str(thresh), "-DETECT_MINAREA", str(minarea), "-PHOT_APERTURES",
                ",".join(f"{d:.4f}" for d in aper_diameters_px), "-PHOT_AUTOPARAMS", "2.5,3.5", "-GAIN", "1.0",
                "-PIXEL_SCALE", str(pixel_scale), "-SATUR_LEVEL", "1e9", "-MAG_ZEROPOINT", "0.0", "-BACK_SIZE",
                str(back_size), "-BACK_FILTERSIZE", "3", "-VERBOSE_TYPE", "QUIET", "-CHECKIMAGE_TYPE", "NONE",
                "-NTHREADS", str(threads), "-STARNNW_NAME", "/usr/share/source-extractor/default.nnw",
                "-MEMORY_BUFSIZE", "4096", "-MEMORY_OBJSTACK", "30000", "-MEMORY_PIXSTACK", "3000000"]
        if weight is not None:
            fits.PrimaryHDU(np.asarray(weight, np.float32)).writeto(tmp / "weight.fits")
            args += ["-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(tmp / "weight.fits"), "-WEIGHT_GAIN", "N"]
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
