#!/usr/bin/env python
"""Benchmark the streamed tile coadd (resample + CLIPPED combine) against SWarp on the same inputs, side by side.

Writes ``N`` synthetic reduced exposures (default: full T80Cam frames, 9232 x 9216 float32, 0.55"/px) as FITS, an
image file and an inverse-variance weight file each (SWarp reads weight maps from separate files), made
deterministically from ``--seed``: one sky catalogue of stars (Moffat β = 3 profiles of known fluxes, a few
thousand, some bright; each star's pixel values sum to its flux), sky-subtracted Gaussian noise whose variance is
the weight map's (a smooth ±10 % gradient, one dead column of weight 0), the stars' own Poisson noise, cosmic rays
(not masked: the clipping must remove them), and per frame a dither of ~10", a rotation of up to 0.02°, a pixel
scale 1e-4 off, and plain TAN (default) or, with ``--distortion sip``, a slightly different TAN-SIP distortion
(~2 px at the corners). The Debian SWarp 2.41.5 ignores SIP terms (measured with ``--small --distortion sip``: its
star centroids are 0.65 px rms off the truth, ours 0.006 px), hence TAN for the comparison with SWarp. Frame ``i``
is the same for every ``N``, so that ``--n 3,6,12`` measures the cost per input.

Then, for each ``N``, in a fresh child process each (the peak resident memory is the run's own: ``ru_maxrss`` of
that child from ``wait4``):

``upad``   :func:`upad.coadd.combine.iter_resampled_combined_blocks` on the FITS files opened with
           ``astropy.io.fits.open(memmap=True)`` (big-endian data, converted to native order window by window inside
           the timing), LANCZOS3, CLIPPED (CLIP_SIGMA 4, CLIP_AMPFRAC 0.3, the step's defaults), ``block_rows`` 512
           (the step's default), numba threads = ``--threads``; the coadd's image and weight streamed to FITS files
           block by block. The child also samples its anonymous resident memory (``RssAnon``): the memory-mapped
           input pages that the kernel keeps resident count in ``ru_maxrss`` but are page cache, not allocations.
``swarp``  ``SWarp`` with ``COMBINE_TYPE=CLIPPED``, the same CLIP_SIGMA/CLIP_AMPFRAC, ``RESAMPLING_TYPE=LANCZOS3``,
           ``WEIGHT_TYPE=MAP_WEIGHT``, ``SUBTRACT_BACK=N``, ``RESCALE_WEIGHTS=N``, ``GAIN_KEYWORD=GAIN``,
           ``NTHREADS = --threads`` and our tile's grid exactly (a ``.head`` file next to its output: NAXIS, CRVAL,
           CRPIX, CD).

Agreement (for the first ``N``): bright isolated stars (``sep`` on our coadd, matched to the injected catalogue),
aperture fluxes (radius ``--aperture`` px) in both coadds at the same positions → median ratio and its robust
scatter; windowed centroids (``sep.winpos``) in both → rms difference (px); our fluxes against the injected truth
(times the profile's enclosed fraction) and our centroids against the true positions.

    python bench/bench_coadd.py                       # N = 3 full frames (a few minutes)
    python bench/bench_coadd.py --n 3,6,12            # linearity (12 frames: ~8 GB of inputs + SWarp's temp files)
    python bench/bench_coadd.py --small --json out.json   # 2048 x 2048 frames: a quick check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RA0, DEC0 = 150.0, 40.0          # tile centre (deg)
SKY_E = 1500.0                   # sky level removed from the frames (e-): its Poisson noise is the background noise
READ_NOISE_E = 3.8
BETA = 3.0                       # Moffat index of the stars
STAMP_R = 20                     # stamp half-size (px): each star's pixel values sum to its flux inside it
GAIN = 1.0                       # the frames are in e- (GAIN keyword, e-/ADU)


# ------------------------------------------------------------------------------------------------ memory
def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class AnonSampler:
    """Peak of the process's anonymous resident memory (RssAnon), sampled every ``dt`` seconds."""

    def __init__(self, dt: float = 0.05) -> None:
        self.dt, self.peak, self._stop = dt, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            self._stop.wait(self.dt)

    def __enter__(self) -> "AnonSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _status("RssAnon"))


