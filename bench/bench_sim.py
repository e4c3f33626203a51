#!/usr/bin/env python
"""Benchmark the survey simulator.

(a) one full-size T80Cam science frame (9648 x 9340 readout layout): camera patterns, truth sky, drawing,
    noise, readout, RICE-compressed write and truth write, timed separately;
(b) a whole mini night (all calibrations + 24 science frames) through ``upad.sim.simulate``.

Prints wall-clock timings and the peak resident memory (``resource.getrusage``). Output goes to
``--out`` (default ``bench/out/sim``), which is removed first.

    python bench/bench_sim.py            # both
    python bench/bench_sim.py --only frame --filter zSDSS
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_frame(out: Path, seed: int, filt: str, compress: bool) -> dict:
    from upad.instruments import get_filter_system, get_instrument
    from upad.sim import rng as R
    from upad.sim.api import _file_names
    from upad.sim.config import SimConfig
    from upad.sim.detector import make_camera
    from upad.sim.headers import build_header
    from upad.sim.night import generate_frame, make_survey, plan_night
    from upad.sim.sky import make_sky_catalog
    from upad.sim.truth import write_frame_truth
    from upad.sim.writer import raw_hdulist, write_hdulist

    t: dict[str, float] = {}
    inst = get_instrument("t80cam")
    fs = get_filter_system("jplus")
    cfg = SimConfig(filters=(filt,), n_bias=0, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_dithers=1).resolved("t80cam")
    t0 = time.perf_counter()
    survey = make_survey(inst, fs, cfg, seed, "readout", "oaj", 1, 1)
    plan = plan_night(survey, 0, [0])
    spec = plan.exposures[0]
    w, h = survey.field_size_deg
    m = 4 * cfg.pointing_error_arcsec / 3600 + 0.02
    sky = make_sky_catalog(R.rng_for(seed, R.SKY), centre=survey.field_centre, half_size_deg=(w / 2 + m, h / 2 + m),
                           filters=fs, cfg=cfg, bright_star_centres=survey.tile_radec,
                           bright_star_radius_deg=0.3 * w / 2)
    t["plan + truth sky"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    camera = make_camera(inst, cfg, seed)
    camera.fringe(fs[filt])
    t["camera patterns (once per simulation)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame = generate_frame(survey, camera, sky, plan, spec, threads=os.cpu_count() or 1)
    t["draw + noise + readout"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    name = _file_names([plan], inst.file_prefix, compress)[(0, 0)]
    hdr = build_header(spec, instrument=inst, filters=fs, layout="readout", weather=plan.weather)
    path = write_hdulist(out / "raw" / name, raw_hdulist(frame.raw, hdr, compress=compress))
    t["raw write (RICE_1)" if compress else "raw write"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_frame_truth(out, f"truth/{name.split('.')[0]}.fits", frame, raw_rel=str(path))
    t["per-frame truth write"] = time.perf_counter() - t0
    rec = frame.record
    info = {"shape": frame.raw.shape, "objects drawn": rec["n_objects"], "sky catalog": len(sky),
            "file MB": round(path.stat().st_size / 1e6, 1), "cosmic events": rec["n_cosmic_events"],
            "bled pixels": rec["n_bled_pixels"], "fwhm": rec["fwhm_arcsec"]}
    return {"timings": t, "info": info}


def bench_night(out: Path, seed: int) -> dict:
    from upad.sim import simulate

    t0 = time.perf_counter()
    res = simulate("mini", seed=seed, out=out)
    return {"timings": {"mini night (simulate)": time.perf_counter() - t0}, "info": {"frames": res.counts()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["frame", "night"], help="run one benchmark only")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "sim")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--filter", default="rSDSS", help="filter of the T80Cam frame (zSDSS adds fringes)")
    ap.add_argument("--no-compress", action="store_true", help="write the T80Cam frame uncompressed")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    runs = []
    if args.only in (None, "frame"):
        t0 = time.perf_counter()
        r = bench_frame(args.out / "t80cam", args.seed, args.filter, not args.no_compress)
        r["timings"]["TOTAL one T80Cam frame"] = time.perf_counter() - t0
        runs.append(("(a) T80Cam science frame", r))
        print(f"peak RSS after (a): {rss_mb():.0f} MB")
    if args.only in (None, "night"):
        runs.append(("(b) mini night", bench_night(args.out / "mini", args.seed)))
    for title, r in runs:
        print(f"\n{title}")
        for k, v in r["timings"].items():
            print(f"  {k:40s} {v:7.2f} s")
        for k, v in r["info"].items():
            print(f"  {k:40s} {v}")
    print(f"\npeak RSS {rss_mb():.0f} MB (this process; worker processes of (b) not included)")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
