"""Hostile and careless input (issue #11, parts 2-4): absurd headers, decompression bombs, symbolic links out of the
incoming directory, unprintable names, a file still being written during a move-mode ingest, two concurrent
move-mode ingests. Each test asserts: nothing lost (every source archived byte-identical, still in place, or
quarantined with a reason), nothing duplicated, nothing leaked, a clear reason recorded."""
from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from upad.db import Frame, QuarantinedFile
from upad.errors import UpadError
from upad.ingest import IngestConfig, ingest_paths, load_ingest_config
from upad.ingest import archive
from upad.ingest import service as service_mod
from upad.ingest.errors import IngestRejected
from upad.ingest.limits import LimitsConfig, check_filename, check_plausibility
from upad.ingest.translate import translate_header
from upad.ingest.verify import verify_bytes
from upad.instruments import get_instrument
from upad.settings import Settings

from .conftest import run_cli, temp_files
from .fitsmaker import RawSpec, make_header, make_pixels, write_raw

NIGHT = "2015-08-10"


def sha(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def frames(db) -> list[Frame]:
    with db.session() as s:
        return list(s.scalars(select(Frame).order_by(Frame.id)))


def quarantined(db) -> list[QuarantinedFile]:
    with db.session() as s:
        return list(s.scalars(select(QuarantinedFile).order_by(QuarantinedFile.id)))


def config(**limits) -> IngestConfig:
    return IngestConfig.from_mapping({"limits": limits}, where="ingest")


def files_under(root: Path) -> list[Path]:
    return [Path(d, f) for d, _, names in os.walk(root) for f in names]


# -- 2. absurd header values -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cards, words", [
    ({"DATE-OBS": "9999-12-31T23:00:00.000"}, ["9999-12-31", "future"]),
    ({"DATE-OBS": "0001-01-01T00:00:00.000"}, ["0001-01-01"]),
    ({"DATE-OBS": "0001-01-02T12:00:00.000"}, ["0001-01-02", "service_start 2015-01-01"]),
    ({"DATE-OBS": "2014-12-31T23:00:00.000"}, ["2014-12-31", "service_start 2015-01-01"]),
    ({"EXPTIME": 1e300}, ["EXPTIME 1e+300", "max_exptime_s"]),
    ({"EXPTIME": 3600.5}, ["EXPTIME 3600.5", "3600"]),
    ({"HIERARCH OAJ DET READ MODE": "MODE_42"}, ["MODE_42", "MODE_5, MODE_1"]),
])
def test_absurd_header_values_are_quarantined(database, settings: Settings, incoming: Path, cards: dict,
                                              words: list[str]) -> None:
    good = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    bad = write_raw(incoming, RawSpec(seq=2, n_stars=0, extra_cards=cards))
    report = ingest_paths(database, settings, [incoming])
    out = {o.filename: o for o in report.outcomes}
    assert out[good.name].status == "registered"
    assert out[bad.name].status == "quarantined" and out[bad.name].category == "implausible"
    assert report.failed == 0, "a refusal, never a crash"
    (row,) = quarantined(database)
    assert row.category == "implausible" and all(w in row.reason for w in words), row.reason
    assert (settings.root / row.quarantine_path).read_bytes() == bad.read_bytes()
    assert [f.filename for f in frames(database)] == [good.name]
    # the same file again: recorded once, still refused
    assert ingest_paths(database, settings, [bad]).outcomes[0].already
    assert len(quarantined(database)) == 1


