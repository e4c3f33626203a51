"""The compiled single-pass ISR (``IsrOptions(engine='numba')``) against the numpy primitives run one after the
other, on small random frames of the mini camera (both raw layouts)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from upad.instruments import get_instrument
from upad.isr import core as isr

INST = get_instrument("mini")
SHAPE = INST.layout.active_shape
AMPS = INST.detectors[0].amplifiers
EXPTIME = 30.0

needs_numba = pytest.mark.skipif(not isr.HAVE_NUMBA, reason="numba is not installed")


def make_inputs(layout: str, seed: int = 3) -> dict:
    """Random raw frame (bias ~1000 ADU, signal up to ~50 000 ADU, saturated pixels) and calibration maps with
    non-positive, NaN and infinite flat / illumination pixels."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(990, 1010, INST.raw_shape(layout), dtype=np.uint16)
    for sec in INST.amp_sections(layout):
        raw[sec.data] += rng.integers(0, 50000, raw[sec.data].shape, dtype=np.uint16)
    raw[rng.integers(0, raw.shape[0], 20), rng.integers(0, raw.shape[1], 20)] = 65535
    bias = rng.normal(0.0, 3.0, SHAPE).astype(np.float32)
    dark = rng.uniform(0.0, 0.05, SHAPE).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, SHAPE).astype(np.float32)
    flat.flat[rng.integers(0, flat.size, 200)] = 0.0
    flat.flat[rng.integers(0, flat.size, 200)] = -0.5
    flat.flat[rng.integers(0, flat.size, 200)] = np.nan
    flat.flat[rng.integers(0, flat.size, 50)] = np.inf
    illum = rng.uniform(0.9, 1.1, SHAPE).astype(np.float32)
    illum.flat[rng.integers(0, illum.size, 100)] = 0.0
    illum.flat[rng.integers(0, illum.size, 100)] = -1.0
    illum.flat[rng.integers(0, illum.size, 100)] = np.nan
    return {"raw": raw, "bias": bias, "dark": dark, "flat": flat, "illumination": illum}


def reference(raw, layout, options, *, bias=None, dark=None, flat=None, illumination=None, exptime=EXPTIME):
    """The numpy primitives in the documented order (independently of run_isr)."""
    sections = INST.amp_sections(layout)
    image, levels = isr.assemble(raw, sections, options=options)
    if bias is not None:
        image -= np.asarray(bias, np.float32)
    if options.linearize:
        isr.linearize(image, sections, [a.nonlinearity for a in AMPS])
    if options.to_electrons:
        isr.apply_gain(image, sections, [a.gain for a in AMPS])
    if dark is not None:
        isr.subtract_dark(image, dark, exptime)
    if flat is not None:
        isr.divide_flat(image, flat)
    if illumination is not None:
        isr.divide_flat(image, illumination)
    return image, levels


def assert_same_image(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, equal_nan=True)


CASES = {
    "all": {},
    "no bias": {"bias": None},
    "no dark": {"dark": None},
    "no flat": {"flat": None},
    "no illumination": {"illumination": None},
    "nothing": {"bias": None, "dark": None, "flat": None, "illumination": None},
    "no linearity": {"options": {"linearize": False}},
    "adu": {"dark": None, "options": {"to_electrons": False}},
    "adu, no linearity, flat only": {"bias": None, "dark": None, "illumination": None,
                                     "options": {"to_electrons": False, "linearize": False}},
}


