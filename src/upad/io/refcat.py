"""Reference star catalogs for astrometry and photometric calibration.

The pipeline reads the simulator's Gaia-like catalog and real extracts alike: a Gaia DR3 extract (archive column
names), a VizieR extract (``RA_ICRS``/``DE_ICRS``…), or the simulator's ``reference/refcat.fits``; as FITS, Parquet,
CSV or ECSV. Columns are recognised case-insensitively through aliases and returned under one standard set of names:

=================  =========  =====================================================
column             unit       meaning
=================  =========  =====================================================
``ra``, ``dec``    deg        position at ``ref_epoch`` (ICRS)
``ra_error``       mas        position error (``dec_error`` likewise); 0 if unknown
``pmra``,``pmdec`` mas/yr     proper motion (``pmra`` includes cos δ); 0 if unknown
``ref_epoch``      yr         epoch of the positions (Gaia DR3: 2016.0)
``g``              mag        Gaia G (Vega; NaN if absent)
``bp``, ``rp``     mag        Gaia BP, RP (Vega; NaN if absent): with ``g``, the photometric calibration's
                              route through the packaged Gaia transformations (:mod:`upad.reduce.photcal`)
``parallax``       mas        parallax (0 if unknown; ``pmra_error``, ``pmdec_error``, ``parallax_error`` too)
``mag_<filter>``   mag (AB)   synthetic or measured magnitudes in survey filters (``magerr_<filter>`` errors);
                              GaiaXPy's J-PLUS synthetic photometry (``Jplus_gJPLUS_mag``, ``…_flux``,
                              ``…_flux_error``…) is recognised and renamed (``gJPLUS`` → ``gSDSS`` …)
=================  =========  =====================================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from upad.errors import MissingInputError, UpadError

__all__ = ["read_reference_catalog", "propagate_to_epoch", "in_cone", "epoch_of", "observation_epoch", "at_epoch"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "ra": ("ra", "ra_icrs", "raj2000", "ra_deg", "alpha_j2000"),
    "dec": ("dec", "de_icrs", "dej2000", "dec_deg", "delta_j2000", "de"),
    "ra_error": ("ra_error", "e_ra_icrs", "e_raj2000", "ra_err"),
    "dec_error": ("dec_error", "e_de_icrs", "e_dej2000", "dec_err"),
    "pmra": ("pmra", "pmra_masyr"),
    "pmdec": ("pmdec", "pmde", "pmdec_masyr"),
    "ref_epoch": ("ref_epoch", "epoch"),
    "g": ("phot_g_mean_mag", "gmag", "g"),
    "bp": ("phot_bp_mean_mag", "bpmag", "bp"),
    "rp": ("phot_rp_mean_mag", "rpmag", "rp"),
    "parallax": ("parallax", "plx"),
    "pmra_error": ("pmra_error", "e_pmra"),
    "pmdec_error": ("pmdec_error", "e_pmde", "e_pmdec"),
    "parallax_error": ("parallax_error", "e_plx"),
}

_DEFAULT_EPOCH = 2016.0


def _read_any(path: Path) -> Table:
    suffix = "".join(path.suffixes).lower()
    try:
        if suffix.endswith((".fits", ".fit", ".fits.gz", ".fz")):
            return Table.read(path, hdu=1) if not suffix.endswith(".fz") else Table.read(path)
        if suffix.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UpadError(f"{path} is Parquet, which needs pyarrow",
                                hint="pip install pyarrow, or convert the catalog to FITS or CSV") from None
            return Table(pq.read_table(path).to_pydict())
        if suffix.endswith(".ecsv"):
            return Table.read(path, format="ascii.ecsv")
        if suffix.endswith((".csv", ".csv.gz")):
            return Table.read(path, format="ascii.csv")
    except (OSError, ValueError) as exc:
        raise UpadError(f"cannot read the reference catalog {path}: {exc}",
                        hint="give a FITS, Parquet, CSV or ECSV table") from None
    raise UpadError(f"unknown reference catalog format for {path.name}",
                    hint="use .fits, .parquet, .csv or .ecsv")


#: GaiaXPy's J-PLUS photometric system band names -> the survey's filter names
_GAIAXPY_JPLUS = {"ujava": "uJAVA", "j0378": "J0378", "j0395": "J0395", "j0410": "J0410", "j0430": "J0430",
                  "gjplus": "gSDSS", "j0515": "J0515", "rjplus": "rSDSS", "j0660": "J0660", "ijplus": "iSDSS",
                  "j0861": "J0861", "zjplus": "zSDSS"}


def _filled(col) -> np.ndarray:
    return np.asarray(col.filled(np.nan) if hasattr(col, "filled") else col, dtype=float)


def _gaiaxpy_jplus(raw: Table, out: Table) -> None:
    """``Jplus_<band>_mag`` (+ ``_flux``, ``_flux_error``) of GaiaXPy's synthetic photometry → ``mag_<filter>``."""
    lower = {c.lower(): c for c in raw.colnames}
    for band, name in _GAIAXPY_JPLUS.items():
        mcol = lower.get(f"jplus_{band}_mag")
        if mcol is None or f"mag_{name}" in out.colnames:
            continue
        mag = _filled(raw[mcol])
        out[f"mag_{name}"] = mag
        f, fe = lower.get(f"jplus_{band}_flux"), lower.get(f"jplus_{band}_flux_error")
        if f is not None and fe is not None and f"magerr_{name}" not in out.colnames:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"magerr_{name}"] = 1.0857 * _filled(raw[fe]) / _filled(raw[f])