def test_future_margin_is_configurable(database, settings: Settings, incoming: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    soon = write_raw(incoming, RawSpec(seq=1, n_stars=5, date_obs=now + dt.timedelta(hours=6)))
    later = write_raw(incoming, RawSpec(seq=2, n_stars=5, date_obs=now + dt.timedelta(days=3)))
    out = {o.filename: o for o in ingest_paths(database, settings, [incoming]).outcomes}
    assert out[soon.name].status == "registered", out[soon.name].reason  # within the default 1-day margin
    assert out[later.name].category == "implausible" and "future" in out[later.name].reason
    out = ingest_paths(database, settings, [later], config=config(future_margin_days=5.0)).outcomes[0]
    assert out.status == "registered"


def test_plausibility_of_an_instrument_without_declared_limits() -> None:
    inst = get_instrument("mini")
    bare = type(inst)(**{**{f: getattr(inst, f) for f in inst.__dataclass_fields__}, "service_start": None,
                         "max_exptime_s": None})
    meta = translate_header(make_header(RawSpec(n_stars=0, date_obs=dt.datetime(1995, 5, 1), exptime=7200.0)))
    now = dt.datetime(2026, 1, 1)
    check_plausibility(meta, bare, now=now)  # the ingest.limits fallbacks: after 1990, up to a day of exposure
    with pytest.raises(IngestRejected) as info:
        check_plausibility(meta, inst, now=now)
    assert info.value.category == "implausible"
    assert "before MiniCam's service_start 2015-01-01" in info.value.reason and "EXPTIME 7200.0" in info.value.reason
    with pytest.raises(IngestRejected, match="ingest.limits.oldest_date 2000-01-01"):
        check_plausibility(meta, bare, now=now, config=LimitsConfig(oldest_date="2000-01-01"))


def test_read_mode_case_and_absence_are_accepted(tmp_path: Path) -> None:
    inst = get_instrument("mini")
    now = dt.datetime(2026, 1, 1)
    h = make_header(RawSpec(n_stars=0))
    h["HIERARCH OAJ DET READ MODE"] = "mode_1"
    check_plausibility(translate_header(h), inst, now=now)
    del h["HIERARCH OAJ DET READ MODE"]
    assert translate_header(h).read_mode is None
    check_plausibility(translate_header(h), inst, now=now)


# -- 4. decompression bombs -------------------------------------------------------------------------------------------
def _deflate(nbytes: int, *, gzip: bool = True) -> bytes:
    """A deflate stream of ``nbytes`` zero bytes, built in 4 MB chunks (the expanded data never exists)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31 if gzip else 15)
    chunk = bytes(1 << 22)
    out = []
    left = nbytes
    while left:
        n = min(left, len(chunk))
        out.append(c.compress(chunk[:n]))
        left -= n
    out.append(c.flush())
    return b"".join(out)


def _tile_compressed(spec: RawSpec, shape: tuple[int, int], tiles: list[bytes], tile_shape: tuple[int, int],
                     cmptype: str = "GZIP_1") -> bytes:
    """A tile-compressed raw frame written from given tile streams: a binary table with the raw header's cards."""
    ny, nx = shape
    col = fits.Column(name="COMPRESSED_DATA", format="PB()", array=[np.frombuffer(t, np.uint8) for t in tiles])
    table = fits.BinTableHDU.from_columns([col])
    h = table.header
    for key, value in (("ZIMAGE", True), ("ZTENSION", "IMAGE"), ("ZBITPIX", 16), ("ZNAXIS", 2), ("ZNAXIS1", nx),
                       ("ZNAXIS2", ny), ("ZTILE1", tile_shape[1]), ("ZTILE2", tile_shape[0]),
                       ("ZCMPTYPE", cmptype), ("BZERO", 32768), ("BSCALE", 1)):
        h[key] = value
    for card in make_header(spec).cards:
        h.append(card, end=True)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buf)
    return buf.getvalue()


