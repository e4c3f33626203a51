"""The coadd worker: reduced frames of a tile in a filter → the tile's coadd (the adapter of the ``coadd`` step).

Reads each exposure (:func:`upad.io.products.read_reduced_frame`), prepares it (background subtracted with the
reduction's own model, scaled to the coadd's zero point: ``s = 10^(0.4 (ZP_coadd − MAGZP))``, the inverse variance by
``1/s²``), resamples it onto the tile grid (:func:`upad.coadd.resample.resample`), rejects outliers and combines
(:func:`upad.coadd.combine.clipped_combine`) and writes the product. The algorithms are pure functions; this module
does the I/O and the bookkeeping.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from upad.errors import DataError

__all__ = ["grid_shape", "PreparedExposure", "prepare_exposure", "run_coadd", "depth_5sigma", "catalog_stars",
           "relative_calibration", "coadd_psf", "psf_cards", "psf_meta", "apcor_cards", "apcor_meta",
           "incomplete_inputs"]


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
    #: the reduction's flux beyond its largest aperture (``APCTAIL``, 1 + tail) and that aperture's diameter
    #: (``APCBIGD``, arcsec; None in products older than the card)
    apc_tail: float | None = None
    apc_big_diameter: float | None = None


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
                            fwhm_arcsec=float(fwhm) if fwhm else None, product_id=product_id,
                            apc_tail=_positive(frame.header, "APCTAIL"),
                            apc_big_diameter=_positive(frame.header, "APCBIGD"))


def _positive(header: Any, key: str) -> float | None:
    v = header.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def inputs_tail(flux_weights: Sequence[float], tails: Sequence[float]) -> float:
    """The flux of a coadd's point source beyond the largest aperture (``1 + tail``, as ``APCTAIL``) from its
    inputs': the coadd's PSF is the inputs' PSFs mixed with their shares of its flux ``w_i`` (normalised here), so
    the share within the aperture is ``sum w_i / T_i`` and ``T = 1 / sum(w_i / T_i)``.

    Each input's tail is measured on all its stars, the coadd's own on fewer, in a wing that mixes several
    profiles; and each input's zero point was calibrated on fluxes with its own tail, which this carries into the
    coadd."""
    w = np.asarray(flux_weights, float)
    t = np.asarray(tails, float)
    if len(w) == 0 or len(w) != len(t) or not np.all(np.isfinite(w) & (w >= 0)) or w.sum() <= 0 or \
            not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"inputs_tail needs finite positive weights and tails: {w}, {t}")
    w = w / w.sum()
    return float(1.0 / np.sum(w / t))


def _mesh_px(frame: Any) -> int:
    ny, nx = frame.image.shape
    my, mx = frame.background_mesh.shape
    return int(round(max(ny / my, nx / mx)))


def catalog_stars(frame: Any, *, name: str, min_snr: float) -> Any:
    """The usable stars of a reduced frame's catalog (:func:`upad.coadd.relative.select_stars`) as an
    :class:`~upad.coadd.relative.ExposureStars`: windowed centroids (0-based), ``FLUX_APCOR`` (e-, on ``MAGZP``),
    position errors from the FWHM and the S/N, the epoch ``REFEPOCH``; None without a catalog."""
    from upad.coadd.relative import ExposureStars, centroid_error_arcsec, select_stars

    try:
        cat = frame.catalog
    except (DataError, OSError, ValueError, KeyError):  # a catalog that cannot be read: no stars (reported)
        cat = None
    if cat is None or len(cat) == 0 or "FLUX_APCOR" not in cat.colnames:
        return None
    ok = select_stars(cat, min_snr=min_snr)
    xk, yk = ("XWIN_IMAGE", "YWIN_IMAGE") if "XWIN_IMAGE" in cat.colnames else ("X_IMAGE", "Y_IMAGE")
    flux = np.asarray(cat["FLUX_APCOR"], float)[ok]
    ferr = np.asarray(cat["FLUXERR_APCOR"], float)[ok]
    h = frame.header
    fwhm = float(h.get("FWHM") or 1.0)
    epoch = h.get("REFEPOCH")
    zperr = h.get("ZPERR")
    return ExposureStars(name=name, wcs=frame.wcs, x=np.asarray(cat[xk], float)[ok] - 1.0,
                         y=np.asarray(cat[yk], float)[ok] - 1.0, flux=flux, flux_err=ferr,
                         zero_point=float(frame.zero_point), pos_err_arcsec=centroid_error_arcsec(fwhm, flux / ferr),
                         epoch=None if epoch is None else float(epoch),
                         zero_point_err=None if zperr is None else float(zperr))


def relative_calibration(prepared: list[PreparedExposure], stars: list[Any], *, task: Any, grid: WCS
                         ) -> tuple[dict[str, tuple[Any, str]], dict[str, Any]]:
    """The joint astrometry and relative photometry of the exposures (:mod:`upad.coadd.relative`), applied in
    place: each exposure's ``wcs`` and ``zero_point`` become the corrected ones (an exposure that cannot be
    corrected keeps its own, with the reason). Returns the coadd's header cards and the meta record."""
    from upad.coadd import relative as rel

    cfg = task.config
    meta: dict[str, Any] = {"reasons": []}
    cards: dict[str, tuple[Any, str]] = {}
    if not (cfg.relative_astrometry or cfg.relative_photometry):
        return cards, meta
    have = [i for i, s in enumerate(stars) if s is not None]
    for i in set(range(len(prepared))) - set(have):
        meta["reasons"].append(f"{prepared[i].name}: no catalog: its own WCS and zero point kept")
    sel = [stars[i] for i in have]
    if cfg.relative_astrometry and sel:
        reference, why = _reference_stars(task, grid, sel)
        if why:
            meta["reasons"].append(why)
        ast = rel.solve_joint_astrometry(sel, reference, radius_arcsec=cfg.relcal_match_radius_arcsec,
                                         min_stars=cfg.relcal_min_stars, clip_sigma=cfg.relcal_clip_sigma)
        for i, a in zip(have, ast.exposures):
            if a.corrected:
                prepared[i].wcs = a.wcs
                stars[i].wcs = a.wcs  # the photometry matches with the corrected positions
        meta["reasons"] += ast.reasons
        meta["astrometry"] = _jsonable({
            "anchored": ast.anchored, "rms_arcsec": ast.rms_arcsec, "rms_reference_arcsec": ast.rms_reference_arcsec,
            "n_stars": ast.n_stars, "n_reference": ast.n_reference,
            "exposures": [{k: getattr(a, k) for k in ("name", "corrected", "n_stars", "n_reference", "rms_arcsec",
                                                      "rms_before_arcsec", "shift_arcsec", "rotation_arcsec",
                                                      "scale_ppm", "fold_residual_mas", "reason")}
                          for a in ast.exposures]})
        cards.update({"ASTRRMS": (_card(ast.rms_arcsec, 4), "[arcsec] joint astrometry: rms of the stars"),
                      "ASTRNSTR": (ast.n_stars, "joint astrometry: stars in the fit"),
                      "ASTRNREF": (ast.n_reference, "joint astrometry: of which reference stars"),
                      "ASTRREFR": (_card(ast.rms_reference_arcsec, 4), "[arcsec] rms of the fit vs the reference"),
                      "ASTRANCH": (ast.anchored, "joint astrometry anchored on the reference"),
                      "ASTRNCOR": (sum(a.corrected for a in ast.exposures), "exposures with a joint WCS")})
    if cfg.relative_photometry and sel:
        pho = rel.solve_relative_photometry(sel, radius_arcsec=cfg.relcal_match_radius_arcsec,
                                            min_stars=cfg.relcal_min_stars, clip_sigma=cfg.relcal_clip_sigma)
        for i, p in zip(have, pho.exposures):
            prepared[i].zero_point = p.zero_point
        meta["reasons"] += pho.reasons
        meta["photometry"] = _jsonable({
            "rms_mag": pho.rms_mag, "n_stars": pho.n_stars,
            "exposures": [{k: getattr(p, k) for k in ("name", "offset_mag", "offset_err_mag", "zero_point_in",
                                                      "zero_point", "n_stars", "rms_mag", "reason")}
                          for p in pho.exposures]})
        scaled = [p for p in pho.exposures if p.reason is None]
        cards.update({"RELZPRMS": (_card(pho.rms_mag, 4), "[mag] relative photometry: rms of the stars"),
                      "RELZPN": (pho.n_stars, "relative photometry: stars in common"),
                      "RELZPMAX": (_card(max((abs(p.offset_mag) for p in scaled), default=0.0), 4),
                                   "[mag] largest zero-point offset applied")})
    return cards, meta