def read_reference_catalog(path: str | Path, *, filters: list[str] | None = None) -> Table:
    """Read a reference catalog and return it with the standard columns (see the module documentation).

    Parameters
    ----------
    path
        The catalog file.
    filters
        Survey filters whose ``mag_<filter>`` columns must be present (an error names the missing ones).
    """
    path = Path(path)
    if not path.is_file():
        # not the data's fault: the jobs that need it wait for it (``blocked``) and run once it is there
        raise MissingInputError(f"reference catalog {path} does not exist", path=str(path),
                                hint="place one there (a Gaia extract: ra, dec, phot_g/bp/rp_mean_mag, pmra, pmdec; "
                                     "simulated nights have one in <sim>/reference/refcat.fits) or set "
                                     "steps.reduce.reference_catalog in upad.toml")
    raw = _read_any(path)
    lower = {c.lower(): c for c in raw.colnames}
    out = Table()
    for std, aliases in _ALIASES.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is not None:
            col = raw[found]
            out[std] = np.asarray(col.filled(np.nan) if hasattr(col, "filled") else col, dtype=np.float64)
        elif std in ("ra", "dec"):
            raise UpadError(f"reference catalog {path} has no {std} column (tried {', '.join(aliases)})",
                            hint="rename the position columns to ra/dec in degrees")
        elif std == "ref_epoch":
            out[std] = np.full(len(raw), _DEFAULT_EPOCH)
        elif std in ("g", "bp", "rp"):
            out[std] = np.full(len(raw), np.nan)
        else:
            out[std] = np.zeros(len(raw))
    for name in raw.colnames:
        for prefix in ("mag_", "magerr_"):
            if name.lower().startswith(prefix):
                col = raw[name]
                out[f"{prefix}{name[len(prefix):]}"] = np.asarray(col.filled(np.nan) if hasattr(col, "filled")
                                                                  else col, dtype=float)
    _gaiaxpy_jplus(raw, out)
    for extra in ("source_id", "truth_id", "id"):
        if extra in lower:
            out[extra] = raw[lower[extra]]
    missing = [f for f in (filters or []) if f"mag_{f}" not in out.colnames]
    if missing:
        raise UpadError(f"reference catalog {path} has no magnitudes for {missing}",
                        hint="photometric calibration needs mag_<filter> columns (e.g. Gaia XP synthetic photometry)")
    bad = ~(np.isfinite(out["ra"]) & np.isfinite(out["dec"]))
    if bad.any():
        out = out[~bad]
    out.meta["source"] = str(path)
    return out


def epoch_of(date_obs: str, exptime: float = 0.0) -> float:
    """Julian epoch (years, TDB ~ UTC here: the difference is 2e-6 yr) of the middle of an exposure.

    Parameters
    ----------
    date_obs : str
        ISO start time (``DATE-OBS``, e.g. ``2025-03-01T22:14:05.123``).
    exptime : float
        Exposure time (s): the epoch is the exposure's middle.

    Raises
    ------
    UpadError
        An unreadable date.
    """
    from astropy.time import Time

    try:
        t = Time(str(date_obs).strip(), format="isot" if "T" in str(date_obs) else None, scale="utc")
    except ValueError:
        raise UpadError(f"cannot read the observation date {date_obs!r}",
                        hint="DATE-OBS must be an ISO date-time, e.g. 2025-03-01T22:14:05") from None
    return float(t.jyear + 0.5 * float(exptime) / (365.25 * 86400.0))


