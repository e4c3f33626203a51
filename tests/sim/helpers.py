"""Ideal calibration with the *truth* patterns (deliberately independent of the pipeline)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from upad.instruments import get_instrument
from upad.sim.truth import read_map


def read_raw(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path) as hd:
        hdu = hd[1] if len(hd) > 1 else hd[0]
        return np.asarray(hdu.data, dtype=np.float64), hdu.header


def invert_nonlinearity(meas: np.ndarray, c2: float, c3: float) -> np.ndarray:
    """Solve meas = lin + c2 lin^2 + c3 lin^3 for lin (Newton)."""
    lin = meas.copy()
    for _ in range(6):
        f = lin + c2 * lin ** 2 + c3 * lin ** 3 - meas
        lin -= f / (1 + 2 * c2 * lin + 3 * c3 * lin ** 2)
    return lin


def invert_power_law(meas: np.ndarray, a: float, p: float, L: float) -> np.ndarray:
    """Solve meas = lin (1 - a (lin/L)^p) for lin (Newton): the drawn signature's non-linearity."""
    lin = np.asarray(meas, np.float64).copy()
    for _ in range(8):
        q = a * np.power(np.maximum(lin, 0.0) / L, p)
        lin -= (lin * (1 - q) - meas) / (1 - (p + 1) * q)
    return lin


def linearize(meas: np.ndarray, camera: dict, amp: int) -> np.ndarray:
    """The true linear signal (ADU) of a bias-subtracted measurement in amplifier ``amp``, whichever form of
    non-linearity the camera has (the instrument file's cubic or the drawn signature's power law)."""
    sig = camera.get("signature", {})
    if sig.get("drawn"):
        a, p = sig["nonlinearity_a_p"][amp]
        return invert_power_law(meas, a, p, sig["nonlinearity_L_adu"])
    c2, c3 = camera["nonlinearity_c2_c3"][amp]
    return invert_nonlinearity(meas, c2, c3)


def nonlinear_deviation(lin: float, camera: dict, amp: int) -> float:
    """measured / linear - 1 at the linear level ``lin`` (ADU) in amplifier ``amp``."""
    sig = camera.get("signature", {})
    if sig.get("drawn"):
        a, p = sig["nonlinearity_a_p"][amp]
        return -a * (lin / sig["nonlinearity_L_adu"]) ** p
    c2, c3 = camera["nonlinearity_c2_c3"][amp]
    return c2 * lin + c3 * lin ** 2


def electrons(out: Path, manifest: dict, rec: dict, *, bias_from: str = "truth") -> np.ndarray:
    """Assembled image in e- at flat = 1: bias removed (truth rows or serial overscan), NL inverted, x true gain,
    divided by the truth sky flat."""
    inst = get_instrument(manifest["instrument"])
    lay = inst.layout
    raw, _ = read_raw(out / rec["file"])
    cam = manifest["camera"]
    flat = read_map(out / cam["maps"]["flat_sky"]).astype(np.float64)
    img = np.zeros(lay.active_shape)
    with fits.open(out / rec["truth"]) as hd:
        bias_rows = np.asarray(hd["BIAS"].data, dtype=np.float64)
    for sec in inst.amp_sections(manifest["layout"]):
        k = sec.index
        data = raw[sec.data]
        if bias_from == "overscan":
            b = raw[sec.overscan_x].mean(axis=1)[:, None]
        else:
            ny = data.shape[0]
            local = np.arange(ny)
            r = (ny - 1 - local) if sec.read_flip_y else local
            b = bias_rows[k, r][:, None]
        lin = linearize(data - b, cam, k)
        img[sec.active] = lin * cam["gain_true_e_per_adu"][k]
    return img / flat
