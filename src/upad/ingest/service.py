"""Ingest: the adapter between the pure checks (verify, translate, quick-look) and the archive and database.

Per file, in an order that makes a crash at any moment harmless:

0. refuse what must not be read: a file name with control, non-ASCII or separator characters (``bad_name``), a
   symbolic link leading outside the incoming directory (``unsafe_link``) — nothing is copied, the file stays; in
   ``move`` mode (and ``watch``), leave a file whose size or modification time changed during the last
   ``ingest.limits.settle_s`` seconds for a later pass (``skipped``); claim the file with an exclusive
   ``flock`` so that a concurrent ingest skips it (``skipped``, never ``unreadable``);
1. read the file once into memory, SHA-256 it — a file already registered (same name and content, or the same
   content under another name) is reported ``already_registered`` without further work;
2. verify (with bounded decompression), translate, check the header's plausibility for its instrument and
   quick-look QC it (no database transaction open meanwhile);
3. publish the verified bytes at ``raw/<night>/<filename>`` atomically (``link`` of a fsync-ed temporary file, never
   overwriting); an identical file already there (an earlier run died before its database insert) is reused;
4. one database transaction: the tile (if new), the frame row with its QC values and full header, an
   ``ingested`` event;
5. only after the commit, in ``move`` mode, remove the source — and only when the archived (or quarantined) copy
   hashes to the SHA-256 of the bytes read and the source's size, modification time and inode are those it had
   when it was read (a writer that went on writing keeps its file).

A refused file goes to ``quarantine/<YYYY-MM-DD>/`` with a ``.reason.txt`` and a ``quarantine`` row (once per file
content). A file whose name is registered with different content is a ``conflict``: quarantined, the archived file
untouched. No per-file problem stops the batch.
"""
from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import os
import re
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from upad import __version__
from upad.config import StepConfig, load_config_document
from upad.db import Database, Frame, FrameEvent, QuarantinedFile, Tile
from upad.db.models import utcnow
from upad.errors import UpadError
from upad.ingest import archive
from upad.ingest.errors import IngestRejected
from upad.ingest.limits import DEFAULT_LIMITS, LimitsConfig, check_filename, check_plausibility
from upad.ingest.quicklook import DEFAULT_QC, QuickLookConfig, QuickLookResult, quicklook
from upad.ingest.translate import DEFAULT_CONFIG, TranslationConfig, header_to_json
from upad.ingest.verify import VerifiedFrame, read_snapshot, verify_bytes
from upad.instruments import get_instrument
from upad.settings import Settings

__all__ = [
    "FileOutcome",
    "IngestConfig",
    "IngestReport",
    "MODES",
    "STATUSES",
    "collect_files",
    "ingest_paths",
    "load_ingest_config",
    "watch",
]

log = logging.getLogger(__name__)

#: How a file gets into the archive: ``copy`` (source kept), ``move`` (source removed after the database commit),
#: ``link`` (the archive holds a symbolic link to the source, which must stay where it is).
MODES = ("copy", "move", "link")

#: Per-file outcomes. ``skipped``: not taken this time and nothing recorded — still being written (changed within
#: ``ingest.limits.settle_s``), claimed by a concurrent ingest, or gone; the file (if any) is left in place.
STATUSES = ("registered", "already_registered", "conflict", "quarantined", "failed", "skipped")

#: Names that directory scans pick up (explicitly named files are always taken).
FITS_NAME = re.compile(r"\.(fits?|fts)(\.fz|\.gz)?$|\.fz$", re.IGNORECASE)


@dataclass(frozen=True)
class IngestConfig(StepConfig):
    """Configuration of ingest: header translation, quick-look QC parameters and input limits.

    Read from ``<root>/upad.toml`` (:func:`load_ingest_config`): ``[ingest.translation]``, ``[ingest.quicklook]``
    and ``[ingest.limits]``; ``upad config show`` lists them as ``ingest.translation.tile_regex`` …
    """

    translation: TranslationConfig = DEFAULT_CONFIG
    quicklook: QuickLookConfig = DEFAULT_QC
    limits: LimitsConfig = DEFAULT_LIMITS

    @property
    def qc(self) -> QuickLookConfig:
        """The quick-look QC parameters (former name of :attr:`quicklook`)."""
        return self.quicklook


def load_ingest_config(root: str | os.PathLike) -> IngestConfig:
    """The ingest configuration of a data root: the ``[ingest]`` tables of ``<root>/upad.toml`` over the defaults.

    Raises
    ------
    UpadError
        An unknown parameter or a refused value, named by its dotted name (``ingest.quicklook.saturated_warn``).
    """
    return IngestConfig.from_mapping(load_config_document(Path(root)).get("ingest"), where="ingest")


