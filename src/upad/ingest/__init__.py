"""Data handling: verify, register, archive, quarantine and quick-look QC of raw frames.

Pure parts (no I/O): :mod:`~upad.ingest.translate` (headers → :class:`FrameMetadata`), :mod:`~upad.ingest.verify`
(:func:`verify_bytes`), :mod:`~upad.ingest.quicklook` (:func:`quicklook`), :mod:`~upad.ingest.limits` (what
hostile input is refused: names, implausible headers, decompression bombs; the ``[ingest.limits]`` parameters).
The adapter :mod:`~upad.ingest.service` (:func:`ingest_paths`, :func:`watch`) adds the archive
(:mod:`~upad.ingest.archive`) and the database.
See ``docs/ingest.md``.
"""
from upad.ingest.errors import CATEGORIES, IngestRejected
from upad.ingest.limits import LimitsConfig
from upad.ingest.quicklook import QuickLookConfig, QuickLookResult, quicklook
from upad.ingest.service import (
    MODES,
    STATUSES,
    FileOutcome,
    IngestConfig,
    IngestReport,
    collect_files,
    ingest_paths,
    load_ingest_config,
    watch,
)
from upad.ingest.translate import FrameMetadata, TranslationConfig, translate_header
from upad.ingest.verify import VerifiedFrame, verify_bytes, verify_file

__all__ = [
    "CATEGORIES",
    "MODES",
    "STATUSES",
    "FileOutcome",
    "FrameMetadata",
    "IngestConfig",
    "IngestRejected",
    "IngestReport",
    "LimitsConfig",
    "QuickLookConfig",
    "QuickLookResult",
    "TranslationConfig",
    "VerifiedFrame",
    "collect_files",
    "ingest_paths",
    "load_ingest_config",
    "quicklook",
    "translate_header",
    "verify_bytes",
    "verify_file",
    "watch",
]
