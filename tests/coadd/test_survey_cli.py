"""``upad tiles generate|list`` and ``upad survey progress`` on a real database (SQLite, and PostgreSQL when set)."""
from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from upad.cli.main import main
from upad.coadd.tiling import generate_tiling, tile_id
from upad.db import Frame, Product, Provenance, Tile, TileFilter
from upad.ingest.service import _Ingester
from upad.settings import Settings

BAND = ["--dec-min", "20", "--dec-max", "23", "--ra-min", "150", "--ra-max", "155"]
FILTERS = ["--filters", "rSDSS,gSDSS", "--filters", "J0660"]


@pytest.fixture
def root(tmp_path, database):
    s = Settings(root=tmp_path / "root", db_url=database.url)
    s.create_layout()
    return ["--root", str(s.root), "--db", database.url]


def _run(args, capsys):
    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _counts(database):
    with database.session() as s:
        return (s.scalar(select(func.count()).select_from(Tile)),
                s.scalar(select(func.count()).select_from(TileFilter)))


def test_generate_is_idempotent_and_refuses_another_tiling(database, root, capsys):
    expected = generate_tiling(instrument="t80cam", dec_range=(20, 23), ra_range=(150, 155))
    code, out, _ = _run(["tiles", "generate", "--instrument", "T80Cam", *BAND, *FILTERS, "--json", *root], capsys)
    assert code == 0
    first = json.loads(out)
    assert first["added"] == len(expected) == first["pointings"] and first["tiles_added"] == 3 * len(expected)
    assert first["filters"] == ["rSDSS", "gSDSS", "J0660"]
    with database.session() as s:
        rows = {t.id: t for t in s.scalars(select(Tile))}
        p = expected[0]
        t = rows[p.id]
        assert (t.name, t.ra, t.dec, t.naxis1, t.naxis2, t.pixel_scale, t.instrument, t.in_footprint) == \
            (p.name, p.ra, p.dec, p.naxis1, p.naxis2, 0.55, "t80cam", True)
        tf = s.get(TileFilter, tile_id(p.id, "J0660", instrument="t80cam"))
        assert (tf.ref_tile_id, tf.filter, tf.planned_exposures) == (p.id, "J0660", 3)
    before = _counts(database)

    code, out, _ = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, *FILTERS, "--json", *root], capsys)
    again = json.loads(out)
    assert code == 0 and again["added"] == again["tiles_added"] == 0 and again["unchanged"] == len(expected)
    assert _counts(database) == before

    code, _, err = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, "--overlap-arcmin", "5", *root], capsys)
    assert code == 2 and "another tiling" in err and "hint" in err
    code, _, err = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, *FILTERS, "--exposures", "4", *root],
                        capsys)
    assert code == 2 and "--exposures 3" in err
    assert _counts(database) == before

    code, out, _ = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, "--dry-run", "--json", *root], capsys)
    assert code == 0 and json.loads(out)["tiles"] == 12 * len(expected) and _counts(database) == before

    # a larger footprint of the same tiling adds only what is new, with all-sky ids
    wider = generate_tiling(instrument="t80cam", dec_range=(20, 25), ra_range=(150, 155))
    code, out, _ = _run(["tiles", "generate", "--instrument", "t80cam", "--dec-min", "20", "--dec-max", "25",
                         "--ra-min", "150", "--ra-max", "155", *FILTERS, "--json", *root], capsys)
    grown = json.loads(out)
    assert code == 0 and grown["added"] == len(wider) - len(expected) > 0 and grown["unchanged"] == len(expected)
    assert _counts(database) == (len(wider), 3 * len(wider))


