"""The coadd worker: reduced frames of a tile in a filter → the tile's coadd (the adapter of the ``coadd`` step).

Reads each exposure (:func:`upad.io.products.read_reduced_frame`), prepares it (background subtracted with the
reduction's own model, scaled to the coadd's zero point: ``s = 10^(0.4 (ZP_coadd − MAGZP))``, the inverse variance by
``1/s²``), resamples it onto the tile grid (:func:`upad.coadd.resample.resample`), rejects outliers and combines
(:func:`upad.coadd.combine.clipped_combine`) and writes the product. The algorithms are pure functions; this module
does the I/O and the bookkeeping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from upad.errors import DataError

__all__ = ["grid_shape", "PreparedExposure", "prepare_exposure", "run_coadd", "depth_5sigma"]


def grid_shape(field_shape: tuple[int, int], *, pixel_scale: float, margin_arcsec: float) -> tuple[int, int]:
    """``(ny, nx)`` of a grid covering a camera field of ``field_shape`` pixels plus ``margin_arcsec`` on each
    side (for tiles that no stored tiling describes)."""
    margin = int(math.ceil(margin_arcsec / pixel_scale))
    return int(field_shape[0]) + 2 * margin, int(field_shape[1]) + 2 * margin


def depth_5sigma(weight: np.ndarray, *, pixel_scale: float, zero_point: float, correlation: float = 1.0,
                 aperture_arcsec: float = 3.0) -> float:
    """The 5σ limiting AB magnitude in a circular aperture of ``aperture_arcsec`` diameter: from the median inverse
    variance of the covered pixels, the noise correlation factor of resampling (``correlation``: the ratio of the
    true noise of a sum of pixels to the naive per-pixel estimate) and the zero point."""
    w = weight[weight > 0]
    if w.size == 0:
        return float("nan")
    sigma_pix = 1.0 / math.sqrt(float(np.median(w)))
    n_pix = math.pi * (aperture_arcsec / 2.0 / pixel_scale) ** 2
    noise = 5.0 * sigma_pix * math.sqrt(n_pix) * correlation
    return float(zero_point - 2.5 * math.log10(noise))


@dataclass
class PreparedExposure:
    """A reduced frame ready to resample: background-subtracted, scaled to the coadd's zero point."""

    name: str
    image: np.ndarray
    weight: np.ndarray
    mask: np.ndarray
    wcs: WCS
    scale: float
    exptime: float
    zero_point: float
    fwhm_arcsec: float | None
    product_id: int


def prepare_exposure(frame: Any, *, zero_point: float, name: str, product_id: int) -> PreparedExposure:
    """Background-subtract (the reduction's own mesh model, unless the image is already sky-subtracted) and scale a
    :class:`~upad.io.products.ReducedFrameProduct` to ``zero_point``."""
    from upad.reduce.background import BackgroundResult

    image = np.array(frame.image, dtype=np.float32)
    if not frame.header.get("SKYSUB", False):
        mesh = frame.background_mesh
        if mesh is None:
            raise DataError(f"{name}: no background model (BKGMESH) in the reduced frame")
        mesh_px = int(frame.header.get("MESHPX") or frame.meta.get("mesh_px") or 0) or _mesh_px(frame)
        bkg = BackgroundResult(level=float(np.median(mesh)), rms=0.0, mesh=np.asarray(mesh, np.float32),
                               rms_mesh=np.zeros_like(mesh, np.float32), mesh_px=mesh_px, shape=image.shape)
        bkg.subtract(image)
    scale = 10.0 ** (0.4 * (zero_point - float(frame.zero_point)))
    weight = np.asarray(frame.weight if frame.weight is not None else np.zeros_like(image), np.float32)
    if scale != 1.0:  # (to the frame's own zero point, as the coadd worker first prepares it, s = 1 exactly)
        image *= np.float32(scale)
        weight = weight / np.float32(scale * scale)
    fwhm = frame.header.get("FWHM") or frame.header.get("PSF_FWHM")
    return PreparedExposure(name=name, image=image, weight=weight, mask=np.asarray(frame.mask), wcs=frame.wcs,
                            scale=scale, exptime=float(frame.header.get("EXPTIME") or frame.primary_header.get(
                                "EXPTIME") or 0.0), zero_point=float(frame.zero_point),
                            fwhm_arcsec=float(fwhm) if fwhm else None, product_id=product_id)


def _mesh_px(frame: Any) -> int:
    ny, nx = frame.image.shape
    my, mx = frame.background_mesh.shape
    return int(round(max(ny / my, nx / mx)))


