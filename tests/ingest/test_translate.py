"""Header translation: both conventions, every observation type, filter vocabularies, coordinates, night, errors."""
from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
from astropy.io import fits

from upad.ingest.errors import IngestRejected
from upad.ingest.translate import (
    TranslationConfig,
    _json_value,
    header_to_json,
    night_of,
    normalize_obs_type,
    parse_date_obs,
    parse_dec,
    parse_ra,
    translate_header,
)

from .fitsmaker import OAJ_TYPES, SPLUS_NAMES, T80S_TYPES, RawSpec, make_header

FNAME = "m02-20150811T013019-01.fits.fz"


def translate(spec: RawSpec, filename: str | None = FNAME):
    return translate_header(make_header(spec), filename)


@pytest.mark.parametrize("obs_type", sorted(OAJ_TYPES))
def test_oaj_every_obs_type(obs_type: str) -> None:
    meta = translate(RawSpec(obs_type=obs_type))
    assert meta.convention == "OAJ"
    assert meta.obs_type == obs_type
    assert meta.obs_type_raw == OAJ_TYPES[obs_type][2]
    assert meta.instrument == "mini"
    assert meta.telescope == "OAJ-T80"
    assert meta.read_mode == "MODE_5"
    assert meta.exptime == 30.0
    assert meta.date_obs == dt.datetime(2015, 8, 11, 1, 30, 19, 811000)
    assert meta.night == "2015-08-10"
    assert meta.mjd == pytest.approx(57245.0 + (1 * 3600 + 30 * 60 + 19.811) / 86400, abs=1e-9)
    assert meta.ra == pytest.approx(290.087896) and meta.dec == pytest.approx(41.55138)
    assert meta.airmass == pytest.approx(1.12)
    assert (meta.tile_id, meta.tile_name) == ((12, "TILE-00012") if obs_type == "science" else (None, None))
    assert meta.warnings == ()


@pytest.mark.parametrize("obs_type", sorted(T80S_TYPES))
def test_t80s_every_imagetyp(obs_type: str) -> None:
    spec = RawSpec(convention="T80S", obs_type=obs_type, filter="J0660")
    header = make_header(spec)
    assert "OAJ DPR TYPE" not in header and header["IMAGETYP"] == T80S_TYPES[obs_type]
    meta = translate_header(header, FNAME)
    assert meta.convention == "T80S"
    assert meta.obs_type == obs_type
    assert meta.filter == "J0660" and meta.filter_raw == "F660"
    # sexagesimal strings in the header, decimal degrees out (to the 0.001 s / 0.01" of the strings)
    assert isinstance(header["RA"], str) and ":" in header["RA"]
    assert meta.ra == pytest.approx(290.087896, abs=0.001 * 15 / 3600)
    assert meta.dec == pytest.approx(41.55138, abs=0.01 / 3600)


@pytest.mark.parametrize("variant", ["SKYFLAT", "sky-flat", "FLAT,SKY", "Sky Flat", "twilight"])
def test_t80s_sky_flat_spellings(variant: str) -> None:
    meta = translate(RawSpec(convention="T80S", obs_type="flat-sky", sky_flat_variant=variant))
    assert meta.obs_type == "flat-sky"


@pytest.mark.parametrize("value,expected", [
    ("OBJECT", "science"), ("ZERO", "bias"), ("BIAS", "bias"), ("DARK", "dark"), ("FLAT", "flat-dome"),
    ("FLAT,DOME", "flat-dome"), ("FLAT,SKY", "flat-sky"), ("SKYFLAT", "flat-sky"), ("sky-flat", "flat-sky"),
    ("LIGHT", "science"), ("FOCUS", "focus"), ("OBJECT,FOCUS", "focus"), ("TEST", "test"), ("ARC", "unknown"),
])
def test_normalize_obs_type(value: str, expected: str) -> None:
    assert normalize_obs_type(value) == expected


def test_technical_object_is_test() -> None:
    assert normalize_obs_type("OBJECT", category="TECHNICAL") == "test"
    assert normalize_obs_type("OBJECT", category="SCIENCE") == "science"


def test_unknown_obs_type_is_registered_with_a_warning() -> None:
    meta = translate(RawSpec(obs_type="test", extra_cards={"HIERARCH OAJ DPR TYPE": "LAMP,ARC"}))
    assert meta.obs_type == "unknown"
    assert any("LAMP,ARC" in w for w in meta.warnings)


@pytest.mark.parametrize("jplus,splus", sorted(SPLUS_NAMES.items()))
def test_every_splus_filter_name(jplus: str, splus: str) -> None:
    meta = translate(RawSpec(convention="T80S", filter=jplus))
    assert meta.filter_raw == splus and meta.filter == jplus


