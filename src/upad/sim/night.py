"""Planning nights (the observing log) and generating the frames of a night.

:func:`plan_nights` turns the configuration into :class:`NightPlan` objects, each with its
conditions (seeing, transparency, sky offset, bias offsets, weather) and the ordered list of
:class:`~upad.sim.schedule.ExposureSpec`. :func:`generate_frame` draws one exposure (pure: arrays
and truth records out, no I/O); :mod:`upad.sim.api` writes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np

from upad.instruments import FilterSystem, Instrument
from upad.sim import rng as R
from upad.sim.config import SimConfig
from upad.sim.detector import (BiasState, Camera, PixelList, bleed, cosmic_rays, draw_bias, photon_stage, readout,
                               satellite_trail)
from upad.sim.psf import draw_psf_model, exposure_fwhm, moffat_alpha, override_fwhm
from upad.sim.render import RenderInfo, Sources, render
from upad.sim.schedule import (SITE_LAT, ExposureSpec, dither_offsets, lst_deg, night_times, offset_radec,
                               radec_from_altaz, radec_to_tangent, sun_alt, sun_radec, tile_centres,
                               twilight_brightening, with_pointing)
from upad.sim.sky import (SkyCatalog, gradient_coefficients, image_direction, position_angle, scattered_light_pattern,
                          sky_gradient_map, sky_rate_e)
from upad.sim.schedule import signature_sequence
from upad.sim.wcs import true_wcs
from upad.errors import UpadError


@dataclass
class NightPlan:
    """One night: its conditions and exposures."""

    night: str
    index: int
    seeing: float  # zenith FWHM in r (arcsec)
    transparency: float
    sky_offset: float  # mag
    bias_offset: np.ndarray  # ADU per amplifier
    weather: dict
    tiles: list[int]  # tile indices observed
    exposures: list[ExposureSpec] = field(default_factory=list)

    def conditions(self) -> dict:
        return {"night": self.night, "seeing_r_zenith_arcsec": round(self.seeing, 4),
                "transparency": round(self.transparency, 4), "sky_offset_mag": round(self.sky_offset, 4),
                "bias_offset_adu": [round(float(b), 4) for b in self.bias_offset], "weather": self.weather,
                "tiles": self.tiles}


@dataclass(frozen=True)
class Survey:
    """Static description shared by every frame of a simulation."""

    instrument: Instrument
    filters: FilterSystem
    cfg: SimConfig
    seed: int
    layout: str
    convention: str
    tile_radec: list[tuple[float, float]]  # tile centres (deg), by tile index
    field_centre: tuple[float, float]
    tile_ids: tuple[int, ...] = ()  # tile ids by tile index (the survey tiling's); empty: first_tile_id + index
    n_nights: int = 1  # nights of the simulation (spread_nights splits each tile's dithers over them)

    @property
    def shape(self) -> tuple[int, int]:
        return self.instrument.layout.active_shape

    @property
    def field_size_deg(self) -> tuple[float, float]:
        ny, nx = self.shape
        return nx * self.instrument.pixel_scale / 3600.0, ny * self.instrument.pixel_scale / 3600.0

    def exptime(self, filt: str) -> float:
        if self.cfg.exptimes and filt in self.cfg.exptimes:
            return float(self.cfg.exptimes[filt])
        return float(self.filters[filt].exptime)

    def tile_id(self, tile_index: int) -> int:
        if self.tile_ids:
            return int(self.tile_ids[tile_index])
        return self.cfg.first_tile_id + tile_index


def _night_date(cfg: SimConfig, index: int) -> date:
    try:
        start = date.fromisoformat(cfg.start_date)
    except ValueError:
        raise UpadError(f"bad start date {cfg.start_date!r}", hint="write it as YYYY-MM-DD") from None
    return start + timedelta(days=index)


def _science_duration(survey: Survey, n_tiles: int) -> float:
    cfg = survey.cfg
    per_tile = cfg.slew_overhead_s
    for f in cfg.filters:
        per_tile += cfg.slew_overhead_s + cfg.n_dithers * (survey.exptime(f) + cfg.readout_time_s) \
            + (cfg.n_dithers - 1) * cfg.dither_overhead_s
    return n_tiles * per_tile


def default_field_ra(cfg: SimConfig, survey_duration_s: float) -> float:
    """RA that transits in the middle of the first night's science block."""
    t = night_times(_night_date(cfg, 0))
    mid = t.dusk_18 + 0.5 * min(survey_duration_s, (t.dawn_18 - t.dusk_18) * 86400) / 86400.0
    return round(float(lst_deg(mid)), 4)


