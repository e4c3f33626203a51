"""Joint internal astrometry and relative photometry of the exposures of a tile (pure functions).

The exposures of a tile overlap: the same stars are measured several times. Their positions and fluxes, each put on
the sky and on the AB scale by its own exposure's reduction, disagree by the errors of the exposures' solutions. Two
joint fits make them agree, before the exposures are resampled and combined:

**Astrometry** (:func:`solve_joint_astrometry`). Every exposure ``e`` gets an affine correction of its positions in
the tangent plane of the tile (6 coefficients: a shift, a rotation, a scale and a shear per axis),

    ξ' = ξ + c₀ + c₁ ξ/s + c₂ η/s,   η' = η + d₀ + d₁ ξ/s + d₂ η/s,

fitted jointly so that each star's corrected positions agree across the exposures (one unknown position per star)
and with the reference catalog where a reference star matches (its position, moved to each exposure's epoch with
its proper motion). The stars' unknown positions are eliminated analytically (a Schur complement), so the normal
system has ``3 × n_exposures`` unknowns per axis whatever the number of stars. The reference anchors the
solution: two filters of a pointing, solved separately, land on the same (reference) frame. A set of exposures
with no reference star keeps the mean of its own solutions (the gauge ``Σ c = 0``). Outliers (a mismatch, a blend,
a star of high unknown motion) are rejected by iterated clipping of the normalised residuals. Each correction is
folded into the exposure's WCS — its ``CD`` matrix and ``CRVAL`` (the tangent point), the distortion polynomials
kept — and the fold is checked on a grid over the field (``fold_residual_mas``, ≪ 1 mas for the sub-arcsecond
corrections in question).

**Photometry** (:func:`solve_relative_photometry`). Every exposure gets a magnitude offset ``δₑ`` (added to its zero
point), fitted jointly so that each star's calibrated magnitudes ``ZPₑ − 2.5 log₁₀ fluxₑ + δₑ`` agree across the
exposures: inverse-variance weights (the flux errors plus a floor), iterated clipping, and the constraint that the
weighted mean offset is 0 (weights: ``1/ZPERR²`` of the exposures, equal when unknown), so that the absolute zero
point of the inputs is carried, not replaced.

An exposure with fewer than ``min_stars`` usable stars in common keeps its own solution (WCS or zero point) and the
reason is reported: the fits fail per exposure, never for the whole batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS

__all__ = ["ExposureStars", "ReferenceStars", "select_stars", "centroid_error_arcsec", "match_exposures",
           "StarMatches", "ExposureAstrometry", "JointAstrometry", "solve_joint_astrometry", "ExposurePhotometry",
           "RelativePhotometry", "solve_relative_photometry", "fold_affine_into_wcs", "tan_project",
           "tan_deproject"]

_ARCSEC = 3600.0


# ------------------------------------------------------------------------------------------------------------ inputs
@dataclass
class ExposureStars:
    """The usable stars of one exposure.

    Attributes
    ----------
    name : str
        The exposure (for the reports).
    wcs : astropy.wcs.WCS
        Its current solution (TAN or TAN-SIP).
    x, y : ndarray
        Pixel positions, 0-based.
    flux, flux_err : ndarray
        Fluxes and their errors, in the linear unit that ``zero_point`` refers to (m_AB = ZP − 2.5 log₁₀ flux).
    zero_point : float
        The exposure's AB zero point (mag).
    pos_err_arcsec : ndarray
        Position error of each star (arcsec, per axis).
    epoch : float or None
        Julian epoch (yr) of the middle of the exposure: reference stars are moved to it with their proper motions.
    zero_point_err : float or None
        Error of ``zero_point`` (mag): the weight of the exposure in the constraint of the relative photometry.
    """

    name: str
    wcs: WCS
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    zero_point: float
    pos_err_arcsec: np.ndarray
    epoch: float | None = None
    zero_point_err: float | None = None

    def __post_init__(self) -> None:
        for k in ("x", "y", "flux", "flux_err", "pos_err_arcsec"):
            setattr(self, k, np.atleast_1d(np.asarray(getattr(self, k), dtype=np.float64)))
        n = len(self.x)
        if any(len(getattr(self, k)) != n for k in ("y", "flux", "flux_err", "pos_err_arcsec")):
            raise ValueError(f"{self.name}: x, y, flux, flux_err and pos_err_arcsec must have one length")


@dataclass
class ReferenceStars:
    """Reference positions (a Gaia-like catalog) at ``epoch``.

    Attributes
    ----------
    ra, dec : ndarray
        Positions (deg, ICRS) at ``epoch``.
    err_arcsec : ndarray
        Position errors (arcsec, per axis) at ``epoch`` (proper-motion errors included).
    pmra, pmdec : ndarray
        Proper motions (mas/yr; ``pmra`` includes cos δ); 0 if unknown.
    epoch : float or None
        Julian epoch of the positions (yr); None: the positions hold at every exposure's epoch.
    """

    ra: np.ndarray
    dec: np.ndarray
    err_arcsec: np.ndarray
    pmra: np.ndarray | None = None
    pmdec: np.ndarray | None = None
    epoch: float | None = None

    def __post_init__(self) -> None:
        self.ra = np.atleast_1d(np.asarray(self.ra, dtype=np.float64))
        self.dec = np.atleast_1d(np.asarray(self.dec, dtype=np.float64))
        self.err_arcsec = np.broadcast_to(np.asarray(self.err_arcsec, dtype=np.float64), self.ra.shape).copy()
        z = np.zeros_like(self.ra)
        self.pmra = z.copy() if self.pmra is None else np.nan_to_num(np.asarray(self.pmra, dtype=np.float64))
        self.pmdec = z.copy() if self.pmdec is None else np.nan_to_num(np.asarray(self.pmdec, dtype=np.float64))


def centroid_error_arcsec(fwhm_arcsec: float | np.ndarray, snr: np.ndarray, *, floor_arcsec: float = 0.003
                          ) -> np.ndarray:
    """Position error per axis of a point source: ``FWHM / (2.355 · S/N) · √2`` (a Gaussian PSF's centroid, with the
    background's share), in quadrature with ``floor_arcsec`` (the centroiding and the PSF model's systematics)."""
    snr = np.maximum(np.asarray(snr, dtype=np.float64), 1e-3)
    return np.hypot(np.asarray(fwhm_arcsec, dtype=np.float64) / (2.3548 * snr) * math.sqrt(2.0), floor_arcsec)


def select_stars(catalog: Any, *, min_snr: float = 20.0, min_class_star: float = 0.5, flux: str = "FLUX_APCOR",
                 max_flags: int = 0) -> np.ndarray:
    """Boolean selection of the good point sources of a SExtractor-like catalog (docs/reduction.md, "Catalog columns").

    A source is kept when ``FLAGS`` ≤ ``max_flags`` (0: no neighbour, no blend, not saturated, not truncated),
    ``IMAFLAGS_ISO`` is 0 (no masked pixel in its footprint), ``CLASS_STAR`` ≥ ``min_class_star`` (point-like),
    ``flux / fluxerr`` ≥ ``min_snr`` (the column ``flux`` and its ``FLUXERR`` twin), and its windowed centroid is
    finite. Missing optional columns (``IMAFLAGS_ISO``, ``CLASS_STAR``) select nothing out.
    """
    n = len(catalog)
    names = set(catalog.colnames)
    ok = np.ones(n, bool)
    if "FLAGS" in names:
        ok &= np.asarray(catalog["FLAGS"]) <= max_flags
    if "IMAFLAGS_ISO" in names:
        ok &= np.asarray(catalog["IMAFLAGS_ISO"]) == 0
    if "CLASS_STAR" in names:
        ok &= np.nan_to_num(np.asarray(catalog["CLASS_STAR"], dtype=float)) >= min_class_star
    f = np.asarray(catalog[flux], dtype=float)
    fe = np.asarray(catalog[flux.replace("FLUX_", "FLUXERR_")], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok &= np.isfinite(f) & np.isfinite(fe) & (fe > 0) & (f / fe >= min_snr)
    xk, yk = ("XWIN_IMAGE", "YWIN_IMAGE") if "XWIN_IMAGE" in names else ("X_IMAGE", "Y_IMAGE")
    ok &= np.isfinite(np.asarray(catalog[xk], dtype=float)) & np.isfinite(np.asarray(catalog[yk], dtype=float))
    return ok


# ------------------------------------------------------------------------------------------------------ projections
def tan_project(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (``ra0``, ``dec0``): standard coordinates (ξ east, η north) in degrees."""
    from upad.reduce.astrometry import tan_project as _tp

    return _tp(ra, dec, ra0, dec0)


