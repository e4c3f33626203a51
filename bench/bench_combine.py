#!/usr/bin/env python
"""Benchmark the block-wise sigma-clipped combination against ``ccdproc.combine``, side by side.

Writes ``--frames`` uncompressed float32 FITS frames of ``--ny`` x ``--nx`` pixels (default: 20 full T80Cam frames,
9232 x 9216, 6.8 GB on disk; bias-like noise plus a few cosmic rays), reads them once to warm the page cache, then
combines them in a fresh child process each (so that the peak resident memory, VmHWM, is the combination's own):

``upad``     :func:`upad.calib.combine.combine_stack` reading row strips of the files (``RowReader``: positioned
             reads, nothing memory-mapped), with the same rejection as ccdproc (one pass, 3 sigma around the
             median, standard deviation of the values) and, separately, upad's default (iterated up to 5 passes);
``ccdproc``  ``ccdproc.combine(files, method='average', sigma_clip=True, sigma_clip_low_thresh=3,
             sigma_clip_high_thresh=3, sigma_clip_func='median', sigma_clip_dev_func='std', mem_limit=...)``.

Both outputs are compared on every pixel (max |difference|). Prints a table and a JSON line; the frames are
removed afterwards unless ``--keep``.

    python bench/bench_combine.py                               # the full-size figure (several minutes)
    python bench/bench_combine.py --frames 8 --ny 2048 --nx 2048   # quick
    python bench/bench_combine.py --skip-ccdproc                # upad only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ child runs
def run_upad(files: list[str], out: str, max_iters: int, memory_mb: float) -> dict:
    import numpy as np

    from upad.calib.combine import combine_stack
    from upad.calib.rows import RowReader

    t0 = time.perf_counter()
    readers = [RowReader.from_fits(f) for f in files]
    res = combine_stack(readers, method="mean", center="median", dev="std", sigma_low=3.0, sigma_high=3.0,
                        max_iters=max_iters, memory_mb=memory_mb)
    t_comb = time.perf_counter() - t0
    np.save(out, res.image)
    return {"seconds": round(t_comb, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "engine": res.stats["engine"],
            "blocks": res.stats["blocks"], "block_rows": res.stats["block_rows"],
            "rejected_fraction": res.stats["rejected_fraction"]}


def run_ccdproc(files: list[str], out: str, mem_limit: float) -> dict:
    import warnings

    import ccdproc
    import numpy as np

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    ccd = ccdproc.combine(files, method="average", sigma_clip=True, sigma_clip_low_thresh=3,
                          sigma_clip_high_thresh=3, sigma_clip_func="median", sigma_clip_dev_func="std",
                          mem_limit=mem_limit, unit="adu", dtype=np.float32)
    t_comb = time.perf_counter() - t0
    np.save(out, np.asarray(ccd.data, np.float32))
    return {"seconds": round(t_comb, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "mem_limit": mem_limit}


# ------------------------------------------------------------------------------------------------ driver
def make_frames(work: Path, n: int, ny: int, nx: int, seed: int) -> list[Path]:
    import numpy as np
    from astropy.io import fits

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    rows = 512
    for i in range(n):
        p = work / f"frame{i:02d}.fits"
        paths.append(p)
        if p.exists() and p.stat().st_size >= ny * nx * 4:
            continue
        hdr = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": nx, "NAXIS2": ny, "EXTEND": True})
        hdr.tofile(p, overwrite=True)
        with open(p, "ab") as fh:  # stream the data in row strips: no full frame in memory
            for r0 in range(0, ny, rows):
                r1 = min(ny, r0 + rows)
                block = (1000.0 + 4.0 * rng.standard_normal((r1 - r0, nx))).astype(">f4")
                hits = rng.integers(0, block.size, max(1, block.size // 20000))
                block.ravel()[hits] += 3000.0  # cosmic rays
                fh.write(block.tobytes())
            pad = (-(ny * nx * 4)) % 2880
            fh.write(b"\0" * pad)
    return paths


def warm(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - t0


def child(mode: str, files: list[Path], out: Path, args: argparse.Namespace, max_iters: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--out", str(out), "--max-iters", str(max_iters),
           "--memory-mb", str(args.memory_mb), "--ccdproc-mem-limit", str(args.ccdproc_mem_limit),
           *map(str, files)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_seconds_incl_startup"] = round(time.perf_counter() - t0, 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--ny", type=int, default=9232)
    ap.add_argument("--nx", type=int, default=9216)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=HERE / "out" / "combine")
    ap.add_argument("--memory-mb", type=float, default=512.0, help="upad strip buffers (MB)")
    ap.add_argument("--ccdproc-mem-limit", type=float, default=4e9,
                    help="ccdproc mem_limit in bytes (its default 16e9 is unsafe on a 24 GB machine)")
    ap.add_argument("--skip-ccdproc", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the frames for another run")
    ap.add_argument("--child", choices=["upad", "ccdproc"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--max-iters", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "upad":
        print(json.dumps(run_upad(args.files, args.out, args.max_iters, args.memory_mb)))
        return 0
    if args.child == "ccdproc":
        print(json.dumps(run_ccdproc(args.files, args.out, args.ccdproc_mem_limit)))
        return 0

    import numpy as np

    work = args.work / f"{args.frames}x{args.ny}x{args.nx}"
    t0 = time.perf_counter()
    files = make_frames(work, args.frames, args.ny, args.nx, args.seed)
    t_make = time.perf_counter() - t0
    t_warm = warm(files)
    size_gb = args.frames * args.ny * args.nx * 4 / 1e9
    print(f"{args.frames} frames of {args.ny} x {args.nx} float32 ({size_gb:.1f} GB): written in {t_make:.0f} s, "
          f"read once in {t_warm:.1f} s (page cache warm)", flush=True)
    result = {"frames": args.frames, "ny": args.ny, "nx": args.nx, "input_gb": round(size_gb, 2),
              "cpus": len(os.sched_getaffinity(0))}
    result["upad"] = child("upad", files, work / "upad.npy", args, max_iters=1)
    print(f"upad (1 pass, as ccdproc): {result['upad']}", flush=True)
    result["upad_default_5_iters"] = child("upad", files, work / "upad5.npy", args, max_iters=5)
    print(f"upad (up to 5 passes):     {result['upad_default_5_iters']}", flush=True)
    if not args.skip_ccdproc:
        result["ccdproc"] = child("ccdproc", files, work / "ccdproc.npy", args)
        print(f"ccdproc:                   {result['ccdproc']}", flush=True)
        a = np.load(work / "upad.npy", mmap_mode="r")
        b = np.load(work / "ccdproc.npy", mmap_mode="r")
        diff = 0.0
        for r0 in range(0, args.ny, 512):
            diff = max(diff, float(np.nanmax(np.abs(a[r0:r0 + 512] - b[r0:r0 + 512]))))
        result["max_abs_difference"] = diff
        result["speedup"] = round(result["ccdproc"]["seconds"] / result["upad"]["seconds"], 2)
        result["rss_ratio"] = round(result["ccdproc"]["peak_rss_mb"] / result["upad"]["peak_rss_mb"], 2)
    print()
    print(f"{'':28s}{'time (s)':>10s}{'peak RSS (MB)':>16s}")
    for key, label in (("upad", "upad, 1 pass"), ("upad_default_5_iters", "upad, up to 5 passes"),
                       ("ccdproc", "ccdproc.combine")):
        if key in result:
            print(f"{label:28s}{result[key]['seconds']:>10.1f}{result[key]['peak_rss_mb']:>16.0f}")
    if "speedup" in result:
        print(f"ccdproc / upad time: {result['speedup']}x; peak memory ratio {result['rss_ratio']}x; "
              f"max |difference| {result['max_abs_difference']:.2e} ADU")
    print(json.dumps(result))
    for name in ("upad.npy", "upad5.npy", "ccdproc.npy"):
        (work / name).unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
