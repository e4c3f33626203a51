"""The tile coadd judged against the simulator's truth (issue 12 §2–§3): a mini pointing, 3 dithered rSDSS exposures
of different seeing and PSF families, with cosmic rays and a satellite trail, run through the whole flow (ingest, the
pipeline's own calibrations, reduction, coadd).

Every figure is judged against the truth, never against what the pipeline assumes:

* star fluxes: the coadd's aperture flux corrected to total with the coadd's aperture correction (measured on its
  PSF stars; the flux beyond the largest aperture from the inputs' measured tails), as the catalogs' ``FLUX_APCOR``,
  in counts at ``MAGZP``, against the truth AB magnitude of the survey's rSDSS passband (``magnom_rSDSS`` of the sky
  catalog, the system the zero points are calibrated in), and of the camera's own shifted passband (``mag_rSDSS``);
* positions: windowed centroids on the coadd, through the tile grid's WCS, against the truth's positions moved with
  their proper motions to the mean epoch of the exposures;
* artefacts: every injected cosmic-ray and satellite-trail pixel, placed on the tile grid through the exposure's true
  WCS, away from the light of the truth's objects;
* noise: blank 3″ apertures placed away from the truth's objects, against the noise the weight map and ``NOISECOR``
  state;
* PSF: the coadd's PSF model FWHM against the FWHM of the sum of the exposures' true PSF profiles (the simulator's
  own profile transforms at each position, mapped onto the grid through the true WCS, weighted with the coadd's
  inverse-variance weights), each convolved with the resampling kernel (what interpolation does to an undersampled
  PSF) — and, a strict xfail, without it.

The measurements are :mod:`upad.coadd.validation`'s, shared with the full-size benchmark
``bench/bench_coadd_truth.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from upad.coadd.validation import (GOALS, CoaddTruth, artefact_figures, flux_figures, noise_figures, position_figures,
                                   psf_figures)
from upad.db.models import Frame, Product
from upad.execution import LocalExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.ingest.service import ingest_paths
from upad.settings import Settings
from upad.sim import SimConfig, simulate

FILTER = "rSDSS"
PIXEL_SCALE = 0.55  # mini camera, arcsec/pixel (tests/coadd/test_coadd_step.py checks it)
#: varied seeing between the dithers (log-uniform per exposure), cosmic rays at several times the natural rate
SIM_CONFIG = dict(psf_seeing_draw_range=(0.9, 1.6), cosmic_rate=15.0)


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    """One pointing, 3 dithers in rSDSS, simulated, ingested and run to the coadd (SQLite); the truth of each input."""
    from upad.db.session import Database

    sim_dir = tmp_path_factory.mktemp("coadd-truth-sim")
    simulate(instrument="mini", seed=11, out=sim_dir, nights=1, tiles=1, filters=[FILTER],
             config=SimConfig(**SIM_CONFIG))
    root = tmp_path_factory.mktemp("coadd-truth-root") / "root"
    settings = Settings(root=root, db_url=f"sqlite:///{root.parent / 'upad.sqlite'}")
    settings.create_layout()
    (root / "reference").mkdir(exist_ok=True)
    (root / "reference" / "refcat.fits").write_bytes((sim_dir / "reference" / "refcat.fits").read_bytes())
    db = Database(settings.db_url)
    db.upgrade()
    assert ingest_paths(db, settings, [sim_dir / "raw"], mode="copy").quarantined == 0
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(db, settings, ex, options=SchedulerOptions()).run()
    finally:
        ex.close()
    assert counts.get("failed", 0) == 0 and counts.get("blocked", 0) == 0, counts
    yield load_tile(sim_dir, settings, db)
    db.dispose()


def load_tile(sim_out, settings, db) -> CoaddTruth:
    """The coadd of the flow's database (its images, header, PSF model, files, meta) with, per input, its reduced
    frame, truth tables and true WCS, and the truth sky (:func:`upad.coadd.validation.load_coadd_truth`)."""
    from upad.coadd.validation import load_coadd_truth

    with db.session() as s:
        coadd = s.scalars(select(Product).where(Product.step == "coadd", Product.is_current.is_(True))).one()
        reduced = {r.context.get("frame_id"): {f["role"]: str(settings.root / f["path"]) for f in r.files}
                   for r in s.scalars(select(Product).where(Product.step == "reduce", Product.is_current.is_(True)))}
        ids = dict(s.execute(select(Frame.filename, Frame.id)).all())
        files = {f["role"]: settings.root / f["path"] for f in coadd.files}
        meta, qc = dict(coadd.meta), coadd.qc_status
    t = load_coadd_truth(files, sim_out, {name: reduced[i] for name, i in ids.items() if i in reduced},
                         filter=FILTER, pixel_scale_arcsec=PIXEL_SCALE, meta=meta, qc_status=qc)
    # the simulation holds what the test is about
    assert len(t.inputs) == 3
    assert sum(len(i.truth.get("COSMICS", [])) for i in t.inputs) > 0, "no cosmic ray in the inputs"
    assert any("SATELLITE" in i.truth for i in t.inputs), "no satellite trail in the inputs"
    fw = [i.fwhm_arcsec for i in t.inputs]
    assert max(fw) / min(fw) > 1.15, f"the dithers' seeing is not varied: {fw}"
    return t


# ------------------------------------------------------------------------------------------------ tests
def test_the_coadd_has_a_psf_model(tile):
    assert tile.qc_status == "ok", tile.meta
    assert "psf" in tile.files
    model = tile.psf
    h = tile.header
    assert h["PSFNSTAR"] >= 5 and h["PSFFWMIN"] <= h["PSFFWHM"] <= h["PSFFWMAX"]
    assert tile.meta["psf_fwhm_arcsec"] == pytest.approx(h["PSFFWHM"], abs=1e-3)
    assert model.shape == tile.sci.shape
    ny, nx = model.shape
    assert float(model.fwhm_at(nx / 2, ny / 2)[0]) * PIXEL_SCALE == pytest.approx(h["PSFFWHM"], rel=0.1)


def _psf(tile):
    f = psf_figures(tile)
    assert f["n"] >= 9
    print(f"coadd PSF FWHM at {f['n']} positions, PSFFWHM {f['psffwhm_arcsec']:.3f}\" (inputs "
          f"{f['inputs_fwhm_arcsec']}): / the truth-weighted combination of the inputs' true PSFs convolved with the "
          f"{f['kernel']} kernel median {f['resampled_median_ratio']:.4f} (range {f['resampled_min_ratio']:.4f}-"
          f"{f['resampled_max_ratio']:.4f}); / the combination alone {f['median_ratio']:.4f}; the kernel broadens "
          f"the truth by {f['kernel_broadening']:.4f}")
    return f


def test_psf_fwhm_against_the_truth_weighted_combination_resampled(tile):
    """The coadd's PSF model against the PSF the coadd has: the inputs' true PSFs, each convolved with the
    resampling kernel on its own pixels (the phase-averaged kernel, :func:`upad.coadd.resample.kernel_transfer`),
    combined with the coadd's weights."""
    f = _psf(tile)
    assert abs(f["resampled_median_ratio"] - 1) <= GOALS["psf_fwhm"]


