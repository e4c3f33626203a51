"""Files and headers follow docs/raw-format.md."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.io import fits

from upad.errors import UpadError
from upad.instruments import get_instrument
from upad.sim import SimConfig, simulate
from upad.sim.headers import required_keys

NAME = re.compile(r"^m02-(\d{8}T\d{6})-(\d{2})\.fits\.fz$")


def test_counts_and_layout(night):
    res, man = night
    assert res.counts() == {"bias": 5, "dark": 2, "flat-dome": 6, "flat-sky": 6, "science": 8}
    for p in res.raw_files + res.truth_files + [res.sky_catalog, res.reference_catalog, res.manifest_path]:
        assert p.is_file(), p
    assert not [p for p in res.out.rglob("*") if ".tmp-" in p.name], "temporary files left behind"


def test_headers_have_every_contract_key(night):
    res, man = night
    inst = get_instrument("mini")
    keys = required_keys(inst, "readout", "oaj")
    expect = {"bias": ("BIAS", "CALIB", "BIAS"), "dark": ("DARK", "CALIB", "DARK"),
              "flat-dome": ("FLAT", "CALIB", "FLAT,DOME"), "flat-sky": ("FLAT", "CALIB", "FLAT,SKY"),
              "science": ("LIGHT", "SCIENCE", "OBJECT")}
    last = None
    for rec, path in zip(res.frames, res.raw_files):
        m = NAME.match(path.name)
        assert m, path.name
        with fits.open(path) as hd:
            assert len(hd) == 2 and hd[0].data is None
            assert isinstance(hd[1], fits.CompImageHDU)
            h = hd[1].header
            assert hd[1].compression_type == "RICE_1"
            assert h["BITPIX"] == 16 and h["BZERO"] == 32768 and h["BUNIT"] == "adu"
            assert (h["NAXIS1"], h["NAXIS2"]) == (1056, 1056)
            assert hd[1].data.dtype == np.uint16
        missing = [k for k in keys if k not in h]
        assert not missing, missing
        assert (h["HIERARCH OAJ DET EXP TYPE"], h["HIERARCH OAJ DPR CATG"], h["HIERARCH OAJ DPR TYPE"]) == \
            expect[rec["kind"]]
        assert "IMAGETYP" not in h
        # name time = DATE-OBS to the second; night folder from the contract's formula
        dt = datetime.fromisoformat(h["DATE-OBS"])
        assert m.group(1) == dt.strftime("%Y%m%dT%H%M%S")
        night_date = (dt - timedelta(hours=12) + timedelta(hours=-1.0164 / 15)).date().isoformat()
        assert path.parent.name == night_date == rec["night"]
        assert last is None or dt > last
        last = dt
        if rec["kind"] == "science":
            assert re.fullmatch(r"TILE-\d{5}", h["OBJECT"]) and h["FILTER"] in ("rSDSS", "zSDSS")
            assert h["EXPTIME"] > 0 and 1.0 <= h["AIRMASS"] < 3
            # nominal WCS = commanded pointing
            assert h["CRVAL1"] == pytest.approx(h["RA"], abs=1e-5) and h["CTYPE1"] == "RA---TAN"


def test_archived_layout_and_t80s_convention(tmp_path):
    cfg = SimConfig(n_bias=1, n_dark=1, n_dome_flats=1, n_sky_flats=1, n_dithers=1, n_ptc_pairs=0, n_linearity_flats=0)
    res = simulate("mini", seed=2, out=tmp_path, tiles=1, filters=["rSDSS"], layout="archived", convention="t80s",
                   compress=False, config=cfg)
    inst = get_instrument("mini")
    keys = required_keys(inst, "archived", "t80s")
    types = {"bias": "ZERO", "dark": "DARK", "flat-dome": "FLAT", "flat-sky": "SKYFLAT", "science": "OBJECT"}
    assert len(res.frames) == 5
    for rec, path in zip(res.frames, res.raw_files):
        assert path.name.endswith(".fits")
        with fits.open(path) as hd:
            h = hd[0].header
            assert hd[0].data.shape == (1024, 1024) and hd[0].data.dtype == np.uint16
            assert h["BZERO"] == 32768
        assert not [k for k in keys if k not in h]
        assert not any(k.startswith("OAJ ") for k in h.keys())
        assert h["IMAGETYP"] == types[rec["kind"]]
        assert h["FILTER"] == "R"
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", h["RA"]) and re.fullmatch(r"[+-]\d\d:\d\d:\d\d\.\d\d", h["DEC"])
        ra_h, ra_m, ra_s = (float(v) for v in h["RA"].split(":"))
        assert 15 * (ra_h + ra_m / 60 + ra_s / 3600) == pytest.approx(h["CRVAL1"], abs=1e-4)
        assert "HIERARCH T80S DET OUT1 DATASEC" not in h  # archived: no overscan sections


def test_unsupported_arguments_are_explained(tmp_path):
    with pytest.raises(UpadError, match="JPCam") as e:
        simulate("jpcam", out=tmp_path)
    assert e.value.hint
    with pytest.raises(UpadError, match="unknown filter"):
        simulate("mini", out=tmp_path, filters=["rSDSS", "nope"])
    with pytest.raises(UpadError, match="layout"):
        simulate("mini", out=tmp_path, layout="weird")
    with pytest.raises(UpadError, match="effect"):
        SimConfig(disabled=("warp_drive",))