def _peak_while(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        try:
            result: object = fn()
        except IngestRejected as rej:
            result = rej
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_constant_image_bomb_is_refused_before_decompression() -> None:
    # a T80Cam-sized frame (9648 x 9340 x 2 bytes = 180 MB) of one value in a single GZIP_1 tile: ~0.2 MB
    spec = RawSpec(instrument="t80cam", n_stars=0, filter="rSDSS")
    shape = get_instrument("t80cam").raw_shape("readout")
    expanded = shape[0] * shape[1] * 2
    bomb = _tile_compressed(spec, shape, [_deflate(expanded)], shape)
    assert expanded / len(bomb) > 500
    err, peak = _peak_while(lambda: verify_bytes(bomb, spec.filename()))
    assert isinstance(err, IngestRejected) and err.category == "oversized", err
    assert "max_decompression_ratio" in err.reason and str(expanded) in err.reason
    assert peak < expanded / 20, f"{peak / 1e6:.1f} MB allocated for a {expanded / 1e6:.0f} MB bomb"


def test_lying_tile_bomb_is_refused_with_one_tile_of_memory() -> None:
    # a mini frame in row tiles whose first tile inflates to 200 MB (astropy would allocate all of it)
    spec = RawSpec(n_stars=0)
    shape = get_instrument("mini").raw_shape("readout")
    row = shape[1] * 2
    lie = 200_000_000
    tiles = [_deflate(lie)] + [_deflate(row) for _ in range(shape[0] - 1)]
    bomb = _tile_compressed(spec, shape, tiles, (1, shape[1]))
    err, peak = _peak_while(lambda: verify_bytes(bomb, spec.filename()))
    assert isinstance(err, IngestRejected) and err.category == "oversized", err
    assert "tile 1 of " in err.reason and f"{row} declared bytes" in err.reason
    assert peak < lie / 20, f"{peak / 1e6:.1f} MB allocated for a {lie / 1e6:.0f} MB tile"


def test_honest_gzip_frames_still_pass(tmp_path: Path) -> None:
    spec = RawSpec(n_stars=5)
    pixels = make_pixels(spec)
    # GZIP_1 written by astropy, and the same pixels through our own tile writer (row tiles, big-endian bytes)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=pixels, header=make_header(spec),
                                                              compression_type="GZIP_1")])
    buf = io.BytesIO()
    hdul.writeto(buf)
    vf = verify_bytes(buf.getvalue(), spec.filename())
    assert np.array_equal(vf.data[0], pixels)
    rows = [gzip.compress((r.astype(np.int32) - 32768).astype(">i2").tobytes()) for r in pixels]
    own = _tile_compressed(spec, pixels.shape, rows, (1, pixels.shape[1]))
    assert np.array_equal(verify_bytes(own, spec.filename()).data[0], pixels)
    # a noisy bias frame compresses ~2.3x with GZIP_1 (~3.2x with RICE_1): the configured limit is the one applied
    bias = RawSpec(n_stars=0, obs_type="bias", filter=None, exptime=0.0)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=make_pixels(bias), header=make_header(bias),
                                                       compression_type="GZIP_1")]).writeto(buf)
    verify_bytes(buf.getvalue(), bias.filename())
    with pytest.raises(IngestRejected, match="more than ingest.limits.max_decompression_ratio = 2"):
        verify_bytes(buf.getvalue(), bias.filename(), limits=LimitsConfig(max_decompression_ratio=2.0))


def test_bomb_in_the_incoming_directory_is_quarantined(database, settings: Settings, incoming: Path) -> None:
    spec = RawSpec(instrument="t80cam", n_stars=0)
    shape = get_instrument("t80cam").raw_shape("readout")
    bomb = incoming / spec.filename()
    bomb.write_bytes(_tile_compressed(spec, shape, [_deflate(shape[0] * shape[1] * 2)], shape))
    (out,) = ingest_paths(database, settings, [incoming]).outcomes
    assert out.status == "quarantined" and out.category == "oversized"
    (row,) = quarantined(database)
    assert row.category == "oversized" and (settings.root / row.quarantine_path).read_bytes() == bomb.read_bytes()


# -- 4. symbolic links, permissions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["copy", "move"])
def test_link_to_a_secret_outside_is_not_followed(database, settings: Settings, incoming: Path, tmp_path: Path,
                                                  mode: str) -> None:
    secret_dir = tmp_path / "home"
    secret_dir.mkdir()
    secret = secret_dir / "id_rsa"
    secret.write_bytes(b"SIMPLE  =                    T / not really: a private key\n" * 40)
    secret.chmod(0o600)
    # a real frame outside too: even valid data is not taken through a link out of the incoming directory
    outside = write_raw(secret_dir, RawSpec(seq=2, n_stars=5))
    os.symlink(secret, incoming / "key.fits")
    os.symlink(outside, incoming / "frame.fits.fz")
    before = {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in (secret, outside)}
    report = ingest_paths(database, settings, [incoming], mode=mode, config=config(settle_s=0.0))
    assert {o.filename: o.category for o in report.outcomes} == {"key.fits": "unsafe_link",
                                                                 "frame.fits.fz": "unsafe_link"}
    for o in report.outcomes:
        assert o.quarantine_path is None and "outside the incoming directory" in o.reason
    rows = quarantined(database)
    assert sorted(r.category for r in rows) == ["unsafe_link"] * 2 and all(r.quarantine_path is None for r in rows)
    # nothing copied anywhere under the data root, the links and their targets untouched
    leaked = [p for p in files_under(settings.root) if p.is_file() and p.read_bytes() in (before[secret][0],
                                                                                           before[outside][0])]
    assert leaked == [] and frames(database) == []
    assert (incoming / "key.fits").is_symlink() and (incoming / "frame.fits.fz").is_symlink()
    assert {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in before} == before


