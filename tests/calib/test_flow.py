"""The calibration steps in the processing flow: products, validity, QC plots, exclusions, readiness, lookup."""
from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from astropy.io import fits
from sqlalchemy import select

from upad.calib.config import LookupConfig
from upad.calib.lookup import select_masters
from upad.calib.planning import night_end, night_start
from upad.db.models import Frame, Product, ProvenanceInput
from upad.flow.scheduler import Scheduler, SchedulerOptions

from .conftest import CALIB_STEPS

#: one master per step and configuration of the night: one bias / dark / bad-pixel mask / signature (one camera mode;
#: the night's photon-transfer pairs and linearity series are in one filter), a dome and a sky flat and illumination
#: per filter (2), a fringe map for zSDSS only
EXPECTED = {"instrument_signature": 1, "master_bias": 1, "master_dark": 1, "master_flat": 4, "bad_pixel_mask": 1, "master_fringe": 1,
            "master_illumination": 4}


@contextlib.contextmanager
def scratch_session(db):
    """A session whose changes are rolled back: the shared pipeline database stays as it is."""
    s = db._sessionmaker()
    s.begin()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


def products(pipeline, step=None):
    with pipeline.db.session() as s:
        stmt = select(Product).where(Product.is_current.is_(True))
        if step:
            stmt = stmt.where(Product.step == step)
        return list(s.scalars(stmt))


def science_frame(pipeline, filt):
    with pipeline.db.session() as s:
        return s.scalars(select(Frame).where(Frame.obs_type == "science", Frame.filter == filt)
                         .order_by(Frame.date_obs)).first()


def test_every_master_exists_with_validity_and_qc_plots(pipeline):
    assert pipeline.counts.get("failed", 0) == 0 and pipeline.counts["done"] == sum(EXPECTED.values())
    night = pipeline.night.manifest["nights"][0]["night"]
    by_step: dict[str, list[Product]] = {}
    for p in products(pipeline):
        by_step.setdefault(p.step, []).append(p)
    assert {k: len(v) for k, v in by_step.items()} == EXPECTED
    for step, prods in by_step.items():
        for p in prods:
            assert p.good_after == night_start(night) and p.good_until == night_end(night)
            assert p.qc_status in ("ok", "warn")
            roles = [f["role"] for f in p.files]
            assert roles[0] == "master" and ("qc_plot" in roles or step == "instrument_signature")
            for f in p.files:
                path = pipeline.settings.root / f["path"]
                assert path.is_file()
                if f["role"] == "qc_plot":
                    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with fits.open(pipeline.settings.root / p.files[0]["path"]) as hdul:
                h = hdul[0].header
                assert h["PROVID"] == p.provenance_id[:12]
                assert h["NIGHT"] == night and h["GOODAFT"].startswith(night)
                if step not in ("bad_pixel_mask", "instrument_signature"):  # image masters
                    assert "ERR" in hdul and h["NCOMBINE"] == p.meta["n_used"]
                    assert hdul[0].data.dtype.kind == "f" and hdul[0].data.dtype.itemsize == 4
    # the signature is measured from the night's rSDSS dome flats: pairs of equal exposure time (the ordinary flats
    # give n_dome_flats / 2, the photon-transfer sequence n_ptc_pairs) and a series of distinct exposure times (one
    # per pair level plus the linearity flats; never the ordinary flats' group)
    from upad.sim import SimConfig

    from .conftest import SIM

    (sig,) = by_step["instrument_signature"]
    cfg = SimConfig(**SIM)
    # (one ordinary flat, the fixture's saturated one, is screened out: test_bad_inputs_are_excluded_with_reasons)
    assert [e["reason"].split(":")[0] for e in sig.meta["excluded"]] == ["saturated"]
    assert sig.meta["n_pairs"] == (cfg.n_dome_flats - 1) // 2 + cfg.n_ptc_pairs
    assert sig.meta["n_linearity"] == cfg.n_ptc_pairs + cfg.n_linearity_flats
    # a flat has the stability plot and statistics of every flat that reached the QC (excluded ones too)
    for p in by_step["master_flat"]:
        plots = [f for f in p.files if f["path"].endswith("_residual.png")]
        used = [r for r in p.meta["inputs"] if r["status"] == "used"]
        assert len(plots) == sum("qc" in r for r in p.meta["inputs"]) >= len(used) == p.meta["n_used"]
        assert all(0 < r["qc"]["rms"] < 0.02 and r["qc"]["gradient"] < 0.01 for r in used)
        assert p.meta["qc"]["rms_max"] < p.meta["qc"]["rms_limit"]