def run_coadd(step: Any, task: Any) -> Any:
    """The ``coadd`` step's worker: read, prepare, resample and combine the exposures block by block, write the
    product (see the module documentation)."""
    from upad.coadd.combine import CombineConfig, InputExposure, iter_resampled_combined_blocks
    from upad.coadd.tiling import centred_grid
    from upad.flow.step import OutputFile, StepOutput
    from upad.instruments import get_instrument
    from upad.io.preview import render_preview, write_png
    from upad.io.products import read_reduced_frame

    cfg = task.config
    ctx = task.context
    inst = get_instrument(ctx["instrument"])
    g = ctx.get("grid") or {}
    scale = float(g.get("pixel_scale") or inst.pixel_scale)
    shape = ((int(g["naxis2"]), int(g["naxis1"])) if g.get("naxis1") else
             grid_shape(tuple(inst.layout.active_shape), pixel_scale=scale, margin_arcsec=cfg.margin_arcsec))
    grid = centred_grid(ctx["tile_ra"], ctx["tile_dec"], pixel_scale=scale, naxis1=shape[1], naxis2=shape[0],
                        cd_sign_x=int(inst.cd_sign_x), cd_sign_y=int(inst.cd_sign_y))
    # one exposure in memory at a time: each is read, checked, background-subtracted and put in scratch files of
    # the staging directory (memory-mapped), then scaled there once the coadd's zero point is known
    scratch = Path(task.staging) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    prepared: list[PreparedExposure] = []
    refused: list[str] = []
    for r in task.inputs_by_role("exposure"):
        name = str(r.meta.get("unit_key", r.id))
        try:
            fr = read_reduced_frame(r, psf=False)
        except DataError as exc:
            refused.append(f"{name}: unreadable: {exc}")
            continue
        if not fr.wcs_solved or fr.wcs is None:
            refused.append(f"{name}: no astrometric solution")
        elif fr.zero_point is None or not np.isfinite(fr.zero_point):
            refused.append(f"{name}: no photometric zero point")
        else:
            ex = prepare_exposure(fr, zero_point=float(fr.zero_point), name=name, product_id=r.id)
            k = len(prepared)
            ex.image = _spill(scratch / f"{k}-image.npy", ex.image)
            ex.weight = _spill(scratch / f"{k}-weight.npy", ex.weight)
            ex.mask = _spill(scratch / f"{k}-mask.npy", ex.mask)
            prepared.append(ex)
        del fr
    meta: dict[str, Any] = {"tile_id": ctx["tile_id"], "filter": ctx["filter"], "refused": refused}
    if len(prepared) < cfg.min_exposures:
        meta["qc_reasons"] = [f"{len(prepared)} usable exposure(s) of {len(prepared) + len(refused)} (needs "
                              f"{cfg.min_exposures})"] + refused[:5]
        return StepOutput(meta=meta, qc_status="fail")
    zps = [e.zero_point for e in prepared]
    zp = float(cfg.zero_point) if cfg.zero_point else float(np.median(zps))
    for e in prepared:  # to the coadd's zero point, in place, by blocks of rows (nothing to do for s = 1 exactly)
        e.scale = 10.0 ** (0.4 * (zp - e.zero_point))
        if e.scale == 1.0:
            continue
        for y in range(0, e.image.shape[0], 1024):
            e.image[y:y + 1024] *= np.float32(e.scale)
            e.weight[y:y + 1024] /= np.float32(e.scale * e.scale)
        e.image.flush()
        e.weight.flush()
    exposures = [InputExposure(image=e.image, noise=e.weight, mask=e.mask, wcs=e.wcs) for e in prepared]
    # gain of the scaled image: s counts per electron, so the Poisson variance of a signal mu is mu * s
    gains = [1.0 / e.scale for e in prepared]
    exptimes = [e.exptime for e in prepared]
    ny, nx = shape
    image = np.lib.format.open_memmap(scratch / "coadd-image.npy", mode="w+", dtype=np.float32, shape=shape)
    weight = np.lib.format.open_memmap(scratch / "coadd-weight.npy", mode="w+", dtype=np.float32, shape=shape)
    expmap = np.lib.format.open_memmap(scratch / "coadd-expmap.npy", mode="w+", dtype=np.float32, shape=shape)
    nexp = np.lib.format.open_memmap(scratch / "coadd-nexp.npy", mode="w+", dtype=np.int16, shape=shape)
    rejected = np.lib.format.open_memmap(scratch / "coadd-rejected.npy", mode="w+", dtype=np.uint8, shape=shape)
    n_rejected = np.zeros(len(prepared), np.int64)
    sums = np.zeros(len(prepared))
    counts = np.zeros(len(prepared), np.int64)
    combine = CombineConfig(clip_sigma=cfg.clip_sigma, clip_ampfrac=cfg.clip_ampfrac)
    for y0, y1, res, noise_sums in iter_resampled_combined_blocks(
            exposures, dst_wcs=grid, dst_shape=shape, gains=gains, exptimes=exptimes, noise="weight",
            block_rows=cfg.block_rows, config=combine):
        image[y0:y1], weight[y0:y1], expmap[y0:y1] = res.image, res.weight, res.exptime
        nexp[y0:y1], rejected[y0:y1] = res.ninputs, res.rejected
        n_rejected += res.n_rejected
        for i, (sm, n) in enumerate(noise_sums):
            sums[i] += sm
            counts[i] += n
    del exposures
    used = counts > 0
    ratios = np.sqrt(sums[used] / counts[used]) if used.any() else np.ones(1)
    correlation = float(1.0 / np.median(ratios)) if used.any() else 1.0
    covered = weight > 0
    if not covered.any():
        meta["qc_reasons"] = ["no exposure overlaps the tile grid"] + refused[:5]
        return StepOutput(meta=meta, qc_status="fail")
    depth = depth_5sigma(weight, pixel_scale=inst.pixel_scale, zero_point=zp, correlation=correlation)
    fwhms = [e for e in (_fwhm(fr_meta) for fr_meta in task.inputs_by_role("exposure")) if e]
    stem = f"coadd_TILE-{int(ctx['tile_id']):05d}_{ctx['filter']}"
    staged = task.stage(f"{stem}.fits")
    header = grid.to_header()
    cards = {
        "TILE_ID": (int(ctx["tile_id"]), "survey pointing (ref_tile_id of every filter)"),
        "FILTER": (ctx["filter"], "filter"),
        "INSTRUME": (ctx["instrument"], "instrument"),
        "BUNIT": ("count", "counts at MAGZP: m_AB = MAGZP - 2.5 log10(count)"),
        "MAGZP": (round(zp, 5), "[mag] AB zero point of the coadd"),
        "NCOMBINE": (int(used.sum()), "exposures that contribute"),
        "EXPTIME": (float(np.max(expmap)), "[s] largest summed exposure time"),
        "DEPTH5": (round(depth, 3), "[mag] 5 sigma in a 3 arcsec aperture (median weight)"),
        "NOISECOR": (round(correlation, 4), "true/naive noise of pixel sums (resampling correlation)"),
        "CLIPSIG": (cfg.clip_sigma, "outlier rejection CLIP_SIGMA"),
        "CLIPAMP": (cfg.clip_ampfrac, "outlier rejection CLIP_AMPFRAC"),
        "UPADPROV": (task.provenance_id[:12], "provenance id of this product"),
    }
    if fwhms:
        cards["FWHMIN"] = (round(float(np.median(fwhms)), 3), "[arcsec] median FWHM of the inputs")
    _header_cards(header, cards)
    hdus = fits.HDUList([
        fits.PrimaryHDU(header=fits.Header([("TILE_ID", int(ctx["tile_id"])), ("FILTER", ctx["filter"])])),
        fits.ImageHDU(image, header=header, name="SCI"),
        fits.ImageHDU(weight, header=_wcs_only(grid, "inverse variance (count^-2)"), name="WEIGHT"),
        fits.ImageHDU(expmap, header=_wcs_only(grid, "summed exposure time (s)"), name="EXPMAP"),
        fits.ImageHDU(nexp, header=_wcs_only(grid, "exposures combined"), name="NEXP"),
        fits.CompImageHDU(rejected, header=_wcs_only(grid, "1: an input pixel was rejected (artefact)"),
                          name="MASK", compression_type="RICE_1"),
    ])
    hdus.writeto(staged)
    files = [OutputFile("coadd", str(staged), step.final_path(task, staged.name))]
    preview = task.stage(f"{stem}.png")
    write_png(preview, render_preview(np.where(covered, image, 0.0).astype(np.float32)))
    files.append(OutputFile("preview", str(preview), step.final_path(task, preview.name)))
    coverage = float(covered.mean())
    meta.update({"zero_point": round(zp, 5), "n_exposures": int(used.sum()), "depth_5sigma_3arcsec": round(depth, 3),
                 "noise_correlation": round(correlation, 4), "coverage": round(coverage, 4),
                 "rejected_pixels": [int(v) for v in n_rejected], "input_zero_points": [round(z, 4) for z in zps],
                 "shape": [ny, nx], "qc_reasons": []})
    if refused:
        meta["qc_reasons"].append(f"{len(refused)} exposure(s) left out: " + "; ".join(refused[:3]))
    return StepOutput(files=files, meta=meta, qc_status="warn" if refused else "ok")


def _spill(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` written to the ``.npy`` file ``path`` and returned memory-mapped (read-write)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    return out


def _fwhm(resolved: Any) -> float | None:
    values = (resolved.meta.get("qc_values") or {}) if hasattr(resolved, "meta") else {}
    v = values.get("fwhm_arcsec") or values.get("fwhm")
    return float(v) if v else None


def _wcs_only(grid: WCS, what: str) -> fits.Header:
    h = grid.to_header()
    h["COMMENT"] = what
    return h


def _header_cards(h: fits.Header, cards: dict[str, tuple[Any, str]]) -> None:
    for k, (v, c) in cards.items():
        h[k] = (v, c)