@pytest.mark.xfail(strict=True, reason="main (this change): +3.7 % against the combination of the inputs' true PSFs "
                   "alone: interpolating inputs of FWHM ≈ 2 pixels onto the tile grid broadens them (Lanczos-3: "
                   "+5.0 % here, +2.8 to +5.9 % per input, computed from the kernel's transfer function; Lanczos-4 "
                   "≈ 0.7 % less, the cardinal spline more): no interpolating kernel keeps an undersampled PSF; the "
                   "model is −1.2 % against the resampled truth (the test above)")
def test_psf_fwhm_against_the_truth_weighted_combination(tile):
    f = _psf(tile)
    assert abs(f["median_ratio"] - 1) <= GOALS["psf_fwhm"]


def _flux_ratios(tile, column: str) -> tuple[np.ndarray, float]:
    """Coadd flux / truth flux (``column`` of the sky catalog at MAGZP) of the isolated S/N > 100 stars
    (:func:`upad.coadd.validation.flux_figures`)."""
    f = flux_figures(tile, column)
    assert f["n"] >= 10, f"too few isolated S/N > 100 stars: {f['n']}"
    g = flux_figures(tile, column, method="psf_model")
    print(f"{f['n']} stars S/N > 100 against {column}: coadd FLUX_APCOR / truth median {f['median']:.4f}, scatter "
          f"{f['scatter']:.4f} (aperture {f['aperture_arcsec']:.2f}\", corrected by 1/{f['enclosed_fraction']:.4f}); "
          f"with the PSF model's enclosed fraction instead: {g['median']:.4f}, {g['scatter']:.4f}")
    return f["ratio"], f["median"]


