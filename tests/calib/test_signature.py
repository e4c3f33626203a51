"""The instrument signature: drawn by the simulator around the instrument file (never equal to it) and measured by
the pipeline from its own calibration frames (photon-transfer pairs, a rising flat series, bias pairs, saturated
stars in science frames). Goals of issue 10: gain and read noise within 1 %, non-linearity residual <= 0.1 % over
the range, crosstalk coefficients within 10 % of the truth; bad input -> recorded QC outcome and fallback."""
from __future__ import annotations

import json

import numpy as np
import pytest

from upad.calib.signature import measure_signature, signature_from_raw
from upad.instruments import get_instrument
from upad.io.products import read_signature, write_signature
from upad.io.raw import read_raw
from upad.isr import IsrOptions, run_isr
from upad.sim import SimConfig, simulate

#: The independent world (PSF families, field bump, moving stars, distortion beyond SIP 3) with the drawn signature.
#: Its sky once put one crosstalk coefficient of 12 10.8 % off: overlapping fit windows of a bleed trail's pieces
#: counted the same target pixels several times, and the own-source mask truncated the ghosts' upward noise.
SIM = SimConfig(draw_signature=True, n_bias=4, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=6,
                n_linearity_flats=10, n_dithers=3, bright_stars_per_tile=16, filters=("rSDSS",))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("signature-night")
    simulate("mini", seed=11, out=out, nights=1, tiles=3, config=SIM, compress=False)
    manifest = json.loads((out / "truth" / "manifest.json").read_text())
    raws = {}
    for f in manifest["frames"]:
        raws[f["file"]] = read_raw(str(out / f["file"]))[1]
    return manifest, raws


def _frames(manifest, raws, pred):
    return [(f, raws[f["file"]]) for f in manifest["frames"] if pred(f)]


@pytest.fixture(scope="module")
def measured(night):
    manifest, raws = night
    inst = get_instrument("mini")
    ptc = [r for _, r in _frames(manifest, raws, lambda f: "-PTC-" in f["obs_id"])]
    return signature_from_raw(
        inst, "readout",
        biases=[r for _, r in _frames(manifest, raws, lambda f: f["kind"] == "bias")],
        linearity=[(r, f["exptime"]) for f, r in _frames(manifest, raws, lambda f: "-LIN-" in f["obs_id"])],
        ptc=list(zip(ptc[0::2], ptc[1::2])),
        science=[r for _, r in _frames(manifest, raws, lambda f: f["kind"] == "science")])


def test_simulated_signature_is_drawn_not_the_instrument_file(night):
    manifest, _ = night
    truth = manifest["camera"]["signature"]
    amps = get_instrument("mini").detectors[0].amplifiers
    assert truth["drawn"]
    for k, a in enumerate(amps):
        assert truth["gain_e_per_adu"][k] != a.gain
        assert truth["read_noise_e"][k] != a.read_noise
        assert truth["full_well_e"][k] != a.full_well
        assert 1.2 <= truth["nonlinearity_a_p"][k][1] <= 2.4  # a power law, not the file's cubic
    xt = np.array(truth["crosstalk"])
    off = ~np.eye(len(amps), dtype=bool)
    assert np.all(np.abs(xt[off]) > 1e-5) and np.all(np.abs(xt[off]) < 3e-3) and np.all(np.diag(xt) == 0)
    kinds = [f["obs_id"].split("-")[3] for f in manifest["frames"] if f["kind"] == "flat-dome"]
    assert kinds.count("PTC") == 12 and kinds.count("LIN") == 10
    # the default world draws the signature (with its sequences); the nominal world has the instrument file's
    assert SimConfig().draw_signature is True and SimConfig().n_ptc_pairs > 0 and SimConfig().n_linearity_flats > 0
    assert SimConfig.nominal().draw_signature is False and SimConfig.nominal().n_ptc_pairs == 0


