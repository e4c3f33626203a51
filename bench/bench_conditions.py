#!/usr/bin/env python
"""The daily pipeline's accuracy over a grid of observing conditions, on nights that upad's own models did not shape.

For every condition of the grid (seeing, PSF family, twilight-flat gradients, moonlight, the kind of reference
catalog) a mini-camera night is simulated with its own calibration frames (biases, darks, twilight flats), run through
the whole flow exactly as a user runs it — ingest, the calibration steps (the pipeline's own masters and instrument
signature), the reduction — and every reduced frame is judged against the simulator's truth
(:func:`upad.reduce.validation.night_vs_truth`). The table printed is the one kept in BENCHMARKS.md.

    python bench/bench_conditions.py                   # the whole grid (about 40 s per condition on 2 cores)
    python bench/bench_conditions.py --only kolmogorov  # conditions whose name contains a word
    python bench/bench_conditions.py --json out.json

Goals (issue "the real sky"): astrometric rms ≤ 0.05 px; zero point within 0.02 mag of the truth with a Gaia
G/BP/RP-only reference (0.01 with survey-filter magnitudes); S/N > 100 star fluxes within 0.5 % median and 1 % scatter
(pooled over the condition's frames); PSF FWHM within 3 %; cosmic rays ≥ 95 % flagged and < 10⁻⁴ of star-core pixels
flagged; trails ≥ 95 %.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the calibration plan of every night: biases, darks and twilight flats (no dome flats: the hard case)
BASE = dict(n_bias=5, n_dark=3, n_dome_flats=0, n_sky_flats=8, n_dithers=3, workers=2,
            seeing_night_sigma_dex=0.0, seeing_exposure_sigma=0.0, satellite_probability=0.5)


def seeing(arcsec: float) -> dict[str, Any]:
    """SimConfig fields that fix the night's seeing at ``arcsec`` (at the zenith, in r)."""
    return dict(seeing_median_arcsec=arcsec, seeing_range_arcsec=(min(0.5, arcsec), max(2.5, arcsec)))


#: name -> (SimConfig overrides, zero-point goal in mag)
CONDITIONS: dict[str, tuple[dict[str, Any], float]] = {
    "moffat beta=3, 0.6 arcsec": ({**seeing(0.6), "psf_beta": 3.0}, 0.01),
    "moffat beta=3, 0.8 arcsec": ({**seeing(0.8), "psf_beta": 3.0}, 0.01),
    "moffat beta=3, 1.2 arcsec": ({**seeing(1.2), "psf_beta": 3.0}, 0.01),
    "moffat beta=3, 2.0 arcsec": ({**seeing(2.0), "psf_beta": 3.0}, 0.01),
}


def run_condition(name: str, overrides: dict[str, Any], zp_goal: float, seed: int, work: Path) -> dict[str, Any]:
    from upad.reduce.validation import night_vs_truth
    from upad.sim import SimConfig, simulate

    out, root = work / "sim", work / "root"
    t0 = time.perf_counter()
    simulate("mini", seed=seed, out=out, nights=1, tiles=1, filters=["rSDSS"], config=SimConfig(**{**BASE, **overrides}))
    t1 = time.perf_counter()
    res = night_vs_truth(out, root, zp_goal=zp_goal)
    res.update(name=name, simulate_s=round(t1 - t0, 1), flow_s=round(time.perf_counter() - t1, 1))
    res["summary"] = summarise(res["frames"], zp_goal)
    return res


def summarise(frames: list[dict[str, Any]], zp_goal: float) -> dict[str, Any]:
    """The condition's row: the worst frame for each figure, the fluxes pooled over the frames."""
    figs = [f["figures"] for f in frames if "figures" in f]

    def worst(section: str, key: str, fn=max) -> float | None:
        vals = [g[section][key] for g in figs if section in g and key in g[section]]
        return fn(vals) if vals else None

    ratios = np.concatenate([np.asarray(g["flux"].get("ratios", []), float) for g in figs if "flux" in g] or [[]])
    med = float(np.median(ratios)) if ratios.size else float("nan")
    scat = float(1.4826 * np.median(np.abs(ratios - med))) if ratios.size else float("nan")
    zp = [abs(g["zero_point"]["diff_mag"]) for g in figs if "diff_mag" in g.get("zero_point", {})]
    psf = [g["psf"]["model_over_truth"] for g in figs if "model_over_truth" in g.get("psf", {})]
    return {
        "frames": len(frames), "reduced_ok": sum(f["qc"] in ("ok", "warn") for f in frames),
        "fwhm_arcsec": [f.get("fwhm_arcsec") for f in frames],
        "astrometry_rms_px_max": worst("astrometry", "rms_at_px"),
        "zp_abs_diff_max": max(zp) if len(zp) == len(figs) and zp else None, "zp_goal": zp_goal,
        "flux_n": int(ratios.size), "flux_median": med, "flux_scatter": scat,
        "psf_ratio_range": [min(psf), max(psf)] if psf else None,
        "cr_completeness_min": worst("cosmics", "completeness", min),
        "cr_false_core_max": worst("cosmics", "false_core_rate"),
        "trail_completeness_min": worst("trails", "completeness", min),
    }