def test_polygon_footprint_and_bad_options(database, root, capsys):
    code, out, _ = _run(["tiles", "generate", "--instrument", "t80cam", "--dec-min", "0", "--dec-max", "10",
                         "--polygon", "100,1 104,1 104,4", "--filters", "rSDSS", "--json", *root], capsys)
    assert code == 0
    n = json.loads(out)["pointings"]
    assert 2 <= n <= 12
    for args, msg in [(["--ra-min", "10"], "--ra-min and --ra-max go together"),
                      (["--overlap-arcmin", "-1"], "--overlap-arcmin"),
                      (["--polygon", "1,2 3"], "not a vertex"),
                      (["--filters", "Halpha"], "not in the jplus"),
                      (["--dec-min", "30", "--dec-max", "10"], "declination range")]:
        code, _, err = _run(["tiles", "generate", "--instrument", "t80cam", *args, *root], capsys)
        assert code == 2 and msg in err and "hint" in err, (args, err)
    code, _, err = _run(["tiles", "generate", "--instrument", "mini", "--dry-run", *root], capsys)
    assert code == 2 and "more than the limit" in err and "--max-pointings" in err
    code, out, _ = _run(["tiles", "generate", "--instrument", "mini", "--dec-min", "0", "--dec-max", "1",
                         "--ra-min", "0", "--ra-max", "1", "--dry-run", "--json", "--max-pointings", "200", *root],
                        capsys)
    assert code == 0 and 50 < json.loads(out)["pointings"] <= 200
    assert _counts(database) == (n, n)  # the dry runs and the refusals wrote nothing


def _insert_ingest_tile(database, tile, name, ra, dec):
    """The row ingest makes for a frame's tile id (its own code path)."""
    meta = SimpleNamespace(tile_id=tile, tile_name=name, ra=ra, dec=dec)
    with database.session() as s:
        _Ingester._insert_tile(SimpleNamespace(db=database), s, meta)


def test_ingested_tiles_are_adopted_or_refused(database, root, capsys):
    pts = generate_tiling(instrument="t80cam", dec_range=(20, 23), ra_range=(150, 155))
    near, far = pts[0], pts[1]
    _insert_ingest_tile(database, near.id, near.name, near.ra + 0.003, near.dec - 0.002)  # a dithered frame
    _insert_ingest_tile(database, far.id, far.name, 10.0, -30.0)  # the same id elsewhere on the sky
    code, _, err = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, *root], capsys)
    assert code == 2 and f"tile {far.id}" in err and "--first-id" in err
    assert _counts(database) == (2, 0)  # nothing written

    with database.session() as s:
        s.delete(s.get(Tile, far.id))
    code, out, _ = _run(["tiles", "generate", "--instrument", "t80cam", *BAND, "--json", *root], capsys)
    res = json.loads(out)
    assert code == 0 and res["adopted"] == 1 and res["added"] == len(pts) - 1
    with database.session() as s:
        t = s.get(Tile, near.id)
        assert (t.ra, t.dec, t.naxis1, t.in_footprint) == (near.ra, near.dec, near.naxis1, True)
    # ingest of a later frame of a stored pointing leaves the row alone
    _insert_ingest_tile(database, near.id, "whatever", 1.0, 1.0)
    with database.session() as s:
        assert s.get(Tile, near.id).ra == near.ra

    code, out, _ = _run(["tiles", "list", "--json", *root], capsys)
    listed = json.loads(out)
    assert code == 0 and [r["id"] for r in listed] == [p.id for p in pts]
    assert [t["filter"] for t in listed[0]["tiles"]][:2] == ["uJAVA", "J0378"]
    code, out, _ = _run(["tiles", "list", "--limit", "2", *root], capsys)
    assert code == 0 and near.name in out and "9436×9452" in out


def _frame(s, n, *, tile, filt, valid=True, obs_type="science"):
    when = dt.datetime(2026, 3, 1, 22, 0) + dt.timedelta(minutes=n)
    s.add(Frame(filename=f"f{n}.fits", path=f"raw/f{n}.fits", original_path=f"/in/f{n}.fits", size_bytes=1,
                sha256=f"{n:064d}", instrument="t80cam", telescope="JAST80", header_convention="oaj",
                layout="archived", naxis1=9216, naxis2=9232, obs_type=obs_type, filter=filt, exptime=60.0,
                date_obs=when, mjd=61100.0, night="2026-03-01", tile_id=tile, valid=valid, header={}))


def _coadd(s, n, context, *, current=True):
    s.add(Provenance(id=f"{n:064x}", step="coadd", unit_key=f"coadd-{n}", code_version="1", config_hash="0" * 64,
                     context=context))
    s.flush()
    s.add(Product(provenance_id=f"{n:064x}", step="coadd", kind="coadd", unit_key=f"coadd-{n}",
                  context=context, is_current=current))


