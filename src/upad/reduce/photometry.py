"""Photometric calibration: aperture correction to total flux, zero point against the reference catalog, magnitudes,
and a PSF-based stellarity.

**Aperture correction.** The total flux of a point source is estimated from a mid-size aperture
(``apcor_diameter_arcsec``, a good compromise between noise and sensitivity to the PSF, at least
``apcor_min_diameter_fwhm`` FWHM across: :func:`apcor_aperture`) times the aperture
correction ``F(large) / F(mid)`` measured on the PSF stars (``large`` = the largest catalog aperture) and fitted as a
low-order polynomial over the field (the PSF changes across it), times the fraction of the PSF model beyond the
large aperture (``1 / EE(large)``, a few 0.1 %). The result is ``FLUX_APCOR`` (e-). ``FLUX_AUTO`` misses the wings
of the PSF (about 1-4 % for a Moffat ``beta = 3``): it is the right flux for galaxies, not for stars.

**Zero point.** ``ZP_E`` is the AB magnitude of 1 e-/s: the sigma-clipped, error-weighted mean of
``mag_ref + 2.5 log10(FLUX_APCOR / EXPTIME)`` over unsaturated, unblended reference stars with a survey magnitude in
the frame's filter. ``MAGZP = ZP_E + 2.5 log10(EXPTIME)`` converts the catalog fluxes (e- in the exposure):
``MAG_X = MAGZP - 2.5 log10(FLUX_X)``, ``MAGERR_X = 1.0857 FLUXERR_X / FLUX_X``; non-detections and non-positive
fluxes get 99 (as J-PLUS).

**Stellarity.** ``CLASS_STAR`` (an equivalent of SExtractor's neural-network classifier, from the PSF model): the
size excess ``d = T_object / T_psf - 1`` of the object's adaptive moments over the PSF's at its position, in units
of its uncertainty (``sqrt(8) / SNR`` plus 3 % systematics): ``CLASS_STAR = exp(-z^2 / 2)`` for ``z > 0``, 1
otherwise (1 = point-like, 0 = extended).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from upad.config import StepConfig, param
from upad.reduce.errors import ReductionError

__all__ = ["PhotometryConfig", "ApertureCorrection", "ZeroPoint", "WingTail", "wing_tail", "wing_beta",
           "BlankSky", "blank_sky_level", "apcor_aperture",
           "model_tail_agrees", "aperture_correction", "PointSourcePhotometry", "point_source_photometry",
           "require_apcor_aperture", "zero_point", "add_magnitudes", "class_star"]


@dataclass(frozen=True)
class PhotometryConfig(StepConfig):
    """Parameters of the photometric calibration."""

    apcor_diameter_arcsec: float = param(4.0, doc="aperture whose flux is corrected to the total (must be one of "
                                                  "the catalog apertures; a larger one is taken where "
                                                  "apcor_min_diameter_fwhm asks)", bounds=(0.1, None), unit="arcsec")
    apcor_min_diameter_fwhm: float = param(3.0, doc="the corrected aperture's diameter is at least this many PSF "
                                                    "FWHM (the smallest catalog aperture that is, below the largest): "
                                                    "an aperture of 2 FWHM holds ~94 % of a Gaussian star and its "
                                                    "flux follows every change of the PSF's width over the field "
                                                    "(0.35 % per 1 % of width) that the correction's polynomial "
                                                    "cannot; 0: always apcor_diameter_arcsec", bounds=(0.0, 10.0))
    apcor_order: int = param(2, doc="order of the polynomial of the aperture correction over the field",
                             bounds=(0, 4))
    apcor_min_snr: float = param(100.0, doc="S/N in the largest aperture of the stars that measure the "
                                            "correction", bounds=(5.0, None))
    zp_min_snr: float = param(20.0, doc="S/N of the stars used for the zero point", bounds=(1.0, None))
    zp_clip_sigma: float = param(3.0, doc="outlier rejection of the zero point", bounds=(1.0, 100.0))
    zp_min_stars: int = param(3, doc="fewest reference stars for a zero point", bounds=(1, None))
    zp_max_mag_error: float = param(0.1, doc="largest reference magnitude error used", bounds=(0.0, None),
                                    unit="mag")
    class_star_sys: float = param(0.03, doc="systematic uncertainty of the PSF size in CLASS_STAR",
                                  bounds=(0.0, 1.0))
    zp_reference: str = param("auto", doc="reference magnitudes of the zero point: 'survey' (mag_<filter> "
                                          "columns), 'gaia' (G, BP, RP through the packaged transformation), "
                                          "'auto' (survey where at least zp_min_stars have them, else gaia)",
                              choices=("auto", "survey", "gaia"))
    zp_colour_term: str = param("fit", doc="colour term in BP-RP: 'fit' (when the colours span enough), 'none'",
                                choices=("fit", "none"))
    zp_colour_ref: float = param(1.0, doc="BP-RP at which the zero point is quoted", bounds=(-1.0, 5.0), unit="mag")
    zp_colour_min_spread: float = param(0.15, doc="smallest rms of the stars' BP-RP for a fitted colour term",
                                        bounds=(0.0, None), unit="mag")
    zp_colour_prior: float = param(0.03, doc="width of a Gaussian prior around 0 on the fitted colour term: a "
                                             "camera's colour term against its nominal system is a few hundredths "
                                             "per mag; a frame's own stars determine it only when they are many "
                                             "(0: no prior)", bounds=(0.0, None), unit="mag/mag")
    zp_colour_min_stars: int = param(10, doc="fewest stars for a fitted colour term", bounds=(3, None))
    zp_map_order: int = param(1, doc="order of the residual zero-point map over the field (0: none)",
                              bounds=(0, 3))
    zp_nominal_fallback: bool = param(True, doc="without a usable photometric reference use the nominal zero "
                                                "point (instrument file) with a QC warning instead of failing")
    zp_transform_system: str = param("jplus", doc="packaged Gaia transformation (data/gaia_transforms_<name>.json)")
    tail_method: str = param("measured", doc="flux beyond the largest aperture: 'measured' (the stacked wing profile "
                                             "of the stars, power law beyond), 'model' (the PSF's Moffat fit)",
                             choices=("measured", "model"))
    tail_outer_radius: float = param(3.0, doc="outer radius of the measured wing profile, in units of the largest "
                                              "aperture's radius", bounds=(1.2, 10.0))
    tail_bins: int = param(6, doc="radial bins of the measured wing profile (logarithmic)", bounds=(2, 30))
    tail_max_stars: int = param(300, doc="brightest stars stacked for the wing profile", bounds=(5, None))
    tail_min_stars: int = param(5, doc="fewest stars for a measured wing (else the PSF model's)", bounds=(3, None))
    tail_neighbour_radii: float = param(2.0, doc="neighbours are masked within this many of their isophotal "
                                                 "radii (sqrt(ISOAREA / pi)), at least 2 FWHM", bounds=(0.0, 20.0))
    tail_extrapolate: bool = param(True, doc="add the wing's power law integrated from the outer radius to "
                                             "infinity (off: the total is the flux within the outer radius)")
    tail_model_nsigma: float = param(3.0, doc="the PSF's Moffat tail is kept where the measured wing agrees with it "
                                              "within this many of its errors (0: always the measured one)",
                                     bounds=(0.0, None))
    tail_model_sys: float = param(0.1, doc="systematic uncertainty of a measured annulus' flux relative to the model's "
                                           "in the test of the model's wing (the median de-trending by one power law "
                                           "over an annulus: 3-5 % on the inner annuli of stacked Moffat stars)",
                                  bounds=(0.0, 1.0))
    tail_sky_samples: int = param(200, doc="blank-sky positions whose annulus medians correct the stars' for the "
                                           "sky's median-to-background offset (0: none)", bounds=(0, None))
    tail_min_slope: float = param(2.5, doc="shallowest power law I ~ r^-alpha of the wing (alpha)", bounds=(2.05, None))
    tail_extrapolate_min_slope: float = param(3.0, doc="shallowest power law I ~ r^-alpha extrapolated beyond the "
                                                       "measured profile (a telescope's diffraction wing falls as "
                                                       "r^-3, an atmosphere's as r^-11/3; a shallower slope fitted "
                                                       "over the profile's short baseline is noise or neighbours' "
                                                       "light)", bounds=(2.05, None))
    tail_max_slope: float = param(12.0, doc="steepest power law of the wing (alpha)", bounds=(2.1, None))
    blank_sky_samples: int = param(400, doc="blank-sky positions (a grid) whose mean level over the largest "
                                            "aperture, above the background mesh's clipped mode, is subtracted from "
                                            "the aperture fluxes before the aperture correction (0: none)",
                                   bounds=(0, None))
    blank_sky_min: int = param(30, doc="fewest blank-sky positions for that correction (else none)",
                               bounds=(5, None))


@dataclass
class ApertureCorrection:
    """Aperture correction from ``apcor_diameter`` to the total flux.

    Attributes
    ----------
    median : float
        Median correction factor over the field (multiplies the aperture flux).
    tail : float
        Part of it that is the PSF model's flux beyond the largest aperture (``1 / EE``).
    rms : float
        Scatter of the stars about the fitted correction (relative).
    n_stars : int
    coef : ndarray
        Polynomial coefficients (normalised coordinates, see :mod:`upad.reduce.psf`).
    order : int
    shape : (ny, nx)
    diameter_arcsec, large_diameter_arcsec : float
    tail_source : str
        ``'measured'`` (the stars' stacked wings, :func:`wing_tail`), ``'model (confirmed)'`` (the PSF's Moffat fit,
        its wing within the measured profile's radius agreeing with the measured one) or ``'model'`` (too few stars
        for a measurement).
    tail_error, tail_slope : float
        Uncertainty of the measured tail (relative) and the power-law index of the wing (NaN for the model).
    tail_n_stars : int
        Stars whose wings were stacked (0 for the model).
    tail_beta : float
        Beta of the Moffat tail (the core's and the wing's combined; NaN for a measured tail).
    """

    median: float
    tail: float
    rms: float
    n_stars: int
    coef: np.ndarray
    order: int
    shape: tuple[int, int]
    diameter_arcsec: float
    large_diameter_arcsec: float
    tail_source: str = "model"
    tail_error: float = float("nan")
    tail_slope: float = float("nan")
    tail_n_stars: int = 0
    tail_beta: float = float("nan")

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Correction factor at 0-based positions."""
        from upad.reduce.psf import _poly_design

        ny, nx = self.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        u = (np.atleast_1d(np.asarray(x, float)) - cx) / cx
        v = (np.atleast_1d(np.asarray(y, float)) - cy) / cy
        return (_poly_design(u, v, self.order) @ self.coef) * self.tail


