"""The ``night_summary`` step (the worked example of "How to add a step"): pure algorithm, writer/reader pair, and the
step through the flow on toy reduced frames (a failed reduction does not hold the night back)."""
from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pytest
from sqlalchemy import select

from upad.db.models import Frame, Job, Product, Provenance, utcnow
from upad.execution import InlineExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.io.products import read_night_summary, write_night_summary
from upad.reduce.nightqc import summarise_night

NIGHT = "2025-03-01"


def _rows():
    rng = np.random.default_rng(3)
    rows = []
    for k in range(9):
        filt = "rSDSS" if k < 6 else "gSDSS"
        rows.append({"frame": f"f{k}", "filter": filt, "qc_status": "ok" if k != 2 else "fail",
                     "reasons": [] if k != 2 else ["no_sources: closed dome"],
                     "fwhm_arcsec": 1.0 + 0.1 * k, "zp_e": 23.0 + rng.normal(0, 0.01) + (5.0 if k == 2 else 0.0),
                     "sky_mag_arcsec2": 21.0, "n_matched": 100 + k})
    return rows


def test_summary_statistics_leave_failed_frames_out():
    s = summarise_night(NIGHT, _rows())
    assert s.n_frames == 9
    assert list(s.columns["filter"][:3]) == ["gSDSS"] * 3  # sorted by filter, then frame
    r = s.filters["rSDSS"]
    assert r["n_frames"] == 6 and r["ok_fraction"] == pytest.approx(5 / 6)
    # the failed frame (zero point off by 5 mag) is not in the statistics
    assert r["zp_median"] == pytest.approx(23.0, abs=0.03)
    assert r["zp_scatter"] < 0.03
    assert r["fwhm_median_arcsec"] == pytest.approx(np.median([1.0, 1.1, 1.3, 1.4, 1.5]))
    assert s.columns["reasons"][list(s.columns["frame"]).index("f2")] == "no_sources: closed dome"
    assert s.columns["n_matched"].dtype == np.int32


def test_writer_and_reader_round_trip(tmp_path):
    s = summarise_night(NIGHT, _rows())
    path = write_night_summary(tmp_path / "s.fits", s, provenance="abc")
    back = read_night_summary(path)
    assert back.night == NIGHT
    for name in s.columns:
        if s.columns[name].dtype.kind == "f":
            np.testing.assert_allclose(back.columns[name], s.columns[name])
        else:
            assert list(back.columns[name]) == list(s.columns[name])
    assert back.filters["rSDSS"]["zp_median"] == pytest.approx(s.filters["rSDSS"]["zp_median"])
    assert back.filters["gSDSS"]["n_frames"] == 3


def _science(s, k: int) -> Frame:
    name = f"toy-{k:03d}.fits"
    f = Frame(filename=name, path=f"raw/{name}", original_path=name, size_bytes=1,
              sha256=hashlib.sha256(name.encode()).hexdigest(), instrument="mini", telescope="JAST80",
              header_convention="OAJ", layout="readout", naxis1=1, naxis2=1, obs_type="science", exptime=60.0,
              date_obs=dt.datetime(2025, 3, 1, 22) + dt.timedelta(minutes=k), mjd=60000.0, night=NIGHT,
              filter="rSDSS", header={})
    s.add(f)
    s.flush()
    return f


def _reduced(s, frame: Frame, zp: float, fwhm: float) -> None:
    key = f"{NIGHT}/{frame.filename.split('.')[0]}"
    prov = hashlib.sha256(key.encode()).hexdigest()
    s.add(Provenance(id=prov, step="reduce", unit_key=key, code_version="toy", config_hash="toy", config={},
                     context={"night": NIGHT, "filter": "rSDSS", "frame_id": frame.id}))
    s.flush()
    s.add(Product(provenance_id=prov, step="reduce", kind="reduced_frame", unit_key=key, is_current=True,
                  files=[], night=NIGHT, qc_status="ok", context={"night": NIGHT, "filter": "rSDSS",
                                                                  "frame_id": frame.id},
                  meta={"qc": "good", "qc_reasons": [], "qc_values": {"zp_e": zp, "fwhm_arcsec": fwhm}}))


def test_the_step_through_the_flow(database, tmp_path):
    from upad.settings import Settings

    settings = Settings(root=tmp_path / "root", db_url=database.url)
    settings.create_layout()
    with database.session() as s:
        frames = [_science(s, k) for k in range(4)]
        for f, zp in zip(frames[:2], (23.0, 23.02)):
            _reduced(s, f, zp, 0.9)
    sched = Scheduler(database, settings, InlineExecutor(), options=SchedulerOptions(steps=["night_summary"]))
    report = sched.plan(dry_run=True)
    (unit,) = [u for u in report.units if u.step == "night_summary"]
    assert unit.status == "waiting" and "2 of 4 science frames" in unit.reason
    with database.session() as s:
        # one frame reduced later, one whose reduction failed for good: the night no longer waits
        _reduced(s, frames[2], 23.04, 1.1)
        prov = hashlib.sha256(b"failed").hexdigest()
        key = f"{NIGHT}/{frames[3].filename.split('.')[0]}"
        s.add(Provenance(id=prov, step="reduce", unit_key=key, code_version="toy", config_hash="toy", config={},
                         context={"night": NIGHT}))
        s.flush()
        s.add(Job(provenance_id=prov, step="reduce", unit_key=key, state="failed", error="toy", created_at=utcnow()))
    sched.run(until_idle=True)
    with database.session() as s:
        (p,) = s.scalars(select(Product).where(Product.step == "night_summary", Product.is_current.is_(True)))
        files = p.files
        assert p.meta["n_frames"] == 3
    summary = read_night_summary(files, root=settings.root)
    assert sorted(summary.columns["frame"]) == sorted(f.filename.split(".")[0] for f in frames[:3])
    assert summary.filters["rSDSS"]["zp_median"] == pytest.approx(23.02, abs=1e-4)
    assert summary.filters["rSDSS"]["fwhm_median_arcsec"] == pytest.approx(0.9)