@dataclass
class FileOutcome:
    """What happened to one file.

    Attributes
    ----------
    path : str
        The file as given (absolute).
    filename : str
    status : str
        One of :data:`STATUSES`.
    sha256 : str or None
    size_bytes : int or None
    frame_id : int or None
        Frame row (registered / already registered).
    archive_path : str or None
        Path in the archive relative to the data root.
    quarantine_id : int or None
        Quarantine row (quarantined / conflict).
    quarantine_path : str or None
        Path of the quarantined copy relative to the data root.
    category, reason : str or None
        Why the file was refused.
    qc_status : str or None
    obs_type, night : str or None
    recovered : bool
        The archived copy was already there (left by an interrupted run) and was reused.
    source_removed : bool
        ``move`` mode: the source was removed.
    already : bool
        Quarantined or conflicting file already recorded by an earlier run (no new row).
    seconds : float
        Time spent on the file.
    notes : list of str
    """

    path: str
    filename: str
    status: str
    sha256: str | None = None
    size_bytes: int | None = None
    frame_id: int | None = None
    archive_path: str | None = None
    quarantine_id: int | None = None
    quarantine_path: str | None = None
    category: str | None = None
    reason: str | None = None
    qc_status: str | None = None
    obs_type: str | None = None
    night: str | None = None
    recovered: bool = False
    source_removed: bool = False
    already: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class IngestReport:
    """The outcome of an ingest run."""

    mode: str
    outcomes: list[FileOutcome] = field(default_factory=list)
    interrupted: bool = False
    polls: int = 0

    def add(self, outcome: FileOutcome) -> None:
        self.outcomes.append(outcome)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def counts(self) -> dict[str, int]:
        """Number of files per status (every status listed)."""
        return {s: self.count(s) for s in STATUSES}

    @property
    def registered(self) -> int:
        return self.count("registered")

    @property
    def already_registered(self) -> int:
        return self.count("already_registered")

    @property
    def conflicts(self) -> int:
        return self.count("conflict")

    @property
    def quarantined(self) -> int:
        return self.count("quarantined")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    def exit_code(self, *, strict: bool = False) -> int:
        """0, or 1 when files failed (not processed: retry) or, with ``strict``, were refused or conflicted."""
        if self.failed:
            return 1
        if strict and (self.quarantined or self.conflicts):
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "counts": self.counts, "interrupted": self.interrupted, "polls": self.polls,
                "files": [o.to_dict() for o in self.outcomes]}


# -- discovery --------------------------------------------------------------------------------------------------------
def _inside(path: Path, roots: Sequence[Path]) -> bool:
    try:
        rp = path.resolve()
    except OSError:
        return False
    return any(rp == r or r in rp.parents for r in roots)