@needs_numba
@pytest.mark.parametrize("layout", INST.layout.layouts)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_numpy_primitives(layout, case):
    spec = dict(CASES[case])
    opts = spec.pop("options", {})
    data = make_inputs(layout)
    maps = {k: data[k] for k in ("bias", "dark", "flat", "illumination")}
    maps.update(spec)
    want, want_levels = reference(data["raw"], layout, isr.IsrOptions(**opts), **maps)
    fused = isr.run_isr(data["raw"], INST, layout=layout, options=isr.IsrOptions(engine="numba", **opts),
                        exptime=EXPTIME, **maps)
    numpy_ = isr.run_isr(data["raw"], INST, layout=layout, options=isr.IsrOptions(engine="numpy", **opts),
                         exptime=EXPTIME, **maps)
    assert_same_image(fused.image, want)
    assert_same_image(numpy_.image, want)
    assert fused.overscan_level == want_levels == numpy_.overscan_level
    assert fused.unit == numpy_.unit and fused.notes == numpy_.notes
    np.testing.assert_array_equal(fused.saturated, numpy_.saturated)
    if maps["flat"] is not None:
        assert np.isnan(fused.image[~(np.isfinite(maps["flat"]) & (maps["flat"] > 0))]).all()
    if maps["illumination"] is not None:
        assert np.isnan(fused.image[~(maps["illumination"] > 0)]).all()


@needs_numba
@pytest.mark.parametrize("method", isr.OVERSCAN_METHODS)
def test_fused_overscan_methods(method):
    data = make_inputs("readout", seed=4)
    opts = {"overscan": method, "overscan_order": 2, "overscan_smooth": 5}
    maps = {k: data[k] for k in ("bias", "dark", "flat")}
    want, levels = reference(data["raw"], "readout", isr.IsrOptions(**opts), **maps)
    res = isr.run_isr(data["raw"], INST, layout="readout", options=isr.IsrOptions(engine="numba", **opts),
                      exptime=EXPTIME, **maps)
    assert_same_image(res.image, want)
    assert res.overscan_level == levels


@needs_numba
def test_fused_input_dtypes_and_byte_order():
    """float64 maps are read as they are; big-endian maps and a big-endian raw frame (numpy assembles, the
    compiled pass corrects in place) give the same image; explicit gains / coefficients are honoured."""
    data = make_inputs("readout", seed=5)
    gains = [1.5, 2.0, 2.5, 3.0]
    nonlin = [(-2e-7, 1e-13), (0.0, 0.0), (1e-7,), (-1e-7, 0.0)]
    kw = {"exptime": EXPTIME, "gains": gains, "nonlinearity": nonlin}
    ref = isr.run_isr(data["raw"], INST, layout="readout", options=isr.IsrOptions(engine="numpy"),
                      bias=data["bias"], dark=data["dark"], flat=data["flat"], illumination=data["illumination"],
                      **kw)
    # the reference honours gains and coefficients
    sections = INST.amp_sections("readout")
    img, _ = isr.assemble(data["raw"], sections)
    img -= data["bias"]
    isr.linearize(img, sections, nonlin)
    isr.apply_gain(img, sections, gains)
    isr.subtract_dark(img, data["dark"], EXPTIME)
    isr.divide_flat(img, data["flat"])
    isr.divide_flat(img, data["illumination"])
    assert_same_image(ref.image, img)
    variants = {
        "float64 maps": dict(raw=data["raw"], **{k: data[k].astype(np.float64)
                                                 for k in ("bias", "dark", "flat", "illumination")}),
        "big-endian maps": dict(raw=data["raw"], **{k: data[k].astype(">f4")
                                                    for k in ("bias", "dark", "flat", "illumination")}),
        "big-endian raw": dict(raw=data["raw"].astype(">u2"), bias=data["bias"], dark=data["dark"],
                               flat=data["flat"], illumination=data["illumination"]),
    }
    for name, v in variants.items():
        res = isr.run_isr(v.pop("raw"), INST, layout="readout", options=isr.IsrOptions(engine="numba"), **v, **kw)
        assert_same_image(res.image, ref.image)
        assert res.overscan_level == ref.overscan_level, name