def test_link_inside_the_incoming_directory_is_followed(database, settings: Settings, incoming: Path) -> None:
    real = write_raw(incoming / "night1", RawSpec(seq=1, n_stars=5))
    os.symlink(real, incoming / "m02-20150811T013019-07.fits.fz")
    (incoming / "sub").mkdir()
    os.symlink(Path("..") / "night1" / real.name, incoming / "sub" / "rel.fits.fz")  # relative, still inside
    report = ingest_paths(database, settings, [incoming])
    assert sorted(o.status for o in report.outcomes) == ["already_registered", "already_registered", "registered"]
    (row,) = frames(database)
    assert sha(settings.root / row.path) == sha(real)
    # with follow_symlinks = 'never' every link is refused, the plain file is still fine
    out = {o.filename: o for o in ingest_paths(database, settings, [incoming],
                                               config=config(follow_symlinks="never")).outcomes}
    assert out[real.name].status == "already_registered"
    assert out["rel.fits.fz"].category == "unsafe_link" and "'never'" in out["rel.fits.fz"].reason


def test_explicit_link_is_judged_against_its_own_directory(database, settings: Settings, incoming: Path,
                                                          tmp_path: Path) -> None:
    outside = write_raw(tmp_path / "elsewhere", RawSpec(seq=1, n_stars=5))
    link = incoming / "x.fits.fz"
    os.symlink(outside, link)
    assert ingest_paths(database, settings, [link]).outcomes[0].category == "unsafe_link"
    assert run_cli(["ingest", link, "--root", settings.root, "--db", settings.db_url]) == 0
    assert frames(database) == [] and len(quarantined(database)) == 1


@pytest.mark.parametrize("source_mode", [0o600, 0o640, 0o666, 0o755])
def test_quarantined_copies_never_get_more_permission(database, settings: Settings, incoming: Path,
                                                      source_mode: int) -> None:
    f = incoming / "notes.fits"
    f.write_text("observing log, private\n")
    f.chmod(source_mode)
    (out,) = ingest_paths(database, settings, [incoming]).outcomes
    assert out.category == "not_fits"
    copy = settings.root / out.quarantine_path
    got = stat.S_IMODE(copy.stat().st_mode)
    assert got & ~source_mode == 0, f"{oct(got)} gives more than the source's {oct(source_mode)}"
    assert got & ~0o644 == 0, f"{oct(got)} gives more than the archive's 0644"
    assert got & 0o600 == 0o600 & source_mode


# -- 4. file names -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, word", [
    ("m02-20150811T013019-01\n.fits.fz", "control"),
    ("m02-20150811T013019-01\t.fits.fz", "control"),
    ("m02-2015081ñT013019-01.fits.fz", "non-ASCII"),
    ("m02-20150811T013019-01\u200b.fits.fz", "non-ASCII"),
    ("m02\\20150811T013019-01.fits.fz", "path separator"),
])
@pytest.mark.parametrize("mode", ["copy", "move"])
def test_unprintable_names_are_refused_and_left_in_place(database, settings: Settings, incoming: Path, name: str,
                                                         word: str, mode: str) -> None:
    f = write_raw(incoming, RawSpec(seq=1, n_stars=5), name=name)
    content = f.read_bytes()
    report = ingest_paths(database, settings, [incoming], mode=mode, config=config(settle_s=0.0))
    (out,) = report.outcomes
    assert out.status == "quarantined" and out.category == "bad_name" and word in out.reason
    assert out.quarantine_path is None and not out.source_removed
    assert f.read_bytes() == content, "nothing copied, nothing removed: the operator renames it"
    (row,) = quarantined(database)
    assert row.filename.isascii() and row.filename.isprintable() and row.original_path == str(f)
    reason_files = [p for p in files_under(settings.root / "quarantine") if p.name.endswith(".reason.txt")]
    assert [p.name.isprintable() and p.name.isascii() for p in reason_files] == [True]
    assert frames(database) == []
    # renamed, it is registered
    fixed = f.rename(incoming / "m02-20150811T013019-01.fits.fz")
    assert ingest_paths(database, settings, [fixed]).outcomes[0].status == "registered"


