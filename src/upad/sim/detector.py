"""The detector: fixed camera patterns, photon noise, cosmic rays, satellites, bleeding and readout.

Units: the *electron image* is the assembled active area (``Layout.active_shape``), float32, in
electrons; the *raw frame* is uint16 ADU in the requested layout.

Signal model of a pixel (e-), before noise::

    science:    flat_sky * (sky_e * (1 + fringe) + objects_e) + dark_rate * t
    dome flat:  flat_sky * illum_dome * level_e + dark_rate * t
    sky flat:   flat_sky * (level_e + faint stars) + dark_rate * t
    dark:       dark_rate * t          bias: 0

``flat_sky`` = PRNU x vignetting x dead-column response (mean 1 over the image); ``illum_dome`` is the
smooth dome-only illumination term (mean 1); ``fringe`` is a fixed zero-mean pattern per filter times
its amplitude (fraction of the sky). Then photon noise, cosmic rays (e-, added after noise), charge
bleeding above full well along columns, and the readout of each amplifier::

    lin  = e / gain                                  (ADU)
    meas = lin + c2 * lin**2 + c3 * lin**3           (non-linearity)
    raw  = rint(bias(read row) + meas + read noise)  clipped to [0, adc_max]

With ``SimConfig.draw_signature`` the camera's signature is drawn around the instrument file instead (per camera
and seed): read noise and full well scattered, the non-linearity of another form than the pipeline's,
``meas = lin * (1 - a * (lin / L)**p)`` with ``L`` = :data:`NL_REFERENCE_ADU` and ``a, p`` drawn per amplifier,
a fixed bias structure added to the data section, dead pixels, and crosstalk in the readout::

    meas_j += sum_i C[j, i] * min(meas_i, adc_max - bias_i)     (same readout position, i != j)

(the source as the video chain passes it: saturated sources give a flat-topped ghost).

with ``bias(r) = level + d1 * t + d2 * t**2``, ``t = r / (amp_ny + overscan_y - 1)`` and ``r`` the
readout row index (0 for the first row read: rows are read away from the serial register, the data
rows first then the parallel overscan), identical in prescan, serial overscan and data of that row.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from upad.instruments import AmpSection, Instrument
from upad.sim import rng as rngmod
from upad.sim.config import SimConfig

#: Bits of the truth bad-pixel mask.
BPM_HOT_PIXEL = 1
BPM_DEAD_COLUMN = 2
BPM_HOT_COLUMN = 4
BPM_DEAD_PIXEL = 8

#: Reference level (bias-subtracted ADU) of the drawn non-linearity ``meas = lin * (1 - a (lin/L)^p)``.
NL_REFERENCE_ADU = 50000.0


# ----------------------------------------------------------------------------- smooth fields
def _upsample_bilinear(small: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bilinear upsampling of ``small`` (sampled every ``factor`` pixels) to ``shape`` (float32)."""
    ny, nx = shape
    ys = np.arange(ny, dtype=np.float64) / factor
    xs = np.arange(nx, dtype=np.float64) / factor
    iy = np.minimum(ys.astype(int), small.shape[0] - 2)
    ix = np.minimum(xs.astype(int), small.shape[1] - 2)
    wy = (ys - iy).astype(np.float32)[:, None]
    wx = (xs - ix).astype(np.float32)[None, :]
    rows = small[iy].astype(np.float32) * (1 - wy) + small[iy + 1].astype(np.float32) * wy  # (ny, sx)
    out = rows[:, ix] * (1 - wx)
    out += rows[:, ix + 1] * wx
    return out


