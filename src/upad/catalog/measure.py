"""Single- and dual-mode catalogs of coadds (pure algorithm: arrays and PSF models in, an astropy Table out).

Dual mode (:func:`dual_mode_catalog`), as SExtractor's ``source-extractor det.fits,meas.fits``: sources are detected
on the detection band (rSDSS in J-PLUS) with the reduction's detection (:func:`upad.reduce.detect.detect_sources`,
its segmentation kept) and every band is measured in the detection's apertures:

- ``APER``: circles of ``aper_diameters_arcsec`` (J-PLUS: 0.8, 1, 1.2, 1.5, 2, 3, 4, 6″);
- ``AUTO``: the detection's Kron ellipse; ``PETRO``: the detection's Petrosian ellipse (``petro_factor`` times the
  radius where the local surface brightness is ``petro_eta`` of the mean inside, as SExtractor's PETRO_PARAMS);
- ``ISO``: the detection's isophotal footprint (segmentation);
- in APER, AUTO and PETRO the pixels of neighbours are replaced by their mirror about the source's centre
  (SExtractor's MASK_TYPE CORRECT, the reduction's :func:`upad.reduce.detect._phot_corrected`);
- ``PSFCOR`` (Molino et al. 2014): AUTO photometry at the detection band's PSF. For a band with a broader PSF, the
  detection image is degraded to that band's PSF (:mod:`upad.catalog.homogenise`) and the band's AUTO flux is
  multiplied by the ratio of the detection's AUTO fluxes on the original and the degraded image; a band with a
  narrower PSF is itself degraded to the detection's PSF and measured in AUTO. Colours from PSFCOR are colours at one
  PSF, whatever each band's seeing;
- ``APER3_WORSTPSF``: every band degraded to the broadest PSF of the bands, 3″ circles;
- ``APER_COR_3_0``/``APER_COR_6_0``: the 3″/6″ apertures divided by the band PSF model's enclosed fraction.

Errors are the background noise of the pixel sums from the weight map (inverse variance) times the coadd's
``NOISECOR`` (resampling correlates the coadd's noise), plus the source's Poisson noise when the band's ``gain``
(e- per count) is given. PSFCOR errors are the band's AUTO error times the correction; the worst-PSF errors are the
band's own 3″ errors (a degraded image's noise is correlated further; the undegraded error is the conservative one).

Magnitudes are AB: ``MAG = MAGZP − 2.5 log10(FLUX)``, ``MAG_ERR = 1.0857 FLUXERR / FLUX``. A measurement with
``FLUX < min_snr · FLUXERR`` is a non-detection, as in J-PLUS: ``MAG = 99`` and ``MAG_ERR`` the ``upper_limit_nsigma``
upper limit ``MAGZP − 2.5 log10(upper_limit_nsigma · FLUXERR)``.

Single mode (:func:`single_mode_catalog`): one band detected and measured on itself (no PSFCOR, no worst-PSF).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce.detect import DetectConfig

__all__ = ["BandImage", "CatalogConfig", "Sources", "dual_mode_catalog", "single_mode_catalog",
           "detect_catalog_sources", "aper_column_suffix", "petrosian_radius", "magnitudes"]

#: J-PLUS's aperture diameters (arcsec)
JPLUS_APERTURES = (0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0)
#: magnitude of a non-detection (J-PLUS)
NON_DETECTION = 99.0


@dataclass(frozen=True)
class CatalogConfig(StepConfig):
    """Parameters of the single- and dual-mode catalogs."""

    aper_diameters_arcsec: tuple[float, ...] = param(JPLUS_APERTURES, doc="diameters of the MAG_APER apertures "
                                                     "(J-PLUS's)", unit="arcsec")
    worst_psf_aperture_arcsec: float = param(3.0, doc="diameter of the MAG_APER3_WORSTPSF aperture",
                                             bounds=(0.1, 60.0), unit="arcsec")
    kron_factor: float = param(2.5, doc="Kron factor of AUTO (SExtractor PHOT_AUTOPARAMS)", bounds=(0.5, 10.0))
    kron_min_radius: float = param(3.5, doc="smallest AUTO ellipse, in units of A and B (PHOT_AUTOPARAMS)",
                                   bounds=(0.0, 20.0))
    petro_factor: float = param(2.0, doc="PETRO ellipse = this x the Petrosian radius (SExtractor PHOT_PETROPARAMS)",
                                bounds=(0.5, 10.0))
    petro_min_radius: float = param(3.5, doc="smallest PETRO ellipse, in units of A and B (PHOT_PETROPARAMS)",
                                    bounds=(0.0, 20.0))
    petro_eta: float = param(0.2, doc="the Petrosian radius is where the local surface brightness is this fraction "
                             "of the mean inside", bounds=(0.01, 0.99))
    min_snr: float = param(1.0, doc="a band's flux below this S/N is a non-detection (MAG = 99)", bounds=(0.0, 100.0))
    upper_limit_nsigma: float = param(1.0, doc="the MAG_ERR of a non-detection is the upper limit at this many "
                                      "sigma", bounds=(0.1, 100.0))
    background_mesh_arcsec: float = param(64.0, doc="mesh of the residual background subtracted from each coadd "
                                          "(sep.Background, as SExtractor's BACK_SIZE)", bounds=(5.0, 10000.0),
                                          unit="arcsec")
    background_filter: int = param(3, doc="median filter of the background meshes (BACK_FILTERSIZE)",
                                   bounds=(1, 15))
    target_broadening: float = param(1.1, doc="the common PSF of the homogenised photometry (PSFCOR, worst-PSF "
                                     "apertures): the broadest band's PSF model broadened to this factor of its FWHM "
                                     "by a Gaussian, so that every band, whatever its profile, can be degraded to it",
                                     bounds=(1.0, 3.0))
    kernel_taper: float = param(0.0, doc="Tukey window of the PSF-matching kernels (tapered fraction; 0: none, the "
                                "PSF models are noise-free)", bounds=(0.0, 1.0))
    nodata_bits: int = param(mb.NODATA, doc="mask bits of pixels without data (not detected, not measured)",
                             bounds=(0, 32767))
    detect: DetectConfig = DetectConfig(thresh=1.5, minarea=5)


@dataclass
class BandImage:
    """One band's coadd, as the catalogs measure it.

    Attributes
    ----------
    name : str
        Filter name.
    image : ndarray
        The coadd (counts at ``magzp``).
    weight : ndarray
        Inverse variance per pixel (0: no data).
    magzp : float
        AB magnitude of one count.
    psf : PsfModel
        The coadd's PSF model (:class:`upad.reduce.psf.PsfModel`, pixel units).
    mask : ndarray, optional
        Bit-coded mask (``upad.maskbits``).
    noisecor : float
        True / naive noise of pixel sums (the coadd's ``NOISECOR``).
    gain : float, optional
        e- per count, for the sources' Poisson noise (None: background noise only).
    """

    name: str
    image: np.ndarray
    weight: np.ndarray
    magzp: float
    psf: Any
    mask: np.ndarray | None = None
    noisecor: float = 1.0
    gain: float | None = None

    @property
    def fwhm_px(self) -> float:
        ny, nx = self.psf.shape
        return float(self.psf.fwhm_at((nx - 1) / 2.0, (ny - 1) / 2.0)[0])


def aper_column_suffix(diameter_arcsec: float) -> str:
    """``3.0`` → ``'3_0'`` (J-PLUS's column names: ``MAG_APER_3_0``)."""
    return f"{float(diameter_arcsec):.1f}".replace(".", "_")


def magnitudes(flux: np.ndarray, err: np.ndarray, magzp: float | np.ndarray, *, min_snr: float = 1.0,
               upper_limit_nsigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitudes and errors, with J-PLUS's non-detections (``MAG = 99``, ``MAG_ERR`` = the upper limit)."""
    flux = np.asarray(flux, np.float64)
    err = np.asarray(err, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = np.isfinite(flux) & np.isfinite(err) & (flux > 0) & (flux >= min_snr * err)
        mag = np.where(det, magzp - 2.5 * np.log10(np.where(det, flux, 1.0)), NON_DETECTION)
        merr = np.where(det, 2.5 / math.log(10.0) * err / np.where(det, flux, 1.0), np.nan)
        lim = magzp - 2.5 * np.log10(np.where(err > 0, upper_limit_nsigma * err, np.nan))
        merr = np.where(det, merr, np.where(np.isfinite(lim), lim, NON_DETECTION))
    return mag.astype(np.float32), merr.astype(np.float32)


def _prepare(band: BandImage, config: CatalogConfig, pixel_scale: float) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """Background-subtracted float32 image, variance, valid pixels, background map and mask of one band."""
    import sep

    img = np.ascontiguousarray(band.image, dtype=np.float32)
    w = np.asarray(band.weight, np.float32)
    if img.shape != w.shape:
        raise ValueError(f"{band.name}: image {img.shape} and weight {w.shape} differ in shape")
    mask = np.zeros(img.shape, np.int16) if band.mask is None else np.asarray(band.mask).astype(np.int16)
    valid = (w > 0) & np.isfinite(img) & ((mask & int(config.nodata_bits)) == 0)
    if not valid.any():
        raise ValueError(f"{band.name}: the coadd has no pixel with data")
    mask = np.where(valid, mask, mask | np.int16(mb.NODATA)).astype(np.int16)
    img = np.where(valid, img, np.float32(0))
    mesh = max(8, int(round(config.background_mesh_arcsec / pixel_scale)))
    mesh = min(mesh, max(8, min(img.shape) // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = sep.Background(img, mask=~valid, bw=mesh, bh=mesh, fw=config.background_filter,
                             fh=config.background_filter)
    back = bkg.back().astype(np.float32)
    img = np.ascontiguousarray(np.where(valid, img - back, np.float32(0)), dtype=np.float32)
    var = np.where(valid, 1.0 / np.where(valid, w, 1.0), np.float32(0)).astype(np.float32)
    return img, var, valid, back, mask


def petrosian_radius(image: np.ndarray, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
                     theta: np.ndarray, *, eta: float = 0.2, rmax: float = 12.0, step: float = 0.25) -> np.ndarray:
    """Petrosian radius in units of ``a`` and ``b`` (elliptical, as SExtractor): the radius ``R`` where the surface
    brightness in the elliptical annulus [0.8 R, 1.25 R] is ``eta`` times the mean surface brightness within ``R``.
    Objects where the ratio never falls below ``eta`` within ``rmax`` get ``rmax``; 0 where undefined."""
    import sep

    radii = np.arange(1.0, rmax + step / 2, step)
    n = len(x)
    ratio = np.full((len(radii), n), np.nan)
    for k, r in enumerate(radii):
        f_in, _, _ = sep.sum_ellipse(image, x, y, a, b, theta, r, subpix=5)
        f_an, _, _ = sep.sum_ellipann(image, x, y, a, b, theta, 0.8 * r, 1.25 * r, subpix=5)
        area_in = math.pi * r * r * a * b
        area_an = math.pi * (1.25 ** 2 - 0.8 ** 2) * r * r * a * b
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[k] = (f_an / area_an) / (f_in / area_in)
    out = np.full(n, rmax)
    below = np.isfinite(ratio) & (ratio < eta)
    first = np.where(below.any(0), below.argmax(0), -1)
    for j in np.flatnonzero(first >= 0):
        k = first[j]
        if k == 0:
            out[j] = radii[0]
            continue
        r0, r1, q0, q1 = radii[k - 1], radii[k], ratio[k - 1, j], ratio[k, j]
        out[j] = r0 + (q0 - eta) / (q0 - q1) * (r1 - r0) if np.isfinite(q0) and q0 != q1 else r1
    out[~np.isfinite(ratio).any(0)] = 0.0
    return out


@dataclass
class _Detection:
    """The detection band's sources and footprints (0-based positions)."""

    table: Any
    seg: np.ndarray
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    kron: np.ndarray
    petro: np.ndarray
    cxx: np.ndarray
    cyy: np.ndarray
    cxy: np.ndarray
    back: np.ndarray | None = None    # the detection band's background map
    mask: np.ndarray | None = None    # the detection band's mask
    var_at: np.ndarray | None = None  # the detection band's pixel variance at each source


def _photometry(img: np.ndarray, var: np.ndarray, det: _Detection, radii_px: np.ndarray,
                ellipse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour-corrected circular apertures and ellipse (``ellipse``: its size in units of A and B) of every
    detection on ``img``: aperture sums, their variances, ellipse sum, variance and the APER_TRUNC flags (OR)."""
    import sep

    from upad.reduce.detect import _phot_corrected

    ids = np.arange(1, len(det.x) + 1, dtype=np.int32)
    fa, va, fla, fe, ve, fle, _ = _phot_corrected(
        img, var, det.seg, det.x, det.y, ids, np.asarray(radii_px, np.float64), det.cxx, det.cyy, det.cxy,
        np.asarray(ellipse, np.float64), 5, True, True, int(sep.APER_TRUNC))
    return fa, va, fe, ve, fla | fle


@dataclass
class Sources:
    """What the catalogs' detection finds (:func:`detect_catalog_sources`): the reduction's detection table, its
    segmentation (ids = ``NUMBER``) and 0-based positions."""

    table: Any
    seg: np.ndarray
    x: np.ndarray
    y: np.ndarray


def detect_catalog_sources(img: np.ndarray, var: np.ndarray, mask: np.ndarray, *, pixel_scale: float,
                           config: CatalogConfig = CatalogConfig()) -> Sources:
    """The catalogs' detection on a background-subtracted float32 image with its variance (infinite where there is
    no data) and mask: :func:`upad.reduce.detect.detect_sources` with ``config.detect``, the segmentation kept.

    Raises
    ------
    upad.reduce.errors.ReductionError
        ``no_sources`` when nothing is detected.
    """
    from upad.reduce.detect import detect_sources

    # the reduction's neighbour-corrected photometry is not needed here: every band is measured afterwards
    dcfg = dataclasses.replace(config.detect, mask_neighbours=False)
    res = detect_sources(img, var, mask, pixel_scale=pixel_scale, config=dcfg, segmentation=True)
    cat = res.catalog
    return Sources(cat, np.ascontiguousarray(res.segmentation, dtype=np.int32),
                   np.asarray(cat["X_IMAGE"], np.float64) - 1.0, np.asarray(cat["Y_IMAGE"], np.float64) - 1.0)


def _detect(img: np.ndarray, var: np.ndarray, mask: np.ndarray, *, pixel_scale: float,
            config: CatalogConfig) -> _Detection:
    import sep

    from upad.reduce.detect import _shape_params

    src = detect_catalog_sources(img, var, mask, pixel_scale=pixel_scale, config=config)
    cat, seg, x, y = src.table, src.seg, src.x, src.y
    objs = np.zeros(len(cat), dtype=[("a", "f8"), ("b", "f8"), ("theta", "f8")])
    objs["a"], objs["b"] = cat["A_IMAGE"], cat["B_IMAGE"]
    objs["theta"] = np.radians(np.asarray(cat["THETA_IMAGE"], np.float64))
    a, b, theta = _shape_params(objs)
    kr, _ = sep.kron_radius(img, x, y, a, b, theta, 6.0, segmap=seg, seg_id=np.arange(1, len(x) + 1,
                                                                                     dtype=np.int32))
    kr = np.where(np.isfinite(kr) & (kr > 0), kr, 0.0)
    kron = np.maximum(config.kron_factor * kr, config.kron_min_radius)
    rp = petrosian_radius(img, x, y, a, b, theta, eta=config.petro_eta)
    petro = np.maximum(config.petro_factor * rp, config.petro_min_radius)
    cxx, cyy, cxy = sep.ellipse_coeffs(a, b, theta)
    return _Detection(cat, seg, x, y, a, b, theta, kron, petro, np.asarray(cxx, np.float64),
                      np.asarray(cyy, np.float64), np.asarray(cxy, np.float64))


def _errors(variance_sum: np.ndarray, flux: np.ndarray, band: BandImage) -> np.ndarray:
    e2 = np.asarray(variance_sum, np.float64) * float(band.noisecor) ** 2
    if band.gain:
        e2 = e2 + np.maximum(np.asarray(flux, np.float64), 0.0) / float(band.gain)
    return np.sqrt(e2)


def _band_flags(det: _Detection, trunc: np.ndarray, band_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SExtractor-like FLAGS of the band (the detection's 1, 2, 8; 4 from the band's saturated pixels; 16 from the
    apertures) and MASK_FLAGS (OR of the band's mask bits over the footprint)."""
    import sep

    from upad.reduce.detect import _footprint_flags

    base = np.asarray(det.table["FLAGS"], np.int64) & (1 | 2 | 8)
    mflags, _ = _footprint_flags(det.seg, band_mask, 0, len(det.x))
    flags = base | np.where((mflags & (mb.SATURATED | mb.BLEED)) != 0, 4, 0)
    flags = flags | np.where((trunc & sep.APER_TRUNC) != 0, 16, 0)
    return flags.astype(np.int16), mflags.astype(np.int32)


def _measure_bands(det: _Detection, det_img: np.ndarray, det_var: np.ndarray, det_valid: np.ndarray,
                   det_band: BandImage, bands: Sequence[BandImage], *, pixel_scale: float, config: CatalogConfig,
                   homogenise: bool) -> dict[str, np.ndarray]:
    """Per-band measurements, each ``(n_sources, n_bands)`` (apertures ``(n_sources, n_bands, n_apertures)``)."""
    from upad.catalog.homogenise import degrade, matching_kernel, psf_stamp, target_psf

    n, nb = len(det.x), len(bands)
    diam = np.asarray(config.aper_diameters_arcsec, np.float64)
    r_ap = diam / pixel_scale / 2.0
    r_worst = np.array([config.worst_psf_aperture_arcsec / pixel_scale / 2.0])
    out: dict[str, np.ndarray] = {}

    def new(*extra):
        return np.full((n, nb) + extra, np.nan)

    for key in ("FLUX_AUTO", "FLUXERR_AUTO", "FLUX_ISO", "FLUXERR_ISO", "FLUX_PETRO", "FLUXERR_PETRO",
                "FLUX_PSFCOR", "FLUXERR_PSFCOR", "PSFCOR_FACTOR", "FLUX_APER3_WORSTPSF", "FLUXERR_APER3_WORSTPSF",
                "FLUX_APER_COR_3_0", "FLUXERR_APER_COR_3_0", "FLUX_APER_COR_6_0", "FLUXERR_APER_COR_6_0",
                "BACKGROUND"):
        out[key] = new()
    out["FLUX_APER"] = new(len(diam))
    out["FLUXERR_APER"] = new(len(diam))
    out["FLAGS"] = np.zeros((n, nb), np.int16)
    out["MASK_FLAGS"] = np.zeros((n, nb), np.int32)
    out["NORM_WMAP_VAL"] = new()
    target = None
    if homogenise:
        target, out["_target_fwhm_px"] = target_psf([b.psf for b in bands] + [det_band.psf],
                                                    broadening=config.target_broadening)

        def _kernel_to(psf, tgt):
            return matching_kernel(psf_stamp(psf, tgt.shape[0]), tgt, taper=config.kernel_taper)

        # Molino et al.'s correction: the detection band's AUTO flux on its own image over that at the target PSF
        deg = degrade(det_img, _kernel_to(det_band.psf, target), valid=det_valid)
        _, _, f_det_t, _, _ = _photometry(deg, det_var, det, r_ap[:1], det.kron)
        del deg
        _, _, f_det, _, _ = _photometry(det_img, det_var, det, r_ap[:1], det.kron)
        with np.errstate(divide="ignore", invalid="ignore"):
            psfcor_factor = np.where(f_det_t > 0, f_det / f_det_t, np.nan)
    seg_flat = det.seg.ravel()
    xi = np.clip(np.round(det.x).astype(int), 0, det.seg.shape[1] - 1)
    yi = np.clip(np.round(det.y).astype(int), 0, det.seg.shape[0] - 1)
    for j, band in enumerate(bands):
        if band is det_band:
            img, var, valid, back, mask = det_img, det_var, det_valid, det.back, det.mask
        else:
            if band.image.shape != det_img.shape:
                raise ValueError(f"{band.name}: the coadd's grid {band.image.shape} is not the detection band's "
                                 f"{det_img.shape} (dual mode needs one pixel grid)")
            img, var, valid, back, mask = _prepare(band, config, pixel_scale)
        fa, va, fe, ve, trunc = _photometry(img, var, det, r_ap, det.kron)
        out["FLUX_APER"][:, j] = fa
        out["FLUXERR_APER"][:, j] = np.stack([_errors(va[:, k], fa[:, k], band) for k in range(len(diam))], 1)
        out["FLUX_AUTO"][:, j] = fe
        out["FLUXERR_AUTO"][:, j] = _errors(ve, fe, band)
        _, _, fp, vp, tp = _photometry(img, var, det, r_ap[:1], det.petro)
        out["FLUX_PETRO"][:, j] = fp
        out["FLUXERR_PETRO"][:, j] = _errors(vp, fp, band)
        iso = np.bincount(seg_flat, weights=img.ravel(), minlength=n + 1)[1:]
        iso_v = np.bincount(seg_flat, weights=var.ravel(), minlength=n + 1)[1:]
        out["FLUX_ISO"][:, j] = iso
        out["FLUXERR_ISO"][:, j] = _errors(iso_v, iso, band)
        out["BACKGROUND"][:, j] = back[yi, xi]
        w = np.asarray(band.weight)  # no copy: the median and the sources' values are all that is needed
        wmed = float(np.median(w[valid])) if valid.any() else 1.0
        out["NORM_WMAP_VAL"][:, j] = w[yi, xi].astype(np.float64) / wmed
        flags, mflags = _band_flags(det, trunc | tp, mask)
        out["FLAGS"][:, j] = flags
        out["MASK_FLAGS"][:, j] = mflags
        for d, key in ((3.0, "3_0"), (6.0, "6_0")):
            r = d / pixel_scale / 2.0
            k = np.flatnonzero(np.isclose(diam, d))
            if len(k):  # one of the catalog's apertures (J-PLUS's are)
                f_ap, e_ap = fa[:, k[0]], out["FLUXERR_APER"][:, j, k[0]]
            else:
                f1, v1, _, _, _ = _photometry(img, var, det, np.array([r]), np.zeros(n))
                f_ap, e_ap = f1[:, 0], _errors(v1[:, 0], f1[:, 0], band)
            frac = float(band.psf.enclosed_fraction(r))
            out[f"FLUX_APER_COR_{key}"][:, j] = f_ap / frac
            out[f"FLUXERR_APER_COR_{key}"][:, j] = e_ap / frac
        if homogenise:
            # the band at the common target PSF: AUTO (PSFCOR) and the worst-PSF circle on the degraded image
            deg = degrade(img, _kernel_to(band.psf, target), valid=valid)
            f3, _, f_auto_t, _, _ = _photometry(deg, var, det, r_worst, det.kron)
            del deg
            k3 = np.flatnonzero(np.isclose(r_ap, r_worst[0]))
            v3 = va[:, k3[:1]] if len(k3) else _photometry(img, var, det, r_worst, np.zeros(n))[1]
            out["PSFCOR_FACTOR"][:, j] = psfcor_factor
            out["FLUX_PSFCOR"][:, j] = f_auto_t * psfcor_factor
            out["FLUXERR_PSFCOR"][:, j] = out["FLUXERR_AUTO"][:, j] * np.abs(psfcor_factor)
            out["FLUX_APER3_WORSTPSF"][:, j] = f3[:, 0]
            out["FLUXERR_APER3_WORSTPSF"][:, j] = _errors(v3[:, 0], f3[:, 0], band)
        if band is not det_band:
            del img, var, valid, back, mask
    return out


def stellar_locus(ratio: np.ndarray, snr: np.ndarray, flags: np.ndarray, *, min_snr: float = 20.0,
                  width: float = 0.06, min_stars: int = 5) -> float:
    """Where the stars lie in ``ratio`` (a source's size over the PSF model's): the median of the densest window
    of relative ``width`` among the unflagged sources with S/N above ``min_snr`` (stars form the tightest clump;
    galaxies spread to larger sizes). 1 when fewer than ``min_stars`` sources are in that window."""
    r = np.asarray(ratio, float)
    good = np.isfinite(r) & (r > 0) & (np.asarray(snr, float) > min_snr) & (np.asarray(flags) & ~1 == 0)
    lr = np.sort(np.log(r[good]))
    if lr.size < min_stars:
        return 1.0
    # for every source, the count within log(1 + width) above it: the densest window starts at the largest
    hi = np.searchsorted(lr, lr + math.log1p(width), side="right")
    count = hi - np.arange(lr.size)
    i = int(np.argmax(count))
    if count[i] < min_stars:
        return 1.0
    return float(np.exp(np.median(lr[i:hi[i]])))


def _catalog(det: _Detection, meas: dict[str, np.ndarray], bands: Sequence[BandImage], det_band: BandImage, *,
             pixel_scale: float, wcs: Any, config: CatalogConfig, dual: bool) -> Any:
    """The output table: detection columns, then per-band fluxes and magnitudes (arrays in dual mode)."""
    from astropy.table import Table

    from upad.reduce.photometry import class_star

    t = det.table
    n = len(det.x)
    cat = Table()
    cat["NUMBER"] = np.arange(1, n + 1, dtype=np.int32)
    for c in ("X_IMAGE", "Y_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE", "A_IMAGE", "B_IMAGE", "THETA_IMAGE",
              "ELONGATION", "ELLIPTICITY", "ISOAREA_IMAGE", "FLUX_RADIUS"):
        cat[c] = t[c]
    if wcs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ra, dec = wcs.all_pix2world(np.asarray(t["XWIN_IMAGE"]) - 1.0, np.asarray(t["YWIN_IMAGE"]) - 1.0, 0)
        cat["ALPHA_J2000"] = np.asarray(ra, np.float64)
        cat["DELTA_J2000"] = np.asarray(dec, np.float64)
        cat["ALPHA_J2000"].unit = cat["DELTA_J2000"].unit = "deg"
    fwhm_px = np.asarray(t["FWHM_IMAGE"], np.float64)
    cat["FWHM_WORLD"] = (fwhm_px * pixel_scale / 3600.0).astype(np.float32)
    cat["FWHM_WORLD"].unit = "deg"
    cat["KRON_RADIUS"] = det.kron.astype(np.float32)
    cat["PETRO_RADIUS"] = det.petro.astype(np.float32)
    flux_det = np.asarray(t["FLUX_AUTO"], np.float64)
    err_det = np.asarray(t["FLUXERR_AUTO"], np.float64) * float(det_band.noisecor)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(err_det > 0, flux_det / err_det, 0.0)
    t_obj = 2.0 * (fwhm_px / 2.3548) ** 2
    t_psf = det_band.psf.moment_size_at(det.x, det.y)
    # the size of the stars as this catalog measures them: the PSF model's size scaled to the catalog's stellar locus
    # (a coadd's PSF model and the detection's FWHM need not agree to the 3 % the stellarity resolves)
    cat["CLASS_STAR"] = class_star(t_obj, t_psf * stellar_locus(t_obj / t_psf, snr, np.asarray(t["FLAGS"])), snr)
    peak = np.asarray(t["FLUX_MAX"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cat["MU_MAX"] = np.where(peak > 0, det_band.magzp - 2.5 * np.log10(np.where(peak > 0, peak, 1.0)
                                                                            / pixel_scale ** 2),
                                 NON_DETECTION).astype(np.float32)
    cat["MU_MAX"].unit = "mag / arcsec2"
    cat["THRESHOLD"] = (config.detect.thresh * np.sqrt(det.var_at)).astype(np.float32)
    cat["DET_FLAGS"] = np.asarray(t["FLAGS"], np.int16)

    diam = config.aper_diameters_arcsec
    zp = np.array([b.magzp for b in bands], np.float64)
    names = ["AUTO", "ISO", "PETRO", "APER_COR_3_0", "APER_COR_6_0"]
    if dual:
        names += ["PSFCOR", "APER3_WORSTPSF"]
    kw = dict(min_snr=config.min_snr, upper_limit_nsigma=config.upper_limit_nsigma)

    def put(name, values, unit=None):
        v = values if dual else values[:, 0]
        cat[name] = v
        if unit:
            cat[name].unit = unit

    for name in names:
        f, e = meas[f"FLUX_{name}"], meas[f"FLUXERR_{name}"]
        m, me = magnitudes(f, e, zp[None, :], **kw)
        put(f"MAG_{name}", m, "mag")
        put(f"MAG_ERR_{name}", me, "mag")
        put(f"FLUX_{name}", f.astype(np.float32))
        put(f"FLUXERR_{name}", e.astype(np.float32))
    for k, d in enumerate(diam):
        s = aper_column_suffix(d)
        f, e = meas["FLUX_APER"][:, :, k], meas["FLUXERR_APER"][:, :, k]
        m, me = magnitudes(f, e, zp[None, :], **kw)
        put(f"MAG_APER_{s}", m, "mag")
        put(f"MAG_ERR_APER_{s}", me, "mag")
        put(f"FLUX_APER_{s}", f.astype(np.float32))
        put(f"FLUXERR_APER_{s}", e.astype(np.float32))
    if dual:
        put("PSFCOR_FACTOR", meas["PSFCOR_FACTOR"].astype(np.float32))
    put("BACKGROUND", meas["BACKGROUND"].astype(np.float32))
    put("NORM_WMAP_VAL", meas["NORM_WMAP_VAL"].astype(np.float32))
    put("FLAGS", meas["FLAGS"])
    put("MASK_FLAGS", meas["MASK_FLAGS"])
    cat.meta["FILTERS"] = ",".join(b.name for b in bands)
    cat.meta["DETFILT"] = det_band.name
    cat.meta["MAGZP"] = ",".join(f"{v:.4f}" for v in zp)
    cat.meta["APERDIAM"] = ",".join(f"{d:g}" for d in diam)
    cat.meta["PSFFWHM"] = ",".join(f"{b.fwhm_px * pixel_scale:.4f}" for b in bands)
    cat.meta["MODE"] = "dual" if dual else "single"
    if "_target_fwhm_px" in meas:
        cat.meta["PSFTARG"] = round(float(meas["_target_fwhm_px"]) * pixel_scale, 4)
    return cat


def _run(det_band: BandImage, bands: Sequence[BandImage], *, pixel_scale: float, wcs: Any,
         config: CatalogConfig, dual: bool):
    if pixel_scale <= 0:
        raise ValueError(f"pixel_scale = {pixel_scale}: must be positive (arcsec per pixel)")
    img, var, valid, back, mask = _prepare(det_band, config, pixel_scale)
    # detection noise: the background variance, infinite where there is no data (nothing is detected there)
    det_var = np.where(valid, var, np.float32(1e30)).astype(np.float32)
    det = _detect(img, det_var, mask, pixel_scale=pixel_scale, config=config)
    det.back, det.mask = back, mask
    det.var_at = var[np.clip(np.round(det.y).astype(int), 0, var.shape[0] - 1),
                     np.clip(np.round(det.x).astype(int), 0, var.shape[1] - 1)]
    meas = _measure_bands(det, img, var, valid, det_band, bands, pixel_scale=pixel_scale, config=config,
                          homogenise=dual)
    return _catalog(det, meas, bands, det_band, pixel_scale=pixel_scale, wcs=wcs, config=config, dual=dual)


def dual_mode_catalog(detection: BandImage, bands: Sequence[BandImage], *, pixel_scale: float, wcs: Any = None,
                      config: CatalogConfig = CatalogConfig()):
    """Detect on ``detection`` and measure every band of ``bands`` (one pixel grid) in its apertures.

    Parameters
    ----------
    detection : BandImage
        The detection band (it is usually also one of ``bands``: pass the same object).
    bands : sequence of BandImage
        The bands measured, in the order of the catalog's array columns.
    pixel_scale : float
        arcsec per pixel of the grid.
    wcs : astropy.wcs.WCS, optional
        The grid's WCS, for ``ALPHA_J2000``/``DELTA_J2000``.
    config : CatalogConfig

    Returns
    -------
    astropy.table.Table
        One row per detection; per-band columns are arrays ``(n_bands,)`` in the order of ``bands`` (meta
        ``FILTERS``). Column names and units: docs/catalogs.md.

    Raises
    ------
    ValueError
        Bands on another grid, a coadd without data.
    upad.reduce.errors.ReductionError
        Nothing detected (``no_sources``).
    """
    if not bands:
        raise ValueError("dual mode needs at least one band to measure")
    return _run(detection, bands, pixel_scale=pixel_scale, wcs=wcs, config=config, dual=True)


def single_mode_catalog(band: BandImage, *, pixel_scale: float, wcs: Any = None,
                        config: CatalogConfig = CatalogConfig()):
    """Detect and measure one band on itself (scalar columns; no PSFCOR or worst-PSF photometry)."""
    return _run(band, [band], pixel_scale=pixel_scale, wcs=wcs, config=config, dual=False)