def observation_epoch(meta: dict | None, header: Any = None) -> float | None:
    """Julian epoch (yr) of the middle of a frame's exposure, or None when no date is known.

    From the MJD (``meta["mjd"]``, else the header's ``MJD-OBS``), else from the date (``meta["date_obs"]``, else
    ``DATE-OBS``: :func:`epoch_of`); plus half the exposure time (``meta["exptime"]``, else ``EXPTIME``). ``header``
    is a FITS header or any mapping of its cards; an unreadable date counts as none.
    """
    meta = meta or {}
    get = header.get if header is not None and hasattr(header, "get") else (lambda _k, _d=None: None)
    exptime = float(meta.get("exptime") or get("EXPTIME") or 0.0)
    mjd = meta.get("mjd")
    if mjd is None:
        mjd = get("MJD-OBS")
    if mjd is not None:
        try:
            return 2000.0 + (float(mjd) + 0.5 * exptime / 86400.0 - 51544.5) / 365.25
        except (TypeError, ValueError):
            pass
    date = meta.get("date_obs") or get("DATE-OBS")
    if not date:
        return None
    try:
        return epoch_of(str(date).replace(" ", "T"), exptime)
    except UpadError:
        return None


def at_epoch(cat: Any, epoch: float | None) -> tuple[Any, bool]:
    """A reference catalog with its positions at ``epoch`` (Julian yr): ``(catalog, moved)``.

    A catalog with proper motions and a ``ref_epoch`` (:func:`read_reference_catalog`'s columns; a table or a mapping
    of columns) whose epoch differs from ``epoch`` is moved (:func:`propagate_to_epoch`, as a new
    :class:`~astropy.table.Table`); one already at ``epoch``, one without motions, or an unknown ``epoch`` (None)
    is returned as it is, with ``moved`` False.
    """
    cols = cat.colnames if hasattr(cat, "colnames") else list(cat.keys())
    if epoch is None or not {"pmra", "pmdec", "ref_epoch"} <= set(cols):
        return cat, False
    ref_epoch = np.asarray(cat["ref_epoch"], dtype=float)
    if ref_epoch.size == 0 or np.all(np.abs(ref_epoch - epoch) < 1e-6):
        return cat, False
    tab = cat if isinstance(cat, Table) else Table({c: np.asarray(cat[c]) for c in cols})
    return propagate_to_epoch(tab, float(epoch)), True


def propagate_to_epoch(cat: Table, epoch: float) -> Table:
    """Positions moved from ``ref_epoch`` to ``epoch`` (Julian years) with the proper motions (small-angle).

    Use :func:`epoch_of` for a frame's exact epoch (mid-exposure), not its year: a star of 50 mas/yr moves 25 mas
    in half a year.

    The position errors (``ra_error``, ``dec_error``, mas) are propagated too when the catalog has the proper-motion
    errors (``pmra_error``, ``pmdec_error``): ``sqrt(err^2 + (dt pm_err)^2)``. Nine years after Gaia DR3's epoch a
    G = 20 star's proper-motion error (~1 mas/yr) makes its position uncertain by ~10 mas, twenty times its
    catalogued error: weights from the catalogued error alone would trust the faint reference stars far too much.
    """
    dt = epoch - np.asarray(cat["ref_epoch"], dtype=float)
    pmra = np.nan_to_num(np.asarray(cat["pmra"], dtype=float))
    pmdec = np.nan_to_num(np.asarray(cat["pmdec"], dtype=float))
    out = cat.copy(copy_data=True)
    cosd = np.cos(np.deg2rad(np.asarray(cat["dec"], dtype=float)))
    out["ra"] = np.asarray(cat["ra"]) + dt * pmra / 3.6e6 / np.maximum(cosd, 1e-6)
    out["dec"] = np.asarray(cat["dec"]) + dt * pmdec / 3.6e6
    for pos, pm in (("ra_error", "pmra_error"), ("dec_error", "pmdec_error")):
        if pos in cat.colnames and pm in cat.colnames:
            e = np.asarray(cat[pos], dtype=float)
            out[pos] = np.hypot(e, dt * np.nan_to_num(np.asarray(cat[pm], dtype=float)))
    out["ref_epoch"] = np.full(len(cat), epoch)
    return out


def in_cone(cat: Table, ra: float, dec: float, radius_deg: float) -> Table:
    """Rows within ``radius_deg`` of (``ra``, ``dec``), in degrees."""
    r1, d1 = np.deg2rad(ra), np.deg2rad(dec)
    r2, d2 = np.deg2rad(np.asarray(cat["ra"])), np.deg2rad(np.asarray(cat["dec"]))
    cos_sep = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(r2 - r1)
    return cat[cos_sep >= np.cos(np.deg2rad(radius_deg))]
