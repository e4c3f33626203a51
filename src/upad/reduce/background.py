"""Sky background: a smooth model from sigma-clipped statistics on a mesh, as SExtractor computes it.

The image is cut into meshes of ``mesh_px`` pixels. In each mesh the masked pixels are ignored and the others are
clipped iteratively at ``clip_sigma`` around the median until stable; the background is SExtractor's mode estimate
``2.5 median - 1.5 mean`` when the clipped distribution is nearly symmetric (``|mean - median| < 0.3 sigma``) and
the median otherwise, the noise is the clipped standard deviation. Meshes with too few usable pixels are filled
from their neighbours; the mesh values are median-filtered over ``filter_meshes`` meshes and interpolated with
natural cubic splines through the mesh centres (first along the columns, then along each row), as SExtractor does.

Everything is compiled (numba) and parallel; the full-size model is never stored: :func:`evaluate_background`
computes it row by row, and :func:`upad.reduce.noise.subtract_and_variance` subtracts it while building the noise
model in the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange
from upad.reduce.errors import ReductionError

__all__ = ["BackgroundConfig", "BackgroundResult", "estimate_background", "evaluate_background"]


@dataclass(frozen=True)
class BackgroundConfig(StepConfig):
    """Parameters of the sky background model."""

    mesh_px: int = param(128, doc="size of the background meshes", bounds=(8, 4096), unit="pixel")
    filter_meshes: int = param(3, doc="size of the median filter applied to the mesh values (odd; 1: none)",
                               bounds=(1, 15), unit="mesh", odd=True)
    clip_sigma: float = param(3.0, doc="clipping of the mesh statistics", bounds=(1.0, 10.0))
    min_fraction: float = param(0.5, doc="a mesh with fewer usable pixels than this fraction is interpolated",
                                bounds=(0.0, 1.0))
    mask_bits: int = param(mb.UNUSABLE, doc="mask bits whose pixels are ignored", bounds=(0, 32767))


@dataclass
class BackgroundResult:
    """A background model.

    Attributes
    ----------
    level : float
        Median of the mesh background values (image unit, e.g. e-).
    rms : float
        Median of the mesh noise values (image unit).
    mesh : ndarray
        Background at the mesh centres (``ny_mesh, nx_mesh``), after filling and the median filter.
    rms_mesh : ndarray
        Noise at the mesh centres.
    mesh_px : int
        Mesh size (pixels).
    shape : tuple of int
        Shape of the image.
    n_filled : int
        Meshes without enough usable pixels, filled from their neighbours.
    """

    level: float
    rms: float
    mesh: np.ndarray
    rms_mesh: np.ndarray
    mesh_px: int
    shape: tuple[int, int]
    n_filled: int = 0
    _cols: np.ndarray | None = field(default=None, repr=False)

    def column_splines(self) -> tuple[np.ndarray, np.ndarray]:
        """Mesh values interpolated along y to every image row (``ny x nx_mesh``) and the mesh-centre x."""
        if self._cols is None:
            self._cols = _rows_from_mesh(self.mesh.astype(np.float64), self.shape[0], self.mesh_px)
        return self._cols, _centres(self.shape[1], self.mesh_px)

    def evaluate(self, dtype=np.float32) -> np.ndarray:
        """The full-size background model."""
        return evaluate_background(self).astype(dtype, copy=False)

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Background at 0-based pixel positions (bilinear between mesh centres; for catalogs)."""
        from scipy.ndimage import map_coordinates

        gy = (np.asarray(y, float) + 0.5) / self.mesh_px - 0.5
        gx = (np.asarray(x, float) + 0.5) / self.mesh_px - 0.5
        return map_coordinates(self.mesh.astype(np.float64), [gy, gx], order=1, mode="nearest")

    def subtract(self, image: np.ndarray) -> None:
        """Subtract the model from ``image`` in place."""
        cols, xc = self.column_splines()
        _apply_rows(image, cols, xc, -1.0, 1)

    def add_to(self, image: np.ndarray) -> None:
        """Add the model to ``image`` in place (restores the sky of a background-subtracted image)."""
        cols, xc = self.column_splines()
        _apply_rows(image, cols, xc, 1.0, 1)


