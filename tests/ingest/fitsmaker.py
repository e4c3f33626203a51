"""Write small contract-conformant raw frames (docs/raw-format.md) with known content, for the ingest tests.

A stand-in for ``upad.sim`` (not written yet) that is deliberately independent of the code under test: the image
is built from the instrument geometry (amplifier sections), a known bias per amplifier in the prescan/overscan and
under the data, a known flat sky, read noise and Gaussian stars of known FWHM.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from upad.instruments import get_instrument, section_to_fits

# header values per observation type: (DET EXP TYPE, DPR CATG, DPR TYPE) for OAJ, IMAGETYP for T80S
OAJ_TYPES = {
    "science": ("LIGHT", "SCIENCE", "OBJECT"),
    "bias": ("BIAS", "CALIB", "BIAS"),
    "dark": ("DARK", "CALIB", "DARK"),
    "flat-dome": ("FLAT", "CALIB", "FLAT,DOME"),
    "flat-sky": ("FLAT", "CALIB", "FLAT,SKY"),
    "focus": ("LIGHT", "TECHNICAL", "OBJECT,FOCUS"),
    "test": ("LIGHT", "TECHNICAL", "OBJECT"),
}
T80S_TYPES = {"science": "OBJECT", "bias": "ZERO", "dark": "DARK", "flat-dome": "FLAT", "flat-sky": "SKYFLAT",
              "focus": "FOCUS", "test": "TEST"}
SPLUS_NAMES = {"uJAVA": "U", "J0378": "F378", "J0395": "F395", "J0410": "F410", "J0430": "F430", "gSDSS": "G",
               "J0515": "F515", "rSDSS": "R", "J0660": "F660", "iSDSS": "I", "J0861": "F861", "zSDSS": "Z"}

DEFAULT_DATE = dt.datetime(2015, 8, 11, 1, 30, 19, 811000)


def sexagesimal(value: float, *, hours: bool) -> str:
    """Degrees → ``'hh:mm:ss.sss'`` (RA, hours) or ``'+dd:mm:ss.ss'`` (Dec)."""
    v = value / 15.0 if hours else value
    sign = "-" if v < 0 else ("" if hours else "+")
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = (v - d - m / 60) * 3600
    return f"{sign}{d:02d}:{m:02d}:{s:06.3f}" if hours else f"{sign}{d:02d}:{m:02d}:{s:05.2f}"


@dataclass
class RawSpec:
    """What to write. Units: ADU, pixels, seconds, degrees."""

    instrument: str = "mini"
    layout: str = "readout"
    convention: str = "OAJ"
    obs_type: str = "science"
    filter: str | None = "rSDSS"
    date_obs: dt.datetime = DEFAULT_DATE
    seq: int = 1
    exptime: float = 30.0
    object: str | None = None
    tile_id: int = 12
    ra: float = 290.087896
    dec: float = 41.55138
    sky: float = 500.0
    bias: list[float] | None = None
    read_noise_adu: float = 4.0
    n_stars: int = 40
    fwhm_px: float = 3.0
    star_peak: tuple[float, float] = (1500.0, 12000.0)
    saturated_fraction: float = 0.0
    seed: int = 0
    sky_flat_variant: str = "SKYFLAT"
    extra_cards: dict[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()

    def filename(self, *, compressed: bool = True) -> str:
        inst = get_instrument(self.instrument)
        stamp = self.date_obs.strftime("%Y%m%dT%H%M%S")
        return f"{inst.file_prefix}-{stamp}-{self.seq:02d}.fits" + (".fz" if compressed else "")


def star_positions(spec: RawSpec) -> np.ndarray:
    """(x, y, peak) of the stars in trimmed-image pixel coordinates (0-based), well separated."""
    inst = get_instrument(spec.instrument)
    ny, nx = inst.layout.active_shape
    rng = np.random.default_rng(spec.seed + 1000)
    margin = 6 * spec.fwhm_px + 8
    out: list[tuple[float, float, float]] = []
    tries = 0
    while len(out) < spec.n_stars and tries < 100_000:
        tries += 1
        x, y = rng.uniform(margin, nx - margin), rng.uniform(margin, ny - margin)
        # keep away from amplifier boundaries so stars are not cut by the per-amp level steps
        if min(abs(x - b) for b in range(0, nx + 1, inst.layout.amp_nx)) < 4 * spec.fwhm_px:
            continue
        if min(abs(y - b) for b in range(0, ny + 1, inst.layout.amp_ny)) < 4 * spec.fwhm_px:
            continue
        if all((x - ox) ** 2 + (y - oy) ** 2 > (12 * spec.fwhm_px) ** 2 for ox, oy, _ in out):
            out.append((x, y, rng.uniform(*spec.star_peak)))
    return np.array(out, dtype=float).reshape(-1, 3)


def make_active(spec: RawSpec) -> np.ndarray:
    """Trimmed image without bias (float ADU): sky + stars + noise."""
    inst = get_instrument(spec.instrument)
    ny, nx = inst.layout.active_shape
    rng = np.random.default_rng(spec.seed)
    light = spec.obs_type not in ("bias", "dark")
    sky = spec.sky if light else 0.0
    img = np.full((ny, nx), sky, dtype=np.float64)
    if spec.obs_type in ("science", "focus", "test") and spec.n_stars:
        sigma = spec.fwhm_px / (2 * math.sqrt(2 * math.log(2)))
        r = int(math.ceil(6 * sigma))
        for x, y, peak in star_positions(spec):
            ix, iy = int(round(x)), int(round(y))
            yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
            img[iy - r:iy + r + 1, ix - r:ix + r + 1] += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2)
                                                                       / (2 * sigma ** 2))
    gain = 0.93
    noise = np.sqrt(np.clip(img, 0, None) / gain + spec.read_noise_adu ** 2)
    img = img + rng.normal(0.0, 1.0, img.shape) * noise
    return img


def bias_levels(spec: RawSpec) -> list[float]:
    inst = get_instrument(spec.instrument)
    return list(spec.bias) if spec.bias is not None else [a.bias_level for a in inst.detectors[0].amplifiers]


def make_pixels(spec: RawSpec) -> np.ndarray:
    """The raw uint16 frame in ``spec.layout``."""
    inst = get_instrument(spec.instrument)
    active = make_active(spec)
    bias = bias_levels(spec)
    rng = np.random.default_rng(spec.seed + 1)
    out = np.zeros(inst.raw_shape(spec.layout), dtype=np.float64)
    for sec, b in zip(inst.amp_sections(spec.layout), bias):
        out[sec.data] = active[sec.active] + b
        for region in (sec.prescan, sec.overscan_x, sec.overscan_y):
            if region is not None:
                shape = out[region].shape
                out[region] = b + rng.normal(0.0, spec.read_noise_adu, shape)
    if spec.saturated_fraction > 0:
        flat = out.reshape(-1)
        n = int(spec.saturated_fraction * flat.size)
        flat[:n] = 70000.0  # a saturated block at the bottom
    return np.clip(np.round(out), 0, 65535).astype(np.uint16)


def make_header(spec: RawSpec) -> fits.Header:
    inst = get_instrument(spec.instrument)
    p = "T80S" if spec.convention == "T80S" else "OAJ"
    h = fits.Header()
    h["BUNIT"] = "adu"
    h["ORIGIN"] = "OAJ" if p == "OAJ" else "T80S"
    h["TELESCOP"] = inst.telescope_header
    h["INSTRUME"] = inst.name
    if spec.obs_type == "science":
        obj = spec.object if spec.object is not None else f"TILE-{spec.tile_id:05d}"
    else:
        obj = spec.object if spec.object is not None else spec.obs_type
    h["OBJECT"] = obj
    h["OBSERVER"] = "pytest"
    h["PRJ_ID"] = "JPLUS"
    h["OBS_ID"] = 1
    h["EXP_ID"] = spec.seq
    h["DATE-OBS"] = spec.date_obs.isoformat(timespec="milliseconds")
    h["DATE-END"] = (spec.date_obs + dt.timedelta(seconds=spec.exptime)).isoformat(timespec="milliseconds")
    h["TIMESYS"] = "UTC"
    h["EXPTIME"] = spec.exptime
    if p == "OAJ":
        h["RA"] = spec.ra
        h["DEC"] = spec.dec
    else:
        h["RA"] = sexagesimal(spec.ra, hours=True)
        h["DEC"] = sexagesimal(spec.dec, hours=False)
    h["EQUINOX"] = 2000.0
    h["RADECSYS"] = "FK5"
    h["AIRMASS"] = 1.12
    if spec.filter is not None:
        h["FILTER"] = SPLUS_NAMES.get(spec.filter, spec.filter) if p == "T80S" else spec.filter
    if p == "T80S":
        imagetyp = T80S_TYPES[spec.obs_type]
        if spec.obs_type == "flat-sky":
            imagetyp = spec.sky_flat_variant
        h["IMAGETYP"] = imagetyp
    exp_type, catg, dpr = OAJ_TYPES[spec.obs_type]
    h[f"HIERARCH {p} DET EXP TYPE"] = exp_type
    h[f"HIERARCH {p} DPR CATG"] = catg
    if p == "OAJ":
        h[f"HIERARCH {p} DPR TYPE"] = dpr
    h[f"HIERARCH {p} TEL AIRM START"] = 1.12
    h[f"HIERARCH {p} TEL GEOLON"] = -1.0164
    h[f"HIERARCH {p} TEL GEOLAT"] = 40.0424
    h[f"HIERARCH {p} DET NAME"] = inst.detector_name
    h[f"HIERARCH {p} DET TEMP"] = -111.0
    h[f"HIERARCH {p} DET READ MODE"] = "MODE_5"
    h[f"HIERARCH {p} DET READ SPEED"] = "500 KHz"
    h[f"HIERARCH {p} DET OUTPUTS"] = inst.n_amplifiers
    for sec in inst.amp_sections(spec.layout):
        amp = sec.amplifier
        n = amp.id
        h[f"HIERARCH {p} DET OUT{n} GAIN"] = amp.gain
        h[f"HIERARCH {p} DET OUT{n} RON"] = amp.read_noise
        h[f"HIERARCH {p} DET OUT{n} SATUR"] = amp.full_well
        if spec.layout == "readout":
            h[f"HIERARCH {p} DET OUT{n} DATASEC"] = section_to_fits(sec.data)
            h[f"HIERARCH {p} DET OUT{n} OVSCSEC"] = section_to_fits(sec.overscan_x)
    ny, nx = inst.layout.active_shape
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = spec.ra, spec.dec
    h["CRPIX1"], h["CRPIX2"] = nx / 2 + 0.5, ny / 2 + 0.5
    scale = inst.pixel_scale / 3600
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = inst.cd_sign_x * scale, 0.0, 0.0, inst.cd_sign_y * scale
    for key, value in spec.extra_cards.items():
        h[key] = value
    for key in spec.drop_keys:
        while key in h:
            del h[key]
    return h


def write_raw(directory: str | Path, spec: RawSpec | None = None, *, compressed: bool = True,
              checksum: bool = False, name: str | None = None, pixels: np.ndarray | None = None,
              **changes: Any) -> Path:
    """Write one raw file; returns its path. ``changes`` override :class:`RawSpec` fields."""
    spec = spec or RawSpec()
    for key, value in changes.items():
        setattr(spec, key, value)
    data = make_pixels(spec) if pixels is None else pixels
    header = make_header(spec)
    path = Path(directory) / (name or spec.filename(compressed=compressed))
    path.parent.mkdir(parents=True, exist_ok=True)
    if compressed:
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=data, header=header,
                                                                  compression_type="RICE_1")])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    hdul.writeto(path, checksum=checksum, overwrite=True)
    return path


def make_batch(directory: str | Path, n: int, *, start: dt.datetime = DEFAULT_DATE, step_s: float = 60.0,
               **changes: Any) -> list[Path]:
    """``n`` distinct science frames (different seeds and times)."""
    out = []
    for i in range(n):
        spec = RawSpec(date_obs=start + dt.timedelta(seconds=i * step_s), seed=i, seq=1)
        out.append(write_raw(directory, spec, **changes))
    return out