@dataclass
class ZeroPoint:
    """A photometric zero point.

    Attributes
    ----------
    zp_e : float
        AB magnitude of 1 e-/s (``ZP_E``).
    magzp : float
        AB magnitude of 1 e- in the exposure (``MAGZP = ZP_E + 2.5 log10(EXPTIME)``).
    error : float
        Uncertainty of the mean (mag).
    rms : float
        Scatter of the stars (mag).
    n_stars : int
    filter : str
    det_index, ref_index : ndarray
        The stars used.
    """

    zp_e: float
    magzp: float
    error: float
    rms: float
    n_stars: int
    filter: str
    det_index: np.ndarray = field(repr=False)
    ref_index: np.ndarray = field(repr=False)
    #: where the reference magnitudes came from: ``'survey'`` (mag_<filter> columns), ``'gaia'`` (G, BP-RP through
    #: the packaged transformation, :mod:`upad.reduce.photcal`) or ``'nominal'`` (no usable reference: the
    #: instrument file's zero point, ``error`` NaN)
    source: str = "survey"
    #: natural minus reference magnitude per magnitude of BP-RP (``instrumental = reference + colour_term x
    #: (BP-RP - colour_ref)``); ``zp_e`` is the zero point at ``colour_ref``
    colour_term: float = 0.0
    colour_term_error: float = float("nan")
    colour_term_fitted: bool = False
    colour_ref: float = float("nan")
    #: residual zero-point pattern over the field: ``sum coef_k u^p v^q`` (mag, added to ``zp_e``) in the
    #: coordinates ``u = (x - cx) / cx``, ``v = (y - cy) / cy`` of :func:`upad.reduce.psf._poly_design`
    map_order: int = 0
    map_coef: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    map_rms: float = float("nan")
    #: systematic error of the reference in this filter (the transformation's rms), included in ``error``
    systematic: float = 0.0
    #: why the frame has a nominal zero point, or notes on the calibration
    note: str = ""


@dataclass
class WingTail:
    """The flux of a point source beyond the largest catalog aperture, measured on the stars' stacked wings.

    Attributes
    ----------
    fraction : float
        Flux beyond radius ``r_big_px`` over the flux within it (``F_total = F_big (1 + fraction)``).
    error : float
        Its statistical uncertainty.
    slope : float
        Power-law index ``alpha`` of the wing (``I ~ r^-alpha``) over the profile, used beyond it.
    n_stars : int
        Stars stacked.
    radii : ndarray
        Edges of the radial bins (pixels).
    amplitude, amplitude_error : ndarray
        Per bin, ``I(r) r^alpha / F_big`` of the stack (``r`` in pixels: the power law's amplitude, flat where the
        wing is one).
    within, within_error : float or None
        The part of ``fraction`` measured within the profile's outer radius (``fraction`` adds the extrapolation
        beyond it) and its error.
    """

    fraction: float
    error: float
    slope: float
    n_stars: int
    radii: np.ndarray = field(repr=False)
    amplitude: np.ndarray = field(repr=False)
    amplitude_error: np.ndarray = field(repr=False)
    within: float | None = None
    within_error: float | None = None

    def within_fraction(self) -> tuple[float, float]:
        """The flux between the largest aperture and the profile's outer radius (no extrapolation) and its error."""
        if self.within is None:
            return float(self.fraction), float(self.error)
        return float(self.within), float(self.within_error)


