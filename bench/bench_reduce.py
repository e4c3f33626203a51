#!/usr/bin/env python
"""Benchmark the reduction of one full-size T80Cam science frame, raw to every output, against the field's tools.

A one-frame T80Cam night (rSDSS, 1 tile, 1 dither, no calibration frames) is simulated once and cached under
``--cache`` (default ``$TMPDIR/upad-bench-reduce``). Then, in this process:

(a) **raw → outputs**, each part timed: read the raw ``.fits.fz``; ISR (``upad.reduce.isr.run_isr``: overscan,
    non-linearity, gains, dark and flat — the simulator's truth maps stand in for the master calibrations);
    ``upad.reduce.pipeline.reduce_frame`` (mask, saturation, background + noise, cosmetics, satellites, cosmic
    rays, detection + photometry, astrometry, PSF, zero point, QC; per stage); writing the reduced FITS (image,
    RICE-compressed mask, weight), the catalog, the PSF model, the PNG preview and the QC plot. Peak RSS is read
    after (a), before any reference tool runs.
(b) **accuracy against the truth**: astrometry (fitted vs true WCS), zero point, S/N > 100 star fluxes, PSF
    FWHM, cosmic-ray completeness (> 5 sigma) and star-core false flags, satellite-trail completeness (> 2 sigma).
(c) **the field's tools on the same data**: astroscrappy on a ``--cutout`` x ``--cutout`` cutout (time extrapolated
    to the frame by area; flags compared with ours), SExtractor (``source-extractor``) on the reduced image with
    our weight map (time; fraction of its S/N > 10 sources we find; flux agreement), ccdproc's ISR (overscan, gain,
    flat) on the raw frame.

    python bench/bench_reduce.py                 # everything
    python bench/bench_reduce.py --skip-reference --keep
    python bench/bench_reduce.py --only-reference

Numbers depend on the machine's load: run on a quiet machine, or compare ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def simulate_frame(cache: Path, seed: int, filt: str) -> Path:
    """Simulate (once) a T80Cam night with a single science frame; returns the simulation folder."""
    from upad.sim import SimConfig, simulate

    out = cache / f"t80cam-{filt}-seed{seed}"
    if (out / "truth" / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    cfg = SimConfig(n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_dithers=1)
    t0 = time.perf_counter()
    simulate(instrument="t80cam", seed=seed, out=out, nights=1, tiles=1, filters=[filt], config=cfg)
    print(f"simulated one T80Cam frame in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def run_pipeline(sim: Path, outdir: Path, timings: dict[str, float]) -> dict:
    from astropy.io import fits

    from upad.instruments import get_instrument
    from upad.io.refcat import read_reference_catalog
    from upad.reduce import isr
    from upad.reduce.output import to_big_endian, write_catalog, write_psf, write_reduced
    from upad.reduce.pipeline import reduce_frame
    from upad.reduce.preview import write_previews
    from upad.sim.truth import load_manifest, read_map

    man = load_manifest(sim)
    rec = next(f for f in man["frames"] if f["kind"] == "science")
    inst = get_instrument(man["instrument"])
    cam = man["camera"]
    # calibration "masters" (the truth stands in for them; the adapter gets them from the calibration lookup)
    flat = read_map(sim / cam["maps"]["flat_sky"]).astype(np.float32)
    dark_rate = read_map(sim / cam["maps"]["dark_rate"]).astype(np.float32)
    bpm = read_map(sim / cam["maps"]["bpm"]) > 0
    ref = read_reference_catalog(sim / man["reference_catalog"])

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    with fits.open(sim / rec["file"]) as hd:
        raw = np.asarray(hd[1].data)
        header = hd[1].header.copy()
    timings["read raw (.fits.fz)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = isr.run_isr(raw, inst, layout=man["layout"], dark=dark_rate, exptime=float(rec["exptime"]), flat=flat,
                      gains=cam["gain_true_e_per_adu"], nonlinearity=cam["nonlinearity_c2_c3"])
    del raw
    timings["ISR (upad.reduce.isr.run_isr)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dark_e = dark_rate
    dark_e *= np.float32(rec["exptime"])  # the dark charge, in place (the rate is not needed any more)
    sections = inst.amp_sections(man["layout"])
    frame = reduce_frame(res.image, wcs_guess=header, refcat=ref, filter_name=rec["filter"],
                         exptime=float(rec["exptime"]), read_noise=cam["read_noise_e"],
                         amp_regions=[s.active for s in sections], saturated=res.saturated, bpm=bpm, flat=flat,
                         dark_e=dark_e)
    timings["reduce_frame (total)"] = time.perf_counter() - t0
    for k, v in frame.timings.items():
        timings[f"  {k}"] = v
    del dark_e
    t0 = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    write_previews(frame, outdir / "preview.png", outdir / "qc.png", refcat=ref)
    timings["write preview + QC plot (PNG)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_catalog(outdir / "catalog.fits", frame.catalog, header=frame.header)
    if frame.psf is not None:
        write_psf(outdir / "psf.fits", frame.psf)
    timings["write catalog + PSF"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_reduced(outdir / "reduced.fits", frame, header=header, provenance={"product": "bench0000000"},
                  consume=True)
    timings["write reduced FITS (image, RICE mask, weight)"] = time.perf_counter() - t0
    timings["TOTAL raw -> every output"] = time.perf_counter() - t_all
    # the writer byte-swapped the image and weight in place (consume=True): swap them back for the checks
    to_big_endian(frame.image, inplace=True)
    to_big_endian(frame.weight, inplace=True)
    sizes = {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(outdir.iterdir())}
    return {"frame": frame, "man": man, "rec": rec, "ref": ref, "flat": flat, "sizes": sizes, "header": header}


def accuracy(run: dict) -> dict:
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    from upad import maskbits as mb
    from upad.reduce import validation as V

    frame, rec, man = run["frame"], run["rec"], run["man"]
    sim = Path(man["_root"])
    with fits.open(sim / rec["truth"]) as hd:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tw = WCS(hd[0].header, naxis=2)
        obj = Table(hd["OBJECTS"].data)
        cr = Table(hd["COSMICS"].data)
        sat = Table(hd["SATELLITE"].data) if "SATELLITE" in hd else None
    out: dict = {}
    shape = frame.mask.shape
    star_ok = np.asarray(obj["in_image"]) & ~np.asarray(obj["saturated"])
    if frame.wcs is not None:
        a = frame.astrometry
        xw = np.asarray(frame.catalog["XWIN_IMAGE"])[a.det_index] - 1
        yw = np.asarray(frame.catalog["YWIN_IMAGE"])[a.det_index] - 1
        out["astrometry"] = {**V.astrometry_vs_truth(frame.wcs, tw, shape, x=xw, y=yw),
                             "fit_rms_arcsec": a.rms_arcsec, "bright_star_rms_px": a.rms_bright_px,
                             "n_matched": a.n_matched, "offset_found_arcsec": a.offset_arcsec,
                             "pointing_error_truth_arcsec": rec["wcs"]["pointing_error_arcsec"]}
    if frame.zeropoint is not None:
        out["zero_point"] = {"zp_e": frame.zeropoint.zp_e, "truth": rec["zp_e"],
                             "diff": frame.zeropoint.zp_e - rec["zp_e"], "error": frame.zeropoint.error,
                             "n": frame.zeropoint.n_stars}
        ph = V.photometry_vs_truth(frame.catalog, obj["x"], obj["y"], obj["flux_e"], usable=star_ok)
        ph.pop("ratios")
        out["flux_apcor_snr100"] = ph
    if frame.psf is not None:
        scale = frame.stats["pixel_scale"]
        out["psf"] = {**V.psf_vs_truth(frame.psf, obj["x"], obj["y"], np.asarray(obj["fwhm_arcsec"]) / scale),
                      "beta": frame.psf.beta, "fwhm_arcsec": frame.psf.fwhm_arcsec}
    sigma = np.sqrt(1.0 / np.where(frame.weight > 0, frame.weight, np.inf))  # 0 where masked
    # the weight is zero on masked pixels: use the sky noise there
    sigma = np.where(sigma > 0, sigma, frame.stats["noise_model_sigma_e"]).astype(np.float32)
    excl = (frame.mask & np.int16(mb.SATELLITE | mb.SATURATED | mb.BLEED)) != 0
    out["cosmics"] = V.cosmics_vs_truth(frame.mask, cr["x"], cr["y"], cr["e"], sigma, star_x=obj["x"][star_ok],
                                        star_y=obj["y"][star_ok], exclude=excl)
    if sat is not None:
        out["satellite"] = V.satellites_vs_truth(frame.mask, sat["x"], sat["y"], sat["e"], sigma)
    out["noise_ratio"] = frame.stats["noise_ratio"]
    out["qc"] = {"status": frame.qc.status, "reasons": frame.qc.reasons}
    run["sigma"] = sigma
    run["cr_truth"] = cr
    run["obj"] = obj
    return out


def references(run: dict, cutout: int, tmp: Path) -> dict:
    from upad import maskbits as mb
    from upad.reduce import validation as V

    frame, man, rec = run["frame"], run["man"], run["rec"]
    out: dict = {}
    ny, nx = frame.mask.shape
    npix = ny * nx
    # --- astroscrappy on a cutout (our flags on the same pixels)
    try:
        import astroscrappy  # noqa: F401

        c = min(cutout, ny, nx)
        y0, x0 = (ny - c) // 2, (nx - c) // 2
        sl = np.s_[y0:y0 + c, x0:x0 + c]
        # astroscrappy needs the data before our cleaning: put the original cosmic-ray pixel values back (they were
        # recorded background-subtracted; the reduced image keeps the sky)
        cr = frame.cosmics
        data = frame.image[sl].copy()
        inside = (cr.y >= y0) & (cr.y < y0 + c) & (cr.x >= x0) & (cr.x < x0 + c)
        xi, yi = cr.x[inside], cr.y[inside]
        data[yi - y0, xi - x0] = cr.original[inside] + frame.background.at(xi, yi).astype(np.float32)
        inmask = (frame.mask[sl] & np.int16(mb.BAD | mb.SATURATED | mb.BLEED | mb.NODATA)) != 0
        rn = float(np.mean(man["camera"]["read_noise_e"]))
        ours_flags = (frame.mask[sl] & np.int16(mb.COSMIC)) != 0
        crt = run["cr_truth"]
        sel = (crt["x"] >= x0) & (crt["x"] < x0 + c) & (crt["y"] >= y0) & (crt["y"] < y0 + c)
        obj = run["obj"]
        ok = (np.asarray(obj["x"]) >= x0) & (np.asarray(obj["x"]) < x0 + c) & (np.asarray(obj["y"]) >= y0) & (
            np.asarray(obj["y"]) < y0 + c) & np.asarray(obj["in_image"]) & ~np.asarray(obj["saturated"])
        sub_mask = frame.mask[sl]
        sig = run["sigma"][sl]
        excl = (sub_mask & np.int16(mb.SATELLITE | mb.SATURATED | mb.BLEED)) != 0
        res = {}
        for name, sepmed in (("astroscrappy (sepmed=True, default)", True),):
            m, dt = V.run_astroscrappy(data, mask=inmask, read_noise=rn, sepmed=sepmed)
            cmpa = V.cosmics_vs_truth(sub_mask, np.asarray(crt["x"][sel]) - x0, np.asarray(crt["y"][sel]) - y0,
                                      np.asarray(crt["e"][sel]), sig, star_x=np.asarray(obj["x"][ok]) - x0,
                                      star_y=np.asarray(obj["y"][ok]) - y0, exclude=excl, flags=m)
            res[name] = {"time_cutout_s": dt, "time_full_frame_s (by area)": dt * npix / (c * c),
                         "completeness": cmpa["completeness"], "false_core": cmpa["false_core"],
                         "agreement_with_ours": float((m & ours_flags).sum() / max(m.sum(), 1))}
        cmpo = V.cosmics_vs_truth(sub_mask, np.asarray(crt["x"][sel]) - x0, np.asarray(crt["y"][sel]) - y0,
                                  np.asarray(crt["e"][sel]), sig, star_x=np.asarray(obj["x"][ok]) - x0,
                                  star_y=np.asarray(obj["y"][ok]) - y0, exclude=excl, flags=ours_flags)
        res["upad on the same cutout"] = {"completeness": cmpo["completeness"], "false_core": cmpo["false_core"],
                                          "n_injected": cmpo["n_injected"]}
        out["astroscrappy"] = res
    except ImportError:
        out["astroscrappy"] = "skipped: astroscrappy is not installed"
    # --- SExtractor on the reduced image
    if V.sextractor_binary() is None:
        out["sextractor"] = "skipped: source-extractor is not installed"
    else:
        diam = (2.0, 4.0, 8.0)
        scale = frame.stats["pixel_scale"]
        sc, dt = V.run_sextractor(frame.image, weight=frame.weight, pixel_scale=scale,
                                  aper_diameters_px=tuple(d / scale for d in diam), workdir=tmp)
        ours = frame.catalog.copy(copy_data=False)
        all_d = [float(v) for v in frame.catalog.meta["APERDIAM"].split(",")]
        ours["FLUX_APER"] = np.asarray(frame.catalog["FLUX_APER"])[:, [all_d.index(d) for d in diam]]
        excl = (frame.mask & np.int16(mb.SATELLITE | mb.NODATA)) != 0
        cmp = V.compare_with_sextractor(ours, sc, exclude=excl)
        out["sextractor"] = {"time_s": dt, "n_sources": len(sc), **cmp}
    # --- ccdproc ISR
    try:
        import astropy.units as u
        import ccdproc
        from astropy.io import fits
        from astropy.nddata import CCDData

        from upad.instruments import get_instrument

        sim = Path(man["_root"])
        inst = get_instrument(man["instrument"])
        with fits.open(sim / rec["file"]) as hd:
            raw = np.asarray(hd[1].data)
        flat = run["flat"]
        t0 = time.perf_counter()
        out_img = np.empty(inst.layout.active_shape, np.float32)
        for sec in inst.amp_sections(man["layout"]):
            block = raw[sec.data[0], :]
            ccd = CCDData(block.astype(np.float32), unit="adu")
            osx = sec.overscan_x[1]
            dsx = sec.data[1]
            ccd = ccdproc.subtract_overscan(ccd, overscan=ccd[:, osx], overscan_axis=1, model=None)
            ccd = ccdproc.trim_image(ccd[:, dsx])
            ccd = ccdproc.gain_correct(ccd, man["camera"]["gain_true_e_per_adu"][sec.index] * u.electron / u.adu)
            out_img[sec.active] = ccd.data
        ccdf = CCDData(out_img, unit="electron")
        ccdf = ccdproc.flat_correct(ccdf, CCDData(flat, unit=""), norm_value=1.0)
        out["ccdproc ISR (overscan + trim + gain + flat)"] = {"time_s": time.perf_counter() - t0}
        del raw, ccdf, out_img
    except ImportError:
        out["ccdproc ISR (overscan + trim + gain + flat)"] = "skipped: ccdproc is not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "upad-bench-reduce",
                    help="where the simulated frame is cached")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: <cache>/out, removed unless "
                                                           "--keep)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--filter", default="rSDSS")
    ap.add_argument("--cutout", type=int, default=2048, help="astroscrappy cutout size (pixels)")
    ap.add_argument("--skip-reference", action="store_true", help="do not run astroscrappy, SExtractor, ccdproc")
    ap.add_argument("--only-reference", action="store_true", help="skip nothing, but print only (c)")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    ap.add_argument("--repeat", type=int, default=1, help="run (a) this many times in the process (the first run "
                                                          "also loads the compiled kernels from numba's cache)")
    args = ap.parse_args(argv)
    import numba

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    sim = simulate_frame(args.cache, args.seed, args.filter)
    outdir = args.out or (args.cache / "out")
    shutil.rmtree(outdir, ignore_errors=True)
    rss0 = rss_mb()
    all_timings: list[dict[str, float]] = []
    run: dict = {}
    for _ in range(max(1, args.repeat)):
        timings: dict[str, float] = {}
        run.clear()  # free the previous frame before the next one
        run = run_pipeline(sim, outdir, timings)
        all_timings.append(timings)
    rss_pipeline = rss_mb()
    run["man"]["_root"] = str(sim)
    print("\n(a) raw -> every output, one T80Cam frame "
          f"({run['frame'].mask.shape[1]} x {run['frame'].mask.shape[0]}, {len(run['frame'].catalog or [])} "
          "sources)" + ("" if len(all_timings) == 1 else f"; runs 1..{len(all_timings)} in the same process"))
    for k in all_timings[0]:
        vals = "  ".join(f"{t[k]:7.2f}" for t in all_timings)
        print(f"  {k:50s} {vals} s")
    print(f"  peak RSS of the process after (a): {rss_pipeline:.0f} MB (before: {rss0:.0f} MB)")
    print(f"  output files (MB): {run['sizes']}")
    acc = accuracy(run)
    print("\n(b) accuracy against the truth")
    for k, v in acc.items():
        print(f"  {k}: {json.dumps(v, default=float)}")
    ref: dict = {}
    if not args.skip_reference:
        ref = references(run, args.cutout, args.cache)
        print("\n(c) the field's tools on the same frame")
        for k, v in ref.items():
            print(f"  {k}: {json.dumps(v, default=float)}")
        total = timings["TOTAL raw -> every output"]
        try:
            a = next(iter(ref["astroscrappy"].values()))
            cr_t = timings.get("  cosmics", float("nan"))
            print(f"\n  cosmic rays: upad {cr_t:.2f} s vs astroscrappy ~{a['time_full_frame_s (by area)']:.0f} s per "
                  f"frame -> {a['time_full_frame_s (by area)'] / cr_t:.0f}x faster")
        except (KeyError, TypeError, StopIteration):
            pass
        if isinstance(ref.get("sextractor"), dict):
            det_t = timings.get("  detect", float("nan"))
            print(f"  detection + photometry: upad {det_t:.2f} s vs SExtractor {ref['sextractor']['time_s']:.2f} s "
                  f"-> ratio {ref['sextractor']['time_s'] / det_t:.2f}")
        print(f"  total raw -> every output: {total:.2f} s, peak RSS {rss_pipeline:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"timings": timings, "rss_mb": rss_pipeline, "accuracy": acc,
                                         "reference": ref, "sizes": run["sizes"]}, indent=1, default=float))
    if not args.keep:
        shutil.rmtree(outdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