def test_progress_counts_and_plot(database, root, capsys, tmp_path):
    code, _, err = _run(["survey", "progress", *root], capsys)
    assert code == 2 and "upad tiles generate" in err
    assert _run(["tiles", "generate", "--instrument", "t80cam", *BAND, *FILTERS, "--exposures", "2", *root],
                capsys)[0] == 0
    pts = generate_tiling(instrument="t80cam", dec_range=(20, 23), ra_range=(150, 155))
    a, b, c = pts[0].id, pts[1].id, pts[2].id
    with database.session() as s:
        _insert_ingest_tile(database, 99_999, "TILE-99999", 300.0, -20.0)  # observed outside the plan
        n = iter(range(1, 100))
        _frame(s, next(n), tile=a, filt="rSDSS")
        _frame(s, next(n), tile=a, filt="rSDSS")  # a: rSDSS complete (2 of 2)
        _frame(s, next(n), tile=a, filt="gSDSS")  # a: gSDSS observed, not complete
        _frame(s, next(n), tile=b, filt="rSDSS")
        _frame(s, next(n), tile=b, filt="rSDSS", valid=False)  # flagged: b rSDSS observed, not complete
        _frame(s, next(n), tile=c, filt="J0660", valid=False)  # only an invalid frame: not observed
        _frame(s, next(n), tile=c, filt="iSDSS")  # a filter not planned: outside the plan
        _frame(s, next(n), tile=99_999, filt="rSDSS")
        _frame(s, next(n), tile=None, filt=None, obs_type="bias")
        s.flush()
        _coadd(s, 1, {"tile_id": tile_id(a, "rSDSS", instrument="t80cam"), "filter": "rSDSS"})
        _coadd(s, 2, {"tile_id": b, "filter": "rSDSS"})  # the pointing id
        _coadd(s, 3, {"ref_tile_id": a, "filter": "gSDSS"}, current=False)  # superseded: not counted
        _coadd(s, 4, {"tile_id": 99_999, "filter": "rSDSS"})  # not planned
    png = tmp_path / "progress.png"
    code, out, _ = _run(["survey", "progress", "--json", "--plot", png, "--per-pointing", *root], capsys)
    assert code == 0
    prog = json.loads(out)
    rows = {r["filter"]: r for r in prog["filters"]}
    assert list(rows) == ["gSDSS", "rSDSS", "J0660"]  # filter-system order
    assert all(r["planned"] == len(pts) for r in rows.values()) and prog["pointings"] == len(pts)
    assert (rows["rSDSS"]["observed"], rows["rSDSS"]["complete"], rows["rSDSS"]["coadded"]) == (2, 1, 2)
    assert (rows["gSDSS"]["observed"], rows["gSDSS"]["complete"], rows["gSDSS"]["coadded"]) == (1, 0, 0)
    assert (rows["J0660"]["observed"], rows["J0660"]["coadded"]) == (0, 0)
    assert rows["rSDSS"]["coadded_fraction"] == pytest.approx(2 / len(pts))
    assert prog["outside_plan"] == {"tiles": 2, "frames": 2}
    per = {p["id"]: p for p in prog["per_pointing"]}
    assert (per[a]["planned"], per[a]["observed"], per[a]["coadded"]) == (3, 2, 1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert prog["plot"] == str(png)

    code, out, _ = _run(["survey", "progress", "--json", *root], capsys)
    assert code == 0 and "per_pointing" not in json.loads(out) and json.loads(out)["total"]["coadded"] == 2
    code, out, err = _run(["survey", "progress", "--plot", tmp_path / "sky.png", "--plot-measure", "observed",
                           *root], capsys)
    assert code == 0 and "rSDSS" in out and "outside the plan" in err and (tmp_path / "sky.png").exists()
    code, _, err = _run(["survey", "progress", "--plot", tmp_path / "no" / "dir.png", *root], capsys)
    assert code == 2 and "does not exist" in err


def test_progress_plot_of_a_whole_sky_footprint(tmp_path):
    """A footprint too large for a plain map is drawn on the all-sky projection."""
    from upad.coadd.survey import plot_progress

    pts = generate_tiling(instrument="jpcam", dec_range=(-10, 70))
    prog = {"pointings": len(pts), "total": {"planned": len(pts), "observed": 1, "complete": 0, "coadded": 0},
            "per_pointing": [{"id": p.id, "ra": p.ra, "dec": p.dec, "size_deg": 2.4, "planned": 1,
                              "observed": int(p.id % 2), "complete": 0, "coadded": 0} for p in pts]}
    out = plot_progress(prog, tmp_path / "all.png", measure="observed")
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(Exception, match="unknown progress measure"):
        plot_progress(prog, tmp_path / "x.png", measure="done")