def fringe_pattern(rng: np.random.Generator, shape: tuple[int, int], period_px: float) -> np.ndarray:
    """Zero-mean, unit-RMS fringe-like pattern: a Gaussian random field band-limited around ``period_px``."""
    ny, nx = shape
    factor = max(1, int(period_px // 8))
    factor = min(factor, max(1, max(ny, nx) // 256))
    sy, sx = ny // factor + 2, nx // factor + 2
    white = rng.standard_normal((sy, sx))
    k = np.fft.rfft2(white)
    ky = np.fft.fftfreq(sy)[:, None]
    kx = np.fft.rfftfreq(sx)[None, :]
    kr = np.hypot(kx, ky)
    k0 = factor / period_px
    phi0 = rng.uniform(0, np.pi)
    filt = np.exp(-0.5 * ((kr - k0) / (0.25 * k0)) ** 2) * (1 + 0.6 * np.cos(2 * (np.arctan2(ky, kx) - phi0)))
    small = np.fft.irfft2(k * filt, s=(sy, sx))
    small = (small - small.mean()) / small.std()
    out = _upsample_bilinear(small, shape, factor) if factor > 1 else small[:ny, :nx].astype(np.float32)
    out -= np.float32(out.mean(dtype=np.float64))
    out /= np.float32(out.std(dtype=np.float64))
    return out


def illumination_pattern(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> tuple[np.ndarray, list]:
    """Smooth 2nd-order polynomial pattern with peak-to-peak ``amplitude`` and mean 1; returns (map, coeffs).

    ``p = c0*u + c1*v + c2*(u^2 - 1/3) + c3*(v^2 - 1/3) + c4*u*v`` with ``u, v`` in [-1, 1], scaled.
    """
    ny, nx = shape
    u = np.linspace(-1, 1, nx)
    v = np.linspace(-1, 1, ny)
    c = rng.normal(0, 1, 5)
    # separable evaluation: p = [1, v, v^2-1/3] @ [c0 u + c2 (u^2-1/3), c1 + c4 u, c3]
    A = np.stack([np.ones(ny), v, v * v - 1 / 3], axis=1).astype(np.float32)
    B = np.stack([c[0] * u + c[2] * (u * u - 1 / 3), c[1] + c[4] * u, np.full(nx, c[3])]).astype(np.float32)
    p = A @ B
    span = float(p.max() - p.min()) or 1.0
    scale = amplitude / span
    p *= np.float32(scale)
    p += np.float32(1.0)
    p /= np.float32(p.mean(dtype=np.float64))
    return p, [float(x * scale) for x in c]


# ----------------------------------------------------------------------------- camera
@dataclass
class Camera:
    """Everything fixed for a camera and a seed: true gains, noise, non-linearity and the pixel maps.

    Maps have the shape of the assembled active area. ``fringe(filter)`` is built on first use.
    """

    instrument: Instrument
    cfg: SimConfig
    seed: int
    gains: np.ndarray
    read_noise_e: np.ndarray
    full_well_e: np.ndarray
    nonlinearity: np.ndarray  # (n_amp, 2): c2, c3
    bias_nominal: np.ndarray
    flat_sky: np.ndarray
    dark_rate: np.ndarray
    bpm: np.ndarray
    vignetting_params: dict
    bad_columns: list[dict]
    n_hot_pixels: int
    _illum: np.ndarray | None = None
    illum_coeffs: list = field(default_factory=list)
    #: drawn signature (``SimConfig.draw_signature``): power-law non-linearity (n_amp, 2: a, p) or None,
    #: crosstalk matrix C[target, source] or None, fixed bias structure (ADU, active shape) or None
    nl_power: np.ndarray | None = None
    crosstalk: np.ndarray | None = None
    bias_structure: np.ndarray | None = None
    n_dead_pixels: int = 0
    _fringes: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.flat_sky.shape

    @property
    def illum_dome(self) -> np.ndarray:
        if self._illum is None:
            if self.cfg.enabled("illumination"):
                rng = rngmod.rng_for(self.seed, rngmod.CAMERA, 10)
                self._illum, self.illum_coeffs = illumination_pattern(rng, self.shape, self.cfg.illumination_amplitude)
            else:
                self._illum = np.ones(self.shape, np.float32)
        return self._illum

    def fringe_amplitude(self, filt) -> float:
        if not (filt.fringing and self.cfg.enabled("fringing")):
            return 0.0
        return float(self.cfg.fringe_amplitude.get(filt.name, 0.015))

    def fringe(self, filt) -> np.ndarray | None:
        """Fringe map (fraction of the sky) of filter ``filt``, or None when it has none."""
        amp = self.fringe_amplitude(filt)
        if amp == 0.0:
            return None
        if filt.name not in self._fringes:
            rng = rngmod.rng_for(self.seed, rngmod.CAMERA, 20, rngmod.key_of(filt.name))
            period = self.cfg.fringe_period_px * rng.uniform(0.8, 1.25)
            pat = fringe_pattern(rng, self.shape, period)
            pat *= np.float32(amp)
            self._fringes[filt.name] = pat
        return self._fringes[filt.name]

    @property
    def mean_gain(self) -> float:
        return float(np.mean([a.gain for a in self.instrument.detectors[0].amplifiers]))

    def amp_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0-based amplifier index of 0-based assembled-image positions."""
        lay = self.instrument.layout
        ix = np.clip(np.floor(np.asarray(x) + 0.5).astype(int) // lay.amp_nx, 0, lay.n_amp_x - 1)
        iy = np.clip(np.floor(np.asarray(y) + 0.5).astype(int) // lay.amp_ny, 0, lay.n_amp_y - 1)
        return iy * lay.n_amp_x + ix

    def manifest(self) -> dict:
        return {
            "gain_true_e_per_adu": [round(float(g), 6) for g in self.gains],
            "gain_nominal_e_per_adu": [a.gain for a in self.instrument.detectors[0].amplifiers],
            "read_noise_e": [round(float(r), 4) for r in self.read_noise_e],
            "full_well_e": [float(f) for f in self.full_well_e],
            "nonlinearity_c2_c3": [[float(a), float(b)] for a, b in self.nonlinearity],
            "nonlinearity_convention": "measured_adu = lin + c2*lin**2 + c3*lin**3 (bias-subtracted ADU)",
            "bias_nominal_adu": [float(b) for b in self.bias_nominal],
            "vignetting": self.vignetting_params,
            "illumination_coeffs": self.illum_coeffs,
            "illumination_formula": "1 + c0*u + c1*v + c2*(u^2-1/3) + c3*(v^2-1/3) + c4*u*v, u,v in [-1,1], "
                                    "then divided by its mean; present in dome flats only",
            "bad_columns": self.bad_columns,
            "n_hot_pixels": self.n_hot_pixels,
            "dark_current_e_per_s": float(self.cfg.dark_current or 0.0) if self.cfg.enabled("dark_current") else 0.0,
            "bpm_bits": {"hot_pixel": BPM_HOT_PIXEL, "dead_column": BPM_DEAD_COLUMN, "hot_column": BPM_HOT_COLUMN},
            "fringe_amplitude_rms": {k: self.cfg.fringe_amplitude.get(k, 0.015) for k in self._fringes},
            "signature": self.signature(),
        }

    def saturation_adu(self) -> list[float]:
        """Bias-subtracted raw level (ADU) per amplifier where the full well or the ADC comes first (nominal bias)."""
        out = []
        for k in range(len(self.gains)):
            fw_adu = self.measured_adu(k, self.full_well_e[k] / self.gains[k])
            out.append(float(min(fw_adu, float(self.instrument.adc_max) - self.bias_nominal[k])))
        return out

    def measured_adu(self, amp: int, lin_adu: np.ndarray | float) -> np.ndarray | float:
        """The true non-linearity: measured (bias-subtracted) ADU of a linear signal ``lin_adu`` in amplifier ``amp``."""
        lin = np.asarray(lin_adu, np.float64)
        if self.nl_power is not None:
            a, p = self.nl_power[amp]
            out = lin * (1.0 - a * np.power(np.maximum(lin, 0.0) / NL_REFERENCE_ADU, p))
        else:
            c2, c3 = self.nonlinearity[amp]
            out = lin + c2 * lin ** 2 + c3 * lin ** 3
        return out if out.ndim else float(out)

    def signature(self) -> dict:
        """What was drawn of the instrument signature (the truth of gain, noise, non-linearity, crosstalk)."""
        d: dict = {"drawn": self.nl_power is not None,
                   "gain_e_per_adu": [float(g) for g in self.gains],
                   "read_noise_e": [float(r) for r in self.read_noise_e],
                   "read_noise_adu": [float(r / g) for r, g in zip(self.read_noise_e, self.gains)],
                   "full_well_e": [float(f) for f in self.full_well_e],
                   "saturation_adu": self.saturation_adu(),
                   "saturation_convention": "bias-subtracted raw ADU where the full well (after the non-linearity) "
                                            "or the ADC maximum (at the nominal bias) comes first"}
        if self.nl_power is not None:
            d.update({"nonlinearity_form": "measured_adu = lin * (1 - a * (lin / L)**p), lin = e-/gain",
                      "nonlinearity_L_adu": NL_REFERENCE_ADU,
                      "nonlinearity_a_p": [[float(a), float(p)] for a, p in self.nl_power]})
        if self.crosstalk is not None:
            d.update({"crosstalk": [[float(v) for v in row] for row in self.crosstalk],
                      "crosstalk_convention": "C[target][source] (0-based amplifiers): meas_target += C * "
                                              "min(meas_source, adc_max - bias_source) at the same readout position"})
        if self.bias_structure is not None:
            d["bias_structure_rms_adu"] = float(np.std(self.bias_structure))
        d["n_dead_pixels"] = self.n_dead_pixels
        return d


def make_camera(instrument: Instrument, cfg: SimConfig, seed: int) -> Camera:
    """Draw the fixed patterns of ``instrument`` for ``seed`` (same in every night and frame)."""
    lay = instrument.layout
    shape = lay.active_shape
    ny, nx = shape
    amps = instrument.detectors[0].amplifiers
    rng = rngmod.rng_for(seed, rngmod.CAMERA, 1)
    nominal = np.array([a.gain for a in amps])
    gains = nominal * (1 + rng.normal(0, cfg.gain_scatter, len(amps))) if cfg.enabled("gain_variation") else nominal
    factor = instrument.read_mode(None).read_noise_factor
    ron = np.array([a.read_noise for a in amps]) * factor
    fw = np.array([a.full_well for a in amps])
    nl = np.array([list(a.nonlinearity)[:2] + [0.0] * (2 - len(a.nonlinearity[:2])) for a in amps])
    if not cfg.enabled("nonlinearity"):
        nl = np.zeros_like(nl)
    bias = np.array([a.bias_level for a in amps])

    # flat: PRNU x vignetting x dead columns
    rng = rngmod.rng_for(seed, rngmod.CAMERA, 2)
    flat = np.ones(shape, np.float32)
    if cfg.enabled("prnu"):
        flat = rng.standard_normal(shape, dtype=np.float32)
        flat *= np.float32(cfg.prnu_sigma)
        flat += np.float32(1.0)
        # smooth part: sum of 4 plane waves cos(kx u + ky v + ph), evaluated as a rank-8 matrix product
        u = np.linspace(-1, 1, nx)
        v = np.linspace(-1, 1, ny)
        A, B = [], []
        for _ in range(4):
            kx, ky = rng.uniform(0.5, 3.0, 2) * np.pi * rng.choice([-1, 1], 2)
            ph = rng.uniform(0, 2 * np.pi)
            A += [np.cos(ky * v), -np.sin(ky * v)]
            B += [np.cos(kx * u + ph), np.sin(kx * u + ph)]
        amp = cfg.prnu_smooth / 2.0
        flat += np.stack(A, axis=1).astype(np.float32) @ (amp * np.stack(B)).astype(np.float32)
    vig = {"corner_loss": 0.0, "centre_x": (nx - 1) / 2, "centre_y": (ny - 1) / 2}
    rng = rngmod.rng_for(seed, rngmod.CAMERA, 3)
    if cfg.enabled("vignetting"):
        cx = (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * nx
        cy = (ny - 1) / 2 + rng.uniform(-0.03, 0.03) * ny
        rc2 = (nx / 2) ** 2 + (ny / 2) ** 2
        dx2 = ((np.arange(nx, dtype=np.float32) - np.float32(cx)) ** 2 / np.float32(rc2))[None, :]
        dy2 = ((np.arange(ny, dtype=np.float32) - np.float32(cy)) ** 2 / np.float32(rc2))[:, None]
        a = np.float32(cfg.vignetting_corner)
        flat *= (np.float32(1.0) - a * dy2) - a * dx2
        vig = {"corner_loss": cfg.vignetting_corner, "centre_x": cx, "centre_y": cy,
               "formula": "1 - corner_loss*((x-centre_x)^2+(y-centre_y)^2)/((nx/2)^2+(ny/2)^2), 0-based x,y"}

    # bad columns and hot pixels
    rng = rngmod.rng_for(seed, rngmod.CAMERA, 4)
    dark_base = (cfg.dark_current if cfg.dark_current is not None else instrument.dark_current)
    dark = np.full(shape, dark_base if cfg.enabled("dark_current") else 0.0, np.float32)
    bpm = np.zeros(shape, np.uint8)
    bad_columns: list[dict] = []
    if cfg.enabled("bad_columns"):
        for i in range(int(cfg.n_bad_columns or 0)):
            x = int(rng.integers(0, nx))
            iy = int(rng.integers(0, lay.n_amp_y))
            y_trap = int(rng.integers(0, lay.amp_ny))
            top = lay.flip_top_y and iy >= lay.n_amp_y / 2
            # charge beyond a trap (away from the serial register) is affected
            y0, y1 = (iy * lay.amp_ny, iy * lay.amp_ny + y_trap) if top else (iy * lay.amp_ny + y_trap, (iy + 1) * lay.amp_ny)
            if i % 3 == 2:
                rate = float(rng.uniform(0.5, 5.0))
                dark[y0:y1, x] += np.float32(rate)
                bpm[y0:y1, x] |= BPM_HOT_COLUMN
                bad_columns.append({"x": x, "y0": y0, "y1": y1, "kind": "hot", "dark_e_per_s": rate})
            else:
                resp = float(rng.uniform(0.0, 0.5))
                flat[y0:y1, x] *= np.float32(resp)
                bpm[y0:y1, x] |= BPM_DEAD_COLUMN
                bad_columns.append({"x": x, "y0": y0, "y1": y1, "kind": "dead", "response": resp})
    n_hot = 0
    if cfg.enabled("hot_pixels"):
        n_hot = int(rng.poisson(cfg.hot_pixel_fraction * nx * ny))
        hy = rng.integers(0, ny, n_hot)
        hx = rng.integers(0, nx, n_hot)
        lo, hi = cfg.hot_pixel_rate
        dark[hy, hx] += np.exp(rng.uniform(math.log(lo), math.log(hi), n_hot)).astype(np.float32)
        bpm[hy, hx] |= BPM_HOT_PIXEL
    sig: dict = {}
    if cfg.draw_signature:
        sig = _draw_signature(instrument, cfg, seed, ron=ron, fw=fw, flat=flat, bpm=bpm)
        ron, fw = sig.pop("ron"), sig.pop("fw")
        nl = np.zeros_like(nl)
    flat /= np.float32(flat.mean(dtype=np.float64))
    return Camera(instrument=instrument, cfg=cfg, seed=seed, gains=gains, read_noise_e=ron, full_well_e=fw,
                  nonlinearity=nl, bias_nominal=bias, flat_sky=flat, dark_rate=dark, bpm=bpm,
                  vignetting_params=vig, bad_columns=bad_columns, n_hot_pixels=n_hot, **sig)


def _draw_signature(instrument: Instrument, cfg: SimConfig, seed: int, *, ron: np.ndarray, fw: np.ndarray,
                    flat: np.ndarray, bpm: np.ndarray) -> dict:
    """Draw the camera's signature around the instrument file (``SimConfig.draw_signature``).

    Read noise and full well scattered; a power-law non-linearity whose deviation at :data:`NL_REFERENCE_ADU` is
    the instrument file's cubic's, scattered, with its exponent drawn in [1.2, 2.4]; crosstalk coefficients
    (lognormal around ``crosstalk_scale``, 80 % positive); a fixed bias structure (column offsets plus a smooth
    ramp); dead pixels (``flat`` and ``bpm`` updated in place).
    """
    rng = rngmod.rng_for(seed, rngmod.CAMERA, 30)
    amps = instrument.detectors[0].amplifiers
    n = len(amps)
    ron = ron * (1 + rng.normal(0, cfg.read_noise_scatter, n))
    ron = np.maximum(ron, 0.3 * ron.mean())
    fw = fw * (1 + rng.normal(0, cfg.full_well_scatter, n))
    L = NL_REFERENCE_ADU
    nl = np.zeros((n, 2))
    for k, a in enumerate(amps):
        c = list(a.nonlinearity) + [0.0, 0.0]
        dev = -(c[0] * L + c[1] * L * L)  # the file's fractional loss at L
        if not dev > 0:
            dev = 0.005
        nl[k] = (dev * max(0.2, 1 + rng.normal(0, cfg.nonlinearity_scatter)), rng.uniform(1.2, 2.4))
    if not cfg.enabled("nonlinearity"):
        nl[:, 0] = 0.0
    xt = None
    if n > 1 and cfg.crosstalk_scale > 0:
        xt = cfg.crosstalk_scale * np.exp(rng.normal(0, 0.5, (n, n))) * np.where(rng.random((n, n)) < 0.8, 1, -1)
        np.fill_diagonal(xt, 0.0)
    ny, nx = flat.shape
    bstruct = None
    if cfg.bias_structure_adu > 0:
        cols = rng.normal(0, 0.6 * cfg.bias_structure_adu, nx)
        v = np.linspace(-1, 1, ny)[:, None]
        u = np.linspace(-1, 1, nx)[None, :]
        ramp = 0.8 * cfg.bias_structure_adu * (rng.normal() * v + rng.normal() * u * v)
        bstruct = (cols[None, :] + ramp).astype(np.float32)
    n_dead = int(rng.poisson(cfg.dead_pixel_fraction * nx * ny))
    if n_dead:
        dy, dx = rng.integers(0, ny, n_dead), rng.integers(0, nx, n_dead)
        resp = rng.uniform(0.0, 0.05, n_dead).astype(np.float32)
        if cfg.enabled("dead_pixels"):
            flat[dy, dx] *= resp
            bpm[dy, dx] |= BPM_DEAD_PIXEL
        else:
            n_dead = 0
    # switched-off effects: drawn all the same, so that the other draws do not change
    if not cfg.enabled("crosstalk"):
        xt = None
    if not cfg.enabled("bias_structure"):
        bstruct = None
    return {"ron": ron, "fw": fw, "nl_power": nl, "crosstalk": xt, "bias_structure": bstruct,
            "n_dead_pixels": n_dead}


# ----------------------------------------------------------------------------- bias
@dataclass(frozen=True)
class BiasState:
    """Bias of one frame: per-amplifier level (ADU) and drift coefficients ``(d1, d2)``."""

    level: np.ndarray
    drift: np.ndarray  # (n_amp, 2)
    n_read_rows: int

    def rows(self, amp: int, read_rows: np.ndarray) -> np.ndarray:
        t = np.asarray(read_rows, np.float64) / (self.n_read_rows - 1)
        d1, d2 = self.drift[amp]
        return self.level[amp] + d1 * t + d2 * t * t

    def mean_data(self, amp: int, amp_ny: int) -> float:
        """Mean bias over the data rows of amplifier ``amp``."""
        return float(self.rows(amp, np.arange(amp_ny)).mean())

    def to_dict(self, amp_ny: int) -> dict:
        return {
            "level_adu": [round(float(v), 4) for v in self.level],
            "drift_d1_d2_adu": [[round(float(a), 4), round(float(b), 4)] for a, b in self.drift],
            "n_read_rows": self.n_read_rows,
            "mean_data_adu": [round(self.mean_data(i, amp_ny), 4) for i in range(len(self.level))],
            "formula": "bias(r) = level + d1*t + d2*t^2, t = r/(n_read_rows-1), r = readout row index",
        }


def draw_bias(rng: np.random.Generator, night_offset: np.ndarray, camera: Camera) -> BiasState:
    cfg = camera.cfg
    lay = camera.instrument.layout
    n = len(camera.bias_nominal)
    level = camera.bias_nominal + night_offset + rng.normal(0, cfg.bias_frame_sigma_adu, n)
    drift = rng.normal(0, cfg.bias_drift_adu, (n, 2)) if cfg.enabled("bias_drift") else np.zeros((n, 2))
    return BiasState(level=level, drift=drift, n_read_rows=lay.amp_ny + lay.overscan_y)


def read_rows_of(sec: AmpSection, lay, raw_rows: np.ndarray, layout: str) -> np.ndarray:
    """Readout row index of raw-frame rows ``raw_rows`` inside amplifier block ``sec``."""
    if layout == "archived":
        local = raw_rows - sec.active[0].start
        return (lay.amp_ny - 1 - local) if sec.read_flip_y else local
    by = lay.amp_ny + lay.overscan_y
    y0 = sec.iy * by
    local = raw_rows - y0
    return (by - 1 - local) if sec.read_flip_y else local


# ----------------------------------------------------------------------------- noise & transients
def _poisson(rng: np.random.Generator, lam: np.ndarray, threshold: float) -> np.ndarray:
    hi = lam >= threshold
    nhi = int(np.count_nonzero(hi))
    if nhi == 0:
        return rng.poisson(lam).astype(np.float32)
    if nhi == lam.size:
        out = rng.standard_normal(lam.shape, dtype=np.float32)
        out *= np.sqrt(lam)
        out += lam
        return out
    out = np.empty_like(lam)
    lo = ~hi
    out[lo] = rng.poisson(lam[lo])
    lh = lam[hi]
    out[hi] = lh + np.sqrt(lh) * rng.standard_normal(nhi, dtype=np.float32)
    return out


def photon_stage(img: np.ndarray, *, camera: Camera, seed_key: tuple[int, ...], seed: int, signal_scale: float,
                 additive_sky: float, fringe: np.ndarray | None, dark_time: float, illum: bool,
                 threads: int = 2) -> None:
    """Turn ``img`` (expected object e- at flat = 1) into detected electrons with noise, in place.

    expected = flat * (additive_sky * (1 + fringe) + img * signal_scale) [* illum_dome] + dark_rate * dark_time
    """
    lay = camera.instrument.layout
    cfg = camera.cfg
    noise = cfg.enabled("photon_noise")
    flat = camera.flat_sky
    illum_map = camera.illum_dome if illum else None

    def work(k: int) -> None:
        iy, ix = divmod(k, lay.n_amp_x)
        sl = (slice(iy * lay.amp_ny, (iy + 1) * lay.amp_ny), slice(ix * lay.amp_nx, (ix + 1) * lay.amp_nx))
        lam = img[sl]
        if signal_scale != 1.0:
            lam *= np.float32(signal_scale)
        if additive_sky:
            if fringe is not None:
                lam += np.float32(additive_sky) * (np.float32(1.0) + fringe[sl])
            else:
                lam += np.float32(additive_sky)
        lam *= flat[sl]
        if illum_map is not None:
            lam *= illum_map[sl]
        if dark_time > 0:
            lam += camera.dark_rate[sl] * np.float32(dark_time)
        np.maximum(lam, 0, out=lam)
        if noise:
            rng = rngmod.rng_for(seed, *seed_key, 100 + k)
            img[sl] = _poisson(rng, lam, cfg.poisson_gaussian_above)

    n = lay.n_amp_x * lay.n_amp_y
    if threads > 1:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, range(n)))
    else:
        for k in range(n):
            work(k)


@dataclass
class PixelList:
    """Sparse deposit: 0-based pixel coordinates and e- (plus an event id)."""

    x: np.ndarray
    y: np.ndarray
    e: np.ndarray
    id: np.ndarray

    @classmethod
    def empty(cls) -> "PixelList":
        return cls(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.int32))

    def add_to(self, img: np.ndarray) -> None:
        np.add.at(img, (self.y, self.x), self.e)


def cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], *, exposure_s: float, cfg: SimConfig,
                pixel_um: float) -> PixelList:
    """Cosmic-ray hits for an exposure of ``exposure_s`` seconds: straight tracks, bilinear charge sharing."""
    ny, nx = shape
    area_cm2 = nx * ny * (pixel_um * 1e-4) ** 2
    n = int(rng.poisson(cfg.cosmic_rate * area_cm2 * exposure_s / 60.0))
    if n == 0:
        return PixelList.empty()
    cos_t = rng.random(n) ** 0.25  # p(cos) ~ cos^3 (muons through a horizontal surface)
    cos_t = np.clip(cos_t, 0.05, 1.0)
    tan_t = np.sqrt(1 - cos_t ** 2) / cos_t
    length = np.minimum(cfg.depletion_um * tan_t / pixel_um, 150.0)
    total = cfg.cosmic_e_per_um * cfg.depletion_um / cos_t * np.exp(rng.normal(0, 0.35, n))
    x0 = rng.uniform(0, nx - 1, n)
    y0 = rng.uniform(0, ny - 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    npts = np.maximum(1, np.ceil(length * 4).astype(int))
    ev = np.repeat(np.arange(n), npts)
    frac = (np.arange(npts.sum()) - np.repeat(np.cumsum(npts) - npts, npts) + 0.5) / np.repeat(npts, npts)
    px = x0[ev] + (frac - 0.5) * length[ev] * np.cos(phi[ev])
    py = y0[ev] + (frac - 0.5) * length[ev] * np.sin(phi[ev])
    q = total[ev] / npts[ev]
    xs, ys, es, ids = [], [], [], []
    fx, fy = np.floor(px), np.floor(py)
    wx, wy = px - fx, py - fy
    for dx, dy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xs.append(fx + dx)
        ys.append(fy + dy)
        es.append(q * w)
        ids.append(ev)
    xs = np.concatenate(xs).astype(np.int64)
    ys = np.concatenate(ys).astype(np.int64)
    es = np.concatenate(es)
    ids = np.concatenate(ids)
    ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny) & (es > 0)
    lin = ys[ok] * nx + xs[ok]
    uniq, inv = np.unique(lin, return_inverse=True)
    e = np.bincount(inv, weights=es[ok])
    first_id = np.zeros(len(uniq), np.int64)
    first_id[inv[::-1]] = ids[ok][::-1]
    return PixelList((uniq % nx).astype(np.int32), (uniq // nx).astype(np.int32), e.astype(np.float32),
                     first_id.astype(np.int32))


def satellite_trail(rng: np.random.Generator, shape: tuple[int, int], *, sigma_px: float,
                    flux_range: tuple[float, float],
                    sigma_range: tuple[float, float] | None = None) -> tuple[PixelList, dict]:
    """A straight trail across the frame (Gaussian cross-section); returns its pixels (e-) and parameters.

    ``sigma_px`` is the Gaussian sigma of the cross profile (a focused satellite: the PSF's); with ``sigma_range``
    (pixels) the sigma is drawn log-uniformly in that range instead (aircraft, defocused satellites).
    """
    ny, nx = shape
    x0, y0 = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
    phi = rng.uniform(0, np.pi)
    lo, hi = flux_range
    line_flux = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
    if sigma_range is not None:
        slo, shi = (float(v) for v in sigma_range)
        sigma_px = float(np.exp(rng.uniform(math.log(slo), math.log(shi)))) if shi > slo else slo
    c, s = math.cos(phi), math.sin(phi)
    half = int(math.ceil(5 * sigma_px / max(abs(c), abs(s)))) + 1
    if abs(c) >= abs(s):  # mostly along x: one column at a time
        xa = np.arange(nx)
        yc = y0 + (xa - x0) * s / c
        off = np.arange(-half, half + 1)
        X = np.repeat(xa, len(off))
        Y = (np.floor(yc + 0.5).astype(int)[:, None] + off[None, :]).ravel()
        d = (Y - np.repeat(yc, len(off))) * abs(c)
    else:
        ya = np.arange(ny)
        xc = x0 + (ya - y0) * c / s
        off = np.arange(-half, half + 1)
        Y = np.repeat(ya, len(off))
        X = (np.floor(xc + 0.5).astype(int)[:, None] + off[None, :]).ravel()
        d = (X - np.repeat(xc, len(off))) * abs(s)
    val = line_flux * np.exp(-0.5 * (d / sigma_px) ** 2) / (sigma_px * math.sqrt(2 * math.pi))
    ok = (X >= 0) & (X < nx) & (Y >= 0) & (Y < ny) & (val >= 0.05)
    pl = PixelList(X[ok].astype(np.int32), Y[ok].astype(np.int32), val[ok].astype(np.float32),
                   np.zeros(int(ok.sum()), np.int32))
    return pl, {"x0": float(x0), "y0": float(y0), "angle_deg": math.degrees(phi), "line_flux_e_per_px": line_flux,
                "sigma_px": float(sigma_px)}


def bleed(img: np.ndarray, full_well_rows: np.ndarray, amp_nx: int) -> PixelList:
    """Spread charge above full well along columns (half up, half down), in place.

    ``full_well_rows`` has shape (n_amp_y, n_amp_x) of full wells (e-) by amplifier. Returns the
    pixels that received bled charge (``e`` = charge received). Charge reaching an edge is lost.
    """
    ny, nx = img.shape
    n_amp_y = full_well_rows.shape[0]
    amp_ny = ny // n_amp_y
    fw_min = float(full_well_rows.min())
    cols = np.flatnonzero((img > fw_min).any(axis=0))
    xs, ys, es = [], [], []
    for x in cols:
        ix = min(x // amp_nx, full_well_rows.shape[1] - 1)
        fw = np.repeat(full_well_rows[:, ix], amp_ny).astype(np.float64)
        v = img[:, x].astype(np.float64)
        before = v.copy()
        over = np.flatnonzero(v > fw)
        if over.size == 0:
            continue
        runs = np.split(over, np.flatnonzero(np.diff(over) > 1) + 1)
        for run in runs:
            a, b = run[0], run[-1]
            excess = float((v[a:b + 1] - fw[a:b + 1]).sum())
            if excess <= 0:
                continue
            v[a:b + 1] = np.minimum(v[a:b + 1], fw[a:b + 1])
            for seg_idx in (np.arange(b + 1, ny), np.arange(a - 1, -1, -1)):
                amount = excess / 2
                if seg_idx.size == 0:
                    continue
                cap = np.maximum(fw[seg_idx] - v[seg_idx], 0.0)
                cum = np.cumsum(cap)
                k = int(np.searchsorted(cum, amount))
                full = seg_idx[:k]
                v[full] = np.maximum(v[full], fw[full])
                if k < seg_idx.size:
                    v[seg_idx[k]] += amount - (cum[k - 1] if k > 0 else 0.0)
        gain = v - before
        got = np.flatnonzero(gain > 0)
        img[:, x] = v.astype(np.float32)
        xs.append(np.full(got.size, x, np.int32))
        ys.append(got.astype(np.int32))
        es.append(gain[got].astype(np.float32))
    if not xs:
        return PixelList.empty()
    xs_a = np.concatenate(xs)
    return PixelList(xs_a, np.concatenate(ys), np.concatenate(es), np.zeros(len(xs_a), np.int32))


# ----------------------------------------------------------------------------- readout
def readout(img: np.ndarray | None, *, camera: Camera, bias: BiasState, layout: str, seed: int,
            seed_key: tuple[int, ...], threads: int = 2) -> np.ndarray:
    """Read the electron image ``img`` (None: no signal) into a uint16 raw frame of ``layout``."""
    inst = camera.instrument
    lay = inst.layout
    cfg = camera.cfg
    secs = inst.amp_sections(layout)
    raw = np.empty(inst.raw_shape(layout), np.uint16)
    adc_max = float(inst.adc_max)
    by, bx = lay.block_shape if layout == "readout" else (lay.amp_ny, lay.amp_nx)
    xt_src = _crosstalk_sources(img, camera, secs, adc_max) if img is not None else None

    def work(sec: AmpSection) -> None:
        k = sec.index
        y0 = sec.iy * by
        x0 = sec.ix * bx
        rows = np.arange(y0, y0 + by)
        block = np.empty((by, bx), np.float32)
        if cfg.enabled("read_noise"):
            rng = rngmod.rng_for(seed, *seed_key, 200 + k)
            block[:] = rng.standard_normal((by, bx), dtype=np.float32)
            block *= np.float32(camera.read_noise_e[k] / camera.gains[k])
        else:
            block[:] = 0
        block += bias.rows(k, read_rows_of(sec, lay, rows, layout)).astype(np.float32)[:, None]
        dsl = (slice(sec.data[0].start - y0, sec.data[0].stop - y0), slice(sec.data[1].start - x0, sec.data[1].stop - x0))
        if img is not None:
            block[dsl] += _measured(img, camera, sec) if xt_src is None else xt_src[k][0]
            if xt_src is not None:
                for i, other in enumerate(secs):
                    c = camera.crosstalk[k, other.index]
                    if other.index != k and c != 0.0:
                        block[dsl] += np.float32(c) * _reorient(xt_src[i][1], other, sec)
        if camera.bias_structure is not None:
            block[dsl] += camera.bias_structure[sec.active]
        if cfg.bias_column_jitter_adu > 0:  # column offsets of this frame: data and parallel overscan rows alike
            crng = rngmod.rng_for(seed, *seed_key, 300 + k)
            block += crng.normal(0, cfg.bias_column_jitter_adu, bx).astype(np.float32)[None, :]
        np.rint(block, out=block)
        np.clip(block, 0, adc_max, out=block)
        raw[y0:y0 + by, x0:x0 + bx] = block

    if threads > 1:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, secs))
    else:
        for s in secs:
            work(s)
    return raw


def _measured(img: np.ndarray, camera: Camera, sec: AmpSection) -> np.ndarray:
    """The measured (non-linear) signal in ADU of amplifier ``sec`` of the electron image (float32)."""
    k = sec.index
    lin = img[sec.active] / np.float32(camera.gains[k])
    if camera.nl_power is not None:
        a, p = camera.nl_power[k]
        if a:
            return lin * (np.float32(1.0) - np.float32(a) * np.power(np.maximum(lin, 0) / np.float32(NL_REFERENCE_ADU),
                                                                     np.float32(p)))
        return lin
    c2, c3 = camera.nonlinearity[k]
    if c2 or c3:
        lin = lin + lin * lin * (np.float32(c2) + np.float32(c3) * lin)
    return lin


def _reorient(block: np.ndarray, src: AmpSection, dst: AmpSection) -> np.ndarray:
    """Amplifier ``src``'s block (assembled orientation) at the same readout positions of amplifier ``dst``."""
    out = block
    if src.read_flip_x != dst.read_flip_x:
        out = out[:, ::-1]
    if src.read_flip_y != dst.read_flip_y:
        out = out[::-1, :]
    return out


def _crosstalk_sources(img: np.ndarray, camera: Camera, secs: list[AmpSection], adc_max: float) -> list | None:
    """Per amplifier ``(measured ADU, crosstalk source)``: the source is the measured signal clipped where the
    video chain saturates (``adc_max - bias``); ``None`` without crosstalk."""
    if camera.crosstalk is None or len(secs) < 2:
        return None
    out = []
    for sec in secs:
        meas = _measured(img, camera, sec)
        cap = np.float32(adc_max - camera.bias_nominal[sec.index])
        out.append((meas, np.minimum(meas, cap)))
    return out
