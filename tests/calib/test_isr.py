"""ISR primitives on small synthetic frames of the mini camera (both raw layouts)."""
from __future__ import annotations

import numpy as np
import pytest

from upad.instruments import get_instrument
from upad import isr

INST = get_instrument("mini")


def synthetic_raw(layout: str, *, signal: np.ndarray, bias_rows=None, gains=None, nonlin=None, noise=0.0, seed=0):
    """A raw frame: per amplifier, ``bias(readout row) + f(signal / gain)`` in data; the same bias in overscans."""
    rng = np.random.default_rng(seed)
    raw = np.zeros(INST.raw_shape(layout), np.float64)
    for sec in INST.amp_sections(layout):
        g = (gains or [a.gain for a in INST.detectors[0].amplifiers])[sec.index]
        lin = signal[sec.active] / g
        if nonlin is not None:
            c2, c3 = nonlin[sec.index]
            lin = lin + c2 * lin ** 2 + c3 * lin ** 3
        if layout == "readout":
            by, bx = INST.layout.block_shape
            y0, x0 = sec.iy * by, sec.ix * bx
            rows = np.arange(by)
            level = bias_rows(sec.index, rows[::-1] if sec.read_flip_y else rows) if bias_rows else 1000.0
            raw[y0:y0 + by, x0:x0 + bx] = np.asarray(level)[:, None] if np.ndim(level) else level
        else:
            raw[sec.data] = 1000.0
        raw[sec.data] += lin
    raw += noise * rng.standard_normal(raw.shape)
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)


def test_overscan_profiles():
    rows = np.arange(600)
    truth = 1000 + 3 * (rows / 599) - 2 * (rows / 599) ** 2
    rng = np.random.default_rng(1)
    strip = truth[:, None] + rng.normal(0, 4, (600, 20))
    poly = isr.overscan_profile(strip, method="poly", order=2)
    assert np.abs(poly - truth).max() < 0.5
    smooth = isr.overscan_profile(strip, method="rows", smooth_rows=41)
    assert np.std(smooth - truth) < 0.5 and np.std(isr.overscan_profile(strip, method="rows", smooth_rows=1) - truth) > 0.6
    const = isr.overscan_profile(strip, method="mean")
    assert np.ptp(const) == 0 and abs(const[0] - np.median(truth)) < 0.5
    strip[100:105] += 5000  # a glitch does not pull the polynomial
    assert np.abs(isr.overscan_profile(strip, method="poly", order=2) - truth)[200:].max() < 0.5
    with pytest.raises(ValueError, match="unknown overscan method"):
        isr.overscan_profile(strip, method="spline")


@pytest.mark.parametrize("layout", ["readout", "archived"])
def test_assembly_puts_every_amplifier_in_place(layout):
    ny, nx = INST.layout.active_shape
    signal = (np.arange(ny)[:, None] * 10 + np.arange(nx)[None, :] % 7).astype(np.float64) + 100
    drift = lambda k, r: 1000 + 50 * k + 4 * r / 527.0
    raw = synthetic_raw(layout, signal=signal, bias_rows=drift if layout == "readout" else None, gains=[1, 1, 1, 1])
    opts = isr.IsrOptions(overscan="poly", overscan_order=1, linearize=False, to_electrons=False)
    img, levels = isr.assemble(raw, INST.amp_sections(layout), options=opts)
    assert img.dtype == np.float32 and img.shape == (ny, nx)
    if layout == "readout":
        assert levels is not None and len(levels) == 4
        np.testing.assert_allclose(img, signal, atol=0.6)  # data rows only: rounding of the raw values
        assert levels[1] - levels[0] == pytest.approx(50, abs=0.5)
    else:
        assert levels is None
        np.testing.assert_allclose(img, signal + 1000, atol=0.6)


def test_linearity_inversion_is_accurate():
    coeffs = [a.nonlinearity for a in INST.detectors[0].amplifiers]
    ny, nx = INST.layout.active_shape
    lin = np.linspace(0, 62000, ny * nx).reshape(ny, nx)
    meas = np.empty_like(lin)
    for sec in INST.amp_sections("archived"):
        c2, c3 = coeffs[sec.index]
        x = lin[sec.active]
        meas[sec.active] = x + c2 * x ** 2 + c3 * x ** 3
    img = meas.astype(np.float32)
    assert np.abs(img - lin).max() > 100  # the effect is large at the top of the range
    isr.linearize(img, INST.amp_sections("archived"), coeffs)
    assert np.abs(img - lin).max() < 0.02  # ADU, float32 precision


def test_full_chain_in_electrons_with_saturation():
    ny, nx = INST.layout.active_shape
    nonlin = [a.nonlinearity for a in INST.detectors[0].amplifiers]
    flat = np.ones((ny, nx), np.float32)
    flat[:, :300] = 0.9
    flat[5, 5] = 0.0
    dark = np.full((ny, nx), 0.5, np.float32)
    electrons = 5000.0 * flat + dark * 100
    electrons[10, 10] = 2e5  # saturates the ADC
    raw = synthetic_raw("readout", signal=electrons, nonlin=nonlin, bias_rows=lambda k, r: 1100 + 0 * r)
    res = isr.run_isr(raw, INST, layout="readout", dark=dark, exptime=100.0, flat=flat)
    assert res.unit == "electron" and res.saturated[10, 10] and res.saturated.sum() == 1
    good = np.isfinite(res.image) & ~res.saturated
    assert np.isnan(res.image[5, 5])  # zero flat
    assert np.abs(res.image[good] - 5000).max() < 1.0  # e-, rounding of the raw ADU included
    # the archived layout needs the bias from a master: same answer with the level supplied
    raw_arch = synthetic_raw("archived", signal=electrons, nonlin=nonlin)
    bias = np.full((ny, nx), 1000.0, np.float32)
    res2 = isr.run_isr(raw_arch, INST, layout="archived", bias=bias, dark=dark, exptime=100.0, flat=flat)
    assert "no overscan" in res2.notes[0]
    assert np.abs(res2.image[good] - 5000).max() < 1.0
    with pytest.raises(ValueError, match="does not match the archived layout"):
        isr.run_isr(raw, INST, layout="archived")
    with pytest.raises(ValueError, match="electrons"):
        isr.run_isr(raw, INST, layout="readout", options=isr.IsrOptions(to_electrons=False), dark=dark, exptime=1)


def test_amp_index_map_matches_sections():
    idx = isr.amp_index_map(INST)
    for sec in INST.amp_sections("readout"):
        assert (idx[sec.active] == sec.index).all()
