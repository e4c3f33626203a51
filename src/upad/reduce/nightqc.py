"""The night's quality summary: per-frame QC figures of the reduced frames → one table and the night's statistics.

A pure algorithm (no I/O, no database): :func:`summarise_night` takes one row per reduced frame (its QC status and
figures, as the ``reduce`` step records them) and returns the table and, per filter, the median seeing, the zero
point and its scatter, the median sky brightness and the fraction of frames that passed QC. The ``night_summary``
step (:mod:`upad.reduce.night_step`) is its adapter; the reduction portal's night view reads its product.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "NightSummary", "summarise_night"]

#: The per-frame columns: name, unit, dtype (``NaN``/``-1`` when the frame has no value).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("frame", "", "U64"), ("filter", "", "U16"), ("qc_status", "", "U8"), ("fwhm_arcsec", "arcsec", "f4"),
    ("ellipticity", "", "f4"), ("sky_mag_arcsec2", "mag / arcsec2", "f4"), ("zp_e", "mag", "f4"),
    ("zp_loss_mag", "mag", "f4"), ("astrometric_rms_arcsec", "arcsec", "f4"), ("n_matched", "", "i4"),
    ("masked_fraction", "", "f4"), ("reasons", "", "U200"),
)


@dataclass
class NightSummary:
    """The summary of one night: the table's columns (name → array) and the per-filter statistics."""

    night: str
    columns: dict[str, np.ndarray]
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.columns["frame"])


def _number(value: Any, dtype: str) -> float | int:
    if value is None:
        return -1 if dtype.startswith("i") else np.nan
    try:
        return int(value) if dtype.startswith("i") else float(value)
    except (TypeError, ValueError):
        return -1 if dtype.startswith("i") else np.nan


def summarise_night(night: str, rows: Sequence[Mapping[str, Any]]) -> NightSummary:
    """Summarise a night's reduced frames.

    Parameters
    ----------
    night : str
        The night (``YYYY-MM-DD``).
    rows : sequence of mappings
        One per reduced frame: ``frame``, ``filter``, ``qc_status`` (``ok``/``warn``/``fail``), ``reasons`` (list of
        str) and the figures of :data:`COLUMNS` (missing ones are ``NaN``).

    Returns
    -------
    NightSummary
        Rows sorted by filter then frame; per filter: ``n_frames``, ``ok_fraction``, ``fwhm_median_arcsec``,
        ``zp_median`` and ``zp_scatter`` (robust, 1.4826 MAD, over frames that passed QC), ``sky_median``.
    """
    ordered = sorted(rows, key=lambda r: (str(r.get("filter") or ""), str(r.get("frame") or "")))
    cols: dict[str, np.ndarray] = {}
    for name, _, dtype in COLUMNS:
        if dtype.startswith("U"):
            values = ["; ".join(r.get(name) or []) if name == "reasons" else str(r.get(name) or "")
                      for r in ordered]
            cols[name] = np.array(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)
        else:
            cols[name] = np.array([_number(r.get(name), dtype) for r in ordered], dtype=dtype)
    filters: dict[str, dict[str, Any]] = {}
    for filt in sorted(set(cols["filter"].tolist())):
        sel = cols["filter"] == filt
        good = sel & (cols["qc_status"] != "fail")
        zp = cols["zp_e"][good & np.isfinite(cols["zp_e"])].astype(np.float64)
        fwhm = cols["fwhm_arcsec"][good & np.isfinite(cols["fwhm_arcsec"])].astype(np.float64)
        sky = cols["sky_mag_arcsec2"][good & np.isfinite(cols["sky_mag_arcsec2"])].astype(np.float64)
        filters[filt] = {
            "n_frames": int(sel.sum()),
            "ok_fraction": float((cols["qc_status"][sel] == "ok").mean()) if sel.any() else 0.0,
            "fwhm_median_arcsec": float(np.median(fwhm)) if fwhm.size else None,
            "zp_median": float(np.median(zp)) if zp.size else None,
            "zp_scatter": float(1.4826 * np.median(np.abs(zp - np.median(zp)))) if zp.size > 1 else None,
            "sky_median": float(np.median(sky)) if sky.size else None,
        }
    return NightSummary(night, cols, filters)
