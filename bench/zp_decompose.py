#!/usr/bin/env python
"""Where a frame's zero-point error comes from: the flux measurement, or the rest (reference, colour term, passband).

For every science frame of the chosen conditions of ``bench_conditions.py`` (same worlds, same seeds as the full
grid), the night is simulated and reduced as there, then the frame's photometric calibration is re-run
(:func:`upad.reduce.photcal.calibrate_zero_point`, the pipeline's own configuration) on its catalog with the
reference stars matched to the truth, once per variant, all on the same stars:

* ``pipe``: the measured ``FLUX_APCOR`` and the catalog's reference (what the pipeline does; ``zp_header`` is the
  frame's ``ZP_E``, which ``pipe`` reproduces up to the matching);
* ``tflux``: the true fluxes instead of the measured ones, same reference;
* ``tflux_nom``: true fluxes, the exact magnitudes through the survey's *nominal* passband as reference (what a
  perfect Gaia -> survey transformation or perfect survey-filter magnitudes give);
* ``tflux_real``: true fluxes, the exact magnitudes through the camera's real (shifted) passband (must give the true
  zero point: a check of the decomposition).

* ``pipe_fluxfixed``: the measured fluxes divided by their median bias over the S/N > 100 stars used (what a fix
  of the flux bias would leave: the flux noise).

``zp_header``, ``pipe``, ``rest`` are against the AB ``zp_e`` of the camera's passband; ``header_metric``,
``metric``, ``metric_fluxfixed`` against the validation's truth (:func:`upad.reduce.validation.true_zero_point_at_colour`:
the zero point at the reference colour in the nominal system) and ``rest_metric`` the rest against it.
Components (mag): ``flux = pipe - tflux`` (also ``2.5 log10 median(measured / true)`` over the stars used),
``rest = tflux - truth``, split into ``reference = tflux - tflux_nom`` (transformation or survey-magnitude errors,
with the colour-term fit they drive) and ``passband = tflux_nom - truth`` (the zero point at the reference colour
of a camera whose passband is not the nominal one). Colour terms: fitted (``k_pipe``, ``k_tflux``), and the true
one, the slope of ``real - nominal`` magnitudes in BP-RP over the stars used.

    python bench/zp_decompose.py --only "Kolmogorov+optics, 1.2" --keep /tmp/zpwork   # simulate, reduce, decompose
    python bench/zp_decompose.py --only "Kolmogorov+optics, 1.2" --reuse /tmp/zpwork  # decompose again (photcal only)
    python bench/zp_decompose.py --only moonlit --reuse /tmp/zpwork --set zp_colour_prior=0  # another configuration
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_conditions import BASE, CONDITIONS  # noqa: E402


def _frames(sim_out: Path, root: Path):
    """(file name, reduced frame product, truth) of every reduced science frame of a night already run."""
    from sqlalchemy import select

    from upad.db import Database
    from upad.db.models import Frame, Product
    from upad.io.products import read_reduced_frame
    from upad.reduce.validation import frame_truth
    from upad.sim.truth import load_manifest

    man = load_manifest(sim_out)
    by_name = {Path(r["file"]).name: r for r in man["frames"] if r["kind"] == "science"}
    db = Database(f"sqlite:///{root / 'upad.sqlite'}")
    try:
        with db.session() as s:
            rows = s.execute(select(Frame.id, Frame.filename).where(Frame.obs_type == "science")).all()
            for fid, name in sorted(rows, key=lambda r: r[1]):
                prod = s.scalars(select(Product).where(Product.kind == "reduced_frame", Product.is_current.is_(True),
                                                       Product.context["frame_id"].as_integer() == fid)).first()
                if prod is None or name not in by_name:
                    continue
                frame = read_reduced_frame(prod.files, root=root, psf=False)
                yield name, frame, frame_truth(sim_out, by_name[name], man), man
    finally:
        db.dispose()


def decompose_frame(frame: Any, truth: dict[str, Any], sim_out: Path, man: dict[str, Any], *,
                    config: Any = None) -> dict[str, Any]:
    """The variants and components of one frame (see the module documentation)."""
    from astropy.table import Table

    from upad import maskbits as mb
    from upad.reduce.photcal import calibrate_zero_point, gaia_to_survey, reference_columns
    from upad.reduce.photometry import PhotometryConfig
    from upad.reduce.validation import _match, true_zero_point_at_colour

    cfg = config or PhotometryConfig()
    cat, obj, rec = frame.catalog, truth["objects"], truth["record"]
    filt = str(frame.header.get("FILTER"))
    exptime = float(frame.header["EXPTIME"])
    ref = Table.read(sim_out / man["reference_catalog"], hdu=1)
    sky = Table.read(sim_out / man["sky_catalog"], hdu=1)
    xw, yw = np.asarray(cat["XWIN_IMAGE"], float) - 1, np.asarray(cat["YWIN_IMAGE"], float) - 1
    flags, imaf = np.asarray(cat["FLAGS"]), np.asarray(cat["IMAFLAGS_ISO"])
    good = ((flags & (4 | 8)) == 0) & ((imaf & (mb.UNUSABLE | mb.INTERPOLATED)) == 0) & ((flags & 2) == 0)
    # reference stars in the image, matched to their detections through the truth
    ids = np.asarray(obj["id"])
    rid = {int(t): j for j, t in enumerate(np.asarray(ref["truth_id"]))}
    osel = np.flatnonzero(truth["in_ref"] & truth["is_star"] & np.asarray(obj["in_image"], bool)
                          & ~np.asarray(obj["saturated"], bool))
    ok, di = _match(np.asarray(obj["x"], float)[osel], np.asarray(obj["y"], float)[osel], xw, yw, 1.0)
    osel, di = osel[ok], di[ok]
    _, first = np.unique(di, return_index=True)  # one truth object per detection
    osel, di = osel[first], di[first]
    rj = np.array([rid[int(i)] for i in ids[osel]])
    srow = {int(t): j for j, t in enumerate(np.asarray(sky["id"]))}
    sj = np.array([srow[int(i)] for i in ids[osel]])
    flux = np.asarray(cat["FLUX_APCOR"], float)
    ferr = np.asarray(cat["FLUXERR_APCOR"], float)
    tflux = flux.copy()
    tflux[di] = np.asarray(obj["flux_e"], float)[osel]
    cols = reference_columns(ref, filt)
    colour = cols["bp"] - cols["rp"]
    gpred, valid, rms = gaia_to_survey(cols["g"], colour, filt, system=cfg.zp_transform_system)
    survey = cfg.zp_reference == "survey" or (cfg.zp_reference == "auto" and cols["mag"] is not None)
    # same stars in every variant: those the pipeline's reference can use
    usable = np.isfinite(cols["mag"]) if survey else valid
    merr = np.full(len(ref), np.hypot(rms, 0.003) if np.isfinite(rms) else 0.02)

    def refcat_with(mags: np.ndarray) -> dict[str, np.ndarray]:
        return {"mag_" + filt: np.where(usable, mags, np.nan), "magerr_" + filt: merr, "bp": cols["bp"],
                "rp": cols["rp"], "g": cols["g"]}

    mnom = np.full(len(ref), np.nan)
    mreal = np.full(len(ref), np.nan)
    mnom[rj] = np.asarray(sky["magnom_" + filt], float)[sj]
    mreal[rj] = np.asarray(sky["mag_" + filt], float)[sj]
    common = dict(x=xw, y=yw, det_index=di, ref_index=rj, exptime=exptime, filter_name=filt,
                  shape=frame.mask.shape, good=good)
    scfg = dataclasses.replace(cfg, zp_reference="survey")
    pipe0 = calibrate_zero_point(flux, ferr, refcat=ref, config=cfg, **common)
    # the measured fluxes with their median bias over the stars used removed (what a fix of the flux bias gives)
    # (the median over the S/N > 100 stars used, as the flux figure of the validation; all stars used if none)
    d0 = pipe0.det_index
    hi = d0[flux[d0] / ferr[d0] > 100]
    d0 = hi if len(hi) else d0
    fixed = flux / np.median(flux[d0] / tflux[d0]) if len(d0) else flux
    res = {"pipe": pipe0, "pipe_fluxfixed": calibrate_zero_point(fixed, ferr, refcat=ref, config=cfg, **common),
           "tflux": calibrate_zero_point(tflux, ferr, refcat=ref, config=cfg, **common),
           "tflux_nom": calibrate_zero_point(tflux, ferr, refcat=refcat_with(mnom), config=scfg, **common),
           "tflux_real": calibrate_zero_point(tflux, ferr, refcat=refcat_with(mreal), config=scfg, **common)}
    zt = float(rec["zp_e"])
    used = res["pipe"].det_index
    uref = res["pipe"].ref_index
    ratio = flux[used] / tflux[used]
    c_used = colour[uref]
    dm = mreal[uref] - mnom[uref]
    k_true = float(np.polyfit(c_used, dm, 1)[0]) if len(used) > 2 else float("nan")
    out = {"zp_header": float(frame.zero_point_e_s) - zt if frame.zero_point_e_s is not None else None,
           **{k: v.zp_e - zt for k, v in res.items()},
           "n_stars": res["pipe"].n_stars, "zp_error": res["pipe"].error, "source": res["pipe"].source,
           "colour_used": [round(float(np.min(c_used)), 3), round(float(np.median(c_used)), 3),
                           round(float(np.max(c_used)), 3)] if len(used) else None,
           "flux_median_ratio_mag": float(2.5 * np.log10(np.median(ratio))) if len(used) else float("nan"),
           "k_pipe": res["pipe"].colour_term, "k_tflux": res["tflux"].colour_term,
           "k_tflux_nom": res["tflux_nom"].colour_term, "k_true": k_true,
           "colour_ref": res["pipe"].colour_ref}
    # the validation's truth: the zero point at the reference colour in the nominal system (frame_vs_truth)
    out["metric_offset"] = true_zero_point_at_colour(truth, res["pipe"].colour_ref)[1]
    out["metric"] = out["pipe"] - out["metric_offset"]
    # the frame's own ZP_E as the validation judges it (diff_mag of frame_vs_truth)
    out["header_metric"] = None if out["zp_header"] is None else out["zp_header"] - out["metric_offset"]
    out["rest_metric"] = out["tflux"] - out["metric_offset"]
    out["metric_fluxfixed"] = out["pipe_fluxfixed"] - out["metric_offset"]
    out["flux"] = out["pipe"] - out["tflux"]
    out["rest"] = out["tflux"]
    out["reference"] = out["tflux"] - out["tflux_nom"]
    out["passband"] = out["tflux_nom"]
    return out


def run(name: str, seed: int, work: Path, reuse: bool, config: Any = None) -> list[dict[str, Any]]:
    from upad.reduce.validation import night_vs_truth
    from upad.sim import SimConfig, simulate

    overrides, zp_goal = CONDITIONS[name]
    sim_out, root = work / "sim", work / "root"
    if not reuse:
        simulate("mini", seed=seed, out=sim_out, nights=1, tiles=1, filters=["rSDSS"],
                 config=SimConfig(**{**BASE, **overrides}))
        night_vs_truth(sim_out, root, zp_goal=zp_goal)
    rows = []
    for fname, frame, truth, man in _frames(sim_out, root):
        rows.append({"condition": name, "file": fname, "shift_aa": man.get("passband_shift_aa", {}),
                     **decompose_frame(frame, truth, sim_out, man, config=config)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", help="conditions whose name contains this text (repeatable)")
    ap.add_argument("--seed", type=int, default=21, help="first seed of the full grid (bench_conditions' default)")
    ap.add_argument("--keep", help="keep the simulated nights and their reductions under this folder")
    ap.add_argument("--reuse", help="decompose the nights kept under this folder again (no simulation, no reduction)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a PhotometryConfig option for the re-calibration (repeatable), e.g. zp_colour_ref=1.0")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    import upad  # noqa: F401
    from upad.reduce.photometry import PhotometryConfig

    types = {f.name: f.type for f in dataclasses.fields(PhotometryConfig)}
    over = {}
    for item in args.set:
        k, v = item.split("=", 1)
        over[k] = {"float": float, "int": int, "str": str}.get(str(types[k]), float)(v)
    cfg = PhotometryConfig(**over)
    names = list(CONDITIONS)
    chosen = [(k, n) for k, n in enumerate(names) if not args.only or any(o in n for o in args.only)]
    rows: list[dict[str, Any]] = []
    tmp = None if (args.keep or args.reuse) else tempfile.TemporaryDirectory()
    base = Path(args.reuse or args.keep or tmp.name)
    try:
        for k, name in chosen:
            rows += run(name, args.seed + k, base / f"c{k:02d}", bool(args.reuse), cfg)
    finally:
        if tmp is not None:
            tmp.cleanup()
    keys = ("zp_header", "header_metric", "pipe", "metric", "metric_fluxfixed", "flux", "flux_median_ratio_mag",
            "rest", "reference", "passband", "rest_metric", "tflux_real")
    print("| condition | frame | n | BP-RP min/med/max | " + " | ".join(keys)
          + " | k pipe / tflux / tflux_nom / true |")
    print("|---" * (len(keys) + 5) + "|")
    for r in rows:
        cu = "/".join(f"{v:.2f}" for v in r["colour_used"]) if r["colour_used"] else "–"
        print(f"| {r['condition'][:34]} | {r['file'][-12:]} | {r['n_stars']} | {cu} | "
              + " | ".join(f"{r[k]:+.4f}" if r[k] is not None else "–" for k in keys)
              + f" | {r['k_pipe']:+.4f} / {r['k_tflux']:+.4f} / {r['k_tflux_nom']:+.4f} / {r['k_true']:+.4f} |")
    for key in ("pipe", "metric", "metric_fluxfixed", "rest", "rest_metric"):
        print(f"max |{key}| = {max(abs(r[key]) for r in rows):.4f}, rms = "
              f"{np.sqrt(np.mean([r[key] ** 2 for r in rows])):.4f}")
    dk = [abs(r["k_pipe"] - r["k_true"]) for r in rows if r["k_pipe"] != 0]
    dkt = [abs(r["k_pipe"] - r["k_tflux"]) for r in rows if r["k_pipe"] != 0]
    if dk:
        print(f"colour term: max |k - k_true| = {max(dk):.4f} (rms {np.sqrt(np.mean(np.square(dk))):.4f}), "
              f"max |k - k with true fluxes| = {max(dkt):.4f} over {len(dk)} frames with a fitted colour term")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
