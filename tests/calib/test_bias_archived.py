"""The master-bias step on the archived (trimmed, no overscan) layout: the master is the bias pattern itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from upad.calib.steps import MasterBias
from upad.flow.step import ResolvedInput, Task
from upad.sim.truth import load_manifest, read_map

from .helpers import INST


@pytest.fixture(scope="module")
def archived_biases(tmp_path_factory):
    from upad.sim import SimConfig, simulate

    out = tmp_path_factory.mktemp("archived")
    cfg = SimConfig(n_bias=7, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_ptc_pairs=0, n_linearity_flats=0, workers=1)
    res = simulate("mini", seed=5, out=out, tiles=0, layout="archived", compress=False, config=cfg)
    return out, res


def test_master_bias_recovers_the_bias_pattern_without_overscan(archived_biases, tmp_path):
    out, res = archived_biases
    frames = res.of_kind("bias")
    inputs = tuple(ResolvedInput("frame", i + 1, "raw", (str(out / f["file"]),),
                                 {"filename": Path(f["file"]).name, "instrument": "mini", "layout": "archived",
                                  "date_obs": f["date_obs"], "exptime": 0.0})
                   for i, f in enumerate(frames))
    night = frames[0]["night"]
    task = Task(step="master_bias", job_id=1, attempt_id=1, provenance_id="f" * 64,
                unit_key=f"mini/MODE_5/archived/{night}",
                context={"night": night, "instrument": "mini", "layout": "archived", "read_mode": "MODE_5"},
                config=MasterBias().make_config().as_dict(), inputs=inputs, root=str(tmp_path),
                staging=str(tmp_path / "staging"))
    output = MasterBias().run(task)
    assert output.meta["n_used"] == 7 and not output.meta["overscan_corrected"]
    master = fits.getdata(output.files[0].staged).astype(np.float64)
    # the truth: the mean over the frames of the bias of every readout row (level + drift), per amplifier
    lay = INST.layout
    truth = np.zeros_like(master)
    for f in frames:
        bias_rows = fits.getdata(out / f["truth"], "BIAS").astype(np.float64)  # (amplifier, readout row)
        for sec in INST.amp_sections("archived"):
            local = np.arange(lay.amp_ny)
            rr = lay.amp_ny - 1 - local if sec.read_flip_y else local
            truth[sec.active] += bias_rows[sec.index, rr][:, None] / len(frames)
    maps = load_manifest(out)["camera"]["maps"]
    if "bias_structure" in maps:  # the drawn signature's fixed bias structure is part of the bias
        truth += read_map(out / maps["bias_structure"]).astype(np.float64)
    resid = master - truth
    rn_adu = np.array(output.meta["read_noise_adu"])
    for sec in INST.amp_sections("archived"):
        expected = rn_adu[sec.index] / np.sqrt(7)
        assert resid[sec.active].std() == pytest.approx(expected, rel=0.05)
        # row by row the pattern (level and drift along the readout) is recovered to the noise of a row
        rows = resid[sec.active].mean(axis=1)
        assert rows.std() < 2 * expected / np.sqrt(lay.amp_nx) + 0.01
        assert abs(resid[sec.active].mean()) < 0.05
    assert np.ptp(truth) > 5  # there is a pattern: levels differ by amplifier and drift along the rows