def tan_deproject(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`tan_project` (degrees)."""
    from upad.reduce.astrometry import tan_deproject as _td

    return _td(xi, eta, ra0, dec0)


def _centre(exposures: list[ExposureStars]) -> tuple[float, float]:
    """The mean pointing (unit-vector mean of the exposures' reference points)."""
    v = np.zeros(3)
    for e in exposures:
        ra, dec = np.radians(e.wcs.wcs.crval)
        v += [math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)]
    ra0 = math.degrees(math.atan2(v[1], v[0])) % 360.0
    dec0 = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    return ra0, dec0


# ---------------------------------------------------------------------------------------------------------- matching
@dataclass
class StarMatches:
    """The cross-match of the exposures' stars in the tangent plane of the tile.

    Attributes
    ----------
    centre : (float, float)
        Tangent point (deg).
    exposure, index, star : ndarray
        One row per detection kept: its exposure, its row in that exposure's arrays, its star (group) number.
    xi, eta : ndarray
        Its position in the tangent plane (arcsec), through its exposure's current WCS.
    n_stars : int
        Number of stars (groups of detections, at most one per exposure).
    reference : ndarray
        Per star, the row of the matched reference star, or −1.
    """

    centre: tuple[float, float]
    exposure: np.ndarray
    index: np.ndarray
    star: np.ndarray
    xi: np.ndarray
    eta: np.ndarray
    n_stars: int
    reference: np.ndarray


def match_exposures(exposures: list[ExposureStars], *, radius_arcsec: float = 1.0,
                    reference: ReferenceStars | None = None, centre: tuple[float, float] | None = None
                    ) -> StarMatches:
    """Cross-match the exposures' stars on the sky and with the reference catalog.

    The detections of all exposures, put on the sky with each exposure's WCS, are linked by friends-of-friends within
    ``radius_arcsec``. A group holding two detections of the same exposure (a blend, a close pair) is dropped. Each
    group is matched to the nearest reference star (moved to the mean epoch of the group's exposures) within
    ``radius_arcsec``, unless a second reference star lies within twice the radius (ambiguous).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    ra0, dec0 = centre if centre is not None else _centre(exposures)
    xs, ys, es, ks = [], [], [], []
    for i, e in enumerate(exposures):
        if len(e.x) == 0:
            continue
        ra, dec = e.wcs.all_pix2world(e.x, e.y, 0)
        xi, eta = tan_project(ra, dec, ra0, dec0)
        xs.append(xi * _ARCSEC)
        ys.append(eta * _ARCSEC)
        es.append(np.full(len(e.x), i))
        ks.append(np.arange(len(e.x)))
    empty = np.zeros(0)
    if not xs:
        return StarMatches((ra0, dec0), empty.astype(int), empty.astype(int), empty.astype(int), empty, empty, 0,
                           empty.astype(int))
    xi, eta, exp, idx = (np.concatenate(a) for a in (xs, ys, es, ks))
    pts = np.column_stack([xi, eta])
    pairs = cKDTree(pts).query_pairs(radius_arcsec, output_type="ndarray")
    n = len(xi)
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, label = connected_components(graph, directed=False)
    else:
        label = np.arange(n)
    # groups with two detections of one exposure are ambiguous; groups of one detection constrain nothing alone
    # (they may still match a reference star: kept, the fit then uses them against the reference)
    key = label.astype(np.int64) * (len(exposures) + 1) + exp
    _, inv, dup = np.unique(key, return_inverse=True, return_counts=True)
    bad_groups = np.unique(label[dup[inv] > 1])
    keep = ~np.isin(label, bad_groups)
    xi, eta, exp, idx, label = xi[keep], eta[keep], exp[keep], idx[keep], label[keep]
    _, star = np.unique(label, return_inverse=True)
    n_stars = int(star.max()) + 1 if len(star) else 0
    ref_of = np.full(n_stars, -1, dtype=np.int64)
    if reference is not None and len(reference.ra) and n_stars:
        cnt = np.bincount(star, minlength=n_stars)
        gx = np.bincount(star, xi, minlength=n_stars) / cnt
        gy = np.bincount(star, eta, minlength=n_stars) / cnt
        ep = np.array([np.nan if exposures[k].epoch is None else exposures[k].epoch for k in exp])
        rx, ry = _reference_plane(reference, ra0, dec0)
        tree = cKDTree(np.column_stack([rx, ry]))
        dist, j = tree.query(np.column_stack([gx, gy]), k=2, distance_upper_bound=2 * radius_arcsec)
        # proper motion over the gap between the reference epoch and the group's mean epoch
        if reference.epoch is not None:
            with np.errstate(invalid="ignore"):
                gep = np.bincount(star, np.nan_to_num(ep, nan=reference.epoch), minlength=n_stars) / cnt
        cand = np.flatnonzero(np.isfinite(dist[:, 0]) & ~np.isfinite(dist[:, 1]))  # one reference star near
        jj = j[cand, 0]
        dx, dy = gx[cand] - rx[jj], gy[cand] - ry[jj]
        if reference.epoch is not None:
            dt = gep[cand] - reference.epoch
            dx, dy = dx - dt * reference.pmra[jj] / 1e3, dy - dt * reference.pmdec[jj] / 1e3
        near = np.hypot(dx, dy) <= radius_arcsec
        ref_of[cand[near]] = jj[near]
        # one reference star for one group
        used, first = np.unique(ref_of[ref_of >= 0], return_counts=True)
        ref_of[np.isin(ref_of, used[first > 1])] = -1
    return StarMatches((ra0, dec0), exp, idx, star, xi, eta, n_stars, ref_of)


def _gather(exposures: list[ExposureStars], name: str, m: StarMatches) -> np.ndarray:
    """The per-star array ``name`` of the exposures, at the matched detections."""
    if not len(m.exposure):
        return np.zeros(0)
    offsets = np.concatenate([[0], np.cumsum([len(e.x) for e in exposures])])
    return np.concatenate([getattr(e, name) for e in exposures])[offsets[m.exposure] + m.index]


def _reference_plane(reference: ReferenceStars, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    x, y = tan_project(reference.ra, reference.dec, ra0, dec0)
    return x * _ARCSEC, y * _ARCSEC


# --------------------------------------------------------------------------------------------------------- astrometry
@dataclass
class ExposureAstrometry:
    """One exposure's joint astrometric solution.

    Attributes
    ----------
    name : str
    wcs : astropy.wcs.WCS
        The corrected WCS (the input's, unchanged, when ``corrected`` is False).
    corrected : bool
    n_stars : int
        Its stars used in the final fit (matched in another exposure or the reference).
    n_reference : int
        Of those, the ones matched in the reference catalog.
    rms_arcsec : float
        Rms of its stars' residuals after the fit (per axis, in quadrature: the 2-D rms).
    rms_before_arcsec : float
        The same with its input WCS (the other exposures corrected).
    shift_arcsec : (float, float)
        Correction of its field centre (east, north) in the tangent plane.
    rotation_arcsec, scale_ppm : float
        Rotation angle (arcsec, counter-clockwise from east to north) and scale change (parts per million) of the
        correction.
    fold_residual_mas : float
        Largest difference over the field between the fitted affine correction and the corrected WCS (mas).
    reason : str or None
        Why the exposure keeps its own solution.
    """

    name: str
    wcs: WCS
    corrected: bool
    n_stars: int = 0
    n_reference: int = 0
    rms_arcsec: float = float("nan")
    rms_before_arcsec: float = float("nan")
    shift_arcsec: tuple[float, float] = (0.0, 0.0)
    rotation_arcsec: float = 0.0
    scale_ppm: float = 0.0
    fold_residual_mas: float = 0.0
    reason: str | None = None


@dataclass
class JointAstrometry:
    """The joint astrometric solution of a set of exposures.

    Attributes
    ----------
    exposures : list of ExposureAstrometry
    rms_arcsec : float
        2-D rms of the detections' residuals (kept stars, all corrected exposures).
    rms_reference_arcsec : float
        2-D rms of the stars' fitted positions against the reference.
    n_stars, n_reference : int
        Stars in the fit (detected in ≥ 2 exposures or matched in the reference); those matched in the reference.
    anchored : bool
        Whether the reference anchors the solution (else the mean correction is zero).
    reasons : list of str
    """

    exposures: list[ExposureAstrometry]
    rms_arcsec: float = float("nan")
    rms_reference_arcsec: float = float("nan")
    n_stars: int = 0
    n_reference: int = 0
    anchored: bool = False
    reasons: list[str] = field(default_factory=list)


def _components(n_nodes: int, edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(edges_a)), (edges_a, edges_b)), shape=(n_nodes, n_nodes))
    return connected_components(g, directed=False)[1]


def _joint_linear(exp: np.ndarray, star: np.ndarray, g: np.ndarray, w: np.ndarray, obs: np.ndarray,
                  ref_val: np.ndarray, ref_w: np.ndarray, n_exp: int, n_stars: int, gauge: list[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Σ_d w_d (obs_d + g_d·c_e(d) − P_s(d))² + Σ_s ref_w_s (P_s − ref_val_s)² over the per-exposure
    coefficients ``c`` (``g.shape[1]`` each; ``obs`` and ``ref_val`` may have several columns: one solve per
    column) and the stars' positions ``P``, eliminated analytically. ``gauge`` lists groups of exposures whose
    coefficients must sum to zero (sets the solution has no anchor for). Returns ``(c, P)``."""
    k = g.shape[1]
    nc = n_exp * k
    wsum = np.bincount(star, w, minlength=n_stars) + ref_w
    safe = np.where(wsum > 0, wsum, 1.0)
    obs = obs.reshape(len(obs), -1)
    ref_val = ref_val.reshape(n_stars, -1)
    # the stars' positions with no correction: T_s = (Σ w obs + ref_w ref) / W
    t = np.stack([np.bincount(star, w * obs[:, j], minlength=n_stars) for j in range(obs.shape[1])], 1)
    t = (t + ref_w[:, None] * ref_val) / safe[:, None]
    # U[s, e-block] = Σ_{d ∈ s, e} w_d g_d ;  H = blockdiag(Σ w g gᵀ) − Uᵀ diag(1/W) U
    col = exp[:, None] * k + np.arange(k)[None, :]
    from scipy.sparse import coo_matrix

    u = coo_matrix(((w[:, None] * g).ravel(), (np.repeat(star, k), col.ravel())), shape=(n_stars, nc)).tocsr()
    h = np.zeros((nc, nc))
    for e in range(n_exp):
        m = exp == e
        gg = g[m]
        h[e * k:(e + 1) * k, e * k:(e + 1) * k] = (gg * w[m, None]).T @ gg
    h -= (u.T @ u.multiply(1.0 / safe[:, None]).tocsr()).toarray()
    rhs = np.zeros((nc, obs.shape[1]))
    for j in range(obs.shape[1]):
        np.add.at(rhs[:, j], col.ravel(), ((w * (t[star, j] - obs[:, j]))[:, None] * g).ravel())
    scale = max(float(np.max(np.abs(np.diag(h)))) if nc else 1.0, 1e-30)
    for members in gauge:  # Σ_e c_e = 0 over the members, as a stiff penalty on a direction H does not constrain
        for q in range(k):
            idx = members * k + q
            h[np.ix_(idx, idx)] += scale
    c = np.linalg.solve(h + 1e-12 * scale * np.eye(nc), rhs) if nc else np.zeros((0, obs.shape[1]))
    corr = np.einsum("dk,dkj->dj", g, c.reshape(n_exp, k, -1)[exp])
    p = np.stack([np.bincount(star, w * (obs[:, j] + corr[:, j]), minlength=n_stars) for j in range(obs.shape[1])],
                 1)
    p = (p + ref_w[:, None] * ref_val) / safe[:, None]
    return c.reshape(n_exp, k, -1), p


def solve_joint_astrometry(exposures: list[ExposureStars], reference: ReferenceStars | None = None, *,
                           radius_arcsec: float = 1.0, min_stars: int = 10, min_reference: int = 5,
                           clip_sigma: float = 4.0, iterations: int = 5, fold_grid: int = 9) -> JointAstrometry:
    """Fit one affine correction per exposure so that the stars agree across the exposures and with the reference.

    Parameters
    ----------
    exposures : list of ExposureStars
        The exposures' usable stars and current WCSs.
    reference : ReferenceStars, optional
        The reference catalog (positions at ``reference.epoch``, moved to each exposure's epoch with the proper
        motions). Without it, or with fewer than ``min_reference`` matched stars, the solution is internal only
        (the mean correction is zero: the exposures' own mean solution is kept).
    radius_arcsec : float
        Match radius (arcsec): larger than the exposures' errors, smaller than the distance between stars.
    min_stars : int
        Fewest stars an exposure must share (with another exposure or the reference) to be corrected.
    min_reference : int
        Fewest reference stars to anchor the solution on the reference.
    clip_sigma : float
        Residuals beyond ``clip_sigma`` robust standard deviations (of the residuals over their errors) are rejected.
    iterations : int
        Fit-and-clip iterations.
    fold_grid : int
        The fold of each correction into its WCS is checked on ``fold_grid × fold_grid`` points over the image.

    Returns
    -------
    JointAstrometry
        One :class:`ExposureAstrometry` per input exposure, in order.
    """
    n_exp = len(exposures)
    out = [ExposureAstrometry(name=e.name, wcs=e.wcs, corrected=False) for e in exposures]
    result = JointAstrometry(exposures=out)
    if n_exp == 0:
        result.reasons.append("no exposure")
        return result
    m = match_exposures(exposures, radius_arcsec=radius_arcsec, reference=reference)
    ra0, dec0 = m.centre
    s_arc = max((float(np.max(np.abs(np.concatenate([m.xi, m.eta])))) if len(m.xi) else 1.0), 1.0)
    # reference positions in the plane and their errors; moved, per detection, to the detection's epoch
    has_ref = m.reference >= 0
    rx = np.zeros(m.n_stars)
    ry = np.zeros(m.n_stars)
    rw = np.zeros(m.n_stars)
    obs_x, obs_y = m.xi.copy(), m.eta.copy()
    if reference is not None and has_ref.any():
        px, py = _reference_plane(reference, ra0, dec0)
        j = m.reference[has_ref]
        rx[has_ref], ry[has_ref] = px[j], py[j]
        rw[has_ref] = 1.0 / np.maximum(reference.err_arcsec[j], 1e-4) ** 2
        if reference.epoch is not None:
            # a star moves: its detection at epoch t is compared with P + pm (t − t_ref); equivalently the detection
            # is moved back to the reference epoch (only the stars with a known motion: the matched ones)
            jd = m.reference[m.star]
            d = jd >= 0
            ep = np.array([reference.epoch if e.epoch is None else e.epoch for e in exposures], dtype=float)
            dt = ep[m.exposure[d]] - reference.epoch
            obs_x[d] -= dt * reference.pmra[jd[d]] / 1e3
            obs_y[d] -= dt * reference.pmdec[jd[d]] / 1e3
    n_ref_total = int(has_ref.sum())
    if n_ref_total < min_reference:
        rw[:] = 0.0
        result.reasons.append(f"{n_ref_total} reference star(s) matched (needs {min_reference}): internal solution "
                              "only, anchored on the exposures' own mean")
    result.anchored = bool(n_ref_total >= min_reference)
    sig = _gather(exposures, "pos_err_arcsec", m)
    w0 = 1.0 / np.maximum(sig, 1e-4) ** 2
    good = np.ones(len(m.star), bool)
    active = np.ones(n_exp, bool)
    g = np.column_stack([np.ones(len(m.star)), m.xi / s_arc, m.eta / s_arc])
    c = np.zeros((n_exp, 3, 2))
    p = np.zeros((m.n_stars, 2))
    for it in range(max(iterations, 1)):
        d_ok = good & active[m.exposure]
        # a star constrains when it has ≥ 2 kept detections, or one and a reference position
        nd = np.bincount(m.star[d_ok], minlength=m.n_stars)
        useful = (nd >= 2) | ((nd >= 1) & (rw > 0))
        d_use = d_ok & useful[m.star]
        per_exp = np.bincount(m.exposure[d_use], minlength=n_exp)
        newly = active & (per_exp < min_stars)
        if newly.any():
            for k in np.flatnonzero(newly):
                out[k].reason = (f"{per_exp[k]} star(s) in common with the other exposures or the reference (needs "
                                 f"{min_stars}): its own solution kept")
            active &= ~newly
            if not active.any():
                break
            d_ok = good & active[m.exposure]
            nd = np.bincount(m.star[d_ok], minlength=m.n_stars)
            useful = (nd >= 2) | ((nd >= 1) & (rw > 0))
            d_use = d_ok & useful[m.star]
        if not d_use.any():
            break
        # gauge: each set of linked exposures without a reference anchor keeps its mean correction at zero
        gauge = _gauge_groups(m.exposure[d_use], m.star[d_use], rw, active, n_exp, m.n_stars)
        ww = w0[d_use]
        c, p = _joint_linear(m.exposure[d_use], m.star[d_use], g[d_use], ww,
                             np.column_stack([obs_x[d_use], obs_y[d_use]]), np.column_stack([rx, ry]),
                             rw * useful, n_exp, m.n_stars, gauge)
        corr = np.einsum("dk,dkj->dj", g, c[m.exposure])
        res = np.column_stack([obs_x, obs_y]) + corr - p[m.star]
        chi = np.hypot(res[:, 0], res[:, 1]) / sig  # in per-axis σ
        if d_use.sum() < 3 or it == iterations - 1:
            break
        scale = np.median(chi[d_use]) / 1.1774  # the median of a 2-D Gaussian's radius is 1.1774 σ
        new_good = d_ok & (chi <= clip_sigma * max(scale, 1e-3)) | (good & ~d_ok)
        if np.array_equal(new_good, good):
            break
        good = new_good
    # final bookkeeping with the last fit's d_use
    final = d_use if len(m.star) else np.zeros(0, bool)
    res = np.column_stack([obs_x, obs_y]) + np.einsum("dk,dkj->dj", g, c[m.exposure]) - p[m.star] \
        if len(m.star) else np.zeros((0, 2))
    res0 = np.column_stack([obs_x, obs_y]) - p[m.star] if len(m.star) else np.zeros((0, 2))
    nd_final = np.bincount(m.star[final], minlength=m.n_stars)
    in_fit = nd_final > 0
    result.n_stars = int(in_fit.sum())
    result.n_reference = int((in_fit & (rw > 0)).sum())
    if final.any():
        result.rms_arcsec = float(np.sqrt(np.mean(np.sum(res[final] ** 2, axis=1))))
    refd = in_fit & (rw > 0)
    if refd.any():
        result.rms_reference_arcsec = float(np.sqrt(np.mean((p[refd, 0] - rx[refd]) ** 2 +
                                                            (p[refd, 1] - ry[refd]) ** 2)))
    for k, e in enumerate(exposures):
        mk = final & (m.exposure == k)
        if not active[k] or not mk.any():
            if out[k].reason is None:
                out[k].reason = "no star in common with the other exposures or the reference: its own solution kept"
            continue
        ck = c[k]  # (3, 2): rows (1, ξ/s, η/s), columns (ξ, η)
        lin = np.array([[ck[1, 0], ck[2, 0]], [ck[1, 1], ck[2, 1]]]) / s_arc  # d(corr)/d(ξ, η)
        wcs, fold = fold_affine_into_wcs(e.wcs, centre=(ra0, dec0), offset_arcsec=(ck[0, 0], ck[0, 1]),
                                         linear=lin, grid=fold_grid)
        ny, nx = _image_shape(e)
        cx, cy = e.wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
        fx, fy = tan_project(cx, cy, ra0, dec0)
        fxy = np.array([fx[0], fy[0]]) * _ARCSEC
        shift = ck[0] + lin @ fxy
        out[k] = ExposureAstrometry(
            name=e.name, wcs=wcs, corrected=True, n_stars=int(mk.sum()),
            n_reference=int((mk & (rw[m.star] > 0)).sum()),
            rms_arcsec=float(np.sqrt(np.mean(np.sum(res[mk] ** 2, axis=1)))),
            rms_before_arcsec=float(np.sqrt(np.mean(np.sum(res0[mk] ** 2, axis=1)))),
            shift_arcsec=(float(shift[0]), float(shift[1])),
            rotation_arcsec=float(0.5 * (lin[1, 0] - lin[0, 1]) * 206264.806),
            scale_ppm=float(0.5 * (lin[0, 0] + lin[1, 1]) * 1e6), fold_residual_mas=fold)
    for o in out:
        if o.reason:
            result.reasons.append(f"{o.name}: {o.reason}")
    return result


def _gauge_groups(exp: np.ndarray, star: np.ndarray, rw: np.ndarray, active: np.ndarray, n_exp: int,
                  n_stars: int) -> list[np.ndarray]:
    """The sets of active exposures linked by common stars that no reference star anchors."""
    anchor = n_exp + n_stars  # a node for the reference
    a = np.concatenate([exp, star + n_exp, np.flatnonzero(rw > 0) + n_exp])
    b = np.concatenate([star + n_exp, exp, np.full(int((rw > 0).sum()), anchor)])
    lab = _components(anchor + 1, a, b)
    groups = []
    for comp in np.unique(lab[:n_exp][active]):
        if comp == lab[anchor]:
            continue
        members = np.flatnonzero((lab[:n_exp] == comp) & active)
        if len(members):
            groups.append(members)
    return groups


def _image_shape(e: ExposureStars) -> tuple[int, int]:
    if e.wcs.pixel_shape is not None:
        nx, ny = e.wcs.pixel_shape
        return int(ny), int(nx)
    cp = e.wcs.wcs.crpix
    nx = int(max(np.max(e.x) + 1 if len(e.x) else 0, 2 * cp[0]))
    ny = int(max(np.max(e.y) + 1 if len(e.y) else 0, 2 * cp[1]))
    return ny, nx


def fold_affine_into_wcs(wcs: WCS, *, centre: tuple[float, float], offset_arcsec: tuple[float, float] | np.ndarray,
                         linear: np.ndarray, grid: int = 9, shape: tuple[int, int] | None = None,
                         iterations: int = 3) -> tuple[WCS, float]:
    """A copy of ``wcs`` whose positions are those of ``wcs`` corrected by an affine map of the tangent plane about
    ``centre``: ``(ξ, η) → (ξ, η) + offset + linear · (ξ, η)`` (ξ, η and ``offset`` in arcsec).

    The correction is folded into ``CD`` (the linear part, in the WCS's own tangent plane) and ``CRVAL`` (the
    tangent point moves by the translation); the distortion (SIP) and ``CRPIX`` are kept. The two tangent planes and
    the moved tangent point differ from the affine map only at second order in the (sub-arcsecond) correction; a few
    Gauss–Newton steps on a ``grid × grid`` lattice over the image absorb the linear part of that difference.

    Returns
    -------
    (WCS, float)
        The corrected WCS and the largest distance (mas) over the lattice between its positions and the affine map's.
    """
    ra0, dec0 = centre
    if shape is None:
        if wcs.pixel_shape is not None:
            nx, ny = wcs.pixel_shape
        else:
            nx, ny = (int(round(2 * wcs.wcs.crpix[0])), int(round(2 * wcs.wcs.crpix[1])))
    else:
        ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, grid), np.linspace(0, ny - 1, grid))
    gx, gy = gx.ravel(), gy.ravel()
    ra, dec = wcs.all_pix2world(gx, gy, 0)
    xi, eta = tan_project(ra, dec, ra0, dec0)
    v = np.column_stack([xi, eta]) * _ARCSEC
    tgt = v + np.asarray(offset_arcsec, float)[None, :] + v @ np.asarray(linear, float).T
    t_ra, t_dec = tan_deproject(tgt[:, 0] / _ARCSEC, tgt[:, 1] / _ARCSEC, ra0, dec0)
    new = wcs.deepcopy()
    for _ in range(max(iterations, 1)):
        cur = np.column_stack(new.all_pix2world(gx, gy, 0))
        # the intermediate coordinates (deg) of the lattice; origin 1: astropy offsets imgcrd by −1 with origin 0
        u_cur = new.wcs.s2p(cur, 1)["imgcrd"]
        u_tgt = new.wcs.s2p(np.column_stack([t_ra, t_dec]), 1)["imgcrd"]
        a = np.column_stack([u_cur, np.ones(len(gx))])
        sol, *_ = np.linalg.lstsq(a, u_tgt, rcond=None)  # u_tgt ≈ u_cur @ M + t
        mat = sol[:2].T
        t = sol[2]
        _apply_linear(new, mat)
        # the translation: the tangent point moves to the sky position of intermediate coordinates t
        new.wcs.crval = list(_imgcrd_to_world(new, t))
        new.wcs.set()
    fin = np.column_stack(new.all_pix2world(gx, gy, 0))
    d = _sky_distance_mas(fin[:, 0], fin[:, 1], t_ra, t_dec)
    return new, float(np.max(d))