def _annulus_integral(r1: np.ndarray | float, r2: np.ndarray | float, alpha: float) -> np.ndarray:
    """``int_r1^r2 2 pi r r^-alpha dr`` (``r2`` may be infinite; ``alpha > 2``)."""
    r1 = np.asarray(r1, float)
    r2 = np.asarray(r2, float)
    with np.errstate(divide="ignore", over="ignore"):
        return 2.0 * np.pi * (r1 ** (2.0 - alpha) - np.where(np.isfinite(r2), r2 ** (2.0 - alpha), 0.0)) / (alpha - 2.0)


def _clipped_mean(v: np.ndarray, e: np.ndarray, nsig: float = 3.0, iters: int = 5) -> tuple[float, float, np.ndarray]:
    """Inverse-variance weighted mean of ``v`` (errors ``e``) clipped at ``nsig`` about the median, the clipping
    scale being the errors inflated by the normalised residuals' robust scatter (star-to-star differences).
    Returns the mean, its error (inflated by the reduced chi of the values kept) and which values were kept."""
    ok = np.isfinite(v) & np.isfinite(e) & (e > 0)
    keep_all = np.zeros(np.shape(v), bool)
    if ok.sum() == 0:
        return float("nan"), float("nan"), keep_all
    idx = np.flatnonzero(ok)
    v, e = np.asarray(v)[ok], np.asarray(e)[ok]
    c = float(np.median(v))
    keep = np.ones(v.size, bool)
    for _ in range(iters):
        z = (v - c) / e
        s = max(1.0, 1.4826 * float(np.median(np.abs(z[keep])))) if keep.any() else 1.0
        new = np.abs(z) <= nsig * s
        if not new.any():
            break
        w = 1.0 / e[new] ** 2
        c = float(np.sum(w * v[new]) / np.sum(w))
        if np.array_equal(new, keep):
            break
        keep = new
    vk, ek = v[keep], e[keep]
    w = 1.0 / ek ** 2
    z = (vk - c) / ek
    chi = max(1.0, float(np.sqrt(np.sum(z ** 2) / max(vk.size - 1, 1))))
    keep_all[idx[keep]] = True
    return c, chi / float(np.sqrt(np.sum(w))), keep_all


@dataclass
class BlankSky:
    """Mean level of the background-subtracted image on blank sky (:func:`blank_sky_level`).

    Attributes
    ----------
    level : float
        Clipped mean over the blank positions of each position's mean pixel (e- per pixel); 0 when too few.
    error : float
        Its standard error (e- per pixel).
    n : int
        Blank positions used.
    """

    level: float
    error: float
    n: int