def passes(s: dict[str, Any]) -> dict[str, bool]:
    from upad.reduce.validation import GOALS as G

    def ok(v, cond) -> bool:
        return v is not None and bool(cond(v))

    return {
        "reduced": s["reduced_ok"] == s["frames"],
        "astrometry": ok(s["astrometry_rms_px_max"], lambda v: v <= G["astrometry_rms_px"]),
        "zero point": ok(s["zp_abs_diff_max"], lambda v: v <= s["zp_goal"]),
        "flux": s["flux_n"] > 0 and abs(s["flux_median"] - 1) <= G["flux_median"]
        and s["flux_scatter"] <= G["flux_scatter"],
        "psf": ok(s["psf_ratio_range"], lambda v: max(abs(v[0] - 1), abs(v[1] - 1)) <= G["fwhm"]),
        "cosmics": ok(s["cr_completeness_min"], lambda v: v >= G["cr_completeness"])
        and ok(s["cr_false_core_max"], lambda v: v < G["cr_false_core"]),
        "trails": s["trail_completeness_min"] is None or s["trail_completeness_min"] >= G["sat_completeness"],
    }


def fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run the conditions whose name contains this text")
    ap.add_argument("--seed", type=int, default=21, help="first simulation seed (one per condition)")
    ap.add_argument("--json", help="write every figure to this file")
    args = ap.parse_args(argv)
    import upad  # noqa: F401  - configures astropy offline: nothing is downloaded at run time

    chosen = {k: v for k, v in CONDITIONS.items() if not args.only or args.only in k}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, (overrides, zp_goal)) in enumerate(chosen.items()):
            print(f"[{k + 1}/{len(chosen)}] {name} ...", flush=True)
            res = run_condition(name, overrides, zp_goal, args.seed + k, Path(tmp) / f"c{k}")
            for f in res["failed"]:
                print(f"   failed job {f['step']} {f['unit']}: {f['error']}")
            for f in res["frames"]:
                if f["qc"] not in ("ok", "warn"):
                    print(f"   {f['file']}: {f['qc']} {f['reasons']}")
            results.append(res)
    machine = f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n# accuracy over the grid of conditions ({machine}); worst frame per figure, fluxes pooled")
    print("| condition | true FWHM (″) | frames ok | astrometry rms (px) | |ΔZP| (mag) | flux median / scatter (n) "
          "| PSF FWHM / truth | CR found / false core | trails | all goals |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, p = r["summary"], passes(r["summary"])
        fw = [v for v in s["fwhm_arcsec"] if v is not None]
        fails = [k for k, v in p.items() if not v]
        print(f"| {r['name']} | {fmt(min(fw), '.2f') if fw else '–'}–{fmt(max(fw), '.2f') if fw else '–'} "
              f"| {s['reduced_ok']}/{s['frames']} | {fmt(s['astrometry_rms_px_max'], '.3f')} "
              f"| {fmt(s['zp_abs_diff_max'], '.4f')} (goal {s['zp_goal']}) "
              f"| {fmt(s['flux_median'], '.4f')} / {fmt(s['flux_scatter'], '.4f')} ({s['flux_n']}) "
              f"| {fmt(s['psf_ratio_range'][0], '.3f') if s['psf_ratio_range'] else '–'}–"
              f"{fmt(s['psf_ratio_range'][1], '.3f') if s['psf_ratio_range'] else '–'} "
              f"| {fmt(s['cr_completeness_min'], '.3f')} / {fmt(s['cr_false_core_max'], '.1e')} "
              f"| {fmt(s['trail_completeness_min'], '.3f')} | {'PASS' if not fails else 'FAIL: ' + ', '.join(fails)} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