def _centres(n: int, mesh: int) -> np.ndarray:
    nm = -(-n // mesh)
    c = (np.arange(nm) + 0.5) * mesh - 0.5
    # the last (partial) mesh: centre of its pixels
    c[-1] = ((nm - 1) * mesh + n - 1) / 2.0
    return c


# ------------------------------------------------------------------------------------------------ compiled
@njit(cache=True, nogil=True)
def _hist_median(vals, n, lo, hi, hist):  # pragma: no cover - compiled
    """Median, mean, standard deviation and count of ``vals[:n]`` within [lo, hi] (median from a histogram)."""
    nb = len(hist)
    for b in range(nb):
        hist[b] = 0
    w = (hi - lo) / nb
    s = 0.0
    s2 = 0.0
    m = 0
    for q in range(n):
        v = vals[q]
        if lo <= v <= hi:
            s += v
            s2 += v * v
            m += 1
            b = int((v - lo) / w)
            if b >= nb:
                b = nb - 1
            hist[b] += 1
    if m == 0:
        return 0.0, 0.0, 0.0, 0
    mean = s / m
    sd = np.sqrt(max(s2 / m - mean * mean, 0.0))
    half = 0.5 * m
    c = 0.0
    med = mean
    for b in range(nb):
        if c + hist[b] >= half:
            frac = (half - c) / hist[b] if hist[b] > 0 else 0.5
            med = lo + (b + frac) * w
            break
        c += hist[b]
    return med, mean, sd, m


@njit(parallel=True, nogil=True, cache=True)
def _mesh_stats(img, mask, bits, mesh, clip, min_frac):  # pragma: no cover - compiled
    ny, nx = img.shape
    my = (ny + mesh - 1) // mesh
    mx = (nx + mesh - 1) // mesh
    back = np.full((my, mx), np.nan)
    sig = np.full((my, mx), np.nan)
    for k in prange(my * mx):
        j = k // mx
        i = k % mx
        y0 = j * mesh
        x0 = i * mesh
        y1 = min(ny, y0 + mesh)
        x1 = min(nx, x0 + mesh)
        vals = np.empty((y1 - y0) * (x1 - x0), np.float32)
        hist = np.zeros(1024, np.int64)
        n = 0
        s = 0.0
        s2 = 0.0
        for y in range(y0, y1):
            for x in range(x0, x1):
                if (mask[y, x] & bits) == 0:
                    v = img[y, x]
                    vals[n] = v
                    s += v
                    s2 += v * v
                    n += 1
        if n < min_frac * (y1 - y0) * (x1 - x0) or n < 10:
            continue
        mean = s / n
        sd = np.sqrt(max(s2 / n - mean * mean, 0.0))
        if sd == 0:
            back[j, i] = mean
            sig[j, i] = 0.0
            continue
        # first median over a wide range, then clip around it until stable (SExtractor's back.c)
        lo = mean - 10.0 * sd
        hi = mean + 10.0 * sd
        med, mean, sd, m = _hist_median(vals, n, lo, hi, hist)
        for _it in range(10):
            nlo = med - clip * sd
            nhi = med + clip * sd
            if sd <= 0 or (abs(nlo - lo) < 0.01 * sd and abs(nhi - hi) < 0.01 * sd):
                break
            lo = nlo
            hi = nhi
            med, mean, sd, m = _hist_median(vals, n, lo, hi, hist)
            if m < 5:
                break
        if sd > 0 and abs(mean - med) < 0.3 * sd:
            back[j, i] = 2.5 * med - 1.5 * mean
        else:
            back[j, i] = med
        sig[j, i] = sd
    return back, sig


@njit(cache=True, nogil=True)
def _spline_eval(xa, ya, y2, x):  # pragma: no cover - compiled
    """Natural cubic spline through (xa, ya) (increasing knots) evaluated at x; linear extrapolation."""
    n = len(xa)
    if n == 1:
        return ya[0]
    if x <= xa[0]:
        h = xa[1] - xa[0]
        d = (ya[1] - ya[0]) / h - h * (2 * y2[0] + y2[1]) / 6.0
        return ya[0] + d * (x - xa[0])
    if x >= xa[n - 1]:
        h = xa[n - 1] - xa[n - 2]
        d = (ya[n - 1] - ya[n - 2]) / h + h * (y2[n - 2] + 2 * y2[n - 1]) / 6.0
        return ya[n - 1] + d * (x - xa[n - 1])
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        k = (hi + lo) // 2
        if xa[k] > x:
            hi = k
        else:
            lo = k
    h = xa[hi] - xa[lo]
    a = (xa[hi] - x) / h
    b = (x - xa[lo]) / h
    return a * ya[lo] + b * ya[hi] + ((a * a * a - a) * y2[lo] + (b * b * b - b) * y2[hi]) * (h * h) / 6.0


@njit(cache=True, nogil=True)
def _second_general(xa, ya, out):  # pragma: no cover - compiled
    """Natural cubic spline second derivatives for arbitrary increasing knots."""
    n = len(xa)
    if n < 3:
        for i in range(n):
            out[i] = 0.0
        return
    u = np.empty(n)
    out[0] = 0.0
    u[0] = 0.0
    for i in range(1, n - 1):
        sig = (xa[i] - xa[i - 1]) / (xa[i + 1] - xa[i - 1])
        p = sig * out[i - 1] + 2.0
        out[i] = (sig - 1.0) / p
        dd = (ya[i + 1] - ya[i]) / (xa[i + 1] - xa[i]) - (ya[i] - ya[i - 1]) / (xa[i] - xa[i - 1])
        u[i] = (6.0 * dd / (xa[i + 1] - xa[i - 1]) - sig * u[i - 1]) / p
    out[n - 1] = 0.0
    for k in range(n - 2, -1, -1):
        out[k] = out[k] * out[k + 1] + u[k]


@njit(parallel=True, nogil=True, cache=True)
def _rows_from_columns(mesh, yc, ny):  # pragma: no cover - compiled
    my, mx = mesh.shape
    out = np.empty((ny, mx))
    for i in prange(mx):
        col = mesh[:, i].copy()
        y2 = np.empty(my)
        _second_general(yc, col, y2)
        for y in range(ny):
            out[y, i] = _spline_eval(yc, col, y2, float(y))
    return out


def _rows_from_mesh(mesh: np.ndarray, ny: int, mesh_px: int) -> np.ndarray:
    return _rows_from_columns(np.ascontiguousarray(mesh, np.float64), _centres(ny, mesh_px), ny)


@njit(cache=True, nogil=True)
def _row_coeffs(xc, row, y2, coef):  # pragma: no cover - compiled
    """Cubic coefficients of each spline interval: value = c0 + t (c1 + t (c2 + t c3)), t = x - xc[k]."""
    n = len(xc)
    for k in range(n - 1):
        h = xc[k + 1] - xc[k]
        coef[k, 0] = row[k]
        coef[k, 1] = (row[k + 1] - row[k]) / h - h * (2 * y2[k] + y2[k + 1]) / 6.0
        coef[k, 2] = y2[k] / 2.0
        coef[k, 3] = (y2[k + 1] - y2[k]) / (6.0 * h)


@njit(cache=True, nogil=True)
def _eval_row(xc, row, y2, coef, out_row, x0, x1, sign, mode):  # pragma: no cover - compiled
    """Evaluate the row spline at x = x0..x1-1 walking the intervals; mode 0: out = value, 1: out += sign*value."""
    n = len(xc)
    if n == 1:
        for x in range(x0, x1):
            if mode == 0:
                out_row[x] = row[0]
            else:
                out_row[x] += sign * row[0]
        return
    # linear extrapolation slopes at both ends
    h0 = xc[1] - xc[0]
    d0 = (row[1] - row[0]) / h0 - h0 * (2 * y2[0] + y2[1]) / 6.0
    hn = xc[n - 1] - xc[n - 2]
    dn = (row[n - 1] - row[n - 2]) / hn + hn * (y2[n - 2] + 2 * y2[n - 1]) / 6.0
    k = 0
    for x in range(x0, x1):
        xf = float(x)
        if xf <= xc[0]:
            v = row[0] + d0 * (xf - xc[0])
        elif xf >= xc[n - 1]:
            v = row[n - 1] + dn * (xf - xc[n - 1])
        else:
            while xf > xc[k + 1]:
                k += 1
            t = xf - xc[k]
            v = coef[k, 0] + t * (coef[k, 1] + t * (coef[k, 2] + t * coef[k, 3]))
        if mode == 0:
            out_row[x] = v
        else:
            out_row[x] += sign * v


@njit(parallel=True, nogil=True, cache=True)
def _apply_rows(img, cols, xc, sign, mode):  # pragma: no cover - compiled
    """Row splines through the column-interpolated mesh values: ``img += sign * background`` (``mode`` 1) or
    ``img = background`` (``mode`` 0)."""
    ny, nx = img.shape
    mx = cols.shape[1]
    for y in prange(ny):
        row = cols[y].copy()
        y2 = np.empty(mx)
        _second_general(xc, row, y2)
        coef = np.empty((max(mx - 1, 1), 4))
        _row_coeffs(xc, row, y2, coef)
        _eval_row(xc, row, y2, coef, img[y], 0, nx, sign, mode)


def evaluate_background(bkg: BackgroundResult) -> np.ndarray:
    """The full-size model (float32) of a :class:`BackgroundResult`."""
    cols, xc = bkg.column_splines()
    out = np.empty(bkg.shape, np.float32)
    _apply_rows(out, cols, xc, 1.0, 0)
    return out


def _fill_missing(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN meshes by the mean of the nearest valid meshes (growing rings)."""
    bad = ~np.isfinite(a)
    n = int(bad.sum())
    if n == 0:
        return a, 0
    if n == a.size:
        return a, n
    from scipy import ndimage

    out = a.copy()
    _, (iy, ix) = ndimage.distance_transform_edt(bad, return_indices=True)
    out[bad] = a[iy[bad], ix[bad]]
    return out, n


def estimate_background(image: np.ndarray, *, mask: np.ndarray | None = None,
                        config: BackgroundConfig = BackgroundConfig()) -> BackgroundResult:
    """Estimate the sky background of an image (see the module documentation).

    Parameters
    ----------
    image : ndarray
        2-D image (float32; non-finite pixels must be flagged in ``mask``).
    mask : ndarray, optional
        Bit-coded mask (:mod:`upad.maskbits`); pixels with ``config.mask_bits`` set are ignored.
    config : BackgroundConfig

    Returns
    -------
    BackgroundResult

    Raises
    ------
    ReductionError
        ``no_data`` when no mesh has enough usable pixels.
    """
    from scipy import ndimage

    img = np.asarray(image)
    if img.dtype != np.float32:
        img = img.astype(np.float32)
    ny, nx = img.shape
    m = mask if mask is not None else np.zeros((ny, nx), mb.MASK_DTYPE)
    mesh = int(min(config.mesh_px, max(8, min(ny, nx) // 2)))
    back, sig = _mesh_stats(img, m, np.int16(config.mask_bits), mesh, float(config.clip_sigma),
                            float(config.min_fraction))
    if not np.isfinite(back).any():
        raise ReductionError("no_data", "no background mesh has enough usable pixels", stage="background")
    back, nfill = _fill_missing(back)
    sig, _ = _fill_missing(sig)
    f = int(config.filter_meshes)  # odd (declared so: an even size is refused, not rounded)
    if f > 1 and min(back.shape) >= f:
        back = ndimage.median_filter(back, size=f, mode="nearest")
        sig = ndimage.median_filter(sig, size=f, mode="nearest")
    return BackgroundResult(level=float(np.median(back)), rms=float(np.median(sig)), mesh=back.astype(np.float32),
                            rms_mesh=sig.astype(np.float32), mesh_px=mesh, shape=(ny, nx), n_filled=nfill)
