"""Twilight flats with the sky's large-scale gradient, a moonlit night and flats that cannot make a master.

Simulated mini nights in rSDSS with twilight flats only (gradients of 4.5-6.5 % peak to peak towards the Sun, as at
the start of dusk): a dark night, a moonlit night (sky 1 mag brighter with an 8 % gradient) reduced with the
pipeline's own masters, and a night whose flats cannot make a master (all with strong pixel-scale structure in one
filter, too few in another). Compared with the simulation's truth.
"""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from upad.db.models import Frame, Job, Product
from upad.sim.truth import load_manifest, read_map

from .helpers import INST, rewrite_raw

STEPS = ("instrument_signature", "master_bias", "master_dark", "master_flat", "bad_pixel_mask", "master_illumination",
         "reduce")
#: The twilight and moonlit nights are in the independent world with their instrument-signature step: the flats and
#: the science frames are converted with the measured gains, so a flat's truth is response x applied/true gain
#: (:func:`_response_truth`). The illumination correction of the twilight night is limited by the overscan: 7 columns
#: of 4.4 ADU read noise give each row's bias to ~0.15 ADU rms (32 rows), 0.3 % of its 45 e- dark sky; the master
#: bias (5 frames) carries the mean of its frames' errors into every frame.


@dataclass
class Run:
    out: Path
    manifest: dict
    settings: Any
    db: Any
    counts: dict


def _process(out: Path, root: Path, steps: tuple[str, ...], *, refcat: Path | None = None) -> Run:
    from upad.db import Database
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.settings import Settings

    settings = Settings(root=root, db_url=f"sqlite:///{root / 'upad.sqlite'}")
    settings.create_layout()
    db = Database(settings.db_url)
    db.upgrade()
    ingest_paths(db, settings, [out / "raw"], mode="copy")
    if refcat is not None:
        shutil.copy2(refcat, settings.path("reference", "refcat.fits"))
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(db, settings, ex, options=SchedulerOptions(
            steps=steps, poll_seconds=0.05, min_replan_seconds=0.0)).run(until_idle=True)
    finally:
        ex.close()
    return Run(out, load_manifest(out), settings, db, counts)


@pytest.fixture(scope="module")
def twilight(tmp_path_factory) -> Run:
    """A dark night whose camera has a response plane of 1.3 % peak to peak (vignetting off-centre), twilight flats
    only."""
    from upad.sim import SimConfig, simulate

    out = tmp_path_factory.mktemp("flats-night")
    cfg = SimConfig(n_bias=5, n_dark=3, n_dome_flats=0, n_sky_flats=8, n_dithers=3, workers=2)  # see STEPS
    simulate("mini", seed=23, out=out, nights=1, tiles=1, filters=["rSDSS"], compress=False, config=cfg)
    run = _process(out, tmp_path_factory.mktemp("flats-root"), STEPS[:-1])
    yield run
    run.db.dispose()


@pytest.fixture(scope="module")
def moonlit(tmp_path_factory) -> Run:
    """A moonlit night: the sky 1 mag brighter with an 8 % gradient in every science frame."""
    from upad.sim import SimConfig, simulate

    out = tmp_path_factory.mktemp("moon-night")
    cfg = SimConfig(n_bias=3, n_dark=3, n_dome_flats=0, n_sky_flats=5, n_dithers=3, workers=2,  # see STEPS
                    moon_gradient=0.08, moon_brightening_mag=1.0)
    res = simulate("mini", seed=29, out=out, nights=1, tiles=1, filters=["rSDSS"], compress=False, config=cfg)
    run = _process(out, tmp_path_factory.mktemp("moon-root"), STEPS, refcat=res.reference_catalog)
    yield run
    run.db.dispose()


def _truth_map(run: Run, name: str) -> np.ndarray:
    return read_map(run.out / "truth" / "camera" / f"{name}.fits").astype(np.float64)


def _current(run: Run, step: str, flat_type: str | None = None) -> list[Product]:
    with run.db.session() as s:
        prods = list(s.scalars(select(Product).where(Product.step == step, Product.is_current.is_(True))))
    return [p for p in prods if flat_type is None or p.context.get("flat_type") == flat_type]


def _read(run: Run, prod: Product) -> np.ndarray:
    return fits.getdata(run.settings.root / prod.files[0]["path"]).astype(np.float64)


def _applied_gains(run: Run) -> list[float]:
    """The gains (e-/ADU) the pipeline converted the frames with: the night's measured instrument signature's, else
    the nominal (header) ones."""
    sig = _current(run, "instrument_signature")
    return list(sig[0].meta["gain"]) if sig else list(run.manifest["camera"]["gain_nominal_e_per_adu"])


