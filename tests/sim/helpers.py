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
        c2, c3 = cam["nonlinearity_c2_c3"][k]
        lin = invert_nonlinearity(data - b, c2, c3)
        img[sec.active] = lin * cam["gain_true_e_per_adu"][k]
    return img / flat
