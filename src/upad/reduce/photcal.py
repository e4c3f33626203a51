"""Photometric calibration of a frame against the reference users actually have.

The reference magnitude of a matched star in the frame's filter is, in order of preference (``zp_reference``):

* ``survey``: the catalog's ``mag_<filter>`` (e.g. Gaia XP synthetic photometry in the J-PLUS system, or a
  previous release), with ``magerr_<filter>``;
* ``gaia``: ``G + P_filter(BP - RP)``, the packaged transformation (``data/gaia_transforms_<system>.json``,
  derived by :mod:`upad.reduce.photcal_derive` from synthetic photometry of a stellar library through the survey's
  passbands; docs/calibration.md gives the polynomials' validity range in colour). Stars outside the validity
  range are not used; the transformation's rms (the library's spread at fixed colour) is added to each star's error
  and, as a systematic, to the zero point's.

Per frame, one weighted least-squares fit with sigma clipping of

    ``mag_ref + 2.5 log10(F / EXPTIME) = ZP_E - k (BP-RP - c0) + sum_k a_k u^p v^q``

gives the zero point ``ZP_E`` at the reference colour ``c0`` (``zp_colour_ref``) and at the field centre, the
colour term ``k`` (``instrumental = reference + k (BP-RP - c0)``; fitted when the stars' colours spread enough,
else 0) and the residual zero-point map (order ``zp_map_order``, no constant term; ``u, v`` in [-1, 1] over the
frame) that the tile calibration will use. The catalog's ``MAG_*`` are in the natural system of the camera at
``ZP_E`` (no colour correction).

``ZP_E`` is the zero point for a star of colour ``c0`` in the reference (nominal) system. The **AB zero point** of
the camera's natural system is the one at the BP-RP of a flat-f_nu source (0.34, from the Gaia AB - Vega offsets):
``ZP_E + k (c0 - 0.34)``; the two differ when the camera's passband differs from the nominal one. ``c0 = 1`` is
near the median calibration star, so ``ZP_E`` needs no extrapolation in colour (at 0.34 it would carry the colour
term's noise, and the G/BP/RP transformation's error at the hot end, times 0.66 mag of colour).

The colour term is fitted with a Gaussian prior ``k = 0 +- zp_colour_prior`` (0.03: a camera's colour term
against its nominal system is a few hundredths per magnitude of colour; the data's errors are first scaled by the
fit's reduced chi-square): a frame's 10-20 stars with a few per cent flux errors measure ``k`` to +-0.02-0.05 only,
and without the prior a handful of faint blue or red stars can make it 0.1. A frame with many stars measures its own
``k``; one with few keeps it near 0.

Without a usable reference (no magnitudes in the filter and no G/BP/RP, no star within the transformation's colour
range, too few matched stars) the frame gets the **nominal** zero point of the instrument file (``source =
'nominal'``, with the reason in ``note``): the pipeline records a QC warning (``PHOTCAL``), not a failure.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from upad.reduce.errors import ReductionError
from upad.reduce.photometry import PhotometryConfig, ZeroPoint

__all__ = ["load_transformations", "gaia_to_survey", "reference_columns", "calibrate_zero_point", "nominal_zero_point",
           "photcal_meta", "photcal_cards", "reference_magnitudes"]


@lru_cache(maxsize=4)
def load_transformations(system: str = "jplus") -> dict:
    """The packaged Gaia -> survey transformations of ``system`` (see :mod:`upad.reduce.photcal_derive`)."""
    try:
        text = resources.files("upad.reduce").joinpath("data", f"gaia_transforms_{system}.json").read_text()
    except FileNotFoundError:
        raise ReductionError("no_reference", f"no packaged Gaia transformation for the {system} system",
                             stage="photometry") from None
    return json.loads(text)


def gaia_to_survey(g: np.ndarray, bp_rp: np.ndarray, filter_name: str, *, system: str = "jplus"
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """Survey-filter magnitudes predicted from Gaia ``G`` and ``BP-RP``.

    Returns
    -------
    mag : ndarray
        Predicted AB magnitude (NaN outside the validity range or where G/BP-RP are not finite).
    valid : ndarray of bool
    rms : float
        The transformation's rms (mag).
    """
    tr = load_transformations(system)["filters"].get(filter_name)
    g = np.asarray(g, float)
    c = np.asarray(bp_rp, float)
    if tr is None:
        return np.full(g.shape, np.nan), np.zeros(g.shape, bool), float("nan")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(g) & np.isfinite(c) & (c >= tr["colour_min"]) & (c <= tr["colour_max"])
    mag = np.where(valid, g + np.polynomial.polynomial.polyval(np.nan_to_num(c), tr["coef"]), np.nan)
    return mag, valid, float(tr["rms"])


def reference_column(refcat: Any, *names: str) -> np.ndarray | None:
    """The first of ``names`` that the reference catalog has (case-insensitive), as floats; None if none."""
    cols = refcat.colnames if hasattr(refcat, "colnames") else list(refcat.keys())
    lower = {c.lower(): c for c in cols}
    for n in names:
        if n.lower() in lower:
            return np.asarray(refcat[lower[n.lower()]], dtype=float)
    return None


def reference_columns(refcat: Any, filter_name: str) -> dict[str, np.ndarray | None]:
    """The photometric columns of a reference catalog (standard or Gaia archive names), None where absent."""
    return {"mag": reference_column(refcat, f"mag_{filter_name}"), "magerr": reference_column(refcat, f"magerr_{filter_name}"),
            "g": reference_column(refcat, "g", "phot_g_mean_mag"), "bp": reference_column(refcat, "bp", "phot_bp_mean_mag"),
            "rp": reference_column(refcat, "rp", "phot_rp_mean_mag")}


def nominal_zero_point(nominal_zp_e: float, *, exptime: float, filter_name: str, note: str) -> ZeroPoint:
    """The instrument file's zero point for a frame without a usable reference."""
    e = np.zeros(0, int)
    return ZeroPoint(zp_e=float(nominal_zp_e), magzp=float(nominal_zp_e) + 2.5 * math.log10(exptime),
                     error=float("nan"), rms=float("nan"), n_stars=0, filter=filter_name, det_index=e, ref_index=e,
                     source="nominal", note=note)