def _apply_linear(w: WCS, mat: np.ndarray) -> None:
    """``CD ← mat · CD`` (or ``PC·CDELT`` likewise)."""
    if w.wcs.has_cd():
        w.wcs.cd = mat @ np.asarray(w.wcs.cd)
    else:
        m = np.asarray(w.pixel_scale_matrix)
        w.wcs.pc = mat @ m
        w.wcs.cdelt = [1.0, 1.0]
    w.wcs.set()


def _imgcrd_to_world(w: WCS, t: np.ndarray) -> np.ndarray:
    """The sky position (deg) of intermediate world coordinates ``t`` (deg) of ``w``'s projection."""
    if not all(c[5:8] == "TAN" for c in w.wcs.ctype):
        raise ValueError(f"only TAN projections are supported, not {list(w.wcs.ctype)}")
    ra, dec = tan_deproject(np.array([t[0]]), np.array([t[1]]), float(w.wcs.crval[0]), float(w.wcs.crval[1]))
    return np.array([ra[0], dec[0]])


def _sky_distance_mas(ra1, dec1, ra2, dec2) -> np.ndarray:
    r1, d1, r2, d2 = (np.radians(np.asarray(a, float)) for a in (ra1, dec1, ra2, dec2))
    sd = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(sd))) * 3.6e6