def test_filename_rule() -> None:
    check_filename("j02-20150811T013114-01.fits.fz")
    check_filename("m02 20150811 (copy).fits")
    for name in ("a\nb.fits", "a\x7f.fits", "é.fits", "-rf.fits", "a\\b.fits"):
        with pytest.raises(IngestRejected) as info:
            check_filename(name)
        assert info.value.category == "bad_name" and "\n" not in info.value.reason


# -- 3. files being written, move mode ---------------------------------------------------------------------------------
def _slow_writer(path: Path, data: bytes, *, chunks: int, pause: float, started: threading.Event) -> None:
    with open(path, "wb") as fh:
        for i in range(chunks):
            fh.write(data[i * len(data) // chunks:(i + 1) * len(data) // chunks])
            fh.flush()
            started.set()
            time.sleep(pause)


def test_move_mode_leaves_a_file_being_written(database, settings: Settings, incoming: Path,
                                               tmp_path: Path) -> None:
    ready = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    old = time.time() - 60
    os.utime(ready, (old, old))
    full = write_raw(tmp_path / "src", RawSpec(seq=2, n_stars=5)).read_bytes()
    growing = incoming / "m02-20150811T013019-02.fits.fz"
    started = threading.Event()
    writer = threading.Thread(target=_slow_writer, args=(growing, full),
                              kwargs={"chunks": 20, "pause": 0.1, "started": started})
    writer.start()
    started.wait(5)
    try:
        report = ingest_paths(database, settings, [incoming], mode="move", config=config(settle_s=0.5))
    finally:
        writer.join()
    out = {o.filename: o for o in report.outcomes}
    assert out[ready.name].status == "registered" and out[ready.name].source_removed
    assert out[growing.name].status == "skipped" and "settle_s" in out[growing.name].reason
    assert growing.read_bytes() == full, "the writer's file is intact and in place"
    assert quarantined(database) == [] and report.exit_code() == 0
    # once it has settled, the next pass takes it
    time.sleep(0.6)
    (again,) = ingest_paths(database, settings, [incoming], mode="move", config=config(settle_s=0.5)).outcomes
    assert again.status == "registered" and again.source_removed and not growing.exists()
    assert sha(settings.root / "raw" / NIGHT / growing.name) == sha(full)
    assert list(incoming.iterdir()) == [] and temp_files(settings.root) == []


def test_move_mode_waits_for_young_files_then_takes_them(database, settings: Settings, incoming: Path) -> None:
    f = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    (out,) = ingest_paths(database, settings, [incoming], mode="move", config=config(settle_s=1.0),
                          sleep=sleep).outcomes
    assert out.status == "registered" and not f.exists()
    assert len(waits) == 1 and 0.0 < waits[0] <= 1.0


def test_source_changed_after_reading_is_not_removed(database, settings: Settings, incoming: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    f = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    first = f.read_bytes()
    real = archive.store_bytes

    def writer_goes_on(dest, data, **kw):  # a writer appends between the read and the removal
        real(dest, data, **kw)
        with open(f, "ab") as fh:
            fh.write(b"\0" * 2880)

    monkeypatch.setattr(archive, "store_bytes", writer_goes_on)
    (out,) = ingest_paths(database, settings, [f], mode="move", config=config(settle_s=0.0)).outcomes
    assert out.status == "registered" and not out.source_removed
    assert any("changed after it was read" in n for n in out.notes)
    assert f.read_bytes() == first + b"\0" * 2880
    assert sha(settings.root / "raw" / NIGHT / f.name) == sha(first)


def test_move_mode_keeps_the_source_when_the_copy_differs(database, settings: Settings, incoming: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = write_raw(incoming, RawSpec(seq=1, n_stars=5))
    real = archive.store_bytes

    def bad_disk(dest, data, **kw):  # the archived copy does not hold the bytes read (a silent disk error)
        real(dest, bytes(data[:-1]) + b"\x01", **kw)

    monkeypatch.setattr(archive, "store_bytes", bad_disk)
    (out,) = ingest_paths(database, settings, [f], mode="move", config=config(settle_s=0.0)).outcomes
    assert not out.source_removed and f.exists()
    assert any("does not hold the bytes read" in n for n in out.notes)


def test_concurrent_move_ingests(database, settings: Settings, incoming: Path) -> None:
    from .fitsmaker import make_batch

    files = make_batch(incoming, 12, n_stars=5)
    (incoming / "notes.fits").write_text("not FITS\n")
    (incoming / "half.fits.fz").write_bytes(files[0].read_bytes()[:5000])
    truth = {p.name: sha(p) for p in incoming.iterdir()}
    (settings.root / "upad.toml").write_text("[ingest.limits]\nsettle_s = 0.0\n")
    cmd = [sys.executable, "-m", "upad.cli.main", "ingest", str(incoming), "--root", str(settings.root),
           "--db", settings.db_url, "--mode", "move", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    reports = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
        reports.append(json.loads(stdout))
    outcomes = [f for r in reports for f in r["files"]]
    assert {o["status"] for o in outcomes} <= {"registered", "quarantined", "skipped", "already_registered"}
    assert sum(o["status"] == "registered" for o in outcomes) == 12
    assert sum(o["status"] == "quarantined" for o in outcomes) == 2
    # nothing duplicated, nothing spurious: one frame per good file, one quarantine entry per bad file
    rows = frames(database)
    assert sorted(r.filename for r in rows) == sorted(p.name for p in files)
    q = quarantined(database)
    assert sorted((r.filename, r.category) for r in q) == [("half.fits.fz", "truncated"), ("notes.fits", "not_fits")]
    # nothing lost: every source is archived (or quarantined) byte-identical, and removed
    for r in rows:
        assert sha(settings.root / r.path) == truth[r.filename] == r.sha256
    for r in q:
        assert sha(settings.root / r.quarantine_path) == truth[r.filename]
    assert list(incoming.iterdir()) == [] and temp_files(settings.root) == []


# -- configuration -----------------------------------------------------------------------------------------------------
def test_limits_are_declared_in_the_ingest_configuration(tmp_path: Path) -> None:
    assert load_ingest_config(tmp_path).limits == LimitsConfig()
    (tmp_path / "upad.toml").write_text("[ingest.limits]\nsettle_s = 10.0\nfollow_symlinks = 'never'\n")
    cfg = load_ingest_config(tmp_path).limits
    assert cfg.settle_s == 10.0 and cfg.follow_symlinks == "never"
    for toml, name in (("settle_s = -1.0", "ingest.limits.settle_s"),
                       ("follow_symlinks = 'always'", "ingest.limits.follow_symlinks"),
                       ("max_decompression_ratio = 1.0", "ingest.limits.max_decompression_ratio"),
                       ("future_margin_days = 1000.0", "ingest.limits.future_margin_days"),
                       ("oldest_date = 'last year'", "ingest.limits.oldest_date")):
        (tmp_path / "upad.toml").write_text(f"[ingest.limits]\n{toml}\n")
        with pytest.raises(UpadError) as info:
            load_ingest_config(tmp_path)
        assert str(info.value).startswith(name), str(info.value)


def test_quarantine_listing_of_a_refused_name(database, settings: Settings, incoming: Path, capsys) -> None:
    write_raw(incoming, RawSpec(n_stars=5), name="bad\nname.fits.fz")
    ingest_paths(database, settings, [incoming])
    capsys.readouterr()
    assert run_cli(["quarantine", "--root", settings.root, "--db", settings.db_url, "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["category"] == "bad_name" and item["filename"] == "bad_name.fits.fz"
    assert service_mod.STATUSES[-1] == "skipped"