# ------------------------------------------------------------------------------------------------ geometry
def frame_wcs(i: int, shape: tuple[int, int], distortion: str, seed: int):
    """Exposure ``i``'s WCS: dither ~10", rotation up to 0.02°, scale 1e-4 off, its own SIP (~2 px at the corners)."""
    from astropy.wcs import WCS, Sip

    rng = np.random.default_rng([seed, 1000 + i])
    ny, nx = shape
    w = WCS(naxis=2)
    sip = distortion == "sip"
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    dx, dy = (rng.uniform(-10.0, 10.0, 2) if i else np.zeros(2)) / 3600.0   # frame 0 on the tile centre
    w.wcs.crval = [RA0 + dx / math.cos(math.radians(DEC0)), DEC0 + dy]
    crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.crpix = crpix
    s = 0.55 * (1.0 + rng.uniform(-1e-4, 1e-4)) / 3600.0
    t = math.radians(rng.uniform(-0.02, 0.02))
    w.wcs.cd = s * np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    if sip:
        h = max(nx, ny) / 2.0
        q = 0.6 / h ** 2 * (1.0 + rng.uniform(-0.1, 0.1, 6))   # each term ~0.6 px at the corners, ±10 % per frame
        c = 0.3 / h ** 3 * (1.0 + rng.uniform(-0.1, 0.1, 2))
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[1, 1], a[0, 2], a[3, 0] = q[0], -q[1], q[2], c[0]
        b[2, 0], b[1, 1], b[0, 2], b[0, 3] = -q[3], q[4], q[5], -c[1]
        w.sip = Sip(a, b, None, None, crpix)
    w.wcs.set()
    w.pixel_shape = (nx, ny)
    return w


def tile(shape: tuple[int, int]):
    from upad.coadd.pipeline import grid_shape
    from upad.coadd.tiling import centred_grid

    gshape = grid_shape(shape, pixel_scale=0.55, margin_arcsec=60.0)   # the step's default margin
    return centred_grid(RA0, DEC0, pixel_scale=0.55, naxis1=gshape[1], naxis2=gshape[0]), gshape


def catalogue(shape: tuple[int, int], seed: int) -> dict:
    """Stars on the sky over the field plus the dithers: RA, Dec, flux (e-), ~3000 per full frame."""
    rng = np.random.default_rng([seed, 7])
    ny, nx = shape
    n = max(400, int(3000 * ny * nx / (9232 * 9216)))
    grid, _ = tile(shape)
    m = 60.0 / 0.55
    gx = rng.uniform(-m / 2, nx + m / 2, n) + (grid.wcs.crpix[0] - 1 - (nx - 1) / 2.0)
    gy = rng.uniform(-m / 2, ny + m / 2, n) + (grid.wcs.crpix[1] - 1 - (ny - 1) / 2.0)
    # power-law fluxes (dN/dF ~ F^-1.8) from 2e3 e- (S/N ~ 15 in one frame) to 2e6 e-, plus 3 % brighter
    u = rng.uniform(0, 1, n)
    lo, hi, p = 2e3, 2e6, -0.8
    flux = (lo ** p + u * (hi ** p - lo ** p)) ** (1.0 / p)
    bright = rng.uniform(0, 1, n) < 0.03
    flux[bright] = rng.uniform(3e5, 2e6, bright.sum())
    ra, dec = grid.all_pix2world(gx, gy, 0)
    return {"ra": ra, "dec": dec, "flux": flux}


def moffat_alpha(fwhm_px: float) -> float:
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / BETA) - 1.0))


def enclosed(r: float, fwhm_px: float) -> float:
    """Fraction of a stamp-normalised Moffat star's flux within radius ``r`` (continuous approximation)."""
    a = moffat_alpha(fwhm_px)
    f = lambda x: 1.0 - (1.0 + (x / a) ** 2) ** (1.0 - BETA)  # noqa: E731
    return f(r) / f(STAMP_R * 1.1)   # the square stamp of half-size R holds about a circle of radius 1.1 R