def test_star_fluxes_against_the_truth(tile):
    """Against the truth magnitudes of the survey's rSDSS passband (``magnom_``): the system of the reference
    catalog's survey-filter magnitudes that the reduction calibrates its zero points on, hence MAGZP's."""
    ratio, med = _flux_ratios(tile, f"magnom_{FILTER}")
    scatter = float(1.4826 * np.median(np.abs(ratio - med)))
    assert abs(med - 1) <= GOALS["flux_median"], f"coadd/truth flux median {med:.4f}"
    assert scatter <= GOALS["flux_scatter"], f"coadd/truth flux scatter {scatter:.4f}"


def test_star_fluxes_against_the_camera_passband_truth(tile):
    """Against the camera's own (shifted) passband: +0.48 %, scatter 0.37 % (the reduction has no colour term
    between the camera's passband and the survey's; a margin of 0.02 %)."""
    ratio, med = _flux_ratios(tile, f"mag_{FILTER}")
    scatter = float(1.4826 * np.median(np.abs(ratio - med)))
    assert abs(med - 1) <= 0.005 and scatter <= 0.01, f"median {med:.4f}, scatter {scatter:.4f}"


def test_star_positions_against_the_truth(tile):
    f = position_figures(tile)
    print(f"{f['n']} stars S/N > 100: positions against the truth (epoch {f['epoch']:.3f}) "
          f"{f['rms_arcsec']:.4f}\" rms (per axis {f['rms_ra_arcsec']:.4f}\", {f['rms_dec_arcsec']:.4f}\"; "
          f"mean {f['mean_ra_arcsec']:+.4f}\", {f['mean_dec_arcsec']:+.4f}\")")
    assert f["n"] >= 10
    assert f["rms_arcsec"] <= GOALS["position_rms_arcsec"], f"coadd positions {f['rms_arcsec']:.4f}\" rms from the truth"


def test_no_cosmic_ray_or_trail_survives(tile):
    f = artefact_figures(tile)
    counted, worst = f["counted"], f["worst"]
    print(f"artefact pixels away from objects: {counted}; worst 3x3 maximum in the coadd {worst} sigma")
    assert counted.get("COSMICS", 0) > 20 and counted.get("SATELLITE", 0) > 20, counted
    assert worst["COSMICS"] < GOALS["artefact_sigma"] and worst["SATELLITE"] < GOALS["artefact_sigma"], worst


def test_blank_aperture_noise_as_stated(tile):
    f = noise_figures(tile)
    assert f["n"] >= 300, f"too few blank apertures: {f['n']}"
    print(f"{f['n']} blank 3\" apertures: scatter {f['measured']:.2f} counts; stated (WEIGHT, NOISECOR "
          f"{f['noisecor']:.3f}) {f['stated']:.2f}: {f['vs_stated']:+.2%}; from the inputs' blank "
          f"apertures with the coadd's weights {f['expected']:.2f}: {f['vs_expected']:+.2%}")
    assert abs(f["vs_stated"]) <= GOALS["noise"]
    assert abs(f["vs_expected"]) <= GOALS["noise"]