def _reference_stars(task: Any, grid: WCS, stars: list[Any]) -> tuple[Any, str | None]:
    """The reference catalog over the tile grid at the mean epoch of the exposures (proper-motion errors
    propagated), as :class:`~upad.coadd.relative.ReferenceStars`; ``(None, reason)`` when there is none."""
    from upad.coadd.relative import ReferenceStars
    from upad.errors import UpadError
    from upad.io.refcat import in_cone, propagate_to_epoch, read_reference_catalog

    path = Path(task.config.reference_catalog)
    if not path.is_absolute():
        path = Path(task.root) / path
    try:
        cat = read_reference_catalog(path)
    except UpadError as exc:
        return None, f"no reference catalog ({exc}): the joint astrometry is internal only"
    nx, ny = grid.pixel_shape
    ra0, dec0 = grid.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
    radius = 0.5 * math.hypot(nx, ny) * float(np.sqrt(abs(np.linalg.det(grid.pixel_scale_matrix)))) + 0.01
    cat = in_cone(cat, float(ra0[0]), float(dec0[0]), radius)
    epochs = [s.epoch for s in stars if s.epoch is not None]
    epoch = float(np.mean(epochs)) if epochs else None
    if epoch is not None:
        cat = propagate_to_epoch(cat, epoch)
    err_mas = np.sqrt(0.5 * (np.nan_to_num(np.asarray(cat["ra_error"], float)) ** 2 +
                             np.nan_to_num(np.asarray(cat["dec_error"], float)) ** 2))
    return ReferenceStars(ra=np.asarray(cat["ra"]), dec=np.asarray(cat["dec"]),
                          err_arcsec=np.maximum(err_mas, 0.5) / 1e3, pmra=np.asarray(cat["pmra"]),
                          pmdec=np.asarray(cat["pmdec"]), epoch=epoch), None