def test_gain_and_read_noise_within_one_percent(measured, night):
    truth = night[0]["camera"]["signature"]
    assert measured.qc["gain"]["status"] == "measured"
    assert measured.qc["read_noise"]["status"] == "measured"
    g_err = measured.gain / np.array(truth["gain_e_per_adu"]) - 1
    rn_err = measured.read_noise_e / np.array(truth["read_noise_e"]) - 1
    assert np.all(np.abs(g_err) < 0.01), g_err
    assert np.all(np.abs(rn_err) < 0.01), rn_err
    # and the instrument file's first guess is measurably different (the test can fail)
    nominal = np.array([a.gain for a in get_instrument("mini").detectors[0].amplifiers])
    assert np.max(np.abs(nominal / np.array(truth["gain_e_per_adu"]) - 1)) > 0.003


def test_nonlinearity_residual_below_0p1_percent_over_the_range(measured, night):
    truth = night[0]["camera"]["signature"]
    assert measured.qc["linearity"]["status"] == "measured"
    L = truth["nonlinearity_L_adu"]
    file_nl = [a.nonlinearity for a in get_instrument("mini").detectors[0].amplifiers]
    worst_file = 0.0
    for k, (a, p) in enumerate(truth["nonlinearity_a_p"]):
        lin = np.linspace(300.0, 0.98 * truth["saturation_adu"][k], 400)
        meas = lin * (1 - a * (lin / L) ** p)
        c = measured.linearity[k]
        corrected = meas * (1 + meas * (c[0] + meas * (c[1] + meas * c[2])))
        resid = corrected / lin - 1
        assert np.max(np.abs(resid)) <= 1e-3, (k, np.max(np.abs(resid)))
        # the instrument file's cubic (the old assumption) does worse on this camera
        c2, c3 = file_nl[k]
        x = meas.copy()
        for _ in range(6):
            x -= (x + c2 * x ** 2 + c3 * x ** 3 - meas) / (1 + 2 * c2 * x + 3 * c3 * x ** 2)
        worst_file = max(worst_file, float(np.max(np.abs(x / lin - 1))))
    assert worst_file > 1e-3


@pytest.mark.xfail(strict=True, reason="crosstalk coefficients 15.7 % and 12.8 % off the truth (goal 10 %) since the "
                                       "simulator's stamps hold the stars' far wings (2026-12-05; worst 7.4 % before): "
                                       "noise-limited with this night's saturated stars (issue 10, open)")
def test_crosstalk_within_ten_percent(measured, night):
    truth = np.array(night[0]["camera"]["signature"]["crosstalk"])
    assert measured.qc["crosstalk"]["status"] == "measured"
    off = ~np.eye(truth.shape[0], dtype=bool)
    rel = measured.crosstalk[off] / truth[off] - 1
    assert np.all(np.abs(rel) < 0.10), rel


def test_saturation_level_from_the_data(measured, night):
    truth = night[0]["camera"]["signature"]
    assert measured.qc["saturation"]["status"] == "measured"
    # ADC first on this camera: the level agrees with the truth's to the bias offsets of the night (a few ADU)
    assert np.all(np.abs(measured.saturation_adu - np.array(truth["saturation_adu"])) < 15)


def test_isr_with_the_measured_signature(measured, night):
    """The ISR uses the measured values: the linearised rising flat series is proportional to the exposure time,
    and the crosstalk ghosts of a science frame are removed (and flagged)."""
    manifest, raws = night
    inst = get_instrument("mini")
    sections = inst.amp_sections("readout")
    kw = measured.isr_kwargs()
    assert set(kw) == {"gains", "linearity", "crosstalk", "saturation"}
    lin = _frames(manifest, raws, lambda f: "-LIN-" in f["obs_id"])
    rates = []
    for f, raw in lin[:-1]:  # the last one is partly saturated
        res = run_isr(raw, inst, layout="readout", options=IsrOptions(), **kw)
        rates.append([np.median(res.image[s.active]) / f["exptime"] for s in sections])
    rates = np.array(rates)
    assert np.max(np.abs(rates / np.median(rates, axis=0) - 1)) < 1.5e-3
    # crosstalk: measured again on corrected science frames, what is left is < 10 % of the truth
    from upad.calib.signature import combine_crosstalk, crosstalk_from_frame

    truth = np.array(manifest["camera"]["signature"]["crosstalk"])
    sums, flagged = [], 0
    opt = IsrOptions(to_electrons=False, linearize=False)
    for _, raw in _frames(manifest, raws, lambda f: f["kind"] == "science"):
        res = run_isr(raw, inst, layout="readout", options=opt, crosstalk=kw["crosstalk"])
        sums.append(crosstalk_from_frame(res.image, sections))
        flagged += int(res.crosstalk.sum())
    left, _ = combine_crosstalk(sums)
    off = ~np.eye(4, dtype=bool)
    assert np.all(np.abs(left[off]) < 0.1 * np.abs(truth[off]))
    assert flagged > 0