def test_provenance_records_frames_and_input_masters(pipeline):
    bias = products(pipeline, "master_bias")[0]
    with pipeline.db.session() as s:
        for p in products(pipeline, "master_flat") + products(pipeline, "master_illumination"):
            rows = s.scalars(select(ProvenanceInput).where(ProvenanceInput.provenance_id == p.provenance_id)).all()
            roles = {r.role for r in rows}
            assert {"raw", "bias", "dark"} <= roles
            assert any(r.role == "bias" and r.input_id == bias.id for r in rows)
            if p.step == "master_illumination":
                flat = next(r for r in rows if r.role == "flat")
                flat_p = s.get(Product, flat.input_id)
                assert flat_p.context["flat_type"] == p.context["flat_type"]  # made against its own flat type


def test_bad_inputs_are_excluded_with_reasons(pipeline):
    anomaly = {v: k for k, v in pipeline.night.anomalies.items()}
    bias = products(pipeline, "master_bias")[0]
    excluded = {e["filename"]: e["reason"] for e in bias.meta["excluded"]}
    leak = anomaly["light leak"]
    assert list(excluded) == [leak] and "level of amplifier" in excluded[leak]
    assert bias.qc_status == "warn"
    flat = next(p for p in products(pipeline, "master_flat") if "/rSDSS/dome/" in p.unit_key)
    excluded = {e["filename"]: e["reason"] for e in flat.meta["excluded"]}
    sat = anomaly["saturated"]
    assert list(excluded) == [sat] and excluded[sat].startswith("saturated")
    assert flat.meta["n_used"] == flat.meta["n_inputs"] - 1
    # the signature screens its dome flats as the master flat does: the saturated flat is in no pair, no series
    (sig,) = products(pipeline, "instrument_signature")
    excluded = {e["filename"]: e["reason"] for e in sig.meta["excluded"]}
    assert sat in excluded and excluded[sat].startswith("saturated")
    rec = next(r for r in sig.meta["inputs"] if r["filename"] == sat)
    assert rec["status"] == "excluded" and rec["saturated_fraction"] > 0.5
    # an unevenly lit flat passes the screening but fails the flat-field stability QC: excluded, master recombined
    flat = next(p for p in products(pipeline, "master_flat") if "/zSDSS/dome/" in p.unit_key)
    excluded = {e["filename"]: e["reason"] for e in flat.meta["excluded"]}
    grad = anomaly["gradient"]
    assert list(excluded) == [grad] and excluded[grad].startswith("flat-field QC: large-scale gradient")
    rec = next(r for r in flat.meta["inputs"] if r["filename"] == grad)
    assert rec["status"] == "excluded" and rec["qc"]["gradient"] == pytest.approx(0.03, rel=0.1)
    assert flat.meta["qc"]["gradient_max"] < 0.002  # the flats kept agree with the master recombined without it
    assert any(f["path"].endswith(grad.split(".")[0] + "_residual.png") for f in flat.files)
    dark = products(pipeline, "master_dark")[0]
    excluded = {e["filename"]: e["reason"] for e in dark.meta["excluded"]}
    assert list(excluded) == [pipeline.corrupted] and "unreadable" in excluded[pipeline.corrupted]
    clean = next(p for p in products(pipeline, "master_flat") if "/rSDSS/sky/" in p.unit_key)
    assert clean.meta["excluded"] == [] and clean.qc_status == "ok"


def test_a_second_run_has_nothing_to_do(pipeline):
    sched = Scheduler(pipeline.db, pipeline.settings, None, options=SchedulerOptions(steps=CALIB_STEPS))
    report = sched.plan(dry_run=True)
    assert {u.status for u in report.units} == {"current"}


def test_lookup_chooses_the_nights_masters(pipeline):
    z = science_frame(pipeline, "zSDSS")
    with pipeline.db.session() as s:
        sel = select_masters(s, z.id, LookupConfig())
    assert sel.ready and sel.reason == ""
    assert set(sel.chosen) == {"bias", "dark", "flat", "fringe", "illumination", "bpm", "signature"}
    assert all(c.rule == "valid" and c.distance_nights == 0 for c in sel.chosen.values())
    assert sel.chosen["flat"].flat_type == "dome"  # first preference
    ids = {p.id: p for p in products(pipeline)}
    assert ids[sel.chosen["illumination"].product_id].context["flat_type"] == "dome"
    assert {r.role for r in sel.inputs()} == set(sel.chosen)
    r = science_frame(pipeline, "rSDSS")
    with pipeline.db.session() as s:
        sel = select_masters(s, r, LookupConfig(flat_types=("sky", "dome")))
    assert "fringe" not in sel.chosen and any("does not fringe" in n for n in sel.notes)
    assert sel.chosen["flat"].flat_type == "sky"
    assert ids[sel.chosen["illumination"].product_id].context["flat_type"] == "sky"


