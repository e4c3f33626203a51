"""Star flat: the photometric response left over the field after flat-fielding and illumination correction,
measured from the same stars seen at different positions in dithered exposures.

A flat field made from a lamp-lit screen or the twilight sky is not lit like the night sky: the illumination
correction (:mod:`upad.calib.illumination`) fixes what shows in the sky background, but scattered light adds to the
background without being part of the response, so the only direct measure of the response is the photometry of
stars. As in survey pipelines (Manfroid 1995; Magnier & Cuillandre 2004; the DES "star flats"), a star measured at
``n`` positions gives ``n - 1`` differences of the response. The model of every instrumental magnitude is

    ``m_ij = M_i + Z_j + S(x_ij, y_ij)``

with ``M_i`` the star's magnitude, ``Z_j`` the exposure's zero point and ``S`` a 2-D Legendre polynomial of total
degree ``order`` over the detector (no constant term: it is degenerate with the ``Z_j``), fitted by weighted least
squares with the ``M_i`` eliminated analytically (each star's observations are centred on their weighted mean) and
outliers (variables, blends, cosmic rays) clipped iteratively. Only stars seen in two exposures or more count. The
covariance of the coefficients gives the uncertainty of the map; a map is *constrained* only where the dithers span
enough of the field: small dithers (a few arcsec) constrain almost nothing and the result says so.

``S`` is in magnitudes (positive: stars appear fainter there). The *response* map ``10**(-0.4 S)`` normalised to a
mean of 1 follows the illumination-correction convention: a flat-fielded frame is corrected by dividing it by the map.
Pure functions, no I/O: :mod:`upad.reduce.starflat_step` is the adapter.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from upad.config import StepConfig, param

__all__ = ["StarFlatConfig", "StarFlat", "match_exposures", "fit_star_flat", "legendre_basis"]


@dataclass(frozen=True)
class StarFlatConfig(StepConfig):
    """Parameters of the star flat."""

    order: int = param(2, doc="total degree of the Legendre polynomial of the star flat over the detector",
                       bounds=(1, 5))
    match_radius_arcsec: float = param(1.0, doc="radius of the cross-match of the same star between exposures",
                                       bounds=(0.05, 10.0), unit="arcsec")
    min_snr: float = param(50.0, doc="lowest S/N (FLUX_APCOR) of a star used", bounds=(5.0, None))
    min_class_star: float = param(0.8, doc="lowest CLASS_STAR of a star used", bounds=(0.0, 1.0))
    min_stars: int = param(20, doc="fewest stars seen in two exposures or more for a star flat",
                           bounds=(3, None))
    clip_sigma: float = param(4.0, doc="outlier rejection (robust sigmas)", bounds=(2.0, 100.0))
    max_error_mmag: float = param(3.0, doc="a map whose rms uncertainty over the field is above this is "
                                            "'not constrained' by the dithers", bounds=(0.1, None), unit="mmag")
    warn_rms_mmag: float = param(5.0, doc="QC warns when the star flat's rms over the field is above this and "
                                          "significant (3 sigma)", bounds=(0.1, None), unit="mmag")
    grid_cells: int = param(32, doc="cells per axis of the stored map", bounds=(4, 512))


def legendre_basis(u: np.ndarray, v: np.ndarray, order: int, *, constant: bool = False) -> np.ndarray:
    """Products ``P_i(u) P_j(v)`` for ``i + j <= order`` (``u, v`` in [-1, 1]), as columns; without ``(0, 0)``
    unless ``constant``."""
    from numpy.polynomial import legendre as L

    cols = []
    for i in range(order + 1):
        for j in range(order + 1 - i):
            if i == 0 and j == 0 and not constant:
                continue
            cols.append(L.legval(u, np.eye(i + 1)[i]) * L.legval(v, np.eye(j + 1)[j]))
    return np.stack(cols, axis=-1)


@dataclass
class StarFlat:
    """A fitted star flat.

    Attributes
    ----------
    coef, cov : ndarray
        Coefficients of ``S`` (mag; Legendre basis of :func:`legendre_basis` without the constant) and their
        covariance.
    order : int
    shape : (ny, nx)
        Detector shape.
    zero_points : ndarray
        ``Z_j`` per exposure (mag, relative to their mean).
    n_stars, n_obs, n_rejected : int
        Stars seen in two exposures or more; their observations used; observations (and reference magnitudes)
        clipped.
    rms_obs : float
        Rms of the residuals of the kept observations (mag).
    rms_mag, error_mag : float
        Rms of ``S`` over the field (mag) and the rms uncertainty of the map over the field.
    ptp_mag : float
        Peak to valley of ``S`` over the field (mag).
    constrained : bool
        ``error_mag`` within the configured limit.
    significance : float
        ``rms_mag / error_mag``.
    """

    coef: np.ndarray
    cov: np.ndarray
    order: int
    shape: tuple[int, int]
    zero_points: np.ndarray
    n_stars: int
    n_obs: int
    n_rejected: int
    rms_obs: float
    rms_mag: float
    error_mag: float
    ptp_mag: float
    constrained: bool
    significance: float
    notes: list[str] = field(default_factory=list)
    #: reference magnitudes used (0: the linear terms are not measured)
    n_reference: int = 0
    #: names of the exposures, in the order of ``zero_points`` (set by the step / the reader)
    exposures: list[str] = field(default_factory=list)

    def _uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.shape
        return 2 * np.asarray(x, float) / (nx - 1) - 1, 2 * np.asarray(y, float) / (ny - 1) - 1

    def mag_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``S`` (mag) at 0-based pixel positions."""
        u, v = self._uv(np.atleast_1d(x), np.atleast_1d(y))
        return legendre_basis(u, v, self.order) @ self.coef

    def grid(self, cells: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``S`` on a ``cells x cells`` grid of cell centres: ``(x, y, S)`` (0-based pixels, mag)."""
        ny, nx = self.shape
        xs = (np.arange(cells) + 0.5) * nx / cells - 0.5
        ys = (np.arange(cells) + 0.5) * ny / cells - 0.5
        gx, gy = np.meshgrid(xs, ys)
        return gx, gy, self.mag_at(gx.ravel(), gy.ravel()).reshape(gx.shape)

    def response(self, cells: int = 32) -> np.ndarray:
        """The response map ``10**(-0.4 S)`` on the grid, normalised to a mean of 1 (divide a frame by it)."""
        r = 10 ** (-0.4 * self.grid(cells)[2])
        return r / r.mean()


def match_exposures(ra: Sequence[np.ndarray], dec: Sequence[np.ndarray], *, radius_arcsec: float) -> list[np.ndarray]:
    """Identify the same stars across exposures by position on the sky.

    Parameters
    ----------
    ra, dec : sequence of ndarray
        Per exposure, the positions (deg) of its selected stars.
    radius_arcsec : float
        Match radius.

    Returns
    -------
    list of ndarray
        Per exposure, the star identifier of each source (``-1``: not matched to a source of another exposure).
        Friends of friends within the radius; a group holding two sources of the same exposure is dropped (blend
        or double detection).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n_per = [len(np.atleast_1d(a)) for a in ra]
    exp = np.repeat(np.arange(len(n_per)), n_per)
    if exp.size == 0:
        return [np.zeros(0, int) for _ in n_per]
    a = np.radians(np.concatenate([np.atleast_1d(np.asarray(r, float)) for r in ra]))
    d = np.radians(np.concatenate([np.atleast_1d(np.asarray(r, float)) for r in dec]))
    xyz = np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    pairs = cKDTree(xyz).query_pairs(2 * math.sin(math.radians(radius_arcsec / 3600) / 2), output_type="ndarray")
    pairs = pairs[exp[pairs[:, 0]] != exp[pairs[:, 1]]] if len(pairs) else pairs.reshape(0, 2)
    n = exp.size
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    size = np.bincount(lab)
    distinct = np.array([len(set(exp[lab == k])) for k in range(size.size)]) if size.size < 50000 else None
    if distinct is None:  # large inputs: count distinct exposures per group by sorting
        key = np.unique(lab * len(n_per) + exp)
        distinct = np.bincount(key // len(n_per), minlength=size.size)
    good = (size >= 2) & (distinct == size)
    star = np.where(good[lab], lab, -1)
    return list(np.split(star, np.cumsum(n_per)[:-1]))


def fit_star_flat(x: Sequence[np.ndarray], y: Sequence[np.ndarray], mag: Sequence[np.ndarray],
                  magerr: Sequence[np.ndarray], star: Sequence[np.ndarray], *, shape: tuple[int, int],
                  reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                  config: StarFlatConfig = StarFlatConfig(), iterations: int = 6) -> StarFlat:
    """Fit the star flat to the instrumental magnitudes of stars seen in several exposures.

    Parameters
    ----------
    x, y : sequence of ndarray
        Per exposure, 0-based detector positions of the stars.
    mag, magerr : sequence of ndarray
        Per exposure, instrumental magnitudes (any zero point: each exposure gets its own) and their errors.
    star : sequence of ndarray
        Per exposure, star identifiers (:func:`match_exposures`; ``-1`` ignored).
    shape : (ny, nx)
        Detector shape.
    reference : (star, mag, magerr), optional
        Reference magnitudes in the exposures' filter (e.g. Gaia transformed, :mod:`upad.reduce.photcal`) of some
        of the stars (identifiers as in ``star``), errors including the reference's systematics. They enter as one
        more "exposure" with no response (``m_i = M_i + Z_ref``) and are what measures the linear terms of ``S``: a
        gradient is degenerate with the stars' magnitudes and the exposures' zero points when the exposures differ
        by translations only. Without a reference the linear terms are left out (zero) and a note says so.
    config : StarFlatConfig
    iterations : int
        Rounds of outlier rejection.

    Returns
    -------
    StarFlat

    Raises
    ------
    ValueError
        Fewer than ``config.min_stars`` stars seen in two exposures or more, or fewer than two exposures.
    """
    n_exp = len(mag)
    if n_exp < 2:
        raise ValueError("a star flat needs stars measured in two exposures or more; got one exposure")
    ex = np.concatenate([np.full(len(np.atleast_1d(m)), j) for j, m in enumerate(mag)])
    X, Y, M, E, S = (np.concatenate([np.atleast_1d(np.asarray(a, float)) for a in arr])
                     for arr in (x, y, mag, magerr, star))
    S = S.astype(int)
    ny, nx = shape
    u, v = 2 * X / (nx - 1) - 1, 2 * Y / (ny - 1) - 1
    P = legendre_basis(u, v, config.order)
    terms = [(i, j) for i in range(config.order + 1) for j in range(config.order + 1 - i) if i + j > 0]
    linear = np.array([i + j == 1 for i, j in terms])
    notes: list[str] = []
    n_ref = 0
    if reference is not None and len(reference[0]):
        rs, rm, re_ = (np.asarray(a) for a in reference)
        n_ref = int(rs.size)
        X, Y = np.concatenate([X, np.zeros(n_ref)]), np.concatenate([Y, np.zeros(n_ref)])
        M, E = np.concatenate([M, rm.astype(float)]), np.concatenate([E, re_.astype(float)])
        S = np.concatenate([S, rs.astype(int)])
        P = np.vstack([P, np.zeros((n_ref, P.shape[1]))])
        ex = np.concatenate([ex, np.full(n_ref, n_exp)])
        n_cols_z = n_exp + 1
    else:
        P[:, linear] = 0.0
        n_cols_z = n_exp
        notes.append("no reference magnitudes: the gradient (linear terms) is not measured: translated exposures "
                     "cannot tell it from the stars' magnitudes")
    ok = (S >= 0) & np.isfinite(M) & np.isfinite(E) & (E > 0) & np.isfinite(X) & np.isfinite(Y)
    is_ref = ex == n_exp
    Z = np.eye(n_cols_z)[ex][:, 1:]  # Z_0 = 0 fixes the gauge; reported relative to the mean afterwards
    A_full = np.hstack([P, Z])
    w_full = 1.0 / np.maximum(E, 1e-4) ** 2
    keep = ok.copy()
    n_rejected = 0
    coef = np.zeros(A_full.shape[1])
    cov = np.eye(A_full.shape[1])
    rms = float("nan")
    for _ in range(iterations):
        # stars with two kept observations or more
        ids, inv, cnt = np.unique(S[keep & ~is_ref], return_inverse=True, return_counts=True)
        n_seen = np.zeros(S.max() + 1 if S.size else 1, int)
        n_seen[ids] = cnt
        keep &= n_seen[np.maximum(S, 0)] >= 2
        ids, inv = np.unique(S[keep], return_inverse=True)
        if ids.size < config.min_stars:
            raise ValueError(f"only {ids.size} stars are seen in two exposures or more (min_stars = "
                             f"{config.min_stars}): the exposures do not overlap enough, or too few stars pass the "
                             "selection")
        w = w_full[keep]
        A, m = A_full[keep], M[keep]
        # eliminate each star's magnitude: subtract its weighted mean from the data and the design
        sw = np.bincount(inv, w)
        m_c = m - (np.bincount(inv, w * m) / sw)[inv]
        A_c = A - np.column_stack([np.bincount(inv, w * A[:, k], minlength=ids.size) / sw
                                   for k in range(A.shape[1])])[inv]
        sq = np.sqrt(w)
        N = (A_c * w[:, None]).T @ A_c
        try:
            Ninv = np.linalg.pinv(N)
        except np.linalg.LinAlgError as exc:  # pragma: no cover - pinv handles rank deficiency
            raise ValueError(f"the star-flat system cannot be solved: {exc}") from exc
        coef = Ninv @ (A_c * w[:, None]).T @ m_c
        r = m_c - A_c @ coef
        dof = max(r.size - ids.size - A.shape[1], 1)
        chi2 = float(np.sum(w * r * r) / dof)
        cov = Ninv * max(chi2, 1.0)
        rms = float(np.sqrt(np.average(r * r, weights=w)))
        # robust rejection in units of each observation's error, scaled by the reduced chi-square
        z = r * sq / math.sqrt(max(chi2, 1e-12))
        sig = 1.4826 * float(np.median(np.abs(z)))
        bad = np.abs(z) > config.clip_sigma * max(sig, 1.0)
        if not bad.any():
            break
        idx = np.flatnonzero(keep)
        keep[idx[bad]] = False
        n_rejected += int(bad.sum())
    n_poly = P.shape[1]
    c, C = coef[:n_poly], cov[:n_poly, :n_poly]
    zps = np.concatenate([[0.0], coef[n_poly:n_poly + n_exp - 1]])
    zps -= zps.mean()
    flat = StarFlat(coef=c, cov=C, order=config.order, shape=shape, zero_points=zps, n_stars=int(ids.size),
                    n_obs=int((keep & ~is_ref).sum()), n_rejected=n_rejected, rms_obs=rms, rms_mag=0.0,
                    error_mag=0.0, ptp_mag=0.0, constrained=False, significance=0.0, notes=notes)
    flat.n_reference = int((keep & is_ref).sum())
    gx, gy, s = flat.grid(config.grid_cells)
    s0 = s - s.mean()
    B = legendre_basis(*flat._uv(gx.ravel(), gy.ravel()), config.order)
    B -= B.mean(axis=0)  # the map's uncertainty about its mean (the mean is a zero point)
    var = np.einsum("ij,jk,ik->i", B, C, B)
    flat.rms_mag = float(np.sqrt(np.mean(s0 ** 2)))
    flat.ptp_mag = float(s.max() - s.min())
    flat.error_mag = float(np.sqrt(np.mean(np.maximum(var, 0.0))))
    flat.constrained = flat.error_mag * 1000.0 <= config.max_error_mmag
    flat.significance = flat.rms_mag / flat.error_mag if flat.error_mag > 0 else float("inf")
    if not flat.constrained:
        flat.notes.append(f"the dithers constrain the map to {flat.error_mag * 1000:.1f} mmag rms only (limit "
                          f"{config.max_error_mmag} mmag): larger offsets between exposures are needed")
    return flat