# --------------------------------------------------------------------------------------------------------- photometry
@dataclass
class ExposurePhotometry:
    """One exposure's relative photometric offset.

    Attributes
    ----------
    name : str
    offset_mag : float
        δ added to its zero point (0 when not fitted).
    offset_err_mag : float
        Formal error of δ (scaled by the reduced χ of the fit).
    zero_point_in, zero_point : float
        Its zero point before and after (``zero_point_in + offset_mag``).
    n_stars : int
        Its stars in common with the other exposures, kept by the clipping.
    rms_mag : float
        Rms of its stars' residuals.
    reason : str or None
        Why it keeps its own zero point.
    """

    name: str
    offset_mag: float
    zero_point_in: float
    zero_point: float
    offset_err_mag: float = float("nan")
    n_stars: int = 0
    rms_mag: float = float("nan")
    reason: str | None = None


@dataclass
class RelativePhotometry:
    """The relative photometric solution.

    Attributes
    ----------
    exposures : list of ExposurePhotometry
    zero_point : float
        The coadd's zero point: the median of the corrected zero points.
    rms_mag : float
        Rms of the residuals of the kept detections.
    n_stars : int
        Stars measured in ≥ 2 exposures and kept.
    reasons : list of str
    """

    exposures: list[ExposurePhotometry]
    zero_point: float
    rms_mag: float = float("nan")
    n_stars: int = 0
    reasons: list[str] = field(default_factory=list)