def test_missing_flat_falls_back_within_the_window_else_waits(pipeline):
    from .helpers import add_frame

    z = science_frame(pipeline, "zSDSS")
    later = z.date_obs + dt.timedelta(days=3)
    with scratch_session(pipeline.db) as s:
        fid = add_frame(s, night=(dt.date.fromisoformat(z.night) + dt.timedelta(days=3)).isoformat(),
                        obs_type="science", date_obs=later, filter_name="zSDSS")
        sel = select_masters(s, fid, LookupConfig(fallback_nights=10))
        assert sel.ready
        flat = sel.chosen["flat"]
        assert flat.rule == "fallback" and flat.distance_nights == -3 and "fallback" in flat.reason
        s.info.clear()
        sel = select_masters(s, fid, LookupConfig(fallback_nights=2))
        assert not sel.ready
        assert "no dome/sky master flat" in sel.reason and "±2 nights" in sel.reason
        assert sel.missing["flat"].required and not sel.missing["flat"].expected
        assert "dark" in sel.missing and not sel.missing["dark"].waiting  # optional: skipped
        # a bad master is never used: with the dome flat marked bad the sky flat of that night is taken
    with scratch_session(pipeline.db) as s:
        dome = s.scalars(select(Product).where(Product.step == "master_flat", Product.is_current.is_(True),
                                               Product.unit_key.contains("/zSDSS/dome/"))).one()
        dome.is_bad = True
        s.flush()
        sel = select_masters(s, z.id, LookupConfig())
        assert sel.chosen["flat"].flat_type == "sky" and sel.chosen["flat"].rule == "valid"


def test_frames_wait_for_a_master_still_to_come(pipeline):
    from .helpers import add_frame

    z = science_frame(pipeline, "zSDSS")
    night = (dt.date.fromisoformat(z.night) + dt.timedelta(days=2)).isoformat()
    t0 = night_start(night) + dt.timedelta(hours=4)
    with scratch_session(pipeline.db) as s:
        s.info["upad_now"] = t0 + dt.timedelta(hours=1)
        for k in range(3):
            add_frame(s, night=night, obs_type="bias", date_obs=t0 + dt.timedelta(seconds=30 * k), exptime=0.0)
        sel = select_masters(s, add_frame(s, night=night, obs_type="science", date_obs=t0 + dt.timedelta(hours=0.5),
                                          filter_name="zSDSS"), LookupConfig())
        assert not sel.ready
        assert sel.missing["bias"].expected
        assert f"waiting for the master bias for mini/MODE_5/readout of night {night}" in sel.reason
        assert "ready to be built" in sel.reason
        assert sel.chosen["flat"].rule == "fallback"  # no flats that night: nothing to wait for


def test_dark_is_optional_but_waited_for_when_expected(pipeline):
    from .helpers import add_frame

    z = science_frame(pipeline, "zSDSS")
    night = (dt.date.fromisoformat(z.night) + dt.timedelta(days=1)).isoformat()
    t0 = night_start(night) + dt.timedelta(hours=4)
    with scratch_session(pipeline.db) as s:
        s.info["upad_now"] = t0 + dt.timedelta(minutes=10)
        add_frame(s, night=night, obs_type="dark", date_obs=t0, exptime=300.0)
        sel = select_masters(s, add_frame(s, night=night, obs_type="science", date_obs=t0 - dt.timedelta(hours=1),
                                          filter_name="zSDSS"), LookupConfig())
        # the dark series of that night is still being taken (no later frame, night not over): wait for it
        assert sel.missing["dark"].expected and "may still grow" in sel.reason
        s.info.clear()
        s.info["upad_now"] = t0 + dt.timedelta(minutes=10)
        sel = select_masters(s, sel.frame_id, LookupConfig(wait_for_expected=False))
        assert sel.ready and sel.chosen["dark"].rule == "fallback"


def test_lookup_follows_the_configured_master_steps(pipeline):
    """The lookup sees what the master steps of the data root will build (upad.toml), not their defaults: with no
    illumination correction configured (``build_flat_types = []``) a science frame does not wait for one."""
    from upad.calib.config import MasterIllumConfig

    from .helpers import add_frame

    z = science_frame(pipeline, "zSDSS")
    night = (dt.date.fromisoformat(z.night) + dt.timedelta(days=3)).isoformat()
    t0 = night_start(night) + dt.timedelta(hours=4)
    with scratch_session(pipeline.db) as s:
        s.info["upad_now"] = night_end(night) + dt.timedelta(hours=2)
        ids = [add_frame(s, night=night, obs_type="science", date_obs=t0 + dt.timedelta(minutes=2 * k),
                         filter_name="zSDSS", ra=150.0 + 0.01 * k) for k in range(3)]
        sel = select_masters(s, ids[0], LookupConfig())
        assert "illumination" in sel.missing and sel.missing["illumination"].expected, sel.reason
        s.info.clear()
        s.info["upad_now"] = night_end(night) + dt.timedelta(hours=2)
        s.info["upad_step_configs"] = {"master_illumination": MasterIllumConfig(build_flat_types=())}
        sel = select_masters(s, ids[0], LookupConfig())
        assert "illumination" not in sel.missing or not sel.missing["illumination"].expected, sel.reason