def make_survey(instrument: Instrument, filters: FilterSystem, cfg: SimConfig, seed: int, layout: str,
                convention: str, n_tiles_total: int, tiles_per_night: int, n_nights: int = 1) -> Survey:
    dummy = Survey(instrument, filters, cfg, seed, layout, convention, [], (0.0, 0.0), n_nights=n_nights)
    ra = cfg.field_ra if cfg.field_ra is not None else default_field_ra(cfg, _science_duration(dummy, tiles_per_night))
    if cfg.survey_tiling:
        centres, ids = survey_pointings(instrument, ra, cfg.field_dec, n_tiles_total)
        ras = np.array([c[0] for c in centres])
        mid_ra = float(np.mod(ras[0] + np.mean(np.mod(ras - ras[0] + 180.0, 360.0) - 180.0), 360.0)) if centres else ra
        field = (mid_ra, float(np.mean([c[1] for c in centres]))) if centres else (ra, cfg.field_dec)
        return replace(dummy, tile_radec=centres, tile_ids=tuple(ids), field_centre=field)
    w, h = dummy.field_size_deg
    centres = tile_centres(n_tiles_total, ra, cfg.field_dec, w, h, cfg.tile_overlap)
    return replace(dummy, tile_radec=centres, field_centre=(ra, cfg.field_dec))


def survey_pointings(instrument: Instrument, ra: float, dec: float, n: int) -> tuple[list[tuple[float, float]],
                                                                                     list[int]]:
    """Centres (deg) and ids of ``n`` pointings of the survey tiling (:mod:`upad.coadd.tiling`, its defaults): the
    pointing whose cell holds (ra, dec), then the next ones by id (eastwards along its declination band; the band's
    first pointing follows its last)."""
    from upad.coadd.tiling import locate, pointing_by_id

    if n <= 0:
        return [], []
    first = int(locate(ra, dec, instrument=instrument))
    p0 = pointing_by_id(first, instrument=instrument)
    ids = [first + (p0.index + i) % p0.band_size - p0.index for i in range(n)]
    pts = [pointing_by_id(i, instrument=instrument) for i in ids]
    return [(float(p.ra), float(p.dec)) for p in pts], ids


def _find_time(jd0: float, jd1: float, level: float) -> float:
    grid = np.linspace(jd0, jd1, 2000)
    h = sun_alt(grid)
    idx = np.flatnonzero((h[:-1] > level) & (h[1:] <= level))
    return float(grid[idx[0]]) if idx.size else jd0


