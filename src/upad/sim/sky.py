"""The truth sky: a catalog of stars and galaxies over the survey footprint, and sky brightness.

Number counts are power laws in the reference band (rSDSS) normalised at r = 21 (stars ~3500 deg^-2,
galaxies ~5500 deg^-2, i.e. ~9000 objects per deg^2 to r = 21, ~18 k per T80Cam field), with a
steeper star slope at bright magnitudes. Positions are uniform in the tangent plane of the field
centre. Galaxies are Sersic profiles (n in {1, 1.5, 2.5, 4}) with half-light radii shrinking with
magnitude; shapes are given as axis ratio ``q`` and position angle (deg, east of north).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from upad.instruments import FilterSystem
from upad.sim.config import SimConfig
from upad.sim.schedule import tangent_to_radec
from upad.sim.seds import galaxy_colours, gaia_g, interp_table, star_mag_table

#: Sersic indices used for galaxies (the renderer keeps one transform table per index)
SERSIC_INDICES = (1.0, 1.5, 2.5, 4.0)

STAR, GALAXY = 0, 1


@dataclass
class SkyCatalog:
    """Column arrays of the truth sky (one entry per object)."""

    id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    kind: np.ndarray  # 0 star, 1 galaxy
    mags: dict[str, np.ndarray]  # filter name -> AB magnitude
    sersic_n: np.ndarray  # 0 for stars
    hlr_arcsec: np.ndarray  # 0 for stars
    q: np.ndarray  # axis ratio b/a (1 for stars)
    pa_deg: np.ndarray  # position angle of the major axis, east of north
    teff: np.ndarray  # stars: temperature (K); galaxies 0
    gmag: np.ndarray  # Gaia-like G
    #: Gaia BP, RP (Vega; NaN for galaxies), proper motions (mas/yr, pmra with cos dec) and parallax (mas); ra/dec
    #: are the positions at ``epoch`` (Julian year)
    bp: np.ndarray | None = None
    rp: np.ndarray | None = None
    pmra: np.ndarray | None = None
    pmdec: np.ndarray | None = None
    parallax: np.ndarray | None = None
    #: magnitudes through the survey's nominal passbands (differ from ``mags`` when the camera's are shifted)
    mags_nominal: dict[str, np.ndarray] | None = None
    #: drawn shift of each filter's real passband from the nominal one (Angstrom)
    passband_shift: dict[str, float] | None = None
    epoch: float = 2016.0

    def radec_at(self, epoch: float | None, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions (deg) at ``epoch`` (Julian year) moved with the proper motions (small-angle)."""
        sl = slice(None) if idx is None else idx
        ra, dec = self.ra[sl], self.dec[sl]
        if epoch is None or self.pmra is None:
            return ra, dec
        dt = epoch - self.epoch
        cosd = np.maximum(np.cos(np.radians(dec)), 1e-6)
        return ra + dt * self.pmra[sl] / 3.6e6 / cosd, dec + dt * self.pmdec[sl] / 3.6e6

    def __len__(self) -> int:
        return len(self.id)

    def subset(self, idx: np.ndarray) -> "SkyCatalog":
        opt = {k: (None if getattr(self, k) is None else getattr(self, k)[idx])
               for k in ("bp", "rp", "pmra", "pmdec", "parallax")}
        nom = None if self.mags_nominal is None else {k: v[idx] for k, v in self.mags_nominal.items()}
        return SkyCatalog(self.id[idx], self.ra[idx], self.dec[idx], self.kind[idx],
                          {k: v[idx] for k, v in self.mags.items()}, self.sersic_n[idx], self.hlr_arcsec[idx],
                          self.q[idx], self.pa_deg[idx], self.teff[idx], self.gmag[idx], **opt,
                          mags_nominal=nom, passband_shift=self.passband_shift, epoch=self.epoch)