@needs_numba
def test_fused_pass_allocates_only_the_image():
    """The assembled float32 image (and the saturation mask) are the only full-size allocations."""
    data = make_inputs("readout", seed=6)
    kw = dict(layout="readout", bias=data["bias"], dark=data["dark"], exptime=EXPTIME, flat=data["flat"],
              illumination=data["illumination"])
    opts = isr.IsrOptions(engine="numba")
    isr.run_isr(data["raw"], INST, options=opts, **kw)  # compiled / loaded from the cache
    image_bytes = SHAPE[0] * SHAPE[1] * 4
    tracemalloc.start()
    try:
        res = isr.run_isr(data["raw"], INST, options=opts, **kw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.image.nbytes == image_bytes
    # image + boolean mask + overscan strips / profiles (the numpy chain needs several image-sized temporaries)
    assert peak < image_bytes + res.saturated.nbytes + image_bytes // 4


def test_engine_option_and_validation():
    with pytest.raises(ValueError, match="unknown ISR engine"):
        isr.IsrOptions(engine="cuda")
    data = make_inputs("archived", seed=7)
    engines = ["numpy", "numba"] if isr.HAVE_NUMBA else ["numpy"]
    for engine in engines:
        opts = isr.IsrOptions(engine=engine)
        with pytest.raises(ValueError, match="illumination map of shape"):
            isr.run_isr(data["raw"], INST, layout="archived", options=opts, illumination=np.ones((5, 5)))
        with pytest.raises(ValueError, match="flat of shape"):
            isr.run_isr(data["raw"], INST, layout="archived", options=opts, flat=np.ones((5, 5)))
        with pytest.raises(ValueError, match="dark of shape"):
            isr.run_isr(data["raw"], INST, layout="archived", options=opts, dark=np.ones((5, 5)), exptime=1.0)
        with pytest.raises(ValueError, match="master bias of shape"):
            isr.run_isr(data["raw"], INST, layout="archived", options=opts, bias=np.ones((5, 5)))
        # a dark with a zero exposure time is not used (nor checked), as subtract_dark does
        res = isr.run_isr(data["raw"], INST, layout="archived", options=opts, dark=np.ones((5, 5)), exptime=0.0)
        assert res.notes == ["no overscan in the archived layout: the bias level comes from the master bias only",
                             "no bias subtracted: values include the electronic offset"]


def test_numpy_engine_is_used_without_numba(monkeypatch):
    data = make_inputs("archived", seed=8)
    want = isr.run_isr(data["raw"], INST, layout="archived", options=isr.IsrOptions(engine="numpy"),
                       bias=data["bias"], flat=data["flat"])
    monkeypatch.setattr(isr, "HAVE_NUMBA", False)
    got = isr.run_isr(data["raw"], INST, layout="archived", bias=data["bias"], flat=data["flat"])  # engine='auto'
    np.testing.assert_array_equal(got.image, want.image)
    with pytest.raises(RuntimeError, match="numba is not installed"):
        isr.run_isr(data["raw"], INST, layout="archived", options=isr.IsrOptions(engine="numba"))


def test_auto_engine_dispatch(monkeypatch):
    """'auto' runs the compiled pass where numba is installed and the numpy primitives otherwise (the results are
    equal, so the dispatch is checked by making the path not taken raise)."""
    data = make_inputs("archived", seed=9)

    def forbidden(*args, **kwargs):
        raise AssertionError("this engine must not run")

    if isr.HAVE_NUMBA:
        with monkeypatch.context() as m:
            m.setattr(isr, "linearize", forbidden)  # the numpy chain's non-linearity step
            isr.run_isr(data["raw"], INST, layout="archived", bias=data["bias"], flat=data["flat"])
    with monkeypatch.context() as m:
        m.setattr(isr, "HAVE_NUMBA", False)
        m.setattr(isr, "_run_fused", forbidden)
        isr.run_isr(data["raw"], INST, layout="archived", bias=data["bias"], flat=data["flat"])
        m.setattr(isr, "HAVE_NUMBA", True)
        with pytest.raises(AssertionError, match="must not run"):
            isr.run_isr(data["raw"], INST, layout="archived", bias=data["bias"], flat=data["flat"])
