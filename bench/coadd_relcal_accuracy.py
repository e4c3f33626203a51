"""Accuracy of the coadd's joint astrometry and relative photometry on a simulated mini night (not a test: a
measurement, ~3 min per mode on 2 cores).

The night of tests/coadd/test_coadd_step.py (1 pointing, 3 dithers in rSDSS and gSDSS, seed 11) is simulated once,
then ingested and run to the coadds in one root per mode (``--modes off on``: the coadd's ``relative_astrometry``
and ``relative_photometry`` off or on). Per mode and filter it prints

* the WCS of each reduced exposure (the reduction's, and the joint one, recomputed here with the coadd's own
  functions) against the simulator's true WCS, at the true positions of the stars on the frame (mas rms);
* the positions of the coadd's stars — windowed centroids (``sep.winpos``) of isolated, unsaturated truth stars,
  through the coadd's WCS — against the truth catalog moved with its proper motions to the exposures' epoch
  (arcsec rms, and the mean offset);
* the coadd's zero point, and the relative calibration's figures (meta ``relative_calibration``).

Usage: ``PYTHONPATH=src python3 bench/coadd_relcal_accuracy.py [--out DIR] [--modes off on]``
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from sqlalchemy import select

FILTERS = ("rSDSS", "gSDSS")


def run_mode(sim, base: Path, mode: str):
    from upad.db.models import Product
    from upad.db.session import Database
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.settings import Settings

    root = base / f"root-{mode}"
    settings = Settings(root=root, db_url=f"sqlite:///{base / f'upad-{mode}.sqlite'}")
    settings.create_layout()
    (root / "reference").mkdir(exist_ok=True)
    (root / "reference" / "refcat.fits").write_bytes((sim.out / "reference" / "refcat.fits").read_bytes())
    flag = "true" if mode == "on" else "false"
    (root / "upad.toml").write_text(f"[steps.coadd]\nrelative_astrometry = {flag}\nrelative_photometry = {flag}\n")
    db = Database(settings.db_url)
    db.upgrade()
    ingest_paths(db, settings, [sim.out / "raw"], mode="copy")
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(db, settings, ex, options=SchedulerOptions()).run()
    finally:
        ex.close()
    with db.session() as s:
        coadds = {p.context["filter"]: (p.meta, [f["path"] for f in p.files if f["role"] == "coadd"][0])
                  for p in s.scalars(select(Product).where(Product.step == "coadd", Product.is_current.is_(True)))}
        reduced = list(s.scalars(select(Product).where(Product.step == "reduce", Product.is_current.is_(True))))
        reduced = [(r.context, {f["role"]: str(root / f["path"]) for f in r.files}) for r in reduced]
    db.dispose()
    return settings, counts, coadds, reduced


def truth_at(sim, epoch: float) -> Table:
    t = Table.read(sim.out / "truth" / "sky_catalog.fits")
    dt = epoch - 2016.0
    cosd = np.cos(np.radians(t["dec"]))
    t["ra_e"] = t["ra"] + dt * np.nan_to_num(t["pmra"]) / 3.6e6 / cosd
    t["dec_e"] = t["dec"] + dt * np.nan_to_num(t["pmdec"]) / 3.6e6
    return t


def exposure_wcs_errors(sim, settings, reduced, filt):
    """Per exposure: (name, reduction's WCS vs truth, joint WCS vs truth) in mas rms at the true star positions."""
    from upad.coadd.pipeline import _reference_stars, catalog_stars
    from upad.coadd.relative import solve_joint_astrometry
    from upad.coadd.step import CoaddConfig
    from upad.io.products import read_reduced_frame

    manifest = json.loads((sim.out / "truth" / "manifest.json").read_text())
    by_name = {f["file"].split("/")[-1]: f for f in manifest["frames"] if f["kind"] == "science"}
    frames, truths = [], []
    for ctx, files in reduced:
        fr = read_reduced_frame(files, psf=False)
        raw = fr.header.get("RAWFILE")
        t = by_name.get(raw)
        if t is None or t["filter"] != filt:
            continue
        frames.append(fr)
        truths.append(t)
    stars = [catalog_stars(fr, name=t["file"].split("/")[-1], min_snr=20.0) for fr, t in zip(frames, truths)]

    class _Task:
        config = CoaddConfig()
        root = str(settings.root)

    grid = frames[0].wcs
    ref, why = _reference_stars(_Task, grid, stars)
    res = solve_joint_astrometry(stars, ref)
    out = []
    for fr, t, a in zip(frames, truths, res.exposures):
        with fits.open(sim.out / t["truth"]) as th:
            true = WCS(th[0].header)
            obj = th["OBJECTS"].data
        sel = obj["in_image"] & (obj["flux_e"] > 500)
        x, y = obj["x"][sel], obj["y"][sel]
        ra_t, dec_t = true.all_pix2world(x, y, 0)

        def err(w):
            ra, dec = w.all_pix2world(x, y, 0)
            d = np.hypot((ra - ra_t) * np.cos(np.radians(dec_t)), dec - dec_t) * 3.6e6
            return float(np.sqrt(np.mean(d ** 2)))

        out.append((a.name, err(fr.wcs), err(a.wcs), a.n_stars, a.n_reference, a.reason))
    return out, res


def coadd_positions(sim, settings, path, epoch, *, mag_range=(16.0, 19.5)):
    import sep

    with fits.open(settings.root / path) as h:
        img = h["SCI"].data.astype(np.float64)
        hdr = h["SCI"].header
        weight = h["WEIGHT"].data
    w = WCS(hdr)
    filt = hdr["FILTER"]
    t = truth_at(sim, epoch)
    star = np.asarray(t["type"]).astype(str) == "star"
    mag = np.asarray(t[f"mag_{filt}"], float)
    # isolated: no other source within 5" brighter than mag + 4
    from scipy.spatial import cKDTree

    xyz = np.column_stack([np.cos(np.radians(t["dec_e"])) * np.cos(np.radians(t["ra_e"])),
                           np.cos(np.radians(t["dec_e"])) * np.sin(np.radians(t["ra_e"])),
                           np.sin(np.radians(t["dec_e"]))])
    tree = cKDTree(xyz)
    pairs = tree.query_ball_point(xyz, np.radians(5.0 / 3600))
    iso = np.array([all(mag[j] > mag[i] + 4 for j in p if j != i) for i, p in enumerate(pairs)])
    sel = star & iso & (mag > mag_range[0]) & (mag < mag_range[1])
    x, y = w.all_world2pix(np.asarray(t["ra_e"])[sel], np.asarray(t["dec_e"])[sel], 0)
    ny, nx = img.shape
    inside = (x > 20) & (y > 20) & (x < nx - 21) & (y < ny - 21)
    x, y = x[inside], y[inside]
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    ok = weight[iy, ix] > 0
    x, y = x[ok], y[ok]
    fwhm_px = float(hdr.get("FWHMIN", 1.2)) / 0.55
    bkg = sep.Background(np.ascontiguousarray(img), mask=weight <= 0)
    sub = np.ascontiguousarray(img - bkg.back())
    cx, cy, flag = sep.winpos(sub, x, y, fwhm_px / 2.355)
    ra, dec = w.all_pix2world(cx, cy, 0)
    ra_t = np.asarray(t["ra_e"])[sel][inside][ok]
    dec_t = np.asarray(t["dec_e"])[sel][inside][ok]
    dra = (ra - ra_t) * np.cos(np.radians(dec_t)) * 3600
    ddec = (dec - dec_t) * 3600
    good = (flag == 0) & (np.hypot(dra, ddec) < 0.5)
    d = np.hypot(dra[good], ddec[good])
    return {"n": int(good.sum()), "rms_arcsec": float(np.sqrt(np.mean(d ** 2))),
            "mean_offset_arcsec": (float(np.mean(dra[good])), float(np.mean(ddec[good]))),
            "median_arcsec": float(np.median(d))}


def main() -> None:
    from upad.sim import simulate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--modes", nargs="+", default=["off", "on"])
    args = ap.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="relcal-"))
    base.mkdir(parents=True, exist_ok=True)
    sim = simulate(instrument="mini", seed=11, out=base / "sim", nights=1, tiles=1, filters=list(FILTERS))
    for mode in args.modes:
        settings, counts, coadds, reduced = run_mode(sim, base, mode)
        print(f"== mode {mode}: jobs {counts}")
        for filt in FILTERS:
            meta, path = coadds[filt]
            with fits.open(settings.root / path) as h:
                hdr = h["SCI"].header
            epochs = []
            for ctx, files in reduced:
                with fits.open(files["reduced"]) as h:
                    if h["SCI"].header.get("FILTER") == filt and h["SCI"].header.get("REFEPOCH"):
                        epochs.append(float(h["SCI"].header["REFEPOCH"]))
            epoch = float(np.mean(epochs))
            for rng in ((16.0, 19.5), (16.0, 18.0)):
                pos = coadd_positions(sim, settings, path, epoch, mag_range=rng)
                print(f"{filt}: coadd MAGZP {hdr['MAGZP']}, stars {rng[0]} < mag < {rng[1]} vs truth at epoch "
                      f"{epoch:.4f}: {pos['n']} stars, {pos['rms_arcsec']:.4f}\" rms (median "
                      f"{pos['median_arcsec']:.4f}\"), mean offset ({pos['mean_offset_arcsec'][0] * 1e3:.1f}, "
                      f"{pos['mean_offset_arcsec'][1] * 1e3:.1f}) mas")
            rc = meta.get("relative_calibration") or {}
            if rc.get("astrometry"):
                a = rc["astrometry"]
                print(f"  joint astrometry: {a['n_stars']} stars ({a['n_reference']} reference), rms "
                      f"{a['rms_arcsec']}\", vs reference {a['rms_reference_arcsec']}\"")
                for e in a["exposures"]:
                    print(f"    {e['name']}: shift {e['shift_arcsec']}\" rot {e['rotation_arcsec']}\" scale "
                          f"{e['scale_ppm']} ppm, rms {e['rms_before_arcsec']} -> {e['rms_arcsec']}\", fold "
                          f"{e['fold_residual_mas']} mas {e['reason'] or ''}")
            if rc.get("photometry"):
                p = rc["photometry"]
                print(f"  relative photometry: {p['n_stars']} stars, rms {p['rms_mag']} mag; offsets "
                      + ", ".join(f"{e['offset_mag']:+.4f}±{e['offset_err_mag'] or 0:.4f}" for e in p["exposures"]))
            if mode == args.modes[-1]:
                rows, _ = exposure_wcs_errors(sim, settings, reduced, filt)
                for name, before, after, n, nref, reason in rows:
                    print(f"  exposure {name}: WCS vs truth {before:.1f} mas (reduction) -> {after:.1f} mas (joint; "
                          f"{n} stars, {nref} reference) {reason or ''}")


if __name__ == "__main__":
    main()
