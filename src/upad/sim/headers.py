"""Raw-frame headers exactly as ``docs/raw-format.md`` specifies (OAJ and T80-South conventions)."""
from __future__ import annotations

from astropy.io import fits

from upad.instruments import FilterSystem, Instrument, section_to_fits
from upad.sim.schedule import SITE_ELEV, SITE_LAT, SITE_LON, ExposureSpec
from upad.sim.wcs import nominal_header

CONVENTIONS = ("oaj", "t80s")

#: upad kind -> (DET EXP TYPE, DPR CATG, DPR TYPE, IMAGETYP at T80S, OBJECT)
_KINDS = {
    "bias": ("BIAS", "CALIB", "BIAS", "ZERO", "bias"),
    "dark": ("DARK", "CALIB", "DARK", "DARK", "dark"),
    "flat-dome": ("FLAT", "CALIB", "FLAT,DOME", "FLAT", "domeflat"),
    "flat-sky": ("FLAT", "CALIB", "FLAT,SKY", "SKYFLAT", "skyflat"),
    "science": ("LIGHT", "SCIENCE", "OBJECT", "OBJECT", None),
}


def sexagesimal(value_deg: float, *, hours: bool) -> str:
    """``'18:15:55.852'`` (RA, hours) or ``'+41:33:04.97'`` (Dec)."""
    if hours:
        total = round((value_deg % 360.0) / 15.0 * 3600.0, 3) % 86400.0
        h, rem = divmod(total, 3600.0)
        m, s = divmod(rem, 60.0)
        return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"
    sign = "-" if value_deg < 0 else "+"
    total = round(abs(value_deg) * 3600.0, 2)
    d, rem = divmod(total, 3600.0)
    m, s = divmod(rem, 60.0)
    return f"{sign}{int(d):02d}:{int(m):02d}:{s:05.2f}"


