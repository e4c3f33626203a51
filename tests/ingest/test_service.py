"""Ingest end to end on both database backends: registration, idempotency, conflicts, quarantine, modes, crashes."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from upad.db import Frame, FrameEvent, QuarantinedFile, Tile
from upad.ingest import archive, ingest_paths, watch
from upad.ingest import service as service_mod
from upad.ingest.verify import scan_structure
from upad.settings import Settings

from .conftest import temp_files
from .fitsmaker import RawSpec, make_batch, write_raw

NIGHT = "2015-08-10"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def frames(db) -> list[Frame]:
    with db.session() as s:
        return list(s.scalars(select(Frame).order_by(Frame.id)))


def quarantined(db) -> list[QuarantinedFile]:
    with db.session() as s:
        return list(s.scalars(select(QuarantinedFile).order_by(QuarantinedFile.id)))


def n_rows(db, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def assert_archive_consistent(db, settings: Settings) -> None:
    """Every frame row points at an archived file with the recorded content; no temporary files anywhere."""
    for f in frames(db):
        path = settings.root / f.path
        assert path.exists(), f.path
        assert sha(path) == f.sha256
    assert temp_files(settings.root) == []


# -- registration -------------------------------------------------------------------------------------------------------
def test_registers_frames_with_metadata_qc_and_header(database, settings: Settings, incoming: Path) -> None:
    a = write_raw(incoming, RawSpec(seq=1, bias=[1010.0, 1250.0, 900.0, 1180.0]))
    b = write_raw(incoming / "sub", RawSpec(seq=2, convention="T80S", filter="J0660"), compressed=False)
    c = write_raw(incoming, RawSpec(seq=3, obs_type="bias", exptime=0.0, filter=None))
    seen = []
    report = ingest_paths(database, settings, [incoming], progress=seen.append)
    assert report.counts == {"registered": 3, "already_registered": 0, "conflict": 0, "quarantined": 0, "failed": 0,
                             "skipped": 0}
    assert [o.filename for o in seen] == sorted([a.name, b.name, c.name])
    assert report.exit_code(strict=True) == 0

    rows = {f.filename: f for f in frames(database)}
    fa, fb, fc = rows[a.name], rows[b.name], rows[c.name]
    assert fa.path == f"raw/{NIGHT}/{a.name}"
    assert (settings.root / fa.path).read_bytes() == a.read_bytes()
    assert a.exists() and b.exists(), "copy mode keeps the sources"
    assert fa.sha256 == sha(a) and fa.size_bytes == a.stat().st_size and fa.original_path == str(a)
    assert (fa.instrument, fa.telescope, fa.header_convention, fa.layout) == ("mini", "OAJ-T80", "OAJ", "readout")
    assert (fa.naxis1, fa.naxis2, fa.n_detectors) == (1056, 1056, 1)
    assert (fa.obs_type, fa.filter, fa.night, fa.read_mode, fa.exptime) == ("science", "rSDSS", NIGHT, "MODE_5", 30.0)
    assert fa.tile_id == 12 and fa.object == "TILE-00012"
    assert fa.ra == pytest.approx(290.087896) and fa.airmass == pytest.approx(1.12)
    assert fa.qc_status == "ok" and fa.qc_reasons == []
    assert fa.qc_bias == pytest.approx([1010.0, 1250.0, 900.0, 1180.0], abs=0.5)
    assert fa.qc_sky_median == pytest.approx(500.0, rel=0.01)
    assert fa.qc_fwhm == pytest.approx(3.0 * 0.55, rel=0.15)
    assert fa.qc_n_sources == pytest.approx(40, abs=3) and fa.qc_saturated_fraction == 0.0
    assert fa.qc_seconds > 0
    assert fa.header["OAJ DPR TYPE"] == "OBJECT" and fa.header["INSTRUME"] == "MiniCam"
    assert (fb.header_convention, fb.filter, fb.layout) == ("T80S", "J0660", "readout")
    assert fb.ra == pytest.approx(290.087896, abs=1e-5) and fb.header["RA"] == "19:20:21.095"
    assert (fc.obs_type, fc.filter, fc.tile_id, fc.qc_fwhm) == ("bias", None, None, None)

    with database.session() as s:
        tile = s.get(Tile, 12)
        assert (tile.name, tile.ra) == ("TILE-00012", pytest.approx(290.087896))
        events = list(s.scalars(select(FrameEvent).where(FrameEvent.frame_id == fa.id)))
    assert [e.event for e in events] == ["ingested"]
    detail = events[0].detail
    assert detail["sha256"] == fa.sha256 and detail["original_path"] == str(a) and detail["mode"] == "copy"
    assert set(detail["timing_s"]) >= {"read_s", "verify_s", "qc_s", "archive_s"}
    assert detail["recovered_archive_copy"] is False
    assert_archive_consistent(database, settings)


def test_same_file_twice_is_registered_once(database, settings: Settings, incoming: Path) -> None:
    files = make_batch(incoming, 3, n_stars=5)
    ingest_paths(database, settings, [incoming])
    report = ingest_paths(database, settings, [incoming, files[0]])  # a file named twice is taken once
    assert report.counts["already_registered"] == 3 and report.registered == 0
    assert n_rows(database, Frame) == 3 and n_rows(database, FrameEvent) == 3
    # the same content under another name is recognised too
    other = incoming / "renamed" / "m02-20150811T013019-77.fits.fz"
    other.parent.mkdir()
    shutil.copy(files[0], other)
    out = ingest_paths(database, settings, [other]).outcomes[0]
    assert out.status == "already_registered" and "same content" in out.notes[0]
    assert n_rows(database, Frame) == 3


def test_conflict_keeps_the_archived_file(database, settings: Settings, incoming: Path) -> None:
    original = write_raw(incoming, RawSpec(seed=1, n_stars=5))
    ingest_paths(database, settings, [original])
    archived = settings.root / "raw" / NIGHT / original.name
    before = archived.read_bytes()

    other_dir = incoming / "redelivered"
    different = write_raw(other_dir, RawSpec(seed=2, n_stars=5))
    assert different.name == original.name and sha(different) != sha(original)
    report = ingest_paths(database, settings, [different])
    out = report.outcomes[0]
    assert out.status == "conflict" and out.category == "conflict" and report.conflicts == 1
    assert "already registered" in out.reason
    assert archived.read_bytes() == before
    assert n_rows(database, Frame) == 1
    (row,) = quarantined(database)
    assert (row.category, row.sha256, row.filename) == ("conflict", sha(different), different.name)
    copy = settings.root / row.quarantine_path
    assert copy.read_bytes() == different.read_bytes()
    assert archive.reason_path(copy).exists()
    assert report.exit_code(strict=False) == 0 and report.exit_code(strict=True) == 1

    again = ingest_paths(database, settings, [different]).outcomes[0]
    assert again.status == "conflict" and again.already
    assert len(quarantined(database)) == 1


def test_unregistered_different_file_in_archive_is_a_conflict(database, settings: Settings,
                                                              incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(n_stars=5))
    squatter = settings.root / "raw" / NIGHT / f.name
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")
    out = ingest_paths(database, settings, [f]).outcomes[0]
    assert out.status == "conflict" and "not registered" in out.reason
    assert squatter.read_bytes() == b"someone else's file"
    assert n_rows(database, Frame) == 0


# -- the bad-input matrix ---------------------------------------------------------------------------------------------------
def make_bad_batch(incoming: Path) -> dict[str, str]:
    """Two good files plus one file per refusal category; returns filename → expected category."""
    write_raw(incoming, RawSpec(seq=1, n_stars=5))
    write_raw(incoming, RawSpec(seq=2, n_stars=5), compressed=False)
    expected: dict[str, str] = {}
    scratch = incoming.parent / "scratch"

    good = write_raw(scratch, RawSpec(seq=3, n_stars=5)).read_bytes()
    (incoming / "m02-20150811T013019-03.fits.fz").write_bytes(good[:len(good) // 2])
    expected["m02-20150811T013019-03.fits.fz"] = "truncated"

    spans = scan_structure(good)
    bad = bytearray(good)
    mid = spans[1].data_start + spans[1].data_size // 2
    bad[mid:mid + 20000] = bytes((i * 37 + 11) % 256 for i in range(20000))
    (incoming / "m02-20150811T013019-04.fits.fz").write_bytes(bytes(bad))
    expected["m02-20150811T013019-04.fits.fz"] = "corrupt"

    write_raw(incoming, RawSpec(seq=5), pixels=np.full((1000, 1000), 1000, np.uint16))
    expected["m02-20150811T013019-05.fits.fz"] = "wrong_shape"
    write_raw(incoming, RawSpec(seq=6), compressed=False, pixels=np.full((1056, 1056), 1000.0, np.float32))
    expected["m02-20150811T013019-06.fits"] = "wrong_dtype"
    write_raw(incoming, RawSpec(seq=7, n_stars=0, drop_keys=("DATE-OBS", "EXPTIME")))
    expected["m02-20150811T013019-07.fits.fz"] = "missing_keys"
    write_raw(incoming, RawSpec(seq=8, n_stars=0, extra_cards={"INSTRUME": "OmegaCAM"}))
    expected["m02-20150811T013019-08.fits.fz"] = "unknown_instrument"
    write_raw(incoming, RawSpec(seq=9, n_stars=0, extra_cards={"DEC": "+95:00:00"}))
    expected["m02-20150811T013019-09.fits.fz"] = "bad_value"

    ck = bytearray(write_raw(scratch, RawSpec(seq=10, n_stars=0), compressed=False, checksum=True).read_bytes())
    ck[-5000] ^= 0x04
    (incoming / "m02-20150811T013019-10.fits").write_bytes(bytes(ck))
    expected["m02-20150811T013019-10.fits"] = "checksum"

    (incoming / "notes.fits").write_text("observing log: all fine\n")
    expected["notes.fits"] = "not_fits"
    (incoming / "preview.fits.fz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    expected["preview.fits.fz"] = "not_fits"
    (incoming / "empty.fits").write_bytes(b"")
    expected["empty.fits"] = "empty"
    (incoming / "x.fits").mkdir()
    expected["x.fits"] = "unreadable"
    os.symlink(incoming / "gone.fits.fz", incoming / "dangling.fits.fz")
    expected["dangling.fits.fz"] = "unreadable"
    shutil.rmtree(scratch)
    return expected


def test_bad_input_matrix(database, settings: Settings, incoming: Path) -> None:
    from .conftest import run_cli

    expected = make_bad_batch(incoming)
    (incoming / "README.txt").write_text("not a FITS name: ignored by directory scans")
    report = ingest_paths(database, settings, [incoming])
    assert report.registered == 2 and report.failed == 0
    assert report.quarantined == len(expected)
    got = {o.filename: o for o in report.outcomes if o.status == "quarantined"}
    assert {k: o.category for k, o in got.items()} == expected
    rows = {r.filename: r for r in quarantined(database)}
    assert {k: r.category for k, r in rows.items()} == expected
    for name, row in rows.items():
        assert row.reason and len(row.reason) > 20, name
        assert row.original_path == str(incoming / name)
        if expected[name] == "unreadable":
            assert row.quarantine_path is None and row.sha256 is None
        else:
            copy = settings.root / row.quarantine_path
            assert copy.read_bytes() == (incoming / name).read_bytes()
            assert row.sha256 == sha(copy) and row.size_bytes == copy.stat().st_size
            text = archive.reason_path(copy).read_text()
            assert row.category in text and str(incoming / name) in text
    assert_archive_consistent(database, settings)

    # the CLI: the same batch again is idempotent; exit status non-zero only with --strict
    url = settings.db_url
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", url]) == 0
    assert run_cli(["ingest", incoming, "--root", settings.root, "--db", url, "--strict"]) == 1
    assert len(quarantined(database)) == len(expected) and n_rows(database, Frame) == 2
    assert run_cli(["ingest", incoming / "m02-20150811T013019-01.fits.fz", "--root", settings.root, "--db", url,
                    "--strict"]) == 0


def test_quarantine_recovers_from_a_crash_before_its_row(database, settings: Settings, incoming: Path) -> None:
    (incoming / "notes.fits").write_text("not FITS")
    ingest_paths(database, settings, [incoming])
    with database.session() as s:  # as if the process died after copying, before the insert
        s.execute(delete(QuarantinedFile))
    ingest_paths(database, settings, [incoming])
    (row,) = quarantined(database)
    qdir = (settings.root / row.quarantine_path).parent
    assert sorted(os.listdir(qdir)) == ["notes.fits", "notes.fits.reason.txt"]  # no notes~2.fits


def test_quarantined_file_that_later_passes_is_resolved(database, settings: Settings, incoming: Path,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = write_raw(incoming, RawSpec(n_stars=5, extra_cards={"INSTRUME": "MiniCam2"}))
    assert ingest_paths(database, settings, [f]).outcomes[0].category == "unknown_instrument"
    # the camera description arrives
    inst_dir = tmp_path / "instruments"
    inst_dir.mkdir()
    toml = (Path(service_mod.get_instrument("mini").source)).read_text()
    (inst_dir / "mini2.toml").write_text(toml.replace('name = "MiniCam"', 'name = "MiniCam2"')
                                         .replace('key = "mini"', 'key = "mini2"'))
    monkeypatch.setenv("UPAD_INSTRUMENT_PATH", str(inst_dir))
    out = ingest_paths(database, settings, [f]).outcomes[0]
    assert out.status == "registered" and "resolved" in out.notes[0]
    (row,) = quarantined(database)
    assert row.resolved
    assert frames(database)[0].instrument == "mini2"


# -- modes --------------------------------------------------------------------------------------------------------------------
def test_move_mode(database, settings: Settings, incoming: Path) -> None:
    expected = make_bad_batch(incoming)
    good = sorted(incoming.glob("m02-*-0[12].fits*"))
    shas = {p.name: sha(p) for p in good}
    report = ingest_paths(database, settings, [incoming], mode="move")
    assert report.registered == 2
    for name, digest in shas.items():
        assert not (incoming / name).exists()
        assert sha(settings.root / "raw" / NIGHT / name) == digest
    left = sorted(p.name for p in incoming.iterdir())
    assert left == ["dangling.fits.fz", "x.fits"], "refused files are moved to quarantine, unreadable ones stay"
    assert len(quarantined(database)) == len(expected)
    assert_archive_consistent(database, settings)


def test_link_mode(database, settings: Settings, incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(n_stars=5))
    ingest_paths(database, settings, [f], mode="link")
    archived = settings.root / "raw" / NIGHT / f.name
    assert archived.is_symlink() and os.readlink(archived) == str(f)
    assert ingest_paths(database, settings, [f], mode="link").outcomes[0].status == "already_registered"
    assert_archive_consistent(database, settings)


def test_move_mode_keeps_the_source_when_the_database_fails(database, settings: Settings, incoming: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_batch(incoming, 2, n_stars=5)

    def db_down(self, *args, **kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(service_mod._Ingester, "_register", db_down)
    report = ingest_paths(database, settings, [incoming], mode="move")
    assert report.failed == 2 and report.exit_code() == 1
    assert "database unavailable" in report.outcomes[0].reason
    assert all(f.exists() for f in files), "nothing is removed before the commit"
    assert n_rows(database, Frame) == 0
    monkeypatch.undo()
    report = ingest_paths(database, settings, [incoming], mode="move")
    assert report.registered == 2 and all(o.recovered for o in report.outcomes)
    assert not any(f.exists() for f in files)
    assert n_rows(database, Frame) == 2
    assert_archive_consistent(database, settings)


# -- crashes ------------------------------------------------------------------------------------------------------------------
def test_crash_between_archive_copy_and_database_insert(database, settings: Settings, incoming: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_batch(incoming, 3, n_stars=5)
    calls = []
    real = service_mod._Ingester._register

    def killed_on_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a BaseException: stops everything, like a kill
        return real(self, *args, **kwargs)

    monkeypatch.setattr(service_mod._Ingester, "_register", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(database, settings, [incoming], mode="move")
    assert n_rows(database, Frame) == 1
    second = settings.root / "raw" / NIGHT / files[1].name
    assert second.exists() and files[1].exists(), "archived but unregistered; the source is still there"
    monkeypatch.undo()

    report = ingest_paths(database, settings, [incoming], mode="move")
    assert report.registered == 2
    assert [o.recovered for o in report.outcomes] == [True, False]
    assert n_rows(database, Frame) == 3 and len({f.filename for f in frames(database)}) == 3
    assert not any(f.exists() for f in files)
    assert_archive_consistent(database, settings)


def test_crash_after_commit_before_source_removal(database, settings: Settings, incoming: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (f,) = make_batch(incoming, 1, n_stars=5)

    def killed(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(archive, "remove_source", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths(database, settings, [incoming], mode="move")
    assert n_rows(database, Frame) == 1 and f.exists()
    monkeypatch.undo()
    out = ingest_paths(database, settings, [incoming], mode="move").outcomes[0]
    assert out.status == "already_registered" and out.source_removed
    assert not f.exists() and n_rows(database, Frame) == 1
    assert_archive_consistent(database, settings)


def test_stale_temporary_files_are_cleaned(database, settings: Settings, incoming: Path) -> None:
    (f,) = make_batch(incoming, 1, n_stars=5)
    night_dir = settings.root / "raw" / NIGHT
    night_dir.mkdir(parents=True)
    # left by a writer that died (pid 2**22 + 1 is above Linux's pid_max default)
    stale = night_dir / f".{f.name}{archive.TEMP_MARK}{archive._HOST}.{2 ** 22 + 1}.deadbeef"
    stale.write_bytes(f.read_bytes()[:1000])
    ingest_paths(database, settings, [f])
    assert not stale.exists()
    assert_archive_consistent(database, settings)


def test_lost_archive_copy_is_restored(database, settings: Settings, incoming: Path) -> None:
    (f,) = make_batch(incoming, 1, n_stars=5)
    ingest_paths(database, settings, [f])
    archived = settings.root / "raw" / NIGHT / f.name
    archived.unlink()
    out = ingest_paths(database, settings, [f]).outcomes[0]
    assert out.status == "already_registered" and "restored" in out.notes[-1]
    assert archived.read_bytes() == f.read_bytes()
    with database.session() as s:
        assert [e.event for e in s.scalars(select(FrameEvent).order_by(FrameEvent.id))] == ["ingested", "restored"]


# -- watch ------------------------------------------------------------------------------------------------------------------
def test_watch_takes_files_once_stable(database, settings: Settings, incoming: Path, tmp_path: Path) -> None:
    ready = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    full = write_raw(tmp_path / "src", RawSpec(seq=2, n_stars=5)).read_bytes()
    growing = incoming / "m02-20150811T013019-02.fits.fz"
    growing.write_bytes(full[:len(full) // 3])
    polls: dict[int, list[str]] = {}

    def on_poll(n: int, outcomes) -> None:
        polls[n] = [f"{o.filename}:{o.status}" for o in outcomes]
        if n == 1:
            with open(growing, "ab") as fh:
                fh.write(full[len(full) // 3:2 * len(full) // 3])
        elif n == 2:
            with open(growing, "ab") as fh:
                fh.write(full[2 * len(full) // 3:])

    # the polls are instantaneous here: no settle time on top of the poll-to-poll stability
    no_settle = service_mod.IngestConfig.from_mapping({"limits": {"settle_s": 0.0}})
    report = watch(database, settings, [incoming], interval=0.0, max_polls=5, on_poll=on_poll,
                   sleep=lambda s: None, config=no_settle)
    assert polls == {1: [], 2: [f"{ready.name}:registered"], 3: [], 4: [f"{growing.name}:registered"], 5: []}
    assert report.polls == 5 and report.quarantined == 0
    assert n_rows(database, Frame) == 2


def test_watch_stops_on_ctrl_c(database, settings: Settings, incoming: Path) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    report = watch(database, settings, [incoming], interval=1.0, sleep=interrupt)
    assert report.interrupted and report.polls == 1