def test_dpr_type_wins_over_imagetyp() -> None:
    meta = translate(RawSpec(obs_type="bias", extra_cards={"IMAGETYP": "OBJECT"}))
    assert meta.obs_type == "bias"


def test_det_exp_type_is_the_last_resort() -> None:
    meta = translate(RawSpec(obs_type="dark", drop_keys=("OAJ DPR TYPE",)))
    assert meta.obs_type == "dark"


@pytest.mark.parametrize("text,deg", [
    ("18:15:55.852", 273.98271667), ("18 15 55.852", 273.98271667), ("18h15m55.852s", 273.98271667),
    ("00:00:00", 0.0), ("290.087896", 290.087896), (290.087896, 290.087896),
])
def test_parse_ra(text, deg) -> None:
    assert parse_ra(text) == pytest.approx(deg, abs=1e-7)


@pytest.mark.parametrize("text,deg", [
    ("+41:33:04.97", 41.55138056), ("-00:30:00", -0.5), ("-41 33 04.97", -41.55138056), ("41.55138", 41.55138),
    (-12.5, -12.5),
])
def test_parse_dec(text, deg) -> None:
    assert parse_dec(text) == pytest.approx(deg, abs=1e-7)


@pytest.mark.parametrize("bad", ["25:00:00", "12:61:00", "abc", "-01:00:00", 400.0])
def test_parse_ra_refuses(bad) -> None:
    with pytest.raises(ValueError):
        parse_ra(bad)


@pytest.mark.parametrize("bad", ["+95:00:00", "xx", -91.0])
def test_parse_dec_refuses(bad) -> None:
    with pytest.raises(ValueError):
        parse_dec(bad)


def test_parse_date_obs_variants() -> None:
    ref = dt.datetime(2015, 8, 11, 1, 30, 19, 811000)
    assert parse_date_obs("2015-08-11T01:30:19.811") == ref
    assert parse_date_obs("2015-08-11T01:30:19.8110000001") == ref
    assert parse_date_obs("2015-08-11T01:30:19.811Z") == ref
    assert parse_date_obs("2015-08-11", "01:30:19.811") == ref


@pytest.mark.parametrize("stamp,night", [
    ("2015-08-11T01:30:19", "2015-08-10"),   # after midnight: the night that started the day before
    ("2015-08-10T21:00:00", "2015-08-10"),
    ("2015-08-11T12:03:00", "2015-08-10"),   # local noon at -1.0164 deg is 12:04 UTC
    ("2015-08-11T12:05:00", "2015-08-11"),
])
def test_night(stamp: str, night: str) -> None:
    assert night_of(parse_date_obs(stamp), longitude=-1.0164) == night


def test_night_follows_the_instrument_site_not_the_header_longitude() -> None:
    # the night is the instrument's (its file's [site], Javalambre for mini): a header TEL GEOLON elsewhere (-70.8,
    # T80-South) does not move it — one night definition for ingest and calibration — but is reported
    spec = RawSpec(date_obs=dt.datetime(2015, 8, 11, 14, 0), extra_cards={"HIERARCH OAJ TEL GEOLON": -70.8})
    meta = translate(spec, None)
    assert meta.night == "2015-08-11"
    assert any("TEL GEOLON=-70.8" in w and "site" in w for w in meta.warnings)
    same = translate(RawSpec(date_obs=dt.datetime(2015, 8, 11, 14, 0)), None)
    assert same.night == "2015-08-11" and not any("GEOLON" in w for w in same.warnings)


def test_night_wrapper_with_a_longitude() -> None:
    # T80-South at -70.8 deg: 2015-08-11T14:00 UTC is 09:17 local mean time, still the night of the 10th
    assert night_of(dt.datetime(2015, 8, 11, 14, 0), longitude=-70.8) == "2015-08-10"


def test_tile_id_regex_is_configurable() -> None:
    header = make_header(RawSpec(object="J-PLUS field 1234 (rev 2)"))
    assert translate_header(header, None).tile_id is None
    assert any("tile" in w for w in translate_header(header, None).warnings)
    meta = translate_header(header, None, config=TranslationConfig(tile_regex=r"field (\d+)"))
    assert meta.tile_id == 1234


def test_per_amplifier_values() -> None:
    meta = translate(RawSpec())
    assert [a.id for a in meta.amplifiers] == [1, 2, 3, 4]
    assert meta.amplifiers[0].gain == pytest.approx(0.924)
    assert meta.amplifiers[1].ron == pytest.approx(3.78)
    assert meta.amplifiers[2].satur == pytest.approx(121600.0)
    assert meta.amplifiers[0].datasec == "[9:520,1:512]"


