"""Provenance ids: what a product is made of, as one SHA-256.

``id = SHA-256({step, code version (major.minor), configuration hash, unit key, sorted input identities})``,
where a raw frame is identified by its SHA-256 and a product by its own provenance id (as SeeChange and
the Rubin butler do): the same inputs and configuration always give the same id; a changed input, parameter or
algorithm version gives a new one, and the old product is kept.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from upad import __version__
from upad.flow.step import InputRef

#: Length of the short provenance id written in FITS headers and file names.
SHORT = 12


def code_version(step_version: str) -> str:
    """``<upad major.minor>/<step version>``: a patch release of upad does not change provenance."""
    major_minor = ".".join(__version__.split(".")[:2])
    return f"{major_minor}/{step_version}"


def provenance_id(step: str, version: str, config_hash: str, unit_key: str, inputs: Iterable[InputRef],
                  identities: dict[tuple[str, int], str]) -> str:
    """The provenance id (64 hex characters) of a unit of ``step``.

    Inputs enter through their stable identities — a raw frame's SHA-256, a product's provenance id — never through
    database row ids, so the same data and configuration give the same id in any database and with any executor.
    """
    record = {
        "step": step,
        "code_version": version,
        "config": config_hash,
        "unit": unit_key,
        "inputs": sorted([i.kind, identities[(i.kind, i.id)], i.role] for i in set(inputs)),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def short(prov_id: str) -> str:
    return prov_id[:SHORT]
