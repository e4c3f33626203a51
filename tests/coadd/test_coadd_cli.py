"""``upad coadd`` (a forced coadd of one tile in one filter, optionally of a selection), the coadd step's readiness
against the survey plan, the survey progress written as tiles finish, and bad input — on synthetic reduced frames
(stars of known flux at known positions on the sky) registered as products of step ``reduce``, on SQLite and, when
set, PostgreSQL.

The frames are small (160 × 160 pixels of the mini camera's 0.55″) and the tile grid is a stored pointing of 240 ×
240 pixels, so a coadd takes a fraction of a second in this process (the inline executor).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from sqlalchemy import func, select

from upad.cli.main import main
from upad.coadd.step import CoaddConfig, tile_unit_key
from upad.db.models import CoaddRequest, Frame, Job, Product, Provenance, ProvenanceInput, Tile, TileFilter
from upad.execution import InlineExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.settings import Settings

from .helpers import gaussian_stars, tan_wcs

PIX = 0.55  # arcsec per pixel (mini camera)
RA0, DEC0 = 150.0, 2.0
TILE = 7
GRID = 240  # the stored pointing's grid (pixels)
SHAPE = (160, 160)  # a reduced frame
SIGMA_PX = 1.5  # stars: circular Gaussians
NOISE = 2.0  # e- per pixel, the weight is 1/NOISE²
ZP = 25.0
#: stars near the tile centre: (ra, dec, flux e-); every frame sees them all
STARS = [(RA0 + dx / 3600.0, DEC0 + dy / 3600.0, f) for dx, dy, f in
         [(-12.0, 8.0, 30000.0), (10.0, -6.0, 20000.0), (4.0, 15.0, 12000.0), (-8.0, -14.0, 25000.0)]]
FILTER = "rSDSS"
KEY = tile_unit_key("mini", TILE, FILTER)


class Survey:
    """A data root and database with one pointing and the frames (and reduced frames) the tests add."""

    def __init__(self, database, tmp_path: Path) -> None:
        self.db = database
        self.settings = Settings(root=tmp_path / "root", db_url=database.url)
        self.settings.create_layout()
        self.args = ["--root", str(self.settings.root), "--db", database.url]
        self.n = 0
        with database.session() as s:
            s.add(Tile(id=TILE, name=f"TILE-{TILE:05d}", ra=RA0, dec=DEC0, instrument="mini", naxis1=GRID,
                       naxis2=GRID, pixel_scale=PIX, tiling="test", in_footprint=True))

    def plan_exposures(self, n: int, filt: str = FILTER) -> None:
        with self.db.session() as s:
            s.add(TileFilter(tile_id=TILE * 100 + 8, ref_tile_id=TILE, filter=filt, planned_exposures=n))

    def frame(self, *, night: str = "2026-03-01", filt: str = FILTER, tile: int = TILE, reduced: bool = True,
              offset_arcsec: tuple[float, float] = (0.0, 0.0), pointing: tuple[float, float] | None = None,
              qc: str = "ok", solved: bool = True) -> int:
        """A valid science frame of ``tile`` and, when ``reduced``, its current reduced frame (a FITS file of the
        stars, dithered by ``offset_arcsec`` or centred on ``pointing``); returns the frame id."""
        self.n += 1
        name = f"mini_{night}_{self.n:04d}.fits"
        when = dt.datetime.fromisoformat(night) + dt.timedelta(hours=22, minutes=self.n)
        ra, dec = pointing or (RA0 + offset_arcsec[0] / 3600.0, DEC0 + offset_arcsec[1] / 3600.0)
        with self.db.session() as s:
            f = Frame(filename=name, path=f"raw/{name}", original_path=f"/in/{name}", size_bytes=1,
                      sha256=f"{self.n:064d}", instrument="mini", telescope="JAST80", header_convention="oaj",
                      layout="archived", naxis1=SHAPE[1], naxis2=SHAPE[0], obs_type="science", filter=filt,
                      exptime=60.0, date_obs=when, mjd=61100.0, night=night, tile_id=tile, valid=True, header={},
                      ra=ra, dec=dec)
            s.add(f)
            s.flush()
            fid = f.id
        if reduced:
            self.reduce(fid, ra=ra, dec=dec, qc=qc, solved=solved)
        return fid

    def reduce(self, fid: int, *, ra: float, dec: float, qc: str = "ok", solved: bool = True) -> int:
        """Register the reduced frame of frame ``fid`` (a product of step ``reduce``)."""
        with self.db.session() as s:
            f = s.get(Frame, fid)
            stem, night = f.filename.split(".")[0], f.night
        rel = f"reduced/{night}/{stem}.fits"
        path = self.settings.root / rel
        write_reduced_frame(path, ra=ra, dec=dec, seed=fid, solved=solved)
        data = path.read_bytes()
        prov = hashlib.sha256(f"reduce {fid} {rel}".encode()).hexdigest()
        context = {"frame_id": fid, "night": night}
        with self.db.session() as s:
            s.add(Provenance(id=prov, step="reduce", unit_key=f"{night}/{stem}", code_version="1",
                             config_hash="0" * 64, context=context))
            s.flush()
            p = Product(provenance_id=prov, step="reduce", kind="reduced_frame", unit_key=f"{night}/{stem}",
                        context=context, night=night, qc_status=qc, state="complete", is_current=True,
                        files=[{"role": "reduced", "path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                                "size": len(data)}], meta={})
            s.add(p)
            s.add(ProvenanceInput(provenance_id=prov, input_kind="frame", input_id=fid, role="raw"))
            s.flush()
            return p.id

    def scheduler(self, **options) -> Scheduler:
        opts = {"steps": ["coadd"], "max_attempts": 1, "backoff_seconds": 0.01, "poll_seconds": 0.05,
                "min_replan_seconds": 0.0, **options}
        return Scheduler(self.db, self.settings, InlineExecutor(), options=SchedulerOptions(**opts))

    def run(self, **options) -> dict[str, int]:
        return self.scheduler(**options).run()

    def current(self, key: str = KEY) -> Product | None:
        with self.db.session() as s:
            p = s.scalars(select(Product).where(Product.step == "coadd", Product.unit_key == key,
                                                Product.is_current.is_(True))).first()
            if p is not None:
                s.expunge(p)
            return p

    def inputs(self, product: Product) -> list[int]:
        with self.db.session() as s:
            return sorted(i for (i,) in s.execute(select(ProvenanceInput.input_id).where(
                ProvenanceInput.provenance_id == product.provenance_id)))

    def reduced_of(self, *frame_ids: int) -> list[int]:
        with self.db.session() as s:
            return sorted(p.id for p in s.scalars(select(Product).where(Product.step == "reduce"))
                          if p.context["frame_id"] in frame_ids)

    def cli(self, capsys, *args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in [*args, *self.args]])
        out = capsys.readouterr()
        return code, out.out, out.err


def write_reduced_frame(path: Path, *, ra: float, dec: float, seed: int, solved: bool = True) -> None:
    """A sky-subtracted reduced frame at zero point ``ZP``: the ``STARS`` on Gaussian noise of ``NOISE`` e-."""
    w = tan_wcs(SHAPE, crval=(ra, dec), scale_arcsec=PIX)
    x, y = w.world_to_pixel_values([s[0] for s in STARS], [s[1] for s in STARS])
    rng = np.random.default_rng(seed)
    image = gaussian_stars(SHAPE, x, y, [s[2] for s in STARS], SIGMA_PX) + rng.normal(0.0, NOISE, SHAPE)
    h = w.to_header()
    h["WCSSOLVE"] = solved
    h["MAGZP"] = ZP
    h["SKYSUB"] = True
    h["EXPTIME"] = 60.0
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image.astype(np.float32), header=h, name="SCI"),
                  fits.ImageHDU(np.zeros(SHAPE, np.int16), name="MASK"),
                  fits.ImageHDU(np.full(SHAPE, 1.0 / NOISE ** 2, np.float32), name="WEIGHT")]).writeto(path)


def star_fluxes(survey: Survey, product: Product) -> np.ndarray:
    """Aperture fluxes of the ``STARS`` in a coadd at their true positions (radius 7 px: 4.7 σ of the inputs' PSF,
    > 99.9 % of a star after resampling), over their true fluxes."""
    import sep

    path = survey.settings.root / next(f["path"] for f in product.files if f["role"] == "coadd")
    with fits.open(path) as h:
        image = h["SCI"].data.astype(np.float64)
        assert h["SCI"].header["MAGZP"] == pytest.approx(ZP)
        gx, gy = WCS(h["SCI"].header).world_to_pixel_values([s[0] for s in STARS], [s[1] for s in STARS])
    flux, _, _ = sep.sum_circle(np.ascontiguousarray(image), gx, gy, 7.0, subpix=5)
    ratio = flux / np.array([s[2] for s in STARS])
    print(f"{product.unit_key} ({product.meta['n_exposures']} exposures): coadd/true star flux "
          f"{', '.join(f'{r:.4f}' for r in ratio)}")
    return ratio


@pytest.fixture
def survey(database, tmp_path):
    return Survey(database, tmp_path)


def dry_run(survey: Survey, capsys) -> dict[str, dict]:
    code, out, _ = survey.cli(capsys, "run", "--dry-run", "--step", "coadd", "--json", "-v")
    assert code == 0
    return {u["unit"]: u for u in json.loads(out)["units"]}


# ------------------------------------------------------------------------------------------------------------------
def test_a_forced_selection_and_a_new_frame(survey, capsys):
    night1 = [survey.frame(offset_arcsec=o) for o in [(0.0, 0.0), (3.0, -2.0)]]
    night2 = [survey.frame(night="2026-03-02", offset_arcsec=(-2.5, 3.5))]
    code, out, err = survey.cli(capsys, "coadd", f"tile-{TILE:05d}", "--filter", "rsdss", "--select",
                                "_2026-03-01_", "--executor", "inline", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (res["ref_tile_id"], res["filter"], res["exposures"], res["selected"]) == (TILE, FILTER, 3, 2)
    (o,) = res["outcomes"]
    assert o["state"] == "done" and o["product"]["n_exposures"] == 2 and o["product"]["current"]
    first = survey.current()
    assert survey.inputs(first) == survey.reduced_of(*night1)
    with survey.db.session() as s:  # the configuration (and its hash) are the step's own: the request is data
        prov = s.get(Provenance, first.provenance_id)
        assert prov.config_hash == CoaddConfig().hash()
        assert prov.context["selection"] == "_2026-03-01_" and prov.context["forced"] is True
    ratio = star_fluxes(survey, first)
    assert np.all(np.abs(ratio - 1.0) < 0.01), ratio  # flux of every star conserved (2 exposures)

    # nothing new: the selection stands (no re-coadd of all three)
    assert survey.run().get("done", 0) == 0 and survey.current().id == first.id

    # a new good frame of the finished tile: re-coadded under the configuration (all four), the old one superseded
    night3 = [survey.frame(night="2026-03-03", offset_arcsec=(1.5, 1.5))]
    assert survey.run().get("done", 0) == 1
    after = survey.current()
    assert after.id != first.id and after.meta["n_exposures"] == 4
    assert survey.inputs(after) == survey.reduced_of(*night1, *night2, *night3)
    with survey.db.session() as s:
        old = s.get(Product, first.id)
        assert not old.is_current and old.state == "complete"
    assert (survey.settings.root / first.files[0]["path"]).is_file()  # the older coadd stays
    assert np.all(np.abs(star_fluxes(survey, after) - 1.0) < 0.01)

    # a request the current coadd already answers: said so, and served — once an exposure is reduced after it, the
    # tile waits for the others again (the request forces nothing more)
    code, out, _ = survey.cli(capsys, "coadd", str(TILE), "--filter", FILTER, "--no-run", "--json")
    (o,) = json.loads(out)["outcomes"]
    assert code == 0 and o["state"] == "current" and o["product"]["id"] == after.id
    survey.frame(night="2026-03-04", reduced=False)
    survey.frame(night="2026-03-04", offset_arcsec=(1.0, -1.0))
    unit = dry_run(survey, capsys)[KEY]
    assert unit["status"] == "waiting" and "1 of 6 exposures of tile 7 in rSDSS are not reduced yet" in unit["reason"]


def test_planned_exposures_pending_reductions_and_a_forced_coadd(survey, capsys):
    survey.plan_exposures(3)
    a = survey.frame()
    b = survey.frame(offset_arcsec=(2.0, 2.0))
    units = dry_run(survey, capsys)
    assert units[KEY]["status"] == "waiting"
    assert units[KEY]["reason"].startswith("2 of 3 planned exposures observed")
    c = survey.frame(night="2026-03-02", offset_arcsec=(-2.0, 1.0), reduced=False)
    assert "1 of 3 exposures of tile 7 in rSDSS are not reduced yet" in dry_run(survey, capsys)[KEY]["reason"]
    assert survey.run().get("done", 0) == 0 and survey.current() is None

    code, out, _ = survey.cli(capsys, "coadd", str(TILE), "--filter", FILTER, "--no-run", "--json")
    assert code == 0 and json.loads(out)["outcomes"][0]["state"] == "queued"
    assert dry_run(survey, capsys)[KEY]["status"] == "queued"
    assert survey.run().get("done", 0) == 1
    forced = survey.current()
    assert forced.meta["n_exposures"] == 2 and survey.inputs(forced) == survey.reduced_of(a, b)
    with survey.db.session() as s:
        refused = s.get(Provenance, forced.provenance_id).context["refused"]
    assert refused == ["mini_2026-03-02_0003.fits: not reduced yet"]

    # the pending exposure is reduced: the tile is coadded again with it (the request was served)
    with survey.db.session() as s:
        f = s.get(Frame, c)
        ra, dec = f.ra, f.dec
    survey.reduce(c, ra=ra, dec=dec)
    assert survey.run().get("done", 0) == 1
    full = survey.current()
    assert full.meta["n_exposures"] == 3 and survey.inputs(full) == survey.reduced_of(a, b, c)
    assert np.all(np.abs(star_fluxes(survey, full) - 1.0) < 0.01)


def test_errors_say_what_to_do(survey, capsys):
    survey.frame()
    code, out, _ = survey.cli(capsys, "coadd", "--help")
    assert code == 0 and "--select REGEXP" in out and "--no-run" in out
    for args, msgs in [
        (["99"], ["unknown tile '99'", "upad tiles list"]),
        (["TILE-00099"], ["unknown tile 'TILE-00099'"]),
        ([str(TILE), "--filter", "gSDSS"], ["never observed in 'gSDSS'", "observed in: rSDSS"]),
        ([str(TILE), "--select", "(night"], ["not a valid regular expression", "missing )"]),
        ([str(TILE), "--select", "2025-"], ["matches none of the 1 exposure(s)", "mini_2026-03-01_0001.fits"]),
    ]:
        if "--filter" not in args:
            args = [*args, "--filter", FILTER]
        code, _, err = survey.cli(capsys, "coadd", *args, "--executor", "inline")
        assert code == 2 and "hint" in err, (args, err)
        for m in msgs:
            assert m in " ".join(err.split()), (m, err)
    with survey.db.session() as s:
        assert s.scalar(select(func.count()).select_from(CoaddRequest)) == 0
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_bad_inputs_end_with_their_reasons(survey, capsys):
    good = [survey.frame(offset_arcsec=o) for o in [(0.0, 0.0), (2.0, -3.0)]]
    survey.frame(pointing=(RA0, DEC0 + 1.0))  # the wrong tile in its header: 1 degree away
    survey.frame(solved=False)  # astrometry failed, yet QC ok
    survey.frame(qc="fail")  # refused by the planner
    # tile 8: only a frame far from the pointing; tile 9: only frames that failed QC
    with survey.db.session() as s:
        s.add(Tile(id=8, name="TILE-00008", ra=RA0, dec=DEC0 + 2.0, instrument="mini", naxis1=GRID, naxis2=GRID,
                   pixel_scale=PIX, tiling="test", in_footprint=True))
        s.add(Tile(id=9, name="TILE-00009", ra=RA0 + 4.0, dec=DEC0, instrument="mini"))
    survey.frame(tile=8, pointing=(RA0, DEC0))
    survey.frame(tile=9, pointing=(RA0 + 4.0, DEC0), qc="fail")
    units = dry_run(survey, capsys)
    key9 = tile_unit_key("mini", 9, FILTER)
    assert units[key9]["status"] == "waiting"
    assert "0 usable exposure(s) of tile 9 in rSDSS (needs 1): mini_2026-03-01_0007.fits: QC fail" in \
        units[key9]["reason"]
    counts = survey.run()
    assert counts.get("done", 0) == 2 and counts.get("failed", 0) == 0

    p = survey.current()
    assert p.qc_status == "warn" and p.meta["n_exposures"] == 2 and survey.inputs(p) == sorted(
        survey.reduced_of(*good) + survey.reduced_of(3, 4))
    refused = " | ".join(p.meta["refused"])
    assert "does not overlap the tile grid (its centre is 1.000 deg from the tile's" in refused
    assert "no astrometric solution" in refused
    assert np.all(np.abs(star_fluxes(survey, p) - 1.0) < 0.01)

    p8 = survey.current(tile_unit_key("mini", 8, FILTER))
    assert p8.qc_status == "fail" and p8.files == []  # a recorded failure: no file, nothing half-written
    assert "does not overlap the tile grid (its centre is 2.000 deg" in " ".join(p8.meta["qc_reasons"])
    from upad.coadd.survey import survey_progress

    survey.plan_exposures(1)
    with survey.db.session() as s:
        s.add(TileFilter(tile_id=808, ref_tile_id=8, filter=FILTER, planned_exposures=1))
    rows = {r["filter"]: r for r in survey_progress(survey.db)["filters"]}
    assert rows[FILTER]["coadded"] == 1  # tile 7; tile 8's failure is not a coadd


def test_a_missing_reduced_file_blocks_the_job_with_its_path(survey, capsys):
    ids = [survey.frame(offset_arcsec=o) for o in [(0.0, 0.0), (2.0, 2.0)]]
    with survey.db.session() as s:
        rel = next(p.files[0]["path"] for p in s.scalars(select(Product).where(Product.step == "reduce"))
                   if p.context["frame_id"] == ids[1])
    path = survey.settings.root / rel
    kept = path.read_bytes()
    path.unlink()
    counts = survey.run()
    assert counts.get("blocked", 0) == 1 and counts.get("done", 0) == 0 and survey.current() is None
    with survey.db.session() as s:
        job = s.scalars(select(Job).where(Job.step == "coadd")).one()
        assert job.state == "blocked" and job.waits_for == str(path) and job.fault == "environment"
    unit = dry_run(survey, capsys)[KEY]
    assert unit["status"] == "blocked" and f"waits for {path}" in unit["reason"] and "is missing its file" in \
        unit["reason"]
    path.write_bytes(kept)  # restored: the next run queues the job again and makes the coadd
    assert survey.run().get("done", 0) == 1 and survey.current().meta["n_exposures"] == 2


def test_a_frame_flagged_while_its_tile_is_built(survey):
    from upad.flow.invalidate import flag_frame
    from upad.flow.worker import execute_task

    ids = [survey.frame(offset_arcsec=o) for o in [(0.0, 0.0), (2.0, 2.0), (-2.0, 1.0)]]
    sched = survey.scheduler()
    sched.start_run()
    assert sched.plan().created == 1
    (payload,) = sched.claim(1, 0.0)
    with survey.db.session() as s:  # flagged while the job runs
        flag_frame(s, str(ids[0]), invalid=True, reason="test: a satellite trail")
    sched.record([execute_task(payload)])
    with survey.db.session() as s:
        built = s.scalars(select(Product).where(Product.step == "coadd")).one()
        assert not built.is_current and built.state == "stale"
        assert "inputs became invalid while it ran" in built.stale_reason
    assert survey.current() is None
    sched.end_run("finished")
    assert survey.run().get("done", 0) == 1
    p = survey.current()
    assert p.meta["n_exposures"] == 2 and survey.inputs(p) == survey.reduced_of(*ids[1:])

    # valid again: the coadd built with it (stale since) is current again, not rebuilt; the one without it superseded
    (reduced_0,) = survey.reduced_of(ids[0])
    with survey.db.session() as s:
        flag_frame(s, str(ids[0]), invalid=False, reason="test: no trail after all")
        # what the reduce step's planning does for its own product (its job is done, its input valid again)
        sched._make_current(s, reduced_0, revive=True)
    assert survey.run().get("done", 0) == 0
    revived = survey.current()
    assert revived.id == built.id and revived.state == "complete" and revived.meta["n_exposures"] == 3


def test_the_survey_progress_follows_the_coadds(survey, capsys, monkeypatch):
    survey.plan_exposures(2)
    survey.frame()
    survey.frame(offset_arcsec=(2.0, 2.0))
    assert survey.run().get("done", 0) == 1
    js = survey.settings.root / "coadds" / "survey-progress.json"
    png = survey.settings.root / "coadds" / "survey-progress.png"
    prog = json.loads(js.read_text())
    assert prog["total"] == {"planned": 1, "observed": 1, "complete": 1, "coadded": 1}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a failing plot does not fail the coadd: the product is recorded and current, the failure counted
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("upad.coadd.survey.plot_progress", broken)
    survey.frame(night="2026-03-02", offset_arcsec=(-1.0, 2.0))
    counts = survey.run()
    assert counts.get("done", 0) == 1 and counts.get("hook_failures", 0) >= 1
    assert survey.current().meta["n_exposures"] == 3
    assert json.loads(js.read_text())["total"]["coadded"] == 1  # the old file stays whole


def test_grid_overlap():
    from upad.coadd.tiling import centred_grid, grid_overlap

    grid = centred_grid(RA0, DEC0, pixel_scale=PIX, naxis1=GRID, naxis2=GRID, cd_sign_x=-1, cd_sign_y=1)
    half = (GRID * PIX / 2 + SHAPE[1] * PIX / 2) / 3600.0  # centres this far apart along RA: the edges touch
    for dra_deg, dec_deg, expected in [(0.0, 0.0, True), (0.9 * half, 0.0, True), (1.1 * half, 0.0, False),
                                       (0.0, -0.9 * half, True), (0.0, 1.0, False), (180.0, 0.0, False)]:
        w = tan_wcs(SHAPE, crval=(RA0 + dra_deg / np.cos(np.radians(DEC0)) if dra_deg < 90 else RA0 + dra_deg,
                                  DEC0 + dec_deg), scale_arcsec=PIX)
        ok, sep = grid_overlap(w, SHAPE, grid, (GRID, GRID))
        assert ok is expected, (dra_deg, dec_deg, sep)
    assert grid_overlap(tan_wcs(SHAPE, crval=(RA0, DEC0 + 1.0), scale_arcsec=PIX), SHAPE, grid,
                        (GRID, GRID))[1] == pytest.approx(1.0, abs=1e-9)