def _response_truth(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """What a flat reduced with the pipeline's gains must be (response x applied/true gain: flat-fielding a frame
    converted with the same gains leaves the true electrons) and the good pixels. The gains' own accuracy is judged
    in test_signature; a flat that kept the nominal/true ratio instead would leave 1-2 % steps between amplifiers."""
    cam = run.manifest["camera"]
    applied = _applied_gains(run)
    g = np.ones(INST.layout.active_shape)
    for sec in INST.amp_sections("readout"):
        g[sec.active] = applied[sec.index] / cam["gain_true_e_per_adu"][sec.index]
    good = _truth_map(run, "bpm") == 0
    good[:3] = good[-3:] = False
    good[:, :3] = good[:, -3:] = False
    return _truth_map(run, "flat_sky") * g, good


def _binned(a: np.ndarray, cell: int = 64) -> np.ndarray:
    ny, nx = a.shape
    return np.nanmedian(a[: ny // cell * cell, : nx // cell * cell].reshape(ny // cell, cell, nx // cell, cell)
                        .transpose(0, 2, 1, 3).reshape(ny // cell, nx // cell, -1), axis=2)


def _plane(a: np.ndarray, good: np.ndarray, cell: int = 32, order: int = 4) -> tuple[float, float]:
    """The plane ``gx u + gy v`` (``u, v`` in [-1, 1] along x, y) of an image: the degree-1 Legendre coefficients of
    a least-squares fit of degree ``order`` (a plane alone is not defined for a curved image) to its binned cells,
    with a free level per amplifier (the gain ratios step from one to the next)."""
    from numpy.polynomial import legendre

    b = _binned(np.where(good, a, np.nan), cell)
    ny, nx = b.shape
    v, u = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    amp = np.zeros(a.shape, int)
    for sec in INST.amp_sections("readout"):
        amp[sec.active] = sec.index
    amp = amp[cell // 2::cell, cell // 2::cell][:ny, :nx]
    ok = np.isfinite(b)
    vander = legendre.legvander2d(u[ok], v[ok], [order, order])  # column i * (order + 1) + j: P_i(u) P_j(v)
    cols = [i * (order + 1) + j for i in range(order + 1) for j in range(order + 1) if 0 < i + j <= order]
    A = np.concatenate([np.stack([(amp[ok] == k).astype(float) for k in np.unique(amp)], axis=1),
                        vander[:, cols]], axis=1)
    coef = np.linalg.lstsq(A, b[ok], rcond=None)[0][len(np.unique(amp)):]
    return float(coef[cols.index(order + 1)]), float(coef[cols.index(1)])


def test_twilight_gradients_removed_and_master_flat_matches_the_response(twilight):
    flats = {Path(f["file"]).name: f for f in twilight.manifest["frames"] if f["kind"] == "flat-sky"}
    true_p2p = [f["twilight_gradient"]["peak_to_peak"] for f in flats.values()]
    assert min(true_p2p) >= 0.04 and max(true_p2p) <= 0.07  # the effect: 20 x the tolerance below
    (prod,) = _current(twilight, "master_flat", "sky")
    assert prod.context["flat_type"] == "sky" and prod.qc_status == "ok" and prod.meta["n_used"] == len(flats)
    truth, good = _response_truth(twilight)
    r = _read(twilight, prod) / truth
    r /= np.median(r[good])
    # twilight flats cannot tell the response's own plane from the twilight's: the master has none
    tx, ty = _plane(np.log(truth), good)
    assert 2 * (abs(tx) + abs(ty)) > 0.01  # this camera's response has 1.3 % peak to peak of it
    mx, my = _plane(np.log(r), good)
    assert abs(mx + tx) < 0.0015 and abs(my + ty) < 0.0015, (mx, my, tx, ty)
    # every flat's fitted gradient is the Sun's plus that same plane
    rows = {rec["filename"]: rec for rec in prod.meta["inputs"]}
    for name, f in flats.items():
        c = rows[name]["gradient_removed"]["coefficients"]  # [0, v, u] of log(gradient)
        t = f["twilight_gradient"]
        assert abs(c[2] - t["gx"] - tx) < 0.0015 and abs(c[1] - t["gy"] - ty) < 0.0015, (name, c, t, tx, ty)
    # apart from that plane, the master flat is within 0.3 % rms of the true response, with no twilight left
    u = np.linspace(-1, 1, r.shape[1])[None, :]
    v = np.linspace(-1, 1, r.shape[0])[:, None]
    rp = r * np.exp(tx * u + ty * v)
    rp /= np.median(rp[good])
    rms = float(np.std(rp[good] - 1))
    assert rms <= 0.003, rms
    binned = _binned(np.where(good, rp - 1, np.nan))
    assert np.nanmax(binned) - np.nanmin(binned) < 0.006
    # the flat-field stability QC judged the flats after the removal: each within 0.3 % (it was 4-7 %)
    assert prod.meta["qc"]["gradient_max"] < 0.003 and prod.meta["qc"]["removed_gradient_max"] > 0.04


def test_twilight_illumination_correction_restores_the_plane(twilight):
    (prod,) = _current(twilight, "master_flat", "sky")
    truth, good = _response_truth(twilight)
    # the illumination correction from the dark night sky restores the plane: master x correction = response
    (icor,) = _current(twilight, "master_illumination", "sky")
    assert icor.context["flat_type"] == "sky" and icor.meta["n_used"] == 3
    full = _read(twilight, prod) * _read(twilight, icor) / truth
    full /= np.median(full[good])
    assert float(np.std(full[good] - 1)) <= 0.003
    fx, fy = _plane(np.log(full), good)
    assert 2 * (abs(fx) + abs(fy)) < 0.003, (fx, fy)


def test_moonlit_frames_reduce_with_the_sky_gradient_followed(moonlit):
    from upad import maskbits

    science = {Path(f["file"]).name: f for f in moonlit.manifest["frames"] if f["kind"] == "science"}
    # the moonlit frames are no reference of the response: left out of the illumination correction, each with its
    # reason; the night goes on without one
    with moonlit.db.session() as s:
        job = s.scalars(select(Job).where(Job.step == "master_illumination")).one()
        assert job.state == "failed" and job.error.count("moonlight") == 3
        rows = s.execute(select(Product, Frame.filename).join(
            Frame, Frame.id == Product.context["frame_id"].as_integer()).where(Product.step == "reduce")).all()
    assert len(rows) == len(science) == 3
    (flat,) = _current(moonlit, "master_flat", "sky")
    truth, good_t = _response_truth(moonlit)
    response = truth / _read(moonlit, flat)  # what the pipeline's flat-fielding leaves of the true response
    ny, nx = response.shape
    u = np.linspace(-1, 1, nx)[None, :]
    v = np.linspace(-1, 1, ny)[:, None]
    for prod, filename in rows:
        t = science[filename]
        assert prod.qc_status in ("ok", "warn"), (filename, prod.qc_status, prod.meta.get("qc_reasons"))
        with fits.open(moonlit.settings.root / prod.files[0]["path"]) as hdul:
            sci, mask = hdul["SCI"].data.astype(np.float64), hdul["MASK"].data
        good = ((mask & maskbits.UNUSABLE) == 0) & good_t
        # the true sky has no starlight: the wings of the frame's stars brighter than 12 mag (r^-3 to r^-4 for the
        # Kolmogorov and low-beta Moffat PSFs) lift 256-pixel medians by up to 0.8 % within ~160 px of them
        objs = fits.getdata(moonlit.out / t["truth"], "OBJECTS")
        yy, xx = np.ogrid[:ny, :nx]
        for o in objs[objs["mag"] < 12]:
            good &= (xx - (o["x"] - 1)) ** 2 + (yy - (o["y"] - 1)) ** 2 > 160 ** 2
        g = t["sky_gradient"]
        sky = t["sky_e"] * (1 + g["gx"] * u + g["gy"] * v) * response  # the true sky in the reduced image
        # 256 x 256 medians: the sky (130 e-, 9 % noise per pixel) to 0.05 %, stars do not count
        moon = _binned(np.where(good, sci / t["sky_e"], np.nan), 256)
        assert np.nanmax(moon) / np.nanmin(moon) - 1 > 0.04  # the gradient is there (8 % over the corners)
        # the image's sky is the truth's ...
        resid = _binned(np.where(good, sci / sky, np.nan), 256)
        resid /= np.nanmedian(resid)
        assert np.nanstd(resid) < 0.0015 and np.nanmax(np.abs(resid - 1)) < 0.004, (filename, resid)
        # ... and the background the catalog measured under every star follows it, not a flat level
        cat_path = next(moonlit.settings.root / f["path"] for f in prod.files if f["path"].endswith("_cat.fits"))
        cat = fits.getdata(cat_path, 1)
        ix = np.clip(np.rint(np.asarray(cat["X_IMAGE"]) - 1).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(np.asarray(cat["Y_IMAGE"]) - 1).astype(int), 0, ny - 1)
        measured = np.asarray(cat["BACKGROUND"]) / (t["sky_e"] * response[iy, ix])
        moonlight = (1 + g["gx"] * u + g["gy"] * v)[iy, ix]
        assert np.ptp(moonlight) > 0.05
        slope = np.polyfit(moonlight, measured, 1)[0]  # 1: the gradient followed; 0: a flat level
        assert slope == pytest.approx(1.0, abs=0.1), (filename, slope)
        rel = measured / moonlight
        assert 1.4826 * np.median(np.abs(rel / np.median(rel) - 1)) < 0.005, filename


# ------------------------------------------------------------------------------------------------------ bad input
def _pixel_structure(seed: int):
    """A flat with strong pixel-scale structure (a flaky readout, a condensation pattern): 5 % per pixel."""
    rng = np.random.default_rng(seed)

    def func(data: np.ndarray) -> np.ndarray:
        out = data.copy()
        for sec in INST.amp_sections("readout"):
            level = np.median(data[sec.overscan_x])
            out[sec.data] = level + (data[sec.data] - level) * (1 + 0.05 * rng.standard_normal(data[sec.data].shape))
        return out

    return func


@pytest.fixture(scope="module")
def bad_flats(tmp_path_factory) -> Run:
    from upad.sim import SimConfig, simulate

    out = tmp_path_factory.mktemp("badflat-night")
    # no photon-transfer / linearity sequence: this night is about the sky flats' bookkeeping, and its flat steps use
    # the instrument file's first guesses of the (drawn) signature, as on a night without the sequence
    cfg = SimConfig(n_bias=3, n_dark=0, n_dome_flats=0, n_sky_flats=4, n_dithers=1, workers=2, n_ptc_pairs=0,
                    n_linearity_flats=0)
    res = simulate("mini", seed=31, out=out, nights=1, tiles=1, filters=["rSDSS", "gSDSS"], compress=False,
                   config=cfg)
    flats = [f for f in res.frames if f["kind"] == "flat-sky"]
    for k, f in enumerate(x for x in flats if x["filter"] == "rSDSS"):  # every rSDSS flat is damaged
        rewrite_raw(out / f["file"], _pixel_structure(k))
    for f in [x for x in flats if x["filter"] == "gSDSS"][2:]:  # only 2 gSDSS flats were taken
        (out / f["file"]).unlink()
    run = _process(out, tmp_path_factory.mktemp("badflat-root"), ("master_bias", "master_flat"))
    yield run
    run.db.dispose()


def test_bad_flats_end_as_recorded_outcomes_and_dry_run_says_what_is_missing(bad_flats):
    from upad.cli.main import main

    night = bad_flats.manifest["nights"][0]["night"]
    with bad_flats.db.session() as s:
        jobs = {j.unit_key: j for j in s.scalars(select(Job).where(Job.step == "master_flat"))}
    # rSDSS: every flat excluded by the flat-field QC, each with its reason: the master failed with that record
    (r_job,) = [j for k, j in jobs.items() if "/rSDSS/" in k]
    assert r_job.state == "failed"
    assert "only 0 usable sky flat" in r_job.error and "flat-field QC: rms residual" in r_job.error
    # gSDSS: two flats are too few: no job, the unit waits with the reason
    assert not [k for k in jobs if "/gSDSS/" in k]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["run", "--root", str(bad_flats.settings.root), "--db", bad_flats.settings.db_url, "--dry-run",
                   "--json", "--step", "master_flat", "--step", "reduce"])
    assert rc == 0
    units = {(u["step"], u["unit"]): u for u in json.loads(buf.getvalue())["units"]}
    g_flat = next(u for (step, key), u in units.items() if step == "master_flat" and "/gSDSS/" in key)
    assert g_flat["status"] == "waiting" and "only 2 valid sky flats" in g_flat["reason"]
    reduce = {key: u for (step, key), u in units.items() if step == "reduce"}
    assert len(reduce) == 2 and all(u["status"] == "waiting" for u in reduce.values())
    r_wait = " ".join(u["reason"] for u in reduce.values() if "rSDSS" in u["reason"])
    # the science frame says which master is missing and why it failed
    assert f"the sky master flat of night {night} failed" in r_wait and "flat-field QC: rms residual" in r_wait
    g_wait = " ".join(u["reason"] for u in reduce.values() if "gSDSS" in u["reason"])
    assert f"the sky flats of night {night} cannot make a master: only 2 valid sky flats" in g_wait
