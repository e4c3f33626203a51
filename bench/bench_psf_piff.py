"""upad's PSF model side by side with Piff (the PSF library of DES and Rubin) on the same stars of the same frames.

Each condition of ``bench_conditions`` named on the command line is simulated (at a higher star density,
``--star-density``) and run through the whole flow (the pipeline's own masters and signature); on every reduced frame the PSF stars are chosen once
(:func:`upad.reduce.psf.select_psf_stars`) and every fifth is **reserved**: both models are fitted on the others —
upad's (:func:`upad.reduce.psf.measure_psf`, the detections minus the reserved stars) and Piff's (``PixelGrid`` of
1-pixel cells (17 x 17), ``BasisPolynomial`` of the same order as upad's field variation, 25-pixel stamps, the frame's
weight map, outlier rejection) — and judged on the reserved stars as the DES PSF papers do: the adaptive-moment size
``T`` and shape ``(e1, e2)`` of each reserved star against those of the model drawn at its position (both pixelated
— the same estimator, :func:`upad.reduce.psf.adaptive_moments`). Reported per condition (median over the frames):
median and robust scatter (1.4826 MAD) of ``dT/T``, robust size of ``de``, and the fit times of both.

    python bench/bench_psf_piff.py                       # the default conditions
    python bench/bench_psf_piff.py --only "Moffat beta 2-5, 0.6"

Needs Piff (``pip install piff``: not a dependency of upad; without it the script says so and stops).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_conditions as B  # noqa: E402

DEFAULT = ("Kolmogorov+optics, 0.8\u2033", "Kolmogorov+optics, 2.0\u2033", "Moffat beta 2-5, 0.6\u2033",
           "double Gaussian, 1.2\u2033")
STAMP = 25


def _moments(stamps: list[np.ndarray], sigma0: float) -> np.ndarray:
    from upad.reduce.psf import adaptive_moments

    out = []
    for s in stamps:
        c = (s.shape[0] - 1) / 2.0
        m = adaptive_moments(np.ascontiguousarray(s, np.float32), np.array([c]), np.array([c]), sigma0=sigma0)[0]
        out.append(m[:3])
    m = np.asarray(out, float)
    T = m[:, 0] + m[:, 1]
    return np.column_stack([T, (m[:, 0] - m[:, 1]) / T, 2 * m[:, 2] / T])


def _stamp(img: np.ndarray, x: float, y: float) -> np.ndarray | None:
    h = STAMP // 2
    ix, iy = int(round(x)), int(round(y))
    if iy - h < 0 or ix - h < 0 or iy + h + 1 > img.shape[0] or ix + h + 1 > img.shape[1]:
        return None
    return img[iy - h:iy + h + 1, ix - h:ix + h + 1]


def fit_piff(img: np.ndarray, weight: np.ndarray, xs: np.ndarray, ys: np.ndarray, flux: np.ndarray, *,
             pixel_scale: float, order: int):
    import galsim
    import piff

    wcs = galsim.PixelScale(pixel_scale)
    gim = galsim.Image(np.ascontiguousarray(img, np.float64), xmin=0, ymin=0, wcs=wcs)
    gw = galsim.Image(np.ascontiguousarray(weight, np.float64), xmin=0, ymin=0, wcs=wcs)
    h = STAMP // 2
    stars = []
    for x, y, f in zip(xs, ys, flux):
        ix, iy = int(round(x)), int(round(y))
        b = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h)
        if not gim.bounds.includes(b):
            continue
        st = piff.Star.makeTarget(x=float(x), y=float(y), image=gim[b].copy(), weight=gw[b].copy(),
                                  flux=float(f))
        stars.append(st)
    model = piff.PixelGrid(scale=pixel_scale, size=17)
    interp = piff.BasisPolynomial(order=order)
    outliers = piff.ChisqOutliers(nsigma=4)
    psf = piff.SimplePSF(model, interp, outliers=[outliers])  # Piff 1.7 takes a list
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        psf.fit(stars, {0: wcs}, None)
    return psf


def judge(frame: Any, *, pixel_scale: float, seed: int) -> dict[str, Any]:
    from upad.reduce.psf import PsfConfig, measure_psf, select_psf_stars

    from upad.reduce.background import BackgroundResult

    cat, img = frame.catalog, np.array(frame.image, np.float32)
    if not frame.header.get("SKYSUB", False) and frame.background_mesh is not None:
        # the reduced image keeps the sky: both models get the pipeline's own background model subtracted
        BackgroundResult(level=0.0, rms=0.0, mesh=np.asarray(frame.background_mesh, np.float32),
                         rms_mesh=np.zeros_like(frame.background_mesh, np.float32), mesh_px=int(frame.mesh_px),
                         shape=img.shape).subtract(img)
    img = img.astype(np.float64)
    weight = np.asarray(frame.weight, np.float64) if frame.weight is not None else np.ones_like(img)
    weight = np.where(np.asarray(frame.mask) != 0, 0.0, weight)
    x = np.asarray(cat["XWIN_IMAGE"], float) - 1
    y = np.asarray(cat["YWIN_IMAGE"], float) - 1
    flux = np.asarray(cat["FLUX_AUTO"], float)
    snr = flux / np.maximum(np.asarray(cat["FLUXERR_AUTO"], float), 1e-30)
    flags, imaf = np.asarray(cat["FLAGS"]), np.asarray(cat["IMAFLAGS_ISO"])
    fwhm, ell, peak = (np.asarray(cat[c], float) for c in ("FWHM_IMAGE", "ELLIPTICITY", "FLUX_MAX"))
    cfg = PsfConfig()
    cand = select_psf_stars(x, y, snr, flags, imaf, 2.0 * (fwhm / 2.3548) ** 2, ell, peak, config=cfg,
                            fwhm_guess=float(np.nanmedian(fwhm)))
    rng = np.random.default_rng(seed)
    cand = cand[rng.permutation(cand.size)]
    reserved, train = cand[::5], np.setdiff1d(cand, cand[::5])
    keep = np.setdiff1d(np.arange(len(cat)), reserved)
    t0 = time.perf_counter()
    ours = measure_psf(img.astype(np.float32), x[keep], y[keep], flux[keep], snr[keep], flags[keep], imaf[keep],
                       fwhm[keep], ell[keep], peak[keep], pixel_scale=pixel_scale, config=cfg)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    piff_psf = fit_piff(img, weight, x[train], y[train], flux[train], pixel_scale=pixel_scale,
                        order=cfg.variation_order)
    t_piff = time.perf_counter() - t0
    st, mo, mp = [], [], []
    for j in reserved:
        s = _stamp(img, x[j], y[j])
        if s is None:
            continue
        st.append(s)
        mo.append(ours.model.render(x[j], y[j], STAMP))
        im = piff_psf.draw(x=float(x[j]), y=float(y[j]), stamp_size=STAMP,
                           center=(float(round(x[j])) + (x[j] - round(x[j])), float(round(y[j])) + (y[j] - round(y[j]))))
        mp.append(im.array)
    sig0 = max(float(np.nanmedian(fwhm)) / 2.3548, 0.8)
    ms, m_o, m_p = _moments(st, sig0), _moments(mo, sig0), _moments(mp, sig0)
    ok = np.all(np.isfinite(ms), axis=1) & np.all(np.isfinite(m_o), axis=1) & np.all(np.isfinite(m_p), axis=1)

    def stats(m):
        dT = (m[ok, 0] - ms[ok, 0]) / ms[ok, 0]
        de = np.hypot(m[ok, 1] - ms[ok, 1], m[ok, 2] - ms[ok, 2])
        # robust: a reserved "star" may be a blend or carry a cosmic ray (both models are judged on the same ones)
        return {"dT_median": float(np.median(dT)), "dT_rms": float(1.4826 * np.median(np.abs(dT - np.median(dT)))),
                "de_rms": float(1.4826 * np.median(de))}

    return {"n_train": int(train.size), "n_reserved": int(ok.sum()), "upad": {**stats(m_o), "fit_s": t_ours},
            "piff": {**stats(m_p), "fit_s": t_piff}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run the conditions whose name contains this text (else the default four)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--work", help="keep the simulated nights here (and reuse those already there)")
    ap.add_argument("--star-density", type=float, default=20000.0,
                    help="stars per deg2 to r = 21 (the grid's 3500 gives a mini frame ~15 PSF stars: too few to "
                         "reserve a fifth; 20000 is a low-latitude field)")
    args = ap.parse_args(argv)
    try:
        import piff  # noqa: F401
    except ImportError:
        print("Piff is not installed (pip install piff): nothing to compare with")
        return 2
    from sqlalchemy import select

    import upad  # noqa: F401  - offline astropy
    from upad.db import Database
    from upad.db.models import Product
    from upad.io.products import read_reduced_frame

    names = [k for k in B.CONDITIONS if args.only in k] if args.only else list(DEFAULT)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, name in enumerate(names):
            overrides, zp_goal = B.CONDITIONS[name]
            seed = 21 + list(B.CONDITIONS).index(name)
            work = Path(args.work or tmp) / f"c{seed}-{args.star_density:g}"
            print(f"[{k + 1}/{len(names)}] {name} ...", flush=True)
            if not (work / "root" / "upad.sqlite").exists():
                B.run_condition(name, {**overrides, "star_density_r21": args.star_density}, zp_goal, seed, work)
            db = Database(f"sqlite:///{work / 'root' / 'upad.sqlite'}")
            with db.session() as s:
                prods = [p.files for p in s.scalars(select(Product).where(Product.kind == "reduced_frame",
                                                                            Product.is_current.is_(True)))]
            db.dispose()
            for j, files in enumerate(prods):
                fr = read_reduced_frame(files, root=work / "root")
                from astropy.wcs.utils import proj_plane_pixel_scales

                scale = float(np.mean(proj_plane_pixel_scales(fr.wcs.celestial))) * 3600.0
                res = judge(fr, pixel_scale=scale, seed=j)
                res["condition"] = name
                rows.append(res)
                u, p = res["upad"], res["piff"]
                print(f"   frame {j}: {res['n_train']} stars, {res['n_reserved']} reserved | upad dT/T "
                      f"{u['dT_median']:+.4f} rms {u['dT_rms']:.4f} de {u['de_rms']:.4f} ({u['fit_s']:.2f} s) | Piff "
                      f"{p['dT_median']:+.4f} rms {p['dT_rms']:.4f} de {p['de_rms']:.4f} ({p['fit_s']:.2f} s)",
                      flush=True)
    print("\n| condition | reserved stars | upad dT/T median / scatter | Piff dT/T median / scatter | upad / Piff de "
          "| fit time upad / Piff (s) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        rs = [r for r in rows if r["condition"] == name]
        if not rs:
            continue

        def med(who, key):
            return float(np.median([r[who][key] for r in rs]))

        print(f"| {name} | {sum(r['n_reserved'] for r in rs)} | {med('upad', 'dT_median'):+.4f} / "
              f"{med('upad', 'dT_rms'):.4f} | {med('piff', 'dT_median'):+.4f} / {med('piff', 'dT_rms'):.4f} | "
              f"{med('upad', 'de_rms'):.4f} / {med('piff', 'de_rms'):.4f} | {med('upad', 'fit_s'):.2f} / "
              f"{med('piff', 'fit_s'):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
