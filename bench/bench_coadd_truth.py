#!/usr/bin/env python
"""The tile coadd against the simulator's truth on a full-size T80Cam pointing (issue 12 §3, the full-size part of
``tests/coadd/test_coadd_truth.py``, with the same measurements: :mod:`upad.coadd.validation`).

(0) **simulation (cached under ``--cache``)** — one T80Cam pointing, 3 dithers in each of ``--filters`` (default
    rSDSS and gSDSS: two coadds on one grid, for the registration across filters) in the simulator's default,
    independent world (:class:`upad.sim.SimConfig`: a drawn instrument signature with the photon-transfer pairs and
    the linearity series that measure it, mixed PSF families, distortion beyond SIP 3, a 1 % plate-scale error, stars
    moving since 2016.0, passbands shifted from the nominal ones, cosmic rays and satellite trails), with the seeing
    of each exposure drawn in 0.9–1.6″ (as the mini test: the coadd's PSF is then a genuine mix), 3 bias, 3 darks
    and 5 twilight flats per filter (no dome flats), and 24 bright stars (as ``bench_reduce.py --world independent``:
    the crosstalk is measured on the science frames' saturated stars).
(1) **the flow, untimed** — a data root and an SQLite database under ``<cache>/root-…``: the raw frames ingested
    (``link``), the simulation's reference catalog copied, then the scheduler runs the calibration steps and
    ``reduce`` with ``--workers`` local workers (a root that already holds the reduced frames is reused;
    ``--fresh-root`` rebuilds it).
(2) **the coadds, timed** — ``coadd`` with ONE local worker (a job at a time: its wall time and peak RSS, as the flow
    records them in the attempts table, are its own), then ``coadd_registration``. A re-run on a cached root rebuilds
    both (the steps' code versions get a ``+bench…`` suffix in this process, so that the units' provenance changes
    and the forced plan, what ``upad reprocess`` does, queues new jobs; the workers run the unchanged code).
(3) **accuracy** — each filter's coadd, its inputs' truth and the sky's truth, judged with
    :mod:`upad.coadd.validation` against :data:`~upad.coadd.validation.GOALS`: S/N > 100 star fluxes (median,
    robust scatter) against the survey-passband truth magnitudes (``magnom_``; the camera-passband ``mag_`` shown
    too), positions (rms against the truth moved to the mean epoch), the same stars' centroids in every filter (per
    star rms and the median offset) and the ``coadd_registration`` product's offsets, the largest coadd value on any
    injected cosmic-ray or trail pixel away from objects, blank 3″ aperture noise against the stated and against the
    inputs', and the coadd PSF FWHM against the truth-weighted combination of the inputs' true PSFs.

    python bench/bench_coadd_truth.py --instrument mini       # the same on a mini pointing (~3 min): a check
    python bench/bench_coadd_truth.py --json out.json         # full size: simulation, calibration and reduction
                                                              # the first time (~20 min on 2 cores), then the coadds
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_reduce import attempt_rows, fmt, load, machine, ok, open_root, print_failures  # noqa: E402

#: the steps run, untimed, before the coadds
PREP_STEPS = ["instrument_signature", "master_bias", "master_dark", "master_flat", "bad_pixel_mask", "master_fringe",
              "master_illumination", "reduce"]
#: the simulator's default (independent) world with fewer calibration frames and varied seeing between the dithers
SIM_CONFIG: dict[str, dict[str, Any]] = {
    "t80cam": dict(n_bias=3, n_dark=3, n_dome_flats=0, n_sky_flats=5, n_dithers=3, psf_seeing_draw_range=(0.9, 1.6),
                   bright_stars_per_tile=24),
    # the mini test's world (tests/coadd/test_coadd_truth.py): cosmic rays at several times the natural rate
    "mini": dict(n_dithers=3, psf_seeing_draw_range=(0.9, 1.6), cosmic_rate=15.0),
}


# ------------------------------------------------------------------------------------------------ (0), (1)
def simulate_pointing(cache: Path, instrument: str, seed: int, filters: list[str]) -> Path:
    from upad.sim import SimConfig, simulate

    out = cache / f"{instrument}-{'-'.join(filters)}-seed{seed}"
    if (out / "truth" / "manifest.json").exists():
        print(f"simulation: cached {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = simulate(instrument=instrument, seed=seed, out=out, nights=1, tiles=1, filters=filters,
                   config=SimConfig(**SIM_CONFIG[instrument]))
    print(f"simulation: {res.counts()} in {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def run_steps(db: Any, settings: Any, steps: list[str], workers: int, *, force: bool = False) -> dict[str, Any]:
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions

    ex = LocalExecutor(workers)
    try:
        sched = Scheduler(db, settings, ex, command="bench_coadd_truth",
                          options=SchedulerOptions(steps=steps, poll_seconds=0.05, min_replan_seconds=0.0))
        t0 = time.perf_counter()
        sched.plan(force_steps=steps if force else ())
        counts = sched.run(until_idle=True)
    finally:
        ex.close()
    return {"scheduler_wall_s": time.perf_counter() - t0, "counts": counts}


def setup_root(sim: Path, root: Path, workers: int, fresh: bool) -> tuple[Any, Any, dict[str, Any]]:
    """The data root with the raw frames ingested, calibrated and reduced (cached)."""
    from upad.ingest.service import ingest_paths

    marker = root / "bench-reduced.json"
    if not fresh and marker.exists() and json.loads(marker.read_text()).get("sim") == str(sim):
        settings, db = open_root(root)
        info = json.loads(marker.read_text())
        print(f"data root: reusing {root} (calibrated and reduced in {info['prep_s']:.0f} s; --fresh-root rebuilds)")
        return settings, db, info
    shutil.rmtree(root, ignore_errors=True)
    settings, db = open_root(root)
    t0 = time.perf_counter()
    rep = ingest_paths(db, settings, [sim / "raw"], mode="link")
    t_ingest = time.perf_counter() - t0
    shutil.copy2(sim / "reference" / "refcat.fits", settings.path("reference", "refcat.fits"))
    print(f"data root {root}: ingest {rep.counts} in {t_ingest:.1f} s; {', '.join(PREP_STEPS)} with {workers} "
          f"worker(s) ({load()}) ...", flush=True)
    res = run_steps(db, settings, PREP_STEPS, workers)
    rows = [r for st in PREP_STEPS for r in attempt_rows(db, st)]
    for r in rows:
        print(f"  {r['step']:20s} {r['unit']:45s} job {r['job']:3d} {r['state']:9s} {r['wall_s'] or 0:7.1f} s "
              f"{r['peak_rss_mb'] or 0:6.0f} MB")
    if print_failures(rows) or any(r["job_state"] != "done" for r in rows):
        raise SystemExit("the calibration or reduction failed: see above")
    info = {"sim": str(sim), "ingest_s": t_ingest, "prep_s": res["scheduler_wall_s"],
            "jobs": [{k: r[k] for k in ("step", "unit", "wall_s", "peak_rss_mb")} for r in rows]}
    print(f"  calibration + reduction: {res['scheduler_wall_s']:.0f} s (untimed)")
    marker.write_text(json.dumps(info, indent=1))
    return settings, db, info


# ------------------------------------------------------------------------------------------------ (2)
def run_coadds(db: Any, settings: Any, *, reuse: bool = False) -> dict[str, Any]:
    """``coadd`` with one worker, then ``coadd_registration``; a rebuild when they were run before, unless ``reuse``
    (then the figures of the jobs that made the current ones)."""
    from sqlalchemy import func, select

    from upad.db.models import Job

    with db.session() as s:
        last = s.scalar(select(func.max(Job.id))) or 0
        done_before = bool(s.scalar(select(func.count()).select_from(Job).where(Job.step == "coadd")))
        if reuse and done_before:  # the jobs that made the current products
            last = (s.scalar(select(func.min(Job.id)).where(Job.step == "coadd", Job.id > s.scalar(
                select(func.max(Job.id)).where(Job.step.in_(PREP_STEPS))))) or 1) - 1
    from upad.flow.step import get_step

    out: dict[str, Any] = {}
    token = f"{time.time():.0f}"
    for step in ("coadd", "coadd_registration"):
        if done_before and not reuse:  # a new code version: a new provenance, so that the forced plan rebuilds (upad reprocess)
            cls = type(get_step(step))
            cls.version = f"{cls.version}+bench{token}"
        if reuse and done_before:
            res = {"scheduler_wall_s": float("nan"), "counts": "reused"}
            print(f"\n{step}: reusing the current products (--reuse-coadds)")
        else:
            print(f"\n{step} ({load()}) ...", flush=True)
            res = run_steps(db, settings, [step], 1, force=done_before)
        rows = attempt_rows(db, step, after_job=last)
        for r in rows:
            print(f"  {r['unit']:40s} job {r['job']:3d} {r['state']:9s} wall {r['wall_s'] or 0:7.1f} s, peak RSS "
                  f"{r['peak_rss_mb'] or 0:6.0f} MB")
        if print_failures(rows) or not rows:
            raise SystemExit(f"{step} failed or planned nothing: {res['counts']}")
        out[step] = {"scheduler_wall_s": res["scheduler_wall_s"],
                     "jobs": [{k: r[k] for k in ("unit", "job", "product", "wall_s", "peak_rss_mb")} for r in rows]}
    return out


# ------------------------------------------------------------------------------------------------ (3)
def current_products(db: Any, settings: Any) -> tuple[dict[str, Any], dict[str, dict[str, str]], Any]:
    """The current coadds by filter (files, meta, QC), the reduced frames' files by raw file name, and the
    registration product's table."""
    from astropy.table import Table
    from sqlalchemy import select

    from upad.db.models import Frame, Product

    with db.session() as s:
        coadds = {p.context["filter"]: {"files": {f["role"]: settings.root / f["path"] for f in p.files},
                                        "meta": dict(p.meta), "qc": p.qc_status, "tile_id": p.context.get("tile_id"),
                                        "id": p.id}
                  for p in s.scalars(select(Product).where(Product.step == "coadd", Product.is_current.is_(True)))}
        red = {r.context.get("frame_id"): {f["role"]: str(settings.root / f["path"]) for f in r.files}
               for r in s.scalars(select(Product).where(Product.step == "reduce", Product.is_current.is_(True)))}
        names = dict(s.execute(select(Frame.filename, Frame.id)).all())
        reg = s.scalars(select(Product).where(Product.step == "coadd_registration",
                                              Product.is_current.is_(True))).one_or_none()
        reg_path = settings.root / next(f["path"] for f in reg.files if f["role"] == "registration") if reg else None
        reg_qc = reg.qc_status if reg else None
    reduced = {n: red[i] for n, i in names.items() if i in red}
    table = Table.read(reg_path, hdu="REGISTRATION") if reg_path else None
    return coadds, reduced, (table, reg_qc)


