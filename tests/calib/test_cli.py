"""`upad calib list | lookup | epochs` in-process, on the pipeline's database and on small fake histories."""
from __future__ import annotations

import datetime as dt
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from astropy.io import fits
from sqlalchemy import select

from upad.calib.planning import night_start
from upad.db.models import Frame

from .helpers import add_frame, add_master


def cli(args) -> tuple[int, str]:
    from upad.cli.main import cli as group
    from upad.cli.main import main

    if "calib" not in group.commands:  # until upad.cli.calib is listed in upad.cli.main._COMMAND_MODULES
        from upad.cli.calib import COMMANDS

        for c in COMMANDS:
            group.add_command(c)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main([str(a) for a in args])
    return rc, buf.getvalue()


def test_list_and_lookup_on_the_processed_night(pipeline):
    base = ["--root", pipeline.settings.root, "--db", pipeline.settings.db_url]
    rc, out = cli(["calib", "list", "--json", *base])
    assert rc == 0
    rows = json.loads(out)
    assert len(rows) == 13 and all(r["good_after"] and r["good_until"] and r["current"] for r in rows)
    bias = next(r for r in rows if r["kind"] == "bias")
    assert bias["n_used"] == 8 and len(bias["excluded"]) == 1 and bias["qc_status"] == "warn"
    rc, out = cli(["calib", "list", "--kind", "flat", *base])
    assert rc == 0
    with pipeline.db.session() as s:
        frame = s.scalars(select(Frame).where(Frame.obs_type == "science", Frame.filter == "zSDSS")).first()
    rc, out = cli(["calib", "lookup", frame.filename, "--json", *base])
    assert rc == 0
    ans = json.loads(out)
    assert ans["ready"] and ans["reason"] == ""
    assert ans["config"]["source"] == "reduce"  # the lookup uses the reduction step's own configuration
    assert {k for k, m in ans["masters"].items() if m["status"] == "chosen"} == {
        "bias", "dark", "flat", "fringe", "illumination", "bpm", "signature"}
    rc, _ = cli(["calib", "lookup", str(frame.id), *base])
    assert rc == 0
    rc, _ = cli(["calib", "lookup", "no-such-frame", *base])
    assert rc == 2


def _fake_flat(root: Path, s, night: str, level: np.ndarray) -> int:
    rel = f"calibration/master_flat/fake/{night}/master_flat.fits"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(np.ones((4, 4), np.float32)),
                  fits.ImageHDU(level.astype(np.float32), name="BIN")]).writeto(root / rel)
    return add_master(s, kind="flat", night=night, filter_name="rSDSS", flat_type="dome",
                      files=[{"role": "master", "path": rel, "sha256": "", "size": 0}])