def solve_relative_photometry(exposures: list[ExposureStars], *, matches: StarMatches | None = None,
                              radius_arcsec: float = 1.0, min_stars: int = 10, floor_mag: float = 0.005,
                              clip_sigma: float = 4.0, iterations: int = 6) -> RelativePhotometry:
    """Fit per-exposure magnitude offsets from the stars the exposures have in common.

    Each star's calibrated magnitudes ``m = ZPₑ − 2.5 log₁₀ flux + δₑ`` are made to agree (one unknown magnitude per
    star) with weights ``1/(σ² + floor_mag²)``, ``σ = 1.0857 flux_err/flux``; detections beyond ``clip_sigma``
    robust standard deviations of the normalised residuals are rejected and the fit repeated. Within each set of
    exposures linked by common stars, the offsets' weighted mean (weights ``1/ZPERR²``, equal when unknown) is 0:
    the absolute zero point of the inputs is carried.

    Parameters
    ----------
    exposures : list of ExposureStars
    matches : StarMatches, optional
        The cross-match (:func:`match_exposures`), e.g. with the corrected WCSs; made here when not given.
    radius_arcsec, min_stars, floor_mag, clip_sigma, iterations
        Match radius (arcsec); fewest common stars for an exposure to be scaled; the error floor per detection
        (mag: the flat-field and aperture-correction errors); the clipping threshold; fit-and-clip iterations.
    """
    n_exp = len(exposures)
    zp_in = np.array([float(e.zero_point) for e in exposures]) if n_exp else np.zeros(0)
    out = [ExposurePhotometry(name=e.name, offset_mag=0.0, zero_point_in=float(e.zero_point),
                              zero_point=float(e.zero_point)) for e in exposures]
    res = RelativePhotometry(exposures=out, zero_point=float(np.median(zp_in)) if n_exp else float("nan"))
    if n_exp < 2:
        for o in out:
            o.reason = "a single exposure: nothing to compare with"
        res.reasons = [f"{o.name}: {o.reason}" for o in out]
        return res
    m = matches if matches is not None else match_exposures(exposures, radius_arcsec=radius_arcsec)
    exp, star = m.exposure, m.star
    flux = _gather(exposures, "flux", m)
    ferr = _gather(exposures, "flux_err", m)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = zp_in[exp] - 2.5 * np.log10(flux)
        sig = np.hypot(1.0857 * ferr / flux, floor_mag)
    good = np.isfinite(mag) & np.isfinite(sig) & (flux > 0)
    w_exp = np.array([1.0 / e.zero_point_err ** 2 if e.zero_point_err and e.zero_point_err > 0 else np.nan
                      for e in exposures])
    w_exp = np.where(np.isfinite(w_exp), w_exp, np.nanmedian(w_exp) if np.isfinite(w_exp).any() else 1.0)
    active = np.ones(n_exp, bool)
    delta = np.zeros(n_exp)
    err = np.full(n_exp, np.nan)
    use = np.zeros(len(exp), bool)
    mags = np.zeros(m.n_stars)
    for it in range(max(iterations, 1)):
        ok = good & active[exp]
        nd = np.bincount(star[ok], minlength=m.n_stars)
        use = ok & (nd[star] >= 2)
        per_exp = np.bincount(exp[use], minlength=n_exp)
        newly = active & (per_exp < min_stars)
        if newly.any():
            for k in np.flatnonzero(newly):
                out[k].reason = (f"{per_exp[k]} star(s) in common with the other exposures (needs {min_stars}): "
                                 "its own zero point kept")
            active &= ~newly
            ok = good & active[exp]
            nd = np.bincount(star[ok], minlength=m.n_stars)
            use = ok & (nd[star] >= 2)
        if not use.any():
            break
        w = 1.0 / sig[use] ** 2
        # constraint per linked set: Σ W_e δ_e = 0 (the penalty acts on the sum; scale the rows by W_e)
        lab = _components(n_exp + m.n_stars, exp[use], star[use] + n_exp)[:n_exp]
        gauge = [np.flatnonzero((lab == c) & active) for c in np.unique(lab[active])]
        g = np.ones((int(use.sum()), 1))
        # δ_e = W̄/W_e · c_e makes Σ W_e δ_e ∝ Σ c_e: the gauge Σ c_e = 0 of the solver
        wbar = np.array([np.mean(w_exp[gr]) for gr in gauge for _ in gr])
        order = np.concatenate(gauge) if gauge else np.zeros(0, int)
        f = np.ones(n_exp)
        f[order] = wbar / w_exp[order]
        gf = g * f[exp[use], None]
        c, p = _joint_linear(exp[use], star[use], gf, w, mag[use], np.zeros(m.n_stars), np.zeros(m.n_stars), n_exp,
                             m.n_stars, gauge)
        delta = np.where(active, c[:, 0, 0] * f, 0.0)
        mags = p[:, 0]
        r = mag + delta[exp] - mags[star]
        chi = r / sig
        scale = 1.4826 * np.median(np.abs(chi[use]))
        # formal errors: the diagonal of the inverse normal matrix, approximated per exposure by its own weight
        for k in np.flatnonzero(active):
            mk = use & (exp == k)
            wk = np.sum(1.0 / sig[mk] ** 2)
            err[k] = max(scale, 1.0) / math.sqrt(wk) if wk > 0 else np.nan
        if it == iterations - 1:
            break
        new_good = good & ~(ok & (np.abs(chi) > clip_sigma * max(scale, 1e-3)))
        if np.array_equal(new_good, good):
            break
        good = new_good
    for k in range(n_exp):
        mk = use & (exp == k)
        if active[k] and mk.any():
            r = mag[mk] + delta[k] - mags[star[mk]]
            out[k] = ExposurePhotometry(name=exposures[k].name, offset_mag=float(delta[k]),
                                        zero_point_in=float(zp_in[k]), zero_point=float(zp_in[k] + delta[k]),
                                        offset_err_mag=float(err[k]), n_stars=int(mk.sum()),
                                        rms_mag=float(np.sqrt(np.mean(r ** 2))))
        elif out[k].reason is None:
            out[k].reason = "no star in common with the other exposures: its own zero point kept"
    if use.any():
        r = mag[use] + delta[exp[use]] - mags[star[use]]
        res.rms_mag = float(np.sqrt(np.mean(r ** 2)))
        res.n_stars = int(np.count_nonzero(np.bincount(star[use], minlength=m.n_stars) >= 2))
    res.zero_point = float(np.median([o.zero_point for o in out]))
    res.reasons = [f"{o.name}: {o.reason}" for o in out if o.reason]
    return res
