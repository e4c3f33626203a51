#!/usr/bin/env python
"""Benchmark the whole ``coadd`` step's worker (:func:`upad.coadd.pipeline.run_coadd`) on full-size reduced frames,
against SWarp on the same pixels.

The inputs are :mod:`bench_coadd`'s synthetic full-size T80Cam frames (same seed, same files: made there if
missing), written as the ``reduce`` step's products (:func:`upad.io.products.write_reduced`: ``SCI`` with the sky
of ``--sky`` e- added back, the bit mask, the inverse-variance ``WEIGHT`` and a ``BKGMESH`` background model of
``--mesh-px`` pixels; zero point ``MAGZP`` 25 for all, so that the coadd's flux scale is SWarp's). The worker runs as
the scheduler would run it — ``Coadd().run(task)`` in a fresh child process, with a :class:`upad.flow.step.Task`
whose inputs are these files — and does everything the step does: reads each reduced frame, subtracts its
background model, spills image, weight and mask to memory-mapped scratch files, scales them to the coadd's zero
point, resamples and combines block by block (LANCZOS3, CLIPPED), and writes the product (SCI, WEIGHT, EXPMAP,
NEXP, compressed MASK) and its PNG preview. Wall and CPU time and the peak resident memory (``ru_maxrss`` of the
child from ``wait4``: it counts the pages of the memory-mapped scratch files that the kernel keeps resident; the
child also samples its anonymous resident memory, ``RssAnon``) for each number of inputs.

SWarp (``COMBINE_TYPE=CLIPPED``, :func:`bench_coadd.swarp_cmd`, ``NTHREADS = --threads``) coadds the same frames
from :mod:`bench_coadd`'s single-image files (the same pixels without the sky: ``SUBTRACT_BACK = N``) onto the
same grid. The agreement of the two coadds is measured as in :mod:`bench_coadd` (aperture fluxes of isolated stars).

    python bench/bench_coadd_step.py --n 3,6,12 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_coadd as bc  # noqa: E402

ZP = 25.0


def write_reduced_frame(info: dict, i: int, out: Path, shape: tuple[int, int], sky: float, mesh_px: int) -> str:
    """Frame ``i`` of :mod:`bench_coadd` as a reduced-frame product (the sky added back, a flat background model)."""
    from types import SimpleNamespace

    from astropy.io import fits
    from astropy.wcs import WCS

    from upad import maskbits as mb
    from upad.io.products import write_reduced

    path = out / f"exp{i:02d}.reduced.fits"
    if path.exists():
        return str(path)
    with fits.open(info["image"]) as h:
        image = np.asarray(h[0].data, np.float32) + np.float32(sky)
        hdr = h[0].header
    with fits.open(info["weight"]) as h:
        weight = np.asarray(h[0].data, np.float32)
    mask = np.zeros(shape, mb.MASK_DTYPE)
    mask[weight == 0] = mb.BAD
    wcs = WCS(hdr)
    header = wcs.to_header(relax=True)
    header["MAGZP"] = (ZP, "AB zero point (1 e-)")
    header["EXPTIME"] = (float(hdr["EXPTIME"]), "s")
    header["GAIN"] = (float(hdr["GAIN"]), "e-/ADU")
    header["FWHM"] = (info["fwhm_px"] * 0.55, "arcsec")
    ny, nx = shape
    mesh = np.full((-(-ny // mesh_px), -(-nx // mesh_px)), sky, np.float32)
    frame = SimpleNamespace(image=image, mask=mask, weight=weight, header=header, wcs=wcs,
                            background=SimpleNamespace(mesh=mesh, mesh_px=mesh_px))
    tmp = path.with_suffix(".tmp.fits")
    write_reduced(tmp, frame, consume=True)
    tmp.rename(path)
    return str(path)


def run_step(paths: list[str], staging: str, gshape: tuple[int, int], block_rows: int) -> dict:
    """The worker on ``paths`` (in this process): what the scheduler's worker does with the coadd's task."""
    from upad.coadd.step import Coadd, CoaddConfig
    from upad.flow.step import ResolvedInput, Task

    inputs = tuple(ResolvedInput(kind="reduced_frame", id=i + 1, role="exposure", paths=(p,),
                                 meta={"file_roles": ["reduced"], "unit_key": Path(p).stem})
                   for i, p in enumerate(paths))
    context = {"instrument": "t80cam", "tile_id": 1, "tile_ra": bc.RA0, "tile_dec": bc.DEC0, "filter": "rSDSS",
               "grid": {"naxis1": gshape[1], "naxis2": gshape[0], "pixel_scale": 0.55}}
    # compile (or load numba's cache) on a tiny case first, outside the timing (as bench_coadd does)
    from upad.coadd.combine import InputExposure, iter_resampled_combined_blocks

    g0, s0 = bc.tile((64, 64))
    small = np.zeros((64, 64), np.float32)
    for _ in iter_resampled_combined_blocks([InputExposure(small, small + 1, None, bc.frame_wcs(0, (64, 64), "tan", 0))],
                                            dst_wcs=g0, dst_shape=s0, gains=[1.0]):
        pass
    task = Task(step="coadd", job_id=1, attempt_id=1, provenance_id="b" * 64, unit_key="t80cam/TILE-00001/rSDSS",
                context=context, config=CoaddConfig(block_rows=block_rows), inputs=inputs, root=staging,
                staging=staging)
    with bc.AnonSampler() as anon:
        t0 = time.perf_counter()
        c0 = time.process_time()
        out = Coadd().run(task)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "peak_anon_rss_mb": round(anon.peak, 1),
            "qc_status": out.qc_status,
            "files": [f.staged for f in out.files], "n_exposures": out.meta.get("n_exposures"),
            "rejected_pixels": out.meta.get("rejected_pixels"), "noise_correlation": out.meta.get("noise_correlation"),
            "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", "0")) or None}


def _split_product(product: str, out: Path) -> Path:
    """The product's SCI and WEIGHT as single-image files (``out``, ``out.weight``) for :func:`bench_coadd.agreement`."""
    from astropy.io import fits

    with fits.open(product, memmap=True) as h:
        fits.PrimaryHDU(h["SCI"].data, header=h["SCI"].header).writeto(out, overwrite=True)
        fits.PrimaryHDU(h["WEIGHT"].data, header=h["WEIGHT"].header).writeto(
            str(out).replace(".fits", ".weight.fits"), overwrite=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="3", help="numbers of exposures to coadd, comma-separated (e.g. 3,6,12)")
    ap.add_argument("--ny", type=int, default=9232)
    ap.add_argument("--nx", type=int, default=9216)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--sky", type=float, default=bc.SKY_E, help="sky level added back to the reduced frames (e-)")
    ap.add_argument("--mesh-px", type=int, default=256, help="background mesh of the reduced frames (px)")
    ap.add_argument("--threads", type=int, default=2, help="SWarp NTHREADS and NUMBA_NUM_THREADS")
    ap.add_argument("--block-rows", type=int, default=512, help="the step's block_rows")
    ap.add_argument("--aperture", type=float, default=10.0, help="aperture radius for the flux ratios (px)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/upad_bench_coadd"))
    ap.add_argument("--skip-swarp", action="store_true")
    ap.add_argument("--swarp-n", default="", help="run SWarp only for these numbers of exposures (comma-separated; "
                                                "default: all; bench_coadd.py measures SWarp's linearity)")
    ap.add_argument("--keep", action="store_true", help="keep the frames, reduced frames and coadds")
    ap.add_argument("--json", type=Path, help="write the results there")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--staging", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = (args.ny, args.nx)
    _, gshape = bc.tile(shape)
    if args.child:
        print(json.dumps(run_step(args.files, args.staging, gshape, args.block_rows)))
        return 0

    ns = sorted({int(v) for v in args.n.split(",")})
    swarp_n = {int(v) for v in args.swarp_n.split(",") if v.strip()}
    work = args.work / f"{shape[0]}x{shape[1]}_tan_s{args.seed}"
    red = work / "reduced"
    red.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": bc.machine_line(), "shape": list(shape), "seed": args.seed, "threads": args.threads,
                    "command": " ".join([sys.executable, *sys.argv]), "runs": []}
    print(result["machine"], flush=True)
    t0 = time.perf_counter()
    cat = bc.catalogue(shape, args.seed)
    infos = [bc.make_frame(i, work, shape, cat, "tan", args.seed) for i in range(max(ns))]
    reduced = [write_reduced_frame(info, i, red, shape, args.sky, args.mesh_px) for i, info in enumerate(infos)]
    print(f"{len(reduced)} reduced frames ready in {time.perf_counter() - t0:.0f} s", flush=True)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    grid, _ = bc.tile(shape)
    head = grid.to_header()
    head["NAXIS"], head["NAXIS1"], head["NAXIS2"] = 2, gshape[1], gshape[0]
    for n in ns:
        files = reduced[:n]
        plain = [info["image"] for info in infos[:n]]
        for f in files + plain + [p.replace(".fits", ".weight.fits") for p in plain]:
            with open(f, "rb") as fh:  # the page cache holds the inputs for both programs alike
                while fh.read(1 << 24):
                    pass
        staging = work / f"step_{n}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        run: dict = {"n": n, "load_average_before": round(os.getloadavg()[0], 2)}
        cmd = [sys.executable, __file__, "--child", "--staging", str(staging), "--block-rows", str(args.block_rows),
               "--ny", str(shape[0]), "--nx", str(shape[1]), *files]
        res, out, err = bc.timed_child(cmd, env)
        if res["rc"] != 0:
            raise SystemExit(f"the coadd step failed:\n{err[-3000:]}")
        run["step"] = {**json.loads(out.strip().splitlines()[-1]), **res}
        print(f"N = {n}  step:  {run['step']}", flush=True)
        if not args.skip_swarp and (not swarp_n or n in swarp_n):
            sw = work / f"swarp_step_{n}.fits"
            (work / f"swarp_step_{n}.head").write_text(head.tostring(sep="\n", endcard=True, padding=False) + "\n")
            res, out, err = bc.timed_child(bc.swarp_cmd(plain, sw, args.threads, work), env)
            if res["rc"] != 0:
                raise SystemExit(f"SWarp failed:\n{err[-3000:]}")
            run["swarp"] = res
            run["speedup_wall"] = round(res["wall_seconds"] / run["step"]["wall_seconds"], 2)
            print(f"N = {n}  swarp: {res}; SWarp / step wall time {run['speedup_wall']}x", flush=True)
            if n == ns[0]:
                ours = _split_product(next(f for f in run["step"]["files"] if f.endswith(".fits")),
                                      work / f"step_{n}_sci.fits")
                run["agreement"] = bc.agreement(ours, sw, cat, infos[:n], shape, args.aperture)
                print(f"N = {n}  agreement: {run['agreement']}", flush=True)
                for p in (ours, Path(str(ours).replace(".fits", ".weight.fits"))):
                    p.unlink(missing_ok=True)
            for p in (sw, Path(str(sw).replace(".fits", ".weight.fits"))):
                p.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        result["runs"].append(run)
    print()
    print(f"{'N':>3s} {'prog':>6s} {'wall (s)':>9s} {'CPU (s)':>8s} {'maxrss MB':>10s} {'anon MB':>8s} {'wall/N':>7s}")
    for run in result["runs"]:
        for prog in ("step", "swarp"):
            if prog in run:
                r = run[prog]
                print(f"{run['n']:>3d} {prog:>6s} {r['wall_seconds']:>9.1f} {r['cpu_seconds_child']:>8.1f} "
                      f"{r['maxrss_mb_child']:>10.0f} {r.get('peak_anon_rss_mb', float('nan')):>8.0f} "
                      f"{r['wall_seconds'] / run['n']:>7.1f}")
        if "speedup_wall" in run:
            print(f"    SWarp / step: wall {run['speedup_wall']}x")
    for prog in ("step", "swarp"):
        if len(result["runs"]) > 1 and all(prog in r for r in result["runs"]):
            per = [round(r[prog]["wall_seconds"] / r["n"], 2) for r in result["runs"]]
            result[f"{prog}_seconds_per_input"] = per
            print(f"{prog}: seconds per input {per}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(red, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
