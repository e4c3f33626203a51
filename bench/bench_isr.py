#!/usr/bin/env python
"""Micro-benchmark of the instrument-signature removal (``upad.isr.run_isr``) on one full-size T80Cam frame.

A synthetic raw frame of the T80Cam ``readout`` layout (9648 x 9340 uint16, 16 amplifiers; bias ~1000 ADU with a
row drift per amplifier, sky ~3000 ADU, noise, a few saturated pixels) and its calibration maps (residual master
bias ~0 ADU, dark rate ~0.002 e-/s, flat ~1 with a few zero/NaN pixels, float32, assembled shape 9216 x 9232) are
built from a seeded random generator — no simulator, no files. The instrument file's gains and non-linearity
coefficients are used. Each engine runs in a fresh child process (the same frame rebuilt from the seed), so that its
peak RSS (``resource.getrusage(...).ru_maxrss``) is its own:

* ``numpy`` — ``run_isr(..., options=IsrOptions(engine='numpy'))``: the reference primitives one after the other
  (plus a per-step breakdown of one extra run);
* ``numba`` — ``IsrOptions(engine='numba')``: assembly and pixel arithmetic in one compiled pass. The first call
  is timed on its own (with an empty numba cache: JIT compilation; ``cache load``: a second process that finds the
  kernel in that cache), then ``--repeat`` warm calls;
* ``ccdproc`` — the closest ccdproc chain on ``CCDData``: per amplifier ``subtract_overscan`` (row-wise median of
  the overscan) + ``trim_image`` + ``gain_correct``, then ``subtract_bias`` (the master taken as electrons: the
  same work), ``subtract_dark`` (scaled by the exposure time) and ``flat_correct`` on the assembled frame; ccdproc
  has no non-linearity correction and no saturation mask.

Overscan: the ``'poly'`` default of ``IsrOptions`` for upad. Peak RSS includes the inputs (raw 172 MB + three maps
of 340 MB); the ``over inputs`` column is the growth of the process during the ISR calls. The numpy and numba
images are then compared in this process (``--no-check`` to skip).

    python bench/bench_isr.py
    python bench/bench_isr.py --repeat 5 --skip-ccdproc

Numbers depend on the machine's load: compare ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

EXPTIME = 60.0
BIAS_ADU = 1000
SKY_ADU = 3000.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_frame(seed: int) -> dict[str, Any]:
    """The synthetic raw frame and calibration maps (float32/uint16 throughout: no float64 full-size arrays)."""
    from upad.instruments import get_instrument

    inst = get_instrument("t80cam")
    layout = "readout"
    rng = np.random.default_rng(seed)
    raw = rng.integers(BIAS_ADU - 6, BIAS_ADU + 7, size=inst.raw_shape(layout), dtype=np.uint16)  # level + noise
    sections = inst.amp_sections(layout)
    for sec in sections:
        n = sec.data[0].stop - sec.data[0].start
        rows = np.arange(n)
        drift = np.rint(3.0 * sec.index / 16 + 4.0 * rows / n).astype(np.uint16)  # bias drift along the readout
        y0 = sec.data[0].start
        raw[y0:y0 + n, :] += drift[:, None] if not sec.read_flip_y else drift[::-1, None]
        block = raw[sec.data]
        block += np.uint16(SKY_ADU)
        block += rng.integers(0, 120, size=block.shape, dtype=np.uint16)  # sky noise
    ys = rng.integers(0, raw.shape[0], 2000)
    xs = rng.integers(0, raw.shape[1], 2000)
    raw[ys, xs] = 65535  # saturated pixels
    shape = inst.layout.active_shape
    def uniform(center: float, width: float) -> np.ndarray:  # float32 from the start: no float64 temporaries
        a = rng.random(shape, dtype=np.float32)
        a -= np.float32(0.5)
        a *= np.float32(width)
        a += np.float32(center)
        return a

    bias = uniform(0.0, 4.0)  # residual master bias, ADU (the overscan removes the level)
    dark = uniform(0.002, 0.001)  # e-/s
    flat = uniform(1.0, 0.06)
    flat[rng.integers(0, shape[0], 500), rng.integers(0, shape[1], 500)] = 0.0
    flat[rng.integers(0, shape[0], 100), rng.integers(0, shape[1], 100)] = np.nan
    return {"inst": inst, "layout": layout, "raw": raw, "bias": bias, "dark": dark, "flat": flat}


def run_upad(frame: dict[str, Any], engine: str) -> Any:
    from upad.isr import IsrOptions, run_isr

    return run_isr(frame["raw"], frame["inst"], layout=frame["layout"], options=IsrOptions(engine=engine),
                   bias=frame["bias"], dark=frame["dark"], exptime=EXPTIME, flat=frame["flat"])


def numpy_stages(frame: dict[str, Any]) -> dict[str, float]:
    """Per-step seconds of the numpy chain (one run)."""
    from upad import isr

    inst, layout = frame["inst"], frame["layout"]
    sections = inst.amp_sections(layout)
    amps = inst.detector(1).amplifiers
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    isr.saturation_mask(frame["raw"], sections, level=float(inst.adc_max))
    t["saturation mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image, _ = isr.assemble(frame["raw"], sections)
    t["overscan + assemble"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image -= frame["bias"]
    t["bias"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    isr.linearize(image, sections, [a.nonlinearity for a in amps])
    t["linearize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    isr.apply_gain(image, sections, [a.gain for a in amps])
    t["gain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    isr.subtract_dark(image, frame["dark"], EXPTIME)
    t["dark"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    isr.divide_flat(image, frame["flat"])
    t["flat"] = time.perf_counter() - t0
    return t


def run_ccdproc(frame: dict[str, Any]) -> None:
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    inst, raw = frame["inst"], frame["raw"]
    out = np.empty(inst.layout.active_shape, np.float32)
    for sec in inst.amp_sections(frame["layout"]):
        ccd = CCDData(raw[sec.data[0], :].astype(np.float32), unit="adu")
        ccd = ccdproc.subtract_overscan(ccd, overscan=ccd[:, sec.overscan_x[1]], overscan_axis=1, median=True,
                                        model=None)
        ccd = ccdproc.trim_image(ccd[:, sec.data[1]])
        ccd = ccdproc.gain_correct(ccd, sec.amplifier.gain * u.electron / u.adu)
        out[sec.active] = ccd.data
    img = CCDData(out, unit="electron")
    # the master bias is in ADU: ccdproc subtracts it before the gain; in electrons here (gain ~1, same work)
    img = ccdproc.subtract_bias(img, CCDData(frame["bias"], unit="electron"))
    img = ccdproc.subtract_dark(img, CCDData(frame["dark"], unit="electron"), dark_exposure=1.0 * u.s,
                                data_exposure=EXPTIME * u.s, exposure_unit=u.s, scale=True)
    ccdproc.flat_correct(img, CCDData(frame["flat"], unit=""), norm_value=1.0)


def worker(engine: str, seed: int, repeat: int) -> dict[str, Any]:
    """One engine in this (child) process; returns times and memory."""
    frame = build_frame(seed)
    res: dict[str, Any] = {"engine": engine}
    rss_inputs = current_rss_mb()
    times: list[float] = []
    if engine == "ccdproc":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeat):
                t0 = time.perf_counter()
                run_ccdproc(frame)
                times.append(time.perf_counter() - t0)
    else:
        if engine == "numba":
            import numba

            from upad.isr import core as isr

            res["threads"] = numba.get_num_threads()
            t0 = time.perf_counter()
            out = run_upad(frame, engine)
            res["first_call_s"] = time.perf_counter() - t0
            st = isr._fused_kernel.stats
            res["cache"] = "hit" if sum(st.cache_hits.values()) else "miss (compiled)"
            del out
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = run_upad(frame, engine)
            times.append(time.perf_counter() - t0)
            del out
        if engine == "numpy":
            res["stages"] = numpy_stages(frame)
    res["times_s"] = times
    res["peak_rss_mb"] = peak_rss_mb()
    res["rss_inputs_mb"] = rss_inputs
    return res


def spawn(engine: str, seed: int, repeat: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--seed", str(seed), "--repeat",
           str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"engine": engine, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(seed: int) -> str:
    """Compare the numba and numpy images of the frame in this process."""
    frame = build_frame(seed)
    a = run_upad(frame, "numpy").image
    b = run_upad(frame, "numba").image
    same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    good = ~np.isnan(a)
    diff = float(np.max(np.abs(a[good] - b[good]))) if good.any() else 0.0
    bitwise = bool(np.array_equal(a, b, equal_nan=True))
    return (f"numba vs numpy: bitwise equal {bitwise}, same NaN pixels {same_nan} ({int((~good).sum())}), "
            f"max |diff| {diff:.3g} e-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic frame")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per engine (after the numba warm-up)")
    ap.add_argument("--skip-ccdproc", action="store_true", help="do not run the ccdproc chain")
    ap.add_argument("--no-check", action="store_true", help="skip the numba-vs-numpy comparison")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--worker", choices=("numpy", "numba", "ccdproc"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed, max(1, args.repeat))))
        return 0

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} (other processes share the machine: times are upper bounds)")
    # the children first: a child's ru_maxrss starts from its parent's resident size at the fork
    results: dict[str, dict[str, Any]] = {}
    results["numpy"] = spawn("numpy", args.seed, args.repeat)
    with tempfile.TemporaryDirectory(prefix="upad-bench-isr-numba-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        results["numba"] = spawn("numba", args.seed, args.repeat, env)
        results["numba (cache load)"] = spawn("numba", args.seed, 1, env)
    if not args.skip_ccdproc:
        results["ccdproc"] = spawn("ccdproc", args.seed, 1)

    if not args.no_check:
        print(check(args.seed))

    def best(r: dict[str, Any]) -> float | None:
        return min(r["times_s"]) if "times_s" in r else None

    ref = best(results["numpy"])
    print(f"\nrun_isr on a synthetic T80Cam readout frame (9648 x 9340 uint16 -> 9216 x 9232 float32), "
          f"exptime {EXPTIME:.0f} s; best (median) of the timed calls; each engine in a fresh process")
    print(f"  {'engine':22s} {'best s':>8s} {'median s':>9s} {'numpy/this':>10s} {'peak RSS MB':>12s} "
          f"{'over inputs':>12s}")
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:22s} failed: {r['error']}")
            continue
        b = best(r)
        med = statistics.median(r["times_s"])
        ratio = f"{ref / b:10.2f}" if ref and b else f"{'':>10s}"
        print(f"  {name:22s} {b:8.3f} {med:9.3f} {ratio} {r['peak_rss_mb']:12.0f} "
              f"{r['peak_rss_mb'] - r['rss_inputs_mb']:12.0f}")
    nb, nbl = results.get("numba", {}), results.get("numba (cache load)", {})
    if "first_call_s" in nb and "times_s" in nb:
        warm = min(nb["times_s"])
        print(f"\n  numba first call {nb['first_call_s']:.2f} s (cache {nb['cache']}; JIT compilation "
              f"~{nb['first_call_s'] - warm:.2f} s), threads {nb.get('threads')}")
    if "first_call_s" in nbl and "times_s" in nb:
        print(f"  numba first call in a new process with the cache filled: {nbl['first_call_s']:.2f} s "
              f"(cache {nbl['cache']}; load ~{nbl['first_call_s'] - min(nb['times_s']):.2f} s)")
    if "stages" in results["numpy"]:
        st = results["numpy"]["stages"]
        print("  numpy steps (one run): " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()) + " s")
    if "ccdproc" in results and "times_s" in results["ccdproc"] and "times_s" in nb:
        print(f"  ccdproc / numba: {min(results['ccdproc']['times_s']) / min(nb['times_s']):.1f}x, "
              f"ccdproc / numpy: {min(results['ccdproc']['times_s']) / ref:.1f}x "
              "(ccdproc does no non-linearity correction)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