def judge(sim: Path, instrument: str, coadds: dict[str, Any], reduced: dict[str, dict[str, str]]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every figure of every coadd (one in memory at a time) and the centroids for the registration."""
    from upad.coadd import validation as v
    from upad.instruments import get_instrument

    scale = get_instrument(instrument).pixel_scale
    figures: dict[str, Any] = {}
    centroids: dict[str, Any] = {}
    for filt, p in sorted(coadds.items()):
        t0 = time.perf_counter()
        c = v.load_coadd_truth(p["files"], sim, reduced, filter=filt, pixel_scale_arcsec=scale,
                               meta=p["meta"], qc_status=p["qc"])
        f: dict[str, Any] = {"n_inputs": len(c.inputs), "qc": c.qc_status, "shape": list(c.sci.shape),
                             "magzp": c.zero_point, "noisecor": float(c.header["NOISECOR"]),
                             "psffwhm_arcsec": float(c.header["PSFFWHM"]),
                             "inputs_fwhm_arcsec": [round(i.fwhm_arcsec, 3) for i in c.inputs],
                             "n_cosmic_pixels": sum(len(i.truth.get("COSMICS", [])) for i in c.inputs),
                             "n_trails": sum("SATELLITE" in i.truth for i in c.inputs)}
        print(f"\n{filt}: coadd {c.sci.shape[1]} x {c.sci.shape[0]}, {len(c.inputs)} inputs (seeing "
              f"{f['inputs_fwhm_arcsec']}\"), QC {c.qc_status}, loaded in {time.perf_counter() - t0:.0f} s", flush=True)
        for column in (f"magnom_{filt}", f"mag_{filt}"):
            r = v.flux_figures(c, column)
            r.pop("ratio")
            f["flux_" + column.split("_")[0]] = r
        r = v.flux_figures(c, f"magnom_{filt}", method="psf_model")
        r.pop("ratio")
        f["flux_magnom_psf_model"] = r
        f["flux_conservation"] = v.flux_conservation_figures(c)
        f["positions"] = v.position_figures(c)
        centroids[filt] = v.star_centroids(c)
        t1 = time.perf_counter()
        f["artefacts"] = v.artefact_figures(c)
        f["artefacts"]["seconds"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        f["noise"] = v.noise_figures(c)
        f["noise"]["seconds"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        f["psf"] = v.psf_figures(c)
        f["psf"]["seconds"] = time.perf_counter() - t1
        f["judge_s"] = time.perf_counter() - t0
        figures[filt] = f
        print_filter(filt, f)
        del c
    return figures, centroids


def print_filter(filt: str, f: dict[str, Any]) -> None:
    from upad.coadd.validation import GOALS as G

    fl, fc, pos, art, noi, psf = (f["flux_magnom"], f["flux_mag"], f["positions"], f["artefacts"], f["noise"],
                                  f["psf"])
    print(f"  star fluxes vs magnom_{filt} ({fl['n']} isolated S/N>100 stars): median {fl['median']:.4f} "
          f"[{ok(abs(fl['median'] - 1) <= G['flux_median'])} |·-1| <= {G['flux_median']}], scatter "
          f"{fl['scatter']:.4f} [{ok(fl['scatter'] <= G['flux_scatter'])} <= {G['flux_scatter']}]")
    print(f"  (FLUX_APCOR: the {fl['aperture_arcsec']:.1f}\" aperture times the coadd's measured aperture correction "
          f"1/{fl['enclosed_fraction']:.4f}; corrected with the PSF model's enclosed fraction instead: median "
          f"{f['flux_magnom_psf_model']['median']:.4f}, scatter {f['flux_magnom_psf_model']['scatter']:.4f})")
    print(f"  star fluxes vs mag_{filt} (camera passband, not the goal's): median {fc['median']:.4f}, scatter "
          f"{fc['scatter']:.4f}")
    fcons = f["flux_conservation"]
    print(f"  diagnostic, the same 3-FWHM aperture less annulus on the coadd and on the inputs (weighted): coadd / "
          f"inputs median {fcons['median']:.4f}, scatter {fcons['scatter']:.4f}; without aperture correction, coadd "
          f"/ truth {fcons['coadd_vs_truth_raw']:.4f}, each input / truth "
          f"{', '.join(f'{q:.4f}' for q in fcons['inputs_vs_truth'])}; coadd PSF model's share of the aperture "
          f"{f['flux_magnom_psf_model'].get('enclosed_fraction', float('nan')):.4f}; {fcons['n_core_rejected']} of {fcons['n']} stars with an "
          f"input rejected at the centre (NEXP)")
    print(f"  positions ({pos['n']} stars, epoch {pos['epoch']:.3f}): {pos['rms_arcsec']:.4f}\" rms "
          f"[{ok(pos['rms_arcsec'] <= G['position_rms_arcsec'])} <= {G['position_rms_arcsec']}\"]; per axis "
          f"{pos['rms_ra_arcsec']:.4f}\", {pos['rms_dec_arcsec']:.4f}\"; mean {pos['mean_ra_arcsec']:+.4f}\", "
          f"{pos['mean_dec_arcsec']:+.4f}\"")
    worst = max(art["worst"].values()) if art["worst"] else float("nan")
    print(f"  artefact pixels away from objects {art['counted']}: worst 3x3 maximum {art['worst']} sigma "
          f"[{ok(worst < G['artefact_sigma'])} < {G['artefact_sigma']}]; the same statistic at as many random sky pixels "
          f"{art.get('worst_random', float('nan')):.2f} sigma ({art['seconds']:.0f} s)")
    print(f"  blank 3\" apertures ({noi['n']}): scatter {noi['measured']:.2f}; vs stated {noi['vs_stated']:+.2%} "
          f"[{ok(abs(noi['vs_stated']) <= G['noise'])}], vs the inputs' {noi['vs_expected']:+.2%} "
          f"[{ok(abs(noi['vs_expected']) <= G['noise'])} within {G['noise']:.0%}] ({noi['seconds']:.0f} s)")
    print(f"  PSF FWHM / truth-weighted combination of the inputs' PSFs convolved with the {psf['kernel']} kernel "
          f"({psf['n']} positions): median {psf['resampled_median_ratio']:.4f} "
          f"[{ok(abs(psf['resampled_median_ratio'] - 1) <= G['psf_fwhm'])} within {G['psf_fwhm']:.0%}], range "
          f"{psf['resampled_min_ratio']:.4f}-{psf['resampled_max_ratio']:.4f}; truth "
          f"{psf['resampled_truth_arcsec']:.3f}\", PSFFWHM {psf['psffwhm_arcsec']:.3f}\" ({psf['seconds']:.0f} s)")
    print(f"  PSF FWHM / combination of the inputs' PSFs alone: median {psf['median_ratio']:.4f} "
          f"[{ok(abs(psf['median_ratio'] - 1) <= G['psf_fwhm'])} within {G['psf_fwhm']:.0%}] (the kernel broadens "
          f"the truth by {psf['kernel_broadening']:.4f})")


def goals_met(figures: dict[str, Any], registration: dict[str, Any]) -> dict[str, bool]:
    from upad.coadd.validation import GOALS as G

    out = {}
    for filt, f in figures.items():
        out[f"{filt}:flux_median"] = abs(f["flux_magnom"]["median"] - 1) <= G["flux_median"]
        out[f"{filt}:flux_scatter"] = f["flux_magnom"]["scatter"] <= G["flux_scatter"]
        out[f"{filt}:positions"] = f["positions"]["rms_arcsec"] <= G["position_rms_arcsec"]
        out[f"{filt}:artefacts"] = bool(f["artefacts"]["worst"]) and \
            max(f["artefacts"]["worst"].values()) < G["artefact_sigma"]
        out[f"{filt}:noise_vs_stated"] = abs(f["noise"]["vs_stated"]) <= G["noise"]
        out[f"{filt}:noise_vs_inputs"] = abs(f["noise"]["vs_expected"]) <= G["noise"]
        out[f"{filt}:psf_fwhm"] = abs(f["psf"]["resampled_median_ratio"] - 1) <= G["psf_fwhm"]
        out[f"{filt}:psf_fwhm_inputs_alone"] = abs(f["psf"]["median_ratio"] - 1) <= G["psf_fwhm"]
    for filt, r in registration.get("centroids", {}).items():
        out[f"{filt}:registration_median"] = r.get("median_offset_px", math.inf) <= G["registration_px"]
        out[f"{filt}:registration_rms"] = r.get("rms_px", math.inf) <= G["registration_px"]
    for row in registration.get("product", []):
        out[f"{row['filter']}:registration_product"] = math.hypot(row["dx_px"], row["dy_px"]) <= G["registration_px"]
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instrument", choices=sorted(SIM_CONFIG), default="t80cam",
                    help="the simulated camera (default: %(default)s; mini: a quick check of the benchmark)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "upad-bench-coadd-truth",
                    help="simulation and data root cache (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="simulation seed (default: %(default)s)")
    ap.add_argument("--filters", default="rSDSS,gSDSS",
                    help="comma-separated filters, the first the registration's reference (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="local workers for calibration and reduction (the "
                    "coadds run with one; default: %(default)s)")
    ap.add_argument("--fresh-root", action="store_true", help="rebuild the data root (ingest, calibration, reduce)")
    ap.add_argument("--reuse-coadds", action="store_true", help="judge the current coadds of a cached root (their "
                    "jobs' figures from the attempts table) instead of rebuilding them")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    filters = [f.strip() for f in args.filters.split(",") if f.strip()]

    import subprocess

    from upad.coadd.validation import GOALS, cross_filter_figures

    info: dict[str, Any] = {"machine": machine(), "instrument": args.instrument, "seed": args.seed,
                            "filters": filters, "goals": GOALS, "command": " ".join(sys.argv),
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                        text=True).stdout.strip()
    except OSError:
        pass
    print(f"machine: {fmt(info['machine'])}")
    args.cache.mkdir(parents=True, exist_ok=True)
    sim = simulate_pointing(args.cache, args.instrument, args.seed, filters)
    root = args.cache / f"root-{sim.name}"
    settings, db, prep = setup_root(sim, root, args.workers, args.fresh_root)
    info["prep"] = prep
    info["coadd_jobs"] = run_coadds(db, settings, reuse=args.reuse_coadds)
    coadds, reduced, (reg_table, reg_qc) = current_products(db, settings)
    missing = [f for f in filters if f not in coadds]
    if missing:
        raise SystemExit(f"no coadd of {missing}")
    figures, centroids = judge(sim, args.instrument, coadds, reduced)
    registration: dict[str, Any] = {"reference": filters[0]}
    if len(filters) > 1:
        registration["centroids"] = cross_filter_figures(centroids, reference=filters[0])
        print("\nregistration across filters (the same isolated S/N>100 truth stars' windowed centroids):")
        for filt, r in registration["centroids"].items():
            if r.get("n"):
                print(f"  {filt} vs {filters[0]}: {r['n']} stars, per-star rms {r['rms_px']:.4f} px, median offset "
                      f"{r['median_dx_px']:+.4f} {r['median_dy_px']:+.4f} px = {r['median_offset_px']:.4f} px "
                      f"(±{r['offset_err_px']:.4f}) [{ok(r['median_offset_px'] <= GOALS['registration_px'])} "
                      f"<= {GOALS['registration_px']} px]")
        if reg_table is not None:
            registration["product"] = [{k: (v.item() if hasattr(v, "item") else str(v)) for k, v in zip(
                reg_table.colnames, row)} for row in reg_table]
            registration["product_qc"] = reg_qc
            registration["product_reference"] = reg_table.meta.get("REFFILT")
            for row in registration["product"]:
                off = math.hypot(row["dx_px"], row["dy_px"])
                print(f"  coadd_registration product: {row['filter']} vs {registration['product_reference']} "
                      f"{row['dx_px']:+.4f} {row['dy_px']:+.4f} px = {off:.4f} px (±{row['dx_err_px']:.4f}), "
                      f"{row['n_stars']} stars, rms {row['rms_px']:.3f} px, QC {reg_qc} "
                      f"[{ok(off <= GOALS['registration_px'])}]")
    info["figures"], info["registration"] = figures, registration
    info["goals_met"] = goals_met(figures, registration)
    jobs = info["coadd_jobs"]["coadd"]["jobs"] + info["coadd_jobs"]["coadd_registration"]["jobs"]
    print("\njobs (attempts table): " + "; ".join(f"{j['unit']} {j['wall_s']:.1f} s {j['peak_rss_mb']:.0f} MB"
                                                  for j in jobs))
    failed = [k for k, v in info["goals_met"].items() if not v]
    print(f"goals: {sum(info['goals_met'].values())}/{len(info['goals_met'])} met"
          + (f"; missed: {', '.join(failed)}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps(info, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        print(f"figures written to {args.json}")
    db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