def test_epochs_propose_declare_and_plot(calib_db, tmp_path):
    root = tmp_path / "root"
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    rng = np.random.default_rng(3)
    before = 1 + 0.02 * (xx - 0.5)
    after = 1 + 0.02 * (xx - 0.5) + 0.03 * (yy - 0.5) ** 2 * 4  # a new large-scale pattern (a baffle change)
    nights = [f"2025-07-{d:02d}" for d in range(1, 9)]
    maps = [before, before * (1 + 0.05 * (yy > 0.5)), before, before, after, after, after, after]
    with calib_db.session() as s:
        ids = [_fake_flat(root, s, n, m * (1 + 1e-4 * rng.standard_normal(m.shape))) for n, m in zip(nights, maps)]
        fid = add_frame(s, night=nights[-1], obs_type="science", date_obs=night_start(nights[-1]) +
                        dt.timedelta(hours=5))
    base = ["--root", root, "--db", calib_db.url]
    plot = tmp_path / "epochs.png"
    rc, out = cli(["calib", "epochs", "--propose", "--json", "--plot", plot, *base])
    assert rc == 0
    res = json.loads(out)
    kinds = [(p["kind"], p["time"][:10]) for p in res["proposals"]]
    # night 2 is an outlier master (its neighbours agree); nights 5+ are a new epoch
    assert kinds == [("outlier", "2025-07-02"), ("step", "2025-07-05")]
    assert res["proposals"][1]["before"] == ids[3] and res["proposals"][1]["after"] == ids[4]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert res["breakpoints"] == []
    rc, out = cli(["calib", "epochs", "--propose", "--accept", "--json", *base])
    assert rc == 0
    bps = json.loads(out)["breakpoints"]
    assert len(bps) == 1 and bps[0]["source"] == "proposed" and bps[0]["kinds"] == ["flat", "illumination"]
    # once declared it is not proposed again, and a frame of the new epoch never falls back across it
    rc, out = cli(["calib", "epochs", "--propose", "--json", *base])
    assert [p["kind"] for p in json.loads(out)["proposals"]] == ["outlier"]
    with calib_db.session() as s:
        from upad.calib.lookup import select_flat
        from upad.calib.planning import ConfigKey

        f = s.get(Frame, fid)
        choice = select_flat(s, ConfigKey("mini", "readout", "MODE_5", "rSDSS"), when=f.date_obs, night=f.night)
        assert choice.night == nights[-1]
        early = select_flat(s, ConfigKey("mini", "readout", "MODE_5", "rSDSS"),
                            when=night_start("2025-07-04") + dt.timedelta(hours=30), night="2025-07-05")
        assert early.night == "2025-07-05"
    rc, out = cli(["calib", "epochs", "--add", "2025-07-03", "--kind", "bias", "--reason", "controller swap",
                   "--json", *base])
    assert rc == 0 and json.loads(out)["added"]
    rc, _ = cli(["calib", "epochs", "--add", "2025-07-03", *base])
    assert rc == 2  # a reason is required
    rc, _ = cli(["calib", "epochs", "--add", "yesterday", "--reason", "x", *base])
    assert rc == 2
    rc, out = cli(["calib", "epochs", *base])
    assert rc == 0


def test_qc_night_shows_why_a_frame_has_no_reduced_product(calib_db, tmp_path, monkeypatch):
    """A failed reduce job shows as `error` with its message, a queued one as `queued`, no job as `not reduced`."""
    import hashlib

    from upad.db.models import Job, Provenance
    from upad.reduce.steps import unit_key

    night = "2025-03-01"
    t0 = night_start(night) + dt.timedelta(hours=3)
    with calib_db.session() as s:
        ids = [add_frame(s, night=night, obs_type="science", date_obs=t0 + dt.timedelta(minutes=i),
                         name=f"sci-{i}.fits") for i in range(3)]
        for fid, state, error in ((ids[0], "failed", "FileNotFoundError: master flat file missing"),
                                  (ids[1], "queued", None)):
            key = unit_key(s.get(Frame, fid))
            prov = hashlib.sha256(key.encode()).hexdigest()
            s.add(Provenance(id=prov, step="reduce", unit_key=key, code_version="1.2", config_hash="0" * 64))
            s.flush()
            s.add(Job(provenance_id=prov, step="reduce", unit_key=key, state=state, error=error))
    rc, out = cli(["qc", "night", night, "--json", "--root", tmp_path, "--db", calib_db.url])
    assert rc == 0
    rows = {r["frame"]: r for r in json.loads(out)}
    assert rows["sci-0.fits"]["status"] == "error"
    assert rows["sci-0.fits"]["reasons"] == ["FileNotFoundError: master flat file missing"]
    assert rows["sci-1.fits"]["status"] == "queued" and rows["sci-1.fits"]["reasons"] == []
    assert rows["sci-2.fits"]["status"] == "not reduced"
    from upad.cli import common

    monkeypatch.setattr(common.stdout, "width", 250)  # the table, whatever the terminal (COLUMNS) says
    rc, out = cli(["qc", "night", night, "--root", tmp_path, "--db", calib_db.url])
    assert rc == 0
    lines = {name: next(ln for ln in out.splitlines() if name in ln) for name in rows}
    assert " error " in lines["sci-0.fits"] and "FileNotFoundError: master flat file missing" in lines["sci-0.fits"]
    assert " queued " in lines["sci-1.fits"] and " not reduced " in lines["sci-2.fits"]