def _fit(z: np.ndarray, sig: np.ndarray, design: np.ndarray, clip: float, min_keep: int,
         prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares with sigma clipping; ``prior``: per-coefficient Gaussian prior widths around 0
    (inf: none), added as pseudo-observations that are never clipped."""
    keep = np.ones(len(z), bool)
    coef = np.zeros(design.shape[1])
    pa = np.zeros((0, design.shape[1]))
    if prior is not None:
        fin = np.isfinite(prior)
        pa = np.diag(np.where(fin, 1.0 / np.where(fin, prior, 1.0), 0.0))[fin]

    def solve(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = 1.0 / sig[k]
        a = design[k] * w[:, None]
        coef = np.linalg.lstsq(a, z[k] * w, rcond=None)[0]
        if len(pa):  # the prior against the data's actual scatter (errors scaled by the reduced chi2 when > 1)
            nk = int(k.sum())
            chi2 = float(np.sum(((z[k] - design[k] @ coef) * w) ** 2) / max(nk - design.shape[1], 1))
            a = np.vstack([a / math.sqrt(max(chi2, 1.0)), pa])
            b = np.concatenate([z[k] * w / math.sqrt(max(chi2, 1.0)), np.zeros(len(pa))])
            coef = np.linalg.lstsq(a, b, rcond=None)[0]
        return coef, a

    for _ in range(10):
        coef, _a = solve(keep)
        r = z - design @ coef
        s = 1.4826 * np.median(np.abs(r[keep]))
        new = np.abs(r) <= clip * np.maximum(s, sig)
        if new.sum() < min_keep or np.array_equal(new, keep):
            break
        keep = new
    coef, a = solve(keep)
    cov = np.linalg.pinv(a.T @ a)
    return coef, cov, keep


def calibrate_zero_point(flux: np.ndarray, fluxerr: np.ndarray, x: np.ndarray, y: np.ndarray, refcat: Any, *,
                         det_index: np.ndarray, ref_index: np.ndarray, exptime: float, filter_name: str,
                         shape: tuple[int, int], good: np.ndarray | None = None, nominal_zp_e: float | None = None,
                         config: PhotometryConfig = PhotometryConfig()) -> ZeroPoint:
    """Zero point, colour term and residual zero-point map of a frame (see the module documentation).

    Parameters
    ----------
    flux, fluxerr : ndarray
        Total fluxes of the detections (``FLUX_APCOR``, e- in the exposure) and errors.
    x, y : ndarray
        0-based positions of the detections (pixels).
    refcat : astropy.table.Table or mapping
        Reference catalog (:func:`upad.io.refcat.read_reference_catalog` columns or Gaia archive names).
    det_index, ref_index : ndarray
        Matched pairs (from the astrometry).
    exptime : float
        Exposure time (s).
    filter_name : str
    shape : (ny, nx)
        Image shape (for the map coordinates).
    good : ndarray of bool, optional
        Detections usable for photometry.
    nominal_zp_e : float, optional
        The instrument file's zero point (1 e-/s), used when no reference is usable and
        ``config.zp_nominal_fallback``.
    config : PhotometryConfig

    Raises
    ------
    ReductionError
        ``bad_input`` (exposure time), ``no_reference`` / ``photometry_failed`` when no reference is usable and
        there is no nominal fallback.
    """
    from upad.reduce.psf import _poly_design, _poly_terms

    if exptime <= 0:
        raise ReductionError("bad_input", f"exposure time {exptime} s", stage="photometry")
    di, rj = np.asarray(det_index, int), np.asarray(ref_index, int)
    cols = reference_columns(refcat, filter_name)
    f, fe = np.asarray(flux, float)[di], np.asarray(fluxerr, float)[di]
    with np.errstate(invalid="ignore", divide="ignore"):
        det_ok = np.isfinite(f) & (f > 0) & (f / np.maximum(fe, 1e-30) > config.zp_min_snr)
    if good is not None:
        det_ok &= np.asarray(good, bool)[di]
    colour = None
    if cols["bp"] is not None and cols["rp"] is not None:
        colour = (cols["bp"] - cols["rp"])[rj]

    def unusable(reason: str, code: str = "no_reference") -> ZeroPoint:
        if config.zp_nominal_fallback and nominal_zp_e is not None and math.isfinite(nominal_zp_e):
            return nominal_zero_point(nominal_zp_e, exptime=exptime, filter_name=filter_name, note=f"{code}: {reason}")
        raise ReductionError(code, reason, stage="photometry")

    # ---- candidate reference magnitudes
    n_survey = 0
    if cols["mag"] is not None:
        m_s = cols["mag"][rj]
        me_s = np.full(len(rj), 0.02) if cols["magerr"] is None else np.nan_to_num(cols["magerr"][rj], nan=0.02)
        ok_s = det_ok & np.isfinite(m_s) & (me_s <= config.zp_max_mag_error)
        n_survey = int(ok_s.sum())
    n_gaia, why_gaia = 0, ""
    if cols["g"] is None or colour is None:
        why_gaia = "the reference catalog has no Gaia G, BP and RP"
    else:
        m_g, valid, rms_g = gaia_to_survey(cols["g"][rj], colour, filter_name, system=config.zp_transform_system)
        if not math.isfinite(rms_g):
            why_gaia = f"no Gaia transformation to {filter_name} in the {config.zp_transform_system} system"
        else:
            ok_g = det_ok & valid
            n_gaia = int(ok_g.sum())
            if n_gaia < config.zp_min_stars:
                tr = load_transformations(config.zp_transform_system)["filters"][filter_name]
                n_col = int((det_ok & np.isfinite(cols["g"][rj]) & np.isfinite(colour)).sum())
                why_gaia = (f"no colour overlap: {n_gaia} matched stars with BP-RP within the transformation's validity range "
                            f"[{tr['colour_min']:.2f}, {tr['colour_max']:.2f}] ({n_col} matched with G/BP/RP)")
    mode = config.zp_reference
    if mode == "auto":
        mode = "survey" if n_survey >= config.zp_min_stars else "gaia"
    if mode == "survey":
        if n_survey < config.zp_min_stars:
            what = "no" if cols["mag"] is None else f"{n_survey} matched stars with"
            return unusable(f"{what} mag_{filter_name} reference magnitudes (at least {config.zp_min_stars} "
                            "needed)", "no_reference" if cols["mag"] is None else "photometry_failed")
        m, me, ok, sys_err = m_s, me_s, ok_s, 0.0
    else:
        if n_gaia < config.zp_min_stars:
            extra = "" if cols["mag"] is None else f"; {n_survey} with mag_{filter_name}"
            return unusable((why_gaia or "too few reference stars") + extra,
                            "no_reference")
        gerr = 0.003  # G and BP-RP errors are mmag for the stars used; the transformation's rms dominates
        m, me, ok, sys_err = m_g, np.full(len(rj), math.hypot(rms_g, gerr)), ok_g, rms_g
    # ---- design: zero point, colour term, residual map
    z = m[ok] + 2.5 * np.log10(f[ok] / exptime)
    sig = np.hypot(1.0857 * fe[ok] / f[ok], me[ok])
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    u = (np.asarray(x, float)[di][ok] - cx) / cx
    v = (np.asarray(y, float)[di][ok] - cy) / cy
    c = None if colour is None else colour[ok]
    fit_colour = (config.zp_colour_term == "fit" and c is not None and np.isfinite(c).all()
                  and len(z) >= config.zp_colour_min_stars and float(np.std(c)) >= config.zp_colour_min_spread)
    order = int(config.zp_map_order)
    while order > 0 and len(z) < 3 * (len(_poly_terms(order)) + int(fit_colour)):
        order -= 1
    cols_d = [np.ones(len(z))]
    if fit_colour:
        cols_d.append(c - config.zp_colour_ref)
    if order > 0:
        cols_d.extend(_poly_design(u, v, order)[:, 1:].T)
    design = np.column_stack(cols_d)
    prior = np.full(design.shape[1], np.inf)
    if fit_colour and config.zp_colour_prior > 0:
        prior[1] = config.zp_colour_prior
    coef, cov, keep = _fit(z, sig, design, config.zp_clip_sigma, max(config.zp_min_stars, design.shape[1] + 1),
                           prior)
    resid = z - design @ coef
    nk = int(keep.sum())
    chi2 = float(np.sum((resid[keep] / sig[keep]) ** 2) / max(nk - design.shape[1], 1))
    scale = math.sqrt(max(chi2, 1.0)) if np.isinf(prior).all() else 1.0  # the prior fit's cov is already scaled
    zp = float(coef[0])
    # the transformation's spread at fixed colour averages down only as far as the stars differ: a floor of a fifth
    err = math.hypot(math.sqrt(cov[0, 0]) * scale, 0.2 * sys_err)
    k = -float(coef[1]) if fit_colour else 0.0
    k_err = float(math.sqrt(cov[1, 1]) * scale) if fit_colour else float("nan")
    map_coef = np.zeros(len(_poly_terms(order)))
    map_rms = 0.0
    if order > 0:
        map_coef[1:] = coef[1 + int(fit_colour):]
        gy, gx = np.mgrid[-1:1:9j, -1:1:9j]
        mv = _poly_design(gx.ravel(), gy.ravel(), order) @ map_coef
        map_rms = float(np.std(mv))
    rms = float(np.std(resid[keep])) if nk > 1 else float("nan")
    note = f"{mode} reference, {nk} stars" + (f", colour term {k:+.4f}" if fit_colour else ", no colour term")
    return ZeroPoint(zp_e=zp, magzp=zp + 2.5 * math.log10(exptime), error=err, rms=rms, n_stars=nk,
                     filter=filter_name, det_index=di[ok][keep], ref_index=rj[ok][keep], source=mode,
                     colour_term=k, colour_term_error=k_err, colour_term_fitted=bool(fit_colour),
                     colour_ref=float(config.zp_colour_ref), map_order=order, map_coef=map_coef, map_rms=map_rms,
                     systematic=float(sys_err), note=note)


def photcal_meta(zp: ZeroPoint) -> dict[str, Any]:
    """The calibration as a JSON-able dict (the product's meta; the tile calibration reads ``zp_map``)."""
    from upad.reduce.psf import _poly_terms

    def num(v: float) -> float | None:
        return round(float(v), 6) if math.isfinite(v) else None

    return {"source": zp.source, "zp_e": num(zp.zp_e), "error": num(zp.error), "rms": num(zp.rms),
            "n_stars": zp.n_stars, "colour": "BP-RP", "colour_ref": num(zp.colour_ref),
            "colour_term": num(zp.colour_term), "colour_term_error": num(zp.colour_term_error),
            "colour_term_fitted": zp.colour_term_fitted, "systematic": num(zp.systematic),
            "zp_map": {"order": zp.map_order, "terms": [list(t) for t in _poly_terms(zp.map_order)],
                       "coef": [round(float(c), 6) for c in zp.map_coef], "rms": num(zp.map_rms),
                       "coordinates": "u = (x - cx) / cx, v = (y - cy) / cy, 0-based pixels, c = (n - 1) / 2"},
            "note": zp.note}


def photcal_cards(zp: ZeroPoint) -> list[tuple[str, Any, str]]:
    """FITS cards of the calibration (source, colour term, residual map)."""
    from upad.reduce.psf import _poly_terms

    cards: list[tuple[str, Any, str]] = [("ZPSOURCE", zp.source, "zero point from: survey, gaia or nominal")]
    if zp.source != "nominal":
        cards.append(("ZPCOLREF", round(zp.colour_ref, 4), "[mag] BP-RP at which ZP_E holds"))
        cards.append(("ZPCOLTRM", round(zp.colour_term, 5), "natural - reference mag per mag of BP-RP"))
        if math.isfinite(zp.colour_term_error):
            cards.append(("ZPCOLERR", round(zp.colour_term_error, 5), "colour term uncertainty"))
        cards.append(("ZPCOLFIT", bool(zp.colour_term_fitted), "colour term fitted (else fixed)"))
        if zp.systematic:
            cards.append(("ZPSYS", round(zp.systematic, 5), "[mag] rms of the Gaia transformation"))
        cards.append(("ZPMAPORD", zp.map_order, "order of the residual zero-point map"))
        for (p, q), c in list(zip(_poly_terms(zp.map_order), zp.map_coef))[1:]:
            cards.append((f"ZPMAP{p}{q}", round(float(c), 6), f"[mag] ZP map coefficient of u^{p} v^{q}"))
        if math.isfinite(zp.map_rms):
            cards.append(("ZPMAPRMS", round(zp.map_rms, 5), "[mag] rms of the ZP map over the field"))
    return cards


def reference_magnitudes(refcat: Any, zp: ZeroPoint, *, system: str = "jplus") -> np.ndarray:
    """The reference magnitudes of the stars a zero point used (``zp.ref_index``), by its ``source``."""
    rj = np.asarray(zp.ref_index, int)
    cols = reference_columns(refcat, zp.filter)
    if zp.source == "survey" and cols["mag"] is not None:
        return cols["mag"][rj]
    if zp.source == "gaia" and cols["g"] is not None and cols["bp"] is not None and cols["rp"] is not None:
        return gaia_to_survey(cols["g"][rj], (cols["bp"] - cols["rp"])[rj], zp.filter, system=system)[0]
    return np.full(len(rj), np.nan)