def _clear_grid(shape: tuple[int, int], *, margin: int, step: int, x: np.ndarray, y: np.ndarray, rn: np.ndarray,
                radius: float, tree) -> np.ndarray:
    """Positions of a grid of ``step`` pixels, ``margin`` pixels inside the image, whose disc of ``radius`` is clear
    of every detection ``x, y`` (each detection's own pixels within ``rn`` of it; ``tree``: their KD-tree, or
    None when there are none). Returns an ``(n, 2)`` array of x, y."""
    ny, nx = shape
    gy, gx = np.mgrid[margin + step // 2:ny - margin:step, margin + step // 2:nx - margin:step]
    pos = np.column_stack([gx.ravel(), gy.ravel()]).astype(float)
    if tree is None or not len(pos):
        return pos
    rmax = float(np.max(rn)) if len(rn) else 0.0
    near = tree.query_ball_point(pos, radius + rmax)
    clear = [not any(math.hypot(x[k] - px, y[k] - py) < radius + rn[k] for k in nb)
             for (px, py), nb in zip(pos, near)]
    return pos[np.asarray(clear, bool)]


def blank_sky_level(image: np.ndarray, mask: np.ndarray | None, x: np.ndarray, y: np.ndarray, *, radius_px: float,
                    neighbour_radius: np.ndarray, bad_bits: int = 0, n_samples: int = 400, min_samples: int = 30,
                    clip: float = 4.0) -> BlankSky:
    """The mean level of a background-subtracted image over discs of ``radius_px`` that hold no detection.

    The background mesh is a clipped mode of the sky; faint undetected sources (and the skew they give the pixel
    distribution) put the *mean* of the sky a few 0.1 e- per pixel above it. An aperture flux is a sum: that excess,
    times the aperture's area, is in every aperture flux (0.2-1 % of the flux of a star at S/N 50-100 within 8″)
    and, larger in the largest aperture, in the aperture correction's ratio of apertures. On a grid of
    ``n_samples`` positions, those whose disc of ``radius_px`` is clear of every detection (by its
    ``neighbour_radius``) and mostly unmasked give the mean of their unmasked pixels; the clipped mean over the
    positions (``clip`` robust sigma, which leaves out a position on an undetected bright galaxy or an unmasked
    artefact, not the faint sources' skew) is the level.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image (e- per pixel).
    mask : ndarray or None
        Mask bits; pixels with any of ``bad_bits`` are left out.
    x, y : ndarray
        0-based positions of every detection.
    radius_px : float
        Radius of the disc (the largest catalog aperture's).
    neighbour_radius : ndarray
        Per detection, the radius within which its pixels count as its own.
    bad_bits : int
    n_samples, min_samples : int
        Grid positions tried; fewest usable for a level (else 0).
    clip : float

    Returns
    -------
    BlankSky
    """
    from scipy.spatial import cKDTree

    ny, nx = image.shape
    h = int(math.ceil(radius_px)) + 1
    x, y = np.asarray(x, float), np.asarray(y, float)
    rn = np.nan_to_num(np.asarray(neighbour_radius, float))
    if n_samples <= 0 or nx <= 2 * h or ny <= 2 * h:
        return BlankSky(0.0, float("nan"), 0)
    step = max(h, int(math.sqrt((nx - 2 * h) * (ny - 2 * h) / n_samples)))
    tree = cKDTree(np.column_stack([x, y])) if len(x) else None
    pos = _clear_grid((ny, nx), margin=h, step=step, x=x, y=y, rn=rn, radius=radius_px, tree=tree)
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    disc = np.hypot(xx, yy) <= radius_px
    vals = []
    for px, py in pos:
        i, j = int(px), int(py)
        sub = image[j - h:j + h + 1, i - h:i + h + 1]
        good = disc & np.isfinite(sub)
        if mask is not None and bad_bits:
            good &= (mask[j - h:j + h + 1, i - h:i + h + 1] & bad_bits) == 0
        if good.sum() < 0.7 * disc.sum():
            continue
        vals.append(float(np.mean(sub[good])))
    v = np.asarray(vals)
    if v.size < max(min_samples, 3):
        return BlankSky(0.0, float("nan"), int(v.size))
    keep = np.ones(v.size, bool)
    for _ in range(5):
        med = np.median(v[keep])
        sig = 1.4826 * np.median(np.abs(v[keep] - med))
        new = np.abs(v - med) <= clip * max(sig, 1e-12)
        if np.array_equal(new, keep):
            break
        keep = new
    return BlankSky(float(np.mean(v[keep])), float(np.std(v[keep]) / math.sqrt(keep.sum())), int(keep.sum()))


def wing_tail(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None, x: np.ndarray, y: np.ndarray,
              flux_big: np.ndarray, stars: np.ndarray, *, r_big_px: float, fwhm_px: float,
              neighbour_radius: np.ndarray, bad_bits: int = 0,
              config: PhotometryConfig = PhotometryConfig()) -> WingTail | None:
    """Measure the flux of a point source beyond the largest catalog aperture from the stars' own pixels.

    The wings of the ``stars`` (their radial profile between ``r_big_px`` and ``tail_outer_radius`` times it, in
    ``tail_bins`` logarithmic annuli, neighbours' pixels masked) are stacked: in each annulus of each star the
    median of ``I(r) r^alpha`` over its unmasked pixels, divided by the star's flux within ``r_big_px``, estimates
    the amplitude of a power-law wing ``I ~ r^-alpha`` (the median makes it robust to faint neighbours and cosmic
    rays, the ``r^alpha`` de-trending keeps it unbiased across the annulus); the stars are combined per annulus by
    a clipped (first per star over its whole wing, then per annulus), inverse-variance weighted mean, and
    ``alpha`` is refitted to the annuli' amplitudes until stable. The same annulus medians measured on a grid of
    ``tail_sky_samples`` blank-sky positions are subtracted first: where faint undetected sources skew the sky, an
    annulus median sits a few 0.1 e-/pixel above the background mesh's clipped mode. The tail is the stacked profile
    integrated over the annuli (``F_total = F_big (1 + fraction)`` within ``tail_outer_radius``); with
    ``tail_extrapolate`` (the default) the power law of the whole profile (``alpha``, never shallower than
    ``tail_extrapolate_min_slope``) with the amplitude of the profile's outer half, integrated analytically from the
    outer radius to infinity, is added (``within``: the part measured within the outer radius). The image must be background-subtracted.

    Parameters
    ----------
    image, variance : ndarray
        Background-subtracted image and its variance (e-, e-^2).
    mask : ndarray or None
        Mask bits; pixels with any of ``bad_bits`` are ignored.
    x, y : ndarray
        0-based positions of every detection (the stars' neighbours too).
    flux_big : ndarray
        Every detection's flux within ``r_big_px``.
    stars : ndarray
        Indices of isolated, unsaturated point sources (e.g. the PSF stars).
    r_big_px, fwhm_px : float
        Radius of the largest aperture; PSF FWHM (neighbours are masked within at least 2 FWHM).
    neighbour_radius : ndarray
        Radius within which each detection's pixels are masked in its neighbours' wings.
    bad_bits : int
    config : PhotometryConfig

    Returns
    -------
    WingTail or None
        None when fewer than ``tail_min_stars`` stars have a usable wing.
    """
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    flux_big = np.asarray(flux_big, float)
    stars = np.asarray(stars, int)
    stars = stars[np.isfinite(flux_big[stars]) & (flux_big[stars] > 0)]
    stars = stars[np.argsort(-flux_big[stars])][:config.tail_max_stars]
    if stars.size < config.tail_min_stars:
        return None
    ny, nx = image.shape
    r_out = config.tail_outer_radius * r_big_px
    edges = np.geomspace(r_big_px, r_out, config.tail_bins + 1)
    nb = len(edges) - 1
    h = int(math.ceil(r_out)) + 1
    rn = np.clip(np.nan_to_num(np.asarray(neighbour_radius, float)), 2.0 * fwhm_px, r_out)
    tree = cKDTree(np.column_stack([x, y]))
    near = tree.query_ball_point(np.column_stack([x[stars], y[stars]]), r_out + float(np.max(rn)))

    def annuli(xc: float, yc: float, nbrs: list, own: int) -> list | None:
        """Radii, values and variances of the usable pixels of each annulus about (xc, yc)."""
        i0, i1 = max(int(round(xc)) - h, 0), min(int(round(xc)) + h + 1, nx)
        j0, j1 = max(int(round(yc)) - h, 0), min(int(round(yc)) + h + 1, ny)
        if i1 - i0 < 3 or j1 - j0 < 3:
            return None
        yy, xx = np.mgrid[j0:j1, i0:i1]
        r = np.hypot(xx - xc, yy - yc)
        good = (r >= r_big_px) & (r < r_out)
        vs = variance[j0:j1, i0:i1]
        good &= np.isfinite(vs) & (vs > 0)
        if mask is not None and bad_bits:
            good &= (mask[j0:j1, i0:i1] & bad_bits) == 0
        for k in nbrs:
            if k != own:
                good &= np.hypot(xx - x[k], yy - y[k]) >= rn[k]
        b = np.searchsorted(edges, r[good], side="right") - 1
        rg, vg, sg = r[good], image[j0:j1, i0:i1][good].astype(float), vs[good].astype(float)
        row = []
        for kb in range(nb):
            m = b == kb
            area = np.pi * (edges[kb + 1] ** 2 - edges[kb] ** 2)
            row.append((rg[m], vg[m], sg[m]) if m.sum() >= max(8, 0.3 * area) else None)
        return row if sum(c is not None for c in row) >= max(2, nb // 2) else None

    # the sky's own annulus median: on blank-sky positions (a grid, no detection over the central disc) the median
    # of an annulus with the neighbours masked sits above the background mesh's clipped mode where faint undetected
    # sources skew the sky (a few 0.1 e-/pixel, a few 0.1 % of a faint star's flux over the annuli): subtracted
    sky = np.zeros(nb)
    if config.tail_sky_samples > 0:
        step = max(2 * h + 1, int(math.sqrt(nx * ny / config.tail_sky_samples)))
        meds = []
        for px, py in _clear_grid((ny, nx), margin=h, step=step, x=x, y=y, rn=rn, radius=r_big_px, tree=tree):
            row = annuli(px, py, tree.query_ball_point([px, py], r_out + float(np.max(rn))), -1)
            if row is not None:
                meds.append([np.median(c[1]) if c is not None else np.nan for c in row])
        if len(meds) >= 10:
            sky = np.nan_to_num(np.nanmedian(np.asarray(meds), axis=0))
    cells: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    fluxes = []
    for s, nbrs in zip(stars, near):
        row = annuli(x[s], y[s], nbrs, s)
        if row is not None:
            cells.append([None if c is None else (c[0], c[1] - sky[kb], c[2]) for kb, c in enumerate(row)])
            fluxes.append(flux_big[s])
    if len(cells) < config.tail_min_stars:
        return None
    fl = np.asarray(fluxes)
    rc = np.sqrt(edges[:-1] * edges[1:])
    alpha = min(max(4.0, config.tail_min_slope), config.tail_max_slope)
    amp = np.full(nb, np.nan)
    amp_err = np.full(nb, np.nan)
    n_used = len(cells)
    n_iter = 6
    for it in range(n_iter):
        a_ib = np.full((len(cells), nb), np.nan)
        e_ib = np.full((len(cells), nb), np.nan)
        for i, row in enumerate(cells):
            for kb, c in enumerate(row):
                if c is None:
                    continue
                rr, vv, ss = c
                w = rr ** alpha
                a_ib[i, kb] = np.median(vv * w) / fl[i]
                e_ib[i, kb] = 1.2533 * np.sqrt(np.mean(ss * w * w) / rr.size) / fl[i]
        # a star whose whole wing is off (a neighbour's halo, an undetected galaxy) is left out as a whole, then
        # the annuli are combined over the other stars
        ann = _annulus_integral(edges[:-1], edges[1:], alpha)
        for kb in range(nb):
            amp[kb], amp_err[kb], _ = _clipped_mean(a_ib[:, kb], e_ib[:, kb])
        t_i = np.nansum(np.where(np.isfinite(a_ib), a_ib, np.where(np.isfinite(amp), amp, 0.0)) * ann, axis=1)
        e_i = np.sqrt(np.nansum(e_ib ** 2 * ann ** 2, axis=1))
        _, _, keep = _clipped_mean(t_i, e_i)
        n_used = len(cells)
        if keep.sum() >= config.tail_min_stars:
            n_used = int(keep.sum())
            for kb in range(nb):
                amp[kb], amp_err[kb], _ = _clipped_mean(a_ib[keep, kb], e_ib[keep, kb])
        ok = np.isfinite(amp) & (amp > 0) & (amp > 2.0 * amp_err)
        if ok.sum() < 2:
            break
        # with I ~ r^-alpha_true the amplitude goes as r^(alpha - alpha_true): its slope in log r corrects alpha
        lw = (amp[ok] / amp_err[ok]) ** 2
        slope = np.polyfit(np.log(rc[ok]), np.log(amp[ok]), 1, w=np.sqrt(lw))[0]
        new = float(np.clip(alpha - slope, config.tail_min_slope, config.tail_max_slope))
        # the amplitudes hold for the alpha they were de-trended with: the loop ends with that alpha (a refitted
        # alpha with the previous amplitudes integrated the inner annuli wrongly by (r / 1 px)^(change): a steep
        # Gaussian-like wing whose alpha had not settled in the iterations came out at 0.4-2.3 times its flux)
        if abs(new - alpha) < 0.01 or it == n_iter - 1:
            break
        alpha = new
    fin = np.isfinite(amp)
    if not fin.any():
        return None
    # amplitude A = I(r) r^alpha / F_big: the profile integrates as A x int r^-alpha over each annulus
    ann = _annulus_integral(edges[:-1], edges[1:], alpha)
    w = np.where(fin, 1.0 / np.where(fin, amp_err, 1.0) ** 2, 0.0)
    a_fill = float(np.sum(w[fin] * amp[fin]) / np.sum(w[fin]))
    amp_used = np.where(fin, amp, a_fill)
    within = float(np.sum(amp_used * ann))
    e_within = float(np.sqrt(np.sum(np.where(fin, amp_err, 0.0) ** 2 * ann ** 2)))
    # beyond the profile: the power law of the whole profile (its slope, fitted over a factor tail_outer_radius in
    # radius, is what the stack measures best; the outer half's own slope, over a factor ~1.7, scattered the
    # extrapolated flux by its own size), never shallower than tail_extrapolate_min_slope, with the amplitude of the
    # outer half (the de-trended amplitudes are flat for the fitted slope) converted to that slope at the outer radius
    outer = fin & (np.arange(nb) >= nb // 2)
    if not outer.any():
        outer = fin
    a_out = max(float(np.sum(w[outer] * amp[outer]) / np.sum(w[outer])), 0.0)
    e_out = float(1.0 / np.sqrt(np.sum(w[outer])))
    alpha_out = max(alpha, config.tail_extrapolate_min_slope)
    a_out *= r_out ** (alpha_out - alpha)
    e_out *= r_out ** (alpha_out - alpha)
    beyond = float(_annulus_integral(r_out, np.inf, alpha_out)) if config.tail_extrapolate else 0.0
    frac = within + a_out * beyond
    err = float(math.hypot(e_within, e_out * beyond))
    return WingTail(fraction=frac, error=err, slope=alpha, n_stars=n_used, radii=edges, amplitude=amp,
                    amplitude_error=amp_err, within=within, within_error=e_within)


def model_tail_agrees(tail: WingTail, fwhm_px: float, beta: float, r_big_px: float, *, nsigma: float = 3.0,
                      sys: float = 0.1) -> bool:
    """Whether a Moffat PSF's wing agrees with a measured one (:func:`wing_tail`) between the largest aperture and the
    measured profile's outer radius.

    Two tests, both at the false-rejection rate of a two-sided ``nsigma`` Gaussian deviation: the flux over the
    whole wing (``tail.fraction`` against the model's, within ``nsigma`` of its error and ``sys`` times the model's
    flux), and the profile annulus by
    annulus (chi-square of the measured annuli' fluxes against the model's, with as many degrees of freedom as
    measured annuli, each annulus' error including ``sys`` times the model's flux in it: the measurement's own
    systematic error, which a bright stack resolves). The second is the sharper one: the inner annuli are measured
    several times better than the whole wing (whose error the noisy outer annuli dominate), and the flux a Moffat
    fitted to a core puts beyond the aperture lies mostly there. A Moffat whose beta was fitted to a core that does
    not determine it (an undersampled PSF) or to another family's core (a double Gaussian: no flux beyond 8 arcsec
    where ``beta = 2.5`` puts 0.5 %) is rejected by the inner annuli even where the whole wing's noise cannot
    reject it.

    Parameters
    ----------
    tail : WingTail
    fwhm_px, beta : float
        The Moffat model.
    r_big_px : float
        Radius of the largest aperture (the measured fluxes are relative to the flux within it).
    nsigma : float
    sys : float
        Relative systematic uncertainty of a measured annulus (``tail_model_sys``).

    Returns
    -------
    bool
    """
    from scipy.special import erfc
    from scipy.stats import chi2

    from upad.reduce.psf import moffat_enclosed

    edges = np.asarray(tail.radii, float)
    ee = np.asarray(moffat_enclosed(edges, fwhm_px, beta), float) / float(moffat_enclosed(r_big_px, fwhm_px, beta))
    model_in = float(ee[-1] - 1.0)
    within, e_within = tail.within_fraction()
    if abs(within - model_in) > nsigma * max(math.hypot(e_within, sys * model_in), 1e-6):
        return False
    ann = _annulus_integral(edges[:-1], edges[1:], float(tail.slope))
    meas, err = np.asarray(tail.amplitude, float) * ann, np.asarray(tail.amplitude_error, float) * ann
    ok = np.isfinite(meas) & np.isfinite(err) & (err > 0)
    if not ok.any():
        return True
    model = np.diff(ee)[ok]
    c2 = float(np.sum((meas[ok] - model) ** 2 / (err[ok] ** 2 + (sys * model) ** 2)))
    return bool(chi2.sf(c2, int(ok.sum())) >= erfc(nsigma / math.sqrt(2.0)))


def _wing_chi2(tail: WingTail, fwhm_px: float, betas: np.ndarray, r_big_px: float, sys: float) -> np.ndarray:
    """Chi-square of the measured annuli of ``tail`` against Moffat profiles of FWHM ``fwhm_px`` and each of
    ``betas`` (each annulus' error including ``sys`` times the model's flux in it)."""
    from upad.reduce.psf import moffat_enclosed

    edges = np.asarray(tail.radii, float)
    ann = _annulus_integral(edges[:-1], edges[1:], float(tail.slope))
    meas, err = np.asarray(tail.amplitude, float) * ann, np.asarray(tail.amplitude_error, float) * ann
    ok = np.isfinite(meas) & np.isfinite(err) & (err > 0)
    out = np.zeros(len(betas))
    for i, b in enumerate(betas):
        ee = np.asarray(moffat_enclosed(edges, fwhm_px, float(b)), float) / float(moffat_enclosed(r_big_px, fwhm_px,
                                                                                                  float(b)))
        model = np.diff(ee)[ok]
        out[i] = float(np.sum((meas[ok] - model) ** 2 / (err[ok] ** 2 + (sys * model) ** 2)))
    return out


def wing_beta(tail: WingTail, fwhm_px: float, r_big_px: float, *, sys: float = 0.1) -> tuple[float, float]:
    """The Moffat beta of the frame's FWHM that best fits the measured wing (:func:`wing_tail`), and its
    uncertainty (half the interval where the chi-square is within 1 of its minimum, on a grid of beta 1.2-15).

    A flat chi-square (a wing with no measurable flux, which every steep Moffat fits) gives a wide interval: the
    wing then does not constrain beta. Returns NaN, NaN without a measured annulus."""
    betas = np.geomspace(1.2, 15.0, 241)
    c2 = _wing_chi2(tail, fwhm_px, betas, r_big_px, sys)
    if not np.any(np.isfinite(tail.amplitude)) or not np.all(np.isfinite(c2)):
        return float("nan"), float("nan")
    k = int(np.argmin(c2))
    inside = betas[c2 <= c2[k] + 1.0]
    return float(betas[k]), float(max(0.5 * (inside.max() - inside.min()), 0.5 * (betas[min(k + 1, len(betas) - 1)]
                                                                                   - betas[max(k - 1, 0)])))


def apcor_aperture(diameters_arcsec: np.ndarray | tuple[float, ...], fwhm_arcsec: float, *,
                   config: PhotometryConfig = PhotometryConfig()) -> int:
    """Index of the catalog aperture whose flux is corrected to the total (``FLUX_APCOR``).

    The smallest aperture at least ``apcor_diameter_arcsec`` and ``apcor_min_diameter_fwhm`` x ``fwhm_arcsec``
    across and smaller than the largest one (the correction's reference); the largest of those smaller than it when
    none is that wide (seeing beyond a third of the largest aperture). ``apcor_diameter_arcsec`` itself (the closest
    catalog aperture) when the FWHM is unknown or ``apcor_min_diameter_fwhm`` is 0.
    """
    diam = np.asarray(diameters_arcsec, float)
    k_big = int(np.argmax(diam))
    k_nom = int(np.argmin(np.abs(diam - config.apcor_diameter_arcsec)))
    if not (config.apcor_min_diameter_fwhm > 0 and math.isfinite(fwhm_arcsec) and fwhm_arcsec > 0):
        return k_nom
    want = max(float(diam[k_nom]), config.apcor_min_diameter_fwhm * float(fwhm_arcsec))
    below = np.flatnonzero(diam < diam[k_big])
    if below.size == 0:
        return k_nom
    wide = below[diam[below] >= want - 1e-9]
    return int(wide[np.argmin(diam[wide])]) if wide.size else int(below[np.argmax(diam[below])])


def aperture_correction(x: np.ndarray, y: np.ndarray, flux_aper: np.ndarray, fluxerr_aper: np.ndarray,
                        diameters_arcsec: tuple[float, ...], stars: np.ndarray, *, shape: tuple[int, int],
                        pixel_scale: float, psf_fwhm_px: float, psf_beta: float, tail: WingTail | None = None,
                        psf_beta_error: float = 0.0,
                        config: PhotometryConfig = PhotometryConfig()) -> ApertureCorrection:
    """Measure the aperture correction on point sources.

    Parameters
    ----------
    x, y : ndarray
        0-based positions of all detections.
    flux_aper, fluxerr_aper : ndarray
        ``(n, n_apertures)`` aperture fluxes and errors.
    diameters_arcsec : tuple of float
        The catalog apertures.
    stars : ndarray
        Indices of clean point sources (e.g. the PSF stars).
    shape : (ny, nx)
    pixel_scale : float
        arcsec/pixel.
    psf_fwhm_px, psf_beta : float
        PSF model (for the flux beyond the largest aperture when ``tail`` is None).
    tail : WingTail, optional
        The flux beyond the largest aperture measured on the stars (:func:`wing_tail`). The Moffat tail ``1 / EE``
        (smooth, to infinity) is used where the wing of the PSF's Moffat fit out to the measured profile's outer
        radius agrees with the measured one (:func:`model_tail_agrees`, ``tail_model_nsigma``), its beta then the
        inverse-variance mean of the core's (``psf_beta``, ``psf_beta_error``) and the wing's (:func:`wing_beta`),
        or without a measurement (None, the core's beta); the measured tail otherwise (a non-Moffat or undersampled PSF: a Kolmogorov+optics
        wing, a beta fitted to a 1-pixel core or to a double Gaussian's core).
    psf_beta_error : float
        Uncertainty of ``psf_beta`` (0: the core's beta alone).
    config : PhotometryConfig

    Raises
    ------
    ReductionError
        ``too_few_stars`` when no star qualifies.
    """
    from upad.reduce.psf import _clipped_polyfit, moffat_enclosed

    diam = np.asarray(diameters_arcsec, float)
    k_big = int(np.argmax(diam))
    k_mid = apcor_aperture(diam, psf_fwhm_px * pixel_scale, config=config)
    if k_big == k_mid:
        raise ValueError("the aperture correction needs a larger catalog aperture than apcor_diameter_arcsec")
    stars = np.asarray(stars, int)
    fb, fm = flux_aper[stars, k_big], flux_aper[stars, k_mid]
    eb = fluxerr_aper[stars, k_big]
    ok = (fm > 0) & (fb > 0) & (fb / np.maximum(eb, 1e-30) > config.apcor_min_snr)
    if ok.sum() < 3:
        ok = (fm > 0) & (fb > 0) & (fb / np.maximum(eb, 1e-30) > 20)
    if ok.sum() < 3:
        raise ReductionError("too_few_stars", f"{int(ok.sum())} stars for the aperture correction",
                             stage="photometry")
    ratio = fb[ok] / fm[ok]
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    u = (np.asarray(x, float)[stars][ok] - cx) / cx
    v = (np.asarray(y, float)[stars][ok] - cy) / cy
    order, coef, keep = _clipped_polyfit(u, v, ratio, config.apcor_order)
    from upad.reduce.psf import _poly_design

    resid = ratio - _poly_design(u, v, order) @ coef
    rms = float(1.4826 * np.median(np.abs(resid[keep])) / np.median(ratio))
    r_big_px = diam[k_big] / 2.0 / pixel_scale
    ee_big = float(moffat_enclosed(r_big_px, psf_fwhm_px, psf_beta))
    t_fac, t_src = 1.0 / ee_big, "model"
    beta = float(psf_beta)
    if tail is not None:
        # the Moffat fit's wing between the largest aperture and the measured profile's outer radius, against the
        # measured one: where they disagree the measured tail is taken
        if not (config.tail_model_nsigma > 0 and model_tail_agrees(tail, psf_fwhm_px, psf_beta, r_big_px,
                                                                    nsigma=config.tail_model_nsigma,
                                                                    sys=config.tail_model_sys)):
            t_fac, t_src = 1.0 + float(tail.fraction), "measured"
        else:
            # where they agree, the model's tail (smooth, to infinity) with beta measured twice, by the core's
            # concentration (psf_beta +- psf_beta_error) and by the wing (the Moffat of the frame's FWHM that fits
            # the measured annuli), combined by inverse variance: a core that hardly constrains beta defers to the
            # wing, a well-measured core keeps its beta
            bw, sw = wing_beta(tail, psf_fwhm_px, r_big_px, sys=config.tail_model_sys)
            if psf_beta_error > 0 and np.isfinite(bw) and sw > 0:
                w_c, w_w = 1.0 / psf_beta_error ** 2, 1.0 / sw ** 2
                beta = float((w_c * psf_beta + w_w * bw) / (w_c + w_w))
            t_fac, t_src = 1.0 / float(moffat_enclosed(r_big_px, psf_fwhm_px, beta)), "model (confirmed)"
    gy, gx = np.mgrid[0:ny:9j, 0:nx:9j]
    med = float(np.median(_poly_design((gx.ravel() - cx) / cx, (gy.ravel() - cy) / cy, order) @ coef)) * t_fac
    return ApertureCorrection(median=med, tail=t_fac, rms=rms, n_stars=int(keep.sum()), coef=coef, order=order,
                              shape=shape, diameter_arcsec=float(diam[k_mid]),
                              large_diameter_arcsec=float(diam[k_big]), tail_source=t_src,
                              tail_error=float(tail.error) if tail is not None else float("nan"),
                              tail_slope=float(tail.slope) if tail is not None else float("nan"),
                              tail_n_stars=int(tail.n_stars) if tail is not None else 0,
                              tail_beta=float("nan") if t_src == "measured" else beta)


def require_apcor_aperture(config) -> None:
    """Check a step configuration with ``detect`` and ``photometry`` parts (``config.require``, as in
    ``validate``): the aperture correction's aperture must be one of the catalog's apertures, not the largest."""
    diam, apcor = config.detect.aper_diameters_arcsec, config.photometry.apcor_diameter_arcsec
    config.require(any(abs(d - apcor) < 1e-6 for d in diam), "photometry.apcor_diameter_arcsec",
                   f"= {apcor:g} is not one of the catalog apertures detect.aper_diameters_arcsec = "
                   f"{[float(d) for d in diam]}",
                   hint="the aperture correction is measured in one of the catalog's apertures: choose one of "
                        "them, or add it to detect.aper_diameters_arcsec")
    config.require(apcor < max(diam), "photometry.apcor_diameter_arcsec",
                   f"= {apcor:g} is the largest catalog aperture ({max(diam):g}\")",
                   hint="the correction to the total flux is measured against a larger aperture: add one to "
                        "detect.aper_diameters_arcsec or choose a smaller apcor_diameter_arcsec")


@dataclass
class PointSourcePhotometry:
    """What :func:`point_source_photometry` measures: ``apcor`` (:class:`ApertureCorrection`), ``blank``
    (:class:`BlankSky`), ``flux_aper`` (the catalog's ``FLUX_APER`` less the blank-sky level times each aperture's
    area, ``(n, n_apertures)``), ``k_mid`` (the column of the aperture that ``apcor`` corrects), ``flux_apcor``
    (total fluxes: that aperture times the correction at each position)."""

    apcor: ApertureCorrection
    blank: BlankSky
    flux_aper: np.ndarray
    k_mid: int
    flux_apcor: np.ndarray


def point_source_photometry(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None, catalog, psf, *,
                            pixel_scale: float, diameters_arcsec: tuple[float, ...], bad_bits: int,
                            config: PhotometryConfig = PhotometryConfig()) -> PointSourcePhotometry:
    """Total fluxes of point sources from a catalog's aperture fluxes: the sky's mean above the background mesh
    (blank discs of the largest aperture, :func:`blank_sky_level`) removed from every aperture, the flux beyond the
    largest aperture from the PSF stars' stacked wings (:func:`wing_tail`, ``config.tail_method == "measured"``) and
    the aperture correction measured on the PSF stars (:func:`aperture_correction`). The same for a reduced frame
    and a coadd.

    Parameters
    ----------
    image, variance : ndarray
        Background-subtracted image and its variance.
    mask : ndarray or None
        Mask bits; pixels with any of ``bad_bits`` are ignored.
    catalog : astropy.table.Table
        Detections (:func:`upad.reduce.detect.detect_sources`): ``XWIN_IMAGE``, ``YWIN_IMAGE`` (1-based),
        ``FLUX_APER``, ``FLUXERR_APER``, ``ISOAREA_IMAGE``.
    psf : upad.reduce.psf.PsfResult
        The PSF analysis of the image (its stars are the aperture correction's).
    pixel_scale : float
        arcsec per pixel.
    diameters_arcsec : tuple of float
        The catalog's aperture diameters.
    bad_bits : int
    config : PhotometryConfig
    """
    diam = tuple(float(v) for v in diameters_arcsec)
    xw = np.asarray(catalog["XWIN_IMAGE"], float) - 1.0
    yw = np.asarray(catalog["YWIN_IMAGE"], float) - 1.0
    stars = psf.stars["index"][psf.stars["used"]]
    k_big = int(np.argmax(diam))
    r_iso = np.sqrt(np.maximum(np.asarray(catalog["ISOAREA_IMAGE"], float), 0.0) / math.pi)
    # the sky's mean above the background mesh's clipped mode (faint undetected sources), on blank discs of the
    # largest aperture: removed from every aperture flux (times its area) for the aperture correction and FLUX_APCOR
    # (the catalog's FLUX_APER stay the sums above the mesh, as SExtractor's)
    blank = blank_sky_level(image, mask, xw, yw, radius_px=diam[k_big] / 2.0 / pixel_scale,
                            neighbour_radius=np.maximum(config.tail_neighbour_radii * r_iso, 2.0 * psf.fwhm_px),
                            bad_bits=bad_bits, n_samples=config.blank_sky_samples, min_samples=config.blank_sky_min)
    areas = np.pi * (np.asarray(diam) / 2.0 / pixel_scale) ** 2
    flux_aper = np.asarray(catalog["FLUX_APER"], float) - blank.level * areas[None, :]
    tail = None
    if config.tail_method == "measured":
        # the flux beyond the largest aperture, from the PSF stars' stacked wings
        tail = wing_tail(image, variance, mask, xw, yw, flux_aper[:, k_big], stars,
                         r_big_px=diam[k_big] / 2.0 / pixel_scale, fwhm_px=psf.fwhm_px,
                         neighbour_radius=config.tail_neighbour_radii * r_iso, bad_bits=bad_bits, config=config)
    apc = aperture_correction(xw, yw, flux_aper, np.asarray(catalog["FLUXERR_APER"]), diam, stars,
                              shape=image.shape, pixel_scale=pixel_scale, psf_fwhm_px=psf.fwhm_px,
                              psf_beta=psf.beta, psf_beta_error=psf.beta_error, tail=tail, config=config)
    k_mid = int(np.argmin(np.abs(np.asarray(diam) - apc.diameter_arcsec)))
    return PointSourcePhotometry(apcor=apc, blank=blank, flux_aper=flux_aper, k_mid=k_mid,
                                 flux_apcor=flux_aper[:, k_mid] * apc.at(xw, yw))


def zero_point(flux: np.ndarray, fluxerr: np.ndarray, ref_mag: np.ndarray, ref_magerr: np.ndarray | None, *,
               det_index: np.ndarray, ref_index: np.ndarray, exptime: float, filter_name: str,
               good: np.ndarray | None = None, config: PhotometryConfig = PhotometryConfig()) -> ZeroPoint:
    """Zero point from matched reference stars.

    Parameters
    ----------
    flux, fluxerr : ndarray
        Total fluxes of the detections (e.g. ``FLUX_APCOR``, e- in the exposure).
    ref_mag, ref_magerr : ndarray
        The reference catalog's magnitudes in the frame's filter (AB; NaN where absent) and errors.
    det_index, ref_index : ndarray
        Matched pairs (from the astrometry).
    exptime : float
        Exposure time (s).
    filter_name : str
    good : ndarray of bool, optional
        Detections usable for photometry (unsaturated, unblended, unmasked).
    config : PhotometryConfig

    Raises
    ------
    ReductionError
        ``no_reference`` (no magnitudes in the filter) or ``photometry_failed`` (too few stars).
    """
    if exptime <= 0:
        raise ReductionError("bad_input", f"exposure time {exptime} s", stage="photometry")
    di, rj = np.asarray(det_index, int), np.asarray(ref_index, int)
    m = np.asarray(ref_mag, float)[rj]
    me = np.full(len(rj), 0.02) if ref_magerr is None else np.nan_to_num(np.asarray(ref_magerr, float)[rj],
                                                                          nan=0.02)
    if not np.isfinite(np.asarray(ref_mag, float)).any():
        raise ReductionError("no_reference", f"the reference catalog has no magnitudes in {filter_name}",
                             stage="photometry")
    f, fe = np.asarray(flux, float)[di], np.asarray(fluxerr, float)[di]
    ok = np.isfinite(m) & (f > 0) & (f / np.maximum(fe, 1e-30) > config.zp_min_snr) & (me <= config.zp_max_mag_error)
    if good is not None:
        ok &= np.asarray(good, bool)[di]
    if ok.sum() < config.zp_min_stars:
        raise ReductionError("photometry_failed", f"{int(ok.sum())} reference stars with {filter_name} magnitudes "
                                                  f"(at least {config.zp_min_stars} needed)", stage="photometry")
    z = m[ok] + 2.5 * np.log10(f[ok] / exptime)
    sig = np.hypot(1.0857 * fe[ok] / f[ok], me[ok])
    keep = np.ones(len(z), bool)
    zp = float(np.median(z))
    for _ in range(10):
        w = 1.0 / sig[keep] ** 2
        zp = float(np.sum(w * z[keep]) / np.sum(w))
        r = z - zp
        s = 1.4826 * np.median(np.abs(r[keep]))
        new = np.abs(r) <= config.zp_clip_sigma * np.maximum(np.hypot(s, 0.0), sig)
        if new.sum() < config.zp_min_stars or np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / sig[keep] ** 2
    err_formal = float(1.0 / math.sqrt(np.sum(w)))
    rms = float(np.std(z[keep] - zp)) if keep.sum() > 1 else float("nan")
    chi2 = float(np.sum(((z[keep] - zp) / sig[keep]) ** 2) / max(keep.sum() - 1, 1))
    err = err_formal * math.sqrt(max(chi2, 1.0))
    return ZeroPoint(zp_e=zp, magzp=zp + 2.5 * math.log10(exptime), error=err, rms=rms, n_stars=int(keep.sum()),
                     filter=filter_name, det_index=di[ok][keep], ref_index=rj[ok][keep])


def _mag(flux: np.ndarray, err: np.ndarray, magzp: float) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(flux, float)
    e = np.asarray(err, float)
    pos = f > 0
    mag = np.full(f.shape, 99.0)
    merr = np.full(f.shape, 99.0)
    mag[pos] = magzp - 2.5 * np.log10(f[pos])
    merr[pos] = 1.0857 * e[pos] / f[pos]
    return mag.astype(np.float32), merr.astype(np.float32)


def add_magnitudes(catalog, magzp: float) -> None:
    """Add ``MAG_*``/``MAGERR_*`` columns for every ``FLUX_*``/``FLUXERR_*`` pair of an astropy Table (in place)."""
    for name in list(catalog.colnames):
        if not name.startswith("FLUX_") or name in ("FLUX_RADIUS", "FLUX_MAX"):
            continue
        kind = name[5:]
        ename = f"FLUXERR_{kind}"
        err = catalog[ename] if ename in catalog.colnames else np.zeros(len(catalog))
        mag, merr = _mag(np.asarray(catalog[name]), np.asarray(err), magzp)
        catalog[f"MAG_{kind}"] = mag
        catalog[f"MAG_{kind}"].unit = "mag"
        if ename in catalog.colnames:
            catalog[f"MAGERR_{kind}"] = merr
            catalog[f"MAGERR_{kind}"].unit = "mag"


def class_star(size_T: np.ndarray, psf_T: np.ndarray, snr: np.ndarray, *, sys: float = 0.03) -> np.ndarray:
    """PSF-based stellarity in [0, 1] (see the module documentation)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.asarray(size_T, float) / np.asarray(psf_T, float) - 1.0
        sig = np.hypot(math.sqrt(8.0) / np.maximum(np.asarray(snr, float), 0.1), sys)
        z = np.clip(d / sig, 0.0, None)
        out = np.exp(-0.5 * z * z)
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)
