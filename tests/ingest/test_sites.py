"""One night definition end to end: a camera at CTIO (longitude −70.8°, where T80-South is), described by an
instrument file with its own ``[site]``. Frames observed at 13:00 UTC belong to the night of the 10th there (08:17
local mean time) but would belong to the 11th at Javalambre (12:56): ingest gives them the CTIO night, the master bias
made from them is valid over the CTIO night, and the lookup finds it for a science frame of that night."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from upad.calib.config import LookupConfig
from upad.calib.lookup import Choice, find_master, select_masters
from upad.calib.planning import frame_info, frame_key
from upad.db import Frame
from upad.db.models import Product
from upad.execution import InlineExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.ingest import ingest_paths
from upad.instruments import get_instrument
from upad.nights import night_end, night_of, night_start
from upad.settings import Settings

from .fitsmaker import RawSpec, write_raw

BIAS_TIME = dt.datetime(2015, 8, 11, 13, 0)     # 08:17 at CTIO (night of the 10th), 12:56 at OAJ (the 11th)
SCIENCE_TIME = dt.datetime(2015, 8, 11, 5, 0)   # 00:17 at CTIO: the night of the 10th at both sites
GEOLON = {"HIERARCH OAJ TEL GEOLON": -70.8}


@pytest.fixture
def south(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The ``mini`` camera moved to CTIO, known through UPAD_INSTRUMENT_PATH."""
    text = Path(get_instrument("mini").source).read_text()
    text = (text.replace('name = "MiniCam"', 'name = "MiniSouth"').replace('key = "mini"', 'key = "minisouth"')
            .replace('file_prefix = "m02"', 'file_prefix = "s02"')
            .replace('name = "Observatorio Astrofisico de Javalambre (OAJ)"',
                     'name = "Cerro Tololo Inter-American Observatory (CTIO)"')
            .replace("longitude = -1.0164", "longitude = -70.8").replace("latitude = 40.0417", "latitude = -30.17")
            .replace("height = 1957.0", "height = 2200.0").replace('"Europe/Madrid"', '"America/Santiago"'))
    d = tmp_path / "instruments"
    d.mkdir()
    (d / "minisouth.toml").write_text(text)
    monkeypatch.setenv("UPAD_INSTRUMENT_PATH", str(d))
    get_instrument.cache_clear()
    yield get_instrument("minisouth")
    get_instrument.cache_clear()


def test_night_at_ingest_master_validity_and_lookup_follow_the_site(database, settings: Settings, incoming: Path,
                                                                    south) -> None:
    site = south.site
    assert site.longitude == -70.8
    assert night_of(BIAS_TIME, site) == "2015-08-10" and night_of(BIAS_TIME, "mini") == "2015-08-11"

    biases = [write_raw(incoming, RawSpec(instrument="minisouth", obs_type="bias", filter=None, exptime=0.0,
                                          date_obs=BIAS_TIME + dt.timedelta(seconds=40 * k), seq=1, seed=k,
                                          n_stars=0, extra_cards=GEOLON))
              for k in range(3)]
    science = write_raw(incoming, RawSpec(instrument="minisouth", date_obs=SCIENCE_TIME, seq=1, n_stars=10,
                                          extra_cards=GEOLON))
    # the same camera at Javalambre: its frame of the same UTC time is on the next night
    oaj = write_raw(incoming, RawSpec(obs_type="bias", filter=None, exptime=0.0, date_obs=BIAS_TIME, seq=9,
                                      n_stars=0))
    report = ingest_paths(database, settings, [incoming])
    assert report.registered == 5, [(o.filename, o.reason) for o in report.outcomes]
    with database.session() as s:
        rows = {f.filename: f for f in s.scalars(select(Frame))}
    assert {rows[b.name].night for b in biases} == {"2015-08-10"}
    assert rows[science.name].night == "2015-08-10"
    assert rows[oaj.name].night == "2015-08-11" and rows[oaj.name].instrument == "mini"
    assert all(r.path.startswith(f"raw/{r.night}/") for r in rows.values())
    assert not any("GEOLON" in str(reason) for b in biases for reason in rows[b.name].qc_reasons)

    executor = InlineExecutor()
    try:
        sched = Scheduler(database, settings, executor, options=SchedulerOptions(
            steps=("master_bias",), poll_seconds=0.05, min_replan_seconds=0.0))
        sched.run(until_idle=True)
    finally:
        executor.close()
    with database.session() as s:
        masters = {p.unit_key: p for p in s.scalars(select(Product).where(Product.step == "master_bias"))}
        master = masters["minisouth/MODE_5/readout/2015-08-10"]
        assert master.qc_status == "ok" and master.is_current
        # valid over the CTIO night: local mean noon to noon (16:43:12 UTC), not Javalambre's (12:04 UTC)
        assert master.good_after == night_start("2015-08-10", site) == dt.datetime(2015, 8, 10, 16, 43, 12)
        assert master.good_until == night_end("2015-08-10", site) == dt.datetime(2015, 8, 11, 16, 43, 12)
        assert master.good_after <= BIAS_TIME < master.good_until
        assert master.good_after <= SCIENCE_TIME < master.good_until

        frame = s.scalars(select(Frame).where(Frame.filename == science.name)).one()
        # the lookup computes the night from the time at the instrument's site when it is not given
        found = find_master(s, "bias", frame_key(frame_info(frame)), when=frame.date_obs,
                            config=LookupConfig(fallback_nights=0))
        assert isinstance(found, Choice) and found.rule == "valid" and found.product_id == master.id
        sel = select_masters(s, frame, LookupConfig(kinds=("bias",), required=("bias",), fallback_nights=0))
        assert sel.ready, sel.reason
        assert sel.record()["bias"]["product"] == master.id and sel.record()["bias"]["rule"] == "valid"
