"""The reduce step removes the instrument signature with every option of the shared ISR configuration, exactly as
the master steps do (science frames processed like the masters they are calibrated with)."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from upad.calib import steps as calib_steps
from upad.calib.config import MasterDarkConfig
from upad.flow.step import ResolvedInput, Task
from upad.instruments import get_instrument
from upad.isr import IsrConfig, IsrOptions, run_isr
from upad.reduce import steps as reduce_steps
from upad.reduce.steps import ReduceConfig

INST = get_instrument("mini")

#: Every ISR parameter away from its default.
ISR = IsrConfig(overscan="rows", overscan_order=2, overscan_smooth=7, overscan_skip=3, linearize=False,
                saturation_adu=60000.0, engine="numpy")


class _Stop(Exception):
    """Raised by the spy once the ISR has run: the rest of the step is not needed."""


def _raw(path, seed: int) -> np.ndarray:
    """A raw frame of the mini camera: bias drifting along the rows (overscan and data), sky, noise."""
    rng = np.random.default_rng(seed)
    shape = INST.raw_shape("readout")
    rows = np.arange(shape[0])[:, None]
    data = 1000.0 + 8.0 * np.sin(rows / 40.0) + rng.normal(0.0, 5.0, shape)
    for sec in INST.amp_sections("readout"):
        data[sec.data] += 3000.0 + rng.normal(0.0, 50.0, data[sec.data].shape)
    raw = np.clip(np.rint(data), 0, 65535).astype(np.uint16)
    hdr = fits.Header({"EXPTIME": 30.0, "FILTER": "rSDSS", "OBJECT": "test"})
    fits.PrimaryHDU(raw, header=hdr).writeto(path)
    return raw


def _frame(path, i: int, *, obs_type: str) -> ResolvedInput:
    return ResolvedInput("frame", i, "raw", (str(path),),
                         {"filename": path.name, "instrument": "mini", "layout": "readout", "read_mode": "MODE_5",
                          "exptime": 30.0, "date_obs": f"2024-03-01T0{i}:00:00", "obs_type": obs_type})


def _task(step: str, config: dict, inputs: tuple, tmp_path) -> Task:
    return Task(step=step, job_id=1, attempt_id=1, provenance_id="e" * 64, unit_key=f"{step}/unit",
                context={"night": "2024-03-01", "instrument": "mini", "layout": "readout", "read_mode": "MODE_5"},
                config=config, inputs=inputs, root=str(tmp_path), staging=str(tmp_path / f"staging-{step}"))


def test_science_frames_use_the_masters_isr_options(tmp_path, monkeypatch):
    seen: dict[str, tuple[IsrOptions, object]] = {}

    def spy(step):
        def run(raw, inst, *, layout, options, **kwargs):
            seen[step] = (options, run_isr(raw, inst, layout=layout, options=options, **kwargs))
            raise _Stop
        return run

    monkeypatch.setattr(reduce_steps, "run_isr", spy("reduce"))
    monkeypatch.setattr(calib_steps, "run_isr", spy("master_dark"))

    science = tmp_path / "science.fits"
    raw = _raw(science, seed=1)
    # the configurations as the scheduler sends them to a worker (plain mappings, the ISR a nested one)
    task = _task("reduce", ReduceConfig(isr=ISR).as_dict(), (_frame(science, 1, obs_type="science"),), tmp_path)
    with pytest.raises(_Stop):
        reduce_steps.Reduce().run(task)

    bias = tmp_path / "master_bias.fits"
    shape = INST.layout.active_shape
    fits.HDUList([fits.PrimaryHDU(np.zeros(shape, np.float32)),
                  fits.ImageHDU(np.ones(shape, np.float32), name="ERR")]).writeto(bias)
    darks = []
    for i in range(3):
        _raw(tmp_path / f"dark{i}.fits", seed=10 + i)
        darks.append(_frame(tmp_path / f"dark{i}.fits", i + 2, obs_type="dark"))
    bias_in = ResolvedInput("product", 9, "bias", (str(bias),), {"file_roles": ["master"]})
    task = _task("master_dark", MasterDarkConfig(isr=ISR).as_dict(), (bias_in, *darks), tmp_path)
    with pytest.raises(_Stop):
        calib_steps.MasterDark().run(task)

    expected = IsrOptions(overscan="rows", overscan_order=2, overscan_smooth=7, overscan_skip=3, linearize=False,
                          to_electrons=True, saturation_adu=60000.0, engine="numpy")
    assert seen["reduce"][0] == seen["master_dark"][0] == expected == ISR.options()
    # the reduce step's pixels are those of the ISR called with these options, and differ from the defaults'
    want = run_isr(raw, INST, layout="readout", options=expected)
    got = seen["reduce"][1]
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.saturated, want.saturated)
    default = run_isr(raw, INST, layout="readout", options=IsrOptions(engine="numpy"))
    assert np.abs(default.image - want.image).max() > 0.5


def test_isr_configuration_from_a_nested_table():
    cfg = ReduceConfig.from_mapping({"isr": {"overscan": "mean", "overscan_skip": 2}}, where="steps.reduce")
    assert cfg.isr == IsrConfig(overscan="mean", overscan_skip=2)
    assert ReduceConfig.from_mapping(cfg.as_dict()) == cfg
    assert MasterDarkConfig.from_mapping({"isr": ISR}).isr is ISR
    assert cfg.isr.options(to_electrons=False, linearize=False) == IsrOptions(
        overscan="mean", overscan_skip=2, linearize=False, to_electrons=False)
    from upad.errors import UpadError

    with pytest.raises(UpadError, match="overscan_smooth"):
        ReduceConfig.from_mapping({"isr": {"overscan_smooth": 0}})
    with pytest.raises(UpadError, match="unknown parameter"):
        MasterDarkConfig.from_mapping({"isr": {"overscan_method": "rows"}})
    assert "overscan" not in {f for f in ReduceConfig.__dataclass_fields__}  # one place: cfg.isr