def _card(value: float, digits: int) -> float:
    return round(float(value), digits) if np.isfinite(value) else -1.0


def _jsonable(obj: Any) -> Any:
    """NaN → None, tuples → lists, numpy scalars → Python (the database's JSON)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 6) if np.isfinite(obj) else None
    return obj


def run_coadd(step: Any, task: Any) -> Any:
    """The ``coadd`` step's worker: read, prepare, resample and combine the exposures block by block, write the
    product (see the module documentation)."""
    from upad.coadd.combine import CombineConfig, InputExposure, iter_resampled_combined_blocks, psf_tolerance
    from upad.coadd.resample import ResampleConfig
    from upad.coadd.tiling import centred_grid, grid_overlap
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
    stars: list[Any] = []  # per prepared exposure, its usable stars (the joint astrometry and photometry)
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
        elif not (hit := grid_overlap(fr.wcs, fr.image.shape, grid, shape))[0]:
            refused.append(f"{name}: does not overlap the tile grid (its centre is {hit[1]:.3f} deg from the "
                           "tile's; wrong tile in its header?)")
        else:
            ex = prepare_exposure(fr, zero_point=float(fr.zero_point), name=name, product_id=r.id)
            stars.append(catalog_stars(fr, name=name, min_snr=cfg.relcal_min_snr))
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
    relcal_cards, meta["relative_calibration"] = relative_calibration(prepared, stars, task=task, grid=grid)
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
    # each input's PSF against the median input's: tolerated by the rejection (bright stars' cores)
    psf_amp = psf_tolerance([e.fwhm_arcsec for e in prepared], factor=float(cfg.clip_psf))
    for y0, y1, res, noise_sums in iter_resampled_combined_blocks(
            exposures, dst_wcs=grid, dst_shape=shape, gains=gains, exptimes=exptimes, psf_ampfrac=psf_amp,
            noise="weight", block_rows=cfg.block_rows, config=combine,
            resample_config=ResampleConfig(kernel=cfg.resampling_kernel)):
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
    fwhms = [e.fwhm_arcsec for e in prepared if e.fwhm_arcsec]  # the reduced frames' own FWHM, of those combined
    stem = f"coadd_TILE-{int(ctx['tile_id']):05d}_{ctx['filter']}"
    staged = task.stage(f"{stem}.fits")
    header = grid.to_header()
    cards = {
        "TILE_ID": (int(ctx["tile_id"]), "survey pointing (ref_tile_id of every filter)"),
        "FILTER": (ctx["filter"], "filter"),
        "INSTRUME": (ctx["instrument"], "instrument"),
        "BUNIT": ("count", "m_AB = MAGZP - 2.5 log10(count)"),
        "MAGZP": (round(zp, 5), "[mag] AB zero point of the coadd"),
        "NCOMBINE": (int(used.sum()), "exposures that contribute"),
        "EXPTIME": (float(np.max(expmap)), "[s] largest summed exposure time"),
        "DEPTH5": (round(depth, 3), "[mag] 5 sigma, 3 arcsec aperture, median weight"),
        "NOISECOR": (round(correlation, 4), "true/naive noise of pixel sums (resampling)"),
        "RESAMPK": (cfg.resampling_kernel, "resampling kernel"),
        "CLIPSIG": (cfg.clip_sigma, "outlier rejection CLIP_SIGMA"),
        "CLIPAMP": (cfg.clip_ampfrac, "outlier rejection CLIP_AMPFRAC"),
        "UPADPROV": (task.provenance_id[:12], "provenance id of this product"),
    }
    cards.update(relcal_cards)
    if fwhms:
        cards["FWHMIN"] = (round(float(np.median(fwhms)), 3), "[arcsec] median FWHM of the inputs")
    # where an input that covers a pixel did not contribute (rejected, or masked in the input), the PSF is another
    # set's combination: stars there are not PSF stars
    incomplete = incomplete_inputs(rejected, nexp)
    psf, psf_note, phot = coadd_psf(image, weight, pixel_scale=scale, config=cfg, incomplete=incomplete)
    del incomplete
    own_tail = None
    if phot is not None:  # the coadd's own measurement of the wing, kept in the meta
        own_tail = [round(float(phot.apcor.tail), 5), phot.apcor.tail_source]
        phot = _tail_from_inputs(phot, [e for e, n in zip(prepared, counts) if n > 0])
    if psf is not None:
        cards.update(psf_cards(psf))
    if phot is not None:
        cards.update(apcor_cards(phot))
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
    if psf is not None:
        from upad.io.products import write_psf

        staged_psf = write_psf(task.stage(f"{stem}_psf.fits"), psf,
                               provenance={"product": task.provenance_id[:12]})
        files.append(OutputFile("psf", str(staged_psf), step.final_path(task, staged_psf.name)))
    preview = task.stage(f"{stem}.png")
    write_png(preview, render_preview(np.where(covered, image, 0.0).astype(np.float32)))
    files.append(OutputFile("preview", str(preview), step.final_path(task, preview.name)))
    coverage = float(covered.mean())
    meta.update({"zero_point": round(zp, 5), "n_exposures": int(used.sum()), "depth_5sigma_3arcsec": round(depth, 3),
                 "noise_correlation": round(correlation, 4), "coverage": round(coverage, 4),
                 "rejected_pixels": [int(v) for v in n_rejected],
                 "psf_tolerance": [round(float(v), 4) for v in psf_amp], "input_zero_points": [round(z, 4) for z in zps],
                 "shape": [ny, nx], "qc_reasons": []})
    meta.update(psf_meta(psf))
    meta["apcor"] = apcor_meta(phot)
    if meta["apcor"] is not None:
        meta["apcor"]["own_tail"] = own_tail
    if psf is not None and phot is None:
        meta["qc_reasons"].append(psf_note)
    if refused:
        meta["qc_reasons"].append(f"{len(refused)} exposure(s) left out: " + "; ".join(refused[:3]))
    if psf is None:
        meta["qc_reasons"].append(f"no PSF model of the coadd: {psf_note}")
    return StepOutput(files=files, meta=meta, qc_status="warn" if refused or psf is None else "ok")


def incomplete_inputs(rejected: np.ndarray, nexp: np.ndarray, *, size: int = 15, block_rows: int = 1024
                      ) -> np.ndarray:
    """Pixels where an input that covers them did not contribute: rejected there (``rejected > 0``), or ``nexp``
    below its maximum within ``size`` pixels (an input masked there). Computed by blocks of rows (with the filter's
    halo: the same as on the whole image), so that the temporary arrays stay small at full size."""
    from scipy.ndimage import maximum_filter

    ny = nexp.shape[0]
    h = size // 2
    out = np.empty(nexp.shape, bool)
    for y0 in range(0, ny, block_rows):
        y1 = min(y0 + block_rows, ny)
        a0, a1 = max(y0 - h, 0), min(y1 + h, ny)
        top = maximum_filter(np.asarray(nexp[a0:a1]), size=size)[y0 - a0:y1 - a0]
        out[y0:y1] = (np.asarray(rejected[y0:y1]) > 0) | (np.asarray(nexp[y0:y1]) < top)
    return out


def _spill(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` written to the ``.npy`` file ``path`` and returned memory-mapped (read-write)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
    out[:] = array
    out.flush()
    return out


def _wcs_only(grid: WCS, what: str) -> fits.Header:
    h = grid.to_header()
    h["COMMENT"] = what
    return h


def _header_cards(h: fits.Header, cards: dict[str, tuple[Any, str]]) -> None:
    for k, (v, c) in cards.items():
        h[k] = (v, c)


# ------------------------------------------------------------------------------------------------ the coadd's PSF
def coadd_psf(image: np.ndarray, weight: np.ndarray, *, pixel_scale: float, config: Any,
              incomplete: np.ndarray | None = None) -> tuple[Any, str, Any]:
    """The PSF model and the point-source aperture correction of a coadd, measured as the reduction measures a
    frame's.

    The sources of ``image`` (background-subtracted counts) are detected with the reduction's detection
    (:func:`upad.reduce.detect.detect_sources`, ``config.detect``; the noise is ``1/sqrt(weight)``, pixels without
    data are ``NODATA``) and the PSF is measured from its bright isolated stars with
    :func:`upad.reduce.psf.measure_psf` (``config.psf``): FWHM and shear over the field, the radial profile and the
    empirical PSF grids. The median FWHM, its extremes and the median ellipticity of the result are those over the
    covered part of the grid (the margins without data are left out).

    Parameters
    ----------
    image, weight : ndarray
        The coadd (counts) and its inverse variance (count⁻²); ``weight = 0`` where no input covers the pixel.
    pixel_scale : float
        arcsec per pixel of the grid.
    config : CoaddConfig
        Its ``detect`` and ``psf`` configurations.
    incomplete : ndarray of bool, optional
        Pixels where some input that covers them did not contribute (rejected there, or masked in the input): a
        star touching them has a combination of another set of PSFs, and is not a PSF star (``SUSPECT`` in its
        ``IMAFLAGS_ISO``).

    Returns
    -------
    (PsfResult or None, str, PointSourcePhotometry or None)
        The PSF analysis, or None with the reason when the coadd has too few usable stars; the aperture correction
        to total flux measured on the PSF stars (:func:`upad.reduce.photometry.point_source_photometry`: the sky
        above the background on blank discs, the stars' stacked wings beyond the largest aperture), or None when it
        cannot be measured (the reason is then added to the note).
    """
    import dataclasses

    from upad import maskbits as mb
    from upad.reduce.detect import detect_sources
    from upad.reduce.errors import ReductionError
    from upad.reduce.photometry import point_source_photometry
    from upad.reduce.psf import measure_psf

    covered = weight > 0
    img = np.asarray(image)
    # the coadd itself where it is already float32, C-ordered and 0 without data (as the combination writes it; a
    # memory-mapped coadd stays on disk): no copy of 340 MB at full size
    if img.dtype != np.float32 or not img.flags.c_contiguous or np.any(img[~covered]):
        img = np.array(image, dtype=np.float32, order="C")
        img[~covered] = 0.0
    var = np.array(weight, dtype=np.float32, order="C")
    np.divide(np.float32(1.0), var, out=var, where=covered)
    if covered.any():
        var[~covered] = np.float32(np.max(var[covered]) * 1e6)
    mask = np.where(covered, 0, mb.NODATA).astype(mb.MASK_DTYPE)
    if incomplete is not None:
        mask[np.asarray(incomplete, bool) & covered] |= mb.SUSPECT
    try:
        cat = detect_sources(img, var, mask, pixel_scale=pixel_scale, config=config.detect).catalog
        snr = np.asarray(cat["FLUX_AUTO"]) / np.maximum(np.asarray(cat["FLUXERR_AUTO"]), 1e-30)
        res = measure_psf(img, np.asarray(cat["XWIN_IMAGE"]) - 1.0, np.asarray(cat["YWIN_IMAGE"]) - 1.0,
                          np.asarray(cat["FLUX_AUTO"]), snr, np.asarray(cat["FLAGS"]),
                          np.asarray(cat["IMAFLAGS_ISO"]), np.asarray(cat["FWHM_IMAGE"], float),
                          np.asarray(cat["ELLIPTICITY"]), np.asarray(cat["FLUX_MAX"]), pixel_scale=pixel_scale,
                          config=config.psf)
    except ReductionError as exc:
        return None, str(exc), None
    phot, note = None, ""
    try:
        phot = point_source_photometry(img, var, mask, cat, res, pixel_scale=pixel_scale,
                                       diameters_arcsec=tuple(config.detect.aper_diameters_arcsec),
                                       bad_bits=mb.UNUSABLE | mb.NODATA, config=config.photometry)
    except ReductionError as exc:
        note = f"no aperture correction: {exc}"
    ny, nx = img.shape
    gy, gx = np.mgrid[0:ny - 1:33j, 0:nx - 1:33j]
    inside = covered[np.round(gy).astype(int), np.round(gx).astype(int)]
    if inside.any():
        fw = res.model.fwhm_at(gx[inside], gy[inside])
        el = res.model.ellipticity_at(gx[inside], gy[inside])
        res = dataclasses.replace(res, fwhm_px=float(np.median(fw)), fwhm_arcsec=float(np.median(fw)) * pixel_scale,
                                  fwhm_min_px=float(fw.min()), fwhm_max_px=float(fw.max()),
                                  ellipticity=float(np.median(el)), ellipticity_max=float(el.max()))
    return res, note, phot


def psf_cards(psf: Any) -> dict[str, tuple[Any, str]]:
    """Header cards of the coadd's PSF (:func:`coadd_psf`)."""
    return {
        "PSFFWHM": (round(psf.fwhm_arcsec, 4), "[arcsec] median PSF FWHM over the coadd (psf file)"),
        "PSFFWMIN": (round(psf.fwhm_min_px * psf.fwhm_arcsec / psf.fwhm_px, 4), "[arcsec] smallest PSF FWHM"),
        "PSFFWMAX": (round(psf.fwhm_max_px * psf.fwhm_arcsec / psf.fwhm_px, 4), "[arcsec] largest PSF FWHM"),
        "PSFBETA": (round(psf.beta, 4), "Moffat-equivalent beta of the coadd PSF"),
        "PSFELLIP": (round(psf.ellipticity, 4), "median PSF ellipticity 1 - b/a"),
        "PSFNSTAR": (int(psf.n_stars), "stars of the coadd PSF model"),
    }


def _tail_from_inputs(phot: Any, inputs: Sequence[PreparedExposure]) -> Any:
    """``phot`` with the tail of its aperture correction from the inputs' (:func:`inputs_tail`), the shares of the
    flux their median scaled weights (``e.weight``, already divided by the scale squared); unchanged (the coadd's
    own tail) when an input has no ``APCTAIL`` or another largest aperture."""
    import dataclasses

    a = phot.apcor
    if not inputs or any(e.apc_tail is None or (e.apc_big_diameter is not None and
                                                abs(e.apc_big_diameter - a.large_diameter_arcsec) > 1e-6)
                         for e in inputs):
        return phot
    shares = []
    for e in inputs:
        w = np.asarray(e.weight[::16, ::16], np.float64)
        shares.append(float(np.median(w[w > 0])) if np.any(w > 0) else 0.0)
    try:
        tail = inputs_tail(shares, [float(e.apc_tail) for e in inputs])
    except ValueError:
        return phot
    apc = dataclasses.replace(a, median=a.median / a.tail * tail, tail=tail, tail_source="inputs")
    return dataclasses.replace(phot, apcor=apc)


def apcor_cards(phot: Any) -> dict[str, tuple[Any, str]]:
    """Header cards of the coadd's aperture correction (:func:`coadd_psf`), as a reduced frame's."""
    a = phot.apcor
    return {
        "APCOR": (round(a.median, 5), "median aperture correction to total"),
        "APCORDIA": (a.diameter_arcsec, "[arcsec] aperture the correction applies to"),
        "APCTAIL": (round(a.tail, 5), "flux beyond the largest aperture: 1 + tail"),
        "APCTSRC": (a.tail_source, "tail: inputs, measured (star wings), model"),
        "APCNSTAR": (int(a.n_stars), "stars of the aperture correction"),
        "APSKYOFF": (round(float(phot.blank.level), 5), "[count/pix] sky mean above the background"),
    }


def apcor_meta(phot: Any) -> dict[str, Any] | None:
    """The product metadata of the coadd's aperture correction (its polynomial over the grid), None without."""
    if phot is None:
        return None
    a = phot.apcor
    return {"median": float(a.median), "diameter_arcsec": float(a.diameter_arcsec), "tail": float(a.tail),
            "tail_source": a.tail_source, "rms": float(a.rms), "n_stars": int(a.n_stars), "order": int(a.order),
            "coef": [float(c) for c in np.ravel(a.coef)], "shape": [int(v) for v in a.shape],
            "sky_offset": float(phot.blank.level)}


def psf_meta(psf: Any) -> dict[str, Any]:
    """The product metadata of the coadd's PSF (None values without a model)."""
    if psf is None:
        return {"psf_fwhm_arcsec": None, "psf_beta": None, "psf_ellipticity": None, "psf_n_stars": 0}
    return {"psf_fwhm_arcsec": round(psf.fwhm_arcsec, 4), "psf_beta": round(psf.beta, 4),
            "psf_ellipticity": round(psf.ellipticity, 4), "psf_n_stars": int(psf.n_stars)}