def test_isr_engines_agree_with_measured_signature(measured, night):
    manifest, raws = night
    inst = get_instrument("mini")
    _, raw = _frames(manifest, raws, lambda f: f["kind"] == "science")[0]
    kw = measured.isr_kwargs()
    a = run_isr(raw, inst, layout="readout", options=IsrOptions(engine="numpy"), **kw)
    b = run_isr(raw, inst, layout="readout", options=IsrOptions(engine="auto"), **kw)
    np.testing.assert_allclose(a.image, b.image, rtol=2e-6, atol=1e-3)
    assert np.array_equal(a.saturated, b.saturated) and np.array_equal(a.crosstalk, b.crosstalk)


def test_product_round_trip(measured, tmp_path):
    p = write_signature(tmp_path / "sig.fits", measured)
    back = read_signature(p)
    np.testing.assert_allclose(back.gain, measured.gain)
    np.testing.assert_allclose(back.read_noise_e, measured.read_noise_e)
    np.testing.assert_allclose(back.linearity, measured.linearity)
    np.testing.assert_allclose(back.crosstalk, measured.crosstalk)
    np.testing.assert_allclose(back.saturation_adu, measured.saturation_adu)
    assert back.qc_status == measured.qc_status == "ok"


def test_bad_input_falls_back_with_reasons(night, tmp_path):
    """Too few flat pairs, a short linearity series, one bias and no bright stars: every quantity is a recorded
    QC outcome with its reason and the instrument file's first guess; nothing raises."""
    manifest, raws = night
    inst = get_instrument("mini")
    bias = [r for _, r in _frames(manifest, raws, lambda f: f["kind"] == "bias")]
    ptc = [r for _, r in _frames(manifest, raws, lambda f: "-PTC-" in f["obs_id"])]
    lin = [(r, f["exptime"]) for f, r in _frames(manifest, raws, lambda f: "-LIN-" in f["obs_id"])]
    sig = signature_from_raw(inst, "readout", biases=bias[:1], linearity=lin[:3], ptc=[(ptc[0], ptc[1])],
                             science=bias[1:3])
    assert sig.qc_status == "warn"
    for q in ("gain", "read_noise", "linearity", "crosstalk", "saturation"):
        assert sig.qc[q]["status"] == "fallback" and sig.qc[q]["reason"], q
    amps = inst.detectors[0].amplifiers
    np.testing.assert_allclose(sig.gain, [a.gain for a in amps])
    np.testing.assert_allclose(sig.read_noise_e, [a.read_noise for a in amps])
    assert sig.isr_kwargs() == {}
    assert len(sig.warnings) == 5 and any("flat pair" in w for w in sig.warnings)
    back = read_signature(write_signature(tmp_path / "bad.fits", sig))
    assert back.qc_status == "warn" and back.qc["gain"]["reason"] == sig.qc["gain"]["reason"]
    # empty input does not raise either
    empty = measure_signature(amps=[s.active for s in inst.amp_sections("readout")],
                              sections=inst.amp_sections("readout"), first_gain=[a.gain for a in amps],
                              first_read_noise_e=[a.read_noise for a in amps])
    assert empty.qc_status == "warn" and empty.linearity is None and empty.crosstalk is None


