"""Astrometric calibration: a TAN-SIP WCS from the detections and a reference catalog.

1. **Initial match, robust to pointing errors of several arcminutes, to plate-scale errors and to a parity
   error of the header.** The reference stars are projected with the header WCS (the commanded pointing). For a
   grid of linear transforms — both parities (``search_parity``), plate scales within ``+-max_scale_error`` and
   rotations within ``+-max_rotation_deg`` —, the positions of the ``n_bright`` brightest clean detections are
   transformed about the image centre and every detection-reference pair votes for its offset in a 2-D histogram
   (``offset_bin_px`` bins, ``+-max_offset_arcsec``); the transform with the highest, significant peak wins (a
   pattern-free "offset histogram": it needs no triangle to be complete, so it works in sparse and crowded fields
   alike, and a crowded field only raises the flat floor of the histogram). The search is coarse to fine: first
   with bins ``coarse_factor`` times larger and scale and rotation steps to match (a step moves the stars at the
   typical radius of the bright detections by about one bin), then, around the best coarse transforms of each
   parity, with the fine bins and steps; so a full-size frame searches ``+-3 %`` of scale in a fraction of a
   second.
2. **Iterative fit.** Matched pairs (nearest neighbour within a shrinking radius) are fitted by weighted linear
   least squares in the gnomonic (TAN) plane of the current tangent point: a polynomial of order ``sip_order``
   in the pixel offsets from ``CRPIX`` (the image centre); its linear part is the CD matrix, its higher orders the
   SIP ``A``/``B`` coefficients, its constant part moves ``CRVAL``. Outliers beyond ``clip_sigma`` are rejected;
   positions are weighted by their centroid error (FWHM / (2.35 S/N)) and the reference error. With
   ``sip_order = 0`` (default) the order is chosen by the data: the lowest order between 2 and ``sip_order_max``
   whose ``cv_folds``-fold cross-validated residual is within ``cv_tolerance`` of the best, or whose mean square
   exceeds the best's by less than ``cv_n_se`` standard errors of the paired per-star differences (the
   one-standard-error rule: with few well-measured stars the cross-validation is noisy, and a more complex model
   must be clearly better), every model judged on the same stars (orders with fewer than
   ``min_stars_per_term`` stars per coefficient are not tried); so a distortion beyond SIP order 3 is followed
   where the stars allow it, and a sparse frame keeps a low order. A fixed ``sip_order`` is validated the same way
   (its cross-validated rms is reported). With ``optical_terms`` (default) every order below 5 is also tried with
   the Brown-Conrady terms beyond it — radial ``r^2 (u, v)`` and ``r^4 (u, v)``, decentering ``(r^2 + 2u^2, 2uv)``
   and ``(2uv, r^2 + 2v^2)`` and the same times ``r^2`` —, each one coefficient shared by both axes (a displacement
   in pixels, taken to the sky by the solution's linear part): a camera's distortion with few coefficients, so that
   a sparse frame (a 9.4' field at high latitude has ~60 reference stars) follows a distortion beyond SIP 3 that a
   general order 4 or 5 (15 or 21 coefficients per axis) would overfit. Candidates are ordered by their number of
   coefficients and the simplest not shown worse than the best wins; the optical terms are folded into the
   SIP polynomials of the header (order 5).
3. The inverse SIP polynomials (``AP``/``BP``, order ``sip_order + 1``) are fitted on a grid so that every tool can
   go from the sky to the pixels.

Failure to find a significant match, too few matches or an rms above ``max_rms_arcsec`` raise
:class:`~upad.reduce.errors.ReductionError` with the reason ``astrometry_failed``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from upad.config import StepConfig, param
from upad.reduce._jit import njit
from upad.reduce.errors import ReductionError

__all__ = ["AstrometryConfig", "AstrometryResult", "solve_astrometry", "tan_project", "tan_deproject",
           "sip_wcs_header"]


@dataclass(frozen=True)
class AstrometryConfig(StepConfig):
    """Parameters of the astrometric calibration."""

    max_offset_arcsec: float = param(600.0, doc="largest pointing error searched for", bounds=(1.0, 7200.0),
                                     unit="arcsec")
    max_rotation_deg: float = param(0.5, doc="largest rotation searched for", bounds=(0.0, 180.0), unit="deg")
    rotation_step_deg: float = param(0.05, doc="step of the rotation search", bounds=(0.001, 10.0), unit="deg")
    offset_bin_px: float = param(6.0, doc="bin of the offset histogram", bounds=(0.5, 100.0), unit="pixel")
    n_bright: int = param(400, doc="brightest detections (and references) used for the initial match",
                          bounds=(10, 100000))
    min_peak_snr: float = param(8.0, doc="required significance of the offset-histogram peak (over the local floor "
                                          "of chance pairs; the search tries hundreds of transforms)",
                                  bounds=(1.0, None))
    sip_order: int = param(0, doc="order of the SIP distortion polynomials (1: plain TAN; 0: chosen by the data "
                                  "between 2 and sip_order_max by cross-validation)", bounds=(0, 7))
    sip_order_max: int = param(5, doc="highest SIP order tried when sip_order = 0", bounds=(2, 7))
    cv_folds: int = param(5, doc="folds of the cross-validation of the distortion order", bounds=(2, 20))
    cv_tolerance: float = param(0.03, doc="the lowest order whose cross-validated rms is within this fraction of "
                                          "the best one is chosen", bounds=(0.0, 1.0))
    cv_n_se: float = param(1.0, doc="a more complex distortion model is chosen only if its cross-validated mean "
                                    "square is below the simpler one's by more than this many standard errors (the "
                                    "one-standard-error rule; 0: by any amount beyond cv_tolerance)",
                           bounds=(0.0, 10.0))
    optical_terms: bool = param(True, doc="with sip_order = 0, also try every SIP order below 5 with the Brown-"
                                          "Conrady terms beyond it (radial r^2, r^4 and r^2-modulated decentering, "
                                          "one coefficient each shared by both axes): a camera's distortion with "
                                          "few coefficients, for frames with too few stars for a general order 5")
    min_stars_per_term: float = param(3.0, doc="fewest fitted stars per polynomial coefficient (per axis) for an "
                                               "order to be tried", bounds=(1.0, 100.0))
    max_scale_error: float = param(0.03, doc="largest plate-scale error of the header WCS searched for (fraction)",
                                   bounds=(0.0, 0.5))
    search_parity: bool = param(True, doc="also try the header WCS with its x axis mirrored (a parity error)")
    coarse_factor: float = param(4.0, doc="bins of the coarse pass of the initial match, in units of offset_bin_px",
                                 bounds=(1.0, 20.0))
    match_radius_px: float = param(1.5, doc="final matching radius (the radius also stays above 5x the rms)",
                                   bounds=(0.1, 50.0), unit="pixel")
    clip_sigma: float = param(3.0, doc="outlier rejection of the fit", bounds=(1.0, 100.0))
    min_matches: int = param(10, doc="fewest matched stars for a solution", bounds=(3, None))
    max_rms_arcsec: float = param(0.3, doc="a solution with a larger rms is a failure", bounds=(0.001, None),
                                  unit="arcsec")
    ref_error_mas: float = param(5.0, doc="reference position error added when the catalog has none",
                                 bounds=(0.0, None), unit="mas")


@dataclass
class AstrometryResult:
    """The astrometric solution.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        TAN-SIP WCS of the image (0-based pixel calls as usual in astropy).
    header : astropy.io.fits.Header
        Its FITS cards.
    n_matched : int
        Stars used in the final fit.
    rms_px : tuple of float
        Residual rms in x and y (pixels) of the fitted stars.
    rms_arcsec : float
        Total residual rms (arcsec), ``sqrt(rms_x^2 + rms_y^2)`` times the scale, of the fitted stars with
        S/N >= 50 (of all fitted stars when fewer than 5 have it).
    rms_bright_px : float
        Total residual rms of the fitted stars with S/N > 100 (pixels; NaN when none).
    offset_arcsec : tuple of float
        Pointing error found: (east, north) offset of the true image centre from the header's.
    rotation_deg : float
        Rotation of the image relative to the header WCS.
    pixel_scale : float
        Mean pixel scale (arcsec/pixel).
    det_index, ref_index : ndarray
        Matched pairs (indices into the detections and the reference catalog) used in the final fit.
    """

    wcs: object
    header: object
    n_matched: int
    rms_px: tuple[float, float]
    rms_arcsec: float
    rms_bright_px: float
    offset_arcsec: tuple[float, float]
    rotation_deg: float
    pixel_scale: float
    det_index: np.ndarray = field(repr=False)
    ref_index: np.ndarray = field(repr=False)
    peak_snr: float = 0.0
    #: plate scale of the solution over the header's (from the initial match and the fit)
    scale_ratio: float = 1.0
    #: the solution has the opposite parity of the header WCS
    parity_flipped: bool = False
    #: SIP order of the solution (of its header: 5 with the optical terms) and the cross-validated rms (pixels) of
    #: every model tried (keys: the order, or ``"<order>+optical"``)
    sip_order: int = 0
    cv_rms_px: dict = field(default_factory=dict)
    #: the solution is a polynomial of a lower order plus the Brown-Conrady terms beyond it (``optical_terms``)
    optical_terms: bool = False
    #: the model fitted, as in ``cv_rms_px``: ``"3"`` (SIP order 3) or ``"2+optical"``
    model: str = ""


# ------------------------------------------------------------------------------------------------ projections
def tan_project(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): intermediate world coordinates (xi, eta) in degrees."""
    a = np.radians(np.asarray(ra, float) - ra0)
    d = np.radians(np.asarray(dec, float))
    d0 = math.radians(dec0)
    cosd = np.cos(d)
    den = np.sin(d) * math.sin(d0) + cosd * math.cos(d0) * np.cos(a)
    xi = cosd * np.sin(a) / den
    eta = (np.sin(d) * math.cos(d0) - cosd * math.sin(d0) * np.cos(a)) / den
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project` (degrees in, degrees out)."""
    x = np.radians(np.asarray(xi, float))
    y = np.radians(np.asarray(eta, float))
    d0 = math.radians(dec0)
    den = math.cos(d0) - y * math.sin(d0)
    ra = ra0 + np.degrees(np.arctan2(x, den))
    dec = np.degrees(np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, den)))
    return np.mod(ra, 360.0), dec


# ------------------------------------------------------------------------------------------------ polynomial fit
def _terms(order: int) -> list[tuple[int, int]]:
    return [(p, q) for n in range(order + 1) for p in range(n, -1, -1) for q in [n - p]]


def _design(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]], scale: float) -> np.ndarray:
    us, vs = u / scale, v / scale
    return np.stack([us ** p * vs ** q for p, q in terms], axis=1)


def _lstsq(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Least-squares solution of ``A x = B`` (``B``: one or more columns) by a QR decomposition from modified
    Gram-Schmidt with re-orthogonalisation (numerically as stable as LAPACK's for these well-scaled polynomial
    designs, and with no multithreaded BLAS: these systems are small, and a threaded BLAS on a busy machine makes
    them 50x slower); falls back to ``numpy.linalg.lstsq`` when the design is rank-deficient."""
    n, p = A.shape
    Q = np.array(A, dtype=np.float64, copy=True)
    R = np.zeros((p, p))
    for k in range(p):
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            if k:
                c = np.einsum("ij,i->j", Q[:, :k], Q[:, k])
                Q[:, k] -= np.einsum("ij,j->i", Q[:, :k], c)
                R[:k, k] += c
        nk = math.sqrt(float(np.einsum("i,i->", Q[:, k], Q[:, k])))
        if not nk > 1e-12 * max(1.0, math.sqrt(float(np.einsum("i,i->", A[:, k], A[:, k])))):
            return np.linalg.lstsq(A, B, rcond=None)[0]
        R[k, k] = nk
        Q[:, k] /= nk
    qb = np.einsum("ij,i...->j...", Q, B)
    x = np.zeros_like(qb)
    for k in range(p - 1, -1, -1):  # back substitution
        x[k] = (qb[k] - np.einsum("j,j...->...", R[k, k + 1:], x[k + 1:])) / R[k, k]
    return x


def _fit_poly(u, v, xi, eta, w, order, scale):
    terms = _terms(order)
    A = _design(u, v, terms, scale)
    sw = np.sqrt(w)
    c = _lstsq(A * sw[:, None], np.column_stack([xi * sw, eta * sw]))
    return terms, c[:, 0], c[:, 1]


#: Brown-Conrady terms (radial r^2, r^4; decentering with its r^2 factor) as pixel displacements ``(du, dv)``, each a
#: polynomial ``{(p, q): coefficient}`` of the scaled offsets, with the polynomial order it belongs to
_OPTICAL: tuple[tuple[int, dict, dict], ...] = (
    (2, {(2, 0): 3.0, (0, 2): 1.0}, {(1, 1): 2.0}),  # decentering p1 (r^2 + 2u^2, 2uv)
    (2, {(1, 1): 2.0}, {(2, 0): 1.0, (0, 2): 3.0}),  # decentering p2 (2uv, r^2 + 2v^2)
    (3, {(3, 0): 1.0, (1, 2): 1.0}, {(2, 1): 1.0, (0, 3): 1.0}),  # radial r^2 (u, v)
    (4, {(4, 0): 3.0, (2, 2): 4.0, (0, 4): 1.0}, {(3, 1): 2.0, (1, 3): 2.0}),  # decentering p1 r^2
    (4, {(3, 1): 2.0, (1, 3): 2.0}, {(4, 0): 1.0, (2, 2): 4.0, (0, 4): 3.0}),  # decentering p2 r^2
    (5, {(5, 0): 1.0, (3, 2): 2.0, (1, 4): 1.0}, {(4, 1): 1.0, (2, 3): 2.0, (0, 5): 1.0}),  # radial r^4 (u, v)
)


def _n_optical(order: int) -> int:
    """Number of Brown-Conrady terms beyond a polynomial of ``order`` (shared by both axes)."""
    return sum(1 for o, _, _ in _OPTICAL if o > order)


def _model_key(model: tuple[int, bool]):
    """Key of a model in ``cv_rms_px``: the order (plain SIP) or ``"<order>+optical"``."""
    return f"{model[0]}+optical" if model[1] else int(model[0])


def _n_free(model: tuple[int, bool]) -> float:
    """Free coefficients per axis of a model (the shared optical terms count half on each axis)."""
    return len(_terms(model[0])) + (0.5 * _n_optical(model[0]) if model[1] else 0.0)


def _fit_model(u, v, xi, eta, w, model: tuple[int, bool], scale):
    """Weighted fit of ``xi, eta`` by a polynomial of order ``model[0]`` in the scaled pixel offsets, plus (when
    ``model[1]``) the Brown-Conrady terms beyond that order (:data:`_OPTICAL`): displacements in pixels, one
    coefficient each shared by both axes, taken to the sky by the linear part of the solution (from a first pass,
    refined once). The optical terms are folded into the polynomial coefficients, so the result is a plain
    polynomial (``terms, cx, cy``) of order 5 that :func:`_eval_poly` and :func:`sip_wcs_header` take as is."""
    order, optical = model
    opt = [t for t in _OPTICAL if t[0] > order] if optical else []
    if not opt:
        return _fit_poly(u, v, xi, eta, w, order, scale)
    # one QR of the polynomial design for the sky positions and the optical displacements (Frisch-Waugh): the
    # optical coefficients from the residuals of every column after the polynomial, then the polynomial's
    terms = _terms(order)
    us, vs = u / scale, v / scale
    nk = len(opt)
    pu = np.column_stack([sum(c * us ** p * vs ** q for (p, q), c in du.items()) for _o, du, _dv in opt])
    pv = np.column_stack([sum(c * us ** p * vs ** q for (p, q), c in dv.items()) for _o, _du, dv in opt])
    A = _design(u, v, terms, scale)
    sw = np.sqrt(w)
    B = np.column_stack([xi, eta, pu, pv])
    C = _lstsq(A * sw[:, None], B * sw[:, None])
    R = (B - A @ C) * sw[:, None]
    iu, iv = slice(2, 2 + nk), slice(2 + nk, 2 + 2 * nk)
    cx, cy = C[:, 0], C[:, 1]
    full = _terms(max(order, max(o for o, _, _ in opt)))
    for _pass in range(2):  # the linear part from the plain fit, then refined once
        lin = np.array([[cx[1], cx[2]], [cy[1], cy[2]]])  # sky per scaled pixel (terms (1, 0) and (0, 1))
        rx = lin[0, 0] * R[:, iu] + lin[0, 1] * R[:, iv]
        ry = lin[1, 0] * R[:, iu] + lin[1, 1] * R[:, iv]
        k = _lstsq(np.vstack([rx, ry]), np.r_[R[:, 0], R[:, 1]])
        cx = C[:, 0] - (lin[0, 0] * C[:, iu] + lin[0, 1] * C[:, iv]) @ k
        cy = C[:, 1] - (lin[1, 0] * C[:, iu] + lin[1, 1] * C[:, iv]) @ k
    # fold the optical terms (with the linear part they were fitted with) into the polynomial
    idx = {t: i for i, t in enumerate(full)}
    fx, fy = np.zeros(len(full)), np.zeros(len(full))
    for t, a, b in zip(terms, cx, cy):
        fx[idx[t]] += a
        fy[idx[t]] += b
    for kj, (_o, du, dv) in zip(k, opt):
        for t, c in du.items():
            fx[idx[t]] += kj * c * lin[0, 0]
            fy[idx[t]] += kj * c * lin[1, 0]
        for t, c in dv.items():
            fx[idx[t]] += kj * c * lin[0, 1]
            fy[idx[t]] += kj * c * lin[1, 1]
    return full, fx, fy


def _eval_poly(u, v, terms, cx, cy, scale):
    A = _design(u, v, terms, scale)
    return A @ cx, A @ cy


def sip_wcs_header(crval: tuple[float, float], crpix: tuple[float, float], terms: list[tuple[int, int]],
                   cx: np.ndarray, cy: np.ndarray, scale: float, shape: tuple[int, int], order: int):
    """FITS header of the TAN-SIP WCS equivalent to the fitted polynomial (``xi, eta`` in degrees as a function
    of the pixel offsets ``u, v`` from ``crpix`` divided by ``scale``)."""
    from astropy.io import fits

    coef = {t: (a / scale ** (t[0] + t[1]), b / scale ** (t[0] + t[1])) for t, a, b in zip(terms, cx, cy)}
    cd = np.array([[coef[(1, 0)][0], coef[(0, 1)][0]], [coef[(1, 0)][1], coef[(0, 1)][1]]])
    cdi = np.linalg.inv(cd)
    ny, nx = shape
    h = fits.Header()
    h["WCSAXES"] = 2
    sip = order >= 2
    h["CTYPE1"] = "RA---TAN-SIP" if sip else "RA---TAN"
    h["CTYPE2"] = "DEC--TAN-SIP" if sip else "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = float(crval[0])
    h["CRVAL2"] = float(crval[1])
    h["CRPIX1"] = float(crpix[0])
    h["CRPIX2"] = float(crpix[1])
    h["CD1_1"] = float(cd[0, 0])
    h["CD1_2"] = float(cd[0, 1])
    h["CD2_1"] = float(cd[1, 0])
    h["CD2_2"] = float(cd[1, 1])
    h["RADESYS"] = "ICRS"
    if not sip:
        return h
    h["A_ORDER"] = order
    h["B_ORDER"] = order
    for (p, q), (a, b) in coef.items():
        if p + q < 2:
            continue
        f = cdi @ np.array([a, b])
        h[f"A_{p}_{q}"] = float(f[0])
        h[f"B_{p}_{q}"] = float(f[1])
    # inverse polynomials AP/BP on a grid over the image (order + 1)
    iorder = order + 1
    gy, gx = np.meshgrid(np.linspace(-0.5, ny - 0.5, 40), np.linspace(-0.5, nx - 0.5, 40), indexing="ij")
    u = gx.ravel() - (crpix[0] - 1)
    v = gy.ravel() - (crpix[1] - 1)
    fu = np.zeros_like(u)
    fv = np.zeros_like(v)
    for (p, q), (a, b) in coef.items():
        if p + q < 2:
            continue
        f = cdi @ np.array([a, b])
        fu += f[0] * u ** p * v ** q
        fv += f[1] * u ** p * v ** q
    U, V = u + fu, v + fv
    iterms = [(p, q) for p in range(iorder + 1) for q in range(iorder + 1 - p)]
    sc = float(max(nx, ny)) / 2.0
    A = np.stack([(U / sc) ** p * (V / sc) ** q for p, q in iterms], axis=1)
    c = _lstsq(A, np.column_stack([u - U, v - V]))
    ca, cb = c[:, 0], c[:, 1]
    h["AP_ORDER"] = iorder
    h["BP_ORDER"] = iorder
    for (p, q), a, b in zip(iterms, ca, cb):
        h[f"AP_{p}_{q}"] = float(a / sc ** (p + q))
        h[f"BP_{p}_{q}"] = float(b / sc ** (p + q))
    return h


def _cv_sq(u, v, xi, eta, w, scale, scale_deg, models, cfg: AstrometryConfig) -> dict:
    """K-fold cross-validated squared residual (pixels^2, both axes together) of every star under each model
    ``(order, optical)`` (:func:`_fit_model`), keyed by the model; the same folds for every model."""
    n = len(u)
    folds = np.random.default_rng(12345).permutation(n) % cfg.cv_folds
    out: dict = {}
    for model in models:
        sq = np.zeros(n)
        for k in range(cfg.cv_folds):
            test = folds == k
            train = ~test
            if not test.any():
                continue
            terms, cx, cy = _fit_model(u[train], v[train], xi[train], eta[train], w[train], model, scale)
            px, py = _eval_poly(u[test], v[test], terms, cx, cy, scale)
            sq[test] = ((xi[test] - px) ** 2 + (eta[test] - py) ** 2) / scale_deg ** 2
        out[model] = sq
    return out


def _cv_scores(u, v, xi, eta, w, scale, scale_deg, models, cfg: AstrometryConfig
               ) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Cross-validated residuals of each model on common stars: returns (``{model: rms}`` keyed by
    :func:`_model_key`, the normalised weights, the stars compared, ``{model: squared residuals}``).

    The stars compared are the same for every model: the worst 2 % are left out (outliers the clipping has not
    removed yet), judged by the best any model does for them — a star that no model predicts is an outlier, one
    that only a poor model misses is what tells the models apart."""
    n = len(u)
    sq = _cv_sq(u, v, xi, eta, w, scale, scale_deg, models, cfg)
    wn = w / np.mean(w) if n else w
    loss = np.min([sq[m] * wn for m in models], axis=0) if models else np.zeros(n)
    ok = loss <= np.quantile(loss, 0.98) if n > 20 else np.ones(n, bool)
    rms = {_model_key(m): float(math.sqrt(np.sum(wn[ok] * sq[m][ok]) / np.sum(wn[ok]))) for m in models}
    return rms, wn, ok, sq


def _cv_rms(u, v, xi, eta, w, scale, scale_deg, models, cfg: AstrometryConfig) -> dict:
    """K-fold cross-validated weighted rms residual (pixels, both axes together) of each model ``(order,
    optical)`` (:func:`_fit_model`), keyed by :func:`_model_key` (:func:`_cv_scores`)."""
    return _cv_scores(u, v, xi, eta, w, scale, scale_deg, models, cfg)[0]


def choose_model(cv_sq: dict, wn: np.ndarray, ok: np.ndarray, *, tolerance: float, n_se: float):
    """The simplest model that the cross-validation does not show to be worse than the best one.

    Parameters
    ----------
    cv_sq : ``{model: cross-validated squared residual of each star}``, models in order of complexity.
    wn, ok : the stars' weights and the stars compared.
    tolerance : a model whose weighted rms is within this fraction of the best's is not worse.
    n_se : nor is one whose weighted mean square exceeds the best's by less than ``n_se`` standard errors of that
        excess (the "one-standard-error rule" of Hastie, Tibshirani & Friedman, ESL 7.10, on the paired per-star
        differences): with few stars the cross-validation is noisy and a more complex model must be clearly better.
    """
    models = list(cv_sq)
    sw = float(np.sum(wn[ok]))
    mse = {m: float(np.sum(wn[ok] * cv_sq[m][ok]) / sw) for m in models}
    best = min(models, key=mse.get)
    for m in models:
        if math.sqrt(mse[m]) <= math.sqrt(mse[best]) * (1.0 + tolerance):
            return m
        d = wn[ok] * (cv_sq[m][ok] - cv_sq[best][ok])
        se = math.sqrt(d.size) * float(np.std(d, ddof=1)) / sw if d.size > 1 else math.inf
        if mse[m] - mse[best] <= n_se * se:
            return m
    return best


def _select_order(u, v, xi, eta, w, scale, scale_deg, cfg: AstrometryConfig) -> tuple[tuple[int, bool], dict]:
    """The simplest model — SIP order, with or without the optical terms beyond it — that the cross-validation does
    not show to be worse than the best (:func:`choose_model`; module docs)."""
    n = len(u)
    models = [(o, opt) for o in range(2, cfg.sip_order_max + 1)
              for opt in ((False, True) if cfg.optical_terms and _n_optical(o) else (False,))]
    models = sorted((m for m in models if n >= cfg.min_stars_per_term * _n_free(m)), key=_n_free)
    if not models:
        return (2 if n >= 4 * len(_terms(2)) else 1, False), {}
    cv, wn, ok, sq = _cv_scores(u, v, xi, eta, w, scale, scale_deg, models, cfg)
    return choose_model(sq, wn, ok, tolerance=cfg.cv_tolerance, n_se=cfg.cv_n_se), cv


# ------------------------------------------------------------------------------------------------ matching
@njit(nogil=True, cache=True)
def _vote_kernel(xd, yd, xr, yr, m00, m01, m10, m11, cx, cy, c0x, c0y, bin_px, nbins):  # pragma: no cover
    """Histogram of the pair offsets ``ref - (c + M (det - c)) - c0`` in ``nbins`` x ``nbins`` bins of ``bin_px``
    centred on 0 (one pass, no temporaries)."""
    h = np.zeros((nbins, nbins), np.int64)
    h0 = nbins * bin_px / 2.0
    for k in range(len(xd)):
        ux = xd[k] - cx
        uy = yd[k] - cy
        dx = xr[k] - (cx + m00 * ux + m01 * uy) - c0x + h0
        dy = yr[k] - (cy + m10 * ux + m11 * uy) - c0y + h0
        if dx >= 0 and dy >= 0:
            ix = int(dx / bin_px)
            iy = int(dy / bin_px)
            if ix < nbins and iy < nbins:
                h[iy, ix] += 1
    return h


@njit(nogil=True, cache=True)
def _box_mean_kernel(xd, yd, xr, yr, m00, m01, m10, m11, cx, cy, x0, y0, w):  # pragma: no cover
    """Mean offset of the pairs whose offset falls in the box [x0, x0 + w) x [y0, y0 + w)."""
    sx = 0.0
    sy = 0.0
    n = 0
    for k in range(len(xd)):
        ux = xd[k] - cx
        uy = yd[k] - cy
        dx = xr[k] - (cx + m00 * ux + m01 * uy)
        dy = yr[k] - (cy + m10 * ux + m11 * uy)
        if x0 <= dx < x0 + w and y0 <= dy < y0 + w:
            sx += dx
            sy += dy
            n += 1
    return sx, sy, n


def _vote(xd, yd, xr, yr, m, cx, cy, bin_px, centre, half):
    """Offset histogram of one linear transform ``m`` (2x2, about ``(cx, cy)``) of the detections ``xd, yd``
    paired with the references ``xr, yr`` (pair arrays of equal length): offsets within ``+-half`` of ``centre`` in
    bins of ``bin_px``. Returns (peak, floor, dx, dy): the highest 2x2 box sum, the mean box sum around it (or
    of the window, the larger), and the mean offset of the pairs in the best box."""
    nbins = max(2, int(math.ceil(2 * half / bin_px)))
    h0 = nbins * bin_px / 2
    args = (float(m[0, 0]), float(m[0, 1]), float(m[1, 0]), float(m[1, 1]), float(cx), float(cy))
    h = _vote_kernel(xd, yd, xr, yr, *args, float(centre[0]), float(centre[1]), float(bin_px), nbins)
    # 2x2 box sums: a true peak split between bins still counts fully
    h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]
    k = int(np.argmax(h2))
    j, i = divmod(k, h2.shape[1])
    peak = float(h2[j, i])
    # the floor at the peak: the mean box sum around it (9 x 9 boxes but the 3 x 3 of the peak), as the density of
    # chance pairs is not flat over the offsets (the field's autocorrelation) — at least the mean of the window
    sub = h2[max(0, j - 4):j + 5, max(0, i - 4):i + 5]
    core = h2[max(0, j - 1):j + 2, max(0, i - 1):i + 2]
    n_out = sub.size - core.size
    mean = float(h2.mean())
    if n_out > 0:
        mean = max(mean, float(sub.sum() - core.sum()) / n_out)
    x0, y0 = i * bin_px - h0 + centre[0], j * bin_px - h0 + centre[1]
    sx, sy, n = _box_mean_kernel(xd, yd, xr, yr, *args, float(x0), float(y0), float(2 * bin_px))
    mx = sx / n if n else float(centre[0])
    my = sy / n if n else float(centre[1])
    return peak, mean, mx, my


def _linear(scale: float, ang_deg: float, flip: bool) -> np.ndarray:
    c, s = math.cos(math.radians(ang_deg)), math.sin(math.radians(ang_deg))
    return scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])


def _steps(limit: float, step: float) -> np.ndarray:
    n = int(math.ceil(limit / step - 1e-9)) if limit > 0 and step > 0 else 0
    return np.arange(-n, n + 1) * (limit / n if n else 0.0)


def _offset_histogram(xd, yd, xr, yr, cx, cy, cfg: AstrometryConfig, max_off_px: float):
    """Best linear transform and offset (pixels) from the offset histogram, coarse to fine (module documentation).

    Returns ``(m, dx, dy, peak, snr)``: the 2x2 transform of the detections about ``(cx, cy)`` and the offset
    that bring them onto the references' pixel positions in the header WCS."""
    r = np.hypot(xd - cx, yd - cy)
    r_char = max(float(np.quantile(r, 0.7)) if len(r) else 1.0, 10.0)
    parities = (False, True) if cfg.search_parity else (False,)
    # fine steps: half a bin at the typical radius (rotation: not finer than rotation_step_deg); coarse: one
    # coarse bin
    b = cfg.offset_bin_px
    bc = b * cfg.coarse_factor
    s_fine = 0.5 * b / r_char
    a_fine = max(cfg.rotation_step_deg, math.degrees(0.5 * b / r_char))
    s_coarse = bc / r_char
    a_coarse = max(a_fine, math.degrees(bc / r_char))
    scales = 1.0 + _steps(cfg.max_scale_error, s_coarse)
    angles = _steps(cfg.max_rotation_deg, a_coarse)
    ii, jj = (a.ravel() for a in np.meshgrid(np.arange(len(xd)), np.arange(len(xr)), indexing="ij"))
    pxd, pyd, pxr, pyr = (a.astype(np.float32) for a in (xd[ii], yd[ii], xr[jj], yr[jj]))
    coarse = []
    for flip in parities:
        for sc in scales:
            for ang in angles:
                peak, mean, mx, my = _vote(pxd, pyd, pxr, pyr, _linear(sc, ang, flip), cx, cy, bc, (0.0, 0.0),
                                           max_off_px)
                coarse.append(((peak - mean) / math.sqrt(max(mean, 1.0)), mean, flip, sc, ang, mx, my))
    ds_max = min(s_coarse, cfg.max_scale_error)
    da_max = min(a_coarse, cfg.max_rotation_deg)
    ds = _steps(ds_max, s_fine)
    da = _steps(da_max, a_fine)
    best = (np.eye(2), 0.0, 0.0, 0.0, 0.0)
    for flip in parities:
        cand = sorted((c for c in coarse if c[2] == flip), key=lambda c: -c[0])[:2]
        for _snr, mean_c, _flip, sc0, ang0, mx0, my0 in cand:
            # random coincidences per fine 2x2 box, from the coarse histogram over the whole search area (a small
            # window around a coarse peak is mostly peak: its own mean would hide the peak)
            floor = mean_c * (b / bc) ** 2
            # only the pairs that any fine transform can bring within the window around the coarse peak
            m0 = _linear(sc0, ang0, flip)
            ox = pxr - (cx + m0[0, 0] * (pxd - cx) + m0[0, 1] * (pyd - cy)) - mx0
            oy = pyr - (cy + m0[1, 0] * (pxd - cx) + m0[1, 1] * (pyd - cy)) - my0
            reach = 2 * bc + r[ii] * (ds_max + math.radians(da_max)) * 1.5
            near = (np.abs(ox) < reach) & (np.abs(oy) < reach)
            qxd, qyd, qxr, qyr = pxd[near], pyd[near], pxr[near], pyr[near]
            for dsc in ds:
                for dang in da:
                    m = _linear(sc0 + dsc, ang0 + dang, flip)
                    peak, _mean, mx, my = _vote(qxd, qyd, qxr, qyr, m, cx, cy, b, (mx0, my0), 2 * bc)
                    snr = (peak - floor) / math.sqrt(max(floor, 1.0))
                    if snr > best[4]:
                        best = (m, mx, my, peak, snr)
    return best


def _match(xa, ya, xb, yb, radius):
    """Nearest neighbour of each a in b within radius, unique in both directions → (ia, ib)."""
    from scipy.spatial import cKDTree

    if len(xa) == 0 or len(xb) == 0:
        return np.empty(0, int), np.empty(0, int)
    tree = cKDTree(np.column_stack([xb, yb]))
    d, ib = tree.query(np.column_stack([xa, ya]), distance_upper_bound=radius)
    ok = np.isfinite(d)
    ia = np.flatnonzero(ok)
    ib = ib[ok]
    d = d[ok]
    # keep the closest a for every b
    order = np.argsort(d)
    _, first = np.unique(ib[order], return_index=True)
    keep = order[first]
    return ia[keep], ib[keep]


def solve_astrometry(x: np.ndarray, y: np.ndarray, flux: np.ndarray, ref_ra: np.ndarray, ref_dec: np.ndarray, *,
                     wcs_guess, shape: tuple[int, int], ref_mag: np.ndarray | None = None,
                     good: np.ndarray | None = None, pos_err: np.ndarray | None = None,
                     ref_err_mas: np.ndarray | None = None, snr: np.ndarray | None = None,
                     config: AstrometryConfig = AstrometryConfig()) -> AstrometryResult:
    """Fit a TAN-SIP WCS to detections matched with a reference catalog.

    Parameters
    ----------
    x, y : ndarray
        0-based pixel positions of the detections (e.g. windowed centroids).
    flux : ndarray
        Their fluxes (to pick the brightest for the initial match).
    ref_ra, ref_dec : ndarray
        Reference positions (deg, at the epoch of the observation).
    wcs_guess : astropy.wcs.WCS
        The header WCS (commanded pointing).
    shape : (ny, nx)
        Image shape.
    ref_mag : ndarray, optional
        Reference magnitudes (brightest first in the initial match); default: every reference.
    good : ndarray of bool, optional
        Detections usable for the fit (unsaturated, unblended, point-like); default all.
    pos_err : ndarray, optional
        Centroid errors of the detections (pixels) for the weights; default 0.05.
    ref_err_mas : ndarray, optional
        Reference position errors (mas).
    snr : ndarray, optional
        S/N of the detections (for ``rms_bright_px``).
    config : AstrometryConfig

    Returns
    -------
    AstrometryResult

    Raises
    ------
    ReductionError
        ``astrometry_failed`` or ``no_reference``.
    """
    ny, nx = shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    flux = np.asarray(flux, float)
    good = np.ones(len(x), bool) if good is None else np.asarray(good, bool)
    good &= np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    if good.sum() < config.min_matches:
        raise ReductionError("astrometry_failed", f"only {int(good.sum())} usable detections for the astrometry",
                             stage="astrometry")
    ref_ra = np.asarray(ref_ra, float)
    ref_dec = np.asarray(ref_dec, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr, yr = wcs_guess.all_world2pix(ref_ra, ref_dec, 0)
    scale_deg = float(np.sqrt(abs(np.linalg.det(wcs_guess.pixel_scale_matrix))))
    scale_as = scale_deg * 3600.0
    max_off_px = config.max_offset_arcsec / scale_as
    margin = max_off_px
    inside = (xr > -margin) & (xr < nx + margin) & (yr > -margin) & (yr < ny + margin) & np.isfinite(xr)
    if inside.sum() < config.min_matches:
        n_ref = int((np.isfinite(ref_ra) & np.isfinite(ref_dec)).sum())
        if n_ref < config.min_matches:
            raise ReductionError("no_reference", f"only {n_ref} reference stars given", stage="astrometry")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centre = wcs_guess.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
        raise ReductionError(
            "astrometry_failed", f"{int(inside.sum())} of {len(ref_ra)} reference stars fall within "
            f"{config.max_offset_arcsec:g} arcsec of the field the header describes (centre RA, Dec = "
            f"{centre[0]:.4f}, {centre[1]:.4f}): the header pointing is off by more than max_offset_arcsec, or the "
            "reference catalog covers another field", stage="astrometry")
    # --- initial match
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    gi = np.flatnonzero(good)
    bright = gi[np.argsort(-flux[gi])][: config.n_bright]
    ri = np.flatnonzero(inside)
    if ref_mag is not None:
        m = np.asarray(ref_mag, float)[ri]
        ri = ri[np.argsort(np.where(np.isfinite(m), m, 99.0))]
    # as many references as there are detections in the same area (expanded by the margin)
    area_ratio = (nx + 2 * margin) * (ny + 2 * margin) / (nx * ny)
    ri_b = ri[: int(config.n_bright * area_ratio) + 10]
    mlin, dx, dy, peak, peak_snr = _offset_histogram(x[bright], y[bright], xr[ri_b], yr[ri_b], cx, cy, config,
                                                     max_off_px)
    if peak_snr < config.min_peak_snr or peak < config.min_matches:
        raise ReductionError("astrometry_failed", f"no significant match with the reference catalog (peak of {peak:.0f}"
                                                  f" pairs at {peak_snr:.1f} sigma)", stage="astrometry")

    # first-guess transform: detection pixel -> guess pixel frame of the references
    def to_guess(xx, yy):
        return (cx + mlin[0, 0] * (xx - cx) + mlin[0, 1] * (yy - cy) + dx,
                cy + mlin[1, 0] * (xx - cx) + mlin[1, 1] * (yy - cy) + dy)

    xg, yg = to_guess(x, y)
    di, rj = _match(xg[gi], yg[gi], xr[ri], yr[ri], 3.0 * config.offset_bin_px)
    di, rj = gi[di], ri[rj]
    if len(di) < config.min_matches:
        raise ReductionError("astrometry_failed", f"only {len(di)} stars matched after the initial offset",
                             stage="astrometry")
    # --- iterative fit in the tangent plane
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra0, dec0 = (float(v) for v in wcs_guess.all_pix2world([[cx + dx, cy + dy]], 0)[0])
    perr = np.full(len(x), 0.05) if pos_err is None else np.clip(np.asarray(pos_err, float), 0.005, 5.0)
    rerr_mas = (np.full(len(ref_ra), config.ref_error_mas) if ref_err_mas is None
                else np.nan_to_num(np.asarray(ref_err_mas, float), nan=config.ref_error_mas))
    scale = float(max(nx, ny)) / 2.0
    radius = 3.0 * config.offset_bin_px
    model = (1, False)  # (polynomial order, optical terms)
    loop_order = config.sip_order if config.sip_order > 0 else min(3, config.sip_order_max)
    terms = cxp = cyp = None
    keep = np.ones(len(di), bool)
    for it in range(7):
        xi, eta = tan_project(ref_ra[rj], ref_dec[rj], ra0, dec0)
        u = x[di] - (crpix[0] - 1)
        v = y[di] - (crpix[1] - 1)
        w = 1.0 / ((perr[di] * scale_deg) ** 2 + (rerr_mas[rj] / 3.6e6) ** 2)
        if keep.sum() < max(config.min_matches, 2 * _n_free(model)):
            model = (max(1, model[0] - 1), False)
        terms, cxp, cyp = _fit_model(u[keep], v[keep], xi[keep], eta[keep], w[keep], model, scale)
        px, py = _eval_poly(u, v, terms, cxp, cyp, scale)
        rx, ry = (xi - px) / scale_deg, (eta - py) / scale_deg  # residuals in pixels
        r = np.hypot(rx, ry)
        # per-axis sigma from the median radial residual (median of a 2-D Gaussian radius = 1.1774 sigma)
        sig = float(np.median(r[keep])) / 1.1774 if keep.sum() else 1.0
        keep = r < max(config.clip_sigma * sig, 1e-3)
        # move the tangent point to the fitted position of CRPIX
        ra0, dec0 = tan_deproject(np.array([cxp[0]]), np.array([cyp[0]]), ra0, dec0)
        ra0, dec0 = float(ra0[0]), float(dec0[0])
        # re-match all detections with the current solution
        xi_d, eta_d = _eval_poly(x[gi] - (crpix[0] - 1), y[gi] - (crpix[1] - 1), terms, cxp, cyp, scale)
        xi_d -= cxp[0]
        eta_d -= cyp[0]
        xi_r, eta_r = tan_project(ref_ra[ri], ref_dec[ri], ra0, dec0)
        radius = max(config.match_radius_px, min(radius, 5.0 * sig))
        ia, ib = _match(xi_d / scale_deg, eta_d / scale_deg, xi_r / scale_deg, eta_r / scale_deg, radius)
        di, rj = gi[ia], ri[ib]
        keep = np.ones(len(di), bool)
        if it >= 1:
            # the highest order up to loop_order with 4 stars per coefficient (a fixed order 4 or 5 on a sparse
            # frame steps down to 3, not to 2)
            model = (next(o for o in range(loop_order, 0, -1) if o == 1 or len(di) >= 4 * len(_terms(o))), False)
        if it >= 3 and config.sip_order == 0:
            # the distortion order chosen by the data (cross-validation), so that the matching follows it
            xi_m, eta_m = tan_project(ref_ra[rj], ref_dec[rj], ra0, dec0)
            w_m = 1.0 / ((perr[di] * scale_deg) ** 2 + (rerr_mas[rj] / 3.6e6) ** 2)
            model, _cv = _select_order(x[di] - (crpix[0] - 1), y[di] - (crpix[1] - 1), xi_m, eta_m, w_m, scale,
                                       scale_deg, config)
        if len(di) < config.min_matches:
            raise ReductionError("astrometry_failed", f"only {len(di)} stars matched during the fit",
                                 stage="astrometry")
    # final fit with clipping on the final matches
    xi, eta = tan_project(ref_ra[rj], ref_dec[rj], ra0, dec0)
    u = x[di] - (crpix[0] - 1)
    v = y[di] - (crpix[1] - 1)
    w = 1.0 / ((perr[di] * scale_deg) ** 2 + (rerr_mas[rj] / 3.6e6) ** 2)
    keep = np.ones(len(di), bool)
    cv: dict[int, float] = {}
    for rnd in range(6):
        if rnd == 1:
            # the order is chosen (or the configured one validated) on the stars kept by the first clipping
            if config.sip_order == 0:
                model, cv = _select_order(u[keep], v[keep], xi[keep], eta[keep], w[keep], scale, scale_deg, config)
            else:
                cv = _cv_rms(u[keep], v[keep], xi[keep], eta[keep], w[keep], scale, scale_deg, [model], config)
        terms, cxp, cyp = _fit_model(u[keep], v[keep], xi[keep], eta[keep], w[keep], model, scale)
        px, py = _eval_poly(u, v, terms, cxp, cyp, scale)
        rx, ry = (xi - px) / scale_deg, (eta - py) / scale_deg
        z = np.hypot(rx, ry) / np.hypot(perr[di], rerr_mas[rj] / 3.6e6 / scale_deg)
        zs = float(np.median(z[keep])) / 1.1774
        new = z < config.clip_sigma * max(zs, 1e-6)
        if new.sum() < config.min_matches or (rnd >= 1 and np.array_equal(new, keep)):
            break
        keep = new
    # absorb the constant term into CRVAL (exact: refit about the new tangent point)
    ra0, dec0 = tan_deproject(np.array([cxp[0]]), np.array([cyp[0]]), ra0, dec0)
    ra0, dec0 = float(ra0[0]), float(dec0[0])
    xi, eta = tan_project(ref_ra[rj], ref_dec[rj], ra0, dec0)
    terms, cxp, cyp = _fit_model(u[keep], v[keep], xi[keep], eta[keep], w[keep], model, scale)
    order = max(p + q for p, q in terms)  # the SIP order of the header (5 with the optical terms)
    cxp[0] = 0.0
    cyp[0] = 0.0
    px, py = _eval_poly(u, v, terms, cxp, cyp, scale)
    rx, ry = (xi - px) / scale_deg, (eta - py) / scale_deg
    hdr = sip_wcs_header((ra0, dec0), crpix, terms, cxp, cyp, scale, shape, order)
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdr)
    # rx, ry are in the intermediate (sky) frame; report per axis of the pixel frame via the CD matrix
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.pixel_scale_matrix
    cdi = np.linalg.inv(cd)
    resid = cdi @ np.vstack([rx, ry]) * scale_deg
    k = keep
    rms_x = float(np.sqrt(np.mean(resid[0, k] ** 2)))
    rms_y = float(np.sqrt(np.mean(resid[1, k] ** 2)))
    pix_scale = float(np.sqrt(abs(np.linalg.det(cd)))) * 3600.0
    # the quoted rms is that of the well-measured stars (S/N >= 50) when there are enough, as SCAMP's high-S/N rms
    rk = k
    if snr is not None:
        hi = k & (np.asarray(snr, float)[di] >= 50)
        if hi.sum() >= 5:
            rk = hi
    rms_as = math.sqrt(np.mean(resid[0, rk] ** 2) + np.mean(resid[1, rk] ** 2)) * pix_scale
    rms_bright = float("nan")
    if snr is not None:
        sb = k & (np.asarray(snr, float)[di] > 100)
        if sb.sum() >= 3:
            rms_bright = float(np.sqrt(np.mean(resid[0, sb] ** 2 + resid[1, sb] ** 2)))
    if k.sum() < config.min_matches or rms_as > config.max_rms_arcsec:
        raise ReductionError("astrometry_failed", f"{int(k.sum())} stars fitted with an rms of {rms_as:.3f} arcsec",
                             stage="astrometry")
    # a chance match (a reference catalog of another field) can leave a few bright stars that fit: every fitted star
    # must fit too (faint ones have larger centroid errors: 3x the limit)
    rms_all_as = math.sqrt(rms_x ** 2 + rms_y ** 2) * pix_scale
    if rms_all_as > 3.0 * config.max_rms_arcsec:
        raise ReductionError("astrometry_failed", f"{int(k.sum())} stars fitted with an rms of {rms_all_as:.3f} "
                                                  f"arcsec (all fitted stars): no true match with the reference "
                                                  "catalog (another field?)", stage="astrometry")
    # pointing offset and rotation relative to the header WCS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ra_c, dec_c = (float(v) for v in wcs.all_pix2world([[cx, cy]], 0)[0])
        ra_g, dec_g = (float(v) for v in wcs_guess.all_pix2world([[cx, cy]], 0)[0])
    off = ((ra_c - ra_g) * math.cos(math.radians(dec_g)) * 3600.0, (dec_c - dec_g) * 3600.0)
    gcd = wcs_guess.pixel_scale_matrix
    flipped = bool(np.linalg.det(cd) * np.linalg.det(gcd) < 0)
    cdp = cd @ np.diag([-1.0, 1.0]) if flipped else cd  # rotation after undoing the parity flip (on the x axis)
    rot = math.degrees(math.atan2(cdp[1, 0], cdp[0, 0]) - math.atan2(gcd[1, 0], gcd[0, 0]))
    rot = (rot + 180.0) % 360.0 - 180.0
    ratio = pix_scale / scale_as
    if abs(ratio - 1.0) > config.max_scale_error + 0.01 or abs(rot) > config.max_rotation_deg + 0.5:
        raise ReductionError("astrometry_failed", f"the solution (scale {ratio:.4f} x, rotation {rot:.2f} deg "
                                                  "relative to the header) is outside the searched range: a chance "
                                                  "match (reference catalog of another field?)", stage="astrometry")
    return AstrometryResult(wcs=wcs, header=hdr, n_matched=int(k.sum()), rms_px=(rms_x, rms_y), rms_arcsec=rms_as,
                            rms_bright_px=rms_bright, offset_arcsec=off, rotation_deg=rot, pixel_scale=pix_scale,
                            det_index=di[k], ref_index=rj[k], peak_snr=peak_snr,
                            scale_ratio=ratio, parity_flipped=flipped, sip_order=int(order),
                            cv_rms_px=cv, optical_terms=bool(model[1]), model=str(_model_key(model)))
