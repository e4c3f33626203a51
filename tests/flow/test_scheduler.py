"""The scheduler on real databases: planning, dispatch, provenance, retries, invalidation, reprocessing."""
from __future__ import annotations

from conftest import add_frames
from sqlalchemy import func, select

from upad.db.models import Attempt, Job, Product, Run
from upad.execution import InlineExecutor, LocalExecutor
from upad.flow.invalidate import flag_frame
from upad.flow.scheduler import Scheduler, SchedulerOptions

NIGHTS = ["2025-03-01", "2025-03-02"]
TOY = ("toy_a", "toy_b", "toy_c")


def make(settings, db, executor=None, **opts):
    options = SchedulerOptions(steps=TOY, poll_seconds=0.05, min_replan_seconds=0.0, backoff_seconds=0.05, **opts)
    return Scheduler(db, settings, executor or InlineExecutor(), options=options)


def current_values(db, step):
    with db.session() as s:
        rows = s.execute(select(Product.unit_key, Product.meta).where(Product.step == step,
                                                                      Product.is_current.is_(True))).all()
    return {k: m["value"] for k, m in rows}


def check_archive(settings, db):
    """Every current product's files exist with their checksum; no file in the product areas is unregistered."""
    from upad.io.atomic import sha256_file

    with db.session() as s:
        products = list(s.scalars(select(Product)))
    registered = set()
    for p in products:
        for f in p.files:
            path = settings.root / f["path"]
            assert path.is_file(), f"missing file of product {p.id}: {path}"
            assert sha256_file(path) == f["sha256"]
            registered.add(path)
    on_disk = {p for area in ("reduced", "calibration") for p in (settings.root / area).rglob("*") if p.is_file()}
    assert on_disk == registered, f"orphans: {on_disk - registered}"
    staging = settings.root / "tmp" / "staging"
    assert not staging.exists() or not any(staging.iterdir())
    # one current product per unit, never two products for one provenance
    keys = [(p.step, p.unit_key) for p in products if p.is_current]
    assert len(keys) == len(set(keys))


def test_plan_dry_run_explains_waiting(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 3, NIGHTS)
    sched = make(settings, db)
    report = sched.plan(dry_run=True)
    by = report.by_status()
    assert by["toy_a"] == {"would-run": 3}
    waiting = [u for u in report.units if u.step == "toy_b"]
    assert {u.status for u in waiting} == {"waiting"}
    assert "needs at least 2 toy_a products" in waiting[0].reason
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # dry run changes nothing


def test_run_until_idle_end_to_end(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 6, NIGHTS)
    counts = make(settings, db).run(until_idle=True)
    assert counts["done"] == 6 + 2 + 6
    a = current_values(db, "toy_a")
    b = current_values(db, "toy_b")
    c = current_values(db, "toy_c")
    assert sorted(a.values()) == sorted(ids)
    for night in NIGHTS:
        expected = sum(fid for fid in ids if f"{night}/frame{fid}" in a)
        assert b[night] == expected
    for key, value in c.items():
        night, frame = key.split("/")
        assert value == b[night] + int(frame.removeprefix("frame"))
    check_archive(settings, db)
    with db.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.state == "finished" and run.summary["done"] == 14
    # a second run finds everything current: no job, no product
    counts2 = make(settings, db).run(until_idle=True)
    assert counts2.get("done", 0) == 0 and counts2.get("jobs_created", 0) == 0


def test_provenance_records_inputs_and_config(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 4, NIGHTS)
    make(settings, db).run(until_idle=True)
    with db.session() as s:
        master = s.scalars(select(Product).where(Product.step == "toy_b")).first()
        roles = {(i.input_kind, i.role) for i in master.provenance.inputs}
        assert roles == {("product", "part")}
        assert master.provenance.config == {"scale": 1}  # only critical parameters
        assert master.provenance.code_version.endswith("/1.0")
        # the file lives under its short provenance id: versions never overwrite each other
        assert master.provenance_id[:12] in master.files[0]["path"]


def test_deterministic_failure_is_recorded_and_does_not_block(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 4, NIGHTS)
    bad = f"{NIGHTS[0]}/frame{ids[0]}"
    (settings.root / "upad.toml").write_text(f'[steps.toy_a]\nfail_keys = ["{bad}"]\n')
    counts = make(settings, db).run(until_idle=True)
    assert counts["failed"] == 1
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.unit_key == bad, Job.step == "toy_a")).one()
        assert job.state == "failed" and "toy failure" in job.error
        assert len(job.attempts) == 1 and job.attempts[0].transient is False  # never retried
    # night 2 is complete; night 1 has a single toy_a product, so its toy_b waits with a reason
    assert NIGHTS[1] in current_values(db, "toy_b")
    report = make(settings, db).plan(dry_run=True)
    waiting = {u.unit.key: u.reason for u in report.units if u.status == "waiting"}
    assert "has 1" in waiting[NIGHTS[0]]