def plan_night(survey: Survey, index: int, tiles: list[int]) -> NightPlan:
    """Conditions and exposure list of night ``index`` observing ``tiles``."""
    cfg, inst, filters = survey.cfg, survey.instrument, survey.filters
    night = _night_date(cfg, index)
    rng = R.rng_for(survey.seed, R.NIGHT, index)
    seeing = float(np.clip(cfg.seeing_median_arcsec * 10 ** rng.normal(0, cfg.seeing_night_sigma_dex),
                           *cfg.seeing_range_arcsec))
    transp = float(rng.uniform(*cfg.transparency_night_range)) if cfg.enabled("transparency") else 1.0
    plan = NightPlan(
        night=str(night), index=index, seeing=seeing, transparency=transp,
        sky_offset=float(rng.normal(0, cfg.sky_night_sigma_mag)),
        bias_offset=rng.normal(0, cfg.bias_night_sigma_adu, inst.n_amplifiers),
        weather={"wind": float(rng.uniform(0, 8)), "rhum": float(rng.uniform(15, 70)),
                 "pres": float(rng.uniform(795, 810)), "temp": float(rng.uniform(-2, 10))},
        tiles=list(tiles),
    )
    times = night_times(night)
    specs: list[ExposureSpec] = []
    seq = 0
    first_filter = cfg.filters[0]
    ymd = night.strftime("%Y%m%d")

    def add(kind: str, filt: str, exptime: float, jd: float, ra: float, dec: float, **kw) -> float:
        nonlocal seq
        spec = ExposureSpec(night=str(night), night_index=index, seq=seq, kind=kind, filter=filt, exptime=exptime,
                            jd=jd, ra=ra, dec=dec, alt=0, az=0, parang=0, airmass=1, airmass_end=1, sun_alt=0,
                            exp_id=int(f"{ymd}{seq:04d}"), **kw)
        specs.append(with_pointing(spec, jd, exptime))
        seq += 1
        return jd + (exptime + cfg.readout_time_s) / 86400.0

    # afternoon: biases, darks, dome flats (telescope at the zenith / at the dome screen)
    t = times.sunset - 3.0 / 24.0
    zen_dec = SITE_LAT
    for _ in range(cfg.n_bias):
        add("bias", first_filter, 0.0, t, float(lst_deg(t)), zen_dec, obs_id=f"{night}-BIAS")
        t += cfg.bias_interval_s / 86400.0
    for _ in range(cfg.n_dark):
        t = add("dark", first_filter, cfg.dark_exptime, t, float(lst_deg(t)), zen_dec, obs_id=f"{night}-DARK")
    for f in cfg.filters:
        zp = filters[f].zp
        exptime = round(float(np.clip(5.0 * 10 ** (0.4 * (22.75 - zp)), 2.0, 120.0)), 1)
        for i in range(cfg.n_dome_flats):
            ra, dec = radec_from_altaz(35.0, 90.0, t)
            level = cfg.dome_flat_level_adu * (1 + rng.normal(0, 0.05))
            t = add("flat-dome", f, exptime, t, ra, dec, level_adu=float(level), obs_id=f"{night}-DFLAT-{f}") \
                + 5 / 86400.0
    # instrument-signature sequences (photon-transfer pairs, linearity series) at the dome screen
    for tag, exptime, level in signature_sequence(
            n_ptc_pairs=cfg.n_ptc_pairs, ptc_level_range_adu=cfg.ptc_level_range_adu,
            n_linearity_flats=cfg.n_linearity_flats, linearity_max_adu=cfg.linearity_max_adu,
            lamp_adu_s=cfg.signature_lamp_adu_s):
        ra, dec = radec_from_altaz(35.0, 90.0, t)
        t = add("flat-dome", first_filter, exptime, t, ra, dec, level_adu=float(level),
                obs_id=f"{night}-{tag}-{first_filter}") + 5 / 86400.0
    # dusk: sky flats at the zenith, exposure scaled to the target level, faint filters first
    t = max(t, _find_time(times.sunset, times.dusk_18, cfg.sky_flat_sun_start))
    scale2 = inst.pixel_scale ** 2
    order = sorted(cfg.filters, key=lambda f: 10 ** (-0.4 * (filters[f].sky - filters[f].zp)))
    lo, hi = cfg.sky_flat_exptime_range
    for f in order:
        flt = filters[f]
        for i in range(cfg.n_sky_flats):
            h = float(sun_alt(t))
            rate = 10 ** (-0.4 * (flt.sky - twilight_brightening(h) - flt.zp)) * scale2  # ADU/s at nominal gain
            exptime = round(float(np.clip(cfg.sky_flat_level_adu / rate, lo, hi)), 1)
            ra, dec = offset_radec(float(lst_deg(t)), SITE_LAT, rng.uniform(-60, 60), rng.uniform(-60, 60))
            t = add("flat-sky", f, exptime, t, ra, dec, level_adu=float(rate * exptime),
                    obs_id=f"{night}-SFLAT-{f}") + 10 / 86400.0
    # night: science, all filters of a tile before the next tile
    t = max(t, times.dusk_18) + cfg.slew_overhead_s / 86400.0
    dith = list(enumerate(dither_offsets(cfg.n_dithers, cfg.dither_step_arcsec)))
    if cfg.spread_nights and cfg.revisit and survey.n_nights > 1:
        dith = [(d, off) for d, off in dith if d % survey.n_nights == index]
    for ti in tiles:
        ra0, dec0 = survey.tile_radec[ti]
        tid = survey.tile_id(ti)
        for f in cfg.filters:
            t += cfg.slew_overhead_s / 86400.0
            for d, (dx, dy) in dith:
                ra, dec = offset_radec(ra0, dec0, dx, dy)
                t = add("science", f, survey.exptime(f), t, ra, dec, tile_id=tid, tile_index=ti, dither=d,
                        obs_id=f"{night}-TILE-{tid:05d}-{f}") + cfg.dither_overhead_s / 86400.0
    if t > times.dawn_18:
        raise UpadError(f"the science plan of night {night} runs past the morning twilight",
                        hint="observe fewer tiles or filters per night (--tiles, --filters) or more nights")
    # satellites: random science exposures, at least one per night when asked
    sci = [s for s in specs if s.kind == "science"]
    sat = {s.seq for s in sci if rng.random() < cfg.satellite_probability}
    if cfg.enabled("satellites") and cfg.ensure_satellite and sci and not sat:
        sat = {sci[int(rng.integers(0, len(sci)))].seq}
    if not cfg.enabled("satellites"):
        sat = set()
    plan.exposures = [replace(s, extra={"satellite": s.seq in sat}) for s in specs]
    return plan


# ----------------------------------------------------------------------------- frames
@dataclass
class Frame:
    """One generated exposure: raw pixels and everything true about it."""

    spec: ExposureSpec
    raw: np.ndarray
    record: dict  # manifest entry (JSON-able scalars)
    objects: dict[str, np.ndarray] | None = None
    cosmics: PixelList | None = None
    satellite: PixelList | None = None
    saturation: dict[str, np.ndarray] | None = None
    bias: BiasState | None = None
    wcs_header: object = None