def collect_files(paths: Iterable[str | os.PathLike], *, exclude: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Files to ingest (see :func:`collect_with_roots`, of which this is the list of files)."""
    return [p for p, _ in collect_with_roots(paths, exclude=exclude)]


def collect_with_roots(paths: Iterable[str | os.PathLike], *,
                       exclude: Sequence[str | os.PathLike] = ()) -> list[tuple[Path, Path]]:
    """Files to ingest: explicitly named files as they are, and FITS-named entries found under directories.

    Directory scans are recursive, skip hidden entries (names starting with ``.``, e.g. partial transfers) and
    anything under ``exclude`` (the data root), and take names ending in ``.fits``, ``.fit``, ``.fts``, ``.fz`` or
    ``.gz`` after those. A directory or a dangling link with such a name is taken too (and refused as unreadable).

    Returns
    -------
    list of (Path, Path)
        Each file (absolute, links not resolved) with its incoming directory: the directory given that contains
        it, or for a file named explicitly its own directory. A symbolic link is followed only when its target
        stays inside that directory (``ingest.limits.follow_symlinks``).

    Raises
    ------
    UpadError
        If a named path does not exist.
    """
    excluded = [Path(e).resolve() for e in exclude]
    found: dict[str, tuple[Path, Path]] = {}
    for given in paths:
        p = Path(given)
        if not os.path.lexists(p):
            raise UpadError(f"{p} does not exist", hint="check the path (files or directories to ingest)")
        if p.is_dir():
            top = Path(os.path.abspath(p))
            top_inside = _inside(p, excluded)
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                keep = []
                for d in sorted(dirnames):
                    full = Path(dirpath, d)
                    if d.startswith("."):
                        continue
                    if FITS_NAME.search(d):
                        found.setdefault(os.path.abspath(full), (Path(os.path.abspath(full)), top))
                        continue
                    if not top_inside and _inside(full, excluded):
                        continue
                    keep.append(d)
                dirnames[:] = keep
                for name in filenames:
                    if name.startswith(".") or not FITS_NAME.search(name):
                        continue
                    full = Path(os.path.abspath(Path(dirpath, name)))
                    found.setdefault(str(full), (full, top))
        else:
            full = Path(os.path.abspath(p))
            found.setdefault(str(full), (full, full.parent))
    return sorted(found.values(), key=lambda q: (q[0].name, str(q[0])))


# -- claiming a file ---------------------------------------------------------------------------------------------------
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks
    fcntl = None  # type: ignore[assignment]

#: What identifies a file's state: (size, mtime in ns, inode, device).
Signature = tuple[int, int, int, int]


class _Skip(Exception):
    """The file is not taken this time (outcome ``skipped``); nothing is recorded and the file is left in place."""


def _signature_of(path: Path) -> Signature | None:
    """(size, mtime_ns, inode, device) of the file ``path`` leads to, or None if it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _settled(path: Path, settle_s: float, now: float) -> tuple[bool, Signature | None]:
    """Whether ``path`` was last modified at least ``settle_s`` ago (a path that cannot be stat-ed counts as settled:
    ingest then says why it cannot be read), and its signature."""
    sig = _signature_of(path)
    if sig is None:
        return True, None
    return now - sig[1] / 1e9 >= settle_s, sig


def _claim(path: Path, expected: str | None) -> tuple[int, os.stat_result] | None:
    """Open ``path`` and take an exclusive, non-blocking ``flock`` on it, held until the descriptor is closed.

    Returns the descriptor and its ``fstat``, or None when the path is not an openable regular file (a dangling
    link, a directory, a device …: :func:`read_snapshot` then says why). ``expected`` is the resolved target of a
    symbolic link that was checked: the opened file must be that one.

    Raises
    ------
    _Skip
        The file vanished (another ingest took it), another process holds its lock, or it was replaced meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if os.path.lexists(path):
            return None  # a dangling link: unreadable
        raise _Skip("the file vanished before it was read (taken by a concurrent ingest, or removed)") from None
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _Skip("another ingest is processing this file (it holds the file's lock)") from None
            except OSError as exc:  # a file system without locks: go on unlocked
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        now = _signature_of(path)
        if now is None or now[2:] != (st.st_ino, st.st_dev):
            raise _Skip("the file was removed or replaced while it was claimed (taken by a concurrent ingest?)")
        if expected is not None:
            target = _signature_of(Path(expected))
            if target is None or target[2:] != (st.st_ino, st.st_dev):
                raise _Skip("the symbolic link changed while it was checked")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def quarantine_mode(source_mode: int) -> int:
    """Permission bits of a quarantined copy: the source's own bits limited to ``0644``.

    A quarantined copy never gets more than the archive gives its own files (``0644``: owner read/write, others
    read; never write for the group or others, never execute) and never more than its source had: a ``0600`` file
    stays ``0600``, a ``0640`` file ``0640``, a ``0755`` file becomes ``0644``.
    """
    return stat.S_IMODE(source_mode) & 0o644


# -- the ingester ------------------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _trunc(text: str | None, n: int) -> str | None:
    return None if text is None else text[:n]


class _Ingester:
    """Per-run state (the directories already cleaned of stale temporary files) and the per-file procedure."""

    def __init__(self, db: Database, settings: Settings, *, mode: str, config: IngestConfig) -> None:
        if mode not in MODES:
            raise UpadError(f"unknown ingest mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
        self.db = db
        self.settings = settings
        self.root = Path(settings.root)
        self.mode = mode
        self.config = config
        self._cleaned: set[Path] = set()
        # the file being ingested: its signature and SHA-256 when read, its permission bits
        self._sig: Signature | None = None
        self._sha: str | None = None
        self._src_mode: int | None = None

    # ---- helpers --------------------------------------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    def _clean(self, directory: Path) -> None:
        if directory not in self._cleaned:
            removed = archive.cleanup_stale_temps(directory)
            if removed:
                log.info("removed %d stale temporary file(s) in %s", len(removed), directory)
            self._cleaned.add(directory)

    def _remove_source(self, path: Path, keep_if_same_as: Path | None, outcome: FileOutcome) -> None:
        """Remove the source (``move`` mode) — only when ``keep_if_same_as``, its archived or quarantined copy, holds
        exactly the bytes read (same SHA-256) and the source is as it was read (size, mtime, inode)."""
        if keep_if_same_as is not None and _same_file(path, keep_if_same_as):
            return
        if keep_if_same_as is None or self._sha is None or self._sig is None:
            outcome.notes.append("source kept: no verified copy of it")
            return
        try:
            copy_sha = archive.sha256_file(keep_if_same_as)
        except OSError:
            copy_sha = None
        if copy_sha != self._sha:
            outcome.notes.append(f"source kept: its copy {keep_if_same_as.name} does not hold the bytes read")
            return
        if _signature_of(path) != self._sig:
            outcome.notes.append("source kept: it changed after it was read (still being written?); it is taken "
                                 "again by a later pass")
            return
        try:
            archive.remove_source(path)
            outcome.source_removed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            outcome.notes.append(f"source not removed: {exc.strerror or exc}")

    def _check_link(self, path: Path, root: Path | None) -> str | None:
        """The resolved target of a symbolic link that may be followed (None for a plain file).

        Raises
        ------
        IngestRejected
            ``unsafe_link``: a link whose target leaves the incoming directory ``root`` (default: the link's own
            directory), or any link with ``ingest.limits.follow_symlinks = 'never'``.
        """
        if not path.is_symlink():
            return None
        target = os.path.realpath(path)
        hint = ("copy the file itself into the incoming directory (or remove the link); links are followed only "
                "inside it (ingest.limits.follow_symlinks)")
        if self.config.limits.follow_symlinks == "never":
            raise IngestRejected("unsafe_link", f"{path.name} is a symbolic link (to {target}) and "
                                 "ingest.limits.follow_symlinks = 'never': not followed, nothing copied", hint=hint)
        top = os.path.realpath(root if root is not None else path.parent)
        if not (target == top or target.startswith(top.rstrip(os.sep) + os.sep)):
            raise IngestRejected("unsafe_link", f"{path.name} is a symbolic link to {target}, outside the incoming "
                                 f"directory {top}: not followed, nothing copied", hint=hint)
        return target

    # ---- entry point ------------------------------------------------------------------------------------------------
    def ingest(self, path: Path, root: Path | None = None) -> FileOutcome:
        t0 = time.perf_counter()
        self._sig = self._sha = self._src_mode = None
        try:
            outcome = self._ingest(Path(path), root)
        except _Skip as skip:
            outcome = FileOutcome(path=str(path), filename=Path(path).name, status="skipped", reason=str(skip))
            outcome.notes.append("left where it is for a later pass")
        except Exception as exc:  # a per-file failure never stops the batch; KeyboardInterrupt does
            log.error("ingest of %s failed: %s: %s", path, type(exc).__name__, exc)
            log.debug("traceback of the failure", exc_info=True)
            outcome = FileOutcome(path=str(path), filename=Path(path).name, status="failed",
                                  reason=f"{type(exc).__name__}: {exc}".strip()[:2000])
            outcome.notes.append("the file was left where it is; ingest it again once the cause is fixed")
        outcome.seconds = time.perf_counter() - t0
        return outcome

    def _ingest(self, path: Path, root: Path | None) -> FileOutcome:
        try:
            check_filename(path.name)
            target = self._check_link(path, root)
        except IngestRejected as rej:  # nothing read, nothing copied, the file stays
            return self._quarantine(path, None, None, rej)
        claim = _claim(path, target)
        try:
            return self._ingest_claimed(path, None if claim is None else claim[1])
        finally:
            if claim is not None:
                os.close(claim[0])

    def _ingest_claimed(self, path: Path, st: os.stat_result | None) -> FileOutcome:
        filename = path.name
        timing: dict[str, float] = {}
        t = time.perf_counter()
        before = _signature_of(path)
        try:
            buf = read_snapshot(path)
        except IngestRejected as rej:
            if not os.path.lexists(path):
                raise _Skip("the file vanished while it was read (taken by a concurrent ingest, or removed)") from None
            return self._quarantine(path, None, None, rej)
        after = _signature_of(path)
        if after is None and not os.path.lexists(path):
            raise _Skip("the file vanished while it was read (taken by a concurrent ingest, or removed)")
        if before != after or (after is not None and after[0] != len(buf)):
            raise _Skip("the file changed while it was read (still being written?)")
        sha = hashlib.sha256(buf).hexdigest()
        self._sig, self._sha = after, sha
        self._src_mode = None if st is None else st.st_mode
        timing["read_s"] = time.perf_counter() - t

        # already known?
        with self.db.session() as s:
            by_name = s.scalar(select(Frame).where(Frame.filename == filename))
            by_sha = None
            if by_name is None or by_name.sha256 != sha:
                by_sha = s.scalars(select(Frame).where(Frame.sha256 == sha).order_by(Frame.id).limit(1)).first()
        if by_name is not None and by_name.sha256 == sha:
            return self._already(path, buf, sha, by_name)
        if by_name is not None:
            return self._quarantine(path, buf, sha, IngestRejected(
                "conflict", f"a different file named {filename} is already registered (frame {by_name.id}, sha256 "
                f"{by_name.sha256[:12]}…, archived at {by_name.path}); this one (sha256 {sha[:12]}…) was not "
                "archived", hint="compare the two files; if this one is a corrected version, rename it (e.g. a new "
                "sequence number) and ingest it again"))
        if by_sha is not None:
            return self._already(path, buf, sha, by_sha)

        # verify, translate, QC (pure; no transaction open)
        t = time.perf_counter()
        try:
            vf = verify_bytes(buf, filename, config=self.config.translation, limits=self.config.limits)
            meta = vf.metadata
            inst = get_instrument(meta.instrument)
            check_plausibility(meta, inst, now=utcnow(), config=self.config.limits)
        except IngestRejected as rej:
            return self._quarantine(path, buf, sha, rej)
        timing["verify_s"] = time.perf_counter() - t
        qc = quicklook(vf.data, inst, layout=vf.layout, obs_type=meta.obs_type, exptime=meta.exptime,
                       config=self.config.quicklook)
        timing["qc_s"] = qc.seconds
        vf.data = []  # free the pixels before the archive copy

        # archive (atomic; never overwrite)
        t = time.perf_counter()
        dest = archive.raw_destination(self.root, meta.night, filename)
        self._clean(dest.parent)
        recovered = False
        try:
            if self.mode == "link":
                archive.store_symlink(dest, path)
            else:
                archive.store_bytes(dest, buf)
        except FileExistsError:
            try:
                existing_sha = archive.sha256_file(dest)
            except OSError:
                existing_sha = None
            if existing_sha != sha:
                return self._quarantine(path, buf, sha, IngestRejected(
                    "conflict", f"{self._rel(dest)} already exists in the archive with different content (sha256 "
                    f"{(existing_sha or 'unreadable')[:12]}…) but is not registered; it was left untouched",
                    hint="inspect the archived file: register it (upad ingest on it) or remove it, then ingest "
                    "this file again"))
            recovered = True  # left by an interrupted run: complete (published atomically) and identical
        timing["archive_s"] = time.perf_counter() - t

        # one transaction: tile, frame, event
        outcome = FileOutcome(path=str(path), filename=filename, status="registered", sha256=sha,
                              size_bytes=len(buf), archive_path=self._rel(dest), qc_status=None,
                              obs_type=meta.obs_type, night=meta.night, recovered=recovered)
        try:
            frame_id, resolved = self._register(path, vf, qc, sha, len(buf), dest, timing, recovered)
        except IntegrityError:
            # another ingest registered the same name meanwhile
            with self.db.session() as s:
                other = s.scalar(select(Frame).where(Frame.filename == filename))
            if other is not None and other.sha256 == sha:
                return self._already(path, buf, sha, other)
            raise
        outcome.frame_id = frame_id
        outcome.qc_status = self._qc_status(qc, vf)
        if resolved:
            outcome.notes.append(f"resolved earlier quarantine entries {resolved}")
        if self.mode == "move":
            self._remove_source(path, dest, outcome)
        return outcome

    # ---- database -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _qc_status(qc: QuickLookResult, vf: VerifiedFrame) -> str:
        return "warn" if qc.status == "ok" and vf.notes else qc.status

    def _insert_tile(self, session: Any, meta: Any) -> None:
        values = {"id": meta.tile_id, "name": _trunc(meta.tile_name, 64) or str(meta.tile_id), "ra": meta.ra,
                  "dec": meta.dec, "created_at": utcnow()}
        if self.db.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.db.backend == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - other backends: check then insert
            if session.get(Tile, meta.tile_id) is None:
                session.add(Tile(**values))
                session.flush()
            return
        session.execute(insert(Tile).values(**values).on_conflict_do_nothing(index_elements=["id"]))

    def _register(self, path: Path, vf: VerifiedFrame, qc: QuickLookResult, sha: str, size: int, dest: Path,
                  timing: dict[str, float], recovered: bool) -> tuple[int, list[int]]:
        meta = vf.metadata
        reasons = list(qc.reasons) + [f"warn: header: {n}" for n in vf.notes]
        with self.db.session() as s:
            if meta.tile_id is not None:
                self._insert_tile(s, meta)
            frame = Frame(
                filename=dest.name, path=self._rel(dest), original_path=str(path), size_bytes=size,
                sha256=sha, ingested_at=utcnow(), file_stat=_file_stat(dest),
                instrument=meta.instrument, telescope=_trunc(meta.telescope, 32), detector=_trunc(meta.detector, 64),
                header_convention=meta.convention, layout=vf.layout, naxis1=vf.naxis1, naxis2=vf.naxis2,
                n_detectors=vf.n_detectors, obs_type=meta.obs_type, filter=meta.filter,
                read_mode=_trunc(meta.read_mode, 32), exptime=meta.exptime, date_obs=meta.date_obs, mjd=meta.mjd,
                night=meta.night, object=_trunc(meta.object, 80), ra=meta.ra, dec=meta.dec, airmass=meta.airmass,
                tile_id=meta.tile_id, header=_header_json(vf.header),
                state="ingested", valid=True,
                qc_status=self._qc_status(qc, vf), qc_reasons=reasons, qc_bias=qc.bias,
                qc_sky_median=qc.sky_median, qc_sky_noise=qc.sky_noise,
                qc_saturated_fraction=qc.saturated_fraction, qc_fwhm=qc.fwhm_arcsec, qc_n_sources=qc.n_sources,
                qc_seconds=qc.seconds,
            )
            s.add(frame)
            s.flush()
            resolved = list(s.scalars(select(QuarantinedFile.id).where(
                QuarantinedFile.filename == frame.filename, QuarantinedFile.sha256 == sha,
                QuarantinedFile.resolved.is_(False))))
            if resolved:
                s.execute(update(QuarantinedFile).where(QuarantinedFile.id.in_(resolved)).values(resolved=True))
            s.add(FrameEvent(frame_id=frame.id, time=utcnow(), event="ingested", detail={
                "original_path": str(path), "mode": self.mode, "sha256": sha, "size_bytes": size,
                "host": socket.gethostname(), "pid": os.getpid(), "upad_version": __version__,
                "timing_s": {k: round(v, 4) for k, v in timing.items()},
                "recovered_archive_copy": recovered, "checksum_verified": vf.checksum_verified,
                "qc": {"bias_source": qc.bias_source, "sky_per_amp": qc.sky_per_amp, "fwhm_px": qc.fwhm_px,
                       "n_fwhm_stars": qc.n_fwhm_stars, **qc.details},
                "notes": vf.notes, "resolved_quarantine_ids": resolved,
            }))
            return frame.id, resolved

    # ---- already registered ----------------------------------------------------------------------------------------------
    def _already(self, path: Path, buf: bytes, sha: str, frame: Frame) -> FileOutcome:
        outcome = FileOutcome(path=str(path), filename=path.name, status="already_registered", sha256=sha,
                              size_bytes=len(buf), frame_id=frame.id, archive_path=frame.path,
                              obs_type=frame.obs_type, night=frame.night, qc_status=frame.qc_status)
        if frame.filename != path.name:
            outcome.notes.append(f"the same content is registered as {frame.filename} (frame {frame.id})")
        archived = self.root / frame.path
        if not os.path.lexists(archived) and frame.filename == path.name:
            # the archived copy was lost: restore it from this identical file
            self._clean(archived.parent)
            if self.mode == "link":
                archive.store_symlink(archived, path)
            else:
                archive.store_bytes(archived, buf)
            with self.db.session() as s:
                s.add(FrameEvent(frame_id=frame.id, time=utcnow(), event="restored",
                                 detail={"original_path": str(path), "sha256": sha, "mode": self.mode}))
            outcome.notes.append(f"the archived copy was missing and was restored at {frame.path}")
        if self.mode == "move":
            if _same_file(path, archived):
                return outcome
            try:
                intact = archive.sha256_file(archived) == sha
            except OSError:
                intact = False
            if intact:
                self._remove_source(path, archived, outcome)
            else:
                outcome.notes.append(f"source kept: the archived copy {frame.path} is missing or differs")
        return outcome

    # ---- quarantine -------------------------------------------------------------------------------------------------------
    def _quarantine(self, path: Path, buf: bytes | None, sha: str | None, rej: IngestRejected) -> FileOutcome:
        filename = _safe_name(path.name)
        size = None if buf is None else len(buf)
        outcome = FileOutcome(path=str(path), filename=filename,
                              status="conflict" if rej.category == "conflict" else "quarantined",
                              sha256=sha, size_bytes=size, category=rej.category, reason=rej.full_reason)
        with self.db.session() as s:
            query = select(QuarantinedFile).where(QuarantinedFile.filename == filename,
                                                  QuarantinedFile.category == rej.category,
                                                  QuarantinedFile.resolved.is_(False))
            if sha is not None:
                query = query.where(QuarantinedFile.sha256 == sha)
            else:
                query = query.where(QuarantinedFile.sha256.is_(None), QuarantinedFile.original_path == str(path))
            existing = s.scalars(query.order_by(QuarantinedFile.id).limit(1)).first()
        if existing is not None:
            outcome.already = True
            outcome.quarantine_id = existing.id
            outcome.quarantine_path = existing.quarantine_path
            if self.mode == "move" and buf is not None and existing.quarantine_path:
                qfile = self.root / existing.quarantine_path
                try:
                    intact = archive.sha256_file(qfile) == sha
                except OSError:
                    intact = False
                if intact:
                    self._remove_source(path, qfile, outcome)
            return outcome

        detected = utcnow()
        qdest, reuse = archive.quarantine_destination(self.root, filename, sha256=sha, size=size,
                                                      day=detected.date())
        self._clean(qdest.parent)
        qpath: str | None = None
        if buf is not None:
            while not reuse:
                try:
                    if self.mode == "link":
                        archive.store_symlink(qdest, path)
                    else:
                        archive.store_bytes(qdest, buf, mode=quarantine_mode(self._src_mode if self._src_mode
                                                                             is not None else 0o600))
                    break
                except FileExistsError:  # raced with another writer: next free name
                    qdest, reuse = archive.quarantine_destination(self.root, filename, sha256=sha, size=size,
                                                                  day=detected.date())
            qpath = self._rel(qdest)
        archive.write_reason(qdest, _reason_text(path, filename, sha, size, rej, detected))
        with self.db.session() as s:
            row = QuarantinedFile(filename=filename[:255], original_path=str(path), quarantine_path=qpath, sha256=sha,
                                  size_bytes=size, category=rej.category, reason=rej.full_reason,
                                  detected_at=detected, resolved=False)
            s.add(row)
            s.flush()
            outcome.quarantine_id = row.id
        outcome.quarantine_path = qpath
        if self.mode == "move" and buf is not None:
            self._remove_source(path, qdest, outcome)
        return outcome


def _safe_name(name: str) -> str:
    """``name`` itself, or for a name :func:`~upad.ingest.limits.check_filename` refuses, a printable ASCII stand-in
    (every other character replaced by ``_``) under which its refusal is recorded."""
    try:
        check_filename(name)
        return name
    except IngestRejected:
        return re.sub(r"[^A-Za-z0-9._+~-]", "_", name).lstrip(".-") or "unnamed"


def _header_json(header: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged cards are kept as text
        return header_to_json(header)


def _reason_text(path: Path, filename: str, sha: str | None, size: int | None, rej: IngestRejected,
                 detected: dt.datetime) -> str:
    return (f"file:        {filename}\n"
            f"original:    {str(path).encode('unicode_escape').decode('ascii')}\n"
            f"sha256:      {sha or '-'}\n"
            f"size_bytes:  {'-' if size is None else size}\n"
            f"category:    {rej.category}\n"
            f"detected_at: {detected.isoformat(timespec='seconds')} UTC\n"
            f"upad:        {__version__}\n"
            f"reason:      {rej.reason}\n"
            + (f"what to do:  {rej.hint}\n" if rej.hint else ""))


# -- public entry points -----------------------------------------------------------------------------------------------
def ingest_paths(db: Database, settings: Settings, paths_or_dirs: Iterable[str | os.PathLike], *,
                 mode: str = "copy", strict: bool = False, progress: Callable[[FileOutcome], None] | None = None,
                 config: IngestConfig | None = None, sleep: Callable[[float], None] = time.sleep) -> IngestReport:
    """Ingest files and directories into the archive and the database.

    In ``move`` mode a file modified less than ``ingest.limits.settle_s`` ago is not taken at once: after the
    other files, the batch waits until the settle time has passed since it was first seen and takes it if its
    size, modification time and inode did not change meanwhile; otherwise it is ``skipped`` (left in place for a
    later pass, nothing recorded) — a file still being written is never quarantined nor removed.

    Parameters
    ----------
    db : Database
        The process database (schema current).
    settings : Settings
        Data root (``raw/`` and ``quarantine/`` are written below it).
    paths_or_dirs : iterable of path
        Files, and directories scanned recursively (see :func:`collect_files`).
    mode : {'copy', 'move', 'link'}
        How files get into the archive (:data:`MODES`).
    strict : bool
        Recorded for the caller's exit code only (:meth:`IngestReport.exit_code`); processing is the same.
    progress : callable, optional
        Called with each :class:`FileOutcome` as soon as the file is done.
    config : IngestConfig, optional
        Default: :func:`load_ingest_config` of ``settings.root`` (the ``[ingest]`` tables of ``upad.toml``).
    sleep : callable
        How to wait for the settle time (tests pass a fake).

    Returns
    -------
    IngestReport
    """
    files = collect_with_roots(paths_or_dirs, exclude=[settings.root])
    config = config or load_ingest_config(settings.root)
    ingester = _Ingester(db, settings, mode=mode, config=config)
    report = IngestReport(mode=mode)
    settle = config.limits.settle_s if mode == "move" else 0.0

    def done(outcome: FileOutcome) -> None:
        report.add(outcome)
        if progress is not None:
            progress(outcome)

    waiting: list[tuple[Path, Path, Signature | None, float]] = []
    for path, root in files:
        if settle > 0:
            ready, sig = _settled(path, settle, time.time())
            if not ready:
                waiting.append((path, root, sig, time.monotonic()))
                continue
        done(ingester.ingest(path, root))
    if waiting:
        sleep(max(0.0, settle - (time.monotonic() - waiting[-1][3])))
        for path, root, sig, _ in waiting:
            if _signature_of(path) == sig:  # unchanged for at least settle_s
                done(ingester.ingest(path, root))
            else:
                done(FileOutcome(path=str(path), filename=path.name, status="skipped",
                                 reason=f"still being written: its size or modification time changed within "
                                 f"ingest.limits.settle_s = {settle:g} s", notes=["left where it is for a later pass"]))
    return report


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def watch(db: Database, settings: Settings, dirs: Iterable[str | os.PathLike], *, mode: str = "copy",
          interval: float = 5.0, max_polls: int | None = None,
          progress: Callable[[FileOutcome], None] | None = None,
          on_poll: Callable[[int, list[FileOutcome]], None] | None = None,
          sleep: Callable[[float], None] = time.sleep, config: IngestConfig | None = None) -> IngestReport:
    """Poll directories and ingest each new file once its size and modification time are stable between two polls
    and for at least ``ingest.limits.settle_s`` (by its modification time, or as observed by the polls).

    A file still being written changes between polls and waits; a file ingested in this session is not taken again
    unless it changes. Stops after ``max_polls`` polls, or on Ctrl-C (``KeyboardInterrupt``) with
    ``report.interrupted`` set.

    Parameters
    ----------
    interval : float
        Seconds between polls.
    max_polls : int, optional
        Stop after this many polls (``None``: run until interrupted).
    on_poll : callable, optional
        Called after each poll with the poll number (1-based) and the outcomes of that poll.
    sleep : callable
        How to wait (tests pass a fake).
    config : IngestConfig, optional
        Default: :func:`load_ingest_config` of ``settings.root``.
    """
    dirs = list(dirs)
    config = config or load_ingest_config(settings.root)
    ingester = _Ingester(db, settings, mode=mode, config=config)
    settle = config.limits.settle_s
    report = IngestReport(mode=mode)
    previous: dict[Path, tuple[int, int] | None] = {}
    since: dict[Path, float] = {}  # when the current signature was first seen (monotonic)
    done: dict[Path, tuple[int, int] | None] = {}
    try:
        while max_polls is None or report.polls < max_polls:
            report.polls += 1
            found = collect_with_roots(dirs, exclude=[settings.root])
            roots = dict(found)
            current = {p: _signature(p) for p, _ in found}
            done = {p: sig for p, sig in done.items() if p in current}
            mono, wall = time.monotonic(), time.time()
            since = {p: (since[p] if previous.get(p, ()) == sig and p in since else mono)
                     for p, sig in current.items()}
            this_poll: list[FileOutcome] = []
            for p, sig in current.items():
                if p in previous and previous[p] == sig and done.get(p, ()) != sig:
                    if settle > 0 and mono - since[p] < settle and not _settled(p, settle, wall)[0]:
                        continue  # changed within the settle time: next poll
                    outcome = ingester.ingest(p, roots[p])
                    report.add(outcome)
                    this_poll.append(outcome)
                    if outcome.status not in ("failed", "skipped"):
                        done[p] = sig
                    if progress is not None:
                        progress(outcome)
            previous = current
            if on_poll is not None:
                on_poll(report.polls, this_poll)
            if max_polls is not None and report.polls >= max_polls:
                break
            sleep(interval)
    except KeyboardInterrupt:
        report.interrupted = True
    return report


def _file_stat(path: Path) -> dict[str, int] | None:
    """The archived file's stat when its SHA-256 was taken: jobs hash it again only when it changed."""
    from upad.io.atomic import file_stat

    try:
        return file_stat(path)
    except OSError:
        return None