def build_header(spec: ExposureSpec, *, instrument: Instrument, filters: FilterSystem, layout: str,
                 convention: str = "oaj", weather: dict | None = None, det_temp: float = -111.0) -> fits.Header:
    """Primary/image header of a raw frame (without the data-structure keys, which astropy writes)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown header convention {convention!r}; expected one of {CONVENTIONS}")
    p = "HIERARCH " + ("T80S" if convention == "t80s" else instrument.header_prefix)
    exp_type, catg, dpr_type, imagetyp, obj = _KINDS[spec.kind]
    filt = filters[spec.filter]
    h = fits.Header()
    h["BUNIT"] = ("adu", "raw ADU")
    h["ORIGIN"] = instrument.origin
    h["TELESCOP"] = instrument.telescope_header
    h["INSTRUME"] = instrument.name
    h["OBJECT"] = obj if obj else f"TILE-{spec.tile_id:05d}"
    h["OBSERVER"] = "upad-sim"
    h["PRJ_ID"] = "JPLUS"
    h["OBS_ID"] = spec.obs_id
    h["EXP_ID"] = spec.exp_id
    h["DATE-OBS"] = (spec.date_obs, "UTC start of exposure")
    h["DATE-END"] = (spec.date_end, "UTC end of exposure")
    h["TIMESYS"] = "UTC"
    h["EXPTIME"] = (round(float(spec.exptime), 3), "s")
    if convention == "t80s":
        h["IMAGETYP"] = imagetyp
        h["RA"] = (sexagesimal(spec.ra, hours=True), "pointing RA (J2000)")
        h["DEC"] = (sexagesimal(spec.dec, hours=False), "pointing Dec (J2000)")
        h["FILTER"] = filt.alias[0] if filt.alias else filt.name
    else:
        h["RA"] = (round(float(spec.ra), 6), "[deg] pointing RA (J2000)")
        h["DEC"] = (round(float(spec.dec), 6), "[deg] pointing Dec (J2000)")
        h["FILTER"] = filt.name
    h["EQUINOX"] = 2000.0
    h["RADECSYS"] = "FK5"
    h["AIRMASS"] = (round(float(spec.airmass), 4), "at start")
    h[f"{p} DET EXP TYPE"] = exp_type
    h[f"{p} DPR CATG"] = catg
    h[f"{p} DPR TYPE"] = dpr_type
    h[f"{p} TEL AIRM START"] = round(float(spec.airmass), 4)
    h[f"{p} TEL AIRM END"] = round(float(spec.airmass_end), 4)
    h[f"{p} TEL EL"] = round(float(spec.alt), 4)
    h[f"{p} TEL AZ"] = round(float(spec.az), 4)
    h[f"{p} TEL PARANG"] = round(float(spec.parang), 4)
    h[f"{p} TEL GEOLAT"] = SITE_LAT
    h[f"{p} TEL GEOLON"] = SITE_LON
    h[f"{p} TEL GEOELEV"] = SITE_ELEV
    h[f"{p} TEL FOCU SCALE"] = instrument.plate_scale
    w = weather or {}
    h[f"{p} GEN AMBI WIND"] = round(float(w.get("wind", 3.0)), 2)
    h[f"{p} GEN AMBI RHUM"] = round(float(w.get("rhum", 40.0)), 2)
    h[f"{p} GEN AMBI PRES"] = round(float(w.get("pres", 800.0)), 2)
    h[f"{p} GEN AMBI TEMP"] = round(float(w.get("temp", 5.0)), 2)
    h[f"{p} DET NAME"] = instrument.detector_name
    h[f"{p} DET TEMP"] = round(float(det_temp), 2)
    mode = instrument.read_mode(None)
    h[f"{p} DET READ MODE"] = mode.name
    h[f"{p} DET READ SPEED"] = mode.speed
    h[f"{p} DET OUTPUTS"] = instrument.n_amplifiers
    for sec in instrument.amp_sections(layout):
        a = sec.amplifier
        n = a.id
        h[f"{p} DET OUT{n} ID"] = n
        h[f"{p} DET OUT{n} X"] = sec.active[1].start + 1
        h[f"{p} DET OUT{n} Y"] = sec.active[0].start + 1
        h[f"{p} DET OUT{n} NX"] = sec.active[1].stop - sec.active[1].start
        h[f"{p} DET OUT{n} NY"] = sec.active[0].stop - sec.active[0].start
        h[f"{p} DET OUT{n} IMSC"] = section_to_fits(sec.active)
        h[f"{p} DET OUT{n} GAIN"] = a.gain
        h[f"{p} DET OUT{n} RON"] = round(a.read_noise * mode.read_noise_factor, 3)
        h[f"{p} DET OUT{n} SATUR"] = a.full_well
        if layout == "readout":
            h[f"{p} DET OUT{n} DATASEC"] = section_to_fits(sec.data)
            if sec.prescan is not None:
                h[f"{p} DET OUT{n} PRSCSEC"] = section_to_fits(sec.prescan)
            if sec.overscan_x is not None:
                h[f"{p} DET OUT{n} OVSCSEC"] = section_to_fits(sec.overscan_x)
            if sec.overscan_y is not None:
                h[f"{p} DET OUT{n} OVSYSEC"] = section_to_fits(sec.overscan_y)
    for k, v in nominal_header(spec.ra, spec.dec, instrument.layout.active_shape, pixel_scale=instrument.pixel_scale,
                               cd_sign_x=instrument.cd_sign_x, cd_sign_y=instrument.cd_sign_y).items():
        h[k] = v
    h["COMMENT"] = "Simulated by upad simulate; the WCS is nominal (commanded pointing) for the assembled image."
    return h


def required_keys(instrument: Instrument, layout: str, convention: str = "oaj") -> list[str]:
    """Every key the contract requires in a raw header (used by tests)."""
    p = "T80S" if convention == "t80s" else instrument.header_prefix
    keys = ["ORIGIN", "TELESCOP", "INSTRUME", "OBJECT", "OBSERVER", "PRJ_ID", "OBS_ID", "EXP_ID", "DATE-OBS",
            "DATE-END", "TIMESYS", "EXPTIME", "RA", "DEC", "EQUINOX", "RADECSYS", "AIRMASS", "FILTER", "BUNIT",
            "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"]
    keys += [f"{p} {k}" for k in ("DET EXP TYPE", "DPR CATG", "DPR TYPE", "TEL AIRM START", "TEL AIRM END", "TEL EL",
                                  "TEL AZ", "TEL PARANG", "TEL GEOLAT", "TEL GEOLON", "TEL GEOELEV", "TEL FOCU SCALE",
                                  "GEN AMBI WIND", "GEN AMBI RHUM", "GEN AMBI PRES", "GEN AMBI TEMP", "DET NAME",
                                  "DET TEMP", "DET READ MODE", "DET READ SPEED", "DET OUTPUTS")]
    for n in range(1, instrument.n_amplifiers + 1):
        sub = ["ID", "X", "Y", "NX", "NY", "IMSC", "GAIN", "RON", "SATUR"]
        if layout == "readout":
            sub += ["DATASEC", "PRSCSEC", "OVSCSEC", "OVSYSEC"]
        keys += [f"{p} DET OUT{n} {s}" for s in sub]
    if convention == "t80s":
        keys.append("IMAGETYP")
    return keys


