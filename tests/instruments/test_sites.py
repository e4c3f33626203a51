"""The site of every instrument (its file's ``[site]``) and the one night definition (:mod:`upad.nights`)."""
import datetime as dt

import pytest

from upad.instruments import Site, get_instrument, load_instrument
from upad.nights import default_site, night_end, night_of, night_start, site_of

OAJ = Site("OAJ", -1.0164, 40.0417, 1957.0, "Europe/Madrid")
CTIO = Site("CTIO", -70.8, -30.17, 2200.0, "America/Santiago")


@pytest.mark.parametrize("key", ["t80cam", "jpcam", "mini"])
def test_javalambre_instruments(key):
    site = get_instrument(key).site
    assert "Javalambre" in site.name
    assert (site.longitude, site.latitude, site.height, site.timezone) == (-1.0164, 40.0417, 1957.0, "Europe/Madrid")


def test_site_of():
    assert site_of("mini") == get_instrument("mini").site == site_of(get_instrument("mini"))
    assert site_of(CTIO) is CTIO and site_of(None) == default_site() == get_instrument("t80cam").site
    with pytest.raises(KeyError):
        site_of("no-such-camera")


@pytest.mark.parametrize("stamp, night", [
    ("2015-08-11T01:30:19", "2015-08-10"),   # after midnight: the night that started the day before
    ("2015-08-10T21:00:00", "2015-08-10"),
    ("2015-08-11T12:03:00", "2015-08-10"),   # local mean noon at -1.0164 deg is 12:04:04 UTC
    ("2015-08-11T12:05:00", "2015-08-11"),
])
def test_javalambre_nights_are_unchanged(stamp, night):
    assert night_of(dt.datetime.fromisoformat(stamp), "t80cam") == night


def test_night_bounds_are_local_mean_noon():
    # the values of the former definitions (calib.planning with SITE_LONGITUDE = -1.0164), to the microsecond
    assert night_start("2015-08-11", "mini") == dt.datetime(2015, 8, 11, 12, 4, 3, 936000)
    assert night_end("2015-08-11", "mini") == dt.datetime(2015, 8, 12, 12, 4, 3, 936000)
    assert night_start("2015-08-11", CTIO) == dt.datetime(2015, 8, 11, 16, 43, 12)
    assert night_start(dt.date(2015, 8, 11), OAJ) == night_start("2015-08-11", OAJ)


@pytest.mark.parametrize("site", [OAJ, CTIO, Site("SSO", 149.07, -31.27, 1165.0, "Australia/Sydney")])
def test_every_time_is_in_exactly_its_night(site):
    t = dt.datetime(2015, 8, 10, 0, 0)
    while t < dt.datetime(2015, 8, 13):
        n = night_of(t, site)
        assert night_start(n, site) <= t < night_end(n, site)
        t += dt.timedelta(minutes=37)


def test_one_utc_time_two_nights():
    t = dt.datetime(2015, 8, 11, 13, 0)  # 12:56 local mean time at Javalambre, 08:17 at CTIO
    assert night_of(t, OAJ) == "2015-08-11" and night_of(t, CTIO) == "2015-08-10"


def test_load_instrument_from_a_path(tmp_path):
    text = open(get_instrument("mini").source).read()
    south = text.replace('key = "mini"', 'key = "minisouth"').replace("longitude = -1.0164", "longitude = -70.8")
    (tmp_path / "minisouth.toml").write_text(south)
    inst = load_instrument(tmp_path / "minisouth.toml")
    assert inst.key == "minisouth" and inst.site.longitude == -70.8 and inst.source == str(tmp_path / "minisouth.toml")
    start = text.index("[site]")
    (tmp_path / "nosite.toml").write_text(text[:start] + text[text.index("[layout]"):])
    with pytest.raises(ValueError, match=r"\[site\] table"):
        load_instrument(tmp_path / "nosite.toml")