def _camera_geometry(survey: Survey) -> tuple[float, tuple[float, float, float, float]]:
    """Rotation (deg) and quadratic distortion terms fixed for the camera."""
    rng = R.rng_for(survey.seed, R.CAMERA, 5)
    rot = rng.normal(0, survey.cfg.rotation_sigma_deg)
    d = survey.cfg.distortion_corner_px or 0.0
    quad = tuple(float(x) for x in rng.normal(0, 0.25 * d, 4))
    return float(rot), quad  # type: ignore[return-value]


def frame_wcs(survey: Survey, spec: ExposureSpec, rng: np.random.Generator):
    """True WCS and true pointing of an exposure (draws pointing error, rotation jitter, scale)."""
    cfg = survey.cfg
    inst = survey.instrument
    rot0, quad = _camera_geometry(survey)
    err = cfg.pointing_error_arcsec or 0.0
    ex, ey = rng.normal(0, err, 2)
    rot = rot0 + rng.normal(0, 0.005)
    scale = 1 + rng.normal(0, 1e-4)
    if not cfg.enabled("pointing_error"):
        ex = ey = 0.0
    ra, dec = offset_radec(spec.ra, spec.dec, ex, ey)
    dist = cfg.distortion_corner_px if cfg.enabled("distortion") else 0.0
    r5, tang = _high_order_distortion(survey)
    scale *= 1.0 + cfg.plate_scale_error
    w = true_wcs(ra, dec, survey.shape, pixel_scale=inst.pixel_scale, cd_sign_x=inst.cd_sign_x,
                 cd_sign_y=inst.cd_sign_y, rotation_deg=rot, scale_factor=scale, distortion_corner_px=dist or 0.0,
                 quad_terms=quad if dist else (0.0, 0.0, 0.0, 0.0), radial5_corner_px=r5,
                 tangential_corner_px=tang, parity_flip=bool(cfg.parity_flip))
    geo = {"rotation_deg": rot, "scale_factor": scale, "pointing_error_arcsec": [float(ex), float(ey)]}
    if r5 or any(tang) or cfg.parity_flip:
        geo.update(radial5_corner_px=r5, tangential_corner_px=list(tang), parity_flip=bool(cfg.parity_flip))
    return w, (ra, dec), geo


def _high_order_distortion(survey: Survey) -> tuple[float, tuple[float, float]]:
    """5th-order radial term and tangential (p1, p2) terms (pixels at the corner), fixed for the camera."""
    cfg = survey.cfg
    if not cfg.enabled("distortion"):
        return 0.0, (0.0, 0.0)
    r5 = float(cfg.distortion_radial5_corner_px)
    t = float(cfg.distortion_tangential_corner_px)
    if t == 0.0:
        return r5, (0.0, 0.0)
    phi = R.rng_for(survey.seed, R.CAMERA, 6).uniform(0.0, 2.0 * math.pi)  # own stream: nothing else changes
    return r5, (t * math.cos(phi), t * math.sin(phi))