# ------------------------------------------------------------------------------------------------ frames
def _open_fits_streamed(path: Path, header, ny: int, nx: int):
    """A float32 FITS file whose header is written: append the big-endian rows, then the padding."""
    from astropy.io import fits

    h = fits.Header()
    h["SIMPLE"], h["BITPIX"], h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = True, -32, 2, nx, ny
    h["EXTEND"] = True
    for card in header.cards:
        if card.keyword not in h and card.keyword not in ("COMMENT", "HISTORY", ""):
            h.append(card)
    h.tofile(path, overwrite=True)
    return open(path, "ab")


def _write_fits_streamed(path: Path, header, rows_iter, ny: int, nx: int) -> None:
    """A float32 FITS image written row block by row block (big-endian), no full frame needed."""
    with _open_fits_streamed(path, header, ny, nx) as fh:
        for block in rows_iter:
            fh.write(np.ascontiguousarray(block, ">f4").tobytes())
        fh.write(b"\0" * ((-(ny * nx * 4)) % 2880))


def make_frame(i: int, work: Path, shape: tuple[int, int], cat: dict, distortion: str, seed: int) -> dict:
    img_path, wt_path = work / f"exp{i:02d}.fits", work / f"exp{i:02d}.weight.fits"
    ny, nx = shape
    rng = np.random.default_rng([seed, 2000 + i])
    w = frame_wcs(i, shape, distortion, seed)
    fwhm = float(rng.uniform(2.2, 2.8))   # px (1.2-1.5")
    info = {"image": str(img_path), "weight": str(wt_path), "fwhm_px": fwhm}
    if img_path.exists() and wt_path.exists() and (work / f"exp{i:02d}.json").exists():
        return json.loads((work / f"exp{i:02d}.json").read_text())
    # weight: sky + read noise variance with a smooth +-10 % gradient; one dead column (weight 0)
    yy = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    var = ((SKY_E + READ_NOISE_E ** 2) * (1.0 + 0.1 * (0.6 * xx + 0.4 * yy))).astype(np.float32)
    image = np.empty(shape, np.float32)
    for r0 in range(0, ny, 1024):  # background noise, strip by strip (float32 normals)
        r1 = min(ny, r0 + 1024)
        image[r0:r1] = rng.standard_normal((r1 - r0, nx), dtype=np.float32) * np.sqrt(var[r0:r1])
    x, y = w.all_world2pix(cat["ra"], cat["dec"], 0)
    inside = (x > -STAMP_R) & (x < nx + STAMP_R) & (y > -STAMP_R) & (y < ny + STAMP_R)
    a = moffat_alpha(fwhm)
    yy_s, xx_s = np.mgrid[-STAMP_R:STAMP_R + 1, -STAMP_R:STAMP_R + 1]
    for xs, ys, f in zip(x[inside], y[inside], cat["flux"][inside]):
        ix, iy = int(round(xs)), int(round(ys))
        r2 = (xx_s - (xs - ix)) ** 2 + (yy_s - (ys - iy)) ** 2
        prof = (1.0 + r2 / a ** 2) ** (-BETA)
        stamp = f * prof / prof.sum()
        stamp += np.sqrt(stamp / GAIN) * rng.standard_normal(stamp.shape)   # the star's own Poisson noise
        y0, y1, x0, x1 = iy - STAMP_R, iy + STAMP_R + 1, ix - STAMP_R, ix + STAMP_R + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        y0c, y1c, x0c, x1c = max(0, y0), min(ny, y1), max(0, x0), min(nx, x1)
        if y1c > y0c and x1c > x0c:
            image[y0c:y1c, x0c:x1c] += stamp[sy0:sy0 + y1c - y0c, sx0:sx0 + x1c - x0c].astype(np.float32)
    # cosmic rays: short tracks of 1-4 pixels, 500-20000 e-, ~300 per full frame
    n_cr = max(20, int(300 * ny * nx / (9232 * 9216)))
    for _ in range(n_cr):
        cx, cy = int(rng.integers(0, nx)), int(rng.integers(0, ny))
        amp = float(rng.uniform(500.0, 20000.0))
        ddx, ddy = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
        for k in range(int(rng.integers(1, 5))):
            px, py = cx + k * ddx, cy + k * ddy
            if 0 <= px < nx and 0 <= py < ny:
                image[py, px] += amp
    weight = (1.0 / var).astype(np.float32)
    dead = int(rng.integers(nx // 4, 3 * nx // 4))
    weight[:, dead] = 0.0
    image[:, dead] = 0.0
    hdr = w.to_header(relax=True)
    hdr["GAIN"] = (GAIN, "e-/ADU")
    hdr["EXPTIME"] = (60.0, "s")
    hdr["SATURATE"] = 1e9
    _write_fits_streamed(img_path, hdr, (image[r:r + 1024] for r in range(0, ny, 1024)), ny, nx)
    del image
    _write_fits_streamed(wt_path, w.to_header(relax=True), (weight[r:r + 1024] for r in range(0, ny, 1024)), ny, nx)
    info["n_stars"] = int(inside.sum())
    info["n_cosmics"] = n_cr
    (work / f"exp{i:02d}.json").write_text(json.dumps(info))
    return info


# ------------------------------------------------------------------------------------------------ child runs
class WindowReader:
    """Windows ``reader[y0:y1, x0:x1]`` of an uncompressed FITS image read with positioned reads (nothing
    memory-mapped, so that no page of the file counts in the process's resident memory); all that
    :func:`upad.coadd.resample.resample_rows` needs of an input array."""

    def __init__(self, path: str) -> None:
        from upad.calib.rows import RowReader

        self._r = RowReader.from_fits(path)
        self.shape, self.dtype, self.ndim = self._r.shape, self._r.dtype, 2

    def __getitem__(self, key):
        rows, cols = key
        return self._r[rows][:, cols]


def run_upad(files: list[str], out: str, shape: tuple[int, int], block_rows: int, read: str = "memmap") -> dict:
    from astropy.io import fits
    from astropy.wcs import WCS

    from upad.coadd.combine import CombineConfig, InputExposure, iter_resampled_combined_blocks

    # compile (or load the numba cache) on a tiny case first: reported apart
    t0 = time.perf_counter()
    g0, s0 = tile((64, 64))
    small = np.zeros((64, 64), np.float32)
    wsmall = frame_wcs(0, (64, 64), "sip", 0)
    for _ in iter_resampled_combined_blocks([InputExposure(small, small + 1, None, wsmall)], dst_wcs=g0,
                                            dst_shape=s0, gains=[1.0]):
        pass
    t_warm = time.perf_counter() - t0

    grid, gshape = tile(shape)
    ny, nx = gshape
    with AnonSampler() as anon:
        t0 = time.perf_counter()
        c0 = time.process_time()
        hduls, exps, gains, exptimes = [], [], [], []
        for f in files:
            hi = fits.open(f, memmap=True)
            hw = fits.open(f.replace(".fits", ".weight.fits"), memmap=True)
            hduls += [hi, hw]
            h = hi[0].header
            if read == "memmap":
                exps.append(InputExposure(image=hi[0].data, noise=hw[0].data, mask=None, wcs=WCS(h)))
            else:
                wr = WindowReader(f.replace(".fits", ".weight.fits"))
                exps.append(InputExposure(image=WindowReader(f), noise=wr, mask=None, wcs=WCS(h)))
            gains.append(float(h["GAIN"]))
            exptimes.append(float(h["EXPTIME"]))
        blocks = iter_resampled_combined_blocks(exps, dst_wcs=grid, dst_shape=gshape, gains=gains,
                                                exptimes=exptimes, noise="weight", block_rows=block_rows,
                                                config=CombineConfig(clip_sigma=4.0, clip_ampfrac=0.3))
        n_rej = np.zeros(len(files), np.int64)
        hdr = grid.to_header()
        fi = _open_fits_streamed(Path(out), hdr, ny, nx)
        fw = _open_fits_streamed(Path(out.replace(".fits", ".weight.fits")), hdr, ny, nx)
        for y0, y1, res, _ in blocks:  # the coadd's image and weight go to disk block by block
            n_rej += res.n_rejected
            fi.write(np.ascontiguousarray(res.image, ">f4").tobytes())
            fw.write(np.ascontiguousarray(res.weight, ">f4").tobytes())
        for fh in (fi, fw):
            fh.write(b"\0" * ((-(ny * nx * 4)) % 2880))
            fh.close()
        for h in hduls:
            h.close()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    return {"seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "compile_or_cache_seconds": round(t_warm, 2),
            "peak_rss_mb_vmhwm": round(_status("VmHWM"), 1), "peak_anon_rss_mb": round(anon.peak, 1),
            "rejected_pixels": [int(v) for v in n_rej], "block_rows": block_rows, "read": read,
            "numba_threads": int(os.environ.get("NUMBA_NUM_THREADS", "0")) or None}


def swarp_cmd(files: list[str], out: Path, threads: int, work: Path) -> list[str]:
    weights = [f.replace(".fits", ".weight.fits") for f in files]
    return ["SWarp", *files, "-IMAGEOUT_NAME", str(out), "-WEIGHTOUT_NAME", str(out).replace(".fits", ".weight.fits"),
            "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", ",".join(weights), "-COMBINE", "Y",
            "-COMBINE_TYPE", "CLIPPED", "-CLIP_SIGMA", "4.0", "-CLIP_AMPFRAC", "0.3", "-RESAMPLING_TYPE", "LANCZOS3",
            "-SUBTRACT_BACK", "N", "-RESCALE_WEIGHTS", "N", "-GAIN_KEYWORD", "GAIN", "-GAIN_DEFAULT", "1.0",
            "-FSCALE_KEYWORD", "NONE", "-FSCALE_DEFAULT", "1.0", "-NTHREADS", str(threads),
            "-RESAMPLE_DIR", str(work), "-VMEM_DIR", str(work), "-WRITE_XML", "N", "-VERBOSE_TYPE", "NORMAL",
            "-HEADER_SUFFIX", ".head"]


def timed_child(cmd: list[str], env: dict | None = None) -> tuple[dict, str, str]:
    """Run ``cmd``; wall, CPU (user + system) and ``ru_maxrss`` of that child alone (``os.wait4``)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    res = {"wall_seconds": round(wall, 2), "cpu_seconds_child": round(ru.ru_utime + ru.ru_stime, 2),
           "maxrss_mb_child": round(ru.ru_maxrss / 1024.0, 1), "rc": proc.returncode}
    return res, out, err


# ------------------------------------------------------------------------------------------------ agreement
def _native(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def agreement(ours: Path, swarp: Path, cat: dict, infos: list[dict], shape: tuple[int, int], aperture: float
              ) -> dict:
    import sep
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(ours, memmap=True) as h:
        a = _native(h[0].data)
        grid = WCS(h[0].header)
    with fits.open(str(ours).replace(".fits", ".weight.fits"), memmap=True) as h:
        wa = _native(h[0].data)
    with fits.open(swarp, memmap=True) as h:
        b = _native(h[0].data)
        hs = h[0].header
    out: dict = {}
    same_grid = (hs["NAXIS1"] == a.shape[1] and hs["NAXIS2"] == a.shape[0]
                 and abs(hs["CRPIX1"] - grid.wcs.crpix[0]) < 1e-6 and abs(hs["CRPIX2"] - grid.wcs.crpix[1]) < 1e-6
                 and abs(hs["CRVAL1"] - grid.wcs.crval[0]) < 1e-9 and abs(hs["CRVAL2"] - grid.wcs.crval[1]) < 1e-9)
    out["same_grid"] = bool(same_grid)
    if not same_grid:
        out["swarp_grid"] = {k: hs.get(k) for k in ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2",
                                                    "CD1_1", "CD2_2")}
        return out
    err = np.where(wa > 0, 1.0 / np.sqrt(np.maximum(wa, 1e-30)), np.inf).astype(np.float32)
    objs = sep.extract(a, 30.0, err=err, minarea=9, deblend_cont=1.0)
    # matched to the truth: the nearest injected star within 1.5 px; isolated: no other injected star brighter than
    # 1 % of it within 15 px; away from the edges of the coverage
    tx, ty = grid.all_world2pix(cat["ra"], cat["dec"], 0)
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[tx, ty])
    d, j = tree.query(np.c_[objs["x"], objs["y"]])
    ok = (d < 1.5) & (objs["flag"] == 0)
    sel = []
    for k in np.flatnonzero(ok):
        nb = tree.query_ball_point([tx[j[k]], ty[j[k]]], 15.0)
        if any(cat["flux"][m] > 0.01 * cat["flux"][j[k]] for m in nb if m != j[k]):
            continue
        x, y = tx[j[k]], ty[j[k]]
        r0, r1, c0, c1 = int(y) - 20, int(y) + 21, int(x) - 20, int(x) + 21
        if r0 < 0 or c0 < 0 or r1 > a.shape[0] or c1 > a.shape[1] or (wa[r0:r1, c0:c1] <= 0).any():
            continue
        sel.append(k)
    sel = np.array(sel, int)
    x0, y0 = objs["x"][sel].astype(np.float64), objs["y"][sel].astype(np.float64)
    truth = cat["flux"][j[sel]]
    fa, _, _ = sep.sum_circle(a, x0, y0, aperture)
    fb, _, _ = sep.sum_circle(b, x0, y0, aperture)
    fwhm = float(np.mean([i["fwhm_px"] for i in infos]))
    sig = 2.0 * fwhm / 2.3548
    xa, ya, _ = sep.winpos(a, x0, y0, sig)
    xb, yb, _ = sep.winpos(b, x0, y0, sig)
    ratio = fa / fb
    vs_truth = fa / (truth * float(np.mean([enclosed(aperture, i["fwhm_px"]) for i in infos])))
    rob = lambda v: float(1.4826 * np.median(np.abs(v - np.median(v))))  # noqa: E731
    dpos = np.hypot(xa - xb, ya - yb)
    dtruth = np.hypot(xa - tx[j[sel]], ya - ty[j[sel]])
    bright = truth > 1e5
    out.update({
        "stars": int(sel.size), "stars_bright_gt_1e5": int(bright.sum()), "aperture_radius_px": aperture,
        "flux_ratio_ours_over_swarp_median": round(float(np.median(ratio)), 5),
        "flux_ratio_robust_scatter": round(rob(ratio), 5),
        "flux_ratio_median_bright": round(float(np.median(ratio[bright])), 5) if bright.any() else None,
        "flux_ratio_scatter_bright": round(rob(ratio[bright]), 5) if bright.any() else None,
        "centroid_diff_rms_px": round(float(np.sqrt(np.mean(dpos ** 2))), 4),
        "centroid_diff_rms_bright_px": round(float(np.sqrt(np.mean(dpos[bright] ** 2))), 4) if bright.any() else None,
        "centroid_mean_dx_dy_px": [round(float(np.mean(xa - xb)), 4), round(float(np.mean(ya - yb)), 4)],
        "ours_over_truth_median": round(float(np.median(vs_truth)), 5),
        "ours_over_truth_scatter": round(rob(vs_truth), 5),
        "ours_over_truth_median_bright": round(float(np.median(vs_truth[bright])), 5) if bright.any() else None,
        "swarp_over_truth_median_bright": round(float(np.median((fb / fa * vs_truth)[bright])), 5)
        if bright.any() else None,
        "ours_centroid_vs_truth_rms_bright_px": round(float(np.sqrt(np.mean(dtruth[bright] ** 2))), 4)
        if bright.any() else None,
        "swarp_centroid_vs_truth_rms_bright_px": round(float(np.sqrt(np.mean(
            np.hypot(xb - tx[j[sel]], yb - ty[j[sel]])[bright] ** 2))), 4) if bright.any() else None,
    })
    # the cosmic rays: pixels > 20 sigma that no injected star (within 25 px) explains, where the coadd has at least
    # half its median weight (two inputs or more: a single input's cosmic rays cannot be rejected, by either)
    cov = (wa > 0)
    deep = wa > 0.5 * float(np.median(wa[cov]))
    for name, img in (("ours", a), ("swarp", b)):
        hot = np.argwhere(deep & (img * np.sqrt(np.where(cov, wa, 0)) > 20.0))
        dd = tree.query(hot[:, ::-1].astype(float))[0] if hot.size else np.zeros(0)
        out[f"cosmic_ray_pixels_left_{name}"] = int((dd > 25.0).sum())
    with fits.open(str(swarp).replace(".fits", ".weight.fits"), memmap=True) as h:
        wb = _native(h[0].data)
    both = cov & (wb > 0)
    out["weight_ratio_ours_over_swarp_median"] = round(float(np.median(wa[both][::97] / wb[both][::97])), 4)
    del wb
    diff = (a - b)[cov] * np.sqrt(wa[cov])
    out["pixel_diff_over_sigma_median"] = round(float(np.median(diff)), 4)
    out["pixel_diff_over_sigma_robust_std"] = round(rob(diff[:: max(1, diff.size // 2_000_000)]), 4)
    out["coverage_ours_swarp"] = [round(float(cov.mean()), 4), round(float((b != 0).mean()), 4)]
    return out


# ------------------------------------------------------------------------------------------------ driver
def machine_line() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = _meminfo_gb()
    return (f"{platform.node()} {platform.machine()} {cpu}, {len(os.sched_getaffinity(0))} cores usable, "
            f"{mem:.0f} GB RAM, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")


def _meminfo_gb() -> float:
    with open("/proc/meminfo") as fh:
        return int(fh.readline().split()[1]) / 1024 ** 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="3", help="numbers of exposures to coadd, comma-separated (e.g. 3,6,12)")
    ap.add_argument("--small", action="store_true", help="2048 x 2048 frames (a quick check)")
    ap.add_argument("--ny", type=int, default=9232)
    ap.add_argument("--nx", type=int, default=9216)
    ap.add_argument("--distortion", choices=["sip", "tan"], default="tan",
                    help="plain TAN per frame (default: SWarp 2.41.5 ignores SIP) or TAN-SIP")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2, help="SWarp NTHREADS and NUMBA_NUM_THREADS")
    ap.add_argument("--block-rows", type=int, default=512, help="our rows per block (the step's default)")
    ap.add_argument("--aperture", type=float, default=10.0, help="aperture radius for the flux ratios (px)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/upad_bench_coadd"))
    ap.add_argument("--read", choices=["memmap", "pread"], default="memmap",
                    help="our inputs: astropy memmap (default; the mapped pages count in the peak RSS) or positioned "
                         "reads of the windows (upad.calib.rows.RowReader)")
    ap.add_argument("--skip-swarp", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the frames and coadds")
    ap.add_argument("--json", type=Path, help="write the results there")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = (2048, 2048) if args.small else (args.ny, args.nx)

    if args.child == "upad":
        print(json.dumps(run_upad(args.files, args.out, shape, args.block_rows, args.read)))
        return 0

    ns = sorted({int(v) for v in args.n.split(",")})
    work = args.work / f"{shape[0]}x{shape[1]}_{args.distortion}_s{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(work).free / 1e9
    per_frame_gb = 2 * shape[0] * shape[1] * 4 / 1e9
    # inputs + SWarp's resampled temp copies (image + weight per input) + 2 coadds with weights
    need = lambda n: per_frame_gb * (2 * n + 2.5)  # noqa: E731
    skipped = {n: f"needs ~{need(n):.0f} GB on {work}, {free_gb:.0f} GB free" for n in ns if need(n) > free_gb - 2}
    ns = [n for n in ns if n not in skipped]
    result: dict = {"machine": machine_line(), "shape": list(shape), "distortion": args.distortion, "read": args.read,
                    "seed": args.seed, "threads": args.threads, "command": " ".join([sys.executable, *sys.argv]),
                    "swarp_version": subprocess.run(["SWarp", "-v"], capture_output=True, text=True).stdout.strip(),
                    "skipped": {str(k): v for k, v in skipped.items()}, "runs": []}
    print(result["machine"], flush=True)
    for n, why in skipped.items():
        print(f"N = {n} skipped: {why}", flush=True)
    if not ns:
        return 1
    t0 = time.perf_counter()
    cat = catalogue(shape, args.seed)
    infos = [make_frame(i, work, shape, cat, args.distortion, args.seed) for i in range(max(ns))]
    grid, gshape = tile(shape)
    print(f"{max(ns)} frames of {shape[0]} x {shape[1]} (+ weights) ready in {time.perf_counter() - t0:.0f} s; "
          f"{cat['flux'].size} stars in the catalogue; tile grid {gshape[0]} x {gshape[1]}", flush=True)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(HERE.parent / "src") + os.pathsep + env.get("PYTHONPATH", "")
    # SWarp gets our grid through the .head file next to its output
    head = grid.to_header()
    head["NAXIS"], head["NAXIS1"], head["NAXIS2"] = 2, gshape[1], gshape[0]
    for n in ns:
        files = [info["image"] for info in infos[:n]]
        for f in files:  # the page cache holds the inputs for both programs alike
            with open(f, "rb") as fh, open(f.replace(".fits", ".weight.fits"), "rb") as fw:
                while fh.read(1 << 24) or fw.read(1 << 24):
                    pass
        run: dict = {"n": n, "load_average_before": round(os.getloadavg()[0], 2)}
        ours = work / f"upad_{n}.fits"
        cmd = [sys.executable, __file__, "--child", "upad", "--out", str(ours), "--block-rows", str(args.block_rows),
               "--read", args.read,
               *(["--small"] if args.small else ["--ny", str(shape[0]), "--nx", str(shape[1])]), *files]
        res, out, err = timed_child(cmd, env)
        if res["rc"] != 0:
            raise SystemExit(f"upad run failed:\n{err[-3000:]}")
        run["upad"] = {**json.loads(out.strip().splitlines()[-1]), **res}
        print(f"N = {n}  upad:  {run['upad']}", flush=True)
        if not args.skip_swarp:
            sw = work / f"swarp_{n}.fits"
            (work / f"swarp_{n}.head").write_text(head.tostring(sep="\n", endcard=True, padding=False) + "\n")
            res, out, err = timed_child(swarp_cmd(files, sw, args.threads, work), env)
            if res["rc"] != 0:
                raise SystemExit(f"SWarp failed:\n{err[-3000:]}")
            run["swarp"] = res
            run["speedup_wall"] = round(res["wall_seconds"] / run["upad"]["wall_seconds"], 2)
            run["speedup_cpu"] = round(res["cpu_seconds_child"] / run["upad"]["cpu_seconds_child"], 2)
            print(f"N = {n}  swarp: {res}; SWarp / upad wall time {run['speedup_wall']}x", flush=True)
            if n == ns[0]:
                t1 = time.perf_counter()
                run["agreement"] = agreement(ours, sw, cat, infos[:n], shape, args.aperture)
                print(f"N = {n}  agreement ({time.perf_counter() - t1:.0f} s): {run['agreement']}", flush=True)
            if not args.keep:
                for p in (sw, Path(str(sw).replace(".fits", ".weight.fits"))):
                    p.unlink(missing_ok=True)
        if not args.keep:
            for p in (ours, Path(str(ours).replace(".fits", ".weight.fits"))):
                p.unlink(missing_ok=True)
        result["runs"].append(run)
    print()
    print(f"{'N':>3s} {'prog':>6s} {'wall (s)':>9s} {'CPU (s)':>8s} {'maxrss MB':>10s} {'anon MB':>8s} "
          f"{'wall/N':>7s}")
    for run in result["runs"]:
        for prog in ("upad", "swarp"):
            if prog in run:
                r = run[prog]
                print(f"{run['n']:>3d} {prog:>6s} {r['wall_seconds']:>9.1f} {r['cpu_seconds_child']:>8.1f} "
                      f"{r['maxrss_mb_child']:>10.0f} {r.get('peak_anon_rss_mb', float('nan')):>8.0f} "
                      f"{r['wall_seconds'] / run['n']:>7.1f}")
        if "speedup_wall" in run:
            print(f"    SWarp / upad: wall {run['speedup_wall']}x, CPU {run['speedup_cpu']}x")
    if len(result["runs"]) > 1:
        r0, r1 = result["runs"][0], result["runs"][-1]
        for prog in ("upad", "swarp"):
            if prog in r0 and prog in r1:
                per = [round(r[prog]["wall_seconds"] / r["n"], 2) for r in result["runs"]]
                result[f"{prog}_seconds_per_input"] = per
                print(f"{prog}: seconds per input {per}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