def test_missing_keys_are_all_listed() -> None:
    header = make_header(RawSpec(drop_keys=("DATE-OBS", "EXPTIME", "FILTER", "RA")))
    with pytest.raises(IngestRejected) as err:
        translate_header(header, FNAME)
    assert err.value.category == "missing_keys"
    for key in ("DATE-OBS", "EXPTIME", "FILTER", "RA"):
        assert key in err.value.reason
    assert err.value.hint


def test_missing_obs_type() -> None:
    header = make_header(RawSpec(drop_keys=("OAJ DPR TYPE", "OAJ DET EXP TYPE")))
    with pytest.raises(IngestRejected, match="DPR TYPE") as err:
        translate_header(header, FNAME)
    assert err.value.category == "missing_keys"


def test_bias_needs_no_filter_nor_coordinates() -> None:
    meta = translate(RawSpec(obs_type="bias", filter=None, drop_keys=("RA", "DEC")))
    assert meta.filter is None and meta.ra is None


@pytest.mark.parametrize("card,value,needle", [
    ("EXPTIME", "long", "EXPTIME"), ("EXPTIME", -1.0, "EXPTIME"), ("DEC", "+95:00:00", "DEC"),
    ("DATE-OBS", "yesterday", "DATE-OBS"), ("FILTER", "Halpha", "FILTER"),
])
def test_bad_values(card: str, value, needle: str) -> None:
    header = make_header(RawSpec(extra_cards={card: value}))
    with pytest.raises(IngestRejected, match=needle) as err:
        translate_header(header, FNAME)
    assert err.value.category == "bad_value"


def test_unknown_instrument() -> None:
    header = make_header(RawSpec(extra_cards={"INSTRUME": "WFC3"}))
    with pytest.raises(IngestRejected, match="WFC3") as err:
        translate_header(header, FNAME)
    assert err.value.category == "unknown_instrument"
    assert "T80Cam" in err.value.reason


@pytest.mark.parametrize("instrume,key", [("T80Cam", "t80cam"), ("JPCam", "jpcam"), ("MiniCam", "mini"),
                                          ("t80cam", "t80cam")])
def test_instrument_names(instrume: str, key: str) -> None:
    header = make_header(RawSpec(extra_cards={"INSTRUME": instrume}, filter="uJAVA"))
    assert translate_header(header, None).instrument == key


def test_filename_checks_are_warnings_only() -> None:
    assert translate(RawSpec(), FNAME).warnings == ()
    assert any("prefix" in w for w in translate(RawSpec(), "j02-20150811T013019-01.fits.fz").warnings)
    assert any("DATE-OBS" in w for w in translate(RawSpec(), "m02-20150812T013019-01.fits.fz").warnings)
    assert any("does not follow" in w for w in translate(RawSpec(), "image.fits").warnings)


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_header_to_json_is_json_safe() -> None:
    h = make_header(RawSpec())
    h["COMMENT"] = "first"
    h["COMMENT"] = "second"
    h["HISTORY"] = "made by pytest"
    h["EMPTY"] = None
    h.append(fits.Card.fromstring("BADF    =                  NaN / not a FITS value".ljust(80)))
    out = header_to_json(h)
    text = json.dumps(out, allow_nan=False)  # strict JSON (PostgreSQL refuses NaN)
    back = json.loads(text)
    assert back["OAJ DPR TYPE"] == "OBJECT"
    assert isinstance(back["BADF"], str) and "NaN" in back["BADF"]
    assert _json_value(float("nan")) == "nan" and _json_value(np.float32(1.5)) == 1.5
    assert _json_value("a\x00b") == "ab" and _json_value(np.int16(3)) == 3
    assert back["COMMENT"] == ["first", "second"]
    assert back["EMPTY"] is None
    assert back["EXPTIME"] == 30.0 and back["OAJ DET OUTPUTS"] == 4
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in back.values())


def test_header_mapping_input() -> None:
    """Any mapping works (a dict of card names), not only astropy headers."""
    h = make_header(RawSpec())
    meta = translate_header({k: h[k] for k in h.keys() if k not in ("COMMENT", "HISTORY")}, None)
    assert meta.obs_type == "science" and meta.tile_id == 12
    assert isinstance(h, fits.Header)


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_unparsable_card_is_a_bad_value() -> None:
    h = make_header(RawSpec(drop_keys=("EXPTIME",)))
    h.append(fits.Card.fromstring("EXPTIME =          30.0.0 / damaged".ljust(80)))
    with pytest.raises(IngestRejected, match="EXPTIME") as err:
        translate_header(h, FNAME)
    assert err.value.category == "bad_value"
    assert header_to_json(h)["EXPTIME"] == "30.0.0"