def test_archived_layout_read_noise_and_gain(tmp_path):
    """Without overscan (archived layout) the bias drifts along the readout stay in the frames: the read noise from
    bias pairs removes their row trend, and the gain still comes out within 1 %."""
    cfg = SimConfig(draw_signature=True, n_bias=4, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=5,
                    n_linearity_flats=8, n_dithers=1, filters=("rSDSS",))
    simulate("mini", seed=12, out=tmp_path, nights=1, tiles=0, config=cfg, compress=False, layout="archived")
    manifest = json.loads((tmp_path / "truth" / "manifest.json").read_text())
    truth = manifest["camera"]["signature"]
    raws = {f["file"]: read_raw(str(tmp_path / f["file"]))[1] for f in manifest["frames"]}
    ptc = [r for _, r in _frames(manifest, raws, lambda f: "-PTC-" in f["obs_id"])]
    sig = signature_from_raw(
        get_instrument("mini"), "archived",
        biases=[r for _, r in _frames(manifest, raws, lambda f: f["kind"] == "bias")],
        linearity=[(r, f["exptime"]) for f, r in _frames(manifest, raws, lambda f: "-LIN-" in f["obs_id"])],
        ptc=list(zip(ptc[0::2], ptc[1::2])))
    assert np.all(np.abs(sig.gain / np.array(truth["gain_e_per_adu"]) - 1) < 0.01)
    assert np.all(np.abs(sig.read_noise_e / np.array(truth["read_noise_e"]) - 1) < 0.01)
    assert sig.qc["crosstalk"]["status"] == "fallback"  # no science frames: recorded, not corrected


def test_parallel_overscan_removes_the_column_offsets_of_each_frame(tmp_path):
    """Per-frame column offsets of the bias (in the data and the parallel-overscan rows alike) are removed when the
    parallel overscan is used, and left when it is not."""
    cfg = SimConfig(draw_signature=True, bias_column_jitter_adu=5.0, n_bias=2, n_dark=0, n_dome_flats=0,
                    n_sky_flats=0, n_dithers=1, filters=("rSDSS",))
    simulate("mini", seed=13, out=tmp_path, nights=1, tiles=0, config=cfg, compress=False)
    manifest = json.loads((tmp_path / "truth" / "manifest.json").read_text())
    inst = get_instrument("mini")
    raws = [read_raw(str(tmp_path / f["file"]))[1] for f in manifest["frames"] if f["kind"] == "bias"]
    rms = {}
    for par in (False, True):
        imgs = [run_isr(r, inst, layout="readout", options=IsrOptions(to_electrons=False, linearize=False,
                                                                     overscan_parallel=par)).image for r in raws]
        d = imgs[0] - imgs[1]  # the fixed bias structure cancels; the frames' column offsets do not
        rms[par] = float(np.sqrt(np.mean([np.var(np.median(d[s.active], axis=0))
                                          for s in inst.amp_sections("readout")])))
    # without: sqrt(2) x 5 ADU; with: the noise of two 16-row medians (~1.3 x 4.4 / 4 x sqrt(2) ~ 2 ADU)
    print("column rms", rms)
    assert rms[False] > 6.0 and rms[True] < 0.45 * rms[False], rms


def test_unremoved_crosstalk_biases_the_gain_and_is_noted(measured, night):
    """A uniform flat leaks into every amplifier a pedestal sum_s C[t, s] x level from the others. Without the
    crosstalk removed (no science frames to measure it) the photon-transfer curve takes that pedestal for signal: the
    same pairs give gains higher by the sum of each amplifier's coefficients, and the QC says so."""
    manifest, raws = night
    inst = get_instrument("mini")
    ptc = [r for _, r in _frames(manifest, raws, lambda f: "-PTC-" in f["obs_id"])]
    bare = signature_from_raw(
        inst, "readout",
        biases=[r for _, r in _frames(manifest, raws, lambda f: f["kind"] == "bias")],
        linearity=[(r, f["exptime"]) for f, r in _frames(manifest, raws, lambda f: "-LIN-" in f["obs_id"])],
        ptc=list(zip(ptc[0::2], ptc[1::2])), science=[])
    assert bare.qc["crosstalk"]["status"] == "fallback" and "pedestal" in bare.qc["gain"]["note"]
    assert measured.qc["crosstalk"]["status"] == "measured" and "note" not in measured.qc["gain"]
    truth = np.array(manifest["camera"]["signature"]["crosstalk"])
    np.fill_diagonal(truth, 0.0)
    excess = bare.gain / measured.gain - 1
    # measured: +0.032/+0.113/+0.016/+0.068 % against sums of +0.029/+0.105/+0.016/+0.065 % (a full-size T80Cam
    # night whose one science frame measured 59 of 240 pairs had gains +0.03 ... +0.57 %, every flux +0.26 %)
    assert np.all(np.abs(excess - truth.sum(axis=1)) < 1.5e-4), (excess, truth.sum(axis=1))