def _powerlaw_mags(rng: np.random.Generator, n: int, m_lo: float, m_hi: float, slope: float) -> np.ndarray:
    """Magnitudes with dN/dm ~ 10**(slope m) between m_lo and m_hi (inverse CDF)."""
    a, b = 10 ** (slope * m_lo), 10 ** (slope * m_hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def _cum_stars(m: float, cfg: SimConfig) -> float:
    """Cumulative star density (deg^-2) brighter than r = m."""
    mb = cfg.star_slope_break
    nb = cfg.star_density_r21 * 10 ** (cfg.star_slope_faint * (mb - 21.0))
    if m <= mb:
        return nb * 10 ** (cfg.star_slope_bright * (m - mb))
    return cfg.star_density_r21 * 10 ** (cfg.star_slope_faint * (m - 21.0))


def make_sky_catalog(rng: np.random.Generator, *, centre: tuple[float, float], half_size_deg: tuple[float, float],
                     filters: FilterSystem, cfg: SimConfig,
                     bright_star_centres: list[tuple[float, float]] = (),
                     bright_star_radius_deg: float = 0.0) -> SkyCatalog:
    """Draw the truth sky over a box of ``2*half_size_deg`` (standard coordinates) around ``centre``.

    Parameters
    ----------
    rng : numpy Generator
    centre : (ra, dec) of the box centre, deg.
    half_size_deg : half widths of the box in the tangent plane (xi, eta), deg.
    filters : the filter system (magnitudes are given in every one of its filters).
    cfg : simulator configuration (number counts, limits).
    bright_star_centres : add ``cfg.bright_stars_per_tile`` bright stars within
        ``bright_star_radius_deg`` of each of these positions.
    """
    hx, hy = half_size_deg
    area = 4 * hx * hy
    ref = filters[filters.reference_filter]
    mlim = cfg.mag_limit

    # stars: bright and faint power-law segments
    mb = min(cfg.star_slope_break, mlim)
    n_bright = rng.poisson(area * max(0.0, _cum_stars(mb, cfg) - _cum_stars(cfg.star_bright_limit, cfg)))
    n_faint = rng.poisson(area * max(0.0, _cum_stars(mlim, cfg) - _cum_stars(mb, cfg))) if mlim > mb else 0
    r_star = np.concatenate([
        _powerlaw_mags(rng, n_bright, cfg.star_bright_limit, mb, cfg.star_slope_bright),
        _powerlaw_mags(rng, n_faint, mb, mlim, cfg.star_slope_faint) if n_faint else np.empty(0),
    ])
    n_bs = cfg.bright_stars_per_tile * len(bright_star_centres)
    n_gal = rng.poisson(area * cfg.galaxy_density_r21 * (10 ** (cfg.galaxy_slope * (mlim - 21.0))
                                                         - 10 ** (cfg.galaxy_slope * (cfg.galaxy_bright_limit - 21.0))))
    r_gal = _powerlaw_mags(rng, n_gal, cfg.galaxy_bright_limit, mlim, cfg.galaxy_slope)
    ns = len(r_star)

    # positions
    xi = rng.uniform(-hx, hx, ns + n_gal)
    eta = rng.uniform(-hy, hy, ns + n_gal)
    ra, dec = tangent_to_radec(centre[0], centre[1], xi, eta)
    ra, dec = np.atleast_1d(ra), np.atleast_1d(dec)
    if n_bs:
        bra, bdec = [], []
        for (c_ra, c_dec) in bright_star_centres:
            for _ in range(cfg.bright_stars_per_tile):
                rad = bright_star_radius_deg * math.sqrt(rng.random())
                ang = rng.uniform(0, 2 * math.pi)
                a, d = tangent_to_radec(c_ra, c_dec, rad * math.cos(ang), rad * math.sin(ang))
                bra.append(a)
                bdec.append(d)
        ra = np.concatenate([ra[:ns], bra, ra[ns:]])
        dec = np.concatenate([dec[:ns], bdec, dec[ns:]])
        r_star = np.concatenate([r_star, rng.uniform(9.0, 11.0, n_bs)])
        ns += n_bs

    # stars: temperatures -> colours
    u = rng.random(ns)
    teff = np.where(u < 0.25, rng.uniform(3200, 4000, ns),
                    np.where(u < 0.85, rng.uniform(4000, 6200, ns), rng.uniform(6200, 10000, ns)))
    # galaxies: type -> Sersic index, colours, size
    early = rng.random(n_gal) < 0.3
    n_choice = np.where(early, rng.choice([2.5, 4.0], n_gal, p=[0.3, 0.7]), rng.choice([1.0, 1.5], n_gal, p=[0.7, 0.3]))
    slope = np.where(early, rng.uniform(1.6, 2.8, n_gal), rng.uniform(0.0, 1.4, n_gal))
    brk = np.where(early, rng.uniform(0.6, 1.0, n_gal), rng.uniform(0.1, 0.4, n_gal))
    halpha = np.where(early, 0.0, rng.uniform(0.0, 0.4, n_gal))
    hlr_med = np.where(early, 0.7, 1.0) * 10 ** (-0.12 * (r_gal - 20.0))
    hlr = np.clip(hlr_med * 10 ** rng.normal(0, 0.15, n_gal), 0.2, 12.0)
    q = np.where(early, rng.uniform(0.5, 1.0, n_gal), rng.uniform(0.2, 1.0, n_gal))
    pa = rng.uniform(0, 180, n_gal)

    # the camera's real passbands (shifted from the nominal ones), proper motions and parallaxes: drawn from a
    # generator of their own so that the draws above are unchanged
    xrng = np.random.default_rng(int(rng.integers(2 ** 62)))
    shifts = {f.name: float(xrng.normal(0.0, cfg.passband_shift_fraction * f.fwhm)) if cfg.passband_shift_fraction
              else 0.0 for f in filters.filters}
    grid, table = star_mag_table({f.name: (f.cwl, f.fwhm) for f in filters.filters}, shifts)
    ref_star = interp_table(teff, grid, table[ref.name])
    mags: dict[str, np.ndarray] = {}
    nominal: dict[str, np.ndarray] = {}
    for f in filters.filters:
        ms = r_star + interp_table(teff, grid, table[f.name]) - ref_star
        mn = r_star + interp_table(teff, grid, table[f"nominal:{f.name}"]) - ref_star
        mg = r_gal + galaxy_colours(slope, brk, halpha, f.cwl, ref.cwl, halpha_filter=f.name == "J0660")
        mags[f.name] = np.concatenate([ms, mg]).astype(np.float64)
        nominal[f.name] = np.concatenate([mn, mg]).astype(np.float64)
    n = ns + n_gal
    kind = np.concatenate([np.full(ns, STAR, np.int16), np.full(n_gal, GALAXY, np.int16)])
    gaia = {b: r_star + interp_table(teff, grid, table[f"gaia:{b}"]) - ref_star for b in ("G", "BP", "RP")}
    g_gal = gaia_g(mags)[ns:] if all(k in mags for k in ("gSDSS", "rSDSS", "iSDSS")) else mags[ref.name][ns:]
    gmag = np.concatenate([gaia["G"], g_gal])
    nan_gal = np.full(n_gal, np.nan)
    # proper motions: a disc-like field population (mean reflex motion plus a dispersion that shrinks for the
    # fainter, more distant stars); parallaxes from a distance that grows with the magnitude
    scale = 10 ** (-0.1 * (r_star - 15.0))
    sig = cfg.star_pm_sigma_masyr
    pmra = (xrng.normal(-2.0, 1.0, ns) * (sig > 0) + xrng.normal(0.0, 1.0, ns) * sig * scale)
    pmdec = (xrng.normal(-3.0, 1.0, ns) * (sig > 0) + xrng.normal(0.0, 1.0, ns) * sig * scale)
    plx = np.clip(xrng.lognormal(np.log(1.0), 0.6, ns) * scale, 0.02, 200.0)
    return SkyCatalog(
        id=np.arange(1, n + 1, dtype=np.int64), ra=ra.astype(np.float64), dec=dec.astype(np.float64), kind=kind,
        mags=mags, sersic_n=np.concatenate([np.zeros(ns), n_choice]),
        hlr_arcsec=np.concatenate([np.zeros(ns), hlr]), q=np.concatenate([np.ones(ns), q]),
        pa_deg=np.concatenate([np.zeros(ns), pa]), teff=np.concatenate([teff, np.zeros(n_gal)]), gmag=gmag,
        bp=np.concatenate([gaia["BP"], nan_gal]), rp=np.concatenate([gaia["RP"], nan_gal]),
        pmra=np.concatenate([pmra, np.zeros(n_gal)]), pmdec=np.concatenate([pmdec, np.zeros(n_gal)]),
        parallax=np.concatenate([plx, np.zeros(n_gal)]), mags_nominal=nominal, passband_shift=shifts,
        epoch=2016.0,
    )


def sky_rate_e(sky_mag: float, zp_e: float, pixel_scale: float) -> float:
    """Sky count rate (e-/s/pixel) for a surface brightness (AB mag/arcsec^2) and a zero point for 1 e-/s."""
    return 10 ** (-0.4 * (sky_mag - zp_e)) * pixel_scale ** 2


# ----------------------------------------------------------------------------- sky background structure
def position_angle(ra0: float, dec0: float, ra1: float, dec1: float) -> float:
    """Position angle (deg, east of north) at (ra0, dec0) of the great circle towards (ra1, dec1)."""
    a0, d0, a1, d1 = map(math.radians, (ra0, dec0, ra1, dec1))
    da = a1 - a0
    return math.degrees(math.atan2(math.sin(da) * math.cos(d1),
                                   math.cos(d0) * math.sin(d1) - math.sin(d0) * math.cos(d1) * math.cos(da)))


def image_direction(pa_deg: float, north: np.ndarray, east: np.ndarray) -> np.ndarray:
    """Unit pixel-space vector (x, y) of the sky direction at position angle ``pa_deg`` (east of north), from the
    unit pixel vectors pointing north and east."""
    pa = math.radians(pa_deg)
    d = math.cos(pa) * np.asarray(north, float) + math.sin(pa) * np.asarray(east, float)
    return d / np.linalg.norm(d)


def gradient_coefficients(direction: np.ndarray, shape: tuple[int, int], peak_to_peak: float) -> tuple[float, float]:
    """Plane ``1 + gx u + gy v`` (``u, v`` in [-1, 1] along x and y) rising along the pixel-space ``direction`` with
    the given peak to peak over the image: ``2 (|gx| + |gy|) = peak_to_peak``."""
    ny, nx = shape
    gx, gy = float(direction[0]) * (nx - 1) / 2, float(direction[1]) * (ny - 1) / 2
    s = 2 * (abs(gx) + abs(gy))
    if s == 0 or peak_to_peak == 0:
        return 0.0, 0.0
    return gx * peak_to_peak / s, gy * peak_to_peak / s


def sky_gradient_map(shape: tuple[int, int], gx: float, gy: float, *, curvature: float = 0.0) -> np.ndarray:
    """Relative sky brightness over the image (float32, mean ~1): ``1 + gx u + gy v + k (s² - 1/3)``.

    ``s = (gx u + gy v) / (|gx| + |gy|)`` is the position along the gradient (in [-1, 1]) and
    ``k = curvature * 2 (|gx| + |gy|)``: the brightening is slightly faster than linear towards the source."""
    ny, nx = shape
    u = np.linspace(-1, 1, nx, dtype=np.float32)[None, :]
    v = np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
    lin = np.float32(gx) * u + np.float32(gy) * v
    out = np.float32(1.0) + lin
    span = abs(gx) + abs(gy)
    if curvature and span > 0:
        s = lin / np.float32(span)
        out += np.float32(curvature * 2 * span) * (s * s - np.float32(1 / 3))
    return out.astype(np.float32)


def scattered_light_pattern(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A fixed scattered-light glow (float32, peak 1, >= 0): a broad off-centre lobe and a faint ring (a ghost of
    the pupil), the kind of pattern baffling and filter reflections leave on a wide-field camera."""
    from upad.sim.detector import _upsample_bilinear

    ny, nx = shape
    factor = max(1, max(ny, nx) // 256)  # smooth: drawn on a coarse grid and upsampled
    gy, gx = ny // factor + 2, nx // factor + 2
    y, x = np.mgrid[0:gy, 0:gx].astype(np.float32) * np.float32(factor)
    x = (x - (nx - 1) / 2) / np.float32(nx / 2)
    y = (y - (ny - 1) / 2) / np.float32(ny / 2)
    cx, cy = rng.uniform(-0.9, 0.9, 2)
    w = rng.uniform(0.4, 0.8)
    lobe = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / np.float32(2 * w * w))
    rx, ry = rng.uniform(-0.3, 0.3, 2)
    r0, rw = rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.12)
    r = np.sqrt((x - rx) ** 2 + (y - ry) ** 2)
    ring = np.float32(rng.uniform(0.2, 0.4)) * np.exp(-((r - r0) ** 2) / np.float32(2 * rw * rw))
    out = lobe + ring
    out = _upsample_bilinear(out, shape, factor) if factor > 1 else out[:ny, :nx]
    out /= np.float32(out.max())
    return out.astype(np.float32)
