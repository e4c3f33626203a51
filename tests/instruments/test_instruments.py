import numpy as np
import pytest

from upad.instruments import (available_instruments, fits_to_section, get_filter_system, get_instrument,
                              section_to_fits)


def test_available():
    assert {"t80cam", "jpcam", "mini"} <= set(available_instruments())


@pytest.mark.parametrize("key, readout, archived, n_amp", [
    ("t80cam", (9340, 9648), (9232, 9216), 16),
    ("mini", (1056, 1056), (1024, 1024), 4),
    ("jpcam", (9340, 9648), (9232, 9216), 16),
])
def test_shapes(key, readout, archived, n_amp):
    inst = get_instrument(key)
    assert inst.raw_shape("readout") == readout
    assert inst.raw_shape("archived") == archived
    assert inst.n_amplifiers == n_amp
    assert len({a.id for a in inst.detectors[0].amplifiers}) == n_amp


def test_jpcam_has_14_ccds():
    inst = get_instrument("jpcam")
    assert len(inst.detectors) == 14
    assert inst.pixel_scale == pytest.approx(0.23)


@pytest.mark.parametrize("key", ["t80cam", "mini"])
@pytest.mark.parametrize("layout", ["readout", "archived"])
def test_sections_tile_frames(key, layout):
    inst = get_instrument(key)
    raw = np.zeros(inst.raw_shape(layout), dtype=np.int32)
    active = np.zeros(inst.layout.active_shape, dtype=np.int32)
    for sec in inst.amp_sections(layout):
        raw[sec.data] += 1
        active[sec.active] += 1
        assert raw[sec.data].shape == active[sec.active].shape == (inst.layout.amp_ny, inst.layout.amp_nx)
        for region in (sec.prescan, sec.overscan_x, sec.overscan_y):
            if region is not None:
                raw[region] += 100
    # every active pixel comes from exactly one amplifier, and no overscan overlaps data or another overscan
    assert np.all(active == 1)
    assert set(np.unique(raw)) <= {0, 1, 100}
    if layout == "archived":
        assert np.all(raw == 1)
    else:
        lay = inst.layout
        n_data = lay.n_amp_x * lay.n_amp_y * lay.amp_nx * lay.amp_ny
        assert (raw == 1).sum() == n_data
        # uncovered pixels are only the prescan/overscan x parallel-overscan corners
        n_corner = lay.n_amp_x * lay.n_amp_y * (lay.prescan_x + lay.overscan_x) * lay.overscan_y
        assert (raw == 0).sum() == n_corner


def test_readout_orientation_t80cam():
    inst = get_instrument("t80cam")
    secs = inst.amp_sections("readout")
    lower_left, upper_right = secs[0], secs[-1]
    # the lower-left amplifier reads from the lower left: prescan at x=0, parallel overscan above its data
    assert lower_left.prescan[1].start == 0 and lower_left.data[1].start == 27
    assert lower_left.overscan_y[0].start == 4616
    # the upper-right one is mirrored: prescan at the right edge, parallel overscan below its data (centre)
    assert upper_right.prescan[1].stop == 9648
    assert upper_right.overscan_y[0].start == 4670 and upper_right.data[0].stop == 9340
    assert upper_right.read_flip_x and upper_right.read_flip_y


def test_section_strings_roundtrip():
    region = (slice(0, 4616), slice(27, 1179))
    assert section_to_fits(region) == "[28:1179,1:4616]"
    assert fits_to_section("[28:1179,1:4616]") == region
    with pytest.raises(ValueError, match="malformed"):
        fits_to_section("[1:2]")


def test_filters():
    jplus = get_filter_system("jplus")
    assert len(jplus.filters) == 12
    assert jplus.reference_filter == "rSDSS"
    assert jplus.lookup("R").name == "rSDSS"
    assert jplus.lookup("f861").name == "J0861"
    assert jplus.lookup("nope") is None
    assert {f.name for f in jplus.filters if f.fringing} == {"iSDSS", "J0861", "zSDSS"}
    cwl = [f.cwl for f in jplus.filters]
    assert cwl == sorted(cwl)
    jpas = get_filter_system("jpas")
    narrow = [f for f in jpas.filters if f.fwhm == 145]
    assert len(narrow) == 54
    assert len(jpas.filters) == 60


def test_unknown_instrument_message():
    with pytest.raises(KeyError, match="known: .*t80cam"):
        get_instrument("hst")
