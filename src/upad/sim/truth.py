"""Writing and reading the truth that accompanies a simulation (``DIR/truth``, ``DIR/reference``).

Layout (all paths in the manifest are relative to ``DIR``)::

    truth/manifest.json                 every frame with its raw file, truth file and parameters
    truth/sky_catalog.fits              the truth sky (HDU 'SKY')
    truth/camera/flat_sky.fits          PRNU x vignetting x dead columns, mean 1 (night sky and sky flats)
    truth/camera/illum_dome.fits        dome-only illumination term (dome flat = flat_sky x illum_dome)
    truth/camera/dark_rate.fits         dark current incl. hot pixels and hot columns (e-/s/pixel)
    truth/camera/bpm.fits               bad-pixel mask (uint8 bits: 1 hot pixel, 2 dead column, 4 hot column)
    truth/camera/fringe_<FILTER>.fits   fringe pattern as a fraction of the sky (science: sky*(1+fringe))
    truth/frames/<night>/<raw stem>.fits  per exposure: true WCS + tables OBJECTS, COSMICS, SATELLITE, SATURATION
                                          and the bias per readout row (image BIAS)
    reference/refcat.fits               Gaia-like reference star catalog

Pixel coordinates in every truth table are **0-based** positions in the assembled (trimmed) image:
pixel ``img[j, i]`` covers ``x`` in [i-0.5, i+0.5) and ``y`` in [j-0.5, j+0.5) (astropy
``world_to_pixel`` convention). Maps have the shape of the assembled image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from upad.instruments import FilterSystem
from upad.sim.detector import Camera
from upad.sim.night import Frame
from upad.sim.sky import STAR, SkyCatalog
from upad.sim.writer import image_hdu, write_hdulist

MANIFEST = "truth/manifest.json"
#: absolute quantisation step of the compressed (smooth) illumination map; other float maps are lossless
QUANT_STEP = 1e-6


def _table_hdu(cols: dict[str, np.ndarray], name: str, header: dict | None = None) -> fits.BinTableHDU:
    hdu = fits.BinTableHDU(Table(cols), name=name)
    for k, v in (header or {}).items():
        hdu.header[k] = v
    return hdu


def write_camera_truth(out: Path, camera: Camera, filters: list, *, compress: bool) -> dict[str, str]:
    """Write the fixed camera patterns; returns name -> relative path."""
    paths: dict[str, str] = {}

    def put(name: str, data: np.ndarray, unit: str, doc: str, step: float | None = None) -> None:
        hdr = fits.Header()
        hdr["BUNIT"] = unit
        hdr["COMMENT"] = doc
        if step and compress:
            hdr["COMMENT"] = f"values quantised to steps of {step:g} (RICE_1, dithered)"
        rel = f"truth/camera/{name}.fits"
        write_hdulist(out / rel, fits.HDUList([fits.PrimaryHDU(), image_hdu(data, compress=compress, header=hdr,
                                                                             name=name.upper()[:8],
                                                                             quantize_step=step)]))
        paths[name] = rel

    put("flat_sky", camera.flat_sky, "", "PRNU x vignetting x dead-column response, mean 1 (night sky, sky flats)")
    put("illum_dome", camera.illum_dome, "", "dome-only illumination term: dome flat = flat_sky x illum_dome",
        QUANT_STEP)
    put("dark_rate", camera.dark_rate, "electron/s", "dark current incl. hot pixels and hot columns")
    put("bpm", camera.bpm, "", "bits: 1 hot pixel, 2 dead column, 4 hot column, 8 dead pixel")
    if camera.bias_structure is not None:
        put("bias_structure", camera.bias_structure, "adu", "fixed bias structure added to the data section (drawn "
            "signature): raw data = bias rows + this + signal")
    for f in filters:
        fr = camera.fringe(f)
        if fr is not None:
            put(f"fringe_{f.name}", fr, "", "fringe pattern as fraction of sky: science sky = sky*(1+fringe)")
    if camera.cfg.scattered_light_fraction:
        from upad.sim.night import _scattered_cached
        put("scattered_light", _scattered_cached(camera.seed, camera.shape), "",
            "scattered-light glow, peak 1: added light = scattered_light_fraction * sky level * this (before the "
            "pixel response)")
    return paths


def write_sky_catalog(out: Path, sky: SkyCatalog) -> str:
    cols: dict[str, np.ndarray] = {
        "id": sky.id, "ra": sky.ra, "dec": sky.dec,
        "type": np.where(sky.kind == STAR, "star", "galaxy"),
    }
    for name, m in sky.mags.items():
        cols[f"mag_{name}"] = m.astype(np.float32)
    cols.update({"sersic_n": sky.sersic_n.astype(np.float32), "hlr_arcsec": sky.hlr_arcsec.astype(np.float32),
                 "q": sky.q.astype(np.float32), "ellipticity": (1 - sky.q).astype(np.float32),
                 "pa_deg": sky.pa_deg.astype(np.float32), "teff": sky.teff.astype(np.float32),
                 "phot_g_mean_mag": sky.gmag.astype(np.float32)})
    if sky.bp is not None:
        cols.update({"phot_bp_mean_mag": sky.bp.astype(np.float32), "phot_rp_mean_mag": sky.rp.astype(np.float32),
                     "pmra": sky.pmra.astype(np.float32), "pmdec": sky.pmdec.astype(np.float32),
                     "parallax": sky.parallax.astype(np.float32)})
    for name, m in (sky.mags_nominal or {}).items():
        cols[f"magnom_{name}"] = m.astype(np.float32)
    rel = "truth/sky_catalog.fits"
    hdr = {"COMMENT": "mag_*: AB above the atmosphere (the camera's passbands); magnom_*: through the survey's nominal "
                      "passbands; ra/dec at epoch 2016.0 (pmra/pmdec mas/yr); hlr: circularised half-light radius (arcsec); "
                      "q=b/a; ellipticity=1-q; pa_deg: major axis, east of north"}
    write_hdulist(out / rel, fits.HDUList([fits.PrimaryHDU(), _table_hdu(cols, "SKY", hdr)]))
    return rel


def make_reference_catalog(rng: np.random.Generator, sky: SkyCatalog, filters: FilterSystem, *, mag_limit: float,
                           synphot_limit: float, mag_error: float, box: tuple[float, float, float, float] | None = None,
                           survey_mags: bool = True, synphot_error_faint: float = 0.02) -> dict[str, np.ndarray]:
    """Gaia-DR3-like catalog of the truth stars brighter than ``mag_limit`` (G), with realistic errors.

    Astrometry at epoch 2016.0: positions perturbed by their errors (``ra_error``/``dec_error`` in mas, 0.02-1 mas
    growing with G roughly as Gaia DR3), parallaxes and proper motions (mas, mas/yr) with their errors;
    ``phot_g/bp/rp_mean_mag`` (Vega) from each star's spectrum through the Gaia DR3 passbands, with photometric
    errors (mmag at the bright end, BP/RP worse at the faint end). With ``survey_mags``, survey-filter magnitudes
    ``mag_<filter>`` / ``magerr_<filter>`` through the survey's *nominal* passbands, as Gaia XP synthetic photometry,
    for stars brighter than ``synphot_limit`` (NaN otherwise): the error is ``mag_error`` plus
    ``synphot_error_faint`` scaled by the flux (at ``G = synphot_limit``), doubled below 4000 A.
    """
    sel = (sky.kind == STAR) & (sky.gmag <= mag_limit)
    if box is not None:
        ra0, ra1, d0, d1 = box
        sel &= (sky.dec >= d0) & (sky.dec <= d1)
    idx = np.flatnonzero(sel)
    g = sky.gmag[idx]
    n = len(idx)
    err = 0.02 + 1.0 * 10 ** (0.4 * (g - 21.0)) * 2.5  # mas: 0.02 bright, ~0.5 at G = 20.5
    dra = rng.normal(0, 1, n) * err
    ddec = rng.normal(0, 1, n) * err
    cosd = np.cos(np.radians(sky.dec[idx]))
    pm_err = 1.2 * err  # mas/yr (DR3: 0.02-0.03 bright, ~0.5 at G = 20)
    plx_err = 1.3 * err
    pmra = sky.pmra[idx] if sky.pmra is not None else np.zeros(n)
    pmdec = sky.pmdec[idx] if sky.pmdec is not None else np.zeros(n)
    plx = sky.parallax[idx] if sky.parallax is not None else np.zeros(n)
    g_err = 0.0003 + 0.002 * 10 ** (0.4 * (g - 19.0))
    bprp_err = 0.001 + 0.01 * 10 ** (0.4 * (g - 18.0))
    cols: dict[str, np.ndarray] = {
        "source_id": (4_000_000_000_000 + sky.id[idx]).astype(np.int64),
        "ra": sky.ra[idx] + dra / 3.6e6 / cosd, "dec": sky.dec[idx] + ddec / 3.6e6,
        "ra_error": err.astype(np.float32), "dec_error": err.astype(np.float32),
        "pmra": (pmra + rng.normal(0, 1, n) * pm_err).astype(np.float32),
        "pmdec": (pmdec + rng.normal(0, 1, n) * pm_err).astype(np.float32),
        "pmra_error": pm_err.astype(np.float32), "pmdec_error": pm_err.astype(np.float32),
        "parallax": (plx + rng.normal(0, 1, n) * plx_err).astype(np.float32),
        "parallax_error": plx_err.astype(np.float32), "ref_epoch": np.full(n, 2016.0),
        "phot_g_mean_mag": (g + rng.normal(0, 1, n) * g_err).astype(np.float32),
    }
    if sky.bp is not None:
        cols["phot_bp_mean_mag"] = (sky.bp[idx] + rng.normal(0, 1, n) * bprp_err).astype(np.float32)
        cols["phot_rp_mean_mag"] = (sky.rp[idx] + rng.normal(0, 1, n) * bprp_err).astype(np.float32)
        cols["bp_rp"] = cols["phot_bp_mean_mag"] - cols["phot_rp_mean_mag"]
    if survey_mags:
        has = g <= synphot_limit
        nominal = sky.mags_nominal or sky.mags
        for f in filters.filters:
            e = np.hypot(mag_error, synphot_error_faint * (2.0 if f.cwl < 4000 else 1.0)
                         * 10 ** (0.4 * (g - synphot_limit)))
            m = nominal[f.name][idx] + rng.normal(0, 1, n) * e
            cols[f"mag_{f.name}"] = np.where(has, m, np.nan).astype(np.float32)
            cols[f"magerr_{f.name}"] = np.where(has, e, np.nan).astype(np.float32)
    cols["truth_id"] = sky.id[idx]
    return cols


def write_reference_catalog(out: Path, cols: dict[str, np.ndarray]) -> str:
    rel = "reference/refcat.fits"
    hdr = {"COMMENT": "Gaia-like reference catalog simulated by upad; ra/dec errors in mas; epoch 2016.0; "
                      "mag_<filter>: survey AB magnitudes (synthetic photometry) for bright stars, NaN otherwise; "
                      "phot_*_mean_mag: Gaia DR3 Vega magnitudes"}
    write_hdulist(out / rel, fits.HDUList([fits.PrimaryHDU(), _table_hdu(cols, "REFCAT", hdr)]))
    return rel


def write_frame_truth(out: Path, rel: str, frame: Frame, *, raw_rel: str) -> None:
    """Per-exposure truth file (see module docstring)."""
    rec = frame.record
    prim = fits.PrimaryHDU()
    h = prim.header
    if frame.wcs_header is not None:
        for card in frame.wcs_header.cards:
            if card.keyword not in ("WCSAXES",) and card.keyword:
                h[card.keyword] = card.value
    h["RAWFILE"] = raw_rel
    h["KIND"] = rec["kind"]
    h["FILTER"] = rec["filter"]
    h["EXPTIME"] = rec["exptime"]
    for key, name in (("zp_e", "ZP_E"), ("zp_adu_nominal_gain", "ZP_ADU"), ("sky_e", "SKY_E"),
                      ("fwhm_arcsec", "FWHM"), ("transparency", "TRANSP"), ("level_e", "LEVEL_E")):
        if key in rec:
            h[name] = rec[key]
    h["COMMENT"] = "True WCS (TAN-SIP) of the assembled image; table pixel coordinates are 0-based."
    hdus: list = [prim]
    if frame.objects is not None:
        hdus.append(_table_hdu(frame.objects, "OBJECTS"))
    cr = frame.cosmics
    hdus.append(_table_hdu({"x": cr.x, "y": cr.y, "e": cr.e, "event": cr.id}, "COSMICS"))
    if frame.satellite is not None:
        sp = rec.get("satellite") or {}
        hdus.append(_table_hdu({"x": frame.satellite.x, "y": frame.satellite.y, "e": frame.satellite.e}, "SATELLITE",
                               {"X0": sp.get("x0"), "Y0": sp.get("y0"), "ANGLE": sp.get("angle_deg"),
                                "LINEFLUX": sp.get("line_flux_e_per_px"), "SIGMA": sp.get("sigma_px")}))
    s = frame.saturation or {}
    if s:
        cx, cy, ce = (s.get(k, np.empty(0, np.float32)) for k in ("cap_x", "cap_y", "cap_e"))
        kind = np.concatenate([np.full(len(s["x"]), 1, np.int16), np.full(len(s["bled_x"]), 2, np.int16),
                               np.full(len(cx), 3, np.int16)])
        hdus.append(_table_hdu({"x": np.concatenate([s["x"], s["bled_x"], cx]).astype(np.int32),
                                "y": np.concatenate([s["y"], s["bled_y"], cy]).astype(np.int32), "kind": kind,
                                "e": np.concatenate([np.zeros(len(s["x"]), np.float32), s["bled_e"],
                                                     np.asarray(ce, np.float32)])},
                               "SATURATION", {"COMMENT": "kind 1: raw at the ADC maximum; 2: received bled charge (e); "
                                                         "3: charge at the amplifier's capacity, full well or ADC "
                                                         "(e, before readout)"}))
    if frame.bias is not None:
        b = frame.bias
        rows = np.arange(b.n_read_rows)
        arr = np.stack([b.rows(k, rows) for k in range(len(b.level))]).astype(np.float32)
        bh = fits.ImageHDU(arr, name="BIAS")
        bh.header["COMMENT"] = "bias (ADU) by amplifier (row) and readout row index (column)"
        hdus.append(bh)
    write_hdulist(out / rel, fits.HDUList(hdus))


# ----------------------------------------------------------------------------- reading
def load_manifest(out: Path | str) -> dict:
    """The manifest of a simulation written under ``out``."""
    return json.loads((Path(out) / MANIFEST).read_text())


def read_table(path: Path | str, hdu: str) -> Table:
    """One truth table (e.g. ``'OBJECTS'``) as an astropy Table."""
    return Table.read(path, hdu=hdu)


def read_map(path: Path | str) -> np.ndarray:
    """A truth map (camera pattern) as a native-endian array."""
    with fits.open(path) as hd:
        data = hd[1].data
        return np.asarray(data, dtype=data.dtype.newbyteorder("="))