def test_transient_failure_is_retried_with_backoff(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 2, NIGHTS[:1])
    flaky = f"{NIGHTS[0]}/frame{ids[1]}"
    (settings.root / "upad.toml").write_text(f'[steps.toy_a]\nflaky_keys = ["{flaky}"]\n')
    counts = make(settings, db).run(until_idle=True)
    assert counts["retried"] == 1 and counts.get("failed", 0) == 0
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.unit_key == flaky, Job.step == "toy_a")).one()
        assert job.state == "done"
        assert [a.state for a in job.attempts] == ["failed", "succeeded"]
        assert job.attempts[0].transient is True
        assert job.attempts[1].started_at >= job.attempts[0].ended_at


def test_flag_invalid_cascades_and_rebuilds_without_the_frame(flow_env):
    settings, db = flow_env
    ids = add_frames(db, settings.root, 6, NIGHTS)
    make(settings, db).run(until_idle=True)
    b_before = current_values(db, "toy_b")
    bad = ids[0]
    night = NIGHTS[0]
    n_night = sum(1 for k in current_values(db, "toy_c") if k.startswith(night))
    with db.session() as s:
        result = flag_frame(s, str(bad), invalid=True, reason="satellite in the field")
    # its toy_a, its night's toy_b and every toy_c of that night (built from that toy_b) are stale
    assert len(result["stale_products"]) == 1 + 1 + n_night
    make(settings, db).run(until_idle=True)
    b_after = current_values(db, "toy_b")
    assert b_after[night] == b_before[night] - bad
    assert b_after[NIGHTS[1]] == b_before[NIGHTS[1]]
    c = current_values(db, "toy_c")
    assert f"{night}/frame{bad}" not in c
    for key, value in c.items():
        n, frame = key.split("/")
        assert value == b_after[n] + int(frame.removeprefix("frame"))
    with db.session() as s:
        stale = s.scalar(select(func.count()).select_from(Product).where(Product.state == "stale"))
        assert stale == len(result["stale_products"])  # old products are kept, not deleted
    check_archive(settings, db)
    # flagging it valid again: the products made from it are current again, no rebuild needed
    with db.session() as s:
        flag_frame(s, str(bad), invalid=False, reason="")
    with db.session() as s:
        n_toy_a_jobs = s.scalar(select(func.count()).select_from(Job).where(Job.step == "toy_a"))
    make(settings, db).run(until_idle=True)
    assert current_values(db, "toy_a")[f"{night}/frame{bad}"] == bad
    with db.session() as s:  # its toy_a product was revived, not rebuilt
        assert s.scalar(select(func.count()).select_from(Job).where(Job.step == "toy_a")) == n_toy_a_jobs
    # and its toy_c is rebuilt against the night's current toy_b
    assert current_values(db, "toy_c")[f"{night}/frame{bad}"] == current_values(db, "toy_b")[night] + bad


def test_reprocess_after_config_change(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 4, NIGHTS)
    make(settings, db).run(until_idle=True)
    b1 = current_values(db, "toy_b")
    (settings.root / "upad.toml").write_text("[steps.toy_b]\nscale = 10\n")
    # a config change alone does not rebuild anything …
    assert make(settings, db).run(until_idle=True).get("done", 0) == 0
    # … reprocess does, for the nights asked, and what depends on the new masters follows
    sched = make(settings, db)
    report = sched.plan(force_steps=["toy_b"], since=NIGHTS[1])
    assert report.created == 1
    make(settings, db).run(until_idle=True)
    b2 = current_values(db, "toy_b")
    assert b2[NIGHTS[1]] == 10 * b1[NIGHTS[1]] and b2[NIGHTS[0]] == b1[NIGHTS[0]]
    for key, value in current_values(db, "toy_c").items():
        n, frame = key.split("/")
        assert value == b2[n] + int(frame.removeprefix("frame"))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Product).where(Product.step == "toy_b")) == 3
    check_archive(settings, db)


def test_local_pool_same_products_as_inline(flow_env, tmp_path):
    settings, db = flow_env
    add_frames(db, settings.root, 6, NIGHTS)
    ex = LocalExecutor(workers=2)
    try:
        counts = make(settings, db, ex).run(until_idle=True)
    finally:
        ex.close()
    assert counts["done"] == 14
    with db.session() as s:
        provs = sorted(p for (p,) in s.execute(select(Product.provenance_id).where(Product.is_current.is_(True))))
        workers = {a.worker for a in s.scalars(select(Attempt))}
        peaks = [a.peak_rss_mb for a in s.scalars(select(Attempt))]
    assert all(p and p > 0 for p in peaks)
    check_archive(settings, db)
    # the same frames through the inline executor give the same provenance ids
    from upad.db import Database
    from upad.settings import Settings

    other = Database(f"sqlite:///{tmp_path / 'other.sqlite'}")
    other.upgrade()
    s2 = Settings(root=tmp_path / "root2", db_url=other.url)
    s2.create_layout()
    add_frames(other, s2.root, 6, NIGHTS)
    make(s2, other).run(until_idle=True)
    with other.session() as s:
        provs2 = sorted(p for (p,) in s.execute(select(Product.provenance_id).where(Product.is_current.is_(True))))
    assert provs == provs2
    assert len(workers) >= 1