def _select(sky: SkyCatalog, w, ra0: float, dec0: float, shape: tuple[int, int], pixel_scale: float,
            margin_px: float, epoch: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ny, nx = shape
    xi, eta = radec_to_tangent(ra0, dec0, sky.ra, sky.dec)
    half = (max(nx, ny) / 2 + margin_px) * pixel_scale / 3600.0 * 1.05
    pre = np.flatnonzero((np.abs(xi) < half) & (np.abs(eta) < half))
    ra_e, dec_e = sky.radec_at(epoch, pre)  # the stars moved from the catalog epoch (2016.0) to the frame's
    x, y = w.all_world2pix(ra_e, dec_e, 0)
    ok = (x > -margin_px) & (x < nx - 1 + margin_px) & (y > -margin_px) & (y < ny - 1 + margin_px)
    return pre[ok], x[ok], y[ok]


def _image_angle(w) -> tuple[np.ndarray, np.ndarray]:
    """Unit pixel-space vectors pointing north and east at the reference pixel."""
    cdi = np.linalg.inv(w.wcs.cd)
    n = cdi @ np.array([0.0, 1.0])
    e = cdi @ np.array([1.0, 0.0])
    return n / np.linalg.norm(n), e / np.linalg.norm(e)


def _sources(sky: SkyCatalog, idx: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, w,
             pixel_scale: float) -> Sources:
    nvec, evec = _image_angle(w)
    pa = np.radians(sky.pa_deg[idx])
    dx = np.cos(pa) * nvec[0] + np.sin(pa) * evec[0]
    dy = np.cos(pa) * nvec[1] + np.sin(pa) * evec[1]
    theta = np.arctan2(dy, dx)
    q = sky.q[idx]
    g = (1 - q) / (1 + q)
    return Sources(x=x, y=y, flux=flux, sersic_n=sky.sersic_n[idx], hlr_px=sky.hlr_arcsec[idx] / pixel_scale,
                   g1=g * np.cos(2 * theta), g2=g * np.sin(2 * theta))


def generate_frame(survey: Survey, camera: Camera, sky: SkyCatalog, plan: NightPlan, spec: ExposureSpec, *,
                   threads: int = 2) -> Frame:
    """Draw one exposure. Pure: returns the raw array and its truth; deterministic for (seed, night, seq)."""
    cfg, inst, filters = survey.cfg, survey.instrument, survey.filters
    filt = filters[spec.filter]
    shape = survey.shape
    seed = survey.seed
    key = (R.FRAME, plan.index, spec.seq)
    rng = R.rng_for(seed, *key, 1)
    bias = draw_bias(rng, plan.bias_offset, camera)
    mean_gain_nom = camera.mean_gain
    X = 0.5 * (spec.airmass + spec.airmass_end)
    rec: dict = {"kind": spec.kind, "night": spec.night, "seq": spec.seq, "filter": filt.name,
                 "exptime": spec.exptime, "date_obs": spec.date_obs, "exp_id": spec.exp_id, "obs_id": spec.obs_id,
                 "airmass": round(spec.airmass, 5), "commanded_radec": [spec.ra, spec.dec],
                 "bias": bias.to_dict(inst.layout.amp_ny)}
    img: np.ndarray | None = None
    objects = None
    sat_pl = None
    wcs_hdr = None
    t_dark = spec.exptime

    def zp_block(zp_e: float) -> dict:
        return {"zp_e": round(zp_e, 6), "zp_adu": [round(zp_e - 2.5 * math.log10(g), 6) for g in camera.gains],
                "zp_adu_nominal_gain": round(zp_e - 2.5 * math.log10(mean_gain_nom), 6)}

    if spec.kind in ("science", "flat-sky"):
        transp = plan.transparency * (1 - abs(rng.normal(0, cfg.transparency_sigma))) \
            if cfg.enabled("transparency") else 1.0
        ext = filt.extinction * (X - 1) if cfg.enabled("extinction") else 0.0
        zp_e0 = filt.zp + 2.5 * math.log10(mean_gain_nom)
        zp_e = zp_e0 - ext + 2.5 * math.log10(transp)
        X_psf = X if spec.kind == "science" else 1.0
        fwhm = exposure_fwhm(rng, night_seeing=plan.seeing, wavelength=filt.cwl, airmass=X_psf, cfg=cfg)
        prng = R.rng_for(seed, *key, 61)  # PSF family, its parameters, seeing overrides (separate stream)
        fwhm = override_fwhm(prng, fwhm, cfg)
        psf = draw_psf_model(rng, fwhm_centre=fwhm, shape=shape, cfg=cfg, rng_family=prng, wavelength=filt.cwl)
        w, (tra, tdec), geo = frame_wcs(survey, spec, rng)
        wcs_hdr = w.to_header(relax=True)
        rec.update({"true_radec": [tra, tdec], "wcs": geo, "transparency": round(transp, 6),
                    "extinction_mag": round(ext, 6), "psf": psf.to_dict(), "fwhm_arcsec": round(fwhm, 5)})
        rec.update(zp_block(zp_e))
        img = np.zeros(shape, np.float32)
        if spec.kind == "science":
            sky_mag = filt.sky + plan.sky_offset + rng.normal(0, cfg.sky_sigma_mag) - cfg.moon_brightening_mag
            sky_mag += (-2.5 * math.log10(X) + filt.extinction * (X - 1)) if cfg.enabled("extinction") else 0.0
            sky_e = sky_rate_e(sky_mag, zp_e0, inst.pixel_scale) * spec.exptime
            margin = 64.0
            idx, x, y = _select(sky, w, tra, tdec, shape, inst.pixel_scale, margin,
                                epoch=2000.0 + (spec.mid_jd - 2451545.0) / 365.25)
            mag = sky.mags[filt.name][idx]
            flux = 10 ** (-0.4 * (mag - zp_e)) * spec.exptime
            src = _sources(sky, idx, x, y, flux, w, inst.pixel_scale)
            info = render(img, src, psf, pixel_scale=inst.pixel_scale, zones=cfg.psf_zones, trunc=cfg.sersic_trunc)
            amp = camera.amp_of(x, y)
            objects = _object_table(sky.id[idx], x, y, flux, mag, info, amp, camera, bias, shape)
            if spec.extra.get("satellite"):
                sigma = fwhm / inst.pixel_scale / 2.3548
                sat_pl, sat_par = satellite_trail(R.rng_for(seed, *key, 3), shape, sigma_px=sigma,
                                                  flux_range=cfg.satellite_flux_range,
                                                  sigma_range=cfg.satellite_sigma_range_px)
                sat_pl.add_to(img)
                rec["satellite"] = sat_par
            fringe = camera.fringe(filt)
            rec.update(_science_sky_structure(img, survey, plan, spec, w, key, sky_e=sky_e, fringe=fringe))
            rec.update({"sky_mag_arcsec2": round(sky_mag, 5), "sky_e": round(sky_e, 5),
                        "sky_adu": [round(sky_e / g, 5) for g in camera.gains],
                        "fringe_amplitude_rms": camera.fringe_amplitude(filt),
                        "tile_id": spec.tile_id, "dither": spec.dither, "n_objects": int(len(idx))})
            photon_stage(img, camera=camera, seed_key=key, seed=seed, signal_scale=1.0, additive_sky=sky_e,
                         fringe=fringe, dark_time=t_dark, illum=False, threads=threads)
        else:  # twilight flat with a few faint stars
            level_e = spec.level_adu * mean_gain_nom
            if cfg.enabled("sky_flat_stars"):
                srng = R.rng_for(seed, *key, 4)
                area = shape[0] * shape[1] * (inst.pixel_scale / 3600) ** 2
                n = int(srng.poisson(cfg.sky_flat_star_density * area))
                a = moffat_alpha(fwhm / inst.pixel_scale, psf.beta)
                peak = level_e * np.exp(srng.uniform(math.log(0.01), math.log(0.2), n))
                flux = peak * np.pi * a ** 2 / (psf.beta - 1)
                xs, ys = srng.uniform(0, shape[1] - 1, n), srng.uniform(0, shape[0] - 1, n)
                info = render(img, Sources.points(xs, ys, flux), psf, pixel_scale=inst.pixel_scale,
                              zones=cfg.psf_zones)
                amp = camera.amp_of(xs, ys)
                objects = _object_table(np.zeros(n, np.int64), xs, ys, flux,
                                        zp_e - 2.5 * np.log10(np.maximum(flux, 1e-9) / max(spec.exptime, 1e-3)),
                                        info, amp, camera, bias, shape)
            rec.update({"level_e": round(level_e, 4), "level_adu": [round(level_e / g, 4) for g in camera.gains]})
            rec.update(_twilight_structure(img, survey, spec, w, (tra, tdec), key, level_e=level_e))
            photon_stage(img, camera=camera, seed_key=key, seed=seed, signal_scale=1.0, additive_sky=level_e,
                         fringe=None, dark_time=t_dark, illum=False, threads=threads)
    elif spec.kind == "flat-dome":
        level_e = spec.level_adu * mean_gain_nom
        img = np.zeros(shape, np.float32)
        rec.update({"level_e": round(level_e, 4), "level_adu": [round(level_e / g, 4) for g in camera.gains],
                    "illumination": "dome (flat_sky x illum_dome)"})
        photon_stage(img, camera=camera, seed_key=key, seed=seed, signal_scale=1.0, additive_sky=level_e, fringe=None,
                     dark_time=t_dark, illum=True, threads=threads)
    elif spec.kind == "dark":
        img = np.zeros(shape, np.float32)
        photon_stage(img, camera=camera, seed_key=key, seed=seed, signal_scale=1.0, additive_sky=0.0, fringe=None,
                     dark_time=t_dark, illum=False, threads=threads)
    # cosmic rays (exposure + half the readout), saturation and bleeding
    cr = PixelList.empty()
    if cfg.enabled("cosmics"):
        cr = cosmic_rays(R.rng_for(seed, *key, 2), shape, exposure_s=spec.exptime + cfg.readout_time_s / 2,
                         cfg=cfg, pixel_um=inst.pixel_size_um)
        if len(cr.x):
            if img is None:
                img = np.zeros(shape, np.float32)
            cr.add_to(img)
    bl = PixelList.empty()
    if img is not None and cfg.enabled("saturation"):
        lay = inst.layout
        fw = camera.full_well_e.reshape(lay.n_amp_y, lay.n_amp_x)
        bl = bleed(img, fw, lay.amp_nx)
    cap_x, cap_y, cap_e = _at_capacity(img, camera, bias)
    raw = readout(img, camera=camera, bias=bias, layout=survey.layout, seed=seed, seed_key=key, threads=threads)
    # pixels at the ADC maximum (trimmed coordinates)
    sx, sy = [], []
    for sec in inst.amp_sections(survey.layout):
        yy, xx = np.nonzero(raw[sec.data] >= inst.adc_max)
        sx.append(xx + sec.active[1].start)
        sy.append(yy + sec.active[0].start)
    sx_a, sy_a = np.concatenate(sx), np.concatenate(sy)
    rec.update({"n_cosmic_events": int(len(np.unique(cr.id))) if len(cr.x) else 0, "n_cosmic_pixels": int(len(cr.x)),
                "n_adc_saturated": int(len(sx_a)), "n_bled_pixels": int(len(bl.x)),
                "satellite": rec.get("satellite")})
    return Frame(spec=spec, raw=raw, record=rec, objects=objects, cosmics=cr, satellite=sat_pl,
                 saturation={"x": sx_a.astype(np.int32), "y": sy_a.astype(np.int32), "bled_x": bl.x, "bled_y": bl.y,
                             "bled_e": bl.e, "cap_x": cap_x, "cap_y": cap_y, "cap_e": cap_e},
                 bias=bias, wcs_header=wcs_hdr)


def scattered_light(survey: Survey) -> np.ndarray | None:
    """The camera's fixed scattered-light glow (peak 1), or None when ``scattered_light_fraction`` is 0."""
    if not survey.cfg.scattered_light_fraction:
        return None
    return _scattered_cached(survey.seed, survey.shape)


_SCATTER_CACHE: dict = {}


def _scattered_cached(seed: int, shape: tuple[int, int]) -> np.ndarray:
    k = (seed, tuple(shape))
    if k not in _SCATTER_CACHE:
        _SCATTER_CACHE.clear()
        _SCATTER_CACHE[k] = scattered_light_pattern(R.rng_for(seed, R.CAMERA, 30), shape)
    return _SCATTER_CACHE[k]


def _add_scattered(img: np.ndarray, survey: Survey, sky_level_e: float) -> dict:
    pat = scattered_light(survey)
    if pat is None:
        return {}
    peak = survey.cfg.scattered_light_fraction * sky_level_e
    img += np.float32(peak) * pat
    return {"scattered_light_peak_e": round(float(peak), 4)}


def _twilight_structure(img: np.ndarray, survey: Survey, spec: ExposureSpec, w, pointing: tuple[float, float],
                        key: tuple[int, ...], *, level_e: float) -> dict:
    """Add the twilight sky's large-scale gradient (towards the Sun) and the scattered light to a sky flat's
    expected electrons (before the pixel response); return the truth record entries."""
    cfg = survey.cfg
    lo, hi = cfg.sky_flat_gradient_range
    out: dict = {}
    if hi > 0 or lo > 0:
        rng = R.rng_for(survey.seed, *key, 5)
        jd = spec.mid_jd
        h = float(sun_alt(jd))
        frac = float(np.clip((h + 9.0) / 6.0, 0.0, 1.0))
        p2p = (lo + (hi - lo) * frac) * (1 + rng.uniform(-0.1, 0.1))
        sra, sdec = sun_radec(jd)
        pa = position_angle(pointing[0], pointing[1], float(sra), float(sdec))
        nvec, evec = _image_angle(w)
        d = image_direction(pa, nvec, evec)
        gx, gy = gradient_coefficients(d, survey.shape, p2p)
        grad = sky_gradient_map(survey.shape, gx, gy, curvature=cfg.sky_flat_gradient_curvature)
        grad -= np.float32(1.0)
        grad *= np.float32(level_e)
        img += grad
        del grad
        out["twilight_gradient"] = {
            "peak_to_peak": round(p2p, 6), "gx": round(gx, 7), "gy": round(gy, 7),
            "curvature": cfg.sky_flat_gradient_curvature, "sun_alt_deg": round(h, 4),
            "sun_position_angle_deg": round(pa, 4),
            "image_angle_deg": round(math.degrees(math.atan2(d[1], d[0])), 4),
            "formula": "sky = level * (1 + gx*u + gy*v + k*(s^2-1/3)), u,v in [-1,1] along x,y (0-based pixels "
                       "0..n-1), s = (gx*u+gy*v)/(|gx|+|gy|), k = curvature*2*(|gx|+|gy|)"}
    out.update(_add_scattered(img, survey, level_e))
    return out


def _science_sky_structure(img: np.ndarray, survey: Survey, plan: NightPlan, spec: ExposureSpec, w,
                           key: tuple[int, ...], *, sky_e: float, fringe: np.ndarray | None) -> dict:
    """Moonlight gradient, scattered light and the fringe component that does not follow the sky, added to a
    science frame's expected electrons (before the pixel response); the truth record entries."""
    cfg = survey.cfg
    out: dict = {}
    rng = R.rng_for(survey.seed, *key, 6)
    if cfg.moon_gradient:
        pa = float(R.rng_for(survey.seed, R.NIGHT, plan.index, 77).uniform(0, 360))
        p2p = cfg.moon_gradient * (1 + rng.uniform(-0.1, 0.1))
        nvec, evec = _image_angle(w)
        d = image_direction(pa, nvec, evec)
        gx, gy = gradient_coefficients(d, survey.shape, p2p)
        grad = sky_gradient_map(survey.shape, gx, gy)
        grad -= np.float32(1.0)
        grad *= np.float32(sky_e)
        img += grad
        del grad
        out["sky_gradient"] = {"peak_to_peak": round(p2p, 6), "gx": round(gx, 7), "gy": round(gy, 7),
                               "moon_position_angle_deg": round(pa, 4),
                               "formula": "sky = sky_e * (1 + gx*u + gy*v), u,v in [-1,1] along x,y"}
    out.update(_add_scattered(img, survey, sky_e))
    if fringe is not None and cfg.fringe_frame_sigma:
        extra = float(rng.normal(0, cfg.fringe_frame_sigma))
        img += np.float32(extra * sky_e) * fringe
        out["fringe_scale"] = round(1 + extra, 6)
    return out


def _at_capacity(img: np.ndarray | None, camera: Camera, bias: BiasState) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Pixels whose charge (e-, before readout) reached what the amplifier can record: its full well (with charge
    bleeding on) or the charge whose reading reaches the ADC maximum at the amplifier's mean bias (the simulator's
    own readout model, inverted). Returns their x, y (0-based) and charge."""
    e0 = np.empty(0, np.int32)
    if img is None:
        return e0, e0, np.empty(0, np.float32)
    lay = camera.instrument.layout
    xs, ys, es = [], [], []
    for k in range(lay.n_amp_x * lay.n_amp_y):
        iy, ix = divmod(k, lay.n_amp_x)
        room = float(camera.instrument.adc_max) - bias.mean_data(k, lay.amp_ny)
        c2, c3 = camera.nonlinearity[k]
        lin = room
        for _ in range(30):  # Newton: lin + c2 lin^2 + c3 lin^3 = room
            f = lin + c2 * lin * lin + c3 * lin ** 3 - room
            lin -= f / (1 + 2 * c2 * lin + 3 * c3 * lin * lin)
        cap = lin * float(camera.gains[k])
        if camera.cfg.enabled("saturation"):
            cap = min(cap, float(camera.full_well_e[k]))
        y0, x0 = iy * lay.amp_ny, ix * lay.amp_nx
        yy, xx = np.nonzero(img[y0:y0 + lay.amp_ny, x0:x0 + lay.amp_nx] >= np.float32(cap * (1 - 1e-6)))
        xs.append((xx + x0).astype(np.int32))
        ys.append((yy + y0).astype(np.int32))
        es.append(img[yy + y0, xx + x0].astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(es)


def _object_table(ids, x, y, flux_e, mag, info: RenderInfo, amp, camera: Camera, bias: BiasState,
                  shape) -> dict[str, np.ndarray]:
    ny, nx = shape
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    gains = camera.gains[amp]
    ixc = np.clip(np.floor(x + 0.5).astype(int), 0, nx - 1)
    iyc = np.clip(np.floor(y + 0.5).astype(int), 0, ny - 1)
    peak_det = info.peak * camera.flat_sky[iyc, ixc]
    adc_e = (camera.instrument.adc_max - bias.level[amp]) * gains
    sat_e = np.minimum(camera.full_well_e[amp], adc_e)
    cen = info.centroid if info.centroid is not None else np.zeros((len(x), 4))
    return {
        "id": np.asarray(ids, np.int64), "x": x.astype(np.float64), "y": y.astype(np.float64),
        "flux_e": flux_e.astype(np.float64), "flux_adu": (flux_e / gains).astype(np.float64),
        "mag": np.asarray(mag, np.float64), "peak_e": info.peak.astype(np.float32),
        "fwhm_arcsec": info.fwhm_arcsec.astype(np.float32), "psf_g1": info.psf_g1.astype(np.float32),
        "psf_g2": info.psf_g2.astype(np.float32),
        # where the drawn light of a point source is centred, relative to x, y (the chief ray): windowed
        # (SExtractor's XWIN definition) and first-moment centroid of the true PSF (render.centroid_offset)
        "psf_dx": cen[:, 0].astype(np.float32), "psf_dy": cen[:, 1].astype(np.float32),
        "psf_mom_dx": cen[:, 2].astype(np.float32), "psf_mom_dy": cen[:, 3].astype(np.float32),
        "amp": (amp + 1).astype(np.int16),
        "in_image": inside, "saturated": inside & (peak_det >= sat_e),
    }
